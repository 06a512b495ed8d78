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

/// Prints an error with its cause chain to stderr.
pub fn print_error(prog: &str, err: &(dyn std::error::Error + 'static)) {
    let mut msg = format!("{prog}: error: {err}");
    let mut src = err.source();
    while let Some(s) = src {
        msg.push_str(&format!("\n  caused by: {s}"));
        src = s.source();
    }
    eprintln!("{msg}");
}

/// Formats an optional bool for people.
pub fn yes_no(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes".green().to_string(),
        Some(false) => "no".yellow().to_string(),
        None => "not tested".dimmed().to_string(),
    }
}

fn behaviour_words(b: crate::proto::classify::Behaviour, mapping: bool) -> &'static str {
    use crate::proto::classify::Behaviour::*;
    match (b, mapping) {
        (EndpointIndependent, true) => "same public address for every destination",
        (AddressDependent, true) => "a new public port for each destination host",
        (AddressAndPortDependent, true) => "a new public port for each destination (symmetric)",
        (EndpointIndependent, false) => "anyone may answer once you have sent",
        (AddressDependent, false) => "only hosts you have sent to may answer",
        (AddressAndPortDependent, false) => {
            "only the exact address and port you sent to may answer"
        }
        (None, _) => "no translation",
        (Unknown, _) => "",
    }
}

impl Human for crate::net::natprobe::NatprobeReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        let head = if !self.udp {
            "natprobe: no answer".red().bold()
        } else if self.verdict.can_host {
            "natprobe: strangers CAN reach this machine".green().bold()
        } else {
            "natprobe: strangers CANNOT reach this machine"
                .yellow()
                .bold()
        };
        writeln!(w, "{head}")?;
        for r in &self.verdict.reasons {
            writeln!(w, "  · {r}")?;
        }
        writeln!(w)?;
        let row = |w: &mut dyn Write, k: &str, v: String| writeln!(w, "  {:<13} {v}", k.bold());
        let primary = self.servers.iter().find(|s| s.answered);
        row(
            w,
            "UDP",
            match (self.udp, primary) {
                (true, Some(s)) => format!(
                    "{} (server {}{}{})",
                    "works".green(),
                    s.addr.map(|a| a.to_string()).unwrap_or_default(),
                    s.rtt_ms
                        .map(|r| format!(", rtt {r:.1} ms"))
                        .unwrap_or_default(),
                    if s.rfc5780 { ", RFC 5780" } else { "" }
                ),
                _ => match self.tcp {
                    Some(true) => format!("{} (TCP to the same server works)", "blocked".red()),
                    _ => format!("{}", "no answer".red()),
                },
            },
        )?;
        if let (Some(l), Some(m)) = (self.local_addr, self.mapped_addr) {
            row(w, "address", format!("{l} → {m}"))?;
        }
        if self.udp {
            row(w, "NAT", yes_no(Some(self.behind_nat)))?;
            let b = |x: crate::proto::classify::Behaviour, mapping: bool, note: &Option<String>| {
                let words = behaviour_words(x, mapping);
                let mut s = x.as_str().to_string();
                if !words.is_empty() {
                    s.push_str(&format!(" ({words})"));
                }
                if let Some(n) = note {
                    s.push_str(&format!(" — {}", n.dimmed()));
                }
                s
            };
            row(w, "mapping", b(self.mapping, true, &self.mapping_note))?;
            row(
                w,
                "filtering",
                b(self.filtering, false, &self.filtering_note),
            )?;
            row(w, "hairpinning", yes_no(self.hairpinning))?;
            row(w, "port kept", yes_no(self.port_preserved))?;
            let pa = &self.port_allocation;
            row(
                w,
                "ports",
                match pa.delta {
                    Some(d) => format!("{} (step {d})", pa.kind),
                    None => pa.kind.to_string(),
                },
            )?;
            row(
                w,
                "CGNAT",
                if self.cgnat {
                    "yes".red().to_string()
                } else {
                    "no".to_string()
                },
            )?;
            for e in &self.cgnat_evidence {
                writeln!(w, "                · {e}")?;
            }
            if let Some(p) = &self.portmap {
                let v = if p.available.is_empty() {
                    "none answers".to_string()
                } else {
                    let ext = p
                        .external_ip
                        .map(|ip| format!(", router's external address {ip}"))
                        .unwrap_or_default();
                    format!("{}{ext}", p.available.join(", "))
                };
                row(w, "port mapping", v)?;
            }
            if let Some(l) = &self.binding_lifetime {
                let s = match (l.alive_s, l.expired_s) {
                    (Some(a), Some(e)) => format!("between {a} s and {e} s idle"),
                    (Some(a), None) => format!("at least {a} s idle"),
                    (None, Some(e)) => format!("less than {e} s idle"),
                    (None, None) => "could not be measured".to_string(),
                };
                row(w, "lifetime", s)?;
            }
        }
        if !self.verdict.advice.is_empty() {
            writeln!(w, "\n{}", "What would work:".bold())?;
            for a in &self.verdict.advice {
                writeln!(w, "  → {a}")?;
            }
        }
        let problems: Vec<String> = self
            .servers
            .iter()
            .flat_map(|s| s.problems.iter().map(move |p| format!("{}: {p}", s.name)))
            .collect();
        if !problems.is_empty() {
            writeln!(w, "\n{}", "Server problems:".bold())?;
            for p in problems {
                writeln!(w, "  ! {p}")?;
            }
        }
        if !self.tried.is_empty() {
            writeln!(w, "\n{}", "Tried:".bold())?;
            for t in &self.tried {
                writeln!(w, "  - {t}")?;
            }
        }
        writeln!(
            w,
            "{}",
            format!("\ndone in {} ms", self.elapsed_ms).dimmed()
        )
    }
}
