//! natprobe: can strangers reach this machine, and if not, why and what would work.
use clap::Parser;
use natkit::app::cli::NatprobeArgs;
use natkit::app::natprobe::{no_answer_line, Progress};
use natkit::app::output::{self, Output};

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    // The report's `elapsed_ms` ("done in N ms") is the process's time, not only the probe
    // driver's: argument parsing and the runtime's start count too (issue 15).
    let started = std::time::Instant::now();
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
    let rt = match natkit::app::runtime("natprobe", false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let bar = Progress::new(cfg.probe.lifetime_max.is_some());
    let result = rt.block_on(natkit::net::natprobe::run_dual(
        &cfg.probe,
        |done, total| bar.update(done, total),
    ));
    // A DNS lookup that timed out still runs in a blocking thread (getaddrinfo cannot be
    // cancelled); dropping the runtime would wait for it, and the process would outlive its
    // report's `elapsed_ms` by seconds. The run is over: do not wait.
    rt.shutdown_background();
    bar.finish();
    let rep = match result {
        Ok(mut r) => {
            r.elapsed_ms = started.elapsed().as_millis() as u64;
            r
        }
        Err(e) => {
            output::print_error("natprobe", &e);
            return natkit::exit::ERROR;
        }
    };
    if let Err(code) = output::finish_output(out.emit(&rep), "natprobe") {
        return code;
    }
    if let Some(line) = no_answer_line(&rep) {
        eprintln!("{line}");
    }
    rep.exit_code()
}
