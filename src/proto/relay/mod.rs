//! The relay's sans-IO core: a STUN server with RFC 5780 behaviour discovery, the rendezvous
//! protocol ([`crate::wire::rendezvous`]) and a blind relay, behind per-source rate limits, caps and
//! quotas. Datagrams and TCP frames in, datagrams and frames out, deadlines; no sockets.
//!
//! Safety rules, enforced here rather than in the driver:
//! - the relay only sends to the source address of the request it answers, or to the
//!   *observed* address of a registered peer; never to an address a client names;
//! - sources in the deny list ([`limits::denied`]: unroutable, also spelled as IPv4-mapped,
//!   NAT64 or 6to4) get nothing unless `allow_private`;
//! - everything sent because of one unauthenticated request (all answers together, to every
//!   recipient) is at most [`MAX_AMPLIFICATION`] times the request; for a `Register` this
//!   bounds how many of the other peer's candidates go out (see [`MAX_AMPLIFICATION`]);
//! - PADDING (RFC 5780 §7.6) is refused: it exists to make responses bigger;
//! - over UDP, a `Register` or `DialBack` gets a slot or a probe only when it echoes the
//!   cookie for its source address ([`cookie`]); until then the answer is a cookie, smaller
//!   than the request, so spoofed sources cannot hold slots or fill `--max-sessions`;
//! - answers to a request that carries a transaction id echo it, so clients can ignore what
//!   an off-path host forges from the relay's address.

//!
//! The core is split by concern: [`binding`] (STUN and RFC 5780), [`rendezvous`] (meeting,
//! nameplates and start signals), [`sessions`] (relaying, quotas and expiry), [`limits`]
//! (per-source rate limits), [`dialback`], [`cookie`] (return routability), [`token`]
//! (access tokens) and [`metrics`].

mod binding;
mod cookie;
mod dialback;
mod limits;
mod metrics;
mod rendezvous;
mod sessions;
mod token;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::defaults;
use crate::wire::netaddr;
use crate::wire::rendezvous::{ErrorCode, Frame, SessionId, Trailer};
use crate::wire::stun;

pub use limits::{source_key, Throttle};
use limits::{Bucket, BucketTable};
pub use metrics::{DropReason, Metrics};
use sessions::Session;
pub use token::{make_token, secret_strong_enough, token_for};

/// Largest ratio of answer bytes to request bytes (UDP payloads, or TCP frames without their
/// length prefix) for any request that carries no valid token, counting everything the relay
/// sends because of that one request, to whomever. A minimal 20-byte Binding request gets at
/// most an 80-byte answer.
///
/// A `Register` that joins a session whose other peer is present makes three frames:
/// `Registered` and `Peer` (the other peer's observed address and candidates) to the sender,
/// and `Peer` (the sender's) to the other peer. The sender's `Register` carries its own
/// candidates, so the frame to the other peer is always smaller than the request; the other
/// peer's candidates are not bounded by the request, though (a 31-byte `Register` could fetch
/// 8 IPv6 candidates, 176 bytes). So the `Peer` frame to the sender carries the other peer's
/// observed address always, then its candidates in their order as far as the budget allows
/// (one that does not fit is left out, a smaller one after it may still go), and the relay
/// counts those left out (`natkit_relay_peer_candidates_trimmed_total`). What always fits:
/// 8 IPv4 candidates when both observed addresses are IPv4, and at least 7 IPv4 or 2 IPv6
/// candidates in any case; punch announces 1 to 3 IPv4 candidates, which always go whole. A
/// client that announces many addresses can pad its `Register`'s token field (the relay ignores
/// it without `--secret`) to raise its budget; with `--secret`, a request with a valid token is
/// authenticated and not bounded. A trimmed list is completed when the other peer next
/// registers (punch refreshes every 15 s): the `Peer` frame a `Register` sends to the other
/// peer always carries the sender's whole list.
pub const MAX_AMPLIFICATION: usize = 4;

/// A TCP connection, numbered by the driver.
pub type ConnId = u64;

/// Where a peer is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// UDP, from this local socket.
    Udp {
        /// The relay's local address the peer talks to.
        local: SocketAddr,
    },
    /// A TCP connection.
    Tcp(ConnId),
}

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A datagram from one of the relay's local addresses.
    Udp {
        /// Local source address (one of the bound sockets).
        src: SocketAddr,
        /// Destination.
        dst: SocketAddr,
        /// Bytes.
        payload: Vec<u8>,
    },
    /// A frame on an accepted TCP connection (the driver adds the length prefix).
    Tcp {
        /// Connection.
        conn: ConnId,
        /// Frame bytes.
        payload: Vec<u8>,
    },
    /// Dial-back over TCP: connect to `dst`, write the frame (length-prefixed), close.
    DialTcp {
        /// The requester's own observed IP and the port it named.
        dst: SocketAddr,
        /// Frame bytes.
        payload: Vec<u8>,
    },
    /// Close a TCP connection.
    Close(ConnId),
}

/// Limits; every default in [`crate::defaults`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per second per source IP.
    pub reqs_per_sec: u32,
    /// Burst per source IP.
    pub reqs_burst: u32,
    /// Most tracked sources.
    pub max_sources: usize,
    /// Most sessions.
    pub max_sessions: usize,
    /// Most sessions per source IP.
    pub sessions_per_source: usize,
    /// Bytes per session.
    pub session_bytes: u64,
    /// Session lifetime.
    pub session_secs: u64,
    /// Idle expiry of a registration.
    pub idle_secs: u64,
    /// Dial-backs per minute per source IP.
    pub dialbacks_per_min: u32,
    /// Most TCP connections held open at once (the driver also stays under its descriptor
    /// limit).
    pub max_tcp: usize,
    /// Most TCP connections held open per source (IPv4 address or IPv6 /64).
    pub tcp_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            reqs_per_sec: defaults::RELAY_REQS_PER_SEC,
            reqs_burst: defaults::RELAY_REQS_BURST,
            max_sources: defaults::RELAY_MAX_SOURCES,
            max_sessions: defaults::RELAY_MAX_SESSIONS,
            sessions_per_source: defaults::RELAY_SESSIONS_PER_SOURCE,
            session_bytes: defaults::RELAY_SESSION_BYTES,
            session_secs: defaults::RELAY_SESSION_SECS,
            idle_secs: defaults::RELAY_IDLE_SECS,
            dialbacks_per_min: defaults::RELAY_DIALBACKS_PER_MIN,
            max_tcp: defaults::RELAY_MAX_TCP,
            tcp_per_source: defaults::RELAY_TCP_PER_SOURCE,
        }
    }
}

/// Relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Primary address and port (STUN, rendezvous, relay).
    pub primary: SocketAddr,
    /// Alternate IP (RFC 5780); behaviour discovery is off without it.
    pub alt_ip: Option<IpAddr>,
    /// Alternate port (RFC 5780).
    pub alt_port: u16,
    /// The other address family's primary IP and alternate IP, served on the same ports:
    /// STUN and RFC 5780 answer within the family a request came in on (a request's
    /// OTHER-ADDRESS must be reachable from where it came), rendezvous and relaying join the
    /// families (a peer over IPv4 meets one over IPv6).
    pub other_family: Option<(IpAddr, Option<IpAddr>)>,
    /// Limits.
    pub limits: Limits,
    /// Lift the deny list (labs, loopback tests).
    pub allow_private: bool,
    /// When set, rendezvous and relaying need a token made from this secret.
    pub secret: Option<Vec<u8>>,
}

impl RelayConfig {
    /// Each served family's primary address and alternate IP: the first is `primary`.
    pub fn families(&self) -> Vec<(SocketAddr, Option<IpAddr>)> {
        let mut f = vec![(self.primary, self.alt_ip)];
        if let Some((ip, alt)) = self.other_family {
            f.push((SocketAddr::new(ip, self.primary.port()), alt));
        }
        f
    }

    /// The family serving `ip`'s family (the first when none does): its primary address and
    /// alternate IP.
    pub fn family_of(&self, ip: IpAddr) -> (SocketAddr, Option<IpAddr>) {
        let v4 = netaddr::canonical(ip).is_ipv4();
        let f = self.families();
        f.iter()
            .find(|(p, _)| p.is_ipv4() == v4)
            .copied()
            .unwrap_or(f[0])
    }

    /// Whether `local` is a family's primary address (rendezvous and relaying).
    pub fn is_primary(&self, local: SocketAddr) -> bool {
        self.families().iter().any(|(p, _)| *p == local)
    }

    /// Every local address the relay must bind: per family one, or four with RFC 5780.
    pub fn locals(&self) -> Vec<SocketAddr> {
        self.families()
            .into_iter()
            .flat_map(|(p, alt)| match alt {
                None => vec![p],
                Some(ip2) => vec![
                    p,
                    SocketAddr::new(p.ip(), self.alt_port),
                    SocketAddr::new(ip2, p.port()),
                    SocketAddr::new(ip2, self.alt_port),
                ],
            })
            .collect()
    }

    /// Whether the deny list refuses this source ([`limits::denied`]), unless
    /// `allow_private` lifts it.
    pub fn denies(&self, ip: IpAddr) -> bool {
        !self.allow_private && limits::denied(ip)
    }

    /// Whether RFC 5780 behaviour discovery is on (in at least one family).
    pub fn rfc5780(&self) -> bool {
        self.families().iter().any(|(_, alt)| alt.is_some())
    }
}

/// The relay state machine.
#[derive(Debug)]
pub struct Relay {
    cfg: RelayConfig,
    locals: Vec<SocketAddr>,
    buckets: BucketTable,
    dial_buckets: BucketTable,
    /// Dial-backs by all sources together.
    dial_global: Bucket,
    warn_sources: Throttle,
    sessions: HashMap<SessionId, Session>,
    /// Slots held per source key, kept as counters (no scan under the driver's lock).
    per_source: HashMap<IpAddr, usize>,
    /// Timer queue of session ends (time quota), by instant: an entry whose session is gone
    /// or was made again since is skipped when it comes up.
    ends: BTreeSet<(Instant, SessionId)>,
    /// Timer queue of late pongs (a sync's measuring round ends), likewise.
    pongs: BTreeSet<(Instant, SessionId)>,
    /// Sessions that have (or had) a slot on each TCP connection, so a closed connection
    /// finds its slots without a scan; checked against the slots when used.
    by_conn: HashMap<ConnId, HashSet<SessionId>>,
    out: VecDeque<Output>,
    metrics: Metrics,
    next_sweep: Instant,
    /// Every random choice (ping nonces, the cookie key) comes from here: seeded by the
    /// driver, fixed in tests.
    rng: StdRng,
    cookies: cookie::Cookies,
    /// The transaction id of the request being handled, echoed in its answers.
    req_tx: Option<u64>,
}

/// The current time as the relay needs it: monotonic for timers, Unix seconds for tokens.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic.
    pub mono: Instant,
    /// Seconds since the Unix epoch.
    pub unix: u64,
}

impl Relay {
    /// A relay with this configuration; `seed` seeds its random choices (the driver passes a
    /// random one, tests a fixed one).
    pub fn new(cfg: RelayConfig, now: Instant, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        Relay {
            cookies: cookie::Cookies::new(rng.gen()),
            req_tx: None,
            locals: cfg.locals(),
            cfg,
            buckets: BucketTable::default(),
            dial_buckets: BucketTable::default(),
            dial_global: Bucket {
                tokens: defaults::RELAY_DIALBACKS_PER_SEC as f64,
                last: now,
            },
            warn_sources: Throttle::default(),
            sessions: HashMap::new(),
            per_source: HashMap::new(),
            ends: BTreeSet::new(),
            pongs: BTreeSet::new(),
            by_conn: HashMap::new(),
            out: VecDeque::new(),
            metrics: Metrics::default(),
            next_sweep: now + defaults::RELAY_SWEEP_INTERVAL,
            rng,
        }
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sessions now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A datagram arrived on local address `local` from `from`.
    pub fn handle_udp(&mut self, now: Now, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if crate::wire::rendezvous::is_frame(data) {
            // Data frames are charged to the session quota, not the request rate: a relayed
            // stream is many packets per second by design.
            let is_data = data.len() > 3 && data[3] == 8;
            if !is_data && !self.allowed(now.mono, from.ip()) {
                return;
            }
            if !self.cfg.is_primary(local) {
                self.metrics.drop(DropReason::Malformed);
                return;
            }
            return self.on_bytes(now, Path::Udp { local }, from, data);
        }
        if !self.allowed(now.mono, from.ip()) {
            return;
        }
        self.on_stun(local, from, data);
    }

    /// A frame (without its length prefix) arrived on TCP connection `conn` from `from`.
    pub fn handle_tcp(&mut self, now: Now, conn: ConnId, from: SocketAddr, frame: &[u8]) {
        let is_data = frame.len() > 3 && frame[3] == 8;
        if !is_data && !self.allowed(now.mono, from.ip()) {
            return;
        }
        if stun::looks_like_stun(frame) {
            // STUN over TCP (RFC 8489 §6.2.2): answer on the same connection.
            let local = self.cfg.family_of(from.ip()).0;
            if let Some(resp) = self.stun_answer(local, from, frame) {
                self.out.push_back(Output::Tcp {
                    conn,
                    payload: resp.2,
                });
            }
            return;
        }
        self.on_bytes(now, Path::Tcp(conn), from, frame);
    }

    /// A frame (datagram, or TCP frame without its prefix): handled with its transaction id
    /// at hand for the answers.
    fn on_bytes(&mut self, now: Now, path: Path, from: SocketAddr, data: &[u8]) {
        match Frame::parse_with(data) {
            Ok((f, t)) => {
                self.req_tx = t.as_ref().map(|t| t.tx);
                self.on_frame(now, path, from, f, t, data.len());
                self.req_tx = None;
            }
            Err(_) => self.metrics.drop(DropReason::Malformed),
        }
    }

    fn reply(&mut self, path: Path, to: SocketAddr, f: &Frame) {
        self.send(path, to, f.emit());
    }

    fn send(&mut self, path: Path, to: SocketAddr, payload: Vec<u8>) {
        self.out.push_back(match path {
            Path::Udp { local } => Output::Udp {
                src: local,
                dst: to,
                payload,
            },
            Path::Tcp(conn) => Output::Tcp { conn, payload },
        });
    }

    fn error(
        &mut self,
        path: Path,
        to: SocketAddr,
        code: ErrorCode,
        reason: &str,
        why: DropReason,
    ) {
        self.metrics.drop(why);
        let f = Frame::Error {
            code,
            reason: reason.to_string(),
        };
        self.send(path, to, f.emit_with(answer_trailer(self.req_tx).as_ref()));
    }
}

/// The trailer of an answer to a request with transaction id `tx` (none: no trailer, for
/// clients that send none).
fn answer_trailer(tx: Option<u64>) -> Option<Trailer> {
    tx.map(|tx| Trailer { tx, cookie: vec![] })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v6;
