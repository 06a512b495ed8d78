//! relay as a classic (RFC 3489) STUN server: pystun3, the common NAT-type client, must name
//! every lab kind right against relay, 20 runs each. The runs of one kind share a lab and go
//! at once (each from its own source port: a port reused from an earlier run inherits the
//! filter state that run opened), and the kinds run in parallel, so the whole test takes about
//! as long as the slowest kind's single run (port-restricted: two unanswered tests of 8 s).
//!
//! pystun3 comes from the Python registry in a venv that `scripts/test` makes
//! (`$NATKIT_PYSTUN3`, else `target/pystun3/bin/pystun3`, else `PATH`); under `CI=true` a
//! missing pystun3 fails the test.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{require_lab, Kind, Lab};

/// Runs of pystun3 per NAT kind.
const RUNS: usize = 20;
/// One run's bound: two unanswered tests of four 2-s tries each, plus slack for a loaded CI
/// machine. A run still going then is killed and counted as wrong.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn pystun3() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATKIT_PYSTUN3") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pystun3/bin/pystun3");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("pystun3"))
        .find(|p| p.is_file())
}

/// What pystun3 2.0.0 prints for each kind (its spelling); None for the kinds it has no name
/// for (a carrier NAT, no network, no host).
fn expected(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Open => "Open Internet",
        Kind::FullCone => "Full Cone",
        Kind::Restricted => "Restric NAT",
        Kind::PortRestricted => "Restric Port NAT",
        Kind::Symmetric | Kind::Sequential => "Symmetric NAT",
        Kind::UdpBlocked => "Blocked",
        Kind::Cgnat | Kind::Offline | Kind::None => return None,
    })
}

/// 20 pystun3 runs against relay in a lab of `kind`: the NAT type each printed.
fn runs(kind: Kind, pystun3: &Path) -> Vec<String> {
    let lab = Lab::builder()
        .a(kind)
        .b(Kind::None)
        .up()
        .unwrap_or_else(|e| panic!("lab {kind} failed to come up: {e}"));
    let _relay = common::relay::start(&lab, 3478);
    let host = lab.get("A_IP").to_string();
    let mut children: Vec<Child> = (0..RUNS)
        .map(|i| {
            // Staggered a little: all 20 share the NAT's public address, and the relay's
            // per-source rate limit (burst 100) must not be what a run measures.
            std::thread::sleep(Duration::from_millis(30));
            let port = (41000 + i).to_string();
            lab.cmd("a", pystun3.to_str().unwrap())
                .args(["-H", lab.get("PUB_IP"), "-P", "3478"])
                // The host's own address: pystun3 says "Open Internet" only when the mapped
                // address equals the one it bound.
                .args(["-i", &host, "-p", &port])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start pystun3")
        })
        .collect();
    let deadline = Instant::now() + RUN_LIMIT;
    while Instant::now() < deadline
        && children
            .iter_mut()
            .any(|c| c.try_wait().ok().flatten().is_none())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    children
        .into_iter()
        .map(|mut c| {
            let _ = c.kill();
            let out = c.wait_with_output().expect("pystun3 output");
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find_map(|l| l.strip_prefix("NAT Type: "))
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "no answer ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                })
        })
        .collect()
}

#[test]
fn pystun3_names_every_lab_kind_against_relay() {
    if !require_lab() {
        return;
    }
    let Some(pystun3) = pystun3() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("pystun3 missing: scripts/test installs it (target/pystun3)");
        }
        eprintln!("\n*** SKIPPED: pystun3 missing (run scripts/test, or set NATKIT_PYSTUN3) ***\n");
        return;
    };
    let results: Vec<(Kind, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = Kind::ALL
            .into_iter()
            .filter(|k| expected(*k).is_some())
            .map(|k| {
                let p = &pystun3;
                s.spawn(move || (k, runs(k, p)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut wrong = Vec::new();
    for (kind, said) in &results {
        let want = expected(*kind).unwrap_or_default();
        let right = said.iter().filter(|s| *s == want).count();
        eprintln!("{kind}: {right}/{RUNS} \"{want}\"");
        if right != RUNS {
            wrong.push(format!("{kind}: {said:?}"));
        }
    }
    assert!(wrong.is_empty(), "pystun3 misnamed: {wrong:#?}");
}

/// Checks that the venv `scripts/test` makes really holds the pinned pystun3 (the expected
/// spellings above are 2.0.0's).
#[test]
fn pystun3_is_the_pinned_version() {
    let Some(p) = pystun3() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "pystun3 missing: scripts/test installs it"
        );
        return;
    };
    let out = Command::new(&p)
        .arg("--version")
        .output()
        .expect("run pystun3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2.0.0");
}
