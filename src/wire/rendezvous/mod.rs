//! natkit's rendezvous and relay protocol, version 1: the wire format shared by `relay` and
//! its clients. Checked parsing into value types and `emit` back (smoltcp style); parsing
//! never panics and rejects anything malformed.
//!
//! # Framing
//! Over UDP, one frame per datagram, on the relay's primary STUN port. Frames start with the
//! bytes `N` `K` (0x4E 0x4B): a STUN message starts with two zero bits and carries the magic
//! cookie at offset 4, so the two never collide (RFC 7983 §7 style demultiplexing on the first
//! byte). Over TCP, each frame is preceded by its length as a big-endian `u16`.
//!
//! ```text
//! 0      2        3       4
//! +------+--------+-------+----------------------+
//! | "NK" | ver=1  | type  | body (type-specific) |
//! +------+--------+-------+----------------------+
//! ```
//!
//! # Messages
//! | type | name | direction | body |
//! |---|---|---|---|
//! | 1 | `Register` | client → relay | session id (16), role (1), peer id (8), token (len u8 + bytes), candidates (count u8 + addresses) |
//! | 2 | `Registered` | relay → client | observed address, peer present (1) |
//! | 3 | `Peer` | relay → client | the other peer's observed address, its candidates |
//! | 4 | `Ping` | relay → client | nonce (8) |
//! | 5 | `Pong` | client → relay | session id (16), peer id (8), nonce (8) |
//! | 6 | `Sync` | client → relay | session id (16), peer id (8): "measure and tell us when to start" |
//! | 7 | `Start` | relay → client | wait in ms (u16), attempt (u32) |
//! | 8 | `Data` | both | session id (16), payload (rest): relayed to the other peer |
//! | 9 | `DialBack` | client → relay | protocol (1: 17 UDP, 6 TCP), port (u16), nonce (8) |
//! | 10 | `Probe` | relay → client | nonce (8): a dial-back probe from another address |
//! | 11 | `Error` | relay → client | code (1), reason (len u8 + UTF-8) |
//! | 12 | `Bye` | client → relay | session id (16), peer id (8) |
//! | 13 | `PunchProbe` | peer → peer | session id (16), transaction (8): a connectivity check |
//! | 14 | `PunchAck` | peer → peer | session id (16), transaction (8), the probe's source as seen |
//! | 15 | `Pake` | peer → peer | session id (16), SPAKE2 message (rest) |
//! | 16 | `Confirm` | peer → peer | session id (16), certificate fingerprint (32), MAC (32) |
//! | 17 | `NatInfo` | peer → peer | session id (16), mapping (1), filtering (1), allocation (1), flags (1), step (1, signed) |
//! | 18 | `TcpOffer` | peer → peer | session id (16), armed (1), address: the sender's TCP endpoint (IPv4 as the relay saw it; IPv6 its global address), one offer per family |
//! | 19 | `Predict` | peer → peer | session id (16), port (u16): the sender's sequential NAT gave this port to its last mapping |
//! | 20 | `PathChallenge` | peer → peer | session id (16), nonce (16), padding (32 zero bytes) |
//! | 21 | `PathResponse` | peer → peer | session id (16), nonce (16), MAC (32) |
//! | 22 | `Cookie` | relay → client | empty: the cookie is in the [`Trailer`]; echo it to be served over UDP |
//! | 23 | `Hops` | peer → peer | session id (16), hops to the sender's NAT (1), hops to the receiver's NAT (1); 0: unknown |
//!
//! `Register`, `Sync`, `DialBack`, `Registered`, `Peer`, `Error` and `Cookie` may end with a
//! [`Trailer`]: `tx (8) | cookie (len u8 + bytes)`. A client's random `tx` comes back in
//! every answer, so an off-path host that forges the relay's address cannot abort or
//! redirect a session; the relay's stateless `cookie` (an HMAC of the client's address and a
//! time window) proves over UDP that the client receives at that address before it gets any
//! state or work (return routability; DTLS's HelloVerifyRequest, RFC 6347 §4.2.1).
//!
//! `NatInfo` carries the sender's NAT classification (RFC 4787 classes: 0 unknown,
//! 1 endpoint-independent, 2 address-dependent, 3 address-and-port-dependent, 4 no NAT;
//! allocation 0 unknown, 1 preserving, 2 sequential, 3 random; flag bit 0: the router
//! mapped the punch port, bit 1: the sender's UDP is blocked (it reached the relay over
//! TCP), bit 2: the sender offers a global IPv6 address; step: a sequential allocator's step between ports), inside relayed `Data`, so both
//! sides can say which technique should work.
//!
//! `TcpOffer` (inside relayed `Data`) carries the sender's public TCP endpoint for TCP hole
//! punching ([`crate::proto::punch::tcp`]); `armed` 1 says the sender's NAT now holds a mapping
//! towards the receiver (its low-TTL SYN has gone out), so the receiver may connect.
//!
//! `Predict` (inside relayed `Data`) starts port prediction ([`crate::proto::punch::birthday`]): the
//! sender's NAT allocates ports in order, the sender has just learned (by STUN) the port of
//! one new mapping and opened the next one towards the receiver, which probes the ports after.
//!
//! `Hops` (inside relayed `Data`) is what the sender's TTL measurement found
//! ([`crate::proto::punch::ttl`]): neighbouring NATs are known for sure when either side heard
//! the other's NAT answer, so both choose the same opening.
//!
//! `PathChallenge` and `PathResponse` validate a new direct address of the peer before the
//! session's packets go there (RFC 9000 §8.2 in spirit, at natkit's link layer): the
//! challenge is padded to [`PATH_FRAME_LEN`], the response's length, so answering one never
//! amplifies; the response's MAC is keyed by the PAKE ([`crate::proto::punch::path`]).
//!
//! An address is `family (4 or 6) | ip (4 or 16) | port (u16)`.
//!
//! The relay only ever sends to the *observed* address of a registered peer; addresses a
//! client names (its candidates) are forwarded as data to the other peer, never sent to.

use std::net::SocketAddr;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"NK";
/// Protocol version.
pub const VERSION: u8 = 1;
/// Most candidates a peer may announce.
pub const MAX_CANDIDATES: usize = 8;
/// Largest relayed payload: fits a 1500-byte path with room for headers.
pub const MAX_PAYLOAD: usize = 1400;
/// Length of a session id: derived by clients from the public part of their code.
pub const SESSION_LEN: usize = 16;
/// Length of a `PathChallenge` and of a `PathResponse` (the challenge is padded to the
/// response's length: no amplification).
pub const PATH_FRAME_LEN: usize = 4 + SESSION_LEN + 16 + 32;

/// A session id.
pub type SessionId = [u8; SESSION_LEN];
/// A random per-client-instance id, so a re-registration from a new address is recognised as
/// the same peer and a different peer cannot take the slot.
pub type PeerId = [u8; 8];

/// The optional end of a request or answer (see the module docs): transaction id and cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trailer {
    /// The client's random transaction id, echoed in the relay's answers.
    pub tx: u64,
    /// The relay's return-routability cookie (empty in answers other than `Cookie`).
    pub cookie: Vec<u8>,
}

/// Which side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that waits (`punch listen`).
    Listener,
    /// The side that joins (`punch connect`).
    Connector,
}

impl Role {
    /// The other role.
    pub fn other(self) -> Role {
        match self {
            Role::Listener => Role::Connector,
            Role::Connector => Role::Listener,
        }
    }
}

/// Error codes in [`Frame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// Malformed or unknown request.
    BadRequest = 1,
    /// `--secret` is set and the token is missing, expired or wrong.
    Unauthorized = 2,
    /// The role in this session is held by another peer.
    SessionBusy = 3,
    /// A cap was reached (sessions, per source, quota).
    Limit = 4,
    /// Sent to an address the relay refuses (private range without `--allow-private`).
    Denied = 5,
    /// Not registered in that session (or registration expired).
    NoSession = 6,
    /// Anything else.
    Other = 255,
}

impl ErrorCode {
    fn from_u8(v: u8) -> ErrorCode {
        match v {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::SessionBusy,
            4 => ErrorCode::Limit,
            5 => ErrorCode::Denied,
            6 => ErrorCode::NoSession,
            _ => ErrorCode::Other,
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Join (or refresh) a session.
    Register {
        /// Session id.
        session: SessionId,
        /// Which side.
        role: Role,
        /// Client instance id.
        peer: PeerId,
        /// Access token (empty when the relay needs none).
        token: Vec<u8>,
        /// Self-reported candidate addresses, forwarded to the other peer as data.
        candidates: Vec<SocketAddr>,
    },
    /// Registration accepted.
    Registered {
        /// The address the relay sees the client at.
        observed: SocketAddr,
        /// Whether the other side is registered.
        peer_present: bool,
    },
    /// The other side's addresses.
    Peer {
        /// Where the relay sees the other peer.
        observed: SocketAddr,
        /// What the other peer reported about itself.
        candidates: Vec<SocketAddr>,
    },
    /// RTT probe.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// RTT probe answer.
    Pong {
        /// Session id.
        session: SessionId,
        /// Client instance id.
        peer: PeerId,
        /// From the ping.
        nonce: u64,
    },
    /// Ask for a simultaneous start.
    Sync {
        /// Session id.
        session: SessionId,
        /// Client instance id.
        peer: PeerId,
    },
    /// Start punching after `wait_ms`.
    Start {
        /// Delay so both sides begin at the same instant.
        wait_ms: u16,
        /// Attempt number (each `Sync` round is a new attempt).
        attempt: u32,
    },
    /// Relayed data.
    Data {
        /// Session id.
        session: SessionId,
        /// Opaque payload (ciphertext).
        payload: Vec<u8>,
    },
    /// Ask the relay to probe the requester's own address.
    DialBack {
        /// 17 for UDP, 6 for TCP.
        proto: u8,
        /// For TCP, the port to connect to on the requester's observed IP (UDP answers the
        /// observed address itself).
        port: u16,
        /// Echoed in the probe.
        nonce: u64,
    },
    /// A dial-back probe.
    Probe {
        /// From the request.
        nonce: u64,
    },
    /// A refusal.
    Error {
        /// Why.
        code: ErrorCode,
        /// Human text.
        reason: String,
    },
    /// Leave a session.
    Bye {
        /// Session id.
        session: SessionId,
        /// Client instance id.
        peer: PeerId,
    },
    /// Peer-to-peer connectivity check (never sent to the relay).
    PunchProbe {
        /// Session id.
        session: SessionId,
        /// Transaction, echoed in the ack.
        tx: u64,
    },
    /// A SPAKE2 message (peer to peer, directly or inside relayed data).
    Pake {
        /// Session id.
        session: SessionId,
        /// The SPAKE2 message.
        msg: Vec<u8>,
    },
    /// Echo the cookie in this frame's [`Trailer`] to be served over UDP.
    Cookie,
    /// Key confirmation: the sender's QUIC certificate fingerprint, MACed with the PAKE key.
    Confirm {
        /// Session id.
        session: SessionId,
        /// SHA-256 of the sender's certificate.
        fingerprint: [u8; 32],
        /// HMAC-SHA256 under the PAKE key.
        mac: [u8; 32],
    },
    /// The sender's NAT classification (see the table above for the codes).
    NatInfo {
        /// Session id.
        session: SessionId,
        /// Mapping behaviour code.
        mapping: u8,
        /// Filtering behaviour code.
        filtering: u8,
        /// Port allocation code.
        allocation: u8,
        /// Bit 0: the router mapped the punch port for the sender; bit 1: its UDP is
        /// blocked; bit 2: it offers a global IPv6 address.
        flags: u8,
        /// A sequential allocator's step (0 when not sequential).
        step: i8,
    },
    /// The sender's public TCP endpoint, for TCP hole punching.
    TcpOffer {
        /// Session id.
        session: SessionId,
        /// The sender's NAT holds a mapping towards the receiver's offer.
        armed: bool,
        /// The sender's TCP endpoint as the relay saw it.
        addr: SocketAddr,
    },
    /// Port prediction: the port the sender's sequential NAT gave its last mapping.
    Predict {
        /// Session id.
        session: SessionId,
        /// That port.
        port: u16,
    },
    /// The sender's TTL measurement: hops to its own outermost NAT and to the receiver's
    /// (0: unknown).
    Hops {
        /// Session id.
        session: SessionId,
        /// Hops from the sender to its own outermost NAT.
        own_nat: u8,
        /// Hops from the sender to the receiver's NAT (it answered port unreachable).
        peer_nat: u8,
    },
    /// Answer to a [`Frame::PunchProbe`].
    PunchAck {
        /// Session id.
        session: SessionId,
        /// From the probe.
        tx: u64,
        /// Where the probe came from, as the answering peer saw it.
        observed: SocketAddr,
    },
    /// Is the peer at the address this comes from? (padded to [`PATH_FRAME_LEN`]).
    PathChallenge {
        /// Session id.
        session: SessionId,
        /// Echoed in the response.
        nonce: [u8; 16],
    },
    /// Answer to a [`Frame::PathChallenge`], sent to its source.
    PathResponse {
        /// Session id.
        session: SessionId,
        /// From the challenge.
        nonce: [u8; 16],
        /// HMAC-SHA256 under a key derived from the PAKE key.
        mac: [u8; 32],
    },
}

/// Why a frame did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Does not start with the magic bytes.
    #[error("not a natkit frame")]
    NotOurs,
    /// Another protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Too short, too long or inconsistent.
    #[error("malformed frame")]
    Malformed,
}

/// True when a datagram is (probably) a natkit frame rather than STUN.
pub fn is_frame(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf[..2] == MAGIC
}

impl Frame {
    /// Parses one frame (the whole datagram, or one TCP frame without its length prefix),
    /// ignoring a [`Trailer`].
    pub fn parse(buf: &[u8]) -> Result<Frame, ParseError> {
        Frame::parse_with(buf).map(|(f, _)| f)
    }

    /// Whether this frame type may end with a [`Trailer`].
    fn takes_trailer(&self) -> bool {
        matches!(
            self,
            Frame::Register { .. }
                | Frame::Sync { .. }
                | Frame::DialBack { .. }
                | Frame::Registered { .. }
                | Frame::Peer { .. }
                | Frame::Error { .. }
                | Frame::Cookie
        )
    }

    /// Encodes the frame, with `t` at its end when its type takes a [`Trailer`].
    pub fn emit_with(&self, t: Option<&Trailer>) -> Vec<u8> {
        let mut out = self.emit();
        if let Some(t) = t.filter(|_| self.takes_trailer()) {
            out.extend_from_slice(&t.tx.to_be_bytes());
            put_bytes8(&mut out, &t.cookie);
        }
        out
    }

    /// Parses one frame and its [`Trailer`], if any.
    pub fn parse_with(buf: &[u8]) -> Result<(Frame, Option<Trailer>), ParseError> {
        if !is_frame(buf) {
            return Err(ParseError::NotOurs);
        }
        if buf[2] != VERSION {
            return Err(ParseError::Version(buf[2]));
        }
        let ty = buf[3];
        let mut r = Reader { buf: &buf[4..] };
        let f = match ty {
            1 => {
                let session = r.array()?;
                let role = match r.u8()? {
                    0 => Role::Listener,
                    1 => Role::Connector,
                    _ => return Err(ParseError::Malformed),
                };
                let peer = r.array()?;
                let token = r.bytes8()?.to_vec();
                let candidates = r.addrs()?;
                Frame::Register {
                    session,
                    role,
                    peer,
                    token,
                    candidates,
                }
            }
            2 => Frame::Registered {
                observed: r.addr()?,
                peer_present: r.u8()? != 0,
            },
            3 => Frame::Peer {
                observed: r.addr()?,
                candidates: r.addrs()?,
            },
            4 => Frame::Ping { nonce: r.u64()? },
            5 => Frame::Pong {
                session: r.array()?,
                peer: r.array()?,
                nonce: r.u64()?,
            },
            6 => Frame::Sync {
                session: r.array()?,
                peer: r.array()?,
            },
            7 => Frame::Start {
                wait_ms: r.u16()?,
                attempt: r.u32()?,
            },
            8 => {
                let session = r.array()?;
                let payload = r.take(r.buf.len())?;
                if payload.len() > MAX_PAYLOAD {
                    return Err(ParseError::Malformed);
                }
                Frame::Data {
                    session,
                    payload: payload.to_vec(),
                }
            }
            9 => {
                let proto = r.u8()?;
                if proto != 6 && proto != 17 {
                    return Err(ParseError::Malformed);
                }
                Frame::DialBack {
                    proto,
                    port: r.u16()?,
                    nonce: r.u64()?,
                }
            }
            10 => Frame::Probe { nonce: r.u64()? },
            11 => {
                let code = ErrorCode::from_u8(r.u8()?);
                let reason = std::str::from_utf8(r.bytes8()?)
                    .map_err(|_| ParseError::Malformed)?
                    .to_string();
                Frame::Error { code, reason }
            }
            12 => Frame::Bye {
                session: r.array()?,
                peer: r.array()?,
            },
            13 => Frame::PunchProbe {
                session: r.array()?,
                tx: r.u64()?,
            },
            14 => Frame::PunchAck {
                session: r.array()?,
                tx: r.u64()?,
                observed: r.addr()?,
            },
            15 => {
                let session = r.array()?;
                let msg = r.take(r.buf.len())?;
                if msg.is_empty() || msg.len() > 256 {
                    return Err(ParseError::Malformed);
                }
                Frame::Pake {
                    session,
                    msg: msg.to_vec(),
                }
            }
            16 => Frame::Confirm {
                session: r.array()?,
                fingerprint: r.array()?,
                mac: r.array()?,
            },
            17 => Frame::NatInfo {
                session: r.array()?,
                mapping: r.u8()?,
                filtering: r.u8()?,
                allocation: r.u8()?,
                flags: r.u8()?,
                step: r.u8()? as i8,
            },
            18 => Frame::TcpOffer {
                session: r.array()?,
                armed: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ParseError::Malformed),
                },
                addr: r.addr()?,
            },
            19 => Frame::Predict {
                session: r.array()?,
                port: r.u16()?,
            },
            20 => {
                let f = Frame::PathChallenge {
                    session: r.array()?,
                    nonce: r.array()?,
                };
                r.take(32)?;
                f
            }
            21 => Frame::PathResponse {
                session: r.array()?,
                nonce: r.array()?,
                mac: r.array()?,
            },
            22 => Frame::Cookie,
            23 => Frame::Hops {
                session: r.array()?,
                own_nat: r.u8()?,
                peer_nat: r.u8()?,
            },
            t => return Err(ParseError::UnknownType(t)),
        };
        let t = if f.takes_trailer() && !r.buf.is_empty() {
            let tx = r.u64()?;
            let cookie = r.bytes8()?.to_vec();
            Some(Trailer { tx, cookie })
        } else {
            None
        };
        r.end()?;
        Ok((f, t))
    }

    /// Encodes the frame.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match self {
            Frame::Register {
                session,
                role,
                peer,
                token,
                candidates,
            } => {
                out.push(1);
                out.extend_from_slice(session);
                out.push(match role {
                    Role::Listener => 0,
                    Role::Connector => 1,
                });
                out.extend_from_slice(peer);
                put_bytes8(&mut out, token);
                put_addrs(&mut out, candidates);
            }
            Frame::Registered {
                observed,
                peer_present,
            } => {
                out.push(2);
                put_addr(&mut out, observed);
                out.push(*peer_present as u8);
            }
            Frame::Peer {
                observed,
                candidates,
            } => {
                out.push(3);
                put_addr(&mut out, observed);
                put_addrs(&mut out, candidates);
            }
            Frame::Ping { nonce } => {
                out.push(4);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Frame::Pong {
                session,
                peer,
                nonce,
            } => {
                out.push(5);
                out.extend_from_slice(session);
                out.extend_from_slice(peer);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Frame::Sync { session, peer } => {
                out.push(6);
                out.extend_from_slice(session);
                out.extend_from_slice(peer);
            }
            Frame::Start { wait_ms, attempt } => {
                out.push(7);
                out.extend_from_slice(&wait_ms.to_be_bytes());
                out.extend_from_slice(&attempt.to_be_bytes());
            }
            Frame::Data { session, payload } => {
                out.push(8);
                out.extend_from_slice(session);
                out.extend_from_slice(&payload[..payload.len().min(MAX_PAYLOAD)]);
            }
            Frame::DialBack { proto, port, nonce } => {
                out.push(9);
                out.push(*proto);
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Frame::Probe { nonce } => {
                out.push(10);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Frame::Error { code, reason } => {
                out.push(11);
                out.push(*code as u8);
                put_bytes8(&mut out, reason.as_bytes());
            }
            Frame::Bye { session, peer } => {
                out.push(12);
                out.extend_from_slice(session);
                out.extend_from_slice(peer);
            }
            Frame::PunchProbe { session, tx } => {
                out.push(13);
                out.extend_from_slice(session);
                out.extend_from_slice(&tx.to_be_bytes());
            }
            Frame::Pake { session, msg } => {
                out.push(15);
                out.extend_from_slice(session);
                out.extend_from_slice(&msg[..msg.len().min(256)]);
            }
            Frame::Confirm {
                session,
                fingerprint,
                mac,
            } => {
                out.push(16);
                out.extend_from_slice(session);
                out.extend_from_slice(fingerprint);
                out.extend_from_slice(mac);
            }
            Frame::NatInfo {
                session,
                mapping,
                filtering,
                allocation,
                flags,
                step,
            } => {
                out.push(17);
                out.extend_from_slice(session);
                out.extend_from_slice(&[*mapping, *filtering, *allocation, *flags, *step as u8]);
            }
            Frame::TcpOffer {
                session,
                armed,
                addr,
            } => {
                out.push(18);
                out.extend_from_slice(session);
                out.push(u8::from(*armed));
                put_addr(&mut out, addr);
            }
            Frame::Predict { session, port } => {
                out.push(19);
                out.extend_from_slice(session);
                out.extend_from_slice(&port.to_be_bytes());
            }
            Frame::PunchAck {
                session,
                tx,
                observed,
            } => {
                out.push(14);
                out.extend_from_slice(session);
                out.extend_from_slice(&tx.to_be_bytes());
                put_addr(&mut out, observed);
            }
            Frame::PathChallenge { session, nonce } => {
                out.push(20);
                out.extend_from_slice(session);
                out.extend_from_slice(nonce);
                out.resize(PATH_FRAME_LEN, 0);
            }
            Frame::PathResponse {
                session,
                nonce,
                mac,
            } => {
                out.push(21);
                out.extend_from_slice(session);
                out.extend_from_slice(nonce);
                out.extend_from_slice(mac);
            }
            Frame::Cookie => out.push(22),
            Frame::Hops {
                session,
                own_nat,
                peer_nat,
            } => {
                out.push(23);
                out.extend_from_slice(session);
                out.extend_from_slice(&[*own_nat, *peer_nat]);
            }
        }
        out
    }
}

mod codec;
use codec::{put_addr, put_addrs, put_bytes8, Reader};

#[cfg(test)]
mod tests;
