//! `punch serve` and joining a serve code: the lobby at the relay
//! ([`crate::proto::punch::serve`]), and one ordinary punch session ([`super::run`]) per
//! peer, each with its own socket, punch, path, relay fallback and PAKE. Without a relay,
//! [`serverless`] serves peers by offers instead of the lobby.

mod serverless;

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::defaults::{
    DIRECT_TIMEOUT, NAMEPLATE_DRAWS, PUNCH_KEEPALIVE, SERVE_AUTH_TIMEOUT, SERVE_GUESS_BURST,
    SERVE_GUESS_REFILL, SERVE_HELLO_RESEND, SERVE_JOIN_TIMEOUT, SERVE_LIMIT_WARN_GAP,
    SERVE_LOBBY_RETRY, SERVE_MAX_PENDING, SERVE_SHUTDOWN,
};
use crate::net::punch::{Event, PunchError, PunchOptions};
use crate::proto::punch::code::Code;
use crate::proto::punch::rendezvous::{RvClient, RvEvent};
use crate::proto::punch::serve::{Guard, Lobby, ServeCode, NONCE_LEN};
use crate::proto::punch::PunchConfig;
use crate::wire::rendezvous::{ErrorCode, Frame, PeerId, Role};

/// What `punch serve` reports (JSON lines with `--json`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ServeEvent {
    /// The serving side's own events (`code`, `warning`).
    Own(Event),
    /// An event of one peer's session, with the peer's id (`"peer_id": 3`).
    Peer {
        /// Numbers the peers of this serve run from 1 (`peer_id`: an event's own `peer` is
        /// the address it talks to).
        #[serde(rename = "peer_id")]
        peer: u64,
        /// The session's event.
        #[serde(flatten)]
        event: Event,
    },
    /// Peers joining and leaving.
    Change(PeerChange),
}

/// Peers joining and leaving.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PeerChange {
    /// The peer proved it knows the code; its session is encrypted end to end.
    PeerJoined {
        /// Its id.
        #[serde(rename = "peer_id")]
        peer: u64,
    },
    /// An authenticated peer's session ended.
    PeerLeft {
        /// Its id.
        #[serde(rename = "peer_id")]
        peer: u64,
        /// Payload bytes sent to it.
        bytes_sent: u64,
        /// Payload bytes received from it.
        bytes_received: u64,
        /// Why it ended, when not by the peer closing it.
        error: Option<String>,
    },
    /// A session ended without authenticating: a wrong code, or nobody followed the hello.
    /// Each is a guess at the code, and the guesses are rate-limited.
    AuthFailed {
        /// Its id.
        #[serde(rename = "peer_id")]
        peer: u64,
        /// Why.
        reason: String,
        /// Such sessions so far.
        failures: u64,
    },
}

/// Resolves the relay `HOST[:PORT]`.
async fn relay_addr(relay: &str) -> Result<SocketAddr, PunchError> {
    let (host, port) = crate::net::sys::parse_server(relay)?;
    crate::net::sys::resolve(&host, port)
        .await
        .map_err(PunchError::Resolve)
}

/// A client registering in `code`'s lobby as `role` under `peer`.
fn lobby_client(
    relay: SocketAddr,
    opts: &PunchOptions,
    code: &ServeCode,
    role: Role,
    peer: PeerId,
) -> RvClient {
    RvClient::new(
        PunchConfig {
            relay,
            session: code.lobby_session(),
            role,
            peer,
            token: opts.token.clone(),
            candidates: Vec::new(),
            direct_timeout: DIRECT_TIMEOUT,
            keepalive: PUNCH_KEEPALIVE,
        },
        Instant::now(),
    )
}

async fn flush(sock: &UdpSocket, rv: &mut RvClient) {
    while let Some((dst, b)) = rv.poll_transmit() {
        // A send that fails is a lost datagram: the lobby retransmits.
        let _ = sock.send_to(&b, dst).await;
    }
}

/// Leaves the lobby so its slot is free at once.
async fn bye(sock: &UdpSocket, relay: SocketAddr, code: &ServeCode, peer: PeerId) {
    let f = Frame::Bye {
        session: code.lobby_session(),
        peer,
    };
    let _ = sock.send_to(&f.emit(), relay).await;
}

/// Waits until `stop` says so; never, without one.
pub(super) async fn stopped(stop: Option<watch::Receiver<bool>>) {
    match stop {
        Some(mut s) => {
            if s.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Connector: says hello in the lobby of `code` and returns the code of the session the
/// serving side has opened for us.
pub(super) async fn join(opts: &PunchOptions, code: &ServeCode) -> Result<Code, PunchError> {
    let relay = relay_addr(&opts.relay).await?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let nonce: [u8; NONCE_LEN] = rand::random();
    let deadline = Instant::now() + SERVE_JOIN_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    'lobby: loop {
        let me: PeerId = rand::random();
        let mut rv = lobby_client(relay, opts, code, Role::Connector, me);
        let mut next_hello: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                bye(&sock, relay, code, me).await;
                return Err(PunchError::Rendezvous(format!(
                    "nobody serves this code at the relay (no answer in {} s)",
                    SERVE_JOIN_TIMEOUT.as_secs()
                )));
            }
            while let Some(e) = rv.poll_event() {
                match e {
                    RvEvent::Registered {
                        peer_present: true, ..
                    }
                    | RvEvent::Peer { .. } => {
                        next_hello.get_or_insert(now);
                    }
                    RvEvent::Data(p) if Lobby::parse(&p) == Some(Lobby::Ack(nonce)) => {
                        bye(&sock, relay, code, me).await;
                        return Ok(code.sub_code(&nonce));
                    }
                    RvEvent::Refused {
                        code: ErrorCode::SessionBusy,
                        ..
                    } => {
                        // Another connector is saying hello: its turn lasts a round trip.
                        let jitter = rand::random::<u32>() % 100;
                        tokio::time::sleep(
                            SERVE_LOBBY_RETRY + std::time::Duration::from_millis(jitter.into()),
                        )
                        .await;
                        continue 'lobby;
                    }
                    RvEvent::Refused { reason, .. } => {
                        return Err(PunchError::Rendezvous(format!(
                            "the relay refused: {reason}"
                        )))
                    }
                    RvEvent::RelayLost => {
                        return Err(PunchError::Rendezvous(
                            "the relay does not answer over UDP (a serve code needs it)".into(),
                        ))
                    }
                    _ => {}
                }
            }
            if next_hello.is_some_and(|t| t <= now) {
                rv.send_data(Lobby::Hello(nonce).emit());
                next_hello = Some(now + SERVE_HELLO_RESEND);
            }
            flush(&sock, &mut rv).await;
            let wake = [rv.poll_timeout(), next_hello, Some(deadline)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(deadline);
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let (n, from) = r?;
                    rv.handle_datagram(Instant::now(), from, &buf[..n]);
                }
                _ = tokio::time::sleep_until(wake.into()) => rv.handle_timeout(Instant::now()),
            }
        }
    }
}

/// Takes a lobby at the relay: draws serve codes until one's lobby is free; returns it with
/// the registered client.
async fn claim(
    sock: &UdpSocket,
    relay: SocketAddr,
    opts: &PunchOptions,
) -> Result<(ServeCode, RvClient, PeerId), PunchError> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..NAMEPLATE_DRAWS {
        let code = ServeCode::generate(&mut rand::thread_rng());
        let me: PeerId = rand::random();
        let mut rv = lobby_client(relay, opts, &code, Role::Listener, me);
        loop {
            flush(sock, &mut rv).await;
            match rv.poll_event() {
                Some(RvEvent::Registered { .. }) => return Ok((code, rv, me)),
                Some(RvEvent::Refused {
                    code: ErrorCode::SessionBusy,
                    ..
                }) => {
                    bye(sock, relay, &code, me).await;
                    break;
                }
                Some(RvEvent::Refused { reason, .. }) => {
                    return Err(PunchError::Rendezvous(format!(
                        "the relay refused: {reason}"
                    )))
                }
                Some(RvEvent::RelayLost) => {
                    return Err(PunchError::Rendezvous(
                        "the relay does not answer over UDP (punch serve needs it)".into(),
                    ))
                }
                Some(_) => continue,
                None => {}
            }
            let wake = rv.poll_timeout().unwrap_or_else(Instant::now);
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let (n, from) = r?;
                    rv.handle_datagram(Instant::now(), from, &buf[..n]);
                }
                _ = tokio::time::sleep_until(wake.into()) => rv.handle_timeout(Instant::now()),
            }
        }
    }
    Err(PunchError::Rendezvous(format!(
        "no free nameplate at the relay after {NAMEPLATE_DRAWS} draws"
    )))
}

/// What a peer's task tells the serve loop.
enum PeerNews {
    Event(Event),
    Authenticated,
    Ended(Result<Event, PunchError>),
}

/// The peers' sessions as serve reports them: which authenticated, and the failed guesses
/// at the code (rate-limited by the [`Guard`]).
struct Peers {
    guard: Guard,
    /// Sessions running, by peer id: whether each has authenticated.
    joined: HashMap<u64, bool>,
}

impl Peers {
    fn new() -> Peers {
        Peers {
            guard: Guard::new(
                Instant::now(),
                SERVE_GUESS_BURST,
                SERVE_GUESS_REFILL,
                SERVE_MAX_PENDING,
            ),
            joined: HashMap::new(),
        }
    }

    /// Whether one more session may try the code now (see [`Guard::admit`]); it is then
    /// `peer`'s.
    fn admit(&mut self, peer: u64) -> bool {
        let ok = self.guard.admit(Instant::now());
        if ok {
            self.joined.insert(peer, false);
        }
        ok
    }

    /// A `warning` that new peers wait for the rate limit, at most every
    /// [`SERVE_LIMIT_WARN_GAP`].
    fn limited(&self, warned: &mut Option<Instant>) -> Option<ServeEvent> {
        if warned.is_some_and(|t| t.elapsed() < SERVE_LIMIT_WARN_GAP) {
            return None;
        }
        *warned = Some(Instant::now());
        Some(ServeEvent::Own(Event::Warning {
            message: format!(
                "new peers wait: {} attempts at the code failed so far, and they are \
                 rate-limited",
                self.guard.failures
            ),
        }))
    }

    /// Turns one peer's news into serve's events; true when its session ended.
    fn news(&mut self, peer: u64, news: PeerNews, on_event: &mut impl FnMut(&ServeEvent)) -> bool {
        match news {
            PeerNews::Event(event) => on_event(&ServeEvent::Peer { peer, event }),
            PeerNews::Authenticated => {
                self.guard.authenticated(Instant::now());
                self.joined.insert(peer, true);
                on_event(&ServeEvent::Change(PeerChange::PeerJoined { peer }));
            }
            PeerNews::Ended(r) => {
                let authed = self.joined.remove(&peer).unwrap_or(false);
                let change = match (authed, r) {
                    (
                        true,
                        Ok(Event::Done {
                            bytes_sent,
                            bytes_received,
                            ..
                        }),
                    ) => PeerChange::PeerLeft {
                        peer,
                        bytes_sent,
                        bytes_received,
                        error: None,
                    },
                    (true, r) => PeerChange::PeerLeft {
                        peer,
                        bytes_sent: 0,
                        bytes_received: 0,
                        error: r.err().map(|e| e.to_string()),
                    },
                    (false, r) => {
                        self.guard.failed(Instant::now());
                        PeerChange::AuthFailed {
                            peer,
                            reason: r.err().map_or("ended".into(), |e| e.to_string()),
                            failures: self.guard.failures,
                        }
                    }
                };
                on_event(&ServeEvent::Change(change));
                return true;
            }
        }
        false
    }
}

/// Ends every peer's session (each closes and removes its router mapping), bounded by
/// [`SERVE_SHUTDOWN`].
async fn close_all(stop: watch::Sender<bool>, mut peers: tokio::task::JoinSet<()>) {
    let _ = stop.send(true);
    let _ = tokio::time::timeout(SERVE_SHUTDOWN, async {
        while peers.join_next().await.is_some() {}
    })
    .await;
    peers.abort_all();
}

/// Serves every peer that joins the printed code, one after another and several at once,
/// until `shutdown` completes (then each peer's session ends, removing its router mapping,
/// within [`SERVE_SHUTDOWN`]). `opts` is a listener's (its code is not used).
pub async fn serve(
    opts: PunchOptions,
    mut on_event: impl FnMut(&ServeEvent) + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PunchError> {
    if opts.manual.is_some() {
        return serverless::serve(opts, on_event, shutdown).await;
    }
    let relay = relay_addr(&opts.relay).await?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let (code, mut rv, me) = claim(&sock, relay, &opts).await?;
    on_event(&ServeEvent::Own(Event::Code {
        code: code.to_string(),
    }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (news_tx, mut news_rx) = mpsc::unbounded_channel::<(u64, PeerNews)>();
    let mut state = Peers::new();
    let mut peers = tokio::task::JoinSet::new();
    // Hellos answered, by nonce: a repeated hello (our answer was lost) is answered again.
    let mut nonces: HashMap<[u8; NONCE_LEN], u64> = HashMap::new();
    let mut next_peer = 1u64;
    // When we last said that hellos are being refused.
    let mut warned: Option<Instant> = None;
    let mut buf = vec![0u8; 2048];
    tokio::pin!(shutdown);
    loop {
        while let Some(e) = rv.poll_event() {
            match e {
                RvEvent::Data(p) => {
                    let Some(Lobby::Hello(n)) = Lobby::parse(&p) else {
                        continue;
                    };
                    if let std::collections::hash_map::Entry::Vacant(slot) = nonces.entry(n) {
                        if !state.admit(next_peer) {
                            // Unanswered: the connector says hello again a moment later.
                            if let Some(w) = state.limited(&mut warned) {
                                on_event(&w);
                            }
                            continue;
                        }
                        let peer = next_peer;
                        next_peer += 1;
                        slot.insert(peer);
                        let mut o = opts.clone();
                        o.code = code.sub_code(&n);
                        o.role = Role::Listener;
                        o.stop = Some(stop_rx.clone());
                        let now = std::future::ready(());
                        peers.spawn(peer_session(peer, o, news_tx.clone(), now));
                    }
                    rv.send_data(Lobby::Ack(n).emit());
                }
                RvEvent::Refused { reason, .. } => {
                    return Err(PunchError::Rendezvous(format!(
                        "the relay refused the serve code's lobby: {reason}"
                    )))
                }
                RvEvent::RelayLost => {
                    // Transient: keep registering (peers' sessions are not affected).
                    on_event(&ServeEvent::Own(Event::Warning {
                        message: "the relay does not answer; still trying".into(),
                    }));
                    rv.register_now(Instant::now());
                }
                _ => {}
            }
        }
        flush(&sock, &mut rv).await;
        let wake = rv
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + PUNCH_KEEPALIVE);
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                // An ICMP error on the socket is no reason to stop serving.
                if let Ok((n, from)) = r {
                    rv.handle_datagram(Instant::now(), from, &buf[..n]);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => rv.handle_timeout(Instant::now()),
            Some((peer, news)) = news_rx.recv() => {
                if state.news(peer, news, &mut on_event) {
                    nonces.retain(|_, p| *p != peer);
                }
            }
            Some(_) = peers.join_next(), if !peers.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    close_all(stop_tx, peers).await;
    bye(&sock, relay, &code, me).await;
    Ok(())
}

/// One peer's session: an ordinary listener's punch under the sub-session code; ends as a
/// failed guess when it has not authenticated within [`SERVE_AUTH_TIMEOUT`] of `armed`
/// (at once with the relay; when the peer's offer came, serverless).
async fn peer_session(
    peer: u64,
    o: PunchOptions,
    news: mpsc::UnboundedSender<(u64, PeerNews)>,
    armed: impl Future<Output = ()>,
) {
    let authed = Arc::new(AtomicBool::new(false));
    let (tx, a) = (news.clone(), authed.clone());
    let on = move |e: &Event| match e {
        // The sub-session's code is not for anyone's eyes; the end is `peer_left`.
        Event::Code { .. } | Event::Done { .. } => {}
        Event::Authenticated { .. } => {
            a.store(true, Ordering::Relaxed);
            let _ = tx.send((peer, PeerNews::Authenticated));
            let _ = tx.send((peer, PeerNews::Event(e.clone())));
        }
        _ => {
            let _ = tx.send((peer, PeerNews::Event(e.clone())));
        }
    };
    let run = super::run(o, on, tokio::io::empty(), tokio::io::sink());
    let timeout = async {
        armed.await;
        tokio::time::sleep(SERVE_AUTH_TIMEOUT).await;
        if authed.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let r = tokio::select! {
        r = run => r,
        _ = timeout => Err(PunchError::Rendezvous(format!(
            "not authenticated within {} s", SERVE_AUTH_TIMEOUT.as_secs()
        ))),
    };
    let _ = news.send((peer, PeerNews::Ended(r)));
}
