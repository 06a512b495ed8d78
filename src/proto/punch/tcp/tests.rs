//! The TCP punch core on a virtual clock: plans, arming order, both families, the
//! connector's choice.
use super::*;

const BUDGET: Duration = Duration::from_secs(5);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The peer's offer of `addr` in session `[1; 16]`.
fn offer(addr: SocketAddr, armed: bool) -> Frame {
    Frame::TcpOffer {
        session: [1; 16],
        armed,
        addr,
    }
}

/// A punch in session `[1; 16]` that knows our endpoints `mine`.
fn started(role: Role, t0: Instant, mine: &[SocketAddr]) -> TcpPunch {
    let mut p = TcpPunch::new([1; 16], role, t0, BUDGET);
    p.set_mine(t0, mine);
    p
}

/// A listener with our endpoints `mine` that has the connector's offer of `peer`.
fn listener_offered(t0: Instant, mine: &[SocketAddr], peer: SocketAddr) -> TcpPunch {
    let mut l = started(Role::Listener, t0, mine);
    assert!(l.handle_frame(t0, &offer(peer, false)));
    l
}

/// Delivers every frame one side has for the other (the relay, losslessly).
fn relay(from: &mut TcpPunch, to: &mut TcpPunch, now: Instant) {
    while let Some(b) = from.poll_transmit() {
        let f = Frame::parse(&b).unwrap();
        assert!(to.handle_frame(now, &f));
    }
}

#[test]
fn listener_arms_before_the_connector_connects() {
    let t0 = Instant::now();
    let (la, ca) = (sa("203.0.113.21:40000"), sa("203.0.113.22:40001"));
    let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
    let mut c = started(Role::Connector, t0, &[ca]);
    relay(&mut c, &mut l, t0);
    assert_eq!(l.poll_action(), None, "the listener lacks its own endpoint");
    l.set_mine(t0, &[la]);
    assert_eq!(l.poll_action(), Some(Action::Arm(ca)));
    relay(&mut l, &mut c, t0);
    assert_eq!(
        c.poll_action(),
        None,
        "not armed yet: a SYN now could meet an RST"
    );
    l.armed(t0, ca);
    relay(&mut l, &mut c, t0);
    assert_eq!(c.poll_action(), Some(Action::Connect(la)));
    assert_eq!(c.attempt_connected(la), Take::Use);
    assert_eq!(
        c.outcome(),
        Some(&Outcome::Connected {
            peer: la,
            attempts: 1
        })
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_failed_attempt_is_retried_after_a_pause_then_the_budget_ends_it() {
    let t0 = Instant::now();
    let mut c = started(Role::Connector, t0, &[sa("203.0.113.22:1")]);
    assert!(c.handle_frame(t0, &offer(sa("203.0.113.21:2"), true)));
    assert!(matches!(c.poll_action(), Some(Action::Connect(_))));
    c.attempt_failed(t0, sa("203.0.113.21:2"));
    c.handle_timeout(t0 + TCP_RETRY / 2);
    assert_eq!(c.poll_action(), None);
    c.handle_timeout(t0 + TCP_RETRY);
    assert!(matches!(c.poll_action(), Some(Action::Connect(_))));
    c.attempt_failed(t0 + TCP_RETRY, sa("203.0.113.21:2"));
    c.handle_timeout(t0 + BUDGET);
    assert_eq!(
        c.outcome(),
        Some(&Outcome::Failed {
            attempts: 2,
            why: "no TCP connection within the time budget"
        })
    );
    assert_eq!(c.poll_action(), None);
}

#[test]
fn offers_repeat_until_the_end_and_other_sessions_are_ignored() {
    let t0 = Instant::now();
    let mut l = started(Role::Listener, t0, &[sa("203.0.113.21:1")]);
    assert!(l.poll_transmit().is_some());
    let mut now = t0;
    let mut sent = 0;
    while let Some(t) = l.poll_timeout() {
        now = t;
        l.handle_timeout(now);
        while l.poll_transmit().is_some() {
            sent += 1;
        }
    }
    assert!(now >= t0 + BUDGET);
    let expected = (BUDGET.as_millis() / TCP_OFFER_INTERVAL.as_millis()) as i32;
    assert!((sent - expected).abs() <= 1, "{sent} resends");
    let other = Frame::TcpOffer {
        session: [2; 16],
        armed: false,
        addr: sa("203.0.113.22:1"),
    };
    assert!(!l.handle_frame(now, &other));
    assert_eq!(
        l.outcome(),
        Some(&Outcome::Failed {
            attempts: 0,
            why: "the other side's TCP endpoint never came"
        })
    );
}

use crate::proto::punch::nat::tests::c as class;

#[test]
fn only_no_nat_and_endpoint_independent_filtering_are_reachable() {
    use Behaviour::{AddressAndPortDependent as Apd, EndpointIndependent as Ei};
    assert!(reachable(&class(Behaviour::None, Behaviour::None)), "open");
    assert!(reachable(&class(Ei, Ei)), "full cone");
    assert!(
        !reachable(&class(Ei, Behaviour::AddressDependent)),
        "restricted"
    );
    assert!(!reachable(&class(Ei, Apd)), "port-restricted");
    assert!(!reachable(&class(Apd, Apd)), "symmetric");
    let blocked = NatClass {
        udp_blocked: true,
        ..class(Behaviour::Unknown, Behaviour::Unknown)
    };
    assert!(!reachable(&blocked), "udp-blocked");
    let mapped = NatClass {
        mapped_port: true,
        ..class(Ei, Apd)
    };
    assert!(!reachable(&mapped), "the mapped port is UDP's");
}

#[test]
fn the_unreachable_side_connects_and_the_reachable_one_accepts() {
    use Role::{Connector as C, Listener as L};
    for (l, c, want_l, want_c) in [
        (true, false, Plan::Accept, Plan::Connect),
        (false, true, Plan::Connect, Plan::Accept),
        (true, true, Plan::Accept, Plan::Connect),
        (false, false, Plan::Simultaneous, Plan::Simultaneous),
    ] {
        assert_eq!((plan(L, l, c), plan(C, l, c)), (want_l, want_c), "{l} {c}");
    }
}

/// The classifications of no NAT and of a port-restricted NAT.
fn open_and_port_restricted() -> (NatClass, NatClass) {
    use Behaviour::{AddressAndPortDependent as Apd, EndpointIndependent as Ei};
    (class(Behaviour::None, Behaviour::None), class(Ei, Apd))
}

/// Open listener × port-restricted connector: the connector connects at once (no
/// arming, no `armed`), the listener only accepts, and only from the peer's address.
#[test]
fn a_reachable_listener_is_connected_to_directly() {
    let t0 = Instant::now();
    let (la, ca) = (sa("203.0.113.41:40000"), sa("203.0.113.22:40001"));
    let (open, pr) = open_and_port_restricted();
    let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
    let mut c = TcpPunch::new([1; 16], Role::Connector, t0, BUDGET);
    l.set_nat(t0, &open, &pr);
    c.set_nat(t0, &pr, &open);
    l.set_mine(t0, &[la]);
    c.set_mine(t0, &[ca]);
    relay(&mut c, &mut l, t0);
    relay(&mut l, &mut c, t0);
    assert_eq!(l.poll_action(), None, "the reachable side does not arm");
    assert_eq!(c.poll_action(), Some(Action::Connect(la)));
    assert_eq!(
        l.accepted(sa("203.0.113.99:40001")),
        Take::Drop,
        "a stranger"
    );
    assert_eq!(
        l.accepted(sa("203.0.113.22:50000")),
        Take::AwaitChoice,
        "the peer, from another port"
    );
    assert_eq!(l.outcome(), None, "until the connector's bytes come on it");
    assert!(!l.chosen(sa("203.0.113.99:40001")), "a stranger's bytes");
    assert!(l.chosen(sa("203.0.113.22:50000")));
    assert_eq!(
        l.outcome(),
        Some(&Outcome::Connected {
            peer: sa("203.0.113.22:50000"),
            attempts: 0
        })
    );
    assert_eq!(
        l.accepted(sa("203.0.113.22:50001")),
        Take::Drop,
        "only one connection"
    );
    assert_eq!(c.attempt_connected(la), Take::Use);
    assert!(matches!(c.outcome(), Some(Outcome::Connected { .. })));
}

/// The classifications may come after the punch started: an armed simultaneous open
/// until then, the plan for the next attempt after.
#[test]
fn a_late_classification_changes_the_next_attempt() {
    use Behaviour::{AddressAndPortDependent as Apd, EndpointIndependent as Ei};
    let t0 = Instant::now();
    let ca = sa("203.0.113.42:40001");
    let mut l = listener_offered(t0, &[sa("203.0.113.21:40000")], ca);
    assert_eq!(l.poll_action(), Some(Action::Arm(ca)));
    l.set_nat(
        t0,
        &class(Ei, Apd),
        &class(Behaviour::None, Behaviour::None),
    );
    assert_eq!(l.poll_action(), None, "one attempt at a time");
    l.attempt_failed(t0, ca);
    l.handle_timeout(t0 + TCP_RETRY);
    assert_eq!(l.poll_action(), Some(Action::Connect(ca)));
}

/// Nobody takes a connection before the peer's endpoint is known.
#[test]
fn nothing_is_accepted_before_the_peer_offers() {
    let t0 = Instant::now();
    let mut l = started(Role::Listener, t0, &[sa("203.0.113.41:1")]);
    assert_eq!(l.accepted(sa("203.0.113.22:2")), Take::Drop);
    assert_eq!(l.outcome(), None);
}

/// Both sides with IPv4 and IPv6: the lanes punch at once, IPv6's attempt first; the
/// listener arms IPv6 at the full hop limit like IPv4 (the driver picks the TTL), keeps
/// both connections, and takes the one the connector's bytes come on.
#[test]
fn both_families_punch_at_once_and_the_connector_chooses() {
    let t0 = Instant::now();
    let (la, ca) = (sa("203.0.113.21:40000"), sa("203.0.113.22:40001"));
    let (la6, ca6) = (sa("[2001:db8:1::2]:40002"), sa("[2001:db8:2::2]:40003"));
    let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
    let mut c = started(Role::Connector, t0, &[ca, ca6]);
    l.set_mine(t0, &[la, la6]);
    relay(&mut c, &mut l, t0);
    assert_eq!(l.poll_action(), Some(Action::Arm(ca6)), "IPv6 first");
    assert_eq!(l.poll_action(), Some(Action::Arm(ca)));
    relay(&mut l, &mut c, t0);
    assert_eq!(c.poll_action(), None, "neither lane armed yet");
    l.armed(t0, ca6);
    relay(&mut l, &mut c, t0);
    assert_eq!(
        c.poll_action(),
        Some(Action::Connect(la6)),
        "only IPv6 armed"
    );
    l.armed(t0, ca);
    relay(&mut l, &mut c, t0);
    assert_eq!(c.poll_action(), Some(Action::Connect(la)));
    // The listener sees IPv4 up first, the connector IPv6: the connector's choice holds.
    assert_eq!(l.attempt_connected(ca), Take::AwaitChoice);
    assert_eq!(l.attempt_connected(ca6), Take::AwaitChoice);
    assert_eq!(c.attempt_connected(la6), Take::Use);
    assert_eq!(c.attempt_connected(la), Take::Drop, "chosen already");
    l.unchosen(t0, ca);
    assert!(!l.chosen(ca), "the IPv4 connection closed unchosen");
    assert!(l.chosen(ca6));
    for (p, peer) in [(&l, ca6), (&c, la6)] {
        assert!(matches!(p.outcome(), Some(Outcome::Connected { peer: got, .. }) if *got == peer));
    }
}

/// The classifications describe IPv4: a reachable IPv4 listener is connected to
/// directly, while IPv6 still punches (its firewall is not measured).
#[test]
fn ipv6_punches_whatever_the_ipv4_plan() {
    let t0 = Instant::now();
    let (ca, ca6) = (sa("203.0.113.22:40001"), sa("[2001:db8:2::2]:40003"));
    let (open, pr) = open_and_port_restricted();
    let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
    l.set_nat(t0, &open, &pr);
    l.set_mine(t0, &[sa("203.0.113.41:1"), sa("[2001:db8:1::2]:2")]);
    for addr in [ca, ca6] {
        assert!(l.handle_frame(t0, &offer(addr, false)));
    }
    assert_eq!(l.poll_action(), Some(Action::Arm(ca6)));
    assert_eq!(
        l.poll_action(),
        None,
        "IPv4: the reachable listener accepts"
    );
    assert_eq!(l.accepted(sa("203.0.113.22:5")), Take::AwaitChoice);
    assert_eq!(
        l.accepted(sa("[2001:db8:9::2]:5")),
        Take::Drop,
        "a stranger"
    );
}

/// A peer's IPv6 offer when we have no IPv6: nothing to do in that lane, and no wake-up
/// before the next offer is due; IPv4 goes on alone, and IPv6 alone works too.
#[test]
fn an_offer_in_a_family_we_lack_is_idle() {
    let t0 = Instant::now();
    let mut c = started(Role::Connector, t0, &[sa("203.0.113.22:1")]);
    let offer6 = offer(sa("[2001:db8:1::2]:2"), true);
    assert!(c.handle_frame(t0, &offer6));
    assert_eq!(c.poll_action(), None);
    assert_eq!(c.poll_timeout(), Some(t0 + TCP_OFFER_INTERVAL));
    let mut c6 = started(Role::Connector, t0, &[sa("[2001:db8:2::2]:3")]);
    assert!(c6.handle_frame(t0, &offer6));
    assert_eq!(
        c6.poll_action(),
        Some(Action::Connect(sa("[2001:db8:1::2]:2")))
    );
}

/// An IPv4-mapped offer is an IPv4 one: dialled as IPv4, not from the IPv6 port.
#[test]
fn a_mapped_offer_is_ipv4() {
    let t0 = Instant::now();
    let mut c = started(
        Role::Connector,
        t0,
        &[sa("203.0.113.22:1"), sa("[2001:db8:2::2]:3")],
    );
    assert!(c.handle_frame(t0, &offer(sa("[::ffff:203.0.113.21]:2"), true)));
    assert_eq!(c.poll_action(), Some(Action::Connect(sa("203.0.113.21:2"))));
}

/// Listener: a connection that closes before the connector's bytes came frees its lane
/// for another attempt after the pause.
#[test]
fn an_unchosen_connection_is_punched_again() {
    let t0 = Instant::now();
    let ca6 = sa("[2001:db8:2::2]:40003");
    let mut l = listener_offered(t0, &[sa("[2001:db8:1::2]:40002")], ca6);
    assert_eq!(l.poll_action(), Some(Action::Arm(ca6)));
    assert_eq!(l.attempt_connected(ca6), Take::AwaitChoice);
    l.handle_timeout(t0 + TCP_RETRY);
    assert_eq!(
        l.poll_action(),
        None,
        "one waits for the connector's choice"
    );
    l.unchosen(t0 + TCP_RETRY, ca6);
    l.handle_timeout(t0 + TCP_RETRY);
    assert_eq!(l.poll_action(), None);
    l.handle_timeout(t0 + 2 * TCP_RETRY);
    assert_eq!(l.poll_action(), Some(Action::Arm(ca6)));
}

#[test]
fn no_endpoint_of_our_own_fails_at_once() {
    let t0 = Instant::now();
    let c = started(Role::Connector, t0, &[]);
    assert!(matches!(c.outcome(), Some(Outcome::Failed { .. })));
    assert_eq!(c.poll_timeout(), None);
}

/// Neighbouring NATs that reset SYNs: both sides fire at once over IPv4 (no arming order can
/// work), nobody waits for `armed`; IPv6 (no NAT) keeps its simultaneous open; without the
/// neighbours the plan is the armed one again.
#[test]
fn neighbours_fire_syns_from_both_sides_at_once() {
    let t0 = Instant::now();
    let (la, ca) = (sa("203.0.113.21:40000"), sa("203.0.113.22:40001"));
    let (la6, ca6) = (sa("[2001:db8:1::2]:40000"), sa("[2001:db8:2::2]:40001"));
    let mut l = started(Role::Listener, t0, &[la, la6]);
    let mut c = started(Role::Connector, t0, &[ca, ca6]);
    l.set_neighbours(t0, true);
    c.set_neighbours(t0, true);
    relay(&mut l, &mut c, t0);
    relay(&mut c, &mut l, t0);
    let all = |p: &mut TcpPunch| std::iter::from_fn(|| p.poll_action()).collect::<Vec<_>>();
    let (la_actions, ca_actions) = (all(&mut l), all(&mut c));
    assert!(la_actions.contains(&Action::Cross(ca)), "{la_actions:?}");
    assert!(la_actions.contains(&Action::Arm(ca6)), "{la_actions:?}");
    assert!(ca_actions.contains(&Action::Cross(la)), "{ca_actions:?}");
    assert!(!ca_actions.iter().any(|a| matches!(a, Action::Connect(_))));
    let mut p = started(Role::Listener, t0, &[la]);
    p.set_neighbours(t0, true);
    assert_eq!(p.plan, Plan::Cross);
    p.set_neighbours(t0, false);
    assert_eq!(p.plan, Plan::Simultaneous);
}
