//! When UDP to the relay is given up for TCP, sans-IO ([`RelayFallback`]): a relay that does
//! not answer the registration over UDP (UDP blocked on our network) is met over its TCP
//! port instead, once; the peer is told our UDP is blocked, so that no UDP technique is
//! tried and the relay over TCP carries the data at once. A relay silent over TCP too is
//! the end.

use std::time::Duration;

use crate::defaults::RELAY_TCP_CONNECT;
use crate::proto::punch::nat::NatClass;

/// How the driver reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayVia {
    /// Datagrams on the punch socket.
    Udp,
    /// Length-prefixed frames on one TCP connection.
    Tcp,
}

/// What to do about a relay that does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Connect to the relay's TCP port (within this long) and meet again over it.
    ConnectTcp(Duration),
    /// Nothing left to try.
    GiveUp(String),
}

/// The relay transport and its single fallback.
#[derive(Debug)]
pub struct RelayFallback {
    via: RelayVia,
}

impl Default for RelayFallback {
    fn default() -> Self {
        RelayFallback { via: RelayVia::Udp }
    }
}

impl RelayFallback {
    /// Over UDP, with TCP to fall back to.
    pub fn new() -> RelayFallback {
        RelayFallback::default()
    }

    /// How the relay is reached now.
    pub fn via(&self) -> RelayVia {
        self.via
    }

    /// The rendezvous says the relay does not answer (before any path was chosen).
    pub fn unreachable(&mut self) -> Fallback {
        match self.via {
            RelayVia::Udp => Fallback::ConnectTcp(RELAY_TCP_CONNECT),
            RelayVia::Tcp => Fallback::GiveUp("the relay does not answer".into()),
        }
    }

    /// The TCP connection could not be made (`why`: the error, or None after the timeout):
    /// the end, and what to tell the user.
    pub fn tcp_failed(&self, why: Option<&str>) -> String {
        match why {
            None => "the relay does not answer over UDP or TCP".into(),
            Some(e) => format!("the relay does not answer over UDP, and TCP failed: {e}"),
        }
    }

    /// The TCP connection is up: the driver registers again over it, and announces the
    /// returned classification (UDP blocked) to the peer.
    pub fn tcp_connected(&mut self) -> NatClass {
        self.via = RelayVia::Tcp;
        NatClass {
            udp_blocked: true,
            ..NatClass::unknown()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_falls_back_to_tcp_once() {
        let mut f = RelayFallback::new();
        assert_eq!(f.via(), RelayVia::Udp);
        assert_eq!(f.unreachable(), Fallback::ConnectTcp(RELAY_TCP_CONNECT));
        let class = f.tcp_connected();
        assert!(
            class.udp_blocked,
            "the peer must hear that our UDP is blocked"
        );
        assert_eq!(f.via(), RelayVia::Tcp);
        // Silent over TCP too: the end, not another fallback.
        assert!(matches!(f.unreachable(), Fallback::GiveUp(_)));
    }

    #[test]
    fn a_failed_tcp_connection_gives_up() {
        let f = RelayFallback::new();
        assert_eq!(
            f.tcp_failed(None),
            "the relay does not answer over UDP or TCP"
        );
        assert!(f.tcp_failed(Some("refused")).contains("refused"));
        assert_eq!(f.via(), RelayVia::Udp);
    }
}
