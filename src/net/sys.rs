//! What the host's operating system tells and does below the protocols, shared by every
//! driver: name resolution, the local address towards a destination, the wall clock, and the
//! socket options and `recvmsg(2)` control messages (TTL, ICMP error queue) the probes read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use crate::defaults;

/// Errors that stop a probe before it can report anything.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A `--server` value that is not `HOST[:PORT]`.
    #[error("invalid server {0:?}: expected HOST[:PORT] or [IPv6]:PORT")]
    BadServer(String),
    /// The runtime could not create a socket.
    #[error("cannot create a UDP socket")]
    Socket(#[source] std::io::Error),
    /// An IPv6 literal with a zone id (`fe80::1%eth0`): only link-local addresses need one,
    /// and a server on the internet is never link-local.
    #[error("invalid server {0:?}: a zone id (%...) is meaningless here; give a global address or a name")]
    ZoneId(String),
}

/// Splits `HOST[:PORT]` (`[v6]:port` for IPv6 literals).
pub fn parse_server(s: &str) -> Result<(String, u16), ProbeError> {
    let bad = || ProbeError::BadServer(s.to_string());
    if s.is_empty() {
        return Err(bad());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => defaults::STUN_PORT,
            None => return Err(bad()),
        };
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        return Ok((host.to_string(), port));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), defaults::STUN_PORT));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (s, defaults::STUN_PORT),
    };
    if host.is_empty()
        || port == 0
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Resolves `host` to one address: its first IPv4 one, else its first.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    prefer_ipv4(&resolve_all(host, port).await?).ok_or_else(|| "DNS returned no address".into())
}

/// The first IPv4 address of a name's addresses, else the first (what a single-family driver
/// probes).
pub fn prefer_ipv4(all: &[SocketAddr]) -> Option<SocketAddr> {
    all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
}

/// Every address `host` resolves to (A and AAAA, in the resolver's order; a literal is its
/// own), for probing each family on its own.
pub async fn resolve_all(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let q = format!("{host}:{port}");
    match tokio::time::timeout(defaults::DNS_TIMEOUT, tokio::net::lookup_host(q)).await {
        Err(_) => Err(format!(
            "DNS lookup timed out after {} ms",
            defaults::DNS_TIMEOUT.as_millis()
        )),
        Ok(Err(e)) => Err(format!("DNS lookup failed: {e}")),
        Ok(Ok(addrs)) => {
            let mut all: Vec<SocketAddr> = Vec::new();
            for a in addrs {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
            if all.is_empty() {
                Err("DNS returned no address".to_string())
            } else {
                Ok(all)
            }
        }
    }
}

/// An IPv6 address other hosts could send to: not loopback, unspecified, multicast,
/// link-local (fe80::/10, RFC 4291 §2.5.6) or IPv4-mapped. Unique-local addresses count, so
/// that a NAT66 in front of them is measured rather than assumed.
fn is_usable_ipv6(ip: Ipv6Addr) -> bool {
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (ip.segments()[0] & 0xffc0) == 0xfe80
        || ip.to_ipv4_mapped().is_some())
}

/// This host's IPv6 addresses beyond link-local (getifaddrs(3)): empty when it has no IPv6
/// but link-local, which natprobe then knows without sending anything.
pub fn global_ipv6_addrs() -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list that is freed below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*p };
        // SAFETY: a non-null ifa_addr points to a sockaddr whose family says its real type;
        // AF_INET6 ones are sockaddr_in6 (read unaligned to be safe).
        let ip = (!ifa.ifa_addr.is_null()
            && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET6)
            .then(|| unsafe { std::ptr::read_unaligned(ifa.ifa_addr as *const libc::sockaddr_in6) })
            .map(|sin6| Ipv6Addr::from(sin6.sin6_addr.s6_addr));
        if let Some(ip) = ip.filter(|ip| is_usable_ipv6(*ip) && !out.contains(ip)) {
            out.push(ip);
        }
        p = ifa.ifa_next;
    }
    // SAFETY: `ifap` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// A UDP socket on an ephemeral port for both families: `[::]` with `IPV6_V6ONLY` off, so
/// one port (one QUIC endpoint, one NAT mapping) serves IPv4 peers and IPv6 peers alike;
/// IPv4 only on a host without IPv6. Datagrams from IPv4 peers arrive as IPv4-mapped
/// addresses: readers fold them back with [`SocketAddr::ip`]`.to_canonical()`.
pub fn bind_dual_stack() -> std::io::Result<std::net::UdpSocket> {
    let v6 = || -> std::io::Result<std::net::UdpSocket> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)).into())?;
        Ok(s.into())
    };
    let s = v6().or_else(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// `a` with an IPv4-mapped IPv6 address folded to IPv4 (what a dual-stack socket reports
/// for an IPv4 peer).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// This host's global IPv6 address towards `dst` (an IPv6 address), or None: no route, or
/// only a link-local, unique-local or other address no stranger can reach. Sends nothing.
pub fn global_v6_towards(dst: SocketAddr) -> Option<IpAddr> {
    if !dst.is_ipv6() {
        return None;
    }
    local_ip_towards(dst)
        .ok()
        .filter(|ip| ip.is_ipv6() && !crate::wire::netaddr::is_unroutable(*ip))
}

/// Learns which local IP the kernel would use towards `dst` without sending anything
/// (connect on UDP only selects a route).
pub fn local_ip_towards(dst: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect(dst)?;
    Ok(s.local_addr()?.ip())
}

/// Whether a socket error is the network changing under the session rather than a broken
/// socket: no route or no address (link down, address removed, default route gone:
/// `ENETUNREACH`, `EHOSTUNREACH`, `ENETDOWN`, `EHOSTDOWN`, `EADDRNOTAVAIL`), a local
/// firewall (`EPERM`, `EACCES`), full buffers (`ENOBUFS`, `EAGAIN`), an ICMP error reported
/// on a connected socket (`ECONNREFUSED`), a packet over the path's MTU (`EMSGSIZE`: QUIC's
/// MTU probes, as quinn-udp treats it) or a signal. Such an error costs the datagram only
/// (QUIC and the rendezvous retransmit); anything else ends the session.
pub fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::WouldBlock | K::Interrupted | K::ConnectionRefused | K::PermissionDenied
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::EHOSTDOWN
                | libc::EADDRNOTAVAIL
                | libc::EPERM
                | libc::EACCES
                | libc::ENOBUFS
                | libc::ECONNREFUSED
                | libc::EMSGSIZE
        )
    )
}

/// Seconds since the Unix epoch (0 if the clock is before it): for state that outlives the
/// process (leases in the state file, relay tokens).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// natkit's state directory (portmap's records, punch's code ledger): $NATKIT_STATE_DIR,
/// else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit, else /var/lib/natkit.
pub fn state_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("NATKIT_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("natkit")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/natkit")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/natkit"))
}

pub fn set_recverr(s: &UdpSocket) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a valid fd with a correctly sized int option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVERR,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Asks the kernel for the TTL (IPv6: hop limit) of every datagram received, read by
/// [`recv_with_ttl`]: it tells how many routers the server's answers crossed.
pub fn set_recvttl(s: &UdpSocket, v4: bool) {
    let on: libc::c_int = 1;
    let (level, opt) = if v4 {
        (libc::SOL_IP, libc::IP_RECVTTL)
    } else {
        (libc::SOL_IPV6, libc::IPV6_RECVHOPLIMIT)
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized int option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One `recvmsg(2)` without blocking (plus `flags`) into `buf`; `each` sees every control
/// message as (level, type, data), the data cut to the length the kernel gave it in
/// `cmsg_len` so a reader can check it before it interprets a single byte. Returns the
/// length and the sender's raw address.
pub fn recvmsg_nb(
    fd: i32,
    buf: &mut [u8],
    flags: i32,
    mut each: impl FnMut(i32, i32, &[u8]),
) -> std::io::Result<(usize, libc::sockaddr_storage)> {
    // Control messages start with a cmsghdr: the buffer must be aligned for it.
    let mut ctrl = [0u64; 64];
    // SAFETY: all pointers reference live buffers sized as declared; the kernel fills at most
    // those sizes, and CMSG_* walk only within msg_controllen.
    unsafe {
        let mut name: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&ctrl);
        let n = libc::recvmsg(fd, &mut msg, flags | libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ctrl_end = (ctrl.as_ptr() as *const u8).add(std::mem::size_of_val(&ctrl));
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let header = libc::CMSG_LEN(0) as usize;
            let len = ((*cmsg).cmsg_len as usize).saturating_sub(header);
            // Never past the control buffer, whatever cmsg_len says.
            let len = len.min(ctrl_end.offset_from(data).max(0) as usize);
            each(
                (*cmsg).cmsg_level,
                (*cmsg).cmsg_type,
                std::slice::from_raw_parts(data, len),
            );
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, name))
    }
}

/// Receives one datagram without blocking: its length, source and, when the kernel attached
/// it ([`set_recvttl`]), the TTL it arrived with.
pub fn recv_with_ttl(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<u8>)> {
    let mut ttl = None;
    let (n, name) = recvmsg_nb(fd, buf, 0, |level, kind, data| {
        if (level == libc::SOL_IP && kind == libc::IP_TTL)
            || (level == libc::SOL_IPV6 && kind == libc::IPV6_HOPLIMIT)
        {
            // The kernel's TTL / hop limit control message carries one c_int.
            if let Some(v) = data.get(..4) {
                let v = libc::c_int::from_ne_bytes([v[0], v[1], v[2], v[3]]);
                ttl = u8::try_from(v).ok();
            }
        }
    })?;
    // SAFETY: the family field says which sockaddr the kernel wrote into the storage.
    let from = unsafe {
        match name.ss_family as i32 {
            libc::AF_INET => {
                let a = &*(&name as *const _ as *const libc::sockaddr_in);
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                )
            }
            libc::AF_INET6 => {
                let a = &*(&name as *const _ as *const libc::sockaddr_in6);
                SocketAddr::new(
                    IpAddr::V6(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr)),
                    u16::from_be(a.sin6_port),
                )
            }
            _ => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    };
    Ok((n, from, ttl))
}

/// Reads one entry of the socket's error queue (IP_RECVERR): the router that sent an ICMP
/// Time Exceeded and the quoted payload of our datagram.
pub fn read_errqueue(fd: i32) -> Option<(IpAddr, u8, Vec<u8>)> {
    let mut data = [0u8; defaults::MAX_DATAGRAM];
    let mut found = None;
    let (n, _) = recvmsg_nb(fd, &mut data, libc::MSG_ERRQUEUE, |level, kind, p| {
        if level == libc::SOL_IP && kind == libc::IP_RECVERR {
            found = parse_recverr(p);
        }
    })
    .ok()?;
    found.map(|(ip, t)| (ip, t, data[..n].to_vec()))
}

/// An IP_RECVERR control message (ip(7)): a `sock_extended_err` followed by the offender's
/// `sockaddr_in`. `None` unless it is whole and comes from an ICMP message of an IPv4 router.
fn parse_recverr(p: &[u8]) -> Option<(IpAddr, u8)> {
    let ee_len = std::mem::size_of::<libc::sock_extended_err>();
    let sin_len = std::mem::size_of::<libc::sockaddr_in>();
    if p.len() < ee_len + sin_len {
        return None;
    }
    // SAFETY: the slice holds at least both structs (checked above); read_unaligned copes
    // with any alignment of the control buffer.
    let (ee, off) = unsafe {
        (
            std::ptr::read_unaligned(p.as_ptr() as *const libc::sock_extended_err),
            std::ptr::read_unaligned(p[ee_len..].as_ptr() as *const libc::sockaddr_in),
        )
    };
    if ee.ee_origin != libc::SO_EE_ORIGIN_ICMP || off.sin_family as i32 != libc::AF_INET {
        return None;
    }
    let ip = Ipv4Addr::from(u32::from_be(off.sin_addr.s_addr));
    Some((IpAddr::V4(ip), ee.ee_type))
}

/// The index of network interface `name` (if_nametoindex(3)), e.g. for the scope id of a
/// link-local address; `None` when there is no such interface.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_changes_are_transient_and_broken_sockets_are_not() {
        use std::io::Error;
        for code in [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::EADDRNOTAVAIL,
            libc::EPERM,
            libc::ENOBUFS,
            libc::ECONNREFUSED,
        ] {
            assert!(is_transient(&Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK, libc::EFAULT] {
            assert!(!is_transient(&Error::from_raw_os_error(code)), "{code}");
        }
        assert!(!is_transient(&Error::other("broken")));
    }

    #[test]
    fn only_addresses_others_can_reach_are_usable_ipv6() {
        for bad in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(!is_usable_ipv6(bad.parse().unwrap()), "{bad}");
        }
        for good in ["2001:db8::2", "fd00::2", "2a00:1450::1"] {
            assert!(is_usable_ipv6(good.parse().unwrap()), "{good}");
        }
        assert!(!global_ipv6_addrs().iter().any(|ip| ip.is_loopback()));
    }

    #[test]
    fn a_short_recverr_message_is_ignored() {
        assert_eq!(parse_recverr(&[]), None);
        assert_eq!(parse_recverr(&[2u8; 20]), None);
    }

    #[test]
    fn a_whole_recverr_message_names_the_router() {
        let ee_len = std::mem::size_of::<libc::sock_extended_err>();
        let mut p = vec![0u8; ee_len + std::mem::size_of::<libc::sockaddr_in>()];
        // SAFETY: p is large enough for both structs; unaligned writes.
        unsafe {
            let mut ee: libc::sock_extended_err = std::mem::zeroed();
            ee.ee_origin = libc::SO_EE_ORIGIN_ICMP;
            ee.ee_type = 11;
            std::ptr::write_unaligned(p.as_mut_ptr() as *mut libc::sock_extended_err, ee);
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(Ipv4Addr::new(192, 0, 2, 1)).to_be();
            std::ptr::write_unaligned(p[ee_len..].as_mut_ptr() as *mut libc::sockaddr_in, sin);
        }
        assert_eq!(
            parse_recverr(&p),
            Some((IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 11))
        );
    }
}
