//! `portmap --ipv6` against the real miniupnpd on the lab's router with an RFC 6092 IPv6
//! firewall (`--v6-a fw`): every pinhole is checked from the lab's public node over IPv6 with a
//! real connection, and its rule in the router's nftables chain `miniupnpd`.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{in_ns, Kind, Lab};
use serde_json::Value;

/// How long a connection from outside gets.
const WAIT: Duration = Duration::from_millis(700);

fn state(tag: &str) -> PathBuf {
    common::miniupnpd::state_file("natkit-portmap6", tag)
}

fn lab() -> Option<Lab> {
    Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .v6_a("fw")
            .b(Kind::None)
            .portmap_a("all"),
    )
}

fn portmap(lab: &Lab, st: &std::path::Path, args: &[&str]) -> (Option<i32>, Value, String) {
    common::miniupnpd::portmap_json(lab, st, args)
}

/// Host A listening on `port` for TCP and UDP over IPv6.
struct Listeners {
    tcp: TcpListener,
    udp: UdpSocket,
}

fn listen(lab: &Lab, port: u16) -> Listeners {
    in_ns(&lab.ns("a"), || Listeners {
        tcp: TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).unwrap(),
        udp: UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).unwrap(),
    })
}

/// Whether `pub` gets to host A's `port` over IPv6 with `proto` (a TCP connection carrying
/// data, or a datagram).
fn reaches(lab: &Lab, l: &Listeners, proto: &str, port: u16) -> bool {
    let dst = SocketAddr::from((lab.ip6("A_IP6"), port));
    // A new source port and payload each time: neither an earlier datagram's conntrack
    // entry nor its copies still queued on the socket may count.
    let src = NEXT_SRC.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("natkit-{}-{src}", std::process::id());
    if proto == "tcp" {
        let sent = in_ns(&lab.ns("pub"), || {
            TcpStream::connect_timeout(&dst, WAIT).and_then(|mut s| s.write_all(tag.as_bytes()))
        });
        if sent.is_err() {
            return false;
        }
        let got = common::lab::accept_timeout(&l.tcp, WAIT);
        return got.is_ok_and(|(mut s, _)| {
            let mut b = vec![0u8; tag.len()];
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.read_exact(&mut b).is_ok() && b == tag.as_bytes()
        });
    }
    in_ns(&lab.ns("pub"), || {
        let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, src)).unwrap();
        for _ in 0..3 {
            let _ = s.send_to(tag.as_bytes(), dst);
        }
    });
    l.udp.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 64];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match l.udp.recv_from(&mut b) {
            Ok((n, _)) if &b[..n] == tag.as_bytes() => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

static NEXT_SRC: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(41000);

/// The router's pinhole rules (nftables chain `miniupnpd` of `table inet filter`).
fn rules(lab: &Lab) -> String {
    lab.run_in(
        "ra",
        "nft",
        &["list", "chain", "inet", "filter", "miniupnpd"],
    )
    .unwrap_or_else(|e| panic!("nft: {e}"))
}

fn has_rule(lab: &Lab, port: u16) -> bool {
    rules(lab).contains(&format!("dport {port} "))
}

/// One `--via`: a TCP and a UDP pinhole, each closed before, reachable from `pub` after add,
/// listed, and closed again after delete with its rule gone.
fn add_list_delete(lab: &Lab, via: &str, want: &str, base: u16) {
    let st = state(&format!("{via}-{base}"));
    for (i, proto) in ["tcp", "udp"].into_iter().enumerate() {
        let port = base + i as u16;
        let l = listen(lab, port);
        assert!(!reaches(lab, &l, proto, port), "fw must filter first");
        let (code, v, all) = portmap(
            lab,
            &st,
            &[
                "add",
                &port.to_string(),
                "--ipv6",
                "--proto",
                proto,
                "--via",
                via,
                "--lifetime",
                "60",
            ],
        );
        assert_eq!(code, Some(0), "{all}");
        assert_eq!(v["mapping"]["via"], want, "{v}");
        assert_eq!(
            v["external"],
            format!("[{}]:{port}", lab.get("A_IP6")),
            "{v}"
        );
        assert!(reaches(lab, &l, proto, port), "{via} {proto}: {v}");
        assert!(has_rule(lab, port), "{}", rules(lab));
        let (code, v, all) = portmap(lab, &st, &["list", "--ipv6"]);
        assert_eq!(code, Some(0), "{all}");
        let listed = v["mappings"].as_array().unwrap().iter().any(|e| {
            e["via"] == want
                && e["proto"] == proto
                && e["internal"] == format!("[{}]:{port}", lab.get("A_IP6"))
        });
        assert!(listed, "{v}");
        // The IPv4 list does not show pinholes.
        let (_, v4, _) = portmap(lab, &st, &["list"]);
        assert!(!v4.to_string().contains(lab.get("A_IP6")), "{v4}");
        let (code, v, all) = portmap(
            lab,
            &st,
            &["delete", &port.to_string(), "--ipv6", "--proto", proto],
        );
        assert_eq!(code, Some(0), "{all}");
        assert_eq!(v["removed"][0]["via"], want, "{v}");
        assert!(!has_rule(lab, port), "{}", rules(lab));
        assert!(!reaches(lab, &l, proto, port), "{via} {proto} still open");
    }
    let (_, v, _) = portmap(lab, &st, &["list", "--ipv6"]);
    assert_eq!(v["mappings"], serde_json::json!([]), "{v}");
}

#[test]
fn portmap_ipv6_pcp_pinholes_reachable_from_outside() {
    let Some(lab) = lab() else { return };
    add_list_delete(&lab, "pcp", "pcp", 7610);
}

#[test]
fn portmap_ipv6_upnp_pinholes_reachable_from_outside() {
    let Some(lab) = lab() else { return };
    add_list_delete(&lab, "upnp", "upnp", 7620);
}

/// `--via auto` takes PCP first; with PCP off on the router (NAT-PMP and PCP share
/// `enable_natpmp`) it would be UPnP, which the UPnP test covers.
#[test]
fn portmap_ipv6_auto_pinholes_reachable_from_outside() {
    let Some(lab) = lab() else { return };
    add_list_delete(&lab, "auto", "pcp", 7630);
}

/// `--via auto` falls back to UPnP when PCP does not answer over IPv6 (the router drops it).
#[test]
fn portmap_ipv6_auto_falls_back_to_upnp() {
    let Some(lab) = lab() else { return };
    for rule in [
        &["add", "table", "ip6", "natkit_test"][..],
        &[
            "add",
            "chain",
            "ip6",
            "natkit_test",
            "in",
            "{ type filter hook input priority -10; }",
        ],
        &[
            "add",
            "rule",
            "ip6",
            "natkit_test",
            "in",
            "udp",
            "dport",
            "5351",
            "drop",
        ],
    ] {
        lab.run_in("ra", "nft", rule)
            .unwrap_or_else(|e| panic!("nft: {e}"));
    }
    add_list_delete(&lab, "auto", "upnp", 7660);
}

#[test]
fn portmap_ipv6_probe_reports_pinhole_support_and_natpmp_is_refused() {
    let Some(lab) = lab() else { return };
    let st = state("probe");
    let (code, v, all) = portmap(&lab, &st, &["probe"]);
    assert_eq!(code, Some(0), "{all}");
    let v6 = &v["ipv6"];
    assert_eq!(v6["available"], serde_json::json!(["pcp", "upnp"]), "{v}");
    assert_eq!(v6["router"], lab.get("A_GW6"));
    assert_eq!(v6["host"], lab.get("A_IP6"));
    assert_eq!(
        rules(&lab).matches("dport").count(),
        0,
        "probe opened a pinhole"
    );
    let (code, v, all) = portmap(&lab, &st, &["add", "7640", "--ipv6", "--via", "natpmp"]);
    assert_eq!(code, Some(1), "{all}");
    assert!(v["attempts"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("IPv4 only"));
}

/// `--verify` on an IPv6 pinhole: the relay (on both families, reached by name) connects
/// back over IPv6 through the pinhole, TCP and UDP, from its IPv6 addresses.
#[test]
fn portmap_ipv6_verify_asks_the_relay_to_connect_over_ipv6() {
    let Some(lab) = lab() else { return };
    let _r = common::relay::start_dual(&lab, 3478);
    let st = state("verify6");
    let relay = "relay.lab:3478".to_string();
    for (proto, port) in [("tcp", "7660"), ("udp", "7661")] {
        let (code, v, all) = portmap(
            &lab,
            &st,
            &[
                "add", port, "--proto", proto, "--ipv6", "--via", "pcp", "--verify", "--relay",
                &relay,
            ],
        );
        assert_eq!(code, Some(0), "{all}");
        assert_eq!(v["verify"]["reachable"], true, "{proto}: {v}");
        eprintln!("{proto}: {}", v["verify"]);
        let detail = v["verify"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(lab.get("PUB_IP6")) || detail.contains(lab.get("PUB_IP6_2")),
            "{detail}"
        );
        let (code, _, all) = portmap(&lab, &st, &["delete", port, "--proto", proto, "--ipv6"]);
        assert_eq!(code, Some(0), "{all}");
    }
}

/// `--keep` on a 20 s pinhole (miniupnpd's min_lifetime): still open well past its first
/// lease, renewed, and closed (rule gone) on SIGTERM. miniupnpd 2.3.1 refuses to delete a PCP
/// pinhole it renewed (the renewal loses the nonce it checks): natkit says so and the
/// pinhole lapses with its lease.
fn keep(lab: &Lab, via: &str, port: u16) {
    let st = state(&format!("keep-{via}"));
    let l = listen(lab, port);
    let mut child: Child = lab
        .cmd("a", env!("CARGO_BIN_EXE_portmap"))
        .args(["--json", "add", &port.to_string(), "--ipv6", "--keep"])
        .args(["--via", via, "--lifetime", "20", "--proto", "udp"])
        .env("NATKIT_PORTMAP_STATE", &st)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["ok"], true, "{first}");
    let reader = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .collect::<Vec<_>>()
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(32) {
        assert!(
            reaches(lab, &l, "udp", port),
            "{via}: closed at {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let evs = reader.join().unwrap();
    assert!(evs.iter().any(|e| e["event"] == "renewed"), "{evs:?}");
    let last = evs.last().unwrap();
    assert_eq!(last["event"], "removed", "{evs:?}");
    let stopped = Instant::now();
    if via == "upnp" {
        assert_eq!(last["ok"], true, "{evs:?}");
        assert!(!has_rule(lab, port), "{}", rules(lab));
    } else if last["ok"] == false {
        assert!(
            last["detail"].as_str().unwrap().contains("lapses"),
            "{last}"
        );
        while has_rule(lab, port) && stopped.elapsed() < Duration::from_secs(25) {
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(!has_rule(lab, port), "{}", rules(lab));
    }
    assert!(!reaches(lab, &l, "udp", port));
}

#[test]
fn portmap_ipv6_keep_renews_pcp_and_upnp_pinholes() {
    let Some(lab) = lab() else { return };
    std::thread::scope(|s| {
        s.spawn(|| keep(&lab, "pcp", 7650));
        s.spawn(|| keep(&lab, "upnp", 7651));
    });
}
