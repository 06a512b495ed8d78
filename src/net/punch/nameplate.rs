//! A listener's nameplate claim: before a code natkit drew is shown, the listener registers
//! with its nameplate on the punch socket; a nameplate that is taken, or where a peer already
//! waits, is replaced by a fresh draw ([`Claim`]) under a fresh peer id (so late answers for
//! the nameplate it left are not taken for the session's). The slot it keeps is held under
//! the returned peer id: the session's own registration is a refresh of it.

use std::net::SocketAddr;
use std::time::Instant;

use rand::SeedableRng;
use tokio::net::UdpSocket;

use crate::defaults::{DIRECT_TIMEOUT, NAMEPLATE_DRAWS, PUNCH_KEEPALIVE};
use crate::net::punch::PunchError;
use crate::proto::punch::code::Code;
use crate::proto::punch::rendezvous::Claim;
use crate::proto::punch::{PunchConfig, RvClient};
use crate::wire::rendezvous::{Frame, PeerId, Role};

/// Claims the nameplate of `code`, which natkit drew (drawing others while
/// [`Claim::DrawAgain`]); returns the code to show and the peer id that holds its slot.
pub(super) async fn claim(
    sock: &UdpSocket,
    relay: SocketAddr,
    token: &[u8],
    mut code: Code,
) -> Result<(Code, PeerId), PunchError> {
    let mut rng = rand::rngs::StdRng::from_entropy();
    for _ in 0..NAMEPLATE_DRAWS {
        let cfg = PunchConfig {
            relay,
            session: code.session_id(),
            role: Role::Listener,
            peer: rand::Rng::gen(&mut rng),
            token: token.to_vec(),
            candidates: Vec::new(),
            direct_timeout: DIRECT_TIMEOUT,
            keepalive: PUNCH_KEEPALIVE,
        };
        match outcome(sock, cfg.clone()).await? {
            Claim::Held | Claim::GoOn => return Ok((code, cfg.peer)),
            Claim::Refused(reason) => {
                return Err(PunchError::Rendezvous(format!(
                    "the relay refused: {reason}"
                )))
            }
            Claim::DrawAgain => {
                let bye = Frame::Bye {
                    session: cfg.session,
                    peer: cfg.peer,
                };
                sock.send_to(&bye.emit(), relay).await?;
                code = Code::generate(&mut rng);
            }
        }
    }
    Err(PunchError::Rendezvous(format!(
        "no free nameplate at the relay after {NAMEPLATE_DRAWS} draws"
    )))
}

/// Registers once (cookie round trip included) and says what came of it.
async fn outcome(sock: &UdpSocket, cfg: PunchConfig) -> Result<Claim, PunchError> {
    let mut rv = RvClient::new(cfg, Instant::now());
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some((dst, b)) = rv.poll_transmit() {
            sock.send_to(&b, dst).await?;
        }
        while let Some(e) = rv.poll_event() {
            if let Some(c) = Claim::from_event(&e) {
                return Ok(c);
            }
        }
        let Some(wake) = rv.poll_timeout() else {
            return Ok(Claim::GoOn);
        };
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r?;
                rv.handle_datagram(Instant::now(), crate::net::sys::canonical(from), &buf[..n]);
            }
            _ = tokio::time::sleep_until(wake.into()) => rv.handle_timeout(Instant::now()),
        }
    }
}
