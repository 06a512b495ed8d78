//! The relay's sans-IO core: a STUN server with RFC 5780 behaviour discovery, the rendezvous
//! protocol ([`crate::wire::rendezvous`]) and a blind relay, behind per-source rate limits, caps and
//! quotas. Datagrams and TCP frames in, datagrams and frames out, deadlines; no sockets.
//!
//! Safety rules, enforced here rather than in the driver:
//! - the relay only sends to the source address of the request it answers, or to the
//!   *observed* address of a registered peer; never to an address a client names;
//! - sources in the deny list ([`crate::wire::netaddr::is_unroutable`] after IPv4-mapped folding)
//!   get nothing unless `allow_private`;
//! - everything sent because of one unauthenticated request (all answers together, to every
//!   recipient) is at most [`MAX_AMPLIFICATION`] times the request; for a `Register` this
//!   bounds how many of the other peer's candidates go out (see [`MAX_AMPLIFICATION`]);
//! - PADDING (RFC 5780 §7.6) is refused: it exists to make responses bigger.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::defaults;
use crate::wire::netaddr;
use crate::wire::rendezvous::{ErrorCode, Frame, PeerId, Role, SessionId};
use crate::wire::stun::{self, Class};

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
    /// Limits.
    pub limits: Limits,
    /// Lift the deny list (labs, loopback tests).
    pub allow_private: bool,
    /// When set, rendezvous and relaying need a token made from this secret.
    pub secret: Option<Vec<u8>>,
}

impl RelayConfig {
    /// Every local address the relay must bind: one, or four with RFC 5780.
    pub fn locals(&self) -> Vec<SocketAddr> {
        let p = self.primary;
        match self.alt_ip {
            None => vec![p],
            Some(ip2) => vec![
                p,
                SocketAddr::new(p.ip(), self.alt_port),
                SocketAddr::new(ip2, p.port()),
                SocketAddr::new(ip2, self.alt_port),
            ],
        }
    }

    /// Whether RFC 5780 behaviour discovery is on.
    pub fn rfc5780(&self) -> bool {
        self.alt_ip.is_some()
    }
}

/// Reasons a request was dropped, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Over the per-source rate.
    RateLimited,
    /// Source table full.
    SourcesFull,
    /// Not STUN, not ours, or malformed.
    Malformed,
    /// Source in the deny list.
    Denied,
    /// PADDING refused.
    Padding,
    /// Missing or bad token.
    Unauthorized,
    /// Data or control for a session the sender is not registered in.
    NoSession,
    /// A cap or quota.
    Limit,
    /// Dial-back over its rate or impossible.
    DialBack,
}

impl Drop {
    fn label(self) -> &'static str {
        match self {
            Drop::RateLimited => "rate_limited",
            Drop::SourcesFull => "sources_full",
            Drop::Malformed => "malformed",
            Drop::Denied => "denied",
            Drop::Padding => "padding",
            Drop::Unauthorized => "unauthorized",
            Drop::NoSession => "no_session",
            Drop::Limit => "limit",
            Drop::DialBack => "dialback",
        }
    }
}

/// Counters, rendered as Prometheus text by [`Metrics::render`].
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// STUN Binding requests answered.
    pub stun_requests: u64,
    /// Rendezvous frames accepted.
    pub rendezvous_requests: u64,
    /// Sessions created.
    pub sessions_created: u64,
    /// Packets relayed.
    pub relayed_packets: u64,
    /// Payload bytes relayed.
    pub relayed_bytes: u64,
    /// Dial-back probes sent.
    pub dialbacks: u64,
    /// Candidates left out of a `Peer` frame to keep within [`MAX_AMPLIFICATION`].
    pub peer_candidates_trimmed: u64,
    /// Drops by reason.
    pub drops: std::collections::BTreeMap<Drop, u64>,
}

impl Metrics {
    fn drop(&mut self, why: Drop) {
        *self.drops.entry(why).or_default() += 1;
    }

    /// Number of drops for a reason.
    pub fn drops_for(&self, why: Drop) -> u64 {
        self.drops.get(&why).copied().unwrap_or(0)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, sessions_active: usize) -> String {
        let mut s = String::new();
        let mut c = |name: &str, help: &str, v: u64| {
            s.push_str(&format!(
                "# HELP natkit_relay_{name} {help}\n# TYPE natkit_relay_{name} counter\nnatkit_relay_{name} {v}\n"
            ));
        };
        c(
            "stun_requests_total",
            "STUN Binding requests answered.",
            self.stun_requests,
        );
        c(
            "rendezvous_requests_total",
            "Rendezvous frames accepted.",
            self.rendezvous_requests,
        );
        c(
            "sessions_created_total",
            "Sessions created.",
            self.sessions_created,
        );
        c(
            "relayed_packets_total",
            "Datagrams relayed.",
            self.relayed_packets,
        );
        c(
            "relayed_bytes_total",
            "Payload bytes relayed.",
            self.relayed_bytes,
        );
        c("dialbacks_total", "Dial-back probes sent.", self.dialbacks);
        c(
            "peer_candidates_trimmed_total",
            "Candidates left out of a Peer frame to keep the amplification bound.",
            self.peer_candidates_trimmed,
        );
        s.push_str(
            "# HELP natkit_relay_sessions Sessions now.\n# TYPE natkit_relay_sessions gauge\n",
        );
        s.push_str(&format!("natkit_relay_sessions {sessions_active}\n"));
        s.push_str("# HELP natkit_relay_drops_total Requests dropped, by reason.\n");
        s.push_str("# TYPE natkit_relay_drops_total counter\n");
        for d in [
            Drop::RateLimited,
            Drop::SourcesFull,
            Drop::Malformed,
            Drop::Denied,
            Drop::Padding,
            Drop::Unauthorized,
            Drop::NoSession,
            Drop::Limit,
            Drop::DialBack,
        ] {
            s.push_str(&format!(
                "natkit_relay_drops_total{{reason=\"{}\"}} {}\n",
                d.label(),
                self.drops_for(d)
            ));
        }
        s
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    peer: PeerId,
    observed: SocketAddr,
    path: Path,
    candidates: Vec<SocketAddr>,
    last_seen: Instant,
    ping: Option<(u64, Instant)>,
    rtt: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Session {
    slots: [Option<Slot>; 2],
    created: Instant,
    bytes: u64,
    attempt: u32,
    sync_started: Option<Instant>,
}

fn idx(r: Role) -> usize {
    match r {
        Role::Listener => 0,
        Role::Connector => 1,
    }
}

/// The relay state machine.
#[derive(Debug)]
pub struct Relay {
    cfg: RelayConfig,
    locals: Vec<SocketAddr>,
    buckets: HashMap<IpAddr, Bucket>,
    dial_buckets: HashMap<IpAddr, Bucket>,
    sessions: HashMap<SessionId, Session>,
    out: VecDeque<Output>,
    metrics: Metrics,
    next_sweep: Instant,
}

/// Makes a relay access token valid until `expiry_unix` (seconds): the expiry and a truncated
/// HMAC-SHA256 of it under the relay's secret (the TURN REST-API idea).
pub fn make_token(secret: &[u8], expiry_unix: u64) -> Vec<u8> {
    let mut t = expiry_unix.to_be_bytes().to_vec();
    t.extend_from_slice(&token_mac(secret, expiry_unix)[..16]);
    t
}

fn token_mac(secret: &[u8], expiry: u64) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"natkit-relay-token-v1");
    m.update(&expiry.to_be_bytes());
    m.finalize().into_bytes().to_vec()
}

fn token_valid(secret: &[u8], token: &[u8], unix_now: u64) -> bool {
    if token.len() != 24 {
        return false;
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&token[..8]);
    let expiry = u64::from_be_bytes(e);
    if expiry < unix_now {
        return false;
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"natkit-relay-token-v1");
    m.update(&expiry.to_be_bytes());
    m.verify_truncated_left(&token[8..]).is_ok()
}

/// Wire size of an address in a frame: family (1), IP (4 or 16), port (2).
fn addr_wire_len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        7
    } else {
        19
    }
}

/// The candidates that fit in `budget` bytes, in their order (one that does not fit is left
/// out, a smaller one after it may still go), and how many were left out.
fn candidates_within(budget: usize, candidates: &[SocketAddr]) -> (Vec<SocketAddr>, usize) {
    let mut left = budget;
    let mut fit = Vec::new();
    for a in candidates
        .iter()
        .take(crate::wire::rendezvous::MAX_CANDIDATES)
    {
        let n = addr_wire_len(a);
        if n <= left {
            left -= n;
            fit.push(*a);
        }
    }
    let left_out = candidates
        .len()
        .min(crate::wire::rendezvous::MAX_CANDIDATES)
        - fit.len();
    (fit, left_out)
}

/// First bytes of a session id, for logs (never the whole id).
fn hex8(s: &SessionId) -> String {
    s[..4].iter().map(|b| format!("{b:02x}")).collect()
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
    /// A relay with this configuration.
    pub fn new(cfg: RelayConfig, now: Instant) -> Self {
        Relay {
            locals: cfg.locals(),
            cfg,
            buckets: HashMap::new(),
            dial_buckets: HashMap::new(),
            sessions: HashMap::new(),
            out: VecDeque::new(),
            metrics: Metrics::default(),
            next_sweep: now + Duration::from_secs(1),
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

    /// When a session reaches its time quota (None: beyond what an `Instant` can hold).
    fn session_end(&self, s: &Session) -> Option<Instant> {
        s.created
            .checked_add(Duration::from_secs(self.cfg.limits.session_secs))
    }

    /// When to call [`Relay::handle_timeout`]: the next sweep, late pong or session end.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_sweep;
        for s in self.sessions.values() {
            if let Some(st) = s.sync_started {
                t = t.min(st + defaults::RELAY_PONG_TIMEOUT);
            }
            if let Some(end) = self.session_end(s) {
                t = t.min(end);
            }
        }
        t
    }

    /// Expires idle registrations and sessions, and starts syncs whose pongs are late. A
    /// session ends at exactly `created + session_secs` (its time quota); idle registrations
    /// are swept once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        let life = Duration::from_secs(self.cfg.limits.session_secs);
        self.sessions.retain(|_, s| {
            let keep = now.saturating_duration_since(s.created) < life;
            if !keep {
                tracing::info!(bytes = s.bytes, "session reached its time quota");
            }
            keep
        });
        let late: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.sync_started
                    .is_some_and(|t| now >= t + defaults::RELAY_PONG_TIMEOUT)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.send_start(k);
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_secs(1);
        let idle = Duration::from_secs(self.cfg.limits.idle_secs);
        let mut closed = Vec::new();
        self.sessions.retain(|_, s| {
            for slot in s.slots.iter_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|x| now.saturating_duration_since(x.last_seen) > idle)
                {
                    if let Some(Slot {
                        path: Path::Tcp(c), ..
                    }) = slot.take()
                    {
                        closed.push(c);
                    }
                }
            }
            let keep = s.slots.iter().any(|x| x.is_some());
            if !keep {
                tracing::info!(bytes = s.bytes, "session expired (idle)");
            }
            keep
        });
        for c in closed {
            self.out.push_back(Output::Close(c));
        }
        // Forget sources whose bucket has refilled: they are back to the default state.
        let full = Duration::from_secs_f64(
            self.cfg.limits.reqs_burst as f64 / self.cfg.limits.reqs_per_sec.max(1) as f64,
        );
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < full);
        self.dial_buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(60));
    }

    fn allowed(&mut self, now: Instant, ip: IpAddr) -> bool {
        let ip = netaddr::canonical(ip);
        if !self.cfg.allow_private && netaddr::is_unroutable(ip) {
            self.metrics.drop(Drop::Denied);
            return false;
        }
        let l = &self.cfg.limits;
        let (rate, burst) = (l.reqs_per_sec as f64, l.reqs_burst as f64);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= l.max_sources {
            tracing::warn!(%ip, "source table full: request dropped");
            self.metrics.drop(Drop::SourcesFull);
            return false;
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        if b.take(now, rate, burst) {
            true
        } else {
            tracing::debug!(%ip, "rate limited");
            self.metrics.drop(Drop::RateLimited);
            false
        }
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
            if local != self.cfg.primary {
                self.metrics.drop(Drop::Malformed);
                return;
            }
            match Frame::parse(data) {
                Ok(f) => self.on_frame(now, Path::Udp { local }, from, f, data.len()),
                Err(_) => self.metrics.drop(Drop::Malformed),
            }
            return;
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
            if let Some(resp) = self.stun_answer(self.cfg.primary, from, frame) {
                self.out.push_back(Output::Tcp {
                    conn,
                    payload: resp.2,
                });
            }
            return;
        }
        match Frame::parse(frame) {
            Ok(f) => self.on_frame(now, Path::Tcp(conn), from, f, frame.len()),
            Err(_) => self.metrics.drop(Drop::Malformed),
        }
    }

    /// A TCP connection closed: its registrations go with it.
    pub fn tcp_closed(&mut self, conn: ConnId) {
        for s in self.sessions.values_mut() {
            for slot in s.slots.iter_mut() {
                if slot.as_ref().is_some_and(|x| x.path == Path::Tcp(conn)) {
                    *slot = None;
                }
            }
        }
        self.sessions
            .retain(|_, s| s.slots.iter().any(|x| x.is_some()));
    }

    fn on_stun(&mut self, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if let Some((src, dst, payload)) = self.stun_answer(local, from, data) {
            self.out.push_back(Output::Udp { src, dst, payload });
        }
    }

    /// RFC 5780 §6: the answer to a Binding request: (source, destination, bytes).
    fn stun_answer(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let m = match stun::decode(data) {
            Ok(m) => m,
            Err(_) => {
                self.metrics.drop(Drop::Malformed);
                return None;
            }
        };
        if m.class != Class::Request || !m.is_binding_request() {
            self.metrics.drop(Drop::Malformed);
            return None;
        }
        let error = |code: u16, reason: &str| stun::binding_error(m.tid, code, reason).ok();
        if m.padding_len.is_some() {
            self.metrics.drop(Drop::Padding);
            return error(400, "PADDING refused").map(|e| (local, from, e));
        }
        if !m.unknown_required.is_empty() || (m.change.is_some() && !self.cfg.rfc5780()) {
            // RFC 8489 §6.3.1.1 / RFC 5780 §6.1: 420 for what this server does not do.
            return error(420, "Unknown Attribute").map(|e| (local, from, e));
        }
        let change = m.change.unwrap_or_default();
        let (src, other) = match self.cfg.alt_ip {
            Some(ip2) => {
                let p = self.cfg.primary;
                let other_ip = if local.ip() == p.ip() { ip2 } else { p.ip() };
                let other_port = if local.port() == p.port() {
                    self.cfg.alt_port
                } else {
                    p.port()
                };
                let src = SocketAddr::new(
                    if change.ip { other_ip } else { local.ip() },
                    if change.port {
                        other_port
                    } else {
                        local.port()
                    },
                );
                (src, Some(SocketAddr::new(other_ip, other_port)))
            }
            None => (local, None),
        };
        // RFC 5780 §7.5: RESPONSE-PORT moves the answer to another port of the same IP only.
        let dst = SocketAddr::new(from.ip(), m.response_port.unwrap_or(from.port()));
        let resp = stun::BindingResponse {
            tid: m.tid,
            mapped: from,
            other_address: other,
            response_origin: other.map(|_| src),
            software: None,
        }
        .encode()
        .ok()?;
        if resp.len() > data.len() * MAX_AMPLIFICATION {
            self.metrics.drop(Drop::Limit);
            return None;
        }
        self.metrics.stun_requests += 1;
        Some((src, dst, resp))
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

    fn error(&mut self, path: Path, to: SocketAddr, code: ErrorCode, reason: &str, why: Drop) {
        self.metrics.drop(why);
        self.reply(
            path,
            to,
            &Frame::Error {
                code,
                reason: reason.to_string(),
            },
        );
    }

    fn on_frame(&mut self, now: Now, path: Path, from: SocketAddr, f: Frame, len: usize) {
        match f {
            Frame::Register {
                session,
                role,
                peer,
                token,
                candidates,
            } => self.on_register(
                now, path, from, len, session, role, peer, &token, candidates,
            ),
            Frame::Data { session, payload } => self.on_data(now, path, from, session, payload),
            Frame::Sync { session, peer } => {
                if self.find_slot(&session, &peer, from, path).is_none() {
                    return self.error(
                        path,
                        from,
                        ErrorCode::NoSession,
                        "not registered",
                        Drop::NoSession,
                    );
                }
                self.metrics.rendezvous_requests += 1;
                self.start_sync(now.mono, session);
            }
            Frame::Pong {
                session,
                peer,
                nonce,
            } => {
                let Some(r) = self.find_slot(&session, &peer, from, path) else {
                    return self.metrics.drop(Drop::NoSession);
                };
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                if let Some(slot) = s.slots[idx(r)].as_mut() {
                    slot.last_seen = now.mono;
                    if let Some((n, at)) = slot.ping {
                        if n == nonce {
                            slot.rtt = Some(now.mono.saturating_duration_since(at));
                            slot.ping = None;
                        }
                    }
                }
                let both = s
                    .slots
                    .iter()
                    .all(|x| x.as_ref().is_some_and(|y| y.ping.is_none()));
                if both && s.sync_started.is_some() {
                    self.send_start(session);
                }
            }
            Frame::Bye { session, peer } => {
                if let Some(r) = self.find_slot(&session, &peer, from, path) {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.slots[idx(r)] = None;
                        if s.slots.iter().all(|x| x.is_none()) {
                            self.sessions.remove(&session);
                        }
                    }
                }
            }
            Frame::DialBack { proto, port, nonce } => {
                self.on_dialback(now.mono, path, from, proto, port, nonce)
            }
            // Relay-to-client frames are never accepted from clients.
            _ => self.metrics.drop(Drop::Malformed),
        }
    }

    /// The role of the registered slot matching (session, peer) *and* the sender's observed
    /// address and path: a forged frame from another address changes nothing.
    fn find_slot(
        &self,
        session: &SessionId,
        peer: &PeerId,
        from: SocketAddr,
        path: Path,
    ) -> Option<Role> {
        let s = self.sessions.get(session)?;
        [Role::Listener, Role::Connector].into_iter().find(|&r| {
            s.slots[idx(r)]
                .as_ref()
                .is_some_and(|x| &x.peer == peer && x.observed == from && x.path == path)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn on_register(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        len: usize,
        session: SessionId,
        role: Role,
        peer: PeerId,
        token: &[u8],
        candidates: Vec<SocketAddr>,
    ) {
        if let Some(secret) = &self.cfg.secret {
            if !token_valid(secret, token, now.unix) {
                return self.error(
                    path,
                    from,
                    ErrorCode::Unauthorized,
                    "missing or invalid token",
                    Drop::Unauthorized,
                );
            }
        }
        let src_ip = netaddr::canonical(from.ip());
        let l = self.cfg.limits.clone();
        if !self.sessions.contains_key(&session) {
            if self.sessions.len() >= l.max_sessions {
                return self.error(path, from, ErrorCode::Limit, "relay full", Drop::Limit);
            }
            let mine = self
                .sessions
                .values()
                .filter(|s| {
                    s.slots
                        .iter()
                        .flatten()
                        .any(|x| netaddr::canonical(x.observed.ip()) == src_ip)
                })
                .count();
            if mine >= l.sessions_per_source {
                return self.error(
                    path,
                    from,
                    ErrorCode::Limit,
                    "too many sessions from this address",
                    Drop::Limit,
                );
            }
            self.sessions.insert(
                session,
                Session {
                    slots: [None, None],
                    created: now.mono,
                    bytes: 0,
                    attempt: 0,
                    sync_started: None,
                },
            );
            self.metrics.sessions_created += 1;
            tracing::info!(session = %hex8(&session), %from, ?role, "session created");
        }
        let s = self.sessions.get_mut(&session).expect("inserted above");
        let i = idx(role);
        match &mut s.slots[i] {
            Some(x) if x.peer != peer => {
                return self.error(
                    path,
                    from,
                    ErrorCode::SessionBusy,
                    "this side of the session is taken",
                    Drop::Limit,
                );
            }
            Some(x) => {
                // Same peer: refresh, following NAT rebinding to a new observed address.
                x.observed = from;
                x.path = path;
                x.candidates = candidates;
                x.last_seen = now.mono;
            }
            slot @ None => {
                *slot = Some(Slot {
                    peer,
                    observed: from,
                    path,
                    candidates,
                    last_seen: now.mono,
                    ping: None,
                    rtt: None,
                });
            }
        }
        self.metrics.rendezvous_requests += 1;
        let other = s.slots[1 - i].clone();
        let me = s.slots[i].clone().expect("set above");
        let registered = Frame::Registered {
            observed: from,
            peer_present: other.is_some(),
        }
        .emit();
        let Some(o) = other else {
            return self.send(path, from, registered);
        };
        let to_other = Frame::Peer {
            observed: me.observed,
            candidates: me.candidates,
        }
        .emit();
        // With --secret, reaching here means the token was valid: authenticated, unbounded.
        let theirs = if self.cfg.secret.is_some() {
            o.candidates
        } else {
            let bare = Frame::Peer {
                observed: o.observed,
                candidates: vec![],
            }
            .emit()
            .len();
            let spent = registered.len() + to_other.len() + bare;
            let budget = (len * MAX_AMPLIFICATION).saturating_sub(spent);
            let (fit, left_out) = candidates_within(budget, &o.candidates);
            if left_out > 0 {
                self.metrics.peer_candidates_trimmed += left_out as u64;
                tracing::debug!(
                    session = %hex8(&session), left_out,
                    "peer candidates trimmed to the amplification bound"
                );
            }
            fit
        };
        let to_me = Frame::Peer {
            observed: o.observed,
            candidates: theirs,
        }
        .emit();
        self.send(path, from, registered);
        self.send(me.path, me.observed, to_me);
        self.send(o.path, o.observed, to_other);
    }

    fn start_sync(&mut self, now: Instant, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.slots.iter().any(|x| x.is_none()) {
            return;
        }
        s.attempt += 1;
        s.sync_started = Some(now);
        let mut pings = Vec::new();
        for slot in s.slots.iter_mut().flatten() {
            let nonce: u64 = rand::random();
            slot.ping = Some((nonce, now));
            slot.rtt = None;
            pings.push((slot.path, slot.observed, nonce));
        }
        for (path, to, nonce) in pings {
            self.reply(path, to, &Frame::Ping { nonce });
        }
    }

    /// DCUtR's idea: each side waits half the difference of the round trips, so both start
    /// sending at the same instant.
    fn send_start(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.sync_started = None;
        let rtts: Vec<Option<Duration>> = s
            .slots
            .iter()
            .map(|x| x.as_ref().and_then(|y| y.rtt))
            .collect();
        let known = rtts.iter().flatten().max().copied().unwrap_or_default();
        let attempt = s.attempt;
        let mut starts = Vec::new();
        for (slot, rtt) in s.slots.iter().zip(rtts) {
            if let Some(x) = slot {
                let mine = rtt.unwrap_or(known);
                let wait = (known.saturating_sub(mine) / 2)
                    .as_millis()
                    .min(u16::MAX as u128) as u16;
                starts.push((x.path, x.observed, wait));
            }
        }
        for (path, to, wait_ms) in starts {
            self.reply(path, to, &Frame::Start { wait_ms, attempt });
        }
    }

    /// Checks and accounts one relayed datagram; returns where the other peer is.
    fn route_data(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        session: &SessionId,
        len: usize,
    ) -> Option<(Path, SocketAddr)> {
        let (max_bytes, max_life) = (
            self.cfg.limits.session_bytes,
            Duration::from_secs(self.cfg.limits.session_secs),
        );
        let Some(s) = self.sessions.get_mut(session) else {
            self.metrics.drop(Drop::NoSession);
            return None;
        };
        // The sender must be a registered peer at exactly this observed address and path.
        let Some(i) = (0..2).find(|&i| {
            s.slots[i]
                .as_ref()
                .is_some_and(|x| x.observed == from && x.path == path)
        }) else {
            self.metrics.drop(Drop::NoSession);
            return None;
        };
        let Some((opath, oaddr)) = s.slots[1 - i].as_ref().map(|o| (o.path, o.observed)) else {
            self.metrics.drop(Drop::NoSession);
            return None;
        };
        if let Some(me) = s.slots[i].as_mut() {
            me.last_seen = now.mono;
        }
        s.bytes = s.bytes.saturating_add(len as u64);
        // Quotas: at most `session_bytes` relayed, and nothing from `created + session_secs`
        // on. The datagram that would go beyond either ends the session; its sender is told.
        if s.bytes > max_bytes || now.mono.saturating_duration_since(s.created) >= max_life {
            self.sessions.remove(session);
            self.error(
                path,
                from,
                ErrorCode::Limit,
                "session quota used up",
                Drop::Limit,
            );
            return None;
        }
        self.metrics.relayed_packets += 1;
        self.metrics.relayed_bytes += len as u64;
        Some((opath, oaddr))
    }

    fn on_data(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        session: SessionId,
        payload: Vec<u8>,
    ) {
        if let Some((opath, oaddr)) = self.route_data(now, path, from, &session, payload.len()) {
            // The frame goes out as it came in (a Data frame names only the session).
            self.reply(opath, oaddr, &Frame::Data { session, payload });
        }
    }

    /// Fast path for relayed data arriving over UDP, without copying: when `frame` is a Data
    /// frame to be forwarded over UDP, returns (source, destination) for the same bytes.
    /// Anything else (not Data, TCP peer, refused) is handled as [`Relay::handle_udp`] does,
    /// and None is returned.
    pub fn forward_udp(
        &mut self,
        now: Now,
        local: SocketAddr,
        from: SocketAddr,
        frame: &[u8],
    ) -> Option<(SocketAddr, SocketAddr)> {
        let is_data = frame.len() >= 4 + crate::wire::rendezvous::SESSION_LEN
            && frame.len()
                <= 4 + crate::wire::rendezvous::SESSION_LEN + crate::wire::rendezvous::MAX_PAYLOAD
            && frame[..2] == crate::wire::rendezvous::MAGIC
            && frame[2] == crate::wire::rendezvous::VERSION
            && frame[3] == 8
            && local == self.cfg.primary;
        if !is_data {
            self.handle_udp(now, local, from, frame);
            return None;
        }
        let mut session = [0u8; crate::wire::rendezvous::SESSION_LEN];
        session.copy_from_slice(&frame[4..4 + crate::wire::rendezvous::SESSION_LEN]);
        let len = frame.len() - 4 - crate::wire::rendezvous::SESSION_LEN;
        match self.route_data(now, Path::Udp { local }, from, &session, len)? {
            (Path::Udp { local: src }, dst) => Some((src, dst)),
            (Path::Tcp(conn), _) => {
                self.out.push_back(Output::Tcp {
                    conn,
                    payload: frame.to_vec(),
                });
                None
            }
        }
    }

    fn on_dialback(
        &mut self,
        now: Instant,
        path: Path,
        from: SocketAddr,
        proto: u8,
        port: u16,
        nonce: u64,
    ) {
        let ip = netaddr::canonical(from.ip());
        let per_min = self.cfg.limits.dialbacks_per_min as f64;
        let b = self.dial_buckets.entry(ip).or_insert(Bucket {
            tokens: per_min,
            last: now,
        });
        if !b.take(now, per_min / 60.0, per_min) {
            return self.error(
                path,
                from,
                ErrorCode::Limit,
                "dial-back rate exceeded",
                Drop::DialBack,
            );
        }
        self.metrics.rendezvous_requests += 1;
        let probe = Frame::Probe { nonce }.emit();
        match proto {
            // UDP: to the requester's own observed address, from the alternate address and
            // port (a "stranger" to the requester's NAT).
            17 => {
                let Some(ip2) = self.cfg.alt_ip else {
                    return self.error(
                        path,
                        from,
                        ErrorCode::Other,
                        "dial-back needs a relay with --alt-addr",
                        Drop::DialBack,
                    );
                };
                let src = SocketAddr::new(ip2, self.cfg.alt_port);
                if !self.locals.contains(&src) {
                    return self.metrics.drop(Drop::DialBack);
                }
                self.metrics.dialbacks += 1;
                self.out.push_back(Output::Udp {
                    src,
                    dst: from,
                    payload: probe,
                });
            }
            // TCP: to the requester's own IP, at the port it named.
            _ => {
                if port == 0 {
                    return self.error(path, from, ErrorCode::BadRequest, "port 0", Drop::DialBack);
                }
                self.metrics.dialbacks += 1;
                self.out.push_back(Output::DialTcp {
                    dst: SocketAddr::new(from.ip(), port),
                    payload: probe,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
