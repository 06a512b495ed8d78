//! punch --icmp: whatever ICMP reaches the listener's raw socket is checked without panicking,
//! and only a well-formed Time Exceeded of our session yields a port.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natkit::wire::icmp;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let target = Ipv4Addr::new(203, 0, 113, 99);
    if let Some(port) = icmp::parse_time_exceeded(&[7; 16], target, data) {
        assert_ne!(port, 0);
    }
});
