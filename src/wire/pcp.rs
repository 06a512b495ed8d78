//! PCP (RFC 6887) messages as checked value types: [`Request`] and [`Response`] parse
//! untrusted bytes (never panicking) and `emit` themselves. Only the ANNOUNCE and MAP opcodes
//! are modelled; options are kept as opaque (code, data) pairs. The retransmitting client lives
//! in [`crate::proto::portmap::pcp`].
//!
//! Requests go to the gateway's UDP [`PORT`]; unsolicited ANNOUNCE responses (router restart,
//! §14.1.3) are multicast to port [`CLIENT_PORT`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::natpmp::{be16, be32, Proto};

/// RFC 6887 §19: server port, shared with NAT-PMP.
pub const PORT: u16 = 5351;
/// RFC 6887 §14.1.3: clients receive multicast ANNOUNCE responses on UDP 5350.
pub const CLIENT_PORT: u16 = 5350;
/// RFC 6887 §9: this is version 2 (NAT-PMP is 0; 1 was a pre-RFC draft).
pub const VERSION: u8 = 2;
/// RFC 6887 §7: no PCP message is longer than 1100 bytes.
pub const MAX_LEN: usize = 1100;
/// RFC 6887 §14.1: ANNOUNCE opcode.
pub const OP_ANNOUNCE: u8 = 0;
/// RFC 6887 §11: MAP opcode.
pub const OP_MAP: u8 = 1;
/// RFC 6887 §11.1: protocol 0 maps all protocols (internal port must then be 0).
pub const PROTO_ALL: u8 = 0;
/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// RFC 6887 §13.1: THIRD_PARTY option (map for another host).
pub const OPTION_THIRD_PARTY: u8 = 1;
/// RFC 6887 §13.2: PREFER_FAILURE option (fail rather than pick another external port).
pub const OPTION_PREFER_FAILURE: u8 = 2;
/// RFC 6887 §13.3: FILTER option (restrict remote peers).
pub const OPTION_FILTER: u8 = 3;

const HEADER_LEN: usize = 24;
const MAP_LEN: usize = 36;
const RESPONSE_BIT: u8 = 0x80;

/// Why a packet is not a PCP message of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than its header or opcode data requires.
    #[error("PCP message truncated")]
    Truncated,
    /// §8.3: not a multiple of 4 bytes, or longer than [`MAX_LEN`].
    #[error("PCP message length {0} is not a multiple of 4 or exceeds 1100")]
    BadLength(usize),
    /// RFC 6887 §9 / RFC 6886 §3.5: a version-0 (NAT-PMP) response. The gateway speaks
    /// NAT-PMP but not PCP; fall back to NAT-PMP ([`super::natpmp`]).
    #[error("NAT-PMP reply (result {result}): the gateway speaks NAT-PMP, not PCP")]
    NatPmpReply {
        /// The NAT-PMP result code (1 = unsupported version).
        result: u16,
    },
    /// Any other version than 2.
    #[error("unsupported PCP version {0}")]
    Version(u8),
    /// Opcode other than ANNOUNCE or MAP.
    #[error("unsupported PCP opcode {0}")]
    Opcode(u8),
    /// R bit clear where a response was expected.
    #[error("expected a PCP response, got a request")]
    NotResponse,
    /// R bit set where a request was expected.
    #[error("expected a PCP request, got a response")]
    NotRequest,
    /// §7.3: an option header or its (padded) data overruns the message.
    #[error("malformed PCP option {code}")]
    Option {
        /// Code of the offending option.
        code: u8,
    },
}

/// RFC 6887 §7.4 result codes; unknown values are preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: SUCCESS.
    Success,
    /// 1: UNSUPP_VERSION.
    UnsuppVersion,
    /// 2: NOT_AUTHORIZED (e.g. PCP disabled for this client).
    NotAuthorized,
    /// 3: MALFORMED_REQUEST.
    MalformedRequest,
    /// 4: UNSUPP_OPCODE.
    UnsuppOpcode,
    /// 5: UNSUPP_OPTION (a mandatory option the server does not know).
    UnsuppOption,
    /// 6: MALFORMED_OPTION.
    MalformedOption,
    /// 7: NETWORK_FAILURE (e.g. no external address yet); short-lifetime error.
    NetworkFailure,
    /// 8: NO_RESOURCES; short-lifetime error.
    NoResources,
    /// 9: UNSUPP_PROTOCOL.
    UnsuppProtocol,
    /// 10: USER_EX_QUOTA (too many mappings for this host).
    UserExQuota,
    /// 11: CANNOT_PROVIDE_EXTERNAL (suggested address/port unavailable with PREFER_FAILURE).
    CannotProvideExternal,
    /// 12: ADDRESS_MISMATCH (client IP field differs from the packet source: another NAT
    /// sits between us and the server).
    AddressMismatch,
    /// 13: EXCESSIVE_REMOTE_PEERS.
    ExcessiveRemotePeers,
    /// Anything else, as received.
    Other(u8),
}

const RESULT_NAMES: [(ResultCode, &str); 14] = [
    (ResultCode::Success, "success"),
    (ResultCode::UnsuppVersion, "unsupported version"),
    (ResultCode::NotAuthorized, "not authorized"),
    (ResultCode::MalformedRequest, "malformed request"),
    (ResultCode::UnsuppOpcode, "unsupported opcode"),
    (ResultCode::UnsuppOption, "unsupported option"),
    (ResultCode::MalformedOption, "malformed option"),
    (ResultCode::NetworkFailure, "network failure"),
    (ResultCode::NoResources, "no resources"),
    (ResultCode::UnsuppProtocol, "unsupported protocol"),
    (ResultCode::UserExQuota, "user exceeded quota"),
    (
        ResultCode::CannotProvideExternal,
        "cannot provide external address/port",
    ),
    (ResultCode::AddressMismatch, "address mismatch"),
    (ResultCode::ExcessiveRemotePeers, "excessive remote peers"),
];

impl From<u8> for ResultCode {
    fn from(v: u8) -> Self {
        RESULT_NAMES
            .get(usize::from(v))
            .map_or(ResultCode::Other(v), |(r, _)| *r)
    }
}

impl From<ResultCode> for u8 {
    fn from(r: ResultCode) -> u8 {
        match r {
            ResultCode::Other(v) => v,
            known => RESULT_NAMES
                .iter()
                .position(|(k, _)| *k == known)
                .and_then(|i| u8::try_from(i).ok())
                .unwrap_or(u8::MAX),
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match RESULT_NAMES.iter().find(|(k, _)| k == self) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "result code {}", u8::from(*self)),
        }
    }
}

/// IANA protocol number for a [`Proto`].
pub fn protocol_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
    }
}

/// §5: addresses are 16 bytes; IPv4 goes as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip_from(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o).to_canonical()
}

/// MAP opcode data (§11.1 request, §11.2 response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Map {
    /// Mapping nonce; responses must echo it (§11.3).
    pub nonce: [u8; 12],
    /// IANA protocol number: [`PROTO_TCP`], [`PROTO_UDP`] or [`PROTO_ALL`].
    pub protocol: u8,
    /// Port on this host.
    pub internal_port: u16,
    /// Request: suggested external port (0: no preference). Response: assigned port.
    pub external_port: u16,
    /// Request: suggested external address (`0.0.0.0` / `::`: no preference). Response:
    /// assigned address. IPv4-mapped addresses are reported as IPv4.
    pub external_ip: IpAddr,
}

impl Map {
    /// A mapping request for `proto` with no external address preference.
    pub fn new(nonce: [u8; 12], proto: Proto, internal_port: u16, external_port: u16) -> Map {
        Map {
            nonce,
            protocol: protocol_number(proto),
            internal_port,
            external_port,
            external_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// The protocol as a [`Proto`], if TCP or UDP.
    pub fn proto(&self) -> Option<Proto> {
        match self.protocol {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }

    /// §11.3: a response belongs to a request if nonce, protocol and internal port match.
    pub fn answers(&self, request: &Map) -> bool {
        self.nonce == request.nonce
            && self.protocol == request.protocol
            && self.internal_port == request.internal_port
    }

    fn emit(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&[self.protocol, 0, 0, 0]);
        b.extend_from_slice(&self.internal_port.to_be_bytes());
        b.extend_from_slice(&self.external_port.to_be_bytes());
        b.extend_from_slice(&ip_bytes(self.external_ip));
    }

    fn parse(b: &[u8]) -> Result<Map, Error> {
        if b.len() < MAP_LEN {
            return Err(Error::Truncated);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[..12]);
        Ok(Map {
            nonce,
            protocol: b[12],
            internal_port: be16(b, 16),
            external_port: be16(b, 18),
            external_ip: ip_from(&b[20..]),
        })
    }
}

/// Opcode and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// §14.1: ANNOUNCE, no data. As a request it probes for PCP support; as an unsolicited
    /// response it says the server restarted.
    Announce,
    /// §11: MAP.
    Map(Map),
}

impl Op {
    /// The 7-bit opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Op::Announce => OP_ANNOUNCE,
            Op::Map(_) => OP_MAP,
        }
    }

    fn emit(&self, b: &mut Vec<u8>) {
        if let Op::Map(m) = self {
            m.emit(b);
        }
    }

    /// Parses opcode data; returns it and the bytes after it (the options).
    fn parse(opcode: u8, body: &[u8]) -> Result<(Op, &[u8]), Error> {
        match opcode {
            OP_ANNOUNCE => Ok((Op::Announce, body)),
            OP_MAP => Ok((Op::Map(Map::parse(body)?), &body[MAP_LEN..])),
            op => Err(Error::Opcode(op)),
        }
    }
}

/// One option (§7.3), unknown codes included, so they can be inspected or skipped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PcpOption {
    /// Option code; 0..=127 are mandatory-to-process, 128..=255 optional.
    pub code: u8,
    /// Option data without padding (at most 65535 bytes are emitted).
    pub data: Vec<u8>,
}

fn emit_options(options: &[PcpOption], b: &mut Vec<u8>) {
    for o in options {
        let len = o.data.len().min(usize::from(u16::MAX));
        b.extend_from_slice(&[o.code, 0]);
        b.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        b.extend_from_slice(&o.data[..len]);
        b.resize(b.len() + (4 - len % 4) % 4, 0);
    }
}

fn parse_options(mut rest: &[u8]) -> Result<Vec<PcpOption>, Error> {
    let mut out = Vec::new();
    while let Some(&code) = rest.first() {
        if rest.len() < 4 {
            return Err(Error::Option { code });
        }
        let len = usize::from(be16(rest, 2));
        let padded = len.div_ceil(4) * 4;
        if rest.len() - 4 < padded {
            return Err(Error::Option { code });
        }
        out.push(PcpOption {
            code,
            data: rest[4..4 + len].to_vec(),
        });
        rest = &rest[4 + padded..];
    }
    Ok(out)
}

/// Checks version and §8.3 framing common to requests and responses.
fn check_frame(buf: &[u8]) -> Result<(), Error> {
    match buf.first() {
        None => return Err(Error::Truncated),
        Some(&VERSION) => {}
        Some(&v) => return Err(Error::Version(v)),
    }
    if buf.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    if buf.len() > MAX_LEN || buf.len() % 4 != 0 {
        return Err(Error::BadLength(buf.len()));
    }
    Ok(())
}

/// A PCP request (§7.1 header + opcode data + options).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// Requested lifetime in seconds; 0 deletes a MAP (§15), and is used for ANNOUNCE.
    pub lifetime: u32,
    /// This host's address as seen on the wire to the server (§8.1); a mismatch earns
    /// ADDRESS_MISMATCH. IPv4-mapped addresses are reported as IPv4.
    pub client_ip: IpAddr,
    /// Opcode and its data.
    pub op: Op,
    /// Options after the opcode data.
    pub options: Vec<PcpOption>,
}

impl Request {
    /// §14.1: ANNOUNCE request, a cheap "is there a PCP server?" probe.
    pub fn announce(client_ip: IpAddr) -> Request {
        Request {
            lifetime: 0,
            client_ip,
            op: Op::Announce,
            options: Vec::new(),
        }
    }

    /// §11.1: create or renew a mapping.
    pub fn map(client_ip: IpAddr, map: Map, lifetime: u32) -> Request {
        Request {
            lifetime,
            client_ip,
            op: Op::Map(map),
            options: Vec::new(),
        }
    }

    /// §15: delete = MAP with lifetime 0 and the mapping's nonce, protocol and internal port.
    pub fn delete(client_ip: IpAddr, map: Map) -> Request {
        Request::map(client_ip, map, 0)
    }

    /// Wire bytes. Callers keep options small enough to stay within [`MAX_LEN`].
    pub fn emit(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + MAP_LEN);
        b.extend_from_slice(&[VERSION, self.op.opcode(), 0, 0]);
        b.extend_from_slice(&self.lifetime.to_be_bytes());
        b.extend_from_slice(&ip_bytes(self.client_ip));
        self.op.emit(&mut b);
        emit_options(&self.options, &mut b);
        b
    }

    /// Parses a request (for tests and fuzzing; natkit is never a PCP server).
    pub fn parse(buf: &[u8]) -> Result<Request, Error> {
        check_frame(buf)?;
        if buf[1] & RESPONSE_BIT != 0 {
            return Err(Error::NotRequest);
        }
        let (op, rest) = Op::parse(buf[1], &buf[HEADER_LEN..])?;
        Ok(Request {
            lifetime: be32(buf, 4),
            client_ip: ip_from(&buf[8..]),
            op,
            options: parse_options(rest)?,
        })
    }
}

/// A PCP response (§7.2 header + opcode data + options).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Response {
    /// Result code.
    pub result: ResultCode,
    /// Success: granted lifetime. Error: how long the error is expected to last (§7.2).
    pub lifetime: u32,
    /// Server epoch time in seconds (§8.5), for the core's restart check.
    pub epoch: u32,
    /// Opcode and its data (for MAP: the assigned external address and port).
    pub op: Op,
    /// Options after the opcode data.
    pub options: Vec<PcpOption>,
}

impl Response {
    /// §14.1.3: an ANNOUNCE success, typically unsolicited after a server restart; the
    /// client should check the epoch and re-create its mappings.
    pub fn is_announce(&self) -> bool {
        self.op == Op::Announce && self.result == ResultCode::Success
    }

    /// Wire bytes (reserved fields zero).
    pub fn emit(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + MAP_LEN);
        b.extend_from_slice(&[
            VERSION,
            RESPONSE_BIT | self.op.opcode(),
            0,
            u8::from(self.result),
        ]);
        b.extend_from_slice(&self.lifetime.to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        self.op.emit(&mut b);
        emit_options(&self.options, &mut b);
        b
    }

    /// Parses a response. A NAT-PMP reply (version 0, response opcode) is
    /// [`Error::NatPmpReply`] so the caller can fall back to NAT-PMP (§9).
    pub fn parse(buf: &[u8]) -> Result<Response, Error> {
        if buf.first() == Some(&0) {
            return Err(match buf {
                [0, op, r0, r1, _, _, _, _, ..] if op & RESPONSE_BIT != 0 => Error::NatPmpReply {
                    result: u16::from_be_bytes([*r0, *r1]),
                },
                _ => Error::Version(0),
            });
        }
        check_frame(buf)?;
        if buf[1] & RESPONSE_BIT == 0 {
            return Err(Error::NotResponse);
        }
        let (op, rest) = Op::parse(buf[1] & !RESPONSE_BIT, &buf[HEADER_LEN..])?;
        Ok(Response {
            result: ResultCode::from(buf[3]),
            lifetime: be32(buf, 4),
            epoch: be32(buf, 8),
            op,
            options: parse_options(rest)?,
        })
    }
}

/// Messages the tests here and the client's tests in [`crate::proto::portmap::pcp`] share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    pub(crate) fn client_ip() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10))
    }

    pub(crate) fn map_req() -> Request {
        Request::map(client_ip(), Map::new(NONCE, Proto::Udp, 4000, 4000), 7200)
    }

    pub(crate) fn map_resp() -> Response {
        Response {
            result: ResultCode::Success,
            lifetime: 3600,
            epoch: 500,
            op: Op::Map(Map {
                external_port: 40000,
                external_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                ..Map::new(NONCE, Proto::Udp, 4000, 0)
            }),
            options: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn request_bytes_match_rfc_layout() {
        let b = map_req().emit();
        assert_eq!(b.len(), 60);
        assert_eq!(&b[..8], &[2, 1, 0, 0, 0, 0, 0x1c, 0x20]);
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 10]
        );
        assert_eq!(&b[24..36], &NONCE);
        assert_eq!(&b[36..40], &[17, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x0f, 0xa0, 0x0f, 0xa0]);
        // §11.1: "no preference" is ::ffff:0.0.0.0.
        assert_eq!(
            &b[44..60],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(Request::parse(&b), Ok(map_req()));
    }

    #[test]
    fn response_bytes_match_rfc_layout() {
        let mut b = vec![2, 0x81, 0, 0, 0, 0, 0x0e, 0x10, 0, 0, 0x01, 0xf4];
        b.extend_from_slice(&[0xee; 12]); // reserved: ignored on receipt
        b.extend_from_slice(&NONCE);
        b.extend_from_slice(&[17, 0, 0, 0, 0x0f, 0xa0, 0x9c, 0x40]);
        b.extend_from_slice(&Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped().octets());
        assert_eq!(Response::parse(&b), Ok(map_resp()));
        b[3] = 8;
        let r = Response::parse(&b).map(|r| r.result);
        assert_eq!(r, Ok(ResultCode::NoResources));
        assert_eq!(ResultCode::NoResources.to_string(), "no resources");
        assert_eq!(ResultCode::from(200).to_string(), "result code 200");
    }

    #[test]
    fn round_trips_with_options() {
        let mut req = Request::announce(IpAddr::V6("2001:db8::1".parse().unwrap()));
        req.options = vec![
            PcpOption {
                code: OPTION_PREFER_FAILURE,
                data: vec![],
            },
            PcpOption {
                code: 200,
                data: vec![9; 5],
            },
        ];
        let b = req.emit();
        assert_eq!(b.len(), 24 + 4 + 12);
        assert_eq!(Request::parse(&b), Ok(req));
        let mut resp = map_resp();
        resp.options.push(PcpOption {
            code: OPTION_THIRD_PARTY,
            data: vec![7; 16],
        });
        assert_eq!(Response::parse(&resp.emit()), Ok(resp));
        for v in 0..=255u8 {
            assert_eq!(
                ResultCode::from(v),
                ResultCode::from(u8::from(ResultCode::from(v)))
            );
            assert_eq!(u8::from(ResultCode::from(v)), v);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for b in [map_resp().emit(), map_req().emit()] {
            for n in 0..b.len() {
                assert!(Response::parse(&b[..n]).is_err(), "len {n}");
                assert!(Request::parse(&b[..n]).is_err(), "len {n}");
            }
        }
        // Cutting inside an option is an error, not a panic.
        let mut r = map_resp();
        r.options.push(PcpOption {
            code: 130,
            data: vec![1; 8],
        });
        let b = r.emit();
        assert_eq!(
            Response::parse(&b[..b.len() - 4]),
            Err(Error::Option { code: 130 })
        );
        let mut b = b;
        b[62] = 0xff; // option length overruns
        assert_eq!(Response::parse(&b), Err(Error::Option { code: 130 }));
    }

    #[test]
    fn rejects_wrong_version_direction_and_length() {
        let mut b = map_resp().emit();
        assert_eq!(Request::parse(&b), Err(Error::NotRequest));
        assert_eq!(Response::parse(&map_req().emit()), Err(Error::NotResponse));
        b.push(0);
        assert_eq!(Response::parse(&b), Err(Error::BadLength(61)));
        b.pop();
        b[0] = 1;
        assert_eq!(Response::parse(&b), Err(Error::Version(1)));
        b[0] = 2;
        b[1] = 0x85;
        assert_eq!(Response::parse(&b), Err(Error::Opcode(5)));
        assert_eq!(Response::parse(&[2u8; 1104]), Err(Error::BadLength(1104)));
    }

    #[test]
    fn nat_pmp_reply_is_recognised() {
        // RFC 6886 §3.5: NAT-PMP "unsupported version" answer to our version-2 request.
        let b = [0, 0x81, 0, 1, 0, 0, 0, 42];
        assert_eq!(Response::parse(&b), Err(Error::NatPmpReply { result: 1 }));
        assert_eq!(Response::parse(&b[..5]), Err(Error::Version(0)));
    }
}
