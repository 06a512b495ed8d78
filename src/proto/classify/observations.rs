//! What a run observed, before any verdict: the result types natprobe's report is built from.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::PortAllocation;

/// RFC 4787 behaviour classes, as used in natprobe's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Same mapping / any source let in (RFC 4787 §4.1, §5).
    EndpointIndependent,
    /// Depends on the remote IP only.
    AddressDependent,
    /// Depends on the remote IP and port.
    AddressAndPortDependent,
    /// Could not be determined (the report says why).
    Unknown,
    /// No translation at all (mapping only).
    None,
}

impl Behaviour {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::Unknown => "unknown",
            Behaviour::None => "none",
        }
    }
}

/// What natprobe learned about one server.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerReport {
    /// Address probed.
    pub addr: SocketAddr,
    /// Round-trip time of the first Binding, when it was not retransmitted.
    pub rtt_ms: Option<f64>,
    /// Whether the server answered and is trusted for behaviour discovery: a valid
    /// OTHER-ADDRESS, and a RESPONSE-ORIGIN equal to the address the answer came from.
    pub rfc5780: bool,
    /// Whether it answered over UDP.
    pub answered: bool,
    /// The mapped address it reported for the main socket.
    pub mapped: Option<SocketAddr>,
    /// Its OTHER-ADDRESS, as sent (even when not trusted).
    pub other_address: Option<SocketAddr>,
    /// Its SOFTWARE attribute.
    pub software: Option<String>,
    /// Problems found with this server's answers.
    pub problems: Vec<String>,
}

impl ServerReport {
    /// Nothing heard from `addr` yet.
    pub(super) fn new(addr: SocketAddr) -> Self {
        ServerReport {
            addr,
            rtt_ms: None,
            rfc5780: false,
            answered: false,
            mapped: None,
            other_address: None,
            software: None,
            problems: Vec::new(),
        }
    }
}

/// One router on the path, found with a TTL-limited probe.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hop {
    /// IP TTL of the probe.
    pub ttl: u8,
    /// The router that answered with ICMP Time Exceeded.
    pub addr: IpAddr,
}

/// Binding-lifetime search result.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Lifetime {
    /// Longest idle gap after which the mapping still worked (seconds).
    pub alive_s: Option<u64>,
    /// Shortest idle gap after which it was gone (seconds).
    pub expired_s: Option<u64>,
}

/// Everything one run observed, before any verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Observations {
    /// Any server answered over UDP.
    pub udp: bool,
    /// Whether STUN over TCP answered (None when not tried).
    pub tcp: Option<bool>,
    /// The main socket's local address.
    pub local_addr: Option<SocketAddr>,
    /// The main socket's address as the primary server saw it.
    pub mapped_addr: Option<SocketAddr>,
    /// The server whose answers the classification rests on.
    pub primary: Option<SocketAddr>,
    /// Whether any translation happens.
    pub behind_nat: Option<bool>,
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: Behaviour,
    /// Why `mapping` is what it is when not measured directly.
    pub mapping_note: Option<String>,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: Behaviour,
    /// Why `filtering` is unknown, if it is.
    pub filtering_note: Option<String>,
    /// Hairpinning (RFC 4787 §6), None when not tested.
    pub hairpinning: Option<bool>,
    /// Whether the NAT kept the local port.
    pub port_preserved: Option<bool>,
    /// How public ports are allocated.
    pub port_allocation: PortAllocation,
    /// Routers on the path.
    pub hops: Vec<Hop>,
    /// Binding lifetime, when searched.
    pub lifetime: Option<Lifetime>,
    /// Per-server details.
    pub servers: Vec<ServerReport>,
    /// Datagrams that were ignored, with why.
    pub ignored: Vec<String>,
}

impl Observations {
    /// The observations of a run that could not start because no server name resolved.
    pub fn unresolved() -> Self {
        let why = Some("no server could be resolved".to_string());
        Observations {
            udp: false,
            tcp: None,
            local_addr: None,
            mapped_addr: None,
            primary: None,
            behind_nat: None,
            mapping: Behaviour::Unknown,
            mapping_note: why.clone(),
            filtering: Behaviour::Unknown,
            filtering_note: why,
            hairpinning: None,
            port_preserved: None,
            port_allocation: PortAllocation::UNKNOWN,
            hops: Vec::new(),
            lifetime: None,
            servers: Vec::new(),
            ignored: Vec::new(),
        }
    }
}
