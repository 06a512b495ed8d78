//! Property tests: nothing a network peer sends can panic the STUN decoder or the prober.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit::proto::classify::{IcmpKind, Input, ProbeConfig, Prober, SocketId};
use natkit::wire::stun;
use proptest::prelude::*;

fn stun_like() -> impl Strategy<Value = Vec<u8>> {
    // A valid header with random attribute bytes: reaches deep into attribute parsing.
    (
        any::<[u8; 2]>(),
        any::<[u8; 12]>(),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(ty, tid, body)| {
            let mut m = vec![ty[0] & 0x3f, ty[1]];
            let len = (body.len() / 4 * 4) as u16;
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&stun::MAGIC_COOKIE);
            m.extend_from_slice(&tid);
            m.extend_from_slice(&body[..len as usize]);
            m
        })
}

fn tlv_like() -> impl Strategy<Value = Vec<u8>> {
    // Well-formed TLV framing with random types and values.
    proptest::collection::vec(
        (
            prop_oneof![
                Just(0x0001u16),
                Just(0x0020),
                Just(0x0027),
                Just(0x0003),
                Just(0x802c),
                Just(0x802b),
                Just(0x0009),
                Just(0x8028),
                Just(0x0026),
                Just(0x8022),
                any::<u16>()
            ],
            proptest::collection::vec(any::<u8>(), 0..24),
        ),
        0..6,
    )
    .prop_map(|attrs| {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(&v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = vec![0x01, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&stun::MAGIC_COOKIE);
        m.extend_from_slice(&[5u8; 12]);
        m.extend_from_slice(&body);
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn decode_never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = stun::decode(&data);
    }

    #[test]
    fn decode_never_panics_on_stun_shaped_bytes(data in stun_like()) {
        let _ = stun::decode(&data);
    }

    #[test]
    fn decode_never_panics_on_tlv_shaped_bytes(data in tlv_like()) {
        let _ = stun::decode(&data);
    }

    #[test]
    fn prober_survives_any_datagram(data in prop_oneof![stun_like(), tlv_like(), proptest::collection::vec(any::<u8>(), 0..300)]) {
        let t0 = Instant::now();
        let server: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        let mut p = Prober::new(ProbeConfig::new(vec![server], 1), t0);
        while p.poll_transmit().is_some() {}
        p.handle_input(t0, Input::Datagram { socket: SocketId(0), from: server, data: &data, ttl: None });
        p.handle_input(t0, Input::IcmpError { socket: SocketId(4), kind: IcmpKind::TimeExceeded, offender: server.ip(), original: &data });
        p.handle_input(t0, Input::TcpAnswer { server, result: Ok(&data) });
        p.handle_timeout(t0 + Duration::from_secs(5));
        let _ = p.observations();
    }
}
