//! portmap's driver: asks the router for a port with whichever of PCP, NAT-PMP and UPnP IGD it
//! speaks, and carries out `portmap probe`, `external-ip`, `add`, `delete` and `list`.
//!
//! - `gateway`: the router, our address on its LAN, whether its external address is its own;
//! - `natpmp_pcp`: the sans-IO NAT-PMP/PCP transactions ([`crate::proto::portmap`]) over UDP;
//! - `upnp`: UPnP IGD through igd-next with natkit's own timeouts;
//! - `pinhole`: UPnP IGD:2 IPv6 firewall pinholes (`--ipv6`; PCP pinholes are `natpmp_pcp`'s);
//! - `state`: the state file of the mappings natkit made;
//! - `verify`: a relay's connection from outside that checks a mapping;
//! - `keep`: renewal, router-restart detection and announcements while `--keep` runs.

mod gateway;
mod keep;
mod natpmp_pcp;
mod pinhole;
mod state;
mod upnp;
mod verify;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Instant;

use serde::Serialize;

pub use gateway::{default_gateway, find_v6, Ctx, PortmapError, V6};
pub use keep::{keep, KeepEvent};
pub use state::{MapRequest, Mapping, Method, State};
pub use verify::{verify, Verification};

use crate::proto::portmap::{ExternalKind, Ipv6Probe, ProbeReport, Proto, ProtocolStatus, Via};
use gateway::{classify_external, ms};
use natpmp_pcp::{probe_natpmp, probe_pcp};
use upnp::{probe_upnp, TableEnd};

/// JSON schema version of every portmap report.
pub const SCHEMA: u32 = 1;

// ---------------------------------------------------------------------------------------------
// probe / external-ip

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
        ipv6: None,
    }
}

/// `portmap probe`: [`probe`] of the IPv4 protocols and, at the same time, whether the
/// router opens IPv6 pinholes (PCP and UPnP IGD:2 over IPv6).
pub async fn probe_all(ctx: &Ctx) -> ProbeReport {
    let v4 = Ctx {
        v6: None,
        ..ctx.clone()
    };
    let (mut rep, v6) = tokio::join!(probe(&v4), probe_ipv6(ctx));
    rep.elapsed_ms = rep.elapsed_ms.max(v6.1);
    rep.ipv6 = Some(v6.0);
    rep
}

/// The IPv6 part of `portmap probe` and its wall time; a host without IPv6 is known at once.
async fn probe_ipv6(ctx: &Ctx) -> (Ipv6Probe, u64) {
    let t0 = Instant::now();
    let v6 = match ctx.v6.map_or_else(find_v6, Ok) {
        Ok(v6) => v6,
        Err(e) => {
            let no = ProtocolStatus::no(e);
            let p = Ipv6Probe {
                router: None,
                host: None,
                available: Vec::new(),
                pcp: no.clone(),
                upnp: no,
            };
            return (p, ms(t0.elapsed()));
        }
    };
    let ctx6 = Ctx {
        v6: Some(v6),
        ..ctx.clone()
    };
    let (pcp, upnp) = tokio::join!(probe_pcp(&ctx6), pinhole::probe(&ctx6));
    let available = [("pcp", &pcp), ("upnp", &upnp)]
        .into_iter()
        .filter_map(|(n, s)| s.available.then_some(n))
        .collect();
    let p = Ipv6Probe {
        router: Some(*v6.router.ip()),
        host: Some(v6.host),
        available,
        pcp,
        upnp,
    };
    (p, ms(t0.elapsed()))
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
// Mappings: one protocol's map and unmap.

/// Asks one protocol for a mapping (also used to renew `prev`: same request again, with a PCP
/// mapping's own nonce, or UpdatePinhole for a UPnP pinhole). Notes say what the router did
/// differently from what was asked.
async fn map_once(
    ctx: &Ctx,
    via: Method,
    req: MapRequest,
    prev: Option<&Mapping>,
    notes: &mut Vec<String>,
) -> Result<Mapping, String> {
    let grant = match via {
        Method::Pcp => natpmp_pcp::map_pcp(ctx, req, prev.and_then(Mapping::pcp_nonce)).await?,
        Method::Natpmp if ctx.v6.is_some() => {
            return Err("NAT-PMP maps IPv4 only (RFC 6886 §1): use PCP or UPnP".into())
        }
        Method::Natpmp => natpmp_pcp::map_natpmp(ctx, req).await?,
        Method::Upnp if ctx.v6.is_some() => match prev.and_then(|m| m.pinhole_id) {
            // A pinhole that vanished (router restart) cannot be updated: open it anew.
            Some(id) => match pinhole::update(ctx, id, req).await {
                Ok(g) => g,
                Err(_) => pinhole::add(ctx, req).await?,
            },
            None => pinhole::add(ctx, req).await?,
        },
        Method::Upnp => upnp::map_upnp(ctx, req, notes).await?,
    };
    let internal = SocketAddr::new(ctx.client_ip(), req.internal_port);
    Ok(Mapping::granted(
        via,
        req.proto,
        ctx.gateway,
        internal,
        grant,
    ))
}

/// Removes one mapping with the protocol that made it.
async fn unmap(ctx: &Ctx, m: &Mapping) -> Result<(), String> {
    match m.via {
        Method::Pcp => natpmp_pcp::unmap_pcp(ctx, m).await,
        Method::Natpmp => natpmp_pcp::unmap_natpmp(ctx, m).await,
        Method::Upnp => match m.pinhole_id {
            Some(id) => pinhole::delete(ctx, id).await,
            None => upnp::unmap_upnp(ctx, m).await,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// add

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
    if via == Via::Natpmp && ctx.v6.is_some() {
        attempts.push(Attempt {
            via: Method::Natpmp,
            ok: false,
            detail: "NAT-PMP maps IPv4 only (RFC 6886 §1): use --via pcp or upnp".into(),
        });
    }
    for &m in Method::order(via, ctx.v6.is_some()) {
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
        // A pinhole is for our own global address: there is no NAT to classify.
        _ if ctx.v6.is_some() => None,
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
    let v6 = ctx.v6.is_some();
    let wanted = |m: &&Mapping| {
        m.gateway == ctx.gateway
            && m.internal.is_ipv6() == v6
            && Method::order(via, v6).contains(&m.via)
            && port.is_none_or(|p| m.proto == proto && m.internal.port() == p)
    };
    let mut targets: Vec<Mapping> = state.mappings.iter().filter(wanted).cloned().collect();
    // A pinhole is deleted only with its PCP nonce or UPnP UniqueID: without a record, none.
    if let (Some(p), true, false) = (port, targets.is_empty(), v6) {
        // Not ours (or made by another tool): ask what can delete without a record.
        for &m in Method::order(via, v6) {
            if m == Method::Pcp {
                continue; // PCP deletes only with the mapping's nonce (RFC 6887 §15).
            }
            targets.push(Mapping {
                via: m,
                proto,
                gateway: ctx.gateway,
                internal: SocketAddr::new(ctx.client_ip(), p),
                external_ip: None,
                external_port: p,
                lifetime: 0,
                nonce: None,
                epoch: None,
                granted_at: 0,
                pinhole_id: None,
            });
        }
    }
    // PCP last: see `unmap_pcp` (a router may confuse mappings of the same internal port).
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

/// The router's UPnP table plus natkit's NAT-PMP/PCP records (routers cannot list those);
/// with `--ipv6` natkit's pinhole records (neither PCP nor IGD:2 can list pinholes).
pub async fn list(ctx: &Ctx) -> Result<ListReport, PortmapError> {
    let state = State::load(&ctx.state)?;
    let v6 = ctx.v6.is_some();
    let mut mine: Vec<&Mapping> = state
        .mappings
        .iter()
        .filter(|m| m.gateway == ctx.gateway && m.internal.is_ipv6() == v6)
        .collect();
    let mut rep = ListReport {
        schema: SCHEMA,
        gateway: ctx.gateway,
        upnp_table: false,
        mappings: Vec::new(),
        notes: Vec::new(),
    };
    // Pinholes are not in the IPv4 table: no search for it.
    let found = if v6 {
        None
    } else {
        Some(upnp::upnp_find(ctx).await)
    };
    match found {
        None => rep
            .notes
            .push("routers cannot list IPv6 pinholes: these are natkit's records".into()),
        Some(Ok((g, _))) => {
            rep.upnp_table = true;
            let end = upnp::read_table(&g, |e| {
                let proto = upnp::proto_of(e.protocol);
                // Routers such as miniupnpd show NAT-PMP and PCP mappings in the UPnP table
                // too: a row natkit recorded is marked with its real protocol.
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
                ControlFlow::Continue(())
            })
            .await;
            match end {
                TableEnd::Done => {}
                TableEnd::Unreadable(e) => rep.notes.push(format!("reading the UPnP table: {e}")),
                TableEnd::Silent => rep
                    .notes
                    .push("the router stopped answering while listing".into()),
            }
        }
        Some(Err(e)) => rep.notes.push(format!("UPnP: {e}")),
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
