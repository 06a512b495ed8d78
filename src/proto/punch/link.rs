//! The link under QUIC, sans-IO: which path carries the session's packets ([`Link`]), when
//! a direct path is dead ([`PathMonitor`], the peer leaving it), and following a peer whose
//! NAT renumbered its mapping. QUIC sees one fixed peer address; the driver asks the link
//! where each datagram really goes.

use std::net::SocketAddr;
use std::time::Instant;

use crate::defaults::{FOLLOW_GRACE, PATH_STALL};
use crate::proto::punch::PathKind;
use crate::wire::rendezvous::{Frame, SessionId};

/// Sends without any answer that make a path suspect: a lone acknowledgement never gets an
/// answer, but QUIC retransmissions and keepalive pings do.
pub const STALL_SENDS: u32 = 4;

/// Watches a direct path: we kept sending ([`STALL_SENDS`] datagrams over
/// [`PATH_STALL`]) and nothing came back → fall back to the relay.
#[derive(Debug, Clone, Copy)]
pub struct PathMonitor {
    first_unanswered: Option<Instant>,
    unanswered: u32,
}

impl PathMonitor {
    /// A monitor that has just heard from the peer.
    pub fn new(_now: Instant) -> Self {
        PathMonitor {
            first_unanswered: None,
            unanswered: 0,
        }
    }

    /// We received from the peer.
    pub fn on_rx(&mut self, _now: Instant) {
        self.first_unanswered = None;
        self.unanswered = 0;
    }

    /// We sent to the peer.
    pub fn on_tx(&mut self, now: Instant) {
        self.first_unanswered.get_or_insert(now);
        self.unanswered = self.unanswered.saturating_add(1);
    }

    /// True when the direct path looks dead. Idle silence in both directions, or a last
    /// acknowledgement that nobody answers, is not a failure.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.unanswered >= STALL_SENDS
            && self
                .first_unanswered
                .is_some_and(|t| now.saturating_duration_since(t) > PATH_STALL)
    }
}

/// How a packet of the peer's reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight from this address.
    Direct(SocketAddr),
    /// Inside a relay data frame.
    Relay,
}

/// The path the session's packets take, and what we heard on it.
#[derive(Debug)]
pub struct Link {
    path: PathKind,
    relay: SocketAddr,
    session: SessionId,
    monitor: PathMonitor,
    /// When the current path was chosen.
    since: Instant,
    /// The peer sends its packets through the relay although we are direct: its side of the
    /// direct path is dead, so ours is too.
    peer_left_direct: bool,
}

impl Link {
    /// A link on the relay (`relay`, session `session`) from `now`.
    pub fn new(relay: SocketAddr, session: SessionId, now: Instant) -> Link {
        Link {
            path: PathKind::Relay,
            relay,
            session,
            monitor: PathMonitor::new(now),
            since: now,
            peer_left_direct: false,
        }
    }

    /// The path in use.
    pub fn path(&self) -> PathKind {
        self.path
    }

    /// Moves to `path` at `now`: a fresh monitor, and the grace for relayed stragglers.
    pub fn set_path(&mut self, path: PathKind, now: Instant) {
        self.path = path;
        self.monitor = PathMonitor::new(now);
        self.since = now;
        self.peer_left_direct = false;
    }

    /// Whether the direct path is dead: unanswered, or abandoned by the peer.
    pub fn direct_is_dead(&self, now: Instant) -> bool {
        matches!(self.path, PathKind::Direct(_))
            && (self.monitor.is_stalled(now) || self.peer_left_direct)
    }

    /// We sent one packet on the path.
    pub fn on_tx(&mut self, now: Instant) {
        self.monitor.on_tx(now);
    }

    /// A packet of the peer's arrived `via` a path: the monitor hears it, a direct peer that
    /// changed address is followed (returns its old address), and relayed packets after the
    /// [`FOLLOW_GRACE`] of a switch to the direct path mean the peer has left it. Only QUIC,
    /// which authenticates every packet, is fed here, so a forged source can disrupt the
    /// session but not read it.
    pub fn heard(&mut self, now: Instant, via: Via) -> Option<SocketAddr> {
        match (self.path, via) {
            (PathKind::Direct(p), Via::Direct(from)) if p != from => {
                // The peer's NAT renumbered its mapping (rebinding): follow it.
                self.path = PathKind::Direct(from);
                self.monitor.on_rx(now);
                return Some(p);
            }
            (PathKind::Direct(_), Via::Direct(_)) | (PathKind::Relay, Via::Relay) => {
                self.monitor.on_rx(now)
            }
            // Relayed packets still in flight when we switched are not a signal.
            (PathKind::Direct(_), Via::Relay)
                if now.saturating_duration_since(self.since) > FOLLOW_GRACE =>
            {
                self.peer_left_direct = true
            }
            _ => {}
        }
        None
    }

    /// Where a packet goes on the current path, and its bytes there (wrapped in a relay data
    /// frame on the relay).
    pub fn wrap(&self, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
        match self.path {
            PathKind::Direct(p) => (p, bytes.to_vec()),
            PathKind::Relay => (
                self.relay,
                Frame::Data {
                    session: self.session,
                    payload: bytes.to_vec(),
                }
                .emit(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn direct_link(t0: Instant) -> Link {
        let mut l = Link::new(sa("198.51.100.1:3478"), [4; 16], t0);
        l.set_path(PathKind::Direct(sa("203.0.113.7:4000")), t0);
        l
    }

    #[test]
    fn a_rebinding_peer_is_followed() {
        let t0 = Instant::now();
        let mut l = direct_link(t0);
        let t = t0 + Duration::from_millis(10);
        assert_eq!(l.heard(t, Via::Direct(sa("203.0.113.7:4000"))), None);
        assert_eq!(
            l.heard(t, Via::Direct(sa("203.0.113.7:5555"))),
            Some(sa("203.0.113.7:4000"))
        );
        assert_eq!(l.path(), PathKind::Direct(sa("203.0.113.7:5555")));
        // Replies now go to the new address.
        assert_eq!(l.wrap(b"q").0, sa("203.0.113.7:5555"));
        assert!(!l.direct_is_dead(t + Duration::from_secs(10)));
    }

    #[test]
    fn relayed_packets_within_the_grace_are_stragglers() {
        let t0 = Instant::now();
        let mut l = direct_link(t0);
        l.heard(t0 + FOLLOW_GRACE / 2, Via::Relay);
        assert!(!l.direct_is_dead(t0 + FOLLOW_GRACE / 2));
        assert!(!l.direct_is_dead(t0 + FOLLOW_GRACE * 3));
        // After the grace, the peer has left the direct path: so do we.
        let late = t0 + FOLLOW_GRACE + Duration::from_millis(1);
        l.heard(late, Via::Relay);
        assert!(l.direct_is_dead(late));
        // A new path clears the verdict.
        l.set_path(PathKind::Relay, late);
        assert!(!l.direct_is_dead(late));
    }

    #[test]
    fn relayed_packets_on_the_relay_are_heard() {
        let t0 = Instant::now();
        let mut l = Link::new(sa("198.51.100.1:3478"), [4; 16], t0);
        // Direct packets while relayed neither follow nor kill anything.
        assert_eq!(l.heard(t0, Via::Direct(sa("203.0.113.7:1"))), None);
        l.heard(t0, Via::Relay);
        assert_eq!(l.path(), PathKind::Relay);
        assert!(!l.direct_is_dead(t0 + Duration::from_secs(60)));
        let (dst, bytes) = l.wrap(b"quic");
        assert_eq!(dst, sa("198.51.100.1:3478"));
        assert_eq!(
            Frame::parse(&bytes),
            Ok(Frame::Data {
                session: [4; 16],
                payload: b"quic".to_vec()
            })
        );
    }

    #[test]
    fn an_unanswered_direct_path_is_dead() {
        let t0 = Instant::now();
        let mut l = direct_link(t0);
        for i in 0..STALL_SENDS {
            l.on_tx(t0 + Duration::from_millis(100 * u64::from(i)));
        }
        assert!(!l.direct_is_dead(t0 + PATH_STALL));
        let dead = t0 + PATH_STALL + Duration::from_millis(1);
        assert!(l.direct_is_dead(dead));
        // An answer revives it.
        l.heard(dead, Via::Direct(sa("203.0.113.7:4000")));
        assert!(!l.direct_is_dead(dead + PATH_STALL * 2));
        // Silence on the relay is never "dead direct".
        l.set_path(PathKind::Relay, dead);
        for _ in 0..10 {
            l.on_tx(dead);
        }
        assert!(!l.direct_is_dead(dead + PATH_STALL * 2));
    }
}
