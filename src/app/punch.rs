//! punch's side of the terminal: events as text for people (or JSON lines) on stderr, and
//! stdin/stdout as the session's byte stream.

use crate::net::punch::Event;

/// One event as a line for people.
pub fn human(e: &Event) -> String {
    match e {
        Event::Code { code } => {
            format!("punch: code {code}  (on the other side: punch connect … {code})")
        }
        Event::Registered { observed } => format!("punch: at the relay, seen as {observed}"),
        Event::Tried {
            method,
            probes,
            elapsed_ms,
            ..
        } => format!(
            "punch: {method} found no direct path ({probes} probes, {elapsed_ms} ms); staying on the relay"
        ),
        Event::Offer { offer } => {
            format!("punch: your offer — paste it on the other side:\n{offer}")
        }
        Event::Nat {
            mine,
            peer,
            expect,
            opening,
        } => format!(
            "punch: our NAT: mapping {}, filtering {}; theirs: mapping {}, filtering {}; \
             expected: {} ({}): {}; {}",
            mine.mapping.as_str(),
            mine.filtering.as_str(),
            peer.mapping.as_str(),
            peer.filtering.as_str(),
            expect.path,
            expect.technique,
            expect.why,
            opening_text(opening)
        ),
        Event::Opening { opening } => {
            format!("punch: TTL measurement settled: {}", opening_text(opening))
        }
        Event::Mapped { external, via } => {
            format!("punch: the router forwards {external} to us ({via}); offered to the peer")
        }
        Event::Connected {
            path: "direct",
            method,
            peer,
            elapsed_ms,
            probes,
            ..
        } => {
            let how = match *method {
                "birthday" => "birthday probing",
                "prediction" => "port prediction",
                "tcp" => "TCP",
                "icmp" => "ICMP hole punch",
                _ => "UDP hole punch",
            };
            let over = if peer.is_ipv6() { " over IPv6" } else { "" };
            format!(
                "punch: connected directly to {peer}{over} ({how}, {probes} probes, {elapsed_ms} ms)"
            )
        }
        Event::Connected { elapsed_ms, .. } => {
            format!("punch: no direct path; connected through the relay ({elapsed_ms} ms)")
        }
        Event::Listening { local } => {
            format!("punch: forwarding connections to {local} to the other side")
        }
        Event::ListeningUdp { local } => {
            format!("punch: forwarding UDP sent to {local} to the other side")
        }
        Event::Authenticated { .. } => {
            "punch: both sides know the code; encrypted end to end".to_string()
        }
        Event::Warning { message } => format!("punch: warning: {message}"),
        Event::Done {
            bytes_sent,
            bytes_received,
            ..
        } => {
            format!("punch: done: sent {bytes_sent} bytes, received {bytes_received} bytes")
        }
    }
}

/// stdin and stdout are often pipes (`tar c | punch …`): a 1 MiB pipe buffer (Linux's
/// default ceiling, `fs.pipe-max-size`) instead of 64 KiB means 16× fewer reads and writes,
/// each a hop to tokio's blocking pool. Not a pipe, or not allowed: nothing changes.
pub fn grow_pipes() {
    for fd in [0, 1] {
        // SAFETY: fcntl on our own standard descriptors; failure is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) };
    }
}

/// The session's input: stdin, as a tokio pipe or through tokio's blocking stdio.
pub type Input = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
/// The session's output: stdout, likewise.
pub type Output = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// stdin and stdout for the session. A pipe is read and written in place by tokio's
/// reactor (non-blocking, no thread hop per read); anything else (a terminal, a file,
/// /dev/null) goes through tokio's blocking stdio. Must run inside the runtime.
pub fn stdio() -> (Input, Output) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::net::unix::pipe;
    fn fifo(fd: i32) -> Option<OwnedFd> {
        // SAFETY: fstat on a standard descriptor into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
        // SAFETY: `dup` gives a descriptor we own; the original stays open for the process.
        (ok && st.st_mode & libc::S_IFMT == libc::S_IFIFO)
            .then(|| unsafe { libc::dup(fd) })
            .filter(|d| *d >= 0)
            .map(|d| unsafe { OwnedFd::from_raw_fd(d) })
    }
    let input: Input = match fifo(std::io::stdin().as_raw_fd())
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok())
    {
        Some(r) => Box::new(r),
        None => Box::new(tokio::io::stdin()),
    };
    let output: Output = match fifo(std::io::stdout().as_raw_fd())
        .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok())
    {
        Some(w) => Box::new(w),
        None => Box::new(tokio::io::stdout()),
    };
    (input, output)
}

/// [`stdio`] made shared pipe descriptions non-blocking; whoever writes to or reads from
/// them after us (`{ punch …; echo done; } | less`) expects blocking ones.
pub fn blocking_again() {
    for fd in [0, 1] {
        // SAFETY: fcntl on our own standard descriptors; failure is harmless.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
    }
}

/// How our NAT is opened for the peer, and why, in a sentence.
fn opening_text(d: &crate::proto::punch::ttl::Distances) -> String {
    let hops = |h: Option<u8>| h.map_or("unknown".to_string(), |h| format!("{h} hop(s)"));
    let measured = format!(
        "our NAT {}, theirs {} away",
        hops(d.own_nat_hops),
        hops(d.peer_nat_hops)
    );
    match (d.method, d.opening_ttl) {
        ("ttl", Some(t)) => format!("opening packets with TTL {t} ({measured})"),
        ("order", _) => format!(
            "the NATs are next to each other and the peer's answers packets addressed to \
             itself, so no TTL is safe: the sides take turns ({measured})"
        ),
        _ => "opening packets with TTL 2 and 3 (no router answered the TTL probes)".to_string(),
    }
}

/// One event as the line written to stderr: JSON with `--json`, text otherwise.
pub fn event_line(e: &Event, json: bool) -> String {
    if json {
        serde_json::to_string(e).unwrap_or_default()
    } else {
        human(e)
    }
}

/// One `punch serve` event as a line for people: a peer's session events are prefixed with
/// its id, and peers joining and leaving are said so.
pub fn serve_human(e: &crate::net::punch::serve::ServeEvent) -> String {
    use crate::net::punch::serve::{PeerChange, ServeEvent};
    match e {
        ServeEvent::Own(e) => human(e),
        // Serverless: each offer is for whoever comes next.
        ServeEvent::Peer {
            peer,
            event: Event::Offer { offer },
        } => format!(
            "punch: [peer {peer}] offer for the next peer, who runs punch connect CODE --peer \
             OFFER with the code above and sends its own offer back as one line:\n{offer}"
        ),
        ServeEvent::Peer { peer, event } => {
            let line = human(event);
            let rest = line.strip_prefix("punch: ").unwrap_or(&line);
            format!("punch: [peer {peer}] {rest}")
        }
        ServeEvent::Change(PeerChange::PeerJoined { peer }) => {
            format!("punch: peer {peer} joined")
        }
        ServeEvent::Change(PeerChange::PeerLeft {
            peer,
            bytes_sent,
            bytes_received,
            error,
        }) => {
            let why = error.as_ref().map_or(String::new(), |e| format!(": {e}"));
            format!(
                "punch: peer {peer} left (sent {bytes_sent} bytes, received {bytes_received} bytes){why}"
            )
        }
        ServeEvent::Change(PeerChange::AuthFailed {
            peer,
            reason,
            failures,
        }) => format!(
            "punch: peer {peer} did not prove it knows the code ({reason}); {failures} such \
             attempt(s) so far, rate-limited"
        ),
    }
}

/// One `punch serve` event as the line written to stderr: JSON with `--json`, text otherwise.
pub fn serve_event_line(e: &crate::net::punch::serve::ServeEvent, json: bool) -> String {
    if json {
        serde_json::to_string(e).unwrap_or_default()
    } else {
        serve_human(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::punch::ttl::Distances;

    fn direct(method: &'static str) -> Event {
        Event::Connected {
            path: "direct",
            method,
            peer: "203.0.113.5:4000".parse().unwrap(),
            family: "ipv4",
            elapsed_ms: 80,
            probes: 3,
        }
    }

    /// Regression: every direct connection was called a "UDP hole punch", a punched TCP
    /// connection too.
    #[test]
    fn direct_connection_line_names_its_method() {
        for (method, words) in [
            ("udp", "UDP hole punch"),
            ("tcp", "(TCP,"),
            ("birthday", "birthday probing"),
            ("prediction", "port prediction"),
            ("icmp", "ICMP hole punch"),
        ] {
            let line = human(&direct(method));
            assert!(line.contains(words), "{method}: {line}");
        }
    }

    #[test]
    fn settled_opening_is_one_line_with_its_keys_in_json() {
        let e = Event::Opening {
            opening: Distances {
                own_nat_hops: Some(1),
                peer_nat_hops: Some(2),
                routers_between: 0,
                opening_ttl: None,
                method: "order",
            },
        };
        let line = human(&e);
        assert!(line.contains("no TTL is safe"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&event_line(&e, true)).unwrap();
        assert_eq!(v["event"], "opening");
        assert_eq!(v["opening"]["method"], "order");
        assert_eq!(v["opening"]["peer_nat_hops"], 2);
        assert!(v["opening"]["opening_ttl"].is_null());
    }
}
