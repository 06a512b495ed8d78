//! The pwnat technique's IO ([`crate::wire::icmp`] builds and checks the messages): a raw
//! ICMP socket through pnet, the listener's echo requests and wait for the connector's Time
//! Exceeded, and the connector's repeated Time Exceeded. Raw sockets block; each loop runs
//! on tokio's blocking pool and stops when its [`Stop`] is dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pnet::packet::icmp::IcmpPacket;
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::Packet;
use pnet::transport::{
    icmp_packet_iter, transport_channel, TransportChannelType, TransportProtocol,
    TransportReceiver, TransportSender,
};

use crate::defaults::{ICMP_ECHO_INTERVAL, ICMP_KNOCK_INTERVAL};
use crate::net::punch::PunchError;
use crate::wire::icmp;
use crate::wire::rendezvous::SessionId;

/// A raw ICMP socket (needs `CAP_NET_RAW`).
pub struct Raw {
    tx: TransportSender,
    rx: TransportReceiver,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Raw")
    }
}

/// Opens the raw socket; without the capability, an error that says how to get it.
pub fn open() -> Result<Raw, PunchError> {
    let kind = TransportChannelType::Layer4(TransportProtocol::Ipv4(IpNextHeaderProtocols::Icmp));
    match transport_channel(64 * 1024, kind) {
        Ok((tx, rx)) => Ok(Raw { tx, rx }),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "punch".into());
            Err(PunchError::RawSocket(format!(
                "--icmp sends and reads raw ICMP, which needs the CAP_NET_RAW capability: run \
                 punch as root, or grant it once with `sudo setcap cap_net_raw+ep {exe}` ({e})"
            )))
        }
        Err(e) => Err(PunchError::RawSocket(format!(
            "cannot open a raw ICMP socket: {e}"
        ))),
    }
}

/// Ends a loop when dropped.
#[derive(Debug)]
pub struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Listener: sends echo requests to `echo_target` every [`ICMP_ECHO_INTERVAL`] and waits
/// up to `timeout` for a connector's Time Exceeded; returns the connector's UDP endpoint.
pub async fn await_connector(
    raw: Raw,
    session: SessionId,
    echo_target: Ipv4Addr,
    timeout: Duration,
) -> Result<SocketAddr, PunchError> {
    let flag = Arc::new(AtomicBool::new(false));
    let _stop = Stop(flag.clone());
    tokio::task::spawn_blocking(move || {
        let Raw { mut tx, mut rx } = raw;
        let echo = icmp::echo_request(&session);
        let end = Instant::now() + timeout;
        let mut next_echo = Instant::now();
        let mut it = icmp_packet_iter(&mut rx);
        let mut warned = false;
        while !flag.load(Ordering::Relaxed) && Instant::now() < end {
            if Instant::now() >= next_echo {
                if let Some(p) = IcmpPacket::new(&echo) {
                    if let Err(e) = tx.send_to(p, IpAddr::V4(echo_target)) {
                        tracing::warn!(%echo_target, "ICMP echo request: {e}");
                    }
                }
                next_echo = Instant::now() + ICMP_ECHO_INTERVAL;
            }
            if let Ok(Some((p, IpAddr::V4(from)))) =
                it.next_with_timeout(crate::defaults::ICMP_POLL)
            {
                if let Some(port) = icmp::parse_time_exceeded(&session, echo_target, p.packet()) {
                    // A connector behind a NAT of its own sends its ICMP untranslated (its
                    // NAT has no mapping for it): the source is private, and unreachable.
                    if crate::wire::netaddr::is_unroutable(IpAddr::V4(from)) {
                        if !warned {
                            warned = true;
                            tracing::warn!(
                                %from,
                                "a connector's ICMP came from an address that cannot be \
                                 reached from here: it is behind a NAT, and --icmp needs the \
                                 connector on a public address"
                            );
                        }
                        continue;
                    }
                    return Ok(SocketAddr::from((from, port)));
                }
            }
        }
        Err(PunchError::Rendezvous(format!(
            "no connector's ICMP arrived within {} s",
            timeout.as_secs()
        )))
    })
    .await
    .map_err(|e| PunchError::Transport(e.to_string()))?
}

/// Connector: sends the forged Time Exceeded to `listener` every [`ICMP_KNOCK_INTERVAL`]
/// until the returned [`Stop`] is dropped.
pub fn knock(
    raw: Raw,
    session: SessionId,
    listener: Ipv4Addr,
    echo_target: Ipv4Addr,
    port: u16,
) -> Stop {
    let flag = Arc::new(AtomicBool::new(false));
    let stop = flag.clone();
    tokio::task::spawn_blocking(move || {
        let Raw { mut tx, rx } = raw;
        drop(rx);
        let m = icmp::time_exceeded(&session, listener, echo_target, port);
        while !flag.load(Ordering::Relaxed) {
            if let Some(p) = IcmpPacket::new(&m) {
                if let Err(e) = tx.send_to(p, IpAddr::V4(listener)) {
                    tracing::warn!(%listener, "ICMP time exceeded: {e}");
                }
            }
            std::thread::sleep(ICMP_KNOCK_INTERVAL);
        }
    });
    Stop(stop)
}
