//! The pwnat technique (no server at all), sans-IO: the ICMP messages and their checks.
//!
//! The listener, behind its NAT, sends ICMP echo requests to a fixed address where nothing
//! answers (the *echo target*). Its NAT keeps a query mapping for them (RFC 5508 §3.1) and
//! must let in ICMP errors that carry such a request (RFC 5508 §4.2). The connector, which
//! knows the listener's public address, sends the listener an ICMP Time Exceeded (RFC 792)
//! that carries a copy of that echo request as the NAT sent it: the NAT takes it for a
//! router's answer to its own traffic, translates it back and hands it to the listener. The
//! listener learns the connector's address from the outer header, and the connector's UDP
//! port from bytes after the copied echo header (a real router quotes more of the original
//! datagram too, RFC 1812 §4.3.2.3; a NAT only looks at the first 8, RFC 5508 §4.2); then the
//! listener punches UDP towards it, as in `--manual`.
//!
//! Works when the listener's NAT keeps the echo request's identifier (Linux, most home
//! routers) and the connector's own ICMP leaves with its real address: a connector behind a
//! NAT of its own fails, because that NAT has no mapping for an ICMP error it did not see
//! the query of, and drops it or sends it untranslated (see the lab test).
//!
//! Identifier and tag come from the session id (the code's public part), so only a
//! connector that knows the code's nameplate is heard, and two sessions do not mix.

use std::net::Ipv4Addr;

use pnet::packet::icmp::{IcmpPacket, IcmpTypes};
use pnet::packet::ipv4::Ipv4Packet;

use crate::wire::rendezvous::SessionId;

/// Marks natkit's bytes after the quoted echo header.
const MAGIC: [u8; 4] = *b"NKIC";
/// Our payload after the echo header: magic, tag (8), connector's UDP port.
const EXTRA: usize = 4 + 8 + 2;

/// The echo request's identifier and the tag for a session.
fn ids(session: &SessionId) -> (u16, [u8; 8]) {
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&session[2..10]);
    (u16::from_be_bytes([session[0], session[1]]), tag)
}

fn put_checksum(buf: &mut [u8], at: usize) {
    buf[at..at + 2].copy_from_slice(&[0, 0]);
    let c = pnet::util::checksum(buf, at / 2);
    buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The listener's echo request (ICMP message, without the IP header): identifier from the
/// session, sequence 0, our magic and tag as payload.
pub fn echo_request(session: &SessionId) -> Vec<u8> {
    let (id, tag) = ids(session);
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(&tag);
    m.extend_from_slice(&[0, 0]);
    put_checksum(&mut m, 2);
    m
}

/// The connector's ICMP Time Exceeded (ICMP message, without the outer IP header): quotes
/// the listener's echo request to `echo_target` as the listener's NAT sent it (from
/// `listener`), followed by natkit's magic, the tag and `port`, our UDP port.
pub fn time_exceeded(
    session: &SessionId,
    listener: Ipv4Addr,
    echo_target: Ipv4Addr,
    port: u16,
) -> Vec<u8> {
    let (id, _) = ids(session);
    // The quoted echo request (its checksum as the listener computed it: same bytes but the
    // port, which the listener sent as zero).
    let mut echo = echo_request(session);
    let quoted_len = 20 + echo.len();
    let n = echo.len();
    echo[n - 2..].copy_from_slice(&port.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(quoted_len as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0]); // identification, don't fragment
    ip.extend_from_slice(&[1, 1, 0, 0]); // TTL 1 (it "expired"), ICMP, checksum
    ip.extend_from_slice(&listener.octets());
    ip.extend_from_slice(&echo_target.octets());
    put_checksum(&mut ip, 10);
    let mut m = vec![11, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&ip);
    m.extend_from_slice(&echo);
    debug_assert_eq!(u16::from_be_bytes([m[32], m[33]]), id);
    put_checksum(&mut m, 2);
    m
}

/// Checks an ICMP message the listener received (without its IP header): a Time Exceeded
/// quoting our echo request to `echo_target`, with our tag. Returns the connector's UDP port.
/// Anything else (other ICMP, other sessions, truncated or malformed) is `None`.
pub fn parse_time_exceeded(session: &SessionId, echo_target: Ipv4Addr, icmp: &[u8]) -> Option<u16> {
    let (id, tag) = ids(session);
    let p = IcmpPacket::new(icmp)?;
    if p.get_icmp_type() != IcmpTypes::TimeExceeded || icmp.len() < 8 {
        return None;
    }
    let inner = Ipv4Packet::new(&icmp[8..])?;
    let ihl = inner.get_header_length() as usize * 4;
    if inner.get_version() != 4 || ihl < 20 || icmp.len() < 8 + ihl {
        return None;
    }
    if inner.get_destination() != echo_target
        || inner.get_next_level_protocol() != pnet::packet::ip::IpNextHeaderProtocols::Icmp
    {
        return None;
    }
    let echo = &icmp[8 + ihl..];
    if echo.len() < 8 + EXTRA || echo[0] != 8 || u16::from_be_bytes([echo[4], echo[5]]) != id {
        return None;
    }
    let extra = &echo[8..8 + EXTRA];
    if extra[..4] != MAGIC || extra[4..12] != tag {
        return None;
    }
    let port = u16::from_be_bytes([extra[12], extra[13]]);
    (port != 0).then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SessionId = [7; 16];
    const T: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

    fn valid(m: &[u8]) -> bool {
        pnet::util::checksum(m, 1) == u16::from_be_bytes([m[2], m[3]])
    }

    #[test]
    fn the_listener_reads_the_port_the_connector_put_in() {
        let m = time_exceeded(&S, Ipv4Addr::new(203, 0, 113, 21), T, 40123);
        assert!(valid(&m), "ICMP checksum");
        assert!(valid(&echo_request(&S)));
        assert_eq!(parse_time_exceeded(&S, T, &m), Some(40123));
        // The quoted IP header is well formed.
        let ip = Ipv4Packet::new(&m[8..]).unwrap();
        assert_eq!(pnet::packet::ipv4::checksum(&ip), ip.get_checksum());
        assert_eq!(ip.get_source(), Ipv4Addr::new(203, 0, 113, 21));
    }

    #[test]
    fn other_sessions_targets_and_types_are_ignored() {
        let m = time_exceeded(&S, Ipv4Addr::new(203, 0, 113, 21), T, 1);
        assert_eq!(parse_time_exceeded(&[8; 16], T, &m), None);
        assert_eq!(parse_time_exceeded(&S, Ipv4Addr::new(3, 3, 3, 3), &m), None);
        let mut echo_reply = m.clone();
        echo_reply[0] = 0;
        assert_eq!(parse_time_exceeded(&S, T, &echo_reply), None);
        let zero_port = time_exceeded(&S, Ipv4Addr::new(203, 0, 113, 21), T, 0);
        assert_eq!(parse_time_exceeded(&S, T, &zero_port), None);
    }

    #[test]
    fn every_truncation_is_rejected_without_panicking() {
        let m = time_exceeded(&S, Ipv4Addr::new(203, 0, 113, 21), T, 9);
        for n in 0..m.len() {
            assert_eq!(parse_time_exceeded(&S, T, &m[..n]), None, "{n} bytes");
        }
    }
}
