//! A deterministic simulated network for tests of the sans-IO cores: NAT boxes with every
//! RFC 4787 mapping and filtering behaviour, binding lifetimes and hairpinning.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::proto::classify::Behaviour;

/// A NAT: mapping by `mapping`, filtering by `filtering` (RFC 4787 §4.1, §5), port
/// preservation unless the mapping is address-and-port-dependent (random-ish ports then).
pub struct Nat {
    /// The NAT's public address.
    pub public_ip: IpAddr,
    pub translate: bool,
    pub mapping: Behaviour,
    pub filtering: Behaviour,
    pub hairpin: bool,
    pub random_ports: bool,
    /// key: (local, destination-key) → public port
    map: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port → (local, contacted remotes)
    rev: HashMap<u16, (SocketAddr, HashSet<SocketAddr>)>,
    next_port: u16,
    pub udp_blocked: bool,
    pub lifetime: Option<Duration>,
    last_used: HashMap<u16, Instant>,
    /// Ports that a forgotten binding held and that a stray inbound packet now blocks: a Linux
    /// NAT whose conntrack was flushed picks another port for the same flow.
    taken: HashSet<u16>,
}

impl Nat {
    pub fn new(public_ip: IpAddr, mapping: Behaviour, filtering: Behaviour) -> Self {
        Nat {
            public_ip,
            translate: mapping != Behaviour::None,
            mapping,
            filtering,
            hairpin: false,
            random_ports: mapping == Behaviour::AddressAndPortDependent,
            map: HashMap::new(),
            rev: HashMap::new(),
            next_port: 40000,
            udp_blocked: false,
            lifetime: None,
            last_used: HashMap::new(),
            taken: HashSet::new(),
        }
    }

    /// Forgets every binding (a conntrack flush or a router reboot); new bindings get new
    /// ports.
    pub fn forget(&mut self) {
        self.taken.extend(self.rev.keys().copied());
        self.map.clear();
        self.rev.clear();
        self.last_used.clear();
    }

    fn expire(&mut self, now: Instant) {
        let Some(l) = self.lifetime else { return };
        let dead: Vec<u16> = self
            .last_used
            .iter()
            .filter(|(_, &t)| now.duration_since(t) > l)
            .map(|(&p, _)| p)
            .collect();
        for port in dead {
            self.last_used.remove(&port);
            self.rev.remove(&port);
            self.map.retain(|_, p| *p != port);
        }
    }

    pub fn outbound(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr) -> SocketAddr {
        self.expire(now);
        let a = self.outbound_inner(src, dst);
        self.last_used.insert(a.port(), now);
        a
    }

    fn outbound_inner(&mut self, src: SocketAddr, dst: SocketAddr) -> SocketAddr {
        if !self.translate {
            self.rev
                .entry(src.port())
                .or_insert((src, HashSet::new()))
                .1
                .insert(dst);
            return src;
        }
        let key_dst = match self.mapping {
            Behaviour::EndpointIndependent => None,
            Behaviour::AddressDependent => Some(SocketAddr::new(dst.ip(), 0)),
            _ => Some(dst),
        };
        let key = (src, key_dst);
        let port = if let Some(&p) = self.map.get(&key) {
            p
        } else {
            let p = if !self.random_ports
                && !self.rev.contains_key(&src.port())
                && !self.taken.contains(&src.port())
            {
                src.port()
            } else {
                self.next_port += 7;
                self.next_port
            };
            self.map.insert(key, p);
            p
        };
        self.rev
            .entry(port)
            .or_insert((src, HashSet::new()))
            .1
            .insert(dst);
        SocketAddr::new(self.public_ip, port)
    }

    pub fn inbound(&mut self, now: Instant, from: SocketAddr, to_port: u16) -> Option<SocketAddr> {
        self.expire(now);
        let (local, contacted) = self.rev.get(&to_port)?;
        let ok = match self.filtering {
            Behaviour::EndpointIndependent => true,
            Behaviour::AddressDependent => contacted.iter().any(|c| c.ip() == from.ip()),
            _ => contacted.contains(&from),
        };
        let local = *local;
        if ok {
            self.last_used.insert(to_port, now);
        }
        ok.then_some(local)
    }
}
