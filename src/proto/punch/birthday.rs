//! Birthday probing through a NAT that gives every destination a new random port
//! (address-and-port-dependent mapping, RFC 4787 §4.1; "symmetric"), sans-IO.
//!
//! The symmetric side (the *opener*) opens [`SOCKETS`] sockets and sends from each a low-TTL
//! packet to the other side's known, endpoint-independent address: its NAT creates that many
//! mappings on random ports, each letting in exactly that address. The other side (the
//! *prober*) sends probes from its one socket to random ports of the opener's public IP at a
//! bounded rate; a probe that lands on one of the mappings reaches an opener socket, which
//! answers, and that pair of sockets is the path. With 256 of ~64 500 ports open, each probe
//! hits with p ≈ 0.4 %: 175 probes for an even chance, about 1 000 for 98 %.
//!
//! The opener's packets must not reach the prober's NAT: arriving first, they would make a
//! Linux NAT create conntrack entries that move the prober's own flows to other ports (the
//! same trap as in ordinary punching), hence the low TTL — measured
//! ([`crate::proto::punch::ttl`], [`Birthday::set_opening`]). When the NATs are next to
//! each other no TTL is safe: the opener opens its mappings once, then keeps them alive with
//! packets whose TTL ends at its own NAT, and the prober starts only once the conntrack
//! entries the opening left on its NAT have expired ([`CLASH_EXPIRY_WAIT`], as in
//! [`crate::proto::punch::clash`]).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::defaults::{BIRTHDAY_OPEN_REFRESH, CLASH_EXPIRY_WAIT};
use crate::proto::punch::ttl::Opening;
use crate::wire::rendezvous::{Frame, SessionId};

/// Sockets the opener opens (frp and hyperdht use 256 too).
pub const SOCKETS: usize = 256;
/// Prober's probes per second. Bounded: home routers and carrier NATs drop or rate-limit
/// floods of new flows, and a flood looks like a port scan to intrusion detection. At this
/// rate the 98 % point (about 1 000 probes) comes after 10 s.
pub const PROBE_RATE: u32 = 100;
/// TTL of the opener's packets: past its own NAT (and a carrier NAT), not to the prober's.
pub const OPEN_TTL: u8 = 2;
/// Lowest port a NAT hands out (the lab's symmetric router and Linux masquerade with random
/// ports use 1024–65535).
pub const LOW_PORT: u16 = 1024;

/// Which half of the technique this side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Behind the symmetric NAT: many sockets, low-TTL packets, answer what arrives.
    Opener,
    /// Behind the endpoint-independent NAT: probe random ports of the opener's IP.
    Prober,
    /// Both sides symmetric (`--hard`): open sockets *and* probe, from the punch socket
    /// ([`MAIN`]). It only works when the NATs' ports are not fully random; it runs within its
    /// budget and the relay carries the data either way.
    Both,
}

/// Port prediction ([`Birthday::predicting`]): how many of a sequential NAT's next ports
/// are probed, in order, before starting over. The mapping towards us is one of the first
/// few after the one the relay saw (the peer's own classification and checks take some in
/// between); at [`PROBE_RATE`] a pass takes 0.64 s.
pub const PREDICTION_WINDOW: u32 = 64;

/// Socket index of the punch socket in [`Part::Both`] transmits.
pub const MAIN: usize = usize::MAX;

/// A datagram to send: `socket` is the opener's socket index (always 0 for the prober).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Socket index.
    pub socket: usize,
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes.
    pub payload: Vec<u8>,
    /// IP TTL, when not the default.
    pub ttl: Option<u8>,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A pair of sockets works: use `socket` (opener index; 0 for the prober) towards `peer`.
    Connected {
        /// Socket index.
        socket: usize,
        /// The peer's address on that path.
        peer: SocketAddr,
        /// Probes sent (prober) or answered (opener) so far.
        probes: u32,
    },
    /// The budget ran out.
    Failed {
        /// Probes sent.
        probes: u32,
    },
}

/// One side of a birthday attempt.
#[derive(Debug)]
pub struct Birthday {
    session: SessionId,
    part: Part,
    /// Opener: the prober's address; prober: the opener's public IP (port ignored).
    peer: SocketAddr,
    sockets: usize,
    deadline: Instant,
    next: Instant,
    tried: HashSet<u16>,
    probes: u32,
    sent: HashSet<u64>,
    outcome: Option<Outcome>,
    out: VecDeque<Transmit>,
    /// Port prediction: the sequential NAT's port the relay saw, and its step.
    predict: Option<(u16, i32)>,
    /// TTL of the opener's packets that create its mappings.
    open_ttl: u8,
    /// Neighbouring NATs: after the first round, refresh the mappings with this TTL (it
    /// ends at our own NAT).
    keep_ttl: Option<u8>,
    /// Opening rounds sent so far.
    rounds: u32,
    /// Transaction ids and random ports (seeded by the driver; fixed in tests).
    rng: StdRng,
}

impl Birthday {
    /// Starts at `now`. `peer`: for the opener, the prober's (endpoint-independent) address;
    /// for the prober, any address of the opener's public IP. `seed` seeds the transaction
    /// ids and random ports (the driver passes a random one).
    pub fn new(
        session: SessionId,
        part: Part,
        peer: SocketAddr,
        sockets: usize,
        budget: Duration,
        now: Instant,
        seed: u64,
    ) -> Birthday {
        Birthday {
            session,
            part,
            peer,
            sockets: if part == Part::Prober {
                1
            } else {
                sockets.max(1)
            },
            deadline: now + budget,
            next: now,
            tried: HashSet::new(),
            probes: 0,
            sent: HashSet::new(),
            outcome: None,
            out: VecDeque::new(),
            predict: None,
            open_ttl: OPEN_TTL,
            keep_ttl: None,
            rounds: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// How to open the opener's mappings, from the TTL measurement: `own_nat` is the
    /// distance of our outermost NAT. With [`Opening::Clash`] the opener's first packets
    /// reach the prober's NAT whatever their TTL, so the prober waits for the traces they
    /// leave there to expire before probing.
    pub fn set_opening(&mut self, now: Instant, opening: Opening, own_nat: Option<u8>) {
        match opening {
            Opening::Ttl(t) => self.open_ttl = t,
            Opening::Unknown => self.open_ttl = OPEN_TTL,
            Opening::Clash => {
                let own = own_nat.unwrap_or(1).max(1);
                self.open_ttl = own + 1;
                self.keep_ttl = Some(own);
                if self.part == Part::Prober {
                    self.next = self.next.max(now) + CLASH_EXPIRY_WAIT;
                }
                self.deadline += CLASH_EXPIRY_WAIT;
            }
        }
    }

    /// Port prediction against a sequential NAT (a new port per destination, each the last
    /// plus `delta`): a prober that tries `seen + delta`, `seen + 2·delta`, … up to
    /// [`PREDICTION_WINDOW`] steps, in order and again, where `seen` is the peer's port as the
    /// relay saw it. The peer's punch socket answers the probe that lands on its mapping
    /// towards us (its connectivity checks answer any probe of the session).
    pub fn predicting(
        session: SessionId,
        seen: SocketAddr,
        delta: i32,
        budget: Duration,
        now: Instant,
        seed: u64,
    ) -> Birthday {
        let mut b = Birthday::new(session, Part::Prober, seen, 1, budget, now, seed);
        b.predict = Some((seen.port(), delta));
        b
    }

    /// How many sockets the driver must open.
    pub fn sockets(&self) -> usize {
        self.sockets
    }

    fn probe(&mut self, socket: usize, dst: SocketAddr, ttl: Option<u8>) {
        let tx: u64 = self.rng.gen();
        if ttl.is_none() {
            self.sent.insert(tx);
        }
        self.out.push_back(Transmit {
            socket,
            dst,
            payload: Frame::PunchProbe {
                session: self.session,
                tx,
            }
            .emit(),
            ttl,
        });
    }

    fn pump(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            self.outcome = Some(Outcome::Failed {
                probes: self.probes,
            });
            self.out.clear();
            return;
        }
        while self.next <= now {
            match self.part {
                Part::Opener => {
                    let ttl = self.round_ttl();
                    for s in 0..self.sockets {
                        self.probe(s, self.peer, Some(ttl));
                    }
                    self.next += BIRTHDAY_OPEN_REFRESH;
                }
                Part::Both | Part::Prober => {
                    if self.part == Part::Both && self.probes % (PROBE_RATE * 5) == 0 {
                        let ttl = self.round_ttl();
                        for s in 0..self.sockets {
                            self.probe(s, self.peer, Some(ttl));
                        }
                    }
                    let port = match self.predict {
                        Some((seen, delta)) => {
                            let k = 1 + (self.probes % PREDICTION_WINDOW) as i32;
                            // Ports wrap within 1..=65535.
                            ((i32::from(seen) - 1 + k * delta).rem_euclid(65535) + 1) as u16
                        }
                        None => self.random_port(),
                    };
                    self.probes += 1;
                    let from = if self.part == Part::Both { MAIN } else { 0 };
                    self.probe(from, SocketAddr::new(self.peer.ip(), port), None);
                    self.next += Duration::from_secs(1) / PROBE_RATE;
                }
            }
        }
    }

    /// The TTL of the packets that open mappings (None for a prober: it opens none).
    pub fn opening_ttl(&self) -> Option<u8> {
        (self.part != Part::Prober).then_some(self.open_ttl)
    }

    /// How long the prober waits for a clash to expire before probing.
    pub fn waited(&self) -> Duration {
        if self.keep_ttl.is_some() && self.part == Part::Prober {
            CLASH_EXPIRY_WAIT
        } else {
            Duration::ZERO
        }
    }

    /// The TTL of this opening round: the first creates the mappings; with neighbouring
    /// NATs the later ones only refresh them at our own NAT.
    fn round_ttl(&mut self) -> u8 {
        self.rounds += 1;
        match self.keep_ttl {
            Some(keep) if self.rounds > 1 => keep,
            _ => self.open_ttl,
        }
    }

    /// A port not tried yet: every probe is a fresh chance.
    fn random_port(&mut self) -> u16 {
        let span = u32::from(u16::MAX - LOW_PORT) + 1;
        if self.tried.len() as u32 >= span {
            self.tried.clear();
        }
        loop {
            let p = LOW_PORT + (self.rng.gen::<u32>() % span) as u16;
            if self.tried.insert(p) {
                break p;
            }
        }
    }

    /// Feeds a datagram that arrived on `socket` from `from`; false when it is not ours.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        socket: usize,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        match Frame::parse(data) {
            // Opener: a probe got through one of our mappings: answer from that socket.
            Ok(Frame::PunchProbe { session, tx }) if session == self.session => {
                if from.ip() != self.peer.ip() {
                    return true;
                }
                self.out.push_back(Transmit {
                    socket,
                    dst: from,
                    payload: Frame::PunchAck {
                        session,
                        tx,
                        observed: from,
                    }
                    .emit(),
                    ttl: None,
                });
                if self.outcome.is_none() && now < self.deadline {
                    self.outcome = Some(Outcome::Connected {
                        socket,
                        peer: from,
                        probes: self.probes.max(1),
                    });
                }
                true
            }
            // Prober: the opener answered one of our probes.
            Ok(Frame::PunchAck { session, tx, .. }) if session == self.session => {
                if self.sent.remove(&tx) && from.ip() == self.peer.ip() && self.outcome.is_none() {
                    self.outcome = Some(Outcome::Connected {
                        socket,
                        peer: from,
                        probes: self.probes,
                    });
                }
                true
            }
            _ => false,
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The result, once there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When to call [`Birthday::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outcome
            .is_none()
            .then_some(self.next.min(self.deadline))
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::{BIRTHDAY_BUDGET as BUDGET, PREDICTION_BUDGET};
    use crate::proto::classify::Behaviour::{
        AddressAndPortDependent as Apd, EndpointIndependent as Ei,
    };
    use crate::proto::netsim::Nat;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A prober towards the symmetric side's IP, its randomness from `seed`.
    fn prober(t0: Instant, seed: u64) -> Birthday {
        Birthday::new(
            [1; 16],
            Part::Prober,
            sa("203.0.113.21:1"),
            1,
            BUDGET,
            t0,
            seed,
        )
    }

    /// A symmetric NAT (random ports) against a port-restricted one, on a virtual clock:
    /// returns the time to connect, or None within the budget. `seed` seeds the prober.
    fn attempt(seed_ports: bool, seed: u64) -> Option<(Duration, u32)> {
        let t0 = Instant::now();
        let mut sym = Nat::new("203.0.113.21".parse().unwrap(), Apd, Apd);
        sym.random_ports = seed_ports;
        let mut pr = Nat::new("203.0.113.22".parse().unwrap(), Ei, Apd);
        let prober_local = sa("192.168.2.2:6000");
        let prober_pub = sa("203.0.113.22:6000");
        let mut o = Birthday::new([1; 16], Part::Opener, prober_pub, SOCKETS, BUDGET, t0, 1);
        let mut p = prober(t0, seed);
        let opener_local =
            |i: usize| SocketAddr::new("192.168.1.2".parse().unwrap(), 20000 + i as u16);
        let mut now = t0;
        loop {
            o.handle_timeout(now);
            p.handle_timeout(now);
            while let Some(t) = o.poll_transmit() {
                // Low TTL: creates the mapping, never arrives.
                let _ = sym.outbound(now, opener_local(t.socket), t.dst);
                assert_eq!(t.ttl, Some(OPEN_TTL));
            }
            let mut acks = Vec::new();
            while let Some(t) = p.poll_transmit() {
                let src = pr.outbound(now, prober_local, t.dst);
                if let Some(local) = sym.inbound(now, src, t.dst.port()) {
                    let i = (local.port() - 20000) as usize;
                    o.handle_datagram(now, i, src, &t.payload);
                    while let Some(a) = o.poll_transmit() {
                        if a.ttl.is_none() {
                            acks.push((sym.outbound(now, opener_local(a.socket), a.dst), a));
                        }
                    }
                }
            }
            for (src, a) in acks {
                if pr.inbound(now, src, a.dst.port()).is_some() {
                    p.handle_datagram(now, 0, src, &a.payload);
                }
            }
            match (o.outcome(), p.outcome()) {
                (Some(Outcome::Connected { .. }), Some(Outcome::Connected { probes, .. })) => {
                    return Some((now - t0, *probes))
                }
                (_, Some(Outcome::Failed { .. })) => return None,
                _ => {}
            }
            now = [o.poll_timeout(), p.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + Duration::from_millis(10));
        }
    }

    #[test]
    fn symmetric_against_port_restricted_connects_at_a_bounded_rate() {
        let mut times = Vec::new();
        let mut failed = 0;
        for seed in 0..40 {
            match attempt(true, seed) {
                Some((t, probes)) => {
                    // Never faster than the rate allows.
                    assert!(t >= Duration::from_secs(1) / PROBE_RATE * (probes - 1));
                    times.push(t);
                }
                None => failed += 1,
            }
        }
        assert!(failed <= 2, "{failed} of 40 failed");
        times.sort();
        let median = times[times.len() / 2];
        assert!(median <= Duration::from_secs(5), "median {median:?}");
    }

    #[test]
    fn the_budget_ends_an_attempt_that_cannot_work() {
        let t0 = Instant::now();
        let mut p = prober(t0, 2);
        let mut now = t0;
        let mut sent = 0;
        while p.outcome().is_none() {
            p.handle_timeout(now);
            while p.poll_transmit().is_some() {
                sent += 1;
            }
            now = p.poll_timeout().unwrap_or(now);
        }
        assert_eq!(p.outcome(), Some(&Outcome::Failed { probes: sent }));
        let max = PROBE_RATE * BUDGET.as_secs() as u32 + 1;
        assert!(sent <= max, "{sent} probes > {max}");
        // Junk and other sessions' frames are left alone.
        assert!(!p.handle_datagram(now, 0, sa("203.0.113.21:5"), b"junk"));
    }

    /// Port prediction against the simulated sequential NAT (a new port per destination, step
    /// 7): the peer's punch socket sent to a few other places first, then to us; probing the
    /// next ports after the one the relay saw finds its mapping on the first pass.
    #[test]
    fn prediction_finds_a_sequential_nat_s_mapping_on_the_first_pass() {
        let t0 = Instant::now();
        let mut seq = Nat::new("203.0.113.21".parse().unwrap(), Apd, Apd);
        let mut pr = Nat::new("203.0.113.22".parse().unwrap(), Ei, Apd);
        let (seq_local, pr_local) = (sa("192.168.1.2:5000"), sa("192.168.2.2:6000"));
        let pr_pub = pr.outbound(t0, pr_local, sa("203.0.113.10:3478"));
        let seen = seq.outbound(t0, seq_local, sa("203.0.113.10:3478"));
        let delta = 7;
        for other in [
            "203.0.113.10:3479",
            "203.0.113.11:3478",
            "203.0.113.11:3479",
        ] {
            seq.outbound(t0, seq_local, sa(other));
        }
        // The peer's checks towards us: its mapping exists before we probe.
        let mapped = seq.outbound(t0, seq_local, pr_pub);
        assert_eq!(i32::from(mapped.port()), i32::from(seen.port()) + 4 * delta);
        let mut p = Birthday::predicting([1; 16], seen, delta, PREDICTION_BUDGET, t0, 3);
        let mut now = t0;
        let mut ports = Vec::new();
        while p.outcome().is_none() {
            p.handle_timeout(now);
            while let Some(t) = p.poll_transmit() {
                ports.push(t.dst.port());
                let src = pr.outbound(now, pr_local, t.dst);
                if seq.inbound(now, src, t.dst.port()) == Some(seq_local) {
                    // The peer's checks answer from the punch socket.
                    let Ok(Frame::PunchProbe { session, tx }) = Frame::parse(&t.payload) else {
                        panic!("not a probe");
                    };
                    let ack = Frame::PunchAck {
                        session,
                        tx,
                        observed: src,
                    }
                    .emit();
                    let from = seq.outbound(now, seq_local, src);
                    assert!(pr.inbound(now, from, pr_pub.port()).is_some());
                    p.handle_datagram(now, 0, from, &ack);
                }
            }
            now = p.poll_timeout().unwrap_or(now);
        }
        assert_eq!(
            p.outcome(),
            Some(&Outcome::Connected {
                socket: 0,
                peer: mapped,
                probes: 4
            })
        );
        let want: Vec<u16> = (1..=4)
            .map(|k| (i32::from(seen.port()) + k * delta) as u16)
            .collect();
        assert_eq!(ports, want, "in order, from the port after the one seen");
        assert!(now - t0 <= Duration::from_secs(1) / PROBE_RATE * 4);
    }

    /// Neighbouring NATs: the opener's first round creates its mappings (TTL past its own
    /// NAT), later rounds only refresh them at its own NAT; the prober starts after the wait
    /// for the clash to expire, and both budgets grow by it.
    #[test]
    fn neighbouring_nats_open_once_then_wait_out_the_clash() {
        let t0 = Instant::now();
        let mut o = Birthday::new(
            [1; 16],
            Part::Opener,
            sa("203.0.113.22:6000"),
            2,
            BUDGET,
            t0,
            1,
        );
        o.set_opening(t0, Opening::Clash, Some(1));
        o.handle_timeout(t0);
        let first: Vec<_> = std::iter::from_fn(|| o.poll_transmit()).collect();
        assert!(first.len() == 2 && first.iter().all(|t| t.ttl == Some(2)));
        let later = t0 + BIRTHDAY_OPEN_REFRESH;
        o.handle_timeout(later);
        let refresh: Vec<_> = std::iter::from_fn(|| o.poll_transmit()).collect();
        assert!(refresh.len() == 2 && refresh.iter().all(|t| t.ttl == Some(1)));
        assert_eq!(o.opening_ttl(), Some(2));

        let mut p = prober(t0, 3);
        p.set_opening(t0, Opening::Clash, Some(1));
        p.handle_timeout(t0 + CLASH_EXPIRY_WAIT - Duration::from_millis(1));
        assert_eq!(p.poll_transmit(), None, "the prober waits");
        p.handle_timeout(t0 + CLASH_EXPIRY_WAIT);
        assert!(p.poll_transmit().is_some());
        assert_eq!(p.waited(), CLASH_EXPIRY_WAIT);
        // Still probing where the budget alone would have ended.
        assert_eq!(p.poll_timeout().map(|t| t > t0 + BUDGET), Some(true));

        // A measured TTL replaces the classic one.
        let mut m = Birthday::new(
            [1; 16],
            Part::Opener,
            sa("203.0.113.22:6000"),
            1,
            BUDGET,
            t0,
            1,
        );
        m.set_opening(t0, Opening::Ttl(3), Some(2));
        m.handle_timeout(t0);
        assert_eq!(m.poll_transmit().map(|t| t.ttl), Some(Some(3)));
    }
}
