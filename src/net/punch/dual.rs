//! Both address families on the punch socket (issue 14). The punch socket is one dual-stack
//! UDP socket ([`crate::net::sys::bind_dual_stack`]) rather than one per family: one port,
//! one QUIC endpoint and one path switch serve IPv4 and IPv6 peers, and a check that works
//! moves the session with no second socket to hand over. We meet the relay over IPv4 (the
//! family every peer has; a relay named only by AAAA records is met over IPv6) and offer
//! our global IPv6 address as one more candidate: with no NAT on IPv6 (RFC 6092 home
//! firewalls keep addresses and ports), the address the kernel picks towards the relay's
//! AAAA record, at the punch port, is what the peer must probe. Learning it sends nothing,
//! so a host without IPv6 is not slowed by a single packet.

use std::net::SocketAddr;

use crate::net::punch::PunchError;

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
/// address), none without one.
pub(super) fn v6_candidate(towards: Option<SocketAddr>, port: u16) -> Option<SocketAddr> {
    let ip = crate::net::sys::global_v6_towards(towards?)?;
    Some(SocketAddr::new(ip, port))
}

/// The `family` of a `connected` event: `ipv4` or `ipv6`.
pub(crate) fn family(a: SocketAddr) -> &'static str {
    if a.ip().to_canonical().is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}
