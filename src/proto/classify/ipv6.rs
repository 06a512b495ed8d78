//! The IPv6 half of natprobe's answer. The [`super::Prober`] itself is family-agnostic: the
//! driver runs one per family, at once, and this turns the IPv6 run's [`Observations`] into
//! the report's `ipv6` object and merges it into the verdict.
//!
//! Over IPv6 there is normally no NAT: what stands between a host and strangers is the home
//! router's stateful firewall (RFC 6092 recommends address-and-port-dependent filtering,
//! REC-11), which RFC 5780's filtering tests measure exactly as they measure a NAT's filter.
//! A translation seen anyway is NPTv6 (RFC 6296) or a NAT66.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{Behaviour, Observations};

/// The report's `ipv6` object (schema 2): the keys are a contract.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ipv6Report {
    /// Whether a server answered over IPv6.
    pub udp: bool,
    /// This host's global IPv6 address on the path to the servers (null without one).
    pub address: Option<IpAddr>,
    /// The address the server saw.
    pub mapped_addr: Option<SocketAddr>,
    /// NPTv6 or NAT66 seen: the server saw another address than this host's.
    pub translated: bool,
    /// Filtering (RFC 4787 §5 vocabulary), measured by RFC 5780 over IPv6.
    pub filtering: Behaviour,
    /// Whether STUN over TCP answered over IPv6 (null when not needed).
    pub tcp: Option<bool>,
    /// True when unsolicited IPv6 traffic reaches this host.
    pub can_host: bool,
    /// Why, in words.
    pub reasons: Vec<String>,
}

impl Ipv6Report {
    /// IPv6 was not probed, or cannot be: `why` says which (no global address, no route, no
    /// server with an IPv6 address). Known before anything is sent.
    pub fn missing(address: Option<IpAddr>, why: String) -> Self {
        Ipv6Report {
            udp: false,
            address,
            mapped_addr: None,
            translated: false,
            filtering: Behaviour::Unknown,
            tcp: None,
            can_host: false,
            reasons: vec![why],
        }
    }

    /// The IPv6 run's observations, judged. `address` is this host's own address towards the
    /// servers.
    pub fn from_observations(o: &Observations, address: IpAddr) -> Self {
        let translated = o.udp && o.mapped_addr.is_some_and(|m| m.ip() != address);
        let f = o.filtering;
        let can_host = o.udp
            && f == Behaviour::EndpointIndependent
            && (!translated || o.mapping == Behaviour::EndpointIndependent);
        let mut reasons = Vec::new();
        if !o.udp {
            reasons.push(match o.tcp {
                Some(true) => "UDP over IPv6 is blocked: no STUN server answered over UDP, but \
                               STUN over TCP did"
                    .to_string(),
                _ => "no STUN server answered over IPv6".to_string(),
            });
        } else {
            if translated {
                reasons.push(format!(
                    "IPv6 is translated (NPTv6 or NAT66): the server saw {}, not {address}",
                    o.mapped_addr
                        .map(|m| m.ip().to_string())
                        .unwrap_or_default()
                ));
            }
            reasons.push(match f {
                Behaviour::EndpointIndependent => format!(
                    "over IPv6, packets from strangers reach {address} (no firewall filters them)"
                ),
                Behaviour::AddressDependent => "over IPv6, a firewall only lets in packets from \
                                                hosts you have sent to first"
                    .to_string(),
                Behaviour::AddressAndPortDependent => "over IPv6, a firewall only lets in \
                                                       packets from the exact address and port \
                                                       you have sent to first (RFC 6092's \
                                                       recommended home-router default)"
                    .to_string(),
                _ => format!(
                    "natprobe could not test whether a firewall drops packets from strangers \
                     over IPv6{}",
                    o.filtering_note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ipv6Report {
            udp: o.udp,
            address: Some(address),
            mapped_addr: o.mapped_addr,
            translated,
            filtering: f,
            tcp: o.tcp,
            can_host,
            reasons,
        }
    }
}

/// The (IPv4) verdict's parts, which the IPv6 answer amends (`crate::proto::verdict::Verdict`'s
/// fields: that module builds on this one, so it is not named here).
pub struct VerdictParts<'a> {
    /// Whether strangers can reach this host.
    pub can_host: &'a mut bool,
    /// Why.
    pub reasons: &'a mut Vec<String>,
    /// What would work.
    pub advice: &'a mut Vec<String>,
}

/// Merges the IPv6 answer into the (IPv4) verdict: `can_host` when either family can host,
/// and the reasons and advice say which.
pub fn merge_verdict(v: VerdictParts<'_>, v6: &Ipv6Report) {
    let at = v6.address.map(|a| a.to_string()).unwrap_or_default();
    match (*v.can_host, v6.can_host) {
        (false, true) => {
            *v.can_host = true;
            v.reasons.insert(
                0,
                "reachable over IPv6 only: your peers need IPv6 too".to_string(),
            );
            v.advice.insert(
                0,
                format!(
                    "peers with IPv6 reach a server on this machine directly at {at}; for \
                     IPv4-only peers:"
                ),
            );
        }
        (true, true) => v
            .reasons
            .push(format!("reachable over IPv4 and over IPv6 (at {at})")),
        (_, false) => {
            if let Some(r) = v6.reasons.first() {
                v.reasons.push(format!("not reachable over IPv6: {r}"));
            }
            if v6.udp && !v6.translated && v6.filtering != Behaviour::EndpointIndependent {
                v.advice.push(
                    "over IPv6 only your router's firewall is in the way: a pinhole for the \
                     port (PCP, or UPnP IGD:2's WANIPv6FirewallControl) lets peers in, and \
                     two firewalled IPv6 peers can punch through at once"
                        .to_string(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::classify::PortAllocation;

    fn obs(local: &str, mapped: &str, f: Behaviour) -> (Observations, IpAddr) {
        let mut o = Observations::unresolved();
        o.udp = true;
        o.mapped_addr = Some(mapped.parse().unwrap());
        o.local_addr = Some(format!("[{local}]:4000").parse().unwrap());
        o.behind_nat = Some(o.mapped_addr.unwrap().ip().to_string() != local);
        o.mapping = Behaviour::EndpointIndependent;
        o.filtering = f;
        o.port_allocation = PortAllocation::UNKNOWN;
        (o, local.parse().unwrap())
    }

    /// A verdict as (can_host, reasons, advice).
    struct V(bool, Vec<String>, Vec<String>);

    fn v4(can_host: bool) -> V {
        V(can_host, vec!["v4 reason".into()], vec!["v4 advice".into()])
    }

    fn merge(v: &mut V, r: &Ipv6Report) {
        merge_verdict(
            VerdictParts {
                can_host: &mut v.0,
                reasons: &mut v.1,
                advice: &mut v.2,
            },
            r,
        );
    }

    #[test]
    fn an_open_ipv6_path_can_host_and_says_so_first() {
        let (o, a) = obs(
            "2001:db8:1::2",
            "[2001:db8:1::2]:4000",
            Behaviour::EndpointIndependent,
        );
        let r = Ipv6Report::from_observations(&o, a);
        assert!(r.can_host && r.udp && !r.translated);
        let mut v = v4(false);
        merge(&mut v, &r);
        assert!(v.0);
        assert_eq!(v.1[0], "reachable over IPv6 only: your peers need IPv6 too");
        assert_eq!(v.1[1], "v4 reason");
    }

    #[test]
    fn a_firewall_keeps_the_ipv4_answer_and_adds_why() {
        let (o, a) = obs(
            "2001:db8:1::2",
            "[2001:db8:1::2]:4000",
            Behaviour::AddressAndPortDependent,
        );
        let r = Ipv6Report::from_observations(&o, a);
        assert!(!r.can_host);
        let mut v = v4(false);
        merge(&mut v, &r);
        assert!(!v.0);
        assert!(v.1[1].starts_with("not reachable over IPv6: over IPv6, a firewall"));
        assert!(v.2.iter().any(|a| a.contains("pinhole")));
    }

    #[test]
    fn translation_is_seen_and_needs_endpoint_independent_mapping() {
        let (mut o, a) = obs(
            "fd00::2",
            "[2001:db8:1::2]:4000",
            Behaviour::EndpointIndependent,
        );
        let r = Ipv6Report::from_observations(&o, a);
        assert!(r.translated && r.can_host);
        o.mapping = Behaviour::AddressAndPortDependent;
        let r = Ipv6Report::from_observations(&o, a);
        assert!(r.translated && !r.can_host);
    }

    #[test]
    fn a_missing_family_changes_nothing_but_a_reason() {
        let r = Ipv6Report::missing(None, "no global IPv6 address".into());
        let mut v = v4(true);
        merge(&mut v, &r);
        assert!(v.0);
        assert_eq!(
            v.1,
            vec![
                "v4 reason".to_string(),
                "not reachable over IPv6: no global IPv6 address".to_string()
            ]
        );
        assert_eq!(v.2, vec!["v4 advice".to_string()]);
    }
}
