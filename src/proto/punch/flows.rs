//! UDP flows carried over a punch session (`--expose-udp` / `--local-udp`), sans IO.
//!
//! The connecting side makes each local UDP source (a game client, say) its own flow, with a
//! number that travels in front of every datagram; the serving side gives each flow number
//! its own local socket towards the service, so the service sees one distinct source per
//! remote flow, as it would behind a NAT. A flow silent for the idle bound is forgotten (RFC
//! 4787 REQ-5 asks at least 2 min of a NAT; game and voice traffic is never that quiet, and
//! 60 s frees sockets sooner).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Bytes in front of each datagram: the flow number, big-endian.
pub const FLOW_HEADER: usize = 4;

/// A datagram of flow `id` as it travels.
pub fn encode(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(FLOW_HEADER + payload.len());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The flow number and payload of a datagram; `None` for one too short to carry a number
/// (QUIC's own one-byte nudges after a path change).
pub fn decode(b: &[u8]) -> Option<(u32, &[u8])> {
    let id = u32::from_be_bytes(b.get(..FLOW_HEADER)?.try_into().ok()?);
    Some((id, &b[FLOW_HEADER..]))
}

/// The flow table: flows by key (a local source on the connecting side, the peer's flow
/// number on the serving side), numbered from 1, each forgotten after `idle` of silence.
#[derive(Debug)]
pub struct Flows<K> {
    by_key: HashMap<K, (u32, Instant)>,
    by_id: HashMap<u32, K>,
    next: u32,
    idle: Duration,
    max: usize,
}

impl<K: Eq + Hash + Copy> Flows<K> {
    /// An empty table holding at most `max` flows.
    pub fn new(idle: Duration, max: usize) -> Self {
        Flows {
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            next: 1,
            idle,
            max,
        }
    }

    /// A datagram for `key` at `now`: its flow number and whether the flow is new; `None`
    /// when the table is full (the datagram is dropped, as a NAT out of ports would).
    pub fn touch(&mut self, key: K, now: Instant) -> Option<(u32, bool)> {
        if let Some((id, last)) = self.by_key.get_mut(&key) {
            *last = now;
            return Some((*id, false));
        }
        if self.by_key.len() >= self.max {
            return None;
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.by_key.insert(key, (id, now));
        self.by_id.insert(id, key);
        Some((id, true))
    }

    /// The key of flow `id` (an answer for it arrived at `now`, which keeps it alive).
    pub fn key_of(&mut self, id: u32, now: Instant) -> Option<K> {
        let key = *self.by_id.get(&id)?;
        if let Some((_, last)) = self.by_key.get_mut(&key) {
            *last = now;
        }
        Some(key)
    }

    /// Forgets the flows silent for the idle bound at `now`; returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<K> {
        let idle = self.idle;
        let gone: Vec<(K, u32)> = self
            .by_key
            .iter()
            .filter(|(_, (_, last))| now.saturating_duration_since(*last) >= idle)
            .map(|(k, (id, _))| (*k, *id))
            .collect();
        for (k, id) in &gone {
            self.by_key.remove(k);
            self.by_id.remove(id);
        }
        gone.into_iter().map(|(k, _)| k).collect()
    }

    /// When the next flow falls idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_key
            .values()
            .map(|(_, last)| *last + self.idle)
            .min()
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn each_source_is_its_own_flow_and_answers_find_it() {
        let t = Instant::now();
        let mut f = Flows::new(Duration::from_secs(60), 8);
        assert_eq!(f.touch(a(1), t), Some((1, true)));
        assert_eq!(f.touch(a(2), t), Some((2, true)));
        assert_eq!(f.touch(a(1), t), Some((1, false)));
        assert_eq!(f.key_of(2, t), Some(a(2)));
        assert_eq!(f.key_of(3, t), None);
    }

    #[test]
    fn a_flow_idles_out_after_the_bound_and_answers_keep_it() {
        let t = Instant::now();
        let s = Duration::from_secs(60);
        let mut f = Flows::new(s, 8);
        f.touch(a(1), t);
        f.touch(a(2), t);
        assert_eq!(f.poll_timeout(), Some(t + s));
        f.key_of(2, t + s / 2);
        assert!(f.expire(t + s - Duration::from_millis(1)).is_empty());
        assert_eq!(f.expire(t + s), vec![a(1)]);
        assert_eq!(f.len(), 1);
        assert_eq!(f.key_of(1, t + s), None);
        // The same source later is a new flow with a new number.
        assert_eq!(f.touch(a(1), t + s), Some((3, true)));
    }

    #[test]
    fn a_full_table_drops_new_flows_only() {
        let t = Instant::now();
        let mut f = Flows::new(Duration::from_secs(60), 2);
        f.touch(a(1), t);
        f.touch(a(2), t);
        assert_eq!(f.touch(a(3), t), None);
        assert_eq!(f.touch(a(2), t), Some((2, false)));
    }

    #[test]
    fn datagrams_roundtrip_and_short_ones_are_not_flows() {
        let d = encode(7, b"hello");
        assert_eq!(decode(&d), Some((7, &b"hello"[..])));
        assert_eq!(decode(&encode(1, b"")), Some((1, &b""[..])));
        assert_eq!(decode(&[0]), None);
    }
}
