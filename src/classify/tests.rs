//! Drives the prober on a virtual clock through a simulated NAT and a simulated RFC 5780
//! server, with latency and optional loss. Deterministic: seeded RNG, fake instants.

use super::*;
use crate::netsim::Nat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const S1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const S2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

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
    Silent,
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
        if to.ip() == IpAddr::V4(S1) { S2 } else { S1 },
        if to.port() == 3478 { 3479 } else { 3478 },
    );
    let src = match kind {
        Server::Rfc5780 => sa(
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
        Server::BogusOther => Some(sa(S1, 3479)),
        _ => Some(sa(S2, 3479)),
    };
    let r = stun::BindingResponse {
        tid: m.tid,
        mapped: from,
        other_address: other,
        response_origin: Some(src),
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
            let Via::Udp { socket, .. } = t.via else {
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
                    if let Some((src, dest, resp)) = server_answer(world.server, to, from, &data) {
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
        latency: Duration::from_millis(5),
        loss: 0.0,
        rng: StdRng::seed_from_u64(7),
        sockets: BTreeMap::new(),
    }
}

fn cfg() -> ProbeConfig {
    let mut c = ProbeConfig::new(vec![sa(S1, 3478)]);
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
        },
    );
    p.handle_input(
        t0,
        Input::Datagram {
            socket: S_MAIN,
            from: sa(S1, 3478),
            data: &vec![0u8; 70_000],
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
