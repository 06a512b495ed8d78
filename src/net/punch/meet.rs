//! Meeting the peer: resolving the relay (or the `--manual` offers, or `--icmp`), the punch
//! socket and its candidates, the router mapping and the NAT classification that run
//! alongside, and the meet phase that turns the event loop until a path is chosen. UDP to
//! the relay that gets nowhere falls back to TCP ([`crate::proto::punch::fallback`], carried
//! out by the control plane).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::defaults::{
    MANUAL_TIMEOUT, OFFER_FILE_POLL, PEER_TIMEOUT, PUNCH_CLASSIFY_FIRST_TIMEOUT, REFLEXIVE_WAIT,
};
use crate::net::punch::control::{Control, Inputs, Outputs, Phase};
use crate::net::punch::transport::{reader, Inbound, LinkState, Wire};
use crate::net::punch::{Emit, Event, PeerOffer, PunchError, PunchOptions};
use crate::proto::punch::auth::Auth;
use crate::proto::punch::fallback::RelayFallback;
use crate::proto::punch::nat::NatClass;
use crate::proto::punch::pake::Pake;
use crate::proto::punch::{Link, PunchConfig, Puncher};
use crate::wire::rendezvous::Role;

/// What the later phases need from the meeting.
pub(super) struct Session {
    pub(super) local: SocketAddr,
    pub(super) wire: Arc<Wire>,
    pub(super) link: Arc<Mutex<LinkState>>,
    /// QUIC datagrams from the readers, for [`crate::net::punch::transport::LinkSocket`].
    pub(super) quic_rx: Option<mpsc::Receiver<Vec<u8>>>,
    /// The socket reader and the NAT classifier.
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The router mapping's task, and what ends it.
    pub(super) mapper: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    /// `--tcp`: our TCP endpoint, learned while meeting.
    pub(super) tcp_endpoint: Option<tokio::task::JoinHandle<std::io::Result<super::tcp::Endpoint>>>,
    /// `--local`: bound before anything else.
    pub(super) listener: Option<tokio::net::TcpListener>,
    pub(super) cert: rcgen::CertifiedKey,
    pub(super) peer_id: crate::wire::rendezvous::PeerId,
    /// The session id at the relay: the claimed nameplate's, which for a generated code may
    /// not be the one first drawn.
    pub(super) session: crate::wire::rendezvous::SessionId,
    pub(super) manual: bool,
    /// `--icmp` connector: knocks until the listener is heard.
    pub(super) knocking: Option<crate::net::punch::icmp::Stop>,
}

/// A session that ends, however it ends (an error in any phase included), ends its tasks.
impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some((m, _)) = &self.mapper {
            m.abort();
        }
        self.wire.close();
    }
}

/// Sets everything up and starts the rendezvous: the control plane, and the session's
/// shared parts.
pub(super) async fn prepare(
    opts: &PunchOptions,
    emit: &Emit,
    t0: Instant,
) -> Result<(Control, Session), PunchError> {
    let manual = opts.manual.clone();
    // --manual has no relay: an address that matches no datagram stands in for it.
    // The relay's A and AAAA records: we meet over the first IPv4 one (the path every peer
    // has) unless only IPv6 answers ([`super::dual::race`]), and offer our IPv6 address,
    // found towards its AAAA record, as a candidate.
    let (relay, relay6) = if manual.is_some() {
        (SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), None)
    } else {
        super::dual::resolve_pair(&opts.relay).await?
    };
    let (stun, stun6) = match manual.as_ref().map(|m| (m.stun.as_ref(), m.fallback)) {
        Some((Some(s), _)) => {
            let (a, a6) = super::dual::resolve_pair(s).await?;
            (Some(a), a6)
        }
        Some((None, true)) => (builtin_stun().await, None),
        _ => (None, None),
    };
    // --icmp: raw sockets first, so a missing capability is the first thing the user hears.
    let icmp = manual.as_ref().and_then(|m| match &m.peer {
        PeerOffer::IcmpListen { .. } | PeerOffer::IcmpConnect { .. } => Some(m.peer.clone()),
        _ => None,
    });
    let mut icmp_raw = match &icmp {
        Some(_) => Some(crate::net::punch::icmp::open()?),
        None => None,
    };
    let icmp_listener = match &icmp {
        Some(PeerOffer::IcmpConnect { listener, .. }) => {
            match crate::net::sys::resolve(listener, 0)
                .await
                .map_err(PunchError::Resolve)?
            {
                SocketAddr::V4(a) => Some(*a.ip()),
                SocketAddr::V6(_) => {
                    return Err(PunchError::Rendezvous(
                        "--icmp needs the listener's IPv4 address".into(),
                    ))
                }
            }
        }
        _ => None,
    };
    let sock = Arc::new(UdpSocket::from_std(crate::net::sys::bind_dual_stack()?)?);
    let local = sock.local_addr()?;
    let mut candidates = Vec::new();
    let towards = if manual.is_some() {
        stun.or_else(|| crate::net::portmap::default_gateway().map(|g| SocketAddr::from((g, 9))))
    } else {
        Some(relay)
    };
    if let Some(ip) = towards.and_then(|t| crate::net::sys::local_ip_towards(t).ok()) {
        candidates.push(SocketAddr::new(ip, local.port()));
    }
    if local.is_ipv6() {
        candidates.extend(super::dual::v6_candidate(
            relay6.or(stun6).or(towards.filter(|t| t.is_ipv6())),
            local.port(),
        ));
    }
    candidates.dedup();
    let mut cfg = PunchConfig {
        relay,
        session: opts.code.session_id(),
        role: opts.role,
        peer: rand::random(),
        token: opts.token.clone(),
        candidates,
        direct_timeout: opts.direct_timeout,
        keepalive: opts.keepalive,
    };
    // With IPv6 here and at the relay, meet it over whichever family UDP gets through; the
    // relay's cookie from the race spares the registration its first round trip.
    let ipv6 = cfg.candidates.iter().any(|a| a.is_ipv6());
    // TCP to the relay (the --tcp endpoint) stays on the first family: IPv4 UDP being
    // silent says nothing of IPv4 TCP, and a peer without IPv6 punches TCP over IPv4.
    let relay_tcp = relay;
    let (relay, relay_cookie) = match relay6 {
        Some(v6) if manual.is_none() && ipv6 => super::dual::race(&sock, cfg.clone(), v6).await?,
        _ => (relay, Vec::new()),
    };
    // IPv6 won the race against the relay's IPv4 address: our IPv4 UDP is blocked.
    let ipv4_silent = relay6 == Some(relay);
    let towards = if manual.is_some() {
        towards
    } else {
        Some(relay)
    };
    // Ask the router for the punch port in the background; the rendezvous does not wait.
    let (mapped_tx, mut mapped_rx) = mpsc::channel(1);
    let (unmap_tx, unmap_rx) = tokio::sync::oneshot::channel();
    let mapper = opts
        .portmap
        .then(|| tokio::spawn(map_punch_port(local.port(), mapped_tx, unmap_rx)));
    // Classify our NAT against the relay on separate sockets, alongside the punch (it takes
    // about half a second, ten times a direct punch: waiting for it first would only delay).
    let (class_tx, class_rx) = mpsc::channel(1);
    let classifier = {
        let server = opts.relay.clone();
        let with_relay = manual.is_none();
        tokio::spawn(async move {
            if !with_relay {
                return;
            }
            let o = crate::net::natprobe::ProbeOptions {
                servers: vec![server],
                first_timeout: PUNCH_CLASSIFY_FIRST_TIMEOUT,
                lifetime_max: None,
                portmap: false,
            };
            if let Ok(r) = crate::net::natprobe::run(&o, |_, _| {}).await {
                if r.udp {
                    let _ = class_tx
                        .send(NatClass {
                            mapping: r.mapping,
                            filtering: r.filtering,
                            allocation: r.port_allocation.kind,
                            delta: r
                                .port_allocation
                                .delta
                                .map_or(0, |d| d.clamp(-128, 127) as i8),
                            ..NatClass::unknown()
                        })
                        .await;
                }
            }
        })
    };
    // --tcp: bind the TCP punch port and learn its public endpoint from the relay while we
    // meet; the TCP punch itself starts once the peer is authenticated.
    let tcp_endpoint = (opts.tcp && manual.is_none())
        .then(|| tokio::spawn(crate::net::punch::tcp::endpoint(relay_tcp, relay6)));
    // A listener with a code natkit drew shows it once the relay gave it the nameplate.
    let (code, peer_id) =
        if opts.role == Role::Listener && manual.is_none() && opts.code.is_generated() {
            super::nameplate::claim(&sock, relay, &opts.token, opts.code.clone()).await?
        } else {
            (opts.code.clone(), rand::random())
        };
    let session = code.session_id();
    (cfg.relay, cfg.session, cfg.peer) = (relay, session, peer_id);
    if manual.as_ref().is_some_and(|m| m.fallback) {
        emit.send(&Event::Warning {
            message: "no relay given (--relay or NATKIT_RELAY): serverless mode, as with \
                      --manual — each side pastes the other's offer"
                .into(),
        });
    }
    if opts.role == Role::Listener {
        emit.send(&Event::Code {
            code: code.to_string(),
        });
    }
    // --manual: print our offer (server-reflexive first, then a router-mapped port, then
    // the host addresses) and read the other side's in the background.
    let (offer_tx, offer_rx) = mpsc::channel(1);
    let mut knocking = None;
    match (&manual, &icmp) {
        (Some(_), Some(PeerOffer::IcmpListen { echo_target })) => {
            let (raw, target) = (icmp_raw.take(), *echo_target);
            cfg.direct_timeout = MANUAL_TIMEOUT;
            tokio::spawn(async move {
                let r = match raw {
                    Some(raw) => {
                        crate::net::punch::icmp::await_connector(
                            raw,
                            session,
                            target,
                            MANUAL_TIMEOUT,
                        )
                        .await
                    }
                    None => Err(PunchError::RawSocket("no raw socket".into())),
                };
                let _ = offer_tx.send(r.map(|a| vec![a])).await;
            });
        }
        (Some(_), Some(PeerOffer::IcmpConnect { echo_target, .. })) => {
            if let (Some(raw), Some(listener)) = (icmp_raw.take(), icmp_listener) {
                knocking = Some(crate::net::punch::icmp::knock(
                    raw,
                    session,
                    listener,
                    *echo_target,
                    local.port(),
                ));
            }
            cfg.direct_timeout = MANUAL_TIMEOUT;
            // No offer: the listener's first probe tells us where it is.
            let _ = offer_tx.send(Ok(Vec::new())).await;
        }
        (Some(m), _) => {
            let mut offer = Vec::new();
            if let Some(server) = stun {
                match stun_reflexive(&sock, server).await {
                    Some(a) => offer.push(a),
                    None => tracing::warn!(%server, "the STUN server did not answer"),
                }
            }
            if opts.portmap {
                let wait =
                    crate::defaults::PORTMAP_TIMEOUT + crate::defaults::PUNCH_PORTMAP_OFFER_GRACE;
                if let Ok(Some((external, via))) =
                    tokio::time::timeout(wait, mapped_rx.recv()).await
                {
                    emit.send(&Event::Mapped { external, via });
                    offer.push(external);
                }
            }
            offer.extend(cfg.candidates.iter().copied());
            offer.dedup();
            emit.send(&Event::Offer {
                offer: crate::wire::offer::format(&offer),
            });
            cfg.direct_timeout = MANUAL_TIMEOUT;
            let src = m.peer.clone();
            tokio::spawn(async move {
                let _ = offer_tx.send(read_peer_offer(src).await).await;
            });
        }
        (None, _) => {}
    }
    // Bind the --local port before anything else: a busy port is a clear error at once.
    let listener = match opts.mode {
        crate::net::punch::quic::Mode::Local(at) => Some(tokio::net::TcpListener::bind(at).await?),
        _ => None,
    };
    let cert = rcgen::generate_simple_self_signed(vec!["natkit".to_string()])
        .map_err(|e| PunchError::Transport(e.to_string()))?;
    let cert_der = cert.cert.der().to_vec();
    let (ctl_tx, ctl_rx) = mpsc::channel::<Inbound>(1024);
    let (quic_tx, quic_rx) = mpsc::channel::<Vec<u8>>(4096);
    let link = Arc::new(Mutex::new(LinkState {
        link: Link::new(relay, session, Instant::now()),
        direct_sock: None,
        method_hint: icmp.is_some().then_some("icmp"),
    }));
    let wire = Arc::new(Wire::new(sock.clone(), relay));
    let reader_task = tokio::spawn(reader(
        sock.clone(),
        relay,
        link.clone(),
        ctl_tx.clone(),
        quic_tx.clone(),
    ));
    let (bday_tx, bday_rx) = mpsc::channel(1024);
    let (tcp_notes_tx, tcp_notes_rx) = mpsc::channel(16);
    let (ttl_tx, ttl_rx) = mpsc::channel(64);
    let now = Instant::now();
    let pake = Pake::new(
        session,
        opts.role,
        &code.password(),
        &cert_der,
        rand::random(),
    );
    let mut c = Control {
        sock,
        wire: wire.clone(),
        puncher: if manual.is_some() {
            Puncher::serverless(cfg.clone(), now, rand::random())
        } else {
            Puncher::new(cfg.clone(), now, rand::random())
        },
        cfg,
        link: link.clone(),
        auth: Auth::new(pake, session),
        session,
        nat: crate::proto::punch::nat::Exchange::new(session, opts.hard),
        fallback: RelayFallback::new(),
        emit: emit.clone(),
        t0,
        inputs: Inputs {
            ctl: ctl_rx,
            mapped: mapped_rx,
            class: class_rx,
            offer: offer_rx,
            bday: bday_rx,
            tcp_notes: tcp_notes_rx,
            ttl: ttl_rx,
        },
        outputs: Outputs {
            ctl: ctl_tx,
            quic: quic_tx,
            bday: bday_tx,
            tcp_notes: tcp_notes_tx,
        },
        early: Vec::new(),
        pending: Vec::new(),
        want_birthday: None,
        want_prediction: None,
        prediction_base: None,
        want_prediction_opener: false,
        predict_resend: None,
        birthday: None,
        tcp: None,
        classes: None,
        quiet: Arc::new(AtomicBool::new(false)),
        path_changed: Arc::new(tokio::sync::Notify::new()),
        bday_reader: None,
        ttl_probes: crate::net::punch::ttl::TtlSockets::new(ttl_tx),
        net: crate::proto::punch::NetWatch::new(
            towards.and_then(|t| crate::net::sys::local_ip_towards(t).ok()),
        ),
        next_net_check: now,
        relay_tcp_lost: false,
        tcp_relays: (relay_tcp, relay6),
    };
    if let Some(ip) = icmp_listener {
        c.puncher.allow_peer_ip(ip.into());
    }
    c.puncher.set_relay_cookie(relay_cookie, Instant::now());
    c.nat.set_ipv6(ipv6);
    // Say so at once, as a side met over TCP does: a peer without IPv6 relays and tries a
    // TCP punch; one with IPv6 expects the direct path over IPv6.
    if ipv4_silent {
        c.set_my_nat(NatClass {
            udp_blocked: true,
            ..NatClass::unknown()
        });
    }
    c.flush();
    let s = Session {
        // quinn sees an IPv4 socket: its only peer is the IPv4 VIRTUAL_PEER, which it would
        // otherwise spell as IPv4-mapped and then not recognise in what the link delivers.
        local: SocketAddr::from((Ipv4Addr::UNSPECIFIED, local.port())),
        wire,
        link,
        quic_rx: Some(quic_rx),
        tasks: vec![reader_task, classifier],
        mapper: mapper.map(|m| (m, unmap_tx)),
        tcp_endpoint,
        listener,
        cert,
        peer_id,
        session,
        manual: manual.is_some(),
        knocking,
    };
    Ok((c, s))
}

/// Meets the peer: turns the event loop until a path is chosen.
pub(super) async fn meet(c: &mut Control) -> Result<(), PunchError> {
    loop {
        c.settle(Phase::Meet).await?;
        if c.puncher.path().is_some() {
            return Ok(());
        }
        if c.t0.elapsed() > PEER_TIMEOUT {
            return Err(PunchError::Rendezvous("the other side never came".into()));
        }
        if !c.wait().await? {
            return Err(PunchError::Transport("the socket reader ended".into()));
        }
    }
}

/// Reads the other side's offer.
async fn read_peer_offer(src: PeerOffer) -> Result<Vec<SocketAddr>, PunchError> {
    let line = match src {
        PeerOffer::Given(s) => s,
        PeerOffer::File(path) => {
            let deadline = Instant::now() + MANUAL_TIMEOUT;
            loop {
                if let Ok(text) = tokio::fs::read_to_string(&path).await {
                    if let Some(l) = text.lines().find(|l| !l.trim().is_empty()) {
                        if text.contains('\n') {
                            break l.to_string();
                        }
                    }
                }
                if Instant::now() > deadline {
                    return Err(PunchError::OfferInput(format!(
                        "nothing in {} after {} s",
                        path.display(),
                        MANUAL_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(OFFER_FILE_POLL).await;
            }
        }
        PeerOffer::Prompt(ask) => (ask.0)().await.map_err(PunchError::OfferInput)?,
        // Handled by `run` (no offer to read).
        PeerOffer::IcmpListen { .. } | PeerOffer::IcmpConnect { .. } => return Ok(Vec::new()),
    };
    Ok(crate::wire::offer::parse(&line)?)
}

/// Zero configuration: the first of natprobe's built-in STUN servers whose name resolves
/// (none on an offline machine: the offer then carries local and router-mapped addresses).
pub(super) async fn builtin_stun() -> Option<SocketAddr> {
    for s in crate::defaults::DEFAULT_SERVERS {
        let Ok((host, port)) = crate::net::sys::parse_server(s) else {
            continue;
        };
        if let Ok(a) = crate::net::sys::resolve(&host, port).await {
            return Some(a);
        }
    }
    None
}

/// Our server-reflexive address from a STUN server, asked on the punch socket itself before
/// anything else reads it (RFC 8489 Binding; three tries, 200 ms apart).
pub(super) async fn stun_reflexive(sock: &UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    let tid = rand::random();
    let req = crate::wire::stun::binding_request(tid, crate::wire::stun::Change::NONE);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send_to(&req, server).await.ok()?;
        let deadline = Instant::now() + REFLEXIVE_WAIT;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline.into(), sock.recv_from(&mut buf)).await
        {
            if crate::net::sys::canonical(from) == server {
                if let Ok(m) = crate::wire::stun::decode(&buf[..n]) {
                    if m.tid == tid {
                        return m.reflexive();
                    }
                }
            }
        }
    }
    None
}

/// Maps the punch socket's UDP port on the router (PCP, then NAT-PMP, then UPnP) while the
/// session lasts: the mapped address goes to `found` when the mapping can make us reachable;
/// the mapping is renewed, and removed when `done` fires.
async fn map_punch_port(
    port: u16,
    found: mpsc::Sender<(SocketAddr, &'static str)>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) {
    use crate::net::portmap as pm;
    let Ok(ctx) = pm::Ctx::new(None, crate::defaults::PORTMAP_TIMEOUT, None) else {
        return;
    };
    let req = pm::MapRequest {
        proto: crate::proto::portmap::Proto::Udp,
        internal_port: port,
        external_port: port,
        lifetime: crate::defaults::PUNCH_PORTMAP_LIFETIME.as_secs() as u32,
    };
    // A session that ends while the router is still being asked (one that drops the
    // requests can take the three protocols' timeouts) must not wait for it to exit.
    let r = tokio::select! {
        r = pm::add(&ctx, req, crate::proto::portmap::Via::Auto) => r,
        _ = &mut done => return,
    };
    let Some(m) = r.mapping else {
        tracing::debug!(attempts = ?r.attempts, "no port mapping for the punch socket");
        return;
    };
    if let (Some(ip), true) = (m.external_ip, r.mapping_can_help == Some(true)) {
        let via = match m.via {
            pm::Method::Pcp => "pcp",
            pm::Method::Natpmp => "natpmp",
            pm::Method::Upnp => "upnp",
        };
        let _ = found
            .send((SocketAddr::new(ip, m.external_port), via))
            .await;
    }
    pm::keep(
        &ctx,
        req,
        m,
        |e| tracing::debug!(?e, "punch port mapping"),
        async {
            let _ = done.await;
        },
    )
    .await;
}
