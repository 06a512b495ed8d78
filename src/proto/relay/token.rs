//! Relay access tokens (`--secret`): the expiry and a truncated HMAC of it, the TURN REST-API
//! idea.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Makes a relay access token valid until `expiry_unix` (seconds): the expiry and a truncated
/// HMAC-SHA256 of it under the relay's secret (the TURN REST-API idea).
pub fn make_token(secret: &[u8], expiry_unix: u64) -> Vec<u8> {
    let mut t = expiry_unix.to_be_bytes().to_vec();
    t.extend_from_slice(&token_mac(secret, expiry_unix)[..16]);
    t
}

fn token_mac(secret: &[u8], expiry: u64) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"natkit-relay-token-v1");
    m.update(&expiry.to_be_bytes());
    m.finalize().into_bytes().to_vec()
}

pub(super) fn token_valid(secret: &[u8], token: &[u8], unix_now: u64) -> bool {
    if token.len() != 24 {
        return false;
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&token[..8]);
    let expiry = u64::from_be_bytes(e);
    if expiry < unix_now {
        return false;
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"natkit-relay-token-v1");
    m.update(&expiry.to_be_bytes());
    m.verify_truncated_left(&token[8..]).is_ok()
}
