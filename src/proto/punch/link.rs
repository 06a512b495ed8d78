//! The link under QUIC, sans-IO: which path carries the session's packets ([`Link`]), when
//! a direct path is dead ([`PathMonitor`], the peer leaving it), and following a peer whose
//! NAT renumbered its mapping once the new address answered a path challenge
//! ([`crate::proto::punch::path`]). QUIC sees one fixed peer address; the driver asks the
//! link where each datagram really goes, and which arriving datagrams QUIC may see.

use std::net::SocketAddr;
use std::time::Instant;

use crate::defaults::{FOLLOW_GRACE, PATH_CHALLENGES_MAX, PATH_STALL};
use crate::proto::punch::path::PathValidator;
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

/// What to do with a QUIC datagram that arrived ([`Link::admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Hand it to QUIC.
    Quic,
    /// Drop it, and send this path challenge to its source.
    Challenge(Vec<u8>),
    /// Drop it.
    Drop,
}

/// What a path frame from the peer's side asks of the driver ([`Link::on_path_frame`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathReply {
    /// Send this back to the frame's source (our response to a challenge).
    pub reply: Option<Vec<u8>>,
    /// The direct path moved to the frame's source; this was the old address.
    pub moved: Option<SocketAddr>,
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
    /// Direct addresses of the peer's that earned trust: chosen by the connectivity checks
    /// (an ack to our random transaction) or validated by a path challenge. Most recent last.
    trusted: Vec<SocketAddr>,
    /// Path validation, once the PAKE key is known (none before: nothing new is adopted).
    validator: Option<PathValidator>,
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
            trusted: Vec::new(),
            validator: None,
        }
    }

    /// The PAKE key is confirmed: new addresses of the peer may be validated from now on.
    pub fn enable_validation(&mut self, v: PathValidator) {
        self.validator = Some(v);
    }

    fn trust(&mut self, a: SocketAddr) {
        self.trusted.retain(|t| *t != a);
        if self.trusted.len() >= PATH_CHALLENGES_MAX {
            self.trusted.remove(0);
        }
        self.trusted.push(a);
    }

    /// Whether `from` is the peer's on an authenticated path: the current direct path, or an
    /// address the checks or a path challenge vouched for.
    pub fn is_peer(&self, from: SocketAddr) -> bool {
        self.path == PathKind::Direct(from) || self.trusted.contains(&from)
    }

    /// Whether the peer's control frames (PAKE, confirmation, NAT class, TCP offer,
    /// prediction) may come from `from`: the relay (inside its data frames) or the peer on an
    /// authenticated path, never a stranger that knows the public session id.
    pub fn may_carry_peer_frames(&self, from: SocketAddr) -> bool {
        from == self.relay || self.is_peer(from)
    }

    /// Whether frame `f` from `from` may be acted on: the peer's own frames only from where
    /// [`Link::may_carry_peer_frames`] says; the rest (rendezvous, checks) have rules of
    /// their own.
    pub fn accepts_frame(&self, from: SocketAddr, f: &Frame) -> bool {
        let peers_own = matches!(
            f,
            Frame::Pake { .. }
                | Frame::Confirm { .. }
                | Frame::NatInfo { .. }
                | Frame::Hops { .. }
                | Frame::TcpOffer { .. }
                | Frame::Predict { .. }
        );
        !peers_own || self.may_carry_peer_frames(from)
    }

    /// The path in use.
    pub fn path(&self) -> PathKind {
        self.path
    }

    /// Moves to `path` at `now`: a fresh monitor, and the grace for relayed stragglers.
    pub fn set_path(&mut self, path: PathKind, now: Instant) {
        if let PathKind::Direct(a) = path {
            self.trust(a);
        }
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

    /// A QUIC datagram of `len` bytes arrived `via` a path: whether QUIC may see it. Relayed
    /// packets always (the relay forwards only our session's); direct ones only from the
    /// current direct path or a trusted address. Anything else may get a path challenge
    /// (once the PAKE key is known) but never moves the path by itself. Relayed packets after
    /// the [`FOLLOW_GRACE`] of a switch to the direct path mean the peer has left it.
    pub fn admit(&mut self, now: Instant, via: Via, len: usize) -> Admit {
        match (self.path, via) {
            (PathKind::Direct(p), Via::Direct(from)) if p == from => self.monitor.on_rx(now),
            (PathKind::Relay, Via::Relay) => self.monitor.on_rx(now),
            // Relayed packets still in flight when we switched are not a signal.
            (PathKind::Direct(_), Via::Relay) => {
                if now.saturating_duration_since(self.since) > FOLLOW_GRACE {
                    self.peer_left_direct = true
                }
            }
            (_, Via::Direct(from)) if self.trusted.contains(&from) => {}
            (_, Via::Direct(from)) => {
                return match self
                    .validator
                    .as_mut()
                    .and_then(|v| v.challenge(now, from, len))
                {
                    Some(c) => Admit::Challenge(c),
                    None => Admit::Drop,
                }
            }
        }
        Admit::Quic
    }

    /// A path challenge or response that came straight from `from`: our answer to a
    /// challenge, and a validated address becomes trusted; while direct, the path follows it
    /// (the peer's NAT renumbered its mapping).
    pub fn on_path_frame(&mut self, now: Instant, from: SocketAddr, f: &Frame) -> PathReply {
        let mut r = PathReply::default();
        let Some(v) = self.validator.as_mut() else {
            return r;
        };
        match f {
            Frame::PathChallenge { session, nonce } => r.reply = v.answer(now, session, nonce),
            Frame::PathResponse {
                session,
                nonce,
                mac,
            } if v.validate(now, from, session, nonce, mac) => {
                self.trust(from);
                if let PathKind::Direct(p) = self.path {
                    if p != from {
                        self.path = PathKind::Direct(from);
                        self.monitor.on_rx(now);
                        r.moved = Some(p);
                    }
                }
            }
            _ => {}
        }
        r
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

/// What the host's own network did ([`NetWatch::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetChange {
    /// No route any more (link down, address removed, default route gone): sends fail
    /// until it comes back; the session waits, up to the dead-peer bound.
    Lost,
    /// A route again, or a new local address: tell the relay where we are now (re-register:
    /// it learns our new mapping) and re-check the paths.
    Back {
        /// The local address is not the one the session last had: our NAT mapping, and with
        /// it every path the peer knows, is gone.
        moved: bool,
    },
}

/// Watches the host's own network, sans-IO: the driver reports now and then the local
/// address the kernel would use towards the relay (None: no route). A socket bound to the
/// wildcard address keeps working across an address change, but the NAT in front sees a new
/// inside address and gives a new mapping, like a NAT that renumbers; nobody else can
/// notice that our side moved, so the session must say so itself.
#[derive(Debug, Clone)]
pub struct NetWatch {
    /// The last local address that had a route.
    addr: Option<std::net::IpAddr>,
    /// No route since the last report.
    lost: bool,
}

impl NetWatch {
    /// Starts from the session's local address (None when unknown).
    pub fn new(addr: Option<std::net::IpAddr>) -> NetWatch {
        NetWatch { addr, lost: false }
    }

    /// The local address towards the relay now (None: no route): what changed, if anything.
    pub fn observe(&mut self, addr: Option<std::net::IpAddr>) -> Option<NetChange> {
        match addr {
            None if self.lost => None,
            None => {
                self.lost = true;
                Some(NetChange::Lost)
            }
            Some(a) => {
                let moved = self.addr.is_some_and(|old| old != a);
                let back = std::mem::take(&mut self.lost) || moved;
                self.addr = Some(a);
                back.then_some(NetChange::Back { moved })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::PATH_CHALLENGE_GAP;
    use crate::wire::rendezvous::Role;
    use std::time::Duration;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn direct_link(t0: Instant) -> Link {
        let mut l = Link::new(sa("198.51.100.1:3478"), [4; 16], t0);
        l.set_path(PathKind::Direct(sa("203.0.113.7:4000")), t0);
        l
    }

    const KEY: [u8; 32] = [5; 32];

    /// Both sides' links, direct to each other, with the PAKE key known.
    fn validated_pair(t0: Instant) -> (Link, PathValidator) {
        let mut l = direct_link(t0);
        l.enable_validation(PathValidator::new([4; 16], Role::Listener, KEY, 1));
        (l, PathValidator::new([4; 16], Role::Connector, KEY, 2))
    }

    fn challenge_of(a: Admit) -> [u8; 16] {
        match a {
            Admit::Challenge(c) => match Frame::parse(&c) {
                Ok(Frame::PathChallenge { nonce, .. }) => nonce,
                f => panic!("{f:?}"),
            },
            a => panic!("no challenge: {a:?}"),
        }
    }

    #[test]
    fn a_rebinding_peer_is_followed_once_it_answers_a_challenge() {
        let t0 = Instant::now();
        let (mut l, mut peer) = validated_pair(t0);
        let t = t0 + Duration::from_millis(10);
        assert_eq!(
            l.admit(t, Via::Direct(sa("203.0.113.7:4000")), 1200),
            Admit::Quic
        );
        // The peer's NAT renumbered: its packets are not QUIC's yet, and earn a challenge.
        let new = sa("203.0.113.7:5555");
        let nonce = challenge_of(l.admit(t, Via::Direct(new), 1200));
        assert_eq!(l.path(), PathKind::Direct(sa("203.0.113.7:4000")));
        // The peer answers from there: the path follows.
        let resp = peer.answer(t, &[4; 16], &nonce).unwrap();
        let r = l.on_path_frame(t, new, &Frame::parse(&resp).unwrap());
        assert_eq!(r.moved, Some(sa("203.0.113.7:4000")));
        assert_eq!(l.path(), PathKind::Direct(new));
        // Replies now go to the new address, and its packets are QUIC's.
        assert_eq!(l.wrap(b"q").0, new);
        assert_eq!(l.admit(t, Via::Direct(new), 40), Admit::Quic);
        assert!(!l.direct_is_dead(t + Duration::from_secs(10)));
        // Stragglers from the old address still reach QUIC, without moving the path back.
        assert_eq!(
            l.admit(t, Via::Direct(sa("203.0.113.7:4000")), 1200),
            Admit::Quic
        );
        assert_eq!(l.path(), PathKind::Direct(new));
    }

    #[test]
    fn junk_from_a_stranger_never_moves_the_path() {
        let t0 = Instant::now();
        let (mut l, mut peer) = validated_pair(t0);
        let stranger = sa("192.0.2.66:999");
        let mut challenges = 0;
        for ms in 0..2000u64 {
            let t = t0 + Duration::from_millis(ms);
            match l.admit(t, Via::Direct(stranger), 1200) {
                Admit::Quic => panic!("a stranger's datagram reached QUIC"),
                Admit::Challenge(_) => challenges += 1,
                Admit::Drop => {}
            }
        }
        assert_eq!(l.path(), PathKind::Direct(sa("203.0.113.7:4000")));
        assert!(challenges <= 2000 / PATH_CHALLENGE_GAP.as_millis() as usize + 1);
        // Short junk earns no challenge (no amplification).
        let t = t0 + Duration::from_secs(5);
        assert_eq!(l.admit(t, Via::Direct(sa("192.0.2.67:1")), 30), Admit::Drop);
        // A response the stranger makes up, or one the peer made for another challenge, or
        // one from another address than the challenged one: nothing moves.
        let nonce = challenge_of(l.admit(t, Via::Direct(stranger), 1200));
        let forged = Frame::PathResponse {
            session: [4; 16],
            nonce,
            mac: [0; 32],
        };
        assert_eq!(l.on_path_frame(t, stranger, &forged).moved, None);
        let other = peer.answer(t, &[4; 16], &[9; 16]).unwrap();
        let other = Frame::parse(&other).unwrap();
        assert_eq!(l.on_path_frame(t, stranger, &other).moved, None);
        let good = Frame::parse(&peer.answer(t, &[4; 16], &nonce).unwrap()).unwrap();
        assert_eq!(l.on_path_frame(t, sa("192.0.2.68:999"), &good).moved, None);
        assert_eq!(l.path(), PathKind::Direct(sa("203.0.113.7:4000")));
        assert!(!l.may_carry_peer_frames(stranger));
    }

    #[test]
    fn before_the_pake_key_nothing_new_is_adopted() {
        let t0 = Instant::now();
        let mut l = direct_link(t0);
        assert_eq!(
            l.admit(t0, Via::Direct(sa("203.0.113.7:5555")), 1200),
            Admit::Drop
        );
        // Nor are challenges answered without the key.
        let c = Frame::PathChallenge {
            session: [4; 16],
            nonce: [1; 16],
        };
        assert_eq!(
            l.on_path_frame(t0, sa("203.0.113.7:4000"), &c),
            PathReply::default()
        );
        assert_eq!(l.path(), PathKind::Direct(sa("203.0.113.7:4000")));
    }

    #[test]
    fn peer_frames_come_from_the_relay_or_an_authenticated_path() {
        let t0 = Instant::now();
        let mut l = Link::new(sa("198.51.100.1:3478"), [4; 16], t0);
        assert!(l.may_carry_peer_frames(sa("198.51.100.1:3478")));
        assert!(!l.may_carry_peer_frames(sa("203.0.113.7:4000")));
        l.set_path(PathKind::Direct(sa("203.0.113.7:4000")), t0);
        assert!(l.may_carry_peer_frames(sa("203.0.113.7:4000")));
        assert!(!l.may_carry_peer_frames(sa("203.0.113.7:4001")));
        // Each of the peer's frames, from a stranger: refused; from the path: accepted.
        let s = [4; 16];
        let frames = [
            Frame::Pake {
                session: s,
                msg: vec![1; 33],
            },
            Frame::Confirm {
                session: s,
                fingerprint: [1; 32],
                mac: [2; 32],
            },
            Frame::NatInfo {
                session: s,
                mapping: 1,
                filtering: 1,
                allocation: 1,
                flags: 0,
                step: 0,
            },
            Frame::TcpOffer {
                session: s,
                armed: true,
                addr: sa("192.0.2.66:80"),
            },
            Frame::Predict {
                session: s,
                port: 9,
            },
            Frame::Hops {
                session: s,
                own_nat: 1,
                peer_nat: 2,
            },
        ];
        for f in &frames {
            assert!(!l.accepts_frame(sa("192.0.2.66:999"), f), "{f:?}");
            assert!(l.accepts_frame(sa("203.0.113.7:4000"), f), "{f:?}");
            assert!(l.accepts_frame(sa("198.51.100.1:3478"), f), "{f:?}");
        }
        // Checks and rendezvous frames have their own rules.
        let probe = Frame::PunchProbe { session: s, tx: 1 };
        assert!(l.accepts_frame(sa("192.0.2.66:999"), &probe));
        // Falling back to the relay keeps the checked address trusted.
        l.set_path(PathKind::Relay, t0);
        assert!(l.may_carry_peer_frames(sa("203.0.113.7:4000")));
        assert_eq!(
            l.admit(t0, Via::Direct(sa("203.0.113.7:4000")), 1200),
            Admit::Quic
        );
    }

    #[test]
    fn relayed_packets_within_the_grace_are_stragglers() {
        let t0 = Instant::now();
        let mut l = direct_link(t0);
        l.admit(t0 + FOLLOW_GRACE / 2, Via::Relay, 1200);
        assert!(!l.direct_is_dead(t0 + FOLLOW_GRACE / 2));
        assert!(!l.direct_is_dead(t0 + FOLLOW_GRACE * 3));
        // After the grace, the peer has left the direct path: so do we.
        let late = t0 + FOLLOW_GRACE + Duration::from_millis(1);
        l.admit(late, Via::Relay, 1200);
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
        assert_eq!(
            l.admit(t0, Via::Direct(sa("203.0.113.7:1")), 1200),
            Admit::Drop
        );
        assert_eq!(l.admit(t0, Via::Relay, 1200), Admit::Quic);
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
    fn the_network_watch_reports_a_lost_route_once_and_its_return() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let mut w = NetWatch::new(ip("192.168.1.2"));
        assert_eq!(w.observe(ip("192.168.1.2")), None);
        // Link down: reported once, however often it is looked at.
        assert_eq!(w.observe(None), Some(NetChange::Lost));
        assert_eq!(w.observe(None), None);
        // The same address again (link up, route back): back, not moved.
        assert_eq!(
            w.observe(ip("192.168.1.2")),
            Some(NetChange::Back { moved: false })
        );
        assert_eq!(w.observe(ip("192.168.1.2")), None);
        // Address replaced with a gap: lost, then back somewhere else.
        assert_eq!(w.observe(None), Some(NetChange::Lost));
        assert_eq!(
            w.observe(ip("192.168.1.3")),
            Some(NetChange::Back { moved: true })
        );
        // Replaced without a gap (the new one added first): moved all the same.
        assert_eq!(
            w.observe(ip("10.0.0.9")),
            Some(NetChange::Back { moved: true })
        );
        // Unknown at the start: the first address is no move.
        let mut w = NetWatch::new(None);
        assert_eq!(w.observe(ip("10.0.0.9")), None);
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
        l.admit(dead, Via::Direct(sa("203.0.113.7:4000")), 1200);
        assert!(!l.direct_is_dead(dead + PATH_STALL * 2));
        // Silence on the relay is never "dead direct".
        l.set_path(PathKind::Relay, dead);
        for _ in 0..10 {
            l.on_tx(dead);
        }
        assert!(!l.direct_is_dead(dead + PATH_STALL * 2));
    }
}
