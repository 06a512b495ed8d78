//! The JSON contract of `natprobe --json` (issue 6, Deliver 6): every key the issue names is
//! present with its type, whatever the run found. Used by every natprobe run of the lab tests
//! and by the loopback tests (`#[path]`-included there, so it stands alone).
use serde_json::Value;
use std::net::SocketAddr;

/// The RFC 4787 classes natprobe may report.
const CLASSES: [&str; 4] = [
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
    "unknown",
];

fn key<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k)
        .unwrap_or_else(|| panic!("natprobe JSON has no key {k:?}: {v}"))
}

fn bool_or_null(v: &Value, k: &str) {
    let x = key(v, k);
    assert!(
        x.is_boolean() || x.is_null(),
        "{k} must be bool or null, got {x}: {v}"
    );
}

fn addr_or_null(v: &Value, k: &str) {
    let x = key(v, k);
    assert!(
        x.is_null() || x.as_str().is_some_and(|s| s.parse::<SocketAddr>().is_ok()),
        "{k} must be an IP:port string or null, got {x}: {v}"
    );
}

fn strings(v: &Value, k: &str) {
    let x = key(v, k);
    assert!(
        x.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        "{k} must be a list of strings, got {x}: {v}"
    );
}

/// Panics unless `v` keeps the contract: `schema` integer, `udp` bool, `local_addr`,
/// `mapped_addr`, `behind_nat` bool, `cgnat` bool, `mapping`/`filtering` from the allowed set,
/// `hairpinning` and `port_preserved` bool or null, `binding_lifetime_s` number or null,
/// `servers` (`addr`, `rtt_ms`, `rfc5780`), `verdict` (`can_host` bool, `reasons` and
/// `advice` lists), `elapsed_ms`.
pub fn assert_contract(v: &Value) {
    assert!(key(v, "schema").is_u64(), "schema must be an integer: {v}");
    let udp = key(v, "udp");
    assert!(udp.is_boolean(), "udp must be a bool: {v}");
    addr_or_null(v, "local_addr");
    addr_or_null(v, "mapped_addr");
    assert!(
        key(v, "behind_nat").is_boolean(),
        "behind_nat must be a bool: {v}"
    );
    assert!(key(v, "cgnat").is_boolean(), "cgnat must be a bool: {v}");
    let mapping = key(v, "mapping").as_str().unwrap_or_default();
    assert!(
        CLASSES.contains(&mapping) || mapping == "none",
        "mapping {mapping:?}: {v}"
    );
    let filtering = key(v, "filtering").as_str().unwrap_or_default();
    assert!(CLASSES.contains(&filtering), "filtering {filtering:?}: {v}");
    bool_or_null(v, "hairpinning");
    bool_or_null(v, "port_preserved");
    let life = key(v, "binding_lifetime_s");
    assert!(
        life.is_number() || life.is_null(),
        "binding_lifetime_s must be a number or null: {v}"
    );
    let servers = key(v, "servers")
        .as_array()
        .unwrap_or_else(|| panic!("servers must be a list: {v}"));
    assert!(!servers.is_empty(), "servers lists what was asked: {v}");
    for s in servers {
        addr_or_null(s, "addr");
        let rtt = key(s, "rtt_ms");
        assert!(rtt.is_number() || rtt.is_null(), "rtt_ms: {s}");
        assert!(key(s, "rfc5780").is_boolean(), "rfc5780: {s}");
    }
    let verdict = key(v, "verdict");
    assert!(
        key(verdict, "can_host").is_boolean(),
        "verdict.can_host: {v}"
    );
    strings(verdict, "reasons");
    strings(verdict, "advice");
    assert!(key(v, "elapsed_ms").is_u64(), "elapsed_ms: {v}");
    let v6 = assert_ipv6(v);
    // Schema 2 (issue 14): either family may host.
    assert_eq!(
        v["verdict"]["can_host"].as_bool(),
        Some(v6["can_host"] == true || (udp == true && can_host_v4(v))),
        "verdict.can_host must be true exactly when a family can host: {v}"
    );
    if udp == false {
        // Nothing answered: nothing is known, and the JSON says so without nulls where the
        // issue promises a bool.
        assert_eq!(v["behind_nat"], false, "{v}");
        if v6["udp"] == false {
            assert_eq!(v["verdict"]["can_host"], false, "{v}");
        }
    } else {
        assert!(
            v["mapped_addr"].is_string(),
            "udp works, so a mapped address: {v}"
        );
        assert!(
            v["local_addr"].is_string(),
            "udp works, so a local address: {v}"
        );
    }
}

/// IPv4 hosting as the top level shows it: an endpoint-independent filter (behind an
/// endpoint-independent mapping, when translated).
fn can_host_v4(v: &Value) -> bool {
    v["filtering"] == "endpoint-independent"
        && (v["behind_nat"] == false || v["mapping"] == "endpoint-independent")
}

/// The `ipv6` object of schema 2: `udp`, `translated`, `can_host` bools, `address` an IPv6
/// address or null, `mapped_addr` an IPv6 `[addr]:port` or null, `filtering` from the allowed
/// set, `tcp` bool or null, `reasons` a list of strings (never empty when `udp` is false).
pub fn assert_ipv6(v: &Value) -> &Value {
    assert_eq!(v["schema"], 2, "{v}");
    let v6 = key(v, "ipv6");
    let keys: Vec<&str> = v6
        .as_object()
        .unwrap_or_else(|| panic!("ipv6 must be an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = [
        "udp",
        "address",
        "mapped_addr",
        "translated",
        "filtering",
        "tcp",
        "can_host",
        "reasons",
    ];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want, "ipv6 has exactly the issue's keys: {v6}");
    for k in ["udp", "translated", "can_host"] {
        assert!(key(v6, k).is_boolean(), "ipv6.{k} must be a bool: {v6}");
    }
    bool_or_null(v6, "tcp");
    let a = key(v6, "address");
    assert!(
        a.is_null()
            || a.as_str()
                .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()),
        "ipv6.address must be an IPv6 address or null: {v6}"
    );
    let m = key(v6, "mapped_addr");
    assert!(
        m.is_null()
            || m.as_str()
                .is_some_and(|s| s.parse::<SocketAddr>().is_ok_and(|a| a.is_ipv6())),
        "ipv6.mapped_addr must be [IPv6]:port or null: {v6}"
    );
    let f = key(v6, "filtering").as_str().unwrap_or_default();
    assert!(CLASSES.contains(&f), "ipv6.filtering {f:?}: {v6}");
    strings(v6, "reasons");
    if v6["udp"] == false {
        assert_eq!(v6["can_host"], false, "{v6}");
        assert!(!v6["reasons"].as_array().unwrap().is_empty(), "{v6}");
    } else {
        assert!(m.is_string() && a.is_string(), "{v6}");
    }
    v6
}
