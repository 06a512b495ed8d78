//! natkit: host from behind NAT again.
//!
//! Protocol logic lives in sans-IO state machines ([`stun`], [`classify`]); the drivers that
//! own sockets and timers ([`probe`]) are thin. Binaries in `src/bin` only parse arguments
//! ([`cli`]), call the library and render a report through [`report`].
pub mod classify;
pub mod cli;
pub mod defaults;
pub mod exit;
pub mod netaddr;
#[cfg(test)]
pub(crate) mod netsim;
pub mod portmap;
pub mod portmap_io;
pub mod probe;
pub mod punch;
pub mod punch_icmp;
pub mod punch_io;
pub mod punch_quic;
pub mod punch_tcp;
pub mod relay;
pub mod relay_server;
pub mod rendezvous;
pub mod report;
pub mod stun;
pub mod verdict;
