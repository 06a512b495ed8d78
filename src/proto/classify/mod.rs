//! NAT behaviour discovery (RFC 5780 §4, terms from RFC 4787) as a sans-IO state machine.
//!
//! The [`Prober`] never touches a socket or a clock. Its driver (`crate::net::natprobe`) feeds it
//! datagrams, ICMP errors and TCP answers with the instant they arrived
//! ([`Prober::handle_input`]), asks what to send ([`Prober::poll_transmit`]) and when to wake
//! it ([`Prober::poll_timeout`], [`Prober::handle_timeout`]). Unit tests drive it with a fake
//! clock and a simulated NAT (see `tests` below). STUN transaction ids come from an RNG seeded
//! by the driver ([`ProbeConfig::seed`]), so a test run is repeatable.
//!
//! All tests start as soon as what they depend on is known: the Binding requests to every
//! server at once; the mapping, filtering, hairpin and path tests together as soon as the first
//! RFC 5780 server has answered, each on its own fresh local socket (STUNTMAN's advice: one
//! test's mapping must not open another test's filter).
//!
//! This file holds the types the driver exchanges with the [`Prober`] and the prober's state;
//! its behaviour is split by concern:
//! - `prober`: construction, the event loop interface (input, timers, output queue);
//! - `plan`: which tests start when (phase 2 after the first RFC 5780 answer, the hairpin
//!   probe after the path probes);
//! - `answers`: what each STUN answer, error or silence means for its test;
//! - `hops`: TTL-limited path probes and their ICMP errors (CGNAT detection);
//! - `lifetime`: the binding-lifetime search;
//! - `report`: turning the state into [`Observations`] (mapping, filtering, hairpinning);
//! - `ipv6`: the IPv6 run's observations as the report's `ipv6` object, merged into the
//!   verdict (the driver runs one prober per family);
//! - `observations`, `ports`: the result types and the port-allocation analysis.

mod answers;
mod hops;
mod ipv6;
mod lifetime;
mod observations;
mod plan;
mod ports;
mod prober;
mod report;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::defaults;
use crate::proto::stun::Transaction;
use crate::wire::stun::Tid;

pub use self::ipv6::{merge_verdict, Ipv6Report, VerdictParts};
use self::lifetime::LifetimeSlot;
pub use self::observations::{Behaviour, Hop, Lifetime, Observations, ServerReport};
pub use self::ports::{port_allocation, PortAllocation};
pub use self::prober::probe_targets;

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
pub enum Channel {
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
    pub via: Channel,
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
    /// Result of a [`Channel::Tcp`] exchange.
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

impl IcmpKind {
    /// The kind of an ICMPv4 error from its type (RFC 792); None for the types natprobe does
    /// not use (source quench, redirect, parameter problem…).
    pub fn from_icmpv4_type(icmp_type: u8) -> Option<IcmpKind> {
        match icmp_type {
            11 => Some(IcmpKind::TimeExceeded),
            3 => Some(IcmpKind::Unreachable),
            _ => None,
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
    /// Seed of the RNG that draws the STUN transaction ids. RFC 8489 §6 wants them uniformly
    /// random so that an off-path attacker cannot forge answers: drivers pass
    /// `rand::random()`; tests a fixed value, which makes a run repeatable.
    pub seed: u64,
}

impl ProbeConfig {
    /// Defaults for the given servers, with transaction ids drawn from `seed`.
    pub fn new(servers: Vec<SocketAddr>, seed: u64) -> Self {
        ProbeConfig {
            servers,
            first_timeout: defaults::FIRST_ANSWER_TIMEOUT,
            hops: true,
            lifetime_max: None,
            seed,
        }
    }
}

/// One test of the run, and which server, socket pair, TTL or gap it is about.
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

/// A request in flight: its test, where it goes, and its retransmission state.
#[derive(Debug)]
struct Pending {
    test: Test,
    via: Channel,
    dst: SocketAddr,
    tid: Tid,
    payload: Vec<u8>,
    txn: Transaction,
}

/// Where one follow-up test stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome<T> {
    Waiting,
    Got(T),
    NoAnswer,
    /// The server did not do what was asked (ignored CHANGE-REQUEST, error response…).
    Bogus,
}

/// The discovery state machine.
#[derive(Debug)]
pub struct Prober {
    cfg: ProbeConfig,
    /// Draws the transaction ids (seeded from [`ProbeConfig::seed`]).
    rng: StdRng,
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

#[cfg(test)]
mod tests;
