//! UPnP IGD through igd-next, every call under natkit's own timeouts: finding the gateway's
//! IGD, mapping, unmapping and reading its port-mapping table.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use igd_next::{PortMappingEntry, PortMappingProtocol};
use tokio::net::UdpSocket;

use super::gateway::{ms, Ctx};
use super::state::{Grant, MapRequest, Mapping};
use crate::defaults;
use crate::proto::portmap::{Proto, ProtocolStatus};

/// The IGD client, on tokio.
pub(super) type Igd = igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>;

/// Finds the router's IGD: a unicast M-SEARCH to the gateway (answered at once; a multicast
/// one waits a random part of MX seconds, UPnP Device Architecture 1.1 §1.3.3) races a
/// multicast one (for devices that ignore unicast searches). Only the gateway's own IGD counts.
pub(super) async fn upnp_find(ctx: &Ctx) -> Result<(Igd, Duration), String> {
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
        for _ in 0..defaults::PORTMAP_ICMP_SENDS {
            if let Err(e) = s.send(probe.as_bytes()).await {
                return (e.kind() == std::io::ErrorKind::ConnectionRefused).then_some(());
            }
            match tokio::time::timeout(defaults::PORTMAP_ICMP_WAIT, s.recv(&mut buf)).await {
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

/// One SOAP call under [`defaults::UPNP_CALL_TIMEOUT`], its error in words.
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

fn igd_proto(p: Proto) -> PortMappingProtocol {
    match p {
        Proto::Tcp => PortMappingProtocol::TCP,
        Proto::Udp => PortMappingProtocol::UDP,
    }
}

/// The transport of a table row.
pub(super) fn proto_of(p: PortMappingProtocol) -> Proto {
    match p {
        PortMappingProtocol::TCP => Proto::Tcp,
        PortMappingProtocol::UDP => Proto::Udp,
    }
}

/// `portmap probe`'s UPnP line: the IGD and its GetExternalIPAddress.
pub(super) async fn probe_upnp(ctx: &Ctx) -> ProtocolStatus {
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

/// AddPortMapping; `notes` says when the router would only take a permanent lease.
pub(super) async fn map_upnp(
    ctx: &Ctx,
    req: MapRequest,
    notes: &mut Vec<String>,
) -> Result<Grant, String> {
    let (g, _) = upnp_find(ctx).await?;
    let internal = SocketAddrV4::new(ctx.local_ip, req.internal_port);
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
    let external_ip = upnp_call(g.get_external_ip()).await.ok();
    Ok(Grant {
        external_port: req.external_port,
        lifetime,
        external_ip,
        nonce: None,
        epoch: None,
        pinhole_id: None,
    })
}

/// DeletePortMapping.
pub(super) async fn unmap_upnp(ctx: &Ctx, m: &Mapping) -> Result<(), String> {
    let (g, _) = upnp_find(ctx).await?;
    upnp_call(g.remove_port(igd_proto(m.proto), m.external_port)).await
}

/// How reading the port-mapping table ended.
pub(super) enum TableEnd {
    /// Past its last row, at [`defaults::UPNP_MAX_ENTRIES`], or where the visitor stopped.
    Done,
    /// Not even the first row could be read.
    Unreadable(String),
    /// The router stopped answering.
    Silent,
}

/// Reads the table row by row (GetGenericPortMappingEntry), each call under
/// [`defaults::UPNP_CALL_TIMEOUT`], until `row` breaks or the table ends.
pub(super) async fn read_table(
    g: &Igd,
    mut row: impl FnMut(PortMappingEntry) -> ControlFlow<()>,
) -> TableEnd {
    for i in 0..defaults::UPNP_MAX_ENTRIES {
        let r = tokio::time::timeout(
            defaults::UPNP_CALL_TIMEOUT,
            g.get_generic_port_mapping_entry(i),
        )
        .await;
        match r {
            Ok(Ok(e)) => {
                if row(e).is_break() {
                    return TableEnd::Done;
                }
            }
            Ok(Err(igd_next::GetGenericPortMappingEntryError::SpecifiedArrayIndexInvalid)) => {
                return TableEnd::Done
            }
            // miniupnpd and others answer past the end with a generic error too.
            Ok(Err(e)) if i == 0 => return TableEnd::Unreadable(e.to_string()),
            Ok(Err(_)) => return TableEnd::Done,
            Err(_) => return TableEnd::Silent,
        }
    }
    TableEnd::Done
}

/// Whether the router's UPnP table still holds `m`. `Err` when the router does not answer.
pub(super) async fn holds(ctx: &Ctx, m: &Mapping) -> Result<bool, String> {
    let (g, _) = upnp_find(ctx).await?;
    let mut found = false;
    let end = read_table(&g, |e| {
        found = e.external_port == m.external_port
            && igd_proto(m.proto) == e.protocol
            && e.internal_client == m.internal.ip().to_string();
        if found {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await;
    match end {
        TableEnd::Silent => Err("the router stopped answering".into()),
        TableEnd::Done | TableEnd::Unreadable(_) => Ok(found),
    }
}
