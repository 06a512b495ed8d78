//! The tokio driver for `punch`: one UDP socket carries the rendezvous, the connectivity
//! checks, the PAKE and then QUIC (quinn) — directly to the peer, or wrapped in relay data
//! frames when no direct path works. QUIC sees one fixed virtual peer address; this layer
//! decides which real path a datagram takes, so a path change never breaks the streams.

pub mod icmp;
pub mod quic;
pub mod tcp;

use std::collections::VecDeque;
use std::fmt;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::proto::punch::birthday::{Birthday, Outcome, Part};
use crate::proto::punch::code::Code;
use crate::proto::punch::nat::NatClass;
use crate::proto::punch::pake::{Pake, PakeError};
use crate::proto::punch::tcp::{Action as TcpAction, Outcome as TcpOutcome, TcpPunch};
use crate::proto::punch::{PathKind, PunchConfig, PunchEvent, Puncher, DIRECT_TIMEOUT};
use crate::wire::rendezvous::{Frame, Role, SessionId};

/// The address QUIC believes the peer has; real datagrams go wherever the path says.
const VIRTUAL_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1)), 1);
/// The IP TTL restored after a low-TTL opening packet (Linux's default).
const DEFAULT_TTL: u32 = 64;
/// Give up on the peer's key exchange after this long.
const PAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// Resend our key-exchange messages this often until confirmed.
const PAKE_RESEND: Duration = Duration::from_millis(200);
/// Wait this long for the peer to show up at the relay.
const PEER_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors that end a punch.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// Bad relay address.
    #[error(transparent)]
    Relay(#[from] crate::net::natprobe::ProbeError),
    /// DNS.
    #[error("cannot resolve the relay: {0}")]
    Resolve(String),
    /// Socket trouble.
    #[error("network error")]
    Io(#[from] std::io::Error),
    /// The relay refused, vanished, or the peer never came.
    #[error("{0}")]
    Rendezvous(String),
    /// PAKE failure (wrong code included).
    #[error(transparent)]
    Pake(#[from] PakeError),
    /// The peer did not complete the key exchange.
    #[error("the other side did not complete the key exchange within {0:?}")]
    PakeTimeout(Duration),
    /// QUIC or TLS setup or connection failure.
    #[error("encrypted transport: {0}")]
    Transport(String),
    /// The other side's `--manual` offer is unusable.
    #[error("the other side's offer: {0}")]
    Offer(#[from] crate::wire::offer::OfferError),
    /// `--icmp` cannot use raw sockets.
    #[error("{0}")]
    RawSocket(String),
    /// The other side's offer could not be read.
    #[error("reading the other side's offer: {0}")]
    OfferInput(String),
}

/// Progress events, printed by the binary (JSON lines with `--json`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The code to give the other side (listener only).
    Code {
        /// The code.
        code: String,
    },
    /// A technique ran out of budget without finding a path (the session stays where it is,
    /// e.g. on the relay).
    Tried {
        /// Which (`birthday`, `prediction`, `tcp`).
        method: &'static str,
        /// Always false: a success is a `connected` event.
        found: bool,
        /// Probes sent.
        probes: u32,
        /// Since start.
        elapsed_ms: u64,
    },
    /// `--manual`: the line to paste on the other side.
    Offer {
        /// The offer.
        offer: String,
    },
    /// Registered at the relay.
    Registered {
        /// Our address as the relay sees it.
        observed: SocketAddr,
    },
    /// The router mapped the punch socket's port; the address is offered to the peer as a
    /// candidate.
    Mapped {
        /// The mapped address strangers can reach.
        external: SocketAddr,
        /// Which protocol made it (`pcp`, `natpmp`, `upnp`).
        via: &'static str,
    },
    /// Both sides' NAT classifications (natprobe against the relay, run alongside the
    /// punch) and the technique they predict.
    Nat {
        /// Ours.
        mine: NatClass,
        /// The peer's.
        peer: NatClass,
        /// What should work.
        expect: crate::proto::punch::nat::Expectation,
    },
    /// The path in use.
    Connected {
        /// "direct" or "relay".
        path: &'static str,
        /// How: "udp" (hole punch, or UDP to the relay), "tcp" (a punched TCP connection
        /// when direct; the relay over TCP when relayed), "birthday", "prediction", "icmp".
        method: &'static str,
        /// The peer's address on a direct path, or the relay's.
        peer: SocketAddr,
        /// Since start.
        elapsed_ms: u64,
        /// Connectivity-check probes sent.
        probes: u32,
    },
    /// The connector carries TCP connections accepted here to the listener's service.
    Listening {
        /// The local address to connect to.
        local: SocketAddr,
    },
    /// Both ends proved they know the code; the channel is encrypted.
    Authenticated {
        /// Since start.
        elapsed_ms: u64,
    },
    /// Finished.
    Done {
        /// Payload bytes sent.
        bytes_sent: u64,
        /// Payload bytes received.
        bytes_received: u64,
        /// Since start.
        elapsed_ms: u64,
    },
}

/// Options for one punch.
#[derive(Debug, Clone)]
pub struct PunchOptions {
    /// Relay `HOST[:PORT]`.
    pub relay: String,
    /// Which side.
    pub role: Role,
    /// The code.
    pub code: Code,
    /// Bound on direct punching.
    pub direct_timeout: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Relay token.
    pub token: Vec<u8>,
    /// What to carry.
    pub mode: crate::net::punch::quic::Mode,
    /// Ask the router to map the punch socket's port (PCP, NAT-PMP or UPnP) and offer the
    /// mapped address as a candidate.
    pub portmap: bool,
    /// Serverless mode: offers pasted by the user instead of the relay (`relay` unused).
    pub manual: Option<Manual>,
    /// Symmetric × symmetric: attempt birthday probing from both sides within its budget.
    pub hard: bool,
    /// After authenticating, try TCP hole punching ([`crate::proto::punch::tcp`]) and carry the
    /// pipe over TLS on the TCP connection when it works.
    pub tcp: bool,
}

/// `--manual` settings.
#[derive(Debug, Clone)]
pub struct Manual {
    /// STUN server `HOST[:PORT]` for our server-reflexive address.
    pub stun: Option<String>,
    /// Where the other side's offer comes from.
    pub peer: PeerOffer,
}

/// Source of the other side's offer (stdin carries the data, so never stdin).
#[derive(Debug, Clone)]
pub enum PeerOffer {
    /// Given on the command line.
    Given(String),
    /// The first line of a file, waited for (scripts, tests).
    File(std::path::PathBuf),
    /// Typed or pasted on the controlling terminal.
    Terminal,
    /// `listen --icmp`: from the connector's ICMP Time Exceeded ([`crate::wire::icmp`]).
    IcmpListen {
        /// Where our echo requests go.
        echo_target: Ipv4Addr,
    },
    /// `connect --icmp HOST`: the listener is heard from when its punch arrives; we knock
    /// with ICMP until then.
    IcmpConnect {
        /// The listener's public address (IPv4 literal or host name).
        listener: String,
        /// The listener's echo target.
        echo_target: Ipv4Addr,
    },
}

/// How long a `--manual` side waits for the other (offers travel by hand).
pub const MANUAL_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads the other side's offer.
async fn read_peer_offer(src: PeerOffer) -> Result<Vec<SocketAddr>, PunchError> {
    let line = match src {
        PeerOffer::Given(s) => s,
        PeerOffer::File(path) => {
            let deadline = Instant::now() + MANUAL_TIMEOUT;
            loop {
                if let Ok(text) = tokio::fs::read_to_string(&path).await {
                    if let Some(l) = text.lines().find(|l| !l.trim().is_empty()) {
                        if text.contains('\n') {
                            break l.to_string();
                        }
                    }
                }
                if Instant::now() > deadline {
                    return Err(PunchError::OfferInput(format!(
                        "nothing in {} after {} s",
                        path.display(),
                        MANUAL_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        PeerOffer::Terminal => tokio::task::spawn_blocking(|| {
            use std::io::{BufRead, Write};
            let mut tty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/tty")
                .map_err(|e| {
                    PunchError::OfferInput(format!(
                        "no terminal to paste it on ({e}); give it with --peer OFFER or \
                         --peer-file FILE"
                    ))
                })?;
            let _ = write!(tty, "paste the other side's offer: ");
            let _ = tty.flush();
            let mut line = String::new();
            std::io::BufReader::new(tty)
                .read_line(&mut line)
                .map_err(|e| PunchError::OfferInput(e.to_string()))?;
            Ok::<_, PunchError>(line)
        })
        .await
        .map_err(|e| PunchError::OfferInput(e.to_string()))??,
        // Handled by `run` (no offer to read).
        PeerOffer::IcmpListen { .. } | PeerOffer::IcmpConnect { .. } => return Ok(Vec::new()),
    };
    Ok(crate::wire::offer::parse(&line)?)
}

/// Our server-reflexive address from a STUN server, asked on the punch socket itself before
/// anything else reads it (RFC 8489 Binding; three tries, 200 ms apart).
async fn stun_reflexive(sock: &UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    let tid = rand::random();
    let req = crate::wire::stun::binding_request(tid, crate::wire::stun::Change::NONE);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send_to(&req, server).await.ok()?;
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline.into(), sock.recv_from(&mut buf)).await
        {
            if from == server {
                if let Ok(m) = crate::wire::stun::decode(&buf[..n]) {
                    if m.tid == tid {
                        return m.reflexive();
                    }
                }
            }
        }
    }
    None
}

/// Maps the punch socket's UDP port on the router (PCP, then NAT-PMP, then UPnP) while the
/// session lasts: the mapped address goes to `found` when the mapping can make us reachable;
/// the mapping is renewed, and removed when `done` fires.
async fn map_punch_port(
    port: u16,
    found: mpsc::Sender<(SocketAddr, &'static str)>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) {
    use crate::net::portmap as pm;
    let Ok(ctx) = pm::Ctx::new(None, crate::defaults::PORTMAP_TIMEOUT, None) else {
        return;
    };
    let req = pm::MapRequest {
        proto: crate::proto::portmap::Proto::Udp,
        internal_port: port,
        external_port: port,
        lifetime: crate::defaults::PUNCH_PORTMAP_LIFETIME.as_secs() as u32,
    };
    // A session that ends while the router is still being asked (one that drops the
    // requests can take the three protocols' timeouts) must not wait for it to exit.
    let r = tokio::select! {
        r = pm::add(&ctx, req, crate::proto::portmap::Via::Auto) => r,
        _ = &mut done => return,
    };
    let Some(m) = r.mapping else {
        tracing::debug!(attempts = ?r.attempts, "no port mapping for the punch socket");
        return;
    };
    if let (Some(ip), true) = (m.external_ip, r.mapping_can_help == Some(true)) {
        let via = match m.via {
            pm::Method::Pcp => "pcp",
            pm::Method::Natpmp => "natpmp",
            pm::Method::Upnp => "upnp",
        };
        let _ = found
            .send((SocketAddr::new(ip, m.external_port), via))
            .await;
    }
    pm::keep(
        &ctx,
        req,
        m,
        |e| tracing::debug!(?e, "punch port mapping"),
        async {
            let _ = done.await;
        },
    )
    .await;
}

#[derive(Debug)]
struct LinkState {
    path: PathKind,
    relay: SocketAddr,
    session: SessionId,
    monitor: crate::proto::punch::PathMonitor,
    /// When the current path was chosen.
    since: Instant,
    /// The peer sends its QUIC packets through the relay although we are direct: its side of
    /// the direct path is dead, so ours is too.
    peer_left_direct: bool,
    /// The socket of a direct path found by birthday probing (not the punch socket).
    direct_sock: Option<Arc<UdpSocket>>,
    /// How a direct path found by the connectivity checks was made possible, when not by a
    /// plain UDP punch (`icmp`; `prediction` on the sequential NAT's side).
    method_hint: Option<&'static str>,
}

impl LinkState {
    fn set_path(&mut self, path: PathKind, now: Instant) {
        self.path = path;
        self.monitor = crate::proto::punch::PathMonitor::new(now);
        self.since = now;
        self.peer_left_direct = false;
        self.direct_sock = None;
    }

    /// Whether the direct path is dead: unanswered, or abandoned by the peer.
    fn direct_is_dead(&self, now: Instant) -> bool {
        matches!(self.path, PathKind::Direct(_))
            && (self.monitor.is_stalled(now) || self.peer_left_direct)
    }

    fn wrap(&self, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
        match self.path {
            PathKind::Direct(p) => (p, bytes.to_vec()),
            PathKind::Relay => (
                self.relay,
                Frame::Data {
                    session: self.session,
                    payload: bytes.to_vec(),
                }
                .emit(),
            ),
        }
    }
}

/// Where datagrams leave: the UDP socket, except that frames for the relay go over a TCP
/// connection once UDP to the relay has failed (UDP blocked).
#[derive(Debug)]
struct Wire {
    sock: Arc<UdpSocket>,
    relay: SocketAddr,
    tcp: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
}

impl Wire {
    fn over_tcp(&self) -> bool {
        self.tcp.lock().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Sends without waiting; a full queue or socket loses the datagram (QUIC and the
    /// rendezvous retransmit).
    fn send(&self, dst: SocketAddr, bytes: Vec<u8>) -> std::io::Result<()> {
        if dst == self.relay {
            if let Ok(t) = self.tcp.lock() {
                if let Some(tx) = t.as_ref() {
                    let _ = tx.try_send(bytes);
                    return Ok(());
                }
            }
        }
        send_now(&self.sock, &bytes, dst)
    }

    /// [`Wire::send`] for QUIC: a full UDP socket is reported (`WouldBlock`), and quinn waits
    /// until it has room instead of losing the datagram.
    fn send_quic(&self, dst: SocketAddr, bytes: Vec<u8>) -> std::io::Result<()> {
        if dst == self.relay && self.over_tcp() {
            return self.send(dst, bytes);
        }
        self.sock.try_send_to(&bytes, dst).map(|_| ())
    }
}

/// Sends a datagram at once, dropping it when the socket is full. Straight to the kernel:
/// tokio's `try_send_to` answers `WouldBlock` without trying until its reactor has seen the
/// socket become writable, which on a fresh socket in a single-threaded runtime costs the
/// first datagrams (regression: the first registration was lost, and connecting took one
/// retransmission timeout, ~100 ms, longer).
fn send_now(sock: &UdpSocket, bytes: &[u8], dst: SocketAddr) -> std::io::Result<()> {
    match socket2::SockRef::from(sock).send_to(bytes, &dst.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// quinn's view of the link: a socket whose only peer is [`VIRTUAL_PEER`].
struct LinkSocket {
    wire: Arc<Wire>,
    state: Arc<Mutex<LinkState>>,
    rx: Mutex<mpsc::Receiver<Vec<u8>>>,
    local: SocketAddr,
}

impl fmt::Debug for LinkSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSocket")
            .field("local", &self.local)
            .finish()
    }
}

impl LinkSocket {
    /// The kernel's UDP offloads, probed once per process on a socket of its own (quinn-udp
    /// does the same): GSO, so that one `sendmsg` carries up to 10 QUIC packets to the direct
    /// peer. `send` takes the socket to use each time, so one state serves every link.
    fn offload() -> Option<&'static quinn::udp::UdpSocketState> {
        static STATE: std::sync::OnceLock<Option<quinn::udp::UdpSocketState>> =
            std::sync::OnceLock::new();
        STATE
            .get_or_init(|| {
                let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
                quinn::udp::UdpSocketState::new((&probe).into()).ok()
            })
            .as_ref()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }
}

/// quinn waits on this when the socket is full (direct sends report `WouldBlock` instead of
/// losing the datagram, so a fast sender is paced by the socket, not by loss). It watches the
/// socket the path sends from: a birthday path's own, or the punch socket.
#[derive(Debug)]
struct Writable(Arc<LinkSocket>);

impl quinn::UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<std::io::Result<()>> {
        let sock = match &*self.0.lock_state() {
            LinkState {
                path: PathKind::Direct(_),
                direct_sock: Some(s),
                ..
            } => s.clone(),
            _ => self.0.wire.sock.clone(),
        };
        sock.poll_send_ready(cx)
    }
}

impl quinn::AsyncUdpSocket for LinkSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(Writable(self))
    }

    /// A transmit may hold several QUIC packets of `segment_size` bytes (GSO, see
    /// [`Self::max_transmit_segments`]): the direct path hands it to the kernel whole; the
    /// relay path wraps each packet in its own frame (the path may have changed since quinn
    /// asked).
    fn try_send(&self, t: &quinn::udp::Transmit) -> std::io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let (path, direct_sock) = {
            let mut s = self.lock_state();
            let now = Instant::now();
            for _ in t.contents.chunks(seg) {
                s.monitor.on_tx(now);
            }
            (s.path, s.direct_sock.clone())
        };
        if let (PathKind::Direct(dst), Some(udp)) = (path, Self::offload()) {
            let t = quinn::udp::Transmit {
                destination: dst,
                ecn: None,
                contents: t.contents,
                segment_size: t.segment_size.filter(|&s| s < t.contents.len()),
                src_ip: None,
            };
            let sock = direct_sock.as_ref().unwrap_or(&self.wire.sock);
            return sock.try_io(tokio::io::Interest::WRITABLE, || {
                udp.send((&**sock).into(), &t)
            });
        }
        for packet in t.contents.chunks(seg) {
            let (dst, bytes) = self.lock_state().wrap(packet);
            match (&direct_sock, path) {
                // A birthday path: its own socket.
                (Some(s), PathKind::Direct(_)) => {
                    s.try_send_to(&bytes, dst)?;
                }
                _ => self.wire.send_quic(dst, bytes)?,
            }
        }
        Ok(())
    }

    fn max_transmit_segments(&self) -> usize {
        match (self.lock_state().path, Self::offload()) {
            (PathKind::Direct(_), Some(udp)) => udp.max_gso_segments(),
            _ => 1,
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let mut rx = match self.rx.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        // Everything already queued, up to quinn's batch: one wake-up, many datagrams.
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let d = if n == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            // One item of the queue (see `quic_item`): a stride, then datagrams.
            let Some((stride, d)) = d.split_first_chunk::<2>() else {
                continue;
            };
            let stride = usize::from(u16::from_be_bytes(*stride)).max(1);
            let buf = &mut bufs[n];
            // Whole datagrams only (quinn's buffers hold `max_receive_segments` of them).
            let len = if d.len() <= buf.len() {
                d.len()
            } else {
                buf.len() / stride * stride
            };
            buf[..len].copy_from_slice(&d[..len]);
            meta[n] = quinn::udp::RecvMeta {
                addr: VIRTUAL_PEER,
                len,
                stride,
                ..Default::default()
            };
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    /// A GRO batch from the socket reaches quinn whole (64 is the kernel's UDP_GRO_CNT_MAX).
    fn max_receive_segments(&self) -> usize {
        64
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// What the socket reader hands on to the control plane: a natkit frame (rendezvous,
/// checks, PAKE) with its real source. Everything else is QUIC and goes to the QUIC queue.
enum Inbound {
    Control(SocketAddr, Vec<u8>),
}

/// Receive buffer asked for the punch socket, so that a burst from a fast QUIC sender (GSO
/// hands the kernel 10 packets at once) is not dropped while the reader waits for a CPU. The
/// kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER: usize = 4 << 20;
/// One receive slot: a GRO batch of equal-size datagrams is at most 64 KiB.
const RECV_SLOT: usize = 64 * 1024;

/// Reads the UDP socket: many datagrams per system call (`recvmmsg`), and a burst of the
/// peer's packets as one buffer (UDP GRO), where quinn-udp and the kernel allow.
async fn reader(
    sock: Arc<UdpSocket>,
    relay: SocketAddr,
    link: Arc<Mutex<LinkState>>,
    ctl: mpsc::Sender<Inbound>,
    quic: mpsc::Sender<Vec<u8>>,
) {
    let udp = quinn::udp::UdpSocketState::new((&*sock).into()).ok();
    if let Some(u) = &udp {
        let _ = u.set_recv_buffer_size((&*sock).into(), RECV_BUFFER);
    }
    let slots = if udp.is_some() {
        quinn::udp::BATCH_SIZE
    } else {
        1
    };
    let mut buf = vec![0u8; slots * RECV_SLOT];
    let mut meta = vec![quinn::udp::RecvMeta::default(); slots];
    loop {
        let got = match &udp {
            Some(u) => {
                let mut iovs: Vec<IoSliceMut> =
                    buf.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
                sock.async_io(tokio::io::Interest::READABLE, || {
                    u.recv((&*sock).into(), &mut iovs, &mut meta)
                })
                .await
            }
            None => sock.recv_from(&mut buf).await.map(|(len, addr)| {
                meta[0] = quinn::udp::RecvMeta {
                    addr,
                    len,
                    stride: len,
                    ..Default::default()
                };
                1
            }),
        };
        let Ok(n) = got else {
            continue;
        };
        for (m, b) in meta.iter().zip(buf.chunks(RECV_SLOT)).take(n) {
            let d = &b[..m.len];
            if m.stride <= crate::defaults::MAX_DATAGRAM {
                if !demux(m.addr, d, m.stride, relay, &link, &ctl, &quic).await {
                    return;
                }
                continue;
            }
            for d in d.chunks(m.stride) {
                // Longer datagrams are truncated, then rejected by the decoder or QUIC.
                let d = &d[..d.len().min(crate::defaults::MAX_DATAGRAM)];
                if !demux(m.addr, d, d.len(), relay, &link, &ctl, &quic).await {
                    return;
                }
            }
        }
    }
}

/// Reads length-prefixed frames from the relay's TCP connection.
async fn tcp_reader(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    relay: SocketAddr,
    link: Arc<Mutex<LinkState>>,
    ctl: mpsc::Sender<Inbound>,
    quic: mpsc::Sender<Vec<u8>>,
) {
    loop {
        let Ok(f) = crate::net::stream::read_prefixed(&mut rd).await else {
            return;
        };
        if !demux(relay, &f, f.len(), relay, &link, &ctl, &quic).await {
            return;
        }
    }
}

/// Sorts what the socket delivered — one datagram, or a GRO batch of datagrams of `stride`
/// bytes (the last may be shorter) from one source: natkit frames to the control plane, QUIC
/// to the QUIC queue (relayed data unwrapped first). A batch of QUIC packets from the peer
/// goes on as one item. False when the receivers are gone.
async fn demux(
    from: SocketAddr,
    d: &[u8],
    stride: usize,
    relay: SocketAddr,
    link: &Arc<Mutex<LinkState>>,
    ctl: &mpsc::Sender<Inbound>,
    quic: &mpsc::Sender<Vec<u8>>,
) -> bool {
    let stride = stride.max(1);
    if from != relay && !d.chunks(stride).any(crate::wire::rendezvous::is_frame) {
        if !d.is_empty() {
            heard(link, from, relay);
            // A full QUIC queue drops the datagrams rather than stalling control traffic.
            let _ = quic.try_send(quic_item(d, stride));
        }
        return true;
    }
    for d in d.chunks(stride) {
        // Relayed datagrams arrive inside Data frames from the relay.
        let (from, d) = match Frame::parse(d) {
            Ok(Frame::Data { payload, .. }) if from == relay => (VIRTUAL_PEER, payload),
            _ => (from, d.to_vec()),
        };
        if crate::wire::rendezvous::is_frame(&d) {
            let src = if from == VIRTUAL_PEER { relay } else { from };
            if ctl.send(Inbound::Control(src, d)).await.is_err() {
                return false;
            }
            continue;
        }
        heard(link, from, relay);
        let _ = quic.try_send(quic_item(&d, d.len()));
    }
    true
}

/// One item of the QUIC queue, as [`LinkSocket::poll_recv`] reads it: the stride (2 bytes,
/// big-endian), then datagrams of that many bytes (the last may be shorter).
fn quic_item(d: &[u8], stride: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + d.len());
    v.extend_from_slice(&(stride.min(u16::MAX as usize) as u16).to_be_bytes());
    v.extend_from_slice(d);
    v
}

/// QUIC arrived from `from` (the peer directly, or [`VIRTUAL_PEER`] through the relay): the
/// path monitor hears it, and a direct peer that changed address is followed.
fn heard(link: &Mutex<LinkState>, from: SocketAddr, relay: SocketAddr) {
    if let Ok(mut l) = link.lock() {
        let direct = from != VIRTUAL_PEER && from != relay;
        let now = Instant::now();
        match l.path {
            PathKind::Direct(p) if direct && p != from => {
                // The peer's NAT renumbered its mapping (rebinding): follow it. Only QUIC,
                // which authenticates every packet, can be disrupted by a forged source
                // here, not read.
                tracing::info!(old = %p, new = %from, "peer address changed");
                l.path = PathKind::Direct(from);
                l.monitor.on_rx(now);
            }
            PathKind::Direct(_) if direct => l.monitor.on_rx(now),
            PathKind::Relay if !direct => l.monitor.on_rx(now),
            // Relayed packets still in flight when we switched are not a signal.
            PathKind::Direct(_) if now.saturating_duration_since(l.since) > FOLLOW_GRACE => {
                l.peer_left_direct = true
            }
            _ => {}
        }
    }
}

/// How long after a switch to the direct path relayed packets from the peer are still
/// expected (in flight, or the peer switching a moment later).
const FOLLOW_GRACE: Duration = Duration::from_secs(1);

/// Moves the link to `path` and describes the change for the user.
fn switch_path(
    link: &Mutex<LinkState>,
    wire: &Wire,
    relay: SocketAddr,
    path: PathKind,
    probes: u32,
    t0: Instant,
) -> Event {
    switch_path_by(link, wire, relay, path, probes, t0, None)
}

/// [`switch_path`], naming the technique that found a direct path (and its socket).
fn switch_path_by(
    link: &Mutex<LinkState>,
    wire: &Wire,
    relay: SocketAddr,
    path: PathKind,
    probes: u32,
    t0: Instant,
    found_by: Option<(&'static str, Option<Arc<UdpSocket>>)>,
) -> Event {
    if let Ok(mut l) = link.lock() {
        l.set_path(path, Instant::now());
        if let Some((_, sock)) = &found_by {
            l.direct_sock = sock.clone();
        }
    }
    let (p, peer) = match path {
        PathKind::Direct(a) => ("direct", a),
        PathKind::Relay => ("relay", relay),
    };
    let hint = link.lock().ok().and_then(|l| l.method_hint);
    let method = match found_by {
        Some((m, _)) => m,
        None if p == "direct" && hint.is_some() => hint.unwrap_or("udp"),
        None if wire.over_tcp() && path == PathKind::Relay => "tcp",
        None => "udp",
    };
    Event::Connected {
        path: p,
        method,
        peer,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        probes,
    }
}

/// The control plane: the puncher (relay keepalives, pings, checks) and the PAKE answers.
struct Control {
    sock: Arc<UdpSocket>,
    wire: Arc<Wire>,
    puncher: Puncher,
    link: Arc<Mutex<LinkState>>,
    pake: Pake,
    session: SessionId,
    peer_fp: Option<[u8; 32]>,
    pake_error: Option<PakeError>,
    nat: crate::proto::punch::nat::Exchange,
    /// Events for the user raised while handling input (drained by whichever phase runs).
    pending: Vec<Event>,
    /// Birthday probing wanted (from the NAT exchange), and in progress.
    want_birthday: Option<Part>,
    /// Port prediction wanted (the peer's NAT is sequential, with this step); it starts
    /// when the peer's [`Frame::Predict`] gives the port to start from.
    want_prediction: Option<i32>,
    prediction_base: Option<u16>,
    /// Our NAT is the sequential one: open the mapping the peer will predict.
    want_prediction_opener: bool,
    /// Our `Predict` frame, repeated (relayed UDP may be lost): frame, sends left, next.
    predict_resend: Option<(Vec<u8>, u32, Instant)>,
    birthday: Option<BirthdayRun>,
    /// When we last answered a PAKE message (see `on_pake_frame`).
    last_pake_answer: Option<Instant>,
    bday_tx: mpsc::Sender<(usize, SocketAddr, Vec<u8>)>,
    /// TCP hole punching (`--tcp`), once authenticated.
    tcp: Option<TcpRun>,
}

/// What a TCP connection attempt reports to the control task.
enum TcpNote {
    /// The arming SYN has gone.
    Armed,
    /// The attempt failed or timed out.
    Failed,
    /// Connected to the peer.
    Connected(tokio::net::TcpStream, SocketAddr),
}

/// The TCP punch's result for the main flow: the stream, the peer and attempts made, or
/// attempts made and why there is no stream.
type TcpResult = Result<(tokio::net::TcpStream, SocketAddr, u32), (u32, &'static str)>;

/// TCP hole punching in progress.
struct TcpRun {
    p: TcpPunch,
    /// The punch port (every attempt binds it).
    local: SocketAddr,
    notes: mpsc::Sender<TcpNote>,
    /// The attempt in flight (aborted when replaced or when the run ends).
    attempt: Option<AbortOnDrop>,
    stream: Option<tokio::net::TcpStream>,
    done: Option<tokio::sync::oneshot::Sender<TcpResult>>,
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Birthday probing in progress ([`crate::proto::punch::birthday`]).
struct BirthdayRun {
    b: Birthday,
    part: Part,
    /// `birthday`, or `prediction` (a prober over a sequential NAT's next ports).
    method: &'static str,
    /// The opener's sockets (the prober uses the punch socket).
    sockets: Vec<Arc<UdpSocket>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for BirthdayRun {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl Control {
    fn set_my_nat(&mut self, c: NatClass) {
        self.nat.set_mine(Instant::now(), c);
        self.apply_nat();
    }

    fn set_mapped_port(&mut self) {
        self.nat.set_mapped_port(Instant::now());
        self.apply_nat();
    }

    fn nat_tick(&mut self, now: Instant) {
        self.nat.handle_timeout(now);
        self.apply_nat();
    }

    /// Carries out what the classification exchange ([`crate::proto::punch::nat::Exchange`]) asks.
    fn apply_nat(&mut self) {
        use crate::proto::punch::nat::Plan;
        while let Some(f) = self.nat.poll_transmit() {
            self.puncher.send_relayed(f);
        }
        while let Some(p) = self.nat.poll_plan() {
            match p {
                Plan::Told { mine, peer, expect } => {
                    self.pending.push(Event::Nat { mine, peer, expect })
                }
                Plan::PreferRelay => self.puncher.prefer_relay(Instant::now()),
                Plan::Birthday(part) if self.birthday.is_none() => self.want_birthday = Some(part),
                Plan::PredictProbe(delta) if self.birthday.is_none() => {
                    self.want_prediction = Some(delta)
                }
                Plan::PredictOpen if self.birthday.is_none() => self.want_prediction_opener = true,
                _ => {}
            }
        }
    }

    /// Starts birthday probing towards the peer's relay-observed address.
    async fn start_birthday(&mut self, part: Part) {
        let Some(peer) = self.puncher.peer_observed() else {
            self.want_birthday = Some(part);
            return;
        };
        let now = Instant::now();
        let b = Birthday::new(
            self.session,
            part,
            peer,
            crate::proto::punch::birthday::SOCKETS,
            if part == Part::Both {
                crate::proto::punch::birthday::HARD_BUDGET
            } else {
                crate::proto::punch::birthday::BUDGET
            },
            now,
        );
        let mut run = BirthdayRun {
            sockets: Vec::new(),
            readers: Vec::new(),
            part,
            b,
            method: "birthday",
        };
        if part != Part::Prober {
            for i in 0..run.b.sockets() {
                let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                    break;
                };
                let sock = Arc::new(sock);
                run.readers.push(self.read_birthday_socket(i, sock.clone()));
                run.sockets.push(sock);
            }
        }
        tracing::info!(?part, %peer, sockets = run.sockets.len(), "birthday probing");
        self.birthday = Some(run);
        self.flush_birthday();
    }

    fn flush_birthday(&mut self) {
        let Some(r) = &mut self.birthday else { return };
        while let Some(t) = r.b.poll_transmit() {
            let sock = match (r.part, t.socket) {
                (Part::Prober, _) | (_, crate::proto::punch::birthday::MAIN) => self.sock.clone(),
                _ => match r.sockets.get(t.socket) {
                    Some(s) => s.clone(),
                    None => continue,
                },
            };
            if let Some(ttl) = t.ttl {
                let _ = sock.set_ttl(ttl as u32);
            }
            let _ = send_now(&sock, &t.payload, t.dst);
            if t.ttl.is_some() {
                let _ = sock.set_ttl(DEFAULT_TTL);
            }
        }
    }

    /// Port prediction towards the peer's sequential NAT, from the port its `Predict` named.
    fn start_prediction(&mut self, delta: i32, base: u16) {
        let Some(peer) = self.puncher.peer_observed() else {
            self.want_prediction = Some(delta);
            return;
        };
        let seen = SocketAddr::new(peer.ip(), base);
        let b = Birthday::predicting(
            self.session,
            seen,
            delta,
            crate::proto::punch::birthday::PREDICTION_BUDGET,
            Instant::now(),
        );
        tracing::info!(%seen, delta, "port prediction");
        self.birthday = Some(BirthdayRun {
            b,
            part: Part::Prober,
            method: "prediction",
            sockets: Vec::new(),
            readers: Vec::new(),
        });
        self.flush_birthday();
    }

    /// Our NAT allocates ports in order: on a fresh socket, learn the port of a new mapping
    /// from the relay's STUN, open the next mapping towards the peer with a low-TTL packet
    /// (it must not reach the peer's NAT: arriving first, it would make that NAT move the
    /// peer's flows to another port), and tell the peer where to start. A fresh socket,
    /// because the punch socket's own checks have long reached the peer's NAT, which now
    /// holds a conntrack entry that clashes with the peer's probes to that mapping.
    async fn start_prediction_opener(&mut self) {
        let Some(peer) = self.puncher.peer_observed() else {
            self.want_prediction_opener = true;
            return;
        };
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            return;
        };
        let Some(seen) = stun_reflexive(&sock, self.wire.relay).await else {
            tracing::warn!("port prediction: the relay's STUN did not answer");
            return;
        };
        let sock = Arc::new(sock);
        let b = Birthday::new(
            self.session,
            Part::Opener,
            peer,
            1,
            crate::proto::punch::birthday::PREDICTION_BUDGET + Duration::from_secs(2),
            Instant::now(),
        );
        tracing::info!(%seen, %peer, "port prediction: opening the next port");
        let mut b = b;
        // The low-TTL packet goes out now, before the peer hears where to probe.
        b.handle_timeout(Instant::now());
        self.birthday = Some(BirthdayRun {
            b,
            part: Part::Opener,
            method: "prediction",
            readers: vec![self.read_birthday_socket(0, sock.clone())],
            sockets: vec![sock],
        });
        self.flush_birthday();
        let f = Frame::Predict {
            session: self.session,
            port: seen.port(),
        }
        .emit();
        self.predict_resend = Some((f, 3, Instant::now()));
    }

    /// Feeds what birthday socket `i` receives to the control task.
    fn read_birthday_socket(&self, i: usize, sock: Arc<UdpSocket>) -> tokio::task::JoinHandle<()> {
        let tx = self.bday_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if tx.send((i, from, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        })
    }

    /// The finished attempt (and how it was made), with the opener's winning socket.
    fn birthday_done(&mut self) -> Option<(Outcome, &'static str, Option<Arc<UdpSocket>>)> {
        let o = self.birthday.as_ref()?.b.outcome()?.clone();
        let r = self.birthday.take()?;
        let chosen = match o {
            Outcome::Connected { socket, .. } if r.part != Part::Prober => {
                r.sockets.get(socket).cloned()
            }
            _ => None,
        };
        Some((o, r.method, chosen))
    }

    /// Carries out what the TCP punch asks for: offers to the peer (relayed), connection
    /// attempts, and the result for the main flow.
    fn flush_tcp(&mut self) {
        let Some(t) = &mut self.tcp else { return };
        while let Some(f) = t.p.poll_transmit() {
            self.puncher.send_relayed(f);
        }
        while let Some(a) = t.p.poll_action() {
            let (dst, ttl) = match a {
                TcpAction::Arm(d) => (d, Some(crate::net::punch::tcp::ARM_TTL)),
                TcpAction::Connect(d) => (d, None),
            };
            let (notes, local) = (t.notes.clone(), t.local);
            tracing::debug!(%dst, ?ttl, "TCP attempt");
            t.attempt = Some(AbortOnDrop(tokio::spawn(async move {
                let armed = notes.clone();
                let r = tokio::time::timeout(
                    crate::defaults::TCP_ATTEMPT,
                    crate::net::punch::tcp::attempt(local, dst, ttl, move || {
                        let _ = armed.try_send(TcpNote::Armed);
                    }),
                )
                .await;
                let note = match r {
                    Ok(Ok(s)) => TcpNote::Connected(s, dst),
                    Ok(Err(e)) => {
                        tracing::debug!(%dst, "TCP attempt: {e}");
                        TcpNote::Failed
                    }
                    Err(_) => TcpNote::Failed,
                };
                let _ = notes.send(note).await;
            })));
        }
        if let Some(o) = t.p.outcome().cloned() {
            if let Some(done) = t.done.take() {
                t.attempt = None;
                let r = match (o, t.stream.take()) {
                    (TcpOutcome::Connected { peer, attempts }, Some(s)) => Ok((s, peer, attempts)),
                    (TcpOutcome::Connected { attempts, .. }, None) => Err((attempts, "lost")),
                    (TcpOutcome::Failed { attempts, why }, _) => Err((attempts, why)),
                };
                let _ = done.send(r);
            }
        }
    }

    fn on_tcp_note(&mut self, n: TcpNote) {
        let Some(t) = &mut self.tcp else { return };
        let now = Instant::now();
        match n {
            TcpNote::Armed => t.p.armed(now),
            TcpNote::Failed => t.p.attempt_failed(now),
            TcpNote::Connected(s, peer) => {
                t.stream = Some(s);
                t.p.attempt_connected(peer);
            }
        }
        self.flush_tcp();
    }

    async fn flush(&mut self) {
        let now = Instant::now();
        self.nat_tick(now);
        if let Some((f, left, next)) = &mut self.predict_resend {
            if *next <= now {
                self.puncher.send_relayed(f.clone());
                *left -= 1;
                *next = now + Duration::from_millis(400);
                if *left == 0 {
                    self.predict_resend = None;
                }
            }
        }
        while let Some(d) = self.puncher.poll_transmit() {
            if let Some(ttl) = d.ttl {
                let _ = self.sock.set_ttl(ttl as u32);
            }
            let _ = self.wire.send(d.dst, d.payload);
            if d.ttl.is_some() {
                let _ = self.sock.set_ttl(DEFAULT_TTL);
            }
        }
    }

    async fn send_link(&mut self, f: &Frame) {
        let (dst, bytes) = match self.link.lock() {
            Ok(s) => s.wrap(&f.emit()),
            Err(p) => p.into_inner().wrap(&f.emit()),
        };
        let _ = self.wire.send(dst, bytes);
    }

    /// Handles a PAKE frame from the peer; answers with our message and confirmation.
    async fn on_pake_frame(&mut self, f: Frame) {
        match f {
            Frame::Pake { session, msg } if session == self.session => {
                let first = !self.pake.has_key();
                match self.pake.handle_message(&msg) {
                    Ok(confirm) => {
                        // Answer the first message at once. A repeat means the peer lacks
                        // ours (lost): answer again, but at most twice a second — answering
                        // every repeat made the two sides bounce PAKE frames forever
                        // (~57 000/s through the relay on an idle session).
                        let now = Instant::now();
                        let due = first
                            || self.last_pake_answer.is_none_or(|t| {
                                now.saturating_duration_since(t) >= Duration::from_millis(500)
                            });
                        if due {
                            self.last_pake_answer = Some(now);
                            let mine = self.pake.message();
                            self.send_link(&mine).await;
                            self.send_link(&confirm).await;
                        }
                    }
                    Err(e) => self.pake_error = Some(e),
                }
            }
            Frame::Confirm {
                session,
                fingerprint,
                mac,
            } if session == self.session && self.pake.has_key() => {
                match self.pake.verify(&fingerprint, &mac) {
                    Ok(fp) => self.peer_fp = Some(fp),
                    Err(e) => self.pake_error = Some(e),
                }
            }
            _ => {}
        }
    }

    async fn on_inbound(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Some(r) = &mut self.birthday {
            let main = match r.part {
                Part::Both => crate::proto::punch::birthday::MAIN,
                _ => 0,
            };
            if r.part != Part::Opener && r.b.handle_datagram(now, main, from, bytes) {
                self.flush_birthday();
                return;
            }
        }
        let parsed = Frame::parse(bytes);
        if parsed.as_ref().is_ok_and(|f| self.nat.handle_frame(now, f)) {
            self.apply_nat();
        } else if let Ok(Frame::Predict { session, port }) = &parsed {
            if *session == self.session {
                self.prediction_base = Some(*port);
            }
        } else if let Ok(f @ Frame::TcpOffer { .. }) = &parsed {
            if let Some(t) = &mut self.tcp {
                t.p.handle_frame(now, f);
            }
            self.flush_tcp();
        } else if let Ok(f @ (Frame::Pake { .. } | Frame::Confirm { .. })) = parsed {
            self.on_pake_frame(f).await;
        } else {
            self.puncher.handle_datagram(now, from, bytes);
        }
        self.flush().await;
    }
}

/// Runs one side: meet, punch (or fall back to the relay), authenticate with the code, then
/// pipe `input` to the peer and the peer's bytes to `output`.
pub async fn run<R, W>(
    opts: PunchOptions,
    mut on_event: impl FnMut(&Event) + Send + 'static,
    input: R,
    output: W,
) -> Result<Event, PunchError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let t0 = Instant::now();
    let manual = opts.manual.clone();
    // --manual has no relay: an address that matches no datagram stands in for it.
    let relay = if manual.is_some() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        let (host, port) = crate::net::sys::parse_server(&opts.relay)?;
        crate::net::sys::resolve(&host, port)
            .await
            .map_err(PunchError::Resolve)?
    };
    let stun = match manual.as_ref().and_then(|m| m.stun.as_ref()) {
        Some(s) => {
            let (host, port) = crate::net::sys::parse_server(s)?;
            Some(
                crate::net::sys::resolve(&host, port)
                    .await
                    .map_err(PunchError::Resolve)?,
            )
        }
        None => None,
    };
    // --icmp: raw sockets first, so a missing capability is the first thing the user hears.
    let icmp = manual.as_ref().and_then(|m| match &m.peer {
        PeerOffer::IcmpListen { .. } | PeerOffer::IcmpConnect { .. } => Some(m.peer.clone()),
        _ => None,
    });
    let mut icmp_raw = match &icmp {
        Some(_) => Some(crate::net::punch::icmp::open()?),
        None => None,
    };
    let icmp_listener = match &icmp {
        Some(PeerOffer::IcmpConnect { listener, .. }) => {
            match crate::net::sys::resolve(listener, 0)
                .await
                .map_err(PunchError::Resolve)?
            {
                SocketAddr::V4(a) => Some(*a.ip()),
                SocketAddr::V6(_) => {
                    return Err(PunchError::Rendezvous(
                        "--icmp needs the listener's IPv4 address".into(),
                    ))
                }
            }
        }
        _ => None,
    };
    let sock = Arc::new(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?);
    let local = sock.local_addr()?;
    let mut candidates = Vec::new();
    let towards = if manual.is_some() {
        stun.or_else(|| crate::net::portmap::default_gateway().map(|g| SocketAddr::from((g, 9))))
    } else {
        Some(relay)
    };
    if let Some(ip) = towards.and_then(|t| crate::net::sys::local_ip_towards(t).ok()) {
        candidates.push(SocketAddr::new(ip, local.port()));
    }
    // Ask the router for the punch port in the background; the rendezvous does not wait.
    let (mapped_tx, mut mapped_rx) = mpsc::channel(1);
    let (unmap_tx, unmap_rx) = tokio::sync::oneshot::channel();
    let mapper = opts
        .portmap
        .then(|| tokio::spawn(map_punch_port(local.port(), mapped_tx, unmap_rx)));
    // Classify our NAT against the relay on separate sockets, alongside the punch (it takes
    // about half a second, ten times a direct punch: waiting for it first would only delay).
    let (class_tx, mut class_rx) = mpsc::channel(1);
    let classifier = {
        let server = opts.relay.clone();
        let with_relay = manual.is_none();
        tokio::spawn(async move {
            if !with_relay {
                return;
            }
            let o = crate::net::natprobe::ProbeOptions {
                servers: vec![server],
                first_timeout: Duration::from_millis(1500),
                lifetime_max: None,
                portmap: false,
            };
            if let Ok(r) = crate::net::natprobe::run(&o, |_, _| {}).await {
                if r.udp {
                    let _ = class_tx
                        .send(NatClass {
                            mapping: r.mapping,
                            filtering: r.filtering,
                            allocation: r.port_allocation.kind,
                            mapped_port: false,
                            delta: r
                                .port_allocation
                                .delta
                                .map_or(0, |d| d.clamp(-128, 127) as i8),
                            udp_blocked: false,
                        })
                        .await;
                }
            }
        })
    };
    // --tcp: bind the TCP punch port and learn its public endpoint from the relay while we
    // meet; the TCP punch itself starts once the peer is authenticated.
    let tcp_endpoint = (opts.tcp && manual.is_none())
        .then(|| tokio::spawn(crate::net::punch::tcp::endpoint(relay)));
    let session = opts.code.session_id();
    let peer_id: crate::wire::rendezvous::PeerId = rand::random();
    let cfg = PunchConfig {
        relay,
        session,
        role: opts.role,
        peer: peer_id,
        token: opts.token.clone(),
        candidates,
        direct_timeout: opts.direct_timeout,
        keepalive: opts.keepalive,
    };
    if opts.role == Role::Listener {
        on_event(&Event::Code {
            code: opts.code.to_string(),
        });
    }
    // --manual: print our offer (server-reflexive first, then a router-mapped port, then
    // the host address) and read the other side's in the background.
    let mut cfg = cfg;
    let (offer_tx, mut offer_rx) = mpsc::channel(1);
    let mut knocking = None;
    match (&manual, &icmp) {
        (Some(_), Some(PeerOffer::IcmpListen { echo_target })) => {
            let (raw, target) = (icmp_raw.take(), *echo_target);
            cfg.direct_timeout = MANUAL_TIMEOUT;
            tokio::spawn(async move {
                let r = match raw {
                    Some(raw) => {
                        crate::net::punch::icmp::await_connector(
                            raw,
                            session,
                            target,
                            MANUAL_TIMEOUT,
                        )
                        .await
                    }
                    None => Err(PunchError::RawSocket("no raw socket".into())),
                };
                let _ = offer_tx.send(r.map(|a| vec![a])).await;
            });
        }
        (Some(_), Some(PeerOffer::IcmpConnect { echo_target, .. })) => {
            if let (Some(raw), Some(listener)) = (icmp_raw.take(), icmp_listener) {
                knocking = Some(crate::net::punch::icmp::knock(
                    raw,
                    session,
                    listener,
                    *echo_target,
                    local.port(),
                ));
            }
            cfg.direct_timeout = MANUAL_TIMEOUT;
            // No offer: the listener's first probe tells us where it is.
            let _ = offer_tx.send(Ok(Vec::new())).await;
        }
        (Some(m), _) => {
            let mut offer = Vec::new();
            if let Some(server) = stun {
                match stun_reflexive(&sock, server).await {
                    Some(a) => offer.push(a),
                    None => tracing::warn!(%server, "the STUN server did not answer"),
                }
            }
            if opts.portmap {
                let wait = crate::defaults::PORTMAP_TIMEOUT + Duration::from_millis(300);
                if let Ok(Some((external, via))) =
                    tokio::time::timeout(wait, mapped_rx.recv()).await
                {
                    on_event(&Event::Mapped { external, via });
                    offer.push(external);
                }
            }
            offer.extend(cfg.candidates.iter().copied());
            offer.dedup();
            on_event(&Event::Offer {
                offer: crate::wire::offer::format(&offer),
            });
            cfg.direct_timeout = MANUAL_TIMEOUT;
            let src = m.peer.clone();
            tokio::spawn(async move {
                let _ = offer_tx.send(read_peer_offer(src).await).await;
            });
        }
        (None, _) => {}
    }
    // Bind the --local port before anything else: a busy port is a clear error at once.
    let listener = match opts.mode {
        crate::net::punch::quic::Mode::Local(at) => Some(tokio::net::TcpListener::bind(at).await?),
        _ => None,
    };
    let cert = rcgen::generate_simple_self_signed(vec!["natkit".to_string()])
        .map_err(|e| PunchError::Transport(e.to_string()))?;
    let cert_der = cert.cert.der().to_vec();
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Inbound>(1024);
    let (quic_tx, quic_rx) = mpsc::channel::<Vec<u8>>(4096);
    let link = Arc::new(Mutex::new(LinkState {
        path: PathKind::Relay,
        relay,
        session,
        monitor: crate::proto::punch::PathMonitor::new(Instant::now()),
        since: Instant::now(),
        peer_left_direct: false,
        direct_sock: None,
        method_hint: icmp.is_some().then_some("icmp"),
    }));
    let wire = Arc::new(Wire {
        sock: sock.clone(),
        relay,
        tcp: Mutex::new(None),
    });
    let reader_task = tokio::spawn(reader(
        sock.clone(),
        relay,
        link.clone(),
        ctl_tx.clone(),
        quic_tx.clone(),
    ));
    let mut tcp_tasks = Vec::new();
    let (bday_tx, mut bday_rx) = mpsc::channel(1024);
    let mut c = Control {
        sock: sock.clone(),
        wire: wire.clone(),
        puncher: if manual.is_some() {
            Puncher::serverless(cfg.clone(), Instant::now())
        } else {
            Puncher::new(cfg.clone(), Instant::now())
        },
        link: link.clone(),
        pake: Pake::new(session, opts.role, &opts.code.password(), &cert_der),
        session,
        peer_fp: None,
        pake_error: None,
        nat: crate::proto::punch::nat::Exchange::new(session, opts.hard),
        pending: Vec::new(),
        want_birthday: None,
        want_prediction: None,
        prediction_base: None,
        want_prediction_opener: false,
        predict_resend: None,
        birthday: None,
        last_pake_answer: None,
        bday_tx,
        tcp: None,
    };
    c.flush().await;

    // 1. Meet and choose a path.
    let mut early: VecDeque<Vec<u8>> = VecDeque::new();
    loop {
        while let Some(e) = c.puncher.poll_event() {
            match e {
                PunchEvent::Registered { observed } => on_event(&Event::Registered { observed }),
                PunchEvent::Failed(f) => return Err(PunchError::Rendezvous(f)),
                PunchEvent::RelayUnreachable if !wire.over_tcp() => {
                    // UDP to the relay gets nowhere (blocked?): meet over TCP instead; the
                    // punch attempts that follow will fail and the relay will carry the data.
                    let tcp = tokio::time::timeout(
                        Duration::from_secs(3),
                        tokio::net::TcpStream::connect(relay),
                    )
                    .await
                    .map_err(|_| {
                        PunchError::Rendezvous("the relay does not answer over UDP or TCP".into())
                    })?
                    .map_err(|e| {
                        PunchError::Rendezvous(format!(
                            "the relay does not answer over UDP, and TCP failed: {e}"
                        ))
                    })?;
                    let (rd, mut wr) = tcp.into_split();
                    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
                    tcp_tasks.push(tokio::spawn(async move {
                        while let Some(f) = rx.recv().await {
                            if crate::net::stream::write_prefixed(&mut wr, &f)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }));
                    tcp_tasks.push(tokio::spawn(tcp_reader(
                        rd,
                        relay,
                        link.clone(),
                        ctl_tx.clone(),
                        quic_tx.clone(),
                    )));
                    if let Ok(mut t) = wire.tcp.lock() {
                        *t = Some(tx);
                    }
                    c.puncher = Puncher::new(cfg.clone(), Instant::now());
                    // Tell the peer: no UDP technique can work, the relay over TCP will
                    // carry the data (at once, not after the punching bound), and a pipe
                    // tries TCP hole punching.
                    c.set_my_nat(NatClass {
                        mapping: crate::proto::classify::Behaviour::Unknown,
                        filtering: crate::proto::classify::Behaviour::Unknown,
                        allocation: "unknown",
                        mapped_port: false,
                        delta: 0,
                        udp_blocked: true,
                    });
                }
                PunchEvent::RelayUnreachable => {
                    return Err(PunchError::Rendezvous("the relay does not answer".into()))
                }
                PunchEvent::RelayData(d) => early.push_back(d),
                PunchEvent::Path { path, probes } => {
                    on_event(&switch_path(&link, &wire, relay, path, probes, t0));
                }
            }
        }
        if c.puncher.path().is_some() {
            break;
        }
        if t0.elapsed() > PEER_TIMEOUT {
            return Err(PunchError::Rendezvous("the other side never came".into()));
        }
        let deadline = c
            .puncher
            .poll_timeout()
            .unwrap_or(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            m = ctl_rx.recv() => match m {
                Some(Inbound::Control(from, b)) => c.on_inbound(Instant::now(), from, &b).await,
                None => {}
            },
            Some((external, via)) = mapped_rx.recv() => {
                on_event(&Event::Mapped { external, via });
                c.puncher.add_candidate(external, Instant::now());
                c.set_mapped_port();
                c.flush().await;
            }
            Some(class) = class_rx.recv() => {
                c.set_my_nat(class);
                c.flush().await;
            }
            Some(peer) = offer_rx.recv() => {
                c.puncher.peer_offer(&peer?, Instant::now());
                c.flush().await;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                c.puncher.handle_timeout(Instant::now());
                c.flush().await;
            }
        }
        for e in std::mem::take(&mut c.pending) {
            on_event(&e);
        }
    }
    // --icmp: the listener has heard us; stop knocking.
    drop(knocking.take());
    // Relayed frames that arrived before the path was chosen (the peer may be ahead).
    for d in early {
        if let Ok(f) = Frame::parse(&d) {
            c.on_pake_frame(f).await;
        }
    }

    // 2. Authenticate with the code; learn the certificate to pin.
    let pake_start = Instant::now();
    let mut next_resend = Instant::now();
    while c.peer_fp.is_none() {
        if let Some(e) = c.pake_error.take() {
            return Err(e.into());
        }
        if pake_start.elapsed() > PAKE_TIMEOUT {
            return Err(PunchError::PakeTimeout(PAKE_TIMEOUT));
        }
        if Instant::now() >= next_resend {
            let m = c.pake.message();
            c.send_link(&m).await;
            if let Some(conf) = c.pake.confirmation() {
                c.send_link(&conf).await;
            }
            next_resend = Instant::now() + PAKE_RESEND;
        }
        let wake = next_resend.min(c.puncher.poll_timeout().unwrap_or(next_resend));
        for e in std::mem::take(&mut c.pending) {
            on_event(&e);
        }
        tokio::select! {
            m = ctl_rx.recv() => if let Some(Inbound::Control(from, b)) = m {
                c.on_inbound(Instant::now(), from, &b).await
            },
            Some(class) = class_rx.recv() => {
                c.set_my_nat(class);
                c.flush().await;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                c.puncher.handle_timeout(Instant::now());
                c.flush().await;
            }
        }
        while let Some(e) = c.puncher.poll_event() {
            if let PunchEvent::RelayData(d) = e {
                if let Ok(f) = Frame::parse(&d) {
                    c.on_pake_frame(f).await;
                }
            }
        }
    }
    let peer_fp = c.peer_fp.unwrap_or_default();
    // Make sure the peer has our confirmation too (it may have missed the last one).
    if let Some(conf) = c.pake.confirmation() {
        c.send_link(&conf).await;
    }
    on_event(&Event::Authenticated {
        elapsed_ms: t0.elapsed().as_millis() as u64,
    });

    // 2b. --tcp: punch TCP (the control task runs it; the result comes back here).
    let (tcp_notes, mut tcp_notes_rx) = mpsc::channel(16);
    let mut tcp_done = None;
    // UDP blocked on either side: a pipe tries TCP hole punching without being asked.
    let udp_blocked = c.nat.udp_blocked();
    let tcp_endpoint = match tcp_endpoint {
        None if udp_blocked
            && opts.mode == crate::net::punch::quic::Mode::Pipe
            && manual.is_none() =>
        {
            tracing::info!("UDP is blocked on one side: trying TCP hole punching");
            Some(tokio::spawn(crate::net::punch::tcp::endpoint(relay)))
        }
        e => e,
    };
    if let Some(ep) = tcp_endpoint {
        let now = Instant::now();
        let mut p = TcpPunch::new(session, opts.role, now, crate::defaults::TCP_PUNCH_BUDGET);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let ep = match ep.await {
            Ok(Ok(ep)) => Some(ep),
            Ok(Err(e)) => {
                tracing::warn!("TCP punching: the relay's TCP port: {e}");
                None
            }
            Err(_) => None,
        };
        p.set_mine(now, ep.as_ref().map(|e| e.public));
        c.tcp = Some(TcpRun {
            p,
            local: ep
                .as_ref()
                .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |e| e.local),
            notes: tcp_notes,
            attempt: None,
            stream: None,
            done: Some(done_tx),
        });
        c.flush_tcp();
        c.flush().await;
        tcp_done = Some((done_rx, ep));
    }
    // Once a punched TCP connection carries the data, UDP path changes are not news.
    let tcp_chosen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quiet = tcp_chosen.clone();

    // Keep the control plane alive (relay keepalives and pings, late PAKE answers).
    let on_event = Arc::new(Mutex::new(on_event));
    let control_events = on_event.clone();
    let path_changed = Arc::new(tokio::sync::Notify::new());
    let nudge = path_changed.clone();
    let (bday_ctl, bday_quic) = (ctl_tx.clone(), quic_tx.clone());
    let control = tokio::spawn(async move {
        // Dropped with the control task, which stops the birthday socket's reader.
        let mut _bday_reader: Option<AbortOnDrop> = None;
        loop {
            // A direct path that stopped answering falls back to the relay, and the puncher
            // keeps trying to upgrade; QUIC only sees a stall, never a new peer address.
            let now = Instant::now();
            if c.link.lock().is_ok_and(|l| l.direct_is_dead(now)) {
                c.puncher.path_failed(now);
                c.flush().await;
            }
            if !c.pending.is_empty() {
                if let Ok(mut f) = control_events.lock() {
                    for e in std::mem::take(&mut c.pending) {
                        (*f)(&e);
                    }
                }
            }
            let quiet = quiet.load(std::sync::atomic::Ordering::Relaxed);
            while let Some(e) = c.puncher.poll_event() {
                if let PunchEvent::Path { path, probes } = e {
                    let ev = switch_path(&c.link, &c.wire, relay, path, probes, t0);
                    nudge.notify_one();
                    if let (false, Ok(mut f)) = (quiet, control_events.lock()) {
                        (*f)(&ev);
                    }
                }
            }
            if let Some(part) = c.want_birthday.take() {
                c.start_birthday(part).await;
            }
            if let (Some(delta), Some(base)) = (c.want_prediction, c.prediction_base) {
                c.want_prediction = None;
                c.start_prediction(delta, base);
            }
            if std::mem::take(&mut c.want_prediction_opener) {
                c.start_prediction_opener().await;
            }
            if let Some((outcome, method, chosen)) = c.birthday_done() {
                match outcome {
                    Outcome::Connected { peer, probes, .. } => {
                        // The opener's winning socket now carries the session: read it
                        // like the punch socket.
                        if let Some(s) = &chosen {
                            _bday_reader = Some(AbortOnDrop(tokio::spawn(reader(
                                s.clone(),
                                relay,
                                c.link.clone(),
                                bday_ctl.clone(),
                                bday_quic.clone(),
                            ))));
                        }
                        c.puncher.adopt_direct(peer);
                        let ev = switch_path_by(
                            &c.link,
                            &c.wire,
                            relay,
                            PathKind::Direct(peer),
                            probes,
                            t0,
                            Some((method, chosen)),
                        );
                        nudge.notify_one();
                        if let Ok(mut f) = control_events.lock() {
                            (*f)(&ev);
                        }
                    }
                    Outcome::Failed { probes } => {
                        if let Ok(mut f) = control_events.lock() {
                            (*f)(&Event::Tried {
                                method,
                                found: false,
                                probes,
                                elapsed_ms: t0.elapsed().as_millis() as u64,
                            });
                        }
                    }
                }
            }
            let wake = c
                .puncher
                .poll_timeout()
                .unwrap_or(Instant::now() + Duration::from_secs(1))
                .min(Instant::now() + Duration::from_millis(250));
            let wake = match c.birthday.as_ref().and_then(|r| r.b.poll_timeout()) {
                Some(t) => wake.min(t),
                None => wake,
            };
            let wake = match c.tcp.as_ref().and_then(|t| t.p.poll_timeout()) {
                Some(t) => wake.min(t),
                None => wake,
            };
            tokio::select! {
                m = ctl_rx.recv() => match m {
                    Some(Inbound::Control(from, b)) => c.on_inbound(Instant::now(), from, &b).await,
                    None => return,
                },
                Some(n) = tcp_notes_rx.recv() => {
                    c.on_tcp_note(n);
                    c.flush().await;
                }
                Some((i, from, b)) = bday_rx.recv() => {
                    if let Some(r) = &mut c.birthday {
                        r.b.handle_datagram(Instant::now(), i, from, &b);
                    }
                    c.flush_birthday();
                }
                // A mapping that came late still helps later upgrade attempts.
                Some((external, via)) = mapped_rx.recv() => {
                    if let Ok(mut f) = control_events.lock() {
                        (*f)(&Event::Mapped { external, via });
                    }
                    c.puncher.add_candidate(external, Instant::now());
                    c.set_mapped_port();
                    c.flush().await;
                }
                Some(class) = class_rx.recv() => {
                    c.set_my_nat(class);
                    c.flush().await;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    c.puncher.handle_timeout(Instant::now());
                    if let Some(r) = &mut c.birthday {
                        r.b.handle_timeout(Instant::now());
                    }
                    if let Some(t) = &mut c.tcp {
                        t.p.handle_timeout(Instant::now());
                    }
                    c.flush_tcp();
                    c.flush_birthday();
                    c.flush().await;
                }
            }
        }
    });

    // 3. The punched TCP connection (--tcp) when there is one, else QUIC over the link;
    // certificates pinned by the PAKE either way.
    let mut tcp_stream = None;
    if let Some((done, ep)) = tcp_done {
        let r = tokio::time::timeout(crate::defaults::TCP_PUNCH_BUDGET * 2, done)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(Err((0, "the TCP punch did not finish")));
        let ev = match r {
            Ok((s, peer, attempts)) => {
                tcp_chosen.store(true, std::sync::atomic::Ordering::Relaxed);
                tcp_stream = Some(s);
                Event::Connected {
                    path: "direct",
                    method: "tcp",
                    peer,
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                    probes: attempts,
                }
            }
            Err((attempts, why)) => {
                tracing::info!("TCP punching: {why}");
                Event::Tried {
                    method: "tcp",
                    found: false,
                    probes: attempts,
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                }
            }
        };
        if let Ok(mut f) = on_event.lock() {
            (*f)(&ev);
        }
        // The relay connection kept our NAT's TCP mapping until now.
        drop(ep);
    }
    let result = match tcp_stream {
        Some(s) => {
            crate::net::punch::tcp::run(opts.role, s, opts.keepalive, &cert, peer_fp, input, output)
                .await
        }
        None => {
            let link_sock = Arc::new(LinkSocket {
                wire: wire.clone(),
                state: link,
                rx: Mutex::new(quic_rx),
                local,
            });
            if let Some(l) = &listener {
                let local = l.local_addr()?;
                if let Ok(mut f) = on_event.lock() {
                    (*f)(&Event::Listening { local });
                }
            }
            crate::net::punch::quic::run(
                opts.role,
                link_sock,
                VIRTUAL_PEER,
                cert,
                peer_fp,
                opts.keepalive,
                opts.mode,
                listener,
                path_changed,
                input,
                output,
            )
            .await
        }
    };
    control.abort();
    classifier.abort();
    reader_task.abort();
    // Remove the router mapping (bounded: the router may be gone).
    if let Some(m) = mapper {
        let _ = unmap_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
    }
    // Leave the session so the code's nameplate is free again at once.
    let bye = Frame::Bye {
        session,
        peer: peer_id,
    }
    .emit();
    if manual.is_none() {
        let _ = wire.send(relay, bye);
    }
    // Give the TCP writer a moment to flush the goodbye.
    if wire.over_tcp() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tcp_tasks {
        t.abort();
    }
    let (sent, received) = result?;
    Ok(Event::Done {
        bytes_sent: sent,
        bytes_received: received,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

/// Default options.
pub fn default_direct_timeout() -> Duration {
    DIRECT_TIMEOUT
}
