//! Per-source request rate limits (token buckets).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

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

/// Whether the deny list refuses `ip`: [`netaddr::is_unroutable`] after IPv4-mapped folding,
/// and the IPv6 spellings that reach an IPv4 address through a translator: NAT64's
/// well-known prefix 64:ff9b::/96 (RFC 6052 §2.1) embedding a refused IPv4 address, the
/// local-use prefix 64:ff9b:1::/48 (RFC 8215: a site's own translator, private by
/// definition) and 6to4 2002::/16 (RFC 3056 §2) embedding a refused IPv4 address.
pub fn denied(ip: IpAddr) -> bool {
    let ip = netaddr::canonical(ip);
    if netaddr::is_unroutable(ip) {
        return true;
    }
    let IpAddr::V6(v6) = ip else {
        return false;
    };
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |a: &[u8]| netaddr::is_unroutable(IpAddr::from([a[0], a[1], a[2], a[3]]));
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && v4(&o[12..16]))
        || (s[..3] == [0x64, 0xff9b, 1])
        || (s[0] == 0x2002 && v4(&o[2..6]))
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

/// Token buckets by source key, at most `cap` of them. A new source when the table is full
/// evicts the least recently used one (which starts again with a full bucket if it comes
/// back) instead of being refused: a flood of spoofed or IPv6 sources can then only cost the
/// quietest sources their history, never lock every new source out.
#[derive(Debug, Default)]
pub(super) struct BucketTable {
    map: HashMap<IpAddr, (Bucket, u64)>,
    /// Use order: sequence number of the last use -> key.
    order: BTreeMap<u64, IpAddr>,
    seq: u64,
}

impl BucketTable {
    /// Takes a token for `key` (a new key starts with `burst` tokens); also says whether a
    /// least recently used key was evicted to make room.
    pub(super) fn take(
        &mut self,
        key: IpAddr,
        now: Instant,
        (rate, burst): (f64, f64),
        cap: usize,
    ) -> (bool, bool) {
        self.seq += 1;
        let mut evicted = false;
        if let Some((_, seq)) = self.map.get(&key) {
            self.order.remove(seq);
        } else if self.map.len() >= cap.max(1) {
            if let Some((_, old)) = self.order.pop_first() {
                self.map.remove(&old);
                evicted = true;
            }
        }
        let e = self.map.entry(key).or_insert((
            Bucket {
                tokens: burst,
                last: now,
            },
            0,
        ));
        e.1 = self.seq;
        self.order.insert(self.seq, key);
        (e.0.take(now, rate, burst), evicted)
    }

    /// Forgets keys untouched for `keep` (their buckets have refilled: back to the default).
    pub(super) fn forget_older(&mut self, now: Instant, keep: Duration) {
        let order = &mut self.order;
        self.map.retain(|_, (b, seq)| {
            let k = now.saturating_duration_since(b.last) < keep;
            if !k {
                order.remove(seq);
            }
            k
        });
    }

    /// Keys tracked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Relay {
    pub(super) fn allowed(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.cfg.denies(ip) {
            self.metrics.drop(DropReason::Denied);
            return false;
        }
        let key = source_key(ip);
        let l = &self.cfg.limits;
        let limits = (l.reqs_per_sec as f64, l.reqs_burst as f64);
        let (ok, evicted) = self.buckets.take(key, now, limits, l.max_sources);
        if evicted {
            self.metrics.sources_evicted += 1;
            if let Some(left_out) = self.warn_sources.ready(now) {
                tracing::warn!(
                    left_out,
                    "source table full: least recently used sources evicted"
                );
            }
        }
        if !ok {
            tracing::debug!(source = %key, "rate limited");
            self.metrics.drop(DropReason::RateLimited);
        }
        ok
    }
}
