//! Connectivity checks between the peers' candidate addresses ([`Checks`]), RFC 8445 §7.2
//! in spirit: bounded probing of every candidate, answers that reveal the peer-reflexive
//! address, and the first answered probe wins.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::defaults::{OPENING_LEAD, PROBE_INTERVAL, QUIET_INTERVAL};
use crate::proto::punch::clash::Turn;
use crate::proto::punch::ttl::Opening;
use crate::proto::punch::{Datagram, MAX_TARGETS, OPENING_TTLS};
use crate::wire::rendezvous::{Frame, SessionId};

/// Result of the connectivity checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckEvent {
    /// A path works both ways: we probed `peer`, it answered.
    Connected {
        /// The peer's address on the working path.
        peer: SocketAddr,
        /// Round trip of the winning probe.
        rtt: Duration,
        /// Probes sent until then.
        probes: u32,
    },
    /// No path within the bound.
    Failed {
        /// Probes sent.
        probes: u32,
    },
}

/// Connectivity checks: probe every candidate of the peer at a bounded rate from the moment
/// of the start signal; answer the peer's probes (which also reveals its peer-reflexive
/// address, the one that works when its NAT is symmetric and ours lets it in); the first
/// answered probe wins.
#[derive(Debug)]
pub struct Checks {
    session: SessionId,
    targets: Vec<SocketAddr>,
    /// The IPs the peer could be at (its relay-observed address, its candidates, its
    /// offer): probes from anywhere else are a stranger's, and a stranger must not make us
    /// probe it.
    peer_ips: Vec<IpAddr>,
    start_at: Option<Instant>,
    deadline: Option<Instant>,
    next_round: Option<Instant>,
    bound: Duration,
    sent: HashMap<u64, (SocketAddr, Instant)>,
    pub(super) probes: u32,
    done: bool,
    opened: bool,
    /// Send only low-TTL packets (keeping our NAT open for the peer) until the peer's first
    /// probe arrives: without a start signal, probes that reach the peer's NAT before the
    /// peer has sent would make a Linux NAT move the peer's flow to another port.
    quiet: bool,
    /// TTLs of the opening packets ([`crate::proto::punch::ttl`]); none when no TTL is safe.
    openers: Vec<u8>,
    /// From the opening packets (or the start, without them) to the first full probe.
    lead: Duration,
    out: VecDeque<Datagram>,
    events: VecDeque<CheckEvent>,
    /// Transaction ids (seeded by the driver; fixed in tests).
    rng: StdRng,
}

impl Checks {
    /// Checks for a session, giving up `bound` after they start; `seed` seeds the
    /// transaction ids.
    pub fn new(session: SessionId, bound: Duration, seed: u64) -> Self {
        Checks {
            session,
            targets: Vec::new(),
            peer_ips: Vec::new(),
            start_at: None,
            deadline: None,
            next_round: None,
            bound,
            sent: HashMap::new(),
            probes: 0,
            done: false,
            opened: false,
            quiet: false,
            openers: OPENING_TTLS.to_vec(),
            lead: OPENING_LEAD,
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sends only low-TTL packets until the peer's first probe arrives.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// How this round opens our NAT: opening packets with the measured TTL (or the classic
    /// ones when nothing was measured), or — with no safe TTL — the round's [`Turn`]: full
    /// probes after a delay, or holding still until the peer's probe arrives.
    pub fn set_opening(&mut self, opening: Opening, turn: Option<Turn>) {
        match (opening, turn) {
            (Opening::Clash, Some(Turn::Probe(delay))) => {
                self.openers.clear();
                self.lead = delay;
                self.quiet = false;
            }
            (Opening::Clash, _) => {
                self.openers.clear();
                self.quiet = true;
            }
            (Opening::Ttl(t), _) => self.openers = vec![t],
            (Opening::Unknown, _) => self.openers = OPENING_TTLS.to_vec(),
        }
    }

    /// Lets this round run for `bound` from its start instead (a long hold, see
    /// [`crate::proto::punch::clash::ClashPlan::hold_bound`]).
    pub fn set_bound(&mut self, bound: Duration) {
        self.bound = bound;
    }

    /// The TTL of this round's opening packets, when it sends any.
    pub fn opening_ttl(&self) -> Option<u8> {
        self.openers.first().copied()
    }

    /// The peer's candidate addresses.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Fresh checks towards the same targets (an upgrade attempt after a fallback).
    pub fn renewed(&mut self) -> Checks {
        let mut c = Checks::new(self.session, self.bound, self.rng.gen());
        c.targets = self.targets.clone();
        c.peer_ips = self.peer_ips.clone();
        c
    }

    /// The peer may probe us from `ip` (`--icmp`: the listener's public address, whose
    /// port we only learn from its probe).
    pub fn allow_ip(&mut self, ip: IpAddr) {
        if !self.peer_ips.contains(&ip) && self.peer_ips.len() < 2 * MAX_TARGETS {
            self.peer_ips.push(ip);
        }
    }

    /// Adds candidate addresses of the peer. IPv6 ones go before every IPv4 one: each round
    /// probes them first, so when both families work at the same round trip, the IPv6
    /// answer arrives first and wins (no NAT on that path to forget the mapping).
    pub fn add_targets(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for a in addrs {
            self.allow_ip(a.ip());
            if !self.targets.contains(&a) && self.targets.len() < MAX_TARGETS {
                let at = match a {
                    SocketAddr::V6(_) => self.targets.iter().take_while(|t| t.is_ipv6()).count(),
                    SocketAddr::V4(_) => self.targets.len(),
                };
                self.targets.insert(at, a);
            }
        }
    }

    /// Starts probing at `at` (the relay's start signal plus its wait).
    pub fn start_at(&mut self, at: Instant) {
        if self.done {
            return;
        }
        self.start_at = Some(at);
        self.deadline = Some(at + self.bound);
        self.next_round = Some(at);
    }

    /// Whether the checks have finished (connected or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Low-TTL packets to every IPv4 target: they open our own NAT (and a carrier NAT behind
    /// it) and die before the peer's. An IPv6 target gets a full probe at once instead: there
    /// is no NAT to clash with on IPv6 (RFC 6092 firewalls keep addresses and ports), so the
    /// probe that opens our firewall may as well reach the peer.
    fn send_opening(&mut self, now: Instant) {
        for dst in self.targets.clone() {
            if dst.is_ipv6() {
                self.probe(dst, now);
                continue;
            }
            for &ttl in &self.openers {
                let f = Frame::PunchProbe {
                    session: self.session,
                    tx: self.rng.gen(),
                }
                .emit();
                self.out.push_back(Datagram {
                    dst,
                    payload: f,
                    ttl: Some(ttl),
                });
            }
        }
    }

    fn pump(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.done = true;
            self.next_round = None;
            self.events.push_back(CheckEvent::Failed {
                probes: self.probes,
            });
            return;
        }
        if let Some(t) = self.next_round {
            if t <= now && self.quiet {
                // Holding still without openers: nothing to repeat until the peer probes.
                self.send_opening(now);
                self.next_round = (!self.openers.is_empty()).then(|| now + QUIET_INTERVAL);
            } else if t <= now && !self.opened && !self.lead.is_zero() {
                self.opened = true;
                self.send_opening(now);
                self.next_round = Some(now + self.lead);
            } else if t <= now {
                self.opened = true;
                for dst in self.targets.clone() {
                    self.probe(dst, now);
                }
                self.next_round = Some(now + PROBE_INTERVAL);
            }
        }
    }

    /// A full probe to `dst`, whose answer completes the checks.
    fn probe(&mut self, dst: SocketAddr, now: Instant) {
        let tx: u64 = self.rng.gen();
        self.sent.insert(tx, (dst, now));
        self.probes += 1;
        let f = Frame::PunchProbe {
            session: self.session,
            tx,
        }
        .emit();
        self.out.push_back(Datagram {
            dst,
            payload: f,
            ttl: None,
        });
    }

    /// Feeds a datagram; returns false when it is not a check of this session.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        match Frame::parse(data) {
            Ok(Frame::PunchProbe { session, .. })
                if session == self.session && !self.peer_ips.contains(&from.ip()) =>
            {
                // Not from anywhere the peer could be: neither answered nor probed.
                true
            }
            Ok(Frame::PunchProbe { session, tx }) if session == self.session => {
                // Always answer, even after we are done: the peer may still be waiting for
                // its own answer.
                let f = Frame::PunchAck {
                    session,
                    tx,
                    observed: from,
                }
                .emit();
                self.out.push_back(Datagram {
                    dst: from,
                    payload: f,
                    ttl: None,
                });
                if !self.done {
                    self.add_targets([from]);
                    if self.quiet {
                        // The peer is sending: answer with full probes at once.
                        self.quiet = false;
                        self.opened = true;
                        self.next_round = Some(now);
                        self.pump(now);
                    }
                }
                true
            }
            Ok(Frame::PunchAck { session, tx, .. }) if session == self.session => {
                if let Some((dst, at)) = self.sent.remove(&tx) {
                    if !self.done && dst == from {
                        self.done = true;
                        self.next_round = None;
                        self.events.push_back(CheckEvent::Connected {
                            peer: from,
                            rtt: now.saturating_duration_since(at),
                            probes: self.probes,
                        });
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Next datagram.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<CheckEvent> {
        self.events.pop_front()
    }

    /// When to call [`Checks::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        [self.next_round, self.deadline].into_iter().flatten().min()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn probe(tx: u64) -> Vec<u8> {
        Frame::PunchProbe {
            session: [2; 16],
            tx,
        }
        .emit()
    }

    #[test]
    fn probes_are_answered_only_from_where_the_peer_could_be() {
        let t0 = Instant::now();
        let mut c = Checks::new([2; 16], Duration::from_secs(5), 1);
        c.add_targets([sa("203.0.113.7:4000")]);
        c.start_at(t0);
        c.handle_timeout(t0);
        while c.poll_transmit().is_some() {}
        // A stranger's probe (with the right session id) is swallowed: no answer, and the
        // stranger does not become a target.
        assert!(c.handle_datagram(t0, sa("192.0.2.66:999"), &probe(1)));
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.targets, vec![sa("203.0.113.7:4000")]);
        // The peer's, from a port we did not know (its symmetric NAT): answered, and probed.
        assert!(c.handle_datagram(t0, sa("203.0.113.7:5999"), &probe(2)));
        let ack = c.poll_transmit().expect("an answer");
        assert_eq!(ack.dst, sa("203.0.113.7:5999"));
        assert!(c.targets.contains(&sa("203.0.113.7:5999")));
        // An address allowed explicitly (--icmp) is answered too.
        c.allow_ip("198.51.100.5".parse().unwrap());
        assert!(c.handle_datagram(t0, sa("198.51.100.5:7"), &probe(3)));
        assert_eq!(c.poll_transmit().map(|d| d.dst), Some(sa("198.51.100.5:7")));
        // Renewed checks keep the rule.
        let mut r = c.renewed();
        assert!(r.handle_datagram(t0, sa("192.0.2.66:999"), &probe(4)));
        assert_eq!(r.poll_transmit(), None);
    }

    /// Issue 14: IPv6 candidates are probed first in every round (IPv6 wins a tie).
    #[test]
    fn ipv6_targets_are_probed_first() {
        let t0 = Instant::now();
        let mut c = Checks::new([2; 16], Duration::from_secs(5), 1);
        c.set_opening(Opening::Ttl(2), None);
        c.add_targets([sa("203.0.113.7:4000"), sa("[2001:db8::7]:4000")]);
        c.add_targets([sa("198.51.100.7:4000"), sa("[2001:db8::8]:4000")]);
        assert_eq!(
            c.targets(),
            [
                sa("[2001:db8::7]:4000"),
                sa("[2001:db8::8]:4000"),
                sa("203.0.113.7:4000"),
                sa("198.51.100.7:4000")
            ]
        );
        c.start_at(t0);
        // The opening round: full probes to the IPv6 targets at once, low-TTL packets to the
        // IPv4 ones.
        c.handle_timeout(t0);
        let first: Vec<(SocketAddr, Option<u8>)> = std::iter::from_fn(|| c.poll_transmit())
            .map(|d| (d.dst, d.ttl))
            .collect();
        assert_eq!(
            first,
            [
                (sa("[2001:db8::7]:4000"), None),
                (sa("[2001:db8::8]:4000"), None),
                (sa("203.0.113.7:4000"), Some(2)),
                (sa("198.51.100.7:4000"), Some(2))
            ]
        );
        c.handle_timeout(t0 + Duration::from_secs(1));
        let full: Vec<SocketAddr> = std::iter::from_fn(|| c.poll_transmit())
            .filter(|d| d.ttl.is_none())
            .map(|d| d.dst)
            .collect();
        assert_eq!(full, c.targets());
    }
}
