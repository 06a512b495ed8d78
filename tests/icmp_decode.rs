//! Property tests for punch --icmp's parser: random bytes, and random mutations of a valid
//! Time Exceeded, never panic; a valid message of our session always parses to its port.
use std::net::Ipv4Addr;

use natkit::wire::icmp;
use proptest::prelude::*;

const TARGET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = icmp::parse_time_exceeded(&[7; 16], TARGET, &data);
    }

    #[test]
    fn valid_messages_parse_and_mutations_never_panic(
        session in any::<[u8; 16]>(),
        listener in any::<[u8; 4]>(),
        port in 1u16..,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let m = icmp::time_exceeded(&session, Ipv4Addr::from(listener), TARGET, port);
        prop_assert_eq!(icmp::parse_time_exceeded(&session, TARGET, &m), Some(port));
        let mut bad = m.clone();
        let i = at.index(bad.len());
        bad[i] = byte;
        let _ = icmp::parse_time_exceeded(&session, TARGET, &bad);
    }
}
