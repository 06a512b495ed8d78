//! The prober's interface to its driver: construction, input, timers and the output queue.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    Channel, Input, Outcome, Pending, ProbeConfig, Prober, ServerReport, SocketId, Test, Transmit,
    S_MAIN,
};
use crate::defaults;
use crate::proto::stun::{Schedule, Transaction};
use crate::wire::stun::{self, Change, Class, Tid};

/// The servers one run probes, from the addresses their names resolved to (in the order
/// given): each address once, and only those of the first address's family. The mapping and
/// filtering tests compare answers to one local socket, which has one family.
pub fn probe_targets(resolved: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in resolved {
        if !out.contains(&a) && out.first().is_none_or(|f| f.is_ipv4() == a.is_ipv4()) {
            out.push(a);
        }
    }
    out
}

/// RTO from a measured RTT, within [`defaults::MIN_RTO`] and [`defaults::MAX_RTO`].
fn clamp_rto(rtt: Duration) -> Duration {
    (rtt * defaults::RTT_RTO_FACTOR).clamp(defaults::MIN_RTO, defaults::MAX_RTO)
}

impl Prober {
    /// Starts a run at `now`: the first Binding requests are ready to send at once.
    pub fn new(cfg: ProbeConfig, now: Instant) -> Self {
        let servers = cfg.servers.iter().map(|&a| ServerReport::new(a)).collect();
        let mut p = Prober {
            rng: StdRng::seed_from_u64(cfg.seed),
            start: now,
            pending: Vec::new(),
            out: VecDeque::new(),
            servers,
            locals: Vec::new(),
            srtt: None,
            primary: None,
            other: None,
            phase2: false,
            tcp_started: false,
            tcp_ok: None,
            map2: Outcome::Waiting,
            map3: Outcome::Waiting,
            filter_both: [Outcome::Waiting; 2],
            filter_port: [Outcome::Waiting; 2],
            hairpin: Outcome::Waiting,
            hops: Vec::new(),
            lifetime: Vec::new(),
            ignored: Vec::new(),
            notes_filtering: None,
            hop_retried: Vec::new(),
            server_hops: None,
            hairpin_to: None,
            distrusted: Vec::new(),
            cfg,
        };
        let first = Schedule {
            rto: defaults::INITIAL_RTO,
            max_sends: defaults::FIRST_MAX_SENDS,
            final_wait: p.cfg.first_timeout,
        };
        let deadline = now + p.cfg.first_timeout;
        for i in 0..p.cfg.servers.len() {
            let dst = p.cfg.servers[i];
            p.add(
                now,
                Test::Binding(i),
                S_MAIN,
                None,
                dst,
                Change::NONE,
                first,
            );
            if let Some(t) = p.pending.last_mut() {
                t.txn.cap_deadline(deadline);
            }
        }
        if p.cfg.hops {
            p.start_hop_probes(now);
        }
        p.pump(now);
        p
    }

    /// Queues a Binding request (with CHANGE-REQUEST `change`) for `test`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        now: Instant,
        test: Test,
        socket: SocketId,
        ttl: Option<u8>,
        dst: SocketAddr,
        change: Change,
        sched: Schedule,
    ) {
        let tid = self.new_tid();
        let payload = stun::binding_request(tid, change);
        self.pending.push(Pending {
            test,
            via: Channel::Udp { socket, ttl },
            dst,
            tid,
            payload,
            txn: Transaction::new(now, sched),
        });
    }

    /// A fresh STUN transaction id (RFC 8489 §6: uniformly random, from the seeded RNG).
    pub(super) fn new_tid(&mut self) -> Tid {
        self.rng.gen()
    }

    /// The retransmission schedule of a follow-up test, from the RTT measured so far.
    pub(super) fn followup(&self) -> Schedule {
        let rto = clamp_rto(self.srtt.unwrap_or(defaults::INITIAL_RTO));
        Schedule {
            rto,
            max_sends: defaults::FOLLOWUP_MAX_SENDS,
            final_wait: rto * defaults::FINAL_WAIT_RTOS,
        }
    }

    /// Expires transactions, starts what became due, and moves due sends to the output queue.
    pub(super) fn pump(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for p in &mut self.pending {
            if !p.txn.is_done() && p.txn.timed_out(now) {
                p.txn.cancel();
                expired.push(p.test);
            }
        }
        self.pending.retain(|p| !p.txn.is_done());
        for t in expired {
            self.on_no_answer(now, t);
        }
        self.start_due_lifetime_checks(now);
        self.maybe_start_tcp(now);
        self.maybe_start_hairpin(now);
        for p in &mut self.pending {
            if p.txn.poll_send(now) {
                self.out.push_back(Transmit {
                    via: p.via,
                    dst: p.dst,
                    payload: p.payload.clone(),
                });
            }
        }
    }

    /// The next datagram or TCP exchange to perform.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`Prober::handle_timeout`] must be called next; None when finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        let mut t = self
            .pending
            .iter()
            .filter_map(|p| p.txn.poll_timeout())
            .min();
        for s in &self.lifetime {
            if let Some(c) = s.check_at {
                t = Some(t.map_or(c, |x| x.min(c)));
            }
        }
        if !self.tcp_started && !self.servers.iter().any(|s| s.answered) {
            let c = self.start + defaults::TCP_FALLBACK_AFTER;
            t = Some(t.map_or(c, |x| x.min(c)));
        }
        t
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }

    /// True when nothing is left to do.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
            && self.out.is_empty()
            && self.lifetime.iter().all(|s| s.check_at.is_none())
            && (self.tcp_started || self.servers.iter().any(|s| s.answered))
    }
    /// Feeds one observation.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::LocalAddr { socket, addr } => {
                self.locals.retain(|(s, _)| *s != socket);
                self.locals.push((socket, addr));
            }
            Input::Datagram {
                socket,
                from,
                data,
                ttl,
            } => self.on_datagram(now, socket, from, data, ttl),
            Input::IcmpError {
                socket,
                kind,
                offender,
                original,
            } => self.on_icmp(now, socket, kind, offender, original),
            Input::TcpAnswer { server, result } => {
                let idx = self
                    .pending
                    .iter()
                    .position(|p| p.via == Channel::Tcp && p.dst == server);
                if let Some(i) = idx {
                    let ok = match result {
                        Ok(bytes) => stun::decode(bytes)
                            .map(|m| m.tid == self.pending[i].tid && m.class == Class::Success)
                            .unwrap_or(false),
                        Err(_) => false,
                    };
                    self.pending[i].txn.answered(now);
                    if ok {
                        self.tcp_ok = Some(true);
                    } else if self.tcp_ok.is_none() {
                        self.tcp_ok = Some(false);
                    }
                }
            }
        }
        self.pending.retain(|p| !p.txn.is_done());
        self.pump(now);
    }

    /// The pending request with transaction id `tid`.
    pub(super) fn find(&self, tid: &Tid) -> Option<usize> {
        self.pending.iter().position(|p| &p.tid == tid)
    }

    /// Records a datagram that was not used, and why.
    pub(super) fn ignore(&mut self, why: String) {
        // Bounded: a flood of junk must not grow memory without limit.
        if self.ignored.len() < defaults::MAX_IGNORED {
            self.ignored.push(why);
        }
    }

    /// The local address of socket `s`, once the driver reported it.
    pub(super) fn local_of(&self, s: SocketId) -> Option<SocketAddr> {
        self.locals.iter().find(|(id, _)| *id == s).map(|x| x.1)
    }
}
