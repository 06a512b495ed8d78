//! The tokio driver for `punch`: one UDP socket carries the rendezvous, the connectivity
//! checks, the PAKE and then QUIC (quinn) — directly to the peer, or wrapped in relay data
//! frames when no direct path works. QUIC sees one fixed virtual peer address; this layer
//! decides which real path a datagram takes, so a path change never breaks the streams.
//!
//! [`run`] sequences the phases: [`meet`] (the relay, or the offers), [`authenticate`] (the
//! PAKE over the chosen path), then the data over [`transport`] (QUIC on the link, or TLS on
//! a punched TCP connection) while the [`control`] plane keeps running in a task. Every
//! phase turns the same event loop ([`control::Control::settle`], [`control::Control::wait`]);
//! the decisions are the sans-IO cores' in [`crate::proto::punch`].

mod authenticate;
mod birthday;
mod control;
mod dual;
pub mod icmp;
mod meet;
mod migrate;
mod nameplate;
mod pipe;
pub mod quic;
mod reuse;
mod runs;
pub mod serve;
pub mod tcp;
mod tls;
mod transport;
mod ttl;
pub mod udp;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::net::punch::control::Phase;
use crate::net::punch::transport::{LinkSocket, VIRTUAL_PEER};
use crate::proto::punch::code::Code;
use crate::proto::punch::nat::NatClass;
use crate::proto::punch::pake::PakeError;
use crate::wire::rendezvous::{Frame, Role};

/// Errors that end a punch.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// Bad relay address.
    #[error(transparent)]
    Relay(#[from] crate::net::natprobe::ProbeError),
    /// DNS.
    #[error("cannot resolve the relay: {0}")]
    Resolve(String),
    /// Socket trouble.
    #[error("network error")]
    Io(#[from] std::io::Error),
    /// The relay refused, vanished, or the peer never came.
    #[error("{0}")]
    Rendezvous(String),
    /// PAKE failure (wrong code included).
    #[error(transparent)]
    Pake(#[from] PakeError),
    /// The peer did not complete the key exchange.
    #[error("the other side did not complete the key exchange within {0:?}")]
    PakeTimeout(Duration),
    /// QUIC or TLS setup or connection failure.
    #[error("encrypted transport: {0}")]
    Transport(String),
    /// The other side's `--manual` offer is unusable.
    #[error("the other side's offer: {0}")]
    Offer(#[from] crate::wire::offer::OfferError),
    /// `--icmp` cannot use raw sockets.
    #[error("{0}")]
    RawSocket(String),
    /// The other side's offer could not be read.
    #[error("reading the other side's offer: {0}")]
    OfferInput(String),
    /// Nothing authenticated came from the peer, over any path, for the dead-peer bound
    /// (`--dead-peer-timeout`): our network, or the peer's, is gone.
    #[error(
        "the other side has not been heard from for {} s; giving up (--dead-peer-timeout)",
        .0.as_secs()
    )]
    PeerSilent(Duration),
}

/// Progress events, printed by the binary (JSON lines with `--json`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The code to give the other side (listener only).
    Code {
        /// The code.
        code: String,
    },
    /// A technique ran out of budget without finding a path (the session stays where it is,
    /// e.g. on the relay).
    Tried {
        /// Which (`birthday`, `prediction`, `tcp`).
        method: &'static str,
        /// Always false: a success is a `connected` event.
        found: bool,
        /// Probes sent.
        probes: u32,
        /// Since start.
        elapsed_ms: u64,
        /// TTL of the packets that opened our NAT for the technique (measured, see the
        /// `nat` event's `opening`); null when none was sent.
        opening_ttl: Option<u8>,
        /// How long the technique waited for the traces of a clash to expire on the routers
        /// (neighbouring NATs, see README), in ms; 0 when it did not.
        waited_ms: u64,
    },
    /// `--manual`: the line to paste on the other side.
    Offer {
        /// The offer.
        offer: String,
    },
    /// Registered at the relay.
    Registered {
        /// Our address as the relay sees it.
        observed: SocketAddr,
    },
    /// The router mapped the punch socket's port; the address is offered to the peer as a
    /// candidate.
    Mapped {
        /// The mapped address strangers can reach.
        external: SocketAddr,
        /// Which protocol made it (`pcp`, `natpmp`, `upnp`).
        via: &'static str,
    },
    /// Both sides' NAT classifications (natprobe against the relay, run alongside the
    /// punch) and the technique they predict.
    Nat {
        /// Ours.
        mine: NatClass,
        /// The peer's.
        peer: NatClass,
        /// What should work.
        expect: crate::proto::punch::nat::Expectation,
        /// How far our NAT and the peer's are, measured with TTL-limited probes, and how
        /// our NAT is opened for the peer because of it.
        opening: crate::proto::punch::ttl::Distances,
    },
    /// The TTL measurement settled after the `nat` event and found otherwise (the peer's
    /// address came late, e.g. over the relay's TCP, or its NAT answered late): what was
    /// measured and chosen in the end, with the keys of `nat`'s `opening`. At most once.
    Opening {
        /// As in the `nat` event.
        opening: crate::proto::punch::ttl::Distances,
    },
    /// The path in use.
    Connected {
        /// "direct" or "relay".
        path: &'static str,
        /// How: "udp" (hole punch, or UDP to the relay), "tcp" (a punched TCP connection
        /// when direct; the relay over TCP when relayed), "birthday", "prediction", "icmp".
        method: &'static str,
        /// The peer's address on a direct path, or the relay's (`[addr]:port` for IPv6).
        peer: SocketAddr,
        /// `peer`'s address family: "ipv4" or "ipv6".
        family: &'static str,
        /// Since start.
        elapsed_ms: u64,
        /// Connectivity-check probes sent.
        probes: u32,
    },
    /// The connector carries TCP connections accepted here to the listener's service.
    Listening {
        /// The local address to connect to.
        local: SocketAddr,
    },
    /// `--local-udp`: the connector carries UDP datagrams sent here (each source its own
    /// flow) to the listener's service.
    ListeningUdp {
        /// The local address to send to.
        local: SocketAddr,
    },
    /// Both ends proved they know the code; the channel is encrypted.
    Authenticated {
        /// Since start.
        elapsed_ms: u64,
    },
    /// Something the user should know that does not stop the session (a reused hand-made
    /// code).
    Warning {
        /// What, and what to do about it.
        message: String,
    },
    /// Finished.
    Done {
        /// Payload bytes sent.
        bytes_sent: u64,
        /// Payload bytes received.
        bytes_received: u64,
        /// Since start.
        elapsed_ms: u64,
    },
}

/// Options for one punch.
#[derive(Debug, Clone)]
pub struct PunchOptions {
    /// Relay `HOST[:PORT]`.
    pub relay: String,
    /// Which side.
    pub role: Role,
    /// The code.
    pub code: Code,
    /// Bound on direct punching.
    pub direct_timeout: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// The session ends (exit 2) when nothing authenticated came from the peer for this long.
    pub dead_peer: Duration,
    /// Relay token.
    pub token: Vec<u8>,
    /// What to carry.
    pub mode: crate::net::punch::quic::Mode,
    /// Ask the router to map the punch socket's port (PCP, NAT-PMP or UPnP) and offer the
    /// mapped address as a candidate.
    pub portmap: bool,
    /// Serverless mode: offers pasted by the user instead of the relay (`relay` unused).
    pub manual: Option<Manual>,
    /// Symmetric × symmetric: attempt birthday probing from both sides within its budget.
    pub hard: bool,
    /// After authenticating, try TCP hole punching ([`crate::proto::punch::tcp`]) and carry the
    /// pipe over TLS on the TCP connection when it works.
    pub tcp: bool,
    /// Connector with a `punch serve` code: say hello in its lobby first, then punch the
    /// session the serving side opens for us ([`serve::join`]).
    pub join: Option<crate::proto::punch::serve::ServeCode>,
    /// `punch serve`: the data phase ends (cleanly: router mapping removed, relay told)
    /// when this turns true.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// UDP flows to carry (`--expose-udp`, `--local-udp`) beside `mode`.
    pub udp: Option<udp::UdpSide>,
}

/// `--manual` settings.
#[derive(Debug, Clone)]
pub struct Manual {
    /// STUN server `HOST[:PORT]` for our server-reflexive address.
    pub stun: Option<String>,
    /// Chosen because no relay was given (zero configuration): a `warning` event says so,
    /// and without `stun` natprobe's built-in public servers are asked, the first whose
    /// name resolves.
    pub fallback: bool,
    /// Where the other side's offer comes from.
    pub peer: PeerOffer,
}

/// Source of the other side's offer (stdin carries the data, so never stdin).
#[derive(Debug, Clone)]
pub enum PeerOffer {
    /// Given on the command line.
    Given(String),
    /// The first line of a file, waited for (scripts, tests).
    File(std::path::PathBuf),
    /// Asked of the user (the app reads its terminal): `net` never reads one itself.
    Prompt(OfferPrompt),
    /// `listen --icmp`: from the connector's ICMP Time Exceeded ([`crate::wire::icmp`]).
    IcmpListen {
        /// Where our echo requests go.
        echo_target: Ipv4Addr,
    },
    /// `connect --icmp HOST`: the listener is heard from when its punch arrives; we knock
    /// with ICMP until then.
    IcmpConnect {
        /// The listener's public address (IPv4 literal or host name).
        listener: String,
        /// The listener's echo target.
        echo_target: Ipv4Addr,
    },
}

/// Asks the user for the other side's offer and returns the line given (or why there is
/// none). The app provides it (`--manual` without `--peer`): reading a terminal is its
/// business, not the driver's.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct OfferPrompt(
    pub Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>,
);

impl std::fmt::Debug for OfferPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OfferPrompt")
    }
}

/// The user's event callback.
type Callback = Box<dyn FnMut(&Event) + Send>;

/// The user's event callback, shared by the main flow and the control task.
#[derive(Clone)]
pub(crate) struct Emit(Arc<Mutex<Callback>>);

impl Emit {
    fn new(f: impl FnMut(&Event) + Send + 'static) -> Emit {
        Emit(Arc::new(Mutex::new(Box::new(f))))
    }

    /// Hands `e` to the callback.
    pub(crate) fn send(&self, e: &Event) {
        if let Ok(mut f) = self.0.lock() {
            (*f)(e);
        }
    }
}

/// Runs one side: meet, punch (or fall back to the relay), authenticate with the code, then
/// pipe `input` to the peer and the peer's bytes to `output`.
pub async fn run<R, W>(
    opts: PunchOptions,
    on_event: impl FnMut(&Event) + Send + 'static,
    input: R,
    output: W,
) -> Result<Event, PunchError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let t0 = Instant::now();
    let mut opts = opts;
    if let Some(serve_code) = opts.join.take() {
        opts.code = serve::join(&opts, &serve_code).await?;
    }
    let emit = Emit::new(on_event);
    if !opts.code.is_generated() && !opts.code.is_sub() && opts.role == Role::Listener {
        if let Some(message) = reuse::note_hand_made(&opts.code) {
            emit.send(&Event::Warning { message });
        }
    }
    let (mut c, mut s) = meet::prepare(&opts, &emit, t0).await?;

    // 1. Meet and choose a path.
    meet::meet(&mut c).await?;
    // --icmp: the listener has heard us; stop knocking.
    drop(s.knocking.take());

    // 2. Authenticate with the code; learn the certificate to pin.
    let peer_fp = authenticate::authenticate(&mut c).await?;
    emit.send(&Event::Authenticated {
        elapsed_ms: t0.elapsed().as_millis() as u64,
    });

    // 2b. --tcp (or UDP blocked on either side, for a pipe): punch TCP; the control task
    // runs it and the result comes back here.
    let relayed_pipe = opts.mode == quic::Mode::Pipe && !s.manual;
    let tcp_wait = c.start_tcp(s.tcp_endpoint.take(), relayed_pipe).await;
    let (quiet, path_changed) = (c.quiet.clone(), c.path_changed.clone());

    // Keep the control plane alive (relay keepalives and pings, late PAKE answers, path
    // changes, birthday probing, our own network). It runs until the session ends; an error
    // in it (a socket that broke for good) ends the session.
    let mut control = tokio::spawn(async move {
        loop {
            c.settle(Phase::Run).await?;
            if !c.wait().await? {
                return Err(PunchError::Transport("the socket reader ended".into()));
            }
        }
    });
    // 3. QUIC over the link at once; a punched TCP connection, once TLS over it is up, takes
    // the pipe over without loss ([`migrate`]). Certificates pinned by the PAKE either way.
    let (upgrade, tcp_task) =
        match tcp_wait.map(|w| (w, tcp::TlsSide::new(opts.role, &s.cert, peer_fp))) {
            Some((w, Ok(tls))) => {
                let (u, t) = migrate::start(w, tls, opts.keepalive, emit.clone(), t0, quiet);
                (u, Some(t))
            }
            Some((_, Err(e))) => {
                tcp::tried(&emit, t0, 0, &e.to_string());
                (migrate::Upgrade::none(), None)
            }
            None => (migrate::Upgrade::none(), None),
        };
    let data = carry(
        &opts,
        &emit,
        &mut s,
        peer_fp,
        (path_changed, upgrade),
        (input, output),
    );
    // Whichever ends first ends the other: no task outlives the session.
    let stop = serve::stopped(opts.stop.clone());
    let result = tokio::select! {
        r = data => r,
        _ = stop => Ok((0, 0)),
        c = &mut control => Err(match c {
            Ok(Err(e)) => e,
            Ok(Ok(())) => PunchError::Transport("the control plane ended".into()),
            Err(e) => PunchError::Transport(format!("the control plane failed: {e}")),
        }),
    };
    drop(tcp_task);
    control.abort();
    for t in &s.tasks {
        t.abort();
    }
    // Remove the router mapping (bounded: the router may be gone).
    if let Some((m, unmap)) = s.mapper.take() {
        let _ = unmap.send(());
        let _ = tokio::time::timeout(crate::defaults::PUNCH_UNMAP_TIMEOUT, m).await;
    }
    // Leave the session so the code's nameplate is free again at once.
    if !s.manual {
        let bye = Frame::Bye {
            session: s.session,
            peer: s.peer_id,
        };
        s.wire.send(s.wire.relay, bye.emit());
    }
    // Give the TCP writer a moment to flush the goodbye.
    if s.wire.over_tcp() {
        tokio::time::sleep(crate::defaults::RELAY_TCP_FLUSH).await;
    }
    s.wire.close();
    let (sent, received) = result?;
    Ok(Event::Done {
        bytes_sent: sent,
        bytes_received: received,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

/// Step 3 of [`run`]: QUIC over the link (the pipe moves to a punched TCP connection when
/// `upgrade` brings one, see [`migrate`]). Returns (bytes sent, received).
async fn carry<R, W>(
    opts: &PunchOptions,
    emit: &Emit,
    s: &mut meet::Session,
    peer_fp: [u8; 32],
    (path_changed, upgrade): (Arc<tokio::sync::Notify>, migrate::Upgrade),
    (input, output): (R, W),
) -> Result<(u64, u64), PunchError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let link_sock = Arc::new(LinkSocket {
        wire: s.wire.clone(),
        state: s.link.clone(),
        rx: Mutex::new(
            s.quic_rx
                .take()
                .ok_or(PunchError::Transport("no QUIC queue".into()))?,
        ),
        local: s.local,
    });
    if let Some(l) = &s.listener {
        emit.send(&Event::Listening {
            local: l.local_addr()?,
        });
    }
    let udp = match opts.udp {
        Some(side) => Some(side.ready().await?),
        None => None,
    };
    if let Some(udp::Udp::Local(sock)) = &udp {
        emit.send(&Event::ListeningUdp {
            local: sock.local_addr()?,
        });
    }
    let live = quic::Liveness {
        keepalive: opts.keepalive,
        dead_peer: opts.dead_peer,
    };
    quic::run(
        opts.role,
        link_sock,
        VIRTUAL_PEER,
        &s.cert,
        peer_fp,
        live,
        opts.mode,
        s.listener.take(),
        path_changed,
        upgrade,
        udp,
        input,
        output,
    )
    .await
}

/// Default options.
pub fn default_direct_timeout() -> Duration {
    crate::defaults::DIRECT_TIMEOUT
}
