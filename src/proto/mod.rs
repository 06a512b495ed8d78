//! The sans-IO protocol cores: plain state machines that take bytes and instants and give back
//! bytes to send and deadlines to wake at (the quinn-proto / str0m model). No sockets, no
//! runtime, no clock and no global RNG in here: the drivers in [`crate::net`] feed them.
pub mod classify;
#[cfg(test)]
pub(crate) mod netsim;
pub mod portmap;
pub mod punch;
pub mod relay;
pub mod stun;
pub mod verdict;
