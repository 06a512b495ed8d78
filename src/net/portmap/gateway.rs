//! Where to ask: the default gateway from the kernel's routing table, this host's address on
//! its LAN ([`Ctx`]), and whether an external address the router reports is really its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::defaults;
use crate::proto::portmap::{natpmp, ExternalKind};

/// What can go wrong before a report exists.
#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    /// No default route.
    #[error("no default gateway (is the network up?); name the router with --gateway IP")]
    NoGateway,
    /// Local IO.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The state file is unreadable.
    #[error("state file {0}: {1}")]
    State(PathBuf, String),
    /// Bad relay address.
    #[error(transparent)]
    Relay(#[from] crate::net::sys::ProbeError),
    /// The relay name does not resolve.
    #[error("cannot resolve the relay: {0}")]
    Resolve(String),
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The router.
    pub gateway: Ipv4Addr,
    /// Our address on the router's LAN (the mapping's internal client).
    pub local_ip: Ipv4Addr,
    /// Per-protocol give-up time.
    pub timeout: Duration,
    /// The state file.
    pub state: PathBuf,
}

impl Ctx {
    /// Detects the gateway (unless given) and our address towards it.
    pub fn new(
        gateway: Option<Ipv4Addr>,
        timeout: Duration,
        state: Option<PathBuf>,
    ) -> Result<Ctx, PortmapError> {
        let gateway = match gateway {
            Some(g) => g,
            None => default_gateway().ok_or(PortmapError::NoGateway)?,
        };
        let local_ip = local_ip_towards(gateway)?;
        Ok(Ctx {
            gateway,
            local_ip,
            timeout,
            state: state.unwrap_or_else(default_state_path),
        })
    }

    /// The gateway's NAT-PMP/PCP server (RFC 6886 §3, RFC 6887 §19: the same port).
    pub(super) fn pmp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.gateway, natpmp::PORT))
    }
}

/// The IPv4 default gateway from the kernel's routing table (`/proc/net/route`: hex,
/// little-endian fields; the default route has destination and mask 0).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_route_table(&text)
}

fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dst, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        if *dst != "00000000" || *mask != "00000000" {
            return None;
        }
        let g = u32::from_str_radix(gw, 16).ok()?;
        (g != 0).then(|| Ipv4Addr::from(g.swap_bytes()))
    })
}

/// This host's address on the gateway's LAN (the route the kernel would take towards it).
fn local_ip_towards(gw: Ipv4Addr) -> Result<Ipv4Addr, PortmapError> {
    match crate::net::sys::local_ip_towards(SocketAddr::from((gw, natpmp::PORT)))? {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(PortmapError::NoGateway),
    }
}

fn default_state_path() -> PathBuf {
    crate::net::sys::state_dir().join("portmap.json")
}

/// Milliseconds, as the reports give them.
pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Whether the router itself owns `ext` (RFC 792): a datagram to it with TTL 1 is delivered
/// to the router (a port-unreachable from `ext`, or silence) when `ext` is the router's own
/// address, and dies on the router with a Time Exceeded when the router has to forward it —
/// then the address belongs to a NAT further out. Only the gateway sees these packets.
/// `None` when nothing came back.
async fn router_owns(ext: Ipv4Addr) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    s.set_ttl(1).ok()?;
    crate::net::sys::set_recverr(&s);
    let fd = s.as_raw_fd();
    let deadline = Instant::now() + defaults::PORTMAP_ICMP_WAIT * defaults::PORTMAP_ICMP_SENDS;
    for _ in 0..defaults::PORTMAP_ICMP_SENDS {
        // Port 9 (discard): nothing should answer with data.
        let _ = s.send_to(b"natkit", (ext, 9)).await;
        while Instant::now() < deadline {
            let r = tokio::time::timeout(
                defaults::PORTMAP_ICMP_WAIT,
                s.async_io(tokio::io::Interest::ERROR, || {
                    crate::net::sys::read_errqueue(fd)
                        .ok_or_else(|| std::io::ErrorKind::WouldBlock.into())
                }),
            )
            .await;
            match r {
                Ok(Ok((_, 11, _))) => return Some(false),
                Ok(Ok((ip, 3, _))) if ip == IpAddr::V4(ext) => return Some(true),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    None
}

/// Classifies the router's external address, checking that a public one is its own.
pub(super) async fn classify_external(ip: IpAddr) -> ExternalKind {
    match (ExternalKind::of(ip), ip) {
        (ExternalKind::Public, IpAddr::V4(v4)) if router_owns(v4).await == Some(false) => {
            ExternalKind::NotRouters
        }
        (k, _) => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_read_from_the_kernel_table() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(t), Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(parse_route_table("Iface\n"), None);
        assert_eq!(
            parse_route_table("x\n eth0 00000000 zz 0 0 0 0 00000000"),
            None
        );
    }

    #[test]
    fn external_addresses_that_cannot_help_are_named() {
        for (ip, k) in [
            ("203.0.113.21", ExternalKind::Public),
            ("0.0.0.0", ExternalKind::Unspecified),
            ("192.168.0.2", ExternalKind::Private),
            ("100.64.1.2", ExternalKind::Cgnat),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ExternalKind::of(ip), k, "{ip}");
            assert_eq!(k.problem(ip).is_none(), k == ExternalKind::Public);
        }
    }
}
