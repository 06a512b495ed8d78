//! TCP hole punching, the IO half ([`crate::proto::punch::tcp`] decides what to do): sockets bound
//! to one reusable local port, the relay's STUN over TCP for our public endpoint, the
//! connection attempts, then TLS 1.3 over the punched stream with both certificates pinned by
//! the PAKE — the same authentication and key confirmation as QUIC, over TCP.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::punch::quic::{grow, terr, Totals, COPY_BUF_MIN};
use crate::net::punch::PunchError;
use crate::wire::rendezvous::Role;

/// rustls reads the socket 4 KiB at a time (its deframer's read size): a buffer under it
/// turns that into one receive per 256 KiB, a 60th of the system calls for bulk data.
const RECV_BUF: usize = 256 * 1024;

/// ALPN of natkit's TLS over a punched TCP stream.
const ALPN: &[u8] = b"natkit-punch-tcp/1";

/// TTL of the listener's arming SYN: it passes the listener's own NAT (and a carrier NAT
/// behind it) and dies before the peer's NAT, which would answer an unexpected SYN with a
/// reset (the same reasoning as UDP's opening packets, [`crate::proto::punch::OPENING_TTLS`]).
pub const ARM_TTL: u32 = 3;
/// The TTL restored once the arming SYN has gone: the SYN-ACK must reach the peer.
const DEFAULT_TTL: u32 = 64;

/// Our side of a TCP punch: the local port every attempt binds, our public endpoint as the
/// relay saw it, and the connection to the relay that keeps our NAT's mapping alive.
#[derive(Debug)]
pub struct Endpoint {
    /// The local address all attempts bind (`0.0.0.0:port`).
    pub local: SocketAddr,
    /// Our public TCP endpoint (the relay's STUN answer).
    pub public: SocketAddr,
    _keep: TcpStream,
}

/// A TCP socket bound to `local` that other sockets may bind too (each attempt is a new
/// socket on the punch port): `SO_REUSEADDR` and `SO_REUSEPORT`.
fn socket(local: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    Ok(s)
}

/// Connects from `local` to `dst`. With `ttl`, the SYN leaves with that TTL and the socket's
/// TTL is restored at once; `sent` runs when the SYN has gone. Resolves when the connection
/// is up or has failed (refused, reset); the caller bounds the time.
pub async fn attempt(
    local: SocketAddr,
    dst: SocketAddr,
    ttl: Option<u32>,
    sent: impl FnOnce(),
) -> io::Result<TcpStream> {
    let s = socket(local)?;
    if let Some(t) = ttl {
        s.set_ttl(t)?;
    }
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if ttl.is_some() {
        s.set_ttl(DEFAULT_TTL)?;
    }
    sent();
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    // Writable without an error but not connected cannot happen on Linux; check anyway.
    stream.peer_addr()?;
    Ok(stream)
}

/// Binds the punch port, connects to the relay from it and asks the relay's STUN over TCP
/// (RFC 8489 §6.2.2) where that connection comes from.
pub async fn endpoint(relay: SocketAddr) -> io::Result<Endpoint> {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let port = socket(any)?
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no local port"))?;
    let local = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let timeout = crate::defaults::TCP_ENDPOINT_TIMEOUT;
    let mut s = tokio::time::timeout(timeout, attempt(local, relay, None, || {}))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the relay's TCP port"))??;
    let tid = rand::random();
    s.write_all(&crate::wire::stun::binding_request(
        tid,
        crate::wire::stun::Change::NONE,
    ))
    .await?;
    let public = tokio::time::timeout(timeout, async {
        let msg = crate::net::stream::read_stun(&mut s).await?;
        crate::wire::stun::decode(&msg)
            .ok()
            .filter(|m| m.tid == tid)
            .and_then(|m| m.reflexive())
            .ok_or_else(|| io::Error::other("the relay's STUN answer over TCP is unusable"))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the relay's STUN over TCP"))??;
    Ok(Endpoint {
        local,
        public,
        _keep: s,
    })
}

/// TLS over the punched stream (the listener is the TLS server), then netcat semantics as
/// QUIC's pipe: returns (bytes sent, bytes received). TCP keepalives every `keepalive` keep
/// both NATs' mappings of an idle connection (RFC 5382 §5 lets a NAT drop an idle one after
/// 2 h 4 min, and many do sooner) and find a vanished peer when idle. No TCP_USER_TIMEOUT:
/// recent Linux applies it to a receive window that stays closed too, which would end a session
/// whose reader merely paused (`punch connect CODE | less`); a peer that vanishes mid-send
/// is found by TCP's own retransmission limit.
pub async fn run<R, W>(
    role: Role,
    stream: TcpStream,
    keepalive: Duration,
    cert: &rcgen::CertifiedKey,
    peer_fp: [u8; 32],
    input: R,
    output: W,
) -> Result<(u64, u64), PunchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    stream.set_nodelay(true)?;
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive)
        .with_retries(crate::defaults::TCP_KEEPALIVE_PROBES);
    socket2::SockRef::from(&stream).set_tcp_keepalive(&ka)?;
    let stream = tokio::io::BufReader::with_capacity(RECV_BUF, stream);
    let handshake = async {
        Ok::<_, PunchError>(match role {
            Role::Listener => {
                let tls = crate::net::punch::quic::tls_server(cert, peer_fp, ALPN)?;
                tokio_rustls::TlsAcceptor::from(Arc::new(tls))
                    .accept(stream)
                    .await
                    .map_err(terr)?
                    .into()
            }
            Role::Connector => {
                let tls = crate::net::punch::quic::tls_client(cert, peer_fp, ALPN)?;
                let name = rustls::pki_types::ServerName::try_from("natkit").map_err(terr)?;
                tokio_rustls::TlsConnector::from(Arc::new(tls))
                    .connect(name, stream)
                    .await
                    .map_err(terr)?
                    .into()
            }
        })
    };
    let tls: tokio_rustls::TlsStream<tokio::io::BufReader<TcpStream>> =
        tokio::time::timeout(Duration::from_secs(10), handshake)
            .await
            .map_err(|_| terr("the TLS handshake over TCP did not finish"))??;
    let totals = Totals::default();
    bridge(tls, input, output, &totals).await.map_err(terr)?;
    Ok((totals.sent.load(Relaxed), totals.received.load(Relaxed)))
}

/// Copies `input` to the TLS stream and the stream to `output`, both at once. End of input
/// sends TLS close_notify and a TCP FIN (half-close); the peer's end reaches `output` as end
/// of output.
async fn bridge<S, R, W>(tls: S, mut input: R, mut output: W, totals: &Totals) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(tls);
    let up = async {
        let mut buf = vec![0u8; COPY_BUF_MIN];
        loop {
            let k = input.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            wr.write_all(&buf[..k]).await?;
            totals.sent.fetch_add(k as u64, Relaxed);
            grow(&mut buf, k);
        }
        wr.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; COPY_BUF_MIN];
        let mut reader_gone = false;
        let mut eof = false;
        while !eof {
            // One TLS record (16 KiB) per read: gather what has already arrived before
            // writing, so a bulk transfer writes large chunks (a write to a non-pipe stdout
            // is a hop to tokio's blocking pool) and a trickle is written at once.
            let mut k = rd.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            while k < buf.len() {
                match tokio::time::timeout(Duration::ZERO, rd.read(&mut buf[k..])).await {
                    Ok(Ok(0)) => {
                        eof = true;
                        break;
                    }
                    Ok(Ok(n)) => k += n,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => break,
                }
            }
            totals.received.fetch_add(k as u64, Relaxed);
            if reader_gone {
                // Drain, so the peer's writes finish and it can exit.
                continue;
            }
            match output.write_all(&buf[..k]).await {
                Ok(()) => grow(&mut buf, k),
                // Our reader went away (`punch … | head`): not an error.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => reader_gone = true,
                Err(e) => return Err(e),
            }
        }
        if !reader_gone {
            output.flush().await?;
            output.shutdown().await?;
        }
        Ok(())
    };
    tokio::try_join!(up, down)?;
    Ok(())
}
