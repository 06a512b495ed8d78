//! Path validation, sans-IO ([`PathValidator`]): before the session's packets follow the
//! peer to a new direct address, that address must answer a challenge with a MAC only the
//! peer can make (RFC 9000 §8.2 and §9 in spirit, at natkit's link layer, keyed by the
//! PAKE). QUIC sees one virtual peer and so never validates a migration itself; without
//! this, one datagram from a stranger would redirect the session to the stranger.
//!
//! The MAC is HMAC-SHA256 under the path key ([`crate::proto::punch::pake::Pake::path_key`],
//! derived from the PAKE key) over `"natkit path v1" || session || responder's role ||
//! nonce`. Addresses are not in it: neither side knows how the NATs between them rewrite
//! them. The nonce is random and goes only to the challenged address, so a response proves
//! that the peer received what was sent there.
//!
//! No amplification: a challenge is [`PATH_FRAME_LEN`] bytes, as long as its response, and
//! goes out only in reply to a datagram at least that long; answers are rate-limited
//! ([`PATH_ANSWERS_MAX`] per [`PATH_ANSWER_WINDOW`]) and challenges bounded
//! ([`PATH_CHALLENGES_MAX`] addresses, one per [`PATH_CHALLENGE_GAP`] each, forgotten after
//! [`PATH_CHALLENGE_TTL`]).

use std::net::SocketAddr;
use std::time::Instant;

use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::Sha256;

use crate::defaults::{
    PATH_ANSWERS_MAX, PATH_ANSWER_WINDOW, PATH_CHALLENGES_MAX, PATH_CHALLENGE_GAP,
    PATH_CHALLENGE_TTL,
};
use crate::wire::rendezvous::{Frame, Role, SessionId, PATH_FRAME_LEN};

/// One outstanding challenge.
#[derive(Debug, Clone, Copy)]
struct Challenge {
    addr: SocketAddr,
    nonce: [u8; 16],
    first: Instant,
    last_sent: Instant,
}

/// Challenges new addresses of the peer, answers the peer's challenges, and checks answers.
#[derive(Debug)]
pub struct PathValidator {
    session: SessionId,
    role: Role,
    key: [u8; 32],
    rng: StdRng,
    outstanding: Vec<Challenge>,
    /// Start of the current answer window, and answers sent in it.
    answers: Option<(Instant, u32)>,
}

/// The MAC of a path response.
fn path_mac(key: &[u8; 32], session: &SessionId, responder: Role, nonce: &[u8; 16]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"natkit path v1");
    m.update(session);
    m.update(&[responder as u8]);
    m.update(nonce);
    m.finalize().into_bytes().into()
}

impl PathValidator {
    /// Validation for `session` on the side `role`, under the path `key`; `seed` seeds the
    /// nonces.
    pub fn new(session: SessionId, role: Role, key: [u8; 32], seed: u64) -> PathValidator {
        PathValidator {
            session,
            role,
            key,
            rng: StdRng::seed_from_u64(seed),
            outstanding: Vec::new(),
            answers: None,
        }
    }

    fn expire(&mut self, now: Instant) {
        self.outstanding
            .retain(|c| now.saturating_duration_since(c.first) < PATH_CHALLENGE_TTL);
    }

    /// A datagram of `len` bytes that would move the path came from `from`, not yet
    /// validated: the challenge to send there, if the budget allows one.
    pub fn challenge(&mut self, now: Instant, from: SocketAddr, len: usize) -> Option<Vec<u8>> {
        if len < PATH_FRAME_LEN {
            return None;
        }
        self.expire(now);
        let full = self.outstanding.len() >= PATH_CHALLENGES_MAX;
        let nonce = match self.outstanding.iter_mut().find(|c| c.addr == from) {
            Some(c) if now.saturating_duration_since(c.last_sent) < PATH_CHALLENGE_GAP => {
                return None
            }
            Some(c) => {
                c.last_sent = now;
                c.nonce
            }
            None if full => return None,
            None => {
                let nonce = self.rng.gen();
                self.outstanding.push(Challenge {
                    addr: from,
                    nonce,
                    first: now,
                    last_sent: now,
                });
                nonce
            }
        };
        Some(
            Frame::PathChallenge {
                session: self.session,
                nonce,
            }
            .emit(),
        )
    }

    /// The peer's challenge (for our session): the response to send back to its source,
    /// unless the answer budget is spent.
    pub fn answer(
        &mut self,
        now: Instant,
        session: &SessionId,
        nonce: &[u8; 16],
    ) -> Option<Vec<u8>> {
        if *session != self.session {
            return None;
        }
        let (start, n) = match self.answers {
            Some((t, n)) if now.saturating_duration_since(t) < PATH_ANSWER_WINDOW => (t, n),
            _ => (now, 0),
        };
        if n >= PATH_ANSWERS_MAX {
            return None;
        }
        self.answers = Some((start, n + 1));
        Some(
            Frame::PathResponse {
                session: self.session,
                nonce: *nonce,
                mac: path_mac(&self.key, &self.session, self.role, nonce),
            }
            .emit(),
        )
    }

    /// A response from `from`: true when it answers our outstanding challenge to exactly
    /// that address with the peer's MAC (the challenge is then used up).
    pub fn validate(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: &SessionId,
        nonce: &[u8; 16],
        mac: &[u8; 32],
    ) -> bool {
        self.expire(now);
        if *session != self.session {
            return false;
        }
        let Some(i) = self
            .outstanding
            .iter()
            .position(|c| c.addr == from && c.nonce == *nonce)
        else {
            return false;
        };
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"natkit path v1");
        m.update(&self.session);
        m.update(&[self.role.other() as u8]);
        m.update(nonce);
        if m.verify_slice(mac).is_err() {
            return false;
        }
        self.outstanding.swap_remove(i);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: SessionId = [3; 16];
    const K: [u8; 32] = [7; 32];

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nonce_of(challenge: &[u8]) -> [u8; 16] {
        match Frame::parse(challenge) {
            Ok(Frame::PathChallenge { nonce, .. }) => nonce,
            f => panic!("not a challenge: {f:?}"),
        }
    }

    fn mac_of(response: &[u8]) -> [u8; 32] {
        match Frame::parse(response) {
            Ok(Frame::PathResponse { mac, .. }) => mac,
            f => panic!("not a response: {f:?}"),
        }
    }

    #[test]
    fn the_peers_answer_validates_the_challenged_address_once() {
        let t0 = Instant::now();
        let mut us = PathValidator::new(S, Role::Listener, K, 1);
        let mut peer = PathValidator::new(S, Role::Connector, K, 2);
        let new = sa("203.0.113.7:5555");
        let c = us.challenge(t0, new, 1200).expect("a challenge");
        assert_eq!(c.len(), PATH_FRAME_LEN);
        let nonce = nonce_of(&c);
        let r = peer.answer(t0, &S, &nonce).expect("an answer");
        assert_eq!(r.len(), PATH_FRAME_LEN, "no amplification");
        let mac = mac_of(&r);
        // From another address, for another nonce, with a bad MAC: no.
        assert!(!us.validate(t0, sa("198.51.100.9:5555"), &S, &nonce, &mac));
        assert!(!us.validate(t0, new, &S, &[0; 16], &mac));
        assert!(!us.validate(t0, new, &S, &nonce, &[0; 32]));
        assert!(!us.validate(t0, new, &[4; 16], &nonce, &mac));
        // Our own role's MAC (a reflected challenge answered by ourselves): no.
        let own = mac_of(&us.answer(t0, &S, &nonce).unwrap());
        assert!(!us.validate(t0, new, &S, &nonce, &own));
        // The peer's: yes, once.
        assert!(us.validate(t0, new, &S, &nonce, &mac));
        assert!(!us.validate(t0, new, &S, &nonce, &mac), "used up");
        // Another key (a wrong code) gives another MAC.
        let mut other = PathValidator::new(S, Role::Connector, [8; 32], 3);
        let c = us.challenge(t0, new, 1200).unwrap();
        let n = nonce_of(&c);
        let bad = mac_of(&other.answer(t0, &S, &n).unwrap());
        assert!(!us.validate(t0, new, &S, &n, &bad));
    }

    #[test]
    fn challenges_never_amplify_and_stay_within_budget() {
        let t0 = Instant::now();
        let mut us = PathValidator::new(S, Role::Listener, K, 1);
        let a = sa("203.0.113.7:1");
        // A trigger shorter than the challenge gets none.
        assert_eq!(us.challenge(t0, a, PATH_FRAME_LEN - 1), None);
        assert!(us.challenge(t0, a, PATH_FRAME_LEN).is_some());
        // One per address per gap, the same nonce while outstanding.
        assert_eq!(us.challenge(t0 + PATH_CHALLENGE_GAP / 2, a, 1200), None);
        let again = us.challenge(t0 + PATH_CHALLENGE_GAP, a, 1200).unwrap();
        let first_nonce = nonce_of(&again);
        // At most PATH_CHALLENGES_MAX addresses at once.
        for i in 2..=PATH_CHALLENGES_MAX as u16 {
            assert!(us
                .challenge(t0, sa(&format!("203.0.113.7:{i}")), 1200)
                .is_some());
        }
        assert_eq!(us.challenge(t0, sa("203.0.113.7:999"), 1200), None);
        // Forgotten after the TTL: then a new address may be challenged, with a new nonce.
        let later = t0 + PATH_CHALLENGE_TTL + Duration::from_millis(1);
        assert!(us.challenge(later, sa("203.0.113.7:999"), 1200).is_some());
        let renewed = us.challenge(later, a, 1200).unwrap();
        assert_ne!(nonce_of(&renewed), first_nonce);
        // A stranger spraying junk for 10 s from one address gets at most one challenge per
        // gap, each no longer than the datagram that caused it.
        let mut us = PathValidator::new(S, Role::Listener, K, 5);
        let (mut sent, mut got) = (0usize, 0usize);
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            sent += 100;
            got += us.challenge(now, a, 100).map_or(0, |c| c.len());
        }
        assert!(got <= sent);
        assert!(got <= 10_000 / PATH_CHALLENGE_GAP.as_millis() as usize * PATH_FRAME_LEN);
    }

    #[test]
    fn answers_are_rate_limited() {
        let t0 = Instant::now();
        let mut peer = PathValidator::new(S, Role::Connector, K, 2);
        let answered = (0..100)
            .filter(|_| peer.answer(t0, &S, &[1; 16]).is_some())
            .count();
        assert_eq!(answered, PATH_ANSWERS_MAX as usize);
        assert!(peer.answer(t0 + PATH_ANSWER_WINDOW, &S, &[1; 16]).is_some());
        // Another session's challenge is not answered.
        assert_eq!(
            PathValidator::new(S, Role::Connector, K, 2).answer(t0, &[9; 16], &[1; 16]),
            None
        );
    }
}
