//! STUN client transactions (RFC 8489 §6.2.1) as a sans-IO timer: when to (re)send a request,
//! when to give up, and the RTT sample it yields. The codec is [`crate::wire::stun`].
use std::time::{Duration, Instant};

/// Retransmission schedule for one client transaction (RFC 8489 §6.2.1: the interval doubles
/// after each send). Unlike a fixed 500 ms RTO, the initial RTO comes from a measured RTT
/// when one is known, so a negative answer ("no response") is reached in a few RTTs instead of
/// the 3 s other tools wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// First retransmission timeout.
    pub rto: Duration,
    /// How many times the request is sent in total.
    pub max_sends: u32,
    /// Give up this long after the last send.
    pub final_wait: Duration,
}

/// One client transaction: when to (re)send, when to give up, and the RTT sample (Karn's
/// rule: only from a request that was sent once).
#[derive(Debug, Clone)]
pub struct Transaction {
    schedule: Schedule,
    started: Instant,
    sends: u32,
    next_send: Option<Instant>,
    give_up_at: Instant,
    last_sent: Option<Instant>,
    done: bool,
}

impl Transaction {
    /// Starts a transaction; its first send is due at `now`.
    pub fn new(now: Instant, schedule: Schedule) -> Self {
        let total = Self::span(&schedule);
        Transaction {
            schedule,
            started: now,
            sends: 0,
            next_send: Some(now),
            give_up_at: now + total,
            last_sent: None,
            done: false,
        }
    }

    /// Caps the give-up instant (e.g. the run's overall deadline).
    pub fn cap_deadline(&mut self, at: Instant) {
        if at < self.give_up_at {
            self.give_up_at = at;
        }
    }

    fn span(s: &Schedule) -> Duration {
        // Sends at 0, rto, 3 rto, 7 rto, …; the last send at (2^(n-1) - 1) rto.
        let n = s.max_sends.clamp(1, 16);
        s.rto * ((1u32 << (n - 1)) - 1) + s.final_wait
    }

    /// True when a send is due at `now`; records the send.
    pub fn poll_send(&mut self, now: Instant) -> bool {
        if self.done {
            return false;
        }
        match self.next_send {
            Some(t) if t <= now && now < self.give_up_at => {
                self.sends += 1;
                self.last_sent = Some(now);
                self.next_send = if self.sends < self.schedule.max_sends {
                    Some(now + self.schedule.rto * (1u32 << (self.sends - 1).min(15)))
                } else {
                    None
                };
                true
            }
            _ => false,
        }
    }

    /// Next instant something happens (a send or giving up).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        Some(match self.next_send {
            Some(t) => t.min(self.give_up_at),
            None => self.give_up_at,
        })
    }

    /// True once `now` has passed the give-up instant with no answer.
    pub fn timed_out(&self, now: Instant) -> bool {
        !self.done && now >= self.give_up_at
    }

    /// Marks the transaction answered; returns an RTT sample if the request went out once.
    pub fn answered(&mut self, now: Instant) -> Option<Duration> {
        self.done = true;
        if self.sends == 1 {
            Some(now.saturating_duration_since(self.started))
        } else {
            None
        }
    }

    /// Stops the transaction without an answer.
    pub fn cancel(&mut self) {
        self.done = true;
    }

    /// Whether it is finished (answered or cancelled).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// How many times the request went out.
    pub fn sends(&self) -> u32 {
        self.sends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_and_gives_up() {
        let t0 = Instant::now();
        let s = Schedule {
            rto: Duration::from_millis(100),
            max_sends: 4,
            final_wait: Duration::from_millis(200),
        };
        let mut t = Transaction::new(t0, s);
        let mut sends = vec![];
        let mut now = t0;
        while let Some(next) = t.poll_timeout() {
            now = next;
            if t.timed_out(now) {
                break;
            }
            if t.poll_send(now) {
                sends.push(now - t0);
            }
        }
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 100, 300, 700]);
        assert_eq!((now - t0).as_millis(), 900);
    }

    #[test]
    fn rtt_sample_only_without_retransmission() {
        let t0 = Instant::now();
        let s = Schedule {
            rto: Duration::from_millis(50),
            max_sends: 3,
            final_wait: Duration::from_millis(50),
        };
        let mut t = Transaction::new(t0, s);
        assert!(t.poll_send(t0));
        assert_eq!(
            t.answered(t0 + Duration::from_millis(7)),
            Some(Duration::from_millis(7))
        );
        let mut t = Transaction::new(t0, s);
        assert!(t.poll_send(t0));
        assert!(t.poll_send(t0 + Duration::from_millis(50)));
        assert_eq!(t.answered(t0 + Duration::from_millis(60)), None);
    }
}
