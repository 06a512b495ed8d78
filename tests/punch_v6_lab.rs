//! punch over IPv6 on the NAT lab (issue 14): the relay serves both families on `pub`, the
//! sides reach it by name (`relay.lab`: A and AAAA). A pair whose IPv4 NATs cannot be
//! punched goes direct over IPv6 through RFC 6092 firewalls; a side without IPv6 connects
//! over IPv4 as fast as before; 1 MiB each way intact every time.
mod common;

use common::lab::{Kind, Lab};
use common::punch::{is_direct, live, manual_side, noise, offer_of, Live};
use serde_json::Value;
use std::time::Duration;

/// What one session did: both sides' events, and each side's first direct `connected`.
struct Run {
    a: Vec<Value>,
    b: Vec<Value>,
}

impl Run {
    /// The first direct `connected` event of each side.
    fn direct(&self) -> [Option<&Value>; 2] {
        [&self.a, &self.b].map(|ev| {
            ev.iter()
                .find(|e| e["event"] == "connected" && e["path"] == "direct")
        })
    }
}

/// Listener in a, connector in b, both at `relay.lab`; 1 MiB each way, checked. `hold`:
/// the data waits until both sides printed their `nat` event (a transfer may otherwise end
/// before the classification does).
fn session(lab: &Lab, what: &str, extra: &[&str], hold: bool) -> Run {
    let code = format!("{}-lantern-harbor", 100 + rand::random::<u16>() % 800);
    let (da, db) = (
        noise(1 << 20, rand::random::<u64>() | 1),
        noise(1 << 20, rand::random::<u64>() | 1),
    );
    let base = ["--relay", "relay.lab", "--json"];
    let mut la = live(
        lab,
        "a",
        &[&["listen", "--code", &code][..], &base, extra].concat(),
    );
    if !hold {
        la.feed(da.clone());
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut lb = live(lab, "b", &[&["connect", &code][..], &base, extra].concat());
    if hold {
        for (side, l) in [("listener", &mut la), ("connector", &mut lb)] {
            let nat = l.wait_for(Duration::from_secs(15), |e| e["event"] == "nat");
            assert!(nat.is_some(), "{what} {side}: no nat event");
        }
        la.feed(da.clone());
    }
    lb.feed(db.clone());
    finish(what, (la, lb), (da, db))
}

/// Waits for both sides (listener, connector, fed `da` and `db`): both exit 0, the bytes
/// crossed intact, every `connected` event's `family` matches its `peer`.
fn finish(what: &str, (la, lb): (Live, Live), (da, db): (Vec<u8>, Vec<u8>)) -> Run {
    let (ca, oa, ea) = la.finish();
    let (cb, ob, eb) = lb.finish();
    assert_eq!(ca, Some(0), "{what} listener: {ea:?}");
    assert_eq!(cb, Some(0), "{what} connector: {eb:?}");
    assert!(oa == db, "{what}: connector → listener not intact");
    assert!(ob == da, "{what}: listener → connector not intact");
    for e in ea.iter().chain(&eb).filter(|e| e["event"] == "connected") {
        let peer: std::net::SocketAddr = e["peer"].as_str().unwrap_or("").parse().unwrap();
        let fam = if peer.is_ipv6() { "ipv6" } else { "ipv4" };
        assert_eq!(e["family"], fam, "{what}: {e}");
    }
    Run { a: ea, b: eb }
}

/// `n` sessions on `lab`, each side direct over IPv6 every time; `check` looks further at
/// each side's first direct `connected` event and all its events.
fn direct_over_ipv6(lab: &Lab, what: &str, n: usize, check: impl Fn(&str, &Value, &[Value])) {
    let mut times = Vec::new();
    for i in 0..n {
        let run = session(lab, &format!("{what} run {i}"), &[], false);
        let sides = ["listener", "connector"].into_iter().zip(run.direct());
        for ((side, d), ev) in sides.zip([&run.a, &run.b]) {
            let at = format!("{what} run {i} {side}");
            let d = d.unwrap_or_else(|| panic!("{at}: not direct: {ev:?}"));
            assert_eq!(d["family"], "ipv6", "{at}: {d}");
            check(&at, d, ev);
            times.push(ms(d));
        }
    }
    times.sort();
    eprintln!(
        "{what}: direct over IPv6 {n}/{n}, median {} ms, max {} ms",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

fn lab_with(a: Kind, va: &str, b: Kind, vb: &str) -> Option<Lab> {
    Lab::up_or_skip(Lab::builder().a(a).b(b).v6_a(va).v6_b(vb))
}

fn ms(e: &Value) -> u64 {
    e["elapsed_ms"].as_u64().unwrap_or(u64::MAX)
}

/// Symmetric × symmetric over IPv4 (relayed without IPv6) with RFC 6092 firewalls on both
/// sides: direct over IPv6, 20 of 20, each side within 1 s of its start.
#[test]
fn symmetric_pair_goes_direct_over_ipv6_behind_firewalls() {
    let Some(lab) = lab_with(Kind::Symmetric, "fw", Kind::Symmetric, "fw") else {
        return;
    };
    let _r = common::relay::start_dual(&lab, 3478);
    direct_over_ipv6(&lab, "symmetric × symmetric, fw IPv6", 20, |at, d, _| {
        assert!(ms(d) < 1000, "{at}: direct after {} ms", ms(d));
    });
}

/// UDP blocked over IPv4 × port-restricted, both with IPv6 behind firewalls (IPv6 UDP is
/// not blocked): direct over IPv6 on both sides, every run. The blocked side races the
/// relay's A and AAAA addresses, meets it over IPv6 UDP (no TCP fallback, so no TCP punch
/// to race the IPv6 checks), and both `nat` events expect a UDP punch over IPv6.
#[test]
fn udp_blocked_ipv4_goes_direct() {
    let Some(lab) = lab_with(Kind::UdpBlocked, "fw", Kind::PortRestricted, "fw") else {
        return;
    };
    let _r = common::relay::start_dual(&lab, 3478);
    let nat_events = std::sync::atomic::AtomicUsize::new(0);
    direct_over_ipv6(
        &lab,
        "udp-blocked × port-restricted, fw IPv6",
        8,
        |at, d, ev| {
            assert_eq!(d["method"], "udp", "{at}: {d}");
            for n in ev.iter().filter(|e| e["event"] == "nat") {
                assert_eq!(n["expect"]["path"], "direct", "{at}: {n}");
                assert_eq!(n["expect"]["technique"], "udp", "{at}: {n}");
                nat_events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let tcp = |e: &&Value| e["event"] == "connected" && e["method"] == "tcp";
            assert!(
                !ev.iter().any(|e| tcp(&e)),
                "{at}: the relay over TCP: {ev:?}"
            );
        },
    );
    eprintln!("nat events (all expecting a UDP punch): {nat_events:?} of 16 sides");
    // Once more with the data held until both classifications are known: the blocked side
    // says its UDP is blocked but IPv6 works, and each side's `nat` event expects a UDP
    // punch over IPv6.
    let run = session(&lab, "held", &[], true);
    for (side, ev, blocked) in [("listener", &run.a, "mine"), ("connector", &run.b, "peer")] {
        let n = ev.iter().find(|e| e["event"] == "nat").unwrap();
        assert_eq!(n["expect"]["path"], "direct", "held {side}: {n}");
        assert_eq!(n["expect"]["technique"], "udp", "held {side}: {n}");
        assert!(n["expect"]["why"].as_str().unwrap().contains("IPv6"), "{n}");
        assert_eq!(n[blocked]["udp_blocked"], true, "held {side}: {n}");
        assert_eq!(
            (&n["mine"]["ipv6"], &n["peer"]["ipv6"]),
            (&true.into(), &true.into())
        );
        assert!(run
            .direct()
            .iter()
            .all(|d| d.is_some_and(|d| d["family"] == "ipv6")));
        eprintln!("held {side}: {n}");
    }
}

/// UDP blocked over IPv4 with IPv6 (fw) × port-restricted without IPv6: the blocked side
/// meets the relay over IPv6 UDP (not over TCP after ~3.7 s) and says at once that its UDP
/// is blocked, so both sides take the relay well before the 3 s punching bound; 1 MiB each
/// way intact, every run. With `--tcp`, a TCP punch over IPv4 then goes direct.
#[test]
fn udp_blocked_ipv4_with_ipv6_x_a_side_without_it_relays_at_once() {
    let Some(lab) = lab_with(Kind::UdpBlocked, "fw", Kind::PortRestricted, "none") else {
        return;
    };
    let _r = common::relay::start_dual(&lab, 3478);
    for i in 0..3 {
        let run = session(&lab, &format!("run {i}"), &[], false);
        for (side, ev, family) in [("blocked", &run.a, "ipv6"), ("other", &run.b, "ipv4")] {
            let c = ev.iter().find(|e| e["event"] == "connected").unwrap();
            assert_eq!(
                (&c["path"], &c["method"]),
                (&"relay".into(), &"udp".into()),
                "{c}"
            );
            assert_eq!(c["family"], family, "run {i} {side}: {c}");
            assert!(ms(c) < 1500, "run {i} {side}: relayed after {} ms", ms(c));
            eprintln!("run {i} {side}: {c}");
        }
    }
    // With --tcp the TCP punch goes over IPv4 (the relay's A record), as the peer's does,
    // and moves the pipe to a direct TCP connection.
    let run = session(&lab, "--tcp", &["--tcp"], false);
    for (side, ev) in [("blocked", &run.a), ("other", &run.b)] {
        let tcp = ev.iter().find(|e| is_direct(e) && e["method"] == "tcp");
        let tcp = tcp.unwrap_or_else(|| panic!("--tcp {side}: no direct TCP: {ev:?}"));
        assert_eq!(tcp["family"], "ipv4", "--tcp {side}: {tcp}");
        eprintln!("--tcp {side}: {tcp}");
    }
}

/// `--manual` without `--stun` (no server at all) behind symmetric IPv4 NATs with fw IPv6:
/// each offer carries the side's global IPv6 address at the punch port, and the pair goes
/// direct over IPv6, 1 MiB each way intact.
#[test]
fn manual_offers_carry_ipv6_and_go_direct_over_it() {
    let Some(lab) = lab_with(Kind::Symmetric, "fw", Kind::Symmetric, "fw") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("natkit-manual6-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let offer_file = dir.join("connector-offer");
    for i in 0..3 {
        let (da, db) = (
            noise(1 << 20, rand::random::<u64>() | 1),
            noise(1 << 20, rand::random::<u64>() | 1),
        );
        let _ = std::fs::remove_file(&offer_file);
        let code = format!("{}-lantern-harbor", 100 + rand::random::<u16>() % 800);
        let file = offer_file.to_str().unwrap();
        let mut l = manual_side(
            &lab,
            "a",
            &["listen", "--code", &code, "--peer-file", file],
            da.clone(),
        );
        let offer_l = offer_of(&mut l);
        let mut c = manual_side(
            &lab,
            "b",
            &["connect", &code, "--peer", &offer_l],
            db.clone(),
        );
        let offer_c = offer_of(&mut c);
        for (who, offer, ip) in [
            ("listener", &offer_l, "A_IP6"),
            ("connector", &offer_c, "B_IP6"),
        ] {
            let v6 = format!("[{}]:", lab.ip6(ip));
            assert!(offer.contains(&v6), "run {i} {who}: {offer} lacks {v6}");
        }
        std::fs::write(&offer_file, format!("{offer_c}\n")).unwrap();
        let run = finish(&format!("--manual run {i}"), (l, c), (da, db));
        for (who, evs) in [("listener", &run.a), ("connector", &run.b)] {
            let d = evs
                .iter()
                .find(|e| e["event"] == "connected")
                .unwrap_or_else(|| panic!("run {i} {who}: {evs:?}"));
            assert_eq!(d["path"], "direct", "run {i} {who}: {d}");
            assert_eq!(d["family"], "ipv6", "run {i} {who}: {d}");
            eprintln!("--manual run {i} {who}: {d}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A side without IPv6: direct over IPv4, no slower than the same pair with no IPv6 at all.
#[test]
fn a_side_without_ipv6_connects_over_ipv4_as_fast_as_before() {
    let mut medians = Vec::new();
    for (va, label) in [("none", "no IPv6"), ("fw", "IPv6 on one side")] {
        let Some(lab) = lab_with(Kind::PortRestricted, va, Kind::FullCone, "none") else {
            return;
        };
        let _r = common::relay::start_dual(&lab, 3478);
        let mut t = Vec::new();
        for i in 0..5 {
            let run = session(&lab, &format!("{label} run {i}"), &[], false);
            for d in run.direct() {
                let d = d.unwrap_or_else(|| panic!("{label} run {i}: not direct: {:?}", run.a));
                assert_eq!(d["family"], "ipv4", "{label} run {i}: {d}");
                t.push(ms(d));
            }
        }
        t.sort();
        eprintln!("{label}: direct over IPv4 in {t:?} ms");
        medians.push(t[t.len() / 2]);
    }
    assert!(
        medians[1] <= medians[0] * 3 / 2 + 30,
        "one side with IPv6 {} ms vs none {} ms",
        medians[1],
        medians[0]
    );
}
