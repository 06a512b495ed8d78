//! Classic STUN (RFC 3489) Binding requests and answers, for the NAT-type clients that still
//! speak it (pystun3 and its many copies). A classic message has no magic cookie: the 16 bytes
//! after the length are all transaction id (RFC 3489 §11.1), so `stun-rs`, which insists on
//! the cookie, cannot read it. Only what a server needs is here: the request (with
//! CHANGE-REQUEST, §11.2.4) and the answers (MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS,
//! §11.2.1/§11.2.5/§11.2.3; ERROR-CODE, §11.2.9). Decoding never panics.

use std::net::{IpAddr, SocketAddr};

use super::stun::{Change, DecodeError, HEADER_LEN, MAGIC_COOKIE};

/// RFC 3489 §11.1: a 128-bit transaction id.
pub type ClassicTid = [u8; 16];

/// Binding Request, Response and Error Response (RFC 3489 §11.1).
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_RESPONSE: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
/// Attribute types (RFC 3489 §11.2).
const MAPPED_ADDRESS: u16 = 0x0001;
const CHANGE_REQUEST: u16 = 0x0003;
const SOURCE_ADDRESS: u16 = 0x0004;
const CHANGED_ADDRESS: u16 = 0x0005;
const ERROR_CODE: u16 = 0x0009;
/// CHANGE-REQUEST flag bits (RFC 3489 §11.2.4).
const FLAG_CHANGE_IP: u32 = 0x4;
const FLAG_CHANGE_PORT: u32 = 0x2;

/// A classic Binding request, as far as a server needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicRequest {
    /// The whole 16-byte transaction id, echoed in the answer.
    pub tid: ClassicTid,
    /// CHANGE-REQUEST, if present.
    pub change: Option<Change>,
    /// Comprehension-required attributes other than CHANGE-REQUEST (RESPONSE-ADDRESS,
    /// USERNAME, MESSAGE-INTEGRITY, …): a server that does not do them answers 420
    /// (RFC 3489 §8.2.2). RESPONSE-ADDRESS in particular is never honoured: it would make the
    /// server send to an address the client names.
    pub unknown_required: Vec<u16>,
}

/// Decodes a classic Binding request: top two bits zero, type Binding Request, no magic
/// cookie (a message with the cookie is RFC 8489's: [`super::stun::decode`]), a length that is
/// a multiple of four and fits, and well-formed attributes. Never panics.
pub fn decode_request(buf: &[u8]) -> Result<ClassicRequest, DecodeError> {
    if buf.len() < HEADER_LEN || buf[4..8] == MAGIC_COOKIE {
        return Err(DecodeError::NotStun);
    }
    let ty = u16::from_be_bytes([buf[0], buf[1]]);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if ty != BINDING_REQUEST || len % 4 != 0 || HEADER_LEN + len > buf.len() {
        return Err(DecodeError::NotStun);
    }
    let mut tid = [0u8; 16];
    tid.copy_from_slice(&buf[4..HEADER_LEN]);
    let mut out = ClassicRequest {
        tid,
        change: None,
        unknown_required: Vec::new(),
    };
    let mut rest = &buf[HEADER_LEN..HEADER_LEN + len];
    while !rest.is_empty() {
        let Some((head, body)) = rest.split_first_chunk::<4>() else {
            return Err(DecodeError::Malformed("truncated attribute header".into()));
        };
        let t = u16::from_be_bytes([head[0], head[1]]);
        let n = usize::from(u16::from_be_bytes([head[2], head[3]]));
        // RFC 3489 attributes carry no padding of their own; every one it defines is a
        // multiple of four bytes, so a value that is not ends the message as malformed.
        let Some(value) = body.get(..n).filter(|_| n % 4 == 0) else {
            return Err(DecodeError::Malformed(format!(
                "attribute {t:#06x}: bad length"
            )));
        };
        match t {
            CHANGE_REQUEST => {
                let Ok(v) = <[u8; 4]>::try_from(value) else {
                    return Err(DecodeError::Malformed("CHANGE-REQUEST: bad length".into()));
                };
                let flags = u32::from_be_bytes(v);
                out.change = Some(Change {
                    ip: flags & FLAG_CHANGE_IP != 0,
                    port: flags & FLAG_CHANGE_PORT != 0,
                });
            }
            t if t < 0x8000 => out.unknown_required.push(t),
            _ => {}
        }
        rest = &body[n..];
    }
    Ok(out)
}

/// What a server puts in a classic Binding response (RFC 3489 §8.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassicResponse {
    /// Copied from the request.
    pub tid: ClassicTid,
    /// MAPPED-ADDRESS: the request's source as the server saw it.
    pub mapped: SocketAddr,
    /// SOURCE-ADDRESS: where the response is sent from.
    pub source: SocketAddr,
    /// CHANGED-ADDRESS: the alternate address and port, when the server has them.
    pub changed: Option<SocketAddr>,
}

impl ClassicResponse {
    /// The response's bytes: 56 for IPv4 (20 header + 3 × 12), so at most 2.8 times a
    /// 20-byte request.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(3 * 24);
        address(&mut body, MAPPED_ADDRESS, self.mapped);
        address(&mut body, SOURCE_ADDRESS, self.source);
        if let Some(c) = self.changed {
            address(&mut body, CHANGED_ADDRESS, c);
        }
        message(BINDING_RESPONSE, &self.tid, &body)
    }
}

/// A classic Binding error response (RFC 3489 §11.2.9): class and number, reason padded to
/// a multiple of four bytes with spaces (§11.2.9 asks for that padding).
pub fn error_response(tid: &ClassicTid, code: u16, reason: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let mut text = reason.as_bytes()[..reason.len().min(128)].to_vec();
    while text.len() % 4 != 0 {
        text.push(b' ');
    }
    let value_len = 4 + text.len();
    body.extend_from_slice(&ERROR_CODE.to_be_bytes());
    body.extend_from_slice(&(value_len as u16).to_be_bytes());
    body.extend_from_slice(&[0, 0, (code / 100 % 8) as u8, (code % 100) as u8]);
    body.extend_from_slice(&text);
    message(BINDING_ERROR, tid, &body)
}

fn message(ty: u16, tid: &ClassicTid, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + body.len());
    m.extend_from_slice(&ty.to_be_bytes());
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(tid);
    m.extend_from_slice(body);
    m
}

/// An address attribute (RFC 3489 §11.2.1): zero byte, family (1 = IPv4; RFC 3489 defines
/// no other, IPv6 uses RFC 8489's 2), port, address.
fn address(out: &mut Vec<u8>, ty: u16, a: SocketAddr) {
    let (family, ip): (u8, Vec<u8>) = match a.ip() {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&((4 + ip.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&a.port().to_be_bytes());
    out.extend_from_slice(&ip);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request pystun3 sends for test II: type, length 8, a random 16-byte id, then
    /// CHANGE-REQUEST with both flags.
    fn pystun3_request(flags: u32) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x08];
        m.extend_from_slice(&[0xAB; 16]);
        m.extend_from_slice(&[0x00, 0x03, 0x00, 0x04]);
        m.extend_from_slice(&flags.to_be_bytes());
        m
    }

    #[test]
    fn reads_pystun3_requests() {
        let r = decode_request(&pystun3_request(6)).unwrap();
        assert_eq!(r.tid, [0xAB; 16]);
        assert_eq!(r.change, Some(Change::IP_AND_PORT));
        assert!(r.unknown_required.is_empty());
        let r = decode_request(&pystun3_request(2)).unwrap();
        assert_eq!(r.change, Some(Change::PORT));
        let mut plain = vec![0x00, 0x01, 0x00, 0x00];
        plain.extend_from_slice(&[1; 16]);
        assert_eq!(decode_request(&plain).unwrap().change, None);
    }

    #[test]
    fn modern_and_other_messages_are_not_classic_requests() {
        let modern = super::super::stun::binding_request([1; 12], Change::NONE);
        assert_eq!(decode_request(&modern), Err(DecodeError::NotStun));
        let mut resp = pystun3_request(0);
        resp[0] = 0x01;
        assert_eq!(decode_request(&resp), Err(DecodeError::NotStun));
        assert!(decode_request(b"NK\x01\x02").is_err());
    }

    #[test]
    fn response_address_is_reported_not_followed() {
        let mut m = vec![0x00, 0x01, 0x00, 0x0C];
        m.extend_from_slice(&[2; 16]);
        m.extend_from_slice(&[0x00, 0x02, 0x00, 0x08, 0, 1, 0x12, 0x34, 10, 0, 0, 1]);
        assert_eq!(decode_request(&m).unwrap().unknown_required, vec![0x0002]);
    }

    #[test]
    fn response_layout_is_what_pystun3_parses() {
        let r = ClassicResponse {
            tid: [7; 16],
            mapped: "203.0.113.21:40000".parse().unwrap(),
            source: "203.0.113.11:3479".parse().unwrap(),
            changed: Some("203.0.113.11:3479".parse().unwrap()),
        }
        .encode();
        assert_eq!(r.len(), 56);
        assert_eq!(&r[..4], &[0x01, 0x01, 0x00, 36]);
        assert_eq!(&r[4..20], &[7; 16]);
        // MAPPED-ADDRESS: port at offset 6, address at 8 of the attribute (pystun3's reads).
        assert_eq!(&r[20..32], &[0, 1, 0, 8, 0, 1, 0x9C, 0x40, 203, 0, 113, 21]);
        assert_eq!(&r[32..36], &[0, 4, 0, 8]);
        assert_eq!(&r[44..48], &[0, 5, 0, 8]);
        let e = error_response(&[7; 16], 420, "Unknown Attribute");
        assert_eq!(&e[..2], &[0x01, 0x11]);
        assert_eq!(e.len() % 4, 0);
        assert_eq!(&e[24..28], &[0, 0, 4, 20]);
    }

    #[test]
    fn every_truncation_and_mutation_is_an_error_not_a_panic() {
        let m = pystun3_request(6);
        for n in 0..m.len() {
            assert!(decode_request(&m[..n]).is_err(), "{n} bytes");
        }
        // Deterministic pseudo-random bodies behind a valid header.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut buf = vec![0x00, 0x01];
            let body: Vec<u8> = (0..(x % 64) as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            buf.extend_from_slice(&((body.len() & !3) as u16).to_be_bytes());
            buf.extend_from_slice(&[5; 16]);
            buf.extend_from_slice(&body);
            let _ = decode_request(&buf);
        }
    }
}
