//! The one output module: every report is a `Serialize` struct rendered either as JSON (stable
//! keys, a `schema` version) or as coloured text for people. Colour is decided once, here.

use std::io::{self, IsTerminal, Write};

use colored::Colorize;
use serde::Serialize;

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`.
    Auto,
    /// Always colour (never with `--json`).
    Always,
    /// Never colour.
    Never,
}

/// How reports are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// JSON instead of text.
    pub json: bool,
    /// Colour in text output.
    pub color: bool,
}

impl Output {
    /// Decides colour once (ripgrep's rules): never with JSON; `never`/`always` as asked;
    /// `auto` colours only a terminal without `NO_COLOR` and with a `TERM` other than `dumb`.
    pub fn decide(json: bool, choice: ColorChoice) -> Output {
        let color = !json
            && match choice {
                ColorChoice::Never => false,
                ColorChoice::Always => true,
                ColorChoice::Auto => {
                    io::stdout().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                        && std::env::var("TERM").map_or(true, |t| t != "dumb")
                }
            };
        colored::control::set_override(color);
        Output { json, color }
    }

    /// Writes a report to stdout.
    pub fn emit<R: Serialize + Human>(&self, report: &R) -> io::Result<()> {
        let stdout = io::stdout();
        let mut w = stdout.lock();
        if self.json {
            serde_json::to_writer(&mut w, report).map_err(io::Error::other)?;
            writeln!(w)?;
        } else {
            report.human(&mut w)?;
        }
        w.flush()
    }
}

/// Text rendering for people.
pub trait Human {
    /// Writes the report as text.
    fn human(&self, w: &mut dyn Write) -> io::Result<()>;
}

/// Finishes an output write: a closed pipe (`natprobe | head`) is not an error.
pub fn finish_output(r: io::Result<()>, prog: &str) -> Result<(), i32> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(0),
        Err(e) => {
            eprintln!("{prog}: error: cannot write output: {e}");
            Err(crate::exit::ERROR)
        }
    }
}

/// Prints an error with its cause chain to stderr, one line each, the last one ended too. A
/// cause whose text the message already shows (`"…: {0}"` over its source) is not repeated.
pub fn print_error(prog: &str, err: &(dyn std::error::Error + 'static)) {
    let _ = io::stderr()
        .lock()
        .write_all(error_text(prog, err).as_bytes());
}

/// The text [`print_error`] writes.
pub fn error_text(prog: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = format!("{prog}: error: {err}");
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        src = s.source();
    }
    msg.push('\n');
    msg
}

/// Formats an optional bool for people.
pub fn yes_no(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes".green().to_string(),
        Some(false) => "no".yellow().to_string(),
        None => "not tested".dimmed().to_string(),
    }
}
