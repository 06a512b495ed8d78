//! Copying between the user's side and the peer's stream, shared by QUIC and TCP: buffers
//! that grow while reads fill them, and the byte totals for the `done` event.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copy buffers start at this size…
pub(crate) const COPY_BUF_MIN: usize = 64 * 1024;
/// …and double, up to this, while reads fill them: a bulk transfer then moves large chunks
/// (each write to stdout is a hop to tokio's blocking pool), a trickle keeps a small buffer.
const COPY_BUF_MAX: usize = 1024 * 1024;

/// Totals carried, for the `done` event.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
}

/// Doubles `buf` (up to [`COPY_BUF_MAX`]) when the last read filled it.
pub(crate) fn grow(buf: &mut Vec<u8>, filled: usize) {
    if filled == buf.len() && buf.len() < COPY_BUF_MAX {
        buf.resize(2 * buf.len(), 0);
    }
}

/// Copies `input` to `out` until the end of input, counting into `sent`; ending `out`
/// (finish, shutdown) is the caller's, since QUIC and TLS end a stream differently.
pub(crate) async fn copy_up<R, W>(
    input: &mut R,
    out: &mut W,
    sent: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF_MIN];
    loop {
        let k = input.read(&mut buf).await?;
        if k == 0 {
            return Ok(());
        }
        out.write_all(&buf[..k]).await?;
        sent.fetch_add(k as u64, Relaxed);
        grow(&mut buf, k);
    }
}
