//! `punch serve` without a relay (zero configuration, or `--manual`): there is no lobby, so
//! every peer gets an offer instead. Serve prints its code once, then one offer at a time,
//! each from a fresh session (its own socket, punch, path and PAKE, under
//! [`ServeCode::serverless_code`]). A peer runs `punch connect CODE --peer OFFER` and sends
//! its own offer back as one line, which serve reads from stdin or from a `--peer-file` it
//! follows as it grows; the line starts that session's punch, and the next session prints
//! the next offer. Peers thus come one after another and stay connected side by side.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::{close_all, peer_session, PeerNews, Peers, ServeEvent};
use crate::defaults::{OFFER_FILE_POLL, SERVE_OFFER_FAIL_FAST};
use crate::net::punch::{Event, Manual, OfferPrompt, PeerOffer, PunchError, PunchOptions};
use crate::proto::punch::serve::ServeCode;
use crate::wire::rendezvous::Role;

/// The session whose offer is out, waiting for its peer's.
struct Waiting {
    peer: u64,
    /// Hands it the peer's offer line.
    line: oneshot::Sender<String>,
    /// Starts its authentication deadline.
    arm: oneshot::Sender<()>,
    /// Its offer has been printed: only a line after that can answer it.
    offered: bool,
    since: Instant,
    task: AbortHandle,
}

/// What every peer's session shares.
struct Sessions {
    opts: PunchOptions,
    stun: Option<String>,
    news: mpsc::UnboundedSender<(u64, PeerNews)>,
}

impl Sessions {
    /// Starts `peer`'s session: it prints its offer and waits for the line.
    fn start(&self, peer: u64, peers: &mut JoinSet<()>) -> Waiting {
        let (line, line_rx) = oneshot::channel();
        let (arm, arm_rx) = oneshot::channel::<()>();
        let mut o = self.opts.clone();
        o.manual = Some(Manual {
            stun: self.stun.clone(),
            // Serve said so once, for all of its peers.
            fallback: false,
            peer: PeerOffer::Prompt(handed(line_rx)),
        });
        let armed = async move {
            if arm_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let task = peers.spawn(peer_session(peer, o, self.news.clone(), armed));
        Waiting {
            peer,
            line,
            arm,
            offered: false,
            since: Instant::now(),
            task,
        }
    }
}

fn warning(message: String) -> ServeEvent {
    ServeEvent::Own(Event::Warning { message })
}

/// Serves every peer whose offer line comes, until `shutdown` completes, or until the
/// lines end and the last peer has left.
pub(super) async fn serve(
    opts: PunchOptions,
    mut on_event: impl FnMut(&ServeEvent) + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PunchError> {
    let Some(manual) = opts.manual.clone() else {
        return Err(PunchError::Rendezvous(
            "serverless serve without offers".into(),
        ));
    };
    let code = ServeCode::generate(&mut rand::thread_rng());
    // The STUN server is looked up once, not once per peer.
    let stun = match (&manual.stun, manual.fallback) {
        (Some(s), _) => {
            // Named by the user: a name that does not resolve is a clear error at once
            // (each session resolves it again, for its A and AAAA records).
            let (host, port) = crate::net::sys::parse_server(s)?;
            crate::net::sys::resolve(&host, port).await.map_err(|e| {
                PunchError::Rendezvous(format!("cannot resolve the STUN server {s}: {e}"))
            })?;
            Some(s.clone())
        }
        (None, true) => crate::net::punch::meet::builtin_stun()
            .await
            .map(|a| a.to_string()),
        (None, false) => None,
    };
    let source = match &manual.peer {
        PeerOffer::File(f) => format!("appended to {}", f.display()),
        _ => "on stdin".to_string(),
    };
    let why = if manual.fallback {
        "no relay given (--relay or NATKIT_RELAY): "
    } else {
        ""
    };
    on_event(&warning(format!(
        "{why}serving serverless: each peer gets the code and an offer of its own (punch \
         connect CODE --peer OFFER) and sends its offer back as one line {source}"
    )));
    on_event(&ServeEvent::Own(Event::Code {
        code: code.to_string(),
    }));
    let mut lines = offer_lines(manual.peer.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (news_tx, mut news_rx) = mpsc::unbounded_channel();
    let mut o = opts;
    o.code = code.serverless_code();
    o.role = Role::Listener;
    o.stop = Some(stop_rx);
    let sessions = Sessions {
        opts: o,
        stun,
        news: news_tx,
    };
    let mut state = Peers::new();
    let mut peers = JoinSet::new();
    let mut waiting = Some(sessions.start(1, &mut peers));
    let mut next_peer = 2u64;
    let mut open = true;
    let mut warned = None;
    tokio::pin!(shutdown);
    loop {
        let ready = open && waiting.as_ref().is_some_and(|w| w.offered);
        tokio::select! {
            l = lines.recv(), if ready => match l {
                Some(Ok(line)) => {
                    let line = line.trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    if let Err(e) = crate::wire::offer::parse(&line) {
                        on_event(&warning(format!("not an offer, ignored: {e}")));
                        continue;
                    }
                    let Some(w) = waiting.take() else { continue };
                    if !state.admit(w.peer) {
                        // The line is dropped: that peer gives up, and its offer is asked
                        // for again later.
                        if let Some(e) = state.limited(&mut warned) {
                            on_event(&e);
                        }
                        waiting = Some(w);
                        continue;
                    }
                    let _ = w.line.send(line);
                    let _ = w.arm.send(());
                    waiting = Some(sessions.start(next_peer, &mut peers));
                    next_peer += 1;
                }
                Some(Err(why)) => {
                    open = false;
                    if let Some(w) = waiting.take() {
                        w.task.abort();
                    }
                    let n = state.joined.len();
                    let rest = match n {
                        0 => "nobody to serve; done".to_string(),
                        n => format!("serving the {n} peer(s) here until they leave"),
                    };
                    on_event(&warning(format!("no more offers can come ({why}): {rest}")));
                    if n == 0 {
                        break;
                    }
                }
                None => open = false,
            },
            Some((peer, news)) = news_rx.recv() => {
                let Some(w) = waiting.as_mut().filter(|w| w.peer == peer) else {
                    if state.news(peer, news, &mut on_event) && !open && state.joined.is_empty() {
                        break;
                    }
                    continue;
                };
                match news {
                    PeerNews::Ended(r) => {
                        let since = w.since;
                        let e = r.err().unwrap_or(PunchError::Rendezvous("ended".into()));
                        if since.elapsed() < SERVE_OFFER_FAIL_FAST {
                            close_all(stop_tx, peers).await;
                            return Err(e);
                        }
                        on_event(&warning(format!(
                            "the offer for peer {peer} is no longer good ({e}); a fresh one follows"
                        )));
                        waiting = Some(sessions.start(next_peer, &mut peers));
                        next_peer += 1;
                    }
                    PeerNews::Event(event) => {
                        w.offered |= matches!(event, Event::Offer { .. });
                        on_event(&ServeEvent::Peer { peer, event });
                    }
                    PeerNews::Authenticated => {}
                }
            }
            Some(_) = peers.join_next(), if !peers.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    // Nobody has the waiting offer yet: nothing to close on the other side.
    if let Some(w) = waiting.take() {
        w.task.abort();
    }
    close_all(stop_tx, peers).await;
    Ok(())
}

/// A session's offer source: the one line serve hands it.
fn handed(rx: oneshot::Receiver<String>) -> OfferPrompt {
    let rx = Arc::new(Mutex::new(Some(rx)));
    OfferPrompt(Arc::new(move || {
        let rx = rx.lock().ok().and_then(|mut r| r.take());
        Box::pin(async move {
            match rx {
                Some(rx) => rx
                    .await
                    .map_err(|_| "serve stopped taking offers".to_string()),
                None => Err("the offer was already taken".to_string()),
            }
        })
    }))
}

/// Peers' offer lines as they come (`Err` once no more can: end of input, and why).
fn offer_lines(src: PeerOffer) -> mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let end = match src {
            PeerOffer::File(path) => follow(&path, &tx).await,
            PeerOffer::Prompt(ask) => loop {
                match (ask.0)().await {
                    Ok(l) if l.is_empty() => break "end of input".to_string(),
                    Ok(l) => {
                        if tx.send(Ok(l)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break e,
                }
            },
            _ => "no source of offers".to_string(),
        };
        let _ = tx.send(Err(end)).await;
    });
    rx
}

/// Follows `path` as it grows: every complete line appended after serve started (what was
/// there before answers no offer of this run). A file cut shorter is read again from its
/// start. Returns only when nobody listens any more.
async fn follow(path: &Path, tx: &mpsc::Sender<Result<String, String>>) -> String {
    let mut offset = tokio::fs::metadata(path).await.map_or(0, |m| m.len());
    loop {
        if let Ok(bytes) = tokio::fs::read(path).await {
            if (bytes.len() as u64) < offset {
                offset = 0;
            }
            let new = &bytes[offset as usize..];
            if let Some(end) = new.iter().rposition(|b| *b == b'\n') {
                for l in String::from_utf8_lossy(&new[..end]).lines() {
                    if tx.send(Ok(l.to_string())).await.is_err() {
                        return String::new();
                    }
                }
                offset += end as u64 + 1;
            }
        }
        tokio::time::sleep(OFFER_FILE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--peer-file`: what the file held before is skipped; lines appended come one by one,
    /// a line only once it is complete.
    async fn next(
        lines: &mut mpsc::Receiver<Result<String, String>>,
    ) -> Option<Result<String, String>> {
        tokio::time::timeout(OFFER_FILE_POLL * 20, lines.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_peer_file_is_followed_as_it_grows() {
        let path = std::env::temp_dir().join(format!("natkit-follow-{}", rand::random::<u64>()));
        std::fs::write(&path, "old\n").unwrap();
        let mut lines = offer_lines(PeerOffer::File(path.clone()));
        tokio::time::sleep(OFFER_FILE_POLL * 2).await;
        let append = |s: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(s.as_bytes()).unwrap();
        };
        append("first\nsec");
        assert_eq!(next(&mut lines).await, Some(Ok("first".to_string())));
        assert_eq!(
            tokio::time::timeout(OFFER_FILE_POLL * 3, lines.recv())
                .await
                .ok(),
            None,
            "half a line is not a line yet"
        );
        append("ond\nthird\n");
        assert_eq!(next(&mut lines).await, Some(Ok("second".to_string())));
        assert_eq!(next(&mut lines).await, Some(Ok("third".to_string())));
        let _ = std::fs::remove_file(&path);
    }
}
