//! Authenticating over the chosen path: the key exchange ([`crate::proto::punch::auth`])
//! turns the event loop until the peer's certificate fingerprint is confirmed, or the code
//! is wrong, or the peer does not answer in time.

use std::time::Instant;

use crate::net::punch::control::{Control, Phase};
use crate::net::punch::transport::lock;
use crate::net::punch::PunchError;
use crate::proto::punch::auth::AuthError;
use crate::proto::punch::path::PathValidator;
use crate::wire::rendezvous::Frame;

/// Runs the key exchange; returns the peer's certificate fingerprint to pin.
pub(super) async fn authenticate(c: &mut Control) -> Result<[u8; 32], PunchError> {
    // Relayed frames that arrived before the path was chosen (the peer may be ahead).
    let now = Instant::now();
    for d in std::mem::take(&mut c.early) {
        if let Ok(f) = Frame::parse(&d) {
            c.auth.handle_frame(now, &f);
        }
    }
    c.auth.start(now);
    c.flush();
    loop {
        c.settle(Phase::Auth).await?;
        match c.auth.outcome() {
            Some(Ok(fp)) => {
                // Our last confirmation (the peer may have missed one) goes now.
                c.flush();
                // From now on a new address of the peer's can prove itself (path validation
                // keyed by the PAKE); before, nothing new is adopted.
                if let Some(key) = c.auth.path_key() {
                    let v = PathValidator::new(c.session, c.puncher.role(), key, rand::random());
                    lock(&c.link).link.enable_validation(v);
                }
                return Ok(fp);
            }
            Some(Err(AuthError::Pake(e))) => return Err(e.into()),
            Some(Err(AuthError::Timeout(t))) => return Err(PunchError::PakeTimeout(t)),
            None => {}
        }
        if !c.wait().await? {
            return Err(PunchError::Transport("the socket reader ended".into()));
        }
    }
}
