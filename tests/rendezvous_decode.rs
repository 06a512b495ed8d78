//! Property tests: nothing a peer sends can panic the rendezvous decoder or the relay core.
use natkit::proto::relay::{Limits, Now, Relay, RelayConfig};
use natkit::wire::rendezvous::Frame;
use proptest::prelude::*;
use std::time::Instant;

fn frame_like() -> impl Strategy<Value = Vec<u8>> {
    (0u8..24, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(ty, body)| {
        let mut v = b"NK\x01".to_vec();
        v.push(ty);
        v.extend_from_slice(&body);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn parse_never_panics_and_roundtrips(data in prop_oneof![frame_like(), proptest::collection::vec(any::<u8>(), 0..200)]) {
        if let Ok(f) = Frame::parse(&data) {
            prop_assert_eq!(Frame::parse(&f.emit()), Ok(f));
        }
        // With its trailer (transaction id, cookie), too.
        if let Ok((f, t)) = Frame::parse_with(&data) {
            prop_assert_eq!(Frame::parse_with(&f.emit_with(t.as_ref())), Ok((f, t)));
        }
    }

    #[test]
    fn relay_core_survives_anything(data in prop_oneof![frame_like(), proptest::collection::vec(any::<u8>(), 0..200)], seed in any::<u8>()) {
        let t = Instant::now();
        let mut r = Relay::new(RelayConfig {
            primary: "203.0.113.10:3478".parse().unwrap(),
            alt_ip: Some("203.0.113.11".parse().unwrap()),
            alt_port: 3479,
            other_family: None,
            limits: Limits::default(),
            allow_private: seed % 2 == 0,
            secret: (seed % 3 == 0).then(|| b"k".to_vec()),
        }, t, seed as u64);
        let now = Now { mono: t, unix: 1 };
        let from = format!("198.51.100.{}:4000", seed).parse().unwrap();
        r.handle_udp(now, "203.0.113.10:3478".parse().unwrap(), from, &data);
        r.handle_udp(now, "203.0.113.11:3479".parse().unwrap(), from, &data);
        r.handle_tcp(now, 1, from, &data);
        while r.poll_output().is_some() {}
        r.tcp_closed(1);
        r.handle_timeout(t + std::time::Duration::from_secs(100));
    }
}
