//! natkit: host from behind NAT again.
//!
//! Protocol logic lives in sans-IO state machines ([`stun`], [`classify`]); the drivers that
//! own sockets and timers ([`probe`]) are thin. Binaries in `src/bin` only parse arguments,
//! call the library and render a report through [`report`].
pub mod classify;
pub mod defaults;
pub mod netaddr;
pub mod stun;
