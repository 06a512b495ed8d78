//! Relay benchmark on loopback (run through `scripts/bench-relay`):
//! 1. many concurrent relayed sessions for a while: packets lost below the caps, relay RSS;
//! 2. forwarding throughput of 1,200-byte datagrams through the relay, as a ratio to sending
//!    the same datagrams directly over loopback in the same run;
//! 3. relay CPU under a Register flood: CPU seconds of the relay process per 10,000 requests
//!    answered, for Registers without a cookie (what spoofed sources can send: each gets a
//!    cookie), Registers with one (each makes a session) and, as the baseline of the same
//!    run, STUN Binding requests.
//!
//! Environment: NATKIT_RELAY_BIN (the relay binary), BENCH_SESSIONS (default 1000),
//! BENCH_SECS (default 30), BENCH_PPS (packets per second per peer, default 5), BENCH_FLOOD
//! (requests per flood, default 50,000; each flood stops after 30 s).
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit::wire::rendezvous::{Frame, Role, Trailer};
use natkit::wire::stun;
use tokio::net::UdpSocket;

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn register(s: &UdpSocket, relay: SocketAddr, session: [u8; 16], role: Role, peer: [u8; 8]) {
    let f = Frame::Register {
        session,
        role,
        peer,
        token: vec![],
        candidates: vec![],
    };
    // The relay answers a first UDP Register with its cookie; the Register then echoes it.
    let mut t = Trailer {
        tx: u64::from_be_bytes(peer),
        cookie: vec![],
    };
    let mut buf = [0u8; 256];
    for _ in 0..20 {
        s.send_to(&f.emit_with(Some(&t)), relay).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), s.recv_from(&mut buf)).await
        {
            match Frame::parse_with(&buf[..n]) {
                Ok((Frame::Registered { .. }, _)) => return,
                Ok((Frame::Cookie, Some(c))) => t.cookie = c.cookie,
                _ => {}
            }
        }
    }
    panic!("registration failed");
}

/// User plus system CPU time of process `pid` so far (/proc/PID/stat, fields 14 and 15).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let ticks: u64 = stat[close + 2..]
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Sends `n` requests made by `make(i)` from `s`, at most 256 unanswered at a time, for at
/// most 30 s; returns (answers, relay CPU seconds spent meanwhile).
async fn flood(
    s: &UdpSocket,
    relay: SocketAddr,
    pid: u32,
    n: u32,
    make: impl Fn(u32) -> Vec<u8>,
) -> (u64, f64) {
    let (mut sent, mut answered) = (0u32, 0u64);
    let mut buf = [0u8; 2048];
    let cpu0 = cpu_secs(pid);
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && (sent < n || answered < sent as u64) {
        while sent < n && (sent as u64) < answered + 256 {
            let _ = s.send_to(&make(sent), relay).await;
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.recv_from(&mut buf)).await {
            Ok(Ok(_)) => answered += 1,
            // A lost request or answer: count it as answered so the window moves on.
            _ => answered = sent as u64,
        }
    }
    (answered, cpu_secs(pid) - cpu0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bin = std::env::var("NATKIT_RELAY_BIN").unwrap_or_else(|_| "target/release/relay".into());
    let sessions = env_or("BENCH_SESSIONS", 1000) as usize;
    let secs = env_or("BENCH_SECS", 30);
    let pps = env_or("BENCH_PPS", 5);
    let port = 23478u16;
    let mut child = Command::new(&bin)
        .args([
            "--addr",
            "127.0.0.1",
            "--alt-addr",
            "127.0.0.2",
            "--allow-private",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--alt-port",
            &(port + 1).to_string(),
        ])
        .args(["--rate", "1000000", "--burst", "1000000"])
        .args([
            "--max-sessions",
            "100000",
            "--sessions-per-source",
            "100000",
        ])
        // The per-session quotas too: the throughput run pushes everything through one
        // session, and at the default 512 MiB a machine relaying faster than ~180 MB/s would
        // use it up within the 3 s run, so the relay would end the session mid-measurement
        // and the ratio would under-report. The time quota is raised likewise for long
        // BENCH_SECS. Nothing measured depends on either quota.
        .args([
            "--session-bytes",
            &u64::MAX.to_string(),
            "--session-secs",
            &u64::MAX.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start relay (build it with cargo build --release)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rss0 = rss_kib(child.id());

    // 1. Concurrent sessions.
    let mut pairs = Vec::new();
    for i in 0..sessions {
        let mut session = [0u8; 16];
        session[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        register(&a, relay, session, Role::Listener, [1; 8]).await;
        register(&b, relay, session, Role::Connector, [2; 8]).await;
        pairs.push((session, a, b));
    }
    // Drain the Peer notifications.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (session, a, b) in pairs {
        for (tx, rx) in [(a.clone(), b.clone()), (b, a)] {
            let sent = sent.clone();
            let got = got.clone();
            tasks.push(tokio::spawn(async move {
                let frame = Frame::Data {
                    session,
                    payload: vec![7u8; 100],
                }
                .emit();
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / pps.max(1)));
                while Instant::now() < stop_at {
                    tick.tick().await;
                    if tx.send_to(&frame, relay).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let end = stop_at + Duration::from_secs(1);
                while let Ok(Ok((n, _))) = tokio::time::timeout(
                    end.saturating_duration_since(Instant::now()),
                    rx.recv_from(&mut buf),
                )
                .await
                {
                    if matches!(Frame::parse(&buf[..n]), Ok(Frame::Data { .. })) {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let mut peak = 0;
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(child.id()));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (s, g) = (sent.load(Ordering::Relaxed), got.load(Ordering::Relaxed));
    println!(
        "sessions: {sessions} concurrent for {secs} s, {pps} pkt/s per peer: sent {s}, delivered {g}, lost {} ({:.3} %)",
        s - g.min(s),
        100.0 * (s - g.min(s)) as f64 / s.max(1) as f64
    );
    println!(
        "relay RSS: {} KiB at start, {} KiB peak under load",
        rss0, peak
    );

    // 2. Throughput: relay vs direct, same datagrams, same loopback, same run.
    let payload = vec![0x5au8; 1200 - 16 - 4];
    let run = |via_relay: bool| {
        let payload = payload.clone();
        async move {
            let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let session = [0xeeu8; 16];
            if via_relay {
                register(&a, relay, session, Role::Listener, [3; 8]).await;
                register(&b, relay, session, Role::Connector, [4; 8]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut buf = [0u8; 256];
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(50), a.recv_from(&mut buf)).await
                {
                }
            }
            let dst = if via_relay {
                relay
            } else {
                b.local_addr().unwrap()
            };
            let frame = Frame::Data { session, payload }.emit();
            assert_eq!(frame.len(), 1200);
            let bytes = Arc::new(AtomicU64::new(0));
            let dur = Duration::from_secs(3);
            let counter = bytes.clone();
            let rx = tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout(Duration::from_millis(300), b.recv_from(&mut buf)).await
                {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            // Paced in small bursts so that neither path is measured by its drops alone.
            let t0 = Instant::now();
            while t0.elapsed() < dur {
                for _ in 0..32 {
                    let _ = a.send_to(&frame, dst).await;
                }
                tokio::task::yield_now().await;
            }
            let _ = rx.await;
            bytes.load(Ordering::Relaxed) as f64 / dur.as_secs_f64()
        }
    };
    let direct = run(false).await;
    let relayed = run(true).await;
    println!(
        "throughput, 1200-byte datagrams: direct {:.1} MB/s, through relay {:.1} MB/s, ratio {:.2}",
        direct / 1e6,
        relayed / 1e6,
        relayed / direct
    );

    // 3. Register flood: relay CPU per 10,000 requests, against STUN Binding in this run.
    let n = env_or("BENCH_FLOOD", 50_000) as u32;
    let pid = child.id();
    let register_in = |i: u32| {
        let mut session = [0xf1u8; 16];
        session[..4].copy_from_slice(&i.to_be_bytes());
        Frame::Register {
            session,
            role: Role::Listener,
            peer: [9; 8],
            token: vec![],
            candidates: vec![],
        }
    };
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (stun_n, stun_cpu) = flood(&s, relay, pid, n, |i| {
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&i.to_be_bytes());
        stun::binding_request(tid, stun::Change::NONE)
    })
    .await;
    let (bare_n, bare_cpu) = flood(&s, relay, pid, n, |i| register_in(i).emit()).await;
    // One cookie serves every Register from one socket within its window.
    let mut t = Trailer {
        tx: 9,
        cookie: vec![],
    };
    s.send_to(&register_in(0).emit_with(Some(&t)), relay)
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    if let Ok(Ok((k, _))) =
        tokio::time::timeout(Duration::from_secs(1), s.recv_from(&mut buf)).await
    {
        if let Ok((Frame::Cookie, Some(c))) = Frame::parse_with(&buf[..k]) {
            t.cookie = c.cookie;
        }
    }
    let (full_n, full_cpu) = flood(&s, relay, pid, n, |i| register_in(i).emit_with(Some(&t))).await;
    let per10k = |answered: u64, cpu: f64| cpu * 10_000.0 / answered.max(1) as f64;
    let base = per10k(stun_n, stun_cpu);
    println!(
        "relay CPU per 10,000 requests: STUN Binding {:.3} s (baseline, {stun_n} answered)",
        base
    );
    for (name, k, cpu) in [
        (
            "Register without cookie (spoofable; answered by a cookie)",
            bare_n,
            bare_cpu,
        ),
        (
            "Register with cookie (each makes a session)",
            full_n,
            full_cpu,
        ),
    ] {
        let v = per10k(k, cpu);
        println!(
            "relay CPU per 10,000 requests: {name} {v:.3} s, {:.1}x the baseline ({k} answered)",
            v / base.max(1e-9)
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
