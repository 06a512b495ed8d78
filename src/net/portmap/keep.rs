//! `--keep`: holds a mapping while natkit runs. Renews it at half the lease, notices a router
//! restart (its epoch went back, or it announced one on the LAN, or the mapping left its UPnP
//! table) and maps again, and removes the mapping on shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;

use super::gateway::Ctx;
use super::state::{MapRequest, Mapping, Method, State};
use super::{map_once, natpmp_pcp, pinhole, unmap, upnp};
use crate::defaults;
use crate::proto::portmap::{natpmp, pcp};

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

/// What the periodic check found.
enum Check {
    /// The router's epoch (NAT-PMP, PCP).
    Epoch(u32),
    /// Whether the mapping is still in the UPnP table.
    Present(bool),
}

/// The router's current epoch (NAT-PMP: external-address request; PCP: ANNOUNCE), or for UPnP
/// whether the mapping is still in its table. `Err` when the router does not answer.
async fn check(ctx: &Ctx, m: &Mapping) -> Result<Check, String> {
    match m.via {
        Method::Natpmp | Method::Pcp => natpmp_pcp::epoch(ctx, m.via).await.map(Check::Epoch),
        Method::Upnp => match m.pinhole_id {
            Some(id) => pinhole::present(ctx, id).await.map(Check::Present),
            None => upnp::holds(ctx, m).await.map(Check::Present),
        },
    }
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
    let mut buf = [0u8; pcp::MAX_LEN];
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
        let mut notes = Vec::new();
        match map_once(ctx, m.via, wish, Some(&m), &mut notes).await {
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
            // The router keeps it until its lease ends (miniupnpd 2.3 refuses to delete a
            // PCP pinhole it renewed: the renewal drops the owner's nonce).
            Err(e) if m.lifetime != 0 => format!(
                "removing: {e}; it lapses when its lease ends (within {} s)",
                m.lifetime
            ),
            Err(e) => format!("removing: {e}"),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
