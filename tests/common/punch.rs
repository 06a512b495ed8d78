//! A punch process on the lab whose stderr JSON events arrive while it runs.
use super::lab::Lab;
use serde_json::Value;
use std::io::Write;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A punch side: stdin stays open until [`Live::close_input`].
pub struct Live {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    events: mpsc::Receiver<Value>,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    /// When the first stdout byte arrived.
    first_byte: std::sync::Arc<std::sync::OnceLock<Instant>>,
    /// When the side was started.
    pub started: Instant,
    seen: Vec<Value>,
}

/// `punch ARGS` in a lab node with stdin, stdout and stderr piped.
pub fn spawn_punch(lab: &Lab, node: &str, args: &[&str]) -> Child {
    lab.cmd(node, env!("CARGO_BIN_EXE_punch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// [`spawn_punch`] meeting at the lab's relay (on `pub`), JSON events on stderr.
pub fn spawn_at_relay(lab: &Lab, node: &str, args: &[&str]) -> Child {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--relay", lab.get("PUB_IP"), "--json"]);
    spawn_punch(lab, node, &all)
}

pub fn live(lab: &Lab, node: &str, args: &[&str]) -> Live {
    live_of(spawn_punch(lab, node, args))
}

/// Reads a spawned side's stdout and its stderr's events while it runs.
fn live_of(mut child: Child) -> Live {
    let started = Instant::now();
    let stdin = child.stdin.take();
    let mut out = child.stdout.take().unwrap();
    let first_byte = std::sync::Arc::new(std::sync::OnceLock::new());
    let first = first_byte.clone();
    let stdout = std::thread::spawn(move || {
        let (mut v, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
        while let Ok(k @ 1..) = std::io::Read::read(&mut out, &mut buf) {
            first.get_or_init(Instant::now);
            v.extend_from_slice(&buf[..k]);
        }
        v
    });
    let (tx, events) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            let v = serde_json::from_str(&l).unwrap_or(Value::String(l));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    Live {
        child,
        stdin,
        events,
        stdout,
        first_byte,
        started,
        seen: Vec::new(),
    }
}

/// Pseudo-random bytes (xorshift), so a corrupted transfer cannot pass by accident.
#[allow(dead_code)]
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A punch side meeting at the lab's relay (on `pub`), JSON events while it runs.
#[allow(dead_code)]
pub fn at_relay(lab: &Lab, node: &str, args: &[&str]) -> Live {
    live_of(spawn_at_relay(lab, node, args))
}

/// A `connected` event on the direct path.
#[allow(dead_code)]
pub fn is_direct(v: &Value) -> bool {
    v["event"] == "connected" && v["path"] == "direct"
}

impl Live {
    /// Waits up to `limit` for an event matching `want`.
    pub fn wait_for(&mut self, limit: Duration, want: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if want(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    pub fn write(&mut self, b: &[u8]) {
        if let Some(s) = &mut self.stdin {
            let _ = s.write_all(b);
        }
    }

    /// Writes `input` to stdin from a thread (the side reads it only once connected), then
    /// closes it.
    pub fn feed(&mut self, input: Vec<u8>) {
        if let Some(mut s) = self.stdin.take() {
            std::thread::spawn(move || {
                let _ = s.write_all(&input);
            });
        }
    }

    /// Writes `input` to stdin from a thread in 16 KiB chunks `pace` apart (a transfer that
    /// lasts), then closes it.
    #[allow(dead_code)]
    pub fn feed_paced(&mut self, input: Vec<u8>, pace: Duration) {
        if let Some(mut s) = self.stdin.take() {
            std::thread::spawn(move || {
                for c in input.chunks(16 * 1024) {
                    if s.write_all(c).is_err() {
                        return;
                    }
                    std::thread::sleep(pace);
                }
            });
        }
    }

    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    pub fn finish(mut self) -> (Option<i32>, Vec<u8>, Vec<Value>) {
        self.stdin = None;
        let status = self.exit_within(Duration::from_secs(20));
        let out = self.stdout.join().unwrap();
        self.seen.extend(self.events.iter());
        (status.code(), out, self.seen)
    }

    /// [`Live::finish`], and when the first stdout byte arrived, since the side was started.
    #[allow(dead_code)]
    pub fn finish_timed(self) -> (Option<i32>, Vec<u8>, Vec<Value>, Option<Duration>) {
        let (first, started) = (self.first_byte.clone(), self.started);
        let (code, out, events) = self.finish();
        (code, out, events, first.get().map(|t| *t - started))
    }

    /// Whether the side is still running.
    #[allow(dead_code)]
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit (killed after it); returns the exit
    /// code and every event printed.
    #[allow(dead_code)]
    pub fn terminate(mut self, limit: Duration) -> (Option<i32>, Vec<Value>) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.exit_within(limit);
        self.seen.extend(self.events.iter());
        (status.code(), self.seen)
    }

    /// Waits up to `limit` for the side to exit; kills it after that.
    fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the side now; returns every event it printed.
    #[allow(dead_code)]
    pub fn kill(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.extend(self.events.iter());
        self.seen
    }
}

/// A stream of `len` bytes that the receiver can check without having kept them: byte `i`
/// of stream `seed` (xorshift of its position, so no shifted run matches by chance).
#[allow(dead_code)]
pub fn stream_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let mut x = (i / 8) ^ (seed << 40) ^ 0x9E37_79B9_7F4A_7C15;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> ((i % 8) * 8)) as u8
        })
        .collect()
}

/// What a punch side run by [`timed`] did.
#[allow(dead_code)]
pub struct Timed {
    pub code: Option<i32>,
    /// When it exited, since the common start.
    pub exited: Duration,
    pub stdout: Vec<u8>,
    /// When stdout's bytes arrived, since the common start: (time, bytes so far).
    pub arrivals: Vec<(Duration, usize)>,
    pub stderr: String,
}

impl Timed {
    /// The longest time stdout stood still after `from` (a gap that began before `from`
    /// counts from `from`), and when that stall ended.
    #[allow(dead_code)]
    pub fn longest_stall_after(&self, from: Duration) -> (Duration, Duration) {
        let mut last = from;
        let mut worst = (Duration::ZERO, from);
        for &(t, _) in self.arrivals.iter().filter(|a| a.0 > from) {
            if t - last > worst.0 {
                worst = (t - last, t);
            }
            last = t;
        }
        worst
    }
}

/// Runs `punch ARGS --relay PUB_IP --json` in `node`, writing `input` to its stdin in
/// `chunk`-byte pieces `pace` apart (a transfer that lasts), then closing it; stdout's
/// arrival times are measured from `t0`. A side still running after `limit` is killed.
#[allow(dead_code)]
pub fn timed(
    lab: &Lab,
    node: &str,
    args: &[&str],
    (input, chunk, pace): (Vec<u8>, usize, Duration),
    t0: Instant,
    limit: Duration,
) -> std::thread::JoinHandle<Timed> {
    let mut child = spawn_at_relay(lab, node, args);
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        for c in input.chunks(chunk.max(1)) {
            if stdin.write_all(c).is_err() {
                return;
            }
            std::thread::sleep(pace);
        }
    });
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let (mut all, mut arrivals, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 64 * 1024]);
        while let Ok(k @ 1..) = std::io::Read::read(&mut out, &mut buf) {
            all.extend_from_slice(&buf[..k]);
            arrivals.push((t0.elapsed(), all.len()));
        }
        (all, arrivals)
    });
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    std::thread::spawn(move || {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let exited = t0.elapsed();
        let (stdout, arrivals) = reader.join().unwrap();
        Timed {
            code: status.code(),
            exited,
            stdout,
            arrivals,
            stderr: stderr.join().unwrap(),
        }
    })
}

/// A `punch --manual --json` side, with `input` written to its stdin.
#[allow(dead_code)]
pub fn manual_side(lab: &Lab, node: &str, args: &[&str], input: Vec<u8>) -> Live {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--manual", "--json"]);
    let mut s = live(lab, node, &all);
    s.feed(input);
    s
}

/// The `offer` event of a manual side.
#[allow(dead_code)]
pub fn offer_of(s: &mut Live) -> String {
    s.wait_for(Duration::from_secs(10), |v| v["event"] == "offer")
        .expect("no offer event")["offer"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A minimal HTTP/1.0 server (in the test process, bound inside a lab namespace) that serves
/// `body` to every GET.
#[allow(dead_code)]
pub fn http_server(l: std::net::TcpListener, body: Vec<u8>) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 1024];
                let _ = std::io::Read::read(&mut s, &mut req);
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            });
        }
    });
}

/// GETs /file from `addr` (in the calling thread's namespace) and returns the body.
#[allow(dead_code)]
pub fn http_get(addr: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /file HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header")
        + 4;
    all[split..].to_vec()
}
