use super::rendezvous::candidates_within;
use super::token;
use super::DropReason as Drop;
use super::*;
use crate::wire::rendezvous::{Role, Trailer};
use crate::wire::stun::Change;
use rand::Rng;
use std::time::Duration;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const P: &str = "203.0.113.10:3478";

pub(super) fn cfg(alt: bool) -> RelayConfig {
    RelayConfig {
        primary: sa(P),
        alt_ip: alt.then(|| "203.0.113.11".parse().unwrap()),
        alt_port: 3479,
        other_family: None,
        limits: Limits::default(),
        allow_private: false,
        secret: None,
    }
}

pub(super) fn now(t: Instant) -> Now {
    Now {
        mono: t,
        unix: 1_800_000_000,
    }
}

/// `f` as a client sends it from `from` once it has the relay's cookie (transaction id 7):
/// the round trip itself is tested in `spoofed_registers_get_a_cookie_and_no_slot`.
fn echo(r: &Relay, from: SocketAddr, f: &Frame) -> Vec<u8> {
    let cookie = r.cookies.make(from, now(Instant::now()).unix);
    f.emit_with(Some(&Trailer { tx: 7, cookie }))
}

pub(super) fn drain(r: &mut Relay) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn udp(o: &Output) -> (SocketAddr, SocketAddr, &[u8]) {
    match o {
        Output::Udp { src, dst, payload } => (*src, *dst, payload),
        other => panic!("expected UDP, got {other:?}"),
    }
}

#[test]
fn rfc5780_answers_on_all_four_addresses() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let client = sa("198.51.100.7:5000");
    for local in r.cfg.locals() {
        for change in [Change::NONE, Change::PORT, Change::IP_AND_PORT] {
            let req = stun::binding_request([1; 12], change);
            r.handle_udp(now(t), local, client, &req);
            let out = drain(&mut r);
            let (src, dst, bytes) = udp(&out[0]);
            let m = stun::decode(bytes).unwrap();
            assert_eq!(dst, client);
            assert_eq!(m.reflexive(), Some(client));
            assert_eq!(m.response_origin, Some(src));
            let o = m.other_address.unwrap();
            assert_ne!(o.ip(), local.ip());
            assert_ne!(o.port(), local.port());
            assert_eq!(src.ip() != local.ip(), change.ip, "{local} {change:?}");
            assert_eq!(
                src.port() != local.port(),
                change.port,
                "{local} {change:?}"
            );
            assert!(r.locals.contains(&src));
        }
    }
}

#[test]
fn response_port_stays_on_the_requesters_ip() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let req = stun::binding_request_response_port([2; 12], 7777);
    r.handle_udp(now(t), sa(P), sa("198.51.100.7:5000"), &req);
    let (_, dst, _) = udp(&drain(&mut r)[0]);
    assert_eq!(dst, sa("198.51.100.7:7777"));
}

#[test]
fn plain_mode_refuses_change_request_and_sends_no_other_address() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(false), t, 1);
    r.handle_udp(
        now(t),
        sa(P),
        sa("198.51.100.7:5000"),
        &stun::binding_request([3; 12], Change::NONE),
    );
    let m = stun::decode(udp(&drain(&mut r)[0]).2).unwrap();
    assert_eq!(m.other_address, None);
    r.handle_udp(
        now(t),
        sa(P),
        sa("198.51.100.7:5000"),
        &stun::binding_request([3; 12], Change::PORT),
    );
    let m = stun::decode(udp(&drain(&mut r)[0]).2).unwrap();
    assert_eq!(m.error.unwrap().0, 420);
}

#[test]
fn padding_is_refused_small() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let req = stun::binding_request_with_padding([4; 12], 8).unwrap();
    r.handle_udp(now(t), sa(P), sa("198.51.100.7:5000"), &req);
    let out = drain(&mut r);
    let (_, _, bytes) = udp(&out[0]);
    assert_eq!(stun::decode(bytes).unwrap().error.unwrap().0, 400);
    assert!(bytes.len() <= req.len() * MAX_AMPLIFICATION);
    assert_eq!(r.metrics().drops_for(Drop::Padding), 1);
}

#[test]
fn amplification_is_bounded_for_the_smallest_request() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    // A 20-byte Binding request: header only.
    let mut req = stun::binding_request([5; 12], Change::NONE);
    req.truncate(20);
    req[2] = 0;
    req[3] = 0;
    r.handle_udp(now(t), sa(P), sa("198.51.100.7:5000"), &req);
    let out = drain(&mut r);
    let (_, _, bytes) = udp(&out[0]);
    assert!(
        bytes.len() <= 20 * MAX_AMPLIFICATION,
        "{} bytes",
        bytes.len()
    );
}

#[test]
fn private_and_mapped_sources_are_denied() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    for src in [
        "10.0.0.1:1",
        "127.0.0.1:1",
        "[::ffff:192.168.1.1]:1",
        "[::ffff:127.0.0.1]:1",
        "100.64.0.1:1",
        "0.0.0.0:1",
    ] {
        r.handle_udp(
            now(t),
            sa(P),
            sa(src),
            &stun::binding_request([6; 12], Change::NONE),
        );
        assert!(drain(&mut r).is_empty(), "{src}");
    }
    assert_eq!(r.metrics().drops_for(Drop::Denied), 6);
}

#[test]
fn one_flooding_source_is_limited_another_is_served() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let req = stun::binding_request([7; 12], Change::NONE);
    for _ in 0..1000 {
        r.handle_udp(now(t), sa(P), sa("198.51.100.7:5000"), &req);
    }
    let answered = drain(&mut r).len();
    assert_eq!(answered as u32, defaults::RELAY_REQS_BURST);
    assert_eq!(
        r.metrics().drops_for(Drop::RateLimited),
        1000 - answered as u64
    );
    r.handle_udp(now(t), sa(P), sa("198.51.100.8:5000"), &req);
    assert_eq!(drain(&mut r).len(), 1);
    assert!(r
        .metrics()
        .render(0)
        .contains("natkit_relay_drops_total{reason=\"rate_limited\"} 900"));
}

fn register(
    r: &mut Relay,
    t: Instant,
    from: &str,
    role: Role,
    peer: u8,
    cands: Vec<SocketAddr>,
) -> Vec<Output> {
    let f = Frame::Register {
        session: [9; 16],
        role,
        peer: [peer; 8],
        token: vec![],
        candidates: cands,
    };
    r.handle_udp(now(t), sa(P), sa(from), &echo(r, sa(from), &f));
    drain(r)
}

fn frames(out: &[Output]) -> Vec<(SocketAddr, Frame)> {
    out.iter()
        .map(|o| {
            let (_, dst, b) = udp(o);
            (dst, Frame::parse(b).unwrap())
        })
        .collect()
}

#[test]
fn rendezvous_introduces_peers_and_never_sends_to_candidates() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let evil = sa("198.51.100.99:22");
    let out = register(
        &mut r,
        t,
        "198.51.100.1:4000",
        Role::Listener,
        1,
        vec![evil, sa("10.0.0.5:22")],
    );
    assert_eq!(
        frames(&out),
        vec![(
            sa("198.51.100.1:4000"),
            Frame::Registered {
                observed: sa("198.51.100.1:4000"),
                peer_present: false
            }
        )]
    );
    let out = register(&mut r, t, "198.51.100.2:5000", Role::Connector, 2, vec![]);
    let f = frames(&out);
    assert_eq!(f.len(), 3);
    for (dst, _) in &f {
        assert!(
            *dst == sa("198.51.100.1:4000") || *dst == sa("198.51.100.2:5000"),
            "sent to {dst}"
        );
    }
    assert!(f.contains(&(
        sa("198.51.100.2:5000"),
        Frame::Peer {
            observed: sa("198.51.100.1:4000"),
            candidates: vec![evil, sa("10.0.0.5:22")]
        }
    )));
    // Relayed data goes to the other peer's observed address only.
    let d = Frame::Data {
        session: [9; 16],
        payload: b"ciphertext".to_vec(),
    };
    r.handle_udp(now(t), sa(P), sa("198.51.100.2:5000"), &d.emit());
    let f = frames(&drain(&mut r));
    assert_eq!(f, vec![(sa("198.51.100.1:4000"), d.clone())]);
}

#[test]
fn forged_joins_and_data_from_strangers_change_nothing() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    register(&mut r, t, "198.51.100.1:4000", Role::Listener, 1, vec![]);
    register(&mut r, t, "198.51.100.2:5000", Role::Connector, 2, vec![]);
    // Another peer id cannot take a role.
    let out = register(&mut r, t, "198.51.100.66:6000", Role::Listener, 3, vec![]);
    assert!(matches!(
        frames(&out)[0].1,
        Frame::Error {
            code: ErrorCode::SessionBusy,
            ..
        }
    ));
    // Data from an address that is not registered is dropped, even with the right session.
    let d = Frame::Data {
        session: [9; 16],
        payload: vec![1],
    };
    r.handle_udp(now(t), sa(P), sa("198.51.100.66:6000"), &d.emit());
    assert!(drain(&mut r).is_empty());
    // A Sync or Bye naming a peer id from the wrong address is ignored too.
    let bye = Frame::Bye {
        session: [9; 16],
        peer: [1; 8],
    };
    r.handle_udp(now(t), sa(P), sa("198.51.100.66:6000"), &bye.emit());
    r.handle_udp(now(t), sa(P), sa("198.51.100.2:5000"), &d.emit());
    assert_eq!(frames(&drain(&mut r))[0].0, sa("198.51.100.1:4000"));
}

#[test]
fn sync_measures_rtts_and_starts_both_at_once() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    register(&mut r, t, "198.51.100.1:4000", Role::Listener, 1, vec![]);
    register(&mut r, t, "198.51.100.2:5000", Role::Connector, 2, vec![]);
    r.handle_udp(
        now(t),
        sa(P),
        sa("198.51.100.2:5000"),
        &Frame::Sync {
            session: [9; 16],
            peer: [2; 8],
        }
        .emit(),
    );
    let pings = frames(&drain(&mut r));
    assert_eq!(pings.len(), 2);
    for (dst, f) in pings {
        let Frame::Ping { nonce } = f else { panic!() };
        let (peer, delay) = if dst.port() == 4000 { (1, 80) } else { (2, 20) };
        let pong = Frame::Pong {
            session: [9; 16],
            peer: [peer; 8],
            nonce,
        };
        r.handle_udp(
            now(t + Duration::from_millis(delay)),
            sa(P),
            dst,
            &pong.emit(),
        );
    }
    let starts = frames(&drain(&mut r));
    let wait = |port: u16| {
        starts
            .iter()
            .find_map(|(d, f)| match f {
                Frame::Start {
                    wait_ms,
                    attempt: 1,
                } if d.port() == port => Some(*wait_ms),
                _ => None,
            })
            .unwrap()
    };
    // RTT 80 ms vs 20 ms: the near side waits half the difference.
    assert_eq!(wait(4000), 0);
    assert_eq!(wait(5000), 30);
}

#[test]
fn secret_requires_a_valid_unexpired_token() {
    let t = Instant::now();
    let mut c = cfg(true);
    c.secret = Some(b"s3cret".to_vec());
    let mut r = Relay::new(c, t, 1);
    let reg = |r: &Relay, token: Vec<u8>| {
        let f = Frame::Register {
            session: [1; 16],
            role: Role::Listener,
            peer: [1; 8],
            token,
            candidates: vec![],
        };
        echo(r, sa("198.51.100.1:4000"), &f)
    };
    let n = now(t);
    for bad in [
        vec![],
        vec![0; 24],
        make_token(b"other", n.unix + 60),
        make_token(b"s3cret", n.unix - 1),
    ] {
        r.handle_udp(n, sa(P), sa("198.51.100.1:4000"), &reg(&r, bad));
        assert!(matches!(
            frames(&drain(&mut r))[0].1,
            Frame::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ));
    }
    r.handle_udp(
        n,
        sa(P),
        sa("198.51.100.1:4000"),
        &reg(&r, make_token(b"s3cret", n.unix + 60)),
    );
    assert!(matches!(
        frames(&drain(&mut r))[0].1,
        Frame::Registered { .. }
    ));
}

#[test]
fn dial_back_only_reaches_the_requester() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let me = sa("198.51.100.1:4000");
    r.handle_udp(
        now(t),
        sa(P),
        me,
        &Frame::DialBack {
            proto: 17,
            port: 9999,
            nonce: 5,
        }
        .emit_with(Some(&Trailer {
            tx: 1,
            cookie: r.cookies.make(me, now(t).unix),
        })),
    );
    let out = drain(&mut r);
    let (src, dst, b) = udp(&out[0]);
    assert_eq!(dst, me, "UDP dial-back ignores the named port");
    assert_eq!(src, sa("203.0.113.11:3479"));
    assert_eq!(Frame::parse(b).unwrap(), Frame::Probe { nonce: 5 });
    let tcp_ask = Frame::DialBack {
        proto: 6,
        port: 8080,
        nonce: 6,
    };
    r.handle_udp(now(t), sa(P), me, &echo(&r, me, &tcp_ask));
    assert!(
        matches!(drain(&mut r)[0], Output::DialTcp { dst, .. } if dst == sa("198.51.100.1:8080"))
    );
    for _ in 0..20 {
        r.handle_udp(now(t), sa(P), me, &echo(&r, me, &tcp_ask));
    }
    let n = drain(&mut r)
        .iter()
        .filter(|o| matches!(o, Output::DialTcp { .. }))
        .count();
    assert_eq!(n as u32, defaults::RELAY_DIALBACKS_PER_MIN - 2);
}

#[test]
fn idle_registrations_expire() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    register(&mut r, t, "198.51.100.1:4000", Role::Listener, 1, vec![]);
    assert_eq!(r.sessions(), 1);
    r.handle_timeout(t + Duration::from_secs(defaults::RELAY_IDLE_SECS + 2));
    assert_eq!(r.sessions(), 0);
}

#[test]
fn change_request_ip_only_answers_from_the_other_ip_same_port() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let client = sa("198.51.100.7:5000");
    let ip_only = Change {
        ip: true,
        port: false,
    };
    for local in r.cfg.locals() {
        let req = stun::binding_request([8; 12], ip_only);
        r.handle_udp(now(t), local, client, &req);
        let out = drain(&mut r);
        assert_eq!(out.len(), 1);
        let (src, dst, bytes) = udp(&out[0]);
        let m = stun::decode(bytes).unwrap();
        assert_eq!(dst, client);
        assert_ne!(src.ip(), local.ip(), "{local}: the IP changes");
        assert_eq!(src.port(), local.port(), "{local}: the port does not");
        assert!(r.locals.contains(&src));
        assert_eq!(m.response_origin, Some(src));
        assert_eq!(m.reflexive(), Some(client));
    }
    // Without --alt-addr, change-IP is refused like any CHANGE-REQUEST.
    let mut plain = Relay::new(cfg(false), t, 1);
    plain.handle_udp(
        now(t),
        sa(P),
        client,
        &stun::binding_request([8; 12], ip_only),
    );
    let m = stun::decode(udp(&drain(&mut plain)[0]).2).unwrap();
    assert_eq!(m.error.unwrap().0, 420);
}

// ---- Amplification of Register (issue 2: every unauthenticated request within 4×) ----

fn v6_candidates(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| sa(&format!("[2001:db8::{:x}]:{}", i + 1, 40000 + i)))
        .collect()
}

fn v4_candidates(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| sa(&format!("192.0.2.{}:{}", i + 1, 41000 + i)))
        .collect()
}

fn total_bytes(out: &[Output]) -> usize {
    out.iter()
        .map(|o| match o {
            Output::Udp { payload, .. } | Output::Tcp { payload, .. } => payload.len(),
            Output::DialTcp { payload, .. } => payload.len(),
            Output::Close(_) => 0,
        })
        .sum()
}

#[test]
fn register_joining_a_peer_with_8_ipv6_candidates_stays_within_4x() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let listener = sa("198.51.100.1:4000");
    let connector = sa("198.51.100.2:5000");
    let many = v6_candidates(8);
    register(
        &mut r,
        t,
        "198.51.100.1:4000",
        Role::Listener,
        1,
        many.clone(),
    );
    // The smallest Register there is: no token, no candidates, no trailer. Over UDP it would
    // get only a cookie (see `spoofed_registers_get_a_cookie_and_no_slot`); over TCP (conn 1,
    // the connector's) it is served as it is.
    let req = Frame::Register {
        session: [9; 16],
        role: Role::Connector,
        peer: [2; 8],
        token: vec![],
        candidates: vec![],
    }
    .emit();
    assert_eq!(req.len(), 31);
    r.handle_tcp(now(t), 1, connector, &req);
    let out: Vec<Output> = drain(&mut r)
        .into_iter()
        .map(|o| match o {
            Output::Tcp { conn: 1, payload } => Output::Udp {
                src: sa(P),
                dst: connector,
                payload,
            },
            o => o,
        })
        .collect();
    // Everything this one request made the relay send, to anyone.
    let sent = total_bytes(&out);
    assert!(
        sent <= req.len() * MAX_AMPLIFICATION,
        "{sent} bytes for a {}-byte request",
        req.len()
    );
    let f = frames(&out);
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(matches!(
        f[0],
        (
            d,
            Frame::Registered {
                peer_present: true,
                ..
            }
        ) if d == connector
    ));
    // The observed address always goes; the candidates as far as the budget allows (here:
    // 124 - 12 Registered - 21 Peer to the listener (12, and the 9-byte trailer echoing its
    // transaction id) - 12 bare Peer = 79 bytes, 4 × 19).
    let Frame::Peer {
        observed,
        candidates,
    } = &f[1].1
    else {
        panic!("{f:?}")
    };
    assert_eq!(f[1].0, connector);
    assert_eq!(*observed, listener);
    assert_eq!(candidates, &many[..4]);
    assert_eq!(r.metrics().peer_candidates_trimmed, 4);
    assert!(r
        .metrics()
        .render(1)
        .contains("natkit_relay_peer_candidates_trimmed_total 4"));
    // The listener still gets the connector's (whole, empty) list.
    assert_eq!(
        f[2],
        (
            listener,
            Frame::Peer {
                observed: connector,
                candidates: vec![]
            }
        )
    );
    // Without the bound this was 176 bytes (5.7×): the test can fail.
    let unbounded = Frame::Registered {
        observed: connector,
        peer_present: true,
    }
    .emit()
    .len()
        + Frame::Peer {
            observed: listener,
            candidates: many,
        }
        .emit()
        .len();
    assert!(unbounded > req.len() * MAX_AMPLIFICATION);
}

/// Every combination of families and candidate counts: whatever one Register makes the relay
/// send stays within 4× of it, the observed address always goes, and the candidates that go
/// keep their order.
#[test]
fn register_answers_are_bounded_for_every_mix_of_families_and_counts() {
    let t = Instant::now();
    let froms = [
        ("198.51.100.1:4000", "198.51.100.2:5000"),
        ("[2001:db8:1::1]:4000", "[2001:db8:2::2]:5000"),
        ("198.51.100.1:4000", "[2001:db8:2::2]:5000"),
        ("[2001:db8:1::1]:4000", "198.51.100.2:5000"),
    ];
    let mut checked = 0;
    for (lfrom, cfrom) in froms {
        for theirs_v6 in [false, true] {
            for mine_v6 in [false, true] {
                for n_theirs in 0..=8 {
                    for n_mine in 0..=8 {
                        let mut r = Relay::new(cfg(true), t, 1);
                        let mk = |v6: bool, n| {
                            if v6 {
                                v6_candidates(n)
                            } else {
                                v4_candidates(n)
                            }
                        };
                        let theirs = mk(theirs_v6, n_theirs);
                        register(&mut r, t, lfrom, Role::Listener, 1, theirs.clone());
                        let req = Frame::Register {
                            session: [9; 16],
                            role: Role::Connector,
                            peer: [2; 8],
                            token: vec![],
                            candidates: mk(mine_v6, n_mine),
                        };
                        let req = echo(&r, sa(cfrom), &req);
                        r.handle_udp(now(t), sa(P), sa(cfrom), &req);
                        let out = drain(&mut r);
                        assert!(total_bytes(&out) <= req.len() * MAX_AMPLIFICATION);
                        let got = frames(&out)
                            .into_iter()
                            .find_map(|(d, f)| match f {
                                Frame::Peer {
                                    observed,
                                    candidates,
                                } if d == sa(cfrom) => Some((observed, candidates)),
                                _ => None,
                            })
                            .expect("a Peer frame to the sender");
                        assert_eq!(got.0, sa(lfrom));
                        // An order-keeping subsequence of the other peer's list.
                        let mut it = theirs.iter();
                        assert!(got.1.iter().all(|c| it.any(|x| x == c)));
                        // What the rustdoc promises always fits.
                        let floor = if theirs_v6 { 2 } else { 7 };
                        assert!(got.1.len() >= n_theirs.min(floor), "{got:?}");
                        if !theirs_v6 && sa(lfrom).is_ipv4() && sa(cfrom).is_ipv4() {
                            assert_eq!(got.1, theirs);
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 4 * 2 * 2 * 9 * 9);
}

#[test]
fn candidates_within_keeps_order_and_skips_what_does_not_fit() {
    let v6 = v6_candidates(2);
    let v4 = v4_candidates(2);
    let list = vec![v6[0], v6[1], v4[0], v4[1]];
    assert_eq!(candidates_within(0, &list), (vec![], 4));
    assert_eq!(candidates_within(19, &list), (vec![v6[0]], 3));
    // 19 + 7 + 7 = 33: the second IPv6 does not fit, the IPv4 after it do.
    assert_eq!(candidates_within(33, &list), (vec![v6[0], v4[0], v4[1]], 1));
    assert_eq!(candidates_within(52, &list), (list.clone(), 0));
}

#[test]
fn a_valid_token_lifts_the_candidate_budget() {
    let t = Instant::now();
    let mut c = cfg(true);
    c.secret = Some(b"s3cret".to_vec());
    let mut r = Relay::new(c, t, 1);
    let tok = make_token(b"s3cret", now(t).unix + 60);
    let many = v6_candidates(8);
    for (from, role, peer, cands) in [
        ("198.51.100.1:4000", Role::Listener, 1, many.clone()),
        ("198.51.100.2:5000", Role::Connector, 2, vec![]),
    ] {
        let f = Frame::Register {
            session: [9; 16],
            role,
            peer: [peer; 8],
            token: tok.clone(),
            candidates: cands,
        };
        r.handle_udp(now(t), sa(P), sa(from), &echo(&r, sa(from), &f));
    }
    let f = frames(&drain(&mut r));
    assert!(f.contains(&(
        sa("198.51.100.2:5000"),
        Frame::Peer {
            observed: sa("198.51.100.1:4000"),
            candidates: many
        }
    )));
    assert_eq!(r.metrics().peer_candidates_trimmed, 0);
}

/// punch's own rendezvous client, through the relay core: a normal punch (1 to 3 IPv4
/// candidates each side) gets every candidate of the other side, whichever registers first.
#[test]
fn a_normal_punch_gets_all_candidates_of_both_sides() {
    use crate::proto::punch::{PunchConfig, RvClient, RvEvent};
    let t = Instant::now();
    let listener = sa("198.51.100.1:4000");
    let connector = sa("198.51.100.2:5000");
    for nl in 1..=3 {
        for nc in 1..=3 {
            let mut r = Relay::new(cfg(true), t, 1);
            let cands = |base: u8, n: usize| -> Vec<SocketAddr> {
                (0..n)
                    .map(|i| sa(&format!("192.168.{base}.{}:{}", i + 2, 50000 + i)))
                    .collect()
            };
            let (lc, cc) = (cands(1, nl), cands(2, nc));
            let pc = |role, peer, candidates| PunchConfig {
                relay: sa(P),
                session: [7; 16],
                role,
                peer: [peer; 8],
                token: vec![],
                candidates,
                direct_timeout: Duration::from_secs(3),
                keepalive: Duration::from_secs(15),
            };
            let mut clients = [
                (
                    listener,
                    RvClient::new(pc(Role::Listener, 1, lc.clone()), t),
                ),
                (
                    connector,
                    RvClient::new(pc(Role::Connector, 2, cc.clone()), t),
                ),
            ];
            // Listener's Register first, then the connector's; deliver every answer (the
            // first answer to each is the relay's cookie, and the client registers again).
            for k in 0..2 {
                loop {
                    let (from, c) = &mut clients[k];
                    let mut sent = false;
                    while let Some((dst, bytes)) = c.poll_transmit() {
                        assert_eq!(dst, sa(P));
                        r.handle_udp(now(t), sa(P), *from, &bytes);
                        sent = true;
                    }
                    if !sent {
                        break;
                    }
                    for o in drain(&mut r) {
                        let (src, dst, payload) = udp(&o);
                        let (_, c) = clients.iter_mut().find(|(a, _)| *a == dst).unwrap();
                        assert!(c.handle_datagram(t, src, payload));
                    }
                }
            }
            let peer_of = |c: &mut RvClient| {
                std::iter::from_fn(|| c.poll_event()).find_map(|e| match e {
                    RvEvent::Peer {
                        observed,
                        candidates,
                    } => Some((observed, candidates)),
                    _ => None,
                })
            };
            assert_eq!(peer_of(&mut clients[0].1), Some((connector, cc)));
            assert_eq!(peer_of(&mut clients[1].1), Some((listener, lc)));
            assert_eq!(r.metrics().peer_candidates_trimmed, 0);
        }
    }
}

// ---- Caps and quotas (issue 2 item 5), on a fake clock ----

fn cfg_with(f: impl FnOnce(&mut Limits)) -> RelayConfig {
    let mut c = cfg(true);
    f(&mut c.limits);
    c
}

fn register_in(
    r: &mut Relay,
    t: Instant,
    from: &str,
    session: u8,
    role: Role,
    peer: u8,
) -> Vec<(SocketAddr, Frame)> {
    let f = Frame::Register {
        session: [session; 16],
        role,
        peer: [peer; 8],
        token: vec![],
        candidates: vec![],
    };
    r.handle_udp(now(t), sa(P), sa(from), &echo(r, sa(from), &f));
    frames(&drain(r))
}

fn is_limit(f: &[(SocketAddr, Frame)], reason: &str) -> bool {
    matches!(f, [(_, Frame::Error { code: ErrorCode::Limit, reason: r })] if r == reason)
}

#[test]
fn total_sessions_cap() {
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.max_sessions = 3), t, 1);
    for i in 1..=3u8 {
        let f = register_in(
            &mut r,
            t,
            &format!("198.51.100.{i}:4000"),
            i,
            Role::Listener,
            i,
        );
        assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    }
    assert_eq!(r.sessions(), 3);
    assert_eq!(r.metrics().drops_for(Drop::Limit), 0);
    // At the cap: a new session is refused, with the Limit error and the drop counted.
    let f = register_in(&mut r, t, "198.51.100.4:4000", 4, Role::Listener, 4);
    assert!(is_limit(&f, "relay full"), "{f:?}");
    assert_eq!(f[0].0, sa("198.51.100.4:4000"));
    assert_eq!(r.sessions(), 3);
    assert_eq!(r.metrics().drops_for(Drop::Limit), 1);
    assert!(r
        .metrics()
        .render(r.sessions())
        .contains("natkit_relay_drops_total{reason=\"limit\"} 1"));
    // Joining an existing session is not a new session: still served at the cap.
    let f = register_in(&mut r, t, "198.51.100.5:5000", 1, Role::Connector, 5);
    assert!(
        matches!(
            f[0].1,
            Frame::Registered {
                peer_present: true,
                ..
            }
        ),
        "{f:?}"
    );
    // A session that ends frees its place.
    r.handle_udp(
        now(t),
        sa(P),
        sa("198.51.100.3:4000"),
        &Frame::Bye {
            session: [3; 16],
            peer: [3; 8],
        }
        .emit(),
    );
    assert_eq!(r.sessions(), 2);
    let f = register_in(&mut r, t, "198.51.100.4:4000", 4, Role::Listener, 4);
    assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    assert_eq!(r.metrics().sessions_created, 4);
}

#[test]
fn sessions_per_source_cap() {
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.sessions_per_source = 2), t, 1);
    // Two sessions from one IP (different ports): fine.
    for (i, port) in [(1u8, 4000), (2, 4001)] {
        let f = register_in(
            &mut r,
            t,
            &format!("198.51.100.1:{port}"),
            i,
            Role::Listener,
            i,
        );
        assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    }
    // A third from the same IP, from yet another port: refused.
    let f = register_in(&mut r, t, "198.51.100.1:4002", 3, Role::Listener, 3);
    assert!(is_limit(&f, "too many sessions from this address"), "{f:?}");
    assert_eq!(r.metrics().drops_for(Drop::Limit), 1);
    // The same IP spelled as IPv4-mapped IPv6 is the same source.
    let f = register_in(
        &mut r,
        t,
        "[::ffff:198.51.100.1]:4003",
        3,
        Role::Listener,
        3,
    );
    assert!(is_limit(&f, "too many sessions from this address"), "{f:?}");
    assert_eq!(r.metrics().drops_for(Drop::Limit), 2);
    assert_eq!(r.sessions(), 2);
    // Another source is served.
    let f = register_in(&mut r, t, "198.51.100.2:4000", 3, Role::Listener, 3);
    assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    // Re-registering in a session it already holds is a refresh, not a new session.
    let f = register_in(&mut r, t, "198.51.100.1:4000", 1, Role::Listener, 1);
    assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    assert_eq!(r.sessions(), 3);
    assert_eq!(r.metrics().drops_for(Drop::Limit), 2);
}

/// Issue 12 #7: a full source table evicts the least recently used source instead of
/// refusing every new one (before: the third source got nothing, `sources_full` counted).
#[test]
fn max_sources_cap_evicts_the_least_recently_used() {
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.max_sources = 2), t, 1);
    let req = stun::binding_request([1; 12], Change::NONE);
    let ask = |r: &mut Relay, at: Instant, from: &str| {
        r.handle_udp(now(at), sa(P), sa(from), &req);
        drain(r).len()
    };
    assert_eq!(ask(&mut r, t, "198.51.100.1:1000"), 1);
    assert_eq!(ask(&mut r, t, "198.51.100.2:1000"), 1);
    // .1 is used again: .2 is now the least recently used.
    assert_eq!(ask(&mut r, t, "198.51.100.1:2000"), 1);
    // A third source while two are tracked: served, and .2 evicted.
    assert_eq!(ask(&mut r, t, "198.51.100.3:1000"), 1);
    assert_eq!(r.metrics().drops_for(Drop::SourcesFull), 0);
    assert_eq!(r.metrics().sources_evicted, 1);
    assert_eq!(r.buckets.len(), 2);
    assert!(r
        .metrics()
        .render(0)
        .contains("natkit_relay_sources_evicted_total 1"));
    // Rendezvous frames count against the same table, and are served too.
    let f = register_in(&mut r, t, "198.51.100.4:1000", 1, Role::Listener, 1);
    assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    assert_eq!(r.metrics().sources_evicted, 2);
    // A flooding source evicted and back starts with a full bucket, but that is all it gains:
    // its bucket (burst 100) empties again and it is rate limited.
    let mut r = Relay::new(cfg_with(|l| l.max_sources = 1000), t, 1);
    let mut served = 0;
    for i in 0..200u32 {
        served += ask(&mut r, t, "198.51.100.9:1000");
        // 999 other sources would be needed to evict it; 10 are not enough.
        served += ask(&mut r, t, &format!("198.51.101.{}:1000", i % 10));
    }
    assert_eq!(
        served,
        100 + 200,
        "the flooder's burst, and all 20 asks of each of the ten"
    );
}

/// Issue 12 #7 and #3: IPv6 sources count per /64, for rate limits and session caps.
#[test]
fn ipv6_sources_count_per_64() {
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.sessions_per_source = 2), t, 1);
    for (i, from) in [
        (1u8, "[2001:db8:1:2::1]:4000"),
        (2, "[2001:db8:1:2::2]:4000"),
    ] {
        let f = register_in(&mut r, t, from, i, Role::Listener, i);
        assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    }
    // Another address of the same /64: the same source, at its cap.
    let f = register_in(
        &mut r,
        t,
        "[2001:db8:1:2:ffff::9]:4000",
        3,
        Role::Listener,
        3,
    );
    assert!(is_limit(&f, "too many sessions from this address"), "{f:?}");
    // Another /64 is another source.
    let f = register_in(&mut r, t, "[2001:db8:1:3::1]:4000", 3, Role::Listener, 3);
    assert!(matches!(f[0].1, Frame::Registered { .. }), "{f:?}");
    // The rate limit counts the /64 as one source: 100 requests from 100 addresses of one
    // /64 use up one burst, and the 101st is limited.
    let mut r = Relay::new(cfg(true), t, 1);
    let req = stun::binding_request([1; 12], Change::NONE);
    for i in 0..101u32 {
        r.handle_udp(now(t), sa(P), sa(&format!("[2001:db8:9:9::{i:x}]:1")), &req);
    }
    assert_eq!(drain(&mut r).len(), 100);
    assert_eq!(r.metrics().drops_for(Drop::RateLimited), 1);
}

/// Issue 12 #3: one source cannot hold more sides of sessions than its cap, whatever role it
/// takes: a squatter joining every listener's session as connector is stopped at the cap,
/// and leaving frees its places (counters, kept exact through Bye, expiry and TCP close).
#[test]
fn one_source_cannot_hold_more_than_its_cap() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    // 40 honest listeners, each from its own address.
    for i in 0..40u8 {
        register_in(
            &mut r,
            t,
            &format!("198.51.100.{i}:4000"),
            i,
            Role::Listener,
            i,
        );
    }
    let mut joined = 0;
    for i in 0..40u8 {
        let f = register_in(
            &mut r,
            t,
            &format!("203.0.113.66:{}", 1000 + i as u16),
            i,
            Role::Connector,
            200,
        );
        if matches!(f[0].1, Frame::Registered { .. }) {
            joined += 1;
        } else {
            assert!(
                is_limit(&f[..1], "too many sessions from this address"),
                "{f:?}"
            );
        }
    }
    assert_eq!(joined, defaults::RELAY_SESSIONS_PER_SOURCE);
    assert_eq!(r.slots_of("203.0.113.66".parse().unwrap()), joined);
    // Leaving one session frees one place.
    r.handle_udp(
        now(t),
        sa(P),
        sa("203.0.113.66:1000"),
        &Frame::Bye {
            session: [0; 16],
            peer: [200; 8],
        }
        .emit(),
    );
    drain(&mut r);
    assert_eq!(r.slots_of("203.0.113.66".parse().unwrap()), joined - 1);
    // Idle expiry gives every place back.
    r.handle_timeout(t + Duration::from_secs(3600));
    assert_eq!(r.sessions(), 0);
    assert!(r.per_source.is_empty(), "{:?}", r.per_source);
}

/// Issue 12 #5: dial-backs are capped globally (20 a second, whatever the number of
/// sources), their per-source table is bounded, and with --secret only a registered source
/// may ask.
#[test]
fn dial_backs_are_capped_globally_and_need_a_registration_with_a_secret() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let ask = Frame::DialBack {
        proto: 6,
        port: 8080,
        nonce: 1,
    };
    let n = defaults::RELAY_DIAL_SOURCES + 500;
    for i in 0..n {
        let from = SocketAddr::from(([198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
        r.handle_udp(now(t), sa(P), from, &echo(&r, from, &ask));
    }
    let dials = drain(&mut r)
        .iter()
        .filter(|o| matches!(o, Output::DialTcp { .. }))
        .count();
    assert_eq!(dials as u32, defaults::RELAY_DIALBACKS_PER_SEC);
    assert!(r.dial_buckets.len() <= defaults::RELAY_DIAL_SOURCES);
    // One second later the global budget has refilled.
    let later = t + Duration::from_secs(1);
    let from = sa("198.51.100.200:4000");
    r.handle_udp(now(later), sa(P), from, &echo(&r, from, &ask));
    assert!(drain(&mut r)
        .iter()
        .any(|o| matches!(o, Output::DialTcp { .. })));
    // With --secret: refused without a registration, served with one.
    let mut c = cfg(true);
    c.secret = Some(b"0123456789abcdef0123456789abcdef".to_vec());
    let mut r = Relay::new(c, t, 1);
    let from = sa("198.51.100.1:4000");
    r.handle_udp(now(t), sa(P), from, &echo(&r, from, &ask));
    let f = frames(&drain(&mut r));
    assert!(
        matches!(
            &f[..],
            [(
                _,
                Frame::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            )]
        ),
        "{f:?}"
    );
    let token = make_token(b"0123456789abcdef0123456789abcdef", 1_800_000_100);
    let reg = Frame::Register {
        session: [1; 16],
        role: Role::Listener,
        peer: [1; 8],
        token,
        candidates: vec![],
    };
    r.handle_udp(now(t), sa(P), from, &echo(&r, from, &reg));
    drain(&mut r);
    let from = sa("198.51.100.1:4001");
    r.handle_udp(now(t), sa(P), from, &echo(&r, from, &ask));
    assert!(drain(&mut r)
        .iter()
        .any(|o| matches!(o, Output::DialTcp { .. })));
}

fn pair(r: &mut Relay, t: Instant) -> (SocketAddr, SocketAddr) {
    let (a, b) = (sa("198.51.100.1:4000"), sa("198.51.100.2:5000"));
    register_in(r, t, "198.51.100.1:4000", 9, Role::Listener, 1);
    register_in(r, t, "198.51.100.2:5000", 9, Role::Connector, 2);
    (a, b)
}

fn data(n: usize) -> Vec<u8> {
    Frame::Data {
        session: [9; 16],
        payload: vec![0xab; n],
    }
    .emit()
}

#[test]
fn byte_quota_ends_the_session_when_used_up() {
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.session_bytes = 1000), t, 1);
    let (a, b) = pair(&mut r, t);
    // The driver's fast path: (src, dst) when relayed.
    for n in [400, 400, 200] {
        assert_eq!(r.forward_udp(now(t), sa(P), a, &data(n)), Some((sa(P), b)));
    }
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.metrics().relayed_bytes, 1000);
    assert_eq!(r.metrics().drops_for(Drop::Limit), 0);
    // Exactly 1000 payload bytes went; one more byte is over the quota: not relayed, the
    // session ends, its sender is told.
    assert_eq!(r.forward_udp(now(t), sa(P), b, &data(1)), None);
    let f = frames(&drain(&mut r));
    assert!(is_limit(&f, "session quota used up"), "{f:?}");
    assert_eq!(f[0].0, b);
    assert_eq!(r.sessions(), 0);
    assert_eq!(r.metrics().drops_for(Drop::Limit), 1);
    assert_eq!(r.metrics().relayed_bytes, 1000);
    assert_eq!(r.metrics().relayed_packets, 3);
    // Nothing more is relayed in either direction.
    assert_eq!(r.forward_udp(now(t), sa(P), a, &data(1)), None);
    r.handle_udp(now(t), sa(P), a, &data(1));
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.metrics().drops_for(Drop::NoSession), 2);
    assert_eq!(r.metrics().relayed_packets, 3);
}

#[test]
fn time_quota_expires_the_session_at_the_right_instant() {
    let t = Instant::now();
    let life = Duration::from_secs(10);
    let c = cfg_with(|l| {
        l.session_secs = 10;
        l.idle_secs = 3600;
    });
    // By the timer: alive 1 ms before the end, gone at the end.
    let mut r = Relay::new(c.clone(), t, 1);
    let (a, b) = pair(&mut r, t);
    let before = t + life - Duration::from_millis(1);
    r.handle_timeout(t + Duration::from_secs(5));
    r.handle_timeout(before);
    assert_eq!(r.sessions(), 1);
    assert_eq!(
        r.forward_udp(now(before), sa(P), a, &data(10)),
        Some((sa(P), b))
    );
    assert!(
        r.poll_timeout() <= t + life,
        "the timer wakes up for the end"
    );
    r.handle_timeout(t + life);
    assert_eq!(r.sessions(), 0);
    assert_eq!(r.forward_udp(now(t + life), sa(P), a, &data(10)), None);
    assert_eq!(r.metrics().drops_for(Drop::NoSession), 1);
    // By the data itself, with no timer run: relayed 1 ms before, refused at the end.
    let mut r = Relay::new(c, t, 1);
    let (a, b) = pair(&mut r, t);
    assert_eq!(
        r.forward_udp(now(before), sa(P), b, &data(10)),
        Some((sa(P), a))
    );
    assert_eq!(r.forward_udp(now(t + life), sa(P), b, &data(10)), None);
    let f = frames(&drain(&mut r));
    assert!(is_limit(&f, "session quota used up"), "{f:?}");
    assert_eq!(r.sessions(), 0);
    assert_eq!(r.metrics().drops_for(Drop::Limit), 1);
    assert_eq!(r.metrics().relayed_packets, 1);
}

#[test]
fn a_huge_time_quota_does_not_overflow_the_timer() {
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.session_secs = u64::MAX), t, 1);
    pair(&mut r, t);
    assert!(r.poll_timeout() <= t + Duration::from_secs(1));
    r.handle_timeout(t + Duration::from_secs(1));
    assert_eq!(r.sessions(), 1);
}

/// Issue 12 (low): a token expiring beyond the 30-day cap is refused even when its MAC is
/// right, and making one for huge SECS is refused instead of overflowing.
#[test]
fn token_lifetime_is_capped_and_never_overflows() {
    let k = b"0123456789abcdef";
    let n = 1_800_000_000;
    let max = defaults::RELAY_TOKEN_MAX_SECS;
    assert!(token::token_valid(k, &make_token(k, n + max), n));
    assert!(!token::token_valid(k, &make_token(k, n + max + 1), n));
    assert!(!token::token_valid(k, &make_token(k, u64::MAX), n));
    assert_eq!(token_for(k, n, u64::MAX), None);
    assert_eq!(token_for(k, u64::MAX, 1), None);
    assert_eq!(token_for(k, n, 60), Some(make_token(k, n + 60)));
    assert!(!secret_strong_enough(b""));
    assert!(!secret_strong_enough(b"hunter2"));
    assert!(secret_strong_enough(k));
}

/// Issue 12 #6: over UDP, a Register or DialBack that does not echo the cookie for its source
/// gets only a cookie (no larger than the request), no slot and no dial-back; spoofed
/// sources cannot fill --max-sessions. Before: 20,000 spoofed Registers held 10,000 sessions.
#[test]
fn spoofed_registers_get_a_cookie_and_no_slot() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let reg = |peer: u8| Frame::Register {
        session: [peer; 16],
        role: Role::Listener,
        peer: [peer; 8],
        token: vec![],
        candidates: vec![],
    };
    for i in 0..20_000u32 {
        let from = SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 4000 + (i >> 16) as u16));
        let req = reg(i as u8).emit();
        r.handle_udp(now(t), sa(P), from, &req);
        let out = drain(&mut r);
        let [Output::Udp { dst, payload, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(*dst, from);
        assert!(
            payload.len() <= req.len(),
            "{} > {}",
            payload.len(),
            req.len()
        );
        assert_eq!(Frame::parse(payload), Ok(Frame::Cookie));
    }
    assert_eq!(r.sessions(), 0);
    assert!(r.per_source.is_empty());
    // A DialBack without the cookie: a cookie, no probe.
    let me = sa("198.51.100.1:4000");
    let ask = Frame::DialBack {
        proto: 6,
        port: 8080,
        nonce: 1,
    };
    r.handle_udp(now(t), sa(P), me, &ask.emit());
    let out = drain(&mut r);
    assert!(out.iter().all(|o| !matches!(o, Output::DialTcp { .. })));
    // The honest round trip: the cookie comes with our transaction id, and echoing it works.
    let first = reg(1).emit_with(Some(&Trailer {
        tx: 99,
        cookie: vec![],
    }));
    r.handle_udp(now(t), sa(P), me, &first);
    let out = drain(&mut r);
    let (_, _, b) = udp(&out[0]);
    let (f, Some(tr)) = Frame::parse_with(b).unwrap() else {
        panic!("no trailer")
    };
    assert_eq!((f, tr.tx), (Frame::Cookie, 99));
    let again = |r: &mut Relay, from: SocketAddr, unix: u64, cookie: &[u8]| {
        let b = reg(1).emit_with(Some(&Trailer {
            tx: 99,
            cookie: cookie.to_vec(),
        }));
        r.handle_udp(Now { mono: t, unix }, sa(P), from, &b);
        frames(&drain(r)).remove(0).1
    };
    // Not for another address (even another port of the same IP), nor two windows later.
    let unix = now(t).unix;
    let w = defaults::RELAY_COOKIE_WINDOW_SECS;
    assert_eq!(
        again(&mut r, sa("198.51.100.1:4001"), unix, &tr.cookie),
        Frame::Cookie
    );
    assert_eq!(again(&mut r, me, unix + 2 * w, &tr.cookie), Frame::Cookie);
    assert_eq!(r.sessions(), 0);
    // In the next window it still works.
    assert!(matches!(
        again(&mut r, me, unix + w, &tr.cookie),
        Frame::Registered { .. }
    ));
    assert_eq!(r.sessions(), 1);
    assert_eq!(r.metrics().cookies_sent, 20_004);
    // TCP needs no cookie: its handshake proved the source.
    r.handle_tcp(now(t), 1, sa("198.51.100.2:4000"), &reg(2).emit());
    assert!(matches!(drain(&mut r)[0], Output::Tcp { .. }));
    assert_eq!(r.sessions(), 2);
}

/// Issue 12 (low): every answer to a request with a transaction id echoes it, and a Peer
/// frame to the other side carries that side's own transaction id, so clients can tell the
/// relay's answers from off-path forgeries.
#[test]
fn answers_echo_the_transaction_id_of_their_request() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t, 1);
    let (a, b) = (sa("198.51.100.1:4000"), sa("198.51.100.2:4000"));
    let send = |r: &mut Relay, from: SocketAddr, role, peer: u8, tx| {
        let f = Frame::Register {
            session: [1; 16],
            role,
            peer: [peer; 8],
            token: vec![],
            candidates: vec![],
        };
        let cookie = r.cookies.make(from, now(t).unix);
        r.handle_udp(
            now(t),
            sa(P),
            from,
            &f.emit_with(Some(&Trailer { tx, cookie })),
        );
        drain(r)
            .iter()
            .map(|o| {
                let (_, dst, p) = udp(o);
                let (f, tr) = Frame::parse_with(p).unwrap();
                (dst, f, tr.map(|t| t.tx))
            })
            .collect::<Vec<_>>()
    };
    let out = send(&mut r, a, Role::Listener, 1, 11);
    assert!(matches!(&out[..], [(d, Frame::Registered { .. }, Some(11))] if *d == a));
    let out = send(&mut r, b, Role::Connector, 2, 22);
    for (dst, f, tx) in &out {
        let want = if *dst == a { 11 } else { 22 };
        assert_eq!(*tx, Some(want), "{f:?} to {dst}");
    }
    assert_eq!(out.len(), 3);
    // An error answers with the request's id too.
    let out = send(&mut r, sa("198.51.100.3:4000"), Role::Listener, 3, 33);
    assert!(
        matches!(&out[..], [(_, Frame::Error { .. }, Some(33))]),
        "{out:?}"
    );
}

/// Runs one listener's nameplate claim (as `net::punch::nameplate` does) through the relay
/// core: registers from `from` with a fresh peer id per draw, draws again while the outcome
/// says so; returns the code it holds and how many draws it took.
fn claim_through(
    r: &mut Relay,
    t: Instant,
    from: SocketAddr,
    rng: &mut rand::rngs::StdRng,
) -> (crate::proto::punch::code::Code, usize) {
    use crate::proto::punch::code::Code;
    use crate::proto::punch::rendezvous::Claim;
    use crate::proto::punch::{PunchConfig, RvClient};
    let mut code = Code::generate(rng);
    for draws in 1..=defaults::NAMEPLATE_DRAWS {
        let mut rv = RvClient::new(
            PunchConfig {
                relay: sa(P),
                session: code.session_id(),
                role: Role::Listener,
                peer: rng.gen(),
                token: vec![],
                candidates: vec![],
                direct_timeout: Duration::from_secs(3),
                keepalive: Duration::from_secs(15),
            },
            t,
        );
        let outcome = loop {
            while let Some((_, b)) = rv.poll_transmit() {
                r.handle_udp(now(t), sa(P), from, &b);
            }
            for o in drain(r) {
                let (src, dst, b) = udp(&o);
                if dst == from {
                    rv.handle_datagram(t, src, b);
                }
            }
            if let Some(c) =
                std::iter::from_fn(|| rv.poll_event()).find_map(|e| Claim::from_event(&e))
            {
                break c;
            }
        };
        match outcome {
            Claim::Held => return (code, draws),
            Claim::DrawAgain => code = Code::generate(rng),
            other => panic!("{other:?}"),
        }
    }
    panic!("no free nameplate");
}

/// Issue 12 #3: 10,000 concurrent listeners, each drawing its own code and claiming its
/// nameplate before showing it, all hold distinct nameplates; a nameplate where a squatter
/// waits is left for another draw, and the squatter's source holds no more than its cap.
/// Before (999 nameplates, no claim): with 10,000 listeners at most 999 could hold one, and
/// a squatter was paired with the first listener drawing its nameplate.
#[test]
fn ten_thousand_listeners_hold_distinct_nameplates_and_squatters_are_skipped() {
    use rand::SeedableRng;
    let t = Instant::now();
    let mut r = Relay::new(cfg_with(|l| l.max_sessions = 20_000), t, 1);
    // A squatter (one source) waits as connector on the nameplate the first listener's first
    // draw will be, and on as many others as it may.
    let mut peek = rand::rngs::StdRng::seed_from_u64(42);
    let first = crate::proto::punch::code::Code::generate(&mut peek);
    let squatter = sa("203.0.113.66:1000");
    let mut held = 0;
    for i in 0..100u32 {
        let f = Frame::Register {
            session: crate::proto::punch::code::Code::parse(&format!(
                "{}-acid-acid",
                first.nameplate + i
            ))
            .unwrap()
            .session_id(),
            role: Role::Connector,
            peer: [66; 8],
            token: vec![],
            candidates: vec![],
        };
        r.handle_udp(now(t), sa(P), squatter, &echo(&r, squatter, &f));
        held += frames(&drain(&mut r))
            .iter()
            .filter(|(_, f)| matches!(f, Frame::Registered { .. }))
            .count();
    }
    assert_eq!(held, defaults::RELAY_SESSIONS_PER_SOURCE);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut nameplates = std::collections::HashSet::new();
    let mut extra_draws = 0;
    for i in 0..10_000u32 {
        let from = SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 4000));
        let (code, draws) = claim_through(&mut r, t, from, &mut rng);
        if i == 0 {
            assert_ne!(
                code.nameplate, first.nameplate,
                "the squatted nameplate was kept"
            );
            assert!(draws >= 2);
        }
        extra_draws += draws - 1;
        assert!(nameplates.insert(code.nameplate), "{code} given twice");
    }
    assert_eq!(nameplates.len(), 10_000);
    assert_eq!(r.sessions(), 10_000 + defaults::RELAY_SESSIONS_PER_SOURCE);
    eprintln!("10,000 listeners: {extra_draws} extra draws");
}

/// Issue 12 (low): `poll_timeout` and `tcp_closed` no longer scan every session under the
/// driver's lock. 100,000 sessions held over TCP (one connection each), then 2,000 calls of
/// each: measured in a debug build, 52.8 s before (two full scans per pair), 10-25 ms after.
/// The closed connections' slots and sessions go, the others stay, and timers still fire.
#[test]
fn closing_connections_and_polling_timers_do_not_scan_every_session() {
    let t = Instant::now();
    let n = 100_000u32;
    let mut r = Relay::new(
        cfg_with(|l| {
            l.max_sessions = 200_000;
            l.max_sources = 200_000;
            // Not idle before their time quota, so the quota's timer is what ends them.
            l.idle_secs = 2 * defaults::RELAY_SESSION_SECS;
        }),
        t,
        1,
    );
    for i in 0..n {
        let from = SocketAddr::from(([198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
        let mut session = [0u8; 16];
        session[..4].copy_from_slice(&i.to_be_bytes());
        let f = Frame::Register {
            session,
            role: Role::Listener,
            peer: [1; 8],
            token: vec![],
            candidates: vec![],
        };
        r.handle_tcp(now(t), i as u64, from, &f.emit());
    }
    drain(&mut r);
    assert_eq!(r.sessions(), n as usize);
    let started = Instant::now();
    let mut earliest = t + Duration::from_secs(100_000);
    for c in 0..2_000u64 {
        earliest = earliest.min(r.poll_timeout());
        r.tcp_closed(c);
    }
    let took = started.elapsed();
    eprintln!("2,000 poll_timeout + tcp_closed with {n} sessions: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(r.sessions(), n as usize - 2_000);
    assert!(earliest <= t + defaults::RELAY_SWEEP_INTERVAL);
    assert_eq!(r.slots_of("198.18.0.5".parse().unwrap()), 0);
    assert_eq!(r.slots_of("198.18.100.5".parse().unwrap()), 1);
    // The time quota still ends every session at its instant (the timer queue).
    let end = t + Duration::from_secs(defaults::RELAY_SESSION_SECS);
    r.handle_timeout(end - Duration::from_millis(1));
    assert_eq!(r.sessions(), n as usize - 2_000);
    r.handle_timeout(end);
    assert_eq!(r.sessions(), 0);
    assert!(r.per_source.is_empty() && r.ends.is_empty());
}

/// A classic (RFC 3489) Binding request as pystun3 sends it: no magic cookie, 16-byte id.
fn classic_request(flags: Option<u32>) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, if flags.is_some() { 8 } else { 0 }];
    m.extend_from_slice(&[0xC1; 16]);
    if let Some(f) = flags {
        m.extend_from_slice(&[0x00, 0x03, 0x00, 0x04]);
        m.extend_from_slice(&f.to_be_bytes());
    }
    m
}

/// The address attributes of a classic answer by type: (MAPPED, SOURCE, CHANGED).
fn classic_addrs(b: &[u8]) -> [Option<SocketAddr>; 3] {
    let mut out = [None; 3];
    let mut rest = &b[20..];
    while rest.len() >= 12 {
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let port = u16::from_be_bytes([rest[6], rest[7]]);
        let ip = std::net::Ipv4Addr::new(rest[8], rest[9], rest[10], rest[11]);
        let slot = match t {
            1 => 0,
            4 => 1,
            5 => 2,
            _ => panic!("unexpected attribute {t:#x}"),
        };
        out[slot] = Some(SocketAddr::new(ip.into(), port));
        rest = &rest[12..];
    }
    out
}

/// One classic exchange at `local`: (answer's source, CHANGED-ADDRESS), after checking the
/// answer's shape.
fn classic_exchange(
    r: &mut Relay,
    local: SocketAddr,
    flags: Option<u32>,
) -> (SocketAddr, SocketAddr) {
    let client = sa("198.51.100.7:5000");
    let req = classic_request(flags);
    r.handle_udp(now(Instant::now()), local, client, &req);
    let out = drain(r);
    let (src, dst, bytes) = udp(&out[0]);
    assert_eq!(dst, client);
    assert_eq!(&bytes[..2], &[0x01, 0x01], "a Binding response");
    assert_eq!(&bytes[4..20], &req[4..20], "the whole 16-byte id echoed");
    assert!(bytes.len() <= req.len() * MAX_AMPLIFICATION);
    assert!(r.locals.contains(&src));
    let [mapped, source, changed] = classic_addrs(bytes);
    assert_eq!((mapped, source), (Some(client), Some(src)));
    (src, changed.unwrap())
}

#[test]
fn classic_stun_clients_never_hear_first_from_an_address_they_contact_later() {
    let mut r = Relay::new(cfg(true), Instant::now(), 1);
    // pystun3's sequence on one socket, started at any of the four addresses: I to A, II at
    // A (change IP and port), I to CHANGED-ADDRESS X, III at X (change port).
    for a in r.cfg.locals() {
        let (s1, x) = classic_exchange(&mut r, a, None);
        assert_eq!(s1, a);
        assert!(
            x.ip() != a.ip() && x.port() != a.port(),
            "RFC 3489's CHANGED-ADDRESS"
        );
        let (y, _) = classic_exchange(&mut r, a, Some(6));
        assert_eq!(classic_exchange(&mut r, x, None).0, x);
        let (z, _) = classic_exchange(&mut r, x, Some(2));
        assert_ne!(y.ip(), a.ip(), "test II answers from another IP");
        for unasked in [y, z] {
            assert!(
                unasked != a && unasked != x,
                "{unasked} is contacted by the client"
            );
        }
        assert_ne!(y, z, "test III's source answered before (test II)");
        // Test III: an IP the client has sent to, from a port it has not sent to there.
        assert!(z.ip() == a.ip() || z.ip() == x.ip());
        assert!(z.ip() != a.ip() || z.port() != a.port());
        assert!(z.ip() != x.ip() || z.port() != x.port());
    }
    assert_eq!(r.metrics().stun_requests, 16);
}

#[test]
fn classic_requests_without_alt_addr_or_with_response_address() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(false), t, 1);
    let client = sa("198.51.100.7:5000");
    r.handle_udp(now(t), sa(P), client, &classic_request(None));
    let out = drain(&mut r);
    let [mapped, source, changed] = classic_addrs(udp(&out[0]).2);
    assert_eq!((mapped, source, changed), (Some(client), Some(sa(P)), None));
    // No second address: CHANGE-REQUEST unanswered (an error would be resent for ever).
    r.handle_udp(now(t), sa(P), client, &classic_request(Some(6)));
    assert!(drain(&mut r).is_empty());
    // RESPONSE-ADDRESS (send the answer elsewhere) is refused with 420, to the source.
    let mut m = vec![0x00, 0x01, 0x00, 0x0C];
    m.extend_from_slice(&[9; 16]);
    m.extend_from_slice(&[0, 2, 0, 8, 0, 1, 0x12, 0x34, 198, 51, 100, 99]);
    r.handle_udp(now(t), sa(P), client, &m);
    let out = drain(&mut r);
    let (_, dst, bytes) = udp(&out[0]);
    assert_eq!(dst, client);
    assert_eq!(&bytes[..2], &[0x01, 0x11]);
}

#[test]
fn classic_answers_to_ipv6_stay_within_the_amplification_bound() {
    let mut c = cfg(true);
    c.primary = sa("[2001:db8::10]:3478");
    c.alt_ip = Some("2001:db8::11".parse().unwrap());
    let mut r = Relay::new(c, Instant::now(), 1);
    let req = classic_request(None);
    r.handle_udp(
        now(Instant::now()),
        sa("[2001:db8::10]:3478"),
        sa("[2001:db8::7]:5000"),
        &req,
    );
    let out = drain(&mut r);
    let (_, _, bytes) = udp(&out[0]);
    assert!(
        bytes.len() <= req.len() * MAX_AMPLIFICATION,
        "{}",
        bytes.len()
    );
    assert_eq!(
        bytes.len(),
        20 + 2 * 24,
        "MAPPED- and SOURCE-ADDRESS, no CHANGED-ADDRESS"
    );
}
