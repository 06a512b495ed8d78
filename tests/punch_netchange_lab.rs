//! Issue 13 part 3: the network changes under a punch session. Host A's network is
//! disturbed from its own namespace while both sides stream to each other (paced, so a
//! stall is a gap in arrivals, not a backlog): link down and up, address replaced after a
//! gap, default route removed for a while, link down for good. Every byte must arrive intact
//! and the longest stall after the network is back must stay within 10 s (the aim is 2 s);
//! a network gone for good ends both sides with exit 2 within the dead-peer bound + 10 s.
//! Each on a direct session (full-cone × port-restricted) and a relayed one
//! (symmetric × symmetric, no --hard).
mod common;

use common::lab::{Kind, Lab};
use common::punch::{stream_bytes, timed, Timed};
use std::time::{Duration, Instant};

/// Each side writes this many bytes per piece…
const CHUNK: usize = 8 * 1024;
/// …this often (200 KiB/s each way)…
const PACE: Duration = Duration::from_millis(40);
/// …this many pieces: 14 s of streaming.
const PIECES: usize = 350;
/// The disturbance starts this long after the listener starts: the session is up and data
/// flows (a relayed pair settles on the relay in about 1 s).
const DISTURB_AT: Duration = Duration::from_secs(4);
/// The dead-peer bound of the "gone for good" tests (`--dead-peer-timeout`).
const DEAD_PEER: u64 = 10;
/// How long a stall after the network is back may last (ZeroTier's goal).
const MAX_STALL: Duration = Duration::from_secs(10);

/// The two kinds of session: who sits behind what.
#[derive(Clone, Copy, Debug)]
enum Variant {
    Direct,
    Relayed,
}

impl Variant {
    fn kinds(self) -> (Kind, Kind) {
        match self {
            Variant::Direct => (Kind::FullCone, Kind::PortRestricted),
            Variant::Relayed => (Kind::Symmetric, Kind::Symmetric),
        }
    }
}

/// Runs `ip ARGS` in host A's namespace.
fn ip_a(lab: &Lab, args: &[&str]) {
    lab.run_in("a", "ip", args)
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
}

/// Both sides of one session while `disturb` runs on A (it returns when the network is
/// back, or None when it never comes back).
struct Run {
    a: Timed,
    b: Timed,
    down: Duration,
    back: Option<Duration>,
}

fn session(
    v: Variant,
    code: &str,
    extra: &[&str],
    disturb: impl FnOnce(&Lab) -> bool,
) -> Option<Run> {
    let (ka, kb) = v.kinds();
    let lab = Lab::up_or_skip(Lab::builder().a(ka).b(kb))?;
    let _relay = common::relay::start(&lab, 3478);
    let (to_b, to_a) = (
        stream_bytes(1, CHUNK * PIECES),
        stream_bytes(2, CHUNK * PIECES),
    );
    let limit = Duration::from_secs(90);
    let t0 = Instant::now();
    let mut la: Vec<&str> = vec!["listen", "--code", code];
    la.extend(extra);
    let a = timed(&lab, "a", &la, (to_b, CHUNK, PACE), t0, limit);
    std::thread::sleep(Duration::from_millis(200));
    let mut lb: Vec<&str> = vec!["connect", code];
    lb.extend(extra);
    let b = timed(&lab, "b", &lb, (to_a, CHUNK, PACE), t0, limit);
    std::thread::sleep(DISTURB_AT.saturating_sub(t0.elapsed()));
    let down = t0.elapsed();
    let back = disturb(&lab).then(|| t0.elapsed());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    Some(Run { a, b, down, back })
}

/// The network came back: everything arrived, both exited 0, and the stalls after the
/// network returned are within bounds. Returns the longest stall (printed by the caller).
fn check_recovered(name: &str, r: &Run) -> Duration {
    let back = r.back.expect("the network came back");
    let mut worst = Duration::ZERO;
    for (side, t, sent_seed) in [("a", &r.a, 2), ("b", &r.b, 1)] {
        assert_eq!(t.code, Some(0), "{name}: side {side}: {}", t.stderr);
        let before = t.arrivals.iter().filter(|x| x.0 < r.down).count();
        assert!(
            before > 0 && t.arrivals[before - 1].1 < CHUNK * PIECES,
            "{name}: side {side}: the disturbance did not fall mid-transfer"
        );
        assert!(
            t.stdout == stream_bytes(sent_seed, CHUNK * PIECES),
            "{name}: side {side}: {} bytes arrived, not the {} sent, or not intact",
            t.stdout.len(),
            CHUNK * PIECES
        );
        let (stall, ended) = t.longest_stall_after(back);
        eprintln!(
            "{name}: side {side} received: network down at {:?}, back at {back:?}; longest \
             stall after it {stall:?} (ended at {ended:?}); exited at {:?}",
            r.down, t.exited
        );
        assert!(stall <= MAX_STALL, "{name}: side {side} stalled {stall:?}");
        worst = worst.max(stall);
    }
    eprintln!("{name}: longest stall after the network came back: {worst:?}");
    worst
}

/// The network never came back: both sides exit 2 within the bound + 10 s of the link going
/// down, saying why, with what arrived intact.
fn check_gone(name: &str, r: &Run) {
    let bound = Duration::from_secs(DEAD_PEER + 10);
    for (side, t, sent_seed) in [("a", &r.a, 2), ("b", &r.b, 1)] {
        eprintln!(
            "{name}: side {side}: link down at {:?}, exited {:?} at {:?} ({:?} later)",
            r.down,
            t.code,
            t.exited,
            t.exited - r.down
        );
        assert_eq!(t.code, Some(2), "{name}: side {side}: {}", t.stderr);
        assert!(
            t.exited - r.down <= bound,
            "{name}: side {side} exited {:?} after the link went down",
            t.exited - r.down
        );
        assert!(
            t.stderr.contains("has not been heard from"),
            "{name}: side {side}: {}",
            t.stderr
        );
        let sent = stream_bytes(sent_seed, CHUNK * PIECES);
        assert!(
            !t.stdout.is_empty() && sent.starts_with(&t.stdout),
            "{name}: side {side}: what arrived ({} bytes) is not what was sent",
            t.stdout.len()
        );
    }
}

/// Link down, up 3 s later, and the default route back (as a DHCP client would add it: a
/// link that goes down takes its routes along).
fn link_flap(v: Variant, code: &str) {
    let Some(r) = session(v, code, &[], |lab| {
        ip_a(lab, &["link", "set", "eth0", "down"]);
        std::thread::sleep(Duration::from_secs(3));
        ip_a(lab, &["link", "set", "eth0", "up"]);
        ip_a(
            lab,
            &["route", "replace", "default", "via", lab.get("A_GW")],
        );
        true
    }) else {
        return;
    };
    check_recovered(&format!("link flap {v:?}"), &r);
}

/// The address removed, a new one added 2 s later (and the default route with it): A's NAT
/// sees a new inside address and gives it a new mapping.
fn address_replaced(v: Variant, code: &str) {
    let Some(r) = session(v, code, &[], |lab| {
        let old = format!("{}/24", lab.get("A_IP"));
        ip_a(lab, &["addr", "del", &old, "dev", "eth0"]);
        std::thread::sleep(Duration::from_secs(2));
        let new = format!("{}3/24", lab.get("A_IP").trim_end_matches(char::is_numeric));
        ip_a(lab, &["addr", "add", &new, "dev", "eth0"]);
        ip_a(
            lab,
            &["route", "replace", "default", "via", lab.get("A_GW")],
        );
        true
    }) else {
        return;
    };
    check_recovered(&format!("address replaced {v:?}"), &r);
}

/// The default route removed for 5 s.
fn route_removed(v: Variant, code: &str) {
    let Some(r) = session(v, code, &[], |lab| {
        ip_a(lab, &["route", "del", "default"]);
        std::thread::sleep(Duration::from_secs(5));
        ip_a(lab, &["route", "add", "default", "via", lab.get("A_GW")]);
        true
    }) else {
        return;
    };
    check_recovered(&format!("route removed {v:?}"), &r);
}

/// Link down for good.
fn link_gone(v: Variant, code: &str) {
    let bound = DEAD_PEER.to_string();
    let Some(r) = session(v, code, &["--dead-peer-timeout", &bound], |lab| {
        ip_a(lab, &["link", "set", "eth0", "down"]);
        false
    }) else {
        return;
    };
    check_gone(&format!("link gone {v:?}"), &r);
}

#[test]
fn link_down_and_up_direct() {
    link_flap(Variant::Direct, "61-lantern-harbor");
}

#[test]
fn link_down_and_up_relayed() {
    link_flap(Variant::Relayed, "62-lantern-harbor");
}

#[test]
fn address_replaced_after_a_gap_direct() {
    address_replaced(Variant::Direct, "63-lantern-harbor");
}

#[test]
fn address_replaced_after_a_gap_relayed() {
    address_replaced(Variant::Relayed, "64-lantern-harbor");
}

#[test]
fn default_route_removed_for_5s_direct() {
    route_removed(Variant::Direct, "65-lantern-harbor");
}

#[test]
fn default_route_removed_for_5s_relayed() {
    route_removed(Variant::Relayed, "66-lantern-harbor");
}

#[test]
fn link_down_for_good_ends_both_sides_direct() {
    link_gone(Variant::Direct, "67-lantern-harbor");
}

#[test]
fn link_down_for_good_ends_both_sides_relayed() {
    link_gone(Variant::Relayed, "68-lantern-harbor");
}
