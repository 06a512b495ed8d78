//! punch on the NAT lab with the relay on the public node: every ordered pair of NAT kinds
//! pipes 1 MiB of random data each way, intact, direct wherever an endpoint-independent
//! mapping allows it; a wrong code fails on both sides with nothing on stdout.
mod common;

use common::lab::{Kind, Lab};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Side {
    code: Option<i32>,
    stdout: Vec<u8>,
    /// When stdout's bytes arrived: (time since start, bytes so far), one per read.
    arrivals: Vec<(Duration, usize)>,
    events: Vec<Value>,
    stderr: String,
}

fn side(lab: &Lab, node: &str, args: &[&str], input: Vec<u8>) -> std::thread::JoinHandle<Side> {
    side_with(lab, node, args, move |mut stdin| {
        let _ = stdin.write_all(&input);
    })
}

/// Writes stdin in 16 KiB chunks `pace` apart (a transfer that lasts).
fn side_paced(
    lab: &Lab,
    node: &str,
    args: &[&str],
    input: Vec<u8>,
    pace: Duration,
) -> std::thread::JoinHandle<Side> {
    side_with(lab, node, args, move |mut stdin| {
        for c in input.chunks(16 * 1024) {
            let _ = stdin.write_all(c);
            std::thread::sleep(pace);
        }
    })
}

/// Writes `first`, stays silent for `pause`, then writes `second`.
fn side_with_pause(
    lab: &Lab,
    node: &str,
    args: &[&str],
    first: Vec<u8>,
    pause: Duration,
    second: Vec<u8>,
) -> std::thread::JoinHandle<Side> {
    side_with(lab, node, args, move |mut stdin| {
        let _ = stdin.write_all(&first);
        let _ = stdin.flush();
        std::thread::sleep(pause);
        let _ = stdin.write_all(&second);
    })
}

/// How long a side may run before the watchdog kills it.
fn limit_for(args: &[&str]) -> Duration {
    if args.contains(&"--keepalive") {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    }
}

/// Runs `punch ARGS --relay PUB_IP --json` in a node; `write` feeds its stdin (closed when
/// `write` returns). stdout and stderr are read while it runs; a watchdog kills a hung side.
fn side_with(
    lab: &Lab,
    node: &str,
    args: &[&str],
    write: impl FnOnce(std::process::ChildStdin) + Send + 'static,
) -> std::thread::JoinHandle<Side> {
    let mut child = common::punch::spawn_at_relay(lab, node, args);
    let stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || write(stdin));
    let pid = child.id() as i32;
    let limit = limit_for(args);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        while !d2.load(std::sync::atomic::Ordering::SeqCst) {
            if t.elapsed() > limit {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t0 = Instant::now();
    let stdout = std::thread::spawn(move || {
        let (mut all, mut arrivals, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 64 * 1024]);
        while let Ok(k @ 1..) = out.read(&mut buf) {
            all.extend_from_slice(&buf[..k]);
            arrivals.push((t0.elapsed(), all.len()));
        }
        (all, arrivals)
    });
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    std::thread::spawn(move || {
        let status = child.wait().unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (stdout, arrivals) = stdout.join().unwrap();
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).to_string();
        Side {
            code: status.code(),
            stdout,
            arrivals,
            events: stderr
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
            stderr,
        }
    })
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761).to_be_bytes()[(i % 3) + 1] ^ rand_byte();
    }
    v
}

fn rand_byte() -> u8 {
    rand::random()
}

fn connected(s: &Side) -> Value {
    s.events
        .iter()
        .find(|e| e["event"] == "connected")
        .cloned()
        .unwrap_or_else(|| panic!("no connected event: {}", s.stderr))
}

/// Listener in host a, connector in host b, 1 MiB of random data each way; both must exit 0
/// with the other's bytes intact. Returns both sides for further checks.
fn exchange_1mib(lab: &Lab, code: &str, what: &str) -> (Side, Side) {
    exchange_1mib_with(lab, code, what, &[])
}

/// [`exchange_1mib`] with `extra` arguments on both sides.
fn exchange_1mib_with(lab: &Lab, code: &str, what: &str, extra: &[&str]) -> (Side, Side) {
    exchange_1mib_paced(lab, code, what, extra, Duration::ZERO)
}

/// [`exchange_1mib_with`], each side writing its input in 16 KiB chunks `pace` apart (a
/// session that lasts, for what arrives later than a fast transfer ends).
fn exchange_1mib_paced(
    lab: &Lab,
    code: &str,
    what: &str,
    extra: &[&str],
    pace: Duration,
) -> (Side, Side) {
    let (da, db) = (random(1 << 20), random(1 << 20));
    let args = [&["listen", "--code", code], extra].concat();
    let la = side_paced(lab, "a", &args, da.clone(), pace);
    std::thread::sleep(Duration::from_millis(200));
    let args = [&["connect", code], extra].concat();
    let lb = side_paced(lab, "b", &args, db.clone(), pace);
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    assert_eq!(sa.code, Some(0), "{what} listener: {}", sa.stderr);
    assert_eq!(sb.code, Some(0), "{what} connector: {}", sb.stderr);
    assert_eq!(
        Sha256::digest(&sb.stdout),
        Sha256::digest(&da),
        "{what}: listener → connector"
    );
    assert_eq!(
        Sha256::digest(&sa.stdout),
        Sha256::digest(&db),
        "{what}: connector → listener"
    );
    (sa, sb)
}

/// Every `connected` event has the keys scripts rely on, with their types: `path` direct or
/// relay, a `method`, `peer` an IP:PORT, `elapsed_ms` a number; and there is one per path
/// change (never the same path and peer twice in a row).
fn connected_events_keep_the_contract(s: &Side, label: &str) {
    let all: Vec<&Value> = s
        .events
        .iter()
        .filter(|e| e["event"] == "connected")
        .collect();
    assert!(!all.is_empty(), "{label}: no connected event");
    for c in &all {
        assert!(
            c["path"] == "direct" || c["path"] == "relay",
            "{label}: {c}"
        );
        assert!(
            !c["method"].as_str().unwrap_or("").is_empty(),
            "{label}: {c}"
        );
        let peer = c["peer"].as_str().unwrap_or("");
        assert!(peer.parse::<std::net::SocketAddr>().is_ok(), "{label}: {c}");
        assert!(c["elapsed_ms"].is_u64(), "{label}: {c}");
    }
    for w in all.windows(2) {
        assert!(
            (&w[0]["path"], &w[0]["peer"]) != (&w[1]["path"], &w[1]["peer"]),
            "{label}: the same path twice in a row: {} then {}",
            w[0],
            w[1]
        );
    }
}

fn pair(a: Kind, b: Kind, expect_direct: bool) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let code = format!("{}-lantern-harbor", 100 + rand::random::<u16>() % 800);
    let (sa, sb) = exchange_1mib(&lab, &code, &format!("{a:?} x {b:?}"));
    let want = if expect_direct { "direct" } else { "relay" };
    for s in [&sa, &sb] {
        // Both classifications predict the path. A direct transfer may end before the
        // classification (half a second) does; a relayed one waits for it: the prediction is
        // what sends it to the relay before the 3 s punching bound.
        let nat = s.events.iter().find(|e| e["event"] == "nat");
        if let Some(n) = nat {
            if expect_direct {
                assert_eq!(n["expect"]["path"], "direct", "{a:?} x {b:?}: {n}");
            } else {
                // Relayed first; birthday probing may then find a direct path
                // (tests/punch_hard_lab.rs).
                let t = &n["expect"]["technique"];
                assert!(t == "relay" || t == "birthday", "{a:?} x {b:?}: {n}");
            }
        }
        let c = connected(s);
        if !expect_direct {
            assert!(nat.is_some(), "{a:?} x {b:?}: no nat event: {}", s.stderr);
            assert!(
                c["elapsed_ms"].as_u64().unwrap() < 2500,
                "{a:?} x {b:?}: relay only after the punching bound: {c}"
            );
        }
        assert_eq!(c["path"], want, "{a:?} x {b:?}: {}", s.stderr);
        assert_eq!(c["method"], "udp");
        connected_events_keep_the_contract(s, &format!("{a:?} x {b:?}"));
        let done = s
            .events
            .iter()
            .find(|e| e["event"] == "done")
            .expect("done event");
        assert_eq!(done["bytes_sent"], 1 << 20);
        assert_eq!(done["bytes_received"], 1 << 20);
    }
}

macro_rules! matrix {
    ($($name:ident: $a:ident x $b:ident => $direct:expr;)*) => {
        $(#[test] fn $name() { pair(Kind::$a, Kind::$b, $direct); })*
    };
}

matrix! {
    open_x_open: Open x Open => true;
    open_x_full_cone: Open x FullCone => true;
    open_x_restricted: Open x Restricted => true;
    open_x_port_restricted: Open x PortRestricted => true;
    open_x_symmetric: Open x Symmetric => true;
    full_cone_x_open: FullCone x Open => true;
    full_cone_x_full_cone: FullCone x FullCone => true;
    full_cone_x_restricted: FullCone x Restricted => true;
    full_cone_x_port_restricted: FullCone x PortRestricted => true;
    full_cone_x_symmetric: FullCone x Symmetric => true;
    restricted_x_open: Restricted x Open => true;
    restricted_x_full_cone: Restricted x FullCone => true;
    restricted_x_restricted: Restricted x Restricted => true;
    restricted_x_port_restricted: Restricted x PortRestricted => true;
    restricted_x_symmetric: Restricted x Symmetric => true;
    port_restricted_x_open: PortRestricted x Open => true;
    port_restricted_x_full_cone: PortRestricted x FullCone => true;
    port_restricted_x_restricted: PortRestricted x Restricted => true;
    port_restricted_x_port_restricted: PortRestricted x PortRestricted => true;
    port_restricted_x_symmetric: PortRestricted x Symmetric => false;
    symmetric_x_open: Symmetric x Open => true;
    symmetric_x_full_cone: Symmetric x FullCone => true;
    symmetric_x_restricted: Symmetric x Restricted => true;
    symmetric_x_port_restricted: Symmetric x PortRestricted => false;
    symmetric_x_symmetric: Symmetric x Symmetric => false;
}

/// A wrong code between two sides of `a` × `b`: both fail within 5 s of the connector's
/// start, say "wrong code" (exit 3), and write nothing to stdout.
fn wrong_code(a: Kind, b: Kind) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let la = side(
        &lab,
        "a",
        &["listen", "--code", "9-lantern-harbor"],
        b"secret".to_vec(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let lb = side(
        &lab,
        "b",
        &["connect", "9-lantern-harvest"],
        b"secret too".to_vec(),
    );
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    for s in [&sa, &sb] {
        assert_eq!(s.code, Some(3), "{}", s.stderr);
        assert!(s.stderr.contains("wrong code"), "{}", s.stderr);
        assert!(s.stdout.is_empty());
    }
}

#[test]
fn wrong_code_fails_on_both_sides_within_5s_with_nothing_on_stdout() {
    wrong_code(Kind::PortRestricted, Kind::PortRestricted);
}

/// The same through the relay (no direct path between two symmetric NATs).
#[test]
fn wrong_code_through_the_relay_fails_the_same_way() {
    wrong_code(Kind::Symmetric, Kind::Symmetric);
}

#[test]
fn five_percent_loss_keeps_transfers_intact() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::Restricted)
            .loss(5),
    ) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    exchange_1mib(&lab, "31-lantern-harbor", "5 % loss");
}

/// Captures every IPv4 packet in a namespace (AF_PACKET) until `stop` is set.
fn capture(
    ns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        common::lab::in_ns(&ns, || {
            // SAFETY: plain socket calls on a descriptor this function owns.
            unsafe {
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM,
                    (libc::ETH_P_IP as u16).to_be() as i32,
                );
                assert!(fd >= 0, "AF_PACKET socket");
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                // Regression (CI, after punch got faster): with the default receive buffer
                // the capture dropped packets of a fast relayed transfer.
                let rcvbuf: libc::c_int = 64 << 20;
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &rcvbuf as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
                let mut all = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n > 0 {
                        all.extend_from_slice(&buf[..n as usize]);
                    }
                }
                libc::close(fd);
                all
            }
        })
    })
}

/// Through the relay, the relay's node sees only ciphertext: none of the plaintext appears in
/// any packet it handles (the capture holds every frame of the public node's interface, UDP
/// and TCP alike). The pair must have no direct path: symmetric × symmetric over UDP, and
/// udp-blocked × symmetric, whose blocked side reaches the relay over TCP.
fn relay_sees_only_ciphertext(a: Kind, b: Kind, over: &str) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cap = capture(lab.ns("pub"), stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let marker = b"NATKIT-PLAINTEXT-MARKER-";
    let plain: Vec<u8> = marker.iter().copied().cycle().take(256 * 1024).collect();
    let la = side(
        &lab,
        "a",
        &["listen", "--code", "32-lantern-harbor"],
        plain.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let lb = side(&lab, "b", &["connect", "32-lantern-harbor"], plain.clone());
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = cap.join().unwrap();
    assert_eq!(sa.code, Some(0), "{}", sa.stderr);
    assert_eq!(sb.code, Some(0), "{}", sb.stderr);
    assert_eq!(connected(&sa)["path"], "relay");
    assert_eq!(sb.stdout, plain);
    assert_eq!(sa.stdout, plain);
    // On the relay path, `method` names how this side reaches the relay.
    assert_eq!(connected(&sa)["method"], over, "{}", sa.stderr);
    assert!(
        seen.len() > 2 * plain.len(),
        "the capture saw the relayed traffic ({} bytes)",
        seen.len()
    );
    assert!(
        !seen.windows(marker.len()).any(|w| w == marker),
        "plaintext seen at the relay"
    );
}

#[test]
fn relay_forwards_only_ciphertext() {
    relay_sees_only_ciphertext(Kind::Symmetric, Kind::Symmetric, "udp");
}

#[test]
fn relay_over_tcp_forwards_only_ciphertext() {
    relay_sees_only_ciphertext(Kind::UdpBlocked, Kind::Symmetric, "tcp");
}

use common::punch::{http_get, http_server};

#[test]
fn hosting_a_web_server_serves_20_concurrent_downloads() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(Kind::Symmetric))
    else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let body = random(1 << 20);
    let l = lab.in_node("a", || {
        std::net::TcpListener::bind("127.0.0.1:8000").unwrap()
    });
    http_server(l, body.clone());
    let mut host = lab
        .cmd("a", env!("CARGO_BIN_EXE_punch"))
        .args([
            "listen",
            "--code",
            "41-lantern-harbor",
            "--expose",
            "127.0.0.1:8000",
        ])
        .args(["--relay", lab.get("PUB_IP"), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut guest = lab
        .cmd("b", env!("CARGO_BIN_EXE_punch"))
        .args(["connect", "41-lantern-harbor", "--local", "9000"])
        .args(["--relay", lab.get("PUB_IP"), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest is authenticated and listening.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(guest.stderr.take().unwrap()));
    let mut ready = (false, false);
    while !(ready.0 && ready.1) {
        let line = lines.next().expect("guest ended early").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        ready.0 |= v["event"] == "listening";
        ready.1 |= v["event"] == "authenticated";
    }
    let ns = lab.ns("b");
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let ns = ns.clone();
            std::thread::spawn(move || common::lab::in_ns(&ns, || http_get("127.0.0.1:9000")))
        })
        .collect();
    for h in handles {
        assert_eq!(Sha256::digest(h.join().unwrap()), Sha256::digest(&body));
    }
    // Hosting lasts until interrupted: both sides are still up after serving all 20.
    assert!(host.try_wait().unwrap().is_none(), "the host exited");
    assert!(guest.try_wait().unwrap().is_none(), "the guest exited");
    let _ = guest.kill();
    let _ = host.kill();
    let _ = guest.wait();
    let _ = host.wait();
}

/// The listener's router forgets every NAT binding (conntrack flushed) in the middle of a
/// transfer: the transfer still completes intact, with a stall of at most 10 s.
#[test]
fn conntrack_flush_mid_transfer_costs_a_short_stall_not_data() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::PortRestricted),
    ) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let data = random(60 * 16 * 1024);
    let t = Instant::now();
    let la = side_paced(
        &lab,
        "a",
        &["listen", "--code", "33-lantern-harbor"],
        data.clone(),
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_millis(200));
    let started = t.elapsed();
    let lb = side(&lab, "b", &["connect", "33-lantern-harbor"], vec![]);
    std::thread::sleep(Duration::from_millis(2500));
    let flushed = t.elapsed();
    lab.flush("ra");
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    assert_eq!(sa.code, Some(0), "{}", sa.stderr);
    assert_eq!(sb.code, Some(0), "{}", sb.stderr);
    assert_eq!(Sha256::digest(&sb.stdout), Sha256::digest(&data));
    // The stall is the longest time the receiver's output stood still: the data is written
    // at 160 KiB/s, so a stall is a gap in arrivals, not a backlog. Arrival times are on the
    // connector's clock, which started at `started`.
    let arrived: Vec<(Duration, usize)> =
        sb.arrivals.iter().map(|&(a, n)| (started + a, n)).collect();
    let before = arrived.iter().filter(|a| a.0 < flushed).count();
    assert!(
        before > 0 && arrived[before - 1].1 < data.len(),
        "the flush did not fall mid-transfer (flush at {flushed:?}): {arrived:?}"
    );
    let (stall, at) = arrived
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[0]))
        .max_by_key(|g| g.0)
        .expect("data arrived in pieces");
    eprintln!(
        "flush at {flushed:?}; longest stall {stall:?} after {} bytes at {:?}; total {:?}",
        at.1,
        at.0,
        t.elapsed()
    );
    assert!(stall <= Duration::from_secs(10), "stalled {stall:?}");
    // And the whole session: 6 s of writing, the stall, and a prompt exit.
    assert!(
        t.elapsed() < Duration::from_secs(6 + 10 + 2),
        "took {:?}",
        t.elapsed()
    );
}

/// Both routers forget idle UDP bindings after 10 s; with keepalives every 4 s the session
/// survives 60 s of silence and more data flows afterwards.
#[test]
fn keepalives_carry_a_session_through_60s_of_silence() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .timeout_a(10)
            .b(Kind::PortRestricted)
            .timeout_b(10),
    ) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let (first, second) = (random(64 * 1024), random(64 * 1024));
    let la = side_with_pause(
        &lab,
        "a",
        &["listen", "--code", "34-lantern-harbor", "--keepalive", "4"],
        first.clone(),
        Duration::from_secs(60),
        second.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let lb = side(
        &lab,
        "b",
        &["connect", "34-lantern-harbor", "--keepalive", "4"],
        vec![],
    );
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    assert_eq!(sa.code, Some(0), "{}", sa.stderr);
    assert_eq!(sb.code, Some(0), "{}", sb.stderr);
    assert_eq!(sb.stdout, [first, second].concat());
    assert_eq!(connected(&sb)["path"], "direct");
}

/// A side whose UDP is blocked meets over TCP and goes through the relay over TCP at once
/// (its NAT classification says UDP is blocked, so nobody waits for the UDP punching bound);
/// then, without --tcp, TCP hole punching finds a direct path and the pipe moves to it.
fn udp_blocked_x_port_restricted(a: Kind, b: Kind) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    // Paced, so the transfer is still running when the pipe moves to TCP.
    let (sa, sb) = exchange_1mib_paced(
        &lab,
        "35-lantern-harbor",
        &format!("{a:?} x {b:?}"),
        &[],
        Duration::from_millis(15),
    );
    let blocked = if a == Kind::UdpBlocked { &sa } else { &sb };
    assert_eq!(connected(blocked)["method"], "tcp", "{}", blocked.stderr);
    for s in [&sa, &sb] {
        assert_eq!(connected(s)["path"], "relay", "{}", s.stderr);
        // UDP detection (3 s of unanswered sends to the relay), then the relay at once.
        let first = connected(s)["elapsed_ms"].as_u64().unwrap();
        assert!(first < 5_500, "relayed after {first} ms: {}", s.stderr);
        let last = last_connected(s);
        assert_eq!(last["path"], "direct", "{}", s.stderr);
        assert_eq!(last["method"], "tcp", "{}", s.stderr);
    }
}

#[test]
fn udp_blocked_goes_through_the_relay_over_tcp() {
    udp_blocked_x_port_restricted(Kind::UdpBlocked, Kind::PortRestricted);
}

/// The same with the blocked side connecting.
#[test]
fn udp_blocked_connector_goes_through_the_relay_over_tcp() {
    udp_blocked_x_port_restricted(Kind::PortRestricted, Kind::UdpBlocked);
}

/// UDP blocked on one side and a symmetric NAT on the other: TCP hole punching cannot work
/// either (`tried`), and the data goes through the relay over TCP, intact. The pipe does not
/// wait for TCP: 16 KiB every 200 ms keeps the session past the TCP budget.
#[test]
fn udp_blocked_x_symmetric_stays_on_the_relay_over_tcp() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::UdpBlocked).b(Kind::Symmetric)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let (sa, sb) = exchange_1mib_paced(
        &lab,
        "36-lantern-harbor",
        "udp-blocked x symmetric",
        &[],
        Duration::from_millis(200),
    );
    for s in [&sa, &sb] {
        tcp_tried(s);
        assert_eq!(last_connected(s)["path"], "relay", "{}", s.stderr);
    }
    assert_eq!(last_connected(&sa)["method"], "tcp");
}

/// A port the router maps (miniupnpd: PCP first) is offered as a candidate: symmetric ×
/// port-restricted, which otherwise needs the relay, connects directly when the
/// port-restricted side's router forwards the punch port; the mapping is gone after exit.
fn mapped_port_pair(a: Kind, b: Kind, mapped_side: &str) {
    let builder = Lab::builder().a(a).b(b);
    let builder = if mapped_side == "a" {
        builder.portmap_a("all")
    } else {
        builder.portmap_b("all")
    };
    let Some(lab) = Lab::up_or_skip(builder) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let code = format!("{}-lantern-harbor", 100 + rand::random::<u16>() % 800);
    // The session lasts ~1.3 s: the router's answer (and so the `mapped` event) may come
    // after a direct 1 MiB transfer would have ended.
    let (sa, sb) = exchange_1mib_paced(
        &lab,
        &code,
        &format!("{a:?} x {b:?} (mapped {mapped_side})"),
        &[],
        Duration::from_millis(20),
    );
    let mapped = if mapped_side == "a" { &sa } else { &sb };
    let m = mapped
        .events
        .iter()
        .find(|e| e["event"] == "mapped")
        .unwrap_or_else(|| panic!("no mapped event: {}", mapped.stderr));
    assert_eq!(m["via"], "pcp", "{m}");
    // The path in use at the end is direct (a classification that arrived before the
    // mapping may have sent the session to the relay first; the upgrade brings it back).
    let last_connected = |s: &Side| {
        s.events
            .iter()
            .rev()
            .find(|e| e["event"] == "connected")
            .cloned()
            .unwrap_or_else(|| panic!("no connected event: {}", s.stderr))
    };
    for s in [&sa, &sb] {
        assert_eq!(last_connected(s)["path"], "direct", "{}", s.stderr);
    }
    // The other side talks to the mapped address.
    let other = if mapped_side == "a" { &sb } else { &sa };
    assert_eq!(
        last_connected(other)["peer"],
        m["external"],
        "{}",
        other.stderr
    );
    // Removed at exit: miniupnpd's table is empty again.
    let router_gw = lab.get(if mapped_side == "a" { "A_GW" } else { "B_GW" });
    let out = lab
        .cmd(mapped_side, "upnpc")
        .args(["-u", &format!("http://{router_gw}:5000/rootDesc.xml"), "-l"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(!list.contains(" UDP "), "mapping left behind:\n{list}");
}

#[test]
fn symmetric_x_port_restricted_with_a_mapped_port_connects_directly() {
    mapped_port_pair(Kind::Symmetric, Kind::PortRestricted, "b");
}

#[test]
fn port_restricted_with_a_mapped_port_x_symmetric_connects_directly() {
    mapped_port_pair(Kind::PortRestricted, Kind::Symmetric, "a");
}

/// `--manual`: no relay anywhere; each side prints an offer that the other takes (the
/// listener waits for the connector's in a file, as a person would paste it later), both
/// port-restricted NATs are punched directly, 1 MiB each way intact. The connector, which
/// gets the listener's offer first, sends only low-TTL packets until the listener probes.
#[test]
fn manual_offers_punch_two_port_restricted_nats_without_any_server() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::PortRestricted),
    ) else {
        return;
    };
    // Only a STUN server (coturn) on the public node: no natkit relay.
    let _stun = common::coturn::start(&lab);
    let dir = std::env::temp_dir().join(format!("natkit-manual-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let offer_file = dir.join("connector-offer");
    let (da, db) = (random(1 << 20), random(1 << 20));
    let stun = lab.get("PUB_IP").to_string();
    let mut l = common::punch::manual_side(
        &lab,
        "a",
        &[
            "listen",
            "--code",
            "9-lantern-harbor",
            "--stun",
            &stun,
            "--peer-file",
            offer_file.to_str().unwrap(),
        ],
        da.clone(),
    );
    let offer_l = common::punch::offer_of(&mut l);
    assert!(offer_l.contains(lab.get("A_WAN")), "{offer_l}");
    let mut c = common::punch::manual_side(
        &lab,
        "b",
        &[
            "connect",
            "9-lantern-harbor",
            "--stun",
            &stun,
            "--peer",
            &offer_l,
        ],
        db.clone(),
    );
    let offer_c = common::punch::offer_of(&mut c);
    // The person takes a moment to paste it.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&offer_file, format!("{offer_c}\n")).unwrap();
    let (lcode, lout, levents) = l.finish();
    let (ccode, cout, cevents) = c.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(lcode, Some(0), "{levents:?}");
    assert_eq!(ccode, Some(0), "{cevents:?}");
    assert_eq!(Sha256::digest(&cout), Sha256::digest(&da));
    assert_eq!(Sha256::digest(&lout), Sha256::digest(&db));
    for evs in [&levents, &cevents] {
        let conn = evs
            .iter()
            .find(|e| e["event"] == "connected")
            .unwrap_or_else(|| panic!("{evs:?}"));
        assert_eq!(conn["path"], "direct", "{evs:?}");
        assert!(!evs.iter().any(|e| e["event"] == "registered"), "{evs:?}");
    }
}

/// The `tried` event of a TCP punch that found nothing.
fn tcp_tried(s: &Side) -> &Value {
    let t = s
        .events
        .iter()
        .find(|e| e["event"] == "tried" && e["method"] == "tcp")
        .unwrap_or_else(|| panic!("no tried tcp event: {}", s.stderr));
    assert_eq!(t["found"], false);
    t
}

/// The last `connected` event: the path the data ended on.
fn last_connected(s: &Side) -> Value {
    s.events
        .iter()
        .rev()
        .find(|e| e["event"] == "connected")
        .cloned()
        .unwrap_or_else(|| panic!("no connected event: {}", s.stderr))
}

// `--tcp` for every pair of the matrix (time to first byte, the move from QUIC to TCP, a
// symmetric NAT's `tried`) is in tests/punch_tcp_lab.rs.

/// Both routers forget an idle TCP connection after 10 s (conntrack's established timeout,
/// RFC 5382 allows routers far less than Linux's 5 days); with TCP keepalives at the
/// `--keepalive` interval, a punched TCP session survives 30 s of silence and more data
/// flows afterwards. (Without them, the first side to speak again re-creates only its own
/// mapping, and the peer's router answers its segment with a reset.)
#[test]
fn tcp_keepalives_carry_a_punched_connection_through_silence() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::PortRestricted),
    ) else {
        return;
    };
    for router in ["ra", "rb"] {
        lab.run_in(
            router,
            "sysctl",
            &[
                "-qw",
                "net.netfilter.nf_conntrack_tcp_timeout_established=10",
            ],
        )
        .unwrap();
    }
    let _r = common::relay::start(&lab, 3478);
    let (first, second) = (random(64 * 1024), random(64 * 1024));
    let la = side_with_pause(
        &lab,
        "a",
        &[
            "listen",
            "--code",
            "38-lantern-harbor",
            "--tcp",
            "--keepalive",
            "4",
        ],
        first.clone(),
        Duration::from_secs(30),
        second.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    // The connector keeps its direction open through the silence too: a half-closed
    // connection is in conntrack's close-wait state, whose timeout is another.
    let (third, fourth) = (random(1024), random(1024));
    let lb = side_with_pause(
        &lab,
        "b",
        &["connect", "38-lantern-harbor", "--tcp", "--keepalive", "4"],
        third.clone(),
        Duration::from_secs(30),
        fourth.clone(),
    );
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    assert_eq!(sa.code, Some(0), "{}", sa.stderr);
    assert_eq!(sb.code, Some(0), "{}", sb.stderr);
    assert_eq!(sb.stdout, [first, second].concat());
    assert_eq!(sa.stdout, [third, fourth].concat());
    let c = last_connected(&sb);
    assert_eq!(
        (&c["path"], &c["method"]),
        (&"direct".into(), &"tcp".into()),
        "{c}"
    );
}
