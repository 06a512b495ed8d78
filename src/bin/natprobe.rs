//! natprobe: can strangers reach this machine, and if not, why and what would work.
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use natkit::app::cli::NatprobeArgs;
use natkit::app::output::{self, Output};
use std::io::IsTerminal;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = NatprobeArgs::parse();
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            output::print_error("natprobe", &e);
            return natkit::exit::ERROR;
        }
    };
    natkit::app::cli::init_logging(cfg.verbose);
    let out = Output::decide(cfg.json, cfg.color);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::print_error("natprobe", &e);
            return natkit::exit::ERROR;
        }
    };
    let bar = (cfg.probe.lifetime_max.is_some() && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("binding lifetime {bar:30} {pos}/{len} gaps {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let result = rt.block_on(natkit::net::natprobe::run(&cfg.probe, |done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let rep = match result {
        Ok(r) => r,
        Err(e) => {
            output::print_error("natprobe", &e);
            return natkit::exit::ERROR;
        }
    };
    if let Err(code) = output::finish_output(out.emit(&rep), "natprobe") {
        return code;
    }
    if !rep.udp {
        let tried = if rep.tried.is_empty() {
            String::new()
        } else {
            format!(" Tried: {}.", rep.tried.join("; "))
        };
        eprintln!(
            "natprobe: error: {}.{tried}",
            rep.verdict
                .reasons
                .first()
                .map_or("no answer", |s| s.as_str())
        );
    }
    rep.exit_code()
}
