//! natprobe against real Linux NATs (the lab) and a real RFC 5780 server (coturn), compared
//! with coturn's own reference client.
mod common;

use common::coturn;
use common::lab::{Kind, Lab};
use common::natprobe_json::assert_contract;
use serde_json::Value;
use std::time::{Duration, Instant};

struct Run {
    json: Value,
    code: i32,
    stderr: String,
    took: Duration,
}

fn natprobe(lab: &Lab, node: &str, args: &[&str]) -> Run {
    let t = Instant::now();
    let out = lab
        .cmd(node, env!("CARGO_BIN_EXE_natprobe"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run natprobe");
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("natprobe printed no JSON ({e}): {stderr}"));
    // Every run, whatever it found, keeps the JSON contract (key types).
    assert_contract(&json);
    Run {
        json,
        code: out.status.code().unwrap_or(-1),
        stderr,
        took,
    }
}

fn class(v: &Value) -> (String, String) {
    (
        v["mapping"].as_str().unwrap().to_string(),
        v["filtering"].as_str().unwrap().to_string(),
    )
}

/// Acceptance: "20 consecutive runs on each kind give the same classification".
const RUNS: usize = 20;

/// Prints the wall times of a kind's runs (min / median / max), for `--nocapture`.
fn report_times(kind: Kind, times: &mut [Duration]) {
    times.sort();
    eprintln!(
        "{kind}: {} runs, wall time min {:?} / median {:?} / max {:?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// natprobe equals the kind's definition and coturn's verdict, 20 runs in a row.
fn kind_matches(kind: Kind, mapping: &str, filtering: &str) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(kind).b(Kind::None)) else {
        return;
    };
    let _srv = coturn::start(&lab);
    let server = lab.get("PUB_IP").to_string();
    let (cm, cf) = coturn::natdiscovery(&lab, "a", &server);
    assert_eq!(
        (cm.as_str(), cf.as_str()),
        (mapping, filtering),
        "coturn's client on {kind:?}"
    );
    let mut times = Vec::new();
    for i in 0..RUNS {
        let r = natprobe(&lab, "a", &["--server", &server]);
        times.push(r.took);
        assert_eq!(
            class(&r.json),
            (mapping.to_string(), filtering.to_string()),
            "run {i} on {kind:?}: {}",
            r.json
        );
        assert_eq!(r.json["behind_nat"], true);
        assert_eq!(r.json["udp"], true);
        assert_eq!(r.json["cgnat"], false);
        assert_eq!(r.json["servers"][0]["rfc5780"], true);
        assert_eq!(r.json["port_preserved"], kind != Kind::Symmetric);
        let alloc = if kind == Kind::Symmetric {
            "random"
        } else {
            "preserving"
        };
        assert_eq!(r.json["port_allocation"]["kind"], alloc, "{}", r.json);
        assert_eq!(
            r.json["mapped_addr"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap(),
            lab.get("A_WAN")
        );
        let can_host = kind == Kind::FullCone;
        assert_eq!(r.json["verdict"]["can_host"], can_host);
        assert_eq!(r.code, if can_host { 0 } else { 1 }, "{}", r.stderr);
        // Issue target: a full classification in ≤ 1 s in the lab.
        assert!(
            r.took < Duration::from_millis(1000),
            "run {i} took {:?}",
            r.took
        );
    }
    report_times(kind, &mut times);
}

#[test]
fn full_cone_matches_definition_and_coturn() {
    kind_matches(
        Kind::FullCone,
        "endpoint-independent",
        "endpoint-independent",
    );
}

#[test]
fn restricted_matches_definition_and_coturn() {
    kind_matches(
        Kind::Restricted,
        "endpoint-independent",
        "address-dependent",
    );
}

#[test]
fn port_restricted_matches_definition_and_coturn() {
    kind_matches(
        Kind::PortRestricted,
        "endpoint-independent",
        "address-and-port-dependent",
    );
}

#[test]
fn symmetric_matches_definition_and_coturn() {
    kind_matches(
        Kind::Symmetric,
        "address-and-port-dependent",
        "address-and-port-dependent",
    );
}

#[test]
fn hairpinning_on_and_off() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .hairpin_a(true)
            .b(Kind::FullCone)
            .hairpin_b(false),
    ) else {
        return;
    };
    let _srv = coturn::start(&lab);
    let server = lab.get("PUB_IP").to_string();
    for _ in 0..3 {
        assert_eq!(
            natprobe(&lab, "a", &["--server", &server]).json["hairpinning"],
            true
        );
        assert_eq!(
            natprobe(&lab, "b", &["--server", &server]).json["hairpinning"],
            false
        );
    }
}

#[test]
fn udp_blocked_is_udp_false_exit_2_within_3s() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::UdpBlocked).b(Kind::None)) else {
        return;
    };
    let _srv = coturn::start(&lab);
    let mut times = Vec::new();
    for i in 0..RUNS {
        let r = natprobe(&lab, "a", &["--server", lab.get("PUB_IP")]);
        times.push(r.took);
        assert_eq!(r.json["udp"], false, "run {i}: {}", r.json);
        assert_eq!(r.json["behind_nat"], false, "run {i}: nothing known");
        assert_eq!(
            class(&r.json),
            ("unknown".into(), "unknown".into()),
            "run {i}"
        );
        // coturn also listens on TCP 3478: natprobe tells "UDP blocked" from "no server".
        assert_eq!(r.json["tcp"], true, "run {i}: {}", r.json);
        assert_eq!(r.code, 2, "run {i}");
        assert!(r.took < Duration::from_secs(3), "run {i} took {:?}", r.took);
        assert!(r.stderr.contains("UDP is blocked"), "run {i}: {}", r.stderr);
    }
    report_times(Kind::UdpBlocked, &mut times);
}

/// CGNAT is found on every run, also back to back: the carrier router's ICMP budget (1/s,
/// burst 6) is spent after a few runs, and natprobe waits for its next token (see
/// `Prober::retry_silent_hop` and `Prober::maybe_start_hairpin`).
#[test]
fn cgnat_is_detected() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::Cgnat).b(Kind::None)) else {
        return;
    };
    let _srv = coturn::start(&lab);
    let mut times = Vec::new();
    for i in 0..RUNS {
        let r = natprobe(&lab, "a", &["--server", lab.get("PUB_IP")]);
        times.push(r.took);
        assert_eq!(r.json["cgnat"], true, "run {i}: {}", r.json);
        assert_eq!(r.json["behind_nat"], true, "run {i}");
        assert_eq!(
            class(&r.json),
            (
                "endpoint-independent".to_string(),
                "address-and-port-dependent".to_string()
            ),
            "run {i}"
        );
        assert_eq!(r.code, 1, "run {i}");
        let advice = r.json["verdict"]["advice"].to_string();
        assert!(advice.contains("cannot help"), "run {i}: {advice}");
    }
    report_times(Kind::Cgnat, &mut times);
}

#[test]
fn open_host_can_host() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::Open).b(Kind::None)) else {
        return;
    };
    let _srv = coturn::start(&lab);
    let mut times = Vec::new();
    for i in 0..RUNS {
        let r = natprobe(&lab, "a", &["--server", lab.get("PUB_IP")]);
        times.push(r.took);
        assert_eq!(r.json["behind_nat"], false, "run {i}");
        assert_eq!(r.json["cgnat"], false, "run {i}");
        assert_eq!(r.json["mapping"], "none", "run {i}");
        assert_eq!(r.json["filtering"], "endpoint-independent", "run {i}");
        assert_eq!(r.json["servers"][0]["rfc5780"], true, "run {i}");
        assert_eq!(r.code, 0, "run {i}: {}", r.stderr);
    }
    report_times(Kind::Open, &mut times);
    let (cm, _) = coturn::natdiscovery_from(&lab, "a", lab.get("PUB_IP"), Some(lab.get("A_IP")));
    assert_eq!(cm, "none");
}

/// With no route and no resolver, the default (hostname-only) server list fails fast.
#[test]
fn offline_with_default_servers_exits_2_within_3s() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::Offline).b(Kind::None)) else {
        return;
    };
    let r = natprobe(&lab, "a", &[]);
    assert_eq!(r.code, 2);
    assert_eq!(r.json["udp"], false);
    assert!(r.took < Duration::from_secs(3), "took {:?}", r.took);
    for name in natkit::defaults::DEFAULT_SERVERS {
        assert!(
            r.stderr.contains(name),
            "stderr names what was tried: {}",
            r.stderr
        );
    }
}

#[test]
fn binding_lifetime_is_found() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .timeout_a(12)
            .b(Kind::None),
    ) else {
        return;
    };
    let _srv = coturn::start(&lab);
    let r = natprobe(
        &lab,
        "a",
        &[
            "--server",
            lab.get("PUB_IP"),
            "--lifetime",
            "--lifetime-max",
            "30",
        ],
    );
    assert_eq!(r.json["binding_lifetime"]["alive_s"], 10, "{}", r.json);
    assert_eq!(r.json["binding_lifetime"]["expired_s"], 15, "{}", r.json);
    assert_eq!(r.json["binding_lifetime_s"], 10);
    assert!(
        r.took < Duration::from_secs(18),
        "stops once bracketed: {:?}",
        r.took
    );
}
