//! The pipe never waits for TCP: it starts on QUIC at once and moves to a punched TCP
//! connection (`--tcp`, or UDP blocked on one side) once TLS over it is up, without loss or
//! reordering.
//!
//! Each direction moves on its own, at a byte boundary:
//! - the sender, between two reads of its input, opens a unidirectional QUIC stream that
//!   carries one byte, [`MOVED`], finishes its QUIC send stream (FIN) and writes the rest of
//!   its input to TLS (close_notify and a TCP FIN at the end). When its input ends first, the
//!   byte is [`END`];
//! - the receiver reads the QUIC stream to its end, then the byte: [`END`] ends the output,
//!   [`MOVED`] continues it from the TLS stream, to that stream's end.
//!
//! The byte is sent with or without TCP, so a receiver never has to guess whether more is
//! coming (both ends run the same version: see README's note on the relay's cookie). Both
//! sides authenticate TLS as they do QUIC: certificates pinned by the PAKE. A TCP punch that
//! fails, or a TLS handshake that does, changes nothing (a `tried` event). The QUIC connection
//! stays up, idle, to the end of the session and closes as it would without TCP.
//!
//! Forwarding (`--expose`/`--local`) stays on QUIC: the CLI refuses `--tcp` with it, and a
//! relayed session with UDP blocked punches TCP for a pipe only; carrying many connections
//! over one TCP stream would need a multiplexer of its own.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use crate::net::punch::pipe::{copy_up, grow, Totals, COPY_BUF_MIN};
use crate::net::punch::runs::AbortOnDrop;
use crate::net::punch::tcp::{tcp_result, tried, TcpWait, Tls, TlsSide};
use crate::net::punch::{Emit, Event};

/// The sender's input ended on QUIC.
const END: u8 = 0;
/// The sender goes on over TCP.
const MOVED: u8 = 1;

/// The two halves of TLS over the punched connection, each arriving when it is up (never,
/// when TCP fails: the senders are dropped).
pub struct Upgrade {
    rd: oneshot::Receiver<ReadHalf<Tls>>,
    wr: oneshot::Receiver<WriteHalf<Tls>>,
}

impl Upgrade {
    /// No TCP: the pipe stays on QUIC.
    pub(super) fn none() -> Upgrade {
        Upgrade {
            rd: oneshot::channel().1,
            wr: oneshot::channel().1,
        }
    }
}

/// Waits for the TCP punch and TLS over it in a task that ends with the returned guard;
/// says `connected` (`method: tcp`) when the pipe can move, `tried` when it cannot.
pub(super) fn start(
    wait: TcpWait,
    tls: TlsSide,
    keepalive: Duration,
    emit: Emit,
    t0: Instant,
    quiet: Arc<AtomicBool>,
) -> (Upgrade, AbortOnDrop) {
    let (rd_tx, rd) = oneshot::channel();
    let (wr_tx, wr) = oneshot::channel();
    let task = tokio::spawn(async move {
        let Some((stream, peer, attempts)) = tcp_result(wait, &emit, t0).await else {
            return;
        };
        match tls.handshake(stream, keepalive).await {
            Ok(t) => {
                // UDP path changes are no longer news.
                quiet.store(true, Relaxed);
                emit.send(&moved(peer, attempts, t0));
                let (r, w) = tokio::io::split(t);
                let _ = rd_tx.send(r);
                let _ = wr_tx.send(w);
            }
            Err(e) => tried(&emit, t0, attempts, &e.to_string()),
        }
    });
    (Upgrade { rd, wr }, AbortOnDrop(task))
}

fn moved(peer: SocketAddr, attempts: u32, t0: Instant) -> Event {
    Event::Connected {
        path: "direct",
        method: "tcp",
        peer,
        family: super::dual::family(peer),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        probes: attempts,
    }
}

/// netcat semantics over the QUIC stream pair, each direction moving to TLS when
/// `upgrade` delivers it; half-close both ways. Returns once both directions are done and
/// the peer has read all we sent on QUIC.
pub(crate) async fn pipe<R, W>(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    mut input: R,
    mut output: W,
    totals: &Totals,
    upgrade: Upgrade,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Upgrade { rd, wr } = upgrade;
    tokio::try_join!(
        up(conn, send, &mut input, wr, &totals.sent),
        down(conn, recv, &mut output, rd, &totals.received),
    )?;
    Ok(())
}

async fn up<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    input: &mut R,
    mut tls: oneshot::Receiver<WriteHalf<Tls>>,
    sent: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF_MIN];
    let mut waiting = true;
    // A read that loses the race to TLS has read nothing (`read` is cancel-safe): the move
    // falls between two chunks.
    let moved = loop {
        let k = tokio::select! {
            biased;
            w = &mut tls, if waiting => match w {
                Ok(w) => break Some(w),
                Err(_) => {
                    waiting = false;
                    continue;
                }
            },
            k = input.read(&mut buf) => k?,
        };
        if k == 0 {
            break None;
        }
        send.write_all(&buf[..k]).await.map_err(io::Error::other)?;
        sent.fetch_add(k as u64, Relaxed);
        grow(&mut buf, k);
    };
    let mut verdict = conn.open_uni().await.map_err(io::Error::other)?;
    let byte = if moved.is_some() { MOVED } else { END };
    verdict.write_all(&[byte]).await.map_err(io::Error::other)?;
    verdict.finish().map_err(io::Error::other)?;
    send.finish().map_err(io::Error::other)?;
    if let Some(mut w) = moved {
        copy_up(input, &mut w, sent).await?;
        w.shutdown().await?;
    }
    // Wait until the peer has read everything we sent on QUIC before anyone closes the
    // connection.
    let _ = send.stopped().await;
    let _ = verdict.stopped().await;
    Ok(())
}

async fn down<W: AsyncWrite + Unpin>(
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
    output: &mut W,
    tls: oneshot::Receiver<ReadHalf<Tls>>,
    received: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF_MIN];
    if !copy_down(&mut recv, output, &mut buf, received).await? {
        // Our reader went away (`punch … | head`): not an error; tell the peer to stop
        // sending.
        let _ = recv.stop(0u32.into());
        return Ok(());
    }
    let mut v = conn.accept_uni().await.map_err(io::Error::other)?;
    let verdict = v.read_to_end(1).await.map_err(io::Error::other)?;
    match verdict[..] {
        [END] => {}
        [MOVED] => {
            let mut rd = tls.await.map_err(|_| {
                io::Error::other("the other side moved the pipe to TCP, which failed here")
            })?;
            if !copy_down(&mut rd, output, &mut buf, received).await? {
                // Drain, so the peer's writes finish and it can exit.
                while rd.read(&mut buf).await? > 0 {}
                return Ok(());
            }
        }
        _ => return Err(io::Error::other("the other side's pipe verdict is unknown")),
    }
    output.flush().await?;
    output.shutdown().await
}

/// Copies `rd` to `output` until `rd` ends: true then, false when our reader went away.
/// Gathers what has already arrived before each write (TLS hands over one 16 KiB record per
/// read), so a bulk transfer writes large chunks (a write to a non-pipe stdout is a hop to
/// tokio's blocking pool) and a trickle is written at once.
async fn copy_down<S, W>(
    rd: &mut S,
    output: &mut W,
    buf: &mut Vec<u8>,
    received: &AtomicU64,
) -> io::Result<bool>
where
    S: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut eof = false;
    while !eof {
        let mut k = rd.read(buf).await?;
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
        received.fetch_add(k as u64, Relaxed);
        match output.write_all(&buf[..k]).await {
            Ok(()) => grow(buf, k),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
