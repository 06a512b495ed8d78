//! STUN decode path: the codec and the prober that consumes what servers send.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natkit::proto::classify::{Input, ProbeConfig, Prober, SocketId};
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let _ = natkit::wire::stun::decode(data);
    let _ = natkit::wire::stun_classic::decode_request(data);
    let t0 = Instant::now();
    let server = "203.0.113.10:3478".parse().unwrap();
    let mut p = Prober::new(ProbeConfig::new(vec![server], 1), t0);
    while p.poll_transmit().is_some() {}
    p.handle_input(
        t0,
        Input::Datagram {
            socket: SocketId(0),
            from: server,
            data,
            ttl: data.first().copied(),
        },
    );
    let _ = p.observations();
});
