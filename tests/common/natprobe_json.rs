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
    if udp == false {
        // Nothing answered: nothing is known, and the JSON says so without nulls where the
        // issue promises a bool.
        assert_eq!(v["behind_nat"], false, "{v}");
        assert_eq!(v["verdict"]["can_host"], false, "{v}");
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
