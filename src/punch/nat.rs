//! The two sides' NAT classifications and what they predict (RFC 4787 terms), sans-IO.
//!
//! Each side classifies its own NAT against the relay (a natprobe run on separate sockets,
//! alongside the punch so it never delays it) and sends the result to the other inside
//! relayed data ([`crate::rendezvous::Frame::NatInfo`]). From the pair, [`expect`] says which
//! technique should work and why.

use serde::Serialize;

use crate::classify::Behaviour;
use crate::rendezvous::{Frame, SessionId};

/// One side's NAT, as far as punching cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NatClass {
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: Behaviour,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: Behaviour,
    /// Port allocation: `preserving`, `sequential`, `random` or `unknown`.
    pub allocation: &'static str,
    /// The router forwards the punch port (PCP, NAT-PMP or UPnP).
    pub mapped_port: bool,
}

fn behaviour_code(b: Behaviour) -> u8 {
    match b {
        Behaviour::Unknown => 0,
        Behaviour::EndpointIndependent => 1,
        Behaviour::AddressDependent => 2,
        Behaviour::AddressAndPortDependent => 3,
        Behaviour::None => 4,
    }
}

fn behaviour_of(c: u8) -> Behaviour {
    match c {
        1 => Behaviour::EndpointIndependent,
        2 => Behaviour::AddressDependent,
        3 => Behaviour::AddressAndPortDependent,
        4 => Behaviour::None,
        _ => Behaviour::Unknown,
    }
}

const ALLOCATIONS: [&str; 4] = ["unknown", "preserving", "sequential", "random"];

impl NatClass {
    /// The frame that tells the peer.
    pub fn to_frame(self, session: SessionId) -> Frame {
        Frame::NatInfo {
            session,
            mapping: behaviour_code(self.mapping),
            filtering: behaviour_code(self.filtering),
            allocation: ALLOCATIONS
                .iter()
                .position(|a| *a == self.allocation)
                .unwrap_or(0) as u8,
            flags: u8::from(self.mapped_port),
        }
    }

    /// Reads the peer's frame (unknown codes become `unknown`: a newer peer is not an error).
    pub fn from_frame(f: &Frame, session: SessionId) -> Option<NatClass> {
        match *f {
            Frame::NatInfo {
                session: s,
                mapping,
                filtering,
                allocation,
                flags,
            } if s == session => Some(NatClass {
                mapping: behaviour_of(mapping),
                filtering: behaviour_of(filtering),
                allocation: ALLOCATIONS
                    .get(allocation as usize)
                    .copied()
                    .unwrap_or("unknown"),
                mapped_port: flags & 1 != 0,
            }),
            _ => None,
        }
    }

    /// Strangers' packets reach the punch port once we have sent anywhere: no NAT, an
    /// endpoint-independent filter, or a port the router forwards.
    fn open_to_anyone(&self) -> bool {
        self.mapped_port || self.filtering == Behaviour::EndpointIndependent
    }

    /// The address the peer learns from the relay is the one we use towards it (RFC 4787
    /// §4.1 endpoint-independent mapping, or no NAT at all).
    fn stable_address(&self) -> bool {
        matches!(
            self.mapping,
            Behaviour::EndpointIndependent | Behaviour::None
        ) || self.mapped_port
    }

    /// Lets in a peer whose port it cannot know in advance, once it has sent to the peer's
    /// IP (endpoint-independent or address-dependent filtering).
    fn accepts_any_port_of_a_contacted_ip(&self) -> bool {
        self.mapped_port
            || matches!(
                self.filtering,
                Behaviour::EndpointIndependent | Behaviour::AddressDependent
            )
    }
}

/// What the two classifications predict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// `direct` or `relay`.
    pub path: &'static str,
    /// The technique: `udp` (simultaneous hole punch), `portmap` (a router-forwarded port),
    /// `birthday` (probing a symmetric NAT's random ports, relayed meanwhile) or `relay`.
    pub technique: &'static str,
    /// Why, in words.
    pub why: String,
}

/// Which technique should work for this pair.
pub fn expect(mine: &NatClass, peer: &NatClass) -> Expectation {
    let unknown = |c: &NatClass| c.mapping == Behaviour::Unknown;
    if unknown(mine) || unknown(peer) {
        return Expectation {
            path: "direct",
            technique: "udp",
            why: "one side's NAT could not be classified: trying a UDP hole punch, then the relay"
                .into(),
        };
    }
    let direct_udp = |why: String| Expectation {
        path: "direct",
        technique: "udp",
        why,
    };
    if mine.mapped_port || peer.mapped_port {
        return Expectation {
            path: "direct",
            technique: "portmap",
            why: "a router forwards the punch port: the other side can send to it directly".into(),
        };
    }
    if mine.open_to_anyone() || peer.open_to_anyone() {
        return direct_udp(
            "one side lets in anyone once it has sent (endpoint-independent filtering or no \
             NAT): a UDP hole punch works"
                .into(),
        );
    }
    match (mine.stable_address(), peer.stable_address()) {
        (true, true) => direct_udp(
            "both NATs keep one public address per socket (endpoint-independent mapping, RFC \
             4787 §4.1): a simultaneous UDP hole punch works"
                .into(),
        ),
        (true, false) | (false, true) => {
            let stable = if mine.stable_address() { mine } else { peer };
            if stable.accepts_any_port_of_a_contacted_ip() {
                direct_udp(
                    "one NAT picks a new port per destination, but the other lets in any port \
                     of an address it has sent to: a UDP hole punch works through the \
                     peer-reflexive address"
                        .into(),
                )
            } else {
                Expectation {
                    path: "direct",
                    technique: "birthday",
                    why: "one NAT picks a new port per destination (address-and-port-dependent \
                          mapping) and the other lets in only the exact address and port it \
                          sent to: the relay carries the data while birthday probing (256 \
                          sockets on the symmetric side, random ports probed from the other) \
                          looks for a direct path"
                        .into(),
                }
            }
        }
        (false, false) => Expectation {
            path: "relay",
            technique: "relay",
            why: "both NATs pick a new port per destination: neither side can learn the \
                  other's port; the relay carries the data"
                .into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Behaviour::{
        AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei,
    };

    fn c(mapping: Behaviour, filtering: Behaviour) -> NatClass {
        NatClass {
            mapping,
            filtering,
            allocation: "preserving",
            mapped_port: false,
        }
    }

    /// The lab's five kinds, and what the punch matrix measured for every ordered pair
    /// (tests/punch_lab.rs): direct except symmetric × port-restricted and symmetric ×
    /// symmetric.
    #[test]
    fn predictions_match_the_lab_matrix() {
        let kinds = [
            ("open", c(Behaviour::None, Ei)),
            ("full-cone", c(Ei, Ei)),
            ("restricted", c(Ei, Ad)),
            ("port-restricted", c(Ei, Apd)),
            ("symmetric", c(Apd, Apd)),
        ];
        for (na, a) in &kinds {
            for (nb, b) in &kinds {
                let technique = match (*na, *nb) {
                    ("symmetric", "symmetric") => "relay",
                    ("symmetric", "port-restricted") | ("port-restricted", "symmetric") => {
                        "birthday"
                    }
                    _ => "udp",
                };
                let e = expect(a, b);
                assert_eq!(e.technique, technique, "{na} x {nb}");
                assert_eq!(expect(b, a), e, "symmetric in the arguments");
            }
        }
    }

    #[test]
    fn a_mapped_port_makes_the_hardest_pair_direct() {
        let mut pr = c(Ei, Apd);
        pr.mapped_port = true;
        let e = expect(&c(Apd, Apd), &pr);
        assert_eq!((e.path, e.technique), ("direct", "portmap"));
    }

    #[test]
    fn frames_round_trip_and_unknown_codes_are_unknown() {
        let mut a = c(Apd, Ad);
        a.allocation = "random";
        a.mapped_port = true;
        let f = a.to_frame([3; 16]);
        let back = Frame::parse(&f.emit()).unwrap();
        assert_eq!(NatClass::from_frame(&back, [3; 16]), Some(a));
        assert_eq!(NatClass::from_frame(&back, [4; 16]), None);
        let odd = Frame::NatInfo {
            session: [3; 16],
            mapping: 200,
            filtering: 9,
            allocation: 77,
            flags: 0xfe,
        };
        let u = NatClass::from_frame(&odd, [3; 16]).unwrap();
        assert_eq!(u.mapping, Behaviour::Unknown);
        assert_eq!(u.allocation, "unknown");
        assert!(!u.mapped_port);
        assert_eq!(expect(&u, &a).technique, "udp");
    }
}
