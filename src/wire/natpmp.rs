//! NAT-PMP (RFC 6886) messages as checked value types: [`Request`] and [`Response`] parse
//! untrusted bytes (never panicking) and `emit` themselves. The retransmitting client lives in
//! [`crate::proto::portmap::natpmp`].
//!
//! Requests go to the gateway's UDP [`PORT`]. The gateway also multicasts address-change
//! announcements to 224.0.0.1:[`CLIENT_PORT`] (§3.2.1).

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Transport protocol of a mapping: NAT-PMP's opcodes 1/2 (§3.3), PCP's IANA protocol numbers
/// (RFC 6887 §11.1) and UPnP's `NewProtocol` all name one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// RFC 6886 §3: the gateway listens on UDP 5351 (shared with PCP, RFC 6887 §19).
pub const PORT: u16 = 5351;
/// RFC 6886 §3.2.1: clients receive gateway announcements on UDP 5350.
pub const CLIENT_PORT: u16 = 5350;
/// RFC 6886 §3: the only NAT-PMP version; PCP is version 2 on the same port.
pub const VERSION: u8 = 0;

const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const OP_MAP_TCP: u8 = 2;
const RESPONSE_BIT: u8 = 0x80;
const RESPONSE_HEADER: usize = 8;

/// Why a packet is not a NAT-PMP message of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than its header or opcode requires.
    #[error("NAT-PMP packet truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// Version is not 0 (a PCP server answers in version 2, RFC 6887 §9).
    #[error("NAT-PMP version {0}, expected 0")]
    Version(u8),
    /// Opcode not defined by RFC 6886.
    #[error("unknown NAT-PMP opcode {0}")]
    Opcode(u8),
    /// A request (opcode < 128) where a response was expected.
    #[error("expected a NAT-PMP response, got a request")]
    NotResponse,
    /// A response (opcode >= 128) where a request was expected.
    #[error("expected a NAT-PMP request, got a response")]
    NotRequest,
}

/// RFC 6886 §3.5 result codes; unknown values are preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0.
    Success,
    /// 1: the gateway does not speak this version.
    UnsupportedVersion,
    /// 2: mapping refused (e.g. NAT-PMP disabled in the router's settings).
    NotAuthorized,
    /// 3: the gateway has no external address yet (e.g. no DHCP lease).
    NetworkFailure,
    /// 4: no mapping could be created.
    OutOfResources,
    /// 5.
    UnsupportedOpcode,
    /// Anything else, as received.
    Other(u16),
}

impl From<u16> for ResultCode {
    fn from(v: u16) -> Self {
        match v {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            v => ResultCode::Other(v),
        }
    }
}

impl From<ResultCode> for u16 {
    fn from(r: ResultCode) -> u16 {
        match r {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::NetworkFailure => 3,
            ResultCode::OutOfResources => 4,
            ResultCode::UnsupportedOpcode => 5,
            ResultCode::Other(v) => v,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultCode::Success => f.write_str("success"),
            ResultCode::UnsupportedVersion => f.write_str("unsupported version"),
            ResultCode::NotAuthorized => f.write_str("not authorized/refused"),
            ResultCode::NetworkFailure => f.write_str("network failure"),
            ResultCode::OutOfResources => f.write_str("out of resources"),
            ResultCode::UnsupportedOpcode => f.write_str("unsupported opcode"),
            ResultCode::Other(v) => write!(f, "result code {v}"),
        }
    }
}

/// Big-endian u16 at `at` (the caller has checked the length); shared with [`super::pcp`].
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian u32 at `at` (the caller has checked the length); shared with [`super::pcp`].
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn map_opcode(proto: Proto) -> u8 {
    match proto {
        Proto::Udp => OP_MAP_UDP,
        Proto::Tcp => OP_MAP_TCP,
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), Error> {
    if buf.len() < n {
        return Err(Error::Truncated {
            got: buf.len(),
            need: n,
        });
    }
    Ok(())
}

/// A client request (RFC 6886 §3.2, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Opcode 0 (§3.2): ask for the gateway's external IPv4 address.
    ExternalAddress,
    /// Opcode 1 (UDP) / 2 (TCP) (§3.3): create or renew a mapping; lifetime 0 deletes it (§3.4).
    Map {
        /// Protocol of the mapping.
        proto: Proto,
        /// Port on this host.
        internal_port: u16,
        /// Suggested external port (0: no preference); the gateway may pick another.
        external_port: u16,
        /// Requested lifetime in seconds (RFC recommends 7200).
        lifetime: u32,
    },
}

impl Request {
    /// RFC 6886 §3.4: delete = lifetime 0 with suggested external port 0. Internal port 0
    /// deletes every mapping of `proto` for this host.
    pub fn delete(proto: Proto, internal_port: u16) -> Request {
        Request::Map {
            proto,
            internal_port,
            external_port: 0,
            lifetime: 0,
        }
    }

    /// The request opcode (0, 1 or 2); its response carries `128 + opcode`.
    pub fn opcode(&self) -> u8 {
        match self {
            Request::ExternalAddress => OP_EXTERNAL,
            Request::Map { proto, .. } => map_opcode(*proto),
        }
    }

    /// Wire bytes (2 bytes for opcode 0, 12 for a mapping).
    pub fn emit(&self) -> Vec<u8> {
        let mut b = vec![VERSION, self.opcode()];
        if let Request::Map {
            internal_port,
            external_port,
            lifetime,
            ..
        } = self
        {
            b.extend_from_slice(&[0, 0]); // §3.3: reserved, must be zero
            b.extend_from_slice(&internal_port.to_be_bytes());
            b.extend_from_slice(&external_port.to_be_bytes());
            b.extend_from_slice(&lifetime.to_be_bytes());
        }
        b
    }

    /// Parses a request; trailing bytes are ignored (a gateway would too).
    pub fn parse(buf: &[u8]) -> Result<Request, Error> {
        need(buf, 2)?;
        if buf[0] != VERSION {
            return Err(Error::Version(buf[0]));
        }
        let proto = match buf[1] {
            op if op & RESPONSE_BIT != 0 => return Err(Error::NotRequest),
            OP_EXTERNAL => return Ok(Request::ExternalAddress),
            OP_MAP_UDP => Proto::Udp,
            OP_MAP_TCP => Proto::Tcp,
            op => return Err(Error::Opcode(op)),
        };
        need(buf, 12)?;
        Ok(Request::Map {
            proto,
            internal_port: be16(buf, 4),
            external_port: be16(buf, 6),
            lifetime: be32(buf, 8),
        })
    }
}

/// A gateway response (RFC 6886 §3.2, §3.3, §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Opcode 128 (§3.2).
    ExternalAddress {
        /// Result code.
        result: ResultCode,
        /// Seconds since start of epoch (§3.6).
        epoch: u32,
        /// The gateway's external address (0.0.0.0 if it has none).
        address: Ipv4Addr,
    },
    /// Opcode 129 (UDP) / 130 (TCP) (§3.3).
    Map {
        /// Protocol of the mapping.
        proto: Proto,
        /// Result code.
        result: ResultCode,
        /// Seconds since start of epoch (§3.6).
        epoch: u32,
        /// Echo of the requested internal port.
        internal_port: u16,
        /// Assigned external port.
        external_port: u16,
        /// Granted lifetime in seconds (0 after a delete).
        lifetime: u32,
    },
    /// §3.5: an error reply with only the 8-byte header (e.g. "unsupported version/opcode"),
    /// or one to an opcode this codec does not know. Never carries [`ResultCode::Success`].
    Bare {
        /// Request opcode (0..=127) the reply is for.
        opcode: u8,
        /// Result code (not `Success`).
        result: ResultCode,
        /// Seconds since start of epoch (§3.6).
        epoch: u32,
    },
}

impl Response {
    /// The request opcode this answers (response opcode minus 128).
    pub fn opcode(&self) -> u8 {
        match self {
            Response::ExternalAddress { .. } => OP_EXTERNAL,
            Response::Map { proto, .. } => map_opcode(*proto),
            Response::Bare { opcode, .. } => *opcode & !RESPONSE_BIT,
        }
    }

    /// Result code.
    pub fn result(&self) -> ResultCode {
        match self {
            Response::ExternalAddress { result, .. }
            | Response::Map { result, .. }
            | Response::Bare { result, .. } => *result,
        }
    }

    /// Seconds since start of epoch (§3.6), for the core's restart check.
    pub fn epoch(&self) -> u32 {
        match self {
            Response::ExternalAddress { epoch, .. }
            | Response::Map { epoch, .. }
            | Response::Bare { epoch, .. } => *epoch,
        }
    }

    /// Wire bytes (12 for opcode 128, 16 for mappings, 8 for [`Response::Bare`]).
    pub fn emit(&self) -> Vec<u8> {
        let mut b = vec![VERSION, RESPONSE_BIT | self.opcode()];
        b.extend_from_slice(&u16::from(self.result()).to_be_bytes());
        b.extend_from_slice(&self.epoch().to_be_bytes());
        match self {
            Response::ExternalAddress { address, .. } => b.extend_from_slice(&address.octets()),
            Response::Map {
                internal_port,
                external_port,
                lifetime,
                ..
            } => {
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&external_port.to_be_bytes());
                b.extend_from_slice(&lifetime.to_be_bytes());
            }
            Response::Bare { .. } => {}
        }
        b
    }

    /// Parses a response. Error replies too short for their opcode's data become
    /// [`Response::Bare`]; a short success is [`Error::Truncated`]. Trailing bytes are ignored.
    pub fn parse(buf: &[u8]) -> Result<Response, Error> {
        need(buf, 2)?;
        if buf[0] != VERSION {
            return Err(Error::Version(buf[0]));
        }
        if buf[1] & RESPONSE_BIT == 0 {
            return Err(Error::NotResponse);
        }
        need(buf, RESPONSE_HEADER)?;
        let opcode = buf[1] & !RESPONSE_BIT;
        let result = ResultCode::from(be16(buf, 2));
        let epoch = be32(buf, 4);
        let full = match opcode {
            OP_EXTERNAL => Some(12),
            OP_MAP_UDP | OP_MAP_TCP => Some(16),
            _ => None,
        };
        match full {
            Some(n) if buf.len() >= n => {}
            _ if result != ResultCode::Success => {
                return Ok(Response::Bare {
                    opcode,
                    result,
                    epoch,
                })
            }
            Some(n) => need(buf, n)?,
            None => return Err(Error::Opcode(opcode)),
        }
        Ok(match opcode {
            OP_EXTERNAL => Response::ExternalAddress {
                result,
                epoch,
                address: Ipv4Addr::new(buf[8], buf[9], buf[10], buf[11]),
            },
            _ => Response::Map {
                proto: if opcode == OP_MAP_UDP {
                    Proto::Udp
                } else {
                    Proto::Tcp
                },
                result,
                epoch,
                internal_port: be16(buf, 8),
                external_port: be16(buf, 10),
                lifetime: be32(buf, 12),
            },
        })
    }
}

/// Messages the tests here and the client's tests in [`crate::proto::portmap::natpmp`]
/// share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn map_ok() -> Response {
        Response::Map {
            proto: Proto::Tcp,
            result: ResultCode::Success,
            epoch: 1000,
            internal_port: 8080,
            external_port: 40000,
            lifetime: 7200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::map_ok;
    use super::*;

    #[test]
    fn request_bytes_match_rfc_layout() {
        assert_eq!(Request::ExternalAddress.emit(), [0, 0]);
        let r = Request::Map {
            proto: Proto::Udp,
            internal_port: 0x1234,
            external_port: 0x5678,
            lifetime: 7200,
        };
        let b = r.emit();
        assert_eq!(b, [0, 1, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x1c, 0x20]);
        assert_eq!(Request::parse(&b), Ok(r));
        assert_eq!(Request::delete(Proto::Tcp, 80).emit()[1], 2);
    }

    #[test]
    fn response_bytes_match_rfc_layout() {
        let b = [0, 128, 0, 0, 0, 0, 0x03, 0xe8, 203, 0, 113, 7];
        assert_eq!(
            Response::parse(&b),
            Ok(Response::ExternalAddress {
                result: ResultCode::Success,
                epoch: 1000,
                address: Ipv4Addr::new(203, 0, 113, 7),
            })
        );
        let b = [
            0, 130, 0, 0, 0, 0, 0x03, 0xe8, 0x1f, 0x90, 0x9c, 0x40, 0, 0, 0x1c, 0x20,
        ];
        assert_eq!(Response::parse(&b), Ok(map_ok()));
        assert_eq!(map_ok().emit(), b);
    }

    #[test]
    fn round_trips() {
        for r in [
            Request::ExternalAddress,
            Request::delete(Proto::Udp, 0),
            Request::Map {
                proto: Proto::Tcp,
                internal_port: 1,
                external_port: 65535,
                lifetime: u32::MAX,
            },
        ] {
            assert_eq!(Request::parse(&r.emit()), Ok(r));
        }
        for r in [
            map_ok(),
            Response::ExternalAddress {
                result: ResultCode::Other(77),
                epoch: 5,
                address: Ipv4Addr::UNSPECIFIED,
            },
            Response::Bare {
                opcode: 1,
                result: ResultCode::UnsupportedVersion,
                epoch: 9,
            },
            Response::Bare {
                opcode: 99,
                result: ResultCode::UnsupportedOpcode,
                epoch: 9,
            },
        ] {
            assert_eq!(Response::parse(&r.emit()), Ok(r));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = map_ok().emit();
        for n in 0..b.len() {
            assert!(Response::parse(&b[..n]).is_err(), "len {n}");
        }
        let b = Request::delete(Proto::Tcp, 80).emit();
        for n in 0..b.len() {
            assert!(Request::parse(&b[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn rejects_wrong_version_and_direction() {
        let mut b = map_ok().emit();
        assert_eq!(Request::parse(&b), Err(Error::NotRequest));
        assert_eq!(
            Response::parse(&Request::ExternalAddress.emit()),
            Err(Error::NotResponse)
        );
        b[0] = 2;
        assert_eq!(Response::parse(&b), Err(Error::Version(2)));
        assert_eq!(Request::parse(&[0, 3]), Err(Error::Opcode(3)));
        assert_eq!(
            Response::parse(&[0, 131, 0, 0, 0, 0, 0, 0]),
            Err(Error::Opcode(3))
        );
        assert_eq!(
            ResultCode::from(4).to_string(),
            "out of resources".to_string()
        );
    }
}
