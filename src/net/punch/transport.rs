//! The link quinn sees ([`LinkSocket`]): one fixed virtual peer address, while each datagram
//! really leaves on the path the [`Link`] core chose (direct, a birthday path's own socket,
//! or wrapped for the relay, over UDP or the relay's TCP connection); the socket readers
//! that sort natkit frames from QUIC (demux), let QUIC see only what the link admits, and
//! carry out path validation; and the path switch.

use std::fmt;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::net::punch::Event;
use crate::proto::punch::link::{Admit, Via};
use crate::proto::punch::{Link, PathKind};
use crate::wire::rendezvous::Frame;

/// The address QUIC believes the peer has; real datagrams go wherever the path says.
pub(super) const VIRTUAL_PEER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1)), 1);
/// The IP TTL restored after a low-TTL opening packet (Linux's default).
const DEFAULT_TTL: u32 = 64;

/// The path state shared by the control plane, the readers and quinn's socket.
#[derive(Debug)]
pub(super) struct LinkState {
    pub(super) link: Link,
    /// The socket of a direct path found by birthday probing (not the punch socket).
    pub(super) direct_sock: Option<Arc<UdpSocket>>,
    /// How a direct path found by the connectivity checks was made possible, when not by a
    /// plain UDP punch (`icmp`; `prediction` on the sequential NAT's side).
    pub(super) method_hint: Option<&'static str>,
}

impl LinkState {
    fn set_path(&mut self, path: PathKind, now: Instant) {
        self.link.set_path(path, now);
        self.direct_sock = None;
    }
}

/// Locks the link state, a poisoned lock included (the state stays usable).
pub(super) fn lock(link: &Mutex<LinkState>) -> std::sync::MutexGuard<'_, LinkState> {
    match link.lock() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    }
}

/// Where datagrams leave: the UDP socket, except that frames for the relay go over a TCP
/// connection once UDP to the relay has failed (UDP blocked).
#[derive(Debug)]
pub(super) struct Wire {
    pub(super) sock: Arc<UdpSocket>,
    pub(super) relay: SocketAddr,
    tcp: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    /// The relay connection's writer and reader, ended by [`Wire::close`].
    tcp_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// A send failed in a way no retry can mend (see [`crate::net::sys::is_transient`]): the
    /// control plane ends the session with it ([`Wire::failed`]).
    fatal: Mutex<Option<std::io::Error>>,
    fatal_note: tokio::sync::Notify,
}

impl Wire {
    pub(super) fn new(sock: Arc<UdpSocket>, relay: SocketAddr) -> Wire {
        Wire {
            sock,
            relay,
            tcp: Mutex::new(None),
            tcp_tasks: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            fatal_note: tokio::sync::Notify::new(),
        }
    }

    /// What became of a send: `WouldBlock` stays (quinn waits for room on it); a transient
    /// error (the network changing, [`crate::net::sys::is_transient`]) costs only the
    /// datagram, as loss would; anything else is kept for [`Wire::failed`] and the datagram
    /// is dropped. Never an error quinn would take for a dead socket: quinn's connection
    /// driver ends on one and leaves the session hanging.
    fn absorb(&self, r: std::io::Result<()>) -> std::io::Result<()> {
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
            Err(e) if crate::net::sys::is_transient(&e) => {
                tracing::debug!("send failed, the datagram is lost: {e}");
                Ok(())
            }
            Err(e) => {
                tracing::warn!("send failed: {e}");
                if let Ok(mut f) = self.fatal.lock() {
                    f.get_or_insert(e);
                }
                self.fatal_note.notify_one();
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Waits until a send fails for good, and returns that error.
    pub(super) async fn failed(&self) -> std::io::Error {
        loop {
            if let Some(e) = self.fatal.lock().ok().and_then(|mut f| f.take()) {
                return e;
            }
            self.fatal_note.notified().await;
        }
    }

    pub(super) fn over_tcp(&self) -> bool {
        self.tcp.lock().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Sends without waiting; a full queue or socket, or a network that is changing, loses
    /// the datagram (QUIC and the rendezvous retransmit).
    pub(super) fn send(&self, dst: SocketAddr, bytes: Vec<u8>) {
        if dst == self.relay {
            if let Ok(t) = self.tcp.lock() {
                if let Some(tx) = t.as_ref() {
                    let _ = tx.try_send(bytes);
                    return;
                }
            }
        }
        let _ = self.absorb(send_now(&self.sock, &bytes, dst));
    }

    /// [`Wire::send`] with a TTL for this datagram only (opening packets).
    pub(super) fn send_ttl(&self, dst: SocketAddr, bytes: Vec<u8>, ttl: Option<u8>) {
        with_ttl(&self.sock, ttl, || self.send(dst, bytes));
    }

    /// [`Wire::send`] for QUIC: a full UDP socket is reported (`WouldBlock`), and quinn waits
    /// until it has room instead of losing the datagram.
    fn send_quic(&self, dst: SocketAddr, bytes: Vec<u8>) -> std::io::Result<()> {
        if dst == self.relay && self.over_tcp() {
            self.send(dst, bytes);
            return Ok(());
        }
        self.absorb(self.sock.try_send_to(&bytes, dst).map(|_| ()))
    }

    /// UDP to the relay gets nowhere: connects to its TCP port (within `timeout`), and from
    /// now on frames for the relay go over that connection, read like the UDP socket.
    /// Fails with the error, or None after the timeout.
    pub(super) async fn connect_tcp(
        &self,
        timeout: std::time::Duration,
        link: Arc<Mutex<LinkState>>,
        ctl: mpsc::Sender<Inbound>,
        quic: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Option<std::io::Error>> {
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.relay))
            .await
            .map_err(|_| None)?
            .map_err(Some)?;
        let (rd, mut wr) = tcp.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if crate::net::stream::write_prefixed(&mut wr, &f)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let reader = tokio::spawn(tcp_reader(rd, self.relay, link, ctl, quic));
        if let Ok(mut t) = self.tcp.lock() {
            *t = Some(tx);
        }
        if let Ok(mut t) = self.tcp_tasks.lock() {
            // A connection made again replaces the broken one.
            for old in t.drain(..) {
                old.abort();
            }
            t.extend([writer, reader]);
        }
        Ok(())
    }

    /// Ends the relay connection's tasks (after the goodbye had a moment to leave).
    pub(super) fn close(&self) {
        if let Ok(mut t) = self.tcp_tasks.lock() {
            for t in t.drain(..) {
                t.abort();
            }
        }
    }
}

/// Runs `send` with the socket's TTL set to `ttl` (when given), then restores the default.
pub(super) fn with_ttl(sock: &UdpSocket, ttl: Option<u8>, send: impl FnOnce()) {
    if let Some(ttl) = ttl {
        let _ = sock.set_ttl(ttl as u32);
    }
    send();
    if ttl.is_some() {
        let _ = sock.set_ttl(DEFAULT_TTL);
    }
}

/// Sends a datagram at once, dropping it when the socket is full. Straight to the kernel:
/// tokio's `try_send_to` answers `WouldBlock` without trying until its reactor has seen the
/// socket become writable, which on a fresh socket in a single-threaded runtime costs the
/// first datagrams (regression: the first registration was lost, and connecting took one
/// retransmission timeout, ~100 ms, longer).
pub(super) fn send_now(sock: &UdpSocket, bytes: &[u8], dst: SocketAddr) -> std::io::Result<()> {
    match socket2::SockRef::from(sock).send_to(bytes, &dst.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// quinn's view of the link: a socket whose only peer is [`VIRTUAL_PEER`].
pub(super) struct LinkSocket {
    pub(super) wire: Arc<Wire>,
    pub(super) state: Arc<Mutex<LinkState>>,
    pub(super) rx: Mutex<mpsc::Receiver<Vec<u8>>>,
    pub(super) local: SocketAddr,
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
        lock(&self.state)
    }
}

/// quinn waits on this when the socket is full (direct sends report `WouldBlock` instead of
/// losing the datagram, so a fast sender is paced by the socket, not by loss). It watches the
/// socket the path sends from: a birthday path's own, or the punch socket.
#[derive(Debug)]
struct Writable(Arc<LinkSocket>);

impl quinn::UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<std::io::Result<()>> {
        let sock = {
            let l = self.0.lock_state();
            match (l.link.path(), &l.direct_sock) {
                (PathKind::Direct(_), Some(s)) => s.clone(),
                _ => self.0.wire.sock.clone(),
            }
        };
        // An error here would end quinn's connection driver: let `try_send` meet it instead.
        sock.poll_send_ready(cx).map(|_| Ok(()))
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
                s.link.on_tx(now);
            }
            (s.link.path(), s.direct_sock.clone())
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
            return self
                .wire
                .absorb(sock.try_io(tokio::io::Interest::WRITABLE, || {
                    udp.send((&**sock).into(), &t)
                }));
        }
        for packet in t.contents.chunks(seg) {
            let (dst, bytes) = self.lock_state().link.wrap(packet);
            match (&direct_sock, path) {
                // A birthday path: its own socket.
                (Some(s), PathKind::Direct(_)) => {
                    self.wire.absorb(s.try_send_to(&bytes, dst).map(|_| ()))?;
                }
                _ => self.wire.send_quic(dst, bytes)?,
            }
        }
        Ok(())
    }

    fn max_transmit_segments(&self) -> usize {
        match (self.lock_state().link.path(), Self::offload()) {
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
pub(super) enum Inbound {
    Control(SocketAddr, Vec<u8>),
    /// The socket cannot be read any more (an error no retry mends): the session ends.
    Broken(std::io::Error),
    /// The relay's TCP connection ended (the network changed under it, or the relay closed
    /// it): connect again.
    RelayTcpLost,
}

/// Receive buffer asked for the punch socket, so that a burst from a fast QUIC sender (GSO
/// hands the kernel 10 packets at once) is not dropped while the reader waits for a CPU. The
/// kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER: usize = 4 << 20;
/// One receive slot: a GRO batch of equal-size datagrams is at most 64 KiB.
const RECV_SLOT: usize = 64 * 1024;

/// Reads the UDP socket: many datagrams per system call (`recvmmsg`), and a burst of the
/// peer's packets as one buffer (UDP GRO), where quinn-udp and the kernel allow.
pub(super) async fn reader(
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
        let n = match got {
            Ok(n) => n,
            // An ICMP error, or the network changing under us: the next datagram may be fine.
            Err(e) if crate::net::sys::is_transient(&e) => continue,
            Err(e) => {
                let _ = ctl.send(Inbound::Broken(e)).await;
                return;
            }
        };
        let io = Io {
            sock: Some(&sock),
            relay,
            link: &link,
            ctl: &ctl,
            quic: &quic,
        };
        for (m, b) in meta.iter_mut().zip(buf.chunks(RECV_SLOT)).take(n) {
            // The dual-stack punch socket reports IPv4 peers as IPv4-mapped addresses.
            m.addr = crate::net::sys::canonical(m.addr);
            let d = &b[..m.len];
            if m.stride <= crate::defaults::MAX_DATAGRAM {
                if !io.demux(m.addr, d, m.stride).await {
                    return;
                }
                continue;
            }
            for d in d.chunks(m.stride) {
                // Longer datagrams are truncated, then rejected by the decoder or QUIC.
                let d = &d[..d.len().min(crate::defaults::MAX_DATAGRAM)];
                if !io.demux(m.addr, d, d.len()).await {
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
    let io = Io {
        sock: None,
        relay,
        link: &link,
        ctl: &ctl,
        quic: &quic,
    };
    loop {
        let Ok(f) = crate::net::stream::read_prefixed(&mut rd).await else {
            let _ = ctl.send(Inbound::RelayTcpLost).await;
            return;
        };
        if !io.demux(relay, &f, f.len()).await {
            return;
        }
    }
}

/// What a reader sorts into: the socket it reads (for path challenges and answers, which
/// leave where the datagram came in; none for the relay's TCP connection), the link, the
/// control plane and QUIC.
struct Io<'a> {
    sock: Option<&'a UdpSocket>,
    relay: SocketAddr,
    link: &'a Mutex<LinkState>,
    ctl: &'a mpsc::Sender<Inbound>,
    quic: &'a mpsc::Sender<Vec<u8>>,
}

impl Io<'_> {
    /// Sorts what the socket delivered — one datagram, or a GRO batch of datagrams of
    /// `stride` bytes (the last may be shorter) from one source: path frames to the link,
    /// other natkit frames to the control plane, QUIC the link admits to the QUIC queue
    /// (relayed data unwrapped first). A batch of QUIC packets from the peer goes on as one
    /// item. False when the receivers are gone.
    async fn demux(&self, from: SocketAddr, d: &[u8], stride: usize) -> bool {
        let stride = stride.max(1);
        if from != self.relay && !d.chunks(stride).any(crate::wire::rendezvous::is_frame) {
            if !d.is_empty() && self.admit(from, d.len().min(stride)) {
                // A full QUIC queue drops the datagrams rather than stalling control traffic.
                let _ = self.quic.try_send(quic_item(d, stride));
            }
            return true;
        }
        for d in d.chunks(stride) {
            // Relayed datagrams arrive inside Data frames from the relay.
            let (from, d) = match Frame::parse(d) {
                Ok(Frame::Data { payload, .. }) if from == self.relay => (VIRTUAL_PEER, payload),
                _ => (from, d.to_vec()),
            };
            if crate::wire::rendezvous::is_frame(&d) {
                if from == VIRTUAL_PEER || !self.path_frame(from, &d) {
                    let src = if from == VIRTUAL_PEER {
                        self.relay
                    } else {
                        from
                    };
                    if self.ctl.send(Inbound::Control(src, d)).await.is_err() {
                        return false;
                    }
                }
                continue;
            }
            if self.admit(from, d.len()) {
                let _ = self.quic.try_send(quic_item(&d, d.len()));
            }
        }
        true
    }

    /// QUIC arrived from `from` (the peer directly, or [`VIRTUAL_PEER`] through the relay):
    /// whether the link lets QUIC see it. A direct source the link does not trust may get a
    /// path challenge instead (sent from the socket it came in on).
    fn admit(&self, from: SocketAddr, len: usize) -> bool {
        let via = if from == VIRTUAL_PEER || from == self.relay {
            Via::Relay
        } else {
            Via::Direct(from)
        };
        let admit = lock(self.link).link.admit(Instant::now(), via, len);
        match admit {
            Admit::Quic => true,
            Admit::Challenge(c) => {
                if let Some(s) = self.sock {
                    let _ = send_now(s, &c, from);
                }
                false
            }
            Admit::Drop => false,
        }
    }

    /// A path challenge or response straight from `from`: answered, or the path follows a
    /// peer whose new address it validated. False when `d` is no path frame.
    fn path_frame(&self, from: SocketAddr, d: &[u8]) -> bool {
        let f = match Frame::parse(d) {
            Ok(f @ (Frame::PathChallenge { .. } | Frame::PathResponse { .. })) => f,
            _ => return false,
        };
        if from == self.relay {
            return true;
        }
        let r = lock(self.link).link.on_path_frame(Instant::now(), from, &f);
        if let (Some(reply), Some(s)) = (r.reply, self.sock) {
            let _ = send_now(s, &reply, from);
        }
        if let Some(old) = r.moved {
            tracing::info!(%old, new = %from, "peer address changed");
        }
        true
    }
}

/// One item of the QUIC queue, as [`LinkSocket::poll_recv`] reads it: the stride (2 bytes,
/// big-endian), then datagrams of that many bytes (the last may be shorter).
fn quic_item(d: &[u8], stride: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + d.len());
    v.extend_from_slice(&(stride.min(u16::MAX as usize) as u16).to_be_bytes());
    v.extend_from_slice(d);
    v
}

/// Moves the link to `path` and describes the change for the user; `found_by` names the
/// technique that found a direct path outside the checks (and its socket).
pub(super) fn switch_path(
    link: &Mutex<LinkState>,
    wire: &Wire,
    path: PathKind,
    probes: u32,
    t0: Instant,
    found_by: Option<(&'static str, Option<Arc<UdpSocket>>)>,
) -> Event {
    let hint = {
        let mut l = lock(link);
        l.set_path(path, Instant::now());
        if let Some((_, sock)) = &found_by {
            l.direct_sock = sock.clone();
        }
        l.method_hint
    };
    let (p, peer) = match path {
        PathKind::Direct(a) => ("direct", a),
        PathKind::Relay => ("relay", wire.relay),
    };
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
        family: super::dual::family(peer),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        probes,
    }
}
