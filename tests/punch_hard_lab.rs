//! punch's hard cases on the NAT lab: birthday probing through a symmetric NAT, and port
//! prediction through a sequential one.
mod common;

use common::lab::{Kind, Lab};
use common::punch::{at_relay as live, is_direct};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// One session: both sides connect (through the relay first), `method` (birthday probing or
/// port prediction) finds a direct path; then 64 KiB each way must arrive intact over it.
/// Returns the time from `connect` to the direct `connected` event, or None when it never
/// came.
/// Waits up to `limit` for the direct path.
fn hard_once(lab: &Lab, code: &str, method: &str, limit: Duration) -> Option<Duration> {
    let mut l = live(lab, "a", &["listen", "--code", code]);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut c = live(lab, "b", &["connect", code]);
    let got = c.wait_for(limit, is_direct);
    let took = t.elapsed();
    let lgot = l.wait_for(Duration::from_secs(5), is_direct);
    let (da, db) = (vec![0xa5u8; 64 * 1024], vec![0x5au8; 64 * 1024]);
    l.write(&da);
    c.write(&db);
    l.close_input();
    c.close_input();
    let (lc, lout, levs) = l.finish();
    let (cc, cout, cevs) = c.finish();
    assert_eq!(lc, Some(0), "{levs:?}");
    assert_eq!(cc, Some(0), "{cevs:?}");
    assert_eq!(Sha256::digest(&cout), Sha256::digest(&da));
    assert_eq!(Sha256::digest(&lout), Sha256::digest(&db));
    match (got, lgot) {
        (Some(g), Some(lg)) if g["method"] == method && lg["method"] == method => {
            assert!(g["probes"].as_u64().unwrap() > 0);
            Some(took)
        }
        // Another technique found the direct path (once in CI, prediction's run went direct
        // by birthday probing): a miss for this one, with the events to see why.
        _ => {
            eprintln!(
                "{code}: no direct path by {method}\nlistener: {levs:?}\nconnector: {cevs:?}"
            );
            None
        }
    }
}

fn birthday_series(a: Kind, b: Kind) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    hard_series(&lab, "birthday", 20, 1, Duration::from_secs(10));
}

/// `runs` sessions on one lab; at most `misses` may end without a direct path by `method`;
/// the median time to the direct path must be within `median_max`.
fn hard_series(lab: &Lab, method: &str, runs: u16, misses: usize, median_max: Duration) {
    // Birthday probing's budget is 25 s after the NAT exchange (~1 s after connect).
    let limit = Duration::from_secs(30).max(median_max + Duration::from_secs(20));
    let (a, b) = (lab.get("A_KIND"), lab.get("B_KIND"));
    let mut times = Vec::new();
    let mut failed = 0;
    for i in 0..runs {
        match hard_once(lab, &format!("{}-lantern-harbor", 100 + i), method, limit) {
            Some(t) => times.push(t),
            None => failed += 1,
        }
    }
    times.sort();
    let median = times.get(times.len() / 2).copied();
    eprintln!(
        "{a} x {b}: {} of {runs} direct by {method}, median {median:?}",
        times.len()
    );
    assert!(
        failed <= misses,
        "{a} x {b}: {failed} of {runs} attempts failed"
    );
    let median = median.unwrap();
    assert!(median <= median_max, "median {median:?}");
}

#[test]
fn birthday_symmetric_x_port_restricted() {
    birthday_series(Kind::Symmetric, Kind::PortRestricted);
}

#[test]
fn birthday_port_restricted_x_symmetric() {
    birthday_series(Kind::PortRestricted, Kind::Symmetric);
}

/// The lab's sequential NAT (a new port per destination, in order) is reported as such by
/// natprobe, and punch predicts its next port: the other side probes the ports after the one
/// the sequential side learned by STUN on a fresh socket, and the first usually hits.
fn prediction_series(a: Kind, b: Kind) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let node = if a == Kind::Sequential { "a" } else { "b" };
    let out = lab
        .cmd(node, env!("CARGO_BIN_EXE_natprobe"))
        .args(["--server", lab.get("PUB_IP"), "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mapping"], "address-and-port-dependent", "{v}");
    assert_eq!(v["port_allocation"]["kind"], "sequential", "{v}");
    assert_eq!(v["port_allocation"]["delta"], 1, "{v}");
    hard_series(&lab, "prediction", 10, 1, Duration::from_secs(2));
}

#[test]
fn prediction_sequential_x_port_restricted() {
    prediction_series(Kind::Sequential, Kind::PortRestricted);
}

#[test]
fn prediction_port_restricted_x_sequential() {
    prediction_series(Kind::PortRestricted, Kind::Sequential);
}

/// The hard cases between neighbouring NATs whose routers accept packets addressed to
/// themselves (`natlab --hops 0 --router-input accept`): no opening TTL is safe, so the
/// opening side opens its mappings once and keeps them with packets whose TTL ends at its own
/// NAT, and the probing side waits for the clash's traces to expire (35 s) before probing.
/// Three sessions per order here (each takes ~40 s), one may miss; `scripts/bench-punch`
/// runs 20 (README: 20/20 per order since the sides exchange their TTL findings — before,
/// a side whose measurement heard no ICMP took a TTL for safe: 18/20 and 15/20, and CI once
/// saw 1 of 3).
fn neighbours_series(a: Kind, b: Kind, method: &str) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b).hops(0).router_input("accept")) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    hard_series(&lab, method, 3, 1, Duration::from_secs(45));
}

#[test]
fn neighbours_birthday_symmetric_x_port_restricted() {
    neighbours_series(Kind::Symmetric, Kind::PortRestricted, "birthday");
}

#[test]
fn neighbours_birthday_port_restricted_x_symmetric() {
    neighbours_series(Kind::PortRestricted, Kind::Symmetric, "birthday");
}

#[test]
fn neighbours_prediction_sequential_x_port_restricted() {
    neighbours_series(Kind::Sequential, Kind::PortRestricted, "prediction");
}

#[test]
fn neighbours_prediction_port_restricted_x_sequential() {
    neighbours_series(Kind::PortRestricted, Kind::Sequential, "prediction");
}

/// Symmetric × symmetric with `--hard`: birthday probing from both sides runs within its
/// budget, finds nothing in the lab (its NATs pick fully random ports), and the session
/// stays on the relay, which carried the data all along.
#[test]
fn hard_symmetric_x_symmetric_tries_then_stays_on_the_relay() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::Symmetric).b(Kind::Symmetric)) else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let mut l = live(
        &lab,
        "a",
        &["listen", "--code", "77-lantern-harbor", "--hard"],
    );
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut c = live(&lab, "b", &["connect", "77-lantern-harbor", "--hard"]);
    let first = c
        .wait_for(Duration::from_secs(5), |v| v["event"] == "connected")
        .expect("connected");
    assert_eq!(first["path"], "relay", "{first}");
    // Data flows through the relay while the attempt runs.
    let (da, db) = (vec![0x11u8; 256 * 1024], vec![0x22u8; 256 * 1024]);
    l.write(&da);
    c.write(&db);
    let tried = c
        .wait_for(Duration::from_secs(20), |v| v["event"] == "tried")
        .expect("the --hard attempt never ended");
    let took = t.elapsed();
    assert_eq!(tried["method"], "birthday", "{tried}");
    assert!(tried["probes"].as_u64().unwrap() > 100, "{tried}");
    // Budget 10 s after both classifications are in (about 1 s).
    assert!(took < Duration::from_secs(14), "took {took:?}");
    assert!(l
        .wait_for(Duration::from_secs(5), |v| v["event"] == "tried")
        .is_some());
    l.close_input();
    c.close_input();
    let (lc, lout, levs) = l.finish();
    let (cc, cout, cevs) = c.finish();
    assert_eq!(lc, Some(0), "{levs:?}");
    assert_eq!(cc, Some(0), "{cevs:?}");
    assert_eq!(Sha256::digest(&cout), Sha256::digest(&da));
    assert_eq!(Sha256::digest(&lout), Sha256::digest(&db));
    for evs in [&levs, &cevs] {
        let last = evs
            .iter()
            .rev()
            .find(|e| e["event"] == "connected")
            .unwrap();
        assert_eq!(last["path"], "relay", "{evs:?}");
    }
}
