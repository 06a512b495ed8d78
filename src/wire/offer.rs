//! `--manual` offers: the one line each side prints and the other pastes, instead of a
//! rendezvous server. Plain text so a person can read and check it:
//! `natkit-punch1:203.0.113.21:40000,192.168.1.2:40000` — the candidate addresses of the
//! side's punch socket (server-reflexive from `--stun`, a router-mapped port, host).
//!
//! The offer carries no secret: the code (typed on both sides) keys the PAKE, so a tampered
//! offer can at worst make the punch fail, never let a third party in.

use std::net::SocketAddr;

/// Most candidate addresses in an offer (and probed at once by a punch).
pub const MAX_TARGETS: usize = 16;

/// First bytes of every offer (the version is part of it).
pub const PREFIX: &str = "natkit-punch1:";

/// Why an offer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not an offer at all.
    #[error("not a punch offer (it should start with {PREFIX})")]
    Prefix,
    /// An address with a zone id, meaningless to a peer on another link.
    #[error("{0:?} in the offer has a zone id (%…): a peer elsewhere cannot use one, give a global address")]
    Zone(String),
    /// A candidate is not `IP:PORT`.
    #[error("bad address {0:?} in the offer")]
    Addr(String),
    /// No candidate, or too many.
    #[error("an offer needs 1 to {MAX_TARGETS} addresses")]
    Count,
}

/// The line to print.
pub fn format(candidates: &[SocketAddr]) -> String {
    let list: Vec<String> = candidates.iter().map(|a| a.to_string()).collect();
    format!("{PREFIX}{}", list.join(","))
}

/// Reads a pasted offer (surrounding whitespace, as terminals add, is ignored).
pub fn parse(s: &str) -> Result<Vec<SocketAddr>, OfferError> {
    let body = s.trim().strip_prefix(PREFIX).ok_or(OfferError::Prefix)?;
    let mut out = Vec::new();
    for part in body.split(',').filter(|p| !p.trim().is_empty()) {
        if part.contains('%') {
            return Err(OfferError::Zone(part.trim().to_string()));
        }
        let a: SocketAddr = part
            .trim()
            .parse()
            .map_err(|_| OfferError::Addr(part.trim().to_string()))?;
        // IPv4-mapped IPv6 is the IPv4 peer it names (the punch socket reports it so).
        let a = SocketAddr::new(a.ip().to_canonical(), a.port());
        if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
            return Err(OfferError::Addr(part.trim().to_string()));
        }
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() || out.len() > MAX_TARGETS {
        return Err(OfferError::Count);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_and_bad_ones_are_named() {
        let c: Vec<SocketAddr> = vec![
            "203.0.113.21:40000".parse().unwrap(),
            "192.168.1.2:40000".parse().unwrap(),
            "[2001:db8::1]:5".parse().unwrap(),
        ];
        let line = format(&c);
        assert_eq!(parse(&format!("  {line}\n")).unwrap(), c);
        assert_eq!(parse("hello"), Err(OfferError::Prefix));
        assert_eq!(parse(PREFIX), Err(OfferError::Count));
        assert!(matches!(
            parse(&format!("{PREFIX}1.2.3.4")),
            Err(OfferError::Addr(_))
        ));
        assert!(matches!(
            parse(&format!("{PREFIX}1.2.3.4:0")),
            Err(OfferError::Addr(_))
        ));
        assert!(matches!(
            parse(&format!("{PREFIX}0.0.0.0:5")),
            Err(OfferError::Addr(_))
        ));
        let many: Vec<String> = (1..=17).map(|p| format!("10.0.0.1:{p}")).collect();
        assert_eq!(
            parse(&format!("{PREFIX}{}", many.join(","))),
            Err(OfferError::Count)
        );
        // Issue 14: IPv6 with brackets; a zone id refused by name; IPv4-mapped folded.
        assert_eq!(
            parse("natkit-punch1:[2001:db8::1]:3478,[::ffff:203.0.113.5]:9"),
            Ok(vec![
                "[2001:db8::1]:3478".parse().unwrap(),
                "203.0.113.5:9".parse().unwrap()
            ])
        );
        assert!(matches!(
            parse("natkit-punch1:[fe80::1%2]:5"),
            Err(OfferError::Zone(_))
        ));
        assert!(matches!(
            parse("natkit-punch1:2001:db8::1:5"),
            Err(OfferError::Addr(_))
        ));
        // Never panics on junk.
        for junk in [
            "natkit-punch1:,,,",
            "natkit-punch1:[::1",
            "natkit-punch1:💥:1",
        ] {
            let _ = parse(junk);
        }
    }
}
