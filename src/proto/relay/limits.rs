//! Per-source request rate limits (token buckets).

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use super::{DropReason, Relay};
use crate::defaults;
use crate::wire::netaddr;

/// The key every per-source limit counts under: an IPv4 address (IPv4-mapped IPv6 folded to
/// it), or the /64 prefix of an IPv6 address. A /64 is one subnet (RFC 4291 §2.5.4): one
/// host or home holds all of it, so counting whole addresses would give it 2^64 sources.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match netaddr::canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Rate-limits a repeated log line: [`Throttle::ready`] says when to log again and how many
/// occurrences were left out since the last line.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    last: Option<Instant>,
    left_out: u64,
}

impl Throttle {
    /// One more occurrence at `now`: `Some(left out since the last line)` when a line is due
    /// (the first one, then at most one per [`defaults::RELAY_WARN_INTERVAL`]).
    pub fn ready(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|l| now.saturating_duration_since(l) >= defaults::RELAY_WARN_INTERVAL);
        if !due {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

impl Bucket {
    pub(super) fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Relay {
    pub(super) fn allowed(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.cfg.denies(ip) {
            self.metrics.drop(DropReason::Denied);
            return false;
        }
        let ip = netaddr::canonical(ip);
        let l = &self.cfg.limits;
        let (rate, burst) = (l.reqs_per_sec as f64, l.reqs_burst as f64);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= l.max_sources {
            tracing::warn!(%ip, "source table full: request dropped");
            self.metrics.drop(DropReason::SourcesFull);
            return false;
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        if b.take(now, rate, burst) {
            true
        } else {
            tracing::debug!(%ip, "rate limited");
            self.metrics.drop(DropReason::RateLimited);
            false
        }
    }
}
