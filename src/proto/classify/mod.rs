//! NAT behaviour discovery (RFC 5780 §4, terms from RFC 4787) as a sans-IO state machine.
//!
//! The [`Prober`] never touches a socket or a clock. Its driver (`crate::net::natprobe`) feeds it
//! datagrams, ICMP errors and TCP answers with the instant they arrived
//! ([`Prober::handle_input`]), asks what to send ([`Prober::poll_transmit`]) and when to wake
//! it ([`Prober::poll_timeout`], [`Prober::handle_timeout`]). Unit tests drive it with a fake
//! clock and a simulated NAT (see `tests` below).
//!
//! All tests start as soon as what they depend on is known: the Binding requests to every
//! server at once; the mapping, filtering, hairpin and path tests together as soon as the first
//! RFC 5780 server has answered, each on its own fresh local socket (STUNTMAN's advice: one
//! test's mapping must not open another test's filter).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::defaults;
use crate::proto::stun::{Schedule, Transaction};
use crate::wire::netaddr;
use crate::wire::stun::{self, Change, Class, Tid};

/// A local UDP socket, named by number. The driver binds a fresh socket the first time it sees
/// a number and reports its address with [`Input::LocalAddr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u16);

/// The socket every server's Binding request and the mapping tests use (RFC 5780 §4.3).
const S_MAIN: SocketId = SocketId(0);
/// Filtering test II (change IP and port), on a socket of its own; an answer is confirmed on
/// a second fresh socket before filtering counts as open. A fresh socket can get the local
/// port of an earlier run's socket whose mapping, and the filter state it opened, the NAT
/// still keeps (the lab's restricted NAT admits the alternate IP for 2 minutes after the
/// mapping tests sent there). Only an answer is confirmed: a filtered CHANGE-REQUEST answer
/// leaves a conntrack entry on a Linux NAT's own address that moves a later flow of that port
/// elsewhere, and a second one would leave twice as many.
const S_FILTER_BOTH: [SocketId; 2] = [SocketId(1), SocketId(12)];
/// Filtering test III (change port), likewise.
const S_FILTER_PORT: [SocketId; 2] = [SocketId(2), SocketId(13)];
/// TTL-limited probes that reveal the routers on the path: one socket per TTL, so an ICMP
/// error that quotes too little of the probe to carry its transaction id still tells its TTL.
const S_HOPS_BASE: u16 = 3;
/// First socket of the binding-lifetime search; each gap uses two (the kept mapping and the
/// one that asks the server to answer it).
const S_LIFETIME_BASE: u16 = 16;
// The hop sockets must not run into the second filtering sockets.
const _: () = assert!(S_HOPS_BASE + defaults::MAX_HOP_TTL as u16 <= 11);

/// How a transmit leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From a local UDP socket, optionally with a limited IP TTL.
    Udp {
        /// Which socket.
        socket: SocketId,
        /// IP TTL for this datagram only.
        ttl: Option<u8>,
    },
    /// One STUN-over-TCP exchange (RFC 8489 §6.2.2) on a fresh connection; the answer comes
    /// back as [`Input::TcpAnswer`].
    Tcp,
}

/// A datagram (or TCP exchange) to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// How it leaves.
    pub via: Via,
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes.
    pub payload: Vec<u8>,
}

/// What the driver observed.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A datagram arrived on a socket.
    Datagram {
        /// Receiving socket.
        socket: SocketId,
        /// Its source.
        from: SocketAddr,
        /// Its bytes (possibly truncated by the driver; then decoding fails).
        data: &'a [u8],
        /// The IP TTL (IPv6 hop limit) it arrived with, when the driver could read it: tells
        /// how many routers the server's answers cross.
        ttl: Option<u8>,
    },
    /// An ICMP error about a datagram this socket sent.
    IcmpError {
        /// The socket whose datagram caused it.
        socket: SocketId,
        /// Which error.
        kind: IcmpKind,
        /// The router that sent the error.
        offender: IpAddr,
        /// The payload of the original datagram, as the kernel returned it.
        original: &'a [u8],
    },
    /// Result of a [`Via::Tcp`] exchange.
    TcpAnswer {
        /// The server it went to.
        server: SocketAddr,
        /// The answer bytes, or why there were none.
        result: Result<&'a [u8], &'a str>,
    },
    /// The local address a socket is bound to (the driver learns the IP from the route).
    LocalAddr {
        /// Which socket.
        socket: SocketId,
        /// Its address.
        addr: SocketAddr,
    },
}

/// The ICMP errors natprobe uses (RFC 792).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Type 11: a router on the path dropped the datagram when its TTL ran out.
    TimeExceeded,
    /// Type 3: the destination (or a router) says it cannot be reached.
    Unreachable,
}

/// RFC 4787 behaviour classes, as used in natprobe's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Same mapping / any source let in (RFC 4787 §4.1, §5).
    EndpointIndependent,
    /// Depends on the remote IP only.
    AddressDependent,
    /// Depends on the remote IP and port.
    AddressAndPortDependent,
    /// Could not be determined (the report says why).
    Unknown,
    /// No translation at all (mapping only).
    None,
}

impl Behaviour {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::Unknown => "unknown",
            Behaviour::None => "none",
        }
    }
}

/// Configuration of one run. Servers are already resolved.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Servers in preference order (RFC 5780-capable ones first).
    pub servers: Vec<SocketAddr>,
    /// Give-up for the first answer.
    pub first_timeout: Duration,
    /// Look for the routers on the path (CGNAT detection).
    pub hops: bool,
    /// Search the binding lifetime, up to this idle gap.
    pub lifetime_max: Option<Duration>,
}

impl ProbeConfig {
    /// Defaults for the given servers.
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        ProbeConfig {
            servers,
            first_timeout: defaults::FIRST_ANSWER_TIMEOUT,
            hops: true,
            lifetime_max: None,
        }
    }
}

/// What natprobe learned about one server.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerReport {
    /// Address probed.
    pub addr: SocketAddr,
    /// Round-trip time of the first Binding, when it was not retransmitted.
    pub rtt_ms: Option<f64>,
    /// Whether the server answered and is trusted for behaviour discovery: a valid
    /// OTHER-ADDRESS, and a RESPONSE-ORIGIN equal to the address the answer came from.
    pub rfc5780: bool,
    /// Whether it answered over UDP.
    pub answered: bool,
    /// The mapped address it reported for the main socket.
    pub mapped: Option<SocketAddr>,
    /// Its OTHER-ADDRESS, as sent (even when not trusted).
    pub other_address: Option<SocketAddr>,
    /// Its SOFTWARE attribute.
    pub software: Option<String>,
    /// Problems found with this server's answers.
    pub problems: Vec<String>,
}

/// How the NAT picks public ports (issue: port prediction for hard NATs).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PortAllocation {
    /// `preserving` (public port = local port), `sequential` (each new mapping moves by
    /// `delta`), `random`, or `unknown` (too few mappings seen).
    pub kind: &'static str,
    /// The step between consecutive mappings, for `sequential`.
    pub delta: Option<i32>,
}

/// Classifies port allocation from the mappings one local socket got towards successive
/// destinations (RFC 4787 §4.2.1 port preservation; consecutive allocation is what port
/// prediction exploits).
pub fn port_allocation(local_port: Option<u16>, mappings: &[u16]) -> PortAllocation {
    let unknown = PortAllocation {
        kind: "unknown",
        delta: None,
    };
    let Some(&first) = mappings.first() else {
        return unknown;
    };
    if local_port == Some(first) && mappings.iter().all(|&m| m == first) {
        return PortAllocation {
            kind: "preserving",
            delta: None,
        };
    }
    if mappings.len() < 3 {
        return unknown;
    }
    let deltas: Vec<i32> = mappings
        .windows(2)
        .map(|w| w[1] as i32 - w[0] as i32)
        .collect();
    // Small steps, all in one direction: a sequential allocator. natprobe's other sockets
    // (and other hosts behind the NAT) take ports in between, so the steps are multiples of
    // the allocator's step, which is their greatest common divisor. A random allocator gives
    // three ports within 64 of each other, in order, about once in 10^6 runs.
    let same_sign = deltas.iter().all(|&d| d.signum() == deltas[0].signum());
    if same_sign && deltas.iter().all(|&d| d != 0 && d.abs() <= 64) {
        let step = deltas.iter().fold(0, |g, &d| gcd(g, d.abs()));
        return PortAllocation {
            kind: "sequential",
            delta: Some(step * deltas[0].signum()),
        };
    }
    PortAllocation {
        kind: "random",
        delta: None,
    }
}

fn gcd(a: i32, b: i32) -> i32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One router on the path, found with a TTL-limited probe.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hop {
    /// IP TTL of the probe.
    pub ttl: u8,
    /// The router that answered with ICMP Time Exceeded.
    pub addr: IpAddr,
}

/// Binding-lifetime search result.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Lifetime {
    /// Longest idle gap after which the mapping still worked (seconds).
    pub alive_s: Option<u64>,
    /// Shortest idle gap after which it was gone (seconds).
    pub expired_s: Option<u64>,
}

/// Everything one run observed, before any verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Observations {
    /// Any server answered over UDP.
    pub udp: bool,
    /// Whether STUN over TCP answered (None when not tried).
    pub tcp: Option<bool>,
    /// The main socket's local address.
    pub local_addr: Option<SocketAddr>,
    /// The main socket's address as the primary server saw it.
    pub mapped_addr: Option<SocketAddr>,
    /// The server whose answers the classification rests on.
    pub primary: Option<SocketAddr>,
    /// Whether any translation happens.
    pub behind_nat: Option<bool>,
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: Behaviour,
    /// Why `mapping` is what it is when not measured directly.
    pub mapping_note: Option<String>,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: Behaviour,
    /// Why `filtering` is unknown, if it is.
    pub filtering_note: Option<String>,
    /// Hairpinning (RFC 4787 §6), None when not tested.
    pub hairpinning: Option<bool>,
    /// Whether the NAT kept the local port.
    pub port_preserved: Option<bool>,
    /// How public ports are allocated.
    pub port_allocation: PortAllocation,
    /// Routers on the path.
    pub hops: Vec<Hop>,
    /// Binding lifetime, when searched.
    pub lifetime: Option<Lifetime>,
    /// Per-server details.
    pub servers: Vec<ServerReport>,
    /// Datagrams that were ignored, with why.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Binding(usize),
    MapII,
    MapIII,
    /// On `S_FILTER_BOTH[k]`; k = 1 confirms an answer to k = 0.
    FilterBoth(usize),
    /// On `S_FILTER_PORT[k]`; likewise.
    FilterPort(usize),
    Hairpin,
    Hop(u8),
    Tcp(usize),
    LifetimeArm(usize),
    LifetimeCheck(usize),
}

#[derive(Debug)]
struct Pending {
    test: Test,
    via: Via,
    dst: SocketAddr,
    tid: Tid,
    payload: Vec<u8>,
    txn: Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome<T> {
    Waiting,
    Got(T),
    NoAnswer,
    /// The server did not do what was asked (ignored CHANGE-REQUEST, error response…).
    Bogus,
}

#[derive(Debug, Clone, Copy)]
struct LifetimeSlot {
    gap: Duration,
    armed_at: Option<Instant>,
    mapped: Option<SocketAddr>,
    check_at: Option<Instant>,
    result: Option<bool>,
}

/// The discovery state machine.
#[derive(Debug)]
pub struct Prober {
    cfg: ProbeConfig,
    start: Instant,
    pending: Vec<Pending>,
    out: VecDeque<Transmit>,
    servers: Vec<ServerReport>,
    locals: Vec<(SocketId, SocketAddr)>,
    srtt: Option<Duration>,
    primary: Option<usize>,
    other: Option<SocketAddr>,
    phase2: bool,
    tcp_started: bool,
    tcp_ok: Option<bool>,
    map2: Outcome<SocketAddr>,
    map3: Outcome<SocketAddr>,
    filter_both: [Outcome<()>; 2],
    filter_port: [Outcome<()>; 2],
    hairpin: Outcome<()>,
    hops: Vec<Hop>,
    lifetime: Vec<LifetimeSlot>,
    ignored: Vec<String>,
    notes_filtering: Option<String>,
    hop_retried: Vec<u8>,
    /// Routers between this host and the first server, from the TTL its answer arrived with.
    server_hops: Option<u8>,
    /// Where the hairpin probe goes once the path probes are done (see
    /// [`Prober::maybe_start_hairpin`]).
    hairpin_to: Option<SocketAddr>,
    /// Servers that sent an OTHER-ADDRESS but are not trusted for behaviour discovery, and why.
    distrusted: Vec<String>,
}

fn clamp_rto(rtt: Duration) -> Duration {
    (rtt * defaults::RTT_RTO_FACTOR).clamp(defaults::MIN_RTO, defaults::MAX_RTO)
}

impl Prober {
    /// Starts a run at `now`: the first Binding requests are ready to send at once.
    pub fn new(cfg: ProbeConfig, now: Instant) -> Self {
        let servers = cfg
            .servers
            .iter()
            .map(|&addr| ServerReport {
                addr,
                rtt_ms: None,
                rfc5780: false,
                answered: false,
                mapped: None,
                other_address: None,
                software: None,
                problems: Vec::new(),
            })
            .collect();
        let mut p = Prober {
            start: now,
            pending: Vec::new(),
            out: VecDeque::new(),
            servers,
            locals: Vec::new(),
            srtt: None,
            primary: None,
            other: None,
            phase2: false,
            tcp_started: false,
            tcp_ok: None,
            map2: Outcome::Waiting,
            map3: Outcome::Waiting,
            filter_both: [Outcome::Waiting; 2],
            filter_port: [Outcome::Waiting; 2],
            hairpin: Outcome::Waiting,
            hops: Vec::new(),
            lifetime: Vec::new(),
            ignored: Vec::new(),
            notes_filtering: None,
            hop_retried: Vec::new(),
            server_hops: None,
            hairpin_to: None,
            distrusted: Vec::new(),
            cfg,
        };
        let first = Schedule {
            rto: defaults::INITIAL_RTO,
            max_sends: defaults::FIRST_MAX_SENDS,
            final_wait: p.cfg.first_timeout,
        };
        let deadline = now + p.cfg.first_timeout;
        for i in 0..p.cfg.servers.len() {
            let dst = p.cfg.servers[i];
            p.add(
                now,
                Test::Binding(i),
                S_MAIN,
                None,
                dst,
                Change::NONE,
                first,
            );
            if let Some(t) = p.pending.last_mut() {
                t.txn.cap_deadline(deadline);
            }
        }
        if p.cfg.hops {
            // Sent first, before anything that makes routers send ICMP errors towards us (the
            // hairpin probe to our own public address does): Linux rate-limits ICMP per
            // destination (1/s, burst 6) and an exhausted bucket would hide the hops.
            let hop_sched = Schedule {
                rto: defaults::HOP_RTO,
                max_sends: 3,
                final_wait: defaults::HOP_RTO * defaults::FINAL_WAIT_RTOS,
            };
            let dst = p.cfg.servers[0];
            for ttl in 1..=defaults::MAX_HOP_TTL {
                let s = SocketId(S_HOPS_BASE + ttl as u16);
                p.add(
                    now,
                    Test::Hop(ttl),
                    s,
                    Some(ttl),
                    dst,
                    Change::NONE,
                    hop_sched,
                );
            }
        }
        p.pump(now);
        p
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        now: Instant,
        test: Test,
        socket: SocketId,
        ttl: Option<u8>,
        dst: SocketAddr,
        change: Change,
        sched: Schedule,
    ) {
        let tid = rand::random();
        let payload = stun::binding_request(tid, change);
        self.pending.push(Pending {
            test,
            via: Via::Udp { socket, ttl },
            dst,
            tid,
            payload,
            txn: Transaction::new(now, sched),
        });
    }

    fn followup(&self) -> Schedule {
        let rto = clamp_rto(self.srtt.unwrap_or(defaults::INITIAL_RTO));
        Schedule {
            rto,
            max_sends: defaults::FOLLOWUP_MAX_SENDS,
            final_wait: rto * defaults::FINAL_WAIT_RTOS,
        }
    }

    /// Expires transactions, starts what became due, and moves due sends to the output queue.
    fn pump(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for p in &mut self.pending {
            if !p.txn.is_done() && p.txn.timed_out(now) {
                p.txn.cancel();
                expired.push(p.test);
            }
        }
        self.pending.retain(|p| !p.txn.is_done());
        for t in expired {
            self.on_no_answer(now, t);
        }
        // Lifetime checks that came due.
        for i in 0..self.lifetime.len() {
            let slot = self.lifetime[i];
            if let (Some(at), Some(m)) = (slot.check_at, slot.mapped) {
                if at <= now {
                    self.lifetime[i].check_at = None;
                    self.start_lifetime_check(now, i, m);
                }
            }
        }
        if !self.tcp_started
            && !self.servers.iter().any(|s| s.answered)
            && now >= self.start + defaults::TCP_FALLBACK_AFTER
        {
            self.tcp_started = true;
            let deadline = self.start + self.cfg.first_timeout;
            for (i, &dst) in self.cfg.servers.iter().enumerate().take(2) {
                let tid = rand::random();
                let mut txn = Transaction::new(
                    now,
                    Schedule {
                        rto: defaults::TCP_EXCHANGE_TIMEOUT,
                        max_sends: 1,
                        final_wait: defaults::TCP_EXCHANGE_TIMEOUT,
                    },
                );
                txn.cap_deadline(deadline.max(now + defaults::TCP_EXCHANGE_TIMEOUT));
                self.pending.push(Pending {
                    test: Test::Tcp(i),
                    via: Via::Tcp,
                    dst,
                    tid,
                    payload: stun::binding_request(tid, Change::NONE),
                    txn,
                });
            }
        }
        self.maybe_start_hairpin(now);
        for p in &mut self.pending {
            if p.txn.poll_send(now) {
                self.out.push_back(Transmit {
                    via: p.via,
                    dst: p.dst,
                    payload: p.payload.clone(),
                });
            }
        }
    }

    /// Starts the hairpin probe once no path probe to a router beyond the first hop is under
    /// way (hops at or beyond the server's distance are not waited for).
    ///
    /// A NAT that does not hairpin answers the probe to its own public address with ICMP port
    /// unreachable, and that error draws on the same ICMP budget (Linux: 1/s per destination,
    /// burst 6) as the Time Exceeded that reveals a carrier-grade NAT on the path — the carrier
    /// NAT is the one that owns the mapped address. Sent together, back-to-back runs had the
    /// hairpin probe spend the token the path probe needed, and CGNAT went unseen. Hop 1 is
    /// not waited for: it is the home router, or, when the carrier's NAT is the first hop, this
    /// host's own address is in 100.64.0.0/10 and says so (`verdict::cgnat`); waiting for a
    /// silent home router would slow every run.
    fn maybe_start_hairpin(&mut self, now: Instant) {
        let Some(dst) = self.hairpin_to else { return };
        let path_busy = self.pending.iter().any(|p| {
            matches!(p.test, Test::Hop(t) if t >= 2 && self.hop_is_router(t) != Some(false))
                && !p.txn.is_done()
        });
        if path_busy {
            return;
        }
        self.hairpin_to = None;
        let sched = self.followup();
        self.add(now, Test::Hairpin, S_MAIN, None, dst, Change::NONE, sched);
    }

    /// The next datagram or TCP exchange to perform.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`Prober::handle_timeout`] must be called next; None when finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        let mut t = self
            .pending
            .iter()
            .filter_map(|p| p.txn.poll_timeout())
            .min();
        for s in &self.lifetime {
            if let Some(c) = s.check_at {
                t = Some(t.map_or(c, |x| x.min(c)));
            }
        }
        if !self.tcp_started && !self.servers.iter().any(|s| s.answered) {
            let c = self.start + defaults::TCP_FALLBACK_AFTER;
            t = Some(t.map_or(c, |x| x.min(c)));
        }
        t
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }

    /// True when nothing is left to do.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
            && self.out.is_empty()
            && self.lifetime.iter().all(|s| s.check_at.is_none())
            && (self.tcp_started || self.servers.iter().any(|s| s.answered))
    }

    /// Progress of the lifetime search: (finished gaps, total gaps).
    pub fn lifetime_progress(&self) -> Option<(usize, usize)> {
        if self.lifetime.is_empty() {
            return None;
        }
        let done = self.lifetime.iter().filter(|s| s.result.is_some()).count();
        Some((done, self.lifetime.len()))
    }

    /// Feeds one observation.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::LocalAddr { socket, addr } => {
                self.locals.retain(|(s, _)| *s != socket);
                self.locals.push((socket, addr));
            }
            Input::Datagram {
                socket,
                from,
                data,
                ttl,
            } => self.on_datagram(now, socket, from, data, ttl),
            Input::IcmpError {
                socket,
                kind,
                offender,
                original,
            } => self.on_icmp(now, socket, kind, offender, original),
            Input::TcpAnswer { server, result } => {
                let idx = self
                    .pending
                    .iter()
                    .position(|p| p.via == Via::Tcp && p.dst == server);
                if let Some(i) = idx {
                    let ok = match result {
                        Ok(bytes) => stun::decode(bytes)
                            .map(|m| m.tid == self.pending[i].tid && m.class == Class::Success)
                            .unwrap_or(false),
                        Err(_) => false,
                    };
                    self.pending[i].txn.answered(now);
                    if ok {
                        self.tcp_ok = Some(true);
                    } else if self.tcp_ok.is_none() {
                        self.tcp_ok = Some(false);
                    }
                }
            }
        }
        self.pending.retain(|p| !p.txn.is_done());
        self.pump(now);
    }

    fn on_icmp(
        &mut self,
        now: Instant,
        socket: SocketId,
        kind: IcmpKind,
        offender: IpAddr,
        original: &[u8],
    ) {
        let by_tid = stun::decode(original).ok().and_then(|m| self.find(&m.tid));
        // Routers may quote too little of the probe to carry its transaction id; hop probes
        // have a socket each, so the socket tells the TTL.
        let by_socket = || {
            self.pending.iter().position(|p| {
                matches!(p.test, Test::Hop(_))
                    && matches!(p.via, Via::Udp { socket: s, .. } if s == socket)
            })
        };
        let Some(i) = by_tid.or_else(by_socket) else {
            return;
        };
        match (self.pending[i].test, kind) {
            (Test::Hop(ttl), IcmpKind::TimeExceeded) => {
                self.pending[i].txn.answered(now);
                if !self.hops.iter().any(|h| h.ttl == ttl) {
                    self.hops.push(Hop {
                        ttl,
                        addr: offender,
                    });
                }
            }
            // The NAT delivered the probe to itself and found no listener: a definite "no"
            // after one packet instead of five.
            (Test::Hairpin, IcmpKind::Unreachable) => {
                self.pending[i].txn.cancel();
                self.hairpin = Outcome::NoAnswer;
            }
            (Test::Binding(s), IcmpKind::Unreachable) => {
                self.pending[i].txn.cancel();
                let msg = format!("unreachable: ICMP destination unreachable from {offender}");
                if !self.servers[s].problems.contains(&msg) {
                    self.servers[s].problems.push(msg);
                }
                self.binding_finished(now);
            }
            _ => {}
        }
    }

    fn find(&self, tid: &Tid) -> Option<usize> {
        self.pending.iter().position(|p| &p.tid == tid)
    }

    fn ignore(&mut self, why: String) {
        // Bounded: a flood of junk must not grow memory without limit.
        if self.ignored.len() < 32 {
            self.ignored.push(why);
        }
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
        ttl: Option<u8>,
    ) {
        let m = match stun::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.ignore(format!("{} bytes from {from}: {e}", data.len()));
                return;
            }
        };
        let Some(i) = self.find(&m.tid) else {
            self.ignore(format!(
                "STUN message from {from} with an unknown transaction id"
            ));
            return;
        };
        let test = self.pending[i].test;
        let dst = self.pending[i].dst;
        if test == Test::Hairpin {
            // RFC 5780 §4.5: the client receives its own request.
            if m.is_binding_request() {
                self.pending[i].txn.answered(now);
                self.hairpin = Outcome::Got(());
            } else {
                self.ignore(format!("hairpin probe answered by {from} with a response"));
            }
            return;
        }
        if m.class == Class::Request || m.class == Class::Indication {
            self.ignore(format!("STUN request from {from} reusing a transaction id"));
            return;
        }
        let rtt = self.pending[i].txn.answered(now);
        if m.class == Class::Error {
            let (code, reason) = m.error.clone().unwrap_or((0, String::new()));
            self.on_error_response(now, test, format!("error {code} {reason}"));
            return;
        }
        let Some(mapped) = m.reflexive() else {
            self.on_error_response(now, test, "a response without a mapped address".into());
            return;
        };
        match test {
            Test::Binding(s) => {
                if s == 0 && from == dst {
                    // The path probes go to the first server: how far it is tells which silent
                    // hops are routers (see `hop_is_router`).
                    self.server_hops = ttl.map(routers_crossed);
                }
                self.on_binding(now, s, from, dst, rtt, &m, mapped, socket)
            }
            Test::MapII | Test::MapIII => {
                let r = if from == dst {
                    Outcome::Got(mapped)
                } else {
                    self.ignore(format!("mapping test answered from {from}, sent to {dst}"));
                    Outcome::Bogus
                };
                if test == Test::MapII {
                    self.map2 = r
                } else {
                    self.map3 = r
                }
            }
            Test::FilterBoth(_) | Test::FilterPort(_) => {
                let expect = self.expected_change_source(test);
                let r = if Some(from) == expect {
                    Outcome::Got(())
                } else {
                    self.notes_filtering = Some(format!(
                        "the server answered a CHANGE-REQUEST from {from} instead of {}: it does \
                         not honour CHANGE-REQUEST, so filtering cannot be measured with it",
                        expect.map_or("its alternate address".to_string(), |e| e.to_string())
                    ));
                    Outcome::Bogus
                };
                self.set_filter(now, test, r);
            }
            Test::Hop(_) => {
                // The probe reached the server: no router at this distance.
            }
            Test::LifetimeArm(k) => {
                let slot = &mut self.lifetime[k];
                slot.armed_at = Some(now);
                slot.mapped = Some(mapped);
                slot.check_at = Some(now + slot.gap);
            }
            Test::LifetimeCheck(k) => {
                // The answer must reach the kept mapping's socket, not the asking one.
                let kept = SocketId(S_LIFETIME_BASE + 2 * k as u16);
                self.lifetime[k].result = Some(socket == kept);
                if socket != kept {
                    self.ignore(format!(
                        "lifetime check answered on the asking socket: {from} ignored RESPONSE-PORT"
                    ));
                }
                self.finish_lifetime_if_bracketed();
            }
            Test::Hairpin | Test::Tcp(_) => {}
        }
    }

    fn set_filter(&mut self, now: Instant, test: Test, r: Outcome<()>) {
        let (k, pair, sockets, what) = match test {
            Test::FilterBoth(k) => {
                self.filter_both[k] = r;
                (k, self.filter_both, S_FILTER_BOTH, "IP and port")
            }
            Test::FilterPort(k) => {
                self.filter_port[k] = r;
                (k, self.filter_port, S_FILTER_PORT, "port")
            }
            _ => return,
        };
        match (k, r) {
            (0, Outcome::Got(())) => {
                let Some(p) = self.primary.map(|i| self.cfg.servers[i]) else {
                    return;
                };
                let (again, change) = match test {
                    Test::FilterBoth(_) => (Test::FilterBoth(1), Change::IP_AND_PORT),
                    _ => (Test::FilterPort(1), Change::PORT),
                };
                let sched = self.followup();
                self.add(now, again, sockets[1], None, p, change, sched);
            }
            (1, Outcome::NoAnswer) if pair[0] == Outcome::Got(()) => {
                let port = self.local_of(sockets[0]).map(|a| a.port());
                self.ignore(format!(
                    "the answer to CHANGE-REQUEST ({what}) on local port {} was not confirmed \
                     on a fresh socket: the NAT still kept an earlier flow's mapping of that \
                     port, so it does not count",
                    port.map_or("?".to_string(), |p| p.to_string())
                ));
            }
            _ => {}
        }
    }

    /// One filtering test: open only when the answer to the first socket was confirmed on the
    /// second. A first socket answered and a second not means the first's port still had an
    /// earlier flow's mapping and filter state at the NAT (a previous run's): the fresh one
    /// tells the truth.
    fn filter_outcome(o: [Outcome<()>; 2]) -> Outcome<()> {
        match o {
            [Outcome::Got(()), second] => second,
            [first, _] => first,
        }
    }

    fn expected_change_source(&self, test: Test) -> Option<SocketAddr> {
        let p = self.primary.map(|i| self.cfg.servers[i])?;
        let o = self.other?;
        Some(match test {
            Test::FilterBoth(_) => o,
            _ => SocketAddr::new(p.ip(), o.port()),
        })
    }

    fn on_error_response(&mut self, now: Instant, test: Test, what: String) {
        match test {
            Test::Binding(s) => {
                self.servers[s]
                    .problems
                    .push(format!("answered a Binding request with {what}"));
                self.binding_finished(now);
            }
            Test::FilterBoth(_) | Test::FilterPort(_) => {
                self.notes_filtering = Some(format!(
                    "the server answered CHANGE-REQUEST with {what}: it does not support \
                     RFC 5780 behaviour discovery"
                ));
                self.set_filter(now, test, Outcome::Bogus);
            }
            Test::MapII => self.map2 = Outcome::Bogus,
            Test::MapIII => self.map3 = Outcome::Bogus,
            Test::LifetimeCheck(k) | Test::LifetimeArm(k) => {
                self.ignore(format!("lifetime test {k}: {what}"));
                self.lifetime[k].result = None;
                self.lifetime[k].check_at = None;
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_binding(
        &mut self,
        now: Instant,
        s: usize,
        from: SocketAddr,
        dst: SocketAddr,
        rtt: Option<Duration>,
        m: &stun::Message,
        mapped: SocketAddr,
        _socket: SocketId,
    ) {
        let srv = &mut self.servers[s];
        if from != dst {
            srv.problems.push(format!(
                "answered from {from} although the request went to {dst}"
            ));
        }
        srv.answered = true;
        srv.mapped = Some(mapped);
        srv.software = m.software.clone();
        srv.rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
        srv.other_address = m.other_address;
        // RFC 5780 §7.3: RESPONSE-ORIGIN is where the server says it sent the answer from. A
        // server that leaves it out, or names another address than the one the answer came
        // from (a server behind NAT, or one that does not know its own addresses), cannot be
        // trusted to answer CHANGE-REQUEST from the addresses it claims: its behaviour
        // discovery is not used, only reported.
        let origin_problem = match m.response_origin {
            None if m.other_address.is_some() => {
                Some("sent OTHER-ADDRESS but no RESPONSE-ORIGIN".to_string())
            }
            Some(o) if o != from => Some(format!(
                "RESPONSE-ORIGIN says {o} but the answer came from {from} \
                 (server behind NAT or misconfigured)"
            )),
            _ => None,
        };
        let other_problem = m.other_address.and_then(|o| {
            if o.ip() == dst.ip() {
                Some(format!(
                    "OTHER-ADDRESS {o} has the same IP as the server \
                     (behaviour discovery needs two addresses)"
                ))
            } else if o.port() == dst.port() {
                Some(format!("OTHER-ADDRESS {o} has the same port as the server"))
            } else if o.is_ipv4() != dst.is_ipv4() {
                Some(format!("OTHER-ADDRESS {o} is of another address family"))
            } else if netaddr::is_unroutable(o.ip()) && !netaddr::is_unroutable(dst.ip()) {
                Some(format!(
                    "OTHER-ADDRESS {o} is not a public address although the server's is"
                ))
            } else {
                None
            }
        });
        let why_not: Vec<String> = origin_problem.into_iter().chain(other_problem).collect();
        if m.other_address.is_some() && why_not.is_empty() {
            srv.rfc5780 = true;
        } else if m.other_address.is_some() {
            let why = why_not.join("; ");
            srv.problems.push(format!(
                "{why}: not trusted for RFC 5780 behaviour discovery"
            ));
            self.distrusted.push(format!("{dst}: {why}"));
        } else {
            // No OTHER-ADDRESS: no behaviour discovery claimed; a wrong origin is still odd.
            srv.problems.extend(why_not);
        }
        if let Some(r) = rtt {
            self.srtt = Some(match self.srtt {
                // RFC 6298 §2.3 smoothing.
                Some(old) => (old * 7 + r) / 8,
                None => r,
            });
        }
        if self.primary.is_none() && self.servers[s].rfc5780 {
            self.primary = Some(s);
            self.other = m.other_address;
        }
        // Don't let slow secondary servers hold up the report.
        let grace = defaults::SECONDARY_GRACE.max(self.followup().rto * 8);
        for p in &mut self.pending {
            if matches!(p.test, Test::Binding(_)) {
                p.txn.cap_deadline(now + grace);
            }
        }
        self.binding_finished(now);
    }

    fn on_no_answer(&mut self, now: Instant, test: Test) {
        match test {
            Test::Binding(_) => self.binding_finished(now),
            Test::MapII => self.map2 = Outcome::NoAnswer,
            Test::MapIII => self.map3 = Outcome::NoAnswer,
            Test::FilterBoth(_) | Test::FilterPort(_) => {
                self.set_filter(now, test, Outcome::NoAnswer)
            }
            Test::Hairpin => self.hairpin = Outcome::NoAnswer,
            Test::Hop(ttl) => self.retry_silent_hop(now, ttl),
            Test::Tcp(_) => {
                if self.tcp_ok.is_none() {
                    self.tcp_ok = Some(false)
                }
            }
            Test::LifetimeArm(k) => {
                self.lifetime[k].result = None;
            }
            Test::LifetimeCheck(k) => {
                self.lifetime[k].result = Some(false);
                self.finish_lifetime_if_bracketed();
            }
        }
    }

    /// A router that stayed silent probably rate-limits its ICMP errors (Linux: 1/s per
    /// destination, burst 6: back-to-back runs spend it). Ask it once more, slowly, so that
    /// repeated runs still see a carrier-grade NAT hop: retries at 0, 350 and 1050 ms span
    /// more than the 1 s in which its next token comes (nothing else of ours draws on it
    /// meanwhile: the hairpin probe waits, see [`Prober::maybe_start_hairpin`]). Only hops 2
    /// and 3: hop 1 is the home router, and a CGNAT sits right behind it. Costs up to ~1.25 s,
    /// and only on such paths.
    fn retry_silent_hop(&mut self, now: Instant, ttl: u8) {
        // It is a router: a farther one answered, or the server's answers crossed more routers
        // than this hop's distance. A silent hop at or beyond the server's distance is not
        // waited for (a path element that never sends Time Exceeded would slow every run).
        let router = self.hops.iter().any(|h| h.ttl > ttl) || self.hop_is_router(ttl) == Some(true);
        if !(2..=3).contains(&ttl) || !router || self.hop_retried.contains(&ttl) {
            return;
        }
        self.hop_retried.push(ttl);
        let Some(dst) = self.cfg.servers.first().copied() else {
            return;
        };
        let s = SocketId(S_HOPS_BASE + ttl as u16);
        let sched = Schedule {
            rto: defaults::HOP_RETRY_RTO,
            max_sends: 3,
            final_wait: defaults::HOP_RTO * defaults::FINAL_WAIT_RTOS,
        };
        self.add(now, Test::Hop(ttl), s, Some(ttl), dst, Change::NONE, sched);
    }

    /// Called when a server's Binding finished (either way): start phase 2 once a primary is
    /// known, or once every server has finished.
    fn binding_finished(&mut self, now: Instant) {
        if self.phase2 {
            return;
        }
        let bindings_left = self
            .pending
            .iter()
            .any(|p| matches!(p.test, Test::Binding(_)) && !p.txn.is_done());
        if self.primary.is_none() {
            if bindings_left {
                return;
            }
            // No RFC 5780 server: classify from the first one that answered.
            self.primary = self.servers.iter().position(|s| s.answered);
        }
        if self.primary.is_some() {
            self.start_phase2(now);
        }
    }

    fn start_phase2(&mut self, now: Instant) {
        self.phase2 = true;
        let Some(pi) = self.primary else { return };
        let p = self.cfg.servers[pi];
        let sched = self.followup();
        let mapped = self.servers[pi].mapped;
        let behind = self.behind_nat();
        if let Some(o) = self.other.filter(|_| self.servers[pi].rfc5780) {
            self.add(
                now,
                Test::MapII,
                S_MAIN,
                None,
                SocketAddr::new(o.ip(), p.port()),
                Change::NONE,
                sched,
            );
            self.add(now, Test::MapIII, S_MAIN, None, o, Change::NONE, sched);
            // The second sockets only confirm an answer (`set_filter`).
            let (both, port) = (Test::FilterBoth(0), Test::FilterPort(0));
            self.add(
                now,
                both,
                S_FILTER_BOTH[0],
                None,
                p,
                Change::IP_AND_PORT,
                sched,
            );
            self.add(now, port, S_FILTER_PORT[0], None, p, Change::PORT, sched);
        }
        if let (Some(m), Some(true)) = (mapped, behind) {
            // Sent by `pump` once the path probes are done.
            self.hairpin_to = Some(m);
        }
        if let Some(max) = self.cfg.lifetime_max {
            for (k, &g) in defaults::LIFETIME_GAPS_S
                .iter()
                .filter(|&&g| Duration::from_secs(g) <= max)
                .enumerate()
            {
                self.lifetime.push(LifetimeSlot {
                    gap: Duration::from_secs(g),
                    armed_at: None,
                    mapped: None,
                    check_at: None,
                    result: None,
                });
                let kept = SocketId(S_LIFETIME_BASE + 2 * k as u16);
                self.add(
                    now,
                    Test::LifetimeArm(k),
                    kept,
                    None,
                    p,
                    Change::NONE,
                    sched,
                );
            }
        }
    }

    fn start_lifetime_check(&mut self, now: Instant, k: usize, kept_mapping: SocketAddr) {
        let Some(pi) = self.primary else { return };
        let p = self.cfg.servers[pi];
        let asker = SocketId(S_LIFETIME_BASE + 2 * k as u16 + 1);
        let tid = rand::random();
        self.pending.push(Pending {
            test: Test::LifetimeCheck(k),
            via: Via::Udp {
                socket: asker,
                ttl: None,
            },
            dst: p,
            tid,
            payload: stun::binding_request_response_port(tid, kept_mapping.port()),
            txn: Transaction::new(now, self.followup()),
        });
    }

    /// Mappings expire monotonically: once a gap is alive and the next longer one has expired,
    /// the longer gaps need not be waited for.
    fn finish_lifetime_if_bracketed(&mut self) {
        let alive = self.lifetime.iter().rposition(|s| s.result == Some(true));
        let dead = self.lifetime.iter().position(|s| s.result == Some(false));
        let bracketed = match (alive, dead) {
            (Some(a), Some(d)) => d == a + 1,
            (None, Some(0)) => true,
            _ => false,
        };
        if let (true, Some(d)) = (bracketed, dead) {
            for k in d + 1..self.lifetime.len() {
                self.lifetime[k].check_at = None;
            }
            let cut = d;
            self.pending.retain(|p| match p.test {
                Test::LifetimeArm(k) | Test::LifetimeCheck(k) => k <= cut,
                _ => true,
            });
        }
    }

    /// Whether a router (not the server) sits `ttl` hops away, judged from how many routers the
    /// first server's answer crossed; None when that is not known.
    fn hop_is_router(&self, ttl: u8) -> Option<bool> {
        self.server_hops.map(|r| ttl <= r)
    }

    fn local_of(&self, s: SocketId) -> Option<SocketAddr> {
        self.locals.iter().find(|(id, _)| *id == s).map(|x| x.1)
    }

    fn behind_nat(&self) -> Option<bool> {
        let m = self.servers[self.primary?].mapped?;
        let l = self.local_of(S_MAIN)?;
        Some(m != l)
    }

    /// The observations, once [`Prober::is_done`]; also usable for partial results.
    pub fn observations(&self) -> Observations {
        let primary = self.primary;
        let mapped = primary.and_then(|i| self.servers[i].mapped);
        let local = self.local_of(S_MAIN);
        let behind = self.behind_nat();
        let rfc5780 = primary.is_some_and(|i| self.servers[i].rfc5780);

        let (mapping, mapping_note) = if behind == Some(false) {
            (Behaviour::None, None)
        } else if mapped.is_none() {
            (Behaviour::Unknown, Some("no server answered".to_string()))
        } else if rfc5780 {
            match (self.map2, self.map3) {
                (Outcome::Got(m2), _) if Some(m2) == mapped => {
                    (Behaviour::EndpointIndependent, None)
                }
                (Outcome::Got(m2), Outcome::Got(m3)) if m3 == m2 => {
                    (Behaviour::AddressDependent, None)
                }
                (Outcome::Got(_), Outcome::Got(_)) => (Behaviour::AddressAndPortDependent, None),
                _ => (
                    Behaviour::Unknown,
                    Some("the server's alternate address did not answer".to_string()),
                ),
            }
        } else {
            self.mapping_from_servers()
        };

        let (filtering, filtering_note) =
            if mapped.is_none() {
                (Behaviour::Unknown, Some("no server answered".to_string()))
            } else if !rfc5780 && !self.distrusted.is_empty() {
                (
                    Behaviour::Unknown,
                    Some(format!(
                        "no server can be trusted for RFC 5780 behaviour discovery ({}), so \
                         filtering was not tested; give another server with --server",
                        self.distrusted.join("; ")
                    )),
                )
            } else if !rfc5780 {
                (
                    Behaviour::Unknown,
                    Some(
                        "no server supports RFC 5780 behaviour discovery (OTHER-ADDRESS), so \
                     filtering cannot be tested; give one with --server"
                            .to_string(),
                    ),
                )
            } else {
                match (
                    Self::filter_outcome(self.filter_both),
                    Self::filter_outcome(self.filter_port),
                ) {
                    (Outcome::Got(()), _) => (Behaviour::EndpointIndependent, None),
                    (Outcome::NoAnswer, Outcome::Got(())) => (Behaviour::AddressDependent, None),
                    (Outcome::NoAnswer, Outcome::NoAnswer) => {
                        (Behaviour::AddressAndPortDependent, None)
                    }
                    _ => (
                        Behaviour::Unknown,
                        Some(self.notes_filtering.clone().unwrap_or_else(|| {
                            "the server did not honour CHANGE-REQUEST".to_string()
                        })),
                    ),
                }
            };

        let hairpinning = match self.hairpin {
            Outcome::Got(()) => Some(true),
            Outcome::NoAnswer => Some(false),
            _ => None,
        };
        let port_preserved = match (mapped, local, behind) {
            (Some(m), Some(l), Some(true)) => Some(m.port() == l.port()),
            (Some(_), Some(_), Some(false)) => Some(true),
            _ => None,
        };
        // The main socket's mappings towards the primary, then the alternate address and
        // port (tests I, II, III of RFC 5780 §4.3), in the order they were created.
        let mut seq: Vec<u16> = mapped.map(|m| m.port()).into_iter().collect();
        for o in [self.map2, self.map3] {
            if let Outcome::Got(m) = o {
                seq.push(m.port());
            }
        }
        // An endpoint-independent mapping that kept the local port has shown how this NAT
        // allocates. A third mapping that moved anyway is a Linux NAT avoiding a clash with a
        // conntrack entry that an earlier run's filtered answer left on the NAT's own address
        // (about 1 in 300 back-to-back runs in the lab), not another allocation pattern.
        let kept_port = matches!((mapped, local), (Some(m), Some(l)) if m.port() == l.port());
        let port_allocation =
            if behind == Some(true) && !(mapping == Behaviour::EndpointIndependent && kept_port) {
                port_allocation(local.map(|l| l.port()), &seq)
            } else {
                PortAllocation {
                    kind: "preserving",
                    delta: None,
                }
            };
        let lifetime = (!self.lifetime.is_empty()).then(|| Lifetime {
            alive_s: self
                .lifetime
                .iter()
                .filter(|s| s.result == Some(true))
                .map(|s| s.gap.as_secs())
                .max(),
            expired_s: self
                .lifetime
                .iter()
                .filter(|s| s.result == Some(false))
                .map(|s| s.gap.as_secs())
                .min(),
        });
        let mut hops = self.hops.clone();
        hops.sort_by_key(|h| h.ttl);
        Observations {
            udp: self.servers.iter().any(|s| s.answered),
            tcp: self.tcp_ok,
            local_addr: local,
            mapped_addr: mapped,
            primary: primary.map(|i| self.cfg.servers[i]),
            behind_nat: behind,
            mapping,
            mapping_note,
            filtering,
            filtering_note,
            hairpinning,
            port_preserved,
            port_allocation,
            hops,
            lifetime,
            servers: self.servers.clone(),
            ignored: self.ignored.clone(),
        }
    }

    /// RFC 5780 §4.3 needs two addresses of one server; without them, compare what several
    /// servers saw of the same local socket.
    fn mapping_from_servers(&self) -> (Behaviour, Option<String>) {
        let seen: Vec<(SocketAddr, SocketAddr)> = self
            .servers
            .iter()
            .filter_map(|s| s.mapped.map(|m| (s.addr, m)))
            .collect();
        if seen.len() < 2 {
            let why = if self.distrusted.is_empty() {
                "it does not support RFC 5780"
            } else {
                "it is not trusted for RFC 5780 behaviour discovery (see its problems)"
            };
            return (
                Behaviour::Unknown,
                Some(format!(
                    "only one server answered and {why}: mapping needs two servers or one \
                     with two addresses"
                )),
            );
        }
        if seen.iter().all(|(_, m)| *m == seen[0].1) {
            return (
                Behaviour::EndpointIndependent,
                Some(format!("same mapping seen by {} servers", seen.len())),
            );
        }
        let same_ip_differs = seen.iter().any(|(a, m)| {
            seen.iter()
                .any(|(b, n)| a.ip() == b.ip() && a.port() != b.port() && m != n)
        });
        let note = if same_ip_differs {
            "mapping changed between two ports of one server".to_string()
        } else {
            "mapping changed between servers; address-dependent cannot be told apart from \
             address-and-port-dependent without two ports on one server"
                .to_string()
        };
        (Behaviour::AddressAndPortDependent, Some(note))
    }
}

/// How many routers a datagram crossed, from the TTL it arrived with: senders start at 64
/// (Linux, macOS), 128 (Windows) or 255, and every router takes one off.
fn routers_crossed(ttl: u8) -> u8 {
    let initial: u8 = match ttl {
        0..=64 => 64,
        65..=128 => 128,
        _ => 255,
    };
    initial - ttl
}

#[cfg(test)]
mod tests;
