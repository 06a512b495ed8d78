//! UPnP IGD:2 IPv6 pinholes (WANIPv6FirewallControl: AddPinhole, UpdatePinhole,
//! DeletePinhole, GetFirewallStatus, GetPinholePackets) over HTTP to the router's IPv6
//! address, the SOAP bytes from [`crate::proto::portmap::upnp6`].
//!
//! The IGD is found by SSDP over IPv6 (a router such as miniupnpd may serve its IPv6 HTTP
//! port on its IPv6 address only). The calls go out from this host's global address: routers
//! such as miniupnpd open a pinhole only for the address that asks.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use super::gateway::{ms, Ctx, V6};
use super::state::{Grant, MapRequest};
use crate::defaults;
use crate::proto::portmap::pcp::protocol_number;
use crate::proto::portmap::upnp6::{self, Answer};
use crate::proto::portmap::ProtocolStatus;

/// The router's pinhole service: where to send and what to put in `Host:`.
struct Service {
    addr: SocketAddr,
    host: String,
    path: String,
}

/// One HTTP exchange from our global address to `addr`, read to the end, under
/// [`defaults::UPNP_CALL_TIMEOUT`].
async fn http(v6: V6, addr: SocketAddr, req: Vec<u8>) -> Result<Vec<u8>, String> {
    let call = async {
        let s = TcpSocket::new_v6()?;
        s.bind(SocketAddr::from((v6.host, 0)))?;
        let mut c = s.connect(addr).await?;
        c.write_all(&req).await?;
        let mut out = Vec::new();
        (&mut c)
            .take(upnp6::MAX_ANSWER as u64)
            .read_to_end(&mut out)
            .await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(defaults::UPNP_CALL_TIMEOUT, call).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!(
            "the router did not answer within {} s",
            defaults::UPNP_CALL_TIMEOUT.as_secs()
        )),
    }
}

/// SSDP over IPv6 (UPnP Device Architecture 1.1 §1.3.2): a unicast M-SEARCH to the router
/// (answered at once) and a multicast one to ff02::c on its link, resent on
/// [`defaults::PORTMAP_RTO`]; only the router's own answer counts. Its description's port and
/// path.
async fn search(ctx: &Ctx, v6: V6) -> Result<(u16, String), String> {
    let none = || "no UPnP IGD with IPv6 firewall control answered over IPv6".to_string();
    let s = UdpSocket::bind(SocketAddr::from((v6.host, 0)))
        .await
        .map_err(|e| e.to_string())?;
    let uni = SocketAddr::V6(SocketAddrV6::new(
        *v6.router.ip(),
        SSDP_PORT,
        0,
        v6.router.scope_id(),
    ));
    let multi = SocketAddr::V6(SocketAddrV6::new(SSDP_V6, SSDP_PORT, 0, v6.ifindex));
    let deadline = Instant::now() + ctx.timeout;
    let mut buf = [0u8; 2048];
    for _ in 0..defaults::PORTMAP_MAX_SENDS {
        let _ = s
            .send_to(
                &upnp6::msearch(&format!("[{}]:{SSDP_PORT}", v6.router.ip())),
                uni,
            )
            .await;
        let _ = s.send_to(&upnp6::msearch("[ff02::c]:1900"), multi).await;
        let wait = (Instant::now() + defaults::PORTMAP_RTO).min(deadline);
        while let Ok(r) = tokio::time::timeout_at(wait.into(), s.recv_from(&mut buf)).await {
            let Ok((n, from)) = r else { break };
            if from.ip() != std::net::IpAddr::V6(*v6.router.ip()) {
                continue;
            }
            if let Some(found) = upnp6::location(&buf[..n]) {
                return Ok(found);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(none())
}

/// SSDP's port.
const SSDP_PORT: u16 = 1900;
/// SSDP's link-local IPv6 multicast group (UPnP Device Architecture 1.1 §1.1.2).
const SSDP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xc);

/// Finds the IGD and its WANIPv6FirewallControl service on the router's IPv6 address.
async fn find(ctx: &Ctx) -> Result<Service, String> {
    let v6 = ctx.v6.ok_or("not an IPv6 context")?;
    let (port, root) = search(ctx, v6).await?;
    let addr = SocketAddr::V6(SocketAddrV6::new(
        *v6.router.ip(),
        port,
        0,
        v6.router.scope_id(),
    ));
    let host = format!("[{}]:{port}", v6.router.ip());
    let desc = http(v6, addr, upnp6::get(&host, &root)).await?;
    let desc = match upnp6::answer(&desc) {
        Answer::Ok(b) => b,
        Answer::Fault(c, d) => return Err(format!("description: UPnP error {c} {d}")),
        Answer::Bad(e) => return Err(format!("description: {e}")),
    };
    let path = upnp6::control_url(&desc)
        .ok_or("the IGD offers no IPv6 firewall control (WANIPv6FirewallControl, IGD:2)")?;
    Ok(Service { addr, host, path })
}

/// One SOAP action; the answer's body, or the UPnP error code and words.
async fn call(
    ctx: &Ctx,
    s: &Service,
    action: &str,
    args: &[(&str, String)],
) -> Result<Result<String, (u32, String)>, String> {
    let v6 = ctx.v6.ok_or("not an IPv6 context")?;
    let raw = http(v6, s.addr, upnp6::soap(&s.host, &s.path, action, args)).await?;
    match upnp6::answer(&raw) {
        Answer::Ok(b) => Ok(Ok(b)),
        Answer::Fault(c, d) => Ok(Err((c, d))),
        Answer::Bad(e) => Err(format!("{action}: {e}")),
    }
}

/// A call whose UPnP error is a failure, in words.
async fn must(
    ctx: &Ctx,
    s: &Service,
    action: &str,
    args: &[(&str, String)],
) -> Result<String, String> {
    call(ctx, s, action, args)
        .await?
        .map_err(|(c, d)| format!("the router refused {action}: UPnP error {c} {d}"))
}

/// `portmap probe`'s IPv6 UPnP line: GetFirewallStatus (§2.5.1).
pub(super) async fn probe(ctx: &Ctx) -> ProtocolStatus {
    let t0 = Instant::now();
    let r = async {
        let s = find(ctx).await?;
        let b = must(ctx, &s, "GetFirewallStatus", &[]).await?;
        Ok::<_, String>((s, b))
    }
    .await;
    match r {
        Ok((s, b)) => {
            let yes = |t| upnp6::tag(&b, t).is_some_and(|v| v == "1" || v == "true");
            let (fw, allowed) = (yes("FirewallEnabled"), yes("InboundPinholeAllowed"));
            ProtocolStatus {
                available: allowed,
                ms: Some(ms(t0.elapsed())),
                external_ip: None,
                url: Some(format!("http://{}{}", s.host, s.path)),
                detail: match (fw, allowed) {
                    (_, true) => "IGD:2 pinholes allowed".into(),
                    (false, false) => "the IPv6 firewall is off: no pinhole needed".into(),
                    (true, false) => "the router does not allow inbound pinholes".into(),
                },
            }
        }
        Err(e) => ProtocolStatus::no(e),
    }
}

/// AddPinhole for any remote host and port (§2.5.4): the lease is 1..86400 s.
pub(super) async fn add(ctx: &Ctx, req: MapRequest) -> Result<Grant, String> {
    let v6 = ctx.v6.ok_or("not an IPv6 context")?;
    if req.lifetime == 0 {
        return Err("UPnP pinholes have no permanent lease (IGD:2 §2.5.4); give --lifetime".into());
    }
    let lease = req.lifetime.min(upnp6::MAX_LEASE);
    let s = find(ctx).await?;
    let b = must(
        ctx,
        &s,
        "AddPinhole",
        &[
            ("RemoteHost", String::new()),
            ("RemotePort", "0".into()),
            ("InternalClient", v6.host.to_string()),
            ("InternalPort", req.internal_port.to_string()),
            ("Protocol", protocol_number(req.proto).to_string()),
            ("LeaseTime", lease.to_string()),
        ],
    )
    .await?;
    let id = upnp6::tag(&b, "UniqueID")
        .and_then(|v| v.parse().ok())
        .ok_or("AddPinhole: no UniqueID in the answer")?;
    Ok(granted(v6, req, lease, id))
}

/// A pinhole `id` for our global address and `req`'s port (no NAT: the port is the same
/// outside).
fn granted(v6: V6, req: MapRequest, lease: u32, id: u16) -> Grant {
    Grant {
        external_port: req.internal_port,
        lifetime: lease,
        external_ip: Some(v6.host.into()),
        nonce: None,
        epoch: None,
        pinhole_id: Some(id),
    }
}

/// UpdatePinhole (§2.5.5): a new lease for pinhole `id`.
pub(super) async fn update(ctx: &Ctx, id: u16, req: MapRequest) -> Result<Grant, String> {
    let v6 = ctx.v6.ok_or("not an IPv6 context")?;
    let lease = req.lifetime.clamp(1, upnp6::MAX_LEASE);
    let s = find(ctx).await?;
    must(
        ctx,
        &s,
        "UpdatePinhole",
        &[
            ("UniqueID", id.to_string()),
            ("NewLeaseTime", lease.to_string()),
        ],
    )
    .await?;
    Ok(granted(v6, req, lease, id))
}

/// DeletePinhole (§2.5.6).
pub(super) async fn delete(ctx: &Ctx, id: u16) -> Result<(), String> {
    let s = find(ctx).await?;
    must(ctx, &s, "DeletePinhole", &[("UniqueID", id.to_string())])
        .await
        .map(|_| ())
}

/// Whether pinhole `id` still exists: GetPinholePackets (§2.5.8) answers NoSuchEntry (704)
/// once it is gone. `Err` when the router does not answer.
pub(super) async fn present(ctx: &Ctx, id: u16) -> Result<bool, String> {
    let s = find(ctx).await?;
    match call(
        ctx,
        &s,
        "GetPinholePackets",
        &[("UniqueID", id.to_string())],
    )
    .await?
    {
        Ok(_) => Ok(true),
        Err((upnp6::NO_SUCH_ENTRY, _)) => Ok(false),
        Err((c, d)) => Err(format!("GetPinholePackets: UPnP error {c} {d}")),
    }
}
