//! Drives the prober on a virtual clock through a simulated NAT and a simulated RFC 5780
//! server, with latency and optional loss. Deterministic: seeded RNG, fake instants.

use super::*;
use crate::proto::netsim::Nat;
use crate::wire::stun::{self, Change};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const S1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const S2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// A second RFC 5780 server (S3, S4 its two addresses).
const S3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
const S4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 13);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Rfc5780,
    /// Answers Binding only, no OTHER-ADDRESS.
    Plain,
    /// Sends an OTHER-ADDRESS on its own IP (the public-server trap).
    BogusOther,
    /// Claims RFC 5780 but answers CHANGE-REQUEST from its primary address.
    IgnoresChange,
    /// Honours CHANGE-REQUEST but sends no RESPONSE-ORIGIN.
    NoOrigin,
    /// Honours CHANGE-REQUEST but names a private RESPONSE-ORIGIN (a server behind NAT).
    WrongOrigin,
    Silent,
}

/// The other IP of the server pair `ip` belongs to.
fn partner(ip: Ipv4Addr) -> Ipv4Addr {
    match ip {
        S1 => S2,
        S2 => S1,
        S3 => S4,
        _ => S3,
    }
}

fn ip4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => panic!("the simulation is IPv4"),
    }
}

struct World {
    nat: Nat,
    server: Server,
    /// Servers that behave otherwise than `server`, by IP.
    per_ip: BTreeMap<Ipv4Addr, Server>,
    latency: Duration,
    loss: f64,
    rng: StdRng,
    sockets: BTreeMap<SocketId, SocketAddr>,
}

enum Ev {
    ToServer {
        from: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    },
    ToClient {
        from: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

type Answer = (SocketAddr, Option<SocketAddr>, Vec<u8>);

fn server_answer(kind: Server, to: SocketAddr, from: SocketAddr, data: &[u8]) -> Option<Answer> {
    if kind == Server::Silent {
        return None;
    }
    let m = stun::decode(data).ok()?;
    if !m.is_binding_request() {
        return None;
    }
    let change = m.change.unwrap_or_default();
    let (other_ip, other_port) = (
        partner(ip4(to.ip())),
        if to.port() == 3478 { 3479 } else { 3478 },
    );
    let src = match kind {
        Server::Rfc5780 | Server::NoOrigin | Server::WrongOrigin => sa(
            if change.ip { other_ip } else { ip4(to.ip()) },
            if change.port { other_port } else { to.port() },
        ),
        Server::IgnoresChange | Server::BogusOther => to,
        Server::Plain => {
            if change != Change::NONE {
                let e = stun::binding_error(m.tid, 420, "Unknown Attribute").ok()?;
                return Some((to, None, e));
            }
            to
        }
        Server::Silent => unreachable!(),
    };
    let other = match kind {
        Server::Plain => None,
        Server::BogusOther => Some(sa(ip4(to.ip()), 3479)),
        _ => Some(sa(other_ip, other_port)),
    };
    let origin = match kind {
        Server::NoOrigin => None,
        Server::WrongOrigin => Some(sa(Ipv4Addr::new(10, 0, 0, 5), src.port())),
        _ => Some(src),
    };
    let r = stun::BindingResponse {
        tid: m.tid,
        mapped: from,
        other_address: other,
        response_origin: origin,
        software: None,
    };
    // RFC 5780 §7.5: RESPONSE-PORT redirects the answer to another port of the same IP.
    let dest = m.response_port.map(|p| SocketAddr::new(from.ip(), p));
    Some((src, dest, r.encode().ok()?))
}

fn run(world: &mut World, cfg: ProbeConfig) -> (Observations, Duration) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = Prober::new(cfg, now);
    let mut queue: BTreeMap<(Instant, u64), Ev> = BTreeMap::new();
    let mut seq = 0u64;
    for step in 0..100_000 {
        assert!(step < 99_999, "prober did not finish");
        while let Some(t) = p.poll_transmit() {
            let Channel::Udp { socket, .. } = t.via else {
                continue;
            };
            let n = world.sockets.len() as u16;
            let local = *world
                .sockets
                .entry(socket)
                .or_insert_with(|| sa(LOCAL_IP, 50000 + n));
            p.handle_input(
                now,
                Input::LocalAddr {
                    socket,
                    addr: local,
                },
            );
            if world.nat.udp_blocked || world.rng.gen_bool(world.loss) {
                continue;
            }
            if t.dst.ip() == IpAddr::V4(NAT_IP) && world.nat.translate {
                // Hairpin.
                let pub_src = world.nat.outbound(now, local, t.dst);
                if world.nat.hairpin {
                    if let Some(to) = world.nat.inbound(now, pub_src, t.dst.port()) {
                        seq += 1;
                        queue.insert(
                            (now + world.latency, seq),
                            Ev::ToClient {
                                from: pub_src,
                                to,
                                data: t.payload,
                            },
                        );
                    }
                }
                continue;
            }
            let pub_src = world.nat.outbound(now, local, t.dst);
            seq += 1;
            queue.insert(
                (now + world.latency, seq),
                Ev::ToServer {
                    from: pub_src,
                    to: t.dst,
                    data: t.payload,
                },
            );
        }
        if p.is_done() {
            return (p.observations(), now - t0);
        }
        let next_ev = queue.keys().next().map(|k| k.0);
        let next_to = p.poll_timeout();
        let next = match (next_ev, next_to) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => panic!("stuck: nothing scheduled and not done"),
        };
        now = next.max(now);
        if next_ev == Some(next) {
            let key = *queue.keys().next().unwrap();
            match queue.remove(&key).unwrap() {
                Ev::ToServer { from, to, data } => {
                    let kind = world
                        .per_ip
                        .get(&ip4(to.ip()))
                        .copied()
                        .unwrap_or(world.server);
                    if let Some((src, dest, resp)) = server_answer(kind, to, from, &data) {
                        if !world.rng.gen_bool(world.loss) {
                            seq += 1;
                            let to = dest.unwrap_or(from);
                            queue.insert(
                                (now + world.latency, seq),
                                Ev::ToClient {
                                    from: src,
                                    to,
                                    data: resp,
                                },
                            );
                        }
                    }
                }
                Ev::ToClient { from, to, data } => {
                    let local = if to.ip() == IpAddr::V4(NAT_IP) || !world.nat.translate {
                        world.nat.inbound(now, from, to.port())
                    } else {
                        Some(to)
                    };
                    if let Some(local) = local {
                        if let Some((&socket, _)) = world.sockets.iter().find(|(_, a)| **a == local)
                        {
                            p.handle_input(
                                now,
                                Input::Datagram {
                                    socket,
                                    from,
                                    data: &data,
                                    ttl: None,
                                },
                            );
                        }
                    }
                }
            }
        } else {
            p.handle_timeout(now);
        }
    }
    unreachable!()
}

fn world(mapping: Behaviour, filtering: Behaviour) -> World {
    World {
        nat: Nat::new(IpAddr::V4(NAT_IP), mapping, filtering),
        server: Server::Rfc5780,
        per_ip: BTreeMap::new(),
        latency: Duration::from_millis(5),
        loss: 0.0,
        rng: StdRng::seed_from_u64(7),
        sockets: BTreeMap::new(),
    }
}

fn cfg() -> ProbeConfig {
    let mut c = ProbeConfig::new(vec![sa(S1, 3478)], 1);
    c.hops = false;
    c
}

use Behaviour::{AddressAndPortDependent, AddressDependent, EndpointIndependent, Unknown};

#[test]
fn classifies_every_rfc4787_combination() {
    for (m, f) in [
        (EndpointIndependent, EndpointIndependent),
        (EndpointIndependent, AddressDependent),
        (EndpointIndependent, AddressAndPortDependent),
        (AddressDependent, AddressAndPortDependent),
        (AddressAndPortDependent, AddressAndPortDependent),
    ] {
        let mut w = world(m, f);
        let (o, took) = run(&mut w, cfg());
        assert!(o.udp);
        assert_eq!(o.behind_nat, Some(true));
        assert_eq!((o.mapping, o.filtering), (m, f), "{o:#?}");
        assert_eq!(o.port_preserved, Some(m != AddressAndPortDependent));
        assert_eq!(o.hairpinning, Some(false));
        // 10 ms RTT: negative answers after a few RTOs, far below other tools' 3 s waits.
        assert!(took < Duration::from_millis(1000), "took {took:?}");
        assert!(o.servers[0].rfc5780);
    }
}

#[test]
fn port_allocation_patterns() {
    // The simulated symmetric NAT allocates sequentially with a step of 7.
    let mut w = world(AddressAndPortDependent, AddressAndPortDependent);
    let (o, _) = run(&mut w, cfg());
    assert_eq!(
        o.port_allocation,
        PortAllocation {
            kind: "sequential",
            delta: Some(7)
        }
    );
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    let (o, _) = run(&mut w, cfg());
    assert_eq!(o.port_allocation.kind, "preserving");
    assert_eq!(port_allocation(Some(1), &[40000, 12, 61000]).kind, "random");
    assert_eq!(port_allocation(Some(1), &[40000]).kind, "unknown");
    assert_eq!(
        port_allocation(Some(5), &[100, 98, 96]),
        PortAllocation {
            kind: "sequential",
            delta: Some(-2)
        }
    );
    // Other sockets' flows in between (the lab's sequential NAT under natprobe's concurrent
    // tests): the step is what the gaps have in common.
    assert_eq!(
        port_allocation(Some(5), &[30000, 30003, 30005]),
        PortAllocation {
            kind: "sequential",
            delta: Some(1)
        }
    );
    assert_eq!(
        port_allocation(Some(5), &[30000, 30006, 30010]).delta,
        Some(2)
    );
    // Not monotonic, or too far apart: random.
    assert_eq!(
        port_allocation(Some(5), &[30000, 30003, 30001]).kind,
        "random"
    );
    assert_eq!(
        port_allocation(Some(5), &[30000, 30100, 30200]).kind,
        "random"
    );
}

#[test]
fn no_nat_is_mapping_none() {
    let mut w = world(Behaviour::None, EndpointIndependent);
    let (o, _) = run(&mut w, cfg());
    assert_eq!(o.behind_nat, Some(false));
    assert_eq!(o.mapping, Behaviour::None);
    assert_eq!(o.filtering, EndpointIndependent);
    assert_eq!(o.hairpinning, None);
}

#[test]
fn hairpin_is_detected() {
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    w.nat.hairpin = true;
    let (o, _) = run(&mut w, cfg());
    assert_eq!(o.hairpinning, Some(true));
}

#[test]
fn stable_under_loss() {
    for seed in 0..30 {
        let mut w = world(EndpointIndependent, AddressDependent);
        w.loss = 0.05;
        w.rng = StdRng::seed_from_u64(seed);
        let (o, _) = run(&mut w, cfg());
        assert_eq!(
            (o.mapping, o.filtering),
            (EndpointIndependent, AddressDependent),
            "seed {seed}"
        );
    }
}

#[test]
fn bogus_other_address_is_not_trusted() {
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    w.server = Server::BogusOther;
    let (o, _) = run(&mut w, cfg());
    assert_eq!(o.filtering, Unknown);
    assert!(!o.servers[0].rfc5780);
    assert!(
        o.servers[0].problems.iter().any(|p| p.contains("same IP")),
        "{o:#?}"
    );
}

#[test]
fn server_ignoring_change_request_is_not_endpoint_independent_filtering() {
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    w.server = Server::IgnoresChange;
    let (o, _) = run(&mut w, cfg());
    assert_eq!(o.filtering, Unknown, "{o:#?}");
    assert!(o.filtering_note.unwrap().contains("CHANGE-REQUEST"));
}

#[test]
fn plain_servers_compare_mappings() {
    let mut w = world(AddressAndPortDependent, AddressAndPortDependent);
    w.server = Server::Plain;
    let mut c = cfg();
    c.servers = vec![sa(S1, 3478), sa(S2, 3478)];
    let (o, _) = run(&mut w, c.clone());
    assert_eq!(o.mapping, AddressAndPortDependent);
    assert_eq!(o.filtering, Unknown);
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    w.server = Server::Plain;
    let (o, _) = run(&mut w, c);
    assert_eq!(o.mapping, EndpointIndependent);
}

#[test]
fn udp_blocked_ends_within_deadline() {
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    w.nat.udp_blocked = true;
    let (o, took) = run(&mut w, cfg());
    assert!(!o.udp);
    assert_eq!(o.tcp, Some(false), "TCP is tried and (here) gets no answer");
    assert!(took <= Duration::from_millis(2100), "took {took:?}");
}

#[test]
fn silent_server_gives_no_answer() {
    let mut w = world(EndpointIndependent, AddressAndPortDependent);
    w.server = Server::Silent;
    let (o, _) = run(&mut w, cfg());
    assert!(!o.udp);
    assert_eq!(o.mapping, Unknown);
}

#[test]
fn junk_is_ignored_and_counted() {
    let t0 = Instant::now();
    let mut p = Prober::new(cfg(), t0);
    let _ = p.poll_transmit();
    p.handle_input(
        t0,
        Input::Datagram {
            socket: S_MAIN,
            from: sa(S1, 3478),
            data: b"garbage",
            ttl: None,
        },
    );
    let wrong = stun::BindingResponse {
        tid: [9; 12],
        mapped: sa(NAT_IP, 1),
        other_address: None,
        response_origin: None,
        software: None,
    };
    p.handle_input(
        t0,
        Input::Datagram {
            socket: S_MAIN,
            from: sa(S1, 3478),
            data: &wrong.encode().unwrap(),
            ttl: None,
        },
    );
    p.handle_input(
        t0,
        Input::Datagram {
            socket: S_MAIN,
            from: sa(S1, 3478),
            data: &vec![0u8; 70_000],
            ttl: None,
        },
    );
    let o = p.observations();
    assert_eq!(o.ignored.len(), 3, "{o:#?}");
    assert!(!o.udp);
}

#[test]
fn lifetime_search_brackets_the_timeout() {
    for (expire, alive, dead) in [
        (17, Some(15), Some(20)),
        (7, Some(5), Some(10)),
        (3, None, Some(5)),
    ] {
        let mut w = world(EndpointIndependent, AddressAndPortDependent);
        w.nat.lifetime = Some(Duration::from_secs(expire));
        let mut c = cfg();
        c.lifetime_max = Some(Duration::from_secs(60));
        let (o, took) = run(&mut w, c);
        let l = o.lifetime.expect("lifetime searched");
        assert_eq!(
            (l.alive_s, l.expired_s),
            (alive, dead),
            "expire after {expire} s"
        );
        // Stops once bracketed instead of waiting for the 60 s gap.
        assert!(
            took < Duration::from_secs(dead.unwrap() + 2),
            "took {took:?}"
        );
    }
}

/// RFC 5780 §7.3: a server whose RESPONSE-ORIGIN is missing, or names another address than
/// the one its answer came from, is reported and not used for behaviour discovery — although
/// (here) it honours CHANGE-REQUEST well enough that trusting it would give a class.
#[test]
fn missing_or_wrong_response_origin_is_reported_not_trusted() {
    for (server, says) in [
        (Server::NoOrigin, "no RESPONSE-ORIGIN"),
        (Server::WrongOrigin, "RESPONSE-ORIGIN says 10.0.0.5:3478"),
    ] {
        let mut w = world(EndpointIndependent, AddressDependent);
        w.server = server;
        let (o, _) = run(&mut w, cfg());
        assert!(o.udp);
        assert!(!o.servers[0].rfc5780, "{server:?}: {o:#?}");
        assert!(
            o.servers[0]
                .problems
                .iter()
                .any(|p| p.contains(says) && p.contains("not trusted")),
            "{server:?}: {o:#?}"
        );
        assert_eq!(o.filtering, Unknown, "{server:?}: {o:#?}");
        let note = o.filtering_note.clone().unwrap();
        assert!(note.contains("RESPONSE-ORIGIN"), "{note}");
        // Its alternate address is not used for the mapping either; one server cannot tell.
        assert_eq!(o.mapping, Unknown, "{server:?}: {o:#?}");
        assert!(o.mapping_note.unwrap().contains("not trusted"));
    }
    // The same server with a right RESPONSE-ORIGIN is trusted: the simulation can tell.
    let (o, _) = run(&mut world(EndpointIndependent, AddressDependent), cfg());
    assert_eq!(
        (o.mapping, o.filtering),
        (EndpointIndependent, AddressDependent)
    );
    assert!(o.servers[0].problems.is_empty(), "{o:#?}");
}

/// An untrusted server first in the list does not stop a trustworthy one from classifying.
#[test]
fn another_trustworthy_server_gives_filtering() {
    for bad in [Server::NoOrigin, Server::WrongOrigin] {
        let mut w = world(EndpointIndependent, AddressDependent);
        w.server = bad;
        w.per_ip.insert(S3, Server::Rfc5780);
        w.per_ip.insert(S4, Server::Rfc5780);
        let mut c = cfg();
        c.servers = vec![sa(S1, 3478), sa(S3, 3478)];
        let (o, _) = run(&mut w, c);
        assert_eq!(
            (o.mapping, o.filtering),
            (EndpointIndependent, AddressDependent),
            "{bad:?}: {o:#?}"
        );
        assert_eq!(o.primary, Some(sa(S3, 3478)));
        assert!(!o.servers[0].rfc5780);
        assert!(o.servers[1].rfc5780);
        assert!(o.servers[0]
            .problems
            .iter()
            .any(|p| p.contains("RESPONSE-ORIGIN")));
    }
}

/// One run's path probes, as in the lab: a home router at hop 1; with `carrier`, the carrier's
/// NAT at hop 2 (100.64.1.1), whose ICMP budget earlier runs have spent (Linux: a token per
/// second per destination, burst 6) and whose one token comes `token_at` after the start;
/// then "the internet", which drops what has fewer than two hops left without a word. The
/// server's answers arrive with TTL 64 minus the routers crossed. Returns the observations,
/// the run's length, and when (after the start) the carrier's Time Exceeded came and the
/// hairpin probe went out.
fn path_run(
    carrier: bool,
    token_at: Duration,
) -> (Observations, Duration, Option<Duration>, Option<Duration>) {
    let t0 = Instant::now();
    let mut c = cfg();
    c.hops = true;
    let mut p = Prober::new(c, t0);
    let server = sa(S1, 3478);
    let mapped = sa(NAT_IP, 40000);
    let routers: u8 = if carrier { 2 } else { 1 };
    let carrier_ip = IpAddr::V4(Ipv4Addr::new(100, 64, 1, 1));
    let mut tokens = 0u32;
    let mut token_time = Some(t0 + token_at);
    let (mut hop2_found_at, mut hairpin_sent_at) = (None, None);
    let mut now = t0;
    for step in 0.. {
        assert!(step < 10_000, "prober did not finish");
        if token_time.is_some_and(|t| t <= now) {
            tokens += 1;
            token_time = None;
        }
        while let Some(t) = p.poll_transmit() {
            let Channel::Udp { socket, ttl } = t.via else {
                continue;
            };
            let addr = sa(LOCAL_IP, 50000 + socket.0);
            p.handle_input(now, Input::LocalAddr { socket, addr });
            let req = stun::decode(&t.payload).unwrap();
            let answer = |other: Option<SocketAddr>| {
                stun::BindingResponse {
                    tid: req.tid,
                    mapped: sa(NAT_IP, 40000 + socket.0),
                    other_address: other,
                    response_origin: Some(t.dst),
                    software: None,
                }
                .encode()
                .unwrap()
            };
            let icmp = |p: &mut Prober, kind, offender| {
                p.handle_input(
                    now,
                    Input::IcmpError {
                        socket,
                        kind,
                        offender,
                        original: &t.payload,
                    },
                )
            };
            match ttl {
                Some(1) => icmp(
                    &mut p,
                    IcmpKind::TimeExceeded,
                    IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
                ),
                Some(2) if carrier && tokens > 0 => {
                    tokens -= 1;
                    hop2_found_at.get_or_insert(now - t0);
                    icmp(&mut p, IcmpKind::TimeExceeded, carrier_ip);
                }
                // The internet takes two more hops off, silently.
                Some(t) if t <= routers + 2 => {}
                Some(_) => {
                    let data = answer(None);
                    let ttl = Some(64 - routers);
                    p.handle_input(
                        now,
                        Input::Datagram {
                            socket,
                            from: server,
                            data: &data,
                            ttl,
                        },
                    );
                }
                None if t.dst == mapped => {
                    // Not hairpinned: the NAT that owns the address answers port unreachable,
                    // from the same budget, when it has a token.
                    hairpin_sent_at.get_or_insert(now - t0);
                    if !carrier || tokens > 0 {
                        tokens = tokens.saturating_sub(1);
                        icmp(&mut p, IcmpKind::Unreachable, mapped.ip());
                    }
                }
                None if t.dst == server && socket == S_MAIN => {
                    let data = answer(Some(sa(S2, 3479)));
                    let ttl = Some(64 - routers);
                    p.handle_input(
                        now,
                        Input::Datagram {
                            socket,
                            from: server,
                            data: &data,
                            ttl,
                        },
                    );
                }
                // The other tests get no answer: port-restricted NATs.
                None => {}
            }
        }
        if p.is_done() {
            break;
        }
        let mut next = p.poll_timeout().expect("not done, so a timer is set");
        if let Some(t) = token_time {
            next = next.min(t);
        }
        now = next.max(now);
        p.handle_timeout(now);
    }
    (p.observations(), now - t0, hop2_found_at, hairpin_sent_at)
}

/// The lab's `cgnat` kind, run after run: the carrier's one token in the next second must go
/// to the TTL-2 path probe — retried until it comes, although nothing beyond the carrier
/// answers — and not to the port unreachable that the hairpin probe to the carrier's own
/// public address draws.
#[test]
fn carrier_hop_behind_a_spent_icmp_budget_is_still_found() {
    for ms in [0u64, 100, 300, 400, 600, 999] {
        let (o, took, found, hairpin) = path_run(true, Duration::from_millis(ms));
        let hop = Hop {
            ttl: 2,
            addr: IpAddr::V4(Ipv4Addr::new(100, 64, 1, 1)),
        };
        assert!(o.hops.contains(&hop), "token at {ms} ms: {:?}", o.hops);
        assert!(
            crate::proto::verdict::cgnat(&o, None).cgnat,
            "token at {ms} ms"
        );
        assert!(
            hairpin.expect("hairpin tested") >= found.unwrap(),
            "token at {ms} ms: the hairpin probe went out before the path probe was done"
        );
        assert_eq!(o.hairpinning, Some(false));
        // The wait is bounded: the retries span just over the second a token takes.
        assert!(took < Duration::from_millis(2200), "took {took:?}");
    }
}

/// Behind one NAT the silent hops are at or beyond the server's distance (the lab's internet
/// drops low-TTL datagrams without a word): nothing is retried, nothing waits, and the run
/// stays as fast as its filtering tests.
#[test]
fn silent_hops_beyond_the_server_are_not_waited_for() {
    let (o, took, _, hairpin) = path_run(false, Duration::ZERO);
    assert_eq!(o.hops.len(), 1, "{:?}", o.hops);
    assert!(!crate::proto::verdict::cgnat(&o, None).cgnat);
    assert_eq!(o.hairpinning, Some(false));
    // The hairpin probe goes out with the other follow-up tests, not after the hop probes.
    assert!(hairpin.unwrap() < Duration::from_millis(50), "{hairpin:?}");
    assert!(took < Duration::from_millis(600), "took {took:?}");
}

/// A fresh socket may get the local port of an earlier run's socket whose mapping — and the
/// filter state it opened towards where a CHANGE-REQUEST answer comes from — the NAT still
/// keeps (the lab's restricted NAT: 2 minutes). Each filtering test's second fresh socket keeps
/// such a run from claiming a more open filter than the NAT has.
#[test]
fn an_earlier_runs_mapping_on_a_reused_port_does_not_open_the_filter() {
    for (f, earlier_dst) in [
        (AddressDependent, sa(S2, 3479)),
        (AddressAndPortDependent, sa(S1, 3479)),
    ] {
        for port in 50000..50006 {
            let mut w = world(EndpointIndependent, f);
            w.nat
                .outbound(Instant::now(), sa(LOCAL_IP, port), earlier_dst);
            let (o, _) = run(&mut w, cfg());
            assert_eq!(
                (o.mapping, o.filtering),
                (EndpointIndependent, f),
                "earlier flow on port {port}: {o:#?}"
            );
        }
    }
}

/// A Linux NAT moves one flow of an endpoint-independent, port-preserving mapping to another
/// port when a conntrack entry (left by an earlier run's filtered answer on the NAT's own
/// address) holds the tuple: the allocation is still "preserving", not "random".
#[test]
fn one_moved_flow_of_a_preserving_nat_is_still_preserving() {
    let t0 = Instant::now();
    let mut p = Prober::new(cfg(), t0);
    let mut now = t0;
    for step in 0.. {
        assert!(step < 1000, "prober did not finish");
        while let Some(t) = p.poll_transmit() {
            let Channel::Udp { socket, .. } = t.via else {
                continue;
            };
            let addr = sa(LOCAL_IP, 50000 + socket.0);
            p.handle_input(now, Input::LocalAddr { socket, addr });
            if socket != S_MAIN || t.dst.ip() == IpAddr::V4(NAT_IP) {
                continue; // filtering tests and hairpin: filtered
            }
            let req = stun::decode(&t.payload).unwrap();
            // Test III (the alternate address and port) found its tuple taken.
            let port = if t.dst == sa(S2, 3479) { 50007 } else { 50000 };
            let data = stun::BindingResponse {
                tid: req.tid,
                mapped: sa(NAT_IP, port),
                other_address: Some(sa(S2, 3479)),
                response_origin: Some(t.dst),
                software: None,
            }
            .encode()
            .unwrap();
            let (from, ttl) = (t.dst, None);
            p.handle_input(
                now,
                Input::Datagram {
                    socket,
                    from,
                    data: &data,
                    ttl,
                },
            );
        }
        if p.is_done() {
            break;
        }
        now = p.poll_timeout().unwrap().max(now);
        p.handle_timeout(now);
    }
    let o = p.observations();
    assert_eq!(o.mapping, EndpointIndependent, "{o:#?}");
    assert_eq!(o.port_allocation.kind, "preserving", "{o:#?}");
}

/// The transaction ids come from the configured seed: the same seed gives the same requests,
/// another seed other ids.
#[test]
fn transaction_ids_follow_the_seed() {
    let t0 = Instant::now();
    let sent = |seed: u64| {
        let mut c = ProbeConfig::new(vec![sa(S1, 3478), sa(S3, 3478)], seed);
        c.hops = true;
        let mut p = Prober::new(c, t0);
        std::iter::from_fn(|| p.poll_transmit()).collect::<Vec<_>>()
    };
    let (a, b, c) = (sent(7), sent(7), sent(8));
    assert_eq!(a.len(), 2 + defaults::MAX_HOP_TTL as usize);
    assert_eq!(a, b);
    let tids = |v: &[Transmit]| -> Vec<Tid> {
        v.iter()
            .map(|t| stun::decode(&t.payload).unwrap().tid)
            .collect()
    };
    let mut unique = tids(&a);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), a.len(), "every request has its own id");
    assert!(tids(&a).iter().zip(&tids(&c)).all(|(x, y)| x != y));
}

/// One run probes each address once, in the order given, in the first address's family.
#[test]
fn probe_targets_keep_one_family_and_no_duplicates() {
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let a = sa(S1, 3478);
    let b = sa(S3, 3478);
    assert_eq!(probe_targets([a, v6, b, a]), vec![a, b]);
    assert_eq!(probe_targets([v6, a, v6]), vec![v6]);
    assert_eq!(probe_targets([]), Vec::<SocketAddr>::new());
}

/// RFC 792 types: 11 Time Exceeded, 3 Destination Unreachable; the rest are not used.
#[test]
fn icmpv4_types() {
    assert_eq!(IcmpKind::from_icmpv4_type(11), Some(IcmpKind::TimeExceeded));
    assert_eq!(IcmpKind::from_icmpv4_type(3), Some(IcmpKind::Unreachable));
    for other in [0, 4, 5, 8, 12] {
        assert_eq!(IcmpKind::from_icmpv4_type(other), None);
    }
}

/// Nothing resolved: nothing known, and the notes say why.
#[test]
fn unresolved_observations_know_nothing() {
    let o = Observations::unresolved();
    assert!(!o.udp && o.behind_nat.is_none() && o.servers.is_empty());
    assert_eq!((o.mapping, o.filtering), (Unknown, Unknown));
    assert_eq!(o.port_allocation, PortAllocation::UNKNOWN);
    assert!(o.mapping_note.unwrap().contains("resolved"));
}
