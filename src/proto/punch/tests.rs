//! Two punchers behind simulated NATs meet at the real relay core, on a virtual clock.
use super::*;
use crate::defaults::{
    DIRECT_TIMEOUT, PATH_STALL as STALL, PUNCH_KEEPALIVE as KEEPALIVE, UPGRADE_FIRST, UPGRADE_MAX,
};
use crate::proto::classify::Behaviour::{
    self, AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei,
};
use crate::proto::netsim::Nat;
use crate::proto::punch::link::STALL_SENDS;
use crate::proto::relay::{Limits, Now, Output, Relay, RelayConfig};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Side {
    local: SocketAddr,
    nat: Nat,
    p: Puncher,
    path: Option<(PathKind, u32)>,
    relayed: Vec<Vec<u8>>,
}

struct Net {
    relay: Relay,
    relay_ip: IpAddr,
    sides: [Side; 2],
    queue: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    latency: Duration,
}

impl Net {
    fn new(t0: Instant, a: (Behaviour, Behaviour), b: (Behaviour, Behaviour)) -> Net {
        let relay_cfg = RelayConfig {
            primary: sa("203.0.113.10:3478"),
            alt_ip: Some("203.0.113.11".parse().unwrap()),
            alt_port: 3479,
            other_family: None,
            limits: Limits::default(),
            allow_private: false,
            secret: None,
        };
        let side = |local: &str, public: &str, (m, f): (Behaviour, Behaviour), role, peer| {
            let cfg = PunchConfig {
                relay: sa("203.0.113.10:3478"),
                session: [7; 16],
                role,
                peer: [peer; 8],
                token: vec![],
                candidates: vec![sa(local)],
                direct_timeout: DIRECT_TIMEOUT,
                keepalive: KEEPALIVE,
            };
            Side {
                local: sa(local),
                nat: Nat::new(public.parse().unwrap(), m, f),
                p: Puncher::new(cfg, t0, u64::from(peer)),
                path: None,
                relayed: vec![],
            }
        };
        Net {
            relay: Relay::new(relay_cfg, t0, 1),
            relay_ip: "203.0.113.10".parse().unwrap(),
            sides: [
                side("192.168.1.2:5000", "203.0.113.21", a, Role::Listener, 1),
                side("192.168.2.2:6000", "203.0.113.22", b, Role::Connector, 2),
            ],
            queue: BTreeMap::new(),
            seq: 0,
            latency: Duration::from_millis(10),
        }
    }

    fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.queue
            .insert((now + self.latency, self.seq), (from, to, data));
    }

    fn flush(&mut self, now: Instant) {
        for i in 0..2 {
            while let Some(d) = self.sides[i].p.poll_transmit() {
                let local = self.sides[i].local;
                let src = self.sides[i].nat.outbound(now, local, d.dst);
                // Low-TTL opening packets pass our NAT (creating the mapping) and die on the
                // way, before the peer's NAT.
                if d.ttl.is_none() {
                    self.send(now, src, d.dst, d.payload);
                }
            }
            while let Some(e) = self.sides[i].p.poll_event() {
                match e {
                    PunchEvent::Path { path, probes } => self.sides[i].path = Some((path, probes)),
                    PunchEvent::RelayData(d) => self.sides[i].relayed.push(d),
                    PunchEvent::Failed(f) => panic!("side {i} failed: {f}"),
                    PunchEvent::RelayUnreachable => panic!("side {i}: relay unreachable"),
                    PunchEvent::Registered { .. } => {}
                }
            }
        }
        while let Some(o) = self.relay.poll_output() {
            if let Output::Udp { src, dst, payload } = o {
                self.send(now, src, dst, payload);
            }
        }
    }

    /// Runs until both sides chose a path (or `limit`).
    fn run(&mut self, t0: Instant, limit: Duration) -> Instant {
        let mut now = t0;
        self.flush(now);
        while self.sides.iter().any(|s| s.path.is_none()) && now < t0 + limit {
            self.step(&mut now);
        }
        now
    }

    fn step(&mut self, now: &mut Instant) {
        let next_pkt = self.queue.keys().next().map(|k| k.0);
        let next_to = self
            .sides
            .iter()
            .filter_map(|s| s.p.poll_timeout())
            .chain([self.relay.poll_timeout()])
            .min();
        let next = [next_pkt, next_to].into_iter().flatten().min().unwrap();
        *now = next.max(*now);
        if next_pkt == Some(next) {
            let key = *self.queue.keys().next().unwrap();
            let (from, to, data) = self.queue.remove(&key).unwrap();
            let n = Now {
                mono: *now,
                unix: 0,
            };
            if to.ip() == self.relay_ip || to.ip() == "203.0.113.11".parse::<IpAddr>().unwrap() {
                self.relay.handle_udp(n, to, from, &data);
            } else {
                for s in self.sides.iter_mut() {
                    if s.nat.public_ip == to.ip() {
                        if let Some(local) = s.nat.inbound(*now, from, to.port()) {
                            if local == s.local {
                                s.p.handle_datagram(*now, from, &data);
                            }
                        }
                    }
                }
            }
        } else {
            for s in self.sides.iter_mut() {
                if s.p.poll_timeout().is_some_and(|t| t <= *now) {
                    s.p.handle_timeout(*now);
                }
            }
            if self.relay.poll_timeout() <= *now {
                self.relay.handle_timeout(*now);
            }
        }
        self.flush(*now);
    }
}

fn punch(a: (Behaviour, Behaviour), b: (Behaviour, Behaviour)) -> (Net, Duration) {
    let t0 = Instant::now();
    let mut net = Net::new(t0, a, b);
    let end = net.run(t0, Duration::from_secs(10));
    (net, end - t0)
}

fn is_direct(n: &Net) -> bool {
    n.sides
        .iter()
        .all(|s| matches!(s.path, Some((PathKind::Direct(_), _))))
}

#[test]
fn endpoint_independent_pairs_connect_directly() {
    for a in [(Ei, Ei), (Ei, Ad), (Ei, Apd)] {
        for b in [(Ei, Ei), (Ei, Ad), (Ei, Apd)] {
            let (n, took) = punch(a, b);
            assert!(
                is_direct(&n),
                "{a:?} x {b:?}: {:?}",
                n.sides.iter().map(|s| s.path).collect::<Vec<_>>()
            );
            // Registration, sync (RTT round), one probe round trip: a few 10 ms hops.
            assert!(
                took < Duration::from_millis(300),
                "{a:?} x {b:?} took {took:?}"
            );
            // Each side's direct peer is the other's public mapping.
            for (i, s) in n.sides.iter().enumerate() {
                let Some((PathKind::Direct(p), _)) = s.path else {
                    unreachable!()
                };
                assert_eq!(p.ip(), n.sides[1 - i].nat.public_ip);
            }
        }
    }
}

#[test]
fn symmetric_meets_restricted_through_the_peer_reflexive_address() {
    for (a, b) in [((Apd, Apd), (Ei, Ad)), ((Ei, Ei), (Apd, Apd))] {
        let (n, _) = punch(a, b);
        assert!(
            is_direct(&n),
            "{a:?} x {b:?}: {:?}",
            n.sides.iter().map(|s| s.path).collect::<Vec<_>>()
        );
    }
}

#[test]
fn symmetric_against_port_restricted_falls_back_to_the_relay_within_the_bound() {
    for (a, b) in [
        ((Apd, Apd), (Ei, Apd)),
        ((Ei, Apd), (Apd, Apd)),
        ((Apd, Apd), (Apd, Apd)),
    ] {
        let (mut n, took) = punch(a, b);
        for s in &n.sides {
            assert!(
                matches!(s.path, Some((PathKind::Relay, p)) if p > 0),
                "{a:?} x {b:?}: {:?}",
                s.path
            );
        }
        assert!(
            took <= DIRECT_TIMEOUT + Duration::from_millis(500),
            "took {took:?}"
        );
        // The relay carries data both ways.
        n.sides[0].p.send_relayed(b"to connector".to_vec());
        n.sides[1].p.send_relayed(b"to listener".to_vec());
        let t = Instant::now() + took;
        let mut now = t;
        n.flush(now);
        // Besides the sides' TTL findings (natkit frames).
        let data = |s: &Side| -> Vec<Vec<u8>> {
            let is_frame = crate::wire::rendezvous::is_frame;
            s.relayed.iter().filter(|d| !is_frame(d)).cloned().collect()
        };
        while n.sides.iter().any(|s| data(s).is_empty()) && now < t + Duration::from_secs(1) {
            n.step(&mut now);
        }
        assert_eq!(data(&n.sides[1]), vec![b"to connector".to_vec()]);
        assert_eq!(data(&n.sides[0]), vec![b"to listener".to_vec()]);
    }
}

/// Each side tells the other what its TTL measurement found, through the relay, and a
/// side waiting on an ambiguous measurement (silence after its NAT) goes on when it arrives.
#[test]
fn ttl_findings_cross_through_the_relay_and_end_the_wait() {
    let t0 = Instant::now();
    let mut n = Net::new(t0, (Ei, Apd), (Ei, Apd));
    let mut now = t0;
    n.flush(now);
    let hops = |s: &Side| {
        s.relayed
            .iter()
            .filter_map(|d| match crate::wire::rendezvous::Frame::parse(d) {
                Ok(crate::wire::rendezvous::Frame::Hops {
                    session,
                    own_nat,
                    peer_nat,
                }) => Some((session, own_nat, peer_nat)),
                _ => None,
            })
            .count()
    };
    while n.sides.iter().any(|s| hops(s) == 0) && now < t0 + Duration::from_secs(4) {
        n.step(&mut now);
    }
    // Nothing answers in this simulation: unknown (0) both ways, sent once the
    // measurement gave up (1.8 s), and again (relayed UDP may be lost).
    assert!(now - t0 >= Duration::from_millis(1700), "{:?}", now - t0);
    while now < t0 + Duration::from_secs(3) {
        n.step(&mut now);
    }
    assert!(n.sides.iter().all(|s| hops(s) >= 2));
    // Silence after our NAT, so a side waits for the peer's findings, then goes on.
    let mut m = Puncher::new(listener_cfg([7; 16]), t0, 1);
    m.handle_ttl_answer(
        t0,
        Target::Relay,
        1,
        Answer::TimeExceeded("192.168.1.1".parse().unwrap()),
    );
    m.peer_observed = Some(sa("203.0.113.22:4000"));
    m.measure.set_peer(t0, "203.0.113.22".parse().unwrap());
    let mut t = t0;
    while !m.measure.peer_done() {
        t = m.poll_timeout().unwrap().max(t);
        m.handle_timeout(t);
    }
    assert_eq!(m.peer_measured(t), None);
    m.handle_peer_hops(t, 1, 2);
    assert_eq!(m.peer_measured(t), Some(sa("203.0.113.22:4000")));
    assert_eq!(m.opening_plan(), (Opening::Clash, Some(1)));
}

/// A listener of `session` at the lab relay's address, without candidates.
fn listener_cfg(session: SessionId) -> PunchConfig {
    PunchConfig {
        relay: sa("203.0.113.10:3478"),
        session,
        role: Role::Listener,
        peer: [1; 8],
        token: vec![],
        candidates: vec![],
        direct_timeout: DIRECT_TIMEOUT,
        keepalive: KEEPALIVE,
    }
}

#[test]
fn a_lost_relay_is_reported() {
    let t0 = Instant::now();
    let mut p = Puncher::new(listener_cfg([1; 16]), t0, 1);
    let mut now = t0;
    let mut failed = None;
    while let Some(t) = p.poll_timeout() {
        now = t;
        p.handle_timeout(now);
        while p.poll_transmit().is_some() {}
        if let Some(PunchEvent::RelayUnreachable) = p.poll_event() {
            failed = Some(());
            break;
        }
    }
    assert!(failed.is_some());
    assert!(now - t0 < Duration::from_secs(5));
}

#[test]
fn path_monitor_needs_unanswered_sending_to_declare_a_stall() {
    let t0 = Instant::now();
    let mut m = PathMonitor::new(t0);
    // Idle both ways for a long time: fine.
    assert!(!m.is_stalled(t0 + Duration::from_secs(60)));
    // A last acknowledgement nobody answers: fine.
    m.on_tx(t0);
    assert!(!m.is_stalled(t0 + Duration::from_secs(60)));
    // Sending and hearing back: fine.
    for i in 0..10 {
        m.on_tx(t0 + Duration::from_millis(100 * i));
        m.on_rx(t0 + Duration::from_millis(100 * i + 10));
    }
    assert!(!m.is_stalled(t0 + Duration::from_secs(10)));
    // Retransmitting without answers for longer than STALL: stalled.
    let t1 = t0 + Duration::from_secs(20);
    for i in 0..STALL_SENDS {
        m.on_tx(t1 + Duration::from_millis(300 * i as u64));
    }
    assert!(!m.is_stalled(t1 + STALL / 2));
    assert!(m.is_stalled(t1 + STALL + Duration::from_millis(1)));
    m.on_rx(t1 + STALL * 2);
    assert!(!m.is_stalled(t1 + STALL * 3));
}

/// Runs until both sides are direct (by `limit` at the latest): the listener's address as the
/// connector punched it.
fn until_direct(n: &mut Net, now: &mut Instant, limit: Instant) -> SocketAddr {
    while !is_direct(n) && *now < limit {
        n.step(now);
    }
    match n.sides[1].path {
        Some((PathKind::Direct(p), _)) if is_direct(n) => p,
        _ => panic!("{:?}", n.sides.iter().map(|s| s.path).collect::<Vec<_>>()),
    }
}

/// Regression (CI, conntrack flush mid-transfer): after the listener's NAT forgets its
/// bindings and renumbers, the session falls back to the relay and then upgrades to a new
/// direct path on its own.
#[test]
fn a_forgotten_binding_falls_back_then_upgrades_to_direct() {
    let (mut n, took) = punch((Ei, Apd), (Ei, Apd));
    assert!(is_direct(&n));
    let t1 = Instant::now() + took + Duration::from_secs(5);
    n.sides[0].nat.forget();
    for s in n.sides.iter_mut() {
        s.p.path_failed(t1);
    }
    let mut now = t1;
    n.flush(now);
    assert!(n
        .sides
        .iter()
        .all(|s| matches!(s.path, Some((PathKind::Relay, _)))));
    let p = until_direct(&mut n, &mut now, t1 + Duration::from_secs(10));
    // The listener's new public port differs from the one it had before.
    assert_ne!(p.port(), 5000);
    assert!(
        now - t1 < UPGRADE_FIRST + Duration::from_secs(1),
        "{:?}",
        now - t1
    );
}

/// Issue 13: the listener's host gets a new address (its NAT gives it a new mapping); it
/// says so ([`Puncher::network_changed`]), the relay carries the session at once, and the
/// peer, once it notices (the driver's link sees relayed packets), upgrades to a direct path
/// to the new mapping.
#[test]
fn a_host_that_moved_re_registers_and_both_sides_go_direct_again() {
    let (mut n, took) = punch((Ei, Apd), (Ei, Apd));
    assert!(is_direct(&n));
    let Some((PathKind::Direct(old), _)) = n.sides[1].path else {
        unreachable!()
    };
    let t1 = Instant::now() + took + Duration::from_secs(5);
    n.sides[0].local = sa("192.168.1.3:5000");
    n.sides[0].p.network_changed(t1, true);
    let mut now = t1;
    n.flush(now);
    assert!(matches!(n.sides[0].path, Some((PathKind::Relay, _))));
    // The peer leaves the direct path a grace later (relayed packets of ours arrive).
    let noticed = t1 + crate::defaults::FOLLOW_GRACE;
    while now < noticed {
        n.step(&mut now);
    }
    n.sides[1].p.path_failed(now);
    n.flush(now);
    let new = until_direct(&mut n, &mut now, t1 + Duration::from_secs(10));
    assert_ne!(new, old, "the peer must punch our new mapping");
    assert!(now - t1 < Duration::from_secs(4), "{:?}", now - t1);
}

/// A route that comes back at the same address keeps the path, and a session on the relay
/// tries a direct path again one short wait later, however far its attempts had backed off.
#[test]
fn a_network_that_comes_back_resets_the_upgrade_backoff() {
    let t0 = Instant::now();
    let mut n = Net::new(t0, (Ei, Apd), (Ei, Apd));
    let now = n.run(t0, Duration::from_secs(10));
    assert!(is_direct(&n));
    n.sides[1].p.network_changed(now, false);
    n.flush(now);
    assert!(
        is_direct(&n),
        "a route back at the same address keeps the path"
    );
    n.sides[1].p.path_failed(now);
    n.sides[1].p.upgrade_wait = UPGRADE_MAX;
    n.sides[1].p.network_changed(now, false);
    assert_eq!(n.sides[1].p.upgrade_at, Some(now + UPGRADE_FIRST));
}

/// A pair that cannot go direct keeps retrying, but less and less often.
#[test]
fn upgrade_attempts_back_off_on_a_pair_that_cannot_go_direct() {
    let (mut n, took) = punch((Apd, Apd), (Ei, Apd));
    let t1 = Instant::now() + took;
    let mut now = t1;
    let mut starts = 0;
    while now < t1 + Duration::from_secs(120) {
        let was_done = n.sides[1].p.checks.is_done();
        n.step(&mut now);
        if was_done && !n.sides[1].p.checks.is_done() {
            starts += 1;
        }
    }
    // 1, 2, 4, 8, 16, 32, 60 s gaps (+3 s of checks each): about 6 attempts in two minutes.
    assert!((4..=8).contains(&starts), "{starts} attempts");
    assert!(n
        .sides
        .iter()
        .all(|s| matches!(s.path, Some((PathKind::Relay, _)))));
}

fn serverless_cfg(role: Role, peer: u8) -> PunchConfig {
    PunchConfig {
        relay: sa("0.0.0.0:0"),
        session: [7; 16],
        role,
        peer: [peer; 8],
        token: vec![],
        candidates: vec![],
        direct_timeout: Duration::from_secs(60),
        keepalive: KEEPALIVE,
    }
}

/// `--manual`: no relay at all. The connector has the listener's offer first and stays quiet
/// (low-TTL only) until the listener, pasting the connector's offer seconds later, starts
/// probing; then both connect directly, and nothing was ever sent to a relay.
#[test]
fn serverless_offers_connect_port_restricted_pairs_without_a_relay() {
    let t0 = Instant::now();
    let mut n = Net::new(t0, (Ei, Apd), (Ei, Apd));
    n.sides[0].p = Puncher::serverless(serverless_cfg(Role::Listener, 1), t0, 1);
    n.sides[1].p = Puncher::serverless(serverless_cfg(Role::Connector, 2), t0, 2);
    let mut now = t0;
    n.sides[1].p.peer_offer(&[sa("203.0.113.21:5000")], now);
    n.flush(now);
    while now < t0 + Duration::from_secs(5) {
        n.step(&mut now);
    }
    assert!(
        n.sides.iter().all(|s| s.path.is_none()),
        "connected too early"
    );
    n.sides[0].p.peer_offer(&[sa("203.0.113.22:6000")], now);
    n.flush(now);
    let t1 = now;
    while !is_direct(&n) && now < t1 + Duration::from_secs(5) {
        n.step(&mut now);
    }
    assert!(
        is_direct(&n),
        "{:?}",
        n.sides.iter().map(|s| s.path).collect::<Vec<_>>()
    );
    // The checks start once the TTL measurement settles (no router answers here: its bound).
    let bound = crate::defaults::TTL_MEASURE_WAIT + Duration::from_millis(200);
    assert!(now - t1 < bound, "took {:?}", now - t1);
    let m = n.relay.metrics();
    assert_eq!(
        (m.stun_requests, m.rendezvous_requests),
        (0, 0),
        "the relay was contacted"
    );
}

/// Regression (a birthday or prediction path dropped at the checks' bound): a direct path
/// adopted from another technique survives the punch socket's own checks failing.
#[test]
fn an_adopted_direct_path_survives_the_checks_failing() {
    let t0 = Instant::now();
    let mut net = Net::new(t0, (Apd, Apd), (Ei, Apd));
    let mut now = t0;
    while now < t0 + Duration::from_millis(300) {
        net.step(&mut now);
    }
    let found = sa("203.0.113.99:30011");
    for s in &mut net.sides {
        s.p.adopt_direct(found);
    }
    while now < t0 + DIRECT_TIMEOUT + Duration::from_secs(2) {
        net.step(&mut now);
    }
    for s in &mut net.sides {
        assert_eq!(s.p.path(), Some(PathKind::Direct(found)));
        while let Some(e) = s.p.poll_event() {
            assert!(
                !matches!(e, PunchEvent::Path { .. }),
                "no path change after adoption: {e:?}"
            );
        }
    }
}
