//! The relay binary on loopback: rendezvous over UDP and TCP, relaying, abuse limits visible in
//! metrics, tokens, amplification measured on real sockets, and a clean SIGTERM.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natkit::wire::rendezvous::{ErrorCode, Frame, Role, Trailer};
use natkit::wire::stun;

struct Relay {
    child: Child,
    port: u16,
    metrics: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_ports() -> (u16, u16) {
    // Two consecutive free ports (UDP and TCP) and one for metrics.
    for _ in 0..200 {
        let p = 20000 + (rand_u16() % 30000);
        let ok = UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            && UdpSocket::bind(("127.0.0.2", p)).is_ok()
            && UdpSocket::bind(("127.0.0.2", p + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("::1", p)).is_ok()
            && TcpListener::bind(("::1", p)).is_ok();
        if ok {
            let m = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            return (p, m);
        }
    }
    panic!("no free ports");
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (t ^ std::process::id().wrapping_mul(2654435761)) as u16
}

fn relay(extra: &[&str]) -> Relay {
    let (port, m) = free_ports();
    let metrics: SocketAddr = format!("127.0.0.1:{m}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "--addr",
            "127.0.0.1",
            "--alt-addr",
            "127.0.0.2",
            "--allow-private",
            "--json",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--alt-port",
            &(port + 1).to_string(),
        ])
        .args(["--metrics", &metrics.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = [0u8; 1];
    let mut out = Vec::new();
    let stdout = child.stdout.as_mut().unwrap();
    while stdout.read(&mut line).unwrap() == 1 && line[0] != b'\n' {
        out.push(line[0]);
    }
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON startup line");
    assert_eq!(v["event"], "listening");
    assert_eq!(v["rfc5780"], true);
    if extra.iter().any(|a| a.contains("::1")) {
        assert_eq!(v["other_family"], format!("[::1]:{port}"));
    } else {
        assert!(v["other_family"].is_null());
    }
    Relay {
        child,
        port,
        metrics,
    }
}

impl Relay {
    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn recv_frame(s: &UdpSocket) -> Option<Frame> {
    let mut b = [0u8; 2048];
    let (n, _) = s.recv_from(&mut b).ok()?;
    Frame::parse(&b[..n]).ok()
}

fn reg(session: u8, role: Role, peer: u8) -> Vec<u8> {
    Frame::Register {
        session: [session; 16],
        role,
        peer: [peer; 8],
        token: vec![],
        candidates: vec![],
    }
    .emit()
}

/// `f` with the relay's cookie for `s` (transaction id 1): sends it once without, and takes
/// the cookie the relay answers with. Over UDP a Register or DialBack is served only so.
fn with_cookie(s: &UdpSocket, f: &Frame, to: SocketAddr) -> Vec<u8> {
    let mut t = Trailer {
        tx: 1,
        cookie: vec![],
    };
    s.send_to(&f.emit_with(Some(&t)), to).unwrap();
    let mut b = [0u8; 2048];
    let (n, _) = s.recv_from(&mut b).unwrap();
    match Frame::parse_with(&b[..n]) {
        Ok((Frame::Cookie, Some(c))) if c.tx == 1 => t.cookie = c.cookie,
        other => panic!("expected a cookie, got {other:?}"),
    }
    f.emit_with(Some(&t))
}

fn reg_frame(session: u8, role: Role, peer: u8) -> Frame {
    Frame::parse(&reg(session, role, peer)).unwrap()
}

fn tcp_send(s: &mut TcpStream, f: &Frame) {
    let b = f.emit();
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(&b);
    s.write_all(&v).unwrap();
}

fn tcp_recv(s: &mut TcpStream) -> Frame {
    let mut l = [0u8; 2];
    s.read_exact(&mut l).unwrap();
    let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut b).unwrap();
    Frame::parse(&b).unwrap()
}

#[test]
fn udp_peer_and_tcp_peer_meet_and_relay() {
    let r = relay(&[]);
    let a = client("127.0.0.1");
    let req = with_cookie(&a, &reg_frame(1, Role::Listener, 1), r.addr());
    a.send_to(&req, r.addr()).unwrap();
    assert!(matches!(
        recv_frame(&a),
        Some(Frame::Registered {
            peer_present: false,
            ..
        })
    ));
    // The connector's UDP is "blocked": it uses TCP.
    let mut b = TcpStream::connect(r.addr()).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    tcp_send(
        &mut b,
        &Frame::Register {
            session: [1; 16],
            role: Role::Connector,
            peer: [2; 8],
            token: vec![],
            candidates: vec![],
        },
    );
    assert!(matches!(
        tcp_recv(&mut b),
        Frame::Registered {
            peer_present: true,
            ..
        }
    ));
    assert!(
        matches!(tcp_recv(&mut b), Frame::Peer { observed, .. } if observed == a.local_addr().unwrap())
    );
    assert!(matches!(recv_frame(&a), Some(Frame::Peer { .. })));
    // Both directions.
    a.send_to(
        &Frame::Data {
            session: [1; 16],
            payload: b"to tcp".to_vec(),
        }
        .emit(),
        r.addr(),
    )
    .unwrap();
    assert_eq!(
        tcp_recv(&mut b),
        Frame::Data {
            session: [1; 16],
            payload: b"to tcp".to_vec()
        }
    );
    tcp_send(
        &mut b,
        &Frame::Data {
            session: [1; 16],
            payload: b"to udp".to_vec(),
        },
    );
    assert_eq!(
        recv_frame(&a),
        Some(Frame::Data {
            session: [1; 16],
            payload: b"to udp".to_vec()
        })
    );
    // STUN over TCP on the same port.
    let req = stun::binding_request([3; 12], stun::Change::NONE);
    b.write_all(&req).unwrap();
    let mut hdr = [0u8; 20];
    b.read_exact(&mut hdr).unwrap();
    let mut body = vec![0u8; u16::from_be_bytes([hdr[2], hdr[3]]) as usize];
    b.read_exact(&mut body).unwrap();
    let m = stun::decode(&[hdr.to_vec(), body].concat()).unwrap();
    assert_eq!(m.reflexive(), Some(b.local_addr().unwrap()));
    assert!(r.metrics().contains("natkit_relay_relayed_packets_total 2"));
}

#[test]
fn flood_is_limited_and_visible_while_another_source_is_served() {
    let r = relay(&["--rate", "20", "--burst", "20"]);
    let flood = client("127.0.0.1");
    let req = stun::binding_request([4; 12], stun::Change::NONE);
    for _ in 0..500 {
        flood.send_to(&req, r.addr()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let other = client("127.0.0.2");
    other.send_to(&req, r.addr()).unwrap();
    let mut b = [0u8; 512];
    let (n, _) = other
        .recv_from(&mut b)
        .expect("another source is still served");
    assert!(stun::decode(&b[..n]).is_ok());
    let m = r.metrics();
    let dropped: u64 = m
        .lines()
        .find(|l| l.starts_with("natkit_relay_drops_total{reason=\"rate_limited\"}"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    // The kernel may drop part of a loopback burst before the relay reads it; of what
    // arrived, all but the burst (and the refill during the test) was rate-limited.
    let answered: u64 = m
        .lines()
        .find(|l| l.starts_with("natkit_relay_stun_requests_total "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped >= 100, "{m}");
    assert!(answered <= 20 + 10 + 1, "{m}");
}

#[test]
fn secret_refuses_requests_without_a_valid_token() {
    let r = relay(&["--secret", "hunter2-is-too-weak-so-this-is-longer"]);
    let a = client("127.0.0.1");
    let req = with_cookie(&a, &reg_frame(2, Role::Listener, 1), r.addr());
    a.send_to(&req, r.addr()).unwrap();
    assert!(matches!(
        recv_frame(&a),
        Some(Frame::Error {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    let tok = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "--addr",
            "127.0.0.1",
            "--secret",
            "hunter2-is-too-weak-so-this-is-longer",
            "--print-token",
            "60",
        ])
        .output()
        .unwrap();
    let hex = String::from_utf8(tok.stdout).unwrap();
    let token: Vec<u8> = (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let f = Frame::Register {
        session: [2; 16],
        role: Role::Listener,
        peer: [1; 8],
        token,
        candidates: vec![],
    };
    a.send_to(&with_cookie(&a, &f, r.addr()), r.addr()).unwrap();
    assert!(matches!(recv_frame(&a), Some(Frame::Registered { .. })));
    // Data from a stranger for that session goes nowhere.
    let stranger = client("127.0.0.2");
    stranger
        .send_to(
            &Frame::Data {
                session: [2; 16],
                payload: vec![1],
            }
            .emit(),
            r.addr(),
        )
        .unwrap();
    assert_eq!(recv_frame(&a), None);
}

/// Measured on real sockets: bytes answered / bytes asked for every unauthenticated request
/// type (documented bound: 4).
#[test]
fn amplification_of_every_unauthenticated_request_is_bounded() {
    let r = relay(&[]);
    let c = client("127.0.0.1");
    let mut min_stun = stun::binding_request([5; 12], stun::Change::NONE);
    min_stun.truncate(20);
    min_stun[2] = 0;
    min_stun[3] = 0;
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("binding (20 bytes)", min_stun),
        (
            "binding + change",
            stun::binding_request([6; 12], stun::Change::IP_AND_PORT),
        ),
        (
            "binding + padding",
            stun::binding_request_with_padding([7; 12], 4).unwrap(),
        ),
        ("register", reg(9, Role::Listener, 9)),
        (
            "sync (unregistered)",
            Frame::Sync {
                session: [8; 16],
                peer: [8; 8],
            }
            .emit(),
        ),
        (
            "dial-back udp",
            Frame::DialBack {
                proto: 17,
                port: 1,
                nonce: 1,
            }
            .emit(),
        ),
        ("junk", b"NK\x01\xff".to_vec()),
    ];
    for (name, req) in requests {
        let got = answered(&c, &[], &req, r.addr()).0;
        check_factor(name, req.len(), got);
    }
    // A minimal Register that joins a session whose other peer announced the most candidates
    // there may be, all IPv6: everything the relay sends because of it, to the sender and to
    // the other peer, counts (unbounded, this was 176 + 12 bytes for 31; with the cookie and
    // transaction id it echoes, the smallest Register served over UDP is 56 bytes).
    let other = client("127.0.0.1");
    let many: Vec<SocketAddr> = (0..natkit::wire::rendezvous::MAX_CANDIDATES)
        .map(|i| {
            format!("[2001:db8::{:x}]:{}", i + 1, 40000 + i)
                .parse()
                .unwrap()
        })
        .collect();
    let first = Frame::Register {
        session: [10; 16],
        role: Role::Listener,
        peer: [10; 8],
        token: vec![],
        candidates: many.clone(),
    };
    other
        .send_to(&with_cookie(&other, &first, r.addr()), r.addr())
        .unwrap();
    assert!(matches!(
        recv_frame(&other),
        Some(Frame::Registered {
            peer_present: false,
            ..
        })
    ));
    let join = with_cookie(&c, &reg_frame(10, Role::Connector, 11), r.addr());
    assert_eq!(join.len(), 31 + 25);
    let (got, frames) = answered(&c, &[&other], &join, r.addr());
    check_factor(
        "register (joins a peer with 8 IPv6 candidates)",
        join.len(),
        got,
    );
    // The sender still learns the other peer's observed address and, within the bound, the
    // first of its candidates.
    let peer = frames.iter().find_map(|f| match f {
        Frame::Peer {
            observed,
            candidates,
        } if *observed == other.local_addr().unwrap() => Some(candidates.clone()),
        _ => None,
    });
    let peer = peer.expect("a Peer frame to the joining client");
    assert!(!peer.is_empty() && many.starts_with(&peer), "{peer:?}");
    assert!(r.metrics().contains(&format!(
        "natkit_relay_peer_candidates_trimmed_total {}",
        many.len() - peer.len()
    )));
}

/// Sends `req` from `c` and counts, for 300 ms, every byte that comes back to `c` and to
/// `others`; also returns the frames `c` got.
fn answered(
    c: &UdpSocket,
    others: &[&UdpSocket],
    req: &[u8],
    to: SocketAddr,
) -> (usize, Vec<Frame>) {
    c.send_to(req, to).unwrap();
    let mut b = [0u8; 2048];
    let mut got = 0;
    let mut frames = Vec::new();
    let until = Instant::now() + Duration::from_millis(300);
    for s in std::iter::once(c).chain(others.iter().copied()) {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    while Instant::now() < until {
        if let Ok((n, _)) = c.recv_from(&mut b) {
            got += n;
            frames.extend(Frame::parse(&b[..n]).ok());
        }
        for s in others {
            if let Ok((n, _)) = s.recv_from(&mut b) {
                got += n;
            }
        }
    }
    (got, frames)
}

fn check_factor(name: &str, asked: usize, got: usize) {
    let factor = got as f64 / asked as f64;
    eprintln!("{name}: {asked} bytes in, {got} bytes out, factor {factor:.2}");
    assert!(got > 0 || name.contains("junk"), "{name}: no answer");
    assert!(
        factor <= natkit::proto::relay::MAX_AMPLIFICATION as f64,
        "{name}: {factor}"
    );
}

/// Reads the first line the relay prints on stdout.
fn startup_line(child: &mut Child) -> String {
    let mut line = [0u8; 1];
    let mut out = Vec::new();
    let stdout = child.stdout.as_mut().unwrap();
    while stdout.read(&mut line).unwrap() == 1 && line[0] != b'\n' {
        out.push(line[0]);
    }
    String::from_utf8(out).unwrap()
}

/// Without --alt-addr the relay serves plain STUN, and both startup lines say that behaviour
/// discovery is off.
#[test]
fn without_alt_addr_the_startup_lines_say_behaviour_discovery_is_off() {
    let (port, _) = free_ports();
    let spawn = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.args([
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--allow-private",
        ]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = startup_line(&mut child);
        (
            Relay {
                child,
                port,
                metrics: "127.0.0.1:9".parse().unwrap(),
            },
            line,
        )
    };
    let (r, human) = spawn(false);
    assert!(
        human.contains("RFC 5780 behaviour discovery off (no --alt-addr)"),
        "{human}"
    );
    assert!(
        human.starts_with(&format!("relay: STUN on udp 127.0.0.1:{port};")),
        "one address only: {human}"
    );
    drop(r);
    let (r, json) = spawn(true);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON startup line");
    assert_eq!(v["event"], "listening", "{v}");
    assert_eq!(v["schema"], 1, "{v}");
    assert_eq!(v["rfc5780"], false, "{v}");
    assert_eq!(
        v["stun_udp"],
        serde_json::json!([format!("127.0.0.1:{port}")]),
        "{v}"
    );
    assert_eq!(v["tcp"], format!("127.0.0.1:{port}"), "{v}");
    assert_eq!(v["rendezvous_udp"], format!("127.0.0.1:{port}"), "{v}");
    assert_eq!(v["secret"], false, "{v}");
    assert_eq!(v["allow_private"], true, "{v}");
    assert_eq!(v["metrics"], serde_json::Value::Null, "{v}");
    // And it behaves so: plain Binding answered without OTHER-ADDRESS, CHANGE-REQUEST 420.
    let c = client("127.0.0.1");
    let mut b = [0u8; 512];
    c.send_to(
        &stun::binding_request([1; 12], stun::Change::NONE),
        r.addr(),
    )
    .unwrap();
    let (n, _) = c.recv_from(&mut b).expect("plain STUN is served");
    let m = stun::decode(&b[..n]).unwrap();
    assert_eq!(m.reflexive(), Some(c.local_addr().unwrap()));
    assert_eq!(m.other_address, None);
    c.send_to(
        &stun::binding_request([2; 12], stun::Change::PORT),
        r.addr(),
    )
    .unwrap();
    let (n, _) = c.recv_from(&mut b).expect("an error answer");
    assert_eq!(stun::decode(&b[..n]).unwrap().error.unwrap().0, 420);
}

#[test]
fn sigterm_stops_with_exit_0() {
    let mut r = relay(&[]);
    unsafe {
        libc::kill(r.child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            assert_eq!(s.code(), Some(0));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "relay did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    for args in [
        &["--addr", "127.0.0.1", "--alt-addr", "127.0.0.1"][..],
        &["--addr", "127.0.0.1", "--alt-addr", "::1"],
        &["--addr", "nonsense"],
        &["--addr", "127.0.0.1", "--print-token", "5"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

/// Issue 14: `--addr` once per family. A peer over UDP/IPv4 meets one over TCP/IPv6 and the
/// relay carries data between them; STUN answers over IPv6 (no second IPv6 address on
/// loopback, so no RFC 5780 there: a CHANGE-REQUEST over IPv6 gets 420, over IPv4 an answer).
#[test]
fn peers_of_both_families_meet_and_relay() {
    let r = relay(&["--addr", "[::1]"]);
    let v6: SocketAddr = format!("[::1]:{}", r.port).parse().unwrap();
    let s6 = client("::1");
    s6.send_to(&stun::binding_request([4; 12], stun::Change::NONE), v6)
        .unwrap();
    let mut b = [0u8; 2048];
    let (n, from) = s6.recv_from(&mut b).unwrap();
    assert_eq!(from, v6);
    let m = stun::decode(&b[..n]).unwrap();
    assert_eq!(m.reflexive(), Some(s6.local_addr().unwrap()));
    assert_eq!(m.other_address, None);
    s6.send_to(
        &stun::binding_request([5; 12], stun::Change::IP_AND_PORT),
        v6,
    )
    .unwrap();
    let (n, _) = s6.recv_from(&mut b).unwrap();
    assert_eq!(stun::decode(&b[..n]).unwrap().error.map(|e| e.0), Some(420));

    let a = client("127.0.0.1");
    let req = with_cookie(&a, &reg_frame(7, Role::Listener, 1), r.addr());
    a.send_to(&req, r.addr()).unwrap();
    assert!(matches!(recv_frame(&a), Some(Frame::Registered { .. })));
    let mut c = TcpStream::connect(v6).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    tcp_send(&mut c, &reg_frame(7, Role::Connector, 2));
    assert!(matches!(
        tcp_recv(&mut c),
        Frame::Registered {
            observed,
            peer_present: true,
        } if observed == c.local_addr().unwrap()
    ));
    assert!(
        matches!(tcp_recv(&mut c), Frame::Peer { observed, .. } if observed == a.local_addr().unwrap())
    );
    assert!(
        matches!(recv_frame(&a), Some(Frame::Peer { observed, .. }) if observed == c.local_addr().unwrap())
    );
    let data = |p: &[u8]| Frame::Data {
        session: [7; 16],
        payload: p.to_vec(),
    };
    a.send_to(&data(b"to v6").emit(), r.addr()).unwrap();
    assert_eq!(tcp_recv(&mut c), data(b"to v6"));
    tcp_send(&mut c, &data(b"to v4"));
    assert_eq!(recv_frame(&a), Some(data(b"to v4")));
}

/// Issue 14, bad input: IPv6 literals with or without brackets are accepted, a zone id and a
/// second address of one family are refused with a clear message, before anything is bound.
#[test]
fn relay_address_arguments() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(args)
            .args(["--print-token", "60"])
            .env("NATKIT_RELAY_SECRET", "0123456789abcdef0123")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    for ok in [
        &["--addr", "2001:db8::2"][..],
        &["--addr", "[2001:db8::2]", "--addr", "198.51.100.2"],
        &[
            "--addr",
            "198.51.100.2",
            "--addr",
            "2001:db8::2",
            "--alt-addr",
            "198.51.100.3",
            "--alt-addr",
            "[2001:db8::3]",
        ],
    ] {
        assert_eq!(run(ok).0, Some(0), "{ok:?}");
    }
    for (bad, says) in [
        (&["--addr", "fe80::1%eth0"][..], "zone id"),
        (&["--addr", "[fe80::1%2]"], "zone id"),
        (&["--addr", "2001:db8::2", "--addr", "2001:db8::3"], "twice"),
        (
            &["--addr", "198.51.100.2", "--alt-addr", "2001:db8::3"],
            "family",
        ),
        (&["--addr", "[2001:db8::2]:3478"], "--port"),
        (&["--addr", "relay.example"], "not an IP address"),
    ] {
        let (code, err) = run(bad);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}
