//! Reading and writing [`crate::wire::framing`] on async byte streams: one reader for
//! length-prefixed natkit frames, one for STUN over TCP (RFC 8489 §6.2.2), and the relay's
//! reader for a stream that interleaves both.
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::framing::{self, StreamHead};
use crate::wire::stun;

/// Reads one length-prefixed frame.
pub async fn read_prefixed<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0u8; framing::PREFIX_LEN];
    rd.read_exact(&mut len).await?;
    let mut f = vec![0u8; framing::prefixed_len(len)];
    rd.read_exact(&mut f).await?;
    Ok(f)
}

/// Writes one frame behind its length.
pub async fn write_prefixed<W: AsyncWrite + Unpin>(wr: &mut W, frame: &[u8]) -> io::Result<()> {
    wr.write_all(&framing::length_prefixed(frame)).await
}

/// Reads one STUN message (its 20-byte header, then the length the header gives).
pub async fn read_stun<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<Vec<u8>> {
    let mut msg = vec![0u8; stun::HEADER_LEN];
    rd.read_exact(&mut msg).await?;
    let len = framing::stun_body_len(&[msg[0], msg[1], msg[2], msg[3]]);
    msg.resize(stun::HEADER_LEN + len, 0);
    rd.read_exact(&mut msg[stun::HEADER_LEN..]).await?;
    Ok(msg)
}

/// Reads one message of a relay stream: a natkit frame (returned without its length) or a
/// STUN message of at most `max` bytes of body. `None` at the end of the stream or on anything
/// malformed; the caller closes the connection.
pub async fn read_relay_message<R: AsyncRead + Unpin>(rd: &mut R, max: usize) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    rd.read_exact(&mut head).await.ok()?;
    match framing::stream_head(&head, max)? {
        StreamHead::Frame(len) => {
            let mut f = vec![0u8; len];
            f[..2].copy_from_slice(&head[2..4]);
            rd.read_exact(&mut f[2..]).await.ok()?;
            Some(f)
        }
        StreamHead::Stun(len) => {
            let mut m = vec![0u8; len];
            m[..4].copy_from_slice(&head);
            rd.read_exact(&mut m[4..]).await.ok()?;
            (m[4..8] == stun::MAGIC_COOKIE).then_some(m)
        }
    }
}
