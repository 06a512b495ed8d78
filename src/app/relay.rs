//! The relay's human and JSON renderings: its startup line and `--print-token`'s output.

use crate::net::relay::Listening;

/// The startup line: JSON (`--json`) or one sentence saying what is served where.
pub fn startup_line(listening: &Listening, json: bool) -> String {
    if json {
        return serde_json::to_string(listening).unwrap_or_default();
    }
    format!(
        "relay: STUN on udp {}; rendezvous and relay on udp+tcp {}; RFC 5780 behaviour discovery {}{}{}",
        listening
            .stun_udp
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        std::iter::once(listening.tcp)
            .chain(listening.other_family)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        if listening.rfc5780 {
            "on"
        } else {
            "off (no --alt-addr)"
        },
        if listening.secret {
            "; tokens required"
        } else {
            ""
        },
        listening
            .metrics
            .map(|m| format!("; metrics on http://{m}/metrics"))
            .unwrap_or_default(),
    )
}

/// A token as `--print-token` prints it: lowercase hex.
pub fn token_hex(token: &[u8]) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}
