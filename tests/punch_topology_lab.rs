//! Punching outside the lab's usual assumptions (issue 13): NATs next to each other
//! (`natlab --hops 0`) whose routers accept packets addressed to themselves
//! (`--router-input accept`), where any opening packet that passes our NAT reaches the
//! peer's and can make it move the peer's flow to another port; and real routers between
//! the NATs (`--hops 2`), where the opening TTL must come from measurement.
//!
//! Every pair that goes direct in the usual lab must go direct here too, with every byte
//! intact; the `nat` event says what was measured and chosen.

mod common;

use common::lab::{Kind, Lab};
use common::punch::{at_relay, is_direct, manual_side, offer_of, stream_bytes};
use serde_json::Value;
use std::time::Duration;

/// How long a pair may take to go direct: with neighbouring strict NATs the sides wait out
/// the clash (35 s after the first round, see `proto::punch::clash`).
fn limit(a: Kind, b: Kind) -> Duration {
    let strict = |k: Kind| matches!(k, Kind::PortRestricted | Kind::Symmetric);
    if strict(a) && strict(b) {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(15)
    }
}

fn run(lab: &Lab, a: Kind, b: Kind, direct: bool, method: &str) {
    let _r = common::relay::start(lab, 3478);
    let code = format!("{}-lantern-harbor", 100 + rand::random::<u16>() % 800);
    let what = format!("{a:?} x {b:?} ({})", lab.get("HOPS"));
    let mut la = at_relay(lab, "a", &["listen", "--code", &code]);
    std::thread::sleep(Duration::from_millis(200));
    let mut lb = at_relay(lab, "b", &["connect", &code]);
    let want = |v: &Value| {
        v["event"] == "connected"
            && (if direct {
                is_direct(v)
            } else {
                v["path"] == "relay"
            })
    };
    for (s, side) in [(&mut la, "listener"), (&mut lb, "connector")] {
        assert!(
            s.wait_for(limit(a, b), want).is_some(),
            "{what}: the {side} never went {}",
            if direct {
                "direct"
            } else {
                "through the relay"
            }
        );
    }
    let (da, db) = (stream_bytes(1, 256 << 10), stream_bytes(2, 256 << 10));
    la.feed(da.clone());
    lb.feed(db.clone());
    let (ca, oa, ea) = la.finish();
    let (cb, ob, eb) = lb.finish();
    assert_eq!((ca, cb), (Some(0), Some(0)), "{what}: {ea:?} {eb:?}");
    assert!(oa == db && ob == da, "{what}: bytes differ");
    for e in [&ea, &eb] {
        if let Some(n) = e.iter().find(|v| v["event"] == "nat") {
            assert_eq!(n["opening"]["method"], method, "{what}: {n}");
        }
    }
}

/// `a` × `b` with `hops` routers between the NATs, whose input is `input`: direct (or
/// relayed) as `direct` says, opened by `method`.
fn topology(a: Kind, b: Kind, hops: u8, input: &'static str, direct: bool, method: &str) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b).hops(hops).router_input(input)) else {
        return;
    };
    run(&lab, a, b, direct, method);
}

fn neighbours(a: Kind, b: Kind, direct: bool) {
    topology(a, b, 0, "accept", direct, "order");
}

macro_rules! matrix {
    ($($name:ident: $a:ident x $b:ident => $direct:expr;)*) => {
        $(#[test] fn $name() { neighbours(Kind::$a, Kind::$b, $direct); })*
    };
}

// The 25-pair matrix of tests/punch_lab.rs, with the NATs next to each other.
matrix! {
    next_open_x_open: Open x Open => true;
    next_open_x_full_cone: Open x FullCone => true;
    next_open_x_restricted: Open x Restricted => true;
    next_open_x_port_restricted: Open x PortRestricted => true;
    next_open_x_symmetric: Open x Symmetric => true;
    next_full_cone_x_open: FullCone x Open => true;
    next_full_cone_x_full_cone: FullCone x FullCone => true;
    next_full_cone_x_restricted: FullCone x Restricted => true;
    next_full_cone_x_port_restricted: FullCone x PortRestricted => true;
    next_full_cone_x_symmetric: FullCone x Symmetric => true;
    next_restricted_x_open: Restricted x Open => true;
    next_restricted_x_full_cone: Restricted x FullCone => true;
    next_restricted_x_restricted: Restricted x Restricted => true;
    next_restricted_x_port_restricted: Restricted x PortRestricted => true;
    next_restricted_x_symmetric: Restricted x Symmetric => true;
    next_port_restricted_x_open: PortRestricted x Open => true;
    next_port_restricted_x_full_cone: PortRestricted x FullCone => true;
    next_port_restricted_x_restricted: PortRestricted x Restricted => true;
    next_port_restricted_x_port_restricted: PortRestricted x PortRestricted => true;
    next_port_restricted_x_symmetric: PortRestricted x Symmetric => false;
    next_symmetric_x_open: Symmetric x Open => true;
    next_symmetric_x_full_cone: Symmetric x FullCone => true;
    next_symmetric_x_restricted: Symmetric x Restricted => true;
    next_symmetric_x_port_restricted: Symmetric x PortRestricted => false;
    next_symmetric_x_symmetric: Symmetric x Symmetric => false;
}

/// Two routers between the NATs, both accepting packets to themselves: the measured
/// opening TTL (2) passes the home router and dies at the first router after it.
#[test]
fn two_routers_between_make_a_measured_ttl() {
    let pr = Kind::PortRestricted;
    topology(pr, pr, 2, "accept", true, "ttl");
}

/// Neighbouring routers with an input firewall: nothing clashes, and the opening packets
/// (TTL 2, silently dropped by the peer's firewall) are harmless.
#[test]
fn neighbours_with_input_firewalls_punch_at_once() {
    let pr = Kind::PortRestricted;
    topology(pr, pr, 0, "drop", true, "ttl");
}

/// `--manual` (no relay at all) between neighbouring NATs that accept packets to themselves:
/// the connector, which starts first, leads; when its NAT is the strict one (port-restricted
/// against the listener's address-restricted NAT) the first round cannot work, and both wait
/// out the clash once — direct after about 40 s, every byte intact, never a hang.
fn manual_neighbours(a: Kind, b: Kind, within: Duration) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(a).b(b).hops(0).router_input("accept")) else {
        return;
    };
    let _stun = common::coturn::start(&lab);
    let dir = std::env::temp_dir().join(format!("natkit-manual-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let offer_file = dir.join("connector-offer");
    let (da, db) = (stream_bytes(3, 256 << 10), stream_bytes(4, 256 << 10));
    let stun = lab.get("PUB_IP").to_string();
    let file = offer_file.to_str().unwrap();
    let listen = [
        "listen",
        "--code",
        "9-lantern-harbor",
        "--stun",
        &stun,
        "--peer-file",
        file,
    ];
    let mut l = manual_side(&lab, "a", &listen, da.clone());
    let offer_l = offer_of(&mut l);
    let connect = [
        "connect",
        "9-lantern-harbor",
        "--stun",
        &stun,
        "--peer",
        &offer_l,
    ];
    let mut c = manual_side(&lab, "b", &connect, db.clone());
    let offer_c = offer_of(&mut c);
    // The person takes a moment to paste it.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&offer_file, format!("{offer_c}\n")).unwrap();
    let t = std::time::Instant::now();
    if c.wait_for(within, is_direct).is_none() {
        let (ce, le) = (c.kill(), l.kill());
        panic!("{a:?} x {b:?}: connector not direct\nconnector: {ce:?}\nlistener: {le:?}");
    }
    assert!(
        l.wait_for(Duration::from_secs(5), is_direct).is_some(),
        "listener not direct"
    );
    let took = t.elapsed();
    let (lcode, lout, levents) = l.finish();
    let (ccode, cout, cevents) = c.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (lcode, ccode),
        (Some(0), Some(0)),
        "{levents:?} {cevents:?}"
    );
    assert!(cout == da && lout == db, "{a:?} x {b:?}: bytes differ");
    eprintln!("--manual {a:?} x {b:?} at --hops 0: direct after {took:?}");
}

#[test]
fn manual_neighbours_strict_connector_waits_out_the_clash() {
    manual_neighbours(
        Kind::Restricted,
        Kind::PortRestricted,
        Duration::from_secs(60),
    );
}

#[test]
fn manual_neighbours_permissive_connector_leads() {
    manual_neighbours(
        Kind::PortRestricted,
        Kind::Restricted,
        Duration::from_secs(10),
    );
}
