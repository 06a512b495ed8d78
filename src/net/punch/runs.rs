//! The state of the techniques the control plane runs alongside the punch (birthday
//! probing, port prediction, TCP hole punching), apart from the IO that drives them
//! (`birthday.rs`, `tcp.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::proto::punch::birthday::{Birthday, Part};
use crate::proto::punch::tcp::TcpPunch;

/// A task that ends with its owner.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Birthday probing in progress ([`crate::proto::punch::birthday`]).
pub(super) struct BirthdayRun {
    pub(super) b: Birthday,
    pub(super) part: Part,
    /// `birthday`, or `prediction` (a prober over a sequential NAT's next ports).
    pub(super) method: &'static str,
    /// The opener's sockets (the prober uses the punch socket).
    pub(super) sockets: Vec<Arc<UdpSocket>>,
    pub(super) readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for BirthdayRun {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// What a TCP connection attempt reports to the control task.
pub(super) enum TcpNote {
    /// The arming SYN towards this address has gone.
    Armed(SocketAddr),
    /// The attempt towards this address failed or timed out.
    Failed(SocketAddr),
    /// Connected to the peer.
    Connected(TcpStream, SocketAddr),
    /// The punch port accepted a connection from this address.
    Accepted(TcpStream, SocketAddr),
    /// Listener: the connector's first bytes came on this kept connection.
    Chosen(TcpStream, SocketAddr),
    /// Listener: a kept connection from this address ended before any bytes came.
    Unchosen(SocketAddr),
}

/// The TCP punch's result for the main flow: the stream, the peer and attempts made, or
/// attempts made and why there is no stream.
pub(super) type TcpResult = Result<(TcpStream, SocketAddr, u32), (u32, &'static str)>;

/// TCP hole punching in progress.
pub(super) struct TcpRun {
    pub(super) p: TcpPunch,
    /// The punch port of each family we have (every attempt in that family binds it).
    pub(super) locals: Vec<SocketAddr>,
    pub(super) notes: mpsc::Sender<TcpNote>,
    /// The attempt in flight in each family, IPv6 then IPv4 (aborted when replaced or when
    /// the run ends).
    pub(super) attempts: [Option<AbortOnDrop>; 2],
    /// Accept on the punch ports until the run ends.
    pub(super) acceptors: Vec<AbortOnDrop>,
    /// Listener: connections kept until the connector chooses one.
    pub(super) waits: Vec<AbortOnDrop>,
    pub(super) stream: Option<TcpStream>,
    pub(super) done: Option<tokio::sync::oneshot::Sender<TcpResult>>,
}
