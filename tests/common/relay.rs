//! natkit's relay on the lab's public node, killed on drop.
use super::lab::Lab;
use std::process::{Child, Stdio};

/// A running relay.
pub struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `relay` on PUB_IP and PUB_IP2 (RFC 5780 on), ports `port` and `port + 1`.
pub fn start(lab: &Lab, port: u16) -> Relay {
    start_with(
        lab,
        port,
        &[
            "--addr",
            lab.get("PUB_IP"),
            "--alt-addr",
            lab.get("PUB_IP2"),
        ],
    )
}

/// Starts `relay` on both families: PUB_IP and PUB_IP6, with PUB_IP2 and PUB_IP6_2 as the
/// alternate addresses (RFC 5780 over IPv4 and over IPv6), ports `port` and `port + 1`.
#[allow(dead_code)]
pub fn start_dual(lab: &Lab, port: u16) -> Relay {
    start_with(
        lab,
        port,
        &[
            "--addr",
            lab.get("PUB_IP"),
            "--addr",
            lab.get("PUB_IP6"),
            "--alt-addr",
            lab.get("PUB_IP2"),
            "--alt-addr",
            lab.get("PUB_IP6_2"),
        ],
    )
}

fn start_with(lab: &Lab, port: u16, addrs: &[&str]) -> Relay {
    let child = lab
        .cmd("pub", env!("CARGO_BIN_EXE_relay"))
        .args(addrs)
        .args([
            "--port",
            &port.to_string(),
            "--alt-port",
            &(port + 1).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start relay");
    super::coturn::wait_udp(lab, "pub", &[port, port + 1]);
    Relay(child)
}
