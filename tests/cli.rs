//! CLI contract tests: man pages, completions and `--help` are pinned (regenerate with
//! `NATKIT_BLESS=1 cargo test --test cli`), and bad input exits non-zero with a clear message.
use std::io::Read;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_or_bless(path: PathBuf, actual: &[u8]) {
    if std::env::var_os("NATKIT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run NATKIT_BLESS=1 cargo test --test cli",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} is stale: run NATKIT_BLESS=1 cargo test --test cli and commit the result",
        path.display()
    );
}

#[test]
fn man_pages_are_current() {
    for cmd in natkit::app::cli::commands() {
        let name = cmd.get_name().to_string();
        // Subcommands (punch listen, punch connect) get pages of their own: their options are
        // not on the parent's page.
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub = sub.clone().name(format!("{name}-{}", sub.get_name()));
            let mut buf = Vec::new();
            clap_mangen::Man::new(sub.clone()).render(&mut buf).unwrap();
            check_or_bless(
                root().join("man").join(format!("{}.1", sub.get_name())),
                &buf,
            );
        }
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf).unwrap();
        check_or_bless(root().join("man").join(format!("{name}.1")), &buf);
    }
}

#[test]
fn completions_are_current() {
    use clap_complete::Shell;
    for mut cmd in natkit::app::cli::commands() {
        let name = cmd.get_name().to_string();
        for (shell, ext) in [
            (Shell::Bash, "bash"),
            (Shell::Zsh, "zsh"),
            (Shell::Fish, "fish"),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut buf);
            check_or_bless(
                root()
                    .join("scripts/completions")
                    .join(format!("{name}.{ext}")),
                &buf,
            );
        }
    }
}

fn natprobe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_natprobe"));
    // Loopback tests: never ask this machine's real router anything.
    c.arg("--no-portmap")
        .env_remove("NO_COLOR")
        .env("TERM", "dumb");
    c
}

#[test]
fn help_is_pinned() {
    for (name, exe) in [
        ("natprobe", env!("CARGO_BIN_EXE_natprobe")),
        ("relay", env!("CARGO_BIN_EXE_relay")),
        ("punch", env!("CARGO_BIN_EXE_punch")),
        ("portmap", env!("CARGO_BIN_EXE_portmap")),
    ] {
        let out = Command::new(exe)
            .arg("--help")
            .env("TERM", "dumb")
            .output()
            .unwrap();
        assert!(out.status.success());
        check_or_bless(
            root().join(format!("tests/snapshots/{name}-help.txt")),
            &out.stdout,
        );
    }
}

#[test]
fn bad_server_is_a_clear_error() {
    for bad in ["a b", "host:0", "host:99999", "[::1"] {
        let out = natprobe().args(["--server", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid server"), "{bad}: {err}");
        assert!(out.stdout.is_empty());
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--timeout", "0"][..],
        &["--color", "sometimes"],
        &["--nope"],
    ] {
        let out = natprobe().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// A loopback server that never answers: natprobe must say so quickly and exit 2.
#[test]
fn silent_server_exits_2_with_what_was_tried() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let t = Instant::now();
    let out = natprobe()
        .args(["--server", &addr.to_string(), "--timeout", "300", "--json"])
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["udp"], false);
    assert_eq!(v["schema"], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr.to_string()), "{err}");
}

/// Regression (broken pipe): `natprobe | head -c0` must exit 0, not panic on EPIPE.
#[test]
fn broken_pipe_exits_0() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let mut child = natprobe()
        .args(["--server", &addr.to_string(), "--timeout", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn json_never_has_colour() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let out = natprobe()
        .args([
            "--server",
            &addr.to_string(),
            "--timeout",
            "100",
            "--json",
            "--color",
            "always",
        ])
        .output()
        .unwrap();
    assert!(!out.stdout.contains(&0x1b));
}

/// punch --tcp carries the pipe only: with --expose / --local it is a clear error, before any
/// network traffic.
#[test]
fn punch_tcp_with_hosting_is_a_clear_error() {
    for args in [
        &[
            "listen",
            "--relay",
            "127.0.0.1",
            "--tcp",
            "--expose",
            "127.0.0.1:80",
        ][..],
        &[
            "connect",
            "7-lantern-harbor",
            "--relay",
            "127.0.0.1",
            "--tcp",
            "--local",
            "8080",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_punch"))
            .args(args)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--tcp carries the pipe"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_punch"))
        .args(["connect", "7-lantern-harbor", "--manual", "--tcp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--tcp needs the relay");
}

/// portmap: bad input is a usage error (exit 2) before anything is sent to a router.
#[test]
fn portmap_bad_input_exits_2() {
    for args in [
        &["add"][..],
        &["add", "0"],
        &["add", "70000"],
        &["add", "80", "--proto", "sctp"],
        &["add", "80", "--via", "smoke"],
        &["add", "80", "--verify"],
        &["delete"],
        &["delete", "80", "--all-mine"],
        &["--gateway", "not-an-ip", "probe"],
        &["probe", "--timeout", "0"],
        &["add", "80", "--verify", "--relay", "a b"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portmap"))
            .args(args)
            .env(
                "NATKIT_PORTMAP_STATE",
                "/nonexistent/natkit-test/portmap.json",
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
