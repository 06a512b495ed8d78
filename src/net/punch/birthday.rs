//! Birthday probing and port prediction, the IO half ([`crate::proto::punch::birthday`]
//! decides what to send): the opener's sockets and their readers, low-TTL sends, and the
//! switch to a path found this way.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::defaults::{
    BIRTHDAY_BUDGET, BIRTHDAY_HARD_BUDGET, PREDICTION_BUDGET, PREDICTION_OPEN_EXTRA,
};
use crate::net::punch::control::Control;
use crate::net::punch::meet::stun_reflexive;
use crate::net::punch::runs::{AbortOnDrop, BirthdayRun};
use crate::net::punch::transport::{reader, send_now, switch_path, with_ttl};
use crate::net::punch::Event;
use crate::proto::punch::birthday::{Birthday, Outcome, Part};
use crate::proto::punch::PathKind;
use crate::wire::rendezvous::Frame;

impl Control {
    /// Starts birthday probing towards the peer's relay-observed address.
    pub(super) async fn start_birthday(&mut self, part: Part) {
        let Some(peer) = self.puncher.peer_measured(Instant::now()) else {
            self.want_birthday = Some(part);
            return;
        };
        let now = Instant::now();
        let mut b = Birthday::new(
            self.session,
            part,
            peer,
            crate::proto::punch::birthday::SOCKETS,
            if part == Part::Both {
                BIRTHDAY_HARD_BUDGET
            } else {
                BIRTHDAY_BUDGET
            },
            now,
            rand::random(),
        );
        let (opening, own) = self.puncher.opening_plan();
        b.set_opening(now, opening, own);
        let mut run = BirthdayRun {
            sockets: Vec::new(),
            readers: Vec::new(),
            part,
            b,
            method: "birthday",
        };
        if part != Part::Prober {
            for i in 0..run.b.sockets() {
                let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                    break;
                };
                let sock = Arc::new(sock);
                run.readers.push(self.read_birthday_socket(i, sock.clone()));
                run.sockets.push(sock);
            }
        }
        tracing::info!(?part, %peer, sockets = run.sockets.len(), "birthday probing");
        self.birthday = Some(run);
        self.flush_birthday();
    }

    pub(super) fn flush_birthday(&mut self) {
        let Some(r) = &mut self.birthday else { return };
        while let Some(t) = r.b.poll_transmit() {
            let sock = match (r.part, t.socket) {
                (Part::Prober, _) | (_, crate::proto::punch::birthday::MAIN) => self.sock.clone(),
                _ => match r.sockets.get(t.socket) {
                    Some(s) => s.clone(),
                    None => continue,
                },
            };
            with_ttl(&sock, t.ttl, || {
                let _ = send_now(&sock, &t.payload, t.dst);
            });
        }
    }

    /// Port prediction towards the peer's sequential NAT, from the port its `Predict` named.
    pub(super) fn start_prediction(&mut self, delta: i32, base: u16) {
        let Some(peer) = self.puncher.peer_measured(Instant::now()) else {
            self.want_prediction = Some(delta);
            return;
        };
        let seen = SocketAddr::new(peer.ip(), base);
        let now = Instant::now();
        let mut b = Birthday::predicting(
            self.session,
            seen,
            delta,
            PREDICTION_BUDGET,
            now,
            rand::random(),
        );
        let (opening, own) = self.puncher.opening_plan();
        b.set_opening(now, opening, own);
        tracing::info!(%seen, delta, "port prediction");
        self.birthday = Some(BirthdayRun {
            b,
            part: Part::Prober,
            method: "prediction",
            sockets: Vec::new(),
            readers: Vec::new(),
        });
        self.flush_birthday();
    }

    /// Our NAT allocates ports in order: on a fresh socket, learn the port of a new mapping
    /// from the relay's STUN, open the next mapping towards the peer with a low-TTL packet
    /// (it must not reach the peer's NAT: arriving first, it would make that NAT move the
    /// peer's flows to another port), and tell the peer where to start. A fresh socket,
    /// because the punch socket's own checks have long reached the peer's NAT, which now
    /// holds a conntrack entry that clashes with the peer's probes to that mapping.
    pub(super) async fn start_prediction_opener(&mut self) {
        let Some(peer) = self.puncher.peer_measured(Instant::now()) else {
            self.want_prediction_opener = true;
            return;
        };
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            return;
        };
        let Some(seen) = stun_reflexive(&sock, self.wire.relay).await else {
            tracing::warn!("port prediction: the relay's STUN did not answer");
            return;
        };
        let sock = Arc::new(sock);
        let b = Birthday::new(
            self.session,
            Part::Opener,
            peer,
            1,
            PREDICTION_BUDGET + PREDICTION_OPEN_EXTRA,
            Instant::now(),
            rand::random(),
        );
        tracing::info!(%seen, %peer, "port prediction: opening the next port");
        let mut b = b;
        let (opening, own) = self.puncher.opening_plan();
        b.set_opening(Instant::now(), opening, own);
        // The low-TTL packet goes out now, before the peer hears where to probe.
        b.handle_timeout(Instant::now());
        self.birthday = Some(BirthdayRun {
            b,
            part: Part::Opener,
            method: "prediction",
            readers: vec![self.read_birthday_socket(0, sock.clone())],
            sockets: vec![sock],
        });
        self.flush_birthday();
        let f = Frame::Predict {
            session: self.session,
            port: seen.port(),
        }
        .emit();
        self.predict_resend = Some((f, 3, Instant::now()));
    }

    /// Feeds what birthday socket `i` receives to the control task.
    fn read_birthday_socket(&self, i: usize, sock: Arc<UdpSocket>) -> tokio::task::JoinHandle<()> {
        let tx = self.outputs.bday.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if tx.send((i, from, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        })
    }

    /// The finished attempt (and how it was made), with the opener's winning socket.
    #[allow(clippy::type_complexity)]
    fn birthday_done(
        &mut self,
    ) -> Option<(
        Outcome,
        &'static str,
        Option<Arc<UdpSocket>>,
        (Option<u8>, u64),
    )> {
        let o = self.birthday.as_ref()?.b.outcome()?.clone();
        let r = self.birthday.take()?;
        let opening = (r.b.opening_ttl(), r.b.waited().as_millis() as u64);
        let chosen = match o {
            Outcome::Connected { socket, .. } if r.part != Part::Prober => {
                r.sockets.get(socket).cloned()
            }
            _ => None,
        };
        Some((o, r.method, chosen, opening))
    }

    /// A finished attempt: a direct path found is adopted (read like the punch socket when
    /// it is an opener's socket); a failure is news.
    pub(super) fn on_birthday_done(&mut self) {
        let Some((outcome, method, chosen, (opening_ttl, waited_ms))) = self.birthday_done() else {
            return;
        };
        match outcome {
            Outcome::Connected { peer, probes, .. } => {
                if let Some(s) = &chosen {
                    self.bday_reader = Some(AbortOnDrop(tokio::spawn(reader(
                        s.clone(),
                        self.wire.relay,
                        self.link.clone(),
                        self.outputs.ctl.clone(),
                        self.outputs.quic.clone(),
                    ))));
                }
                self.puncher.adopt_direct(peer);
                let ev = switch_path(
                    &self.link,
                    &self.wire,
                    PathKind::Direct(peer),
                    probes,
                    self.t0,
                    Some((method, chosen)),
                );
                self.path_changed.notify_one();
                self.pending.push(ev);
            }
            Outcome::Failed { probes } => self.pending.push(Event::Tried {
                method,
                found: false,
                probes,
                elapsed_ms: self.t0.elapsed().as_millis() as u64,
                opening_ttl,
                waited_ms,
            }),
        }
    }
}
