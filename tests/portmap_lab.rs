//! portmap against the real miniupnpd (UPnP IGD, NAT-PMP, PCP) on the lab's router; every
//! mapping is checked from the lab's public node with a real connection, and UPnP rows against
//! the reference client `upnpc`.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{in_ns, Kind, Lab};
use serde_json::Value;

fn state(tag: &str) -> PathBuf {
    common::miniupnpd::state_file("natkit-portmap", tag)
}

fn portmap(lab: &Lab, st: &std::path::Path, args: &[&str]) -> (Option<i32>, Value, String) {
    common::miniupnpd::portmap_json(lab, st, args)
}

/// Whether a TCP connection from the public node to `dst` reaches `listener` on host A.
fn tcp_reaches(lab: &Lab, listener: &TcpListener, dst: SocketAddrV4) -> bool {
    let connected = in_ns(&lab.ns("pub"), || {
        TcpStream::connect_timeout(&dst.into(), Duration::from_millis(700)).map(|mut s| {
            let _ = s.write_all(b"hi");
        })
    });
    if connected.is_err() {
        return false;
    }
    listener.set_nonblocking(false).unwrap();
    let got = common::lab::accept_timeout(listener, Duration::from_millis(700));
    got.is_ok_and(|(mut s, _)| {
        let mut b = [0u8; 2];
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.read_exact(&mut b).is_ok() && &b == b"hi"
    })
}

/// Whether a datagram from the public node to `dst` reaches `sock` on host A.
fn udp_reaches(lab: &Lab, sock: &UdpSocket, dst: SocketAddrV4) -> bool {
    let nonce: [u8; 8] = rand_bytes();
    in_ns(&lab.ns("pub"), || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = s.send_to(&nonce, dst);
        }
    });
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 64];
    let deadline = Instant::now() + Duration::from_millis(700);
    while Instant::now() < deadline {
        match sock.recv_from(&mut b) {
            Ok((8, _)) if b[..8] == nonce => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

fn rand_bytes() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t ^ 0x9e37_79b9_7f4a_7c15).to_be_bytes()
}

/// The mapping rows of `upnpc -l` (" 0 TCP  7400->192.168.1.2:7400 'desc' '' 30").
fn upnpc_rows(lab: &Lab) -> Vec<String> {
    upnpc_list(lab)
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next().is_some_and(|i| i.parse::<u32>().is_ok())
                && w.next().is_some_and(|p| p == "TCP" || p == "UDP")
        })
        .map(str::to_string)
        .collect()
}

fn upnpc_list(lab: &Lab) -> String {
    let out = lab
        .cmd("a", "upnpc")
        .args(["-u", lab.get("A_UPNP_URL"), "-l"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One protocol, TCP and UDP: add → reachable from outside and listed → delete → closed.
fn add_list_delete(lab: &Lab, via: &str, base: u16) {
    let st = state(via);
    let wan: std::net::Ipv4Addr = lab.ip("A_WAN");
    for (i, proto) in ["tcp", "udp"].into_iter().enumerate() {
        let internal = base + i as u16;
        let external = internal + 10000;
        let (code, v, all) = portmap(
            lab,
            &st,
            &[
                "add",
                &internal.to_string(),
                "--proto",
                proto,
                "--external",
                &external.to_string(),
                "--lifetime",
                "600",
                "--via",
                via,
            ],
        );
        assert_eq!(code, Some(0), "{via} {proto}: {all}");
        assert_eq!(v["mapping"]["via"], via, "{all}");
        assert_eq!(v["mapping"]["external_port"], external, "{all}");
        assert_eq!(v["external"], format!("{wan}:{external}"), "{all}");
        let dst = SocketAddrV4::new(wan, external);
        let reach = |on: bool| {
            if proto == "tcp" {
                let l = in_ns(&lab.ns("a"), || {
                    TcpListener::bind(("0.0.0.0", internal)).unwrap()
                });
                tcp_reaches(lab, &l, dst) == on
            } else {
                let s = in_ns(&lab.ns("a"), || {
                    UdpSocket::bind(("0.0.0.0", internal)).unwrap()
                });
                udp_reaches(lab, &s, dst) == on
            }
        };
        assert!(
            reach(true),
            "{via} {proto}: {dst} not reachable from outside"
        );
        // Listed, with the protocol that made it; the UPnP table agrees with upnpc.
        let (code, l, all) = portmap(lab, &st, &["list"]);
        assert_eq!(code, Some(0), "{all}");
        let row = l["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["external_port"] == external && r["proto"] == proto)
            .unwrap_or_else(|| panic!("{via} {proto} not listed: {l}"))
            .clone();
        assert_eq!(row["via"], via, "{l}");
        assert_eq!(row["mine"], true, "{l}");
        assert_eq!(row["internal"], format!("{}:{internal}", lab.get("A_IP")));
        let reference = upnpc_list(lab);
        for r in l["mappings"].as_array().unwrap() {
            if r["source"] == "upnp" {
                let needle = format!(
                    "{} {:>5}->{}",
                    r["proto"].as_str().unwrap().to_uppercase(),
                    r["external_port"],
                    r["internal"].as_str().unwrap()
                );
                assert!(
                    reference.contains(&needle),
                    "{needle} not in upnpc -l:\n{reference}"
                );
            }
        }
        // Deleted: closed again.
        let (code, d, all) = portmap(
            lab,
            &st,
            &["delete", &internal.to_string(), "--proto", proto],
        );
        assert_eq!(code, Some(0), "{all}");
        assert_eq!(d["removed"][0]["via"], via, "{d}");
        assert!(reach(false), "{via} {proto}: {dst} still open after delete");
        assert!(!upnpc_list(lab).contains(&format!("{external}->")));
    }
    let (code, v, all) = portmap(lab, &st, &["external-ip"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(v["external_ip"], lab.get("A_WAN"));
}

fn portmap_lab() -> Option<Lab> {
    Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::None)
            .portmap_a("all"),
    )
}

#[test]
fn portmap_upnp_maps_tcp_and_udp_reachable_from_outside() {
    let Some(lab) = portmap_lab() else { return };
    add_list_delete(&lab, "upnp", 7100);
}

#[test]
fn portmap_natpmp_maps_tcp_and_udp_reachable_from_outside() {
    let Some(lab) = portmap_lab() else { return };
    add_list_delete(&lab, "natpmp", 7200);
}

#[test]
fn portmap_pcp_maps_tcp_and_udp_reachable_from_outside() {
    let Some(lab) = portmap_lab() else { return };
    add_list_delete(&lab, "pcp", 7300);
}

#[test]
fn portmap_probe_reports_all_three_and_creates_nothing() {
    let Some(lab) = portmap_lab() else { return };
    let st = state("probe");
    let (code, v, all) = portmap(&lab, &st, &["probe"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(
        v["available"],
        serde_json::json!(["pcp", "natpmp", "upnp"]),
        "{v}"
    );
    assert_eq!(v["external_ip"], lab.get("A_WAN"));
    assert_eq!(v["mapping_can_help"], true);
    assert_eq!(v["upnp"]["url"], lab.get("A_UPNP_URL"));
    assert_eq!(
        upnpc_rows(&lab),
        Vec::<String>::new(),
        "probe created a mapping"
    );
}

#[test]
fn portmap_probe_with_miniupnpd_stopped_says_none_within_1s() {
    let Some(lab) = portmap_lab() else { return };
    lab.miniupnpd("ra", "stop").unwrap();
    let st = state("none");
    let t = Instant::now();
    let (code, v, all) = portmap(&lab, &st, &["probe"]);
    let took = t.elapsed();
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(v["available"], serde_json::json!([]), "{v}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(v["why"].as_str().unwrap().contains("answers none"), "{v}");
}

#[test]
fn portmap_probe_with_upnp_off_reports_exactly_natpmp_and_pcp() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::None)
            .portmap_a("natpmp"),
    ) else {
        return;
    };
    let (code, v, all) = portmap(&lab, &state("noupnp"), &["probe"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(v["available"], serde_json::json!(["pcp", "natpmp"]), "{v}");
    assert_eq!(v["upnp"]["available"], false);
}

/// `--keep --lifetime 30`: held for 120 s; a router crash and restart is repaired within one
/// renewal interval (15 s); SIGTERM removes the mapping and its record.
#[test]
fn portmap_keep_survives_a_router_restart_and_cleans_up_on_sigterm() {
    let Some(lab) = portmap_lab() else { return };
    let st = state("keep");
    let wan: std::net::Ipv4Addr = lab.ip("A_WAN");
    let dst = SocketAddrV4::new(wan, 7400);
    let listener = in_ns(&lab.ns("a"), || TcpListener::bind("0.0.0.0:7400").unwrap());
    let mut keep: Child = lab
        .cmd("a", env!("CARGO_BIN_EXE_portmap"))
        .args(["--json", "add", "7400", "--keep", "--lifetime", "30"])
        .env("NATKIT_PORTMAP_STATE", &st)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(keep.stdout.take().unwrap()));
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["ok"], true, "{first}");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let ev = events.clone();
    let reader = std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                ev.lock().unwrap().push(v);
            }
        }
    });
    let t0 = Instant::now();
    assert!(tcp_reaches(&lab, &listener, dst));
    std::thread::sleep(Duration::from_secs(35));
    assert!(
        tcp_reaches(&lab, &listener, dst),
        "lost after the first renewal"
    );
    // The router reboots: miniupnpd restarts with its rules, leases and the router's
    // conntrack gone (a plain kill -9 and restart keeps the lease file and the rules).
    lab.miniupnpd("ra", "reboot").unwrap();
    let restarted = Instant::now();
    let mut back = None;
    while restarted.elapsed() < Duration::from_secs(20) {
        let listed = upnpc_list(&lab).contains("7400->");
        if listed && tcp_reaches(&lab, &listener, dst) {
            back = Some(restarted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let back = back.expect("mapping not back 20 s after the router rebooted");
    assert!(back <= Duration::from_secs(16), "back after {back:?}");
    while t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            tcp_reaches(&lab, &listener, dst),
            "lost at {:?}",
            t0.elapsed()
        );
    }
    // SIGTERM removes it.
    Command::new("kill")
        .args(["-TERM", &keep.id().to_string()])
        .status()
        .unwrap();
    let status = keep.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.code(), Some(0));
    let evs = events.lock().unwrap().clone();
    assert!(evs.iter().any(|e| e["event"] == "recreated"), "{evs:?}");
    assert!(evs.iter().any(|e| e["event"] == "renewed"), "{evs:?}");
    assert_eq!(evs.last().unwrap()["event"], "removed", "{evs:?}");
    assert_eq!(evs.last().unwrap()["ok"], true, "{evs:?}");
    assert!(!upnpc_list(&lab).contains("7400->"));
    assert!(!tcp_reaches(&lab, &listener, dst));
    let recorded: Value = serde_json::from_slice(&std::fs::read(&st).unwrap()).unwrap();
    assert_eq!(recorded["mappings"], serde_json::json!([]));
}

/// A crashed run leaves its mappings behind; `delete --all-mine` removes them from its records.
#[test]
fn portmap_delete_all_mine_cleans_up_after_a_crash() {
    let Some(lab) = portmap_lab() else { return };
    let st = state("crash");
    for (port, via, proto) in [
        ("7501", "pcp", "udp"),
        ("7502", "natpmp", "tcp"),
        ("7503", "upnp", "tcp"),
    ] {
        let mut c = lab
            .cmd("a", env!("CARGO_BIN_EXE_portmap"))
            .args([
                "--json", "add", port, "--keep", "--via", via, "--proto", proto,
            ])
            .env("NATKIT_PORTMAP_STATE", &st)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        c.kill().unwrap(); // SIGKILL: no clean-up
        c.wait().unwrap();
    }
    assert_eq!(upnpc_rows(&lab).len(), 3, "{:?}", upnpc_rows(&lab));
    let (code, v, all) = portmap(&lab, &st, &["delete", "--all-mine"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(v["removed"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(upnpc_rows(&lab), Vec::<String>::new());
}

/// `--verify`: the relay connects back from outside through the mapping; without a mapping
/// (another port, same host) nothing gets through.
#[test]
fn portmap_verify_asks_the_relay_to_connect_from_outside() {
    let Some(lab) = portmap_lab() else { return };
    let _r = common::relay::start(&lab, 3478);
    let st = state("verify");
    for proto in ["tcp", "udp"] {
        let (code, v, all) = portmap(
            &lab,
            &st,
            &[
                "add",
                "7600",
                "--proto",
                proto,
                "--verify",
                "--relay",
                lab.get("PUB_IP"),
            ],
        );
        assert_eq!(code, Some(0), "{all}");
        assert_eq!(v["verify"]["reachable"], true, "{v}");
    }
}

/// Double NAT: the home router sits behind the carrier's NAT. miniupnpd learns the carrier's
/// public address by STUN and reports it, and refuses mappings; portmap and natprobe both say
/// that a mapping here cannot make the host reachable, and why.
#[test]
fn portmap_double_nat_says_the_mapping_cannot_help() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::Cgnat).b(Kind::None).portmap_a("all"))
    else {
        return;
    };
    let st = state("cgnat");
    let (code, v, all) = portmap(&lab, &st, &["probe"]);
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(v["mapping_can_help"], false, "{v}");
    assert_eq!(v["external_kind"], "not_routers", "{v}");
    assert!(v["why"].as_str().unwrap().contains("double NAT"), "{v}");
    let (code, v, all) = portmap(&lab, &st, &["add", "8080"]);
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(v["mapping_can_help"], false, "{v}");
    assert!(
        v["why"]
            .as_str()
            .unwrap()
            .contains("cannot make this host reachable"),
        "{v}"
    );
    let out = lab
        .cmd("a", env!("CARGO_BIN_EXE_natprobe"))
        .args(["--json", "--server", lab.get("PORTMAP_STUN")])
        .output()
        .unwrap();
    let n: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{n}");
    assert_eq!(n["portmap"]["mapping_can_help"], false, "{n}");
    assert!(
        n["verdict"]["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("a port mapping there cannot help")),
        "{n}"
    );
}

/// natprobe names `portmap add` when the router can forward a port.
#[test]
fn portmap_natprobe_reports_the_routers_protocols() {
    let Some(lab) = portmap_lab() else { return };
    let out = lab
        .cmd("a", env!("CARGO_BIN_EXE_natprobe"))
        .args(["--json", "--server", lab.get("PORTMAP_STUN")])
        .output()
        .unwrap();
    let n: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        n["portmap"]["available"],
        serde_json::json!(["pcp", "natpmp", "upnp"]),
        "{n}"
    );
    assert_eq!(n["portmap"]["external_ip"], lab.get("A_WAN"));
    assert!(
        n["verdict"]["advice"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("portmap add")),
        "{n}"
    );
}
