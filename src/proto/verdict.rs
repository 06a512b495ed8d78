//! Turns observations into what a person wants to know: can a stranger reach this machine,
//! what stops it, and what would work instead.
//!
//! Which punching technique works between two NATs follows from RFC 4787's classes: a peer
//! can be reached through a hole punched from inside when its mapping is endpoint-independent
//! (the address the other side learned through a server is the one it must send to), or when
//! the other side's filtering lets the new source in.

use serde::Serialize;

use crate::proto::classify::{Behaviour, Observations};
use crate::wire::netaddr;

/// The answer, in plain words and as data.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// True when unsolicited inbound traffic reaches this host.
    pub can_host: bool,
    /// What stops it (or why it works).
    pub reasons: Vec<String>,
    /// What would work instead.
    pub advice: Vec<String>,
}

/// Whether carrier-grade NAT sits between this host and the internet, and the evidence.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct CgnatFinding {
    /// True when any evidence was found.
    pub cgnat: bool,
    /// Why natprobe thinks so.
    pub evidence: Vec<String>,
}

/// RFC 6598 §7: the shared address space marks a carrier-grade NAT, whether it shows up as
/// the mapped address (server inside the carrier's network), as a router on the path, or as
/// the home router's own external address (port-mapping protocols).
pub fn cgnat(o: &Observations, router_external: Option<std::net::IpAddr>) -> CgnatFinding {
    let mut f = CgnatFinding::default();
    if let Some(m) = o.mapped_addr {
        if netaddr::is_cgnat(m.ip()) {
            f.evidence.push(format!(
                "the server saw you at {}, inside 100.64.0.0/10, the range carriers use for \
                 carrier-grade NAT (RFC 6598)",
                m.ip()
            ));
        }
    }
    // Our own address in the shared space, translated to another: the first NAT is the
    // carrier's (a phone or a modem without a router of its own behind it).
    if let (Some(l), Some(m), Some(true)) = (o.local_addr, o.mapped_addr, o.behind_nat) {
        if netaddr::is_cgnat(l.ip()) && m.ip() != l.ip() {
            f.evidence.push(format!(
                "this machine's own address {} is in 100.64.0.0/10 (RFC 6598 shared address \
                 space) and the internet sees {}: the NAT in front of it is your provider's",
                l.ip(),
                m.ip()
            ));
        }
    }
    // A router in 100.64.0.0/10 only means CGNAT when we are translated at all: some providers
    // number the routers in front of a public customer address from that range too.
    for h in o.hops.iter().filter(|_| o.behind_nat == Some(true)) {
        if netaddr::is_cgnat(h.addr) {
            f.evidence.push(format!(
                "router {} ({} hop{} away) is in 100.64.0.0/10 (RFC 6598 shared address \
                 space): your provider's carrier-grade NAT sits behind your own router",
                h.addr,
                h.ttl,
                if h.ttl == 1 { "" } else { "s" }
            ));
            break;
        }
    }
    if let (Some(ext), Some(m)) = (router_external, o.mapped_addr) {
        if ext != m.ip() && (netaddr::is_cgnat(ext) || netaddr::is_private(ext)) {
            f.evidence.push(format!(
                "your router's external address is {ext} but the internet sees {}: \
                 another NAT sits in front of your router",
                m.ip()
            ));
        }
    }
    f.cgnat = !f.evidence.is_empty();
    f
}

/// What the router's port-mapping protocols add to the verdict: a way to host when the NAT
/// filters, or the reason a mapping cannot help (a second NAT in front of the router).
pub fn portmap_advice(v: &mut Verdict, cg: &CgnatFinding, p: &crate::proto::portmap::ProbeReport) {
    if p.available.is_empty() {
        return;
    }
    let list = p.available.join(", ");
    if let Some(why) = &p.why {
        v.reasons.push(format!(
            "your router speaks {list}, but a port mapping there cannot help: {why}"
        ));
    } else if cg.cgnat {
        v.reasons.push(format!(
            "your router speaks {list}, but a port mapping on it cannot make this host \
             reachable: a carrier-grade NAT sits in front of it"
        ));
    } else if !v.can_host {
        v.advice.push(format!(
            "your router speaks {list}: `portmap add PORT` asks it to forward a port to this \
             machine (add --verify --relay HOST to check from outside)"
        ));
    }
}

fn describe_filtering(f: Behaviour) -> &'static str {
    match f {
        Behaviour::EndpointIndependent => {
            "once you have sent from a port, your NAT lets anyone send to it"
        }
        Behaviour::AddressDependent => {
            "your NAT only lets in packets from addresses (hosts) you have sent to first"
        }
        Behaviour::AddressAndPortDependent => {
            "your NAT only lets in packets from the exact address and port you have sent to first"
        }
        _ => "natprobe could not test which packets your NAT lets in",
    }
}

/// Builds the verdict.
pub fn verdict(o: &Observations, cg: &CgnatFinding) -> Verdict {
    let mut reasons = Vec::new();
    let mut advice = Vec::new();
    if !o.udp {
        reasons.push(match o.tcp {
            Some(true) => "UDP is blocked: no STUN server answered over UDP, but STUN over TCP \
                           to the same server did, so a firewall drops UDP"
                .to_string(),
            _ => "no STUN server answered, so natprobe cannot tell what is in the way".to_string(),
        });
        advice.push(
            "if UDP is blocked, only TCP works: a port forward on your router, or a relay \
             reached over TCP"
                .to_string(),
        );
        return Verdict {
            can_host: false,
            reasons,
            advice,
        };
    }
    let m = o.mapping;
    let f = o.filtering;
    let can_host;
    if o.behind_nat == Some(false) {
        match f {
            Behaviour::EndpointIndependent => {
                can_host = true;
                reasons.push(
                    "your address is public (no NAT) and packets from strangers reach you"
                        .to_string(),
                );
            }
            Behaviour::Unknown => {
                can_host = false;
                reasons.push(
                    "your address is public (no NAT), but natprobe could not test whether a \
                     firewall drops packets from strangers"
                        .to_string(),
                );
            }
            _ => {
                can_host = false;
                reasons.push(format!(
                    "your address is public (no NAT), but a firewall drops unsolicited \
                     packets: {}",
                    describe_filtering(f).replace("your NAT", "it")
                ));
                advice.push("open the port in your firewall".to_string());
            }
        }
    } else {
        can_host = m == Behaviour::EndpointIndependent && f == Behaviour::EndpointIndependent;
        if can_host {
            reasons.push(format!(
                "you are behind a NAT that maps endpoint-independently and lets anyone in once a \
                 port has sent a packet (\"full cone\"): a UDP server that first sends one packet \
                 out and keeps sending keepalives is reachable at {}",
                o.mapped_addr
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default()
            ));
        } else {
            reasons.push(describe_filtering(f).to_string());
            if m == Behaviour::AddressDependent || m == Behaviour::AddressAndPortDependent {
                reasons.push(
                    "your NAT gives each destination a different public port (\"symmetric\"), \
                     so the address a server sees is not the one a peer could use"
                        .to_string(),
                );
            }
        }
    }
    if cg.cgnat {
        reasons.push(
            "you are behind your provider's carrier-grade NAT: you share a public address \
             with other customers"
                .to_string(),
        );
    }
    if !can_host {
        if cg.cgnat {
            advice.push(
                "a port mapping on your own router cannot help: the carrier's NAT in front of \
                 it would still drop the packets. Ask your provider for a public IPv4 address \
                 or a port forward, or use IPv6"
                    .to_string(),
            );
        } else if o.behind_nat == Some(true) {
            advice.push(
                "ask your router to forward a port (UPnP IGD, NAT-PMP or PCP): natkit's \
                 `portmap add PORT`, or a port forward in the router's settings"
                    .to_string(),
            );
        }
        match m {
            Behaviour::EndpointIndependent | Behaviour::None => advice.push(
                "UDP hole punching (natkit's `punch`) can connect you directly with peers \
                 behind full-cone, restricted or port-restricted NATs; a peer behind a \
                 symmetric NAT needs birthday probing or a relay"
                    .to_string(),
            ),
            Behaviour::AddressDependent | Behaviour::AddressAndPortDependent => advice.push(
                "hole punching can reach peers whose NAT is full-cone or restricted; a \
                 port-restricted peer needs birthday probing, and a peer that is symmetric \
                 too needs a relay"
                    .to_string(),
            ),
            Behaviour::Unknown => {}
        }
        advice.push(
            "a relay on a public host (natkit's `relay`) always works, at the cost of a \
             detour"
                .to_string(),
        );
    } else if o.behind_nat == Some(true) {
        advice.push(
            "for TCP services, or to keep one fixed port without keepalives, still ask the \
             router for a port mapping (`portmap add PORT`)"
                .to_string(),
        );
    }
    Verdict {
        can_host,
        reasons,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::classify::Hop;

    fn obs(mapped: &str, behind: bool, hops: &[(u8, &str)]) -> Observations {
        Observations {
            udp: true,
            tcp: None,
            local_addr: Some("192.168.1.2:4000".parse().unwrap()),
            mapped_addr: Some(mapped.parse().unwrap()),
            primary: None,
            behind_nat: Some(behind),
            mapping: Behaviour::EndpointIndependent,
            mapping_note: None,
            filtering: Behaviour::AddressAndPortDependent,
            filtering_note: None,
            hairpinning: None,
            port_preserved: None,
            port_allocation: crate::proto::classify::PortAllocation {
                kind: "unknown",
                delta: None,
            },
            hops: hops
                .iter()
                .map(|(t, a)| Hop {
                    ttl: *t,
                    addr: a.parse().unwrap(),
                })
                .collect(),
            lifetime: None,
            servers: vec![],
            ignored: vec![],
        }
    }

    #[test]
    fn mapped_address_in_shared_space_is_cgnat() {
        let f = cgnat(&obs("100.64.7.9:4000", true, &[]), None);
        assert!(f.cgnat);
        let v = verdict(&obs("100.64.7.9:4000", true, &[]), &f);
        assert!(!v.can_host);
        assert!(v.advice[0].contains("cannot help"));
    }

    #[test]
    fn shared_space_hop_counts_only_behind_nat() {
        let hops = [(1, "192.168.1.1"), (2, "100.64.1.1")];
        assert!(cgnat(&obs("203.0.113.31:4000", true, &hops), None).cgnat);
        assert!(!cgnat(&obs("203.0.113.31:4000", false, &hops), None).cgnat);
        assert!(!cgnat(&obs("203.0.113.31:4000", true, &hops[..1]), None).cgnat);
    }

    #[test]
    fn own_address_in_shared_space_is_cgnat() {
        let mut o = obs("203.0.113.31:4000", true, &[]);
        o.local_addr = Some("100.70.1.2:4000".parse().unwrap());
        assert!(cgnat(&o, None).cgnat);
        o.behind_nat = Some(false);
        assert!(!cgnat(&o, None).cgnat);
    }

    #[test]
    fn router_external_address_exposes_double_nat() {
        let o = obs("203.0.113.31:4000", true, &[]);
        assert!(cgnat(&o, Some("100.64.1.2".parse().unwrap())).cgnat);
        assert!(cgnat(&o, Some("10.0.0.2".parse().unwrap())).cgnat);
        assert!(!cgnat(&o, Some("203.0.113.31".parse().unwrap())).cgnat);
    }
}
