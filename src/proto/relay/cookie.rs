//! Return routability over UDP: a stateless cookie, an HMAC of the client's address and the
//! current time window under a key the relay draws at start. A `Register` or `DialBack` over
//! UDP is served only when it echoes a cookie made for its source address, so a spoofed
//! source never gets a slot, a dial-back or anything larger than its own request (DTLS's
//! HelloVerifyRequest, RFC 6347 §4.2.1; TCP's handshake already proves the source).

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::defaults::{RELAY_COOKIE_LEN, RELAY_COOKIE_WINDOW_SECS};

/// The relay's cookie key.
#[derive(Debug, Clone)]
pub(super) struct Cookies {
    key: [u8; 32],
}

impl Cookies {
    pub(super) fn new(key: [u8; 32]) -> Self {
        Cookies { key }
    }

    fn mac(&self, from: SocketAddr, window: u64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(b"natkit-relay-cookie-v1");
        m.update(&window.to_be_bytes());
        match from.ip() {
            IpAddr::V4(v) => m.update(&v.octets()),
            IpAddr::V6(v) => m.update(&v.octets()),
        }
        m.update(&from.port().to_be_bytes());
        m
    }

    /// The cookie for `from` now.
    pub(super) fn make(&self, from: SocketAddr, unix: u64) -> Vec<u8> {
        let tag = self
            .mac(from, unix / RELAY_COOKIE_WINDOW_SECS)
            .finalize()
            .into_bytes();
        tag[..RELAY_COOKIE_LEN].to_vec()
    }

    /// Whether `cookie` was made for `from` in this window or the one before.
    pub(super) fn valid(&self, from: SocketAddr, cookie: &[u8], unix: u64) -> bool {
        if cookie.len() != RELAY_COOKIE_LEN {
            return false;
        }
        let w = unix / RELAY_COOKIE_WINDOW_SECS;
        [w, w.saturating_sub(1)]
            .into_iter()
            .any(|w| self.mac(from, w).verify_truncated_left(cookie).is_ok())
    }
}
