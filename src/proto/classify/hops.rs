//! Path probes: TTL-limited Binding requests whose ICMP Time Exceeded errors name the routers
//! on the path, so that a carrier-grade NAT behind the home router shows up.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Channel, Hop, IcmpKind, Outcome, Prober, SocketId, Test, S_HOPS_BASE};
use crate::defaults;
use crate::proto::stun::Schedule;
use crate::wire::stun::{self, Change};

impl Prober {
    /// Sends the TTL-limited probes towards the first server, one socket per TTL. Sent first,
    /// before anything that makes routers send ICMP errors towards us (the hairpin probe to
    /// our own public address does): Linux rate-limits ICMP per destination (1/s, burst 6) and
    /// an exhausted bucket would hide the hops.
    pub(super) fn start_hop_probes(&mut self, now: Instant) {
        let dst = self.cfg.servers[0];
        for ttl in 1..=defaults::MAX_HOP_TTL {
            self.add_hop_probe(now, ttl, dst, defaults::HOP_RTO);
        }
    }

    /// Queues the probe with IP TTL `ttl`, retransmitted every `rto`.
    fn add_hop_probe(&mut self, now: Instant, ttl: u8, dst: SocketAddr, rto: Duration) {
        let sched = Schedule {
            rto,
            max_sends: defaults::HOP_MAX_SENDS,
            final_wait: defaults::HOP_RTO * defaults::FINAL_WAIT_RTOS,
        };
        let s = SocketId(S_HOPS_BASE + ttl as u16);
        self.add(now, Test::Hop(ttl), s, Some(ttl), dst, Change::NONE, sched);
    }

    /// An ICMP error about one of our datagrams: a hop found, or a quick "no" to the hairpin
    /// probe or a server's Binding.
    pub(super) fn on_icmp(
        &mut self,
        now: Instant,
        socket: SocketId,
        kind: IcmpKind,
        offender: IpAddr,
        original: &[u8],
    ) {
        let by_tid = stun::decode(original).ok().and_then(|m| self.find(&m.tid));
        // Routers may quote too little of the probe to carry its transaction id; hop probes
        // have a socket each, so the socket tells the TTL.
        let by_socket = || {
            self.pending.iter().position(|p| {
                matches!(p.test, Test::Hop(_))
                    && matches!(p.via, Channel::Udp { socket: s, .. } if s == socket)
            })
        };
        let Some(i) = by_tid.or_else(by_socket) else {
            return;
        };
        match (self.pending[i].test, kind) {
            (Test::Hop(ttl), IcmpKind::TimeExceeded) => {
                self.pending[i].txn.answered(now);
                if !self.hops.iter().any(|h| h.ttl == ttl) {
                    self.hops.push(Hop {
                        ttl,
                        addr: offender,
                    });
                }
            }
            // The NAT delivered the probe to itself and found no listener: a definite "no"
            // after one packet instead of five.
            (Test::Hairpin, IcmpKind::Unreachable) => {
                self.pending[i].txn.cancel();
                self.hairpin = Outcome::NoAnswer;
            }
            (Test::Binding(s), IcmpKind::Unreachable) => {
                self.pending[i].txn.cancel();
                let msg = format!("unreachable: ICMP destination unreachable from {offender}");
                if !self.servers[s].problems.contains(&msg) {
                    self.servers[s].problems.push(msg);
                }
                self.binding_finished(now);
            }
            _ => {}
        }
    }

    /// A router that stayed silent probably rate-limits its ICMP errors (Linux: 1/s per
    /// destination, burst 6: back-to-back runs spend it). Ask it once more, slowly, so that
    /// repeated runs still see a carrier-grade NAT hop: retries at 0, 350 and 1050 ms span
    /// more than the 1 s in which its next token comes (nothing else of ours draws on it
    /// meanwhile: the hairpin probe waits, see [`Prober::maybe_start_hairpin`]). Only hops 2
    /// and 3: hop 1 is the home router, and a CGNAT sits right behind it. Costs up to ~1.25 s,
    /// and only on such paths.
    pub(super) fn retry_silent_hop(&mut self, now: Instant, ttl: u8) {
        // It is a router: a farther one answered, or the server's answers crossed more routers
        // than this hop's distance. A silent hop at or beyond the server's distance is not
        // waited for (a path element that never sends Time Exceeded would slow every run).
        let router = self.hops.iter().any(|h| h.ttl > ttl) || self.hop_is_router(ttl) == Some(true);
        if !(2..=3).contains(&ttl) || !router || self.hop_retried.contains(&ttl) {
            return;
        }
        self.hop_retried.push(ttl);
        let Some(dst) = self.cfg.servers.first().copied() else {
            return;
        };
        self.add_hop_probe(now, ttl, dst, defaults::HOP_RETRY_RTO);
    }

    /// Whether a router (not the server) sits `ttl` hops away, judged from how many routers the
    /// first server's answer crossed; None when that is not known.
    pub(super) fn hop_is_router(&self, ttl: u8) -> Option<bool> {
        self.server_hops.map(|r| ttl <= r)
    }
}

/// How many routers a datagram crossed, from the TTL it arrived with: senders start at 64
/// (Linux, macOS), 128 (Windows) or 255, and every router takes one off.
pub(super) fn routers_crossed(ttl: u8) -> u8 {
    let initial: u8 = match ttl {
        0..=64 => 64,
        65..=128 => 128,
        _ => 255,
    };
    initial - ttl
}
