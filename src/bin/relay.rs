//! relay: the small public helper (STUN + RFC 5780, rendezvous, blind relay).
use clap::Parser;
use natkit::app::cli::RelayArgs;
use natkit::app::output;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = RelayArgs::parse();
    natkit::app::cli::init_logging(args.verbose.max(1));
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            output::print_error("relay", &e);
            return natkit::exit::ERROR;
        }
    };
    if let (Some(secs), Some(secret)) = (args.print_token, &cfg.secret) {
        let now = natkit::net::sys::unix_now();
        // into_config bounds SECS, so this is None only for a clock past the year 2^64 s.
        let Some(token) = natkit::proto::relay::token_for(secret, now, secs) else {
            return natkit::exit::ERROR;
        };
        let hex = natkit::app::relay::token_hex(&token);
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{hex}");
        return natkit::exit::OK;
    }
    let rt = match natkit::app::runtime("relay", true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let (listening, serve, stop) = match natkit::net::relay::bind(cfg, args.metrics).await {
            Ok(x) => x,
            Err(e) => {
                output::print_error("relay", &e);
                return natkit::exit::ERROR;
            }
        };
        // Signal handlers first: whoever reads the startup line may signal at once.
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    output::print_error("relay", &e);
                    return natkit::exit::ERROR;
                }
            };
        let line = natkit::app::relay::startup_line(&listening, args.json);
        // A closed stdout must not stop the relay (it is a service); only the line is lost.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|_| out.flush());
        }
        let task = tokio::spawn(serve);
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(true);
        let _ = task.await;
        natkit::exit::OK
    })
}
