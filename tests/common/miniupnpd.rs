//! The lab's real miniupnpd (`natlab up --portmap-a all|natpmp`) driven by the
//! reference clients: `upnpc` (miniupnpc), `natpmpc` (libnatpmp), and a
//! minimal PCP MAP request (RFC 6887) written here. Independent of natkit.
//!
//! Facts about miniupnpd 2.3.1 in the lab are in `natlab --help`, PORT MAPPING.
use super::lab::Lab;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

/// NAT-PMP and PCP server port.
pub const NATPMP_PORT: u16 = 5351;
/// miniupnpd's HTTP port (natlab fixes it).
pub const UPNP_HTTP_PORT: u16 = 5000;

/// Runs `program args...` in `node` under `timeout 10`; returns (exit status
/// success, stdout + stderr).
pub fn run(lab: &Lab, node: &str, program: &str, args: &[&str]) -> (bool, String) {
    let out = lab
        .cmd(node, "timeout")
        .arg("10")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install miniupnpc natpmpc)"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `upnpc -u URL args...` in `node` (the URL skips SSDP discovery and makes
/// upnpc use an IGD whose external address is reserved).
pub fn upnpc(lab: &Lab, node: &str, url: &str, args: &[&str]) -> (bool, String) {
    let mut a = vec!["-u", url];
    a.extend_from_slice(args);
    run(lab, node, "upnpc", &a)
}

/// `natpmpc -g GW args...` in `node`.
pub fn natpmpc(lab: &Lab, node: &str, gw: &str, args: &[&str]) -> (bool, String) {
    let mut a = vec!["-g", gw];
    a.extend_from_slice(args);
    run(lab, node, "natpmpc", &a)
}

/// The public address natpmpc printed ("Public IP address : X").
pub fn natpmp_public(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .find_map(|l| l.strip_prefix("Public IP address : "))
        .and_then(|v| v.trim().parse().ok())
}

/// The NAT-PMP epoch (seconds since the daemon started) natpmpc printed
/// ("epoch = N").
pub fn natpmp_epoch(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("epoch = "))
        .and_then(|v| v.trim().parse().ok())
}

/// The gateway's public address by NAT-PMP, if it answers.
pub fn natpmp_public_of(lab: &Lab, node: &str, gw: &str) -> Option<Ipv4Addr> {
    let (ok, text) = natpmpc(lab, node, gw, &[]);
    if ok {
        natpmp_public(&text)
    } else {
        None
    }
}

/// A PCP MAP response (RFC 6887 §7.2, §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcpMap {
    pub result: u8,
    pub lifetime: u32,
    pub epoch: u32,
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    /// The external address's last four bytes (the IPv4 one of an IPv4-mapped address).
    pub external_ip: Ipv4Addr,
    /// The external address's 16 bytes (IPv4-mapped for IPv4).
    pub external_ip6: std::net::Ipv6Addr,
}

/// PCP result code SUCCESS.
pub const PCP_SUCCESS: u8 = 0;
/// PCP result code NETWORK_FAILURE (what miniupnpd answers when it has
/// disabled port forwarding, e.g. behind cgnat).
pub const PCP_NETWORK_FAILURE: u8 = 8;

/// A PCP address field (RFC 6887 §5): IPv4 as IPv4-mapped IPv6, IPv6 as is.
fn pcp_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Sends a PCP MAP request from `client` (an address of `node`; IPv6 for a pinhole, RFC 6887
/// §11) to `gw`:5351
/// for `protocol` (6 TCP, 17 UDP) `internal_port`, suggesting `external_port`
/// and `lifetime` (0 deletes). The nonce depends on the protocol and
/// internal port only, so a later call renews or deletes the mapping. Returns
/// the response, or None after 3 tries.
#[allow(clippy::too_many_arguments)]
pub fn pcp_map(
    lab: &Lab,
    node: &str,
    gw: impl Into<IpAddr>,
    client: impl Into<IpAddr>,
    protocol: u8,
    internal_port: u16,
    external_port: u16,
    lifetime: u32,
) -> Option<PcpMap> {
    let (gw, client) = (gw.into(), client.into());
    let sock = lab.in_node(node, || {
        UdpSocket::bind(SocketAddr::new(client, 0)).expect("bind pcp client")
    });
    // The same nonce for the same mapping: miniupnpd (as RFC 6887 asks)
    // refuses to renew or delete a mapping with another nonce (NOT_AUTHORIZED).
    let mut nonce = [0u8; 12];
    let seed =
        (std::process::id() as u64) ^ ((protocol as u64) << 40) ^ ((internal_port as u64) << 16);
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = (seed >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(37);
    }
    let mut req = Vec::with_capacity(60);
    req.extend_from_slice(&[2, 1, 0, 0]); // version 2, request, opcode MAP
    req.extend_from_slice(&lifetime.to_be_bytes());
    req.extend_from_slice(&pcp_addr(client));
    req.extend_from_slice(&nonce);
    req.extend_from_slice(&[protocol, 0, 0, 0]);
    req.extend_from_slice(&internal_port.to_be_bytes());
    req.extend_from_slice(&external_port.to_be_bytes());
    // No preference: the family's all-zeros address (§11.1).
    let any = match client {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    req.extend_from_slice(&pcp_addr(any));
    let mut buf = [0u8; 1100];
    for _ in 0..3 {
        sock.send_to(&req, SocketAddr::new(gw, NATPMP_PORT)).ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let d = &buf[..n];
            if n < 60 || d[0] != 2 || d[1] != 0x81 || d[24..36] != nonce {
                continue;
            }
            let u32_at = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
            let u16_at = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
            return Some(PcpMap {
                result: d[3],
                lifetime: u32_at(4),
                epoch: u32_at(8),
                protocol: d[36],
                internal_port: u16_at(40),
                external_port: u16_at(42),
                external_ip: Ipv4Addr::new(d[56], d[57], d[58], d[59]),
                external_ip6: std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&d[44..60]).unwrap()),
            });
        }
    }
    None
}

/// Pids of the daemons natlab runs for a lab (miniupnpd per router, the STUN
/// server), from its pid files `/run/natlab/NAME-*.pid`.
pub fn daemon_pids(lab_name: &str) -> Vec<(String, u32)> {
    let prefix = format!("{lab_name}-");
    let mut v = Vec::new();
    if let Ok(d) = std::fs::read_dir("/run/natlab") {
        for e in d.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with(&prefix) && f.ends_with(".pid") {
                if let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    v.push((f, pid));
                }
            }
        }
    }
    v.sort();
    v
}

/// Does `pid` still run (and is not a zombie)? Returns its command name.
pub fn process_alive(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.split(' ').next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim().to_string())
}

/// Processes whose command line names this lab's run files
/// (`/run/natlab/NAME-`), i.e. natlab's daemons for it.
pub fn lab_processes(lab_name: &str) -> Vec<(u32, String)> {
    let needle = format!("/run/natlab/{lab_name}-");
    let me = std::process::id();
    let mut v = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                if let Some(comm) = process_alive(pid) {
                    v.push((pid, comm));
                }
            }
        }
    }
    v
}

/// A portmap state file of one test's own under the temp dir (tests run in parallel).
pub fn state_file(prefix: &str, tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.join("portmap.json")
}

/// `portmap --json args...` on host A with state file `st`: (exit code, first JSON line,
/// stdout + stderr).
pub fn portmap_json(
    lab: &Lab,
    st: &std::path::Path,
    args: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let out = lab
        .cmd("a", env!("CARGO_BIN_EXE_portmap"))
        .arg("--json")
        .args(args)
        .env("NATKIT_PORTMAP_STATE", st)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v =
        serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        v,
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )
}
