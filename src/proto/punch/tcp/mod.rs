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
//! **Neighbouring NATs that reset SYNs addressed to themselves** (the TTL measurement's
//! [`crate::proto::punch::ttl::Opening::Clash`]: no arming TTL dies before the peer's NAT).
//! A Linux router answers an unexpected SYN with a reset, and conntrack deletes an
//! unanswered entry on a reset (measured: nothing left on either router), so an arming SYN
//! that reaches the peer's router before the peer's own SYN has gone out closes our
//! mapping, whatever its TTL; waiting for the peer cannot help either (the peer's SYN meets
//! the same reset). What works is **crossing** ([`Plan::Cross`]): both sides connect
//! normally, again from a fresh socket after each reset, until two SYNs pass each other
//! between the NATs — each then finds the other's mapping and reaches the other's socket in
//! SYN-SENT: a simultaneous open. The window is a one-way delay between the NATs, so the
//! sides fire often (about one SYN per millisecond each, a bounded number); measured in the
//! lab (`natlab --hops 0 --router-input accept`): crossed within 1–440 ms whatever the
//! sides' start offset (0–300 ms), 10 of 10. Low-TTL SYNs were tried first: both mappings
//! then exist, but the Time Exceeded from the peer's router aborts a socket in SYN-SENT
//! (Linux ends one on any ICMP error) and the routers' window tracking drops a fresh SYN.
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
//!
//! **Both families.** A side with a global IPv6 address also offers it, at an IPv6 punch port
//! of its own: with no NAT on IPv6 (RFC 6092 home firewalls keep addresses and ports) that is
//! the endpoint the peer must reach, and it is just another `TcpOffer`. Each family is a lane,
//! paired with the peer's offer in that family, and the lanes punch at once (IPv6's attempt
//! first). Over IPv6 the listener's arming SYN goes at the full hop limit: it opens our own
//! firewall, the peer's drops it (a firewall holds an unsolicited SYN for 6 s before it may
//! answer, so that simultaneous open works, RFC 6092 §3.3.1), and the connector's SYN then
//! meets our socket in SYN-SENT. IPv6 always punches so: the classifications describe the
//! IPv4 NATs; an open IPv6 host simply accepts the arming SYN.
//!
//! **The connector chooses.** Both lanes may connect, and the two sides may see them in
//! different orders. The connector takes its first connection and starts TLS over it; the
//! listener (the TLS server) keeps its connections until the connector's first bytes arrive
//! on one ([`TcpPunch::chosen`]); the others are closed.

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
    /// Neither is reachable and the NATs are neighbours that answer SYNs addressed to
    /// themselves with a reset: both sides fire SYNs until two cross (module docs).
    Cross,
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
    /// Listener: connect to this endpoint with a low-TTL SYN (then restore the TTL; over
    /// IPv6 a normal SYN), report [`TcpPunch::armed`] once the SYN has gone, and the
    /// attempt's end later.
    Arm(SocketAddr),
    /// Connect to this endpoint normally (the connector of a simultaneous open, or either
    /// side towards a reachable peer).
    Connect(SocketAddr),
    /// [`Plan::Cross`]: connect to this endpoint normally, again from a fresh socket after
    /// each reset (a few per millisecond at most), until two SYNs cross.
    Cross(SocketAddr),
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

/// What to do with a connection that came up ([`TcpPunch::attempt_connected`],
/// [`TcpPunch::accepted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// It carries the session (the outcome says so).
    Use,
    /// Listener: keep it until the connector's first bytes arrive on it or on another one
    /// ([`TcpPunch::chosen`]).
    AwaitChoice,
    /// Not ours: close it.
    Drop,
}

/// Which lane an address belongs to: IPv6 first, so that its attempt starts first.
fn lane_of(a: SocketAddr) -> usize {
    usize::from(a.is_ipv4())
}

/// One address family's punch: our endpoint in it, the peer's, and the attempt's state.
#[derive(Debug)]
struct Lane {
    mine: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Listener: our arming SYN is out. Connector: the listener said it is armed.
    armed: bool,
    /// An attempt is in flight; when not, the next may start at `retry_at`.
    trying: bool,
    /// Listener: connections up in this family that wait for the connector's choice
    /// ([`TcpPunch::chosen`]).
    pending: u8,
    retry_at: Instant,
}

/// Connections from the peer's address one family may hold while the connector chooses: our
/// attempt and one accepted (a NAT may give the peer's connection another port).
const MAX_PENDING: u8 = 2;

/// One side's TCP punch.
#[derive(Debug)]
pub struct TcpPunch {
    session: SessionId,
    role: Role,
    /// IPv6, then IPv4 ([`lane_of`]).
    lanes: [Lane; 2],
    /// Who connects over IPv4, once both classifications are known (IPv6 always punches:
    /// the classifications describe the IPv4 NATs).
    plan: Plan,
    /// The NATs are neighbours that reset SYNs ([`Plan::Cross`] over IPv4).
    neighbours: bool,
    attempts: u32,
    next_offer: Option<Instant>,
    deadline: Instant,
    out: VecDeque<Vec<u8>>,
    actions: VecDeque<Action>,
    outcome: Option<Outcome>,
}

impl TcpPunch {
    /// A punch that gives up at `now + budget`.
    pub fn new(session: SessionId, role: Role, now: Instant, budget: Duration) -> Self {
        let lane = || Lane {
            mine: None,
            peer: None,
            armed: false,
            trying: false,
            pending: 0,
            retry_at: now,
        };
        TcpPunch {
            session,
            role,
            lanes: [lane(), lane()],
            plan: Plan::Simultaneous,
            neighbours: false,
            attempts: 0,
            next_offer: None,
            deadline: now + budget,
            out: VecDeque::new(),
            actions: VecDeque::new(),
            outcome: None,
        }
    }

    /// Our public TCP endpoints: IPv4 as the relay saw it, IPv6 our global address at the
    /// IPv6 punch port (no NAT). None at all: TCP cannot work.
    pub fn set_mine(&mut self, now: Instant, mine: &[SocketAddr]) {
        if mine.is_empty() {
            return self.fail("the relay could not tell us our public TCP endpoint");
        }
        for a in mine {
            self.lanes[lane_of(*a)].mine = Some(*a);
        }
        self.send_offer(now);
        self.drive(now);
    }

    /// Both NAT classifications are known (again): who connects over IPv4 ([`plan`]). An
    /// attempt in flight goes on; the next one follows the plan.
    pub fn set_nat(&mut self, now: Instant, mine: &NatClass, peer: &NatClass) {
        let (l, c) = match self.role {
            Role::Listener => (reachable(mine), reachable(peer)),
            Role::Connector => (reachable(peer), reachable(mine)),
        };
        self.plan = plan(self.role, l, c);
        if self.plan == Plan::Simultaneous && self.neighbours {
            self.plan = Plan::Cross;
        }
        self.drive(now);
    }

    /// The TTL measurement says whether the NATs are neighbours that answer packets
    /// addressed to themselves (no arming TTL dies before the peer's NAT): armed simultaneous
    /// open becomes [`Plan::Cross`] over IPv4.
    pub fn set_neighbours(&mut self, now: Instant, neighbours: bool) {
        if neighbours == self.neighbours {
            return;
        }
        self.neighbours = neighbours;
        self.plan = match (self.plan, neighbours) {
            (Plan::Simultaneous, true) => Plan::Cross,
            (Plan::Cross, false) => Plan::Simultaneous,
            (p, _) => p,
        };
        self.drive(now);
    }

    /// A connection to `peer` is up, by our attempt or accepted on the punch port: the
    /// connector takes the first one; the listener waits for the connector's bytes on it.
    fn up(&mut self, peer: SocketAddr) -> Take {
        if self.role == Role::Connector {
            self.finish(peer);
            return Take::Use;
        }
        self.lanes[lane_of(peer)].pending += 1;
        Take::AwaitChoice
    }

    /// The punch port accepted a connection from `from`: the peer's when it comes from the
    /// peer's public address in that family (a NAT may give the connection another port
    /// than the one the relay saw). Anything but [`Take::Drop`] takes it.
    pub fn accepted(&mut self, from: SocketAddr) -> Take {
        let lane = &self.lanes[lane_of(from)];
        if self.outcome.is_some()
            || lane.pending >= MAX_PENDING
            || lane.peer.is_none_or(|p| p.ip() != from.ip())
        {
            return Take::Drop;
        }
        self.up(from)
    }

    /// A relayed frame from the peer; true when it was ours to handle. An offer in a family
    /// is the peer's endpoint in that family (a peer without IPv6 never sends one).
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
        let first = self.lanes.iter().all(|l| l.peer.is_none());
        let connector = self.role == Role::Connector;
        // An IPv4-mapped address is the IPv4 one: the IPv4 lane dials it from its IPv4 port.
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let lane = &mut self.lanes[lane_of(addr)];
        let news = lane.peer != Some(addr) || (connector && *armed != lane.armed);
        lane.peer = Some(addr);
        if connector {
            lane.armed = *armed;
        }
        // The peer may lack ours (it resends until it has it): answer its first offer at once.
        if first && news {
            self.send_offer(now);
        }
        self.drive(now);
        true
    }

    /// Listener: the arming SYN towards `dst` has gone.
    pub fn armed(&mut self, now: Instant, dst: SocketAddr) {
        let lane = &mut self.lanes[lane_of(dst)];
        if self.role == Role::Listener && lane.trying {
            lane.armed = true;
            self.send_offer(now);
        }
    }

    /// The attempt towards `dst` failed (refused, reset or timed out): try again shortly.
    pub fn attempt_failed(&mut self, now: Instant, dst: SocketAddr) {
        let lane = &mut self.lanes[lane_of(dst)];
        if lane.trying {
            lane.trying = false;
            if self.role == Role::Listener {
                lane.armed = false;
            }
            lane.retry_at = now + TCP_RETRY;
        }
    }

    /// The attempt towards `peer` connected. Anything but [`Take::Drop`] takes the stream.
    pub fn attempt_connected(&mut self, peer: SocketAddr) -> Take {
        let lane = &mut self.lanes[lane_of(peer)];
        if self.outcome.is_some() || !lane.trying {
            return Take::Drop;
        }
        lane.trying = false;
        self.up(peer)
    }

    /// Listener: the connector's first bytes came on a connection from `peer` that
    /// [`Take::AwaitChoice`] kept: it carries the session; any other is to be closed.
    pub fn chosen(&mut self, peer: SocketAddr) -> bool {
        let lane = &self.lanes[lane_of(peer)];
        if self.outcome.is_some()
            || lane.pending == 0
            || lane.peer.is_none_or(|p| p.ip() != peer.ip())
        {
            return false;
        }
        self.finish(peer);
        true
    }

    /// Listener: a kept connection from `peer` ended before any bytes came (the connector
    /// chose another, or it broke): punch on in that family after a pause.
    pub fn unchosen(&mut self, now: Instant, peer: SocketAddr) {
        let lane = &mut self.lanes[lane_of(peer)];
        if lane.pending > 0 {
            lane.pending -= 1;
            lane.retry_at = lane.retry_at.max(now + TCP_RETRY);
        }
    }

    fn finish(&mut self, peer: SocketAddr) {
        self.next_offer = None;
        self.outcome = Some(Outcome::Connected {
            peer,
            attempts: self.attempts,
        });
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            let paired = |l: &Lane| l.mine.is_some() && l.peer.is_some();
            self.fail(if self.lanes.iter().all(|l| l.mine.is_none()) {
                "our public TCP endpoint is unknown"
            } else if !self.lanes.iter().any(paired) {
                "the other side's TCP endpoint never came"
            } else {
                "no TCP connection within the time budget"
            });
            return;
        }
        if self.next_offer.is_some_and(|t| t <= now) {
            self.send_offer(now);
        }
        self.drive(now);
    }

    /// What lane `i` would do next, whenever its pause is over: IPv6 always punches (no
    /// NAT; the listener's SYN opens its own firewall), IPv4 follows [`plan`].
    fn next_action(&self, i: usize) -> Option<Action> {
        let l = &self.lanes[i];
        if self.outcome.is_some() || l.trying || l.pending > 0 || l.mine.is_none() {
            return None;
        }
        let peer = l.peer?;
        let plan = if peer.is_ipv4() {
            self.plan
        } else {
            Plan::Simultaneous
        };
        match (plan, self.role) {
            (Plan::Connect, _) => Some(Action::Connect(peer)),
            (Plan::Accept, _) => None,
            (Plan::Simultaneous, Role::Listener) => Some(Action::Arm(peer)),
            (Plan::Simultaneous, Role::Connector) => l.armed.then_some(Action::Connect(peer)),
            (Plan::Cross, _) => Some(Action::Cross(peer)),
        }
    }

    fn drive(&mut self, now: Instant) {
        for i in 0..self.lanes.len() {
            if now < self.lanes[i].retry_at {
                continue;
            }
            if let Some(a) = self.next_action(i) {
                self.attempts += 1;
                self.lanes[i].trying = true;
                self.actions.push_back(a);
            }
        }
    }

    fn send_offer(&mut self, now: Instant) {
        // IPv6 first: a peer of an older version keeps the last offer, IPv4's.
        for l in &self.lanes {
            if let Some(addr) = l.mine {
                let armed = self.role == Role::Listener && l.armed;
                self.out.push_back(
                    Frame::TcpOffer {
                        session: self.session,
                        armed,
                        addr,
                    }
                    .emit(),
                );
            }
        }
        // Relayed frames may be lost (UDP to the relay): repeat until the punch ends.
        self.next_offer = Some(now + TCP_OFFER_INTERVAL);
    }

    fn fail(&mut self, why: &'static str) {
        if self.outcome.is_none() {
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
        let retries = (0..self.lanes.len())
            .filter(|&i| self.next_action(i).is_some())
            .map(|i| self.lanes[i].retry_at);
        retries.chain(self.next_offer).chain([self.deadline]).min()
    }

    /// The result, once there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }
}

#[cfg(test)]
mod tests;
