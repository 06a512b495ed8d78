//! The rendezvous client ([`RvClient`]): registration at the relay (kept alive by
//! re-registering), the relay's RTT pings, start signals and relayed data.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::defaults;
use crate::proto::punch::PunchConfig;
use crate::proto::stun::{Schedule, Transaction};
use crate::wire::rendezvous::{ErrorCode, Frame, Trailer};

/// What the rendezvous client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RvEvent {
    /// The relay accepted us; `observed` is our server-reflexive address.
    Registered {
        /// As the relay sees us.
        observed: SocketAddr,
        /// Whether the other side is there yet.
        peer_present: bool,
    },
    /// The other side's addresses.
    Peer {
        /// As the relay sees it.
        observed: SocketAddr,
        /// What it reported.
        candidates: Vec<SocketAddr>,
    },
    /// Start punching after `wait`.
    Start {
        /// Delay that makes both sides start together.
        wait: Duration,
        /// Attempt number.
        attempt: u32,
    },
    /// Data relayed from the other side.
    Data(Vec<u8>),
    /// The relay refused something.
    Refused {
        /// Code.
        code: ErrorCode,
        /// Its words.
        reason: String,
    },
    /// The relay does not answer.
    RelayLost,
}

/// What a listener's claim of a nameplate natkit drew came to, from the first event of its
/// registration (see [`crate::proto::punch::code::Code::is_generated`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The nameplate is ours: show the code.
    Held,
    /// The nameplate is taken, or a peer already waits there (a fresh one has none: a
    /// collision or a squatter): draw another before showing anything.
    DrawAgain,
    /// The relay refused for another reason (a cap, the token): fatal, as it would be for
    /// the session.
    Refused(String),
    /// No answer over UDP: go on as before (the session falls back to TCP).
    GoOn,
}

impl Claim {
    /// The claim's outcome once `e` arrived, if `e` decides it.
    pub fn from_event(e: &RvEvent) -> Option<Claim> {
        Some(match e {
            RvEvent::Registered { peer_present, .. } if *peer_present => Claim::DrawAgain,
            RvEvent::Registered { .. } => Claim::Held,
            RvEvent::Refused {
                code: ErrorCode::SessionBusy,
                ..
            } => Claim::DrawAgain,
            RvEvent::Refused { reason, .. } => Claim::Refused(reason.clone()),
            RvEvent::RelayLost => Claim::GoOn,
            _ => return None,
        })
    }
}

/// The rendezvous client: registers (and keeps the registration alive), answers the relay's
/// RTT pings, asks for start signals and carries relayed data.
///
/// Its requests carry a transaction id, and it takes `Registered`, `Peer`, `Error` and
/// `Cookie` only when they echo it: the relay's address alone is no proof, since an off-path
/// host can forge it. Over UDP the relay first answers a `Register` with a return-routability
/// cookie, which every later `Register` echoes ([`crate::wire::rendezvous::Trailer`]).
#[derive(Debug)]
pub struct RvClient {
    cfg: PunchConfig,
    /// Transaction id: the peer id, which is already a random secret of this instance that
    /// only the relay (and hosts on the path to it) see.
    tx: u64,
    /// The relay's last cookie for our address (empty before the first).
    cookie: Vec<u8>,
    register: Option<Transaction>,
    registered: bool,
    next_keepalive: Option<Instant>,
    sync: Option<Transaction>,
    /// Never talks to a relay (`--manual`).
    inert: bool,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<RvEvent>,
}

impl RvClient {
    /// Starts registering at `now`.
    pub fn new(cfg: PunchConfig, now: Instant) -> Self {
        let mut c = Self::idle(cfg, false);
        c.register = Some(Transaction::new(now, Self::register_schedule()));
        c.pump(now);
        c
    }

    /// A client that never talks to a relay (serverless `--manual` mode): every request is a
    /// no-op.
    pub fn inert(cfg: PunchConfig) -> Self {
        Self::idle(cfg, true)
    }

    /// A client with nothing sent yet. Its transaction id is the peer id read as a u64: random,
    /// and seen only by the relay and hosts on the path.
    fn idle(cfg: PunchConfig, inert: bool) -> Self {
        RvClient {
            tx: u64::from_be_bytes(cfg.peer),
            cookie: Vec::new(),
            cfg,
            register: None,
            registered: false,
            next_keepalive: None,
            sync: None,
            inert,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn is_inert(&self) -> bool {
        self.inert
    }

    fn register_schedule() -> Schedule {
        Schedule {
            rto: defaults::INITIAL_RTO,
            max_sends: 6,
            final_wait: defaults::REGISTER_FINAL_WAIT,
        }
    }

    fn register_frame(&self) -> Vec<u8> {
        Frame::Register {
            session: self.cfg.session,
            role: self.cfg.role,
            peer: self.cfg.peer,
            token: self.cfg.token.clone(),
            candidates: self.cfg.candidates.clone(),
        }
        .emit_with(Some(&self.trailer()))
    }

    fn trailer(&self) -> Trailer {
        Trailer {
            tx: self.tx,
            cookie: self.cookie.clone(),
        }
    }

    fn pump(&mut self, now: Instant) {
        if let Some(t) = &mut self.register {
            if t.timed_out(now) {
                self.register = None;
                self.events.push_back(RvEvent::RelayLost);
            } else if t.poll_send(now) {
                let f = self.register_frame();
                self.out.push_back((self.cfg.relay, f));
            }
        }
        if let Some(t) = &mut self.sync {
            if t.timed_out(now) {
                self.sync = None;
                self.events.push_back(RvEvent::RelayLost);
            } else if t.poll_send(now) {
                let f = Frame::Sync {
                    session: self.cfg.session,
                    peer: self.cfg.peer,
                }
                .emit_with(Some(&self.trailer()));
                self.out.push_back((self.cfg.relay, f));
            }
        }
        if self.next_keepalive.is_some_and(|k| k <= now) && self.register.is_none() {
            // Refreshing is re-registering: idempotent for the same peer id, and it follows
            // NAT rebinding to a new observed address.
            self.register = Some(Transaction::new(now, Self::register_schedule()));
            self.next_keepalive = None;
            self.pump(now);
        }
    }

    /// Adds a candidate address of ours (e.g. a port the router mapped for us) and
    /// re-registers, so the relay passes it on to the peer.
    pub fn add_candidate(&mut self, addr: SocketAddr, now: Instant) {
        if !self.cfg.candidates.contains(&addr) {
            self.cfg.candidates.push(addr);
            self.refresh(now);
        }
    }

    /// Re-registers at once (after a path failure: our observed address may have changed).
    pub fn refresh(&mut self, now: Instant) {
        if self.register.is_none() {
            self.register_now(now);
        }
    }

    /// Registers again at once, even while a registration is under way: our own network
    /// came back or moved, and that registration's retransmissions have backed off (or went
    /// out from an address that is gone).
    pub fn register_now(&mut self, now: Instant) {
        if !self.is_inert() {
            self.register = Some(Transaction::new(now, Self::register_schedule()));
            self.pump(now);
        }
    }

    /// The relay's cookie for our address, learned before this client existed
    /// ([`FamilyRace`]): the registration under way starts again echoing it, and its
    /// cookie-less first request, not sent yet, is dropped.
    pub fn set_cookie(&mut self, cookie: Vec<u8>, now: Instant) {
        if cookie.is_empty() || self.register.is_none() {
            return;
        }
        self.cookie = cookie;
        self.out
            .retain(|(_, f)| !matches!(Frame::parse_with(f), Ok((Frame::Register { .. }, _))));
        self.register = Some(Transaction::new(now, Self::register_schedule()));
        self.pump(now);
    }

    /// Asks the relay for a simultaneous start (again, on every retry).
    pub fn sync(&mut self, now: Instant) {
        if self.is_inert() {
            return;
        }
        self.sync = Some(Transaction::new(
            now,
            Schedule {
                rto: defaults::SYNC_RTO,
                max_sends: 4,
                final_wait: defaults::SYNC_FINAL_WAIT,
            },
        ));
        self.pump(now);
    }

    /// Sends data through the relay.
    pub fn send_data(&mut self, payload: Vec<u8>) {
        if self.inert {
            return;
        }
        let f = Frame::Data {
            session: self.cfg.session,
            payload,
        }
        .emit();
        self.out.push_back((self.cfg.relay, f));
    }

    /// Whether the relay has accepted the registration.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Feeds a datagram; returns false when it did not come from the relay.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        if from != self.cfg.relay {
            return false;
        }
        let Ok((f, t)) = Frame::parse_with(data) else {
            return true;
        };
        let mine = t.as_ref().is_some_and(|t| t.tx == self.tx);
        match f {
            // Forged from the relay's address by a host that does not know our transaction
            // id: it must not abort, redirect or confirm anything.
            Frame::Registered { .. } | Frame::Peer { .. } | Frame::Error { .. } | Frame::Cookie
                if !mine => {}
            Frame::Cookie => {
                let cookie = t.map(|t| t.cookie).unwrap_or_default();
                // Register again at once with the new cookie; the same cookie again is a late
                // duplicate, and the retransmissions already carry it.
                if cookie != self.cookie {
                    self.cookie = cookie;
                    if self.register.is_some() {
                        self.register = Some(Transaction::new(now, Self::register_schedule()));
                    }
                }
            }
            Frame::Registered {
                observed,
                peer_present,
            } => {
                if self.register.take().is_some() || !self.registered {
                    self.events.push_back(RvEvent::Registered {
                        observed,
                        peer_present,
                    });
                }
                self.registered = true;
                self.next_keepalive = Some(now + self.cfg.keepalive);
            }
            Frame::Peer {
                observed,
                candidates,
            } => self.events.push_back(RvEvent::Peer {
                observed,
                candidates,
            }),
            Frame::Ping { nonce } => {
                let f = Frame::Pong {
                    session: self.cfg.session,
                    peer: self.cfg.peer,
                    nonce,
                }
                .emit();
                self.out.push_back((self.cfg.relay, f));
            }
            Frame::Start { wait_ms, attempt } => {
                self.sync = None;
                self.events.push_back(RvEvent::Start {
                    wait: Duration::from_millis(wait_ms as u64),
                    attempt,
                });
            }
            Frame::Data { session, payload } if session == self.cfg.session => {
                self.events.push_back(RvEvent::Data(payload))
            }
            Frame::Error { code, reason } => {
                self.register = None;
                self.events.push_back(RvEvent::Refused { code, reason })
            }
            _ => {}
        }
        self.pump(now);
        true
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<RvEvent> {
        self.events.pop_front()
    }

    /// When to call [`RvClient::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.register.as_ref().and_then(|t| t.poll_timeout()),
            self.sync.as_ref().and_then(|t| t.poll_timeout()),
            self.next_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }
}

/// Which of the relay's two addresses (its A and AAAA records) to meet at, sans-IO, for a
/// host with a global IPv6 address. The registration's first request, which the relay
/// answers with its return-routability cookie and nothing else (no state), goes to both at
/// once (Happy Eyeballs, RFC 8305 §5, in parallel rather than staggered: the answer costs
/// the relay nothing). IPv4 is taken as soon as it answers: meeting over IPv4 gives the peer
/// our IPv4 server-reflexive address, the one an IPv4-only peer needs (our IPv6 address is
/// a candidate either way). IPv6 is taken when it answered and IPv4 still has not
/// [`RELAY_FAMILY_GRACE`] later (UDP blocked over IPv4 only), or when the requests ran out.
/// The cookie of the address taken goes on to the registration
/// ([`RvClient::set_cookie`]), so the race costs no round trip. Nothing answering: IPv4, as
/// without IPv6 (its registration then times out and the relay is met over TCP).
#[derive(Debug)]
pub struct FamilyRace {
    v4: SocketAddr,
    v6: SocketAddr,
    tx: u64,
    frame: Vec<u8>,
    sends: Transaction,
    /// IPv6's cookie, and when to stop waiting for IPv4's.
    v6_answer: Option<(Vec<u8>, Instant)>,
    /// The address to meet at, and its cookie (empty when nothing answered).
    done: Option<(SocketAddr, Vec<u8>)>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl FamilyRace {
    /// Races `cfg.relay` (the IPv4 address) against `v6` from `now`, with `cfg`'s
    /// registration as the request.
    pub fn new(cfg: PunchConfig, v6: SocketAddr, now: Instant) -> FamilyRace {
        let rv = RvClient::idle(cfg, false);
        let mut r = FamilyRace {
            v4: rv.cfg.relay,
            v6,
            tx: rv.tx,
            frame: rv.register_frame(),
            sends: Transaction::new(
                now,
                Schedule {
                    rto: defaults::INITIAL_RTO,
                    max_sends: 4,
                    final_wait: defaults::RELAY_FAMILY_FINAL_WAIT,
                },
            ),
            v6_answer: None,
            done: None,
            out: VecDeque::new(),
        };
        r.handle_timeout(now);
        r
    }

    /// Feeds a datagram; false when it came from neither address.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        if from != self.v4 && from != self.v6 {
            return false;
        }
        // Only a cookie that echoes our transaction id: the relay's address alone is no proof.
        let Ok((Frame::Cookie, Some(t))) = Frame::parse_with(data) else {
            return true;
        };
        if t.tx != self.tx || self.done.is_some() {
            return true;
        }
        if from == self.v4 {
            self.done = Some((self.v4, t.cookie));
        } else if self.v6_answer.is_none() {
            self.v6_answer = Some((t.cookie, now + defaults::RELAY_FAMILY_GRACE));
        }
        true
    }

    /// Advances timers: sends (IPv6 only until it answered), and the decisions by time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done.is_some() {
            return;
        }
        let v6_due = self.v6_answer.as_ref().is_some_and(|(_, at)| *at <= now);
        if v6_due || self.sends.timed_out(now) {
            self.done = Some(match self.v6_answer.take() {
                Some((cookie, _)) => (self.v6, cookie),
                None => (self.v4, Vec::new()),
            });
        } else if self.sends.poll_send(now) {
            self.out.push_back((self.v4, self.frame.clone()));
            if self.v6_answer.is_none() {
                self.out.push_back((self.v6, self.frame.clone()));
            }
        }
    }

    /// The address to meet at and its cookie (empty: none yet), once decided.
    pub fn result(&self) -> Option<(SocketAddr, Vec<u8>)> {
        self.done.clone()
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When to call [`FamilyRace::handle_timeout`] (None once decided).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done.is_some() {
            return None;
        }
        [
            self.sends.poll_timeout(),
            self.v6_answer.as_ref().map(|(_, at)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rendezvous::Role;

    fn client(t: Instant) -> RvClient {
        RvClient::new(
            PunchConfig {
                relay: "203.0.113.10:3478".parse().unwrap(),
                session: [7; 16],
                role: Role::Listener,
                peer: [5; 8],
                token: vec![],
                candidates: vec![],
                direct_timeout: Duration::from_secs(3),
                keepalive: Duration::from_secs(15),
            },
            t,
        )
    }

    const V6: &str = "[2001:db8::10]:3478";

    /// The race's requests so far, as (destination, frame).
    fn sent(r: &mut FamilyRace) -> Vec<SocketAddr> {
        std::iter::from_fn(|| r.poll_transmit())
            .map(|(dst, f)| {
                assert!(matches!(
                    Frame::parse_with(&f),
                    Ok((Frame::Register { .. }, _))
                ));
                dst
            })
            .collect()
    }

    fn cookie_from(r: &mut FamilyRace, now: Instant, from: SocketAddr, tx: u64, c: u8) {
        let t = Trailer {
            tx,
            cookie: vec![c; 16],
        };
        assert!(r.handle_datagram(now, from, &Frame::Cookie.emit_with(Some(&t))));
    }

    /// Issue 14: the relay's A and AAAA addresses raced. IPv4 wins when it answers at all
    /// within the grace after IPv6 (the peer then learns our IPv4 reflexive address); IPv6
    /// wins when IPv4 stays silent (UDP blocked over IPv4 only), well before the ~3.9 s an
    /// IPv4 registration takes to time out; nothing answering leaves IPv4 (then TCP).
    #[test]
    fn the_relay_family_race_prefers_ipv4_and_takes_ipv6_when_ipv4_is_silent() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let cfg = client(t).cfg;
        let (v4, v6, tx) = (cfg.relay, V6.parse().unwrap(), u64::from_be_bytes(cfg.peer));
        // IPv6 first, IPv4 within the grace: IPv4, with its cookie.
        let mut r = FamilyRace::new(cfg.clone(), v6, t);
        assert_eq!(sent(&mut r), [v4, v6], "both at once");
        cookie_from(&mut r, ms(5), v6, tx, 6);
        cookie_from(&mut r, ms(5), v4, tx ^ 1, 9);
        assert_eq!(
            r.result(),
            None,
            "a cookie without our id is nobody's answer"
        );
        cookie_from(&mut r, ms(40), v4, tx, 4);
        assert_eq!(r.result(), Some((v4, vec![4; 16])));
        assert_eq!(r.poll_timeout(), None);
        // IPv6 only: after the grace, with IPv6's cookie; IPv6 is asked no more meanwhile.
        let mut r = FamilyRace::new(cfg.clone(), v6, t);
        sent(&mut r);
        cookie_from(&mut r, ms(5), v6, tx, 6);
        let mut now = ms(5);
        while r.result().is_none() {
            now = r.poll_timeout().expect("a deadline while undecided");
            r.handle_timeout(now);
            assert!(sent(&mut r).iter().all(|d| *d == v4));
        }
        assert_eq!(r.result(), Some((v6, vec![6; 16])));
        assert_eq!(now, ms(5) + defaults::RELAY_FAMILY_GRACE);
        // Silence: IPv4 without a cookie, after four sends to each, in about a second.
        let mut r = FamilyRace::new(cfg.clone(), v6, t);
        let mut to = sent(&mut r);
        while let Some(at) = r.poll_timeout() {
            now = at;
            r.handle_timeout(now);
            to.extend(sent(&mut r));
        }
        assert_eq!(r.result(), Some((v4, vec![])));
        assert_eq!(to.len(), 8);
        assert_eq!(now, ms(700) + defaults::RELAY_FAMILY_FINAL_WAIT);
        assert!(!r.handle_datagram(now, "198.51.100.1:3478".parse().unwrap(), b"x"));
    }

    /// The race's cookie goes on to the registration: its first request echoes it (one
    /// round trip, not two), and the cookie-less request is never sent.
    #[test]
    fn a_cookie_from_the_race_spares_the_registration_a_round_trip() {
        let t = Instant::now();
        let mut c = client(t);
        c.set_cookie(vec![3; 16], t);
        let all: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(all.len(), 1, "{all:?}");
        let (f, tr) = Frame::parse_with(&all[0].1).unwrap();
        assert!(matches!(f, Frame::Register { .. }));
        assert_eq!(tr.unwrap().cookie, vec![3; 16]);
        // Nothing learned: nothing changes.
        let mut c = client(t);
        c.set_cookie(Vec::new(), t);
        let (_, first) = c.poll_transmit().unwrap();
        assert_eq!(
            Frame::parse_with(&first).unwrap().1.unwrap().cookie,
            Vec::<u8>::new()
        );
    }

    /// Issue 12 (low): frames from the relay's address that do not echo our transaction id
    /// (an off-path host forging the relay) are ignored; before, a forged Error ended the
    /// session and a forged Peer redirected the checks.
    #[test]
    fn forged_relay_frames_without_our_transaction_id_change_nothing() {
        let t = Instant::now();
        let mut c = client(t);
        let relay = c.cfg.relay;
        let (sent, _) = c.poll_transmit().unwrap();
        assert_eq!(sent, relay);
        let forged = [
            Frame::Error {
                code: ErrorCode::Other,
                reason: "go away".into(),
            },
            Frame::Peer {
                observed: "198.51.100.66:1".parse().unwrap(),
                candidates: vec![],
            },
            Frame::Registered {
                observed: "198.51.100.66:1".parse().unwrap(),
                peer_present: true,
            },
        ];
        for f in &forged {
            for t in [None, Some(u64::from_be_bytes([5; 8]) ^ 1)] {
                let tr = t.map(|tx| Trailer { tx, cookie: vec![] });
                assert!(c.handle_datagram(Instant::now(), relay, &f.emit_with(tr.as_ref())));
                assert_eq!(c.poll_event(), None, "{f:?} {t:?}");
            }
        }
        assert!(!c.is_registered());
        // The relay's cookie (with our id): the Register goes again at once, echoing it.
        let mine = Trailer {
            tx: c.tx,
            cookie: vec![1; 16],
        };
        c.handle_datagram(t, relay, &Frame::Cookie.emit_with(Some(&mine)));
        let (_, again) = c.poll_transmit().expect("a new Register");
        let (f, tr) = Frame::parse_with(&again).unwrap();
        assert!(matches!(f, Frame::Register { .. }));
        assert_eq!(tr, Some(mine.clone()));
        // The real answer, with our id.
        c.handle_datagram(t, relay, &forged[0].emit_with(Some(&mine)));
        assert!(matches!(c.poll_event(), Some(RvEvent::Refused { .. })));
    }
}
