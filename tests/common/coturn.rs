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
    start_on(lab, "PUB_IP", "PUB_IP2")
}

/// The same on pub's two IPv6 addresses (PUB_IP6, PUB_IP6_2): coturn serves RFC 5780 over
/// IPv6 when given two IPv6 `-L` addresses.
pub fn start_v6(lab: &Lab) -> Coturn {
    start_on(lab, "PUB_IP6", "PUB_IP6_2")
}

/// Starts coturn on the two pub addresses named by these env keys.
fn start_on(lab: &Lab, key1: &str, key2: &str) -> Coturn {
    let child = lab
        .cmd("pub", "turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--stun-only",
            "-L",
            lab.get(key1),
            "-L",
            lab.get(key2),
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
    let bound: Vec<String> = [key1, key2]
        .iter()
        .flat_map(|k| {
            let ip: std::net::IpAddr = lab.get(k).parse().expect("pub address");
            [3478, 3479].map(|p| std::net::SocketAddr::new(ip, p).to_string())
        })
        .collect();
    wait_bound(lab, "pub", &bound);
    c
}

/// Waits until these UDP addresses (`ss`'s spelling: `ip:port`, `[ip6]:port`) are bound in a
/// node: another server on the same ports must not count.
fn wait_bound(lab: &Lab, node: &str, addrs: &[String]) {
    let t = Instant::now();
    loop {
        let out = lab.cmd(node, "ss").args(["-Hulnp"]).output().expect("ss");
        let s = String::from_utf8_lossy(&out.stdout);
        if addrs.iter().all(|a| s.contains(&format!("{a} "))) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{addrs:?} not bound in {node}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
