//! Hole punching, sans-IO: meeting at the relay ([`RvClient`]), connectivity checks between
//! the peers' candidate addresses ([`Checks`]), and the [`Puncher`] that runs both on one UDP
//! socket and decides between a direct path and the relay.
//!
//! While the relay carries the session, the connector keeps asking the relay for new start
//! signals ([`UPGRADE_FIRST`], doubling up to [`UPGRADE_MAX`]) and both sides re-run the
//! checks; a check that succeeds moves the session to the direct path (RFC 8445 §9 "keepalive
//! and upgrade" in spirit: the relay is the last resort, not a final state).

pub mod auth;
pub mod birthday;
pub mod checks;
pub mod clash;
pub mod code;
pub mod fallback;
pub mod flows;
pub mod link;
pub mod nat;
pub mod pake;
pub mod path;
pub mod rendezvous;
pub mod reuse;
pub mod serve;
pub mod tcp;
pub mod ttl;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::defaults::{CLASH_KEEP_OPEN, HOPS_RESEND, TTL_MEASURE_WAIT, UPGRADE_FIRST, UPGRADE_MAX};
use crate::proto::punch::clash::ClashPlan;
use crate::proto::punch::ttl::{Answer, Distances, Measure, Opening, PeerView, Target, TtlProbe};
use crate::wire::rendezvous::{PeerId, Role, SessionId};

pub use checks::{CheckEvent, Checks};
pub use link::{Link, NetChange, NetWatch, PathMonitor};
pub use rendezvous::{RvClient, RvEvent};

/// Most candidate addresses probed at once.
pub use crate::wire::offer::MAX_TARGETS;
/// TTLs of the opening packets sent to every candidate when punching starts and nothing was
/// measured ([`ttl::Opening::Unknown`]): enough to pass our own NAT (and a carrier NAT
/// behind it) and create the mapping, too few to reach the peer's NAT when routers lie
/// between. Without them, a peer probe that arrives at our NAT first makes a Linux NAT
/// create a conntrack entry that clashes with our own outgoing flow, and the NAT then picks
/// another port (the field notes' low-TTL trick). [`ttl`] measures the real distances.
pub const OPENING_TTLS: [u8; 2] = [2, 3];

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
    /// How far our NAT and the peer's are ([`ttl`]).
    measure: Measure,
    /// Turn-taking when no opening TTL is safe ([`clash`]).
    clash: ClashPlan,
    /// Next TTL-limited packet keeping our mapping open while the peer waits out a clash.
    keep_open_at: Option<Instant>,
    keep_open_out: VecDeque<Datagram>,
    /// Sends of our TTL findings to the peer left, and when the next is due.
    hops_left: u8,
    hops_next: Option<Instant>,
    /// The findings the `nat` event told, until the measurement has settled.
    told: Option<Distances>,
    session: SessionId,
    /// How long a round of checks probes (`--direct-timeout`).
    bound: Duration,
    events: VecDeque<PunchEvent>,
}

impl Puncher {
    /// Starts at `now`.
    pub fn new(cfg: PunchConfig, now: Instant, seed: u64) -> Self {
        Puncher {
            checks: Checks::new(cfg.session, cfg.direct_timeout, seed),
            role: cfg.role,
            measure: Measure::new(now, Some(cfg.relay)),
            clash: ClashPlan::new(cfg.role, false, cfg.direct_timeout),
            keep_open_at: None,
            keep_open_out: VecDeque::new(),
            hops_left: 3,
            hops_next: None,
            told: None,
            session: cfg.session,
            bound: cfg.direct_timeout,
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
    pub fn serverless(cfg: PunchConfig, now: Instant, seed: u64) -> Self {
        let mut p = Puncher::new(cfg.clone(), now, seed);
        p.measure = Measure::new(now, None);
        p.clash = ClashPlan::new(cfg.role, true, cfg.direct_timeout);
        p.rv = RvClient::inert(cfg);
        p.serverless = true;
        p
    }

    /// The relay's cookie for our address, learned while choosing its address family
    /// ([`rendezvous::FamilyRace`]): the registration need not ask for it again.
    pub fn set_relay_cookie(&mut self, cookie: Vec<u8>, now: Instant) {
        self.rv.set_cookie(cookie, now);
    }

    /// Whether the peer's candidates (as the relay or its offer gave them) include a
    /// global IPv6 address.
    pub fn peer_offers_ipv6(&self) -> bool {
        self.checks.targets().iter().any(|a| {
            !a.ip().to_canonical().is_ipv4() && !crate::wire::netaddr::is_unroutable(a.ip())
        })
    }

    /// The peer's candidates from its offer: start the checks now. The connector got the
    /// listener's offer first and the listener is not probing yet, so it stays quiet (only
    /// low-TTL packets that open its own NAT) until the listener's first probe arrives.
    pub fn peer_offer(&mut self, targets: &[SocketAddr], now: Instant) {
        self.checks.add_targets(targets.iter().copied());
        if let Some(t) = targets
            .iter()
            .find(|a| !crate::wire::netaddr::is_unroutable(a.ip()))
        {
            self.measure.set_peer(now, t.ip());
        }
        self.checks.set_quiet(self.role == Role::Connector);
        // Start once the TTL measurement towards the peer has settled (an adjacent NAT
        // answers within a millisecond), or after a short bound.
        self.start_pending = Some(now + TTL_MEASURE_WAIT);
        self.drive(now);
    }

    /// Starts a round of checks at `now`, opening our NAT as the measurement says.
    fn start_round(&mut self, now: Instant) {
        let opening = self.measure.opening();
        let turn = (opening == Opening::Clash).then(|| self.clash.turn(now));
        self.checks.set_opening(opening, turn);
        match (turn, self.clash.hold_bound()) {
            (Some(clash::Turn::Hold), Some(b)) => self.checks.set_bound(b),
            (Some(clash::Turn::Probe(_)), _) => self.checks.set_bound(self.clash.round_bound()),
            _ => self.checks.set_bound(self.bound),
        }
        if self.clash.keeps_open() && self.keep_open_at.is_none() {
            self.keep_open_at = Some(now);
        }
        self.checks.start_at(now);
        self.checks.handle_timeout(now);
    }

    /// The next TTL-limited probe of the measurement ([`ttl`]).
    pub fn poll_ttl_probe(&mut self) -> Option<TtlProbe> {
        self.measure.poll_transmit()
    }

    /// An ICMP answer to a measurement probe.
    pub fn handle_ttl_answer(&mut self, now: Instant, target: Target, ttl: u8, answer: Answer) {
        self.measure.handle_answer(now, target, ttl, answer);
        self.send_hops(now);
    }

    /// How to open our NAT for the peer, and our outermost NAT's distance (when a router
    /// said, or the peer's NAT is right behind it) — for the techniques that open mappings
    /// of their own (birthday probing, prediction, TCP arming).
    pub fn opening_plan(&self) -> (Opening, Option<u8>) {
        let d = self.measure.distances();
        let own = d
            .own_nat_hops
            .or_else(|| d.peer_nat_hops.map(|h| h.saturating_sub(1).max(1)));
        (self.measure.opening(), own)
    }

    /// The peer's relay-observed address, once the TTL measurement towards it has settled
    /// (its NAT answered, or every probe was answered or given up): what birthday probing
    /// and prediction wait for, since between neighbouring NATs their technique changes.
    pub fn peer_measured(&self, now: Instant) -> Option<SocketAddr> {
        self.peer_observed
            .filter(|_| self.measure.peer_settled(now))
    }

    /// The peer's TTL findings (its `Hops` frame; 0: unknown), at `now`.
    pub fn handle_peer_hops(&mut self, now: Instant, own_nat: u8, peer_nat: u8) {
        self.measure
            .handle_peer_view(PeerView::from_wire(own_nat, peer_nat));
        self.drive(now);
    }

    /// Tells the peer what our measurement found, once it is in (three times: relayed UDP
    /// may be lost). Through the relay only: without one there is no path to tell it on
    /// before the checks.
    fn send_hops(&mut self, now: Instant) {
        if self.serverless || self.hops_left == 0 || !self.measure.view_ready() {
            return;
        }
        if self.hops_next.is_some_and(|t| t > now) {
            return;
        }
        let (own_nat, peer_nat) = self.measure.view().to_wire();
        let f = crate::wire::rendezvous::Frame::Hops {
            session: self.session,
            own_nat,
            peer_nat,
        };
        self.rv.send_data(f.emit());
        self.hops_left -= 1;
        self.hops_next = (self.hops_left > 0).then_some(now + HOPS_RESEND);
    }

    /// What the measurement found, and the opening chosen.
    pub fn distances(&self) -> Distances {
        self.measure.distances()
    }

    /// [`Puncher::distances`] as the `nat` event tells them; [`Puncher::settled_opening`]
    /// then says whether the settled measurement found otherwise.
    pub fn tell_distances(&mut self) -> Distances {
        let d = self.distances();
        self.told = Some(d);
        d
    }

    /// At most once, when the measurement towards the peer has settled after
    /// [`Puncher::tell_distances`]: its findings, if they differ from what was told (the
    /// peer's address came late, e.g. over the relay's TCP).
    pub fn settled_opening(&mut self, now: Instant) -> Option<Distances> {
        self.told?;
        self.peer_measured(now)?;
        let told = self.told.take()?;
        let d = self.distances();
        (d != told).then_some(d)
    }

    /// Both NAT classes are known: whether each lets in any port of a contacted address
    /// (decides who leads when the NATs clash).
    pub fn set_permissive(&mut self, mine: bool, peer: bool) {
        self.clash.set_permissive(mine, peer);
    }

    /// Packets whose TTL ends at our own outermost NAT: they refresh our mapping there and
    /// go no further, while the peer waits out a clash ([`clash`]).
    fn keep_open(&mut self, now: Instant) {
        let Some(at) = self.keep_open_at else { return };
        if matches!(self.path, Some(PathKind::Direct(_))) {
            self.keep_open_at = None;
            return;
        }
        if at > now {
            return;
        }
        if let (_, Some(ttl)) = self.opening_plan() {
            let payload = crate::wire::rendezvous::Frame::PunchProbe {
                session: self.session,
                tx: 0,
            }
            .emit();
            for &dst in self.checks.targets() {
                self.keep_open_out.push_back(Datagram {
                    dst,
                    payload: payload.clone(),
                    ttl: Some(ttl),
                });
            }
        }
        self.keep_open_at = Some(now + CLASH_KEEP_OPEN);
    }

    /// While on the relay, the connector schedules the next upgrade attempt.
    fn schedule_upgrade(&mut self, now: Instant) {
        if self.role == Role::Connector && self.upgrade_at.is_none() {
            // Waiting out a clash: the one round that can work is the follower's, after the
            // wait; rounds before it would only hold still.
            let at = self.clash_round(now).unwrap_or(now + self.upgrade_wait);
            self.upgrade_at = Some(at);
            self.upgrade_wait = (self.upgrade_wait * 2).min(UPGRADE_MAX);
        }
    }

    /// The round after waiting out a clash, when one is due after `now`.
    fn clash_round(&self, now: Instant) -> Option<Instant> {
        (self.measure.opening() == Opening::Clash)
            .then(|| self.clash.next_round())
            .flatten()
            .filter(|&at| at > now)
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

    /// Our own network changed ([`link::NetWatch`]: a route back after none, or a new local
    /// address): register again at once, so the relay learns our mapping and tells the peer,
    /// and while on the relay try a direct path again soon. `moved`: our address changed,
    /// so the direct path's mapping is gone: the relay carries the session at once (the peer
    /// follows when our packets reach it through the relay).
    pub fn network_changed(&mut self, now: Instant, moved: bool) {
        self.rv.register_now(now);
        if moved {
            self.path_failed(now);
        }
        if self.path == Some(PathKind::Relay) {
            self.upgrade_wait = UPGRADE_FIRST;
            self.upgrade_at = None;
            self.schedule_upgrade(now);
        }
        self.drive(now);
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
        // The first round of a serverless session starts once the measurement is in.
        if self.serverless
            && self.start_pending.is_some()
            && self.measure.peer_settled(now)
            && !self.checks.is_done()
            && self.checks.poll_timeout().is_none()
        {
            self.start_pending = Some(now);
        }
        if self.start_pending.is_some_and(|t| t <= now) {
            self.start_pending = None;
            if self.checks.is_done() && (self.path == Some(PathKind::Relay) || self.serverless) {
                self.checks = self.checks.renewed();
            }
            self.start_round(now);
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
                    self.measure.set_peer(now, observed.ip());
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
                CheckEvent::Failed { .. } if self.serverless && self.clash_round(now).is_some() => {
                    // Neighbouring NATs without a relay: the next round is after the wait.
                    self.start_pending = self.clash_round(now);
                    continue;
                }
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

    /// The peer may probe us from `ip` although no candidate names it (see
    /// [`Checks::allow_ip`]).
    pub fn allow_peer_ip(&mut self, ip: std::net::IpAddr) {
        self.checks.allow_ip(ip);
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
        if let Some(d) = self.keep_open_out.pop_front() {
            return Some(d);
        }
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
            self.measure.poll_timeout(),
            self.keep_open_at,
            self.hops_next,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rv.handle_timeout(now);
        self.checks.handle_timeout(now);
        self.measure.handle_timeout(now);
        self.keep_open(now);
        self.send_hops(now);
        self.drive(now);
    }
}

#[cfg(test)]
mod tests;
