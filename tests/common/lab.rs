//! Rust side of the NAT lab (`scripts/natlab`): build a lab of network
//! namespaces with the NAT kinds a test needs, run code or programs inside its
//! nodes, and tear it down when the `Lab` is dropped (even on panic).
//!
//! ```ignore
//! let Some(lab) = Lab::up_or_skip(Lab::builder().a(Kind::FullCone).b(Kind::None)) else {
//!     return;
//! };
//! let sock = in_ns(&lab.ns("a"), || UdpSocket::bind("0.0.0.0:0").unwrap());
//! ```
//!
//! Nodes: `inet` (the internet bridge), `pub` (203.0.113.10 and .11; over IPv6
//! 2001:db8:0:ff::10 and ::11, named `relay.lab` in every node's hosts file), `a`, `b`
//! (hosts), `ra`, `rb` (their routers), `ca`, `cb` (carrier routers, cgnat only).
//! With `portmap_a`/`portmap_b`, `ra`/`rb` run the real miniupnpd (UPnP IGD,
//! NAT-PMP, PCP); see [`Lab::miniupnpd`] and `tests/common/miniupnpd.rs`.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the lab script.
pub const NATLAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/natlab");

/// Exit code of `natlab up` when the lab name is already taken.
const EXIT_EXISTS: i32 = 3;

/// The kind of network a host sits behind (see `natlab --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Open,
    FullCone,
    Restricted,
    PortRestricted,
    Symmetric,
    Sequential,
    UdpBlocked,
    Cgnat,
    Offline,
    None,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Open,
        Kind::FullCone,
        Kind::Restricted,
        Kind::PortRestricted,
        Kind::Symmetric,
        Kind::Sequential,
        Kind::UdpBlocked,
        Kind::Cgnat,
        Kind::Offline,
        Kind::None,
    ];

    /// The name `scripts/natlab` uses for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::FullCone => "full-cone",
            Kind::Restricted => "restricted",
            Kind::PortRestricted => "port-restricted",
            Kind::Symmetric => "symmetric",
            Kind::Sequential => "sequential",
            Kind::UdpBlocked => "udp-blocked",
            Kind::Cgnat => "cgnat",
            Kind::Offline => "offline",
            Kind::None => "none",
        }
    }

    /// Kinds whose router can hairpin (`--hairpin-x on`).
    pub fn supports_hairpin(self) -> bool {
        matches!(
            self,
            Kind::FullCone | Kind::Restricted | Kind::PortRestricted
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options for [`Lab`]; build with [`Lab::builder`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    a: Kind,
    b: Kind,
    hairpin_a: bool,
    hairpin_b: bool,
    timeout_a: Option<u32>,
    timeout_b: Option<u32>,
    loss: u32,
    rate: Option<String>,
    portmap_a: String,
    portmap_b: String,
    hops: Option<u8>,
    router_input: Option<&'static str>,
    v6_a: String,
    v6_b: String,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            a: Kind::PortRestricted,
            b: Kind::PortRestricted,
            hairpin_a: false,
            hairpin_b: false,
            timeout_a: None,
            timeout_b: None,
            loss: 0,
            rate: None,
            portmap_a: "off".to_string(),
            portmap_b: "off".to_string(),
            hops: None,
            router_input: None,
            v6_a: "none".to_string(),
            v6_b: "none".to_string(),
        }
    }
}

impl LabBuilder {
    /// `--hops N`: N real routers between the two sides' NATs (0: neighbours).
    pub fn hops(mut self, n: u8) -> Self {
        self.hops = Some(n);
        self
    }
    /// `--router-input accept|drop`.
    pub fn router_input(mut self, what: &'static str) -> Self {
        self.router_input = Some(what);
        self
    }
    /// `--v6-a none|fw|open`: IPv6 for side A (`fw`: the RFC 6092 home-router firewall;
    /// `open`: no filter; `none`, the default: link-local only). The env then has `A_IP6`,
    /// `A_GW6`, `A_WAN6`; see `natlab --help`.
    pub fn v6_a(mut self, mode: &str) -> Self {
        self.v6_a = mode.to_string();
        self
    }
    /// Like [`LabBuilder::v6_a`], for side B.
    pub fn v6_b(mut self, mode: &str) -> Self {
        self.v6_b = mode.to_string();
        self
    }
    pub fn a(mut self, kind: Kind) -> Self {
        self.a = kind;
        self
    }
    pub fn b(mut self, kind: Kind) -> Self {
        self.b = kind;
        self
    }
    pub fn hairpin_a(mut self, on: bool) -> Self {
        self.hairpin_a = on;
        self
    }
    pub fn hairpin_b(mut self, on: bool) -> Self {
        self.hairpin_b = on;
        self
    }
    /// UDP binding timeout (seconds) on A's router(s).
    pub fn timeout_a(mut self, secs: u32) -> Self {
        self.timeout_a = Some(secs);
        self
    }
    /// UDP binding timeout (seconds) on B's router(s).
    pub fn timeout_b(mut self, secs: u32) -> Self {
        self.timeout_b = Some(secs);
        self
    }
    /// Random loss (percent) of IPv4 packets crossing the internet bridge.
    pub fn loss(mut self, pct: u32) -> Self {
        self.loss = pct;
        self
    }
    /// Shape every node's link from the internet to `rate` (`natlab up --rate`, e.g.
    /// `"100mbit"`).
    pub fn rate(mut self, rate: &str) -> Self {
        self.rate = Some(rate.to_string());
        self
    }

    /// Run the real miniupnpd on A's home router (`natlab up --portmap-a`):
    /// `"all"` (UPnP IGD + NAT-PMP + PCP), `"natpmp"` (NAT-PMP + PCP only) or
    /// `"off"`. The lab's env then has `A_PORTMAP`, `A_UPNP_URL` (for `"all"`)
    /// and `PORTMAP_STUN`; see `natlab --help`, PORT MAPPING.
    pub fn portmap_a(mut self, mode: &str) -> Self {
        self.portmap_a = mode.to_string();
        self
    }
    /// Like [`LabBuilder::portmap_a`], for B's home router.
    pub fn portmap_b(mut self, mode: &str) -> Self {
        self.portmap_b = mode.to_string();
        self
    }

    /// The `natlab up NAME` options for this builder.
    pub fn args(&self) -> Vec<String> {
        let onoff = |b: bool| if b { "on" } else { "off" }.to_string();
        let mut v = vec![
            "--a".to_string(),
            self.a.as_str().to_string(),
            "--b".to_string(),
            self.b.as_str().to_string(),
            "--hairpin-a".to_string(),
            onoff(self.hairpin_a),
            "--hairpin-b".to_string(),
            onoff(self.hairpin_b),
            "--loss".to_string(),
            self.loss.to_string(),
        ];
        if let Some(t) = self.timeout_a {
            v.extend(["--timeout-a".to_string(), t.to_string()]);
        }
        if let Some(t) = self.timeout_b {
            v.extend(["--timeout-b".to_string(), t.to_string()]);
        }
        if let Some(r) = &self.rate {
            v.extend(["--rate".to_string(), r.clone()]);
        }
        if self.portmap_a != "off" {
            v.extend(["--portmap-a".to_string(), self.portmap_a.clone()]);
        }
        if self.portmap_b != "off" {
            v.extend(["--portmap-b".to_string(), self.portmap_b.clone()]);
        }
        if let Some(n) = self.hops {
            v.extend(["--hops".to_string(), n.to_string()]);
        }
        if let Some(r) = self.router_input {
            v.extend(["--router-input".to_string(), r.to_string()]);
        }
        // Only when asked for, so the command line of an IPv4-only lab stays as it was.
        if self.v6_a != "none" {
            v.extend(["--v6-a".to_string(), self.v6_a.clone()]);
        }
        if self.v6_b != "none" {
            v.extend(["--v6-b".to_string(), self.v6_b.clone()]);
        }
        v
    }

    /// Build the lab. Errors carry natlab's stderr.
    pub fn up(self) -> Result<Lab, String> {
        let args = self.args();
        let mut last_err = String::new();
        for _ in 0..8 {
            let name = next_name();
            let out = Command::new(NATLAB)
                .arg("up")
                .arg(&name)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {NATLAB}: {e}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.code() == Some(EXIT_EXISTS) {
                // A stale lab of an earlier run holds this name: take another.
                last_err = stderr;
                continue;
            }
            if !out.status.success() {
                return Err(format!(
                    "natlab up {name} {} failed ({}): {}",
                    args.join(" "),
                    out.status,
                    stderr.trim()
                ));
            }
            let env = parse_env(&String::from_utf8_lossy(&out.stdout));
            return Ok(Lab { name, env });
        }
        Err(format!("no free lab name: {}", last_err.trim()))
    }
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A unique lab name (≤ 8 chars of [a-z0-9]): unique among the threads of this
/// process by a counter and, mostly, among processes by the pid; `up` retries
/// with the next name when a name is taken anyway.
fn next_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    let pid = std::process::id() & 0xfff;
    format!("n{pid:03x}{c:x}")
}

/// A running lab; dropping it runs `natlab down`.
pub struct Lab {
    pub name: String,
    /// The KEY=VALUE lines `natlab up` printed (`A_WAN`, `PUB_IP`, ...).
    pub env: HashMap<String, String>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// Build the lab, or, when this machine cannot host labs at all (not root,
    /// no `ip`/`nft`), print a loud SKIPPED line and return `None` — except
    /// when `CI=true`, where a lab test that cannot build its lab panics.
    /// A lab that fails to come up on a capable machine always panics.
    pub fn up_or_skip(builder: LabBuilder) -> Option<Lab> {
        if !require_lab() {
            return None;
        }
        match builder.up() {
            Ok(lab) => Some(lab),
            Err(e) => panic!("lab failed to come up: {e}"),
        }
    }

    /// Namespace of `node` (`a`, `ra`, `pub`, ...).
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{}", self.name, node)
    }

    /// A value from the lab's env; panics when the key is unknown.
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("lab {} has no key {key}", self.name))
    }

    /// An IPv4 address from the lab's env (`A_WAN`, `PUB_IP`, ...).
    pub fn ip(&self, key: &str) -> Ipv4Addr {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("lab {}: {key}={v:?} is not an IPv4 address", self.name))
    }

    /// An IPv6 address from the lab's env (`PUB_IP6`, `A_IP6`, ...).
    pub fn ip6(&self, key: &str) -> Ipv6Addr {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("lab {}: {key}={v:?} is not an IPv6 address", self.name))
    }

    /// `ip netns exec NS program`, ready for more args.
    pub fn cmd(&self, node: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node), program]);
        c
    }

    /// Start `program args...` inside `node` (stdin null, stdout/stderr piped).
    /// `natlab down` kills whatever still runs there when the lab goes away.
    pub fn spawn_in(&self, node: &str, program: &str, args: &[&str]) -> io::Result<Child> {
        self.cmd(node, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Run `program args...` inside `node` to completion; Ok(stdout) on success.
    pub fn run_in(&self, node: &str, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd(node, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?} in {}: {}: {}",
                self.ns(node),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Run `f` on a thread inside `node`'s namespace (see [`in_ns`]).
    pub fn in_node<T: Send>(&self, node: &str, f: impl FnOnce() -> T + Send) -> T {
        in_ns(&self.ns(node), f)
    }

    /// `natlab flush NAME NODE`: forget the NAT bindings of a router.
    pub fn flush(&self, node: &str) {
        let st = Command::new(NATLAB)
            .args(["flush", &self.name, node])
            .status()
            .expect("run natlab flush");
        assert!(st.success(), "natlab flush {} {node} failed", self.name);
    }

    /// `natlab miniupnpd NAME ROUTER ACTION`: control the miniupnpd of a lab
    /// built with `portmap_a`/`portmap_b`. `router` is `"ra"` or `"rb"`;
    /// `action` is `"start"`, `"stop"` (SIGTERM; its mappings stay in place),
    /// `"restart"` (SIGKILL + start: mappings kept via its lease file) or
    /// `"reboot"` (SIGKILL, mappings and conntrack wiped, start). start,
    /// restart and reboot return once the daemon answers. Errors carry
    /// natlab's stderr.
    pub fn miniupnpd(&self, router: &str, action: &str) -> Result<(), String> {
        let out = Command::new(NATLAB)
            .args(["miniupnpd", &self.name, router, action])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {NATLAB}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "natlab miniupnpd {} {router} {action} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Tear the lab down now (Drop does it too).
    pub fn down(&self) {
        let _ = Command::new(NATLAB)
            .args(["down", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

/// Run `f` on a fresh thread that first joins the network namespace `ns`
/// (`/run/netns/NS`). Sockets created in `f` live in that namespace and can be
/// used from any thread afterwards. Panics in `f` propagate.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {path}: {e} (is the lab up?)"));
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r != 0 {
                panic!("setns({path}): {}", io::Error::last_os_error());
            }
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Why this machine cannot host a lab, if it cannot.
pub fn lab_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for tool in ["ip", "nft", "conntrack"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("'{tool}' not found in PATH"));
        }
    }
    if !std::path::Path::new(NATLAB).is_file() {
        return Some(format!("{NATLAB} missing"));
    }
    None
}

/// True when labs can be built here. Otherwise panics under `CI=true` (a lab
/// test must not pass silently in CI) and elsewhere prints a loud SKIPPED line
/// and returns false.
pub fn require_lab() -> bool {
    match lab_unavailable() {
        None => true,
        Some(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("lab unavailable in CI: {reason}");
            }
            eprintln!("\n*** SKIPPED: lab unavailable: {reason} ***\n");
            false
        }
    }
}

// ---------------------------------------------------------------- TCP helpers
// std cannot set SO_REUSEADDR/SO_REUSEPORT before bind; hole punching and the
// lab's TCP tests need a listener and outgoing connections on one port.

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to `local`.
fn reuse_tcp_socket(local: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: socket() returns a fresh fd or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: valid fd, pointer to a c_int of the given size.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &one as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    let sa = sockaddr_in(local);
    // SAFETY: sa is a valid sockaddr_in of the given size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// A TCP listener on `local` with SO_REUSEADDR|SO_REUSEPORT, so that
/// [`tcp_connect_from`] can connect out from the same port.
pub fn tcp_listen_reuse(local: SocketAddrV4) -> io::Result<TcpListener> {
    let fd = reuse_tcp_socket(local)?;
    // SAFETY: valid fd.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(TcpListener::from(fd))
}

/// Connect to `remote` from `local` (SO_REUSEADDR|SO_REUSEPORT, so the port
/// may be shared with a listener or other connections), giving up after
/// `timeout`.
pub fn tcp_connect_from(
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = reuse_tcp_socket(local)?;
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a valid fd.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    let sa = sockaddr_in(remote);
    // SAFETY: sa is a valid sockaddr_in of the given size.
    let r = unsafe {
        libc::connect(
            raw,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            break;
        }
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, pointer/len of a c_int.
        cvt(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags) })?;
    Ok(TcpStream::from(fd))
}

/// `accept` with a deadline.
pub fn accept_timeout(
    l: &TcpListener,
    timeout: Duration,
) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let res = loop {
        match l.accept() {
            Ok(v) => break Ok(v),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => break Err(e),
        }
    };
    l.set_nonblocking(false)?;
    let (s, a) = res?;
    s.set_nonblocking(false)?;
    Ok((s, a))
}
