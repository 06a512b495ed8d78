//! portmap: ask the router for a port (UPnP IGD, NAT-PMP, PCP), checked from outside.
use clap::Parser;
use natkit::app::cli::{PortmapArgs, PortmapCmd};
use natkit::app::output::{self, Output};
use natkit::net::portmap::{self as pm, Ctx, MapRequest};
use std::time::Duration;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = PortmapArgs::parse();
    natkit::app::cli::init_logging(args.common.verbose);
    let out = Output::decide(args.common.json, args.common.color);
    if let PortmapCmd::Add { relay: Some(r), .. } = &args.cmd {
        if let Err(e) = natkit::net::natprobe::parse_server(r) {
            output::print_error("portmap", &e);
            return natkit::exit::ERROR;
        }
    }
    let ipv6 = matches!(
        args.cmd,
        PortmapCmd::Add { ipv6: true, .. }
            | PortmapCmd::Delete { ipv6: true, .. }
            | PortmapCmd::List { ipv6: true }
    );
    let ctx = match Ctx::new(
        args.common.gateway,
        Duration::from_millis(args.common.timeout),
        args.common.state.clone(),
    )
    .and_then(|c| if ipv6 { c.ipv6() } else { Ok(c) })
    {
        Ok(c) => c,
        Err(e) => {
            output::print_error("portmap", &e);
            return natkit::exit::ERROR;
        }
    };
    let rt = match natkit::app::runtime("portmap", false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = rt.block_on(async move {
        let emitted = |r: std::io::Result<()>, code: i32| match output::finish_output(r, "portmap")
        {
            Ok(()) => code,
            Err(c) => c,
        };
        match args.cmd {
            PortmapCmd::Probe => {
                let r = pm::probe_all(&ctx).await;
                let code = if r.available.is_empty() || !r.mapping_can_help {
                    natkit::exit::CANNOT_HOST
                } else {
                    natkit::exit::OK
                };
                emitted(out.emit(&r), code)
            }
            PortmapCmd::ExternalIp => {
                let r = pm::external_ip(&ctx).await;
                let code = if r.external_ip.is_some() {
                    natkit::exit::OK
                } else {
                    natkit::exit::CANNOT_HOST
                };
                emitted(out.emit(&r), code)
            }
            PortmapCmd::Add {
                port,
                proto,
                external,
                lifetime,
                via,
                keep,
                verify,
                relay,
                ..
            } => {
                let req = MapRequest {
                    proto: proto.into(),
                    internal_port: port,
                    external_port: external.unwrap_or(port),
                    lifetime,
                };
                // Signal handlers before the mapping exists: a SIGTERM right after it is made
                // must still remove it.
                let signals = if keep { Some(Signals::new()) } else { None };
                let mut r = pm::add(&ctx, req, via.into()).await;
                if let (true, Some(m), Some(relay)) = (verify, &r.mapping, &relay) {
                    match pm::verify(relay, m).await {
                        Ok(v) => r.verify = Some(v),
                        Err(e) => {
                            output::print_error("portmap", &e);
                            return natkit::exit::ERROR;
                        }
                    }
                }
                let code = r.exit_code();
                let printed = emitted(out.emit(&r), code);
                let (Some(m), Some(mut signals)) = (r.mapping.clone(), signals) else {
                    return printed;
                };
                pm::keep(
                    &ctx,
                    req,
                    m,
                    |e| {
                        let _ = out.emit(e);
                    },
                    async move { signals.wait().await },
                )
                .await;
                printed
            }
            PortmapCmd::Delete {
                port,
                proto,
                via,
                all_mine,
                ..
            } => {
                let port = if all_mine { None } else { port };
                match pm::delete(&ctx, port, proto.into(), via.into()).await {
                    Ok(r) => {
                        let code = r.exit_code();
                        emitted(out.emit(&r), code)
                    }
                    Err(e) => {
                        output::print_error("portmap", &e);
                        natkit::exit::ERROR
                    }
                }
            }
            PortmapCmd::List { .. } => match pm::list(&ctx).await {
                Ok(r) => emitted(out.emit(&r), natkit::exit::OK),
                Err(e) => {
                    output::print_error("portmap", &e);
                    natkit::exit::ERROR
                }
            },
        }
    });
    // As natprobe: a timed-out DNS lookup (the --relay of --verify) must not hold the exit.
    rt.shutdown_background();
    code
}

/// SIGINT or SIGTERM, both registered at once so neither kills the process before the
/// mapping is removed.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
        }
    }
}
