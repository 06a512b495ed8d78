//! Property tests: nothing a gateway sends can panic the NAT-PMP or PCP decoders or clients,
//! and every value type survives emit → parse.
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use natkit::proto::portmap::{natpmp, pcp, Proto};
use proptest::prelude::*;

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)]
}

fn schedule() -> natpmp::Schedule {
    natpmp::Schedule {
        rto: Duration::from_millis(10),
        max_sends: 2,
        final_wait: Duration::from_millis(10),
    }
}

fn natpmp_request() -> impl Strategy<Value = natpmp::Request> {
    prop_oneof![
        Just(natpmp::Request::ExternalAddress),
        (proto(), any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(proto, i, e, lifetime)| {
            natpmp::Request::Map {
                proto,
                internal_port: i,
                external_port: e,
                lifetime,
            }
        }),
    ]
}

fn natpmp_response() -> impl Strategy<Value = natpmp::Response> {
    let result = any::<u16>().prop_map(natpmp::ResultCode::from);
    prop_oneof![
        (result.clone(), any::<u32>(), any::<[u8; 4]>()).prop_map(|(result, epoch, a)| {
            natpmp::Response::ExternalAddress {
                result,
                epoch,
                address: Ipv4Addr::from(a),
            }
        }),
        (proto(), result, any::<u32>(), any::<(u16, u16, u32)>()).prop_map(
            |(proto, result, epoch, (i, e, lifetime))| natpmp::Response::Map {
                proto,
                result,
                epoch,
                internal_port: i,
                external_port: e,
                lifetime,
            }
        ),
        (0u8..128, 1u16.., any::<u32>()).prop_map(|(opcode, r, epoch)| natpmp::Response::Bare {
            opcode,
            result: natpmp::ResultCode::from(r),
            epoch,
        }),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    any::<IpAddr>().prop_map(|a| a.to_canonical())
}

fn pcp_op() -> impl Strategy<Value = pcp::Op> {
    prop_oneof![
        Just(pcp::Op::Announce),
        (any::<[u8; 12]>(), any::<u8>(), any::<(u16, u16)>(), ip()).prop_map(
            |(nonce, protocol, (i, e), external_ip)| pcp::Op::Map(pcp::Map {
                nonce,
                protocol,
                internal_port: i,
                external_port: e,
                external_ip,
            })
        ),
    ]
}

fn pcp_options() -> impl Strategy<Value = Vec<pcp::PcpOption>> {
    proptest::collection::vec(
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(code, data)| pcp::PcpOption { code, data }),
        0..5,
    )
}

/// A valid PCP header with random opcode data and option bytes: reaches option parsing.
fn pcp_like() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 24]>(),
        prop_oneof![Just(0x81u8), Just(0x80), Just(0x01), any::<u8>()],
        proptest::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(mut header, op, body)| {
            header[0] = pcp::VERSION;
            header[1] = op;
            let mut m = header.to_vec();
            m.extend_from_slice(&body[..body.len() / 4 * 4]);
            m
        })
}

fn natpmp_like() -> impl Strategy<Value = Vec<u8>> {
    (0u8..4, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(op, mut b)| {
        b.splice(0..0, [0, 0x80 | op]);
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parsers_never_panic(data in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1200),
        pcp_like(),
        natpmp_like(),
    ]) {
        // Whatever parses must re-emit to something that parses to the same value.
        if let Ok(r) = natpmp::Request::parse(&data) {
            prop_assert_eq!(natpmp::Request::parse(&r.emit()), Ok(r));
        }
        if let Ok(r) = natpmp::Response::parse(&data) {
            prop_assert_eq!(natpmp::Response::parse(&r.emit()), Ok(r));
        }
        if let Ok(r) = pcp::Request::parse(&data) {
            prop_assert_eq!(pcp::Request::parse(&r.emit()), Ok(r));
        }
        if let Ok(r) = pcp::Response::parse(&data) {
            prop_assert_eq!(pcp::Response::parse(&r.emit()), Ok(r));
        }
    }

    #[test]
    fn clients_survive_any_datagram(data in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        pcp_like(),
        natpmp_like(),
    ]) {
        let t0 = Instant::now();
        let mut n = natpmp::Client::new(t0, natpmp::Request::delete(Proto::Udp, 0), schedule());
        let _ = n.poll_transmit(t0);
        n.handle_input(t0, &data);
        n.handle_timeout(t0 + Duration::from_secs(1));
        let _ = n.poll_event();
        let map = pcp::Map::new([0; 12], Proto::Tcp, 0, 0);
        let mut p = pcp::Client::new(t0, pcp::Request::map(Ipv4Addr::LOCALHOST.into(), map, 60), schedule());
        let _ = p.poll_transmit(t0);
        p.handle_input(t0, &data);
        p.handle_timeout(t0 + Duration::from_secs(1));
        let _ = p.poll_event();
    }

    #[test]
    fn natpmp_round_trips(req in natpmp_request(), resp in natpmp_response()) {
        prop_assert_eq!(natpmp::Request::parse(&req.emit()), Ok(req));
        prop_assert_eq!(natpmp::Response::parse(&resp.emit()), Ok(resp));
    }

    #[test]
    fn pcp_round_trips(
        lifetime in any::<u32>(),
        epoch in any::<u32>(),
        result in any::<u8>(),
        client_ip in ip(),
        op in pcp_op(),
        options in pcp_options(),
    ) {
        let req = pcp::Request { lifetime, client_ip, op, options: options.clone() };
        let b = req.emit();
        prop_assert!(b.len() % 4 == 0 && b.len() <= pcp::MAX_LEN);
        prop_assert_eq!(pcp::Request::parse(&b), Ok(req));
        let resp = pcp::Response { result: pcp::ResultCode::from(result), lifetime, epoch, op, options };
        prop_assert_eq!(pcp::Response::parse(&resp.emit()), Ok(resp));
    }
}
