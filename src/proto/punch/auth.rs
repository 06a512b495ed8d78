//! The key exchange over the chosen path, sans-IO ([`Auth`]): our SPAKE2 message and
//! confirmation resent every [`PAKE_RESEND`] until the peer's confirmation verifies, given
//! up after [`PAKE_TIMEOUT`]; the peer's repeats answered, at most every
//! [`PAKE_ANSWER_GAP`]. The PAKE itself is [`crate::proto::punch::pake`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::defaults::{PAKE_ANSWER_GAP, PAKE_RESEND, PAKE_TIMEOUT};
use crate::proto::punch::pake::{Pake, PakeError};
use crate::wire::rendezvous::{Frame, SessionId};

/// Why the key exchange ended without a peer to trust.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The PAKE failed (a wrong code among others).
    #[error(transparent)]
    Pake(#[from] PakeError),
    /// The peer did not complete the key exchange within this long.
    #[error("the other side did not complete the key exchange within {0:?}")]
    Timeout(Duration),
}

/// One side's key exchange: frames in, frames for the peer out.
#[derive(Debug)]
pub struct Auth {
    pake: Pake,
    session: SessionId,
    /// The resend loop runs from [`Auth::start`] until the result is known.
    deadline: Option<Instant>,
    next_resend: Option<Instant>,
    /// When we last answered a PAKE message of the peer's.
    last_answer: Option<Instant>,
    /// The first error, kept until the driver asks (an error after the peer is confirmed
    /// does not undo it).
    error: Option<PakeError>,
    result: Option<Result<[u8; 32], AuthError>>,
    out: VecDeque<Frame>,
}

impl Auth {
    /// Answers the peer's messages at once; resends ours only once started.
    pub fn new(pake: Pake, session: SessionId) -> Auth {
        Auth {
            pake,
            session,
            deadline: None,
            next_resend: None,
            last_answer: None,
            error: None,
            result: None,
            out: VecDeque::new(),
        }
    }

    /// The path is chosen: send our message now, and again until confirmed.
    pub fn start(&mut self, now: Instant) {
        if self.result.is_none() && self.deadline.is_none() {
            self.deadline = Some(now + PAKE_TIMEOUT);
            self.next_resend = Some(now);
            self.handle_timeout(now);
        }
    }

    /// A frame of the peer's; false when it is no PAKE frame of this session.
    pub fn handle_frame(&mut self, now: Instant, f: &Frame) -> bool {
        match f {
            Frame::Pake { session, msg } if *session == self.session => {
                let first = !self.pake.has_key();
                match self.pake.handle_message(msg) {
                    Ok(confirm) => {
                        // Answer the first message at once. A repeat means the peer lacks
                        // ours (lost): answer again, but not every repeat (see
                        // PAKE_ANSWER_GAP).
                        let due = first
                            || self.last_answer.is_none_or(|t| {
                                now.saturating_duration_since(t) >= PAKE_ANSWER_GAP
                            });
                        if due {
                            self.last_answer = Some(now);
                            self.out.push_back(self.pake.message());
                            self.out.push_back(confirm);
                        }
                    }
                    // A malformed message (anyone's) changes nothing: one bad frame must not
                    // end the session, and the genuine one may still come.
                    Err(PakeError::BadMessage) => {}
                    Err(e) => self.fail(e),
                }
                true
            }
            Frame::Confirm {
                session,
                fingerprint,
                mac,
            } if *session == self.session => {
                if self.pake.has_key() {
                    match self.pake.verify(fingerprint, mac) {
                        Ok(fp) if self.result.is_none() => {
                            self.result = Some(Ok(fp));
                            self.stop();
                            // Make sure the peer has our confirmation too (it may have
                            // missed the last one).
                            self.out.extend(self.pake.confirmation());
                        }
                        Ok(_) => {}
                        Err(e) => self.fail(e),
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn fail(&mut self, e: PakeError) {
        if self.result.is_none() && self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn stop(&mut self) {
        self.deadline = None;
        self.next_resend = None;
    }

    /// Advances the resend loop.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.result.is_some() {
            return;
        }
        if let Some(e) = self.error.take() {
            self.result = Some(Err(e.into()));
            self.stop();
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.result = Some(Err(AuthError::Timeout(PAKE_TIMEOUT)));
            self.stop();
            return;
        }
        if self.next_resend.is_some_and(|t| now >= t) {
            self.out.push_back(self.pake.message());
            self.out.extend(self.pake.confirmation());
            self.next_resend = Some(now + PAKE_RESEND);
        }
    }

    /// When to call [`Auth::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_resend, self.deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The path validation key, once the peer's confirmation verified.
    pub fn path_key(&self) -> Option<[u8; 32]> {
        match self.result {
            Some(Ok(_)) => self.pake.path_key(),
            _ => None,
        }
    }

    /// Next frame for the peer (over the link: direct, or wrapped for the relay).
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// The result once known: the peer's certificate fingerprint to pin, or why not. An
    /// error seen in a frame is reported at once.
    pub fn outcome(&mut self) -> Option<Result<[u8; 32], AuthError>> {
        if self.result.is_none() {
            if let Some(e) = self.error.take() {
                self.result = Some(Err(e.into()));
                self.stop();
            }
        }
        self.result.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rendezvous::Role;

    const S: SessionId = [9; 16];

    fn side(role: Role, code: &[u8], cert: &[u8]) -> Auth {
        Auth::new(Pake::new(S, role, code, cert, [role as u8; 32]), S)
    }

    fn drain(a: &mut Auth) -> Vec<Frame> {
        std::iter::from_fn(|| a.poll_transmit()).collect()
    }

    /// Delivers everything `from` has queued to `to`.
    fn pass(from: &mut Auth, to: &mut Auth, now: Instant) -> usize {
        let fs = drain(from);
        for f in &fs {
            assert!(to.handle_frame(now, f));
        }
        fs.len()
    }

    #[test]
    fn resends_until_confirmed_then_stops() {
        let t0 = Instant::now();
        let mut l = side(Role::Listener, b"7-a-b", b"cert L");
        let mut c = side(Role::Connector, b"7-a-b", b"cert C");
        l.start(t0);
        // The first message goes at once; without answers it is resent every PAKE_RESEND.
        assert_eq!(drain(&mut l).len(), 1);
        let mut now = t0;
        let mut resends = 0;
        while now < t0 + PAKE_RESEND * 3 {
            now = l.poll_timeout().unwrap();
            l.handle_timeout(now);
            resends += drain(&mut l).len();
        }
        assert_eq!(resends, 3);
        assert_eq!(now, t0 + PAKE_RESEND * 3);
        // The peer answers: message and confirmation; we confirm once more, and are done.
        c.start(now);
        pass(&mut c, &mut l, now);
        pass(&mut l, &mut c, now);
        pass(&mut c, &mut l, now);
        assert_eq!(
            l.outcome(),
            Some(Ok(crate::proto::punch::pake::fingerprint(b"cert C")))
        );
        assert_eq!(
            c.outcome(),
            Some(Ok(crate::proto::punch::pake::fingerprint(b"cert L")))
        );
        drain(&mut l);
        assert_eq!(l.poll_timeout(), None);
        l.handle_timeout(now + PAKE_TIMEOUT * 2);
        assert!(drain(&mut l).is_empty(), "no resends after the result");
        assert!(l.outcome().unwrap().is_ok(), "no timeout after the result");
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let t0 = Instant::now();
        let mut l = side(Role::Listener, b"7-a-b", b"cert L");
        assert_eq!(l.poll_timeout(), None, "not started: nothing to resend");
        l.start(t0);
        let mut now = t0;
        let mut sent = drain(&mut l).len();
        while l.outcome().is_none() {
            now = l.poll_timeout().unwrap();
            l.handle_timeout(now);
            sent += drain(&mut l).len();
        }
        assert_eq!(now, t0 + PAKE_TIMEOUT);
        assert_eq!(l.outcome(), Some(Err(AuthError::Timeout(PAKE_TIMEOUT))));
        // One send at the start and one per interval before the deadline.
        assert_eq!(
            sent as u32,
            PAKE_TIMEOUT.as_millis() as u32 / PAKE_RESEND.as_millis() as u32
        );
    }

    #[test]
    fn a_wrong_code_fails_at_once() {
        let t0 = Instant::now();
        let mut l = side(Role::Listener, b"7-a-b", b"cert L");
        let mut c = side(Role::Connector, b"7-a-c", b"cert C");
        l.start(t0);
        c.start(t0);
        pass(&mut l, &mut c, t0);
        pass(&mut c, &mut l, t0);
        assert_eq!(
            l.outcome(),
            Some(Err(AuthError::Pake(PakeError::WrongCode)))
        );
    }

    #[test]
    fn repeats_are_answered_at_most_every_gap() {
        let t0 = Instant::now();
        let mut l = side(Role::Listener, b"7-a-b", b"cert L");
        let c = side(Role::Connector, b"7-a-b", b"cert C");
        let msg = c.pake.message();
        // Before start: the first message is answered (message and confirmation).
        assert!(l.handle_frame(t0, &msg));
        assert_eq!(drain(&mut l).len(), 2);
        // A repeat within the gap is not; after it, it is.
        l.handle_frame(t0 + PAKE_ANSWER_GAP / 2, &msg);
        assert!(drain(&mut l).is_empty());
        l.handle_frame(t0 + PAKE_ANSWER_GAP, &msg);
        assert_eq!(drain(&mut l).len(), 2);
        // Frames of another session or kind are not ours.
        assert!(!l.handle_frame(
            t0,
            &Frame::Pake {
                session: [1; 16],
                msg: vec![]
            }
        ));
        assert!(!l.handle_frame(
            t0,
            &Frame::Predict {
                session: S,
                port: 1
            }
        ));
    }

    #[test]
    fn a_malformed_pake_message_does_not_end_the_exchange() {
        let t0 = Instant::now();
        let mut l = side(Role::Listener, b"7-a-b", b"cert L");
        let mut c = side(Role::Connector, b"7-a-b", b"cert C");
        l.start(t0);
        c.start(t0);
        // A stranger's malformed PAKE message arrives first.
        assert!(l.handle_frame(
            t0,
            &Frame::Pake {
                session: S,
                msg: vec![0x41; 33]
            }
        ));
        l.handle_timeout(t0);
        assert_eq!(l.outcome(), None, "one bad frame ended the session");
        assert_eq!(l.path_key(), None);
        pass(&mut l, &mut c, t0);
        pass(&mut c, &mut l, t0);
        pass(&mut l, &mut c, t0);
        assert!(matches!(l.outcome(), Some(Ok(_))));
        assert!(matches!(c.outcome(), Some(Ok(_))));
        assert!(l.path_key().is_some());
        assert_eq!(l.path_key(), c.path_key());
    }
}
