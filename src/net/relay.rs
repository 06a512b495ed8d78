//! The tokio driver for [`crate::proto::relay::Relay`]: binds the sockets, feeds datagrams, TCP frames
//! and timers to the core, and carries out what it asks. One core behind a mutex; socket IO
//! runs on every worker thread of a multi-threaded runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::proto::relay::{ConnId, Now, Output, Relay, RelayConfig};

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
}

type Core = Arc<Mutex<Relay>>;

struct Shared {
    core: Core,
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    conns: Mutex<HashMap<ConnId, mpsc::Sender<Vec<u8>>>>,
    next_conn: AtomicU64,
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
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
        let s = UdpSocket::bind(a).await.map_err(|e| ServeError::Bind {
            what: "udp",
            addr: a,
            source: e,
        })?;
        grow_buffers(&s);
        udp.insert(a, Arc::new(s));
    }
    let tcp = TcpListener::bind(cfg.primary)
        .await
        .map_err(|e| ServeError::Bind {
            what: "tcp",
            addr: cfg.primary,
            source: e,
        })?;
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
    };
    let shared = Arc::new(Shared {
        core: Arc::new(Mutex::new(Relay::new(cfg, Instant::now(), rand::random()))),
        udp,
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let fut = serve(shared, tcp, metrics_listener, stop_rx);
    Ok((listening, fut, stop_tx))
}

async fn serve(
    shared: Arc<Shared>,
    tcp: TcpListener,
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
    tasks.push(tokio::spawn(accept_loop(shared.clone(), tcp)));
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

async fn accept_loop(shared: Arc<Shared>, l: TcpListener) {
    loop {
        let Ok((s, from)) = l.accept().await else {
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(tcp_conn(shared.clone(), id, s, from));
    }
}

async fn tcp_conn(shared: Arc<Shared>, id: ConnId, s: TcpStream, from: SocketAddr) {
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
    while let Some(msg) = read_tcp_message(&mut rd).await {
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
/// None on end of stream, idle timeout or anything malformed (the connection is closed).
async fn read_tcp_message(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    let idle = std::time::Duration::from_secs(crate::defaults::RELAY_IDLE_SECS);
    tokio::time::timeout(
        idle,
        crate::net::stream::read_relay_message(rd, crate::defaults::MAX_DATAGRAM),
    )
    .await
    .ok()?
}

async fn metrics_loop(shared: Arc<Shared>, l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
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
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
