//! STUN Binding answers with RFC 5780 behaviour discovery (CHANGE-REQUEST, RESPONSE-PORT,
//! OTHER-ADDRESS, RESPONSE-ORIGIN), bounded by [`MAX_AMPLIFICATION`].

use std::net::SocketAddr;

use super::{DropReason, Output, Relay, MAX_AMPLIFICATION};
use crate::wire::stun::{self, Class};

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
        let (p, alt) = self.cfg.family_of(local.ip());
        if !m.unknown_required.is_empty() || (m.change.is_some() && alt.is_none()) {
            // RFC 8489 §6.3.1.1 / RFC 5780 §6.1: 420 for what this server does not do.
            return error(420, "Unknown Attribute").map(|e| (local, from, e));
        }
        let change = m.change.unwrap_or_default();
        let (src, other) = match alt {
            Some(ip2) => {
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
            None => (local, None),
        };
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
}
