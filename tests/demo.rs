//! `scripts/demo` (natprobe on two NATs, then two shells punched together) runs end to end
//! in its own lab. Needs root; skipped loudly without (fails under CI=true).
mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn demo_shows_natprobe_and_two_shells_talking() {
    if !common::lab::require_lab() {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_punch")).parent().unwrap();
    // A hung demo must not hang the suite.
    let out = Command::new("timeout")
        .arg("120")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"))
        .env("NATKIT_BIN", bin)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in ["natprobe in home A", "natprobe in home B", "mapping"] {
        assert!(stdout.contains(want), "no '{want}' in:\n{stdout}");
    }
    let a = stdout.split("A received:").nth(1).expect("A's part");
    let (a, b) = a.split_once("B received:").expect("B's part");
    assert!(
        a.contains("hello from B, behind a symmetric NAT"),
        "{stdout}"
    );
    assert!(
        b.contains("hello from A, behind a port-restricted NAT"),
        "{stdout}"
    );
}
