//! Asking the router for a port: NAT-PMP (RFC 6886) and PCP (RFC 6887) as sans-IO codecs of
//! natkit's own ([`natpmp`], [`pcp`]).

pub mod exchange;
pub mod natpmp;
pub mod pcp;

use serde::Serialize;

/// Transport protocol of a mapping.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}
