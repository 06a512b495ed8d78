//! PCP (RFC 6887) client transaction: bytes and `Instant`s in, bytes and deadlines out. The
//! messages are [`crate::wire::pcp`]'s, re-exported here so a client needs one path.
//!
//! Unsolicited ANNOUNCE responses (router restart, §14.1.3) are multicast to port
//! [`CLIENT_PORT`], which natkit's driver may not bind.

use std::time::Instant;

use rand::RngCore;

pub use super::exchange::{Exchange, Protocol};
/// Retransmission schedule shared with STUN (initial RTO, doubling, number of sends).
pub use crate::proto::stun::Schedule;
pub use crate::wire::pcp::{
    protocol_number, Error, Map, Op, PcpOption, Request, Response, ResultCode, CLIENT_PORT,
    MAX_LEN, PORT, VERSION,
};

/// A fresh mapping nonce from `rng` (§11.1: it authenticates later renewals and deletes, so
/// it must be unpredictable to other hosts on the LAN).
pub fn new_nonce(rng: &mut impl RngCore) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// RFC 6887 §8.5: true if the server lost state between two responses, each given as
/// (epoch time, local receive instant): its epoch went back by more than 1 s, or the two
/// clocks advanced at rates differing by more than 1/16 plus 2 s. The caller should then
/// re-create its mappings (§8.5, §14.1.3).
pub fn epoch_went_back(prev: (u32, Instant), cur: (u32, Instant)) -> bool {
    if u64::from(cur.0) + 1 < u64::from(prev.0) {
        return true;
    }
    let server = (i64::from(cur.0) - i64::from(prev.0)) * 1000;
    let client =
        i64::try_from(cur.1.saturating_duration_since(prev.1).as_millis()).unwrap_or(i64::MAX);
    client.saturating_add(2000) < server - server / 16 || server + 2000 < client - client / 16
}

/// What a [`Client`] transaction concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server answered (the result code may still be an error).
    Response(Response),
    /// §9: the gateway answered in NAT-PMP (version 0): use [`super::natpmp`] instead.
    NatPmpOnly,
    /// No answer within the schedule: treat as "no PCP here".
    TimedOut,
}

/// PCP's side of an [`Exchange`].
#[derive(Debug, Clone, Copy)]
pub struct Pcp;

impl Protocol for Pcp {
    type Request = Request;
    type Event = Event;

    /// Retransmissions are identical (§8.1.1).
    fn emit(request: &Request) -> Vec<u8> {
        request.emit()
    }

    /// An answer has the request's opcode and, for MAP, its nonce, protocol and internal
    /// port (§11.3); a NAT-PMP reply (§9) also ends the exchange. Anything else (e.g. an
    /// unsolicited ANNOUNCE during a MAP) is left to the caller.
    fn answer(request: &Request, buf: &[u8]) -> Option<Event> {
        match Response::parse(buf) {
            Ok(resp) => {
                let ours = match (&request.op, &resp.op) {
                    (Op::Announce, Op::Announce) => true,
                    (Op::Map(req), Op::Map(got)) => got.answers(req),
                    _ => false,
                };
                ours.then_some(Event::Response(resp))
            }
            Err(Error::NatPmpReply { .. }) => Some(Event::NatPmpOnly),
            Err(_) => None,
        }
    }

    fn timed_out() -> Event {
        Event::TimedOut
    }
}

/// One request/response exchange with retransmissions (§8.1.1) to the gateway's [`PORT`],
/// on a caller-supplied [`Schedule`] and clock. The RFC's own schedule (3 s initial,
/// unbounded) is far too slow for natkit, hence the parameter.
pub type Client = Exchange<Pcp>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::natpmp::Proto;
    use crate::wire::pcp::fixtures::{client_ip, map_req, map_resp, NONCE};
    use crate::wire::pcp::PROTO_TCP;
    use std::time::Duration;

    #[test]
    fn nat_pmp_reply_ends_the_exchange() {
        // RFC 6886 §3.5: NAT-PMP "unsupported version" answer to our version-2 request.
        let b = [0, 0x81, 0, 1, 0, 0, 0, 42];
        let t0 = Instant::now();
        let mut c = Client::new(t0, map_req(), schedule());
        let _ = c.poll_transmit(t0);
        assert!(c.handle_input(t0, &b));
        assert_eq!(c.poll_event(), Some(Event::NatPmpOnly));
    }

    #[test]
    fn nonces_come_from_the_injected_rng() {
        use rand::SeedableRng;
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        let first = new_nonce(&mut a);
        assert_eq!(first, new_nonce(&mut b), "same seed, same nonce");
        assert_ne!(first, new_nonce(&mut a), "a second nonce differs");
    }

    fn schedule() -> Schedule {
        Schedule {
            rto: Duration::from_millis(50),
            max_sends: 4,
            final_wait: Duration::from_millis(100),
        }
    }

    #[test]
    fn retransmits_identically_then_times_out() {
        let t0 = Instant::now();
        let mut c = Client::new(t0, map_req(), schedule());
        c.cap_deadline(t0 + Duration::from_millis(300));
        let mut sends = vec![];
        let mut now = t0;
        while let Some(at) = c.poll_timeout() {
            now = at;
            c.handle_timeout(now);
            if let Some(b) = c.poll_transmit(now) {
                assert_eq!(b, map_req().emit());
                sends.push((now - t0).as_millis());
            }
        }
        // Uncapped it would send at 0, 50, 150, 350 and give up at 450.
        assert_eq!(sends, [0, 50, 150]);
        assert_eq!((now - t0).as_millis(), 300);
        assert_eq!(c.poll_event(), Some(Event::TimedOut));
    }

    #[test]
    fn ignores_mismatched_nonce_protocol_port() {
        let t0 = Instant::now();
        let mut c = Client::new(t0, map_req(), schedule());
        let _ = c.poll_transmit(t0);
        let later = t0 + Duration::from_millis(60);
        let _ = c.poll_transmit(later);
        let variant = |f: fn(&mut Map)| {
            let mut r = map_resp();
            if let Op::Map(m) = &mut r.op {
                f(m);
            }
            r.emit()
        };
        assert!(!c.handle_input(later, &variant(|m| m.nonce[0] ^= 1)));
        assert!(!c.handle_input(later, &variant(|m| m.protocol = PROTO_TCP)));
        assert!(!c.handle_input(later, &variant(|m| m.internal_port = 1)));
        let announce = Response {
            op: Op::Announce,
            ..map_resp()
        };
        assert!(announce.is_announce());
        assert!(!c.handle_input(later, &announce.emit()));
        assert!(c.handle_input(later, &map_resp().emit()));
        assert!(!c.handle_input(later, &map_resp().emit()), "duplicate");
        assert_eq!(c.rtt(), None, "Karn: retransmitted");
        assert_eq!(c.poll_event(), Some(Event::Response(map_resp())));
        assert!(c.is_done() && c.poll_timeout().is_none());
    }

    #[test]
    fn announce_and_delete() {
        let t0 = Instant::now();
        let mut c = Client::new(t0, Request::announce(client_ip()), schedule());
        let _ = c.poll_transmit(t0);
        let resp = Response {
            result: ResultCode::Success,
            lifetime: 0,
            epoch: 3,
            op: Op::Announce,
            options: vec![],
        };
        assert!(c.handle_input(t0 + Duration::from_millis(4), &resp.emit()));
        assert_eq!(c.rtt(), Some(Duration::from_millis(4)));
        let del = Request::delete(client_ip(), Map::new(NONCE, Proto::Tcp, 80, 0));
        assert_eq!(&del.emit()[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn epoch_checks() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(!epoch_went_back((100, t0), (160, t0 + s(60))));
        assert!(!epoch_went_back((100, t0), (99, t0)));
        assert!(epoch_went_back((100, t0), (98, t0 + s(1))));
        // Server clock far slower or faster than ours.
        assert!(epoch_went_back((1000, t0), (1010, t0 + s(600))));
        assert!(epoch_went_back((1000, t0), (2000, t0 + s(60))));
        assert!(!epoch_went_back((u32::MAX - 1, t0 + s(5)), (u32::MAX, t0)));
    }
}
