//! punch --icmp (the pwnat technique) on the NAT lab, with no relay or STUN server running at
//! all: the listener's echo requests go to an unassigned lab address, the connector's forged
//! ICMP Time Exceeded gets through the listener's NAT, and the two punch UDP.
mod common;

use common::lab::{Kind, Lab};
use common::punch::live;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Nobody has this address in the lab: the echo requests die there (never to the internet).
const ECHO_TARGET: &str = "203.0.113.99";

fn random(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// `punch listen --icmp` in host a.
fn icmp_listener(lab: &Lab, code: &str) -> common::punch::Live {
    let args = ["listen", "--icmp", "--echo-target", ECHO_TARGET];
    live(lab, "a", &[&args[..], &["--code", code, "--json"]].concat())
}

/// `punch connect --icmp A_WAN` in host b.
fn icmp_connector(lab: &Lab, code: &str) -> common::punch::Live {
    let args = [
        "connect",
        "--icmp",
        lab.get("A_WAN"),
        "--echo-target",
        ECHO_TARGET,
    ];
    live(lab, "b", &[&args[..], &[code, "--json"]].concat())
}

fn event<'a>(events: &'a [Value], name: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == name)
}

/// Listener behind a port-restricted NAT, connector on a public address: direct, intact,
/// `method: icmp`.
#[test]
fn icmp_reaches_a_listener_behind_port_restricted_nat_without_any_server() {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::PortRestricted).b(Kind::Open)) else {
        return;
    };
    let code = "41-lantern-harbor";
    let (da, db) = (random(1 << 20), random(1 << 20));
    let mut l = icmp_listener(&lab, code);
    l.feed(da.clone());
    std::thread::sleep(Duration::from_millis(300));
    let mut c = icmp_connector(&lab, code);
    c.feed(db.clone());
    let (la, oa, ea) = l.finish();
    let (lc, oc, ec) = c.finish();
    assert_eq!(la, Some(0), "listener: {ea:?}");
    assert_eq!(lc, Some(0), "connector: {ec:?}");
    assert_eq!(
        Sha256::digest(&oc),
        Sha256::digest(&da),
        "listener → connector"
    );
    assert_eq!(
        Sha256::digest(&oa),
        Sha256::digest(&db),
        "connector → listener"
    );
    for (events, peer) in [(&ea, lab.get("B_WAN")), (&ec, lab.get("A_WAN"))] {
        let c = event(events, "connected").unwrap_or_else(|| panic!("{events:?}"));
        assert_eq!(c["path"], "direct", "{c}");
        assert_eq!(c["method"], "icmp", "{c}");
        assert!(
            c["peer"].as_str().unwrap().starts_with(&format!("{peer}:")),
            "{c}"
        );
    }
}

/// Documented result: a connector behind a NAT of its own does not work. Its NAT has no
/// mapping for an ICMP error it never saw the query of, so the Time Exceeded leaves with the
/// connector's private source address; the listener's NAT still lets it in (the quoted echo
/// request matches), and the listener says the connector is behind a NAT instead of
/// punching towards an address it cannot reach. Neither side connects.
#[test]
fn icmp_with_the_connector_behind_a_nat_does_not_connect_and_the_listener_says_why() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .b(Kind::PortRestricted),
    ) else {
        return;
    };
    let code = "42-lantern-harbor";
    let l = icmp_listener(&lab, code);
    std::thread::sleep(Duration::from_millis(300));
    let c = icmp_connector(&lab, code);
    std::thread::sleep(Duration::from_secs(5));
    let (ea, ec) = (l.kill(), c.kill());
    assert!(event(&ea, "connected").is_none(), "{ea:?}");
    assert!(event(&ec, "connected").is_none(), "{ec:?}");
    let said = ea
        .iter()
        .filter_map(Value::as_str)
        .any(|l| l.contains("behind a NAT") && l.contains(lab.get("B_IP")));
    assert!(said, "the listener should say why: {ea:?}");
}

/// Without CAP_NET_RAW (an unprivileged user): a clear error naming the capability and how
/// to grant it, exit non-zero, before anything is sent (the echo target is loopback anyway).
#[test]
fn icmp_without_cap_net_raw_is_a_clear_error() {
    if !common::lab::require_lab() {
        return;
    }
    // A copy the unprivileged user can run, whatever the permissions of the build tree.
    let dir = std::env::temp_dir().join(format!("natkit-icmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("punch");
    std::fs::copy(env!("CARGO_BIN_EXE_punch"), &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [
        &["listen", "--icmp", "--echo-target", "127.0.0.2"][..],
        &[
            "connect",
            "--icmp",
            "127.0.0.1",
            "--echo-target",
            "127.0.0.2",
            "7-lantern-harbor",
        ],
    ] {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&exe)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("CAP_NET_RAW"), "{err}");
        assert!(err.contains("setcap cap_net_raw+ep"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
