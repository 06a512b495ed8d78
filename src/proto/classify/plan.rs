//! The test plan: which tests start when. Phase 1 sends a Binding request to every server;
//! phase 2 starts the mapping, filtering, hairpin and lifetime tests as soon as a primary
//! server is known; STUN over TCP is tried only when UDP stays silent.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Channel, Pending, Prober, Test, S_FILTER_BOTH, S_FILTER_PORT, S_MAIN};
use crate::defaults;
use crate::proto::stun::{Schedule, Transaction};
use crate::wire::stun::{self, Change};

impl Prober {
    /// When no server has answered over UDP within [`defaults::TCP_FALLBACK_AFTER`], tries
    /// STUN over TCP (RFC 8489 §6.2.2) to the first servers, to tell "UDP is blocked" from "no
    /// server answered".
    pub(super) fn maybe_start_tcp(&mut self, now: Instant) {
        if self.tcp_started
            || self.servers.iter().any(|s| s.answered)
            || now < self.start + defaults::TCP_FALLBACK_AFTER
        {
            return;
        }
        self.tcp_started = true;
        let deadline = self.start + self.cfg.first_timeout;
        for i in 0..self.cfg.servers.len().min(defaults::TCP_FALLBACK_SERVERS) {
            let dst = self.cfg.servers[i];
            let tid = self.new_tid();
            let mut txn = Transaction::new(
                now,
                Schedule {
                    rto: defaults::TCP_EXCHANGE_TIMEOUT,
                    max_sends: 1,
                    final_wait: defaults::TCP_EXCHANGE_TIMEOUT,
                },
            );
            txn.cap_deadline(deadline.max(now + defaults::TCP_EXCHANGE_TIMEOUT));
            self.pending.push(Pending {
                test: Test::Tcp(i),
                via: Channel::Tcp,
                dst,
                tid,
                payload: stun::binding_request(tid, Change::NONE),
                txn,
            });
        }
    }

    /// Starts the hairpin probe once no path probe to a router beyond the first hop is under
    /// way (hops at or beyond the server's distance are not waited for).
    ///
    /// A NAT that does not hairpin answers the probe to its own public address with ICMP port
    /// unreachable, and that error draws on the same ICMP budget (Linux: 1/s per destination,
    /// burst 6) as the Time Exceeded that reveals a carrier-grade NAT on the path — the carrier
    /// NAT is the one that owns the mapped address. Sent together, back-to-back runs had the
    /// hairpin probe spend the token the path probe needed, and CGNAT went unseen. Hop 1 is
    /// not waited for: it is the home router, or, when the carrier's NAT is the first hop, this
    /// host's own address is in 100.64.0.0/10 and says so (`verdict::cgnat`); waiting for a
    /// silent home router would slow every run.
    pub(super) fn maybe_start_hairpin(&mut self, now: Instant) {
        let Some(dst) = self.hairpin_to else { return };
        let path_busy = self.pending.iter().any(|p| {
            matches!(p.test, Test::Hop(t) if t >= 2 && self.hop_is_router(t) != Some(false))
                && !p.txn.is_done()
        });
        if path_busy {
            return;
        }
        self.hairpin_to = None;
        let sched = self.followup();
        self.add(now, Test::Hairpin, S_MAIN, None, dst, Change::NONE, sched);
    }

    /// Called when a server's Binding finished (either way): start phase 2 once a primary is
    /// known, or once every server has finished.
    pub(super) fn binding_finished(&mut self, now: Instant) {
        if self.phase2 {
            return;
        }
        let bindings_left = self
            .pending
            .iter()
            .any(|p| matches!(p.test, Test::Binding(_)) && !p.txn.is_done());
        if self.primary.is_none() {
            if bindings_left {
                return;
            }
            // No RFC 5780 server: classify from the first one that answered.
            self.primary = self.servers.iter().position(|s| s.answered);
        }
        if self.primary.is_some() {
            self.start_phase2(now);
        }
    }

    /// Phase 2 (RFC 5780 §4.3, §4.4, §4.5): the mapping and filtering tests against the
    /// primary server and its alternate address, the hairpin probe, and the lifetime search.
    fn start_phase2(&mut self, now: Instant) {
        self.phase2 = true;
        let Some(pi) = self.primary else { return };
        let p = self.cfg.servers[pi];
        let sched = self.followup();
        let mapped = self.servers[pi].mapped;
        let behind = self.behind_nat();
        if let Some(o) = self.other.filter(|_| self.servers[pi].rfc5780) {
            self.add(
                now,
                Test::MapII,
                S_MAIN,
                None,
                SocketAddr::new(o.ip(), p.port()),
                Change::NONE,
                sched,
            );
            self.add(now, Test::MapIII, S_MAIN, None, o, Change::NONE, sched);
            // The second sockets only confirm an answer (`set_filter`).
            let (both, port) = (Test::FilterBoth(0), Test::FilterPort(0));
            self.add(
                now,
                both,
                S_FILTER_BOTH[0],
                None,
                p,
                Change::IP_AND_PORT,
                sched,
            );
            self.add(now, port, S_FILTER_PORT[0], None, p, Change::PORT, sched);
        }
        if let (Some(m), Some(true)) = (mapped, behind) {
            // Sent by `pump` once the path probes are done.
            self.hairpin_to = Some(m);
        }
        if let Some(max) = self.cfg.lifetime_max {
            self.start_lifetime_search(now, max, p, sched);
        }
    }
}
