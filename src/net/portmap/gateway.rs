//! Where to ask: the default gateway from the kernel's routing table, this host's address on
//! its LAN ([`Ctx`]), and whether an external address the router reports is really its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
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
    /// `--ipv6` without a usable IPv6 router or global address.
    #[error("--ipv6: {0}")]
    NoIpv6(String),
}

/// Where an IPv6 pinhole is asked for (`--ipv6`): there is no NAT, so the "mapping" is a hole
/// in the router's IPv6 firewall for this host's own global address.
#[derive(Debug, Clone, Copy)]
pub struct V6 {
    /// The router's IPv6 address (the default route's next hop; link-local ones keep their
    /// interface in the scope id).
    pub router: SocketAddrV6,
    /// This host's global address (the pinhole's internal client).
    pub host: Ipv6Addr,
    /// The interface towards the router (for link-local multicast: SSDP's ff02::c).
    pub ifindex: u32,
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
    /// Set by [`Ctx::ipv6`]: pinholes instead of IPv4 mappings.
    pub v6: Option<V6>,
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
            v6: None,
        })
    }

    /// The same router asked for IPv6 pinholes (`--ipv6`): its IPv6 address from the default
    /// IPv6 route, and this host's global address towards it.
    pub fn ipv6(self) -> Result<Ctx, PortmapError> {
        let v6 = find_v6().map_err(PortmapError::NoIpv6)?;
        Ok(Ctx {
            v6: Some(v6),
            ..self
        })
    }

    /// The gateway's NAT-PMP/PCP server (RFC 6886 §3, RFC 6887 §19: the same port); with
    /// `--ipv6` its IPv6 address (PCP only: RFC 6887 §11 maps an IPv6 internal address).
    pub(super) fn pmp_addr(&self) -> SocketAddr {
        match self.v6 {
            Some(v6) => SocketAddr::V6(SocketAddrV6::new(
                *v6.router.ip(),
                natpmp::PORT,
                0,
                v6.router.scope_id(),
            )),
            None => SocketAddr::from((self.gateway, natpmp::PORT)),
        }
    }

    /// The address a mapping or pinhole is for: ours on the LAN, or our global IPv6 one.
    pub(super) fn client_ip(&self) -> IpAddr {
        match self.v6 {
            Some(v6) => IpAddr::V6(v6.host),
            None => IpAddr::V4(self.local_ip),
        }
    }
}

/// The IPv6 router and this host's global address, or why there is none.
pub fn find_v6() -> Result<V6, String> {
    let text = std::fs::read_to_string("/proc/net/ipv6_route")
        .map_err(|e| format!("no IPv6 routing table: {e}"))?;
    let (router, dev) = parse_ipv6_route_table(&text).ok_or("no default IPv6 route")?;
    let ifindex = crate::net::sys::if_index(&dev).ok_or_else(|| format!("no interface {dev}"))?;
    let scope = if is_link_local(router) { ifindex } else { 0 };
    let router = SocketAddrV6::new(router, 0, 0, scope);
    // Towards a global router the kernel's choice is the source address it would use; a
    // link-local router tells nothing, so the host's first global address is taken.
    let towards = crate::net::sys::local_ip_towards(SocketAddr::V6(SocketAddrV6::new(
        *router.ip(),
        natpmp::PORT,
        0,
        scope,
    )));
    let globals = crate::net::sys::global_ipv6_addrs();
    let host = match towards {
        Ok(IpAddr::V6(ip)) if globals.contains(&ip) => ip,
        _ => *globals
            .first()
            .ok_or("no global IPv6 address (this machine has only link-local IPv6, or none)")?,
    };
    Ok(V6 {
        router,
        host,
        ifindex,
    })
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// The default IPv6 route's next hop and device from `/proc/net/ipv6_route` (hex fields:
/// destination, its prefix length, source, its prefix length, next hop, metric, refcount,
/// use, flags, device).
fn parse_ipv6_route_table(text: &str) -> Option<(Ipv6Addr, String)> {
    let hex128 = |s: &str| u128::from_str_radix(s, 16).ok().filter(|_| s.len() == 32);
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dst, plen, hop, dev) = (f.first()?, f.get(1)?, f.get(4)?, f.get(9)?);
        if hex128(dst)? != 0 || *plen != "00" {
            return None;
        }
        let hop = hex128(hop)?;
        (hop != 0).then(|| (Ipv6Addr::from(hop), dev.to_string()))
    })
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
    fn default_ipv6_route_is_read_from_the_kernel_table() {
        let t = "20010db8000100000000000000000000 40 00000000000000000000000000000000 00 \
                 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n\
                 00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
        assert_eq!(
            parse_ipv6_route_table(t),
            Some(("fe80::1".parse().unwrap(), "eth0".to_string()))
        );
        // An unreachable default (next hop ::) or a short line is no gateway.
        let none = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                    00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n\
                    0000 00";
        assert_eq!(parse_ipv6_route_table(none), None);
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
