//! Wire formats: codecs only. Each parser takes untrusted bytes and returns a value or an
//! error, never panics; each value type can `emit` itself. Nothing here knows about sockets,
//! clocks or the other layers.
pub mod framing;
pub mod icmp;
pub mod natpmp;
pub mod netaddr;
pub mod offer;
pub mod pcp;
pub mod rendezvous;
pub mod stun;
pub mod stun_classic;
