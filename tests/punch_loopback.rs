//! punch and relay on loopback (no root needed): a pipe works end to end, a closed stdout
//! exits 0, and bad arguments are clear errors.
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay() -> (Kill, String) {
    let (k, p) = relay_on(&["127.0.0.1"]);
    (k, format!("127.0.0.1:{p}"))
}

/// A relay on these loopback addresses (one per family), and its port.
fn relay_on(addrs: &[&str]) -> (Kill, u16) {
    for _ in 0..100 {
        let p = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p == u16::MAX
            || addrs
                .iter()
                .any(|a| TcpListener::bind((*a, p)).is_err() || UdpSocket::bind((*a, p)).is_err())
        {
            continue;
        }
        let mut c = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(addrs.iter().flat_map(|a| ["--addr", a]))
            .args(["--allow-private", "--port", &p.to_string(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut b = [0u8; 1];
        let out = c.stdout.as_mut().unwrap();
        // The startup line means it is listening.
        while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {}
        return (Kill(c), p);
    }
    panic!("no free port");
}

fn punch(args: &[&str], relay: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_punch"));
    // Loopback test: never ask this machine's real router for a port.
    c.args(args).args(["--relay", relay, "--no-portmap"]);
    c
}

#[test]
fn pipe_on_loopback() {
    let (_r, relay) = relay();
    let mut l = punch(&["listen", "--code", "61-lantern-harbor"], &relay)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    l.stdin.take().unwrap().write_all(b"from listener").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = punch(&["connect", "61-lantern-harbor"], &relay)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"from connector")
        .unwrap();
    let (lo, co) = (l.wait_with_output().unwrap(), c.wait_with_output().unwrap());
    assert!(
        lo.status.success(),
        "{}",
        String::from_utf8_lossy(&lo.stderr)
    );
    assert!(
        co.status.success(),
        "{}",
        String::from_utf8_lossy(&co.stderr)
    );
    assert_eq!(lo.stdout, b"from connector");
    assert_eq!(co.stdout, b"from listener");
}

/// Issue 14: over IPv6 (`--relay [::1]:PORT`, a relay serving both families), the sides meet
/// and go direct over IPv6: `connected` says `family: ipv6`, `peer` is `[addr]:port`.
#[test]
fn pipe_over_ipv6_on_loopback() {
    let (_r, port) = relay_on(&["127.0.0.1", "::1"]);
    let relay = format!("[::1]:{port}");
    let run = |args: &[&str], input: &'static [u8]| {
        let mut p = punch(args, &relay)
            .arg("--json")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(input).unwrap();
        p
    };
    let l = run(&["listen", "--code", "62-lantern-harbor"], b"from listener");
    std::thread::sleep(Duration::from_millis(200));
    let c = run(&["connect", "62-lantern-harbor"], b"from connector");
    let (lo, co) = (l.wait_with_output().unwrap(), c.wait_with_output().unwrap());
    for (o, want) in [(&lo, &b"from connector"[..]), (&co, b"from listener")] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert_eq!(o.stdout, want);
        let direct: serde_json::Value = err
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "connected" && e["path"] == "direct")
            .unwrap_or_else(|| panic!("not direct: {err}"));
        assert_eq!(direct["family"], "ipv6", "{direct}");
        assert!(
            direct["peer"].as_str().unwrap().starts_with("[::1]:"),
            "{direct}"
        );
    }
}

/// Regression (broken pipe): `punch connect CODE | head -c 0` exits 0.
#[test]
fn closed_stdout_exits_0() {
    let (_r, relay) = relay();
    let mut l = punch(&["listen", "--code", "62-lantern-harbor"], &relay)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut li = l.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = li.write_all(&vec![7u8; 4 << 20]);
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut c = punch(&["connect", "62-lantern-harbor"], &relay)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    let _ = Kill(l);
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, needle) in [
        (
            &["connect", "lantern-harbor", "--relay", "127.0.0.1"][..],
            "a code looks like",
        ),
        (
            &["connect", "7-lantern-harbour", "--relay", "127.0.0.1"],
            "not one of natkit's code words",
        ),
        (
            &["connect", "7-lantern-harbor", "--relay", "a b"],
            "invalid server",
        ),
        (
            &["listen", "--relay", "127.0.0.1", "--expose", "nowhere"],
            "expected HOST:PORT",
        ),
        (
            &[
                "connect",
                "7-lantern-harbor",
                "--relay",
                "127.0.0.1",
                "--token",
                "xyz",
            ],
            "hex",
        ),
        // Issue 14: a zone id is meaningless for a server on the internet.
        (
            &["connect", "7-lantern-harbor", "--relay", "fe80::1%eth0"],
            "zone id",
        ),
        (
            &["connect", "7-lantern-harbor", "--relay", "[fe80::1%2]:3478"],
            "zone id",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_punch"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

/// `--manual` with something that is not an offer: a clear error before any IO, exit 2.
#[test]
fn manual_offer_that_is_not_an_offer_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_punch"))
        .args([
            "connect",
            "9-lantern-harbor",
            "--manual",
            "--peer",
            "hello",
            "--no-portmap",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a punch offer"));
}

/// `punch listen` without `--code` makes one up (a nameplate and two words), prints it on
/// stderr before anyone connects, and a connector that uses it gets the pipe.
#[test]
fn listen_without_code_prints_one_that_connect_accepts() {
    use std::io::BufRead;
    let (_r, relay) = relay();
    let mut l = Kill(
        punch(&["listen"], &relay)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // A listener that never prints its code would block the read below: end it in time.
    let pid = l.0.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        // SAFETY: kill(2) on our own child's pid (gone by then when all went well).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    l.0.stdin
        .take()
        .unwrap()
        .write_all(b"made-up code")
        .unwrap();
    let mut err = std::io::BufReader::new(l.0.stderr.take().unwrap());
    let mut line = String::new();
    let code = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "no code printed");
        if let Some(rest) = line.strip_prefix("punch: code ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let parts: Vec<&str> = code.split('-').collect();
    assert_eq!(parts.len(), 3, "{code}");
    assert!(parts[0].parse::<u32>().is_ok(), "{code}");
    assert!(parts[1..]
        .iter()
        .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())));
    // Keep draining the listener's stderr so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let c = punch(&["connect", &code], &relay)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(c.stdout, b"made-up code");
    assert!(l.0.wait().unwrap().success());
    let _ = drain.join();
}

/// The listener's JSON events up to its `code` event (the first event of a run), with
/// natkit's state in `state`.
fn events_until_code(
    args: &[&str],
    relay: &str,
    state: &std::path::Path,
) -> Vec<serde_json::Value> {
    use std::io::BufRead;
    let mut l = punch(args, relay)
        .arg("--json")
        .env("NATKIT_STATE_DIR", state)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::io::BufReader::new(l.stderr.take().unwrap());
    let _l = Kill(l);
    let mut evs = Vec::new();
    for line in err.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        let code = v["event"] == "code";
        evs.push(v);
        if code {
            break;
        }
    }
    evs
}

/// Issue 12 #8: the same hand-made code run after run gives an attacker one more guess at
/// its 16-bit secret each time: the second run with it warns (a `warning` event saying how
/// many guesses and what to do); the first does not, nor do random codes.
#[test]
fn a_reused_hand_made_code_warns() {
    let (_r, relay) = relay();
    let state = std::env::temp_dir().join(format!(
        "natkit-code-reuse-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let warnings = |evs: &[serde_json::Value]| {
        assert!(
            evs.last().is_some_and(|v| v["event"] == "code"),
            "no code event: {evs:?}"
        );
        evs.iter()
            .filter(|v| v["event"] == "warning")
            .cloned()
            .collect::<Vec<_>>()
    };
    let args = ["listen", "--code", "64-lantern-harbor"];
    let first = events_until_code(&args, &relay, &state);
    assert_eq!(warnings(&first), Vec::<serde_json::Value>::new());
    // Random codes are never remembered or warned about.
    for _ in 0..2 {
        assert!(warnings(&events_until_code(&["listen"], &relay, &state)).is_empty());
    }
    // Another hand-made code is not this one.
    let other = events_until_code(&["listen", "--code", "65-lantern-harbor"], &relay, &state);
    assert!(warnings(&other).is_empty());
    let second = events_until_code(&args, &relay, &state);
    let w = warnings(&second);
    assert_eq!(w.len(), 1, "{second:?}");
    let msg = w[0]["message"].as_str().unwrap();
    assert!(msg.contains("2 guesses") && msg.contains("65536"), "{msg}");
    assert!(msg.contains("omit --code"), "{msg}");
    // The ledger holds no code in the clear.
    let ledger = std::fs::read_to_string(state.join("punch-codes")).unwrap();
    assert!(!ledger.contains("lantern"), "{ledger}");
    let _ = std::fs::remove_dir_all(&state);
}
