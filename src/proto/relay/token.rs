//! Relay access tokens (`--secret`): the expiry and a truncated HMAC of it, the TURN REST-API
//! idea.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::defaults;

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

/// A token for `secs` seconds from `unix_now`, or None when that is beyond
/// [`defaults::RELAY_TOKEN_MAX_SECS`] (the relay would refuse it) or not a time at all.
pub fn token_for(secret: &[u8], unix_now: u64, secs: u64) -> Option<Vec<u8>> {
    if secs > defaults::RELAY_TOKEN_MAX_SECS {
        return None;
    }
    Some(make_token(secret, unix_now.checked_add(secs)?))
}

/// Whether `secret` is strong enough for `--secret`: tokens are HMACs under it, and a short
/// one can be found by trying (anyone holding one token can test guesses offline).
pub fn secret_strong_enough(secret: &[u8]) -> bool {
    secret.len() >= defaults::RELAY_SECRET_MIN_LEN
}

/// Valid: made with `secret`, not expired, and expiring within
/// [`defaults::RELAY_TOKEN_MAX_SECS`] (a leaked token cannot live for ever).
pub(super) fn token_valid(secret: &[u8], token: &[u8], unix_now: u64) -> bool {
    if token.len() != 24 {
        return false;
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&token[..8]);
    let expiry = u64::from_be_bytes(e);
    if expiry < unix_now || expiry - unix_now > defaults::RELAY_TOKEN_MAX_SECS {
        return false;
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"natkit-relay-token-v1");
    m.update(&expiry.to_be_bytes());
    m.verify_truncated_left(&token[8..]).is_ok()
}
