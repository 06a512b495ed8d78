//! The tokio driver for [`crate::classify::Prober`]: resolves servers, owns the sockets and
//! the timers, and builds natprobe's report. No protocol decisions are made here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::classify::{
    Behaviour, Hop, IcmpKind, Input, Lifetime, Observations, ProbeConfig, Prober, SocketId, Via,
};
use crate::defaults;
use crate::stun;
use crate::verdict::{self, CgnatFinding, Verdict};

/// JSON schema version of [`NatprobeReport`]. Bump on any incompatible change.
pub const SCHEMA: u32 = 1;

/// Errors that stop a probe before it can report anything.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A `--server` value that is not `HOST[:PORT]`.
    #[error("invalid server {0:?}: expected HOST[:PORT] or [IPv6]:PORT")]
    BadServer(String),
    /// The runtime could not create a socket.
    #[error("cannot create a UDP socket")]
    Socket(#[source] std::io::Error),
}

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
    pub port_allocation: crate::classify::PortAllocation,
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
    pub portmap: Option<crate::portmap_io::ProbeReport>,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

impl NatprobeReport {
    /// Exit status per the man page: 0 can host, 1 cannot, 2 no answer.
    pub fn exit_code(&self) -> i32 {
        if !self.udp {
            crate::exit::NO_ANSWER
        } else if self.verdict.can_host {
            crate::exit::OK
        } else {
            crate::exit::CANNOT_HOST
        }
    }
}

/// Splits `HOST[:PORT]` (`[v6]:port` for IPv6 literals).
pub fn parse_server(s: &str) -> Result<(String, u16), ProbeError> {
    let bad = || ProbeError::BadServer(s.to_string());
    if s.is_empty() {
        return Err(bad());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => defaults::STUN_PORT,
            None => return Err(bad()),
        };
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        return Ok((host.to_string(), port));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), defaults::STUN_PORT));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (s, defaults::STUN_PORT),
    };
    if host.is_empty()
        || port == 0
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

pub(crate) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let q = format!("{host}:{port}");
    match tokio::time::timeout(defaults::DNS_TIMEOUT, tokio::net::lookup_host(q)).await {
        Err(_) => Err(format!(
            "DNS lookup timed out after {} ms",
            defaults::DNS_TIMEOUT.as_millis()
        )),
        Ok(Err(e)) => Err(format!("DNS lookup failed: {e}")),
        Ok(Ok(mut addrs)) => {
            let all: Vec<SocketAddr> = addrs.by_ref().collect();
            all.iter()
                .find(|a| a.is_ipv4())
                .or(all.first())
                .copied()
                .ok_or_else(|| "DNS returned no address".to_string())
        }
    }
}

enum Event {
    Datagram(SocketId, SocketAddr, Vec<u8>, Option<u8>, Instant),
    Icmp(SocketId, IcmpKind, IpAddr, Vec<u8>, Instant),
    Tcp(SocketAddr, Result<Vec<u8>, String>, Instant),
}

/// Learns which local IP the kernel would use towards `dst` without sending anything
/// (connect on UDP only selects a route).
fn local_ip_towards(dst: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(dst).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Runs one probe and builds the report. `progress` is told (done, total) during a lifetime
/// search.
pub async fn run(
    opts: &ProbeOptions,
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
            .map(|(h, p)| async move { resolve(&h, p).await })
            .collect::<Vec<_>>(),
    )
    .await;
    let mut tried = Vec::new();
    let mut entries: Vec<ServerEntry> = Vec::new();
    let mut addrs = Vec::new();
    for (name, r) in opts.servers.iter().zip(lookups) {
        let addr = match r {
            Ok(a) => {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
                Some(a)
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
    // One address family per run: the family of the first server that resolved.
    if let Some(first) = addrs.first().copied() {
        addrs.retain(|a| a.is_ipv4() == first.is_ipv4());
    }
    let stun = async {
        if addrs.is_empty() {
            Ok(None)
        } else {
            let mut cfg = ProbeConfig::new(addrs.clone());
            cfg.first_timeout = opts.first_timeout;
            cfg.lifetime_max = opts.lifetime_max;
            drive(cfg, &mut tried, &mut progress).await.map(Some)
        }
    };
    // The router's port-mapping protocols, asked at the same time (read-only).
    let portmap = async {
        if !opts.portmap {
            return None;
        }
        let ctx = crate::portmap_io::Ctx::new(None, defaults::PORTMAP_TIMEOUT, None).ok()?;
        Some(crate::portmap_io::probe(&ctx).await)
    };
    let (obs, portmap) = tokio::join!(stun, portmap);
    Ok(build_report(obs?, entries, tried, t0.elapsed(), portmap))
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
    let local_ip = local_ip_towards(servers[0]);
    if local_ip.is_none() {
        tried.push(format!(
            "no route to {}: this machine seems to have no network",
            servers[0]
        ));
    }
    let mut prober = Prober::new(cfg, Instant::now());
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let mut sockets: HashMap<SocketId, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = Vec::new();
    let mut last_progress = None;
    loop {
        while let Some(t) = prober.poll_transmit() {
            match t.via {
                Via::Udp { socket, ttl } => {
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
                Via::Tcp => {
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

pub(crate) fn set_recverr(s: &UdpSocket) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a valid fd with a correctly sized int option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVERR,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Asks the kernel for the TTL (IPv6: hop limit) of every datagram received, read by
/// [`recv_with_ttl`]: it tells how many routers the server's answers crossed.
fn set_recvttl(s: &UdpSocket, v4: bool) {
    let on: libc::c_int = 1;
    let (level, opt) = if v4 {
        (libc::SOL_IP, libc::IP_RECVTTL)
    } else {
        (libc::SOL_IPV6, libc::IPV6_RECVHOPLIMIT)
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized int option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One `recvmsg(2)` without blocking (plus `flags`) into `buf`; `each` sees every control
/// message (level, type, data). Returns the length and the sender's raw address.
fn recvmsg_nb(
    fd: i32,
    buf: &mut [u8],
    flags: i32,
    mut each: impl FnMut(i32, i32, *const u8),
) -> std::io::Result<(usize, libc::sockaddr_storage)> {
    // Control messages start with a cmsghdr: the buffer must be aligned for it.
    let mut ctrl = [0u64; 64];
    // SAFETY: all pointers reference live buffers sized as declared; the kernel fills at most
    // those sizes, and CMSG_* walk only within msg_controllen.
    unsafe {
        let mut name: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&ctrl);
        let n = libc::recvmsg(fd, &mut msg, flags | libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            each((*cmsg).cmsg_level, (*cmsg).cmsg_type, libc::CMSG_DATA(cmsg));
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, name))
    }
}

/// Receives one datagram without blocking: its length, source and, when the kernel attached
/// it ([`set_recvttl`]), the TTL it arrived with.
fn recv_with_ttl(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<u8>)> {
    let mut ttl = None;
    let (n, name) = recvmsg_nb(fd, buf, 0, |level, kind, data| {
        if (level == libc::SOL_IP && kind == libc::IP_TTL)
            || (level == libc::SOL_IPV6 && kind == libc::IPV6_HOPLIMIT)
        {
            // SAFETY: the kernel's TTL / hop limit control message carries one c_int.
            let v = unsafe { std::ptr::read_unaligned(data as *const libc::c_int) };
            ttl = u8::try_from(v).ok();
        }
    })?;
    // SAFETY: the family field says which sockaddr the kernel wrote into the storage.
    let from = unsafe {
        match name.ss_family as i32 {
            libc::AF_INET => {
                let a = &*(&name as *const _ as *const libc::sockaddr_in);
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                )
            }
            libc::AF_INET6 => {
                let a = &*(&name as *const _ as *const libc::sockaddr_in6);
                SocketAddr::new(
                    IpAddr::V6(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr)),
                    u16::from_be(a.sin6_port),
                )
            }
            _ => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    };
    Ok((n, from, ttl))
}

/// Reads one entry of the socket's error queue (IP_RECVERR): the router that sent an ICMP
/// Time Exceeded and the quoted payload of our datagram.
pub(crate) fn read_errqueue(fd: i32) -> Option<(IpAddr, u8, Vec<u8>)> {
    let mut data = [0u8; defaults::MAX_DATAGRAM];
    let mut found = None;
    let (n, _) = recvmsg_nb(fd, &mut data, libc::MSG_ERRQUEUE, |level, kind, p| {
        if level == libc::SOL_IP && kind == libc::IP_RECVERR {
            // SAFETY: an IP_RECVERR control message is a sock_extended_err followed by the
            // offender's sockaddr (ip(7)).
            unsafe {
                let ee = p as *const libc::sock_extended_err;
                if (*ee).ee_origin == libc::SO_EE_ORIGIN_ICMP {
                    let off = ee.add(1) as *const libc::sockaddr_in;
                    if (*off).sin_family as i32 == libc::AF_INET {
                        let ip = Ipv4Addr::from(u32::from_be((*off).sin_addr.s_addr));
                        found = Some((IpAddr::V4(ip), (*ee).ee_type));
                    }
                }
            }
        }
    })
    .ok()?;
    found.map(|(ip, t)| (ip, t, data[..n].to_vec()))
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
                // RFC 792: type 11 Time Exceeded, type 3 Destination Unreachable.
                Ok((ip, 11, payload)) => Event::Icmp(id, IcmpKind::TimeExceeded, ip, payload, Instant::now()),
                Ok((ip, 3, payload)) => Event::Icmp(id, IcmpKind::Unreachable, ip, payload, Instant::now()),
                _ => continue,
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
        let mut hdr = [0u8; stun::HEADER_LEN];
        s.read_exact(&mut hdr)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let mut all = hdr.to_vec();
        all.extend_from_slice(&body);
        Ok::<_, String>(all)
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
    portmap: Option<crate::portmap_io::ProbeReport>,
) -> NatprobeReport {
    let obs = obs.unwrap_or_else(|| Observations {
        udp: false,
        tcp: None,
        local_addr: None,
        mapped_addr: None,
        primary: None,
        behind_nat: None,
        mapping: Behaviour::Unknown,
        mapping_note: Some("no server could be resolved".into()),
        filtering: Behaviour::Unknown,
        filtering_note: Some("no server could be resolved".into()),
        hairpinning: None,
        port_preserved: None,
        port_allocation: crate::classify::PortAllocation {
            kind: "unknown",
            delta: None,
        },
        hops: Vec::new(),
        lifetime: None,
        servers: Vec::new(),
        ignored: Vec::new(),
    });
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
