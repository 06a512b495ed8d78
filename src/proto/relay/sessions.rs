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
    /// The observed address of the peer's registration over the other address family: told
    /// to the other peer as one more candidate; the relay path stays on `observed`.
    pub(super) also: Option<SocketAddr>,
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

    /// When to call [`Relay::handle_timeout`]: the next sweep, late pong or session end
    /// (the first of each timer queue, not a scan of the sessions).
    pub fn poll_timeout(&self) -> Instant {
        [self.ends.first(), self.pongs.first()]
            .into_iter()
            .flatten()
            .map(|(t, _)| *t)
            .fold(self.next_sweep, Instant::min)
    }

    /// A new session: its end goes in the timer queue.
    pub(super) fn session_started(&mut self, id: SessionId, s: &Session) {
        if let Some(end) = self.session_end(s) {
            self.ends.insert((end, id));
        }
    }

    /// The deadline of a sync's measuring round that started at `started`.
    pub(super) fn pong_deadline(started: Instant) -> Instant {
        started + defaults::RELAY_PONG_TIMEOUT
    }

    /// Ends a session: gives back its slots' places and takes it out of the timer queues.
    pub(super) fn end_session(&mut self, id: &SessionId) -> Option<Session> {
        let s = self.sessions.remove(id)?;
        release_all(&mut self.per_source, &s);
        self.forget_timers(id, &s);
        Some(s)
    }

    fn forget_timers(&mut self, id: &SessionId, s: &Session) {
        if let Some(end) = self.session_end(s) {
            self.ends.remove(&(end, *id));
        }
        if let Some(st) = s.sync_started {
            self.pongs.remove(&(Self::pong_deadline(st), *id));
        }
    }

    /// Expires idle registrations and sessions, and starts syncs whose pongs are late. A
    /// session ends at exactly `created + session_secs` (its time quota); idle registrations
    /// are swept once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.ends.first().filter(|(at, _)| *at <= now) {
            self.ends.remove(&(at, id));
            if let Some(s) = self
                .sessions
                .get(&id)
                .filter(|s| self.session_end(s) == Some(at))
            {
                tracing::info!(bytes = s.bytes, "session reached its time quota");
                self.end_session(&id);
            }
        }
        while let Some(&(at, id)) = self.pongs.first().filter(|(at, _)| *at <= now) {
            self.pongs.remove(&(at, id));
            let due = self.sessions.get(&id).is_some_and(|s| {
                s.sync_started
                    .is_some_and(|st| Self::pong_deadline(st) == at)
            });
            if due {
                self.send_start(id);
            }
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + defaults::RELAY_SWEEP_INTERVAL;
        let idle = Duration::from_secs(self.cfg.limits.idle_secs);
        let mut closed = Vec::new();
        let mut ended = Vec::new();
        let per_source = &mut self.per_source;
        self.sessions.retain(|id, s| {
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
                ended.push((*id, s.clone()));
            }
            keep
        });
        for (id, s) in ended {
            self.forget_timers(&id, &s);
        }
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

    /// A TCP connection closed: its registrations go with it (found through the
    /// connection's index, not a scan).
    pub fn tcp_closed(&mut self, conn: ConnId) {
        for id in self.by_conn.remove(&conn).unwrap_or_default() {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            for slot in s.slots.iter_mut() {
                if slot.as_ref().is_some_and(|x| x.path == Path::Tcp(conn)) {
                    if let Some(x) = slot.take() {
                        release(&mut self.per_source, &x);
                    }
                }
            }
            if s.slots.iter().all(|x| x.is_none()) {
                self.end_session(&id);
            }
        }
    }

    /// Notes that session `id` has a slot on `conn`. Entries of sessions the connection no
    /// longer holds are dropped when the set outgrows twice the per-source cap, so a
    /// long-lived connection cannot grow it for ever.
    pub(super) fn note_conn(&mut self, conn: ConnId, id: SessionId) {
        let cap = 2 * self.cfg.limits.sessions_per_source.max(1);
        let sessions = &self.sessions;
        let set = self.by_conn.entry(conn).or_default();
        set.insert(id);
        if set.len() > cap {
            set.retain(|k| {
                sessions
                    .get(k)
                    .is_some_and(|s| s.slots.iter().flatten().any(|x| x.path == Path::Tcp(conn)))
            });
        }
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
            self.end_session(session);
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
            && self.cfg.is_primary(local);
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
