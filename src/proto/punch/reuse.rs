//! Remembering hand-made codes (`listen --code`), sans-IO ([`CodeLedger`]): a code's secret
//! is two words, 16 bits, and a run gives an attacker one online guess at it. A fresh random
//! code per run keeps that at 1 in 65,536 per run; the same hand-made code run after run (a
//! scripted `--expose` loop) gives the attacker one more guess each time, so its reuse is
//! warned about.
//!
//! The ledger keeps salted hashes of recently used hand-made codes, never the codes: a
//! random salt per ledger, then one line per code (hash, last use, uses). The driver reads
//! and writes it in natkit's state directory.

use sha2::{Digest, Sha256};

use crate::defaults::{CODE_REUSE_MAX, CODE_REUSE_WINDOW};
use crate::proto::punch::code::Code;

/// First word of a ledger.
const HEADER: &str = "natkit-punch-codes-v1";

/// How many secrets a code's two words allow (one online guess each per run).
pub const CODE_SECRETS: u32 = 1 << 16;

/// One remembered code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    tag: [u8; 16],
    last: u64,
    uses: u32,
}

/// The hand-made codes used recently (salted hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeLedger {
    salt: [u8; 16],
    entries: Vec<Entry>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl CodeLedger {
    /// An empty ledger with a fresh `salt` (the driver passes random bytes).
    pub fn new(salt: [u8; 16]) -> CodeLedger {
        CodeLedger {
            salt,
            entries: Vec::new(),
        }
    }

    /// Reads a ledger; `None` when `text` is not one (the driver then starts afresh).
    pub fn parse(text: &str) -> Option<CodeLedger> {
        let mut lines = text.lines();
        let mut head = lines.next()?.split_whitespace();
        if head.next()? != HEADER {
            return None;
        }
        let salt = unhex(head.next()?)?;
        let entries = lines
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some(Entry {
                    tag: unhex(w.next()?)?,
                    last: w.next()?.parse().ok()?,
                    uses: w.next()?.parse().ok()?,
                })
            })
            .take(CODE_REUSE_MAX)
            .collect();
        Some(CodeLedger { salt, entries })
    }

    /// The ledger as text.
    pub fn render(&self) -> String {
        let mut s = format!("{HEADER} {}\n", hex(&self.salt));
        for e in &self.entries {
            s.push_str(&format!("{} {} {}\n", hex(&e.tag), e.last, e.uses));
        }
        s
    }

    fn tag(&self, code: &Code) -> [u8; 16] {
        let h = Sha256::new()
            .chain_update(b"natkit punch code reuse v1")
            .chain_update(self.salt)
            .chain_update(code.password())
            .finalize();
        let mut t = [0u8; 16];
        t.copy_from_slice(&h[..16]);
        t
    }

    /// Records a use of `code` at `now` (Unix seconds); returns how many times it was used
    /// within [`CODE_REUSE_WINDOW`] before. Entries older than the window are forgotten, and
    /// the ledger keeps at most [`CODE_REUSE_MAX`] codes (the least recently used go).
    pub fn note(&mut self, code: &Code, now: u64) -> u32 {
        let window = CODE_REUSE_WINDOW.as_secs();
        self.entries
            .retain(|e| now.saturating_sub(e.last) < window && e.last <= now);
        let tag = self.tag(code);
        let before = match self.entries.iter().position(|e| e.tag == tag) {
            Some(i) => self.entries.remove(i).uses,
            None => 0,
        };
        if self.entries.len() >= CODE_REUSE_MAX {
            self.entries.sort_by_key(|e| e.last);
            self.entries.drain(..=self.entries.len() - CODE_REUSE_MAX);
        }
        self.entries.push(Entry {
            tag,
            last: now,
            uses: before.saturating_add(1),
        });
        before
    }
}

/// The warning for a hand-made code used `before` times already: how many guesses the runs
/// have given an attacker, and how to get a stronger code.
pub fn reuse_warning(before: u32) -> String {
    let runs = before.saturating_add(1);
    format!(
        "this hand-made code was used {before} time(s) before: its secret is two words \
         ({CODE_SECRETS} possibilities) and each run gives an attacker one guess, so these \
         {runs} runs allowed {runs} guesses (1 in {} to be found); omit --code to get a fresh \
         random code each run",
        CODE_SECRETS / runs.min(CODE_SECRETS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> Code {
        Code::parse(s).unwrap()
    }

    #[test]
    fn a_reused_code_is_counted_and_the_ledger_survives_a_round_trip() {
        let mut l = CodeLedger::new([1; 16]);
        assert_eq!(l.note(&code("7-lantern-harbor"), 1000), 0);
        assert_eq!(l.note(&code("8-lantern-harbor"), 1001), 0);
        let mut l = CodeLedger::parse(&l.render()).unwrap();
        assert_eq!(l.note(&code("7-lantern-harbor"), 1002), 1);
        assert_eq!(l.note(&code("7-LANTERN-harbor"), 1003), 2);
        // Salted hashes only: the words are nowhere in the ledger.
        let text = l.render();
        assert!(!text.contains("lantern") && !text.contains("harbor"));
        // Another salt gives other hashes.
        let mut other = CodeLedger::new([2; 16]);
        other.note(&code("7-lantern-harbor"), 1000);
        assert_ne!(other.entries[0].tag, l.entries[1].tag);
        // Junk is no ledger; a junk line is skipped.
        assert_eq!(CodeLedger::parse("hello"), None);
        let mut text = l.render();
        text.push_str("zz 1 1\n");
        assert_eq!(CodeLedger::parse(&text), Some(l));
    }

    #[test]
    fn old_uses_are_forgotten_and_the_ledger_is_bounded() {
        let mut l = CodeLedger::new([1; 16]);
        let c = code("7-lantern-harbor");
        l.note(&c, 1000);
        let much_later = 1000 + CODE_REUSE_WINDOW.as_secs();
        assert_eq!(l.note(&c, much_later), 0);
        for i in 0..(CODE_REUSE_MAX as u32 + 10) {
            l.note(
                &code(&format!("{}-acid-acorn", i + 100)),
                much_later + 1 + u64::from(i),
            );
        }
        assert_eq!(l.entries.len(), CODE_REUSE_MAX);
        // The oldest went first.
        assert_eq!(l.note(&c, much_later + 10_000), 0);
    }

    #[test]
    fn the_warning_says_how_many_guesses_and_what_to_do() {
        let w = reuse_warning(1);
        assert!(w.contains("65536") && w.contains("2 guesses"), "{w}");
        assert!(w.contains("omit --code"), "{w}");
        assert!(reuse_warning(u32::MAX).contains("1 in 1 "));
    }
}
