//! `--verify`: a natkit relay connects back from outside, through the mapping, to the local
//! port — the only proof that a stranger can reach it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use serde::Serialize;
use tokio::net::UdpSocket;

use super::gateway::PortmapError;
use super::state::Mapping;
use crate::defaults;
use crate::proto::portmap::{pcp, Proto};
use crate::wire::rendezvous::{Frame, Trailer};

/// Whether a stranger got through.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The relay reached the local port through the mapping.
    pub reachable: bool,
    /// What was tried and what happened.
    pub detail: String,
}

impl Verification {
    fn refused(reason: impl std::fmt::Display) -> Verification {
        Verification {
            reachable: false,
            detail: format!("the relay refused the check: {reason}"),
        }
    }
}

/// The dial-back request: a transaction id of its own, and the relay's return-routability
/// cookie once it sent one (the relay answers a UDP request without it with a cookie only).
struct Ask {
    frame: Frame,
    trailer: Trailer,
}

/// What a datagram from the relay means for the request.
enum Answer {
    /// The relay refused, for this reason.
    Refused(String),
    /// A cookie arrived: send the request again now.
    Resend,
    /// Nothing of ours.
    Nothing,
}

impl Ask {
    fn bytes(&self) -> Vec<u8> {
        self.frame.emit_with(Some(&self.trailer))
    }

    /// Only answers that echo our transaction id count: the relay's address can be forged.
    fn answer(&mut self, data: &[u8]) -> Answer {
        match Frame::parse_with(data) {
            Ok((f, Some(t))) if t.tx == self.trailer.tx => match f {
                Frame::Error { reason, .. } => Answer::Refused(reason),
                Frame::Cookie if t.cookie != self.trailer.cookie => {
                    self.trailer.cookie = t.cookie;
                    Answer::Resend
                }
                _ => Answer::Nothing,
            },
            _ => Answer::Nothing,
        }
    }
}

/// Asks the relay to reach `external_port` on our public address from outside (TCP: it
/// connects; UDP: it sends from its other address), listening on the mapping's internal port.
/// `reachable` is false with the reason when the check could not run (the local port is busy,
/// the relay refused).
///
/// An IPv6 pinhole (`m.internal` is the host's global IPv6 address) is checked over IPv6:
/// the request leaves from that address to the relay's IPv6 address, so the relay dials back
/// to the address the pinhole is for (not a temporary address the kernel might pick).
pub async fn verify(relay: &str, m: &Mapping) -> Result<Verification, PortmapError> {
    let (host, port) = crate::net::sys::parse_server(relay)?;
    let all = crate::net::sys::resolve_all(&host, port)
        .await
        .map_err(PortmapError::Resolve)?;
    let v6 = m.internal.is_ipv6();
    let relay = if v6 {
        all.iter()
            .copied()
            .find(SocketAddr::is_ipv6)
            .ok_or_else(|| {
                PortmapError::Resolve(format!(
                    "{host} has no IPv6 address: an IPv6 pinhole is checked over IPv6"
                ))
            })?
    } else {
        crate::net::sys::prefer_ipv4(&all)
            .ok_or_else(|| PortmapError::Resolve("DNS returned no address".into()))?
    };
    let nonce: u64 = rand::random();
    // Over IPv6 everything binds the pinhole's address; over IPv4, any.
    let here = if v6 {
        m.internal.ip()
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let local = SocketAddr::new(here, m.internal.port());
    let domain = socket2::Domain::for_address(local);
    let busy = |e: std::io::Error| Verification {
        reachable: false,
        detail: format!(
            "cannot listen on local port {} to receive the relay's check ({e}); stop the \
             service there to verify",
            m.internal.port()
        ),
    };
    let mut ask = Ask {
        frame: Frame::DialBack {
            proto: pcp::protocol_number(m.proto),
            port: m.external_port,
            nonce,
        },
        trailer: Trailer {
            tx: rand::random(),
            cookie: Vec::new(),
        },
    };
    let deadline = Instant::now() + defaults::PORTMAP_VERIFY_TIMEOUT;
    match m.proto {
        Proto::Tcp => {
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            sock.set_nonblocking(true)?;
            if let Err(e) = sock.bind(&local.into()).and_then(|_| sock.listen(8)) {
                return Ok(busy(e));
            }
            let listener = tokio::net::TcpListener::from_std(sock.into())?;
            let udp = UdpSocket::bind(SocketAddr::new(here, 0)).await?;
            let accept = async {
                loop {
                    let (mut s, from) = listener.accept().await?;
                    let got = tokio::time::timeout(
                        defaults::PORTMAP_VERIFY_READ_TIMEOUT,
                        crate::net::stream::read_prefixed(&mut s),
                    )
                    .await;
                    if let Ok(Ok(f)) = got {
                        if matches!(Frame::parse(&f), Ok(Frame::Probe { nonce: n }) if n == nonce) {
                            return Ok::<_, std::io::Error>(from);
                        }
                    }
                }
            };
            let refused = relay_refusal(&udp, relay, &mut ask, deadline);
            tokio::select! {
                r = accept => {
                    let from = r?;
                    Ok(Verification {
                        reachable: true,
                        detail: format!(
                            "the relay connected to port {} from outside ({from}) and reached {}",
                            m.external_port, m.internal
                        ),
                    })
                }
                why = refused => Ok(why),
            }
        }
        Proto::Udp => {
            let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
            sock.set_reuse_address(true)?;
            sock.set_nonblocking(true)?;
            if let Err(e) = sock.bind(&local.into()) {
                return Ok(busy(e));
            }
            let udp = UdpSocket::from_std(sock.into())?;
            let mut buf = [0u8; 1500];
            let mut next_send = Instant::now();
            loop {
                if Instant::now() >= next_send {
                    udp.send_to(&ask.bytes(), relay).await?;
                    next_send = Instant::now() + defaults::PORTMAP_VERIFY_RESEND;
                }
                let wake = next_send.min(deadline);
                tokio::select! {
                    r = udp.recv_from(&mut buf) => {
                        let (n, from) = r?;
                        if matches!(Frame::parse(&buf[..n]), Ok(Frame::Probe { nonce: x }) if x == nonce) {
                            return Ok(Verification {
                                reachable: true,
                                detail: format!(
                                    "a datagram from a stranger ({from}) reached {}",
                                    m.internal
                                ),
                            });
                        }
                        if from == relay {
                            match ask.answer(&buf[..n]) {
                                Answer::Refused(reason) => return Ok(Verification::refused(reason)),
                                Answer::Resend => next_send = Instant::now(),
                                Answer::Nothing => {}
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if Instant::now() >= deadline {
                            return Ok(Verification {
                                reachable: false,
                                detail: format!(
                                    "the relay's datagram from a stranger did not reach {} within {} s",
                                    m.internal,
                                    defaults::PORTMAP_VERIFY_TIMEOUT.as_secs()
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Sends the dial-back request (again every [`defaults::PORTMAP_VERIFY_RESEND`]) and waits for
/// a refusal until `deadline`; returns the verdict "not reachable" when the relay refuses or
/// time runs out.
async fn relay_refusal(
    udp: &UdpSocket,
    relay: SocketAddr,
    ask: &mut Ask,
    deadline: Instant,
) -> Verification {
    let mut buf = [0u8; 1500];
    let mut sends = 0;
    let mut resend = false;
    loop {
        // The cookie's round trip does not count against the sends.
        let again = std::mem::take(&mut resend);
        if sends < defaults::PORTMAP_VERIFY_TCP_SENDS || again {
            let _ = udp.send_to(&ask.bytes(), relay).await;
            sends += 1;
        }
        let wake = (Instant::now() + defaults::PORTMAP_VERIFY_RESEND).min(deadline);
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    if from == relay {
                        match ask.answer(&buf[..n]) {
                            Answer::Refused(reason) => return Verification::refused(reason),
                            Answer::Resend => resend = true,
                            Answer::Nothing => {}
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= deadline {
                    return Verification {
                        reachable: false,
                        detail: format!(
                            "the relay's connection from outside did not arrive within {} s: the \
                             mapping does not make this port reachable",
                            defaults::PORTMAP_VERIFY_TIMEOUT.as_secs()
                        ),
                    };
                }
            }
        }
    }
}
