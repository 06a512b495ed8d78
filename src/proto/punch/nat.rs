//! The two sides' NAT classifications and what they predict (RFC 4787 terms), sans-IO.
//!
//! Each side classifies its own NAT against the relay (a natprobe run on separate sockets,
//! alongside the punch so it never delays it) and sends the result to the other inside
//! relayed data ([`crate::wire::rendezvous::Frame::NatInfo`]). From the pair, [`expect`] says which
//! technique should work and why.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

use crate::proto::classify::Behaviour;
use crate::proto::punch::birthday::Part;
use crate::wire::rendezvous::{Frame, SessionId};

/// One side's NAT, as far as punching cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NatClass {
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: Behaviour,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: Behaviour,
    /// Port allocation: `preserving`, `sequential`, `random` or `unknown`.
    pub allocation: &'static str,
    /// The router forwards the punch port (PCP, NAT-PMP or UPnP).
    pub mapped_port: bool,
    /// The step between consecutive public ports, for `sequential` allocation (0
    /// otherwise).
    pub delta: i8,
    /// UDP is blocked here: the relay was reached over TCP (no UDP technique can work), or
    /// over IPv6 only (`ipv6` then says so: nothing over IPv4 can work).
    pub udp_blocked: bool,
    /// This side offers a global IPv6 address at the punch port and its UDP is not known to
    /// be blocked over IPv6 (no NAT on IPv6, at most a stateful firewall): with the peer's,
    /// a direct path over IPv6 needs no technique.
    pub ipv6: bool,
}

fn behaviour_code(b: Behaviour) -> u8 {
    match b {
        Behaviour::Unknown => 0,
        Behaviour::EndpointIndependent => 1,
        Behaviour::AddressDependent => 2,
        Behaviour::AddressAndPortDependent => 3,
        Behaviour::None => 4,
    }
}

fn behaviour_of(c: u8) -> Behaviour {
    match c {
        1 => Behaviour::EndpointIndependent,
        2 => Behaviour::AddressDependent,
        3 => Behaviour::AddressAndPortDependent,
        4 => Behaviour::None,
        _ => Behaviour::Unknown,
    }
}

const ALLOCATIONS: [&str; 4] = ["unknown", "preserving", "sequential", "random"];

impl NatClass {
    /// The frame that tells the peer.
    pub fn to_frame(self, session: SessionId) -> Frame {
        Frame::NatInfo {
            session,
            mapping: behaviour_code(self.mapping),
            filtering: behaviour_code(self.filtering),
            allocation: ALLOCATIONS
                .iter()
                .position(|a| *a == self.allocation)
                .unwrap_or(0) as u8,
            flags: u8::from(self.mapped_port)
                | (u8::from(self.udp_blocked) << 1)
                | (u8::from(self.ipv6) << 2),
            step: self.delta,
        }
    }

    /// Reads the peer's frame (unknown codes become `unknown`: a newer peer is not an error).
    pub fn from_frame(f: &Frame, session: SessionId) -> Option<NatClass> {
        match *f {
            Frame::NatInfo {
                session: s,
                mapping,
                filtering,
                allocation,
                flags,
                step,
            } if s == session => {
                let allocation = ALLOCATIONS
                    .get(allocation as usize)
                    .copied()
                    .unwrap_or("unknown");
                Some(NatClass {
                    mapping: behaviour_of(mapping),
                    filtering: behaviour_of(filtering),
                    allocation,
                    mapped_port: flags & 1 != 0,
                    delta: if allocation == "sequential" { step } else { 0 },
                    udp_blocked: flags & 2 != 0,
                    ipv6: flags & 4 != 0,
                })
            }
            _ => None,
        }
    }

    /// Nothing known about our IPv4 NAT (the relay met over IPv6, or over TCP): the
    /// technique is left to the other classes, or to IPv6.
    pub fn unknown() -> NatClass {
        NatClass {
            mapping: Behaviour::Unknown,
            filtering: Behaviour::Unknown,
            allocation: "unknown",
            mapped_port: false,
            delta: 0,
            udp_blocked: false,
            ipv6: false,
        }
    }

    /// Strangers' packets reach the punch port once we have sent anywhere: no NAT, an
    /// endpoint-independent filter, or a port the router forwards.
    fn open_to_anyone(&self) -> bool {
        self.mapped_port || self.filtering == Behaviour::EndpointIndependent
    }

    /// The address the peer learns from the relay is the one we use towards it (RFC 4787
    /// §4.1 endpoint-independent mapping, or no NAT at all).
    fn stable_address(&self) -> bool {
        matches!(
            self.mapping,
            Behaviour::EndpointIndependent | Behaviour::None
        ) || self.mapped_port
    }

    /// A new port per destination, but in order: the next ones can be predicted.
    pub fn predictable(&self) -> bool {
        !self.stable_address() && self.allocation == "sequential" && self.delta != 0
    }

    /// Lets in every port of an address it has sent to: no NAT, endpoint-independent or
    /// address-dependent filtering (RFC 4787 §5), or a forwarded port. Such a side leads
    /// when the NATs clash ([`crate::proto::punch::clash`]).
    pub fn lets_in_any_port(&self) -> bool {
        self.accepts_any_port_of_a_contacted_ip() || self.filtering == Behaviour::None
    }

    /// Lets in a peer whose port it cannot know in advance, once it has sent to the peer's
    /// IP (endpoint-independent or address-dependent filtering).
    fn accepts_any_port_of_a_contacted_ip(&self) -> bool {
        self.mapped_port
            || matches!(
                self.filtering,
                Behaviour::EndpointIndependent | Behaviour::AddressDependent
            )
    }
}

/// What the two classifications predict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// `direct` or `relay`.
    pub path: &'static str,
    /// The technique: `udp` (simultaneous hole punch), `portmap` (a router-forwarded port),
    /// `birthday` (probing a symmetric NAT's random ports, relayed meanwhile), `prediction`
    /// (probing a sequential NAT's next ports) or `relay`.
    pub technique: &'static str,
    /// Why, in words.
    pub why: String,
}

/// Which technique should work for this pair.
pub fn expect(mine: &NatClass, peer: &NatClass) -> Expectation {
    if mine.ipv6 && peer.ipv6 {
        return Expectation {
            path: "direct",
            technique: "udp",
            why: "both sides have IPv6: there is no NAT on IPv6, and a stateful firewall (RFC \
                  6092 §3.2) lets the peer in once we have sent to it, so a simultaneous UDP \
                  hole punch over IPv6 works whatever the IPv4 NATs do"
                .into(),
        };
    }
    if mine.udp_blocked || peer.udp_blocked {
        return Expectation {
            path: "relay",
            technique: "tcp",
            why: "UDP is blocked on one side: the relay carries the data over TCP, and a \
                  pipe tries TCP hole punching for a direct path"
                .into(),
        };
    }
    let unknown = |c: &NatClass| c.mapping == Behaviour::Unknown;
    if unknown(mine) || unknown(peer) {
        return Expectation {
            path: "direct",
            technique: "udp",
            why: "one side's NAT could not be classified: trying a UDP hole punch, then the relay"
                .into(),
        };
    }
    let direct_udp = |why: String| Expectation {
        path: "direct",
        technique: "udp",
        why,
    };
    if mine.mapped_port || peer.mapped_port {
        return Expectation {
            path: "direct",
            technique: "portmap",
            why: "a router forwards the punch port: the other side can send to it directly".into(),
        };
    }
    if mine.open_to_anyone() || peer.open_to_anyone() {
        return direct_udp(
            "one side lets in anyone once it has sent (endpoint-independent filtering or no \
             NAT): a UDP hole punch works"
                .into(),
        );
    }
    match (mine.stable_address(), peer.stable_address()) {
        (true, true) => direct_udp(
            "both NATs keep one public address per socket (endpoint-independent mapping, RFC \
             4787 §4.1): a simultaneous UDP hole punch works"
                .into(),
        ),
        (true, false) | (false, true) => {
            let stable = if mine.stable_address() { mine } else { peer };
            if stable.accepts_any_port_of_a_contacted_ip() {
                direct_udp(
                    "one NAT picks a new port per destination, but the other lets in any port \
                     of an address it has sent to: a UDP hole punch works through the \
                     peer-reflexive address"
                        .into(),
                )
            } else if !mine.stable_address() && mine.predictable()
                || !peer.stable_address() && peer.predictable()
            {
                Expectation {
                    path: "direct",
                    technique: "prediction",
                    why: "one NAT picks a new port per destination, but in order (sequential \
                          allocation): the other side probes the next ports after the one the \
                          relay saw, and the one that lets it in is the path"
                        .into(),
                }
            } else {
                Expectation {
                    path: "direct",
                    technique: "birthday",
                    why: "one NAT picks a new port per destination (address-and-port-dependent \
                          mapping) and the other lets in only the exact address and port it \
                          sent to: the relay carries the data while birthday probing (256 \
                          sockets on the symmetric side, random ports probed from the other) \
                          looks for a direct path"
                        .into(),
                }
            }
        }
        (false, false) => Expectation {
            path: "relay",
            technique: "relay",
            why: "both NATs pick a new port per destination: neither side can learn the \
                  other's port; the relay carries the data"
                .into(),
        },
    }
}

/// Sends of our classification before the peer's arrives, [`NAT_EXCHANGE_RESEND`] apart: the
/// peer may not have registered yet, and the relay drops data for an absent peer.
pub const EXCHANGE_SENDS: u32 = 10;
use crate::defaults::{NAT_EXCHANGE_ANSWER_GAP, NAT_EXCHANGE_RESEND};

/// What the pair of classifications asks the driver to do, once both are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Tell the user (the `nat` event).
    Told {
        /// Ours.
        mine: NatClass,
        /// The peer's.
        peer: NatClass,
        /// What should work.
        expect: Expectation,
    },
    /// Carry the data through the relay now: no direct path to wait for, or one that
    /// another technique looks for meanwhile.
    PreferRelay,
    /// Birthday probing, as this part.
    Birthday(Part),
    /// Probe the peer's sequential NAT's next ports, this step apart (when its `Predict`
    /// frame says where to start).
    PredictProbe(i32),
    /// Our NAT is the sequential one: open the mapping the peer will predict.
    PredictOpen,
}

/// The exchange of both sides' classifications through the relay, and the techniques they
/// call for, sans-IO: classifications and frames in, frames to relay and [`Plan`]s out.
#[derive(Debug)]
pub struct Exchange {
    session: SessionId,
    /// `--hard`: birthday probing between two symmetric NATs too.
    hard: bool,
    mine: Option<NatClass>,
    peer: Option<NatClass>,
    mapped_port: bool,
    /// We offer IPv6 ([`NatClass::ipv6`]), known before our classification.
    ipv6: bool,
    /// The peer offers an IPv6 candidate (as the relay passed its candidates on), known
    /// before its classification.
    peer_ipv6: bool,
    told: bool,
    next_send: Option<Instant>,
    sends: u32,
    last_answer: Option<Instant>,
    out: VecDeque<Vec<u8>>,
    plans: VecDeque<Plan>,
}

impl Exchange {
    /// Nothing known yet.
    pub fn new(session: SessionId, hard: bool) -> Exchange {
        Exchange {
            session,
            hard,
            mine: None,
            peer: None,
            mapped_port: false,
            ipv6: false,
            peer_ipv6: false,
            told: false,
            next_send: None,
            sends: 0,
            last_answer: None,
            out: VecDeque::new(),
            plans: VecDeque::new(),
        }
    }

    /// Our classification (again, when it changed): send it, and keep sending until the
    /// peer's arrives.
    pub fn set_mine(&mut self, now: Instant, mut c: NatClass) {
        c.mapped_port |= self.mapped_port;
        c.ipv6 |= self.ipv6;
        self.mine = Some(c);
        self.told = false;
        self.sends = 0;
        self.next_send = Some(now);
        self.handle_timeout(now);
        self.decide();
    }

    /// Whether we offer IPv6 (a global IPv6 candidate, and the relay not met over TCP), for
    /// our classification from now on.
    pub fn set_ipv6(&mut self, yes: bool) {
        self.ipv6 = yes;
    }

    /// Whether the peer offers an IPv6 candidate, before its classification says so.
    pub fn set_peer_ipv6(&mut self, yes: bool) {
        self.peer_ipv6 = yes;
    }

    /// The router now forwards our punch port: the peer should know.
    pub fn set_mapped_port(&mut self, now: Instant) {
        self.mapped_port = true;
        if let Some(c) = self.mine {
            self.set_mine(now, c);
        }
    }

    /// A relayed frame from the peer; true when it was its classification.
    pub fn handle_frame(&mut self, now: Instant, f: &Frame) -> bool {
        let Some(c) = NatClass::from_frame(f, self.session) else {
            return false;
        };
        if self.peer != Some(c) {
            self.peer = Some(c);
            self.told = false;
        }
        if self
            .last_answer
            .is_none_or(|t| now.saturating_duration_since(t) >= NAT_EXCHANGE_ANSWER_GAP)
        {
            self.last_answer = Some(now);
            self.send();
        }
        self.decide();
        true
    }

    /// Time passed: resend ours while the peer's is missing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_send.is_some_and(|t| t <= now) {
            self.send();
            self.sends += 1;
            self.next_send = (self.peer.is_none() && self.sends < EXCHANGE_SENDS)
                .then(|| now + NAT_EXCHANGE_RESEND);
        }
    }

    fn send(&mut self) {
        if let Some(c) = self.mine {
            self.out.push_back(c.to_frame(self.session).emit());
        }
    }

    fn decide(&mut self) {
        let (Some(mine), Some(peer), false) = (self.mine, self.peer, self.told) else {
            return;
        };
        self.told = true;
        let expect = expect(&mine, &peer);
        let symmetric = |c: &NatClass| {
            matches!(
                c.mapping,
                Behaviour::AddressDependent | Behaviour::AddressAndPortDependent
            )
        };
        if expect.path == "relay" || matches!(expect.technique, "birthday" | "prediction") {
            self.plans.push_back(Plan::PreferRelay);
        }
        match expect.technique {
            "prediction" if peer.predictable() && !mine.predictable() => self
                .plans
                .push_back(Plan::PredictProbe(i32::from(peer.delta))),
            "prediction" => self.plans.push_back(Plan::PredictOpen),
            // The symmetric side opens many mappings; the other probes them.
            "birthday" if symmetric(&mine) => self.plans.push_back(Plan::Birthday(Part::Opener)),
            "birthday" => self.plans.push_back(Plan::Birthday(Part::Prober)),
            "relay" if self.hard && symmetric(&mine) && symmetric(&peer) => {
                self.plans.push_back(Plan::Birthday(Part::Both))
            }
            _ => {}
        }
        self.plans.push_back(Plan::Told { mine, peer, expect });
    }

    /// A frame to relay to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// What to do next.
    pub fn poll_plan(&mut self) -> Option<Plan> {
        self.plans.pop_front()
    }

    /// When to call [`Exchange::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_send
    }

    /// Either side reported its UDP blocked, so that a pipe tries TCP hole punching: not a
    /// side that met the relay over IPv6 UDP when both offer IPv6 (the direct path over
    /// IPv6 is expected, and a TCP punch over IPv4 would only race it).
    pub fn udp_blocked(&self) -> bool {
        let both_v6 = self.ipv6 && (self.peer_ipv6 || self.peer.is_some_and(|p| p.ipv6));
        [self.mine, self.peer]
            .iter()
            .flatten()
            .any(|c| c.udp_blocked && !(c.ipv6 && both_v6))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;
    use Behaviour::{
        AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei,
    };

    /// A port-preserving NAT class with these behaviours (shared by the cores' tests).
    pub(crate) fn c(mapping: Behaviour, filtering: Behaviour) -> NatClass {
        NatClass {
            mapping,
            filtering,
            allocation: "preserving",
            mapped_port: false,
            delta: 0,
            udp_blocked: false,
            ipv6: false,
        }
    }

    /// The lab's five kinds, and what the punch matrix measured for every ordered pair
    /// (tests/punch_lab.rs): direct except symmetric × port-restricted and symmetric ×
    /// symmetric.
    #[test]
    fn predictions_match_the_lab_matrix() {
        let kinds = [
            ("open", c(Behaviour::None, Ei)),
            ("full-cone", c(Ei, Ei)),
            ("restricted", c(Ei, Ad)),
            ("port-restricted", c(Ei, Apd)),
            ("symmetric", c(Apd, Apd)),
        ];
        for (na, a) in &kinds {
            for (nb, b) in &kinds {
                let technique = match (*na, *nb) {
                    ("symmetric", "symmetric") => "relay",
                    ("symmetric", "port-restricted") | ("port-restricted", "symmetric") => {
                        "birthday"
                    }
                    _ => "udp",
                };
                let e = expect(a, b);
                assert_eq!(e.technique, technique, "{na} x {nb}");
                assert_eq!(expect(b, a), e, "symmetric in the arguments");
            }
        }
    }

    #[test]
    fn a_mapped_port_makes_the_hardest_pair_direct() {
        let mut pr = c(Ei, Apd);
        pr.mapped_port = true;
        let e = expect(&c(Apd, Apd), &pr);
        assert_eq!((e.path, e.technique), ("direct", "portmap"));
    }

    #[test]
    fn frames_round_trip_and_unknown_codes_are_unknown() {
        let mut a = c(Apd, Ad);
        a.allocation = "random";
        a.mapped_port = true;
        let f = a.to_frame([3; 16]);
        let back = Frame::parse(&f.emit()).unwrap();
        assert_eq!(NatClass::from_frame(&back, [3; 16]), Some(a));
        assert_eq!(NatClass::from_frame(&back, [4; 16]), None);
        let odd = Frame::NatInfo {
            session: [3; 16],
            mapping: 200,
            filtering: 9,
            allocation: 77,
            flags: 0xfc,
            step: 9,
        };
        let mut seq = c(Apd, Apd);
        seq.allocation = "sequential";
        seq.delta = -3;
        let back = Frame::parse(&seq.to_frame([3; 16]).emit()).unwrap();
        assert_eq!(NatClass::from_frame(&back, [3; 16]), Some(seq));
        let u = NatClass::from_frame(&odd, [3; 16]).unwrap();
        assert_eq!(u.mapping, Behaviour::Unknown);
        assert_eq!(u.allocation, "unknown");
        assert!(!u.mapped_port);
        assert!(!u.udp_blocked);
        assert_eq!(
            u.delta, 0,
            "a step without sequential allocation means nothing"
        );
        assert_eq!(expect(&u, &a).technique, "udp");
    }

    /// A sequential symmetric NAT (the lab's `sequential` kind) with a port-restricted one:
    /// prediction; with a random one, or two unpredictable ones, nothing changes.
    #[test]
    fn a_sequential_nat_is_predicted() {
        let mut seq = c(Apd, Apd);
        seq.allocation = "sequential";
        seq.delta = 1;
        let pr = c(Ei, Apd);
        for (a, b) in [(&seq, &pr), (&pr, &seq)] {
            let e = expect(a, b);
            assert_eq!((e.path, e.technique), ("direct", "prediction"));
        }
        assert_eq!(expect(&seq, &seq).technique, "relay");
        assert_eq!(expect(&seq, &c(Ei, Ei)).technique, "udp");
        assert_eq!(expect(&c(Apd, Apd), &pr).technique, "birthday");
    }

    #[test]
    fn blocked_udp_means_the_relay_over_tcp_and_a_tcp_punch() {
        let mut blocked = c(Behaviour::Unknown, Behaviour::Unknown);
        blocked.udp_blocked = true;
        let back = Frame::parse(&blocked.to_frame([3; 16]).emit()).unwrap();
        assert_eq!(NatClass::from_frame(&back, [3; 16]), Some(blocked));
        for (a, b) in [(&blocked, &c(Ei, Apd)), (&c(Ei, Ei), &blocked)] {
            let e = expect(a, b);
            assert_eq!((e.path, e.technique), ("relay", "tcp"));
        }
    }

    /// Both sides with IPv6: direct over IPv6 whatever the IPv4 classes (symmetric pairs
    /// included, which would otherwise be relayed or probed), and the flag crosses the wire;
    /// one side with IPv6 changes nothing, nor does IPv6 beside a side whose UDP is blocked.
    #[test]
    fn both_sides_with_ipv6_expect_a_direct_udp_punch_over_ipv6() {
        let v6 = |mut n: NatClass| {
            n.ipv6 = true;
            n
        };
        let (sym, pr) = (c(Apd, Apd), c(Ei, Apd));
        let back = Frame::parse(&v6(sym).to_frame([3; 16]).emit()).unwrap();
        assert_eq!(NatClass::from_frame(&back, [3; 16]), Some(v6(sym)));
        for (a, b) in [
            (sym, sym),
            (sym, pr),
            (c(Behaviour::Unknown, Behaviour::Unknown), sym),
        ] {
            let e = expect(&v6(a), &v6(b));
            assert_eq!((e.path, e.technique), ("direct", "udp"), "{a:?} x {b:?}");
            assert!(e.why.contains("IPv6"), "{}", e.why);
            assert_eq!(
                expect(&v6(a), &b),
                expect(&a, &b),
                "only one side with IPv6"
            );
        }
        // Neither relay-first nor birthday probing for such a pair: only the `nat` event.
        let (a, b) = exchange_pair(v6(sym), v6(sym), true);
        assert!(matches!(a[..], [Plan::Told { .. }]), "{a:?}");
        assert!(matches!(b[..], [Plan::Told { .. }]), "{b:?}");
    }

    /// A side whose IPv4 UDP is blocked: met over TCP (no IPv6 claimed), the relay over TCP
    /// and a TCP punch, whatever the peer; met over IPv6 UDP, direct over IPv6 with a peer
    /// that has IPv6 (and no TCP punch to race it, even before the peer's class arrives:
    /// its candidates say it), the relay and a TCP punch with one that has none.
    #[test]
    fn blocked_ipv4_udp_with_ipv6_goes_direct_over_ipv6_only_with_a_peer_that_has_it() {
        let blocked = NatClass {
            udp_blocked: true,
            ..NatClass::unknown()
        };
        let v6_blocked = NatClass {
            ipv6: true,
            ..blocked
        };
        let (pr, pr6) = (
            c(Ei, Apd),
            NatClass {
                ipv6: true,
                ..c(Ei, Apd)
            },
        );
        assert_eq!(expect(&blocked, &pr6).technique, "tcp");
        assert_eq!(expect(&v6_blocked, &pr).technique, "tcp");
        let e = expect(&pr6, &v6_blocked);
        assert_eq!((e.path, e.technique), ("direct", "udp"));
        let t = Instant::now();
        // The blocked side, before and after the peer's class.
        let mut x = Exchange::new([5; 16], false);
        x.set_ipv6(true);
        x.set_mine(t, blocked);
        assert!(x.udp_blocked(), "the peer's IPv6 not known yet");
        x.set_peer_ipv6(true);
        assert!(!x.udp_blocked(), "the peer's candidates offer IPv6");
        x.set_peer_ipv6(false);
        x.handle_frame(t, &pr6.to_frame([5; 16]));
        assert!(!x.udp_blocked(), "the peer's class offers IPv6");
        // The other side, with IPv6 or without.
        for (ours, tcp) in [(true, false), (false, true)] {
            let mut y = Exchange::new([5; 16], false);
            y.set_ipv6(ours);
            y.handle_frame(t, &v6_blocked.to_frame([5; 16]));
            assert_eq!(y.udp_blocked(), tcp, "we offer IPv6: {ours}");
        }
        // Met over TCP: no IPv6 claimed, a TCP punch even between two IPv6 hosts.
        let mut z = Exchange::new([5; 16], false);
        z.set_ipv6(true);
        z.handle_frame(t, &blocked.to_frame([5; 16]));
        assert!(z.udp_blocked());
    }

    fn exchange_pair(a: NatClass, b: NatClass, hard: bool) -> (Vec<Plan>, Vec<Plan>) {
        let t0 = Instant::now();
        let (mut x, mut y) = (Exchange::new([5; 16], hard), Exchange::new([5; 16], hard));
        x.set_mine(t0, a);
        y.set_mine(t0, b);
        for _ in 0..3 {
            while let Some(f) = x.poll_transmit() {
                y.handle_frame(t0, &Frame::parse(&f).unwrap());
            }
            while let Some(f) = y.poll_transmit() {
                x.handle_frame(t0, &Frame::parse(&f).unwrap());
            }
        }
        let drain = |e: &mut Exchange| std::iter::from_fn(|| e.poll_plan()).collect::<Vec<_>>();
        (drain(&mut x), drain(&mut y))
    }

    /// Each side gets its half of the technique, and the `nat` event last.
    #[test]
    fn the_exchange_gives_each_side_its_part() {
        let (sym, pr) = (c(Apd, Apd), c(Ei, Apd));
        let (a, b) = exchange_pair(sym, pr, false);
        assert_eq!(a[..2], [Plan::PreferRelay, Plan::Birthday(Part::Opener)]);
        assert_eq!(b[..2], [Plan::PreferRelay, Plan::Birthday(Part::Prober)]);
        assert!(matches!(a[2], Plan::Told { .. }) && a.len() == 3);
        let mut seq = sym;
        seq.allocation = "sequential";
        seq.delta = 2;
        let (a, b) = exchange_pair(seq, pr, false);
        assert_eq!(a[..2], [Plan::PreferRelay, Plan::PredictOpen]);
        assert_eq!(b[..2], [Plan::PreferRelay, Plan::PredictProbe(2)]);
        let (a, _) = exchange_pair(sym, sym, false);
        assert_eq!(a[0], Plan::PreferRelay);
        assert!(matches!(a[1], Plan::Told { .. }));
        let (a, b) = exchange_pair(sym, sym, true);
        assert_eq!(a[1], Plan::Birthday(Part::Both));
        assert_eq!(b[1], Plan::Birthday(Part::Both));
        let (a, _) = exchange_pair(pr, pr, false);
        assert!(matches!(a[..], [Plan::Told { .. }]), "{a:?}");
    }

    /// Ours is resent every second until the peer's arrives (at most 10 times), and a peer
    /// that repeats itself gets an answer at most twice a second.
    #[test]
    fn resends_until_answered_and_answers_are_rate_limited() {
        let t0 = Instant::now();
        let mut x = Exchange::new([5; 16], false);
        x.set_mine(t0, c(Ei, Apd));
        let mut sent = 0;
        let mut now = t0;
        while let Some(t) = x.poll_timeout() {
            now = t;
            x.handle_timeout(now);
            while x.poll_transmit().is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, EXCHANGE_SENDS);
        assert_eq!(now, t0 + NAT_EXCHANGE_RESEND * (EXCHANGE_SENDS - 1));
        let theirs = c(Ei, Ei).to_frame([5; 16]);
        let mut answers = 0;
        for i in 0..10 {
            assert!(x.handle_frame(now + Duration::from_millis(100) * i, &theirs));
            while x.poll_transmit().is_some() {
                answers += 1;
            }
        }
        assert_eq!(answers, 2, "one second of repeats, one answer per 500 ms");
        assert!(
            !x.handle_frame(now, &c(Ei, Ei).to_frame([6; 16])),
            "another session"
        );
        assert!(!x.udp_blocked());
    }
}
