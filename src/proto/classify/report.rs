//! From the prober's state to [`Observations`]: the mapping (RFC 4787 §4.1), filtering (§5)
//! and hairpinning (§6) verdicts of the tests, and what several servers' answers say when no
//! server supports RFC 5780.

use std::net::SocketAddr;

use super::{port_allocation, Behaviour, Observations, Outcome, PortAllocation, Prober, S_MAIN};

impl Prober {
    /// Whether the primary server saw the main socket at another address than its own.
    pub(super) fn behind_nat(&self) -> Option<bool> {
        let m = self.servers[self.primary?].mapped?;
        let l = self.local_of(S_MAIN)?;
        Some(m != l)
    }

    /// The observations, once [`Prober::is_done`]; also usable for partial results.
    pub fn observations(&self) -> Observations {
        let primary = self.primary;
        let mapped = primary.and_then(|i| self.servers[i].mapped);
        let local = self.local_of(S_MAIN);
        let behind = self.behind_nat();
        let rfc5780 = primary.is_some_and(|i| self.servers[i].rfc5780);

        let (mapping, mapping_note) = if behind == Some(false) {
            (Behaviour::None, None)
        } else if mapped.is_none() {
            (Behaviour::Unknown, Some("no server answered".to_string()))
        } else if rfc5780 {
            match (self.map2, self.map3) {
                (Outcome::Got(m2), _) if Some(m2) == mapped => {
                    (Behaviour::EndpointIndependent, None)
                }
                (Outcome::Got(m2), Outcome::Got(m3)) if m3 == m2 => {
                    (Behaviour::AddressDependent, None)
                }
                (Outcome::Got(_), Outcome::Got(_)) => (Behaviour::AddressAndPortDependent, None),
                _ => (
                    Behaviour::Unknown,
                    Some("the server's alternate address did not answer".to_string()),
                ),
            }
        } else {
            self.mapping_from_servers()
        };

        let (filtering, filtering_note) =
            if mapped.is_none() {
                (Behaviour::Unknown, Some("no server answered".to_string()))
            } else if !rfc5780 && !self.distrusted.is_empty() {
                (
                    Behaviour::Unknown,
                    Some(format!(
                        "no server can be trusted for RFC 5780 behaviour discovery ({}), so \
                         filtering was not tested; give another server with --server",
                        self.distrusted.join("; ")
                    )),
                )
            } else if !rfc5780 {
                (
                    Behaviour::Unknown,
                    Some(
                        "no server supports RFC 5780 behaviour discovery (OTHER-ADDRESS), so \
                     filtering cannot be tested; give one with --server"
                            .to_string(),
                    ),
                )
            } else {
                match (
                    Self::filter_outcome(self.filter_both),
                    Self::filter_outcome(self.filter_port),
                ) {
                    (Outcome::Got(()), _) => (Behaviour::EndpointIndependent, None),
                    (Outcome::NoAnswer, Outcome::Got(())) => (Behaviour::AddressDependent, None),
                    (Outcome::NoAnswer, Outcome::NoAnswer) => {
                        (Behaviour::AddressAndPortDependent, None)
                    }
                    _ => (
                        Behaviour::Unknown,
                        Some(self.notes_filtering.clone().unwrap_or_else(|| {
                            "the server did not honour CHANGE-REQUEST".to_string()
                        })),
                    ),
                }
            };

        let hairpinning = match self.hairpin {
            Outcome::Got(()) => Some(true),
            Outcome::NoAnswer => Some(false),
            _ => None,
        };
        let port_preserved = match (mapped, local, behind) {
            (Some(m), Some(l), Some(true)) => Some(m.port() == l.port()),
            (Some(_), Some(_), Some(false)) => Some(true),
            _ => None,
        };
        // The main socket's mappings towards the primary, then the alternate address and
        // port (tests I, II, III of RFC 5780 §4.3), in the order they were created.
        let mut seq: Vec<u16> = mapped.map(|m| m.port()).into_iter().collect();
        for o in [self.map2, self.map3] {
            if let Outcome::Got(m) = o {
                seq.push(m.port());
            }
        }
        // An endpoint-independent mapping that kept the local port has shown how this NAT
        // allocates. A third mapping that moved anyway is a Linux NAT avoiding a clash with a
        // conntrack entry that an earlier run's filtered answer left on the NAT's own address
        // (about 1 in 300 back-to-back runs in the lab), not another allocation pattern.
        let kept_port = matches!((mapped, local), (Some(m), Some(l)) if m.port() == l.port());
        let port_allocation =
            if behind == Some(true) && !(mapping == Behaviour::EndpointIndependent && kept_port) {
                port_allocation(local.map(|l| l.port()), &seq)
            } else {
                PortAllocation::PRESERVING
            };
        let lifetime = self.lifetime_summary();
        let mut hops = self.hops.clone();
        hops.sort_by_key(|h| h.ttl);
        Observations {
            udp: self.servers.iter().any(|s| s.answered),
            tcp: self.tcp_ok,
            local_addr: local,
            mapped_addr: mapped,
            primary: primary.map(|i| self.cfg.servers[i]),
            behind_nat: behind,
            mapping,
            mapping_note,
            filtering,
            filtering_note,
            hairpinning,
            port_preserved,
            port_allocation,
            hops,
            lifetime,
            servers: self.servers.clone(),
            ignored: self.ignored.clone(),
        }
    }

    /// RFC 5780 §4.3 needs two addresses of one server; without them, compare what several
    /// servers saw of the same local socket.
    fn mapping_from_servers(&self) -> (Behaviour, Option<String>) {
        let seen: Vec<(SocketAddr, SocketAddr)> = self
            .servers
            .iter()
            .filter_map(|s| s.mapped.map(|m| (s.addr, m)))
            .collect();
        if seen.len() < 2 {
            let why = if self.distrusted.is_empty() {
                "it does not support RFC 5780"
            } else {
                "it is not trusted for RFC 5780 behaviour discovery (see its problems)"
            };
            return (
                Behaviour::Unknown,
                Some(format!(
                    "only one server answered and {why}: mapping needs two servers or one \
                     with two addresses"
                )),
            );
        }
        if seen.iter().all(|(_, m)| *m == seen[0].1) {
            return (
                Behaviour::EndpointIndependent,
                Some(format!("same mapping seen by {} servers", seen.len())),
            );
        }
        let same_ip_differs = seen.iter().any(|(a, m)| {
            seen.iter()
                .any(|(b, n)| a.ip() == b.ip() && a.port() != b.port() && m != n)
        });
        let note = if same_ip_differs {
            "mapping changed between two ports of one server".to_string()
        } else {
            "mapping changed between servers; address-dependent cannot be told apart from \
             address-and-port-dependent without two ports on one server"
                .to_string()
        };
        (Behaviour::AddressAndPortDependent, Some(note))
    }
}
