//! The control plane: the [`Control`] struct owns the sans-IO cores (the puncher, the key
//! exchange, the NAT exchange, birthday probing, TCP punching) and every input they read,
//! and runs the one event loop of a punch: [`Control::settle`] carries out what the cores
//! ask, [`Control::wait`] waits for the next input or deadline. Each phase of
//! [`crate::net::punch::run`] turns that loop until its own goal is reached.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::defaults::{CONTROL_TICK, NET_CHECK, PREDICT_RESEND, RELAY_TCP_CONNECT};
use crate::net::punch::runs::{AbortOnDrop, BirthdayRun, TcpNote, TcpRun};
use crate::net::punch::transport::{lock, switch_path, Inbound, LinkState, Wire};
use crate::net::punch::{Emit, Event, PunchError};
use crate::proto::punch::auth::Auth;
use crate::proto::punch::birthday::Part;
use crate::proto::punch::fallback::{Fallback, RelayFallback, RelayVia};
use crate::proto::punch::nat::NatClass;
use crate::proto::punch::{NetChange, NetWatch, PathKind, PunchConfig, PunchEvent, Puncher};
use crate::wire::rendezvous::{Frame, SessionId};

/// Which phase of the punch turns the loop: what is news to the user and what may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Meeting and choosing the first path.
    Meet,
    /// The key exchange over that path.
    Auth,
    /// Carrying data: the path may change, birthday probing and prediction may run.
    Run,
}

/// Everything the loop waits on besides the clock.
pub(super) struct Inputs {
    /// natkit frames from the socket readers.
    pub(super) ctl: mpsc::Receiver<Inbound>,
    /// The router's mapping of the punch port (`--portmap`).
    pub(super) mapped: mpsc::Receiver<(SocketAddr, &'static str)>,
    /// Our NAT's classification, from natprobe against the relay.
    pub(super) class: mpsc::Receiver<NatClass>,
    /// The other side's offer (`--manual`, `--icmp`).
    pub(super) offer: mpsc::Receiver<Result<Vec<SocketAddr>, PunchError>>,
    /// Datagrams on the birthday sockets: (socket index, source, bytes).
    pub(super) bday: mpsc::Receiver<(usize, SocketAddr, Vec<u8>)>,
    /// What the TCP connection attempts report.
    pub(super) tcp_notes: mpsc::Receiver<TcpNote>,
    /// ICMP answers to the TTL measurement's probes.
    pub(super) ttl: mpsc::Receiver<crate::net::punch::ttl::TtlAnswer>,
}

/// Senders the control plane hands to tasks it starts.
pub(super) struct Outputs {
    pub(super) ctl: mpsc::Sender<Inbound>,
    pub(super) quic: mpsc::Sender<Vec<u8>>,
    pub(super) bday: mpsc::Sender<(usize, SocketAddr, Vec<u8>)>,
    pub(super) tcp_notes: mpsc::Sender<TcpNote>,
}

/// The control plane: the puncher (relay keepalives, pings, checks), the key exchange, and
/// the techniques that run alongside.
pub(super) struct Control {
    pub(super) sock: Arc<tokio::net::UdpSocket>,
    pub(super) wire: Arc<Wire>,
    pub(super) cfg: PunchConfig,
    pub(super) puncher: Puncher,
    pub(super) link: Arc<Mutex<LinkState>>,
    pub(super) auth: Auth,
    pub(super) session: SessionId,
    pub(super) nat: crate::proto::punch::nat::Exchange,
    pub(super) fallback: RelayFallback,
    pub(super) emit: Emit,
    pub(super) t0: Instant,
    pub(super) inputs: Inputs,
    pub(super) outputs: Outputs,
    /// Relayed data that arrived before the path was chosen (the peer may be ahead).
    pub(super) early: Vec<Vec<u8>>,
    /// Events for the user raised while handling input (drained by [`Control::settle`]).
    pub(super) pending: Vec<Event>,
    /// Birthday probing wanted (from the NAT exchange), and in progress.
    pub(super) want_birthday: Option<Part>,
    /// Port prediction wanted (the peer's NAT is sequential, with this step); it starts
    /// when the peer's [`Frame::Predict`] gives the port to start from.
    pub(super) want_prediction: Option<i32>,
    pub(super) prediction_base: Option<u16>,
    /// Our NAT is the sequential one: open the mapping the peer will predict.
    pub(super) want_prediction_opener: bool,
    /// Our `Predict` frame, repeated (relayed UDP may be lost): frame, sends left, next.
    pub(super) predict_resend: Option<(Vec<u8>, u32, Instant)>,
    pub(super) birthday: Option<BirthdayRun>,
    /// TCP hole punching (`--tcp`), once authenticated.
    pub(super) tcp: Option<TcpRun>,
    /// Both NAT classifications (ours, the peer's), for the TCP punch's plan.
    pub(super) classes: Option<(NatClass, NatClass)>,
    /// Once a punched TCP connection carries the data, UDP path changes are not news.
    pub(super) quiet: Arc<AtomicBool>,
    /// Tells QUIC the path changed (it then probes the new path at once).
    pub(super) path_changed: Arc<tokio::sync::Notify>,
    /// Reads the opener's winning socket once a birthday path carries the session.
    pub(super) bday_reader: Option<AbortOnDrop>,
    /// The TTL measurement's sockets ([`crate::proto::punch::ttl`]).
    pub(super) ttl_probes: crate::net::punch::ttl::TtlSockets,
    /// Our own network: a route that comes back or a new local address is news.
    pub(super) net: NetWatch,
    pub(super) next_net_check: Instant,
    /// The relay's TCP connection (UDP blocked) broke and must be made again.
    pub(super) relay_tcp_lost: bool,
    /// Where a TCP punch learns our endpoints: the relay's first-family address (IPv4 UDP
    /// being blocked says nothing of IPv4 TCP) and its IPv6 one.
    pub(super) tcp_relays: (SocketAddr, Option<SocketAddr>),
}

impl Control {
    /// Carries out everything the cores have queued, without waiting: fatal events of the
    /// `phase` are errors.
    pub(super) async fn settle(&mut self, phase: Phase) -> Result<(), PunchError> {
        // A direct path that stopped answering falls back to the relay, and the puncher
        // keeps trying to upgrade; QUIC only sees a stall, never a new peer address.
        let now = Instant::now();
        if phase == Phase::Run && lock(&self.link).link.direct_is_dead(now) {
            self.puncher.path_failed(now);
            self.flush();
        }
        while let Some(e) = self.puncher.poll_event() {
            match e {
                PunchEvent::Registered { observed } if phase == Phase::Meet => {
                    self.pending.push(Event::Registered { observed })
                }
                PunchEvent::Failed(f) if phase == Phase::Meet => {
                    return Err(PunchError::Rendezvous(f))
                }
                PunchEvent::RelayUnreachable => self.relay_unreachable().await?,
                PunchEvent::RelayData(d) if phase == Phase::Meet => self.early.push(d),
                PunchEvent::RelayData(d) => {
                    if let Ok(f) = Frame::parse(&d) {
                        self.auth.handle_frame(Instant::now(), &f);
                        self.flush();
                    }
                }
                PunchEvent::Path { path, probes } => {
                    let ev = switch_path(&self.link, &self.wire, path, probes, self.t0, None);
                    if phase == Phase::Run {
                        self.path_changed.notify_one();
                    }
                    if !self.quiet.load(Ordering::Relaxed) {
                        self.pending.push(ev);
                    }
                }
                // Re-registrations and late refusals once the session runs are not news.
                PunchEvent::Registered { .. } | PunchEvent::Failed(_) => {}
            }
        }
        if phase == Phase::Run {
            if let Some(part) = self.want_birthday.take() {
                self.start_birthday(part).await;
            }
            if let (Some(delta), Some(base)) = (self.want_prediction, self.prediction_base) {
                self.want_prediction = None;
                self.start_prediction(delta, base);
            }
            if std::mem::take(&mut self.want_prediction_opener) {
                self.start_prediction_opener().await;
            }
            self.on_birthday_done();
        }
        if let Some(opening) = self.puncher.settled_opening(Instant::now()) {
            self.pending.push(Event::Opening { opening });
        }
        for e in std::mem::take(&mut self.pending) {
            self.emit.send(&e);
        }
        Ok(())
    }

    /// Waits for the next input or deadline and hands it to the cores. False when the
    /// socket readers are gone.
    pub(super) async fn wait(&mut self) -> Result<bool, PunchError> {
        let now = Instant::now();
        let wake = [
            self.puncher.poll_timeout(),
            Some(now + CONTROL_TICK),
            self.auth.poll_timeout(),
            self.birthday.as_ref().and_then(|r| r.b.poll_timeout()),
            self.tcp.as_ref().and_then(|t| t.p.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        let i = &mut self.inputs;
        let wire = self.wire.clone();
        tokio::select! {
            m = i.ctl.recv() => match m {
                Some(Inbound::Control(from, b)) => self.on_inbound(Instant::now(), from, &b),
                Some(Inbound::Broken(e)) => return Err(PunchError::Io(e)),
                Some(Inbound::RelayTcpLost) => {
                    self.relay_tcp_lost = true;
                    self.reconnect_relay_tcp().await;
                }
                None => return Ok(false),
            },
            Some((target, ttl, answer)) = i.ttl.recv() => {
                self.puncher.handle_ttl_answer(Instant::now(), target, ttl, answer);
                self.flush();
            }
            e = wire.failed() => return Err(PunchError::Io(e)),
            Some(n) = i.tcp_notes.recv() => {
                self.on_tcp_note(n);
                self.flush();
            }
            Some((i, from, b)) = i.bday.recv() => {
                if let Some(r) = &mut self.birthday {
                    r.b.handle_datagram(Instant::now(), i, from, &b);
                }
                self.flush_birthday();
            }
            // A mapping that came late still helps later upgrade attempts.
            Some((external, via)) = i.mapped.recv() => {
                self.pending.push(Event::Mapped { external, via });
                self.puncher.add_candidate(external, Instant::now());
                self.set_mapped_port();
                self.flush();
            }
            Some(class) = i.class.recv() => {
                self.set_my_nat(class);
                self.flush();
            }
            Some(peer) = i.offer.recv() => {
                self.puncher.peer_offer(&peer?, Instant::now());
                self.flush();
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                self.puncher.handle_timeout(now);
                self.auth.handle_timeout(now);
                if let Some(r) = &mut self.birthday {
                    r.b.handle_timeout(now);
                }
                if let Some(t) = &mut self.tcp {
                    t.p.handle_timeout(now);
                }
                self.flush_tcp();
                self.flush_birthday();
                self.flush();
                self.check_network(now).await;
            }
        }
        Ok(true)
    }

    /// Looks at our own network every [`NET_CHECK`] ([`NetWatch`]): the socket is bound to
    /// the wildcard address and survives an address change, but when a route comes back,
    /// or we have a new address (and so a new mapping on our NAT), the relay must learn
    /// where we are (re-register), the paths are checked again, and QUIC is nudged to
    /// retransmit at once rather than after its backed-off probe timer.
    async fn check_network(&mut self, now: Instant) {
        if now < self.next_net_check {
            return;
        }
        self.next_net_check = now + NET_CHECK;
        // --manual has no relay: the direct peer's route is the one that matters.
        let towards = match lock(&self.link).link.path() {
            _ if !self.wire.relay.ip().is_unspecified() => self.wire.relay,
            PathKind::Direct(p) => p,
            PathKind::Relay => return,
        };
        let addr = crate::net::sys::local_ip_towards(towards).ok();
        match self.net.observe(addr) {
            Some(NetChange::Lost) => {
                tracing::warn!("no route to {towards} any more; waiting for the network")
            }
            Some(NetChange::Back { moved }) => {
                tracing::warn!(
                    ?addr,
                    moved,
                    "the network is back; telling the relay and the peer"
                );
                self.relay_tcp_lost |= moved && self.fallback.via() == RelayVia::Tcp;
                self.reconnect_relay_tcp().await;
                self.puncher.network_changed(now, moved);
                self.path_changed.notify_one();
                self.flush();
            }
            None if self.relay_tcp_lost && addr.is_some() => self.reconnect_relay_tcp().await,
            None => {}
        }
    }

    /// The relay's TCP connection broke (or left from an address we no longer have): make
    /// it again and register over it. A failure is tried again at the next network check;
    /// a session that stays cut off ends at the dead-peer bound.
    async fn reconnect_relay_tcp(&mut self) {
        if !self.relay_tcp_lost {
            return;
        }
        match self.connect_relay_tcp(RELAY_TCP_CONNECT).await {
            Ok(()) => {
                self.relay_tcp_lost = false;
                self.puncher.network_changed(Instant::now(), false);
                self.flush();
            }
            Err(e) => tracing::warn!(?e, "the relay's TCP connection cannot be made again yet"),
        }
    }

    /// UDP to the relay gets nowhere (blocked?): meet over TCP instead ([`RelayFallback`]);
    /// the punch attempts that follow will fail and the relay will carry the data.
    async fn relay_unreachable(&mut self) -> Result<(), PunchError> {
        let timeout = match self.fallback.unreachable() {
            Fallback::ConnectTcp(t) => t,
            Fallback::GiveUp(why) => return Err(PunchError::Rendezvous(why)),
        };
        if let Err(e) = self.connect_relay_tcp(timeout).await {
            let e = e.map(|e| e.to_string());
            return Err(PunchError::Rendezvous(
                self.fallback.tcp_failed(e.as_deref()),
            ));
        }
        self.puncher = Puncher::new(self.cfg.clone(), Instant::now(), rand::random());
        // Tell the peer: no UDP technique can work, the relay over TCP will carry the data
        // (at once, not after the punching bound), and a pipe tries TCP hole punching.
        let blocked = self.fallback.tcp_connected();
        // UDP got no answer over IPv6 either (or was not tried): claim no IPv6.
        self.nat.set_ipv6(false);
        self.set_my_nat(blocked);
        self.flush();
        Ok(())
    }

    /// Connects to the relay's TCP port within `timeout`; its frames then reach the loop
    /// like the UDP socket's ([`Wire::connect_tcp`]).
    async fn connect_relay_tcp(
        &self,
        timeout: std::time::Duration,
    ) -> Result<(), Option<std::io::Error>> {
        let (link, ctl, quic) = (
            self.link.clone(),
            self.outputs.ctl.clone(),
            self.outputs.quic.clone(),
        );
        self.wire.connect_tcp(timeout, link, ctl, quic).await
    }

    pub(super) fn set_my_nat(&mut self, c: NatClass) {
        self.nat.set_mine(Instant::now(), c);
        self.apply_nat();
    }

    fn set_mapped_port(&mut self) {
        self.nat.set_mapped_port(Instant::now());
        self.apply_nat();
    }

    /// Carries out what the classification exchange ([`crate::proto::punch::nat::Exchange`])
    /// asks.
    fn apply_nat(&mut self) {
        use crate::proto::punch::nat::Plan;
        while let Some(f) = self.nat.poll_transmit() {
            self.puncher.send_relayed(f);
        }
        while let Some(p) = self.nat.poll_plan() {
            match p {
                Plan::Told { mine, peer, expect } => {
                    self.tcp_classes(mine, peer);
                    self.puncher
                        .set_permissive(mine.lets_in_any_port(), peer.lets_in_any_port());
                    let opening = self.puncher.tell_distances();
                    self.pending.push(Event::Nat {
                        mine,
                        peer,
                        expect,
                        opening,
                    })
                }
                Plan::PreferRelay => self.puncher.prefer_relay(Instant::now()),
                Plan::Birthday(part) if self.birthday.is_none() => self.want_birthday = Some(part),
                Plan::PredictProbe(delta) if self.birthday.is_none() => {
                    self.want_prediction = Some(delta)
                }
                Plan::PredictOpen if self.birthday.is_none() => self.want_prediction_opener = true,
                _ => {}
            }
        }
    }

    /// Sends what the cores queued: key-exchange frames over the link, our `Predict` repeat
    /// and the puncher's datagrams.
    pub(super) fn flush(&mut self) {
        let now = Instant::now();
        while let Some(f) = self.auth.poll_transmit() {
            self.send_link(&f);
        }
        self.nat.set_peer_ipv6(self.puncher.peer_offers_ipv6());
        self.nat.handle_timeout(now);
        self.apply_nat();
        if let Some((f, left, next)) = &mut self.predict_resend {
            if *next <= now {
                self.puncher.send_relayed(f.clone());
                *left -= 1;
                *next = now + PREDICT_RESEND;
                if *left == 0 {
                    self.predict_resend = None;
                }
            }
        }
        while let Some(d) = self.puncher.poll_transmit() {
            self.wire.send_ttl(d.dst, d.payload, d.ttl);
        }
        while let Some(p) = self.puncher.poll_ttl_probe() {
            self.ttl_probes.send(p);
        }
    }

    /// Sends a frame to the peer on the current path.
    fn send_link(&mut self, f: &Frame) {
        let (dst, bytes) = lock(&self.link).link.wrap(&f.emit());
        self.wire.send(dst, bytes);
    }

    fn on_inbound(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Some(r) = &mut self.birthday {
            let main = match r.part {
                Part::Both => crate::proto::punch::birthday::MAIN,
                _ => 0,
            };
            if r.part != Part::Opener && r.b.handle_datagram(now, main, from, bytes) {
                self.flush_birthday();
                return;
            }
        }
        let parsed = Frame::parse(bytes);
        // The peer's control frames come through the relay or over an authenticated direct
        // path; from anyone else (who may know the public session id) they are ignored.
        if parsed
            .as_ref()
            .is_ok_and(|f| !lock(&self.link).link.accepts_frame(from, f))
        {
            tracing::debug!(%from, "ignored a peer frame from an unauthenticated source");
            return;
        }
        if parsed.as_ref().is_ok_and(|f| self.nat.handle_frame(now, f)) {
            self.apply_nat();
        } else if let Ok(Frame::Predict { session, port }) = &parsed {
            if *session == self.session {
                self.prediction_base = Some(*port);
            }
        } else if let Ok(Frame::Hops {
            session,
            own_nat,
            peer_nat,
        }) = &parsed
        {
            if *session == self.session {
                tracing::info!(own_nat, peer_nat, "the peer's TTL measurement");
                self.puncher.handle_peer_hops(now, *own_nat, *peer_nat);
            }
        } else if let Ok(f @ Frame::TcpOffer { .. }) = &parsed {
            if let Some(t) = &mut self.tcp {
                t.p.handle_frame(now, f);
            }
            self.flush_tcp();
        } else if let Ok(f @ (Frame::Pake { .. } | Frame::Confirm { .. })) = &parsed {
            self.auth.handle_frame(now, f);
        } else {
            self.puncher.handle_datagram(now, from, bytes);
        }
        self.flush();
    }
}
