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
5-12 s other tools need.",
    after_long_help = "EXIT STATUS:\n  0  this host can accept unsolicited inbound traffic\n  \
1  it cannot: a NAT or firewall filters it (the report says which, and what would work)\n  \
2  no server answered, the network is unusable, or an error (message on stderr)\n\n\
EXAMPLES:\n  natprobe --server stun.example.net\n  natprobe --json | jq .verdict\n  \
natprobe --server 203.0.113.10 --lifetime",
    after_help = "Exit status: 0 can host, 1 cannot, 2 no answer or error."
)]
pub struct NatprobeArgs {
    /// STUN server HOST[:PORT] (port 3478 when omitted); repeat to compare servers. Default: a
    /// built-in list of public servers, RFC 5780-capable ones first.
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
through the relay when no direct path works.\n\n\
It only ever sends to the source of the request it answers or to the observed address of a \
registered peer, never to an address a client names. Sources in private, loopback, \
link-local, multicast and CGNAT ranges (also as IPv4-mapped IPv6) are refused unless \
--allow-private. Every request type is rate-limited per source IP; sessions are capped in \
number, bytes and time.",
    after_long_help = "EXIT STATUS:\n  0  stopped by SIGTERM or SIGINT\n  \
2  bad usage, or an address could not be bound (message on stderr)\n\n\
SIGNALS:\n  SIGTERM, SIGINT  stop serving and exit 0\n\n\
EXAMPLES:\n  relay --addr 203.0.113.10 --alt-addr 203.0.113.11\n  \
relay --addr 0.0.0.0 --metrics 127.0.0.1:9478 --json\n  \
NATKIT_RELAY_SECRET=… relay --addr 203.0.113.10 --print-token 86400",
    after_help = "Exit status: 0 stopped by a signal, 2 bad usage or cannot bind."
)]
pub struct RelayArgs {
    /// Primary IP address to serve on.
    #[arg(long, value_name = "IP")]
    pub addr: std::net::IpAddr,
    /// Second IP address: turns on RFC 5780 behaviour discovery.
    #[arg(long, value_name = "IP2")]
    pub alt_addr: Option<std::net::IpAddr>,
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
    /// Families must match.
    #[error("--addr and --alt-addr must be of the same address family")]
    Family,
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
        if let Some(a) = self.alt_addr {
            if a == self.addr {
                return Err(RelayArgsError::SameAddr);
            }
            if a.is_ipv4() != self.addr.is_ipv4() {
                return Err(RelayArgsError::Family);
            }
            if self.alt_port == self.port {
                return Err(RelayArgsError::SamePort);
            }
        }
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
            primary: std::net::SocketAddr::new(self.addr, self.port),
            alt_ip: self.alt_addr,
            alt_port: self.alt_port,
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

/// punch's arguments.
#[derive(Debug, Parser)]
#[command(
    name = "punch",
    version,
    about = "Connect two shells through NATs: direct when possible, relayed when not, always encrypted",
    long_about = "punch connects two machines behind NATs with a short code, like \
7-lantern-harbor. Each side's stdin goes to the other side's stdout (binary-safe, both \
directions at once, end of input reaches the other side as end of output).\n\n\
Both sides meet at a natkit relay, learn each other's addresses, and start UDP hole \
punching at the same instant; when no direct path works within --direct-timeout, the \
data goes through the relay instead. Either way, a PAKE (SPAKE2) keyed by the code \
authenticates both ends, and QUIC with certificates pinned by the PAKE encrypts \
everything: the relay sees only ciphertext. A wrong code fails on both sides.\n\nA network \
that changes under a session (link down and up, a new address, a route gone for a while) is a \
stall, not the end; a side that hears nothing from the other for --dead-peer-timeout exits 2.",
    after_long_help = "EXIT STATUS:\n  0  both directions finished\n  \
2  an error: bad usage, the relay is unreachable or refused, the other side never came, \
the connection broke, nothing came from the other side for --dead-peer-timeout (message on stderr)\n  3  wrong code\n\n\
EXAMPLES:\n  punch listen --relay relay.example.net < file        # prints a code\n  \
punch connect --relay relay.example.net 7-lantern-harbor > file\n  \
punch listen --relay 203.0.113.10 --json",
    after_help = "Exit status: 0 done, 2 error, 3 wrong code."
)]
pub struct PunchArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: PunchCmd,
}

/// punch's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PunchCmd {
    /// Wait for the other side; prints a code unless --code is given.
    Listen {
        /// Options shared by both sides.
        #[command(flatten)]
        common: PunchCommon,
        /// Use this code instead of a random one.
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        /// Host a local TCP service: each connection the other side makes (with --local) is
        /// carried to HOST:PORT here.
        #[arg(long, value_name = "HOST:PORT")]
        expose: Option<String>,
        /// No server at all (the pwnat technique; needs CAP_NET_RAW): send ICMP echo requests
        /// to --echo-target and wait for a connector's ICMP Time Exceeded, which the NAT lets
        /// in and which tells where to punch UDP. Works when the connector has a public
        /// address.
        #[arg(long, conflicts_with_all = ["relay", "manual"])]
        icmp: bool,
    },
    /// Join the side that printed CODE.
    Connect {
        /// Options shared by both sides.
        #[command(flatten)]
        common: PunchCommon,
        /// The code the listening side printed.
        code: String,
        /// Listen on [HOST:]PORT here (HOST defaults to 127.0.0.1) and carry every accepted
        /// TCP connection to the other side's --expose service, many at once.
        #[arg(long, value_name = "[HOST:]PORT")]
        local: Option<String>,
        /// No server at all (the pwnat technique; needs CAP_NET_RAW): send the listener at
        /// LISTENER_HOST (its public IPv4 address) an ICMP Time Exceeded that its NAT takes for
        /// an answer to its echo requests, then punch UDP.
        #[arg(long, value_name = "LISTENER_HOST", conflicts_with_all = ["relay", "manual"])]
        icmp: Option<String>,
    },
}

/// Options of both punch subcommands.
#[derive(Debug, clap::Args)]
pub struct PunchCommon {
    /// natkit relay HOST[:PORT] to meet at (port 3478 when omitted). Not used with --manual.
    #[arg(
        long,
        env = "NATKIT_RELAY",
        value_name = "HOST[:PORT]",
        required_unless_present_any = ["manual", "icmp"]
    )]
    pub relay: Option<String>,
    /// Serverless: print a one-line offer to paste on the other side and take theirs (from
    /// --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to.
    #[arg(long)]
    pub manual: bool,
    /// With --manual: a STUN server HOST[:PORT] that tells this side's public address (put
    /// in the offer; without it, the offer carries only local and router-mapped addresses).
    #[arg(long, value_name = "HOST[:PORT]", requires = "manual")]
    pub stun: Option<String>,
    /// With --manual: the other side's offer.
    #[arg(
        long,
        value_name = "OFFER",
        requires = "manual",
        conflicts_with = "peer_file"
    )]
    pub peer: Option<String>,
    /// With --manual: wait for the other side's offer as the first line of FILE.
    #[arg(long, value_name = "FILE", requires = "manual")]
    pub peer_file: Option<std::path::PathBuf>,
    /// Relay token, hex (when the relay runs with --secret).
    #[arg(long, env = "NATKIT_RELAY_TOKEN", value_name = "HEX")]
    pub token: Option<String>,
    /// JSON lines on stderr instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up on a direct path after this many milliseconds and use the relay.
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub direct_timeout: u64,
    /// When both NATs pick a new port per destination (symmetric × symmetric), still try
    /// birthday probing from both sides for 10 s before settling on the relay (it works only
    /// with NATs whose ports are not fully random).
    #[arg(long)]
    pub hard: bool,
    /// Punch TCP too: after authenticating, try a direct TCP connection (simultaneous open
    /// from the port the relay saw) and carry the pipe over TLS on it when it works; else go
    /// on over UDP. Carries the pipe only (not --expose / --local).
    #[arg(long, conflicts_with_all = ["manual", "icmp"])]
    pub tcp: bool,
    /// With --icmp: where the listener's echo requests go — an address where nothing
    /// answers, the same on both sides (default 3.3.3.3, pwnat's).
    #[arg(long, value_name = "IP", requires = "icmp")]
    pub echo_target: Option<std::net::Ipv4Addr>,
    /// Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a
    /// mapped port is offered to the peer as one more candidate and removed at exit.
    #[arg(long)]
    pub no_portmap: bool,
    /// Keepalive interval in seconds (keeps NAT mappings open).
    #[arg(long, value_name = "SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub keepalive: u64,
    /// End the session (exit 2) when nothing has come from the other side, directly or
    /// through the relay, for this many seconds: a network that changes is a stall, one
    /// gone for good is an error. Both sides end by the same rule.
    #[arg(long, value_name = "SECS", default_value_t = crate::defaults::DEAD_PEER_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub dead_peer_timeout: u64,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Why punch arguments are not usable.
#[derive(Debug, thiserror::Error)]
pub enum PunchArgsError {
    /// Bad code.
    #[error(transparent)]
    Code(#[from] crate::proto::punch::code::CodeError),
    /// Bad relay address.
    #[error(transparent)]
    Relay(#[from] crate::net::natprobe::ProbeError),
    /// Token not hex.
    #[error("--token must be hex")]
    Token,
    /// --tcp with --expose / --local.
    #[error("--tcp carries the pipe (stdin/stdout) only; --expose and --local go over QUIC (drop --tcp)")]
    TcpHosting,
    /// Bad --expose / --local address.
    #[error("{0}: expected {1}")]
    Addr(String, &'static str),
    /// Bad --peer offer.
    #[error("--peer: {0}")]
    Offer(#[from] crate::wire::offer::OfferError),
}

fn socket_addr(
    s: &str,
    default_host: Option<&str>,
    what: &'static str,
) -> Result<std::net::SocketAddr, PunchArgsError> {
    use std::net::ToSocketAddrs;
    let full = match (default_host, s.parse::<u16>()) {
        (Some(h), Ok(p)) => format!("{h}:{p}"),
        _ => s.to_string(),
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| PunchArgsError::Addr(s.to_string(), what))
}

/// `--manual` without `--peer`: the other side's offer is pasted on the controlling
/// terminal (stdin carries the data, so never stdin).
fn terminal_offer() -> crate::net::punch::OfferPrompt {
    crate::net::punch::OfferPrompt(std::sync::Arc::new(|| {
        Box::pin(async {
            tokio::task::spawn_blocking(|| {
                use std::io::{BufRead, Write};
                let mut tty = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/tty")
                    .map_err(|e| {
                        format!(
                            "no terminal to paste it on ({e}); give it with --peer OFFER or \
                             --peer-file FILE"
                        )
                    })?;
                let _ = write!(tty, "paste the other side's offer: ");
                let _ = tty.flush();
                let mut line = String::new();
                std::io::BufReader::new(tty)
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                Ok(line)
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }))
}

impl PunchArgs {
    /// Validates before any IO; returns the options, JSON flag and verbosity.
    pub fn into_options(
        self,
    ) -> Result<(crate::net::punch::PunchOptions, bool, u8), PunchArgsError> {
        use crate::net::punch::quic::Mode;
        let (common, role, code, mode, icmp) = match self.cmd {
            PunchCmd::Listen {
                common,
                code,
                expose,
                icmp,
            } => {
                let c = match code {
                    Some(c) => crate::proto::punch::code::Code::parse(&c)?,
                    None => crate::proto::punch::code::Code::generate(&mut rand::thread_rng()),
                };
                let mode = match expose {
                    Some(e) => Mode::Expose(socket_addr(&e, None, "HOST:PORT")?),
                    None => Mode::Pipe,
                };
                let target = common
                    .echo_target
                    .unwrap_or(crate::defaults::ICMP_ECHO_TARGET);
                let icmp = icmp.then_some(crate::net::punch::PeerOffer::IcmpListen {
                    echo_target: target,
                });
                (
                    common,
                    crate::wire::rendezvous::Role::Listener,
                    c,
                    mode,
                    icmp,
                )
            }
            PunchCmd::Connect {
                common,
                code,
                local,
                icmp,
            } => {
                let mode = match local {
                    Some(l) => Mode::Local(socket_addr(&l, Some("127.0.0.1"), "[HOST:]PORT")?),
                    None => Mode::Pipe,
                };
                let target = common
                    .echo_target
                    .unwrap_or(crate::defaults::ICMP_ECHO_TARGET);
                let icmp = icmp.map(|listener| crate::net::punch::PeerOffer::IcmpConnect {
                    listener,
                    echo_target: target,
                });
                (
                    common,
                    crate::wire::rendezvous::Role::Connector,
                    crate::proto::punch::code::Code::parse(&code)?,
                    mode,
                    icmp,
                )
            }
        };
        if common.tcp && mode != Mode::Pipe {
            return Err(PunchArgsError::TcpHosting);
        }
        let relay = common.relay.clone().unwrap_or_default();
        let manual = if let Some(peer) = icmp {
            Some(crate::net::punch::Manual { stun: None, peer })
        } else if common.manual {
            if let Some(s) = &common.stun {
                crate::net::sys::parse_server(s)?;
            }
            if let Some(o) = &common.peer {
                crate::wire::offer::parse(o)?;
            }
            Some(crate::net::punch::Manual {
                stun: common.stun.clone(),
                peer: match (&common.peer, &common.peer_file) {
                    (Some(o), _) => crate::net::punch::PeerOffer::Given(o.clone()),
                    (None, Some(f)) => crate::net::punch::PeerOffer::File(f.clone()),
                    (None, None) => crate::net::punch::PeerOffer::Prompt(terminal_offer()),
                },
            })
        } else {
            crate::net::sys::parse_server(&relay)?;
            None
        };
        let token = match &common.token {
            None => Vec::new(),
            Some(h) => {
                let h = h.trim();
                if h.len() % 2 != 0 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(PunchArgsError::Token);
                }
                (0..h.len())
                    .step_by(2)
                    .map(|i| {
                        u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| PunchArgsError::Token)
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        Ok((
            crate::net::punch::PunchOptions {
                relay,
                manual,
                role,
                code,
                direct_timeout: Duration::from_millis(common.direct_timeout),
                keepalive: Duration::from_secs(common.keepalive),
                dead_peer: Duration::from_secs(common.dead_peer_timeout),
                token,
                mode,
                portmap: !common.no_portmap,
                hard: common.hard,
                tcp: common.tcp,
            },
            common.json,
            common.verbose,
        ))
    }
}

/// portmap's arguments.
#[derive(Debug, Parser)]
#[command(
    name = "portmap",
    version,
    about = "Ask the router for a port: UPnP IGD, NAT-PMP and PCP, checked from outside",
    long_about = "portmap asks the home router to forward a port to this machine, with whichever \
of the three port-mapping protocols it speaks: PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD. \
It tells when the mapping cannot help (the router's external address is private or in the \
carrier-grade NAT range: a second NAT sits in front of it), keeps leases alive with --keep, \
removes them on exit, records them so a crashed run can be cleaned up with \
`delete --all-mine`, and with --verify asks a natkit relay to connect back from outside.",
    after_long_help = "EXIT STATUS:\n  0  done\n  \
1  the router cannot help: no port-mapping protocol answers, it refused the mapping, the \
mapping cannot make this host reachable (double NAT), or --verify found the port closed\n  \
2  an error: bad usage, no default gateway, a local failure (message on stderr)\n\n\
EXAMPLES:\n  portmap probe\n  portmap add 8080 --proto tcp --keep\n  \
portmap add 25565 --external 25565 --verify --relay relay.example.net\n  \
portmap list --json\n  portmap delete --all-mine",
    after_help = "Exit status: 0 done, 1 the router cannot help, 2 error."
)]
pub struct PortmapArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: PortmapCmd,
    /// Options of every subcommand.
    #[command(flatten)]
    pub common: PortmapCommon,
}

/// Options of every portmap subcommand.
#[derive(Debug, clap::Args)]
pub struct PortmapCommon {
    /// The router to ask, instead of the default gateway.
    #[arg(long, global = true, value_name = "IP")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Print JSON (stable keys, `schema` version) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a router that does not answer after this many milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = defaults::PORTMAP_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub timeout: u64,
    /// Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else
    /// $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json).
    #[arg(long, global = true, env = "NATKIT_PORTMAP_STATE", value_name = "FILE")]
    pub state: Option<std::path::PathBuf>,
    /// When to colour the text output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Which protocol to use: the command line's face of [`crate::proto::portmap::Via`] (the core
/// knows nothing of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// PCP, then NAT-PMP, then UPnP: the first that works.
    Auto,
    /// UPnP IGD.
    Upnp,
    /// NAT-PMP (RFC 6886).
    Natpmp,
    /// PCP (RFC 6887).
    Pcp,
}

impl From<Via> for crate::proto::portmap::Via {
    fn from(v: Via) -> Self {
        use crate::proto::portmap::Via as V;
        match v {
            Via::Auto => V::Auto,
            Via::Upnp => V::Upnp,
            Via::Natpmp => V::Natpmp,
            Via::Pcp => V::Pcp,
        }
    }
}

/// Transport protocol of a mapping: the command line's face of
/// [`crate::proto::portmap::Proto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl From<Proto> for crate::proto::portmap::Proto {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => Self::Tcp,
            Proto::Udp => Self::Udp,
        }
    }
}

/// portmap's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PortmapCmd {
    /// Which protocols the router answers (read-only: creates nothing).
    Probe,
    /// The router's external address.
    ExternalIp,
    /// Forward a port of the router to this machine.
    Add {
        /// Local port to forward to.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Protocol.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// External port to ask for (default: the same as PORT; the router may pick another).
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        external: Option<u16>,
        /// Lease in seconds; 0 asks for a permanent mapping (UPnP only).
        #[arg(long, value_name = "SECS", default_value_t = defaults::PORTMAP_LIFETIME.as_secs() as u32)]
        lifetime: u32,
        /// Protocol to use.
        #[arg(long, value_enum, default_value_t = Via::Auto)]
        via: Via,
        /// Stay running: renew at half the lease, re-create the mapping after a router
        /// restart, remove it on SIGINT/SIGTERM.
        #[arg(long)]
        keep: bool,
        /// Ask a natkit relay (--relay) to connect to the external address and port from
        /// outside, and report whether it got through.
        #[arg(long, requires = "relay")]
        verify: bool,
        /// natkit relay HOST[:PORT] for --verify.
        #[arg(long, env = "NATKIT_RELAY", value_name = "HOST[:PORT]")]
        relay: Option<String>,
    },
    /// Remove a mapping.
    Delete {
        /// Local port whose mapping to remove (with --via upnp: the external port).
        #[arg(value_parser = clap::value_parser!(u16).range(1..), required_unless_present = "all_mine")]
        port: Option<u16>,
        /// Protocol.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// Protocol to use (default: the one natkit recorded, else all three).
        #[arg(long, value_enum, default_value_t = Via::Auto)]
        via: Via,
        /// Remove every mapping natkit recorded for this gateway (e.g. after a crash).
        #[arg(long, conflicts_with = "port")]
        all_mine: bool,
    },
    /// The router's UPnP table and natkit's own NAT-PMP/PCP leases.
    List,
}

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
