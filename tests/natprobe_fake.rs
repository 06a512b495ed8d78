//! natprobe against misbehaving servers on loopback: garbage, truncated messages, wrong
//! transaction ids, huge datagrams and a bogus OTHER-ADDRESS. It must never panic and never
//! misclassify silently: what it ignored and distrusted is in the report.
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use natkit::stun;
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
    let out = Command::new(env!("CARGO_BIN_EXE_natprobe"))
        .args([
            "--json",
            // Loopback test: never ask this machine's real router anything.
            "--no-portmap",
            "--timeout",
            "400",
            "--server",
            &server.to_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    (v, out.status.code().unwrap(), err)
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
