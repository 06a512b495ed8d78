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
        if !m.unknown_required.is_empty() || (m.change.is_some() && !self.cfg.rfc5780()) {
            // RFC 8489 §6.3.1.1 / RFC 5780 §6.1: 420 for what this server does not do.
            return error(420, "Unknown Attribute").map(|e| (local, from, e));
        }
        let change = m.change.unwrap_or_default();
        let (src, other) = match self.cfg.alt_ip {
            Some(ip2) => {
                let p = self.cfg.primary;
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
        let resp = stun::BindingResponse {
            tid: m.tid,
            mapped: from,
            other_address: other,
            response_origin: other.map(|_| src),
            software: None,
        }
        .encode()
        .ok()?;
        if resp.len() > data.len() * MAX_AMPLIFICATION {
            self.metrics.drop(DropReason::Limit);
            return None;
        }
        self.metrics.stun_requests += 1;
        Some((src, dst, resp))
    }
}
