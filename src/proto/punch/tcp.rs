//! TCP hole punching (simultaneous open through two NATs), sans-IO.
//!
//! Each side keeps a TCP connection to the relay from a port it can bind again
//! (`SO_REUSEADDR`/`SO_REUSEPORT`) and learns its public TCP endpoint by STUN over that
//! connection (RFC 8489 §6.2.2). The two endpoints travel as relayed
//! [`Frame::TcpOffer`]s. Then:
//!
//! 1. the listener **arms**: from the same port it connects to the connector's endpoint with
//!    a SYN whose TTL is too low to reach the connector's NAT. The SYN creates the mapping in
//!    the listener's own NAT (RFC 5382 §2.1: a NAT must accept an inbound SYN that matches an
//!    outbound one) and dies on the way; the socket stays in SYN-SENT, and the listener says
//!    `armed`;
//! 2. the connector, on `armed`, connects normally from its port. Its SYN opens its own NAT,
//!    matches the listener's mapping, and reaches the listener's socket in SYN-SENT, which
//!    answers SYN-ACK: TCP's simultaneous open (RFC 9293 §3.5, figure 8).
//!
//! Why not the relay's start signal, as UDP punching uses: two SYNs sent "at the same time"
//! must cross between the NATs, a window of one one-way delay; the loser's NAT sees an
//! unexpected SYN and usually answers RST (Linux routers do), which kills the other side's
//! attempt. Ordering the two SYNs through the `armed` message removes the race, and the only
//! SYN that reaches a NAT unannounced never does (its TTL runs out first). An attempt that
//! fails anyway is retried until the budget ([`crate::defaults::TCP_PUNCH_BUDGET`]) is spent.
//!
//! Works when both NATs keep the port the relay saw (endpoint-independent mapping, RFC 4787
//! §4.1) — the same pairs as UDP punching; a symmetric NAT gives the peer a port that is
//! never used again.
//!
//! **A reachable side is connected to directly.** Both sides also accept on their punch
//! port. When the two NAT classifications ([`crate::proto::punch::nat`]) say one side lets
//! strangers in ([`reachable`]: no NAT, or endpoint-independent filtering, RFC 5382 §5 — a
//! full cone), the other side makes a plain connection to its public endpoint and the
//! reachable side only accepts ([`Plan`]): no arming, no wait for `armed`. Arming towards a
//! host without a NAT is what fails otherwise: the low-TTL SYN reaches the peer's NAT (the
//! open host is one hop from it), which resets the listener's socket. Until both
//! classifications are known the sides punch as above; the accepting socket takes a peer
//! whose SYN comes in either way.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::defaults::{TCP_OFFER_INTERVAL, TCP_RETRY};
use crate::proto::classify::Behaviour;
use crate::proto::punch::nat::NatClass;
use crate::wire::rendezvous::{Frame, Role, SessionId};

/// Strangers' TCP connections reach this side's punch port: no NAT, or a NAT whose filter
/// lets anyone reach a mapping once it exists (endpoint-independent filtering, RFC 5382 §5;
/// the relay connection keeps the mapping). Judged from the UDP classification, which is all
/// there is: a router filters TCP like UDP in the common case, and a wrong guess costs the
/// budget, not the session. A port mapped by `--portmap` is the UDP punch port, not this one.
pub fn reachable(c: &NatClass) -> bool {
    !c.udp_blocked
        && (c.mapping == Behaviour::None
            || matches!(
                c.filtering,
                Behaviour::EndpointIndependent | Behaviour::None
            ))
}

/// Who connects, from the two sides' reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Neither side is known to be reachable: armed simultaneous open.
    Simultaneous,
    /// The peer is reachable: connect to it directly.
    Connect,
    /// We are reachable: accept the peer's connection.
    Accept,
}

/// The plan for `role` given whether the listener and the connector are [`reachable`]; both
/// sides compute the same pair. The connector connects when the listener is reachable
/// (both reachable included), else the listener when the connector is.
pub fn plan(role: Role, listener_reachable: bool, connector_reachable: bool) -> Plan {
    match (role, listener_reachable, connector_reachable) {
        (Role::Connector, true, _) | (Role::Listener, false, true) => Plan::Connect,
        (Role::Listener, true, _) | (Role::Connector, false, true) => Plan::Accept,
        (_, false, false) => Plan::Simultaneous,
    }
}

/// Something for the driver to do with a TCP socket bound to the punch port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Listener: connect to this endpoint with a low-TTL SYN (then restore the TTL), report
    /// [`TcpPunch::armed`] once the SYN has gone, and the attempt's end later.
    Arm(SocketAddr),
    /// Connect to this endpoint normally (the connector of a simultaneous open, or either
    /// side towards a reachable peer).
    Connect(SocketAddr),
}

/// How the punch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A TCP connection to the peer is up.
    Connected {
        /// The peer's endpoint.
        peer: SocketAddr,
        /// Connection attempts made by this side.
        attempts: u32,
    },
    /// No connection within the budget.
    Failed {
        /// Connection attempts made by this side.
        attempts: u32,
        /// Why, for the user.
        why: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing in flight; may start an attempt at `retry_at`.
    Idle,
    /// An attempt is in flight.
    Trying,
    Done,
}

/// One side's TCP punch.
#[derive(Debug)]
pub struct TcpPunch {
    session: SessionId,
    role: Role,
    mine: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Listener: our arming SYN is out. Connector: the listener said it is armed.
    armed: bool,
    /// Who connects, once both classifications are known.
    plan: Plan,
    state: State,
    attempts: u32,
    retry_at: Instant,
    next_offer: Option<Instant>,
    deadline: Instant,
    out: VecDeque<Vec<u8>>,
    actions: VecDeque<Action>,
    outcome: Option<Outcome>,
}

impl TcpPunch {
    /// A punch that gives up at `now + budget`.
    pub fn new(session: SessionId, role: Role, now: Instant, budget: Duration) -> Self {
        TcpPunch {
            session,
            role,
            mine: None,
            peer: None,
            armed: false,
            plan: Plan::Simultaneous,
            state: State::Idle,
            attempts: 0,
            retry_at: now,
            next_offer: None,
            deadline: now + budget,
            out: VecDeque::new(),
            actions: VecDeque::new(),
            outcome: None,
        }
    }

    /// Our public TCP endpoint (None: the relay could not tell us, and TCP cannot work).
    pub fn set_mine(&mut self, now: Instant, mine: Option<SocketAddr>) {
        match mine {
            Some(a) => {
                self.mine = Some(a);
                self.send_offer(now);
                self.drive(now);
            }
            None => self.fail("the relay could not tell us our public TCP endpoint"),
        }
    }

    /// Both NAT classifications are known (again): who connects ([`plan`]). An attempt in
    /// flight goes on; the next one follows the plan.
    pub fn set_nat(&mut self, now: Instant, mine: &NatClass, peer: &NatClass) {
        let (l, c) = match self.role {
            Role::Listener => (reachable(mine), reachable(peer)),
            Role::Connector => (reachable(peer), reachable(mine)),
        };
        self.plan = plan(self.role, l, c);
        self.drive(now);
    }

    /// The punch port accepted a connection from `from`: it is the peer's when it comes from
    /// the peer's public address (a NAT may give the connection another port than the one
    /// the relay saw). True when it is taken; anything else is to be closed.
    pub fn accepted(&mut self, from: SocketAddr) -> bool {
        if self.outcome.is_some() || self.peer.is_none_or(|p| p.ip() != from.ip()) {
            return false;
        }
        self.state = State::Done;
        self.next_offer = None;
        self.outcome = Some(Outcome::Connected {
            peer: from,
            attempts: self.attempts,
        });
        true
    }

    /// A relayed frame from the peer; true when it was ours to handle.
    pub fn handle_frame(&mut self, now: Instant, f: &Frame) -> bool {
        let Frame::TcpOffer {
            session,
            armed,
            addr,
        } = f
        else {
            return false;
        };
        if *session != self.session {
            return false;
        }
        if self.outcome.is_some() {
            return true;
        }
        let news =
            self.peer != Some(*addr) || (self.role == Role::Connector && *armed != self.armed);
        let first = self.peer.is_none();
        self.peer = Some(*addr);
        if self.role == Role::Connector {
            self.armed = *armed;
        }
        // The peer may lack ours (it resends until it has it): answer its first offer at once.
        if first && news {
            self.send_offer(now);
        }
        self.drive(now);
        true
    }

    /// Listener: the arming SYN has gone.
    pub fn armed(&mut self, now: Instant) {
        if self.role == Role::Listener && self.state == State::Trying {
            self.armed = true;
            self.send_offer(now);
        }
    }

    /// The attempt in flight failed (refused, reset or timed out): try again shortly.
    pub fn attempt_failed(&mut self, now: Instant) {
        if self.state == State::Trying {
            self.state = State::Idle;
            if self.role == Role::Listener {
                self.armed = false;
            }
            self.retry_at = now + TCP_RETRY;
        }
    }

    /// The attempt in flight connected to `peer`.
    pub fn attempt_connected(&mut self, peer: SocketAddr) {
        if self.state == State::Trying {
            self.state = State::Done;
            self.outcome = Some(Outcome::Connected {
                peer,
                attempts: self.attempts,
            });
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            self.fail(match (self.mine, self.peer) {
                (None, _) => "our public TCP endpoint is unknown",
                (_, None) => "the other side's TCP endpoint never came",
                _ => "no TCP connection within the time budget",
            });
            return;
        }
        if self.next_offer.is_some_and(|t| t <= now) {
            self.send_offer(now);
        }
        self.drive(now);
    }

    fn drive(&mut self, now: Instant) {
        if self.state != State::Idle || now < self.retry_at || self.outcome.is_some() {
            return;
        }
        let (Some(_), Some(peer)) = (self.mine, self.peer) else {
            return;
        };
        let action = match (self.plan, self.role) {
            (Plan::Connect, _) => Action::Connect(peer),
            (Plan::Accept, _) => return,
            (Plan::Simultaneous, Role::Listener) => Action::Arm(peer),
            (Plan::Simultaneous, Role::Connector) if self.armed => Action::Connect(peer),
            (Plan::Simultaneous, Role::Connector) => return,
        };
        self.attempts += 1;
        self.state = State::Trying;
        self.actions.push_back(action);
    }

    fn send_offer(&mut self, now: Instant) {
        let Some(addr) = self.mine else { return };
        self.out.push_back(
            Frame::TcpOffer {
                session: self.session,
                armed: self.role == Role::Listener && self.armed,
                addr,
            }
            .emit(),
        );
        // Relayed frames may be lost (UDP to the relay): repeat until the punch ends.
        self.next_offer = Some(now + TCP_OFFER_INTERVAL);
    }

    fn fail(&mut self, why: &'static str) {
        if self.outcome.is_none() {
            self.state = State::Done;
            self.next_offer = None;
            self.outcome = Some(Outcome::Failed {
                attempts: self.attempts,
                why,
            });
        }
    }

    /// A frame to send to the peer through the relay.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// A connection attempt to make.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`TcpPunch::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        let mut t = self.deadline;
        if let Some(o) = self.next_offer {
            t = t.min(o);
        }
        if self.state == State::Idle && self.peer.is_some() {
            t = t.min(self.retry_at);
        }
        Some(t)
    }

    /// The result, once there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(5);

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Delivers every frame one side has for the other (the relay, losslessly).
    fn relay(from: &mut TcpPunch, to: &mut TcpPunch, now: Instant) {
        while let Some(b) = from.poll_transmit() {
            let f = Frame::parse(&b).unwrap();
            assert!(to.handle_frame(now, &f));
        }
    }

    #[test]
    fn listener_arms_before_the_connector_connects() {
        let t0 = Instant::now();
        let (la, ca) = (sa("203.0.113.21:40000"), sa("203.0.113.22:40001"));
        let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
        let mut c = TcpPunch::new([1; 16], Role::Connector, t0, BUDGET);
        c.set_mine(t0, Some(ca));
        relay(&mut c, &mut l, t0);
        assert_eq!(l.poll_action(), None, "the listener lacks its own endpoint");
        l.set_mine(t0, Some(la));
        assert_eq!(l.poll_action(), Some(Action::Arm(ca)));
        relay(&mut l, &mut c, t0);
        assert_eq!(
            c.poll_action(),
            None,
            "not armed yet: a SYN now could meet an RST"
        );
        l.armed(t0);
        relay(&mut l, &mut c, t0);
        assert_eq!(c.poll_action(), Some(Action::Connect(la)));
        c.attempt_connected(la);
        assert_eq!(
            c.outcome(),
            Some(&Outcome::Connected {
                peer: la,
                attempts: 1
            })
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn a_failed_attempt_is_retried_after_a_pause_then_the_budget_ends_it() {
        let t0 = Instant::now();
        let mut c = TcpPunch::new([1; 16], Role::Connector, t0, BUDGET);
        c.set_mine(t0, Some(sa("203.0.113.22:1")));
        let offer = Frame::TcpOffer {
            session: [1; 16],
            armed: true,
            addr: sa("203.0.113.21:2"),
        };
        assert!(c.handle_frame(t0, &offer));
        assert!(matches!(c.poll_action(), Some(Action::Connect(_))));
        c.attempt_failed(t0);
        c.handle_timeout(t0 + TCP_RETRY / 2);
        assert_eq!(c.poll_action(), None);
        c.handle_timeout(t0 + TCP_RETRY);
        assert!(matches!(c.poll_action(), Some(Action::Connect(_))));
        c.attempt_failed(t0 + TCP_RETRY);
        c.handle_timeout(t0 + BUDGET);
        assert_eq!(
            c.outcome(),
            Some(&Outcome::Failed {
                attempts: 2,
                why: "no TCP connection within the time budget"
            })
        );
        assert_eq!(c.poll_action(), None);
    }

    #[test]
    fn offers_repeat_until_the_end_and_other_sessions_are_ignored() {
        let t0 = Instant::now();
        let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
        l.set_mine(t0, Some(sa("203.0.113.21:1")));
        assert!(l.poll_transmit().is_some());
        let mut now = t0;
        let mut sent = 0;
        while let Some(t) = l.poll_timeout() {
            now = t;
            l.handle_timeout(now);
            while l.poll_transmit().is_some() {
                sent += 1;
            }
        }
        assert!(now >= t0 + BUDGET);
        let expected = (BUDGET.as_millis() / TCP_OFFER_INTERVAL.as_millis()) as i32;
        assert!((sent - expected).abs() <= 1, "{sent} resends");
        let other = Frame::TcpOffer {
            session: [2; 16],
            armed: false,
            addr: sa("203.0.113.22:1"),
        };
        assert!(!l.handle_frame(now, &other));
        assert_eq!(
            l.outcome(),
            Some(&Outcome::Failed {
                attempts: 0,
                why: "the other side's TCP endpoint never came"
            })
        );
    }

    use crate::proto::punch::nat::tests::c as class;

    #[test]
    fn only_no_nat_and_endpoint_independent_filtering_are_reachable() {
        use Behaviour::{AddressAndPortDependent as Apd, EndpointIndependent as Ei};
        assert!(reachable(&class(Behaviour::None, Behaviour::None)), "open");
        assert!(reachable(&class(Ei, Ei)), "full cone");
        assert!(
            !reachable(&class(Ei, Behaviour::AddressDependent)),
            "restricted"
        );
        assert!(!reachable(&class(Ei, Apd)), "port-restricted");
        assert!(!reachable(&class(Apd, Apd)), "symmetric");
        let blocked = NatClass {
            udp_blocked: true,
            ..class(Behaviour::Unknown, Behaviour::Unknown)
        };
        assert!(!reachable(&blocked), "udp-blocked");
        let mapped = NatClass {
            mapped_port: true,
            ..class(Ei, Apd)
        };
        assert!(!reachable(&mapped), "the mapped port is UDP's");
    }

    #[test]
    fn the_unreachable_side_connects_and_the_reachable_one_accepts() {
        use Role::{Connector as C, Listener as L};
        for (l, c, want_l, want_c) in [
            (true, false, Plan::Accept, Plan::Connect),
            (false, true, Plan::Connect, Plan::Accept),
            (true, true, Plan::Accept, Plan::Connect),
            (false, false, Plan::Simultaneous, Plan::Simultaneous),
        ] {
            assert_eq!((plan(L, l, c), plan(C, l, c)), (want_l, want_c), "{l} {c}");
        }
    }

    /// Open listener × port-restricted connector: the connector connects at once (no
    /// arming, no `armed`), the listener only accepts, and only from the peer's address.
    #[test]
    fn a_reachable_listener_is_connected_to_directly() {
        use Behaviour::{AddressAndPortDependent as Apd, EndpointIndependent as Ei};
        let t0 = Instant::now();
        let (la, ca) = (sa("203.0.113.41:40000"), sa("203.0.113.22:40001"));
        let (open, pr) = (class(Behaviour::None, Behaviour::None), class(Ei, Apd));
        let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
        let mut c = TcpPunch::new([1; 16], Role::Connector, t0, BUDGET);
        l.set_nat(t0, &open, &pr);
        c.set_nat(t0, &pr, &open);
        l.set_mine(t0, Some(la));
        c.set_mine(t0, Some(ca));
        relay(&mut c, &mut l, t0);
        relay(&mut l, &mut c, t0);
        assert_eq!(l.poll_action(), None, "the reachable side does not arm");
        assert_eq!(c.poll_action(), Some(Action::Connect(la)));
        assert!(!l.accepted(sa("203.0.113.99:40001")), "a stranger");
        assert!(
            l.accepted(sa("203.0.113.22:50000")),
            "the peer, from another port"
        );
        assert_eq!(
            l.outcome(),
            Some(&Outcome::Connected {
                peer: sa("203.0.113.22:50000"),
                attempts: 0
            })
        );
        assert!(!l.accepted(sa("203.0.113.22:50001")), "only one connection");
        c.attempt_connected(la);
        assert!(matches!(c.outcome(), Some(Outcome::Connected { .. })));
    }

    /// The classifications may come after the punch started: an armed simultaneous open
    /// until then, the plan for the next attempt after.
    #[test]
    fn a_late_classification_changes_the_next_attempt() {
        use Behaviour::{AddressAndPortDependent as Apd, EndpointIndependent as Ei};
        let t0 = Instant::now();
        let ca = sa("203.0.113.42:40001");
        let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
        l.set_mine(t0, Some(sa("203.0.113.21:40000")));
        let offer = Frame::TcpOffer {
            session: [1; 16],
            armed: false,
            addr: ca,
        };
        assert!(l.handle_frame(t0, &offer));
        assert_eq!(l.poll_action(), Some(Action::Arm(ca)));
        l.set_nat(
            t0,
            &class(Ei, Apd),
            &class(Behaviour::None, Behaviour::None),
        );
        assert_eq!(l.poll_action(), None, "one attempt at a time");
        l.attempt_failed(t0);
        l.handle_timeout(t0 + TCP_RETRY);
        assert_eq!(l.poll_action(), Some(Action::Connect(ca)));
    }

    /// Nobody takes a connection before the peer's endpoint is known.
    #[test]
    fn nothing_is_accepted_before_the_peer_offers() {
        let t0 = Instant::now();
        let mut l = TcpPunch::new([1; 16], Role::Listener, t0, BUDGET);
        l.set_mine(t0, Some(sa("203.0.113.41:1")));
        assert!(!l.accepted(sa("203.0.113.22:2")));
        assert_eq!(l.outcome(), None);
    }

    #[test]
    fn no_endpoint_of_our_own_fails_at_once() {
        let t0 = Instant::now();
        let mut c = TcpPunch::new([1; 16], Role::Connector, t0, BUDGET);
        c.set_mine(t0, None);
        assert!(matches!(c.outcome(), Some(Outcome::Failed { .. })));
        assert_eq!(c.poll_timeout(), None);
    }
}
