//! The relay's counters and their Prometheus text.

/// Reasons a request was dropped, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Over the per-source rate.
    RateLimited,
    /// Source table full.
    SourcesFull,
    /// Not STUN, not ours, or malformed.
    Malformed,
    /// Source in the deny list.
    Denied,
    /// PADDING refused.
    Padding,
    /// Missing or bad token.
    Unauthorized,
    /// Data or control for a session the sender is not registered in.
    NoSession,
    /// A cap or quota.
    Limit,
    /// Dial-back over its rate or impossible.
    DialBack,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::SourcesFull => "sources_full",
            DropReason::Malformed => "malformed",
            DropReason::Denied => "denied",
            DropReason::Padding => "padding",
            DropReason::Unauthorized => "unauthorized",
            DropReason::NoSession => "no_session",
            DropReason::Limit => "limit",
            DropReason::DialBack => "dialback",
        }
    }
}

/// Counters, rendered as Prometheus text by [`Metrics::render`].
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// STUN Binding requests answered.
    pub stun_requests: u64,
    /// Rendezvous frames accepted.
    pub rendezvous_requests: u64,
    /// Sessions created.
    pub sessions_created: u64,
    /// Packets relayed.
    pub relayed_packets: u64,
    /// Payload bytes relayed.
    pub relayed_bytes: u64,
    /// Dial-back probes sent.
    pub dialbacks: u64,
    /// Candidates left out of a `Peer` frame to keep within [`super::MAX_AMPLIFICATION`].
    pub peer_candidates_trimmed: u64,
    /// Sources evicted from the full rate-limit table (least recently used first).
    pub sources_evicted: u64,
    /// Return-routability cookies sent (a UDP request without a valid one).
    pub cookies_sent: u64,
    /// Drops by reason.
    pub drops: std::collections::BTreeMap<DropReason, u64>,
}

impl Metrics {
    pub(super) fn drop(&mut self, why: DropReason) {
        *self.drops.entry(why).or_default() += 1;
    }

    /// Number of drops for a reason.
    pub fn drops_for(&self, why: DropReason) -> u64 {
        self.drops.get(&why).copied().unwrap_or(0)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, sessions_active: usize) -> String {
        let mut s = String::new();
        let mut c = |name: &str, help: &str, v: u64| {
            s.push_str(&format!(
                "# HELP natkit_relay_{name} {help}\n# TYPE natkit_relay_{name} counter\nnatkit_relay_{name} {v}\n"
            ));
        };
        c(
            "stun_requests_total",
            "STUN Binding requests answered.",
            self.stun_requests,
        );
        c(
            "rendezvous_requests_total",
            "Rendezvous frames accepted.",
            self.rendezvous_requests,
        );
        c(
            "sessions_created_total",
            "Sessions created.",
            self.sessions_created,
        );
        c(
            "relayed_packets_total",
            "Datagrams relayed.",
            self.relayed_packets,
        );
        c(
            "relayed_bytes_total",
            "Payload bytes relayed.",
            self.relayed_bytes,
        );
        c("dialbacks_total", "Dial-back probes sent.", self.dialbacks);
        c(
            "peer_candidates_trimmed_total",
            "Candidates left out of a Peer frame to keep the amplification bound.",
            self.peer_candidates_trimmed,
        );
        c(
            "sources_evicted_total",
            "Least recently used sources evicted from the full rate-limit table.",
            self.sources_evicted,
        );
        c(
            "cookies_sent_total",
            "Return-routability cookies sent to UDP requests without a valid one.",
            self.cookies_sent,
        );
        s.push_str(
            "# HELP natkit_relay_sessions Sessions now.\n# TYPE natkit_relay_sessions gauge\n",
        );
        s.push_str(&format!("natkit_relay_sessions {sessions_active}\n"));
        s.push_str("# HELP natkit_relay_drops_total Requests dropped, by reason.\n");
        s.push_str("# TYPE natkit_relay_drops_total counter\n");
        for d in [
            DropReason::RateLimited,
            DropReason::SourcesFull,
            DropReason::Malformed,
            DropReason::Denied,
            DropReason::Padding,
            DropReason::Unauthorized,
            DropReason::NoSession,
            DropReason::Limit,
            DropReason::DialBack,
        ] {
            s.push_str(&format!(
                "natkit_relay_drops_total{{reason=\"{}\"}} {}\n",
                d.label(),
                self.drops_for(d)
            ));
        }
        s
    }
}
