//! Command-line definitions (clap derive), in the library so that man pages and shell
//! completions are generated from the same definitions the binaries parse with, and a test can
//! tell when `man/` is stale.

use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::defaults;
use crate::report::ColorChoice;

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
    pub probe: crate::probe::ProbeOptions,
    /// Output settings.
    pub json: bool,
    /// Colour choice.
    pub color: ColorChoice,
    /// Verbosity.
    pub verbose: u8,
}

impl NatprobeArgs {
    /// Validates the arguments before any IO.
    pub fn into_config(self) -> Result<NatprobeConfig, crate::probe::ProbeError> {
        let servers = if self.servers.is_empty() {
            defaults::DEFAULT_SERVERS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            self.servers
        };
        for s in &servers {
            crate::probe::parse_server(s)?;
        }
        Ok(NatprobeConfig {
            probe: crate::probe::ProbeOptions {
                servers,
                first_timeout: Duration::from_millis(self.timeout),
                lifetime_max: self
                    .lifetime
                    .then(|| Duration::from_secs(self.lifetime_max)),
            },
            json: self.json,
            color: self.color,
            verbose: self.verbose,
        })
    }
}

/// Every binary's clap command, for man pages and completions.
pub fn commands() -> Vec<clap::Command> {
    vec![NatprobeArgs::command()]
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
