//! The mappings natkit made, as records ([`Mapping`]) and in the state file ([`State`]), so a
//! later run can list, renew or delete them, and a crashed run can be cleaned up: routers
//! cannot list NAT-PMP and PCP mappings, and a PCP mapping is deleted only with its nonce.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gateway::PortmapError;
use crate::proto::portmap::{Proto, Via};

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// PCP (RFC 6887).
    Pcp,
    /// NAT-PMP (RFC 6886).
    Natpmp,
    /// UPnP IGD.
    Upnp,
}

impl Method {
    /// The protocols `via` allows, in the order they are tried; for IPv6 pinholes (`v6`)
    /// NAT-PMP is left out: it maps IPv4 only (RFC 6886 §1).
    pub(super) fn order(via: Via, v6: bool) -> &'static [Method] {
        match via {
            Via::Auto if v6 => &[Method::Pcp, Method::Upnp],
            Via::Natpmp if v6 => &[],
            // RFC 6887 §9: PCP first; NAT-PMP is its predecessor; UPnP last (SOAP over HTTP,
            // slowest and the most often broken).
            Via::Auto => &[Method::Pcp, Method::Natpmp, Method::Upnp],
            Via::Pcp => &[Method::Pcp],
            Via::Natpmp => &[Method::Natpmp],
            Via::Upnp => &[Method::Upnp],
        }
    }

    /// The name reports and messages use (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Method::Pcp => "pcp",
            Method::Natpmp => "natpmp",
            Method::Upnp => "upnp",
        }
    }
}

/// What to map.
#[derive(Debug, Clone, Copy)]
pub struct MapRequest {
    /// Protocol.
    pub proto: Proto,
    /// Local port.
    pub internal_port: u16,
    /// Wished external port.
    pub external_port: u16,
    /// Wished lease (0 = permanent, UPnP only).
    pub lifetime: u32,
}

/// What one protocol's router granted, before it becomes a [`Mapping`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    /// The external port granted.
    pub external_port: u16,
    /// Lease granted in seconds (0: permanent).
    pub lifetime: u32,
    /// The router's external address, when known.
    pub external_ip: Option<IpAddr>,
    /// PCP's mapping nonce.
    pub nonce: Option<[u8; 12]>,
    /// The router's epoch (NAT-PMP, PCP).
    pub epoch: Option<u32>,
    /// A UPnP IPv6 pinhole's UniqueID.
    pub pinhole_id: Option<u16>,
}

/// A mapping the router granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mapping {
    /// Protocol used.
    pub via: Method,
    /// Transport.
    pub proto: Proto,
    /// The router.
    pub gateway: Ipv4Addr,
    /// Where it forwards to (an IPv6 one for a pinhole, `--ipv6`).
    pub internal: SocketAddr,
    /// The router's external address, when known.
    pub external_ip: Option<IpAddr>,
    /// The external port granted.
    pub external_port: u16,
    /// Lease granted in seconds (0: permanent).
    pub lifetime: u32,
    /// PCP mapping nonce, hex (needed to renew or delete, RFC 6887 §11.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The router's epoch at the last answer (NAT-PMP/PCP, RFC 6886 §3.6 / RFC 6887 §8.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Unix time of the last grant.
    #[serde(default)]
    pub granted_at: u64,
    /// A UPnP IPv6 pinhole's UniqueID (IGD:2 WANIPv6FirewallControl: needed to renew or
    /// delete it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinhole_id: Option<u16>,
}

impl Mapping {
    /// The record of what `via` granted now.
    pub(super) fn granted(
        via: Method,
        proto: Proto,
        gateway: Ipv4Addr,
        internal: SocketAddr,
        g: Grant,
    ) -> Mapping {
        Mapping {
            via,
            proto,
            gateway,
            internal,
            external_ip: g.external_ip,
            external_port: g.external_port,
            lifetime: g.lifetime,
            nonce: g.nonce.map(|n| hex(&n)),
            epoch: g.epoch,
            granted_at: crate::net::sys::unix_now(),
            pinhole_id: g.pinhole_id,
        }
    }

    /// The PCP nonce recorded for this mapping, if any and well-formed.
    pub(super) fn pcp_nonce(&self) -> Option<[u8; 12]> {
        self.nonce.as_deref().and_then(unhex12)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex12(s: &str) -> Option<[u8; 12]> {
    let mut out = [0u8; 12];
    if s.len() != 24 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// natkit's own records of the mappings it made.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Mappings, newest last.
    pub mappings: Vec<Mapping>,
}

impl State {
    /// Reads the file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, PortmapError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| PortmapError::State(path.to_path_buf(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(PortmapError::State(path.to_path_buf(), e.to_string())),
        }
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), PortmapError> {
        let err = |e: std::io::Error| PortmapError::State(path.to_path_buf(), e.to_string());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let body = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::write(&tmp, body).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    fn same(a: &Mapping, b: &Mapping) -> bool {
        a.via == b.via && a.proto == b.proto && a.gateway == b.gateway && a.internal == b.internal
    }

    /// Records (or replaces) a mapping.
    pub fn record(path: &Path, m: &Mapping) -> Result<(), PortmapError> {
        let mut s = State::load(path)?;
        s.mappings.retain(|x| !State::same(x, m));
        s.mappings.push(m.clone());
        s.save(path)
    }

    /// Forgets a mapping.
    pub fn forget(path: &Path, m: &Mapping) -> Result<(), PortmapError> {
        let mut s = State::load(path)?;
        let before = s.mappings.len();
        s.mappings.retain(|x| !State::same(x, m));
        if s.mappings.len() != before {
            s.save(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_records_replace_and_forget() {
        let dir = std::env::temp_dir().join(format!("natkit-state-{}", std::process::id()));
        let path = dir.join("portmap.json");
        let m = Mapping {
            via: Method::Pcp,
            proto: Proto::Udp,
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            internal: "192.168.1.2:9000".parse().unwrap(),
            external_ip: None,
            external_port: 19000,
            lifetime: 60,
            nonce: Some(hex(&[7; 12])),
            epoch: Some(5),
            granted_at: 1,
            pinhole_id: None,
        };
        State::record(&path, &m).unwrap();
        State::record(
            &path,
            &Mapping {
                lifetime: 120,
                ..m.clone()
            },
        )
        .unwrap();
        let s = State::load(&path).unwrap();
        assert_eq!(s.mappings.len(), 1);
        assert_eq!(s.mappings[0].lifetime, 120);
        assert_eq!(s.mappings[0].pcp_nonce(), Some([7; 12]));
        State::forget(&path, &m).unwrap();
        assert!(State::load(&path).unwrap().mappings.is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(State::load(&path), Err(PortmapError::State(..))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ipv6_pinholes_skip_nat_pmp_and_records_keep_their_keys() {
        assert_eq!(Method::order(Via::Auto, true), [Method::Pcp, Method::Upnp]);
        assert!(Method::order(Via::Natpmp, true).is_empty());
        assert_eq!(Method::order(Via::Natpmp, false), [Method::Natpmp]);
        // A record written before pinholes existed still reads, with the same keys.
        let old = r#"{"mappings":[{"via":"upnp","proto":"tcp","gateway":"192.168.1.1",
            "internal":"192.168.1.2:80","external_ip":null,"external_port":80,"lifetime":0}]}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(s.mappings[0].internal, "192.168.1.2:80".parse().unwrap());
        assert_eq!(s.mappings[0].pinhole_id, None);
        let back = serde_json::to_string(&s.mappings[0]).unwrap();
        assert!(back.contains(r#""internal":"192.168.1.2:80""#), "{back}");
        assert!(!back.contains("pinhole_id"), "{back}");
    }
}
