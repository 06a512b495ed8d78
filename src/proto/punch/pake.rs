//! SPAKE2 keyed by the code, then key confirmation that also pins each side's QUIC
//! certificate: the TLS handshake that follows accepts exactly the certificate whose
//! fingerprint the peer confirmed with the PAKE key. A wrong code gives different keys on
//! the two sides, so both confirmations fail: "wrong code", and no data passes. An attacker
//! gets one online guess per attempt and learns nothing usable offline (SPAKE2).
//!
//! A malformed message from the peer's side does not use up the SPAKE2 state: the state is
//! made from a seed we keep, and made again, identical, when `finish` rejects a message, so
//! one bad frame cannot end a session.

use hmac::{Hmac, Mac};
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::wire::rendezvous::{Frame, Role, SessionId};

/// Why the PAKE failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PakeError {
    /// The peer's confirmation does not verify: the codes differ.
    #[error("wrong code: the other side used a different code")]
    WrongCode,
    /// The peer's SPAKE2 message is malformed.
    #[error("the other side sent a malformed key-exchange message")]
    BadMessage,
    /// A message arrived out of order.
    #[error("unexpected key-exchange message")]
    Unexpected,
}

/// One side's PAKE.
pub struct Pake {
    session: SessionId,
    role: Role,
    state: Option<Spake2<Ed25519Group>>,
    /// What made the state: the password and our secret scalar's seed.
    password: Vec<u8>,
    seed: [u8; 32],
    outbound: Vec<u8>,
    key: Option<Vec<u8>>,
    my_fingerprint: [u8; 32],
}

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pake")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn identities() -> (Identity, Identity) {
    (
        Identity::new(b"natkit punch listener"),
        Identity::new(b"natkit punch connector"),
    )
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

fn confirm_mac(key: &[u8], session: &SessionId, role: Role, fp: &[u8; 32]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"natkit punch confirm v1");
    m.update(session);
    m.update(&[role as u8]);
    m.update(fp);
    m.finalize().into_bytes().into()
}

/// The SPAKE2 state of `role` for `password`, its secret scalar drawn from `seed`: the same
/// inputs give the same state and message.
fn spake2_start(role: Role, password: &[u8], seed: [u8; 32]) -> (Spake2<Ed25519Group>, Vec<u8>) {
    let (a, b) = identities();
    let pw = Password::new(password);
    let rng = rand::rngs::StdRng::from_seed(seed);
    match role {
        Role::Listener => Spake2::<Ed25519Group>::start_a_with_rng(&pw, &a, &b, rng),
        Role::Connector => Spake2::<Ed25519Group>::start_b_with_rng(&pw, &a, &b, rng),
    }
}

impl Pake {
    /// Starts; the returned frame goes to the peer. `seed` makes our secret scalar (the
    /// driver passes 32 random bytes).
    pub fn new(
        session: SessionId,
        role: Role,
        password: &[u8],
        my_cert_der: &[u8],
        seed: [u8; 32],
    ) -> Pake {
        let (state, outbound) = spake2_start(role, password, seed);
        Pake {
            session,
            role,
            state: Some(state),
            password: password.to_vec(),
            seed,
            outbound,
            key: None,
            my_fingerprint: fingerprint(my_cert_der),
        }
    }

    /// Our SPAKE2 message (resend until the peer's confirmation arrives).
    pub fn message(&self) -> Frame {
        Frame::Pake {
            session: self.session,
            msg: self.outbound.clone(),
        }
    }

    /// Whether the key is known.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The peer's SPAKE2 message: derives the key and returns our confirmation. A malformed
    /// message leaves us as we were (the state is made again from its seed).
    pub fn handle_message(&mut self, msg: &[u8]) -> Result<Frame, PakeError> {
        if let Some(state) = self.state.take() {
            match state.finish(msg) {
                Ok(key) => self.key = Some(key),
                Err(_) => {
                    self.state = Some(spake2_start(self.role, &self.password, self.seed).0);
                    return Err(PakeError::BadMessage);
                }
            }
        }
        self.confirmation().ok_or(PakeError::Unexpected)
    }

    /// The key that path validation ([`crate::proto::punch::path`]) uses, derived from the
    /// PAKE key (never the PAKE key itself), once known.
    pub fn path_key(&self) -> Option<[u8; 32]> {
        let key = self.key.as_ref()?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(b"natkit path key v1");
        m.update(&self.session);
        Some(m.finalize().into_bytes().into())
    }

    /// Our confirmation, once the key is known.
    pub fn confirmation(&self) -> Option<Frame> {
        let key = self.key.as_ref()?;
        Some(Frame::Confirm {
            session: self.session,
            fingerprint: self.my_fingerprint,
            mac: confirm_mac(key, &self.session, self.role, &self.my_fingerprint),
        })
    }

    /// Checks the peer's confirmation; returns the certificate fingerprint to pin.
    pub fn verify(&self, fingerprint: &[u8; 32], mac: &[u8; 32]) -> Result<[u8; 32], PakeError> {
        let key = self.key.as_ref().ok_or(PakeError::Unexpected)?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(b"natkit punch confirm v1");
        m.update(&self.session);
        m.update(&[self.role.other() as u8]);
        m.update(fingerprint);
        m.verify_slice(mac).map_err(|_| PakeError::WrongCode)?;
        Ok(*fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(
        pa: &[u8],
        pb: &[u8],
    ) -> (Result<[u8; 32], PakeError>, Result<[u8; 32], PakeError>) {
        let mut a = Pake::new([1; 16], Role::Listener, pa, b"cert a", [1; 32]);
        let mut b = Pake::new([1; 16], Role::Connector, pb, b"cert b", [2; 32]);
        let Frame::Pake { msg: ma, .. } = a.message() else {
            unreachable!()
        };
        let Frame::Pake { msg: mb, .. } = b.message() else {
            unreachable!()
        };
        let Frame::Confirm {
            fingerprint: fa,
            mac: ca,
            ..
        } = a.handle_message(&mb).unwrap()
        else {
            unreachable!()
        };
        let Frame::Confirm {
            fingerprint: fb,
            mac: cb,
            ..
        } = b.handle_message(&ma).unwrap()
        else {
            unreachable!()
        };
        (a.verify(&fb, &cb), b.verify(&fa, &ca))
    }

    #[test]
    fn same_code_pins_each_others_certificate() {
        let (a, b) = exchange(b"7-lantern-harbor", b"7-lantern-harbor");
        assert_eq!(a, Ok(fingerprint(b"cert b")));
        assert_eq!(b, Ok(fingerprint(b"cert a")));
    }

    #[test]
    fn wrong_code_fails_on_both_sides() {
        let (a, b) = exchange(b"7-lantern-harbor", b"7-lantern-harvest");
        assert_eq!(a, Err(PakeError::WrongCode));
        assert_eq!(b, Err(PakeError::WrongCode));
    }

    /// Both sides for the code "x", and their SPAKE2 messages.
    fn sides() -> (Pake, Pake, Vec<u8>, Vec<u8>) {
        let a = Pake::new([1; 16], Role::Listener, b"x", b"cert a", [1; 32]);
        let b = Pake::new([1; 16], Role::Connector, b"x", b"cert b", [2; 32]);
        let Frame::Pake { msg: ma, .. } = a.message() else {
            unreachable!()
        };
        let Frame::Pake { msg: mb, .. } = b.message() else {
            unreachable!()
        };
        (a, b, ma, mb)
    }

    #[test]
    fn a_tampered_fingerprint_fails() {
        let (mut a, mut b, ma, mb) = sides();
        a.handle_message(&mb).unwrap();
        let Frame::Confirm { mac, .. } = b.handle_message(&ma).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            a.verify(&fingerprint(b"evil cert"), &mac),
            Err(PakeError::WrongCode)
        );
        assert_eq!(
            Pake::new([1; 16], Role::Listener, b"x", b"c", [3; 32]).handle_message(b"junk"),
            Err(PakeError::BadMessage)
        );
    }

    #[test]
    fn a_malformed_message_does_not_use_up_the_exchange() {
        let (mut a, mut b, ma, mb) = sides();
        // Junk, a truncated message, a message of our own side: rejected, state kept.
        for bad in [&b"junk"[..], &mb[..10], &ma[..]] {
            assert_eq!(a.handle_message(bad), Err(PakeError::BadMessage));
            assert!(!a.has_key());
        }
        // The genuine message still completes the exchange.
        let Frame::Confirm {
            fingerprint, mac, ..
        } = b.handle_message(&ma).unwrap()
        else {
            unreachable!()
        };
        a.handle_message(&mb).unwrap();
        assert_eq!(
            a.verify(&fingerprint, &mac),
            Ok(super::fingerprint(b"cert b"))
        );
        assert_eq!(a.path_key(), b.path_key());
        assert!(a.path_key().is_some());
    }
}
