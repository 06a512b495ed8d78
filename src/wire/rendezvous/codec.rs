//! The byte-level helpers of the frame codec: a bounds-checked reader (every read returns an
//! error instead of panicking on short input) and the writers of addresses and short byte
//! strings.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{ParseError, MAX_CANDIDATES};

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(ParseError::Malformed);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub(super) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self) -> Result<u64, ParseError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(super) fn addr(&mut self) -> Result<SocketAddr, ParseError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(ParseError::Malformed),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    pub(super) fn addrs(&mut self) -> Result<Vec<SocketAddr>, ParseError> {
        let n = self.u8()? as usize;
        if n > MAX_CANDIDATES {
            return Err(ParseError::Malformed);
        }
        (0..n).map(|_| self.addr()).collect()
    }
    pub(super) fn bytes8(&mut self) -> Result<&'a [u8], ParseError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    pub(super) fn end(&self) -> Result<(), ParseError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ParseError::Malformed)
        }
    }
}

pub(super) fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(v) => {
            out.push(4);
            out.extend_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            out.push(6);
            out.extend_from_slice(&v.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

pub(super) fn put_addrs(out: &mut Vec<u8>, v: &[SocketAddr]) {
    let v = &v[..v.len().min(MAX_CANDIDATES)];
    out.push(v.len() as u8);
    for a in v {
        put_addr(out, a);
    }
}

pub(super) fn put_bytes8(out: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}
