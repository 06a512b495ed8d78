//! PCP decode path: the codec (options included) and the MAP client transaction.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natkit::proto::portmap::{pcp, Proto};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    // Whatever parses must re-emit to something that parses to the same value.
    if let Ok(r) = pcp::Request::parse(data) {
        assert_eq!(pcp::Request::parse(&r.emit()), Ok(r));
    }
    if let Ok(r) = pcp::Response::parse(data) {
        let _ = r.is_announce();
        assert_eq!(pcp::Response::parse(&r.emit()), Ok(r));
    }
    let t0 = Instant::now();
    let schedule = pcp::Schedule {
        rto: Duration::from_millis(250),
        max_sends: 4,
        final_wait: Duration::from_secs(1),
    };
    let map = pcp::Map::new([7; 12], Proto::Udp, 4000, 4000);
    let req = pcp::Request::map(Ipv4Addr::new(192, 168, 1, 10).into(), map, 7200);
    let mut c = pcp::Client::new(t0, req, schedule);
    while c.poll_transmit(t0).is_some() {}
    c.handle_input(t0, data);
    c.handle_timeout(t0 + Duration::from_secs(60));
    let _ = c.poll_event();
});
