//! Rendezvous/relay framing decode, and the relay core fed arbitrary datagrams and TCP frames.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natkit::proto::relay::{Limits, Now, Relay, RelayConfig};
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = natkit::wire::rendezvous::Frame::parse(data) {
        // Whatever parses must re-emit to something that parses to the same frame.
        assert_eq!(natkit::wire::rendezvous::Frame::parse(&f.emit()), Ok(f));
    }
    // With its trailer (transaction id, cookie), too.
    if let Ok((f, t)) = natkit::wire::rendezvous::Frame::parse_with(data) {
        let again = natkit::wire::rendezvous::Frame::parse_with(&f.emit_with(t.as_ref()));
        assert_eq!(again, Ok((f, t)));
    }
    let t = Instant::now();
    let cfg = RelayConfig {
        primary: "203.0.113.10:3478".parse().unwrap(),
        alt_ip: Some("203.0.113.11".parse().unwrap()),
        alt_port: 3479,
        limits: Limits::default(),
        allow_private: false,
        secret: None,
    };
    let mut r = Relay::new(cfg, t, 0);
    let now = Now { mono: t, unix: 0 };
    let from = "198.51.100.1:4000".parse().unwrap();
    r.handle_udp(now, "203.0.113.10:3478".parse().unwrap(), from, data);
    r.handle_tcp(now, 1, from, data);
    while r.poll_output().is_some() {}
    r.handle_timeout(t);
});
