//! Abuse on the lab: a client cannot make the relay send anything to a third address — not
//! through candidates, forged joins, IPv4-mapped IPv6 spellings, RESPONSE-PORT or dial-back;
//! over IPv4 and over IPv6.
mod common;

use common::lab::{Kind, Lab};
use natkit::wire::rendezvous::{Frame, Role, Trailer};
use natkit::wire::stun;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

/// `f` as its sender sends it once it has the relay's cookie: over UDP the relay serves a
/// Register or DialBack only so (the attacker here is not spoofing, so it gets one).
fn with_cookie(s: &UdpSocket, relay: SocketAddr, f: Frame) -> Vec<u8> {
    let mut t = Trailer {
        tx: 1,
        cookie: vec![],
    };
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send_to(&f.emit_with(Some(&t)), relay).unwrap();
    let mut b = [0u8; 2048];
    let (n, _) = s.recv_from(&mut b).expect("the relay's cookie");
    if let Ok((Frame::Cookie, Some(c))) = Frame::parse_with(&b[..n]) {
        t.cookie = c.cookie;
    }
    f.emit_with(Some(&t))
}

#[test]
fn relay_never_sends_to_a_third_address() {
    never_sends_to_a_third_address(false);
}

/// Issue 14: the same attacks over IPv6, against a relay serving both families; the victim
/// is named by its IPv6 address, its IPv4 one, NAT64 and IPv4-mapped spellings.
#[test]
fn relay_never_sends_to_a_third_address_over_ipv6() {
    never_sends_to_a_third_address(true);
}

fn never_sends_to_a_third_address(v6: bool) {
    let b = Lab::builder().a(Kind::Open).b(Kind::Open);
    let b = if v6 { b.v6_a("open").v6_b("open") } else { b };
    let Some(lab) = Lab::up_or_skip(b) else {
        return;
    };
    let _relay = if v6 {
        common::relay::start_dual(&lab, 3478)
    } else {
        common::relay::start(&lab, 3478)
    };
    let key = |k: &str| if v6 { format!("{k}6") } else { k.to_string() };
    let relay_ip: std::net::IpAddr = lab.get(&key("PUB_IP")).parse().unwrap();
    let relay_addr = SocketAddr::new(relay_ip, 3478);
    let victim_ip: std::net::IpAddr = lab.get(&key("B_IP")).parse().unwrap();
    let (vu, vt) = lab.in_node("b", || {
        let u = UdpSocket::bind((victim_ip, 7000)).unwrap();
        let t = TcpListener::bind((victim_ip, 7000)).unwrap();
        (u, t)
    });
    vu.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    vt.set_nonblocking(true).unwrap();
    let victim = SocketAddr::new(victim_ip, 7000);
    let v4 = lab.get("B_IP");
    let mapped: SocketAddr = format!("[::ffff:{v4}]:7000").parse().unwrap();
    let nat64: SocketAddr = format!("[64:ff9b::{v4}]:7000").parse().unwrap();
    let attacker_ip: std::net::IpAddr = lab.get(&key("A_IP")).parse().unwrap();
    let (a1, a2) = lab.in_node("a", || {
        (
            UdpSocket::bind((attacker_ip, 0)).unwrap(),
            UdpSocket::bind((attacker_ip, 0)).unwrap(),
        )
    });
    let session = [42u8; 16];
    let evil = vec![victim, mapped, nat64, "127.0.0.1:7000".parse().unwrap()];
    let attacks: Vec<(&UdpSocket, Vec<u8>)> = vec![
        (
            &a1,
            with_cookie(
                &a1,
                relay_addr,
                Frame::Register {
                    session,
                    role: Role::Listener,
                    peer: [1; 8],
                    token: vec![],
                    candidates: evil.clone(),
                },
            ),
        ),
        (
            &a2,
            with_cookie(
                &a2,
                relay_addr,
                Frame::Register {
                    session,
                    role: Role::Connector,
                    peer: [2; 8],
                    token: vec![],
                    candidates: evil.clone(),
                },
            ),
        ),
        // A forged join of a taken role, with the victim as candidate.
        (
            &a2,
            with_cookie(
                &a2,
                relay_addr,
                Frame::Register {
                    session,
                    role: Role::Listener,
                    peer: [3; 8],
                    token: vec![],
                    candidates: evil.clone(),
                },
            ),
        ),
        (
            &a1,
            Frame::Data {
                session,
                payload: b"hello".to_vec(),
            }
            .emit(),
        ),
        (
            &a1,
            Frame::Sync {
                session,
                peer: [1; 8],
            }
            .emit(),
        ),
        (
            &a1,
            with_cookie(
                &a1,
                relay_addr,
                Frame::DialBack {
                    proto: 6,
                    port: 7000,
                    nonce: 1,
                },
            ),
        ),
        (
            &a1,
            with_cookie(
                &a1,
                relay_addr,
                Frame::DialBack {
                    proto: 17,
                    port: 7000,
                    nonce: 2,
                },
            ),
        ),
        (&a1, stun::binding_request_response_port([1; 12], 7000)),
        (
            &a1,
            stun::binding_request([2; 12], stun::Change::IP_AND_PORT),
        ),
    ];
    for (s, bytes) in &attacks {
        for _ in 0..3 {
            s.send_to(bytes, relay_addr).unwrap();
        }
    }
    // The attacker's own sockets do get answers (the relay works)…
    a1.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        a1.recv_from(&mut buf).is_ok(),
        "relay answers the attacker itself"
    );
    // …but the victim receives nothing, by UDP or TCP.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Ok((n, from)) = vu.recv_from(&mut buf) {
            panic!("victim got {n} bytes from {from}");
        }
        if let Ok((_, from)) = vt.accept() {
            panic!("victim got a TCP connection from {from}");
        }
    }
    // Control: the victim's socket does receive what is really sent to it.
    a1.send_to(b"direct", victim).unwrap();
    let (n, _) = vu.recv_from(&mut buf).expect("control datagram");
    assert_eq!(&buf[..n], b"direct");
}
