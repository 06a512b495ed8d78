//! natprobe against misbehaving servers on loopback: garbage, truncated messages, wrong
//! transaction ids, huge datagrams, a bogus OTHER-ADDRESS, a missing or wrong
//! RESPONSE-ORIGIN. It must never panic and never misclassify silently: what it ignored and
//! distrusted is in the report.
#[path = "common/natprobe_json.rs"]
mod natprobe_json;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use natkit::wire::stun;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Only junk, never a valid answer.
    JunkOnly,
    /// Junk first, then a valid answer whose OTHER-ADDRESS is on the server's own IP.
    BogusOther,
    /// Junk first, then a valid answer with a good OTHER-ADDRESS, but CHANGE-REQUEST is
    /// answered from the primary address (as if honoured).
    IgnoresChange,
}

struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn fake(mode: Mode) -> Fake {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let addr = s.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::SeqCst) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = stun::decode(&buf[..n]) else {
                continue;
            };
            let good = stun::BindingResponse {
                tid: req.tid,
                mapped: from,
                other_address: Some(match mode {
                    Mode::BogusOther => SocketAddr::new(addr.ip(), addr.port().wrapping_add(1)),
                    _ => "127.0.0.2:3479".parse().unwrap(),
                }),
                response_origin: Some(addr),
                software: Some("fake".into()),
            }
            .encode()
            .unwrap();
            let mut wrong_tid = good.clone();
            wrong_tid[8] ^= 0xff;
            let truncated = &good[..good.len() - 5];
            let _ = s.send_to(b"\x00\x01garbage that is not STUN", from);
            let _ = s.send_to(truncated, from);
            let _ = s.send_to(&wrong_tid, from);
            let _ = s.send_to(&vec![0u8; 65_000], from);
            if mode != Mode::JunkOnly {
                let _ = s.send_to(&good, from);
            }
        }
    });
    Fake { addr, stop }
}

fn natprobe(server: SocketAddr) -> (Value, i32, String) {
    natprobe_servers(&[server])
}

fn natprobe_servers(servers: &[SocketAddr]) -> (Value, i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natprobe"));
    // Loopback test: never ask this machine's real router anything.
    cmd.args(["--json", "--no-portmap", "--timeout", "400"]);
    for s in servers {
        cmd.args(["--server", &s.to_string()]);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    natprobe_json::assert_contract(&v);
    (v, out.status.code().unwrap(), err)
}

/// What an otherwise complete RFC 5780 server puts in RESPONSE-ORIGIN.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Origin {
    /// The address it answers from, as RFC 5780 §7.3 asks.
    Right,
    /// Nothing.
    Missing,
    /// A private address, as a server behind NAT would: not where the answer came from.
    Wrong,
}

/// Four sockets: 127.0.0.1 and 127.0.0.2, each on the same two ports; index
/// `2 * ip + port`, so flipping bit 1 changes the IP and bit 0 the port.
fn bind_quad() -> Vec<UdpSocket> {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (p1, p2) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        if let (Ok(c), Ok(d)) = (
            UdpSocket::bind(("127.0.0.2", p1)),
            UdpSocket::bind(("127.0.0.2", p2)),
        ) {
            return vec![a, b, c, d];
        }
    }
    panic!("no two ports free on both 127.0.0.1 and 127.0.0.2");
}

/// A complete RFC 5780 server on loopback (two addresses, two ports, CHANGE-REQUEST answered
/// from the address asked for): natprobe could classify filtering with it, were it not for
/// its RESPONSE-ORIGIN.
fn fake_rfc5780(origin: Origin) -> Fake {
    let socks = bind_quad();
    let addrs: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..4 {
        let socks: Vec<UdpSocket> = socks.iter().map(|s| s.try_clone().unwrap()).collect();
        let addrs = addrs.clone();
        let st = stop.clone();
        thread::spawn(move || {
            socks[i]
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) {
                let Ok((n, from)) = socks[i].recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = stun::decode(&buf[..n]) else {
                    continue;
                };
                let change = req.change.unwrap_or_default();
                let j = i ^ if change.ip { 2 } else { 0 } ^ if change.port { 1 } else { 0 };
                let resp = stun::BindingResponse {
                    tid: req.tid,
                    mapped: from,
                    other_address: Some(addrs[i ^ 3]),
                    response_origin: match origin {
                        Origin::Right => Some(addrs[j]),
                        Origin::Missing => None,
                        Origin::Wrong => Some("10.0.0.5:3478".parse().unwrap()),
                    },
                    software: Some("fake".into()),
                }
                .encode()
                .unwrap();
                let dst = SocketAddr::new(from.ip(), req.response_port.unwrap_or(from.port()));
                let _ = socks[j].send_to(&resp, dst);
            }
        });
    }
    Fake {
        addr: addrs[0],
        stop,
    }
}

#[test]
fn junk_only_is_no_answer_and_says_what_was_ignored() {
    let f = fake(Mode::JunkOnly);
    let (v, code, _) = natprobe(f.addr);
    assert_eq!(code, 2);
    assert_eq!(v["udp"], false);
    let ignored = v["ignored"].as_array().unwrap();
    assert!(ignored.len() >= 4, "{v}");
    let text = v["ignored"].to_string();
    assert!(text.contains("not a STUN message"), "{text}");
    assert!(text.contains("unknown transaction id"), "{text}");
    assert!(
        text.contains("malformed") || text.contains("65000 bytes") || text.contains("2049 bytes"),
        "{text}"
    );
}

#[test]
fn bogus_other_address_is_reported_not_trusted() {
    let f = fake(Mode::BogusOther);
    let (v, code, _) = natprobe(f.addr);
    assert_eq!(v["udp"], true);
    assert_eq!(v["servers"][0]["rfc5780"], false);
    assert!(
        v["servers"][0]["problems"].to_string().contains("same IP"),
        "{v}"
    );
    assert_eq!(v["filtering"], "unknown");
    assert!(
        v["filtering_note"].as_str().unwrap().contains("RFC 5780"),
        "{v}"
    );
    assert!(!v["ignored"].as_array().unwrap().is_empty());
    // No NAT on loopback and filtering unknown: natprobe cannot promise reachability.
    assert_eq!(code, 1);
}

#[test]
fn change_request_answered_from_the_wrong_address_is_not_endpoint_independent() {
    let f = fake(Mode::IgnoresChange);
    let (v, _, _) = natprobe(f.addr);
    assert_eq!(v["udp"], true);
    assert_eq!(v["filtering"], "unknown", "{v}");
    assert!(
        v["filtering_note"]
            .as_str()
            .unwrap()
            .contains("CHANGE-REQUEST"),
        "{v}"
    );
}

/// The control: the same fake with a right RESPONSE-ORIGIN is trusted and classifies, so the
/// tests below can fail.
#[test]
fn complete_rfc5780_server_is_trusted() {
    let f = fake_rfc5780(Origin::Right);
    let (v, code, err) = natprobe(f.addr);
    assert_eq!(v["servers"][0]["rfc5780"], true, "{v}");
    assert_eq!(v["servers"][0]["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["mapping"], "none", "{v}");
    assert_eq!(v["filtering"], "endpoint-independent", "{v}");
    assert_eq!(code, 0, "{err}");
}

fn untrusted_origin(origin: Origin, says: &str) {
    let f = fake_rfc5780(origin);
    let (v, code, _) = natprobe(f.addr);
    assert_eq!(v["udp"], true);
    assert_eq!(v["servers"][0]["rfc5780"], false, "{origin:?}: {v}");
    let problems = v["servers"][0]["problems"].to_string();
    assert!(
        problems.contains(says) && problems.contains("not trusted"),
        "{origin:?}: {problems}"
    );
    // Its CHANGE-REQUEST answers would say endpoint-independent; they are not used.
    assert_eq!(v["filtering"], "unknown", "{origin:?}: {v}");
    let note = v["filtering_note"].as_str().unwrap();
    assert!(note.contains("RESPONSE-ORIGIN"), "{note}");
    // No NAT on loopback, but a filter cannot be ruled out: no promise of reachability.
    assert_eq!(v["verdict"]["can_host"], false, "{v}");
    assert_eq!(code, 1);
}

#[test]
fn missing_response_origin_is_reported_not_trusted() {
    untrusted_origin(Origin::Missing, "no RESPONSE-ORIGIN");
}

#[test]
fn wrong_response_origin_is_reported_not_trusted() {
    untrusted_origin(Origin::Wrong, "RESPONSE-ORIGIN says 10.0.0.5:3478");
}

/// An untrusted server first does not stop a trustworthy second one from classifying.
#[test]
fn a_trustworthy_second_server_gives_filtering() {
    for origin in [Origin::Missing, Origin::Wrong] {
        let bad = fake_rfc5780(origin);
        let good = fake_rfc5780(Origin::Right);
        let (v, code, err) = natprobe_servers(&[bad.addr, good.addr]);
        assert_eq!(v["servers"][0]["rfc5780"], false, "{v}");
        assert_eq!(v["servers"][1]["rfc5780"], true, "{v}");
        assert_eq!(v["filtering"], "endpoint-independent", "{origin:?}: {v}");
        assert_eq!(code, 0, "{err}");
    }
}
