//! Punching when the NATs are next to each other and no opening TTL is safe
//! ([`crate::proto::punch::ttl::Opening::Clash`]).
//!
//! Any packet that opens our NAT then reaches the peer's, and if the peer's NAT has no
//! mapping towards us yet it keeps a conntrack entry that moves the peer's own flow to a
//! random port. A packet is only welcome where the NAT it reaches already has a mapping, so
//! the two sides take turns instead of sending at once:
//!
//! 1. **Order.** The side whose NAT lets in any port of an address it has contacted
//!    (endpoint-independent or address-dependent filtering, RFC 4787 §5, or no NAT) leads:
//!    it probes at once, which moves the follower's flow, but the follower's packets from
//!    the moved port are still let in. The follower probes a moment later
//!    ([`CLASH_FOLLOW_DELAY`]). With both NATs permissive the listener leads. With the NAT
//!    classes unknown (`--manual`: no relay to exchange them) the connector leads: it has
//!    the listener's offer first and starts first, and the listener follows when it gets the
//!    connector's offer; phase 2 rescues the pairs where that order is the wrong one.
//! 2. **Waiting out the clash.** When neither NAT is permissive (port-restricted on both
//!    sides), phase 1 cannot work: the leader's packet has already left its mark on the
//!    follower's NAT. The leader then keeps its own mapping alive with packets whose TTL
//!    ends at its own outermost NAT (they refresh the mapping there and go no further), and
//!    both stay silent towards each other until the conntrack entries of phase 1 have
//!    expired on both routers ([`CLASH_EXPIRY_WAIT`], Linux forgets an unanswered UDP flow
//!    after 30 s). Then the follower probes first, from its original port, and meets the
//!    leader's waiting mapping. A second wait is twice as long (routers that keep
//!    unanswered flows for 60 s, like OpenWrt).
//!
//! Each round of checks asks [`ClashPlan::turn`] what to do; the relay carries the session
//! meanwhile.

use std::time::{Duration, Instant};

use crate::defaults::{CLASH_EXPIRY_WAIT, CLASH_FOLLOW_DELAY, DIRECT_TIMEOUT, MANUAL_TIMEOUT};
use crate::wire::rendezvous::Role;

/// One side's part in a round of checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Probe the peer with full-TTL packets after this delay, without opening packets.
    Probe(Duration),
    /// Send nothing towards the peer; answer its probes (and then probe it).
    Hold,
}

/// The turn-taking of one session whose NATs clash.
#[derive(Debug, Clone)]
pub struct ClashPlan {
    role: Role,
    serverless: bool,
    /// Whether we lead, once known (from the NAT classes, or the role without them).
    lead: Option<bool>,
    /// Both NATs filter by port: only waiting out the clash works.
    strict_pair: bool,
    /// Start of phase 1 (the first ordered round).
    phase1: Option<Instant>,
    /// When the follower probes again after waiting (phase 2), and how long the next wait is.
    resume: Option<(Instant, Duration)>,
    /// The checks' bound: a round's probes go on that long.
    bound: Duration,
    /// The follower's probing rounds after a wait so far.
    resumed: u32,
}

impl ClashPlan {
    /// A plan for `role`; `serverless` (`--manual`): no NAT classes will come; `bound`: how
    /// long a round of checks probes (at most the usual punching bound: `--manual`'s long
    /// wait for the other side is the holding rounds', see [`ClashPlan::hold_bound`]).
    pub fn new(role: Role, serverless: bool, bound: Duration) -> ClashPlan {
        let bound = bound.min(DIRECT_TIMEOUT);
        ClashPlan {
            role,
            serverless,
            lead: None,
            strict_pair: false,
            phase1: None,
            resume: None,
            bound,
            resumed: 0,
        }
    }

    /// The NAT classes are known: `mine`/`peer` say whether each side's NAT lets in any
    /// port of an address it has contacted.
    pub fn set_permissive(&mut self, mine: bool, peer: bool) {
        if self.phase1.is_some() {
            return;
        }
        self.lead = Some(match (mine, peer) {
            (true, false) => true,
            (false, true) => false,
            _ => self.role == Role::Listener,
        });
        self.strict_pair = !mine && !peer;
    }

    /// Whether we lead (known once the order is decided).
    pub fn leads(&self) -> Option<bool> {
        self.lead.filter(|_| self.phase1.is_some())
    }

    /// What to do in a round of checks starting at `now`.
    pub fn turn(&mut self, now: Instant) -> Turn {
        if self.lead.is_none() && self.serverless {
            self.lead = Some(self.role == Role::Connector);
        }
        let Some(lead) = self.lead else {
            // Wait for the NAT classes: a wrong order would spoil this pair of ports.
            return Turn::Hold;
        };
        let Some(p1) = self.phase1 else {
            self.phase1 = Some(now);
            if self.strict_pair || self.serverless {
                // Phase 1 cannot work (or, without the classes, may not): the leader opens
                // its mapping, the follower waits for the mark it leaves on its NAT to expire.
                self.resume = Some((now + self.bound + CLASH_EXPIRY_WAIT, CLASH_EXPIRY_WAIT));
            }
            return if lead {
                Turn::Probe(Duration::ZERO)
            } else if self.strict_pair {
                Turn::Hold
            } else {
                Turn::Probe(CLASH_FOLLOW_DELAY)
            };
        };
        let (at, wait) = *self
            .resume
            .get_or_insert((p1 + self.bound + CLASH_EXPIRY_WAIT, CLASH_EXPIRY_WAIT));
        if lead || now < at {
            return Turn::Hold;
        }
        // The follower's probing round after the wait; if it fails, wait longer.
        self.resume = Some((now + self.bound + wait * 2, wait * 2));
        self.resumed += 1;
        Turn::Probe(Duration::ZERO)
    }

    /// When a round of checks must start (the connector asks the relay for it): the
    /// follower's probing round after the wait. Without a relay to fall back to, one such
    /// round is all there is.
    pub fn next_round(&self) -> Option<Instant> {
        if self.serverless && self.resumed > 0 {
            return None;
        }
        self.resume.map(|(at, _)| at)
    }

    /// How long a holding round lasts without a relay: the follower's round may come as
    /// late as the leader's wait plus the time the user took to pass the offer on.
    pub fn hold_bound(&self) -> Option<Duration> {
        self.serverless
            .then_some(MANUAL_TIMEOUT + CLASH_EXPIRY_WAIT * 2)
    }

    /// How long a probing round lasts.
    pub fn round_bound(&self) -> Duration {
        self.bound
    }

    /// Whether our mapping must be kept open with TTL-limited packets: we lead, and the
    /// follower is waiting out the clash.
    pub fn keeps_open(&self) -> bool {
        self.leads() == Some(true) && self.resume.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(3);

    #[test]
    fn the_permissive_side_leads_and_the_other_follows() {
        let t0 = Instant::now();
        let mut l = ClashPlan::new(Role::Listener, false, BOUND);
        let mut c = ClashPlan::new(Role::Connector, false, BOUND);
        // Unknown classes: nobody sends.
        assert_eq!(l.turn(t0), Turn::Hold);
        assert_eq!(c.turn(t0), Turn::Hold);
        // A port-restricted listener, an address-restricted connector: the connector leads.
        l.set_permissive(false, true);
        c.set_permissive(true, false);
        assert_eq!(c.turn(t0), Turn::Probe(Duration::ZERO));
        assert_eq!(l.turn(t0), Turn::Probe(CLASH_FOLLOW_DELAY));
        assert_eq!(c.leads(), Some(true));
        assert!(!c.keeps_open());
        assert_eq!(l.next_round(), None);
    }

    #[test]
    fn two_permissive_nats_let_the_listener_lead() {
        let t0 = Instant::now();
        let mut l = ClashPlan::new(Role::Listener, false, BOUND);
        l.set_permissive(true, true);
        assert_eq!(l.turn(t0), Turn::Probe(Duration::ZERO));
    }

    /// `--manual`: the connector starts first and leads; both then wait out the clash, the
    /// leader holding (for long: the follower started later), the follower probing once.
    #[test]
    fn manual_mode_lets_the_connector_lead_then_waits_once() {
        let t0 = Instant::now();
        let mut c = ClashPlan::new(Role::Connector, true, BOUND);
        let mut l = ClashPlan::new(Role::Listener, true, BOUND);
        assert_eq!(c.turn(t0), Turn::Probe(Duration::ZERO));
        let tl = t0 + Duration::from_secs(2);
        assert_eq!(l.turn(tl), Turn::Probe(CLASH_FOLLOW_DELAY));
        assert!(c.keeps_open());
        let (rc, rl) = (c.next_round().unwrap(), l.next_round().unwrap());
        assert!(rl > rc);
        assert_eq!(c.turn(rc), Turn::Hold);
        assert_eq!(c.hold_bound(), Some(MANUAL_TIMEOUT + CLASH_EXPIRY_WAIT * 2));
        assert_eq!(l.turn(rl), Turn::Probe(Duration::ZERO));
        assert_eq!(
            l.next_round(),
            None,
            "one round after the wait, then give up"
        );
    }

    #[test]
    fn a_strict_pair_waits_out_the_clash_then_the_follower_probes_first() {
        let t0 = Instant::now();
        let mut l = ClashPlan::new(Role::Listener, false, BOUND);
        let mut c = ClashPlan::new(Role::Connector, false, BOUND);
        l.set_permissive(false, false);
        c.set_permissive(false, false);
        assert_eq!(l.turn(t0), Turn::Probe(Duration::ZERO));
        assert_eq!(c.turn(t0), Turn::Hold);
        assert!(l.keeps_open());
        let resume = c.next_round().unwrap();
        assert_eq!(resume, t0 + BOUND + CLASH_EXPIRY_WAIT);
        // Upgrade rounds before then: both hold.
        let mid = t0 + Duration::from_secs(10);
        assert_eq!(l.turn(mid), Turn::Hold);
        assert_eq!(c.turn(mid), Turn::Hold);
        // The round after the wait: the follower probes; the leader answers.
        assert_eq!(c.turn(resume), Turn::Probe(Duration::ZERO));
        assert_eq!(l.turn(resume), Turn::Hold);
        // Had it failed, the next wait is twice as long.
        assert_eq!(c.next_round(), Some(resume + BOUND + CLASH_EXPIRY_WAIT * 2));
        // Classes that arrive late do not change a decided order.
        c.set_permissive(true, false);
        assert_eq!(c.leads(), Some(false));
    }
}
