//! The relay over IPv6 on the NAT lab (issue 14): coturn's reference client gives the same
//! RFC 5780 verdict against the relay (both families on one process) as against coturn on
//! pub's two IPv6 addresses, for an RFC 6092 firewall and an open IPv6 network; and over
//! IPv4 the same relay process still agrees.
mod common;

use common::coturn;
use common::lab::{Kind, Lab};

#[test]
fn rfc5780_over_ipv6_agrees_with_coturn() {
    let Some(lab) = Lab::up_or_skip(
        Lab::builder()
            .a(Kind::PortRestricted)
            .v6_a("fw")
            .b(Kind::FullCone)
            .v6_b("open"),
    ) else {
        return;
    };
    // coturn's client reports "No NAT" (mapping) only when bound to the host's address.
    let ask = |node: &str, server: &str| {
        let local = lab.get(if node == "a" { "A_IP6" } else { "B_IP6" });
        coturn::natdiscovery_from(&lab, node, server, Some(local))
    };
    let (pub6, pub4) = (lab.get("PUB_IP6"), lab.get("PUB_IP"));
    let theirs = {
        let _c = coturn::start_v6(&lab);
        [ask("a", pub6), ask("b", pub6)]
    };
    assert_eq!(theirs[0].1, "address-and-port-dependent", "{theirs:?}");
    assert_eq!(theirs[1].1, "endpoint-independent", "{theirs:?}");
    let _r = common::relay::start_dual(&lab, 3478);
    for run in 0..5 {
        assert_eq!([ask("a", pub6), ask("b", pub6)], theirs, "run {run}");
    }
    // The same relay over IPv4: the IPv4 NATs' verdicts.
    let v4 = |node| coturn::natdiscovery(&lab, node, pub4);
    assert_eq!(v4("a").1, "address-and-port-dependent");
    assert_eq!(v4("b").1, "endpoint-independent");
}
