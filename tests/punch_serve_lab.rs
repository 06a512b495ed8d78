//! `punch serve` on the NAT lab: one code, many peers, each in its own session.
mod common;

use common::lab::{Kind, Lab};
use common::punch::{at_relay, http_get, http_server, noise, Live};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

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

/// Serve behind a port-restricted NAT, peers behind a symmetric one: one peer downloads a
/// file over HTTP through `--local`, then two more at once; all three intact, serve still
/// running, each peer with its own id; SIGTERM ends serve with exit 0.
#[test]
fn serve_hosts_three_peers_one_then_two_at_once() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(Kind::Symmetric))
    else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let body = noise(1 << 20, 15);
    let l = lab.in_node("a", || {
        std::net::TcpListener::bind("127.0.0.1:8000").unwrap()
    });
    http_server(l, body.clone());
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
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(Kind::FullCone))
    else {
        return;
    };
    let _r = common::relay::start(&lab, 3478);
    let l = lab.in_node("a", || {
        std::net::TcpListener::bind("127.0.0.1:8000").unwrap()
    });
    let body = noise(64 << 10, 16);
    http_server(l, body.clone());
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
