//! UDP services over a punch session (`--expose-udp`, `--local-udp`): datagrams travel as
//! QUIC DATAGRAM frames (RFC 9221: unreliable, unordered, never retransmitted, so a lost
//! game packet is not delivered late), each led by its flow number
//! ([`crate::proto::punch::flows`]). On a direct path they go straight to the peer; on the
//! relay, inside its data frames, like all QUIC packets of the session. A datagram larger
//! than the connection's current DATAGRAM size (`max_datagram_size`) is dropped and counted,
//! as a router drops a packet that does not fit the next link: nothing is fragmented.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::defaults::{UDP_FLOW_IDLE, UDP_MAX_FLOWS};
use crate::net::punch::PunchError;
use crate::proto::punch::flows::{decode, encode, Flows};

/// Which end of the UDP service this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSide {
    /// `--expose-udp HOST:PORT`: the service is here.
    Expose(SocketAddr),
    /// `--local-udp [HOST:]PORT`: local clients send here.
    Local(SocketAddr),
}

/// [`UdpSide`] made ready: the connecting side's socket is bound before QUIC is up (a busy
/// port fails early, and datagrams sent meanwhile wait in it).
#[derive(Debug)]
pub enum Udp {
    /// The service is at this address.
    Expose(SocketAddr),
    /// Local clients send to this socket.
    Local(UdpSocket),
}

impl UdpSide {
    /// Binds the connecting side's socket.
    pub async fn ready(self) -> std::io::Result<Udp> {
        Ok(match self {
            UdpSide::Expose(t) => Udp::Expose(t),
            UdpSide::Local(at) => Udp::Local(UdpSocket::bind(at).await?),
        })
    }
}

/// The largest UDP datagram a socket hands us.
const RECV_BUF: usize = 65_536;

/// Sends `payload` of flow `id` to the peer; one that does not fit is dropped (counted).
fn send(conn: &quinn::Connection, id: u32, payload: &[u8], dropped: &mut u64) {
    match conn.send_datagram(encode(id, payload).into()) {
        Ok(()) => {}
        Err(quinn::SendDatagramError::TooLarge) => {
            *dropped += 1;
            tracing::debug!(
                len = payload.len(),
                max = ?conn.max_datagram_size(),
                "a UDP datagram larger than the path carries was dropped"
            );
        }
        Err(e) => tracing::debug!("a UDP datagram was not sent: {e}"),
    }
}

/// When the next flow idles out (far away when there is none).
fn next_expiry<K: Eq + std::hash::Hash + Copy>(f: &Flows<K>) -> tokio::time::Instant {
    f.poll_timeout()
        .unwrap_or_else(|| Instant::now() + UDP_FLOW_IDLE)
        .into()
}

/// Carries UDP as `side` says until the connection closes.
pub async fn run(conn: quinn::Connection, side: Udp) -> Result<(), PunchError> {
    match side {
        Udp::Local(sock) => local(conn, sock).await,
        Udp::Expose(target) => expose(conn, target).await,
    }
}

/// Connecting side: every source that sends to `sock` is a flow; answers go back to it.
async fn local(conn: quinn::Connection, sock: UdpSocket) -> Result<(), PunchError> {
    let mut flows: Flows<SocketAddr> = Flows::new(UDP_FLOW_IDLE, UDP_MAX_FLOWS);
    let mut buf = vec![0u8; RECV_BUF];
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                // An ICMP error from a client that went away is no reason to stop.
                let Ok((n, src)) = r else { continue };
                if let Some((id, _)) = flows.touch(src, Instant::now()) {
                    send(&conn, id, &buf[..n], &mut dropped);
                }
            }
            d = conn.read_datagram() => {
                let Ok(d) = d else { return Ok(()) };
                if let Some((id, payload)) = decode(&d) {
                    if let Some(src) = flows.key_of(id, Instant::now()) {
                        let _ = sock.send_to(payload, src).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_expiry(&flows)) => {
                flows.expire(Instant::now());
            }
        }
    }
}

/// One flow's socket towards the service and the task reading its answers.
struct Flow {
    sock: Arc<UdpSocket>,
    _reader: crate::net::punch::runs::AbortOnDrop,
}

/// Serving side: each flow number the peer uses gets its own socket connected to `target`.
async fn expose(conn: quinn::Connection, target: SocketAddr) -> Result<(), PunchError> {
    let mut flows: Flows<u32> = Flows::new(UDP_FLOW_IDLE, UDP_MAX_FLOWS);
    let mut socks: HashMap<u32, Flow> = HashMap::new();
    let (tx, mut answers) = mpsc::channel::<(u32, Vec<u8>)>(1024);
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            d = conn.read_datagram() => {
                let Ok(d) = d else { return Ok(()) };
                let Some((id, payload)) = decode(&d) else { continue };
                let Some((_, new)) = flows.touch(id, Instant::now()) else { continue };
                if new {
                    match open(target, id, tx.clone()).await {
                        Ok(f) => {
                            socks.insert(id, f);
                        }
                        Err(e) => tracing::warn!(%target, "cannot reach the UDP service: {e}"),
                    }
                }
                if let Some(f) = socks.get(&id) {
                    let _ = f.sock.send(payload).await;
                }
            }
            Some((id, data)) = answers.recv() => {
                if flows.key_of(id, Instant::now()).is_some() {
                    send(&conn, id, &data, &mut dropped);
                }
            }
            _ = tokio::time::sleep_until(next_expiry(&flows)) => {
                for id in flows.expire(Instant::now()) {
                    socks.remove(&id);
                }
            }
        }
    }
}

/// A fresh socket for flow `id`, connected to `target`, whose answers go to `tx`.
async fn open(
    target: SocketAddr,
    id: u32,
    tx: mpsc::Sender<(u32, Vec<u8>)>,
) -> std::io::Result<Flow> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = Arc::new(UdpSocket::bind(any).await?);
    sock.connect(target).await?;
    let s = sock.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            match s.recv(&mut buf).await {
                Ok(n) => {
                    if tx.send((id, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                // The service is not there (ICMP port unreachable): keep the flow, it may
                // start later.
                Err(_) => tokio::time::sleep(crate::defaults::UDP_ERROR_PAUSE).await,
            }
        }
    });
    Ok(Flow {
        sock,
        _reader: crate::net::punch::runs::AbortOnDrop(reader),
    })
}
