//! The tokio driver for [`crate::proto::classify::Prober`]: resolves servers, owns the sockets and
//! the timers, and builds natprobe's report. No protocol decisions are made here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::defaults;
use crate::net::sys::{
    global_ipv6_addrs, local_ip_towards, prefer_ipv4, read_errqueue, recv_with_ttl, resolve_all,
    set_recverr, set_recvttl,
};
pub use crate::net::sys::{parse_server, ProbeError};
use crate::proto::classify::{
    merge_verdict, probe_targets, Behaviour, Channel, Hop, IcmpKind, Input, Ipv6Report, Lifetime,
    Observations, PortAllocation, ProbeConfig, Prober, SocketId, VerdictParts,
};
use crate::proto::verdict::{self, CgnatFinding, Verdict};

/// JSON schema version of [`NatprobeReport`]. Bump on any incompatible change. 2: the `ipv6`
/// object, and `verdict.can_host` true when either family can host.
pub const SCHEMA: u32 = 2;

/// Options for one run, already validated.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Servers as given (`HOST[:PORT]`).
    pub servers: Vec<String>,
    /// Give-up for the first answer.
    pub first_timeout: Duration,
    /// Search the binding lifetime up to this gap.
    pub lifetime_max: Option<Duration>,
    /// Also ask the default gateway which port-mapping protocols it speaks.
    pub portmap: bool,
}

/// One server in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerEntry {
    /// The name as given.
    pub name: String,
    /// The address probed (null when it did not resolve).
    pub addr: Option<SocketAddr>,
    /// Round-trip time in milliseconds (null when not measured).
    pub rtt_ms: Option<f64>,
    /// Trusted for RFC 5780 behaviour discovery: a valid OTHER-ADDRESS and a RESPONSE-ORIGIN
    /// equal to the address the answer came from.
    pub rfc5780: bool,
    /// Answered over UDP.
    pub answered: bool,
    /// What it said we are mapped to.
    pub mapped: Option<SocketAddr>,
    /// OTHER-ADDRESS as sent.
    pub other_address: Option<SocketAddr>,
    /// SOFTWARE as sent.
    pub software: Option<String>,
    /// Problems with this server.
    pub problems: Vec<String>,
}

/// natprobe's report: the JSON keys are a contract (`schema` versions it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NatprobeReport {
    /// Schema version.
    pub schema: u32,
    /// Whether any server answered over UDP.
    pub udp: bool,
    /// Whether STUN over TCP answered (null when not needed).
    pub tcp: Option<bool>,
    /// This host's address on the path to the server.
    pub local_addr: Option<SocketAddr>,
    /// The address strangers see.
    pub mapped_addr: Option<SocketAddr>,
    /// Whether an address translation happens: true only when a server saw this host at
    /// another address than its own. Always a bool (the contract); `false` together
    /// with `udp: false` means nothing is known, not "no NAT".
    pub behind_nat: bool,
    /// Carrier-grade NAT detected.
    pub cgnat: bool,
    /// Why natprobe thinks there is a CGNAT.
    pub cgnat_evidence: Vec<String>,
    /// Mapping behaviour.
    pub mapping: Behaviour,
    /// Why the mapping is what it is when it was not measured directly.
    pub mapping_note: Option<String>,
    /// Filtering behaviour.
    pub filtering: Behaviour,
    /// Why filtering is unknown.
    pub filtering_note: Option<String>,
    /// Hairpinning.
    pub hairpinning: Option<bool>,
    /// Port preservation.
    pub port_preserved: Option<bool>,
    /// Port allocation pattern (`kind`, `delta`).
    pub port_allocation: PortAllocation,
    /// Longest idle gap the mapping survived (seconds; only with `--lifetime`).
    pub binding_lifetime_s: Option<u64>,
    /// The bracket found by the lifetime search.
    pub binding_lifetime: Option<Lifetime>,
    /// Routers on the path (TTL-limited probes).
    pub hops: Vec<Hop>,
    /// Servers, in the order given.
    pub servers: Vec<ServerEntry>,
    /// The answer.
    pub verdict: Verdict,
    /// What was tried, in words (useful when nothing answered).
    pub tried: Vec<String>,
    /// Datagrams ignored and why (junk, wrong transaction, bogus source).
    pub ignored: Vec<String>,
    /// The router's port-mapping protocols (`portmap probe`; null with --no-portmap or
    /// without a default gateway).
    pub portmap: Option<crate::proto::portmap::ProbeReport>,
    /// IPv6, probed at the same time (everything above is IPv4).
    pub ipv6: Ipv6Report,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

impl NatprobeReport {
    /// Exit status per the man page: 0 can host, 1 cannot, 2 no answer.
    pub fn exit_code(&self) -> i32 {
        if !self.udp && !self.ipv6.udp {
            crate::exit::NO_ANSWER
        } else if self.verdict.can_host {
            crate::exit::OK
        } else {
            crate::exit::CANNOT_HOST
        }
    }
}

enum Event {
    Datagram(SocketId, SocketAddr, Vec<u8>, Option<u8>, Instant),
    Icmp(SocketId, IcmpKind, IpAddr, Vec<u8>, Instant),
    Tcp(SocketAddr, Result<Vec<u8>, String>, Instant),
}

/// Runs one probe and builds the report. `progress` is told (done, total) during a lifetime
/// search. IPv4 only (the family of the first address, as before IPv6 had its own run); the
/// report's `ipv6` says it was not probed.
pub async fn run(
    opts: &ProbeOptions,
    progress: impl FnMut(usize, usize),
) -> Result<NatprobeReport, ProbeError> {
    run_families(opts, false, progress).await
}

/// Like [`run`], probing IPv4 and IPv6 at once (natprobe): the top level is IPv4, `ipv6` the
/// other run. A missing IPv6 (no address beyond link-local, no route) is known before
/// anything is sent, so it never makes the run longer.
pub async fn run_dual(
    opts: &ProbeOptions,
    progress: impl FnMut(usize, usize),
) -> Result<NatprobeReport, ProbeError> {
    run_families(opts, true, progress).await
}

async fn run_families(
    opts: &ProbeOptions,
    dual: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<NatprobeReport, ProbeError> {
    let t0 = Instant::now();
    let mut parsed = Vec::new();
    for s in &opts.servers {
        parsed.push(parse_server(s)?);
    }
    let lookups = futures_join_all(
        parsed
            .into_iter()
            .map(|(h, p)| async move { resolve_all(&h, p).await })
            .collect::<Vec<_>>(),
    )
    .await;
    let mut tried = Vec::new();
    let mut entries: Vec<ServerEntry> = Vec::new();
    let mut all_addrs: Vec<SocketAddr> = Vec::new();
    for (name, r) in opts.servers.iter().zip(lookups) {
        let addr = match r {
            Ok(all) => {
                all_addrs.extend(&all);
                // The entry names the address the top level probes: IPv4 first.
                prefer_ipv4(&all)
            }
            Err(e) => {
                tried.push(format!("{name}: {e}"));
                None
            }
        };
        entries.push(ServerEntry {
            name: name.clone(),
            addr,
            rtt_ms: None,
            rfc5780: false,
            answered: false,
            mapped: None,
            other_address: None,
            software: None,
            problems: Vec::new(),
        });
    }
    let addrs = if dual {
        probe_targets(all_addrs.iter().copied().filter(SocketAddr::is_ipv4))
    } else {
        probe_targets(entries.iter().filter_map(|e| e.addr))
    };
    if dual && addrs.is_empty() && !all_addrs.is_empty() {
        tried.push("no server has an IPv4 address (IPv6 is probed on its own: see ipv6)".into());
    }
    let stun = async {
        if addrs.is_empty() {
            Ok(None)
        } else {
            let mut cfg = ProbeConfig::new(addrs.clone(), rand::random());
            cfg.first_timeout = opts.first_timeout;
            cfg.lifetime_max = opts.lifetime_max;
            drive(cfg, &mut tried, &mut progress).await.map(Some)
        }
    };
    let v6 = async {
        if !dual {
            return Ipv6Report::missing(None, "not probed".to_string());
        }
        probe_ipv6(
            probe_targets(all_addrs.iter().copied().filter(SocketAddr::is_ipv6)),
            opts.first_timeout,
        )
        .await
    };
    // The router's port-mapping protocols, asked at the same time (read-only).
    let portmap = async {
        if !opts.portmap {
            return None;
        }
        let ctx = crate::net::portmap::Ctx::new(None, defaults::PORTMAP_TIMEOUT, None).ok()?;
        Some(crate::net::portmap::probe(&ctx).await)
    };
    let (obs, v6, portmap) = tokio::join!(stun, v6, portmap);
    let mut rep = build_report(obs?, entries, tried, t0.elapsed(), portmap);
    let v = &mut rep.verdict;
    merge_verdict(
        VerdictParts {
            can_host: &mut v.can_host,
            reasons: &mut v.reasons,
            advice: &mut v.advice,
        },
        &v6,
    );
    rep.ipv6 = v6;
    Ok(rep)
}

/// The IPv6 run: first what is known without sending (an address beyond link-local, a server
/// with an IPv6 address, a route to it), then the same classification as IPv4 without the
/// lifetime search.
async fn probe_ipv6(targets: Vec<SocketAddr>, first_timeout: Duration) -> Ipv6Report {
    if global_ipv6_addrs().is_empty() {
        return Ipv6Report::missing(
            None,
            "no global IPv6 address (this machine has only link-local IPv6, or none)".into(),
        );
    }
    let Some(&first) = targets.first() else {
        return Ipv6Report::missing(None, "no server has an IPv6 address (AAAA)".into());
    };
    let address = match local_ip_towards(first) {
        Ok(ip) => ip,
        Err(e) => return Ipv6Report::missing(None, format!("no IPv6 route to {first}: {e}")),
    };
    let mut cfg = ProbeConfig::new(targets, rand::random());
    cfg.first_timeout = first_timeout;
    let mut tried = Vec::new();
    match drive(cfg, &mut tried, &mut |_, _| {}).await {
        Ok(obs) => Ipv6Report::from_observations(&obs, address),
        Err(e) => Ipv6Report::missing(Some(address), format!("IPv6: {e}")),
    }
}

/// Joins futures without pulling in the `futures` crate: spawn each on the local runtime.
async fn futures_join_all<F, T>(futs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        // A lookup task cannot panic short of a runtime bug; treat that as fatal.
        out.push(h.await.expect("lookup task"));
    }
    out
}

async fn drive(
    cfg: ProbeConfig,
    tried: &mut Vec<String>,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Observations, ProbeError> {
    let servers = cfg.servers.clone();
    let first_timeout = cfg.first_timeout;
    let local_ip = local_ip_towards(servers[0]).ok();
    if local_ip.is_none() {
        tried.push(format!(
            "no route to {}: this machine seems to have no network",
            servers[0]
        ));
    }
    let mut prober = Prober::new(cfg, Instant::now());
    let (tx, mut rx) = mpsc::channel::<Event>(defaults::NATPROBE_EVENT_QUEUE);
    let mut sockets: HashMap<SocketId, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = Vec::new();
    let mut last_progress = None;
    loop {
        while let Some(t) = prober.poll_transmit() {
            match t.via {
                Channel::Udp { socket, ttl } => {
                    let sock = match sockets.get(&socket) {
                        Some(s) => s.clone(),
                        None => {
                            let bind: SocketAddr = if t.dst.is_ipv4() {
                                (Ipv4Addr::UNSPECIFIED, 0).into()
                            } else {
                                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                            };
                            let s =
                                Arc::new(UdpSocket::bind(bind).await.map_err(ProbeError::Socket)?);
                            // Every socket reads ICMP errors: Time Exceeded for the path
                            // probes, Destination Unreachable for a quick "no" (hairpin
                            // probe, closed server port).
                            set_recverr(&s);
                            set_recvttl(&s, t.dst.is_ipv4());
                            let port = s.local_addr().map_err(ProbeError::Socket)?.port();
                            let ip = local_ip.unwrap_or(bind.ip());
                            prober.handle_input(
                                Instant::now(),
                                Input::LocalAddr {
                                    socket,
                                    addr: SocketAddr::new(ip, port),
                                },
                            );
                            tasks.push(tokio::spawn(recv_loop(
                                socket,
                                s.clone(),
                                true,
                                tx.clone(),
                            )));
                            sockets.insert(socket, s.clone());
                            s
                        }
                    };
                    if let Some(ttl) = ttl {
                        let _ = sock.set_ttl(ttl as u32);
                    }
                    if let Err(e) = sock.send_to(&t.payload, t.dst).await {
                        let msg = format!("UDP to {}: {e}", t.dst);
                        if !tried.contains(&msg) {
                            tried.push(msg);
                        }
                    }
                }
                Channel::Tcp => {
                    tasks.push(tokio::spawn(tcp_exchange(t.dst, t.payload, tx.clone())));
                }
            }
        }
        if let Some((d, n)) = prober.lifetime_progress() {
            if last_progress != Some((d, n)) {
                progress(d, n);
                last_progress = Some((d, n));
            }
        }
        if prober.is_done() {
            break;
        }
        let Some(deadline) = prober.poll_timeout() else {
            break;
        };
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Datagram(socket, from, data, ttl, at) => prober.handle_input(at, Input::Datagram { socket, from, data: &data, ttl }),
                    Event::Icmp(socket, kind, offender, original, at) => prober.handle_input(at, Input::IcmpError { socket, kind, offender, original: &original }),
                    Event::Tcp(server, result, at) => {
                        let r = match &result { Ok(b) => Ok(b.as_slice()), Err(e) => Err(e.as_str()) };
                        if let Err(e) = &result {
                            tried.push(format!("STUN over TCP to {server}: {e}"));
                        }
                        prober.handle_input(at, Input::TcpAnswer { server, result: r });
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => prober.handle_timeout(Instant::now()),
        }
    }
    for t in tasks {
        t.abort();
    }
    let obs = prober.observations();
    for s in &obs.servers {
        if !s.answered {
            tried.push(format!(
                "STUN Binding over UDP to {}: no answer within {} ms",
                s.addr,
                first_timeout.as_millis()
            ));
        }
    }
    Ok(obs)
}

async fn recv_loop(id: SocketId, s: Arc<UdpSocket>, errqueue: bool, tx: mpsc::Sender<Event>) {
    // One byte more than the largest datagram natkit accepts, so truncation is visible.
    let mut buf = vec![0u8; defaults::MAX_DATAGRAM + 1];
    let fd = s.as_raw_fd();
    loop {
        let ev = tokio::select! {
            r = s.async_io(tokio::io::Interest::READABLE, || recv_with_ttl(fd, &mut buf)) => match r {
                Ok((n, from, ttl)) => Event::Datagram(id, from, buf[..n].to_vec(), ttl, Instant::now()),
                // With IP_RECVERR an ICMP error also surfaces here once (and is consumed);
                // its details are read from the error queue below.
                Err(_) => continue,
            },
            // `async_io` clears the error readiness when the queue is empty (WouldBlock), so
            // this cannot spin.
            r = s.async_io(tokio::io::Interest::ERROR, || {
                read_errqueue(fd).ok_or_else(|| std::io::ErrorKind::WouldBlock.into())
            }), if errqueue => match r {
                Ok((ip, icmp_type, payload)) => match IcmpKind::from_icmpv4_type(icmp_type) {
                    Some(kind) => Event::Icmp(id, kind, ip, payload, Instant::now()),
                    None => continue,
                },
                Err(_) => continue,
            },
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

async fn tcp_exchange(dst: SocketAddr, payload: Vec<u8>, tx: mpsc::Sender<Event>) {
    let r = tokio::time::timeout(defaults::TCP_EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect(dst)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(&payload)
            .await
            .map_err(|e| format!("write: {e}"))?;
        crate::net::stream::read_stun(&mut s)
            .await
            .map_err(|e| format!("read: {e}"))
    })
    .await
    .unwrap_or_else(|_| Err("no answer (timed out)".to_string()));
    let _ = tx.send(Event::Tcp(dst, r, Instant::now())).await;
}

fn build_report(
    obs: Option<Observations>,
    mut entries: Vec<ServerEntry>,
    mut tried: Vec<String>,
    elapsed: Duration,
    portmap: Option<crate::proto::portmap::ProbeReport>,
) -> NatprobeReport {
    let obs = obs.unwrap_or_else(Observations::unresolved);
    for e in &mut entries {
        if let Some(s) = obs.servers.iter().find(|s| Some(s.addr) == e.addr) {
            e.rtt_ms = s.rtt_ms.map(|r| (r * 1000.0).round() / 1000.0);
            e.rfc5780 = s.rfc5780;
            e.answered = s.answered;
            e.mapped = s.mapped;
            e.other_address = s.other_address;
            e.software = s.software.clone();
            e.problems = s.problems.clone();
        }
    }
    if obs.udp {
        tried.clear();
    }
    let router_external = portmap.as_ref().and_then(|p| p.external_ip);
    let cg: CgnatFinding = verdict::cgnat(&obs, router_external);
    let mut v = verdict::verdict(&obs, &cg);
    if let Some(p) = &portmap {
        verdict::portmap_advice(&mut v, &cg, p);
    }
    NatprobeReport {
        schema: SCHEMA,
        udp: obs.udp,
        tcp: obs.tcp,
        local_addr: obs.local_addr,
        mapped_addr: obs.mapped_addr,
        behind_nat: obs.behind_nat == Some(true),
        cgnat: cg.cgnat,
        cgnat_evidence: cg.evidence,
        mapping: obs.mapping,
        mapping_note: obs.mapping_note,
        filtering: obs.filtering,
        filtering_note: obs.filtering_note,
        hairpinning: obs.hairpinning,
        port_preserved: obs.port_preserved,
        port_allocation: obs.port_allocation,
        binding_lifetime_s: obs.lifetime.and_then(|l| l.alive_s),
        binding_lifetime: obs.lifetime,
        hops: obs.hops,
        servers: entries,
        verdict: v,
        tried,
        ignored: obs.ignored,
        portmap,
        ipv6: Ipv6Report::missing(None, "not probed".to_string()),
        elapsed_ms: elapsed.as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_syntax() {
        assert_eq!(parse_server("a.b:19302").unwrap(), ("a.b".into(), 19302));
        assert_eq!(parse_server("a.b").unwrap(), ("a.b".into(), 3478));
        assert_eq!(parse_server("[::1]:5").unwrap(), ("::1".into(), 5));
        assert_eq!(parse_server("::1").unwrap(), ("::1".into(), 3478));
        assert_eq!(
            parse_server("203.0.113.10").unwrap(),
            ("203.0.113.10".into(), 3478)
        );
        for bad in [
            "", ":3478", "a.b:0", "a.b:x", "a b", "[::1", "[zz]:1", "a:99999",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}
