//! Sessions: their two slots, relaying between them within the byte and time quotas, and
//! expiry of idle registrations.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{source_key, ConnId, DropReason, Now, Output, Path, Relay};
use crate::defaults;
use crate::wire::rendezvous::{ErrorCode, Frame, PeerId, Role, SessionId};

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) peer: PeerId,
    pub(super) observed: SocketAddr,
    pub(super) path: Path,
    pub(super) candidates: Vec<SocketAddr>,
    pub(super) last_seen: Instant,
    pub(super) ping: Option<(u64, Instant)>,
    pub(super) rtt: Option<Duration>,
    /// The transaction id of the peer's last `Register`, echoed in what it is sent.
    pub(super) tx: Option<u64>,
}

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) slots: [Option<Slot>; 2],
    pub(super) created: Instant,
    pub(super) bytes: u64,
    pub(super) attempt: u32,
    pub(super) sync_started: Option<Instant>,
}

/// Gives back the place a slot held in its source's count.
pub(super) fn release(per_source: &mut HashMap<IpAddr, usize>, slot: &Slot) {
    let key = source_key(slot.observed.ip());
    if let Some(n) = per_source.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            per_source.remove(&key);
        }
    }
}

/// Gives back the places of every slot of a session that ends.
fn release_all(per_source: &mut HashMap<IpAddr, usize>, s: &Session) {
    for x in s.slots.iter().flatten() {
        release(per_source, x);
    }
}

pub(super) fn idx(r: Role) -> usize {
    match r {
        Role::Listener => 0,
        Role::Connector => 1,
    }
}

impl Relay {
    /// Slots (sides of sessions) held by a source ([`source_key`]).
    pub(super) fn slots_of(&self, key: IpAddr) -> usize {
        self.per_source.get(&key).copied().unwrap_or(0)
    }

    /// When a session reaches its time quota (None: beyond what an `Instant` can hold).
    fn session_end(&self, s: &Session) -> Option<Instant> {
        s.created
            .checked_add(Duration::from_secs(self.cfg.limits.session_secs))
    }

    /// When to call [`Relay::handle_timeout`]: the next sweep, late pong or session end.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_sweep;
        for s in self.sessions.values() {
            if let Some(st) = s.sync_started {
                t = t.min(st + defaults::RELAY_PONG_TIMEOUT);
            }
            if let Some(end) = self.session_end(s) {
                t = t.min(end);
            }
        }
        t
    }

    /// Expires idle registrations and sessions, and starts syncs whose pongs are late. A
    /// session ends at exactly `created + session_secs` (its time quota); idle registrations
    /// are swept once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        let life = Duration::from_secs(self.cfg.limits.session_secs);
        let per_source = &mut self.per_source;
        self.sessions.retain(|_, s| {
            let keep = now.saturating_duration_since(s.created) < life;
            if !keep {
                tracing::info!(bytes = s.bytes, "session reached its time quota");
                release_all(per_source, s);
            }
            keep
        });
        let late: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.sync_started
                    .is_some_and(|t| now >= t + defaults::RELAY_PONG_TIMEOUT)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.send_start(k);
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + defaults::RELAY_SWEEP_INTERVAL;
        let idle = Duration::from_secs(self.cfg.limits.idle_secs);
        let mut closed = Vec::new();
        let per_source = &mut self.per_source;
        self.sessions.retain(|_, s| {
            for slot in s.slots.iter_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|x| now.saturating_duration_since(x.last_seen) > idle)
                {
                    if let Some(x) = slot.take() {
                        release(per_source, &x);
                        if let Path::Tcp(c) = x.path {
                            closed.push(c);
                        }
                    }
                }
            }
            let keep = s.slots.iter().any(|x| x.is_some());
            if !keep {
                tracing::info!(bytes = s.bytes, "session expired (idle)");
            }
            keep
        });
        for c in closed {
            self.out.push_back(Output::Close(c));
        }
        // Forget sources whose bucket has refilled: they are back to the default state.
        let full = Duration::from_secs_f64(
            self.cfg.limits.reqs_burst as f64 / self.cfg.limits.reqs_per_sec.max(1) as f64,
        );
        self.buckets.forget_older(now, full);
        self.dial_buckets
            .forget_older(now, defaults::RELAY_DIALBACK_FORGET);
    }

    /// A TCP connection closed: its registrations go with it.
    pub fn tcp_closed(&mut self, conn: ConnId) {
        for s in self.sessions.values_mut() {
            for slot in s.slots.iter_mut() {
                if slot.as_ref().is_some_and(|x| x.path == Path::Tcp(conn)) {
                    if let Some(x) = slot.take() {
                        release(&mut self.per_source, &x);
                    }
                }
            }
        }
        self.sessions
            .retain(|_, s| s.slots.iter().any(|x| x.is_some()));
    }

    /// Checks and accounts one relayed datagram; returns where the other peer is.
    fn route_data(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        session: &SessionId,
        len: usize,
    ) -> Option<(Path, SocketAddr)> {
        let (max_bytes, max_life) = (
            self.cfg.limits.session_bytes,
            Duration::from_secs(self.cfg.limits.session_secs),
        );
        let Some(s) = self.sessions.get_mut(session) else {
            self.metrics.drop(DropReason::NoSession);
            return None;
        };
        // The sender must be a registered peer at exactly this observed address and path.
        let Some(i) = (0..2).find(|&i| {
            s.slots[i]
                .as_ref()
                .is_some_and(|x| x.observed == from && x.path == path)
        }) else {
            self.metrics.drop(DropReason::NoSession);
            return None;
        };
        let Some((opath, oaddr)) = s.slots[1 - i].as_ref().map(|o| (o.path, o.observed)) else {
            self.metrics.drop(DropReason::NoSession);
            return None;
        };
        if let Some(me) = s.slots[i].as_mut() {
            me.last_seen = now.mono;
        }
        s.bytes = s.bytes.saturating_add(len as u64);
        // Quotas: at most `session_bytes` relayed, and nothing from `created + session_secs`
        // on. The datagram that would go beyond either ends the session; its sender is told.
        if s.bytes > max_bytes || now.mono.saturating_duration_since(s.created) >= max_life {
            // The sender is told under the transaction id of its registration.
            self.req_tx = s.slots[i].as_ref().and_then(|x| x.tx);
            if let Some(s) = self.sessions.remove(session) {
                release_all(&mut self.per_source, &s);
            }
            self.error(
                path,
                from,
                ErrorCode::Limit,
                "session quota used up",
                DropReason::Limit,
            );
            self.req_tx = None;
            return None;
        }
        self.metrics.relayed_packets += 1;
        self.metrics.relayed_bytes += len as u64;
        Some((opath, oaddr))
    }

    pub(super) fn on_data(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        session: SessionId,
        payload: Vec<u8>,
    ) {
        if let Some((opath, oaddr)) = self.route_data(now, path, from, &session, payload.len()) {
            // The frame goes out as it came in (a Data frame names only the session).
            self.reply(opath, oaddr, &Frame::Data { session, payload });
        }
    }

    /// Fast path for relayed data arriving over UDP, without copying: when `frame` is a Data
    /// frame to be forwarded over UDP, returns (source, destination) for the same bytes.
    /// Anything else (not Data, TCP peer, refused) is handled as [`Relay::handle_udp`] does,
    /// and None is returned.
    pub fn forward_udp(
        &mut self,
        now: Now,
        local: SocketAddr,
        from: SocketAddr,
        frame: &[u8],
    ) -> Option<(SocketAddr, SocketAddr)> {
        let is_data = frame.len() >= 4 + crate::wire::rendezvous::SESSION_LEN
            && frame.len()
                <= 4 + crate::wire::rendezvous::SESSION_LEN + crate::wire::rendezvous::MAX_PAYLOAD
            && frame[..2] == crate::wire::rendezvous::MAGIC
            && frame[2] == crate::wire::rendezvous::VERSION
            && frame[3] == 8
            && local == self.cfg.primary;
        if !is_data {
            self.handle_udp(now, local, from, frame);
            return None;
        }
        let mut session = [0u8; crate::wire::rendezvous::SESSION_LEN];
        session.copy_from_slice(&frame[4..4 + crate::wire::rendezvous::SESSION_LEN]);
        let len = frame.len() - 4 - crate::wire::rendezvous::SESSION_LEN;
        match self.route_data(now, Path::Udp { local }, from, &session, len)? {
            (Path::Udp { local: src }, dst) => Some((src, dst)),
            (Path::Tcp(conn), _) => {
                self.out.push_back(Output::Tcp {
                    conn,
                    payload: frame.to_vec(),
                });
                None
            }
        }
    }
}
