//! Port-allocation analysis: how a NAT picks the public port of each new mapping.

use serde::Serialize;

/// How the NAT picks public ports (issue: port prediction for hard NATs).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PortAllocation {
    /// `preserving` (public port = local port), `sequential` (each new mapping moves by
    /// `delta`), `random`, or `unknown` (too few mappings seen).
    pub kind: &'static str,
    /// The step between consecutive mappings, for `sequential`.
    pub delta: Option<i32>,
}

impl PortAllocation {
    /// Too few mappings seen to tell.
    pub const UNKNOWN: PortAllocation = PortAllocation {
        kind: "unknown",
        delta: None,
    };
    /// Public port = local port.
    pub const PRESERVING: PortAllocation = PortAllocation {
        kind: "preserving",
        delta: None,
    };
}

/// Classifies port allocation from the mappings one local socket got towards successive
/// destinations (RFC 4787 §4.2.1 port preservation; consecutive allocation is what port
/// prediction exploits).
pub fn port_allocation(local_port: Option<u16>, mappings: &[u16]) -> PortAllocation {
    let Some(&first) = mappings.first() else {
        return PortAllocation::UNKNOWN;
    };
    if local_port == Some(first) && mappings.iter().all(|&m| m == first) {
        return PortAllocation::PRESERVING;
    }
    if mappings.len() < 3 {
        return PortAllocation::UNKNOWN;
    }
    let deltas: Vec<i32> = mappings
        .windows(2)
        .map(|w| w[1] as i32 - w[0] as i32)
        .collect();
    // Small steps, all in one direction: a sequential allocator. natprobe's other sockets
    // (and other hosts behind the NAT) take ports in between, so the steps are multiples of
    // the allocator's step, which is their greatest common divisor. A random allocator gives
    // three ports within 64 of each other, in order, about once in 10^6 runs.
    let same_sign = deltas.iter().all(|&d| d.signum() == deltas[0].signum());
    if same_sign && deltas.iter().all(|&d| d != 0 && d.abs() <= 64) {
        let step = deltas.iter().fold(0, |g, &d| gcd(g, d.abs()));
        return PortAllocation {
            kind: "sequential",
            delta: Some(step * deltas[0].signum()),
        };
    }
    PortAllocation {
        kind: "random",
        delta: None,
    }
}

fn gcd(a: i32, b: i32) -> i32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
