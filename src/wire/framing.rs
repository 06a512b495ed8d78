//! Framing on byte streams (TCP to the relay and between peers): natkit frames travel behind a
//! big-endian u16 length; STUN messages carry their own length in the header
//! (RFC 8489 §6.2.2), so a stream to the relay can interleave both. One definition for every
//! reader and writer in the crate.
use crate::wire::rendezvous;
use crate::wire::stun;

/// Bytes of the length prefix in front of a natkit frame.
pub const PREFIX_LEN: usize = 2;

/// `payload` behind its u16 length. A payload longer than 65,535 bytes cannot be framed;
/// callers send datagram-sized payloads only, and longer ones are cut at the limit's length
/// field so the reader never mis-frames the stream (it reads a shorter, unparseable frame).
pub fn length_prefixed(payload: &[u8]) -> Vec<u8> {
    let n = payload.len().min(u16::MAX as usize);
    let mut v = Vec::with_capacity(PREFIX_LEN + n);
    v.extend_from_slice(&(n as u16).to_be_bytes());
    v.extend_from_slice(&payload[..n]);
    v
}

/// How a message on a mixed relay stream goes out: STUN as it is, a natkit frame behind its
/// length.
pub fn for_relay_stream(payload: &[u8]) -> Vec<u8> {
    if stun::looks_like_stun(payload) {
        payload.to_vec()
    } else {
        length_prefixed(payload)
    }
}

/// The length of a length-prefixed frame, from its prefix.
pub fn prefixed_len(prefix: [u8; PREFIX_LEN]) -> usize {
    usize::from(u16::from_be_bytes(prefix))
}

/// The length of a STUN message's body, from the first 4 bytes of its header.
pub fn stun_body_len(head: &[u8; 4]) -> usize {
    usize::from(u16::from_be_bytes([head[2], head[3]]))
}

/// What the first 4 bytes of a message on a relay stream announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamHead {
    /// A natkit frame of this many bytes in all; its first two bytes (the magic) are the
    /// head's last two.
    Frame(usize),
    /// A STUN message of this many bytes in all, the head included.
    Stun(usize),
}

/// Reads a relay stream's message head; `None` for anything that is neither a natkit frame of
/// 4 to `max` bytes nor a STUN header announcing at most `max` bytes of attributes (the
/// connection is then closed).
pub fn stream_head(head: &[u8; 4], max: usize) -> Option<StreamHead> {
    if head[2..4] == rendezvous::MAGIC {
        let len = prefixed_len([head[0], head[1]]);
        return (4..=max).contains(&len).then_some(StreamHead::Frame(len));
    }
    if head[0] & 0xC0 != 0 {
        return None;
    }
    let len = stun_body_len(head);
    (len <= max && len % 4 == 0).then_some(StreamHead::Stun(stun::HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_through_its_prefix() {
        let f = length_prefixed(b"NK\x01abc");
        assert_eq!(prefixed_len([f[0], f[1]]), 6);
        assert_eq!(&f[2..], b"NK\x01abc");
        let head = [f[0], f[1], f[2], f[3]];
        assert_eq!(stream_head(&head, 2048), Some(StreamHead::Frame(6)));
    }

    #[test]
    fn stun_goes_out_unprefixed_and_is_recognised() {
        let m = stun::binding_request([7; 12], stun::Change::NONE);
        assert_eq!(for_relay_stream(&m), m);
        let head = [m[0], m[1], m[2], m[3]];
        assert_eq!(stream_head(&head, 2048), Some(StreamHead::Stun(m.len())));
    }

    #[test]
    fn junk_and_oversized_heads_are_refused() {
        assert_eq!(stream_head(&[0xff, 0xff, 0, 0], 2048), None);
        assert_eq!(stream_head(&[0x00, 0x01, 0x10, 0x00], 2048), None);
        assert_eq!(stream_head(&[0x00, 0x01, 0x00, 0x03], 2048), None);
        assert_eq!(stream_head(&[0x10, 0x00, b'N', b'K'], 2048), None);
    }

    #[test]
    fn an_overlong_payload_is_cut_not_misframed() {
        let big = vec![0u8; 70_000];
        let f = length_prefixed(&big);
        assert_eq!(prefixed_len([f[0], f[1]]), u16::MAX as usize);
        assert_eq!(f.len(), PREFIX_LEN + u16::MAX as usize);
    }
}
