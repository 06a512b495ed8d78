//! Hole punching, sans-IO: meeting at the relay ([`RvClient`]), connectivity checks between
//! the peers' candidate addresses ([`Checks`]), and the [`Puncher`] that runs both on one UDP
//! socket and decides between a direct path and the relay.
//!
//! While the relay carries the session, the connector keeps asking the relay for new start
//! signals ([`UPGRADE_FIRST`], doubling up to [`UPGRADE_MAX`]) and both sides re-run the
//! checks; a check that succeeds moves the session to the direct path (RFC 8445 §9 "keepalive
//! and upgrade" in spirit: the relay is the last resort, not a final state).

pub mod birthday;
pub mod code;
pub mod nat;
pub mod pake;
pub mod tcp;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::defaults;
use crate::proto::stun::{Schedule, Transaction};
use crate::wire::rendezvous::{ErrorCode, Frame, PeerId, Role, SessionId};

/// How often a peer probes each candidate during a punch (bounded: home routers drop floods).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Most candidate addresses probed at once.
pub use crate::wire::offer::MAX_TARGETS;
/// Default bound on punching before falling back to the relay (issue contract: 3 s).
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(3);
/// TTLs of the opening packets sent to every candidate when punching starts: enough to pass
/// our own NAT (and a carrier NAT behind it) and create the mapping, too few to reach the
/// peer's NAT. Without them, a peer probe that arrives at our NAT first makes a Linux NAT
/// create a conntrack entry that clashes with our own outgoing flow, and the NAT then picks
/// another port (the field notes' low-TTL trick).
pub const OPENING_TTLS: [u8; 2] = [2, 3];
/// Time between the opening packets and the first full probe round: covers the start-time
/// difference between the two sides.
pub const OPENING_LEAD: Duration = Duration::from_millis(50);

/// First retry of a direct path after falling back to the relay: a NAT that just forgot its
/// bindings usually accepts a fresh punch at once.
pub const UPGRADE_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between upgrade attempts: each costs a few probes per candidate, and a pair
/// that failed several times (symmetric NATs) rarely changes quickly.
pub const UPGRADE_MAX: Duration = Duration::from_secs(60);

/// A datagram to send from the punch socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes.
    pub payload: Vec<u8>,
    /// IP TTL for this datagram only (None: the default).
    pub ttl: Option<u8>,
}

/// Default keepalive towards the relay and the peer: well under the 30 s many NATs allow.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Configuration of one side.
#[derive(Debug, Clone)]
pub struct PunchConfig {
    /// The relay's rendezvous address.
    pub relay: SocketAddr,
    /// Session id (from the code's nameplate).
    pub session: SessionId,
    /// Which side.
    pub role: Role,
    /// This client instance.
    pub peer: PeerId,
    /// Relay token (empty when none is needed).
    pub token: Vec<u8>,
    /// Self-reported candidates (host addresses, mapped ports).
    pub candidates: Vec<SocketAddr>,
    /// Bound on punching.
    pub direct_timeout: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
}

/// What the rendezvous client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RvEvent {
    /// The relay accepted us; `observed` is our server-reflexive address.
    Registered {
        /// As the relay sees us.
        observed: SocketAddr,
        /// Whether the other side is there yet.
        peer_present: bool,
    },
    /// The other side's addresses.
    Peer {
        /// As the relay sees it.
        observed: SocketAddr,
        /// What it reported.
        candidates: Vec<SocketAddr>,
    },
    /// Start punching after `wait`.
    Start {
        /// Delay that makes both sides start together.
        wait: Duration,
        /// Attempt number.
        attempt: u32,
    },
    /// Data relayed from the other side.
    Data(Vec<u8>),
    /// The relay refused something.
    Refused {
        /// Code.
        code: ErrorCode,
        /// Its words.
        reason: String,
    },
    /// The relay does not answer.
    RelayLost,
}

/// The rendezvous client: registers (and keeps the registration alive), answers the relay's
/// RTT pings, asks for start signals and carries relayed data.
#[derive(Debug)]
pub struct RvClient {
    cfg: PunchConfig,
    register: Option<Transaction>,
    registered: bool,
    next_keepalive: Option<Instant>,
    sync: Option<Transaction>,
    /// Never talks to a relay (`--manual`).
    inert: bool,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<RvEvent>,
}

impl RvClient {
    /// Starts registering at `now`.
    pub fn new(cfg: PunchConfig, now: Instant) -> Self {
        let mut c = RvClient {
            cfg,
            register: None,
            registered: false,
            next_keepalive: None,
            sync: None,
            inert: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        c.register = Some(Transaction::new(now, Self::register_schedule()));
        c.pump(now);
        c
    }

    /// A client that never talks to a relay (serverless `--manual` mode): every request is a
    /// no-op.
    pub fn inert(cfg: PunchConfig) -> Self {
        RvClient {
            cfg,
            register: None,
            registered: false,
            next_keepalive: None,
            sync: None,
            inert: true,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn is_inert(&self) -> bool {
        self.inert
    }

    fn register_schedule() -> Schedule {
        Schedule {
            rto: defaults::INITIAL_RTO,
            max_sends: 6,
            final_wait: Duration::from_millis(800),
        }
    }

    fn register_frame(&self) -> Vec<u8> {
        Frame::Register {
            session: self.cfg.session,
            role: self.cfg.role,
            peer: self.cfg.peer,
            token: self.cfg.token.clone(),
            candidates: self.cfg.candidates.clone(),
        }
        .emit()
    }

    fn pump(&mut self, now: Instant) {
        if let Some(t) = &mut self.register {
            if t.timed_out(now) {
                self.register = None;
                self.events.push_back(RvEvent::RelayLost);
            } else if t.poll_send(now) {
                let f = self.register_frame();
                self.out.push_back((self.cfg.relay, f));
            }
        }
        if let Some(t) = &mut self.sync {
            if t.timed_out(now) {
                self.sync = None;
                self.events.push_back(RvEvent::RelayLost);
            } else if t.poll_send(now) {
                let f = Frame::Sync {
                    session: self.cfg.session,
                    peer: self.cfg.peer,
                }
                .emit();
                self.out.push_back((self.cfg.relay, f));
            }
        }
        if self.next_keepalive.is_some_and(|k| k <= now) && self.register.is_none() {
            // Refreshing is re-registering: idempotent for the same peer id, and it follows
            // NAT rebinding to a new observed address.
            self.register = Some(Transaction::new(now, Self::register_schedule()));
            self.next_keepalive = None;
            self.pump(now);
        }
    }

    /// Adds a candidate address of ours (e.g. a port the router mapped for us) and
    /// re-registers, so the relay passes it on to the peer.
    pub fn add_candidate(&mut self, addr: SocketAddr, now: Instant) {
        if !self.cfg.candidates.contains(&addr) {
            self.cfg.candidates.push(addr);
            self.refresh(now);
        }
    }

    /// Re-registers at once (after a path failure: our observed address may have changed).
    pub fn refresh(&mut self, now: Instant) {
        if self.register.is_none() && !self.is_inert() {
            self.register = Some(Transaction::new(now, Self::register_schedule()));
            self.pump(now);
        }
    }

    /// Asks the relay for a simultaneous start (again, on every retry).
    pub fn sync(&mut self, now: Instant) {
        if self.is_inert() {
            return;
        }
        self.sync = Some(Transaction::new(
            now,
            Schedule {
                rto: Duration::from_millis(300),
                max_sends: 4,
                final_wait: Duration::from_millis(1200),
            },
        ));
        self.pump(now);
    }

    /// Sends data through the relay.
    pub fn send_data(&mut self, payload: Vec<u8>) {
        if self.inert {
            return;
        }
        let f = Frame::Data {
            session: self.cfg.session,
            payload,
        }
        .emit();
        self.out.push_back((self.cfg.relay, f));
    }

    /// Whether the relay has accepted the registration.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Feeds a datagram; returns false when it did not come from the relay.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        if from != self.cfg.relay {
            return false;
        }
        let Ok(f) = Frame::parse(data) else {
            return true;
        };
        match f {
            Frame::Registered {
                observed,
                peer_present,
            } => {
                if self.register.take().is_some() || !self.registered {
                    self.events.push_back(RvEvent::Registered {
                        observed,
                        peer_present,
                    });
                }
                self.registered = true;
                self.next_keepalive = Some(now + self.cfg.keepalive);
            }
            Frame::Peer {
                observed,
                candidates,
            } => self.events.push_back(RvEvent::Peer {
                observed,
                candidates,
            }),
            Frame::Ping { nonce } => {
                let f = Frame::Pong {
                    session: self.cfg.session,
                    peer: self.cfg.peer,
                    nonce,
                }
                .emit();
                self.out.push_back((self.cfg.relay, f));
            }
            Frame::Start { wait_ms, attempt } => {
                self.sync = None;
                self.events.push_back(RvEvent::Start {
                    wait: Duration::from_millis(wait_ms as u64),
                    attempt,
                });
            }
            Frame::Data { session, payload } if session == self.cfg.session => {
                self.events.push_back(RvEvent::Data(payload))
            }
            Frame::Error { code, reason } => {
                self.register = None;
                self.events.push_back(RvEvent::Refused { code, reason })
            }
            _ => {}
        }
        self.pump(now);
        true
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<RvEvent> {
        self.events.pop_front()
    }

    /// When to call [`RvClient::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.register.as_ref().and_then(|t| t.poll_timeout()),
            self.sync.as_ref().and_then(|t| t.poll_timeout()),
            self.next_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }
}

/// Result of the connectivity checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckEvent {
    /// A path works both ways: we probed `peer`, it answered.
    Connected {
        /// The peer's address on the working path.
        peer: SocketAddr,
        /// Round trip of the winning probe.
        rtt: Duration,
        /// Probes sent until then.
        probes: u32,
    },
    /// No path within the bound.
    Failed {
        /// Probes sent.
        probes: u32,
    },
}

/// Connectivity checks: probe every candidate of the peer at a bounded rate from the moment
/// of the start signal; answer the peer's probes (which also reveals its peer-reflexive
/// address, the one that works when its NAT is symmetric and ours lets it in); the first
/// answered probe wins.
#[derive(Debug)]
pub struct Checks {
    session: SessionId,
    targets: Vec<SocketAddr>,
    start_at: Option<Instant>,
    deadline: Option<Instant>,
    next_round: Option<Instant>,
    bound: Duration,
    sent: HashMap<u64, (SocketAddr, Instant)>,
    probes: u32,
    done: bool,
    opened: bool,
    /// Send only low-TTL packets (keeping our NAT open for the peer) until the peer's first
    /// probe arrives: without a start signal, probes that reach the peer's NAT before the
    /// peer has sent would make a Linux NAT move the peer's flow to another port.
    quiet: bool,
    out: VecDeque<Datagram>,
    events: VecDeque<CheckEvent>,
}

/// Round interval while [`Checks`] are quiet: only keeps our own NAT binding open.
pub const QUIET_INTERVAL: Duration = Duration::from_millis(500);

impl Checks {
    /// Checks for a session, giving up `bound` after they start.
    pub fn new(session: SessionId, bound: Duration) -> Self {
        Checks {
            session,
            targets: Vec::new(),
            start_at: None,
            deadline: None,
            next_round: None,
            bound,
            sent: HashMap::new(),
            probes: 0,
            done: false,
            opened: false,
            quiet: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Sends only low-TTL packets until the peer's first probe arrives.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// Fresh checks towards the same targets (an upgrade attempt after a fallback).
    pub fn renewed(&self) -> Checks {
        let mut c = Checks::new(self.session, self.bound);
        c.targets = self.targets.clone();
        c
    }

    /// Adds candidate addresses of the peer.
    pub fn add_targets(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for a in addrs {
            if !self.targets.contains(&a) && self.targets.len() < MAX_TARGETS {
                self.targets.push(a);
            }
        }
    }

    /// Starts probing at `at` (the relay's start signal plus its wait).
    pub fn start_at(&mut self, at: Instant) {
        if self.done {
            return;
        }
        self.start_at = Some(at);
        self.deadline = Some(at + self.bound);
        self.next_round = Some(at);
    }

    /// Whether the checks have finished (connected or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Low-TTL packets to every target: they open our own NAT (and a carrier NAT behind it)
    /// and die before the peer's.
    fn send_opening(&mut self) {
        for &dst in &self.targets {
            for ttl in OPENING_TTLS {
                let f = Frame::PunchProbe {
                    session: self.session,
                    tx: rand::random(),
                }
                .emit();
                self.out.push_back(Datagram {
                    dst,
                    payload: f,
                    ttl: Some(ttl),
                });
            }
        }
    }

    fn pump(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.done = true;
            self.next_round = None;
            self.events.push_back(CheckEvent::Failed {
                probes: self.probes,
            });
            return;
        }
        if let Some(t) = self.next_round {
            if t <= now && self.quiet {
                self.send_opening();
                self.next_round = Some(now + QUIET_INTERVAL);
            } else if t <= now && !self.opened {
                self.opened = true;
                self.send_opening();
                self.next_round = Some(now + OPENING_LEAD);
            } else if t <= now {
                for &dst in &self.targets {
                    let tx: u64 = rand::random();
                    self.sent.insert(tx, (dst, now));
                    self.probes += 1;
                    let f = Frame::PunchProbe {
                        session: self.session,
                        tx,
                    }
                    .emit();
                    self.out.push_back(Datagram {
                        dst,
                        payload: f,
                        ttl: None,
                    });
                }
                self.next_round = Some(now + PROBE_INTERVAL);
            }
        }
    }

    /// Feeds a datagram; returns false when it is not a check of this session.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        match Frame::parse(data) {
            Ok(Frame::PunchProbe { session, tx }) if session == self.session => {
                // Always answer, even after we are done: the peer may still be waiting for
                // its own answer.
                let f = Frame::PunchAck {
                    session,
                    tx,
                    observed: from,
                }
                .emit();
                self.out.push_back(Datagram {
                    dst: from,
                    payload: f,
                    ttl: None,
                });
                if !self.done {
                    self.add_targets([from]);
                    if self.quiet {
                        // The peer is sending: answer with full probes at once.
                        self.quiet = false;
                        self.opened = true;
                        self.next_round = Some(now);
                        self.pump(now);
                    }
                }
                true
            }
            Ok(Frame::PunchAck { session, tx, .. }) if session == self.session => {
                if let Some((dst, at)) = self.sent.remove(&tx) {
                    if !self.done && dst == from {
                        self.done = true;
                        self.next_round = None;
                        self.events.push_back(CheckEvent::Connected {
                            peer: from,
                            rtt: now.saturating_duration_since(at),
                            probes: self.probes,
                        });
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Next datagram.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<CheckEvent> {
        self.events.pop_front()
    }

    /// When to call [`Checks::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        [self.next_round, self.deadline].into_iter().flatten().min()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }
}

/// Which path carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Peer to peer.
    Direct(SocketAddr),
    /// Through the relay.
    Relay,
}

/// What the [`Puncher`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchEvent {
    /// Registered at the relay.
    Registered {
        /// Our server-reflexive address.
        observed: SocketAddr,
    },
    /// The path changed (first connection, fallback, or upgrade).
    Path {
        /// The path now in use.
        path: PathKind,
        /// Probes sent for this result.
        probes: u32,
    },
    /// Data relayed by the relay.
    RelayData(Vec<u8>),
    /// The relay does not answer (over this transport): the driver may try TCP.
    RelayUnreachable,
    /// Fatal: the relay refused us.
    Failed(String),
}

/// Runs rendezvous and checks on one UDP socket: registers, waits for the peer, lets the
/// connector ask for a start signal, probes, and falls back to the relay when no direct path
/// works within the bound.
#[derive(Debug)]
pub struct Puncher {
    rv: RvClient,
    checks: Checks,
    role: Role,
    path: Option<PathKind>,
    start_pending: Option<Instant>,
    upgrade_at: Option<Instant>,
    upgrade_wait: Duration,
    /// No relay (`--manual`): the peer's candidates come from its pasted offer.
    serverless: bool,
    /// The peer's address as the relay sees it.
    peer_observed: Option<SocketAddr>,
    events: VecDeque<PunchEvent>,
}

impl Puncher {
    /// Starts at `now`.
    pub fn new(cfg: PunchConfig, now: Instant) -> Self {
        Puncher {
            checks: Checks::new(cfg.session, cfg.direct_timeout),
            role: cfg.role,
            rv: RvClient::new(cfg, now),
            path: None,
            start_pending: None,
            upgrade_at: None,
            upgrade_wait: UPGRADE_FIRST,
            serverless: false,
            peer_observed: None,
            events: VecDeque::new(),
        }
    }

    /// A puncher without a relay (`--manual`): it waits for [`Puncher::peer_offer`]; the
    /// checks are bounded by `cfg.direct_timeout`, and failing them is fatal (there is no relay
    /// to fall back to).
    pub fn serverless(cfg: PunchConfig, now: Instant) -> Self {
        let mut p = Puncher::new(cfg.clone(), now);
        p.rv = RvClient::inert(cfg);
        p.serverless = true;
        p
    }

    /// The peer's candidates from its offer: start the checks now. The connector got the
    /// listener's offer first and the listener is not probing yet, so it stays quiet (only
    /// low-TTL packets that open its own NAT) until the listener's first probe arrives.
    pub fn peer_offer(&mut self, targets: &[SocketAddr], now: Instant) {
        self.checks.add_targets(targets.iter().copied());
        self.checks.set_quiet(self.role == Role::Connector);
        self.checks.start_at(now);
        self.checks.handle_timeout(now);
        self.drive(now);
    }

    /// While on the relay, the connector schedules the next upgrade attempt.
    fn schedule_upgrade(&mut self, now: Instant) {
        if self.role == Role::Connector && self.upgrade_at.is_none() {
            self.upgrade_at = Some(now + self.upgrade_wait);
            self.upgrade_wait = (self.upgrade_wait * 2).min(UPGRADE_MAX);
        }
    }

    /// A direct path found outside the checks (birthday probing): stop upgrade attempts.
    pub fn adopt_direct(&mut self, peer: SocketAddr) {
        self.path = Some(PathKind::Direct(peer));
        self.upgrade_at = None;
        self.upgrade_wait = UPGRADE_FIRST;
    }

    /// Both NAT classifications say no direct path can work: carry the session through the
    /// relay now instead of after the punching bound. The checks keep running, and upgrade
    /// attempts follow, so a wrong prediction only costs the detour until they succeed.
    pub fn prefer_relay(&mut self, now: Instant) {
        if self.path.is_none() {
            self.path = Some(PathKind::Relay);
            self.events.push_back(PunchEvent::Path {
                path: PathKind::Relay,
                probes: self.checks.probes,
            });
            self.schedule_upgrade(now);
        }
    }

    /// The driver saw the direct path die (the peer stopped answering, or answers only
    /// through the relay): carry the session through the relay, re-register (our observed
    /// address may have changed) and try a direct path again soon.
    pub fn path_failed(&mut self, now: Instant) {
        if self.serverless {
            // No relay: look for the peer again (it may have a new mapping), both sides
            // probing at once now that each knows the other's addresses.
            if self.checks.is_done() {
                self.checks = self.checks.renewed();
                self.checks.start_at(now);
                self.checks.handle_timeout(now);
            }
            return;
        }
        if self.path == Some(PathKind::Relay) {
            return;
        }
        self.path = Some(PathKind::Relay);
        self.events.push_back(PunchEvent::Path {
            path: PathKind::Relay,
            probes: 0,
        });
        self.rv.refresh(now);
        self.upgrade_wait = UPGRADE_FIRST;
        self.upgrade_at = None;
        self.schedule_upgrade(now);
    }

    fn drive(&mut self, now: Instant) {
        if self.upgrade_at.is_some_and(|t| t <= now) {
            self.upgrade_at = None;
            if self.path == Some(PathKind::Relay) {
                if self.checks.is_done() {
                    self.rv.sync(now);
                }
                // Also covers a start signal that never comes.
                self.schedule_upgrade(now);
            }
        }
        if self.start_pending.is_some_and(|t| t <= now) {
            self.start_pending = None;
            if self.checks.is_done() && self.path == Some(PathKind::Relay) {
                self.checks = self.checks.renewed();
            }
            self.checks.start_at(now);
            self.checks.handle_timeout(now);
        }
        while let Some(e) = self.rv.poll_event() {
            match e {
                RvEvent::Registered {
                    observed,
                    peer_present,
                } => {
                    self.events.push_back(PunchEvent::Registered { observed });
                    // The side that arrives second asks for the start signal.
                    if peer_present && self.path.is_none() {
                        self.rv.sync(now);
                    }
                }
                RvEvent::Peer {
                    observed,
                    candidates,
                } => {
                    self.peer_observed = Some(observed);
                    self.checks
                        .add_targets(std::iter::once(observed).chain(candidates));
                }
                RvEvent::Start { wait, .. } => self.start_pending = Some(now + wait),
                RvEvent::Data(d) => self.events.push_back(PunchEvent::RelayData(d)),
                RvEvent::Refused { reason, .. } => self
                    .events
                    .push_back(PunchEvent::Failed(format!("the relay refused: {reason}"))),
                RvEvent::RelayLost => {
                    if self.path.is_none() {
                        self.events.push_back(PunchEvent::RelayUnreachable)
                    }
                }
            }
        }
        if self.start_pending.is_some_and(|t| t <= now) {
            self.drive(now);
            return;
        }
        while let Some(e) = self.checks.poll_event() {
            let (path, probes) = match e {
                CheckEvent::Connected { peer, probes, .. } => (PathKind::Direct(peer), probes),
                CheckEvent::Failed { probes } if self.serverless => {
                    if self.path.is_none() {
                        self.events.push_back(PunchEvent::Failed(format!(
                            "no direct path after {probes} probes, and --manual has no relay \
                             to fall back to (is the other side running, with this side's \
                             offer? behind a symmetric NAT on both sides?)"
                        )));
                    }
                    continue;
                }
                // A direct path found by another technique (birthday probing, prediction)
                // stays: these checks ran on the punch socket, not on that path, and a dead
                // direct path is the path monitor's to notice.
                CheckEvent::Failed { .. } if matches!(self.path, Some(PathKind::Direct(_))) => {
                    continue
                }
                CheckEvent::Failed { probes } => (PathKind::Relay, probes),
            };
            if self.path != Some(path) {
                self.path = Some(path);
                self.events.push_back(PunchEvent::Path { path, probes });
            }
            match path {
                PathKind::Relay => self.schedule_upgrade(now),
                PathKind::Direct(_) => {
                    self.upgrade_at = None;
                    self.upgrade_wait = UPGRADE_FIRST;
                }
            }
        }
    }

    /// Feeds a datagram from the socket; returns false if it is none of ours (e.g. QUIC).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let ours = self.rv.handle_datagram(now, from, data)
            || self.checks.handle_datagram(now, from, data);
        self.drive(now);
        ours
    }

    /// Offers one more candidate address to the peer (see [`RvClient::add_candidate`]).
    pub fn add_candidate(&mut self, addr: SocketAddr, now: Instant) {
        self.rv.add_candidate(addr, now);
        self.drive(now);
    }

    /// Re-registers at the relay now (see [`RvClient::refresh`]).
    pub fn refresh(&mut self, now: Instant) {
        self.rv.refresh(now);
    }

    /// Sends data through the relay (used while the path is the relay).
    pub fn send_relayed(&mut self, payload: Vec<u8>) {
        self.rv.send_data(payload);
    }

    /// The path in use, once decided.
    pub fn path(&self) -> Option<PathKind> {
        self.path
    }

    /// The peer's server-reflexive address, as the relay told us.
    pub fn peer_observed(&self) -> Option<SocketAddr> {
        self.peer_observed
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Next datagram to send from the socket.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.rv
            .poll_transmit()
            .map(|(dst, payload)| Datagram {
                dst,
                payload,
                ttl: None,
            })
            .or_else(|| self.checks.poll_transmit())
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    /// When to call [`Puncher::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.rv.poll_timeout(),
            self.checks.poll_timeout(),
            self.start_pending,
            self.upgrade_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rv.handle_timeout(now);
        self.checks.handle_timeout(now);
        self.drive(now);
    }
}

/// How long a direct path may stay silent while we keep sending before it is declared dead:
/// a NAT that dropped or renumbered our mapping (conntrack flush, reboot, rebinding) answers
/// nothing, and the relay is always there.
pub const STALL: Duration = Duration::from_secs(2);

/// Sends without any answer that make a path suspect: a lone acknowledgement never gets an
/// answer, but QUIC retransmissions and keepalive pings do.
pub const STALL_SENDS: u32 = 4;

/// Watches a direct path: we kept sending ([`STALL_SENDS`] datagrams over [`STALL`]) and
/// nothing came back → fall back to the relay.
#[derive(Debug, Clone, Copy)]
pub struct PathMonitor {
    first_unanswered: Option<Instant>,
    unanswered: u32,
}

impl PathMonitor {
    /// A monitor that has just heard from the peer.
    pub fn new(_now: Instant) -> Self {
        PathMonitor {
            first_unanswered: None,
            unanswered: 0,
        }
    }

    /// We received from the peer.
    pub fn on_rx(&mut self, _now: Instant) {
        self.first_unanswered = None;
        self.unanswered = 0;
    }

    /// We sent to the peer.
    pub fn on_tx(&mut self, now: Instant) {
        self.first_unanswered.get_or_insert(now);
        self.unanswered = self.unanswered.saturating_add(1);
    }

    /// True when the direct path looks dead. Idle silence in both directions, or a last
    /// acknowledgement that nobody answers, is not a failure.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.unanswered >= STALL_SENDS
            && self
                .first_unanswered
                .is_some_and(|t| now.saturating_duration_since(t) > STALL)
    }
}

#[cfg(test)]
mod tests;
