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
    /// The arming SYN has gone.
    Armed,
    /// The attempt failed or timed out.
    Failed,
    /// Connected to the peer.
    Connected(TcpStream, SocketAddr),
    /// The punch port accepted a connection from this address.
    Accepted(TcpStream, SocketAddr),
}

/// The TCP punch's result for the main flow: the stream, the peer and attempts made, or
/// attempts made and why there is no stream.
pub(super) type TcpResult = Result<(TcpStream, SocketAddr, u32), (u32, &'static str)>;

/// TCP hole punching in progress.
pub(super) struct TcpRun {
    pub(super) p: TcpPunch,
    /// The punch port (every attempt binds it).
    pub(super) local: SocketAddr,
    pub(super) notes: mpsc::Sender<TcpNote>,
    /// The attempt in flight (aborted when replaced or when the run ends).
    pub(super) attempt: Option<AbortOnDrop>,
    /// Accepts on the punch port until the run ends.
    pub(super) acceptor: Option<AbortOnDrop>,
    pub(super) stream: Option<TcpStream>,
    pub(super) done: Option<tokio::sync::oneshot::Sender<TcpResult>>,
}
