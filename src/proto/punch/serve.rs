//! `punch serve`: one long-lived code for many peers, each in its own session.
//!
//! The relay pairs one listener with one connector per session id, so a serve code names a
//! *lobby* (a session id hashed from its nameplate) where the serving side waits as the
//! listener. A connector registers there, sends a [`Lobby::Hello`] with a random nonce as
//! relay data, waits for the [`Lobby::Ack`] and leaves; both sides then run an ordinary
//! punch session (own punch, path, relay fallback and PAKE) under the sub-session id and
//! password derived from the code and the nonce ([`ServeCode::sub_code`]). The relay is
//! unchanged: the lobby messages are opaque data to it, so every relay of this version
//! serves, and old clients are not affected.
//!
//! A serve code is a nameplate and eight words: 64 bits of secret, because a long-lived
//! code faces unlimited online guesses. Each guess is a session whose PAKE fails, and
//! [`Guard`] rate-limits those (a token bucket, refunded by sessions that authenticate).

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::proto::punch::code::{Code, CodeError, MAX_NAMEPLATE, WORDS};
use crate::wire::rendezvous::{SessionId, SESSION_LEN};

/// Secret words in a serve code: 8 × 8 bits = 64 bits.
pub const SERVE_WORDS: usize = 8;
/// The nonce a connector picks for its sub-session.
pub const NONCE_LEN: usize = 16;

/// A serve code: `7-w1-…-w8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeCode {
    /// Public part: names the lobby at the relay.
    pub nameplate: u32,
    /// Secret part: indices into [`WORDS`].
    pub words: [u8; SERVE_WORDS],
}

impl ServeCode {
    /// A fresh random serve code from `rng`.
    pub fn generate(rng: &mut impl rand::RngCore) -> ServeCode {
        use rand::Rng;
        ServeCode {
            nameplate: rng.gen_range(1..=MAX_NAMEPLATE),
            words: rng.gen(),
        }
    }

    /// Parses a serve code (case-insensitive, spaces around ignored); `None` when `s` does
    /// not have a serve code's shape (a number and eight words), `Some(Err)` when it has the
    /// shape but a part is wrong.
    pub fn parse(s: &str) -> Option<Result<ServeCode, CodeError>> {
        let s = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 1 + SERVE_WORDS {
            return None;
        }
        Some((|| {
            let nameplate = parts[0]
                .parse::<u32>()
                .map_err(|_| CodeError::Nameplate(parts[0].to_string()))?;
            let mut words = [0u8; SERVE_WORDS];
            for (w, p) in words.iter_mut().zip(&parts[1..]) {
                *w = WORDS
                    .iter()
                    .position(|x| x == p)
                    .ok_or_else(|| CodeError::Word(p.to_string()))? as u8;
            }
            Ok(ServeCode { nameplate, words })
        })())
    }

    /// The lobby's session id at the relay: a hash of the nameplate only, in its own domain
    /// (never the session id of a two-word code with the same number).
    pub fn lobby_session(&self) -> SessionId {
        hash16(&[b"natkit serve v1 lobby", &self.nameplate.to_be_bytes()])
    }

    /// The session of the peer that said hello with `nonce`: the relay session id hashes the
    /// nameplate and nonce (both public); the PAKE password is the whole code with the nonce,
    /// so a password works for one sub-session only.
    pub fn sub_code(&self, nonce: &[u8; NONCE_LEN]) -> Code {
        let session = hash16(&[
            b"natkit serve v1 session",
            &self.nameplate.to_be_bytes(),
            nonce,
        ]);
        let mut password = self.to_string().into_bytes();
        password.push(b'/');
        password.extend_from_slice(nonce);
        Code::sub_session(
            self.nameplate,
            [self.words[0], self.words[1]],
            session,
            password,
        )
    }

    /// Serverless serve (no relay, no lobby): every peer's session uses this code, its own
    /// offers in place of the lobby. Session id and password in their own domain, so neither
    /// is ever a relay sub-session's; one password for every peer is safe because each
    /// SPAKE2 run is fresh and a wrong guess costs a whole session (64 bits to guess).
    pub fn serverless_code(&self) -> Code {
        let session = hash16(&[b"natkit serve v1 serverless", &self.nameplate.to_be_bytes()]);
        let mut password = self.to_string().into_bytes();
        password.extend_from_slice(b"/serverless");
        Code::sub_session(
            self.nameplate,
            [self.words[0], self.words[1]],
            session,
            password,
        )
    }
}

fn hash16(parts: &[&[u8]]) -> SessionId {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let mut id = [0u8; SESSION_LEN];
    id.copy_from_slice(&h.finalize()[..SESSION_LEN]);
    id
}

impl std::fmt::Display for ServeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.nameplate)?;
        for w in self.words {
            write!(f, "-{}", WORDS[w as usize])?;
        }
        Ok(())
    }
}

/// Lobby messages, carried as relay data between a connector and the serving side. Not
/// authenticated (the PAKE of the sub-session is): a forged one can only start a session
/// that fails, which [`Guard`] counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lobby {
    /// Connector → serve: start a sub-session for this nonce.
    Hello([u8; NONCE_LEN]),
    /// Serve → connector: the sub-session for this nonce is waiting.
    Ack([u8; NONCE_LEN]),
}

const LOBBY_MAGIC: &[u8; 4] = b"NKS1";

impl Lobby {
    /// Wire form: magic, type (1 hello, 2 ack), nonce.
    pub fn emit(&self) -> Vec<u8> {
        let (t, n) = match self {
            Lobby::Hello(n) => (1u8, n),
            Lobby::Ack(n) => (2u8, n),
        };
        let mut v = LOBBY_MAGIC.to_vec();
        v.push(t);
        v.extend_from_slice(n);
        v
    }

    /// Parses the wire form; anything else is `None`.
    pub fn parse(b: &[u8]) -> Option<Lobby> {
        if b.len() != LOBBY_MAGIC.len() + 1 + NONCE_LEN || !b.starts_with(LOBBY_MAGIC) {
            return None;
        }
        let n: [u8; NONCE_LEN] = b[5..].try_into().ok()?;
        match b[4] {
            1 => Some(Lobby::Hello(n)),
            2 => Some(Lobby::Ack(n)),
            _ => None,
        }
    }
}

/// Limits on sessions started by hellos: at most `max_pending` not yet authenticated at once,
/// and a token bucket of `burst` guesses refilled one per `refill`. Each admitted hello
/// spends a token; a session that authenticates gives it back, so legitimate peers never run
/// the bucket dry and an attacker gets at most one guess per `refill` after the burst.
#[derive(Debug, Clone)]
pub struct Guard {
    burst: u32,
    refill: Duration,
    max_pending: usize,
    tokens: u32,
    /// When the next token is added (while below `burst`).
    next_token: Instant,
    pending: usize,
    /// Sessions that ended without authenticating.
    pub failures: u64,
}

impl Guard {
    /// A full bucket at `now`.
    pub fn new(now: Instant, burst: u32, refill: Duration, max_pending: usize) -> Guard {
        Guard {
            burst,
            refill,
            max_pending,
            tokens: burst,
            next_token: now + refill,
            pending: 0,
            failures: 0,
        }
    }

    fn top_up(&mut self, now: Instant) {
        while self.tokens < self.burst && now >= self.next_token {
            self.tokens += 1;
            self.next_token += self.refill;
        }
        if self.tokens >= self.burst {
            self.next_token = now + self.refill;
        }
    }

    /// Whether a new hello may start a session now (if so, it is counted as pending).
    pub fn admit(&mut self, now: Instant) -> bool {
        self.top_up(now);
        if self.tokens == 0 || self.pending >= self.max_pending {
            return false;
        }
        self.tokens -= 1;
        self.pending += 1;
        true
    }

    /// A pending session authenticated: its token comes back.
    pub fn authenticated(&mut self, now: Instant) {
        self.top_up(now);
        self.pending = self.pending.saturating_sub(1);
        self.tokens = (self.tokens + 1).min(self.burst);
    }

    /// A pending session ended without authenticating (a wrong code, or nobody came): its
    /// token stays spent.
    pub fn failed(&mut self, now: Instant) {
        self.top_up(now);
        self.pending = self.pending.saturating_sub(1);
        self.failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn serve_codes_roundtrip_and_carry_64_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let c = ServeCode::generate(&mut rng);
            assert_eq!(ServeCode::parse(&c.to_string()), Some(Ok(c.clone())));
        }
        assert_eq!(SERVE_WORDS * 8, 64);
        assert_eq!(ServeCode::parse("7-lantern-harbor"), None);
        let bad = "7-acid-acid-acid-acid-acid-acid-acid-nope";
        assert_eq!(
            ServeCode::parse(bad),
            Some(Err(CodeError::Word("nope".into())))
        );
    }

    #[test]
    fn sub_sessions_differ_by_nonce_and_from_the_lobby() {
        let c = ServeCode::parse("7-acid-acorn-actor-adobe-agent-alarm-album-alley")
            .unwrap()
            .unwrap();
        let (a, b) = (c.sub_code(&[1; 16]), c.sub_code(&[2; 16]));
        assert!(a.is_sub());
        assert_ne!(a.session_id(), b.session_id());
        assert_ne!(a.password(), b.password());
        assert_ne!(a.session_id(), c.lobby_session());
        let two = Code::parse("7-acid-acorn").unwrap();
        assert_ne!(two.session_id(), c.lobby_session());
        // Another code with the same nameplate: same relay ids, different password.
        let d = ServeCode::parse("7-acid-acorn-actor-adobe-agent-alarm-album-amber")
            .unwrap()
            .unwrap();
        assert_eq!(d.sub_code(&[1; 16]).session_id(), a.session_id());
        assert_ne!(d.sub_code(&[1; 16]).password(), a.password());
    }

    #[test]
    fn the_serverless_code_is_neither_the_lobby_nor_a_sub_session() {
        let c = ServeCode::parse("7-acid-acorn-actor-adobe-agent-alarm-album-alley")
            .unwrap()
            .unwrap();
        let s = c.serverless_code();
        assert!(s.is_sub());
        assert_eq!(s.session_id(), c.serverless_code().session_id());
        assert_ne!(s.session_id(), c.lobby_session());
        assert_ne!(s.session_id(), c.sub_code(&[0; 16]).session_id());
        assert_ne!(s.password(), c.sub_code(&[0; 16]).password());
        let d = ServeCode::parse("7-acid-acorn-actor-adobe-agent-alarm-album-amber")
            .unwrap()
            .unwrap();
        assert_ne!(s.password(), d.serverless_code().password());
    }

    #[test]
    fn lobby_messages_roundtrip_and_junk_is_ignored() {
        for m in [Lobby::Hello([9; 16]), Lobby::Ack([4; 16])] {
            assert_eq!(Lobby::parse(&m.emit()), Some(m));
        }
        assert_eq!(Lobby::parse(b"NKS1"), None);
        let mut wrong = Lobby::Hello([0; 16]).emit();
        wrong[4] = 9;
        assert_eq!(Lobby::parse(&wrong), None);
        assert_eq!(Lobby::parse(&[0u8; 21]), None);
    }

    #[test]
    fn guard_allows_a_burst_then_one_guess_per_refill() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Guard::new(t, 3, s, 100);
        for _ in 0..3 {
            assert!(g.admit(t));
            g.failed(t);
        }
        assert!(!g.admit(t), "bucket empty");
        assert!(!g.admit(t + s / 2));
        assert!(g.admit(t + s));
        g.failed(t + s);
        assert!(!g.admit(t + s));
        // 100 s of hammering: about 100 guesses, not more.
        let mut n = 0;
        for ms in (1000..101_000).step_by(10) {
            let now = t + Duration::from_millis(ms);
            if g.admit(now) {
                g.failed(now);
                n += 1;
            }
        }
        assert!((99..=101).contains(&n), "{n}");
        assert_eq!(g.failures, 4 + n);
    }

    #[test]
    fn authenticated_sessions_give_their_token_back_and_pending_is_capped() {
        let t = Instant::now();
        let mut g = Guard::new(t, 2, Duration::from_secs(60), 3);
        for _ in 0..10 {
            assert!(g.admit(t));
            g.authenticated(t);
        }
        let mut g = Guard::new(t, 10, Duration::from_secs(60), 3);
        assert!(g.admit(t) && g.admit(t) && g.admit(t));
        assert!(!g.admit(t), "three pending");
        g.authenticated(t);
        assert!(g.admit(t));
    }
}
