//! QUIC (quinn) between the two punch peers, over whatever link the transport (`super::transport`) provides. Each
//! side's self-signed certificate is pinned by the fingerprint the peer confirmed with the
//! PAKE key, so TLS accepts exactly the peer that knows the code. Mutual authentication:
//! the listener (QUIC server) requires the connector's certificate too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::net::punch::pipe::{copy_up, grow, Totals, COPY_BUF_MIN};
use crate::net::punch::tls::{terr, tls_client, tls_server};
use crate::net::punch::PunchError;
use crate::wire::rendezvous::Role;

const ALPN: &[u8] = b"natkit-punch/1";
const STREAM_VERSION: u8 = 1;
/// Per-stream flow-control window (bytes the peer may send ahead of what we have read).
const STREAM_WINDOW: u32 = 8 << 20;

/// How long the peer may stay silent, and how often we keep the path alive.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Keepalive interval (NAT bindings).
    pub keepalive: Duration,
    /// The dead-peer bound: QUIC's idle timeout.
    pub dead_peer: Duration,
}

fn transport(l: Liveness) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Keepalives well under NAT binding lifetimes and under the dead-peer bound, which is
    // the idle timeout: nothing authenticated from the peer for that long, over any path,
    // ends the session (a NAT rebinding or a path change is only a stall).
    let per_bound = l.dead_peer / crate::defaults::DEAD_PEER_KEEPALIVES;
    t.keep_alive_interval(Some(l.keepalive.min(per_bound)));
    // Start at QUIC's 1200 bytes and let path-MTU discovery raise it, but never beyond what
    // a relay data frame carries: the path may switch to the relay at any time, and a packet
    // that fits one path must fit the other. 1400 instead of 1200 is 14 % fewer packets (and
    // per-packet costs) for bulk data. A lost probe is not counted as a dead path (the path
    // monitor needs several unanswered sends over 2 s), and black-hole detection falls back
    // to 1200 if large packets stop getting through.
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(crate::wire::rendezvous::MAX_PAYLOAD as u16);
    t.mtu_discovery_config(Some(mtud));
    // Flow control: quinn's defaults (1.25 MB per stream) are sized for 100 Mbit/s at 100 ms;
    // a receiver that is briefly descheduled would otherwise block a fast sender. These are
    // limits, not allocations.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(4 * STREAM_WINDOW));
    t.send_window(4 * STREAM_WINDOW as u64);
    // Bounded by the CLI far below QUIC's limit (2^62 ms); a value beyond it waits forever.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(l.dead_peer).ok());
    Arc::new(t)
}

/// What to carry over the encrypted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// netcat semantics: one stream between stdin/stdout and the peer.
    Pipe,
    /// Listener: every stream the peer opens is connected to this local TCP service.
    Expose(SocketAddr),
    /// Connector: listen here; every accepted TCP connection becomes a stream to the peer.
    /// The driver binds it before connecting (so a busy port fails early) and passes the
    /// listener to [`run`].
    Local(SocketAddr),
    /// Only UDP flows (`--expose-udp` or `--local-udp` alone): no stream, no stdin/stdout;
    /// runs until the connection closes.
    Udp,
}

/// Connects (connector) or accepts (listener), then carries data as `mode` says (a pipe
/// moves to TCP when `upgrade` delivers it). Returns (bytes sent, bytes received).
#[allow(clippy::too_many_arguments)]
pub async fn run<R, W>(
    role: Role,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    peer: SocketAddr,
    cert: &rcgen::CertifiedKey,
    peer_fp: [u8; 32],
    live: Liveness,
    mode: Mode,
    listener: Option<tokio::net::TcpListener>,
    path_changed: Arc<tokio::sync::Notify>,
    upgrade: crate::net::punch::migrate::Upgrade,
    udp: Option<crate::net::punch::udp::Udp>,
    input: R,
    output: W,
) -> Result<(u64, u64), PunchError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (conn, ep) = establish(role, socket, peer, cert, peer_fp, live, udp.is_some()).await?;
    // UDP flows run beside the streams, for as long as the connection.
    let udp_task = udp.map(|side| {
        let conn = conn.clone();
        crate::net::punch::runs::AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::net::punch::udp::run(conn.clone(), side).await {
                tracing::warn!("UDP forwarding stopped: {e}");
                conn.close(1u32.into(), b"udp");
            }
        }))
    });
    // After a path change, send one ack-eliciting packet at once: its acknowledgement tells
    // the peer where we are now and resets QUIC's probe timer, instead of waiting for a
    // backed-off PTO (RFC 9002 §6.2) that may be seconds away after a stall.
    let nudger = {
        let conn = conn.clone();
        crate::net::punch::runs::AbortOnDrop(tokio::spawn(async move {
            loop {
                path_changed.notified().await;
                let _ = conn.send_datagram(vec![0u8].into());
            }
        }))
    };
    let totals = Arc::new(Totals::default());
    let r = match mode {
        Mode::Pipe => match open_or_accept(&conn, role).await {
            Ok((send, recv)) => {
                crate::net::punch::migrate::pipe(&conn, send, recv, input, output, &totals, upgrade)
                    .await
                    .map_err(terr)
            }
            Err(e) => Err(e),
        },
        Mode::Expose(target) => expose(&conn, target, totals.clone()).await,
        Mode::Local(at) => match listener {
            Some(l) => local(&conn, l, totals.clone()).await,
            None => {
                local(
                    &conn,
                    tokio::net::TcpListener::bind(at).await?,
                    totals.clone(),
                )
                .await
            }
        },
        Mode::Udp => {
            conn.closed().await;
            Ok(())
        }
    };
    drop(udp_task);
    drop(nudger);
    tracing::debug!(stats = ?conn.stats(), "QUIC connection statistics");
    // Silence past the bound ends every mode, hosting included, as an error.
    let silent = matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut));
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    if silent {
        return Err(PunchError::PeerSilent(live.dead_peer));
    }
    r?;
    use std::sync::atomic::Ordering::Relaxed;
    Ok((totals.sent.load(Relaxed), totals.received.load(Relaxed)))
}

async fn establish(
    role: Role,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    peer: SocketAddr,
    cert: &rcgen::CertifiedKey,
    peer_fp: [u8; 32],
    live: Liveness,
    udp: bool,
) -> Result<(quinn::Connection, quinn::Endpoint), PunchError> {
    let runtime = Arc::new(quinn::TokioRuntime);
    let transport = |live| {
        let mut t = transport(live);
        if udp {
            // UDP services: start at the size a relay data frame carries (what MTU
            // discovery would reach on any path natkit uses) so that game datagrams of up to
            // 1,200 bytes fit from the first one; a path that cannot carry it falls back to
            // 1,200 by black-hole detection.
            if let Some(t) = Arc::get_mut(&mut t) {
                t.initial_mtu(crate::wire::rendezvous::MAX_PAYLOAD as u16);
            }
        }
        t
    };
    Ok(match role {
        Role::Listener => {
            let tls = tls_server(cert, peer_fp, ALPN)?;
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(terr)?;
            let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            sc.transport_config(transport(live));
            let ep = quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(sc),
                socket,
                runtime,
            )?;
            let conn = accept_pinned(&ep).await?;
            (conn, ep)
        }
        Role::Connector => {
            let tls = tls_client(cert, peer_fp, ALPN)?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(terr)?;
            let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
            cc.transport_config(transport(live));
            let mut ep = quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                None,
                socket,
                runtime,
            )?;
            ep.set_default_client_config(cc);
            let c = match ep.connect(peer, "natkit").map_err(terr)?.await {
                Err(quinn::ConnectionError::TimedOut) => {
                    return Err(PunchError::PeerSilent(live.dead_peer))
                }
                r => r.map_err(terr)?,
            };
            (c, ep)
        }
    })
}

/// The listener's side of the handshake: keeps accepting until a connection completes it
/// (only the peer whose certificate the PAKE pinned can) or [`HANDSHAKE_TIMEOUT`] passes,
/// so that a stranger's Initial cannot take the only accept. Handshakes run side by side, at
/// most [`QUIC_PENDING_HANDSHAKES`] at once (more are refused).
///
/// [`HANDSHAKE_TIMEOUT`]: crate::defaults::HANDSHAKE_TIMEOUT
/// [`QUIC_PENDING_HANDSHAKES`]: crate::defaults::QUIC_PENDING_HANDSHAKES
async fn accept_pinned(ep: &quinn::Endpoint) -> Result<quinn::Connection, PunchError> {
    let deadline = tokio::time::Instant::now() + crate::defaults::HANDSHAKE_TIMEOUT;
    let mut pending = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            i = ep.accept() => match i {
                Some(i) if pending.len() < crate::defaults::QUIC_PENDING_HANDSHAKES => {
                    pending.spawn(async move { i.await });
                }
                Some(i) => i.refuse(),
                None => return Err(terr("endpoint closed")),
            },
            Some(r) = pending.join_next() => match r {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => tracing::debug!("an incoming QUIC connection failed: {e}"),
                Err(_) => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(terr("the other side did not open the encrypted channel"))
            }
        }
    }
}

/// A QUIC stream reaches the peer only with its first byte: the opener sends one version
/// byte at once, so the acceptor can use the stream before the opener has anything to say.
async fn open_or_accept(
    conn: &quinn::Connection,
    role: Role,
) -> Result<(quinn::SendStream, quinn::RecvStream), PunchError> {
    match role {
        Role::Connector => open(conn).await,
        Role::Listener => accept(conn).await,
    }
}

async fn open(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), PunchError> {
    let (mut send, recv) = conn.open_bi().await.map_err(terr)?;
    send.write_all(&[STREAM_VERSION]).await.map_err(terr)?;
    Ok((send, recv))
}

async fn accept(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), PunchError> {
    let (send, mut recv) = conn.accept_bi().await.map_err(terr)?;
    let mut v = [0u8; 1];
    recv.read_exact(&mut v).await.map_err(terr)?;
    if v[0] != STREAM_VERSION {
        return Err(terr("the other side speaks another stream version"));
    }
    Ok((send, recv))
}

/// Copies `input` into the stream and the stream into `output`, both at once, with
/// half-close both ways; returns once both directions are done and the peer has read all.
async fn bridge<R, W>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut input: R,
    mut output: W,
    totals: Arc<Totals>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::Relaxed;
    let up = async {
        copy_up(&mut input, &mut send, &totals.sent).await?;
        send.finish().map_err(std::io::Error::other)?;
        // Wait until the peer has read everything before anyone closes the connection.
        let _ = send.stopped().await;
        Ok::<(), std::io::Error>(())
    };
    let down = async {
        let mut buf = vec![0u8; COPY_BUF_MIN];
        while let Some(k) = recv.read(&mut buf).await.map_err(std::io::Error::other)? {
            match output.write_all(&buf[..k]).await {
                Ok(()) => {}
                // Our reader went away (`punch … | head`): not an error; tell the peer to
                // stop sending and finish our own direction.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    let _ = recv.stop(0u32.into());
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            totals.received.fetch_add(k as u64, Relaxed);
            grow(&mut buf, k);
        }
        output.flush().await?;
        output.shutdown().await?;
        Ok::<(), std::io::Error>(())
    };
    tokio::try_join!(up, down)?;
    Ok(())
}

/// Listener side of hosting: each stream the peer opens goes to the local service. Ends when
/// the peer closes the connection.
async fn expose(
    conn: &quinn::Connection,
    target: SocketAddr,
    totals: Arc<Totals>,
) -> Result<(), PunchError> {
    // The copiers end with the session (dropping the set aborts them).
    let mut copiers = tokio::task::JoinSet::new();
    loop {
        let (send, recv) = match accept(conn).await {
            Ok(s) => s,
            // The peer went away: hosting is over.
            Err(_) => return Ok(()),
        };
        let totals = totals.clone();
        while copiers.try_join_next().is_some() {}
        copiers.spawn(async move {
            match tokio::net::TcpStream::connect(target).await {
                Ok(tcp) => {
                    let (r, w) = tcp.into_split();
                    if let Err(e) = bridge(send, recv, r, w, totals).await {
                        tracing::debug!("exposed connection ended: {e}");
                    }
                }
                Err(e) => tracing::warn!(%target, "cannot reach the exposed service: {e}"),
            }
        });
    }
}

/// Connector side of hosting: every TCP connection accepted at `at` becomes a stream. Runs
/// until the peer closes the connection.
async fn local(
    conn: &quinn::Connection,
    l: tokio::net::TcpListener,
    totals: Arc<Totals>,
) -> Result<(), PunchError> {
    let mut copiers = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            a = l.accept() => a?,
            _ = conn.closed() => return Ok(()),
        };
        let conn = conn.clone();
        let totals = totals.clone();
        while copiers.try_join_next().is_some() {}
        copiers.spawn(async move {
            match open(&conn).await {
                Ok((send, recv)) => {
                    let (r, w) = tcp.into_split();
                    if let Err(e) = bridge(send, recv, r, w, totals).await {
                        tracing::debug!("forwarded connection ended: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot open a stream to the other side: {e}"),
            }
        });
    }
}
