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
    let child = lab
        .cmd("pub", env!("CARGO_BIN_EXE_relay"))
        .args([
            "--addr",
            lab.get("PUB_IP"),
            "--alt-addr",
            lab.get("PUB_IP2"),
        ])
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
