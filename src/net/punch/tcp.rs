//! TCP hole punching, the IO half ([`crate::proto::punch::tcp`] decides what to do): sockets bound
//! to one reusable local port per family, the relay's STUN over TCP for our public IPv4
//! endpoint (our global IPv6 address is public as it is), the connection attempts and an
//! acceptor on each port, then TLS 1.3 over the punched stream
//! with both certificates pinned by the PAKE — the same authentication and key confirmation
//! as QUIC, over TCP. [`super::migrate`] moves the pipe onto it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::defaults::{CROSS_GAP, CROSS_RESET_WAIT, CROSS_SYNS};
use crate::net::punch::control::Control;
use crate::net::punch::runs::{AbortOnDrop, TcpNote, TcpResult, TcpRun};
use crate::net::punch::tls::{terr, tls_client, tls_server};
use crate::net::punch::{Emit, Event, PunchError};
use crate::proto::punch::nat::NatClass;
use crate::proto::punch::tcp::{Action as TcpAction, Outcome as TcpOutcome, Take, TcpPunch};
use crate::proto::punch::ttl::Opening;
use crate::wire::rendezvous::Role;

/// rustls reads the socket 4 KiB at a time (its deframer's read size): a buffer under it
/// turns that into one receive per 256 KiB, a 60th of the system calls for bulk data.
const RECV_BUF: usize = 256 * 1024;

/// ALPN of natkit's TLS over a punched TCP stream.
const ALPN: &[u8] = b"natkit-punch-tcp/1";

/// TTL of the listener's arming SYN when nothing was measured ([`crate::proto::punch::ttl`]):
/// it passes the listener's own NAT (and a carrier NAT behind it) and dies before the peer's
/// NAT, which would answer an unexpected SYN with a reset (the same reasoning as UDP's opening packets, [`crate::proto::punch::OPENING_TTLS`]).
pub const ARM_TTL: u32 = 3;
/// The TTL restored once the arming SYN has gone: the SYN-ACK must reach the peer.
const DEFAULT_TTL: u32 = 64;

/// Our side of a TCP punch: a punch port per family, with our public endpoint there, and the
/// connection to the relay that keeps our IPv4 NAT's mapping alive.
#[derive(Debug)]
pub struct Endpoint {
    /// Each family's punch port (the local address every attempt in that family binds:
    /// `0.0.0.0:port`, or our global IPv6 address and port) and our public endpoint there:
    /// the relay's STUN answer over IPv4, the same address over IPv6 (no NAT).
    pub ports: Vec<(SocketAddr, SocketAddr)>,
    _keep: Option<TcpStream>,
}

/// A TCP socket bound to `local` that other sockets may bind too (each attempt is a new
/// socket on the punch port): `SO_REUSEADDR` and `SO_REUSEPORT`. IPv6 only on an IPv6 address,
/// so the two families' punch ports are apart.
fn socket(local: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if local.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    Ok(s)
}

/// Connects from `local` to `dst`. With `ttl`, the SYN leaves with that TTL and the socket's
/// TTL is restored at once; `sent` runs when the SYN has gone. Resolves when the connection
/// is up or has failed (refused, reset); the caller bounds the time.
pub async fn attempt(
    local: SocketAddr,
    dst: SocketAddr,
    ttl: Option<u32>,
    sent: impl FnOnce(),
) -> io::Result<TcpStream> {
    let s = socket(local)?;
    if let Some(t) = ttl {
        s.set_ttl(t)?;
    }
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if ttl.is_some() {
        s.set_ttl(DEFAULT_TTL)?;
    }
    sent();
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    // Writable without an error but not connected cannot happen on Linux; check anyway.
    stream.peer_addr()?;
    Ok(stream)
}

/// [`crate::proto::punch::tcp::Plan::Cross`]: connects from `local` to `dst`, again from a
/// fresh socket after each reset ([`CROSS_RESET_WAIT`] for an answer, a random pause around
/// [`CROSS_GAP`] between SYNs, at most [`CROSS_SYNS`]), until a SYN crosses the peer's and
/// the simultaneous open completes.
pub async fn cross(local: SocketAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    for n in 1..=CROSS_SYNS {
        let r = tokio::time::timeout(CROSS_RESET_WAIT, attempt(local, dst, None, || {})).await;
        // Reset (the peer's mapping was not there yet) or nothing yet: again.
        if let Ok(Ok(s)) = r {
            tracing::debug!(syns = n, %dst, "TCP crossing: connected");
            return Ok(s);
        }
        let jitter = rand::random::<u64>() % (CROSS_GAP.as_micros() as u64 + 1);
        tokio::time::sleep(CROSS_GAP / 2 + Duration::from_micros(jitter)).await;
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no SYN crossed the peer's",
    ))
}

/// A free port on `ip` that every attempt can bind again.
fn punch_port(ip: IpAddr) -> io::Result<SocketAddr> {
    socket(SocketAddr::new(ip, 0))?
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("no local port"))
}

/// Our punch ports: one for the relay's family, whose public endpoint the relay's STUN over
/// TCP tells (RFC 8489 §6.2.2), and, with `relay6` (the relay's IPv6 address, when we meet
/// it over IPv4) and a global IPv6 address towards it, one on that address, which is public
/// as it is (learning it sends nothing). An error only when there is neither.
pub async fn endpoint(relay: SocketAddr, relay6: Option<SocketAddr>) -> io::Result<Endpoint> {
    let v6 = relay6
        .and_then(crate::net::sys::global_v6_towards)
        .and_then(|ip| {
            punch_port(ip)
                .inspect_err(|e| tracing::debug!("TCP punch port on {ip}: {e}"))
                .ok()
        });
    let mut ports: Vec<_> = v6.map(|a| (a, a)).into_iter().collect();
    match relay_endpoint(relay).await {
        Ok((local, public, keep)) => {
            ports.push((local, public));
            Ok(Endpoint {
                ports,
                _keep: Some(keep),
            })
        }
        Err(e) if !ports.is_empty() => {
            tracing::info!("TCP punching over IPv6 only: the relay's TCP port: {e}");
            Ok(Endpoint { ports, _keep: None })
        }
        Err(e) => Err(e),
    }
}

/// Binds a punch port, connects to the relay from it and asks the relay's STUN over TCP
/// where that connection comes from: the local and the public endpoint, and the connection.
async fn relay_endpoint(relay: SocketAddr) -> io::Result<(SocketAddr, SocketAddr, TcpStream)> {
    let any = if relay.is_ipv4() {
        IpAddr::from(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::from(Ipv6Addr::UNSPECIFIED)
    };
    let local = punch_port(any)?;
    let timeout = crate::defaults::TCP_ENDPOINT_TIMEOUT;
    let mut s = tokio::time::timeout(timeout, attempt(local, relay, None, || {}))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the relay's TCP port"))??;
    let tid = rand::random();
    s.write_all(&crate::wire::stun::binding_request(
        tid,
        crate::wire::stun::Change::NONE,
    ))
    .await?;
    let public = tokio::time::timeout(timeout, async {
        let msg = crate::net::stream::read_stun(&mut s).await?;
        crate::wire::stun::decode(&msg)
            .ok()
            .filter(|m| m.tid == tid)
            .and_then(|m| m.reflexive())
            .ok_or_else(|| io::Error::other("the relay's STUN answer over TCP is unusable"))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the relay's STUN over TCP"))??;
    Ok((local, public, s))
}

/// Which end of TLS this side is (the listener is the server), with its configuration:
/// our certificate, the peer's pinned by the PAKE ([`crate::net::punch::tls`]).
pub(super) enum TlsSide {
    Server(Arc<rustls::ServerConfig>),
    Client(Arc<rustls::ClientConfig>),
}

/// TLS 1.3 over a punched TCP connection.
pub(super) type Tls = tokio_rustls::TlsStream<tokio::io::BufReader<TcpStream>>;

impl TlsSide {
    /// The configuration for `role`, made before the certificate goes to QUIC.
    pub(super) fn new(
        role: Role,
        cert: &rcgen::CertifiedKey,
        peer_fp: [u8; 32],
    ) -> Result<TlsSide, PunchError> {
        Ok(match role {
            Role::Listener => {
                let mut tls = tls_server(cert, peer_fp, ALPN)?;
                // No session tickets: nothing resumes, and a client whose pipe stays on QUIC
                // never reads its TLS stream; unread tickets there would turn its close into
                // a reset that can cut off the tail of our data (RFC 9293 §3.6).
                tls.send_tls13_tickets = 0;
                TlsSide::Server(Arc::new(tls))
            }
            Role::Connector => TlsSide::Client(Arc::new(tls_client(cert, peer_fp, ALPN)?)),
        })
    }

    /// TLS over the punched stream, within [`crate::defaults::HANDSHAKE_TIMEOUT`]. TCP
    /// keepalives every `keepalive` keep both NATs' mappings of an idle connection (RFC 5382
    /// §5 lets a NAT drop an idle one after 2 h 4 min, and many do sooner) and find a vanished
    /// peer when idle. No TCP_USER_TIMEOUT: recent Linux applies it to a receive window that
    /// stays closed too, which would end a session whose reader merely paused (`punch
    /// connect CODE | less`); a peer that vanishes mid-send is found by TCP's own
    /// retransmission limit.
    pub(super) async fn handshake(
        self,
        stream: TcpStream,
        keepalive: Duration,
    ) -> Result<Tls, PunchError> {
        stream.set_nodelay(true)?;
        let ka = socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(keepalive)
            .with_retries(crate::defaults::TCP_KEEPALIVE_PROBES);
        socket2::SockRef::from(&stream).set_tcp_keepalive(&ka)?;
        let stream = tokio::io::BufReader::with_capacity(RECV_BUF, stream);
        let handshake = async {
            Ok::<_, PunchError>(match self {
                TlsSide::Server(tls) => tokio_rustls::TlsAcceptor::from(tls)
                    .accept(stream)
                    .await
                    .map_err(terr)?
                    .into(),
                TlsSide::Client(tls) => {
                    let name = rustls::pki_types::ServerName::try_from("natkit").map_err(terr)?;
                    tokio_rustls::TlsConnector::from(tls)
                        .connect(name, stream)
                        .await
                        .map_err(terr)?
                        .into()
                }
            })
        };
        tokio::time::timeout(crate::defaults::HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| terr("the TLS handshake over TCP did not finish"))?
    }
}

/// Accepts on the punch port (bound like every attempt, so it is the port the peer was
/// told) and hands each connection to the control task, which keeps the peer's.
fn acceptor(
    local: SocketAddr,
    notes: tokio::sync::mpsc::Sender<TcpNote>,
) -> io::Result<AbortOnDrop> {
    let s = socket(local)?;
    s.listen(8)?;
    let l = tokio::net::TcpListener::from_std(std::net::TcpListener::from(s))?;
    Ok(AbortOnDrop(tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, from)) => {
                    if notes.send(TcpNote::Accepted(s, from)).await.is_err() {
                        return;
                    }
                }
                // Out of descriptors and the like: the punch has a budget; try again shortly.
                Err(e) => {
                    tracing::debug!("TCP punch port: accept: {e}");
                    tokio::time::sleep(crate::defaults::TCP_RETRY).await;
                }
            }
        }
    })))
}

impl TcpRun {
    /// Keeps a connection that came up as the core says ([`Take`]).
    fn take(&mut self, take: Take, s: TcpStream, peer: SocketAddr) {
        match take {
            Take::Use => self.stream = Some(s),
            Take::AwaitChoice => self.waits.push(await_choice(s, peer, self.notes.clone())),
            Take::Drop => tracing::debug!(%peer, "TCP punch: not a connection we take"),
        }
    }
}

/// Listener: waits for the connector's first bytes (its TLS ClientHello) on `s`, without
/// taking them; a connection that ends first was not chosen.
fn await_choice(
    s: TcpStream,
    peer: SocketAddr,
    notes: tokio::sync::mpsc::Sender<TcpNote>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let note = match s.peek(&mut [0u8; 1]).await {
            Ok(1..) => TcpNote::Chosen(s, peer),
            _ => TcpNote::Unchosen(peer),
        };
        let _ = notes.send(note).await;
    }))
}

/// A TCP punch the main flow waits for: its result, and our endpoint (whose relay
/// connection keeps our NAT's TCP mapping until then).
pub(super) struct TcpWait(tokio::sync::oneshot::Receiver<TcpResult>, Option<Endpoint>);

impl Control {
    /// After authenticating: punch TCP when asked (`ep_task` learns our endpoint while
    /// meeting), or without being asked for a pipe through a relay when UDP is blocked on
    /// either side. The control task
    /// runs it; [`Control::tcp_result`] waits for the result.
    pub(super) async fn start_tcp(
        &mut self,
        ep_task: Option<tokio::task::JoinHandle<io::Result<Endpoint>>>,
        relayed_pipe: bool,
    ) -> Option<TcpWait> {
        let ep_task = match ep_task {
            None if self.nat.udp_blocked() && relayed_pipe => {
                tracing::info!("UDP is blocked on one side: trying TCP hole punching");
                let (v4, v6) = self.tcp_relays;
                Some(tokio::spawn(endpoint(v4, v6)))
            }
            e => e,
        }?;
        let now = Instant::now();
        let mut p = TcpPunch::new(
            self.session,
            self.puncher.role(),
            now,
            crate::defaults::TCP_PUNCH_BUDGET,
        );
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let ep = match ep_task.await {
            Ok(Ok(ep)) => Some(ep),
            Ok(Err(e)) => {
                tracing::warn!("TCP punching: the relay's TCP port: {e}");
                None
            }
            Err(_) => None,
        };
        if let Some((mine, peer)) = &self.classes {
            p.set_nat(now, mine, peer);
        }
        let ports = ep.as_ref().map_or(&[][..], |e| &e.ports[..]);
        p.set_mine(now, &ports.iter().map(|p| p.1).collect::<Vec<_>>());
        let notes = self.outputs.tcp_notes.clone();
        let acceptors = ports
            .iter()
            .filter_map(|&(local, _)| {
                acceptor(local, notes.clone())
                    .inspect_err(|e| tracing::debug!("TCP punch port {local}: listen: {e}"))
                    .ok()
            })
            .collect();
        self.tcp = Some(TcpRun {
            p,
            locals: ports.iter().map(|p| p.0).collect(),
            notes,
            attempts: Default::default(),
            acceptors,
            waits: Vec::new(),
            stream: None,
            done: Some(done_tx),
        });
        self.flush_tcp();
        self.flush();
        Some(TcpWait(done_rx, ep))
    }
    /// Carries out what the TCP punch asks for: offers to the peer (relayed), connection
    /// attempts, and the result for the main flow.
    pub(super) fn flush_tcp(&mut self) {
        let Some(t) = &mut self.tcp else { return };
        while let Some(f) = t.p.poll_transmit() {
            self.puncher.send_relayed(f);
        }
        // The arming SYN opens our NAT and must die before the peer's: the measured TTL.
        // Neighbouring NATs that reset SYNs (none is safe): SYNs fired until two cross.
        let (opening, _) = self.puncher.opening_plan();
        t.p.set_neighbours(Instant::now(), opening == Opening::Clash);
        let arm_ttl = match opening {
            Opening::Ttl(t) => u32::from(t),
            _ => ARM_TTL,
        };
        while let Some(a) = t.p.poll_action() {
            // Over IPv6 there is no NAT to keep the SYN from: it opens our firewall and goes
            // on at the full hop limit.
            let (dst, ttl, cross) = match a {
                TcpAction::Arm(d) if d.is_ipv4() => (d, Some(arm_ttl), false),
                TcpAction::Arm(d) | TcpAction::Connect(d) => (d, None, false),
                TcpAction::Cross(d) => (d, None, true),
            };
            let notes = t.notes.clone();
            let Some(local) = t
                .locals
                .iter()
                .copied()
                .find(|l| l.is_ipv4() == dst.is_ipv4())
            else {
                // The core pairs offers by family and offers only the families we have.
                let _ = notes.try_send(TcpNote::Failed(dst));
                continue;
            };
            tracing::debug!(%dst, ?ttl, cross, "TCP attempt");
            t.attempts[usize::from(dst.is_ipv4())] = Some(AbortOnDrop(tokio::spawn(async move {
                let armed = notes.clone();
                let r = if cross {
                    tokio::time::timeout(crate::defaults::TCP_PUNCH_BUDGET, self::cross(local, dst))
                        .await
                } else {
                    tokio::time::timeout(
                        crate::defaults::TCP_ATTEMPT,
                        attempt(local, dst, ttl, move || {
                            let _ = armed.try_send(TcpNote::Armed(dst));
                        }),
                    )
                    .await
                };
                let note = match r {
                    Ok(Ok(s)) => TcpNote::Connected(s, dst),
                    Ok(Err(e)) => {
                        tracing::debug!(%dst, "TCP attempt: {e}");
                        TcpNote::Failed(dst)
                    }
                    Err(_) => TcpNote::Failed(dst),
                };
                let _ = notes.send(note).await;
            })));
        }
        if let Some(o) = t.p.outcome().cloned() {
            if let Some(done) = t.done.take() {
                // Every other connection and attempt closes: the listener sees the ones the
                // connector did not choose end.
                t.attempts = Default::default();
                t.acceptors.clear();
                t.waits.clear();
                let r = match (o, t.stream.take()) {
                    (TcpOutcome::Connected { peer, attempts }, Some(s)) => Ok((s, peer, attempts)),
                    (TcpOutcome::Connected { attempts, .. }, None) => Err((attempts, "lost")),
                    (TcpOutcome::Failed { attempts, why }, _) => Err((attempts, why)),
                };
                let _ = done.send(r);
            }
        }
    }

    pub(super) fn on_tcp_note(&mut self, n: TcpNote) {
        let Some(t) = &mut self.tcp else { return };
        let now = Instant::now();
        match n {
            TcpNote::Armed(dst) => t.p.armed(now, dst),
            TcpNote::Failed(dst) => t.p.attempt_failed(now, dst),
            TcpNote::Connected(s, peer) => {
                let take = t.p.attempt_connected(peer);
                t.take(take, s, peer);
            }
            // Anyone's connection but the peer's is closed at once.
            TcpNote::Accepted(s, from) => {
                let take = t.p.accepted(from);
                t.take(take, s, from);
            }
            TcpNote::Chosen(s, peer) => {
                if t.p.chosen(peer) {
                    t.stream = Some(s);
                }
            }
            TcpNote::Unchosen(peer) => t.p.unchosen(now, peer),
        }
        self.flush_tcp();
    }

    /// Both NAT classifications are known: they say who connects
    /// ([`crate::proto::punch::tcp::plan`]), now or once the TCP punch starts.
    pub(super) fn tcp_classes(&mut self, mine: NatClass, peer: NatClass) {
        self.classes = Some((mine, peer));
        if let Some(t) = &mut self.tcp {
            t.p.set_nat(Instant::now(), &mine, &peer);
            self.flush_tcp();
        }
    }
}

/// Waits for the TCP punch: the stream, the peer and the attempts made when it worked; a
/// `tried` event when it did not.
pub(super) async fn tcp_result(
    wait: TcpWait,
    emit: &Emit,
    t0: Instant,
) -> Option<(TcpStream, SocketAddr, u32)> {
    let TcpWait(done, ep) = wait;
    let r = tokio::time::timeout(crate::defaults::TCP_PUNCH_BUDGET * 2, done)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(Err((0, "the TCP punch did not finish")));
    // The relay connection kept our NAT's TCP mapping until now.
    drop(ep);
    match r {
        Ok(found) => Some(found),
        Err((attempts, why)) => {
            tried(emit, t0, attempts, why);
            None
        }
    }
}

/// Tells the user TCP found nothing (the session stays where it is).
pub(super) fn tried(emit: &Emit, t0: Instant, attempts: u32, why: &str) {
    tracing::info!("TCP punching: {why}");
    emit.send(&Event::Tried {
        method: "tcp",
        found: false,
        probes: attempts,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        opening_ttl: None,
        waited_ms: 0,
    });
}
