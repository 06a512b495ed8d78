//! portmap's command line.

use clap::Parser;

use crate::app::output::ColorChoice;
use crate::defaults;

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
`delete --all-mine`, and with --verify asks a natkit relay to connect back from outside. \
With --ipv6 (add, delete, list) it opens a pinhole in the router's IPv6 firewall for this \
host's global address instead: PCP (RFC 6887 §11) or UPnP IGD:2 WANIPv6FirewallControl.",
    after_long_help = "EXIT STATUS:\n  0  done\n  \
1  the router cannot help: no port-mapping protocol answers, it refused the mapping, the \
mapping cannot make this host reachable (double NAT), or --verify found the port closed\n  \
2  an error: bad usage, no default gateway, a local failure (message on stderr)\n\n\
EXAMPLES:\n  portmap probe\n  portmap add 8080 --proto tcp --keep\n  \
portmap add 8080 --ipv6 --keep\n  \
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
        /// Open a pinhole in the router's IPv6 firewall for this host's global address
        /// instead (PCP or UPnP IGD:2; no NAT: the external port is PORT). --verify checks
        /// it over IPv6 (the relay needs an IPv6 address, and --alt-addr on IPv6 for UDP).
        #[arg(long)]
        ipv6: bool,
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
        /// Remove an IPv6 pinhole natkit opened (`add --ipv6`) instead.
        #[arg(long)]
        ipv6: bool,
    },
    /// The router's UPnP table and natkit's own NAT-PMP/PCP leases.
    List {
        /// natkit's IPv6 pinholes instead (routers cannot list those).
        #[arg(long)]
        ipv6: bool,
    },
}
