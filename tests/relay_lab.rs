//! relay as an RFC 5780 server on the NAT lab: coturn's reference client and natprobe must
//! give the same verdicts against relay as against coturn, for every NAT kind.
mod common;

use common::coturn;
use common::lab::{Kind, Lab};

fn natdiscovery_port(lab: &Lab, port: u16) -> (String, String) {
    let out = lab
        .cmd("a", "turnutils_natdiscovery")
        .args(["-m", "-f", "-p", &port.to_string(), lab.get("PUB_IP")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pick = |what: &str| {
        for (needle, v) in [
            ("Endpoint Independent", "endpoint-independent"),
            ("Address and Port Dependent", "address-and-port-dependent"),
            ("Address Dependent", "address-dependent"),
        ] {
            if text.contains(&format!("NAT with {needle} {what}!")) {
                return v.to_string();
            }
        }
        format!("unparsed: {text}")
    };
    (pick("Mapping"), pick("Filtering"))
}

fn interop(kind: Kind, expect: (&str, &str)) {
    let Some(lab) = Lab::up_or_skip(Lab::builder().a(kind).b(Kind::None)) else {
        return;
    };
    let _coturn = coturn::start(&lab);
    let _relay = common::relay::start(&lab, 4478);
    let want = (expect.0.to_string(), expect.1.to_string());
    assert_eq!(
        natdiscovery_port(&lab, 3478),
        want,
        "coturn client vs coturn on {kind:?}"
    );
    assert_eq!(
        natdiscovery_port(&lab, 4478),
        want,
        "coturn client vs relay on {kind:?}"
    );
    for _ in 0..3 {
        let out = lab
            .cmd("a", env!("CARGO_BIN_EXE_natprobe"))
            .args(["--json", "--server", &format!("{}:4478", lab.get("PUB_IP"))])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (
                v["mapping"].as_str().unwrap().to_string(),
                v["filtering"].as_str().unwrap().to_string()
            ),
            want,
            "natprobe vs relay: {v}"
        );
        assert_eq!(v["servers"][0]["rfc5780"], true);
        assert_eq!(
            v["servers"][0]["problems"].as_array().unwrap().len(),
            0,
            "{v}"
        );
    }
}

#[test]
fn relay_interop_full_cone() {
    interop(
        Kind::FullCone,
        ("endpoint-independent", "endpoint-independent"),
    );
}

#[test]
fn relay_interop_restricted() {
    interop(
        Kind::Restricted,
        ("endpoint-independent", "address-dependent"),
    );
}

#[test]
fn relay_interop_port_restricted() {
    interop(
        Kind::PortRestricted,
        ("endpoint-independent", "address-and-port-dependent"),
    );
}

#[test]
fn relay_interop_symmetric() {
    interop(
        Kind::Symmetric,
        ("address-and-port-dependent", "address-and-port-dependent"),
    );
}
