//! Sends the TTL-limited measurement probes of [`crate::proto::punch::ttl`] and reads the
//! ICMP answers: one socket per (target, TTL), so the socket tells which probe an answer is
//! about even when a router quotes too little of it, and none of them is the punch socket
//! (their conntrack traces on the peer's router can never clash with the session).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::net::punch::runs::AbortOnDrop;
use crate::net::sys::{read_errqueue, set_recverr};
use crate::proto::punch::ttl::{Answer, Target, TtlProbe};
use crate::wire::stun::{self, Change};

/// What a socket heard: (target, TTL, answer).
pub(super) type TtlAnswer = (Target, u8, Answer);

/// The measurement's sockets and their readers.
pub(super) struct TtlSockets {
    socks: HashMap<(Target, u8), (std::net::UdpSocket, AbortOnDrop)>,
    tx: mpsc::Sender<TtlAnswer>,
}

impl TtlSockets {
    /// Sockets that report answers on `tx`.
    pub(super) fn new(tx: mpsc::Sender<TtlAnswer>) -> TtlSockets {
        TtlSockets {
            socks: HashMap::new(),
            tx,
        }
    }

    /// Sends `p` (a STUN Binding request to the relay, which answers it harmlessly when the
    /// TTL suffices; an empty datagram to the peer's discard port). A probe that cannot be
    /// sent (no route yet) is as good as unanswered.
    pub(super) fn send(&mut self, p: TtlProbe) {
        let key = (p.target, p.ttl);
        if !self.socks.contains_key(&key) {
            let Some((send, s)) = open(p) else { return };
            let reader = AbortOnDrop(tokio::spawn(read(s, key, self.tx.clone())));
            self.socks.insert(key, (send, reader));
        }
        let Some((s, _)) = self.socks.get(&key) else {
            return;
        };
        let payload = match p.target {
            Target::Relay => stun::binding_request(rand::random(), Change::NONE),
            Target::Peer => Vec::new(),
        };
        // A plain non-blocking send: a fresh tokio socket has no write readiness yet.
        if let Err(e) = s.send_to(&payload, p.dst) {
            tracing::debug!(ttl = p.ttl, dst = %p.dst, "TTL probe not sent: {e}");
        }
    }
}

/// A socket for `p`'s TTL: a handle to send with, and the tokio one its reader uses.
fn open(p: TtlProbe) -> Option<(std::net::UdpSocket, Arc<UdpSocket>)> {
    let any: std::net::SocketAddr = if p.dst.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.set_nonblocking(true).ok()?;
    if p.dst.is_ipv4() {
        s.set_ttl(p.ttl as u32).ok()?;
    } else {
        socket2::SockRef::from(&s)
            .set_unicast_hops_v6(p.ttl as u32)
            .ok()?;
    }
    let send = s.try_clone().ok()?;
    let s = UdpSocket::from_std(s).ok()?;
    set_recverr(&s);
    Some((send, Arc::new(s)))
}

async fn read(s: Arc<UdpSocket>, key: (Target, u8), tx: mpsc::Sender<TtlAnswer>) {
    let fd = s.as_raw_fd();
    let mut buf = [0u8; 64];
    loop {
        let entry = tokio::select! {
            // The relay's STUN answer (not needed), or an ICMP error surfacing as an error:
            // its details are in the error queue, read at once (the error readiness may
            // not fire again once the error has been reported).
            r = s.recv_from(&mut buf) => match r {
                Ok(_) => continue,
                Err(_) => match read_errqueue(fd) {
                    Some(e) => e,
                    None => continue,
                },
            },
            r = s.async_io(tokio::io::Interest::ERROR, || {
                read_errqueue(fd).ok_or_else(|| std::io::ErrorKind::WouldBlock.into())
            }) => match r {
                Ok(e) => e,
                Err(_) => continue,
            },
        };
        let (ip, icmp_type, _) = entry;
        let answer = match icmp_type {
            11 => Answer::TimeExceeded(ip),
            3 => Answer::Unreachable(ip),
            _ => continue,
        };
        tracing::debug!(ttl = key.1, %ip, icmp_type, "TTL probe answered");
        if tx.send((key.0, key.1, answer)).await.is_err() {
            return;
        }
    }
}
