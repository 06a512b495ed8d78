//! STUN Binding answers with RFC 5780 behaviour discovery (CHANGE-REQUEST, RESPONSE-PORT,
//! OTHER-ADDRESS, RESPONSE-ORIGIN), bounded by [`MAX_AMPLIFICATION`]; and the same for classic
//! RFC 3489 clients (no magic cookie: MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS).

use std::net::SocketAddr;

use super::{DropReason, Output, Relay, MAX_AMPLIFICATION};
use crate::wire::stun::{self, Change, Class, DecodeError};
use crate::wire::stun_classic;

impl Relay {
    pub(super) fn on_stun(&mut self, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if let Some((src, dst, payload)) = self.stun_answer(local, from, data) {
            self.out.push_back(Output::Udp { src, dst, payload });
        }
    }

    /// RFC 5780 §6: the answer to a Binding request: (source, destination, bytes).
    pub(super) fn stun_answer(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let m = match stun::decode(data) {
            Ok(m) => m,
            Err(DecodeError::NotStun) => return self.classic_answer(local, from, data),
            Err(_) => {
                self.metrics.drop(DropReason::Malformed);
                return None;
            }
        };
        if m.class != Class::Request || !m.is_binding_request() {
            self.metrics.drop(DropReason::Malformed);
            return None;
        }
        let error = |code: u16, reason: &str| stun::binding_error(m.tid, code, reason).ok();
        if m.padding_len.is_some() {
            self.metrics.drop(DropReason::Padding);
            return error(400, "PADDING refused").map(|e| (local, from, e));
        }
        // RFC 5780 within the family the request came in on.
        let (_, alt) = self.cfg.family_of(local.ip());
        if !m.unknown_required.is_empty() || (m.change.is_some() && alt.is_none()) {
            // RFC 8489 §6.3.1.1 / RFC 5780 §6.1: 420 for what this server does not do.
            return error(420, "Unknown Attribute").map(|e| (local, from, e));
        }
        let (src, other) = self.answer_origin(local, m.change.unwrap_or_default());
        // RFC 5780 §7.5: RESPONSE-PORT moves the answer to another port of the same IP only.
        let dst = SocketAddr::new(from.ip(), m.response_port.unwrap_or(from.port()));
        // Over IPv6 the addresses are 24 bytes each: a minimal 20-byte request cannot get
        // all of them within the bound, so RESPONSE-ORIGIN goes first, then OTHER-ADDRESS
        // (a natkit client's request carries FINGERPRINT, 28 bytes: it gets them all).
        let full = stun::BindingResponse {
            tid: m.tid,
            mapped: from,
            other_address: other,
            response_origin: other.map(|_| src),
            software: None,
        };
        let shorter = [
            stun::BindingResponse {
                response_origin: None,
                ..full.clone()
            },
            stun::BindingResponse {
                response_origin: None,
                other_address: None,
                ..full.clone()
            },
        ];
        let Some(resp) = std::iter::once(full)
            .chain(shorter)
            .filter_map(|r| r.encode().ok())
            .find(|r| r.len() <= data.len() * MAX_AMPLIFICATION)
        else {
            self.metrics.drop(DropReason::Limit);
            return None;
        };
        self.metrics.stun_requests += 1;
        Some((src, dst, resp))
    }

    /// RFC 5780 §6.1 (and RFC 3489 §8.2.1, which it generalises): the address an answer is
    /// sent from after CHANGE-REQUEST, and the server's other address (None without
    /// `--alt-addr`).
    fn answer_origin(&self, local: SocketAddr, change: Change) -> (SocketAddr, Option<SocketAddr>) {
        // RFC 5780 within the family the request came in on.
        let (p, alt) = self.cfg.family_of(local.ip());
        let Some(ip2) = alt else {
            return (local, None);
        };
        let other_ip = if local.ip() == p.ip() { ip2 } else { p.ip() };
        let other_port = if local.port() == p.port() {
            self.cfg.alt_port
        } else {
            p.port()
        };
        let src = SocketAddr::new(
            if change.ip { other_ip } else { local.ip() },
            if change.port {
                other_port
            } else {
                local.port()
            },
        );
        (src, Some(SocketAddr::new(other_ip, other_port)))
    }

    /// RFC 3489 §8.2: a classic Binding request (no magic cookie) gets MAPPED-ADDRESS,
    /// SOURCE-ADDRESS and, with `--alt-addr`, CHANGED-ADDRESS, from the address its
    /// CHANGE-REQUEST asks for. Without `--alt-addr` a CHANGE-REQUEST goes unanswered rather
    /// than getting an error: classic clients (pystun3) resend a request whose answer is an
    /// error for ever, and no answer is what such a client reads as "the NAT filtered it".
    fn classic_answer(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let Ok(m) = stun_classic::decode_request(data) else {
            self.metrics.drop(DropReason::Malformed);
            return None;
        };
        let payload = if !m.unknown_required.is_empty() {
            (
                local,
                stun_classic::error_response(&m.tid, 420, "Unknown Attribute"),
            )
        } else if m.change.is_some() && !self.cfg.rfc5780() {
            return None;
        } else {
            let (_, changed) = self.answer_origin(local, Change::NONE);
            let src = self.classic_origin(local, m.change.unwrap_or_default());
            let mut resp = stun_classic::ClassicResponse {
                tid: m.tid,
                mapped: from,
                source: src,
                changed,
            };
            let mut bytes = resp.encode();
            // All-IPv6 (which RFC 3489 never defined) is 92 bytes for a 20-byte request:
            // CHANGED-ADDRESS goes, as OTHER-ADDRESS would, to stay within the bound.
            if bytes.len() > data.len() * MAX_AMPLIFICATION {
                resp.changed = None;
                bytes = resp.encode();
            }
            (src, bytes)
        };
        if payload.1.len() > data.len() * MAX_AMPLIFICATION {
            self.metrics.drop(DropReason::Limit);
            return None;
        }
        self.metrics.stun_requests += 1;
        Some((payload.0, from, payload.1))
    }

    /// Where a classic answer comes from. Not always RFC 3489's address: a classic client
    /// runs every test on one socket (pystun3: test I to the server, II there with both
    /// flags, I again to CHANGED-ADDRESS, III there with "change port"), and a Linux NAT
    /// takes an answer that its filter refuses for a connection of its own to the router. The
    /// client's next packet to that source then clashes with it and leaves from another port
    /// (a "symmetric" NAT), and a later answer from that source joins it and never reaches the
    /// client (a "port-restricted" one): coturn's answers make pystun3 misname both of the
    /// lab's restricted NATs. So every changed answer comes from the other IP at the port the
    /// request came to: never CHANGED-ADDRESS (the other IP's other port, which the client
    /// contacts next), and for test III an IP the client has sent to (test I) at a port it
    /// has not, that has not answered it before — what test III asks about.
    fn classic_origin(&self, local: SocketAddr, change: Change) -> SocketAddr {
        match self.cfg.alt_ip {
            Some(ip2) if change != Change::NONE => {
                let p = self.cfg.primary.ip();
                SocketAddr::new(if local.ip() == p { ip2 } else { p }, local.port())
            }
            _ => local,
        }
    }
}
