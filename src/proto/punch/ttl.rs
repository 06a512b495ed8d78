//! How far the NATs are: the TTL of the opening packets comes from measurement, not a
//! constant.
//!
//! An opening packet must pass our own NATs (creating the mapping the peer's packets will
//! match) and die before the peer's NAT: if it reaches a peer NAT that accepts packets
//! addressed to itself (a Linux router without an input firewall), that router delivers it
//! to itself and keeps a conntrack entry for it, and when the peer's own flow towards us
//! leaves later, the entry clashes with it and the NAT moves the flow to another port
//! (RFC 4787 §4.1 allows it; the field notes call it the clash). So:
//!
//! - TTL-limited probes towards the relay (or STUN server) find our own outermost NAT: the
//!   last hop whose ICMP Time Exceeded comes from a private or shared (RFC 6598) address;
//! - TTL-limited probes towards the peer's public address find its NAT: routers in between
//!   answer Time Exceeded, and the peer's NAT answers port unreachable (it accepts packets
//!   addressed to itself) or nothing (an input firewall drops them — harmless);
//! - the opening TTL is one more than our NAT's distance when that dies before the peer's
//!   NAT ([`Opening::Ttl`]); when the peer's NAT is the very next hop and answers
//!   ([`Opening::Clash`]), no TTL works and the checks use an order instead
//!   ([`crate::proto::punch::clash`]).
//!
//! A silent hop after our NAT is ambiguous: an input firewall (harmless) or a router whose
//! ICMP budget is spent (Linux: one error per second per destination after a burst of 6 —
//! in the lab, a previous session's probes left a neighbouring NAT silent for a whole
//! measurement). So the two sides exchange what they found ([`Measure::handle_peer_view`],
//! the `Hops` frame): when the peer heard our NAT answer right after its own, the NATs are
//! neighbours, and silence on our side chooses the order, as the peer does.
//!
//! The probes go from sockets of their own to a port nobody uses (the discard port), so
//! the conntrack entries they leave on the peer's router can never clash with the session.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::Serialize;

use crate::defaults::{PEER_HOPS_WAIT, TTL_PROBE_RTO, TTL_PROBE_SENDS};
use crate::wire::netaddr::{is_cgnat, is_private};

/// Highest TTL probed towards the relay: our own NATs are the first few hops.
pub const OWN_MAX_TTL: u8 = 4;
/// Highest TTL probed towards the peer: far enough to see a peer NAT a few routers away.
pub const PEER_MAX_TTL: u8 = 6;
/// The port the peer probes go to (RFC 863 discard): nobody's mapping.
pub const PEER_PROBE_PORT: u16 = 9;

/// What a probe is measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The relay or STUN server: our own NATs.
    Relay,
    /// The peer's public address: its NAT.
    Peer,
}

/// What came back for a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ICMP Time Exceeded from a router.
    TimeExceeded(IpAddr),
    /// ICMP destination unreachable (port unreachable) from its destination or a router.
    Unreachable(IpAddr),
}

/// One probe to send, from the socket kept for (`target`, `ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlProbe {
    /// What it measures.
    pub target: Target,
    /// Its IP TTL.
    pub ttl: u8,
    /// Where it goes.
    pub dst: SocketAddr,
}

/// How to open our NAT for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Nothing measured (no ICMP at all): the classic low TTLs.
    Unknown,
    /// Opening packets with this TTL pass our NATs and die before the peer's.
    Ttl(u8),
    /// The peer's NAT is the next hop after ours and accepts packets addressed to itself:
    /// any packet that opens our NAT reaches it.
    Clash,
}

/// What the probes found, for the `nat` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Distances {
    /// Hops to our outermost NAT (1: the home router), when a router said so.
    pub own_nat_hops: Option<u8>,
    /// Hops to the peer's NAT, when it answered (port unreachable).
    pub peer_nat_hops: Option<u8>,
    /// Routers between that answered Time Exceeded (beyond our own NATs).
    pub routers_between: u8,
    /// The TTL chosen for opening packets (null: none is safe, or nothing was measured).
    pub opening_ttl: Option<u8>,
    /// `ttl` (low-TTL opening packets), `order` (no safe TTL: the peers take turns) or
    /// `default` (nothing measured: TTLs 2 and 3).
    pub method: &'static str,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    dst: SocketAddr,
    sends: u32,
    next: Instant,
}

/// What the peer's measurement found (its `Hops` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Hops from the peer to its own outermost NAT.
    pub own_nat: Option<u8>,
    /// Hops from the peer to our NAT (our NAT answered its probe).
    pub peer_nat: Option<u8>,
}

impl PeerView {
    /// From a `Hops` frame's bytes (0: unknown).
    pub fn from_wire(own_nat: u8, peer_nat: u8) -> PeerView {
        let known = |h: u8| (h != 0).then_some(h);
        PeerView {
            own_nat: known(own_nat),
            peer_nat: known(peer_nat),
        }
    }

    /// The `Hops` frame's bytes (0: unknown): own NAT, peer's NAT.
    pub fn to_wire(self) -> (u8, u8) {
        (self.own_nat.unwrap_or(0), self.peer_nat.unwrap_or(0))
    }

    /// Our NAT answered the peer at the hop right after the peer's own NAT: the NATs are
    /// neighbours, and ours accepts packets addressed to itself.
    fn neighbours(&self) -> bool {
        match (self.own_nat, self.peer_nat) {
            (Some(own), Some(ours)) => ours == own + 1,
            (None, Some(ours)) => ours <= 2,
            _ => false,
        }
    }
}

/// The TTL measurement, sans-IO: queue probes with [`Measure::poll_transmit`], feed the
/// ICMP answers to [`Measure::handle_answer`] and the peer's findings to
/// [`Measure::handle_peer_view`], read [`Measure::opening`].
#[derive(Debug, Default)]
pub struct Measure {
    pending: BTreeMap<(Target, u8), Pending>,
    answers: BTreeMap<(Target, u8), Answer>,
    peer_ip: Option<IpAddr>,
    out: VecDeque<TtlProbe>,
    /// The peer sends its findings (a relay carries them): wait for them when ours are
    /// ambiguous.
    expect_view: bool,
    view: Option<PeerView>,
    /// When we stop waiting for the peer's findings.
    view_deadline: Option<Instant>,
    /// That wait is over.
    view_waited: bool,
}

impl Measure {
    /// A measurement that probes towards `relay` (our own NATs) from `now`.
    pub fn new(now: Instant, relay: Option<SocketAddr>) -> Measure {
        let mut m = Measure {
            expect_view: relay.is_some(),
            ..Measure::default()
        };
        if let Some(r) = relay {
            m.queue(now, Target::Relay, r, OWN_MAX_TTL);
        }
        m
    }

    /// The peer's findings arrived.
    pub fn handle_peer_view(&mut self, view: PeerView) {
        self.view = Some(view);
    }

    /// What we found, for the peer, once it is in ([`Measure::view_ready`]).
    pub fn view(&self) -> PeerView {
        PeerView {
            own_nat: self.own_nat_hops(),
            peer_nat: self.peer_nat_hops(),
        }
    }

    /// The peer's public address is known: probe towards it.
    pub fn set_peer(&mut self, now: Instant, peer: IpAddr) {
        if self.peer_ip.is_some() {
            return;
        }
        self.peer_ip = Some(peer);
        let dst = SocketAddr::new(peer, PEER_PROBE_PORT);
        self.queue(now, Target::Peer, dst, PEER_MAX_TTL);
    }

    fn queue(&mut self, now: Instant, target: Target, dst: SocketAddr, max: u8) {
        for ttl in 1..=max {
            self.pending.insert(
                (target, ttl),
                Pending {
                    dst,
                    sends: 0,
                    next: now,
                },
            );
        }
        self.handle_timeout(now);
    }

    /// An ICMP answer, at `now`, to the probe of (`target`, `ttl`).
    pub fn handle_answer(&mut self, now: Instant, target: Target, ttl: u8, answer: Answer) {
        self.pending.remove(&(target, ttl));
        self.answers.entry((target, ttl)).or_insert(answer);
        // Past the peer's NAT nothing more can be learnt.
        if let Some(h) = self.peer_nat_hops() {
            self.pending
                .retain(|&(t, ttl), _| t != Target::Peer || ttl < h);
        }
        self.note_done(now);
    }

    /// Our probes towards the peer are over: from `now`, wait a little for the peer's.
    fn note_done(&mut self, now: Instant) {
        if self.expect_view && self.view_deadline.is_none() && self.peer_done() {
            self.view_deadline = Some(now + PEER_HOPS_WAIT);
        }
    }

    /// Retransmits silent probes (ICMP is rate-limited, and a first packet may wait for
    /// ARP), then gives up on them.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
        self.note_done(now);
        if self.view_deadline.is_some_and(|d| d <= now) {
            self.view_waited = true;
        }
    }

    fn pump(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (&(target, ttl), p) in self.pending.iter_mut() {
            if p.next > now {
                continue;
            }
            if p.sends >= TTL_PROBE_SENDS {
                done.push((target, ttl));
                continue;
            }
            p.sends += 1;
            p.next = now + TTL_PROBE_RTO * p.sends;
            self.out.push_back(TtlProbe {
                target,
                ttl,
                dst: p.dst,
            });
        }
        for k in done {
            self.pending.remove(&k);
        }
    }

    /// Next probe to send.
    pub fn poll_transmit(&mut self) -> Option<TtlProbe> {
        self.out.pop_front()
    }

    /// When to call [`Measure::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let view = self
            .view_deadline
            .filter(|_| self.view.is_none() && self.expect_view && !self.view_waited);
        self.pending.values().map(|p| p.next).chain(view).min()
    }

    /// Whether the probes towards the peer are all answered or given up.
    pub fn peer_done(&self) -> bool {
        self.peer_ip.is_some() && !self.pending.keys().any(|(t, _)| *t == Target::Peer)
    }

    /// Whether our own probes towards the peer are in: its NAT answered, or all are done.
    pub fn view_ready(&self) -> bool {
        self.peer_nat_hops().is_some() || self.peer_done()
    }

    /// Whether what the peer probes can tell is known: its NAT answered, or all are done
    /// and they are unambiguous, or the peer's findings are in (or were waited for long
    /// enough, at `now`).
    pub fn peer_settled(&self, now: Instant) -> bool {
        self.peer_nat_hops().is_some()
            || self.peer_done()
                && (!self.expect_view
                    || self.view.is_some()
                    || self.router_after_own()
                    || self.view_waited
                    || self.view_deadline.is_some_and(|d| d <= now))
    }

    /// A router (not the peer's NAT) answered Time Exceeded right after our own NAT: a TTL
    /// that passes our NAT dies there, whatever the peer's NAT does.
    fn router_after_own(&self) -> bool {
        let Some(own) = self.own_nat_hops() else {
            return false;
        };
        matches!(self.answers.get(&(Target::Peer, own + 1)), Some(Answer::TimeExceeded(ip))
            if Some(*ip) != self.peer_ip)
    }

    fn at(&self, ttl: u8) -> Option<Answer> {
        self.answers
            .get(&(Target::Relay, ttl))
            .or_else(|| self.answers.get(&(Target::Peer, ttl)))
            .copied()
    }

    /// Our outermost NAT: the last hop, before the first public one, whose Time Exceeded
    /// comes from a private or shared address (a home router's LAN side, a carrier NAT's
    /// RFC 6598 side).
    pub fn own_nat_hops(&self) -> Option<u8> {
        let mut own = None;
        for ttl in 1..=PEER_MAX_TTL {
            match self.at(ttl) {
                Some(Answer::TimeExceeded(ip)) if is_private(ip) || is_cgnat(ip) => own = Some(ttl),
                Some(_) => break,
                None => {}
            }
        }
        own
    }

    /// The peer's NAT: the first TTL whose probe the peer's own address answered.
    pub fn peer_nat_hops(&self) -> Option<u8> {
        let peer = self.peer_ip?;
        self.answers
            .iter()
            .filter(|((t, _), a)| *t == Target::Peer && **a == Answer::Unreachable(peer))
            .map(|((_, ttl), _)| *ttl)
            .min()
    }

    /// How to open our NAT for the peer, from what is known now.
    pub fn opening(&self) -> Opening {
        // The peer heard our NAT right after its own, and the hop after ours was silent to
        // us: its NAT is that hop, and silence proves no input firewall.
        let neighbours = self.view.is_some_and(|v| v.neighbours()) && !self.router_after_own();
        match (self.own_nat_hops(), self.peer_nat_hops()) {
            (Some(own), Some(peer)) if own + 1 < peer => Opening::Ttl(own + 1),
            (Some(_), Some(_)) => Opening::Clash,
            (_, None) if neighbours => Opening::Clash,
            (Some(own), None) => Opening::Ttl(own + 1),
            // Our routers are silent but the peer's NAT answered: it is right behind them.
            (None, Some(peer)) if peer >= 3 => Opening::Ttl(peer - 1),
            (None, Some(_)) => Opening::Clash,
            (None, None) => Opening::Unknown,
        }
    }

    /// The report for the `nat` event.
    pub fn distances(&self) -> Distances {
        let own = self.own_nat_hops();
        let peer = self.peer_nat_hops();
        let routers_between = (own.unwrap_or(0) + 1..peer.unwrap_or(PEER_MAX_TTL + 1))
            .filter(|&t| {
                matches!(self.answers.get(&(Target::Peer, t)), Some(Answer::TimeExceeded(ip))
                    if !is_private(*ip) && !is_cgnat(*ip))
            })
            .count() as u8;
        let (opening_ttl, method) = match self.opening() {
            Opening::Ttl(t) => (Some(t), "ttl"),
            Opening::Clash => (None, "order"),
            Opening::Unknown => (None, "default"),
        };
        Distances {
            own_nat_hops: own,
            peer_nat_hops: peer,
            routers_between,
            opening_ttl,
            method,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A Time Exceeded from `from` for the probe of (`target`, `ttl`).
    fn te(m: &mut Measure, now: Instant, target: Target, ttl: u8, from: &str) {
        m.handle_answer(now, target, ttl, Answer::TimeExceeded(ip(from)));
    }

    fn measure() -> (Instant, Measure) {
        let t0 = Instant::now();
        let mut m = Measure::new(t0, Some("203.0.113.10:3478".parse().unwrap()));
        m.set_peer(t0, ip("203.0.113.22"));
        (t0, m)
    }

    #[test]
    fn probes_every_ttl_both_ways_and_retries_silent_ones() {
        let (t0, mut m) = measure();
        let mut first = Vec::new();
        while let Some(p) = m.poll_transmit() {
            first.push(p);
        }
        assert_eq!(first.len(), (OWN_MAX_TTL + PEER_MAX_TTL) as usize);
        assert!(first
            .iter()
            .all(|p| p.target == Target::Relay || p.dst.port() == PEER_PROBE_PORT));
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        let later = m.poll_timeout().unwrap();
        assert!(later > t0);
        m.handle_timeout(later);
        let again: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        assert!(!again
            .iter()
            .any(|p| p.target == Target::Relay && p.ttl == 1));
        assert_eq!(again.len(), first.len() - 1);
        // Given up after the last send.
        let now = silence(&mut m, later);
        assert!(m.peer_done());
        assert!(now - t0 < Duration::from_secs(2));
    }

    #[test]
    fn routers_between_the_nats_make_a_safe_ttl() {
        let (t0, mut m) = measure();
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        te(&mut m, t0, Target::Peer, 2, "203.0.113.211");
        te(&mut m, t0, Target::Peer, 3, "203.0.113.221");
        m.handle_answer(t0, Target::Peer, 4, Answer::Unreachable(ip("203.0.113.22")));
        assert_eq!(m.opening(), Opening::Ttl(2));
        let d = m.distances();
        assert_eq!(d.own_nat_hops, Some(1));
        assert_eq!(d.peer_nat_hops, Some(4));
        assert_eq!(d.routers_between, 2);
        assert_eq!((d.opening_ttl, d.method), (Some(2), "ttl"));
    }

    #[test]
    fn adjacent_nats_that_answer_have_no_safe_ttl() {
        let (t0, mut m) = measure();
        te(&mut m, t0, Target::Peer, 1, "192.168.1.1");
        m.handle_answer(t0, Target::Peer, 2, Answer::Unreachable(ip("203.0.113.22")));
        m.handle_answer(t0, Target::Peer, 3, Answer::Unreachable(ip("203.0.113.22")));
        assert_eq!(m.opening(), Opening::Clash);
        assert_eq!(m.distances().method, "order");
        // Nothing beyond the peer's NAT is probed again.
        assert!(!m
            .pending
            .keys()
            .any(|&(t, ttl)| t == Target::Peer && ttl > 2));
    }

    #[test]
    fn a_carrier_nat_counts_as_ours() {
        let (t0, mut m) = measure();
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        te(&mut m, t0, Target::Relay, 2, "100.64.1.1");
        te(&mut m, t0, Target::Relay, 3, "198.51.100.1");
        assert_eq!(m.own_nat_hops(), Some(2));
        assert_eq!(m.opening(), Opening::Ttl(3));
        // The peer's NAT right behind the carrier's: no safe TTL.
        m.handle_answer(t0, Target::Peer, 3, Answer::Unreachable(ip("203.0.113.22")));
        assert_eq!(m.opening(), Opening::Clash);
    }

    #[test]
    fn silence_keeps_the_classic_ttls_and_a_silent_peer_nat_is_harmless() {
        let (t0, mut m) = measure();
        assert_eq!(m.opening(), Opening::Unknown);
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        // An input firewall drops our probes at the peer's NAT: opening there is harmless.
        assert_eq!(m.opening(), Opening::Ttl(2));
        // Someone else's unreachable (not the peer's address) is not the peer's NAT.
        m.handle_answer(t0, Target::Peer, 2, Answer::Unreachable(ip("203.0.113.99")));
        assert_eq!(m.opening(), Opening::Ttl(2));
    }

    /// Gives up every silent probe, stepping the clock; returns the time it ended.
    fn silence(m: &mut Measure, mut now: Instant) -> Instant {
        while let Some(t) = m.pending.values().map(|p| p.next).min() {
            now = t.max(now);
            m.handle_timeout(now);
            while m.poll_transmit().is_some() {}
        }
        now
    }

    /// Regression (CI, birthday at `--hops 0`): the prober's probes to the opener's NAT
    /// were all unanswered (a spent ICMP budget), it took TTL 2 as safe while the opener,
    /// which had heard the prober's NAT, chose the order; with both views, both choose it.
    #[test]
    fn a_silent_neighbour_heard_by_the_peer_means_the_order() {
        let (t0, mut m) = measure();
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        let done = silence(&mut m, t0);
        assert!(m.peer_done());
        // Ambiguous silence: not settled until the peer's view (or the bound).
        assert!(!m.peer_settled(done));
        assert_eq!(m.poll_timeout(), Some(done + PEER_HOPS_WAIT));
        m.handle_peer_view(PeerView {
            own_nat: Some(1),
            peer_nat: Some(2),
        });
        assert!(m.peer_settled(done));
        assert_eq!(m.opening(), Opening::Clash);
        assert_eq!(m.distances().method, "order");
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn the_wait_for_the_peers_view_is_bounded_and_then_silence_is_a_firewall() {
        let (t0, mut m) = measure();
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        let done = silence(&mut m, t0);
        let end = m.poll_timeout().unwrap();
        assert_eq!(end, done + PEER_HOPS_WAIT);
        assert!(!m.peer_settled(end - Duration::from_millis(1)));
        m.handle_timeout(end);
        assert!(m.peer_settled(end));
        // No busy loop on a deadline already past.
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(m.opening(), Opening::Ttl(2));
        // A peer that heard nothing either: silence both ways, the firewall reading stays.
        m.handle_peer_view(PeerView {
            own_nat: Some(1),
            peer_nat: None,
        });
        assert_eq!(m.opening(), Opening::Ttl(2));
    }

    #[test]
    fn a_router_after_our_nat_settles_at_once_whatever_the_peer_says() {
        let (t0, mut m) = measure();
        te(&mut m, t0, Target::Relay, 1, "192.168.1.1");
        te(&mut m, t0, Target::Peer, 2, "203.0.113.211");
        let done = silence(&mut m, t0);
        assert!(m.peer_settled(done));
        m.handle_peer_view(PeerView {
            own_nat: Some(1),
            peer_nat: Some(2),
        });
        assert_eq!(m.opening(), Opening::Ttl(2));
    }

    #[test]
    fn without_a_relay_nobody_sends_a_view_and_nothing_waits_for_one() {
        let t0 = Instant::now();
        let mut m = Measure::new(t0, None);
        m.set_peer(t0, ip("203.0.113.22"));
        let done = silence(&mut m, t0);
        assert!(m.peer_settled(done));
        assert_eq!(m.poll_timeout(), None);
    }
}
