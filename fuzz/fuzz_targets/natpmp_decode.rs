//! NAT-PMP decode path: the codec and the client transaction that consumes gateway replies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natkit::proto::portmap::{natpmp, Proto};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    // Whatever parses must re-emit to something that parses to the same value.
    if let Ok(r) = natpmp::Request::parse(data) {
        assert_eq!(natpmp::Request::parse(&r.emit()), Ok(r));
    }
    if let Ok(r) = natpmp::Response::parse(data) {
        assert_eq!(natpmp::Response::parse(&r.emit()), Ok(r));
    }
    let t0 = Instant::now();
    let req = natpmp::Request::Map {
        proto: Proto::Tcp,
        internal_port: 8080,
        external_port: 8080,
        lifetime: 7200,
    };
    let mut c = natpmp::Client::new(t0, req, natpmp::RFC_SCHEDULE);
    while c.poll_transmit(t0).is_some() {}
    c.handle_input(t0, data);
    c.handle_timeout(t0 + Duration::from_secs(600));
    let _ = c.poll_event();
});
