use super::*;
use crate::stun::Change;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const P: &str = "203.0.113.10:3478";

fn cfg(alt: bool) -> RelayConfig {
    RelayConfig {
        primary: sa(P),
        alt_ip: alt.then(|| "203.0.113.11".parse().unwrap()),
        alt_port: 3479,
        limits: Limits::default(),
        allow_private: false,
        secret: None,
    }
}

fn now(t: Instant) -> Now {
    Now {
        mono: t,
        unix: 1_800_000_000,
    }
}

fn drain(r: &mut Relay) -> Vec<Output> {
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(cfg(true), t);
    let req = stun::binding_request_response_port([2; 12], 7777);
    r.handle_udp(now(t), sa(P), sa("198.51.100.7:5000"), &req);
    let (_, dst, _) = udp(&drain(&mut r)[0]);
    assert_eq!(dst, sa("198.51.100.7:7777"));
}

#[test]
fn plain_mode_refuses_change_request_and_sends_no_other_address() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(false), t);
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(cfg(true), t);
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
    r.handle_udp(now(t), sa(P), sa(from), &f.emit());
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(cfg(true), t);
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
    let mut r = Relay::new(c, t);
    let reg = |token: Vec<u8>| {
        Frame::Register {
            session: [1; 16],
            role: Role::Listener,
            peer: [1; 8],
            token,
            candidates: vec![],
        }
        .emit()
    };
    let n = now(t);
    for bad in [
        vec![],
        vec![0; 24],
        make_token(b"other", n.unix + 60),
        make_token(b"s3cret", n.unix - 1),
    ] {
        r.handle_udp(n, sa(P), sa("198.51.100.1:4000"), &reg(bad));
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
        &reg(make_token(b"s3cret", n.unix + 60)),
    );
    assert!(matches!(
        frames(&drain(&mut r))[0].1,
        Frame::Registered { .. }
    ));
}

#[test]
fn dial_back_only_reaches_the_requester() {
    let t = Instant::now();
    let mut r = Relay::new(cfg(true), t);
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
        .emit(),
    );
    let out = drain(&mut r);
    let (src, dst, b) = udp(&out[0]);
    assert_eq!(dst, me, "UDP dial-back ignores the named port");
    assert_eq!(src, sa("203.0.113.11:3479"));
    assert_eq!(Frame::parse(b).unwrap(), Frame::Probe { nonce: 5 });
    r.handle_udp(
        now(t),
        sa(P),
        me,
        &Frame::DialBack {
            proto: 6,
            port: 8080,
            nonce: 6,
        }
        .emit(),
    );
    assert!(
        matches!(drain(&mut r)[0], Output::DialTcp { dst, .. } if dst == sa("198.51.100.1:8080"))
    );
    for _ in 0..20 {
        r.handle_udp(
            now(t),
            sa(P),
            me,
            &Frame::DialBack {
                proto: 6,
                port: 8080,
                nonce: 6,
            }
            .emit(),
        );
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
    let mut r = Relay::new(cfg(true), t);
    register(&mut r, t, "198.51.100.1:4000", Role::Listener, 1, vec![]);
    assert_eq!(r.sessions(), 1);
    r.handle_timeout(t + Duration::from_secs(defaults::RELAY_IDLE_SECS + 2));
    assert_eq!(r.sessions(), 0);
}
