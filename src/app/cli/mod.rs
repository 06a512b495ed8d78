//! Command-line definitions (clap derive), in the library so that man pages and shell
//! completions are generated from the same definitions the binaries parse with, and a test can
//! tell when `man/` is stale.

use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::app::output::ColorChoice;
use crate::defaults;

/// natprobe's arguments.
#[derive(Debug, Parser)]
#[command(
    name = "natprobe",
    version,
    about = "Say why this machine cannot host: classify its NAT (RFC 4787/5780) in about a second",
    long_about = "natprobe finds out whether strangers on the internet can reach this machine, \
and if not, what stops them and what would work instead. It classifies the NAT's mapping and \
filtering behaviour (RFC 4787, tested as RFC 5780 describes), hairpinning, port preservation, \
carrier-grade NAT and, with --lifetime, how long an idle mapping lives.\n\n\
All tests run at once, each on its own fresh local port, with retransmission timers derived \
from the measured round trip, so a full classification takes about one second instead of the \
5-12 s other tools need.\n\n\
IPv4 and IPv6 are probed at once, each against the servers' addresses of its family (a name's \
A and AAAA records). Over IPv6 there is usually no NAT, only the router's stateful firewall, \
whose filtering is measured the same way (`ipv6` in --json). A machine without a global IPv6 \
address or route is known to have none before anything is sent: it waits for nothing.",
    after_long_help = "EXIT STATUS:\n  0  this host can accept unsolicited inbound traffic \
(over IPv4 or IPv6)\n  \
1  it cannot: a NAT or firewall filters it (the report says which, and what would work)\n  \
2  no server answered, the network is unusable, or an error (message on stderr)\n\n\
EXAMPLES:\n  natprobe --server stun.example.net\n  natprobe --json | jq .verdict\n  \
natprobe --server 203.0.113.10 --lifetime",
    after_help = "Exit status: 0 can host, 1 cannot, 2 no answer or error."
)]
pub struct NatprobeArgs {
    /// STUN server HOST[:PORT] (port 3478 when omitted; IPv6 as 2001:db8::1 or
    /// [2001:db8::1]:3478, no zone id); repeat to compare servers. Default: a built-in list of
    /// public servers, RFC 5780-capable ones first.
    #[arg(short, long = "server", value_name = "HOST[:PORT]")]
    pub servers: Vec<String>,

    /// Print one JSON object (stable keys, `schema` version) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Give up on the first answer after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = defaults::FIRST_ANSWER_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub timeout: u64,

    /// Also measure how long an idle mapping survives (takes up to --lifetime-max).
    #[arg(long)]
    pub lifetime: bool,

    /// Longest idle gap tried by --lifetime, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = defaults::LIFETIME_MAX.as_secs(),
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub lifetime_max: u64,

    /// Do not ask the router which port-mapping protocols (PCP, NAT-PMP, UPnP IGD) it
    /// speaks.
    #[arg(long)]
    pub no_portmap: bool,

    /// When to colour the text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// More log output on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// natprobe's validated configuration.
#[derive(Debug, Clone)]
pub struct NatprobeConfig {
    /// Options for the probe.
    pub probe: crate::net::natprobe::ProbeOptions,
    /// Output settings.
    pub json: bool,
    /// Colour choice.
    pub color: ColorChoice,
    /// Verbosity.
    pub verbose: u8,
}

impl NatprobeArgs {
    /// Validates the arguments before any IO.
    pub fn into_config(self) -> Result<NatprobeConfig, crate::net::natprobe::ProbeError> {
        let servers = if self.servers.is_empty() {
            defaults::DEFAULT_SERVERS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            self.servers
        };
        for s in &servers {
            if s.contains('%') {
                return Err(crate::net::natprobe::ProbeError::ZoneId(s.clone()));
            }
            crate::net::sys::parse_server(s)?;
        }
        Ok(NatprobeConfig {
            probe: crate::net::natprobe::ProbeOptions {
                servers,
                first_timeout: Duration::from_millis(self.timeout),
                lifetime_max: self
                    .lifetime
                    .then(|| Duration::from_secs(self.lifetime_max)),
                portmap: !self.no_portmap,
            },
            json: self.json,
            color: self.color,
            verbose: self.verbose,
        })
    }
}

/// relay's arguments.
#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "The small public helper: STUN with RFC 5780 behaviour discovery, rendezvous, blind relay",
    long_about = "relay is the public helper natkit's tools use. It answers STUN Binding requests \
on every address it binds and, given a second address (--alt-addr), RFC 5780 behaviour \
discovery (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST, RESPONSE-PORT) on all four \
address/port combinations. On the primary port (UDP and TCP) it also speaks natkit's \
rendezvous protocol: two peers meet by a session id, learn each other's observed address, \
get a simultaneous start signal, and can exchange opaque (end-to-end encrypted) datagrams \
through the relay when no direct path works. Classic RFC 3489 clients (pystun3) get \
MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS, their CHANGE-REQUEST answered from the \
other IP at the same port (see README).\n\n\
--addr and --alt-addr may each be given once per family (IPv4 and IPv6): STUN and RFC 5780 \
then answer within the family a request came in on, and peers of either family meet and are \
relayed to each other.\n\n\
It only ever sends to the source of the request it answers or to the observed address of a \
registered peer, never to an address a client names. Sources in private, loopback, \
link-local, multicast, unique-local (fc00::/7) and CGNAT ranges (also as IPv4-mapped, NAT64 \
64:ff9b::/96 or 6to4 IPv6) are refused unless \
--allow-private. Every request type is rate-limited per source (an IPv4 address or an IPv6 \
/64); sessions are capped in number, bytes and time.",
    after_long_help = "EXIT STATUS:\n  0  stopped by SIGTERM or SIGINT\n  \
2  bad usage, or an address could not be bound (message on stderr)\n\n\
SIGNALS:\n  SIGTERM, SIGINT  stop serving and exit 0\n\n\
EXAMPLES:\n  relay --addr 203.0.113.10 --alt-addr 203.0.113.11\n  \
relay --addr 198.51.100.2 --addr 2001:db8::2 --alt-addr 198.51.100.3 --alt-addr 2001:db8::3\n  \
relay --addr 0.0.0.0 --metrics 127.0.0.1:9478 --json\n  \
NATKIT_RELAY_SECRET=… relay --addr 203.0.113.10 --print-token 86400",
    after_help = "Exit status: 0 stopped by a signal, 2 bad usage or cannot bind."
)]
pub struct RelayArgs {
    /// Primary IP address to serve on; once per family (IPv4 and IPv6).
    #[arg(long, value_name = "IP", required = true, value_parser = parse_serve_ip)]
    pub addr: Vec<std::net::IpAddr>,
    /// Second IP address: turns on RFC 5780 behaviour discovery; once per family.
    #[arg(long, value_name = "IP2", value_parser = parse_serve_ip)]
    pub alt_addr: Vec<std::net::IpAddr>,
    /// Primary port (STUN, rendezvous and relay; UDP and TCP).
    #[arg(long, default_value_t = defaults::STUN_PORT)]
    pub port: u16,
    /// Alternate port for RFC 5780.
    #[arg(long, default_value_t = defaults::STUN_PORT + 1)]
    pub alt_port: u16,
    /// Print the startup line as JSON.
    #[arg(long)]
    pub json: bool,
    /// Serve and relay for private, loopback and CGNAT addresses (labs and tests only).
    #[arg(long)]
    pub allow_private: bool,
    /// Require tokens made from this secret for rendezvous and relaying.
    #[arg(
        long,
        env = "NATKIT_RELAY_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,
    /// Print a token valid for SECS seconds (needs --secret) and exit.
    #[arg(long, value_name = "SECS", requires = "secret")]
    pub print_token: Option<u64>,
    /// Serve Prometheus metrics over HTTP on this address; bind it to localhost (e.g.
    /// 127.0.0.1:9478): it has no authentication and no connection cap.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Requests per second per source IP.
    #[arg(long, default_value_t = defaults::RELAY_REQS_PER_SEC, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Request burst per source IP.
    #[arg(long, default_value_t = defaults::RELAY_REQS_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
    /// Most sessions at once.
    #[arg(long, default_value_t = defaults::RELAY_MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Most sessions per source IP.
    #[arg(long, default_value_t = defaults::RELAY_SESSIONS_PER_SOURCE)]
    pub sessions_per_source: usize,
    /// Bytes relayed per session.
    #[arg(long, default_value_t = defaults::RELAY_SESSION_BYTES)]
    pub session_bytes: u64,
    /// Longest session life, in seconds.
    #[arg(long, default_value_t = defaults::RELAY_SESSION_SECS)]
    pub session_secs: u64,
    /// Idle seconds before a registration expires.
    #[arg(long, default_value_t = defaults::RELAY_IDLE_SECS)]
    pub idle_secs: u64,
    /// Dial-backs per minute per source IP.
    #[arg(long, default_value_t = defaults::RELAY_DIALBACKS_PER_MIN)]
    pub dialbacks_per_min: u32,
    /// Most TCP connections open at once (kept under the descriptor limit too).
    #[arg(long, default_value_t = defaults::RELAY_MAX_TCP, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tcp: usize,
    /// Most TCP connections per source (IPv4 address or IPv6 /64).
    #[arg(long, default_value_t = defaults::RELAY_TCP_PER_SOURCE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub tcp_per_source: usize,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Why relay arguments are not usable.
#[derive(Debug, thiserror::Error)]
pub enum RelayArgsError {
    /// The two addresses must differ (RFC 5780 needs two).
    #[error("--alt-addr must differ from --addr")]
    SameAddr,
    /// The two ports must differ.
    #[error("--alt-port must differ from --port")]
    SamePort,
    /// Each --alt-addr needs an --addr of its family.
    #[error("--addr and --alt-addr must be of the same address family")]
    Family,
    /// One --addr (and one --alt-addr) per family.
    #[error("{0} given twice for one address family (once for IPv4, once for IPv6)")]
    Twice(&'static str),
    /// A short secret lets anyone holding one token find it by trying.
    #[error(
        "--secret must be at least {} bytes (e.g. from `openssl rand -hex 16`)",
        defaults::RELAY_SECRET_MIN_LEN
    )]
    WeakSecret,
    /// `--print-token` beyond what the relay accepts.
    #[error("--print-token: at most {} seconds", defaults::RELAY_TOKEN_MAX_SECS)]
    TokenLifetime,
}

impl RelayArgs {
    /// Validates before any IO.
    pub fn into_config(&self) -> Result<crate::proto::relay::RelayConfig, RelayArgsError> {
        let per_family = |v: &[std::net::IpAddr], flag| match v {
            [a, b] if a.is_ipv4() == b.is_ipv4() => Err(RelayArgsError::Twice(flag)),
            [_, _, _, ..] => Err(RelayArgsError::Twice(flag)),
            _ => Ok(()),
        };
        per_family(&self.addr, "--addr")?;
        per_family(&self.alt_addr, "--alt-addr")?;
        let alt_of = |ip: std::net::IpAddr| -> Result<_, RelayArgsError> {
            let Some(&a) = self.alt_addr.iter().find(|a| a.is_ipv4() == ip.is_ipv4()) else {
                return Ok(None);
            };
            if a == ip {
                return Err(RelayArgsError::SameAddr);
            }
            if self.alt_port == self.port {
                return Err(RelayArgsError::SamePort);
            }
            Ok(Some(a))
        };
        if self
            .alt_addr
            .iter()
            .any(|a| !self.addr.iter().any(|p| p.is_ipv4() == a.is_ipv4()))
        {
            return Err(RelayArgsError::Family);
        }
        let primary = self.addr[0];
        let other_family = match self.addr.get(1) {
            Some(&ip) => Some((ip, alt_of(ip)?)),
            None => None,
        };
        if let Some(s) = &self.secret {
            if !crate::proto::relay::secret_strong_enough(s.as_bytes()) {
                return Err(RelayArgsError::WeakSecret);
            }
        }
        if self
            .print_token
            .is_some_and(|s| s > defaults::RELAY_TOKEN_MAX_SECS)
        {
            return Err(RelayArgsError::TokenLifetime);
        }
        Ok(crate::proto::relay::RelayConfig {
            primary: std::net::SocketAddr::new(primary, self.port),
            alt_ip: alt_of(primary)?,
            alt_port: self.alt_port,
            other_family,
            limits: crate::proto::relay::Limits {
                reqs_per_sec: self.rate,
                reqs_burst: self.burst,
                max_sources: defaults::RELAY_MAX_SOURCES,
                max_sessions: self.max_sessions,
                sessions_per_source: self.sessions_per_source,
                session_bytes: self.session_bytes,
                session_secs: self.session_secs,
                idle_secs: self.idle_secs,
                dialbacks_per_min: self.dialbacks_per_min,
                max_tcp: self.max_tcp,
                tcp_per_source: self.tcp_per_source,
            },
            allow_private: self.allow_private,
            secret: self.secret.as_ref().map(|s| s.as_bytes().to_vec()),
        })
    }
}

/// An address to serve on: an IP literal, IPv6 with or without brackets; a zone id is
/// refused (a relay serves global addresses, where a zone means nothing).
fn parse_serve_ip(s: &str) -> Result<std::net::IpAddr, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if s.starts_with('[') && s.contains("]:") || s.parse::<std::net::SocketAddrV4>().is_ok() {
        return Err(format!(
            "{s:?}: give the address alone and the port with --port"
        ));
    }
    if bare.contains('%') {
        return Err(format!(
            "{s:?}: a zone id (%…) is meaningless here: give a global address"
        ));
    }
    bare.parse()
        .map_err(|_| format!("{s:?} is not an IP address (e.g. 203.0.113.10 or 2001:db8::2)"))
}

mod portmap;
mod punch;

pub use portmap::*;
pub use punch::*;

/// Every binary's clap command, for man pages and completions.
pub fn commands() -> Vec<clap::Command> {
    vec![
        NatprobeArgs::command(),
        RelayArgs::command(),
        PunchArgs::command(),
        PortmapArgs::command(),
    ]
}

/// Sets up logging to stderr at the given verbosity (`RUST_LOG` wins when set).
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
