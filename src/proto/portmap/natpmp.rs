//! NAT-PMP (RFC 6886) client transaction: bytes and `Instant`s in, bytes and deadlines out.
//! The messages are [`crate::wire::natpmp`]'s, re-exported here so a client needs one path.
//!
//! natkit's driver may not bind the announcement port [`CLIENT_PORT`] (§3.2.1), which only
//! delays noticing an address change until the next renewal.

use std::time::{Duration, Instant};

pub use super::exchange::{Exchange, Protocol};
/// Retransmission schedule shared with STUN (initial RTO, doubling, number of sends).
pub use crate::proto::stun::Schedule;
pub use crate::wire::natpmp::{Error, Request, Response, ResultCode, CLIENT_PORT, PORT, VERSION};

/// RFC 6886 §3.1: 250 ms initial RTO, doubling, 9 sends. natkit usually wants a faster one.
pub const RFC_SCHEDULE: Schedule = Schedule {
    rto: Duration::from_millis(250),
    max_sends: 9,
    final_wait: Duration::from_secs(64),
};

/// RFC 6886 §3.6: true if the gateway rebooted or lost its mappings between two responses,
/// each given as (seconds since start of epoch, local receive instant). It has if its epoch
/// went back by more than 1 s, or advanced by less than 7/8 of the local elapsed time minus
/// 2 s of slack. The caller should then renew all mappings.
pub fn epoch_went_back(prev: (u32, Instant), cur: (u32, Instant)) -> bool {
    if u64::from(cur.0) + 1 < u64::from(prev.0) {
        return true;
    }
    let server_ms = (i64::from(cur.0) - i64::from(prev.0)) * 1000;
    let client_ms =
        i64::try_from(cur.1.saturating_duration_since(prev.1).as_millis()).unwrap_or(i64::MAX);
    server_ms + 2000 < client_ms / 8 * 7
}

/// What a [`Client`] transaction concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The gateway answered (the result code may still be an error).
    Response(Response),
    /// No answer within the schedule: treat as "no NAT-PMP here".
    TimedOut,
}

/// NAT-PMP's side of an [`Exchange`].
#[derive(Debug, Clone, Copy)]
pub struct NatPmp;

impl Protocol for NatPmp {
    type Request = Request;
    type Event = Event;

    fn emit(request: &Request) -> Vec<u8> {
        request.emit()
    }

    /// An answer has the request's opcode and, for mappings, its internal port (§3.3).
    fn answer(request: &Request, buf: &[u8]) -> Option<Event> {
        let resp = Response::parse(buf).ok()?;
        if resp.opcode() != request.opcode() {
            return None;
        }
        if let (
            Request::Map { internal_port, .. },
            Response::Map {
                internal_port: got, ..
            },
        ) = (request, &resp)
        {
            if internal_port != got {
                return None;
            }
        }
        Some(Event::Response(resp))
    }

    fn timed_out() -> Event {
        Event::TimedOut
    }
}

/// One request/response exchange with retransmissions (RFC 6886 §3.1) to the gateway's
/// [`PORT`], on a caller-supplied [`Schedule`] and clock.
pub type Client = Exchange<NatPmp>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::natpmp::fixtures::map_ok;
    use crate::wire::natpmp::Proto;

    fn schedule() -> Schedule {
        Schedule {
            rto: Duration::from_millis(100),
            max_sends: 3,
            final_wait: Duration::from_millis(200),
        }
    }

    #[test]
    fn retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut c = Client::new(t0, Request::ExternalAddress, schedule());
        let mut sends = vec![];
        let mut now = t0;
        while let Some(at) = c.poll_timeout() {
            now = at;
            c.handle_timeout(now);
            while let Some(b) = c.poll_transmit(now) {
                assert_eq!(b, [0, 0]);
                sends.push((now - t0).as_millis());
            }
        }
        assert_eq!(sends, [0, 100, 300]);
        assert_eq!((now - t0).as_millis(), 500);
        assert_eq!(c.poll_event(), Some(Event::TimedOut));
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn matches_opcode_and_port() {
        let t0 = Instant::now();
        let req = Request::Map {
            proto: Proto::Tcp,
            internal_port: 8080,
            external_port: 8080,
            lifetime: 7200,
        };
        let mut c = Client::new(t0, req, schedule());
        assert!(c.poll_transmit(t0).is_some());
        let later = t0 + Duration::from_millis(20);
        let mut wrong_port = map_ok();
        if let Response::Map { internal_port, .. } = &mut wrong_port {
            *internal_port = 9;
        }
        assert!(!c.handle_input(later, &wrong_port.emit()));
        let mut udp = map_ok();
        if let Response::Map { proto, .. } = &mut udp {
            *proto = Proto::Udp;
        }
        assert!(!c.handle_input(later, &udp.emit()));
        assert!(!c.handle_input(later, b"\x00"));
        assert!(c.handle_input(later, &map_ok().emit()));
        assert!(!c.handle_input(later, &map_ok().emit()), "duplicate");
        assert_eq!(c.rtt(), Some(Duration::from_millis(20)));
        assert_eq!(c.poll_event(), Some(Event::Response(map_ok())));
        assert!(c.is_done() && c.poll_timeout().is_none());
    }

    #[test]
    fn bare_error_answers_the_request() {
        let t0 = Instant::now();
        let mut c = Client::new(t0, Request::delete(Proto::Udp, 5), schedule());
        let _ = c.poll_transmit(t0);
        assert!(c.handle_input(t0, &[0, 129, 0, 2, 0, 0, 0, 1]));
        assert!(matches!(
            c.poll_event(),
            Some(Event::Response(Response::Bare {
                result: ResultCode::NotAuthorized,
                ..
            }))
        ));
    }

    #[test]
    fn epoch_checks() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Steady clocks: fine.
        assert!(!epoch_went_back((100, t0), (160, t0 + s(60))));
        // Gateway clock slightly slow but within 7/8: fine.
        assert!(!epoch_went_back((100, t0), (155, t0 + s(60))));
        // Went back by more than a second: reboot.
        assert!(epoch_went_back((100, t0), (98, t0 + s(1))));
        assert!(!epoch_went_back((100, t0), (99, t0)));
        // Advanced far too little: rebooted and counted up again.
        assert!(epoch_went_back((1000, t0), (1010, t0 + s(600))));
        // Local instants out of order don't panic.
        assert!(!epoch_went_back((100, t0 + s(5)), (100, t0)));
    }
}
