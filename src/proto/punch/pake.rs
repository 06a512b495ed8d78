//! SPAKE2 keyed by the code, then key confirmation that also pins each side's QUIC
//! certificate: the TLS handshake that follows accepts exactly the certificate whose
//! fingerprint the peer confirmed with the PAKE key. A wrong code gives different keys on
//! the two sides, so both confirmations fail: "wrong code", and no data passes. An attacker
//! gets one online guess per attempt and learns nothing usable offline (SPAKE2).

use hmac::{Hmac, Mac};
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

impl Pake {
    /// Starts; the returned frame goes to the peer.
    pub fn new(session: SessionId, role: Role, password: &[u8], my_cert_der: &[u8]) -> Pake {
        let (a, b) = identities();
        let pw = Password::new(password);
        let (state, outbound) = match role {
            Role::Listener => Spake2::<Ed25519Group>::start_a(&pw, &a, &b),
            Role::Connector => Spake2::<Ed25519Group>::start_b(&pw, &a, &b),
        };
        Pake {
            session,
            role,
            state: Some(state),
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

    /// The peer's SPAKE2 message: derives the key and returns our confirmation.
    pub fn handle_message(&mut self, msg: &[u8]) -> Result<Frame, PakeError> {
        if let Some(state) = self.state.take() {
            let key = state.finish(msg).map_err(|_| PakeError::BadMessage)?;
            self.key = Some(key);
        }
        self.confirmation().ok_or(PakeError::Unexpected)
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
        let mut a = Pake::new([1; 16], Role::Listener, pa, b"cert a");
        let mut b = Pake::new([1; 16], Role::Connector, pb, b"cert b");
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

    #[test]
    fn a_tampered_fingerprint_fails() {
        let mut a = Pake::new([1; 16], Role::Listener, b"x", b"cert a");
        let mut b = Pake::new([1; 16], Role::Connector, b"x", b"cert b");
        let Frame::Pake { msg: ma, .. } = a.message() else {
            unreachable!()
        };
        let Frame::Pake { msg: mb, .. } = b.message() else {
            unreachable!()
        };
        a.handle_message(&mb).unwrap();
        let Frame::Confirm { mac, .. } = b.handle_message(&ma).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            a.verify(&fingerprint(b"evil cert"), &mac),
            Err(PakeError::WrongCode)
        );
        assert_eq!(
            Pake::new([1; 16], Role::Listener, b"x", b"c").handle_message(b"junk"),
            Err(PakeError::BadMessage)
        );
    }
}
