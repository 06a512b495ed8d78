//! The tokio driver for [`crate::proto::relay::Relay`]: binds the sockets, feeds datagrams, TCP frames
//! and timers to the core, and carries out what it asks. One core behind a mutex; socket IO
//! runs on every worker thread of a multi-threaded runtime.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::defaults;
use crate::proto::relay::{source_key, ConnId, Now, Output, Relay, RelayConfig, Throttle};

/// Errors that stop the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}")]
    Bind {
        /// udp, tcp or metrics.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The startup line (`--json`): what the relay bound and which features are on.
#[derive(Debug, Clone, Serialize)]
pub struct Listening {
    /// Always "listening".
    pub event: &'static str,
    /// Schema version.
    pub schema: u32,
    /// STUN over UDP, on every address.
    pub stun_udp: Vec<SocketAddr>,
    /// STUN, rendezvous and relay over TCP.
    pub tcp: SocketAddr,
    /// Rendezvous and relay over UDP.
    pub rendezvous_udp: SocketAddr,
    /// RFC 5780 behaviour discovery.
    pub rfc5780: bool,
    /// Tokens required.
    pub secret: bool,
    /// Deny list lifted.
    pub allow_private: bool,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The other family's rendezvous address (UDP and TCP) when the relay serves both
    /// (`--addr` once per family); `tcp` and `rendezvous_udp` are the first `--addr`'s.
    pub other_family: Option<SocketAddr>,
}

/// Binds a UDP socket; an IPv6 one only for IPv6 (`IPV6_V6ONLY`), so that `--addr ::` and
/// `--addr 0.0.0.0` can both be served and each family's answers leave from its own socket.
fn bind_udp(a: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(a),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if a.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&a.into())?;
    UdpSocket::from_std(s.into())
}

/// Binds a TCP listener, IPv6 only for IPv6 as [`bind_udp`].
fn bind_tcp(a: SocketAddr) -> std::io::Result<TcpListener> {
    let s = match a {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = tokio::net::TcpSocket::new_v6()?;
            socket2::SockRef::from(&s).set_only_v6(true)?;
            s
        }
    };
    s.set_reuseaddr(true)?;
    s.bind(a)?;
    s.listen(1024)
}

type Core = Arc<Mutex<Relay>>;

struct Shared {
    core: Core,
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    conns: Mutex<HashMap<ConnId, mpsc::Sender<Vec<u8>>>>,
    next_conn: AtomicU64,
    tcp: Mutex<TcpCount>,
    cfg: RelayConfig,
}

/// Open TCP connections, in all and per source ([`source_key`]).
#[derive(Default)]
struct TcpCount {
    all: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Most connections at once: `--max-tcp`, lowered to stay under the descriptor limit.
    cap: usize,
    warn: Throttle,
}

/// One admitted TCP connection; dropping it gives its place back.
struct TcpPlace {
    shared: Arc<Shared>,
    key: IpAddr,
}

impl Drop for TcpPlace {
    fn drop(&mut self) {
        if let Ok(mut t) = self.shared.tcp.lock() {
            t.all = t.all.saturating_sub(1);
            if let Some(n) = t.per_source.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    t.per_source.remove(&self.key);
                }
            }
        }
    }
}

/// Admits a new connection from `from`, or None: a denied source, the global cap or the
/// source's cap reached. The caller closes a refused connection at once.
fn admit(shared: &Arc<Shared>, from: SocketAddr) -> Option<TcpPlace> {
    if shared.cfg.denies(from.ip()) {
        return None;
    }
    let key = source_key(from.ip());
    let mut t = shared.tcp.lock().ok()?;
    let mine = t.per_source.get(&key).copied().unwrap_or(0);
    let why = if t.all >= t.cap {
        "relay TCP connection cap reached"
    } else if mine >= shared.cfg.limits.tcp_per_source {
        "per-source TCP connection cap reached"
    } else {
        t.all += 1;
        *t.per_source.entry(key).or_default() += 1;
        return Some(TcpPlace {
            shared: shared.clone(),
            key,
        });
    };
    if let Some(left_out) = t.warn.ready(Instant::now()) {
        tracing::warn!(source = %key, left_out, "{why}: connection closed");
    }
    None
}

/// `--max-tcp`, lowered so that accepted connections leave [`defaults::RELAY_FD_RESERVE`]
/// descriptors free under the soft RLIMIT_NOFILE: the relay then refuses connections itself
/// instead of running into EMFILE.
fn tcp_cap(max_tcp: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    let cap = max_tcp
        .min(soft.saturating_sub(defaults::RELAY_FD_RESERVE))
        .max(1);
    if cap < max_tcp {
        tracing::info!(
            cap,
            max_tcp,
            soft,
            "TCP connection cap lowered to fit the descriptor limit"
        );
    }
    cap
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: crate::net::sys::unix_now(),
    }
}

/// Binds everything and returns the startup description and a future that serves until
/// `shutdown` turns true.
pub async fn bind(
    cfg: RelayConfig,
    metrics: Option<SocketAddr>,
) -> Result<
    (
        Listening,
        impl std::future::Future<Output = ()>,
        watch::Sender<bool>,
    ),
    ServeError,
> {
    let locals = cfg.locals();
    let mut udp = HashMap::new();
    for &a in &locals {
        let s = bind_udp(a).map_err(|e| ServeError::Bind {
            what: "udp",
            addr: a,
            source: e,
        })?;
        grow_buffers(&s);
        udp.insert(a, Arc::new(s));
    }
    let mut tcp = Vec::new();
    for (a, _) in cfg.families() {
        tcp.push(bind_tcp(a).map_err(|e| ServeError::Bind {
            what: "tcp",
            addr: a,
            source: e,
        })?);
    }
    let metrics_listener = match metrics {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|e| ServeError::Bind {
            what: "metrics",
            addr: a,
            source: e,
        })?),
        None => None,
    };
    let listening = Listening {
        event: "listening",
        schema: 1,
        stun_udp: locals.clone(),
        tcp: cfg.primary,
        rendezvous_udp: cfg.primary,
        rfc5780: cfg.rfc5780(),
        secret: cfg.secret.is_some(),
        allow_private: cfg.allow_private,
        metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        other_family: cfg.families().get(1).map(|f| f.0),
    };
    let shared = Arc::new(Shared {
        core: Arc::new(Mutex::new(Relay::new(
            cfg.clone(),
            Instant::now(),
            rand::random(),
        ))),
        udp,
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        tcp: Mutex::new(TcpCount {
            cap: tcp_cap(cfg.limits.max_tcp),
            ..TcpCount::default()
        }),
        cfg,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let fut = serve(shared, tcp, metrics_listener, stop_rx);
    Ok((listening, fut, stop_tx))
}

async fn serve(
    shared: Arc<Shared>,
    tcp: Vec<TcpListener>,
    metrics: Option<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    // One reader per core on each socket, so relayed traffic uses every core (datagrams of
    // one flow may be reordered, as on any multipath network; peers run QUIC over it).
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    for (&local, sock) in &shared.udp {
        for _ in 0..readers {
            tasks.push(tokio::spawn(udp_loop(shared.clone(), local, sock.clone())));
        }
    }
    tasks.push(tokio::spawn(timer_loop(shared.clone())));
    for l in tcp {
        tasks.push(tokio::spawn(accept_loop(shared.clone(), l)));
    }
    if let Some(m) = metrics {
        tasks.push(tokio::spawn(metrics_loop(shared.clone(), m)));
    }
    let _ = stop.wait_for(|s| *s).await;
    for t in tasks {
        t.abort();
    }
    tracing::info!("relay stopped");
}

/// Locks the core, runs `f`, and carries out every output it produced.
async fn with_core(shared: &Shared, f: impl FnOnce(&mut Relay)) {
    let outs: Vec<Output> = {
        let mut core = match shared.core.lock() {
            Ok(c) => c,
            // A panic while holding the lock is a bug; keep serving with the state as is.
            Err(p) => p.into_inner(),
        };
        f(&mut core);
        std::iter::from_fn(|| core.poll_output()).collect()
    };
    for o in outs {
        match o {
            Output::Udp { src, dst, payload } => {
                if let Some(s) = shared.udp.get(&src) {
                    if let Err(e) = s.send_to(&payload, dst).await {
                        tracing::debug!(%dst, "send failed: {e}");
                    }
                }
            }
            Output::Tcp { conn, payload } => {
                let tx = shared.conns.lock().ok().and_then(|c| c.get(&conn).cloned());
                if let Some(tx) = tx {
                    // A slow reader loses frames rather than stalling the relay.
                    let _ = tx.try_send(payload);
                }
            }
            Output::Close(conn) => {
                if let Ok(mut c) = shared.conns.lock() {
                    c.remove(&conn);
                }
            }
            Output::DialTcp { dst, payload } => {
                tokio::spawn(async move {
                    let r = tokio::time::timeout(crate::defaults::RELAY_DIALBACK_CONNECT, async {
                        let mut s = TcpStream::connect(dst).await?;
                        s.write_all(&crate::wire::framing::for_relay_stream(&payload))
                            .await?;
                        s.shutdown().await
                    })
                    .await;
                    tracing::debug!(%dst, ok = matches!(r, Ok(Ok(()))), "tcp dial-back");
                });
            }
        }
    }
}

/// Bursts from many peers arrive at one socket: ask for 4 MiB socket buffers (forced when
/// running with CAP_NET_ADMIN, else clamped by the kernel to net.core.rmem_max).
fn grow_buffers(s: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt on a valid fd with an int option.
        unsafe {
            let p = &size as *const _ as *const libc::c_void;
            let l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, force, p, l) != 0 {
                libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, plain, p, l);
            }
        }
    }
}

async fn udp_loop(shared: Arc<Shared>, local: SocketAddr, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here; they are not fatal.
            Err(_) => continue,
        };
        let data = &buf[..n];
        let mut fast = None;
        with_core(&shared, |c| fast = c.forward_udp(now(), local, from, data)).await;
        // Relayed data: the same bytes go out unchanged from the peer's socket.
        if let Some((src, dst)) = fast {
            if let Some(s) = shared.udp.get(&src) {
                let _ = s.send_to(data, dst).await;
            }
        }
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let at = match shared.core.lock() {
            Ok(c) => c.poll_timeout(),
            Err(p) => p.into_inner().poll_timeout(),
        };
        tokio::time::sleep_until(at.into()).await;
        with_core(&shared, |c| c.handle_timeout(Instant::now())).await;
    }
}

/// Accepts connections: a refused one (denied source, a cap) is closed at once; a failed
/// accept (EMFILE and the like) pauses the loop, doubling the pause while failures go on.
async fn accept_loop(shared: Arc<Shared>, l: TcpListener) {
    let mut a = Acceptor::new(l);
    loop {
        let (s, from) = a.next().await;
        let Some(place) = admit(&shared, from) else {
            // Dropping the stream closes it now.
            drop(s);
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(tcp_conn(shared.clone(), id, s, from, place));
    }
}

/// A listener whose failed accepts (EMFILE, ENFILE, ENOBUFS) pause it instead of spinning:
/// the pause doubles from [`defaults::RELAY_ACCEPT_BACKOFF_MIN`] up to
/// [`defaults::RELAY_ACCEPT_BACKOFF_MAX`] while failures go on, and the warning is throttled.
struct Acceptor {
    l: TcpListener,
    backoff: std::time::Duration,
    warn: Throttle,
}

impl Acceptor {
    fn new(l: TcpListener) -> Self {
        Acceptor {
            l,
            backoff: defaults::RELAY_ACCEPT_BACKOFF_MIN,
            warn: Throttle::default(),
        }
    }

    async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.l.accept().await {
                Ok(x) => {
                    self.backoff = defaults::RELAY_ACCEPT_BACKOFF_MIN;
                    return x;
                }
                Err(e) => {
                    if let Some(left_out) = self.warn.ready(Instant::now()) {
                        tracing::warn!(left_out, "accept failed: {e}; pausing {:?}", self.backoff);
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(defaults::RELAY_ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

async fn tcp_conn(
    shared: Arc<Shared>,
    id: ConnId,
    s: TcpStream,
    from: SocketAddr,
    _place: TcpPlace,
) {
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    if let Ok(mut c) = shared.conns.lock() {
        c.insert(id, tx);
    }
    let writer = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if wr
                .write_all(&crate::wire::framing::for_relay_stream(&p))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut wait = defaults::RELAY_TCP_FIRST_MESSAGE;
    while let Some(msg) = read_tcp_message(&mut rd, wait).await {
        wait = std::time::Duration::from_secs(defaults::RELAY_IDLE_SECS);
        with_core(&shared, |c| c.handle_tcp(now(), id, from, &msg)).await;
    }
    if let Ok(mut c) = shared.conns.lock() {
        c.remove(&id);
    }
    writer.abort();
    with_core(&shared, |c| c.tcp_closed(id)).await;
}

/// Reads one message from a relay TCP connection: a natkit frame behind its u16 length
/// (`len | "NK" …`), or a STUN message (RFC 8489 §6.2.2, its own length in the header).
/// Its first byte must come within `wait`, all of it within [`defaults::RELAY_TCP_MESSAGE`]
/// from then. None on end of stream, a timeout or anything malformed (the connection is
/// closed).
async fn read_tcp_message(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    wait: std::time::Duration,
) -> Option<Vec<u8>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, rd.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return None,
    }
    tokio::time::timeout(
        defaults::RELAY_TCP_MESSAGE,
        crate::net::stream::read_relay_message(rd, defaults::MAX_DATAGRAM),
    )
    .await
    .ok()?
}

async fn metrics_loop(shared: Arc<Shared>, l: TcpListener) {
    let mut a = Acceptor::new(l);
    loop {
        let (mut s, _) = a.next().await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ =
                tokio::time::timeout(crate::defaults::RELAY_METRICS_READ, s.read(&mut buf)).await;
            let body = match shared.core.lock() {
                Ok(c) => c.metrics().render(c.sessions()),
                Err(p) => {
                    let c = p.into_inner();
                    c.metrics().render(c.sessions())
                }
            };
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ =
                tokio::time::timeout(defaults::RELAY_METRICS_WRITE, s.write_all(resp.as_bytes()))
                    .await;
        });
    }
}
