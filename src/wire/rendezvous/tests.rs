use super::*;

fn samples() -> Vec<Frame> {
    let a: SocketAddr = "203.0.113.21:4000".parse().unwrap();
    let b: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
    vec![
        Frame::Register {
            session: [1; 16],
            role: Role::Connector,
            peer: [2; 8],
            token: vec![9; 20],
            candidates: vec![a, b],
        },
        Frame::Registered {
            observed: a,
            peer_present: true,
        },
        Frame::Peer {
            observed: b,
            candidates: vec![a],
        },
        Frame::Ping { nonce: 7 },
        Frame::Pong {
            session: [3; 16],
            peer: [4; 8],
            nonce: u64::MAX,
        },
        Frame::Sync {
            session: [5; 16],
            peer: [6; 8],
        },
        Frame::Start {
            wait_ms: 12,
            attempt: 3,
        },
        Frame::Data {
            session: [7; 16],
            payload: vec![1, 2, 3],
        },
        Frame::DialBack {
            proto: 6,
            port: 8080,
            nonce: 1,
        },
        Frame::Probe { nonce: 2 },
        Frame::Error {
            code: ErrorCode::SessionBusy,
            reason: "busy".into(),
        },
        Frame::Bye {
            session: [8; 16],
            peer: [9; 8],
        },
        Frame::PunchProbe {
            session: [1; 16],
            tx: 9,
        },
        Frame::Pake {
            session: [1; 16],
            msg: vec![3; 33],
        },
        Frame::Confirm {
            session: [1; 16],
            fingerprint: [4; 32],
            mac: [5; 32],
        },
        Frame::Hops {
            session: [1; 16],
            own_nat: 1,
            peer_nat: 2,
        },
        Frame::NatInfo {
            session: [1; 16],
            mapping: 1,
            filtering: 3,
            allocation: 1,
            flags: 1,
            step: -2,
        },
        Frame::TcpOffer {
            session: [1; 16],
            armed: true,
            addr: b,
        },
        Frame::Predict {
            session: [1; 16],
            port: 30009,
        },
        Frame::PunchAck {
            session: [1; 16],
            tx: 9,
            observed: a,
        },
        Frame::PathChallenge {
            session: [1; 16],
            nonce: [6; 16],
        },
        Frame::PathResponse {
            session: [1; 16],
            nonce: [6; 16],
            mac: [7; 32],
        },
        Frame::Cookie,
    ]
}

#[test]
fn trailers_roundtrip_where_allowed_and_are_exact() {
    let t = Trailer {
        tx: 0x0102_0304_0506_0708,
        cookie: vec![7; 16],
    };
    for f in samples() {
        let b = f.emit_with(Some(&t));
        if !f.takes_trailer() {
            assert_eq!(b, f.emit(), "{f:?} takes no trailer");
            continue;
        }
        assert_eq!(
            Frame::parse_with(&b),
            Ok((f.clone(), Some(t.clone()))),
            "{f:?}"
        );
        assert_eq!(Frame::parse(&b), Ok(f.clone()));
        // Cut anywhere inside the trailer, or extended: refused.
        let body = f.emit().len();
        for n in body + 1..b.len() {
            assert!(Frame::parse_with(&b[..n]).is_err(), "{f:?} cut at {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Frame::parse_with(&longer).is_err(), "{f:?} extended");
    }
}

#[test]
fn every_frame_roundtrips() {
    for f in samples() {
        assert_eq!(Frame::parse(&f.emit()), Ok(f.clone()), "{f:?}");
    }
}

#[test]
fn truncations_and_extensions_are_rejected() {
    for f in samples() {
        let b = f.emit();
        for n in 0..b.len() {
            // Data's and Pake's payloads may be any length; everything else must be exact.
            let min_ok = match f {
                Frame::Data { .. } => 20,
                Frame::Pake { .. } => 21,
                _ => usize::MAX,
            };
            if n < min_ok {
                assert!(Frame::parse(&b[..n]).is_err(), "{f:?} cut at {n}");
            }
        }
        if !matches!(f, Frame::Data { .. } | Frame::Pake { .. }) {
            let mut longer = b.clone();
            longer.push(0);
            assert!(Frame::parse(&longer).is_err(), "{f:?} extended");
        }
    }
}

#[test]
fn a_path_challenge_is_as_long_as_its_response() {
    let c = Frame::PathChallenge {
        session: [1; 16],
        nonce: [2; 16],
    };
    let r = Frame::PathResponse {
        session: [1; 16],
        nonce: [2; 16],
        mac: [3; 32],
    };
    assert_eq!(c.emit().len(), PATH_FRAME_LEN);
    assert_eq!(r.emit().len(), PATH_FRAME_LEN);
}

#[test]
fn stun_is_never_a_frame() {
    let stun = crate::wire::stun::binding_request([1; 12], crate::wire::stun::Change::NONE);
    assert!(!is_frame(&stun));
    assert_eq!(Frame::parse(&stun), Err(ParseError::NotOurs));
}
