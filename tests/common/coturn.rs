//! coturn (Debian package) as the independent RFC 5780 server and reference client.
use super::lab::Lab;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `turnserver` in the lab's public node; killed on drop.
pub struct Coturn {
    child: Child,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts coturn on PUB_IP and PUB_IP2, ports 3478 and 3479 (RFC 5780 needs both), STUN only.
pub fn start(lab: &Lab) -> Coturn {
    let child = lab
        .cmd("pub", "turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--stun-only",
            "-L",
            lab.get("PUB_IP"),
            "-L",
            lab.get("PUB_IP2"),
            "--listening-port",
            "3478",
            "--alt-listening-port",
            "3479",
            "--log-file",
            "stdout",
            "--simple-log",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver (apt-get install coturn)");
    let c = Coturn { child };
    wait_udp(lab, "pub", &[3478, 3479]);
    c
}

/// Waits until UDP ports are bound in a node (coturn binds asynchronously).
pub fn wait_udp(lab: &Lab, node: &str, ports: &[u16]) {
    let t = Instant::now();
    loop {
        let out = lab.cmd(node, "ss").args(["-Hulnp"]).output().expect("ss");
        let s = String::from_utf8_lossy(&out.stdout);
        if ports
            .iter()
            .all(|p| s.matches(&format!(":{p} ")).count() >= 2)
        {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ports {ports:?} not bound in {node}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `turnutils_natdiscovery -m -f` from a node; returns (mapping, filtering) in natkit's
/// spelling, parsed from its "NAT with … Mapping!" lines.
pub fn natdiscovery(lab: &Lab, node: &str, server: &str) -> (String, String) {
    natdiscovery_from(lab, node, server, None)
}

/// Same, binding the client to `local` (coturn's client needs it to say "No NAT!").
pub fn natdiscovery_from(
    lab: &Lab,
    node: &str,
    server: &str,
    local: Option<&str>,
) -> (String, String) {
    let mut cmd = lab.cmd(node, "turnutils_natdiscovery");
    if let Some(l) = local {
        cmd.args(["-L", l]);
    }
    let out = cmd
        .args(["-m", "-f", server])
        .output()
        .expect("turnutils_natdiscovery");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let pick = |what: &str| -> String {
        if what == "Mapping" && text.contains("No NAT!") {
            return "none".into();
        }
        for (needle, v) in [
            ("Endpoint Independent", "endpoint-independent"),
            ("Address and Port Dependent", "address-and-port-dependent"),
            ("Address Dependent", "address-dependent"),
        ] {
            if text.contains(&format!("NAT with {needle} {what}!")) {
                return v.into();
            }
        }
        format!("unparsed: {text}")
    };
    (pick("Mapping"), pick("Filtering"))
}
