//! punch's command line.

use std::time::Duration;

use clap::Parser;

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
punch listen --relay 203.0.113.10 --json\n  \
punch serve --relay relay.example.net --expose 127.0.0.1:8080   # many peers, one code\n  \
punch connect --relay relay.example.net --local 8080 CODE\n  \
punch serve --expose 127.0.0.1:8080 --json    # no relay: offers, theirs one per line on stdin",
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
        /// Host a local UDP service: each UDP source on the other side (with --local-udp) is
        /// its own flow, reaching HOST:PORT here from a port of its own.
        #[arg(long, value_name = "HOST:PORT")]
        expose_udp: Option<String>,
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
        /// The code the listening side printed (or the longer one `punch serve` printed).
        code: String,
        /// Listen on [HOST:]PORT here (HOST defaults to 127.0.0.1) and carry every accepted
        /// TCP connection to the other side's --expose service, many at once.
        #[arg(long, value_name = "[HOST:]PORT")]
        local: Option<String>,
        /// Receive UDP on [HOST:]PORT here (HOST defaults to 127.0.0.1): every local source
        /// is its own flow to the other side's --expose-udp service, and gets its answers.
        #[arg(long, value_name = "[HOST:]PORT")]
        local_udp: Option<String>,
        /// No server at all (the pwnat technique; needs CAP_NET_RAW): send the listener at
        /// LISTENER_HOST (its public IPv4 address) an ICMP Time Exceeded that its NAT takes for
        /// an answer to its echo requests, then punch UDP.
        #[arg(long, value_name = "LISTENER_HOST", conflicts_with_all = ["relay", "manual"])]
        icmp: Option<String>,
    },
    /// Host a service for everyone who has the code: prints a long code (a number and eight
    /// words) and serves every peer that joins it with `punch connect CODE`, one after
    /// another and several at once, each in its own session, until SIGINT or SIGTERM.
    ///
    /// Without a relay (no --relay, no NATKIT_RELAY, or --manual) serve runs serverless: it
    /// prints the code and an offer, and each peer runs `punch connect CODE --peer OFFER`
    /// and sends its own offer back; serve reads those one per line from stdin (or appended
    /// to --peer-file FILE), starts that peer's session and prints a fresh offer for the
    /// next peer. At the end of stdin it serves the peers it has until they leave.
    Serve {
        /// Options shared by both sides.
        #[command(flatten)]
        common: PunchCommon,
        /// The local TCP service: each connection a peer makes (with --local) is carried to
        /// HOST:PORT here.
        #[arg(long, value_name = "HOST:PORT")]
        expose: Option<String>,
        /// Host a local UDP service: each UDP source on the other side (with --local-udp) is
        /// its own flow, reaching HOST:PORT here from a port of its own.
        #[arg(long, value_name = "HOST:PORT")]
        expose_udp: Option<String>,
        /// Not for serve (it needs the relay's lobby); present so the shared options parse.
        #[arg(long, hide = true)]
        icmp: bool,
    },
}

/// Options of both punch subcommands.
#[derive(Debug, clap::Args)]
pub struct PunchCommon {
    /// natkit relay HOST[:PORT] to meet at (port 3478 when omitted). Not used with --manual.
    /// Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its
    /// public address from --stun or from natprobe's built-in public STUN servers.
    #[arg(long, env = "NATKIT_RELAY", value_name = "HOST[:PORT]")]
    pub relay: Option<String>,
    /// Serverless: print a one-line offer to paste on the other side and take theirs (from
    /// --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to.
    #[arg(long)]
    pub manual: bool,
    /// With --manual: a STUN server HOST[:PORT] that tells this side's public address (put
    /// in the offer; without it, the offer carries only local and router-mapped addresses).
    /// Without a relay: instead of the built-in public servers.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub stun: Option<String>,
    /// With --manual: the other side's offer.
    #[arg(long, value_name = "OFFER", conflicts_with = "peer_file")]
    pub peer: Option<String>,
    /// With --manual: wait for the other side's offer as the first line of FILE. Serverless
    /// serve: peers' offers, one per line appended to FILE.
    #[arg(long, value_name = "FILE")]
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
    #[error("--tcp carries the pipe (stdin/stdout) only; --expose, --local and the UDP options go over QUIC (drop --tcp)")]
    TcpHosting,
    /// Bad --expose / --local address.
    #[error("{0}: expected {1}")]
    Addr(String, &'static str),
    /// Bad --peer offer.
    #[error("--peer: {0}")]
    Offer(#[from] crate::wire::offer::OfferError),
    /// A serverless-mode option with a relay.
    #[error("{0} is for serverless mode (--manual, or no --relay and no NATKIT_RELAY)")]
    ManualOnly(&'static str),
    /// --tcp in serverless mode (TCP hole punching meets through the relay).
    #[error(
        "--tcp needs a relay (--relay or NATKIT_RELAY): TCP endpoints are exchanged through it"
    )]
    TcpManual,
    /// A server address with a zone id.
    #[error("{0} {1:?}: a zone id (%…) is meaningless for a server on the internet")]
    Zone(&'static str, String),
    /// `punch serve` without a relay, or with nothing to serve.
    #[error("{0}")]
    Serve(&'static str),
}

/// Zero configuration, shared by every subcommand that meets at a relay: without `--relay`
/// and `NATKIT_RELAY` (and without `--manual`), punch runs serverless, as with `--manual`,
/// instead of stopping at a missing argument. True when it did so; the session then says so
/// in one `warning` event and asks natprobe's built-in public STUN servers unless `--stun`
/// names one.
pub fn zero_config(common: &mut PunchCommon) -> bool {
    if common.relay.is_some() || common.manual {
        return false;
    }
    common.manual = true;
    true
}

/// Checks a server argument (`HOST[:PORT]`, `[IPv6]:PORT`, a bare IPv6 literal): a zone id
/// is refused by name, before the general syntax check.
fn server(flag: &'static str, s: &str) -> Result<(), PunchArgsError> {
    if s.contains('%') {
        return Err(PunchArgsError::Zone(flag, s.to_string()));
    }
    crate::net::sys::parse_server(s)?;
    Ok(())
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
                let mut reader = std::io::BufReader::new(tty);
                let read = reader.read_line(&mut line);
                // End of input (Ctrl-D) or an error leaves the cursor after the prompt: end
                // the line, or the error that follows runs into it.
                if !line.ends_with('\n') {
                    let _ = writeln!(reader.get_mut());
                }
                read.map_err(|e| e.to_string())?;
                Ok(line)
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }))
}

/// Serverless `punch serve` without `--peer-file`: peers' offers are lines on stdin (which
/// carries no data for serve), one line per call; an empty string at the end of input.
fn stdin_lines() -> crate::net::punch::OfferPrompt {
    crate::net::punch::OfferPrompt(std::sync::Arc::new(|| {
        Box::pin(async {
            tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("stdin: {e}"))?;
                Ok(line)
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }))
}

/// `--expose-udp` / `--local-udp`, parsed.
fn udp_side(
    arg: Option<String>,
    default_host: Option<&str>,
    side: fn(std::net::SocketAddr) -> crate::net::punch::udp::UdpSide,
) -> Result<Option<crate::net::punch::udp::UdpSide>, PunchArgsError> {
    let what = if default_host.is_some() {
        "[HOST:]PORT"
    } else {
        "HOST:PORT"
    };
    arg.map(|a| socket_addr(&a, default_host, what).map(side))
        .transpose()
}

impl PunchArgs {
    /// Whether this is `punch serve` (run with [`crate::net::punch::serve::serve`]).
    pub fn is_serve(&self) -> bool {
        matches!(self.cmd, PunchCmd::Serve { .. })
    }

    /// Validates before any IO; returns the options, JSON flag and verbosity.
    pub fn into_options(
        self,
    ) -> Result<(crate::net::punch::PunchOptions, bool, u8), PunchArgsError> {
        use crate::net::punch::quic::Mode;
        use crate::net::punch::udp::UdpSide;
        let mut join = None;
        let mut serve = false;
        let udp;
        let (common, role, mut code, mode, icmp) = match self.cmd {
            PunchCmd::Listen {
                common,
                code,
                expose,
                expose_udp,
                icmp,
            } => {
                udp = udp_side(expose_udp, None, UdpSide::Expose)?;
                let c = match code {
                    Some(c) => crate::proto::punch::code::Code::parse(&c)?,
                    None => crate::proto::punch::code::Code::generate(&mut rand::thread_rng()),
                };
                let mode = match expose {
                    Some(e) => Mode::Expose(socket_addr(&e, None, "HOST:PORT")?),
                    None if udp.is_some() => Mode::Udp,
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
            PunchCmd::Serve {
                common,
                expose,
                expose_udp,
                icmp,
            } => {
                udp = udp_side(expose_udp, None, UdpSide::Expose)?;
                // Without a relay, serve runs serverless ([`crate::net::punch::serve`]): an
                // offer per peer, the peers' offers one per line.
                if icmp {
                    return Err(PunchArgsError::Serve(
                        "punch serve has no --icmp mode: give it a relay, or none (serverless)",
                    ));
                }
                if common.peer.is_some() {
                    return Err(PunchArgsError::Serve(
                        "punch serve takes peers' offers one per line, on stdin or appended to \
                         --peer-file FILE; --peer holds only one",
                    ));
                }
                serve = true;
                let mode = match expose {
                    Some(e) => Mode::Expose(socket_addr(&e, None, "HOST:PORT")?),
                    None if udp.is_some() => Mode::Udp,
                    None => {
                        return Err(PunchArgsError::Serve(
                            "punch serve needs a service to serve: --expose HOST:PORT and/or \
                             --expose-udp HOST:PORT",
                        ))
                    }
                };
                // Each peer's session gets its code from the lobby; this one is never used.
                let c = crate::proto::punch::code::Code::generate(&mut rand::thread_rng());
                (
                    common,
                    crate::wire::rendezvous::Role::Listener,
                    c,
                    mode,
                    None,
                )
            }
            PunchCmd::Connect {
                common,
                code,
                local,
                local_udp,
                icmp,
            } => {
                udp = udp_side(local_udp, Some("127.0.0.1"), UdpSide::Local)?;
                let mode = match local {
                    Some(l) => Mode::Local(socket_addr(&l, Some("127.0.0.1"), "[HOST:]PORT")?),
                    None if udp.is_some() => Mode::Udp,
                    None => Mode::Pipe,
                };
                let target = common
                    .echo_target
                    .unwrap_or(crate::defaults::ICMP_ECHO_TARGET);
                let icmp = icmp.map(|listener| crate::net::punch::PeerOffer::IcmpConnect {
                    listener,
                    echo_target: target,
                });
                // A serve code (eight words) is joined through its lobby ([`join`]); the code
                // here is replaced by the session's.
                let parsed = match crate::proto::punch::serve::ServeCode::parse(&code) {
                    Some(sc) => {
                        let sc = sc?;
                        join = Some(sc.clone());
                        sc.sub_code(&[0; crate::proto::punch::serve::NONCE_LEN])
                    }
                    None => crate::proto::punch::code::Code::parse(&code)?,
                };
                (
                    common,
                    crate::wire::rendezvous::Role::Connector,
                    parsed,
                    mode,
                    icmp,
                )
            }
        };
        if join.is_some() && icmp.is_some() {
            return Err(PunchArgsError::Serve(
                "a serve code (eight words) is joined at the relay or serverless: drop --icmp",
            ));
        }
        if common.tcp && (mode != Mode::Pipe || udp.is_some()) {
            return Err(PunchArgsError::TcpHosting);
        }
        let mut common = common;
        let fallback = icmp.is_none() && zero_config(&mut common);
        // A serve code without a relay: serverless serve's session, by offers (no lobby).
        if common.manual {
            if let Some(sc) = join.take() {
                code = sc.serverless_code();
            }
        }
        if !common.manual {
            let given = [
                (common.stun.is_some(), "--stun"),
                (common.peer.is_some(), "--peer"),
                (common.peer_file.is_some(), "--peer-file"),
            ];
            if let Some((_, flag)) = given.iter().find(|g| g.0) {
                return Err(PunchArgsError::ManualOnly(flag));
            }
        } else if common.tcp {
            return Err(PunchArgsError::TcpManual);
        }
        let relay = common.relay.clone().unwrap_or_default();
        let manual = if let Some(peer) = icmp {
            Some(crate::net::punch::Manual {
                stun: None,
                peer,
                fallback: false,
            })
        } else if common.manual {
            if let Some(s) = &common.stun {
                server("--stun", s)?;
            }
            if let Some(o) = &common.peer {
                crate::wire::offer::parse(o)?;
            }
            Some(crate::net::punch::Manual {
                stun: common.stun.clone(),
                fallback,
                peer: match (&common.peer, &common.peer_file) {
                    (Some(o), _) => crate::net::punch::PeerOffer::Given(o.clone()),
                    (None, Some(f)) => crate::net::punch::PeerOffer::File(f.clone()),
                    (None, None) if serve => crate::net::punch::PeerOffer::Prompt(stdin_lines()),
                    (None, None) => crate::net::punch::PeerOffer::Prompt(terminal_offer()),
                },
            })
        } else {
            server("--relay", &relay)?;
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
                join,
                stop: None,
                udp,
            },
            common.json,
            common.verbose,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Result<crate::net::punch::PunchOptions, PunchArgsError> {
        let a = PunchArgs::try_parse_from(std::iter::once("punch").chain(args.iter().copied()))
            .expect("parses");
        a.into_options().map(|(o, _, _)| o)
    }

    #[test]
    fn serve_needs_a_service_and_runs_serverless_without_a_relay() {
        assert!(matches!(
            options(&["serve", "--relay", "127.0.0.1"]),
            Err(PunchArgsError::Serve(_))
        ));
        let o = options(&["serve", "--manual", "--expose", "127.0.0.1:80"]).unwrap();
        let m = o.manual.expect("serverless");
        assert!(!m.fallback);
        assert!(matches!(m.peer, crate::net::punch::PeerOffer::Prompt(_)));
        if std::env::var_os("NATKIT_RELAY").is_none() {
            let o = options(&["serve", "--expose", "127.0.0.1:80", "--peer-file", "f"]).unwrap();
            let m = o.manual.expect("zero configuration");
            assert!(m.fallback);
            assert!(matches!(m.peer, crate::net::punch::PeerOffer::File(_)));
        }
        for bad in [
            &[
                "serve",
                "--manual",
                "--expose",
                "127.0.0.1:80",
                "--peer",
                "x",
            ][..],
            &["serve", "--manual", "--expose", "127.0.0.1:80", "--icmp"],
        ] {
            assert!(
                matches!(options(bad), Err(PunchArgsError::Serve(_))),
                "{bad:?}"
            );
        }
        let o = options(&[
            "serve",
            "--relay",
            "127.0.0.1",
            "--expose-udp",
            "127.0.0.1:7",
        ])
        .unwrap();
        assert_eq!(o.mode, crate::net::punch::quic::Mode::Udp);
        assert!(o.udp.is_some());
    }

    #[test]
    fn a_serve_code_is_joined_through_the_lobby() {
        let code = "7-acid-acorn-actor-adobe-agent-alarm-album-alley";
        let o = options(&["connect", code, "--relay", "127.0.0.1", "--local-udp", "9"]).unwrap();
        assert_eq!(o.join.map(|c| c.to_string()).as_deref(), Some(code));
        // Serverless, the session is the serverless serve's: no lobby to join.
        let sc = crate::proto::punch::serve::ServeCode::parse(code)
            .unwrap()
            .unwrap();
        let o = options(&["connect", code, "--manual"]).unwrap();
        assert!(o.join.is_none());
        assert_eq!(o.code.session_id(), sc.serverless_code().session_id());
        assert_eq!(o.code.password(), sc.serverless_code().password());
        assert!(matches!(
            options(&["connect", code, "--icmp", "192.0.2.1"]),
            Err(PunchArgsError::Serve(_))
        ));
        let two = options(&["connect", "7-acid-acorn", "--relay", "127.0.0.1"]).unwrap();
        assert!(two.join.is_none());
    }
}
