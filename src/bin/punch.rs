//! punch: two shells connected through NATs, encrypted, direct whenever possible.
use clap::Parser;
use natkit::app::cli::PunchArgs;
use natkit::app::output;
use natkit::app::punch::{blocking_again, event_line, grow_pipes, stdio};
use natkit::net::punch::{Event, PunchError};
use std::io::Write;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = PunchArgs::parse();
    let serve = args.is_serve();
    let (opts, json, verbose) = match args.into_options() {
        Ok(x) => x,
        Err(e) => {
            output::print_error("punch", &e);
            return natkit::exit::ERROR;
        }
    };
    natkit::app::cli::init_logging(verbose);
    grow_pipes();
    let rt = match natkit::app::runtime("punch", false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if serve {
        return serve_until_signalled(rt, opts, json);
    }
    let emit = move |e: &Event| {
        let _ = writeln!(std::io::stderr(), "{}", event_line(e, json));
    };
    let r = rt.block_on(async {
        let (input, output) = stdio();
        natkit::net::punch::run(opts, emit, input, output).await
    });
    let code = match r {
        Ok(done) => {
            emit(&done);
            natkit::exit::OK
        }
        Err(PunchError::Pake(natkit::proto::punch::pake::PakeError::WrongCode)) => {
            let _ = writeln!(
                std::io::stderr(),
                "punch: error: wrong code: the other side used a different code"
            );
            natkit::exit::WRONG_CODE
        }
        Err(e) => {
            output::print_error("punch", &e);
            natkit::exit::ERROR
        }
    };
    // stdin may still be blocked in a reader thread; do not wait for it.
    rt.shutdown_background();
    blocking_again();
    code
}

/// `punch serve`: until SIGINT or SIGTERM (exit 0), or an error that ends it (exit 2).
fn serve_until_signalled(
    rt: tokio::runtime::Runtime,
    opts: natkit::net::punch::PunchOptions,
    json: bool,
) -> i32 {
    use natkit::app::punch::serve_event_line;
    let emit = move |e: &natkit::net::punch::serve::ServeEvent| {
        let _ = writeln!(std::io::stderr(), "{}", serve_event_line(e, json));
    };
    let r = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let signalled = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        natkit::net::punch::serve::serve(opts, emit, signalled).await
    });
    rt.shutdown_background();
    match r {
        Ok(()) => natkit::exit::OK,
        Err(e) => {
            output::print_error("punch", &e);
            natkit::exit::ERROR
        }
    }
}
