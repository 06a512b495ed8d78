//! Dial-back: the relay probes the requester's own address from elsewhere (UDP from the
//! alternate address, TCP to a port it names), so it can learn whether it is reachable.

use std::net::SocketAddr;
use std::time::Instant;

use super::{source_key, DropReason, Output, Path, Relay};
use crate::defaults;
use crate::wire::rendezvous::{ErrorCode, Frame};

impl Relay {
    pub(super) fn on_dialback(
        &mut self,
        now: Instant,
        path: Path,
        from: SocketAddr,
        proto: u8,
        port: u16,
        nonce: u64,
    ) {
        let key = source_key(from.ip());
        // With --secret, only a source that holds a registration (made with a valid token)
        // may ask: a dial-back is work and traffic towards an address.
        if self.cfg.secret.is_some() && self.slots_of(key) == 0 {
            return self.error(
                path,
                from,
                ErrorCode::Unauthorized,
                "dial-back needs a registration with a valid token",
                DropReason::Unauthorized,
            );
        }
        let per_min = self.cfg.limits.dialbacks_per_min as f64;
        let (mine, _) = self.dial_buckets.take(
            key,
            now,
            (per_min / 60.0, per_min),
            defaults::RELAY_DIAL_SOURCES,
        );
        let all = defaults::RELAY_DIALBACKS_PER_SEC as f64;
        if !mine || !self.dial_global.take(now, all, all) {
            return self.error(
                path,
                from,
                ErrorCode::Limit,
                "dial-back rate exceeded",
                DropReason::DialBack,
            );
        }
        self.metrics.rendezvous_requests += 1;
        let probe = Frame::Probe { nonce }.emit();
        match proto {
            // UDP: to the requester's own observed address, from the alternate address and
            // port (a "stranger" to the requester's NAT).
            17 => {
                let Some(ip2) = self.cfg.family_of(from.ip()).1 else {
                    return self.error(
                        path,
                        from,
                        ErrorCode::Other,
                        "dial-back needs a relay with --alt-addr",
                        DropReason::DialBack,
                    );
                };
                let src = SocketAddr::new(ip2, self.cfg.alt_port);
                if !self.locals.contains(&src) {
                    return self.metrics.drop(DropReason::DialBack);
                }
                self.metrics.dialbacks += 1;
                self.out.push_back(Output::Udp {
                    src,
                    dst: from,
                    payload: probe,
                });
            }
            // TCP: to the requester's own IP, at the port it named.
            _ => {
                if port == 0 {
                    return self.error(
                        path,
                        from,
                        ErrorCode::BadRequest,
                        "port 0",
                        DropReason::DialBack,
                    );
                }
                self.metrics.dialbacks += 1;
                self.out.push_back(Output::DialTcp {
                    dst: SocketAddr::new(from.ip(), port),
                    payload: probe,
                });
            }
        }
    }
}
