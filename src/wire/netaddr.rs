//! Address classification shared by natprobe (CGNAT detection), portmap (double NAT) and the
//! relay's deny list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Folds IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible forms to plain IPv4, so that a deny
/// list cannot be bypassed by spelling an address another way (the coturn
/// `denied-peer-ip` bypass).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// RFC 6598 shared address space 100.64.0.0/10, used by carrier-grade NAT.
pub fn is_cgnat(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xC0) == 64
        }
        IpAddr::V6(_) => false,
    }
}

/// RFC 1918 private IPv4 (and RFC 4193 unique-local IPv6).
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Addresses no stranger on the internet can send to: unspecified, loopback, link-local,
/// multicast, broadcast, private and CGNAT ranges (after [`canonical`]).
pub fn is_unroutable(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_unroutable_v4(v4) || is_cgnat(IpAddr::V4(v4)),
        IpAddr::V6(v6) => is_unroutable_v6(v6),
    }
}

fn is_unroutable_v4(v4: Ipv4Addr) -> bool {
    v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_private()
        || v4.octets()[0] == 0
}

fn is_unroutable_v6(v6: Ipv6Addr) -> bool {
    let s0 = v6.segments()[0];
    v6.is_unspecified()
        || v6.is_loopback()
        || v6.is_multicast()
        || (s0 & 0xffc0) == 0xfe80
        || (s0 & 0xfe00) == 0xfc00
        // IPv4-compatible ::a.b.c.d (deprecated) folds to IPv4 here.
        || (v6.segments()[..6].iter().all(|&x| x == 0) && {
            let o = v6.octets();
            is_unroutable_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cgnat_range_bounds() {
        assert!(is_cgnat(ip("100.64.0.1")));
        assert!(is_cgnat(ip("100.127.255.254")));
        assert!(!is_cgnat(ip("100.128.0.1")));
        assert!(!is_cgnat(ip("100.63.255.255")));
        assert!(is_cgnat(ip("::ffff:100.64.1.2")));
    }

    #[test]
    fn mapped_forms_are_folded() {
        for s in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.1.1",
            "::127.0.0.1",
            "::ffff:0.0.0.0",
            "fe80::1",
            "fd00::1",
            "::1",
            "::",
            "169.254.1.1",
            "224.0.0.1",
        ] {
            assert!(is_unroutable(ip(s)), "{s}");
        }
        for s in [
            "203.0.113.10",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:203.0.113.10",
        ] {
            assert!(!is_unroutable(ip(s)), "{s}");
        }
    }
}
