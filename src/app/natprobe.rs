//! natprobe's text for people: the report, the binding-lifetime progress bar and the one-line
//! error when nothing answered. The report itself is built by [`crate::net::natprobe`].

use std::io::{self, IsTerminal, Write};

use colored::Colorize;
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::output::{yes_no, Human};
use crate::net::natprobe::NatprobeReport;
use crate::proto::classify::Behaviour;

/// What a mapping or filtering behaviour (RFC 4787 §4.1, §5) means, in plain words.
fn behaviour_words(b: Behaviour, mapping: bool) -> &'static str {
    use Behaviour::*;
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

impl Human for NatprobeReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        let head = if !self.udp && !self.ipv6.udp {
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
            let b = |x: Behaviour, mapping: bool, note: &Option<String>| {
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
        ipv6_section(self, w)?;
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

/// The IPv6 rows: what the IPv6 run found, or in one line why there was none.
fn ipv6_section(rep: &NatprobeReport, w: &mut dyn Write) -> io::Result<()> {
    let v6 = &rep.ipv6;
    let row = |w: &mut dyn Write, k: &str, v: String| writeln!(w, "  {:<13} {v}", k.bold());
    writeln!(w)?;
    if !v6.udp {
        let why = v6.reasons.first().map_or("no answer", |s| s.as_str());
        return row(w, "IPv6", format!("{} ({why})", "no".yellow()));
    }
    row(w, "IPv6", format!("{}", "works".green()))?;
    if let (Some(a), Some(m)) = (v6.address, v6.mapped_addr) {
        row(w, "v6 address", format!("{a} → {m}"))?;
    }
    row(w, "v6 translated", yes_no(Some(v6.translated)))?;
    let words = behaviour_words(v6.filtering, false).replace("you", "this host");
    let f = if words.is_empty() {
        v6.filtering.as_str().to_string()
    } else {
        format!("{} ({words})", v6.filtering.as_str())
    };
    row(w, "v6 filtering", f)?;
    row(
        w,
        "v6 can host",
        if v6.can_host {
            "yes".green().to_string()
        } else {
            "no".to_string()
        },
    )
}

/// The binding-lifetime search takes minutes (one idle gap after another): on a terminal, a
/// bar on stderr shows how many gaps are done. Elsewhere nothing is drawn.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar when the lifetime is measured and stderr is a terminal.
    pub fn new(lifetime: bool) -> Progress {
        Progress((lifetime && io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "binding lifetime {bar:30} {pos}/{len} gaps {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        }))
    }

    /// `done` of `total` gaps measured.
    pub fn update(&self, done: usize, total: usize) {
        if let Some(b) = &self.0 {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }

    /// Removes the bar before the report is written.
    pub fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

/// The stderr line when no server answered over UDP (the exit code says so too): the first
/// reason and what was tried.
pub fn no_answer_line(rep: &NatprobeReport) -> Option<String> {
    if rep.udp || rep.ipv6.udp {
        return None;
    }
    let tried = if rep.tried.is_empty() {
        String::new()
    } else {
        format!(" Tried: {}.", rep.tried.join("; "))
    };
    Some(format!(
        "natprobe: error: {}.{tried}",
        rep.verdict
            .reasons
            .first()
            .map_or("no answer", |s| s.as_str())
    ))
}
