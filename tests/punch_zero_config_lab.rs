//! Zero configuration: `punch listen` / `punch connect` without `--relay` and without
//! `NATKIT_RELAY` run serverless (as `--manual`), say so in one `warning` event and print an
//! offer, instead of stopping at a missing argument. The STUN server is the lab's (`--stun`):
//! a test never asks the built-in public servers, except on the lab's offline host, whose
//! empty resolv.conf sends no query anywhere.
mod common;

use std::time::Duration;

use common::lab::{Kind, Lab};
use common::punch::Live;
use serde_json::Value;

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

/// Both sides without a relay: each prints its offer (the listener's with its NAT's public
/// address from the lab's STUN server), takes the other's, and they connect directly.
#[test]
fn without_a_relay_both_sides_print_offers_and_connect() {
    no_relay_configured();
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(Kind::FullCone))
    else {
        return;
    };
    let _stun = common::relay::start(&lab, 3478);
    let stun = lab.get("PUB_IP").to_string();
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
