//! Both address families on the punch socket (issue 14). The punch socket is one dual-stack
//! UDP socket ([`crate::net::sys::bind_dual_stack`]) rather than one per family: one port,
//! one QUIC endpoint and one path switch serve IPv4 and IPv6 peers, and a check that works
//! moves the session with no second socket to hand over. We offer our global IPv6 address
//! as one more candidate: with no NAT on IPv6 (RFC 6092 home firewalls keep addresses and
//! ports), the address the kernel picks towards the relay's AAAA record (or towards any
//! global address, without one), at the punch port, is what the peer must probe. Learning
//! it sends nothing, so a host without IPv6 is not slowed by a single packet. A host with
//! IPv6 races the relay's two addresses before meeting ([`race`]): IPv4 when it answers
//! (the family every peer has), IPv6 when only IPv6 UDP gets through.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::net::punch::PunchError;
use crate::proto::punch::rendezvous::FamilyRace;
use crate::proto::punch::PunchConfig;

/// Any global unicast address (2000::/3, RFC 4291 §2.4): the route towards it names our
/// global IPv6 address when no IPv6 server is known (`--manual` without `--stun`).
const ANY_GLOBAL_V6: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V6(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 1)),
    9,
);

/// The first IPv4 and the first IPv6 address of `server` (`HOST[:PORT]`, `[v6]:PORT`): the
/// address to meet at (IPv4 when there is one) and the IPv6 one, when it is another.
pub(super) async fn resolve_pair(
    server: &str,
) -> Result<(SocketAddr, Option<SocketAddr>), PunchError> {
    let (host, port) = crate::net::sys::parse_server(server)?;
    let all = crate::net::sys::resolve_all(&host, port)
        .await
        .map_err(PunchError::Resolve)?;
    let meet = all.iter().find(|a| a.is_ipv4()).unwrap_or(&all[0]);
    let v6 = all.iter().find(|a| a.is_ipv6()).filter(|a| *a != meet);
    Ok((*meet, v6.copied()))
}

/// Our IPv6 candidate at the punch port: the global address towards `towards` (an IPv6
/// address; any global one when none is given), none without one.
pub(super) fn v6_candidate(towards: Option<SocketAddr>, port: u16) -> Option<SocketAddr> {
    let ip = crate::net::sys::global_v6_towards(towards.unwrap_or(ANY_GLOBAL_V6))?;
    Some(SocketAddr::new(ip, port))
}

/// Races the relay's IPv4 address (`cfg.relay`) against its IPv6 address `v6` on the punch
/// socket, before its reader starts ([`FamilyRace`]): the address to meet at, and the
/// relay's cookie for us there (empty when nothing answered).
pub(super) async fn race(
    sock: &UdpSocket,
    cfg: PunchConfig,
    v6: SocketAddr,
) -> Result<(SocketAddr, Vec<u8>), PunchError> {
    let mut r = FamilyRace::new(cfg, v6, Instant::now());
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some((dst, b)) = r.poll_transmit() {
            // A family whose send fails (no route) simply never answers.
            let _ = sock.send_to(&b, dst).await;
        }
        if let Some(done) = r.result() {
            return Ok(done);
        }
        let wake = r.poll_timeout().unwrap_or_else(Instant::now);
        tokio::select! {
            got = sock.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    r.handle_datagram(Instant::now(), crate::net::sys::canonical(from), &buf[..n]);
                }
                Err(e) if !crate::net::sys::is_transient(&e) => return Err(e.into()),
                Err(_) => {}
            },
            _ = tokio::time::sleep_until(wake.into()) => r.handle_timeout(Instant::now()),
        }
    }
}

/// The `family` of a `connected` event: `ipv4` or `ipv6`.
pub(crate) fn family(a: SocketAddr) -> &'static str {
    if a.ip().to_canonical().is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}
