//! `punch serve` on the NAT lab: one code, many peers, each in its own session.
mod common;

use common::lab::{Kind, Lab};
use common::punch::{at_relay, http_get, http_server, noise, Live};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts `punch serve` on node a with `args`; returns it and its code.
fn serving(lab: &Lab, args: &[&str]) -> (Live, String) {
    let mut all = vec!["serve"];
    all.extend(args);
    let mut host = at_relay(lab, "a", &all);
    let code = host
        .wait_for(Duration::from_secs(10), |v| v["event"] == "code")
        .expect("serve prints a code")["code"]
        .as_str()
        .unwrap()
        .to_string();
    (host, code)
}

/// A peer on node b joining `code` with `--local PORT`, once it is listening and
/// authenticated.
fn peer(lab: &Lab, code: &str, port: u16) -> Live {
    let mut p = at_relay(lab, "b", &["connect", code, "--local", &port.to_string()]);
    for what in ["authenticated", "listening"] {
        p.wait_for(Duration::from_secs(20), |v| v["event"] == what)
            .unwrap_or_else(|| panic!("peer on port {port}: no {what} event"));
    }
    p
}

fn download(lab: &Lab, port: u16) -> Vec<u8> {
    let ns = lab.ns("b");
    common::lab::in_ns(&ns, || http_get(&format!("127.0.0.1:{port}")))
}

/// A lab (a behind `a`, b behind `b`) with the relay and an HTTP server on a's
/// 127.0.0.1:8000 serving `len` random bytes.
fn web_lab(a: Kind, b: Kind, len: usize) -> Option<(Lab, common::relay::Relay, Vec<u8>)> {
    let lab = Lab::up_or_skip(Lab::builder().a(a).b(b))?;
    let r = common::relay::start(&lab, 3478);
    let body = noise(len, len as u64);
    let l = lab.in_node("a", || {
        std::net::TcpListener::bind("127.0.0.1:8000").unwrap()
    });
    http_server(l, body.clone());
    Some((lab, r, body))
}

/// Serve behind a port-restricted NAT, peers behind a symmetric one: one peer downloads a
/// file over HTTP through `--local`, then two more at once; all three intact, serve still
/// running, each peer with its own id; SIGTERM ends serve with exit 0.
#[test]
fn serve_hosts_three_peers_one_then_two_at_once() {
    let Some((lab, _r, body)) = web_lab(Kind::PortRestricted, Kind::Symmetric, 1 << 20) else {
        return;
    };
    let (mut host, code) = serving(&lab, &["--expose", "127.0.0.1:8000"]);
    assert_eq!(
        code.split('-').count(),
        9,
        "a number and eight words: {code}"
    );

    let first = peer(&lab, &code, 9001);
    assert_eq!(Sha256::digest(download(&lab, 9001)), Sha256::digest(&body));
    first.kill();

    let (two, three) = std::thread::scope(|s| {
        let a = s.spawn(|| peer(&lab, &code, 9002));
        let b = s.spawn(|| peer(&lab, &code, 9003));
        (a.join().unwrap(), b.join().unwrap())
    });
    let got: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = [9002, 9003]
            .map(|p| {
                let lab = &lab;
                s.spawn(move || download(lab, p))
            })
            .into_iter()
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for g in got {
        assert_eq!(Sha256::digest(g), Sha256::digest(&body));
    }
    assert!(host.is_running(), "serve exited");
    let joined = |events: &[Value]| -> Vec<u64> {
        events
            .iter()
            .filter(|v| v["event"] == "peer_joined")
            .filter_map(|v| v["peer_id"].as_u64())
            .collect()
    };
    two.kill();
    three.kill();
    let (status, events) = host.terminate(Duration::from_secs(10));
    let mut ids = joined(&events);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct peers joined: {events:?}");
    assert!(
        events
            .iter()
            .any(|v| v["event"] == "connected" && v["peer_id"].is_u64()),
        "peers' events carry their id: {events:?}"
    );
    assert_eq!(status, Some(0), "SIGTERM ends serve with exit 0");
}

/// A peer with the right nameplate and a wrong word fails its PAKE; serve reports it as
/// `auth_failed` with a peer id and keeps serving the right code.
#[test]
fn a_wrong_serve_code_is_reported_and_serve_goes_on() {
    let Some((lab, _r, body)) = web_lab(Kind::PortRestricted, Kind::FullCone, 64 << 10) else {
        return;
    };
    let (mut host, code) = serving(&lab, &["--expose", "127.0.0.1:8000"]);
    let mut parts: Vec<&str> = code.split('-').collect();
    parts[8] = if parts[8] == "acid" { "acorn" } else { "acid" };
    let wrong = parts.join("-");
    let (status, _, _) = at_relay(&lab, "b", &["connect", &wrong, "--local", "9100"]).finish();
    assert_eq!(status, Some(3), "a wrong code exits 3");
    let failed = host
        .wait_for(Duration::from_secs(10), |v| v["event"] == "auth_failed")
        .expect("serve reports the failed attempt");
    assert!(
        failed["peer_id"].is_u64() && failed["failures"] == 1,
        "{failed}"
    );
    let p = peer(&lab, &code, 9101);
    assert_eq!(Sha256::digest(download(&lab, 9101)), Sha256::digest(&body));
    p.kill();
    assert!(host.is_running());
    let (status, _) = host.terminate(Duration::from_secs(10));
    assert_eq!(status, Some(0));
}

/// A UDP echo service in node a at `addr`; returns the set of sources it has seen.
fn udp_echo(lab: &Lab, addr: &str) -> Arc<Mutex<HashSet<SocketAddr>>> {
    let sock = lab.in_node("a", || UdpSocket::bind(addr).unwrap());
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            s.lock().unwrap().insert(from);
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    seen
}

/// A lab (a behind a port-restricted NAT, b behind `b`) with the relay and a UDP echo
/// service on a's 127.0.0.1:7000; the sources the service has seen.
#[allow(clippy::type_complexity)]
fn udp_lab(b: Kind) -> Option<(Lab, common::relay::Relay, Arc<Mutex<HashSet<SocketAddr>>>)> {
    let lab = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(b))?;
    let r = common::relay::start(&lab, 3478);
    let seen = udp_echo(&lab, "127.0.0.1:7000");
    Some((lab, r, seen))
}

/// A UDP client socket in node b, connected to the connector's `--local-udp` port.
fn udp_client(lab: &Lab, port: u16) -> UdpSocket {
    let c = lab.in_node("b", || UdpSocket::bind("127.0.0.1:0").unwrap());
    c.connect(("127.0.0.1", port)).unwrap();
    c
}

/// Sends a probe until the echo comes back (the connector opens its UDP port once QUIC is
/// up, a moment after `authenticated`).
fn until_echoed(c: &UdpSocket) {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let _ = c.send(b"ping");
        match c.recv(&mut buf) {
            Ok(4) => return,
            // Nothing bound there yet (ICMP port unreachable comes back at once).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {}
        }
    }
    panic!("the UDP service never answered through punch");
}

/// `punch listen --expose-udp` behind a port-restricted NAT, `connect --local-udp` behind a
/// symmetric one; returns both sides.
fn udp_pair(lab: &Lab, code: &str, port: u16) -> (Live, Live) {
    let host = at_relay(
        lab,
        "a",
        &["listen", "--code", code, "--expose-udp", "127.0.0.1:7000"],
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut guest = at_relay(
        lab,
        "b",
        &["connect", code, "--local-udp", &port.to_string()],
    );
    for what in ["authenticated", "listening_udp"] {
        guest
            .wait_for(Duration::from_secs(20), |v| v["event"] == what)
            .unwrap_or_else(|| panic!("no {what} event"));
    }
    (host, guest)
}

/// 1,000 datagrams of 16 to 1,200 bytes to an echo service behind a port-restricted NAT from
/// behind a symmetric one: at least 99 % come back intact.
#[test]
fn udp_echo_through_port_restricted_from_symmetric() {
    let Some((lab, _r, _)) = udp_lab(Kind::Symmetric) else {
        return;
    };
    let (host, guest) = udp_pair(&lab, "51-lantern-harbor", 7001);
    let c = udp_client(&lab, 7001);
    until_echoed(&c);
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut intact = 0;
    let mut buf = vec![0u8; 2048];
    for i in 0..1000u64 {
        let len = 16 + (i as usize * 1185 / 999);
        let d = noise(len, i + 1);
        c.send(&d).unwrap();
        // Skip late echoes of earlier datagrams.
        while let Ok(n) = c.recv(&mut buf) {
            if buf[..n] == d[..] {
                intact += 1;
                break;
            }
        }
    }
    // The largest datagram carried whole (README quotes it): larger ones are dropped.
    let mut echoes = |len: usize| {
        let d = noise(len, len as u64);
        c.send(&d).unwrap();
        while let Ok(n) = c.recv(&mut buf) {
            if buf[..n] == d[..] {
                return true;
            }
        }
        false
    };
    let (mut lo, mut hi) = (1200, 1500);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if echoes(mid) {
            lo = mid
        } else {
            hi = mid
        }
    }
    eprintln!("largest datagram carried: {lo} bytes");
    guest.kill();
    host.kill();
    eprintln!("{intact} of 1000 datagrams came back intact");
    assert!(intact >= 990, "{intact} of 1000 came back intact");
}

/// 8 clients, each its own flow, at 60 datagrams/s for 60 s: no loss on the lossless lab,
/// and the service sees 8 distinct sources (one per flow) besides the first probe's.
/// Once in 45 runs here, one client got 3,596 of its 3,600 echoes back (the others all of
/// theirs); the cause is not known (18 sessions of 8 × 300–500 datagrams/s across the
/// relay-to-direct switch lost none), so the run prints both sides' paths, and a failure the
/// missing datagrams' numbers, both sides' events and the hosts' UDP counters.
#[test]
fn udp_eight_clients_for_a_minute_lose_nothing() {
    let Some((lab, _r, seen)) = udp_lab(Kind::Symmetric) else {
        return;
    };
    let t_pair = Instant::now();
    let (host, guest) = udp_pair(&lab, "52-lantern-harbor", 7002);
    until_echoed(&udp_client(&lab, 7002));
    let per = 3600u32;
    let t0 = Instant::now();
    let missing: Vec<Vec<u32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u32)
            .map(|k| {
                let c = udp_client(&lab, 7002);
                s.spawn(move || {
                    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut echoed = HashSet::new();
                    let mut buf = [0u8; 64];
                    let start = Instant::now();
                    for i in 0..per {
                        let at = start + Duration::from_micros(i as u64 * 1_000_000 / 60);
                        while Instant::now() < at {
                            if let Ok(8) = c.recv(&mut buf) {
                                echoed.insert(u32::from_be_bytes(buf[4..8].try_into().unwrap()));
                            }
                        }
                        let mut d = k.to_be_bytes().to_vec();
                        d.extend_from_slice(&i.to_be_bytes());
                        c.send(&d).unwrap();
                    }
                    let end = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < end {
                        if let Ok(8) = c.recv(&mut buf) {
                            echoed.insert(u32::from_be_bytes(buf[4..8].try_into().unwrap()));
                        }
                    }
                    (0..per)
                        .filter(|i| !echoed.contains(i))
                        .collect::<Vec<u32>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (gevs, hevs) = (guest.kill(), host.kill());
    let got: Vec<usize> = missing.iter().map(|m| per as usize - m.len()).collect();
    eprintln!("echoed per client: {got:?}");
    let paths = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter(|e| e["event"] == "connected")
            .map(|e| format!("{} {} at {} ms", e["path"], e["method"], e["elapsed_ms"]))
            .collect()
    };
    eprintln!(
        "clients started {:?} after the host; guest paths {:?}; host paths {:?}",
        t0 - t_pair,
        paths(&gevs),
        paths(&hevs)
    );
    if missing.iter().any(|m| !m.is_empty()) {
        // Which datagrams (each sent at its number / 60 s after the clients started), and
        // the sessions' events around them.
        eprintln!("missing datagram numbers per client (sent at number / 60 s): {missing:?}");
        eprintln!("guest: {gevs:?}\nhost: {hevs:?}");
        // Whether a socket buffer overflowed in either host (RcvbufErrors, InErrors).
        for node in ["a", "b"] {
            let snmp = lab.in_node(node, || std::fs::read_to_string("/proc/net/snmp"));
            let udp: Vec<String> = snmp
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("Udp:"))
                .map(str::to_string)
                .collect();
            eprintln!("{node}: {udp:?}");
        }
    }
    assert_eq!(got, vec![per as usize; 8], "datagrams echoed per client");
    assert_eq!(seen.lock().unwrap().len(), 9, "one source per flow");
}

/// `punch serve --expose-udp` alone: two peers, each with its own UDP client, get their own
/// echoes (the flows of different peers' sessions do not mix); SIGTERM ends serve with exit
/// 0 and the peers, told, end with exit 0 at once.
#[test]
fn serve_carries_udp_for_two_peers() {
    let Some((lab, _r, seen)) = udp_lab(Kind::FullCone) else {
        return;
    };
    let (host, code) = serving(&lab, &["--expose-udp", "127.0.0.1:7000"]);
    let peers: Vec<Live> = [7201u16, 7202]
        .iter()
        .map(|p| {
            let mut g = at_relay(
                &lab,
                "b",
                &["connect", &code, "--local-udp", &p.to_string()],
            );
            g.wait_for(Duration::from_secs(20), |v| v["event"] == "authenticated")
                .expect("authenticated");
            g
        })
        .collect();
    for (k, port) in [7201u16, 7202].into_iter().enumerate() {
        let c = udp_client(&lab, port);
        until_echoed(&c);
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 256];
        for i in 0..100u64 {
            let d = noise(100, (k as u64) << 32 | i);
            c.send(&d).unwrap();
            let n = c.recv(&mut buf).expect("echo");
            assert_eq!(&buf[..n], &d[..]);
        }
    }
    assert_eq!(seen.lock().unwrap().len(), 2, "one source per peer's flow");
    let (status, events) = host.terminate(Duration::from_secs(10));
    // The peers hear that serve closed their sessions.
    for p in peers {
        let t = Instant::now();
        let (code, _, _) = p.finish();
        assert_eq!(code, Some(0), "a peer of a stopped serve exits 0");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    assert_eq!(
        events
            .iter()
            .filter(|v| v["event"] == "peer_joined")
            .count(),
        2
    );
    assert_eq!(status, Some(0));
}

/// serve behind a router that maps ports (PCP): each peer's session maps its punch port;
/// SIGTERM ends serve with exit 0 and the router's table is empty again.
#[test]
fn serve_removes_its_router_mappings_on_sigterm() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::Symmetric)
            .portmap_a("all"),
    ) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    udp_echo(&lab, "127.0.0.1:7000");
    let (mut host, code) = serving(&lab, &["--expose-udp", "127.0.0.1:7000"]);
    let mut g = at_relay(&lab, "b", &["connect", &code, "--local-udp", "7301"]);
    g.wait_for(Duration::from_secs(20), |v| v["event"] == "authenticated")
        .expect("authenticated");
    let m = host
        .wait_for(Duration::from_secs(20), |v| {
            v["event"] == "mapped" && v["peer_id"].is_u64()
        })
        .expect("the peer's session maps its port");
    assert_eq!(m["via"], "pcp", "{m}");
    until_echoed(&udp_client(&lab, 7301));
    let (status, _) = host.terminate(Duration::from_secs(10));
    assert_eq!(status, Some(0));
    g.kill();
    let gw = lab.get("A_GW");
    let out = lab
        .cmd("a", "upnpc")
        .args(["-u", &format!("http://{gw}:5000/rootDesc.xml"), "-l"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(!list.contains(" UDP "), "mapping left behind:\n{list}");
}
