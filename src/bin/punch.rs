//! punch: two shells connected through NATs, encrypted, direct whenever possible.
use clap::Parser;
use natkit::cli::PunchArgs;
use natkit::punch_io::{Event, PunchError};
use natkit::report;
use std::io::Write;

fn main() {
    std::process::exit(run());
}

fn human(e: &Event) -> String {
    match e {
        Event::Code { code } => {
            format!("punch: code {code}  (on the other side: punch connect … {code})")
        }
        Event::Registered { observed } => format!("punch: at the relay, seen as {observed}"),
        Event::Tried {
            method,
            probes,
            elapsed_ms,
            ..
        } => format!(
            "punch: {method} found no direct path ({probes} probes, {elapsed_ms} ms); staying on the relay"
        ),
        Event::Offer { offer } => {
            format!("punch: your offer — paste it on the other side:\n{offer}")
        }
        Event::Nat { mine, peer, expect } => format!(
            "punch: our NAT: mapping {}, filtering {}; theirs: mapping {}, filtering {}; \
             expected: {} ({}): {}",
            mine.mapping.as_str(),
            mine.filtering.as_str(),
            peer.mapping.as_str(),
            peer.filtering.as_str(),
            expect.path,
            expect.technique,
            expect.why
        ),
        Event::Mapped { external, via } => {
            format!("punch: the router forwards {external} to us ({via}); offered to the peer")
        }
        Event::Connected {
            path: "direct",
            method,
            peer,
            elapsed_ms,
            probes,
        } => {
            let how = match *method {
                "birthday" => "birthday probing",
                _ => "UDP hole punch",
            };
            format!("punch: connected directly to {peer} ({how}, {probes} probes, {elapsed_ms} ms)")
        }
        Event::Connected { elapsed_ms, .. } => {
            format!("punch: no direct path; connected through the relay ({elapsed_ms} ms)")
        }
        Event::Listening { local } => {
            format!("punch: forwarding connections to {local} to the other side")
        }
        Event::Authenticated { .. } => {
            "punch: both sides know the code; encrypted end to end".to_string()
        }
        Event::Done {
            bytes_sent,
            bytes_received,
            ..
        } => {
            format!("punch: done: sent {bytes_sent} bytes, received {bytes_received} bytes")
        }
    }
}

fn run() -> i32 {
    let args = PunchArgs::parse();
    let (opts, json, verbose) = match args.into_options() {
        Ok(x) => x,
        Err(e) => {
            report::print_error("punch", &e);
            return natkit::exit::ERROR;
        }
    };
    natkit::cli::init_logging(verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report::print_error("punch", &e);
            return natkit::exit::ERROR;
        }
    };
    let emit = move |e: &Event| {
        let line = if json {
            serde_json::to_string(e).unwrap_or_default()
        } else {
            human(e)
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    let r = rt.block_on(natkit::punch_io::run(
        opts,
        emit,
        tokio::io::stdin(),
        tokio::io::stdout(),
    ));
    let code = match r {
        Ok(done) => {
            emit(&done);
            natkit::exit::OK
        }
        Err(PunchError::Pake(natkit::punch::pake::PakeError::WrongCode)) => {
            let _ = writeln!(
                std::io::stderr(),
                "punch: error: wrong code: the other side used a different code"
            );
            natkit::exit::WRONG_CODE
        }
        Err(e) => {
            report::print_error("punch", &e);
            natkit::exit::ERROR
        }
    };
    // stdin may still be blocked in a reader thread; do not wait for it.
    rt.shutdown_background();
    code
}
