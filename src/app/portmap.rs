//! portmap's reports as text for people (`--json` gives the same reports as JSON).

use std::io::{self, Write};

use colored::Colorize;

use crate::app::output::Human;
use crate::net::portmap::{AddReport, DeleteReport, ExternalIpReport, KeepEvent, ListReport};
use crate::proto::portmap::{ProbeReport, ProtocolStatus};

fn status(w: &mut dyn Write, name: &str, s: &ProtocolStatus) -> io::Result<()> {
    let mark = if s.available {
        "yes".green().to_string()
    } else {
        "no".yellow().to_string()
    };
    let t = s.ms.map(|m| format!(" ({m} ms)")).unwrap_or_default();
    writeln!(w, "  {name:<8} {mark}{t}  {}", s.detail.dimmed())
}

fn why(w: &mut dyn Write, why: &Option<String>) -> io::Result<()> {
    if let Some(y) = why {
        writeln!(w, "{} {y}", "Why it cannot help:".red().bold())?;
    }
    Ok(())
}

impl Human for ProbeReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "Router {} (this host {})", self.gateway, self.local_ip)?;
        status(w, "PCP", &self.pcp)?;
        status(w, "NAT-PMP", &self.natpmp)?;
        status(w, "UPnP", &self.upnp)?;
        if let Some(ip) = self.external_ip {
            writeln!(w, "External address: {ip}")?;
        }
        if self.available.is_empty() {
            writeln!(w, "{}", "No port-mapping protocol answers.".yellow())?;
        }
        why(w, &self.why)?;
        if let Some(v6) = &self.ipv6 {
            match (v6.router, v6.host) {
                (Some(r), Some(h)) => writeln!(w, "IPv6 pinholes: router {r} (this host {h})")?,
                _ => writeln!(w, "IPv6 pinholes:")?,
            }
            status(w, "PCP", &v6.pcp)?;
            status(w, "UPnP", &v6.upnp)?;
        }
        Ok(())
    }
}

impl Human for ExternalIpReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        match (self.external_ip, self.via) {
            (Some(ip), Some(via)) => writeln!(w, "{ip} (from {via})")?,
            _ => writeln!(
                w,
                "{}",
                "The router did not tell its external address.".yellow()
            )?,
        }
        if self.external_ip.is_some() {
            why(w, &self.why)?;
        } else if let Some(y) = &self.why {
            writeln!(w, "{}", y.dimmed())?;
        }
        Ok(())
    }
}

impl Human for AddReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        match &self.mapping {
            Some(m) => {
                let life = if m.lifetime == 0 {
                    "permanent".to_string()
                } else {
                    format!("{} s", m.lifetime)
                };
                writeln!(
                    w,
                    "{} {} {} → {} via {} ({life})",
                    "Mapped".green().bold(),
                    m.proto,
                    self.external.as_deref().unwrap_or("?"),
                    m.internal,
                    m.via.name(),
                )?;
            }
            None => writeln!(
                w,
                "{}",
                "No mapping: the router refused or did not answer."
                    .red()
                    .bold()
            )?,
        }
        for a in &self.attempts {
            if !a.ok {
                writeln!(w, "  {}: {}", a.via.name(), a.detail.dimmed())?;
            }
        }
        for n in &self.notes {
            writeln!(w, "  note: {n}")?;
        }
        why(w, &self.why)?;
        if let Some(v) = &self.verify {
            let head = if v.reachable {
                "Reachable from outside:".green().bold()
            } else {
                "Not reachable from outside:".red().bold()
            };
            writeln!(w, "{head} {}", v.detail)?;
        }
        Ok(())
    }
}

impl Human for DeleteReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        for m in &self.removed {
            writeln!(
                w,
                "{} {} {} → {} ({})",
                "Removed".green().bold(),
                m.proto,
                m.external_port,
                m.internal,
                m.via.name()
            )?;
        }
        for f in &self.failed {
            writeln!(w, "{} {f}", "Not removed:".yellow().bold())?;
        }
        Ok(())
    }
}

impl Human for ListReport {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        if self.mappings.is_empty() {
            writeln!(w, "No mappings on router {}.", self.gateway)?;
        } else {
            writeln!(
                w,
                "{:<7} {:<6} {:<4} {:>8}  {:<22} {:>9}  description",
                "source", "via", "proto", "external", "internal", "lease"
            )?;
        }
        for e in &self.mappings {
            let lease = match (e.lifetime, e.expires_in) {
                (0, _) => "permanent".to_string(),
                (_, Some(left)) => format!("{left} s left"),
                (l, None) => format!("{l} s"),
            };
            let mine = if e.mine { " (natkit)" } else { "" };
            writeln!(
                w,
                "{:<7} {:<6} {:<4} {:>8}  {:<22} {:>9}  {}{mine}",
                e.source,
                e.via.name(),
                e.proto.to_string(),
                e.external_port,
                e.internal,
                lease,
                e.description
            )?;
        }
        for n in &self.notes {
            writeln!(w, "  note: {}", n.dimmed())?;
        }
        Ok(())
    }
}

impl Human for KeepEvent {
    fn human(&self, w: &mut dyn Write) -> io::Result<()> {
        match self {
            KeepEvent::Renewed {
                lifetime,
                external_port,
            } => writeln!(w, "renewed: external port {external_port}, {lifetime} s"),
            KeepEvent::Recreated {
                reason,
                external_port,
            } => writeln!(
                w,
                "{} {reason}; mapped again on external port {external_port}",
                "re-created:".yellow().bold()
            ),
            KeepEvent::Trouble { reason } => {
                writeln!(w, "{} {reason}", "trouble:".yellow().bold())
            }
            KeepEvent::Removed { detail, .. } => writeln!(w, "{detail}"),
        }
    }
}
