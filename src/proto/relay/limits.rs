//! Per-source request rate limits (token buckets).

use std::net::IpAddr;
use std::time::Instant;

use super::{DropReason, Relay};
use crate::wire::netaddr;

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
        let ip = netaddr::canonical(ip);
        if !self.cfg.allow_private && netaddr::is_unroutable(ip) {
            self.metrics.drop(DropReason::Denied);
            return false;
        }
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
