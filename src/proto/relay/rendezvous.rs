//! Rendezvous: registering in a session, introducing the two peers to each other within the
//! amplification bound, and the synchronised start (DCUtR's idea).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::sessions::{idx, release, Session, Slot};
use super::token::token_valid;
use super::{answer_trailer, source_key, DropReason, Now, Path, Relay, MAX_AMPLIFICATION};
use crate::wire::rendezvous::{ErrorCode, Frame, PeerId, Role, SessionId, Trailer};

/// Wire size of an address in a frame: family (1), IP (4 or 16), port (2).
fn addr_wire_len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        7
    } else {
        19
    }
}

/// The candidates that fit in `budget` bytes, in their order (one that does not fit is left
/// out, a smaller one after it may still go), and how many were left out.
pub(super) fn candidates_within(
    budget: usize,
    candidates: &[SocketAddr],
) -> (Vec<SocketAddr>, usize) {
    let mut left = budget;
    let mut fit = Vec::new();
    for a in candidates
        .iter()
        .take(crate::wire::rendezvous::MAX_CANDIDATES)
    {
        let n = addr_wire_len(a);
        if n <= left {
            left -= n;
            fit.push(*a);
        }
    }
    let left_out = candidates
        .len()
        .min(crate::wire::rendezvous::MAX_CANDIDATES)
        - fit.len();
    (fit, left_out)
}

/// A slot's candidates as told to the other peer: its own list, then the address it
/// registered from over the other family (RFC 8445's server-reflexive candidate, in spirit).
fn with_also(slot: &Slot) -> Vec<SocketAddr> {
    let mut c = slot.candidates.clone();
    if let Some(a) = slot.also.filter(|a| !c.contains(a)) {
        c.insert(0, a);
    }
    c
}

/// First bytes of a session id, for logs (never the whole id).
fn hex8(s: &SessionId) -> String {
    s[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl Relay {
    /// Over UDP, whether the request echoes the cookie for its source; if not, the answer is
    /// a fresh cookie (smaller than any `Register` or `DialBack`) and nothing else happens.
    fn routable(&mut self, now: Now, path: Path, from: SocketAddr, t: Option<&Trailer>) -> bool {
        if matches!(path, Path::Tcp(_))
            || t.is_some_and(|t| self.cookies.valid(from, &t.cookie, now.unix))
        {
            return true;
        }
        self.metrics.cookies_sent += 1;
        let answer = Trailer {
            tx: t.map_or(0, |t| t.tx),
            cookie: self.cookies.make(from, now.unix),
        };
        self.send(path, from, Frame::Cookie.emit_with(Some(&answer)));
        false
    }

    pub(super) fn on_frame(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        f: Frame,
        t: Option<Trailer>,
        len: usize,
    ) {
        match f {
            Frame::Register { .. } | Frame::DialBack { .. }
                if !self.routable(now, path, from, t.as_ref()) => {}
            Frame::Register {
                session,
                role,
                peer,
                token,
                candidates,
            } => self.on_register(
                now, path, from, len, session, role, peer, &token, candidates,
            ),
            Frame::Data { session, payload } => self.on_data(now, path, from, session, payload),
            Frame::Sync { session, peer } => {
                if self.find_slot(&session, &peer, from, path).is_none() {
                    return self.error(
                        path,
                        from,
                        ErrorCode::NoSession,
                        "not registered",
                        DropReason::NoSession,
                    );
                }
                self.metrics.rendezvous_requests += 1;
                self.start_sync(now.mono, session);
            }
            Frame::Pong {
                session,
                peer,
                nonce,
            } => {
                let Some(r) = self.find_slot(&session, &peer, from, path) else {
                    return self.metrics.drop(DropReason::NoSession);
                };
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                if let Some(slot) = s.slots[idx(r)].as_mut() {
                    slot.last_seen = now.mono;
                    if let Some((n, at)) = slot.ping {
                        if n == nonce {
                            slot.rtt = Some(now.mono.saturating_duration_since(at));
                            slot.ping = None;
                        }
                    }
                }
                let both = s
                    .slots
                    .iter()
                    .all(|x| x.as_ref().is_some_and(|y| y.ping.is_none()));
                if both && s.sync_started.is_some() {
                    self.send_start(session);
                }
            }
            Frame::Bye { session, peer } => {
                if let Some(r) = self.find_slot(&session, &peer, from, path) {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        if let Some(x) = s.slots[idx(r)].take() {
                            release(&mut self.per_source, &x);
                        }
                        if s.slots.iter().all(|x| x.is_none()) {
                            self.end_session(&session);
                        }
                    }
                }
            }
            Frame::DialBack { proto, port, nonce } => {
                self.on_dialback(now.mono, path, from, proto, port, nonce)
            }
            // Relay-to-client frames are never accepted from clients.
            _ => self.metrics.drop(DropReason::Malformed),
        }
    }

    /// The role of the registered slot matching (session, peer) *and* the sender's observed
    /// address and path: a forged frame from another address changes nothing.
    fn find_slot(
        &self,
        session: &SessionId,
        peer: &PeerId,
        from: SocketAddr,
        path: Path,
    ) -> Option<Role> {
        let s = self.sessions.get(session)?;
        [Role::Listener, Role::Connector].into_iter().find(|&r| {
            s.slots[idx(r)]
                .as_ref()
                .is_some_and(|x| &x.peer == peer && x.observed == from && x.path == path)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn on_register(
        &mut self,
        now: Now,
        path: Path,
        from: SocketAddr,
        len: usize,
        session: SessionId,
        role: Role,
        peer: PeerId,
        token: &[u8],
        candidates: Vec<SocketAddr>,
    ) {
        if let Some(secret) = &self.cfg.secret {
            if !token_valid(secret, token, now.unix) {
                return self.error(
                    path,
                    from,
                    ErrorCode::Unauthorized,
                    "missing or invalid token",
                    DropReason::Unauthorized,
                );
            }
        }
        let key = source_key(from.ip());
        let l = self.cfg.limits.clone();
        let existing = self.sessions.get(&session);
        if existing.is_none() && self.sessions.len() >= l.max_sessions {
            return self.error(
                path,
                from,
                ErrorCode::Limit,
                "relay full",
                DropReason::Limit,
            );
        }
        // The same peer registering over its other address family while its path is alive
        // (punch meeting over both): that address becomes one more candidate for the other
        // peer, and the path stays. Only a path silent for RELAY_FAMILY_MOVE moves.
        let also = existing
            .and_then(|s| s.slots[idx(role)].as_ref())
            .is_some_and(|x| {
                x.peer == peer
                    && x.observed.ip().to_canonical().is_ipv4()
                        != from.ip().to_canonical().is_ipv4()
                    && now.mono.saturating_duration_since(x.last_seen)
                        < crate::defaults::RELAY_FAMILY_MOVE
            });
        // Each slot a source holds counts against its cap (a counter, not a scan): a new
        // slot, or a slot moving here from another source, needs room.
        let moves_here = match existing.and_then(|s| s.slots[idx(role)].as_ref()) {
            None => true,
            Some(x) => !also && x.peer == peer && source_key(x.observed.ip()) != key,
        };
        if moves_here && self.slots_of(key) >= l.sessions_per_source {
            return self.error(
                path,
                from,
                ErrorCode::Limit,
                "too many sessions from this address",
                DropReason::Limit,
            );
        }
        if existing.is_none() {
            let s = Session {
                slots: [None, None],
                created: now.mono,
                bytes: 0,
                attempt: 0,
                sync_started: None,
            };
            self.session_started(session, &s);
            self.sessions.insert(session, s);
            self.metrics.sessions_created += 1;
            tracing::info!(session = %hex8(&session), %from, ?role, "session created");
        }
        let s = self.sessions.get_mut(&session).expect("inserted above");
        let i = idx(role);
        match &mut s.slots[i] {
            Some(x) if x.peer != peer => {
                let reason = match role {
                    Role::Listener => {
                        "this nameplate is in use by another listener: choose another code"
                    }
                    Role::Connector => "another connector already joined with this code",
                };
                return self.error(
                    path,
                    from,
                    ErrorCode::SessionBusy,
                    reason,
                    DropReason::Limit,
                );
            }
            Some(x) if also => {
                x.also = Some(from);
                x.tx = self.req_tx;
            }
            Some(x) => {
                // Same peer: refresh, following NAT rebinding to a new observed address.
                if moves_here {
                    release(&mut self.per_source, x);
                    *self.per_source.entry(key).or_default() += 1;
                }
                x.also = x.also.filter(|a| *a != from);
                x.observed = from;
                x.path = path;
                x.candidates = candidates;
                x.last_seen = now.mono;
                x.tx = self.req_tx;
            }
            slot @ None => {
                *self.per_source.entry(key).or_default() += 1;
                *slot = Some(Slot {
                    peer,
                    observed: from,
                    path,
                    candidates,
                    also: None,
                    last_seen: now.mono,
                    ping: None,
                    rtt: None,
                    tx: self.req_tx,
                });
            }
        }
        self.metrics.rendezvous_requests += 1;
        let other = s.slots[1 - i].clone();
        let me = s.slots[i].clone().expect("set above");
        if let Path::Tcp(conn) = path {
            self.note_conn(conn, session);
        }
        let registered = Frame::Registered {
            observed: from,
            peer_present: other.is_some(),
        }
        .emit_with(answer_trailer(me.tx).as_ref());
        let Some(o) = other else {
            return self.send(path, from, registered);
        };
        let to_other = Frame::Peer {
            observed: me.observed,
            candidates: with_also(&me),
        }
        .emit_with(answer_trailer(o.tx).as_ref());
        // With --secret, reaching here means the token was valid: authenticated, unbounded.
        let theirs = if self.cfg.secret.is_some() {
            with_also(&o)
        } else {
            let bare = Frame::Peer {
                observed: o.observed,
                candidates: vec![],
            }
            .emit_with(answer_trailer(me.tx).as_ref())
            .len();
            let spent = registered.len() + to_other.len() + bare;
            let budget = (len * MAX_AMPLIFICATION).saturating_sub(spent);
            let (fit, left_out) = candidates_within(budget, &with_also(&o));
            if left_out > 0 {
                self.metrics.peer_candidates_trimmed += left_out as u64;
                tracing::debug!(
                    session = %hex8(&session), left_out,
                    "peer candidates trimmed to the amplification bound"
                );
            }
            fit
        };
        let to_me = Frame::Peer {
            observed: o.observed,
            candidates: theirs,
        }
        .emit_with(answer_trailer(me.tx).as_ref());
        // The answers to a registration over the other family go back where it came from;
        // the other peer hears of it on its own path.
        let (my_path, my_addr) = if also {
            (path, from)
        } else {
            (me.path, me.observed)
        };
        self.send(path, from, registered);
        self.send(my_path, my_addr, to_me);
        self.send(o.path, o.observed, to_other);
    }

    fn start_sync(&mut self, now: Instant, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.slots.iter().any(|x| x.is_none()) {
            return;
        }
        s.attempt += 1;
        if let Some(old) = s.sync_started.replace(now) {
            self.pongs.remove(&(Self::pong_deadline(old), session));
        }
        self.pongs.insert((Self::pong_deadline(now), session));
        let mut pings = Vec::new();
        for slot in s.slots.iter_mut().flatten() {
            let nonce: u64 = self.rng.gen();
            slot.ping = Some((nonce, now));
            slot.rtt = None;
            pings.push((slot.path, slot.observed, nonce));
        }
        for (path, to, nonce) in pings {
            self.reply(path, to, &Frame::Ping { nonce });
        }
    }

    /// DCUtR's idea: each side waits half the difference of the round trips, so both start
    /// sending at the same instant.
    pub(super) fn send_start(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if let Some(st) = s.sync_started.take() {
            self.pongs.remove(&(Self::pong_deadline(st), session));
        }
        let rtts: Vec<Option<Duration>> = s
            .slots
            .iter()
            .map(|x| x.as_ref().and_then(|y| y.rtt))
            .collect();
        let known = rtts.iter().flatten().max().copied().unwrap_or_default();
        let attempt = s.attempt;
        let mut starts = Vec::new();
        for (slot, rtt) in s.slots.iter().zip(rtts) {
            if let Some(x) = slot {
                let mine = rtt.unwrap_or(known);
                let wait = (known.saturating_sub(mine) / 2)
                    .as_millis()
                    .min(u16::MAX as u128) as u16;
                starts.push((x.path, x.observed, wait));
            }
        }
        for (path, to, wait_ms) in starts {
            self.reply(path, to, &Frame::Start { wait_ms, attempt });
        }
    }
}
