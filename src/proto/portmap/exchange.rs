//! One request/answer exchange with a gateway, with retransmissions on a caller-supplied
//! [`Schedule`] and clock: the part NAT-PMP (RFC 6886 §3.1) and PCP (RFC 6887 §8.1.1) share.
//! Each protocol says how to encode its request and which datagrams answer it.

use std::fmt;
use std::time::{Duration, Instant};

use crate::proto::stun::{Schedule, Transaction};

/// A gateway protocol's side of an [`Exchange`].
pub trait Protocol {
    /// What is asked.
    type Request: Clone + fmt::Debug;
    /// What the exchange concludes.
    type Event: Clone + fmt::Debug;
    /// The request's bytes; every retransmission is the same bytes.
    fn emit(request: &Self::Request) -> Vec<u8>;
    /// The outcome if `buf` answers `request`; `None` leaves the datagram to other
    /// consumers of the socket.
    fn answer(request: &Self::Request, buf: &[u8]) -> Option<Self::Event>;
    /// The outcome when the schedule runs out unanswered.
    fn timed_out() -> Self::Event;
}

/// A request in flight: bytes and `Instant`s in, bytes, deadlines and one event out.
#[derive(Debug, Clone)]
pub struct Exchange<P: Protocol> {
    request: P::Request,
    bytes: Vec<u8>,
    tx: Transaction,
    rtt: Option<Duration>,
    event: Option<P::Event>,
}

impl<P: Protocol> Exchange<P> {
    /// Starts the exchange; the first send is due at `now`.
    pub fn new(now: Instant, request: P::Request, schedule: Schedule) -> Self {
        Exchange {
            bytes: P::emit(&request),
            request,
            tx: Transaction::new(now, schedule),
            rtt: None,
            event: None,
        }
    }

    /// The request being sent.
    pub fn request(&self) -> &P::Request {
        &self.request
    }

    /// Gives up no later than `at` (e.g. the run's overall deadline).
    pub fn cap_deadline(&mut self, at: Instant) {
        self.tx.cap_deadline(at);
    }

    /// Bytes to send to the gateway if a (re)transmission is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.tx.poll_send(now).then(|| self.bytes.clone())
    }

    /// Feeds a datagram from the gateway. True if it is the first answer to this request;
    /// anything else is left to other consumers of the socket.
    pub fn handle_input(&mut self, now: Instant, buf: &[u8]) -> bool {
        if self.tx.is_done() {
            return false;
        }
        let Some(event) = P::answer(&self.request, buf) else {
            return false;
        };
        self.rtt = self.tx.answered(now);
        self.event = Some(event);
        true
    }

    /// Next instant [`Exchange::handle_timeout`] or [`Exchange::poll_transmit`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }

    /// Advances the clock; produces the protocol's timed-out event once the schedule is
    /// exhausted.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.tx.timed_out(now) {
            self.tx.cancel();
            self.event = Some(P::timed_out());
        }
    }

    /// The outcome, once.
    pub fn poll_event(&mut self) -> Option<P::Event> {
        self.event.take()
    }

    /// Answered or timed out.
    pub fn is_done(&self) -> bool {
        self.tx.is_done()
    }

    /// Round-trip time, if answered after a single send (Karn's rule).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}
