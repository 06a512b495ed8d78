//! The relay over both address families (issue 14): RFC 5780 within each family, rendezvous
//! and relaying across them, and the IPv6 deny list.

use super::limits::denied;
use super::tests::{cfg, drain, now};
use super::*;
use crate::wire::rendezvous::{Role, Trailer};
use crate::wire::stun::Change;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const P4: &str = "203.0.113.10:3478";
const P6: &str = "[2001:db8::10]:3478";

/// The IPv4 test relay (`203.0.113.10`, alternate `.11`) serving IPv6 too.
fn dual() -> RelayConfig {
    let mut c = cfg(true);
    c.other_family = Some((
        "2001:db8::10".parse().unwrap(),
        Some("2001:db8::11".parse().unwrap()),
    ));
    c
}

/// A `Register` (session 3, no candidates) from `from` with its cookie, on the primary
/// address of `from`'s family; what the relay sent.
fn register(r: &mut Relay, at: Instant, from: SocketAddr, role: Role, peer: u8) -> Vec<Output> {
    let f = Frame::Register {
        session: [3; 16],
        role,
        peer: [peer; 8],
        token: vec![],
        candidates: vec![],
    };
    let cookie = r.cookies.make(from, now(at).unix);
    let bytes = f.emit_with(Some(&Trailer { tx: 7, cookie }));
    let local = if from.is_ipv4() { sa(P4) } else { sa(P6) };
    r.handle_udp(now(at), local, from, &bytes);
    drain(r)
}

#[test]
fn eight_addresses_and_rfc5780_stays_within_the_family() {
    let t = Instant::now();
    let mut r = Relay::new(dual(), t, 1);
    assert_eq!(r.cfg.locals().len(), 8);
    for (local, client) in [(P4, "198.51.100.7:5000"), (P6, "[2001:db8:5::7]:5000")] {
        let (local, client) = (sa(local), sa(client));
        for change in [Change::NONE, Change::PORT, Change::IP_AND_PORT] {
            r.handle_udp(
                now(t),
                local,
                client,
                &stun::binding_request([1; 12], change),
            );
            let out = drain(&mut r);
            let Some(Output::Udp { src, dst, payload }) = out.first() else {
                panic!("no answer: {out:?}");
            };
            let m = stun::decode(payload).unwrap();
            assert_eq!(*dst, client);
            assert_eq!(m.reflexive(), Some(client));
            let other = m.other_address.unwrap();
            assert_eq!(other.is_ipv4(), local.is_ipv4(), "{other}");
            assert_eq!(src.is_ipv4(), local.is_ipv4(), "{src}");
            assert_ne!(other.ip(), local.ip());
            assert_eq!(src.ip() != local.ip(), change.ip);
            assert!(r.locals.contains(src));
        }
    }
}

#[test]
fn change_request_in_a_family_without_alt_addr_is_refused() {
    let t = Instant::now();
    let mut c = dual();
    c.other_family = Some(("2001:db8::10".parse().unwrap(), None));
    let mut r = Relay::new(c, t, 1);
    r.handle_udp(
        now(t),
        sa(P6),
        sa("[2001:db8:5::7]:5000"),
        &stun::binding_request([1; 12], Change::IP_AND_PORT),
    );
    let out = drain(&mut r);
    let Some(Output::Udp { payload, .. }) = out.first() else {
        panic!("no answer");
    };
    assert_eq!(stun::decode(payload).unwrap().error.map(|e| e.0), Some(420));
}

/// A peer over IPv4 meets one over IPv6: each learns the other's observed address, and data
/// goes from each family's own primary socket.
#[test]
fn rendezvous_and_relaying_across_families() {
    let t = Instant::now();
    let mut r = Relay::new(dual(), t, 1);
    let (a, b) = (sa("198.51.100.1:4000"), sa("[2001:db8:5::2]:5000"));
    register(&mut r, t, a, Role::Listener, 1);
    let out = register(&mut r, t, b, Role::Connector, 2);
    let peers: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Udp { src, dst, payload } => match Frame::parse(payload) {
                Ok(Frame::Peer { observed, .. }) => Some((*src, *dst, observed)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(peers.contains(&(sa(P6), b, a)), "{peers:?}");
    assert!(peers.contains(&(sa(P4), a, b)), "{peers:?}");
    let d = Frame::Data {
        session: [3; 16],
        payload: vec![9; 100],
    }
    .emit();
    r.handle_udp(now(t), sa(P6), b, &d);
    let out = drain(&mut r);
    assert!(
        matches!(out.as_slice(), [Output::Udp { src, dst, .. }] if *src == sa(P4) && *dst == a),
        "{out:?}"
    );
}

#[test]
fn ipv6_deny_list() {
    for s in [
        "::1",
        "fe80::1",
        "fd12:3456::1",
        "fc00::1",
        "::ffff:10.1.2.3",
        "::ffff:127.0.0.1",
        "64:ff9b::10.1.2.3",
        "64:ff9b::192.168.0.1",
        "64:ff9b::127.0.0.1",
        "64:ff9b::100.64.0.1",
        "64:ff9b:1::203.0.113.1",
        "2002:c0a8:0101::1",
        "2002:0a00:0001::1",
        "ff02::1",
        "::",
    ] {
        assert!(denied(s.parse().unwrap()), "{s}");
    }
    for s in [
        "2001:db8::1",
        "2a00:1450::1",
        "64:ff9b::203.0.113.1",
        "::ffff:203.0.113.1",
        "2002:cb00:7101::1",
    ] {
        assert!(!denied(s.parse().unwrap()), "{s}");
    }
    let t = Instant::now();
    let mut r = Relay::new(dual(), t, 1);
    for src in [
        "[64:ff9b::a01:203]:1",
        "[fe80::1]:1",
        "[fd00::5]:1",
        "[::1]:1",
    ] {
        r.handle_udp(
            now(t),
            sa(P6),
            sa(src),
            &stun::binding_request([6; 12], Change::NONE),
        );
        assert!(drain(&mut r).is_empty(), "{src}");
    }
}

/// A peer registered over both families: its path stays on the first, and the other peer
/// gets the second family's observed address as a candidate; both families' candidates are
/// exchanged. Once the first family has been silent for RELAY_FAMILY_MOVE, a registration
/// over the second moves the path.
#[test]
fn a_peer_registered_over_both_families_gets_both_exchanged() {
    let t = Instant::now();
    let mut r = Relay::new(dual(), t, 1);
    let (a4, a6) = (sa("198.51.100.1:4000"), sa("[2001:db8:5::1]:4000"));
    let (b4, b6) = (sa("198.51.100.2:5000"), sa("[2001:db8:6::2]:5000"));
    let reg = |r: &mut Relay, at: Instant, from: SocketAddr, role, peer: u8| {
        register(r, at, from, role, peer)
            .into_iter()
            .filter_map(|o| match o {
                Output::Udp { dst, payload, .. } => match Frame::parse(&payload) {
                    Ok(Frame::Peer {
                        observed,
                        candidates,
                    }) => Some((dst, observed, candidates)),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    reg(&mut r, t, a4, Role::Listener, 1);
    reg(&mut r, t, a6, Role::Listener, 1);
    reg(&mut r, t, b4, Role::Connector, 2);
    let peers = reg(&mut r, t, b6, Role::Connector, 2);
    // B's IPv6 registration: A hears of it on A's IPv4 path, with both of B's addresses;
    // B hears of A on the path it registered over, with both of A's.
    assert!(peers.contains(&(a4, b4, vec![b6])), "{peers:?}");
    assert!(peers.contains(&(b6, a4, vec![a6])), "{peers:?}");
    assert_eq!(r.sessions(), 1);
    let held: usize = r.per_source.values().sum();
    assert_eq!(held, 2, "one slot per peer, not per family");
    // A's IPv4 goes silent; past RELAY_FAMILY_MOVE its IPv6 registration moves the path.
    let later = t + crate::defaults::RELAY_FAMILY_MOVE;
    let peers = reg(&mut r, later, a6, Role::Listener, 1);
    assert!(
        peers.contains(&(b4, a6, vec![])),
        "the path moved, and its address is no longer also a candidate: {peers:?}"
    );
}
