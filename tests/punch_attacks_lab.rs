//! Off-path attacks on a punched session (issue 12): a third host that knows a side's public
//! punch port sends junk, forged QUIC packets and forged natkit control frames at it while a
//! transfer runs. The session must finish intact, and the third host must not receive more
//! than it sent (no reflection of the session's traffic).
mod common;

use common::lab::{Kind, Lab};
use common::punch::{at_relay as live, is_direct, noise};
use natkit::proto::punch::code::Code;
use natkit::proto::punch::pake::Pake;
use natkit::wire::rendezvous::{Frame, Role};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// What the attacker sends: plain junk, QUIC-looking short-header packets, a forged QUIC
/// Initial (long header, version 1), and natkit frames with a made-up session.
fn attack_datagrams() -> Vec<Vec<u8>> {
    let mut v = vec![noise(760, 1)];
    for i in 0..10u64 {
        let mut short = noise(1200, 10 + i);
        short[0] = 0x40 | (short[0] & 0x3f);
        v.push(short);
    }
    for i in 0..5u64 {
        let mut initial = noise(1200, 100 + i);
        initial[0] = 0xc3;
        initial[1..5].copy_from_slice(&1u32.to_be_bytes());
        initial[5] = 8; // DCID length
        initial[14] = 8; // SCID length
        v.push(initial);
    }
    // natkit frames (magic "NK", version 1) of every type code with a random body.
    for t in 0..32u8 {
        let mut f = b"NK\x01".to_vec();
        f.push(t);
        f.extend(noise(64, 200 + u64::from(t)));
        v.push(f);
    }
    v
}

/// The attacker: from `pub`'s second address (a third host on the internet), sends every
/// datagram of [`attack_datagrams`] to `target` a few times over `span`, and counts what
/// comes back until `until`.
fn attack(lab: &Lab, target: SocketAddr, span: Duration, until: Duration) -> (usize, usize) {
    let from = format!("{}:0", lab.get("PUB_IP2"));
    lab.in_node("pub", move || {
        let s = UdpSocket::bind(from).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let all = attack_datagrams();
        let rounds = 5;
        let gap = span / (rounds * all.len() as u32);
        let t0 = Instant::now();
        let (mut sent, mut got) = (0usize, 0usize);
        let mut buf = vec![0u8; 65536];
        let mut drain = |got: &mut usize| {
            while let Ok(n) = s.recv(&mut buf) {
                *got += n;
            }
        };
        for _ in 0..rounds {
            for d in &all {
                if s.send_to(d, target).is_ok() {
                    sent += d.len();
                }
                std::thread::sleep(gap);
                let _ = s.set_nonblocking(true);
                drain(&mut got);
                let _ = s.set_nonblocking(false);
            }
        }
        while t0.elapsed() < until {
            let mut b = [0u8; 65536];
            if let Ok(n) = s.recv(&mut b) {
                got += n;
            }
        }
        (sent, got)
    })
}

/// A transfer from a full-cone listener (its punch port open to anyone) to a port-restricted
/// connector, attacked at the listener's public punch port.
#[test]
fn junk_from_a_third_host_neither_redirects_nor_breaks_a_session() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::FullCone).b(Kind::PortRestricted))
    else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let code = "73-lantern-harbor";
    let l = live(&lab, "a", &["listen", "--code", code]);
    std::thread::sleep(Duration::from_millis(200));
    let mut c = live(&lab, "b", &["connect", code]);
    let got = c
        .wait_for(Duration::from_secs(15), is_direct)
        .expect("a direct path");
    let target: SocketAddr = got["peer"].as_str().unwrap().parse().unwrap();
    // 24 MiB each way, paced over ~4 s so the attack falls mid-transfer.
    let (da, db) = (noise(24 << 20, 7), noise(24 << 20, 8));
    let (la, lb) = (da.clone(), db.clone());
    let writer = |mut side: common::punch::Live, data: Vec<u8>| {
        std::thread::spawn(move || {
            for chunk in data.chunks(1 << 20) {
                side.write(chunk);
                std::thread::sleep(Duration::from_millis(160));
            }
            side.close_input();
            side.finish()
        })
    };
    let lt = writer(l, la);
    let ct = writer(c, lb);
    std::thread::sleep(Duration::from_millis(500));
    let (sent, received) = attack(&lab, target, Duration::from_secs(2), Duration::from_secs(4));
    let (lc, lout, levs) = lt.join().unwrap();
    let (cc, cout, cevs) = ct.join().unwrap();
    eprintln!("junk attack: the third host sent {sent} bytes, received {received}");
    assert_eq!(lc, Some(0), "listener: {levs:?}");
    assert_eq!(cc, Some(0), "connector: {cevs:?}");
    assert!(
        Sha256::digest(&cout) == Sha256::digest(&da),
        "the connector got {} bytes, not the listener's {}",
        cout.len(),
        da.len()
    );
    assert!(
        Sha256::digest(&lout) == Sha256::digest(&db),
        "the listener got {} bytes, not the connector's {}",
        lout.len(),
        db.len()
    );
    assert!(
        received <= sent,
        "the third host sent {sent} bytes and received {received}: the session reflected \
         traffic to it"
    );
    // The attack must not have moved either side off the peer.
    for v in levs.iter().chain(&cevs) {
        if v["event"] == "connected" && v["path"] == "direct" {
            assert_ne!(
                v["peer"].as_str().unwrap().split(':').next(),
                Some(lab.get("PUB_IP2")),
                "a side adopted the attacker as its peer: {v}"
            );
        }
    }
}

/// Well-formed natkit frames for the real session (its id follows from the code's public
/// nameplate): a SPAKE2 message made with a wrong password, a confirmation, a NAT class
/// that says "no direct path", a TCP offer and a prediction pointing at the attacker, a
/// connectivity check (a stranger must not make us probe it), and a path challenge.
fn forged_frames(code: &str, attacker: std::net::SocketAddr) -> Vec<Vec<u8>> {
    let session = Code::parse(code).unwrap().session_id();
    let mut v = Vec::new();
    for (i, role) in [Role::Listener, Role::Connector].into_iter().enumerate() {
        let pake = Pake::new(session, role, b"99-acid-acorn", b"evil", [i as u8 + 1; 32]);
        v.push(pake.message().emit());
    }
    let frames = [
        Frame::Confirm {
            session,
            fingerprint: [0xee; 32],
            mac: [0xee; 32],
        },
        Frame::NatInfo {
            session,
            mapping: 3,
            filtering: 3,
            allocation: 3,
            flags: 2,
            step: 0,
        },
        Frame::TcpOffer {
            session,
            armed: true,
            addr: attacker,
        },
        Frame::Predict {
            session,
            port: attacker.port(),
        },
        Frame::PunchProbe { session, tx: 77 },
        Frame::PathChallenge {
            session,
            nonce: [0x55; 16],
        },
    ];
    v.extend(frames.iter().map(Frame::emit));
    v
}

/// Issue 12 #4: a third host that knows the code's nameplate sprays well-formed forged
/// control frames at the listener's public punch port from before the connector arrives
/// until the data flows (`--tcp`, so a forged TCP offer would have something to redirect).
/// The key exchange must still succeed (no "wrong code"), TCP must still reach the real
/// peer, the data must arrive intact, and the third host must get no more than it sent.
#[test]
fn forged_control_frames_from_a_third_host_do_not_break_the_key_exchange() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::FullCone).b(Kind::PortRestricted))
    else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let code = "74-lantern-harbor";
    let mut l = live(&lab, "a", &["listen", "--code", code, "--tcp"]);
    let reg = l
        .wait_for(Duration::from_secs(10), |v| v["event"] == "registered")
        .expect("the listener registered");
    let target: SocketAddr = reg["observed"].as_str().unwrap().parse().unwrap();
    let from: SocketAddr = format!("{}:40000", lab.get("PUB_IP2")).parse().unwrap();
    let frames = forged_frames(code, from);
    let (sent, received, ends) = std::thread::scope(|scope| {
        let spray = scope.spawn(|| {
            lab.in_node("pub", || {
                let s = UdpSocket::bind(from).unwrap();
                s.set_nonblocking(true).unwrap();
                let (mut sent, mut got) = (0usize, 0usize);
                let mut buf = vec![0u8; 65536];
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(6) {
                    for f in &frames {
                        if s.send_to(f, target).is_ok() {
                            sent += f.len();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    while let Ok(n) = s.recv(&mut buf) {
                        got += n;
                    }
                }
                (sent, got)
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let c = live(&lab, "b", &["connect", code, "--tcp"]);
        let (da, db) = (noise(1 << 20, 17), noise(1 << 20, 18));
        let (mut l, mut c) = (l, c);
        l.feed(da.clone());
        c.feed(db.clone());
        let (le, ce) = (l.finish(), c.finish());
        let (sent, got) = spray.join().unwrap();
        (sent, got, [(le, db), (ce, da)])
    });
    for ((code, out, evs), expected) in &ends {
        assert_eq!(*code, Some(0), "{evs:?}");
        assert!(
            Sha256::digest(out) == Sha256::digest(expected),
            "got {} bytes, not the peer's {}: {evs:?}",
            out.len(),
            expected.len()
        );
        let last = evs
            .iter()
            .rev()
            .find(|v| v["event"] == "connected")
            .expect("a connected event");
        assert_eq!(last["path"], "direct", "{evs:?}");
        assert_eq!(last["method"], "tcp", "{evs:?}");
        assert!(
            !last["peer"]
                .as_str()
                .unwrap()
                .starts_with(lab.get("PUB_IP2")),
            "a side adopted the attacker: {last}"
        );
    }
    eprintln!("forged frames: the third host sent {sent} bytes, received {received}");
    assert!(
        received <= sent,
        "the third host sent {sent} bytes and received {received}"
    );
}
