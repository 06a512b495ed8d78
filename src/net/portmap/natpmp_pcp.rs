//! NAT-PMP (RFC 6886) and PCP (RFC 6887): the sans-IO client transactions of
//! [`crate::proto::portmap`] driven over UDP to the gateway's port 5351.
//!
//! Each request goes out on its own *connected* socket so an ICMP port-unreachable from a
//! router without a server surfaces as an immediate "refused" instead of a timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::gateway::{ms, Ctx, PortmapError};
use super::state::{Grant, MapRequest, Mapping, Method};
use crate::defaults;
use crate::proto::portmap::exchange::{Exchange as Tx, Protocol};
use crate::proto::portmap::{natpmp, pcp, ProtocolStatus};

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
    let any: IpAddr = match ctx.pmp_addr() {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = UdpSocket::bind((any, 0)).await?;
    sock.connect(ctx.pmp_addr()).await?;
    let t0 = Instant::now();
    let deadline = t0 + ctx.timeout;
    // RFC 6887 §7: no PCP message is longer (and NAT-PMP's are shorter).
    let mut buf = [0u8; pcp::MAX_LEN];
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

/// natkit's LAN schedule: resends from [`defaults::PORTMAP_RTO`], the last wait as long as
/// the caller's timeout (which caps the whole exchange anyway).
fn schedule(timeout: Duration) -> crate::proto::stun::Schedule {
    crate::proto::stun::Schedule {
        rto: defaults::PORTMAP_RTO,
        max_sends: defaults::PORTMAP_MAX_SENDS,
        final_wait: timeout,
    }
}

/// `portmap probe`'s NAT-PMP line: the external-address request (RFC 6886 §3.2).
pub(super) async fn probe_natpmp(ctx: &Ctx) -> ProtocolStatus {
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

/// `portmap probe`'s PCP line: an ANNOUNCE request (RFC 6887 §14.1).
pub(super) async fn probe_pcp(ctx: &Ctx) -> ProtocolStatus {
    let c = pcp::Client::new(
        Instant::now(),
        pcp::Request::announce(ctx.client_ip()),
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

/// A PCP MAP (RFC 6887 §11.1); renewing repeats the mapping's `nonce`, a new one is drawn
/// otherwise.
pub(super) async fn map_pcp(
    ctx: &Ctx,
    req: MapRequest,
    nonce: Option<[u8; 12]>,
) -> Result<Grant, String> {
    if req.lifetime == 0 {
        return Err("PCP has no permanent mappings (RFC 6887 §15); give --lifetime".into());
    }
    let nonce = nonce.unwrap_or_else(|| pcp::new_nonce(&mut rand::thread_rng()));
    let r = pcp::Request::map(
        ctx.client_ip(),
        pcp_map(ctx, nonce, req.proto, req.internal_port, req.external_port),
        req.lifetime,
    );
    let r = ask_pcp(ctx, r).await?;
    if r.result != pcp::ResultCode::Success {
        return Err(format!("the router refused: {}", r.result));
    }
    let (external_port, external_ip) = match r.op {
        pcp::Op::Map(m) => (m.external_port, Some(m.external_ip)),
        pcp::Op::Announce => (0, None),
    };
    Ok(Grant {
        external_port,
        lifetime: r.lifetime,
        external_ip,
        nonce: Some(nonce),
        epoch: Some(r.epoch),
        pinhole_id: None,
    })
}

/// A MAP opcode body; for an IPv6 pinhole the suggested external address is `::` (no
/// preference in the internal address's family, RFC 6887 §11.1).
fn pcp_map(
    ctx: &Ctx,
    nonce: [u8; 12],
    proto: crate::proto::portmap::Proto,
    internal_port: u16,
    external_port: u16,
) -> pcp::Map {
    let mut m = pcp::Map::new(nonce, proto, internal_port, external_port);
    if ctx.v6.is_some() {
        m.external_ip = Ipv6Addr::UNSPECIFIED.into();
    }
    m
}

/// A NAT-PMP mapping request (RFC 6886 §3.3), then the external address it does not carry.
pub(super) async fn map_natpmp(ctx: &Ctx, req: MapRequest) -> Result<Grant, String> {
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
            let external_ip = probe_natpmp(ctx).await.external_ip;
            Ok(Grant {
                external_port,
                lifetime,
                external_ip,
                nonce: None,
                epoch: Some(epoch),
                pinhole_id: None,
            })
        }
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// RFC 6887 §15: a MAP with lifetime 0 and the mapping's own nonce deletes it.
pub(super) async fn unmap_pcp(ctx: &Ctx, m: &Mapping) -> Result<(), String> {
    let nonce = m
        .pcp_nonce()
        .ok_or("no PCP nonce recorded for this mapping")?;
    let r = pcp::Request::delete(
        ctx.client_ip(),
        // The recorded external port too: miniupnpd 2.3 otherwise matches the first
        // mapping of this internal port, which may belong to another protocol, and
        // answers NOT_AUTHORIZED.
        pcp_map(ctx, nonce, m.proto, m.internal.port(), m.external_port),
    );
    match ask_pcp(ctx, r).await?.result {
        pcp::ResultCode::Success => Ok(()),
        refused => Err(format!("the router refused: {refused}")),
    }
}

/// RFC 6886 §3.4: lifetime 0 and suggested external port 0 delete the mapping.
pub(super) async fn unmap_natpmp(ctx: &Ctx, m: &Mapping) -> Result<(), String> {
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
        natpmp::Response::Map { result, .. } => Err(format!("the router refused: {result}")),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The router's current epoch, for noticing a restart: NAT-PMP's external-address request
/// (RFC 6886 §3.6) or a PCP ANNOUNCE (RFC 6887 §8.5). `Err` when it does not answer.
pub(super) async fn epoch(ctx: &Ctx, via: Method) -> Result<u32, String> {
    if via == Method::Pcp {
        let r = ask_pcp(ctx, pcp::Request::announce(ctx.client_ip())).await?;
        return Ok(r.epoch);
    }
    match ask_natpmp(ctx, natpmp::Request::ExternalAddress).await? {
        natpmp::Response::ExternalAddress { epoch, .. } => Ok(epoch),
        _ => Err("unexpected answer".into()),
    }
}
