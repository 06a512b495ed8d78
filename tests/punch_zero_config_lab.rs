//! Zero configuration: `punch listen` / `punch connect` without `--relay` and without
//! `NATKIT_RELAY` run serverless (as `--manual`), say so in one `warning` event and print an
//! offer, instead of stopping at a missing argument. The STUN server is the lab's (`--stun`):
//! a test never asks the built-in public servers, except on the lab's offline host, whose
//! empty resolv.conf sends no query anywhere. `punch serve` without a relay serves its peers
//! by offers, theirs one per line on its stdin.
mod common;

use std::time::Duration;

use common::lab::{Kind, Lab};
use common::punch::{http_get, http_server, noise, Live};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn no_relay_configured() {
    // The test's own environment must not hand punch a relay.
    std::env::remove_var("NATKIT_RELAY");
}

/// The one line that says punch fell back to serverless mode.
fn warned(s: &mut Live) -> Value {
    s.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "warning"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("no relay given"))
    })
    .expect("no warning event saying there is no relay")
}

fn offer(s: &mut Live) -> String {
    let e = s.wait_for(Duration::from_secs(10), |v| v["event"] == "offer");
    e.and_then(|e| e["offer"].as_str().map(str::to_string))
        .expect("no offer event")
}

/// No relay configured; a lab (a behind a port-restricted NAT, b behind a full cone) with a
/// STUN server (the relay's) at the returned address.
fn stun_lab() -> Option<(Lab, common::relay::Relay, String)> {
    no_relay_configured();
    let lab = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(Kind::FullCone))?;
    let stun = common::relay::start(&lab, 3478);
    let addr = lab.get("PUB_IP").to_string();
    Some((lab, stun, addr))
}

/// Both sides without a relay: each prints its offer (the listener's with its NAT's public
/// address from the lab's STUN server), takes the other's, and they connect directly.
#[test]
fn without_a_relay_both_sides_print_offers_and_connect() {
    let Some((lab, _stun, stun)) = stun_lab() else {
        return;
    };
    let file = std::env::temp_dir().join(format!("natkit-zero-{}", rand::random::<u32>()));
    // A fresh hand-made code each run: a reused one adds a warning of its own.
    let code = &format!("{}-lantern-harbor", rand::random::<u32>() % 1_000_000);
    let mut l = common::punch::live(
        &lab,
        "a",
        &[
            "listen",
            "--json",
            "--code",
            code,
            "--stun",
            &stun,
            "--peer-file",
            file.to_str().unwrap(),
        ],
    );
    warned(&mut l);
    let offer_l = offer(&mut l);
    assert!(offer_l.contains(lab.get("A_WAN")), "{offer_l}");
    let mut c = common::punch::live(
        &lab,
        "b",
        &[
            "connect", code, "--json", "--stun", &stun, "--peer", &offer_l,
        ],
    );
    warned(&mut c);
    let offer_c = offer(&mut c);
    assert!(offer_c.contains(lab.get("B_WAN")), "{offer_c}");
    std::fs::write(&file, format!("{offer_c}\n")).unwrap();
    for s in [&mut l, &mut c] {
        let conn = s
            .wait_for(Duration::from_secs(20), |v| v["event"] == "connected")
            .expect("no connected event");
        assert_eq!(conn["path"], "direct", "{conn}");
        s.close_input();
    }
    let _ = std::fs::remove_file(&file);
    for (side, s) in [("listener", l), ("connector", c)] {
        let (code, _, events) = s.finish();
        assert_eq!(code, Some(0), "{side}: {events:?}");
    }
}

/// No flags at all on a machine without a network: the built-in STUN servers do not resolve
/// (the offline host's resolv.conf is empty), and the offer still comes at once.
#[test]
fn without_a_relay_or_network_the_offer_comes_at_once() {
    no_relay_configured();
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::Offline).b(Kind::None)) else {
        return;
    };
    let mut l = common::punch::live(&lab, "a", &["listen", "--json"]);
    warned(&mut l);
    let started = l.started;
    let o = offer(&mut l);
    assert!(o.starts_with("natkit-punch1:"), "{o}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "offer after {:?}",
        started.elapsed()
    );
}

/// `punch serve` without a relay says so in one line and prints its code and an offer; a
/// peer (serverless `connect` with the serve code and that offer) sends its own offer back
/// as a line on serve's stdin, and serve prints a fresh offer for the next one. Two peers,
/// one after the other and then side by side, each download a file through
/// `--expose`/`--local`, intact, with serve still running; SIGTERM ends it with exit 0.
#[test]
fn without_a_relay_serve_hosts_peers_by_offers() {
    let Some((lab, _stun, stun)) = stun_lab() else {
        return;
    };
    let body = noise(1 << 20, 15);
    let web = lab.in_node("a", || {
        std::net::TcpListener::bind("127.0.0.1:8000").unwrap()
    });
    http_server(web, body.clone());
    let download =
        |port: u16| common::lab::in_ns(&lab.ns("b"), || http_get(&format!("127.0.0.1:{port}")));
    let mut serve = common::punch::live(
        &lab,
        "a",
        &[
            "serve",
            "--json",
            "--stun",
            &stun,
            "--expose",
            "127.0.0.1:8000",
        ],
    );
    let said = serve
        .wait_for(Duration::from_secs(10), |v| v["event"] == "warning")
        .expect("serve says it serves serverless");
    let said = said["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("no relay given") && said.contains("serverless"),
        "{said}"
    );
    let code = serve
        .wait_for(Duration::from_secs(10), |v| v["event"] == "code")
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .expect("no code event");
    assert_eq!(
        code.split('-').count(),
        9,
        "a number and eight words: {code}"
    );
    let mut peers = Vec::new();
    for (id, port) in [(1u64, 9001u16), (2, 9002)] {
        let offered = serve
            .wait_for(Duration::from_secs(10), |v| {
                v["event"] == "offer" && v["peer_id"] == id
            })
            .unwrap_or_else(|| panic!("no offer for peer {id}"));
        let theirs = offered["offer"].as_str().unwrap().to_string();
        assert!(theirs.contains(lab.get("A_WAN")), "{theirs}");
        let mut p = common::punch::live(
            &lab,
            "b",
            &[
                "connect",
                &code,
                "--json",
                "--stun",
                &stun,
                "--peer",
                &theirs,
                "--local",
                &port.to_string(),
            ],
        );
        let back = offer(&mut p);
        if id == 1 {
            // A line that is no offer is ignored, and the offer still waits for its peer.
            serve.write(b"hello\n");
            serve
                .wait_for(Duration::from_secs(10), |v| {
                    v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("not an offer"))
                })
                .expect("serve says the line is not an offer");
        }
        serve.write(format!("{back}\n").as_bytes());
        for what in ["authenticated", "listening"] {
            p.wait_for(Duration::from_secs(20), |v| v["event"] == what)
                .unwrap_or_else(|| panic!("peer {id}: no {what} event"));
        }
        if id == 1 {
            assert_eq!(Sha256::digest(download(port)), Sha256::digest(&body));
        }
        peers.push(p);
    }
    // Both peers at once, each through its own session.
    let got: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = [9001, 9002]
            .map(|p| s.spawn(move || download(p)))
            .into_iter()
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for g in got {
        assert_eq!(
            Sha256::digest(g),
            Sha256::digest(&body),
            "a download differs"
        );
    }
    assert!(serve.is_running(), "serve exited");
    for p in peers {
        p.kill();
    }
    let (status, events) = serve.terminate(Duration::from_secs(10));
    let mut joined: Vec<u64> = events
        .iter()
        .filter(|v| v["event"] == "peer_joined")
        .filter_map(|v| v["peer_id"].as_u64())
        .collect();
    joined.sort();
    assert_eq!(joined, [1, 2], "{events:?}");
    for id in [1u64, 2] {
        assert!(
            events
                .iter()
                .any(|v| v["event"] == "connected" && v["peer_id"] == id && v["path"] == "direct"),
            "peer {id} connected directly, its events carry its id: {events:?}"
        );
    }
    assert_eq!(
        status,
        Some(0),
        "SIGTERM ends serve with exit 0: {events:?}"
    );
}
