//! Asking the router for a port: NAT-PMP (RFC 6886) and PCP (RFC 6887) client transactions of
//! natkit's own ([`natpmp`], [`pcp`]) over the codecs in [`crate::wire`], and the reports every
//! protocol shares.

pub mod exchange;
pub mod natpmp;
pub mod pcp;
pub mod upnp6;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// Transport protocol of a mapping (defined with the NAT-PMP codec, which names it first).
pub use crate::wire::natpmp::Proto;

/// Which port-mapping protocol to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// PCP, then NAT-PMP, then UPnP: the first that works.
    Auto,
    /// UPnP IGD.
    Upnp,
    /// NAT-PMP (RFC 6886).
    Natpmp,
    /// PCP (RFC 6887).
    Pcp,
}

// ---------------------------------------------------------------------------------------------
// What an external address says about the mapping.

/// Whether a mapping on a router with this external address can make us reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalKind {
    /// A public address: a mapping makes us reachable.
    Public,
    /// 0.0.0.0: the router has no external address (not connected).
    Unspecified,
    /// RFC 1918 or another non-routable range: another NAT sits in front of the router.
    Private,
    /// RFC 6598 100.64.0.0/10: the carrier's NAT (CGNAT) sits in front of the router.
    Cgnat,
    /// A public address that is not the router's own (it forwards packets sent to it): the
    /// router learned it from outside (e.g. by STUN) and another NAT sits in front of it.
    NotRouters,
}

impl ExternalKind {
    /// Classifies an address.
    pub fn of(ip: IpAddr) -> ExternalKind {
        if ip.is_unspecified() {
            ExternalKind::Unspecified
        } else if crate::wire::netaddr::is_cgnat(ip) {
            ExternalKind::Cgnat
        } else if crate::wire::netaddr::is_private(ip) || crate::wire::netaddr::is_unroutable(ip) {
            ExternalKind::Private
        } else {
            ExternalKind::Public
        }
    }

    /// Why a mapping cannot help, if it cannot.
    pub fn problem(self, ip: IpAddr) -> Option<String> {
        match self {
            ExternalKind::Public => None,
            ExternalKind::Unspecified => Some(format!(
                "the router reports its external address as {ip}: it is not connected, so a \
                 mapping leads nowhere"
            )),
            ExternalKind::Private => Some(format!(
                "the router's external address {ip} is private: another NAT sits in front of \
                 it (double NAT), so a mapping here cannot make this host reachable; map the \
                 port on the outer router too, or use punch"
            )),
            ExternalKind::NotRouters => Some(format!(
                "the router reports {ip} as its external address, but {ip} is not the \
                 router's own: it forwards packets sent there, so another NAT (e.g. the \
                 provider's carrier-grade NAT) sits in front of it (double NAT), and a mapping \
                 here cannot make this host reachable; use punch, or ask the provider for a \
                 public address"
            )),
            ExternalKind::Cgnat => Some(format!(
                "the router's external address {ip} is in the carrier-grade NAT range \
                 100.64.0.0/10: the provider's NAT sits in front of it, so a mapping here \
                 cannot make this host reachable; ask the provider for a public address \
                 (or PCP on its NAT), or use punch"
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the router answered (`portmap probe`, natprobe's `portmap` key).

/// One protocol's answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProtocolStatus {
    /// Whether the router speaks it.
    pub available: bool,
    /// Milliseconds to the answer.
    pub ms: Option<u64>,
    /// The external address it reported (NAT-PMP, UPnP).
    pub external_ip: Option<IpAddr>,
    /// The IGD's description URL (UPnP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What happened, in words.
    pub detail: String,
}

impl ProtocolStatus {
    /// Not available, and why.
    pub fn no(detail: impl Into<String>) -> Self {
        ProtocolStatus {
            available: false,
            ms: None,
            external_ip: None,
            url: None,
            detail: detail.into(),
        }
    }
}

/// `portmap probe` (and natprobe's `portmap` key).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeReport {
    /// JSON schema version.
    pub schema: u32,
    /// The router asked.
    pub gateway: Ipv4Addr,
    /// Our address on its LAN.
    pub local_ip: Ipv4Addr,
    /// The protocols that answered, in the order `--via auto` tries them.
    pub available: Vec<&'static str>,
    /// PCP (RFC 6887).
    pub pcp: ProtocolStatus,
    /// NAT-PMP (RFC 6886).
    pub natpmp: ProtocolStatus,
    /// UPnP IGD.
    pub upnp: ProtocolStatus,
    /// The router's external address, if any protocol told.
    pub external_ip: Option<IpAddr>,
    /// What that address is.
    pub external_kind: Option<ExternalKind>,
    /// Whether a mapping here can make this host reachable.
    pub mapping_can_help: bool,
    /// Why not, in words.
    pub why: Option<String>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// IPv6 pinholes (`portmap probe`; natprobe leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Probe>,
}

/// `portmap probe`'s IPv6 part: can the router open a pinhole in its IPv6 firewall?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ipv6Probe {
    /// The router's IPv6 address (the default IPv6 route's next hop).
    pub router: Option<Ipv6Addr>,
    /// This host's global address, which a pinhole opens.
    pub host: Option<Ipv6Addr>,
    /// The protocols that open pinholes, in the order `--via auto` tries them.
    pub available: Vec<&'static str>,
    /// PCP MAP for an IPv6 internal address (RFC 6887 §11).
    pub pcp: ProtocolStatus,
    /// UPnP IGD:2 WANIPv6FirewallControl.
    pub upnp: ProtocolStatus,
}
