//! The binding-lifetime search: how long the NAT keeps an idle mapping (RFC 4787 §4.3 REQ-5
//! asks for at least 2 minutes). Each gap of [`defaults::LIFETIME_GAPS_S`] gets two sockets:
//! one creates a mapping and then stays silent for the gap; the other then asks the server
//! (RESPONSE-PORT, RFC 5780 §7.5) to answer the first one's mapping. The answer arrives only
//! while the mapping lives. All gaps run in parallel.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Channel, Lifetime, Pending, Prober, SocketId, Test, S_LIFETIME_BASE};
use crate::defaults;
use crate::proto::stun::{Schedule, Transaction};
use crate::wire::stun::{self, Change};

/// One gap of the search.
#[derive(Debug, Clone, Copy)]
pub(super) struct LifetimeSlot {
    /// How long the mapping stays idle.
    pub(super) gap: Duration,
    /// When the kept mapping was last used.
    pub(super) armed_at: Option<Instant>,
    /// The kept mapping, as the server saw it.
    pub(super) mapped: Option<SocketAddr>,
    /// When the check is due (None once started or no longer needed).
    pub(super) check_at: Option<Instant>,
    /// Whether the mapping was still alive after the gap.
    pub(super) result: Option<bool>,
}

/// The socket that keeps gap `k`'s mapping.
pub(super) fn kept_socket(k: usize) -> SocketId {
    SocketId(S_LIFETIME_BASE + 2 * k as u16)
}

/// The socket that asks the server to answer gap `k`'s kept mapping.
fn asking_socket(k: usize) -> SocketId {
    SocketId(S_LIFETIME_BASE + 2 * k as u16 + 1)
}

impl Prober {
    /// Arms one kept mapping per gap up to `max`, towards the primary server `p`.
    pub(super) fn start_lifetime_search(
        &mut self,
        now: Instant,
        max: Duration,
        p: SocketAddr,
        sched: Schedule,
    ) {
        for (k, &g) in defaults::LIFETIME_GAPS_S
            .iter()
            .filter(|&&g| Duration::from_secs(g) <= max)
            .enumerate()
        {
            self.lifetime.push(LifetimeSlot {
                gap: Duration::from_secs(g),
                armed_at: None,
                mapped: None,
                check_at: None,
                result: None,
            });
            self.add(
                now,
                Test::LifetimeArm(k),
                kept_socket(k),
                None,
                p,
                Change::NONE,
                sched,
            );
        }
    }

    /// Starts the checks whose gap has passed.
    pub(super) fn start_due_lifetime_checks(&mut self, now: Instant) {
        for i in 0..self.lifetime.len() {
            let slot = self.lifetime[i];
            if let (Some(at), Some(m)) = (slot.check_at, slot.mapped) {
                if at <= now {
                    self.lifetime[i].check_at = None;
                    self.start_lifetime_check(now, i, m);
                }
            }
        }
    }

    /// Progress of the lifetime search: (finished gaps, total gaps).
    pub fn lifetime_progress(&self) -> Option<(usize, usize)> {
        if self.lifetime.is_empty() {
            return None;
        }
        let done = self.lifetime.iter().filter(|s| s.result.is_some()).count();
        Some((done, self.lifetime.len()))
    }

    fn start_lifetime_check(&mut self, now: Instant, k: usize, kept_mapping: SocketAddr) {
        let Some(pi) = self.primary else { return };
        let p = self.cfg.servers[pi];
        let tid = self.new_tid();
        self.pending.push(Pending {
            test: Test::LifetimeCheck(k),
            via: Channel::Udp {
                socket: asking_socket(k),
                ttl: None,
            },
            dst: p,
            tid,
            payload: stun::binding_request_response_port(tid, kept_mapping.port()),
            txn: Transaction::new(now, self.followup()),
        });
    }

    /// Mappings expire monotonically: once a gap is alive and the next longer one has expired,
    /// the longer gaps need not be waited for.
    pub(super) fn finish_lifetime_if_bracketed(&mut self) {
        let alive = self.lifetime.iter().rposition(|s| s.result == Some(true));
        let dead = self.lifetime.iter().position(|s| s.result == Some(false));
        let bracketed = match (alive, dead) {
            (Some(a), Some(d)) => d == a + 1,
            (None, Some(0)) => true,
            _ => false,
        };
        if let (true, Some(d)) = (bracketed, dead) {
            for k in d + 1..self.lifetime.len() {
                self.lifetime[k].check_at = None;
            }
            let cut = d;
            self.pending.retain(|p| match p.test {
                Test::LifetimeArm(k) | Test::LifetimeCheck(k) => k <= cut,
                _ => true,
            });
        }
    }

    /// The bracket found so far; None when no search was asked for.
    pub(super) fn lifetime_summary(&self) -> Option<Lifetime> {
        (!self.lifetime.is_empty()).then(|| Lifetime {
            alive_s: self
                .lifetime
                .iter()
                .filter(|s| s.result == Some(true))
                .map(|s| s.gap.as_secs())
                .max(),
            expired_s: self
                .lifetime
                .iter()
                .filter(|s| s.result == Some(false))
                .map(|s| s.gap.as_secs())
                .min(),
        })
    }
}
