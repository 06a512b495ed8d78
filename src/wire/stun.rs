//! STUN messages (RFC 8489, with the RFC 5780 attributes) as plain values, and a sans-IO
//! client transaction with RTT-adaptive retransmission.
//!
//! Decoding and encoding are delegated to `stun-rs`; this module turns its attribute list into
//! one flat [`Message`] value so the rest of natkit never touches wire details, and so that
//! every decode failure is an error value, never a panic (see the fuzz target and the property
//! test in `tests/stun_decode.rs`).

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, Padding, ResponseOrigin, ResponsePort,
};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MappedAddress, Software, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessageBuilder,
    TransactionId,
};

/// RFC 8489 §5: the fixed magic cookie in every STUN header.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// RFC 8489 §5: size of the fixed header.
pub const HEADER_LEN: usize = 20;

/// A 96-bit transaction id.
pub type Tid = [u8; 12];

/// Errors from decoding a datagram as STUN.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a STUN message at all (RFC 8489 §5: top two bits zero, magic cookie, length).
    #[error("not a STUN message")]
    NotStun,
    /// Looked like STUN but the body does not decode.
    #[error("malformed STUN message: {0}")]
    Malformed(String),
}

/// Errors from encoding.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode STUN message: {0}")]
pub struct EncodeError(String);

/// The CHANGE-REQUEST flags (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Change {
    /// Answer from the alternate IP address.
    pub ip: bool,
    /// Answer from the alternate port.
    pub port: bool,
}

impl Change {
    /// No change: answer from where the request arrived.
    pub const NONE: Change = Change {
        ip: false,
        port: false,
    };
    /// Both address and port (RFC 5780 §4.4 test II).
    pub const IP_AND_PORT: Change = Change {
        ip: true,
        port: true,
    };
    /// Port only (RFC 5780 §4.4 test III).
    pub const PORT: Change = Change {
        ip: false,
        port: true,
    };
}

/// The class of a STUN message (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request.
    Request,
    /// An indication.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// A decoded STUN message, flattened to the attributes natkit uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message class.
    pub class: Class,
    /// Method number (Binding is 0x001).
    pub method: u16,
    /// Transaction id.
    pub tid: Tid,
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub xor_mapped: Option<SocketAddr>,
    /// MAPPED-ADDRESS (RFC 8489 §14.1), sent by old servers.
    pub mapped: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address and port.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780 §7.3): where the server says it sent the response from.
    pub response_origin: Option<SocketAddr>,
    /// CHANGE-REQUEST in a request.
    pub change: Option<Change>,
    /// RESPONSE-PORT in a request (RFC 5780 §7.5). Accepted with a 2- or 4-byte value: servers
    /// disagree on the length (stuntman vs coturn).
    pub response_port: Option<u16>,
    /// Length of a PADDING attribute (RFC 5780 §7.6), if present.
    pub padding_len: Option<usize>,
    /// ERROR-CODE (RFC 8489 §14.8) as number and reason.
    pub error: Option<(u16, String)>,
    /// SOFTWARE (RFC 8489 §14.14).
    pub software: Option<String>,
    /// Whether a FINGERPRINT attribute was present.
    pub fingerprint: bool,
    /// Types of comprehension-required attributes this decoder does not know
    /// (RFC 8489 §14: 0x0000–0x7FFF).
    pub unknown_required: Vec<u16>,
}

impl Message {
    /// The reflexive address the server saw, preferring XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.xor_mapped.or(self.mapped)
    }

    /// True for a Binding request.
    pub fn is_binding_request(&self) -> bool {
        self.class == Class::Request && self.method == BINDING.as_u16()
    }
}

/// Cheap check (RFC 8489 §5, RFC 7983 demultiplexing): first two bits zero, magic cookie,
/// and a length that is a multiple of four and fits the datagram.
pub fn looks_like_stun(buf: &[u8]) -> bool {
    if buf.len() < HEADER_LEN || buf[0] & 0xC0 != 0 || buf[4..8] != MAGIC_COOKIE {
        return false;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    len % 4 == 0 && HEADER_LEN + len <= buf.len()
}

/// Decodes one STUN message from the start of `buf`. Never panics.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    if !looks_like_stun(buf) {
        return Err(DecodeError::NotStun);
    }
    let decoder = MessageDecoderBuilder::default().build();
    let (msg, _) = decoder
        .decode(buf)
        .map_err(|e| DecodeError::Malformed(format!("{e:?}")))?;
    let class = match msg.class() {
        MessageClass::Request => Class::Request,
        MessageClass::Indication => Class::Indication,
        MessageClass::SuccessResponse => Class::Success,
        MessageClass::ErrorResponse => Class::Error,
    };
    let mut out = Message {
        class,
        method: msg.method().as_u16(),
        tid: *msg.transaction_id().as_bytes(),
        xor_mapped: None,
        mapped: None,
        other_address: None,
        response_origin: None,
        change: None,
        response_port: None,
        padding_len: None,
        error: None,
        software: None,
        fingerprint: false,
        unknown_required: Vec::new(),
    };
    for attr in msg.attributes() {
        match attr {
            StunAttribute::XorMappedAddress(a) => out.xor_mapped = Some(*a.socket_address()),
            StunAttribute::MappedAddress(a) => out.mapped = Some(*a.socket_address()),
            StunAttribute::OtherAddress(a) => out.other_address = Some(*a.socket_address()),
            StunAttribute::ResponseOrigin(a) => out.response_origin = Some(*a.socket_address()),
            StunAttribute::ChangeRequest(c) => {
                let f = c.flags();
                out.change = Some(Change {
                    ip: f.contains(ChangeRequestFlags::ChangeIp),
                    port: f.contains(ChangeRequestFlags::ChangePort),
                })
            }
            StunAttribute::ResponsePort(p) => out.response_port = Some(p.as_u16()),
            StunAttribute::Padding(p) => out.padding_len = Some(p.as_str().len()),
            StunAttribute::ErrorCode(e) => {
                let e = e.error_code();
                out.error = Some((e.error_code(), e.reason().to_string()))
            }
            StunAttribute::Software(s) => out.software = Some(s.as_str().to_string()),
            StunAttribute::Fingerprint(_) => out.fingerprint = true,
            StunAttribute::Unknown(u) => {
                let t = u.attribute_type().as_u16();
                if t < 0x8000 {
                    out.unknown_required.push(t);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn flags(change: Change) -> ChangeRequest {
    let mut f = enumflags2::BitFlags::<ChangeRequestFlags>::empty();
    if change.ip {
        f |= ChangeRequestFlags::ChangeIp;
    }
    if change.port {
        f |= ChangeRequestFlags::ChangePort;
    }
    ChangeRequest::new(Some(f))
}

fn encode_msg(msg: &stun_rs::StunMessage) -> Result<Vec<u8>, EncodeError> {
    let encoder = MessageEncoderBuilder::default().build();
    let mut buf = vec![0u8; 2048];
    let n = encoder
        .encode(&mut buf, msg)
        .map_err(|e| EncodeError(format!("{e:?}")))?;
    buf.truncate(n);
    Ok(buf)
}

/// A Binding request as natkit sends it: optional CHANGE-REQUEST, always FINGERPRINT
/// (RFC 8489 §7.3: lets a receiver tell STUN from other protocols on the same port).
pub fn binding_request(tid: Tid, change: Change) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tid));
    if change != Change::NONE {
        b = b.with_attribute(flags(change));
    }
    let msg = b.with_attribute(Fingerprint::default()).build();
    // A request built from fixed, valid attributes always fits 2 KiB.
    encode_msg(&msg).unwrap_or_default()
}

/// A Binding request carrying RESPONSE-PORT (RFC 5780 §4.6, binding lifetime discovery).
pub fn binding_request_response_port(tid: Tid, port: u16) -> Vec<u8> {
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tid))
        .with_attribute(ResponsePort::new(port))
        .with_attribute(Fingerprint::default())
        .build();
    encode_msg(&msg).unwrap_or_default()
}

/// What a server puts in a Binding success response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingResponse {
    /// Transaction id copied from the request.
    pub tid: Tid,
    /// The client's reflexive address.
    pub mapped: SocketAddr,
    /// RFC 5780 §7.4: the alternate address, when behaviour discovery is on.
    pub other_address: Option<SocketAddr>,
    /// RFC 5780 §7.3: the address this response is sent from.
    pub response_origin: Option<SocketAddr>,
    /// SOFTWARE.
    pub software: Option<String>,
}

impl BindingResponse {
    /// Encodes with XOR-MAPPED-ADDRESS, and MAPPED-ADDRESS for RFC 3489 clients when the
    /// address is IPv4 (RFC 3489 §11.2.1: its family is always IPv4; for IPv6 it would only
    /// cost 24 bytes of the amplification budget).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(TransactionId::from(self.tid))
            .with_attribute(XorMappedAddress::from(self.mapped));
        if self.mapped.is_ipv4() {
            b = b.with_attribute(MappedAddress::from(self.mapped));
        }
        if let Some(o) = self.other_address {
            b = b.with_attribute(OtherAddress::from(o));
        }
        if let Some(o) = self.response_origin {
            b = b.with_attribute(ResponseOrigin::from(o));
        }
        if let Some(s) = &self.software {
            let s = Software::new(s.as_str()).map_err(|e| EncodeError(format!("{e:?}")))?;
            b = b.with_attribute(s);
        }
        encode_msg(&b.with_attribute(Fingerprint::default()).build())
    }
}

/// Encodes a Binding error response (RFC 8489 §6.3.4), e.g. 420 with UNKNOWN-ATTRIBUTES left
/// out for brevity, or 400 Bad Request.
pub fn binding_error(tid: Tid, code: u16, reason: &str) -> Result<Vec<u8>, EncodeError> {
    let ec = stun_rs::ErrorCode::new(code, reason).map_err(|e| EncodeError(format!("{e:?}")))?;
    let msg = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
        .with_transaction_id(TransactionId::from(tid))
        .with_attribute(ErrorCode::from(ec))
        .with_attribute(Fingerprint::default())
        .build();
    encode_msg(&msg)
}

/// Builds a request with a PADDING attribute, only for tests of servers that must refuse it.
pub fn binding_request_with_padding(tid: Tid, len: usize) -> Result<Vec<u8>, EncodeError> {
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tid))
        .with_attribute(Padding::new("x".repeat(len)).map_err(|e| EncodeError(format!("{e:?}")))?)
        .build();
    encode_msg(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn request_roundtrips_with_change_flags() {
        let tid = [7u8; 12];
        let buf = binding_request(tid, Change::IP_AND_PORT);
        let m = decode(&buf).unwrap();
        assert!(m.is_binding_request());
        assert_eq!(m.tid, tid);
        assert_eq!(m.change, Some(Change::IP_AND_PORT));
        assert!(m.fingerprint);
        let m = decode(&binding_request(tid, Change::NONE)).unwrap();
        assert_eq!(m.change, None);
    }

    #[test]
    fn response_roundtrips() {
        let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 21)), 4000);
        let o = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11)), 3479);
        let r = BindingResponse {
            tid: [1; 12],
            mapped: a,
            other_address: Some(o),
            response_origin: Some(o),
            software: Some("natkit".into()),
        };
        let m = decode(&r.encode().unwrap()).unwrap();
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.reflexive(), Some(a));
        assert_eq!(m.other_address, Some(o));
        assert_eq!(m.response_origin, Some(o));
        assert_eq!(m.software.as_deref(), Some("natkit"));
    }

    #[test]
    fn response_port_accepts_two_and_four_byte_values() {
        // RESPONSE-PORT (0x0027) encoded with length 4 (port + 2 bytes padding) and length 2
        // (port, padded to a word on the wire) — coturn and stuntman differ.
        for (len, value) in [(4u16, [0x12u8, 0x34, 0, 0]), (2, [0x12, 0x34, 0, 0])] {
            let mut m = vec![0x00, 0x01, 0x00, 0x08];
            m.extend_from_slice(&MAGIC_COOKIE);
            m.extend_from_slice(&[9u8; 12]);
            m.extend_from_slice(&[0x00, 0x27]);
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&value);
            let d = decode(&m).unwrap();
            assert_eq!(d.response_port, Some(0x1234), "length {len}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(decode(b"hello"), Err(DecodeError::NotStun));
        let mut m = binding_request([3; 12], Change::PORT);
        m.truncate(m.len() - 3);
        assert!(decode(&m).is_err());
    }
}
