//! portmap's driver: sockets and timers around the sans-IO NAT-PMP and PCP codecs
//! ([`crate::proto::portmap`]), UPnP IGD through igd-next with natkit's own timeouts, the state file
//! of mappings natkit made, and the relay dial-back that checks a mapping from outside.
//!
//! NAT-PMP and PCP share UDP port 5351 on the gateway; each request goes out on its own
//! *connected* socket so an ICMP port-unreachable from a router without a server surfaces as
//! an immediate "refused" instead of a timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::defaults;
use crate::proto::portmap::exchange::{Exchange as Tx, Protocol};
use crate::proto::portmap::{natpmp, pcp, ExternalKind, ProbeReport, Proto, ProtocolStatus, Via};

/// JSON schema version of every portmap report.
pub const SCHEMA: u32 = 1;

/// What can go wrong before a report exists.
#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    /// No default route.
    #[error("no default gateway (is the network up?); name the router with --gateway IP")]
    NoGateway,
    /// Local IO.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The state file is unreadable.
    #[error("state file {0}: {1}")]
    State(PathBuf, String),
    /// Bad relay address.
    #[error(transparent)]
    Relay(#[from] crate::net::sys::ProbeError),
    /// The relay name does not resolve.
    #[error("cannot resolve the relay: {0}")]
    Resolve(String),
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The router.
    pub gateway: Ipv4Addr,
    /// Our address on the router's LAN (the mapping's internal client).
    pub local_ip: Ipv4Addr,
    /// Per-protocol give-up time.
    pub timeout: Duration,
    /// The state file.
    pub state: PathBuf,
}

impl Ctx {
    /// Detects the gateway (unless given) and our address towards it.
    pub fn new(
        gateway: Option<Ipv4Addr>,
        timeout: Duration,
        state: Option<PathBuf>,
    ) -> Result<Ctx, PortmapError> {
        let gateway = match gateway {
            Some(g) => g,
            None => default_gateway().ok_or(PortmapError::NoGateway)?,
        };
        let local_ip = local_ip_towards(gateway)?;
        Ok(Ctx {
            gateway,
            local_ip,
            timeout,
            state: state.unwrap_or_else(default_state_path),
        })
    }

    fn pmp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.gateway, natpmp::PORT))
    }
}

/// The IPv4 default gateway from the kernel's routing table (`/proc/net/route`: hex,
/// little-endian fields; the default route has destination and mask 0).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_route_table(&text)
}

fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dst, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        if *dst != "00000000" || *mask != "00000000" {
            return None;
        }
        let g = u32::from_str_radix(gw, 16).ok()?;
        (g != 0).then(|| Ipv4Addr::from(g.swap_bytes()))
    })
}

/// This host's address on the gateway's LAN (the route the kernel would take towards it).
fn local_ip_towards(gw: Ipv4Addr) -> Result<Ipv4Addr, PortmapError> {
    match crate::net::sys::local_ip_towards(SocketAddr::from((gw, natpmp::PORT)))? {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(PortmapError::NoGateway),
    }
}

fn default_state_path() -> PathBuf {
    let dir = std::env::var_os("NATKIT_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("natkit")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/natkit")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/natkit"));
    dir.join("portmap.json")
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Whether the router itself owns `ext` (RFC 792): a datagram to it with TTL 1 is delivered
/// to the router (a port-unreachable from `ext`, or silence) when `ext` is the router's own
/// address, and dies on the router with a Time Exceeded when the router has to forward it —
/// then the address belongs to a NAT further out. Only the gateway sees these packets.
/// `None` when nothing came back.
async fn router_owns(ext: Ipv4Addr) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    s.set_ttl(1).ok()?;
    crate::net::sys::set_recverr(&s);
    let fd = s.as_raw_fd();
    let deadline = Instant::now() + Duration::from_millis(300);
    for _ in 0..3 {
        // Port 9 (discard): nothing should answer with data.
        let _ = s.send_to(b"natkit", (ext, 9)).await;
        while Instant::now() < deadline {
            let r = tokio::time::timeout(
                Duration::from_millis(100),
                s.async_io(tokio::io::Interest::ERROR, || {
                    crate::net::sys::read_errqueue(fd)
                        .ok_or_else(|| std::io::ErrorKind::WouldBlock.into())
                }),
            )
            .await;
            match r {
                Ok(Ok((_, 11, _))) => return Some(false),
                Ok(Ok((ip, 3, _))) if ip == IpAddr::V4(ext) => return Some(true),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    None
}

/// Classifies the router's external address, checking that a public one is its own.
async fn classify_external(ip: IpAddr) -> ExternalKind {
    match (ExternalKind::of(ip), ip) {
        (ExternalKind::Public, IpAddr::V4(v4)) if router_owns(v4).await == Some(false) => {
            ExternalKind::NotRouters
        }
        (k, _) => k,
    }
}

// ---------------------------------------------------------------------------------------------
// NAT-PMP and PCP over a connected UDP socket.

/// How one NAT-PMP or PCP exchange ended.
#[derive(Debug)]
enum Exchange<R> {
    Answer(R, Duration),
    /// ICMP port unreachable: nothing listens on the router.
    Refused,
    /// No answer within the timeout.
    Silent,
}

/// Runs one sans-IO client transaction on a socket connected to the gateway; `outcome` turns
/// its event into the answer, or `None` when it gave up.
async fn exchange<P: Protocol, O>(
    ctx: &Ctx,
    mut client: Tx<P>,
    outcome: fn(P::Event) -> Option<O>,
) -> Result<Exchange<O>, PortmapError> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    sock.connect(ctx.pmp_addr()).await?;
    let t0 = Instant::now();
    let deadline = t0 + ctx.timeout;
    let mut buf = [0u8; 1100];
    loop {
        let now = Instant::now();
        while let Some(b) = client.poll_transmit(now) {
            if let Err(e) = sock.send(&b).await {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Ok(Exchange::Refused);
                }
                return Err(e.into());
            }
        }
        if let Some(e) = client.poll_event() {
            return Ok(match outcome(e) {
                Some(a) => Exchange::Answer(a, t0.elapsed()),
                None => Exchange::Silent,
            });
        }
        let wake = client.poll_timeout().unwrap_or(deadline).min(deadline);
        tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => { client.handle_input(Instant::now(), &buf[..n]); }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Ok(Exchange::Refused)
                }
                Err(e) => return Err(e.into()),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= deadline {
                    return Ok(Exchange::Silent);
                }
                client.handle_timeout(Instant::now());
            }
        }
    }
}

/// NAT-PMP's answer; `None` when the exchange gave up.
fn natpmp_outcome(e: natpmp::Event) -> Option<natpmp::Response> {
    match e {
        natpmp::Event::Response(r) => Some(r),
        natpmp::Event::TimedOut => None,
    }
}

/// PCP's answer, or why there is none ("the gateway speaks only NAT-PMP"); `None` when the
/// exchange gave up.
fn pcp_outcome(e: pcp::Event) -> Option<Result<pcp::Response, String>> {
    match e {
        pcp::Event::Response(r) => Some(Ok(r)),
        pcp::Event::NatPmpOnly => Some(Err(
            "the router answered in NAT-PMP: it speaks NAT-PMP, not PCP".into(),
        )),
        pcp::Event::TimedOut => None,
    }
}

/// One NAT-PMP request, its answer or why there is none, in words.
async fn ask_natpmp(ctx: &Ctx, req: natpmp::Request) -> Result<natpmp::Response, String> {
    let c = natpmp::Client::new(Instant::now(), req, schedule(ctx.timeout));
    match exchange(ctx, c, natpmp_outcome)
        .await
        .map_err(|e| e.to_string())?
    {
        Exchange::Answer(r, _) => Ok(r),
        Exchange::Refused => Err(REFUSED.into()),
        Exchange::Silent => Err("no answer".into()),
    }
}

/// One PCP request, its answer or why there is none, in words.
async fn ask_pcp(ctx: &Ctx, req: pcp::Request) -> Result<pcp::Response, String> {
    let c = pcp::Client::new(Instant::now(), req, schedule(ctx.timeout));
    match exchange(ctx, c, pcp_outcome)
        .await
        .map_err(|e| e.to_string())?
    {
        Exchange::Answer(r, _) => r,
        Exchange::Refused => Err(REFUSED.into()),
        Exchange::Silent => Err("no answer".into()),
    }
}

const REFUSED: &str = "refused (nothing listens on port 5351)";

fn schedule(timeout: Duration) -> crate::proto::stun::Schedule {
    crate::proto::stun::Schedule {
        rto: defaults::PORTMAP_RTO,
        max_sends: 4,
        final_wait: timeout,
    }
}

// ---------------------------------------------------------------------------------------------
// UPnP IGD (igd-next), every call under natkit's own timeout.

type Igd = igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>;

/// Finds the router's IGD: a unicast M-SEARCH to the gateway (answered at once; a multicast
/// one waits a random part of MX seconds, UPnP Device Architecture 1.1 §1.3.3) races a
/// multicast one (for devices that ignore unicast searches). Only the gateway's own IGD counts.
async fn upnp_find(ctx: &Ctx) -> Result<(Igd, Duration), String> {
    let t0 = Instant::now();
    let search = |dst: SocketAddr| {
        let opts = igd_next::SearchOptions {
            bind_addr: SocketAddr::from((ctx.local_ip, 0)),
            broadcast_address: dst,
            timeout: Some(ctx.timeout),
            single_search_timeout: Some(ctx.timeout),
        };
        igd_next::aio::tokio::search_gateway(opts)
    };
    let uni = search(SocketAddr::from((ctx.gateway, 1900)));
    let multi = search("239.255.255.250:1900".parse().expect("literal"));
    let gw = IpAddr::V4(ctx.gateway);
    let ours = |r: Result<Igd, igd_next::SearchError>| match r {
        Ok(g) if g.addr.ip() == gw => Some(g),
        _ => None,
    };
    // A gateway without an SSDP server answers a unicast datagram to port 1900 with ICMP port
    // unreachable: on a connected socket that is an immediate "no UPnP here".
    let refused = async {
        let s = UdpSocket::bind(SocketAddr::from((ctx.local_ip, 0)))
            .await
            .ok()?;
        s.connect((ctx.gateway, 1900)).await.ok()?;
        let probe = format!(
            "M-SEARCH * HTTP/1.1\r\nHOST: {}:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\
             ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n",
            ctx.gateway
        );
        let mut buf = [0u8; 1500];
        for _ in 0..3 {
            if let Err(e) = s.send(probe.as_bytes()).await {
                return (e.kind() == std::io::ErrorKind::ConnectionRefused).then_some(());
            }
            match tokio::time::timeout(Duration::from_millis(100), s.recv(&mut buf)).await {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some(()),
                // An answer, or silence: leave it to the real search.
                Ok(_) => return std::future::pending().await,
                Err(_) => {}
            }
        }
        std::future::pending().await
    };
    let found = tokio::time::timeout(ctx.timeout, async {
        tokio::pin!(uni, multi, refused);
        let (mut uni_done, mut multi_done, mut refused_done) = (false, false, false);
        while !(uni_done && multi_done) {
            tokio::select! {
                r = &mut refused, if !refused_done => {
                    refused_done = true;
                    if r.is_some() { return None }
                }
                r = &mut uni, if !uni_done => { uni_done = true; if let Some(g) = ours(r) { return Some(g) } }
                r = &mut multi, if !multi_done => { multi_done = true; if let Some(g) = ours(r) { return Some(g) } }
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    found
        .map(|g| (g, t0.elapsed()))
        .ok_or_else(|| "no UPnP IGD answered".to_string())
}

async fn upnp_call<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(defaults::UPNP_CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the router did not answer within {} s",
            defaults::UPNP_CALL_TIMEOUT.as_secs()
        )),
    }
}

fn igd_proto(p: Proto) -> igd_next::PortMappingProtocol {
    match p {
        Proto::Tcp => igd_next::PortMappingProtocol::TCP,
        Proto::Udp => igd_next::PortMappingProtocol::UDP,
    }
}

// ---------------------------------------------------------------------------------------------
// probe / external-ip

async fn probe_natpmp(ctx: &Ctx) -> ProtocolStatus {
    let c = natpmp::Client::new(
        Instant::now(),
        natpmp::Request::ExternalAddress,
        schedule(ctx.timeout),
    );
    match exchange(ctx, c, natpmp_outcome).await {
        Ok(Exchange::Answer(
            natpmp::Response::ExternalAddress {
                result,
                address: addr,
                ..
            },
            t,
        )) => {
            if result == natpmp::ResultCode::Success {
                ProtocolStatus {
                    available: true,
                    ms: Some(ms(t)),
                    external_ip: Some(IpAddr::V4(addr)),
                    url: None,
                    detail: format!("external address {addr}"),
                }
            } else {
                ProtocolStatus {
                    available: true,
                    ms: Some(ms(t)),
                    external_ip: None,
                    url: None,
                    detail: format!("answers, but: {result}"),
                }
            }
        }
        Ok(Exchange::Answer(other, _)) => {
            ProtocolStatus::no(format!("unexpected answer {other:?}"))
        }
        Ok(Exchange::Refused) => ProtocolStatus::no(REFUSED),
        Ok(Exchange::Silent) => ProtocolStatus::no("no answer"),
        Err(e) => ProtocolStatus::no(e.to_string()),
    }
}

async fn probe_pcp(ctx: &Ctx) -> ProtocolStatus {
    let c = pcp::Client::new(
        Instant::now(),
        pcp::Request::announce(IpAddr::V4(ctx.local_ip)),
        schedule(ctx.timeout),
    );
    match exchange(ctx, c, pcp_outcome).await {
        Ok(Exchange::Answer(Ok(r), t)) => ProtocolStatus {
            available: r.result == pcp::ResultCode::Success,
            ms: Some(ms(t)),
            external_ip: None,
            url: None,
            detail: if r.result == pcp::ResultCode::Success {
                format!("epoch {} s", r.epoch)
            } else {
                format!("answers, but: {}", r.result)
            },
        },
        Ok(Exchange::Answer(Err(why), _)) => ProtocolStatus::no(why),
        Ok(Exchange::Refused) => ProtocolStatus::no(REFUSED),
        Ok(Exchange::Silent) => ProtocolStatus::no("no answer"),
        Err(e) => ProtocolStatus::no(e.to_string()),
    }
}

async fn probe_upnp(ctx: &Ctx) -> ProtocolStatus {
    match upnp_find(ctx).await {
        Ok((g, t)) => {
            let ip = upnp_call(g.get_external_ip()).await;
            ProtocolStatus {
                available: true,
                ms: Some(ms(t)),
                external_ip: ip.as_ref().ok().copied(),
                url: Some(format!("http://{}{}", g.addr, g.root_url)),
                detail: match ip {
                    Ok(ip) => format!("external address {ip}"),
                    Err(e) => format!("found, but GetExternalIPAddress failed: {e}"),
                },
            }
        }
        Err(e) => ProtocolStatus::no(e),
    }
}

/// Asks all three protocols at once; creates nothing.
pub async fn probe(ctx: &Ctx) -> ProbeReport {
    let t0 = Instant::now();
    let (pcp, natpmp, upnp) = tokio::join!(probe_pcp(ctx), probe_natpmp(ctx), probe_upnp(ctx));
    let mut available = Vec::new();
    for (name, s) in [("pcp", &pcp), ("natpmp", &natpmp), ("upnp", &upnp)] {
        if s.available {
            available.push(name);
        }
    }
    let external_ip = natpmp.external_ip.or(upnp.external_ip);
    let external_kind = match external_ip {
        Some(ip) => Some(classify_external(ip).await),
        None => None,
    };
    let why = match (external_ip, external_kind) {
        _ if available.is_empty() => Some(
            "the router answers none of PCP, NAT-PMP and UPnP IGD: switch one on in its \
             settings, forward the port by hand, or use punch"
                .to_string(),
        ),
        (Some(ip), Some(k)) => k.problem(ip),
        _ => None,
    };
    ProbeReport {
        schema: SCHEMA,
        gateway: ctx.gateway,
        local_ip: ctx.local_ip,
        mapping_can_help: why.is_none(),
        available,
        pcp,
        natpmp,
        upnp,
        external_ip,
        external_kind,
        why,
        elapsed_ms: ms(t0.elapsed()),
    }
}

/// `portmap external-ip`.
#[derive(Debug, Clone, Serialize)]
pub struct ExternalIpReport {
    /// JSON schema version.
    pub schema: u32,
    /// The router asked.
    pub gateway: Ipv4Addr,
    /// Its external address.
    pub external_ip: Option<IpAddr>,
    /// Which protocol told (`natpmp` or `upnp`; PCP has no such request).
    pub via: Option<&'static str>,
    /// What that address is.
    pub external_kind: Option<ExternalKind>,
    /// Why a mapping cannot help, if it cannot.
    pub why: Option<String>,
}

/// Asks NAT-PMP and UPnP at once; NAT-PMP's answer wins when both answer.
pub async fn external_ip(ctx: &Ctx) -> ExternalIpReport {
    let (n, u) = tokio::join!(probe_natpmp(ctx), probe_upnp(ctx));
    let (ip, via) = match (n.external_ip, u.external_ip) {
        (Some(ip), _) => (Some(ip), Some("natpmp")),
        (None, Some(ip)) => (Some(ip), Some("upnp")),
        _ => (None, None),
    };
    let kind = match ip {
        Some(ip) => Some(classify_external(ip).await),
        None => None,
    };
    ExternalIpReport {
        schema: SCHEMA,
        gateway: ctx.gateway,
        external_ip: ip,
        via,
        external_kind: kind,
        why: match (ip, kind) {
            (Some(ip), Some(k)) => k.problem(ip),
            _ => Some(format!(
                "no answer: NAT-PMP {}; UPnP {}",
                n.detail, u.detail
            )),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Mappings: add, renew, delete.

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// PCP (RFC 6887).
    Pcp,
    /// NAT-PMP (RFC 6886).
    Natpmp,
    /// UPnP IGD.
    Upnp,
}

impl Method {
    fn order(via: Via) -> &'static [Method] {
        match via {
            // RFC 6887 §9: PCP first; NAT-PMP is its predecessor; UPnP last (SOAP over HTTP,
            // slowest and the most often broken).
            Via::Auto => &[Method::Pcp, Method::Natpmp, Method::Upnp],
            Via::Pcp => &[Method::Pcp],
            Via::Natpmp => &[Method::Natpmp],
            Via::Upnp => &[Method::Upnp],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::Pcp => "pcp",
            Method::Natpmp => "natpmp",
            Method::Upnp => "upnp",
        }
    }
}

/// What to map.
#[derive(Debug, Clone, Copy)]
pub struct MapRequest {
    /// Protocol.
    pub proto: Proto,
    /// Local port.
    pub internal_port: u16,
    /// Wished external port.
    pub external_port: u16,
    /// Wished lease (0 = permanent, UPnP only).
    pub lifetime: u32,
}

/// A mapping the router granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mapping {
    /// Protocol used.
    pub via: Method,
    /// Transport.
    pub proto: Proto,
    /// The router.
    pub gateway: Ipv4Addr,
    /// Where it forwards to.
    pub internal: SocketAddrV4,
    /// The router's external address, when known.
    pub external_ip: Option<IpAddr>,
    /// The external port granted.
    pub external_port: u16,
    /// Lease granted in seconds (0: permanent).
    pub lifetime: u32,
    /// PCP mapping nonce, hex (needed to renew or delete, RFC 6887 §11.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The router's epoch at the last answer (NAT-PMP/PCP, RFC 6886 §3.6 / RFC 6887 §8.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Unix time of the last grant.
    #[serde(default)]
    pub granted_at: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex12(s: &str) -> Option<[u8; 12]> {
    let mut out = [0u8; 12];
    if s.len() != 24 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Asks one protocol for a mapping (also used to renew: same request again). Notes say what
/// the router did differently from what was asked.
async fn map_once(
    ctx: &Ctx,
    via: Method,
    req: MapRequest,
    nonce: Option<[u8; 12]>,
    notes: &mut Vec<String>,
) -> Result<Mapping, String> {
    let internal = SocketAddrV4::new(ctx.local_ip, req.internal_port);
    let base = |external_port, lifetime, external_ip, nonce: Option<[u8; 12]>, epoch| Mapping {
        via,
        proto: req.proto,
        gateway: ctx.gateway,
        internal,
        external_ip,
        external_port,
        lifetime,
        nonce: nonce.map(|n| hex(&n)),
        epoch,
        granted_at: crate::net::sys::unix_now(),
    };
    match via {
        Method::Pcp => {
            if req.lifetime == 0 {
                return Err("PCP has no permanent mappings (RFC 6887 §15); give --lifetime".into());
            }
            let nonce = nonce.unwrap_or_else(rand::random);
            let r = pcp::Request::map(
                IpAddr::V4(ctx.local_ip),
                pcp::Map::new(nonce, req.proto, req.internal_port, req.external_port),
                req.lifetime,
            );
            let r = ask_pcp(ctx, r).await?;
            if r.result != pcp::ResultCode::Success {
                return Err(format!("the router refused: {}", r.result));
            }
            let (port, ip) = match r.op {
                pcp::Op::Map(m) => (m.external_port, Some(m.external_ip)),
                pcp::Op::Announce => (0, None),
            };
            Ok(base(port, r.lifetime, ip, Some(nonce), Some(r.epoch)))
        }
        Method::Natpmp => {
            if req.lifetime == 0 {
                return Err(
                    "NAT-PMP has no permanent mappings (lifetime 0 deletes, RFC 6886 §3.4); give --lifetime"
                        .into(),
                );
            }
            let r = natpmp::Request::Map {
                proto: req.proto,
                internal_port: req.internal_port,
                external_port: req.external_port,
                lifetime: req.lifetime,
            };
            match ask_natpmp(ctx, r).await? {
                natpmp::Response::Map {
                    result,
                    epoch,
                    external_port,
                    lifetime,
                    ..
                } => {
                    if result != natpmp::ResultCode::Success {
                        return Err(format!("the router refused: {result}"));
                    }
                    let ip = probe_natpmp(ctx).await.external_ip;
                    Ok(base(external_port, lifetime, ip, None, Some(epoch)))
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        }
        Method::Upnp => {
            let (g, _) = upnp_find(ctx).await?;
            let add = |lifetime| {
                g.add_port(
                    igd_proto(req.proto),
                    req.external_port,
                    SocketAddr::V4(internal),
                    lifetime,
                    "natkit portmap",
                )
            };
            let mut lifetime = req.lifetime;
            let r = match tokio::time::timeout(defaults::UPNP_CALL_TIMEOUT, add(lifetime)).await {
                Ok(r) => r,
                Err(_) => return Err("the router did not answer AddPortMapping".into()),
            };
            match r {
                Ok(()) => {}
                // UPnP error 725 OnlyPermanentLeasesSupported (IGD WANIPConnection:1 §2.4.16).
                Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) if lifetime != 0 => {
                    notes.push(
                        "the router accepts only permanent leases (UPnP error 725): the mapping \
                         was made with lifetime 0 and stays until deleted or the router restarts"
                            .into(),
                    );
                    lifetime = 0;
                    upnp_call(add(0)).await?;
                }
                Err(e) => return Err(format!("the router refused: {e}")),
            }
            let ip = upnp_call(g.get_external_ip()).await.ok();
            Ok(base(req.external_port, lifetime, ip, None, None))
        }
    }
}

/// Removes one mapping with the protocol that made it.
async fn unmap(ctx: &Ctx, m: &Mapping) -> Result<(), String> {
    match m.via {
        Method::Pcp => {
            // RFC 6887 §15: a MAP with lifetime 0 and the mapping's own nonce deletes it.
            let nonce = m
                .nonce
                .as_deref()
                .and_then(unhex12)
                .ok_or("no PCP nonce recorded for this mapping")?;
            let r = pcp::Request::delete(
                IpAddr::V4(ctx.local_ip),
                // The recorded external port too: miniupnpd 2.3 otherwise matches the first
                // mapping of this internal port, which may belong to another protocol, and
                // answers NOT_AUTHORIZED.
                pcp::Map::new(nonce, m.proto, m.internal.port(), m.external_port),
            );
            match ask_pcp(ctx, r).await?.result {
                pcp::ResultCode::Success => Ok(()),
                refused => Err(format!("the router refused: {refused}")),
            }
        }
        Method::Natpmp => {
            // RFC 6886 §3.4: lifetime 0 and suggested external port 0 delete the mapping.
            let r = natpmp::Request::Map {
                proto: m.proto,
                internal_port: m.internal.port(),
                external_port: 0,
                lifetime: 0,
            };
            match ask_natpmp(ctx, r).await? {
                natpmp::Response::Map {
                    result: natpmp::ResultCode::Success,
                    ..
                } => Ok(()),
                natpmp::Response::Map { result, .. } => {
                    Err(format!("the router refused: {result}"))
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        }
        Method::Upnp => {
            let (g, _) = upnp_find(ctx).await?;
            upnp_call(g.remove_port(igd_proto(m.proto), m.external_port)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The state file: what natkit mapped, so a crashed run can be cleaned up.

/// natkit's own records of the mappings it made.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Mappings, newest last.
    pub mappings: Vec<Mapping>,
}

impl State {
    /// Reads the file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, PortmapError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| PortmapError::State(path.to_path_buf(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(PortmapError::State(path.to_path_buf(), e.to_string())),
        }
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), PortmapError> {
        let err = |e: std::io::Error| PortmapError::State(path.to_path_buf(), e.to_string());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let body = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::write(&tmp, body).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    fn same(a: &Mapping, b: &Mapping) -> bool {
        a.via == b.via && a.proto == b.proto && a.gateway == b.gateway && a.internal == b.internal
    }

    /// Records (or replaces) a mapping.
    pub fn record(path: &Path, m: &Mapping) -> Result<(), PortmapError> {
        let mut s = State::load(path)?;
        s.mappings.retain(|x| !State::same(x, m));
        s.mappings.push(m.clone());
        s.save(path)
    }

    /// Forgets a mapping.
    pub fn forget(path: &Path, m: &Mapping) -> Result<(), PortmapError> {
        let mut s = State::load(path)?;
        let before = s.mappings.len();
        s.mappings.retain(|x| !State::same(x, m));
        if s.mappings.len() != before {
            s.save(path)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// add

/// Whether a stranger got through.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The relay reached the local port through the mapping.
    pub reachable: bool,
    /// What was tried and what happened.
    pub detail: String,
}

/// `portmap add`.
#[derive(Debug, Clone, Serialize)]
pub struct AddReport {
    /// JSON schema version.
    pub schema: u32,
    /// Whether the router granted a mapping.
    pub ok: bool,
    /// The mapping.
    pub mapping: Option<Mapping>,
    /// `external_ip:external_port` as strangers should use it.
    pub external: Option<String>,
    /// What each protocol tried said, in order.
    pub attempts: Vec<Attempt>,
    /// What the router did differently from what was asked.
    pub notes: Vec<String>,
    /// Whether the mapping can make this host reachable (public external address).
    pub mapping_can_help: Option<bool>,
    /// Why not.
    pub why: Option<String>,
    /// The relay's check from outside (--verify).
    pub verify: Option<Verification>,
}

/// One protocol's try.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Protocol.
    pub via: Method,
    /// Success.
    pub ok: bool,
    /// In words.
    pub detail: String,
}

impl AddReport {
    /// Exit status: 0 mapped (and verified if asked), 1 the router cannot help.
    pub fn exit_code(&self) -> i32 {
        let verified = self.verify.as_ref().is_none_or(|v| v.reachable);
        if self.ok && self.mapping_can_help != Some(false) && verified {
            crate::exit::OK
        } else {
            crate::exit::CANNOT_HOST
        }
    }
}

/// Maps a port with the first protocol of `via` that works, and records it.
pub async fn add(ctx: &Ctx, req: MapRequest, via: Via) -> AddReport {
    let mut attempts = Vec::new();
    let mut notes = Vec::new();
    let mut mapping = None;
    for &m in Method::order(via) {
        match map_once(ctx, m, req, None, &mut notes).await {
            Ok(map) => {
                attempts.push(Attempt {
                    via: m,
                    ok: true,
                    detail: format!("granted for {} s", map.lifetime),
                });
                mapping = Some(map);
                break;
            }
            Err(e) => attempts.push(Attempt {
                via: m,
                ok: false,
                detail: e,
            }),
        }
    }
    if let Some(m) = &mapping {
        if m.external_port != req.external_port {
            notes.push(format!(
                "asked for external port {}, the router gave {}",
                req.external_port, m.external_port
            ));
        }
        if req.lifetime != 0 && m.lifetime != 0 && m.lifetime != req.lifetime {
            notes.push(format!(
                "asked for a {} s lease, the router granted {} s",
                req.lifetime, m.lifetime
            ));
        }
        if let Err(e) = State::record(&ctx.state, m) {
            notes.push(format!("could not record the mapping: {e}"));
        }
    }
    let ext = match &mapping {
        Some(m) => m.external_ip,
        // Refused everywhere: the router's address may say why (double NAT).
        None => probe_natpmp(ctx).await.external_ip,
    };
    let kind = match ext {
        Some(ip) => Some((ip, classify_external(ip).await)),
        None => None,
    };
    AddReport {
        schema: SCHEMA,
        ok: mapping.is_some(),
        external: mapping.as_ref().map(|m| match m.external_ip {
            Some(ip) => SocketAddr::new(ip, m.external_port).to_string(),
            None => format!("?:{}", m.external_port),
        }),
        mapping,
        attempts,
        notes,
        mapping_can_help: kind.map(|(_, k)| k == ExternalKind::Public),
        why: kind.and_then(|(ip, k)| k.problem(ip)),
        verify: None,
    }
}

// ---------------------------------------------------------------------------------------------
// delete

/// `portmap delete`.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    /// JSON schema version.
    pub schema: u32,
    /// Mappings removed.
    pub removed: Vec<Mapping>,
    /// What failed, in words.
    pub failed: Vec<String>,
}

impl DeleteReport {
    /// Exit status: 0 when something was removed and nothing failed.
    pub fn exit_code(&self) -> i32 {
        if self.failed.is_empty() && !self.removed.is_empty() {
            crate::exit::OK
        } else {
            crate::exit::CANNOT_HOST
        }
    }
}

/// Removes the mapping of `port` (natkit's record tells which protocol made it; without one,
/// every protocol of `via` is asked), or with `port == None` every mapping natkit recorded for
/// this gateway.
pub async fn delete(
    ctx: &Ctx,
    port: Option<u16>,
    proto: Proto,
    via: Via,
) -> Result<DeleteReport, PortmapError> {
    let state = State::load(&ctx.state)?;
    let wanted = |m: &&Mapping| {
        m.gateway == ctx.gateway
            && Method::order(via).contains(&m.via)
            && port.is_none_or(|p| m.proto == proto && m.internal.port() == p)
    };
    let mut targets: Vec<Mapping> = state.mappings.iter().filter(wanted).cloned().collect();
    if let (Some(p), true) = (port, targets.is_empty()) {
        // Not ours (or made by another tool): ask what can delete without a record.
        for &m in Method::order(via) {
            if m == Method::Pcp {
                continue; // PCP deletes only with the mapping's nonce (RFC 6887 §15).
            }
            targets.push(Mapping {
                via: m,
                proto,
                gateway: ctx.gateway,
                internal: SocketAddrV4::new(ctx.local_ip, p),
                external_ip: None,
                external_port: p,
                lifetime: 0,
                nonce: None,
                epoch: None,
                granted_at: 0,
            });
        }
    }
    // PCP last: see `unmap` (a router may confuse mappings of the same internal port).
    targets.sort_by_key(|m| m.via == Method::Pcp);
    let mut rep = DeleteReport {
        schema: SCHEMA,
        removed: Vec::new(),
        failed: Vec::new(),
    };
    for m in targets {
        match unmap(ctx, &m).await {
            Ok(()) => {
                State::forget(&ctx.state, &m)?;
                rep.removed.push(m);
            }
            Err(e) => rep.failed.push(format!(
                "{} {} {}: {e}",
                m.via.name(),
                m.proto,
                m.internal.port()
            )),
        }
    }
    if rep.removed.is_empty() && rep.failed.is_empty() {
        rep.failed
            .push("natkit has no mapping recorded for this gateway".into());
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------------
// list

/// One row of `portmap list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// `upnp` for a row of the router's UPnP table (which may show NAT-PMP and PCP mappings
    /// too), `natkit` for a NAT-PMP/PCP lease natkit recorded that the table does not show.
    pub source: &'static str,
    /// Protocol that made it.
    pub via: Method,
    /// Transport.
    pub proto: Proto,
    /// External port.
    pub external_port: u16,
    /// Internal client and port.
    pub internal: String,
    /// Lease in seconds as the router last said (0: permanent).
    pub lifetime: u32,
    /// Description (UPnP).
    pub description: String,
    /// Whether natkit made it.
    pub mine: bool,
    /// Seconds left on natkit's record (NAT-PMP/PCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
}

/// `portmap list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    /// JSON schema version.
    pub schema: u32,
    /// The router.
    pub gateway: Ipv4Addr,
    /// Whether the router's UPnP table could be read.
    pub upnp_table: bool,
    /// Rows.
    pub mappings: Vec<ListEntry>,
    /// Problems, in words.
    pub notes: Vec<String>,
}

/// Most UPnP table entries read: a router with a huge (or endless, buggy) table cannot keep
/// us looping.
const MAX_UPNP_ENTRIES: u32 = 1024;

/// The router's UPnP table plus natkit's NAT-PMP/PCP records (routers cannot list those).
pub async fn list(ctx: &Ctx) -> Result<ListReport, PortmapError> {
    let state = State::load(&ctx.state)?;
    let mut mine: Vec<&Mapping> = state
        .mappings
        .iter()
        .filter(|m| m.gateway == ctx.gateway)
        .collect();
    let mut rep = ListReport {
        schema: SCHEMA,
        gateway: ctx.gateway,
        upnp_table: false,
        mappings: Vec::new(),
        notes: Vec::new(),
    };
    match upnp_find(ctx).await {
        Ok((g, _)) => {
            rep.upnp_table = true;
            for i in 0..MAX_UPNP_ENTRIES {
                match tokio::time::timeout(
                    defaults::UPNP_CALL_TIMEOUT,
                    g.get_generic_port_mapping_entry(i),
                )
                .await
                {
                    Ok(Ok(e)) => {
                        let proto = match e.protocol {
                            igd_next::PortMappingProtocol::TCP => Proto::Tcp,
                            igd_next::PortMappingProtocol::UDP => Proto::Udp,
                        };
                        // Routers such as miniupnpd show NAT-PMP and PCP mappings in the UPnP
                        // table too: a row natkit recorded is marked with its real protocol.
                        let ours = mine.iter().position(|m| {
                            m.proto == proto
                                && m.external_port == e.external_port
                                && m.internal.ip().to_string() == e.internal_client
                        });
                        let rec = ours.map(|i| mine.remove(i));
                        rep.mappings.push(ListEntry {
                            source: "upnp",
                            via: rec.map_or(Method::Upnp, |m| m.via),
                            proto,
                            external_port: e.external_port,
                            internal: format!("{}:{}", e.internal_client, e.internal_port),
                            lifetime: e.lease_duration,
                            description: e.port_mapping_description,
                            mine: rec.is_some(),
                            expires_in: None,
                        });
                    }
                    Ok(Err(
                        igd_next::GetGenericPortMappingEntryError::SpecifiedArrayIndexInvalid,
                    )) => break,
                    Ok(Err(e)) => {
                        // miniupnpd and others answer past the end with a generic error too.
                        if i == 0 {
                            rep.notes.push(format!("reading the UPnP table: {e}"));
                        }
                        break;
                    }
                    Err(_) => {
                        rep.notes
                            .push("the router stopped answering while listing".into());
                        break;
                    }
                }
            }
        }
        Err(e) => rep.notes.push(format!("UPnP: {e}")),
    }
    let now = crate::net::sys::unix_now() as i64;
    let description = if rep.upnp_table {
        "natkit record (not in the router's UPnP table)"
    } else {
        "natkit record"
    };
    for m in mine {
        rep.mappings.push(ListEntry {
            source: "natkit",
            via: m.via,
            proto: m.proto,
            external_port: m.external_port,
            internal: m.internal.to_string(),
            lifetime: m.lifetime,
            description: description.into(),
            mine: true,
            expires_in: Some(m.granted_at as i64 + m.lifetime as i64 - now),
        });
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------------
// --verify: a natkit relay connects back from outside.

/// Asks the relay to reach `external_port` on our public address from outside (TCP: it
/// connects; UDP: it sends from its other address), listening on the mapping's internal port.
/// `reachable` is `None` when the check could not run (the local port is busy, the relay
/// refused).
pub async fn verify(relay: &str, m: &Mapping) -> Result<Verification, PortmapError> {
    use crate::wire::rendezvous::Frame;
    let (host, port) = crate::net::sys::parse_server(relay)?;
    let relay = crate::net::sys::resolve(&host, port)
        .await
        .map_err(PortmapError::Resolve)?;
    let nonce: u64 = rand::random();
    let local = SocketAddr::from((Ipv4Addr::UNSPECIFIED, m.internal.port()));
    let busy = |e: std::io::Error| Verification {
        reachable: false,
        detail: format!(
            "cannot listen on local port {} to receive the relay's check ({e}); stop the \
             service there to verify",
            m.internal.port()
        ),
    };
    let request = Frame::DialBack {
        proto: match m.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        },
        port: m.external_port,
        nonce,
    }
    .emit();
    let deadline = Instant::now() + defaults::PORTMAP_VERIFY_TIMEOUT;
    match m.proto {
        Proto::Tcp => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            sock.set_nonblocking(true)?;
            if let Err(e) = sock.bind(&local.into()).and_then(|_| sock.listen(8)) {
                return Ok(busy(e));
            }
            let listener = tokio::net::TcpListener::from_std(sock.into())?;
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
            let accept = async {
                loop {
                    let (mut s, from) = listener.accept().await?;
                    let got = tokio::time::timeout(
                        Duration::from_secs(1),
                        crate::net::stream::read_prefixed(&mut s),
                    )
                    .await;
                    if let Ok(Ok(f)) = got {
                        if matches!(Frame::parse(&f), Ok(Frame::Probe { nonce: n }) if n == nonce) {
                            return Ok::<_, std::io::Error>(from);
                        }
                    }
                }
            };
            let refused = relay_refusal(&udp, relay, &request, deadline);
            tokio::select! {
                r = accept => {
                    let from = r?;
                    Ok(Verification {
                        reachable: true,
                        detail: format!(
                            "the relay connected to port {} from outside ({from}) and reached {}",
                            m.external_port, m.internal
                        ),
                    })
                }
                why = refused => Ok(why),
            }
        }
        Proto::Udp => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            sock.set_reuse_address(true)?;
            sock.set_nonblocking(true)?;
            if let Err(e) = sock.bind(&local.into()) {
                return Ok(busy(e));
            }
            let udp = UdpSocket::from_std(sock.into())?;
            let mut buf = [0u8; 1500];
            let mut next_send = Instant::now();
            loop {
                if Instant::now() >= next_send {
                    udp.send_to(&request, relay).await?;
                    next_send = Instant::now() + Duration::from_millis(500);
                }
                let wake = next_send.min(deadline);
                tokio::select! {
                    r = udp.recv_from(&mut buf) => {
                        let (n, from) = r?;
                        match Frame::parse(&buf[..n]) {
                            Ok(Frame::Probe { nonce: x }) if x == nonce => {
                                return Ok(Verification {
                                    reachable: true,
                                    detail: format!(
                                        "a datagram from a stranger ({from}) reached {}",
                                        m.internal
                                    ),
                                })
                            }
                            Ok(Frame::Error { reason, .. }) if from == relay => {
                                return Ok(Verification {
                                    reachable: false,
                                    detail: format!("the relay refused the check: {reason}"),
                                })
                            }
                            _ => {}
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if Instant::now() >= deadline {
                            return Ok(Verification {
                                reachable: false,
                                detail: format!(
                                    "the relay's datagram from a stranger did not reach {} within {} s",
                                    m.internal,
                                    defaults::PORTMAP_VERIFY_TIMEOUT.as_secs()
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Sends the dial-back request (again every 500 ms) and waits for a refusal until `deadline`;
/// returns the verdict "not reachable" when the relay refuses or time runs out.
async fn relay_refusal(
    udp: &UdpSocket,
    relay: SocketAddr,
    request: &[u8],
    deadline: Instant,
) -> Verification {
    use crate::wire::rendezvous::Frame;
    let mut buf = [0u8; 1500];
    let mut sends = 0;
    loop {
        if sends < 3 {
            let _ = udp.send_to(request, relay).await;
            sends += 1;
        }
        let wake = (Instant::now() + Duration::from_millis(500)).min(deadline);
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    if let (true, Ok(Frame::Error { reason, .. })) = (from == relay, Frame::parse(&buf[..n])) {
                        return Verification {
                            reachable: false,
                            detail: format!("the relay refused the check: {reason}"),
                        };
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= deadline {
                    return Verification {
                        reachable: false,
                        detail: format!(
                            "the relay's connection from outside did not arrive within {} s: the \
                             mapping does not make this port reachable",
                            defaults::PORTMAP_VERIFY_TIMEOUT.as_secs()
                        ),
                    };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// --keep

/// What `--keep` reports while it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum KeepEvent {
    /// The lease was renewed.
    Renewed {
        /// Lease granted.
        lifetime: u32,
        /// External port.
        external_port: u16,
    },
    /// The mapping was gone (router restart) and was made again.
    Recreated {
        /// How natkit noticed.
        reason: String,
        /// External port now.
        external_port: u16,
    },
    /// The router does not answer or refuses; natkit keeps trying.
    Trouble {
        /// In words.
        reason: String,
    },
    /// Removed on exit.
    Removed {
        /// Whether the router confirmed.
        ok: bool,
        /// In words.
        detail: String,
    },
}

/// Whether the router lost its state, judged from its epoch (seconds since its mappings
/// started) against our clock.
fn router_restarted(via: Method, prev: (u32, Instant), now: (u32, Instant)) -> bool {
    match via {
        Method::Natpmp => natpmp::epoch_went_back(prev, now),
        Method::Pcp => pcp::epoch_went_back(prev, now),
        Method::Upnp => false,
    }
}

/// The router's current epoch (NAT-PMP: external-address request; PCP: ANNOUNCE), or for UPnP
/// whether the mapping is still in its table. `Err` when the router does not answer.
async fn check(ctx: &Ctx, m: &Mapping) -> Result<Check, String> {
    match m.via {
        Method::Natpmp => match ask_natpmp(ctx, natpmp::Request::ExternalAddress).await? {
            natpmp::Response::ExternalAddress { epoch, .. } => Ok(Check::Epoch(epoch)),
            _ => Err("unexpected answer".into()),
        },
        Method::Pcp => {
            let r = ask_pcp(ctx, pcp::Request::announce(IpAddr::V4(ctx.local_ip))).await?;
            Ok(Check::Epoch(r.epoch))
        }
        Method::Upnp => {
            let (g, _) = upnp_find(ctx).await?;
            for i in 0..MAX_UPNP_ENTRIES {
                match tokio::time::timeout(
                    defaults::UPNP_CALL_TIMEOUT,
                    g.get_generic_port_mapping_entry(i),
                )
                .await
                {
                    Ok(Ok(e)) => {
                        if e.external_port == m.external_port
                            && igd_proto(m.proto) == e.protocol
                            && e.internal_client == m.internal.ip().to_string()
                        {
                            return Ok(Check::Present(true));
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) => return Err("the router stopped answering".into()),
                }
            }
            Ok(Check::Present(false))
        }
    }
}

enum Check {
    Epoch(u32),
    Present(bool),
}

/// The socket on which routers announce a restart or a new external address to every host
/// on the LAN: 224.0.0.1:5350 (RFC 6886 §3.2.1, RFC 6887 §14.1.3). Shared with other clients
/// (SO_REUSEADDR); `None` when it cannot be bound, and then the periodic check alone notices.
fn announce_socket(ctx: &Ctx) -> Option<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    s.set_reuse_address(true).ok()?;
    s.set_reuse_port(true).ok()?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, natpmp::CLIENT_PORT)).into())
        .ok()?;
    let _ = s.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 1), &ctx.local_ip);
    s.set_nonblocking(true).ok()?;
    UdpSocket::from_std(s.into()).ok()
}

/// A PCP ANNOUNCE response or a NAT-PMP external-address announcement.
fn is_announcement(b: &[u8]) -> bool {
    matches!(pcp::Response::parse(b), Ok(r) if r.is_announce())
        || matches!(
            natpmp::Response::parse(b),
            Ok(natpmp::Response::ExternalAddress { .. })
        )
}

/// Holds a mapping until `shutdown` resolves: renews at half the lease (RFC 6886 §3.3),
/// checks the router every [`defaults::PORTMAP_CHECK_INTERVAL`] and re-creates the mapping
/// when the router restarted (epoch went back, RFC 6886 §3.6 / RFC 6887 §8.5) or the mapping
/// vanished from the UPnP table; on shutdown removes it and its record.
pub async fn keep(
    ctx: &Ctx,
    req: MapRequest,
    mut m: Mapping,
    mut on_event: impl FnMut(&KeepEvent),
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut granted = Instant::now();
    let mut epoch = m.epoch.map(|e| (e, granted));
    let mut troubled = false;
    let mut next_check = Instant::now() + defaults::PORTMAP_CHECK_INTERVAL;
    let announcements = announce_socket(ctx);
    let mut buf = [0u8; 1100];
    let mut announced = false;
    loop {
        let renew_at = if m.lifetime == 0 {
            None
        } else {
            Some(granted + Duration::from_secs(u64::from(m.lifetime / 2).max(1)))
        };
        let wake = renew_at.map_or(next_check, |r| r.min(next_check));
        let heard = async {
            match &announcements {
                Some(s) => s.recv_from(&mut buf).await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
            Some((n, from)) = heard => {
                if from.ip() == IpAddr::V4(ctx.gateway) && is_announcement(&buf[..n]) {
                    // The router says it (re)started or its address changed: map again now
                    // (idempotent if the mapping survived; PCP keeps the same nonce).
                    announced = true;
                } else {
                    continue;
                }
            }
        }
        let now = Instant::now();
        let mut redo: Option<String> = None;
        if std::mem::take(&mut announced) {
            redo = Some("the router announced a restart or a new address".into());
        } else if renew_at.is_some_and(|r| now >= r) {
            redo = Some(String::new());
        } else if now >= next_check {
            next_check = now + defaults::PORTMAP_CHECK_INTERVAL;
            match check(ctx, &m).await {
                Ok(Check::Epoch(e)) => {
                    if epoch.is_some_and(|p| router_restarted(m.via, p, (e, Instant::now()))) {
                        redo = Some("the router restarted (its epoch went back)".into());
                    }
                    epoch = Some((e, Instant::now()));
                    troubled = false;
                }
                Ok(Check::Present(false)) => {
                    redo = Some("the mapping vanished from the router's table".into())
                }
                Ok(Check::Present(true)) => troubled = false,
                Err(e) => {
                    if !troubled {
                        on_event(&KeepEvent::Trouble {
                            reason: format!("checking the router: {e}"),
                        });
                    }
                    troubled = true;
                    // A router that was down may come back without its mappings.
                    epoch = None;
                    if m.via == Method::Upnp {
                        continue;
                    }
                    redo = Some(String::new());
                }
            }
        }
        let Some(reason) = redo else { continue };
        let wish = MapRequest {
            external_port: m.external_port,
            ..req
        };
        let nonce = m.nonce.as_deref().and_then(unhex12);
        let mut notes = Vec::new();
        match map_once(ctx, m.via, wish, nonce, &mut notes).await {
            Ok(new) => {
                let restarted = match (epoch, new.epoch) {
                    (Some(p), Some(e)) => router_restarted(m.via, p, (e, Instant::now())),
                    _ => false,
                };
                let reason = if restarted && reason.is_empty() {
                    "the router restarted (its epoch went back)".to_string()
                } else if troubled && reason.is_empty() {
                    "the router answers again".to_string()
                } else {
                    reason
                };
                granted = Instant::now();
                epoch = new.epoch.map(|e| (e, granted));
                m = new;
                troubled = false;
                let _ = State::record(&ctx.state, &m);
                if reason.is_empty() {
                    on_event(&KeepEvent::Renewed {
                        lifetime: m.lifetime,
                        external_port: m.external_port,
                    });
                } else {
                    on_event(&KeepEvent::Recreated {
                        reason,
                        external_port: m.external_port,
                    });
                }
            }
            Err(e) => {
                if !troubled {
                    on_event(&KeepEvent::Trouble {
                        reason: format!("renewing: {e}"),
                    });
                }
                troubled = true;
                next_check = Instant::now() + defaults::PORTMAP_CHECK_INTERVAL;
                // Retry at the next check rather than at once.
                granted = Instant::now()
                    .checked_sub(Duration::from_secs(u64::from(m.lifetime / 2)))
                    .unwrap_or(granted)
                    + defaults::PORTMAP_CHECK_INTERVAL;
            }
        }
    }
    let r = unmap(ctx, &m).await;
    let _ = State::forget(&ctx.state, &m);
    on_event(&KeepEvent::Removed {
        ok: r.is_ok(),
        detail: match r {
            Ok(()) => format!("removed {} {} → {}", m.proto, m.external_port, m.internal),
            Err(e) => format!("removing: {e}"),
        },
    });
}

// ---------------------------------------------------------------------------------------------
// Text for people.

mod human {
    use super::*;
    use crate::app::output::Human;
    use colored::Colorize;
    use std::io::{self, Write};

    fn status(w: &mut dyn Write, name: &str, s: &ProtocolStatus) -> io::Result<()> {
        let mark = if s.available {
            "yes".green().to_string()
        } else {
            "no".yellow().to_string()
        };
        let t = s.ms.map(|m| format!(" ({m} ms)")).unwrap_or_default();
        writeln!(w, "  {name:<8} {mark}{t}  {}", s.detail.dimmed())
    }

    fn why(w: &mut dyn Write, why: &Option<String>) -> io::Result<()> {
        if let Some(y) = why {
            writeln!(w, "{} {y}", "Why it cannot help:".red().bold())?;
        }
        Ok(())
    }

    impl Human for ProbeReport {
        fn human(&self, w: &mut dyn Write) -> io::Result<()> {
            writeln!(w, "Router {} (this host {})", self.gateway, self.local_ip)?;
            status(w, "PCP", &self.pcp)?;
            status(w, "NAT-PMP", &self.natpmp)?;
            status(w, "UPnP", &self.upnp)?;
            if let Some(ip) = self.external_ip {
                writeln!(w, "External address: {ip}")?;
            }
            if self.available.is_empty() {
                writeln!(w, "{}", "No port-mapping protocol answers.".yellow())?;
            }
            why(w, &self.why)
        }
    }

    impl Human for ExternalIpReport {
        fn human(&self, w: &mut dyn Write) -> io::Result<()> {
            match (self.external_ip, self.via) {
                (Some(ip), Some(via)) => writeln!(w, "{ip} (from {via})")?,
                _ => writeln!(
                    w,
                    "{}",
                    "The router did not tell its external address.".yellow()
                )?,
            }
            if self.external_ip.is_some() {
                why(w, &self.why)?;
            } else if let Some(y) = &self.why {
                writeln!(w, "{}", y.dimmed())?;
            }
            Ok(())
        }
    }

    impl Human for AddReport {
        fn human(&self, w: &mut dyn Write) -> io::Result<()> {
            match &self.mapping {
                Some(m) => {
                    let life = if m.lifetime == 0 {
                        "permanent".to_string()
                    } else {
                        format!("{} s", m.lifetime)
                    };
                    writeln!(
                        w,
                        "{} {} {} → {} via {} ({life})",
                        "Mapped".green().bold(),
                        m.proto,
                        self.external.as_deref().unwrap_or("?"),
                        m.internal,
                        m.via.name(),
                    )?;
                }
                None => writeln!(
                    w,
                    "{}",
                    "No mapping: the router refused or did not answer."
                        .red()
                        .bold()
                )?,
            }
            for a in &self.attempts {
                if !a.ok {
                    writeln!(w, "  {}: {}", a.via.name(), a.detail.dimmed())?;
                }
            }
            for n in &self.notes {
                writeln!(w, "  note: {n}")?;
            }
            why(w, &self.why)?;
            if let Some(v) = &self.verify {
                let head = if v.reachable {
                    "Reachable from outside:".green().bold()
                } else {
                    "Not reachable from outside:".red().bold()
                };
                writeln!(w, "{head} {}", v.detail)?;
            }
            Ok(())
        }
    }

    impl Human for DeleteReport {
        fn human(&self, w: &mut dyn Write) -> io::Result<()> {
            for m in &self.removed {
                writeln!(
                    w,
                    "{} {} {} → {} ({})",
                    "Removed".green().bold(),
                    m.proto,
                    m.external_port,
                    m.internal,
                    m.via.name()
                )?;
            }
            for f in &self.failed {
                writeln!(w, "{} {f}", "Not removed:".yellow().bold())?;
            }
            Ok(())
        }
    }

    impl Human for ListReport {
        fn human(&self, w: &mut dyn Write) -> io::Result<()> {
            if self.mappings.is_empty() {
                writeln!(w, "No mappings on router {}.", self.gateway)?;
            } else {
                writeln!(
                    w,
                    "{:<7} {:<6} {:<4} {:>8}  {:<22} {:>9}  description",
                    "source", "via", "proto", "external", "internal", "lease"
                )?;
            }
            for e in &self.mappings {
                let lease = match (e.lifetime, e.expires_in) {
                    (0, _) => "permanent".to_string(),
                    (_, Some(left)) => format!("{left} s left"),
                    (l, None) => format!("{l} s"),
                };
                let mine = if e.mine { " (natkit)" } else { "" };
                writeln!(
                    w,
                    "{:<7} {:<6} {:<4} {:>8}  {:<22} {:>9}  {}{mine}",
                    e.source,
                    e.via.name(),
                    e.proto.to_string(),
                    e.external_port,
                    e.internal,
                    lease,
                    e.description
                )?;
            }
            for n in &self.notes {
                writeln!(w, "  note: {}", n.dimmed())?;
            }
            Ok(())
        }
    }

    impl Human for KeepEvent {
        fn human(&self, w: &mut dyn Write) -> io::Result<()> {
            match self {
                KeepEvent::Renewed {
                    lifetime,
                    external_port,
                } => writeln!(w, "renewed: external port {external_port}, {lifetime} s"),
                KeepEvent::Recreated {
                    reason,
                    external_port,
                } => writeln!(
                    w,
                    "{} {reason}; mapped again on external port {external_port}",
                    "re-created:".yellow().bold()
                ),
                KeepEvent::Trouble { reason } => {
                    writeln!(w, "{} {reason}", "trouble:".yellow().bold())
                }
                KeepEvent::Removed { detail, .. } => writeln!(w, "{detail}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_read_from_the_kernel_table() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(t), Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(parse_route_table("Iface\n"), None);
        assert_eq!(
            parse_route_table("x\n eth0 00000000 zz 0 0 0 0 00000000"),
            None
        );
    }

    /// Bytes miniupnpd 2.3.1 sent to 224.0.0.1:5350 when it started (captured in the lab).
    #[test]
    fn a_pcp_announce_from_a_restarted_router_is_recognised() {
        let mut b = vec![2u8, 0x80, 0, 0];
        b.extend_from_slice(&[0; 20]);
        assert!(is_announcement(&b));
        // A MAP response, junk and a request are not announcements.
        assert!(!is_announcement(&[2, 0x81, 0, 0]));
        assert!(!is_announcement(b"M-SEARCH * HTTP/1.1"));
        b[1] = 0;
        assert!(!is_announcement(&b));
    }

    #[test]
    fn external_addresses_that_cannot_help_are_named() {
        for (ip, k) in [
            ("203.0.113.21", ExternalKind::Public),
            ("0.0.0.0", ExternalKind::Unspecified),
            ("192.168.0.2", ExternalKind::Private),
            ("100.64.1.2", ExternalKind::Cgnat),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ExternalKind::of(ip), k, "{ip}");
            assert_eq!(k.problem(ip).is_none(), k == ExternalKind::Public);
        }
    }

    #[test]
    fn state_records_replace_and_forget() {
        let dir = std::env::temp_dir().join(format!("natkit-state-{}", std::process::id()));
        let path = dir.join("portmap.json");
        let m = Mapping {
            via: Method::Pcp,
            proto: Proto::Udp,
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            internal: "192.168.1.2:9000".parse().unwrap(),
            external_ip: None,
            external_port: 19000,
            lifetime: 60,
            nonce: Some(hex(&[7; 12])),
            epoch: Some(5),
            granted_at: 1,
        };
        State::record(&path, &m).unwrap();
        State::record(
            &path,
            &Mapping {
                lifetime: 120,
                ..m.clone()
            },
        )
        .unwrap();
        let s = State::load(&path).unwrap();
        assert_eq!(s.mappings.len(), 1);
        assert_eq!(s.mappings[0].lifetime, 120);
        assert_eq!(
            s.mappings[0].nonce.as_deref().and_then(unhex12),
            Some([7; 12])
        );
        State::forget(&path, &m).unwrap();
        assert!(State::load(&path).unwrap().mappings.is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(State::load(&path), Err(PortmapError::State(..))));
        let _ = std::fs::remove_dir_all(dir);
    }
}
