//! The hand-made code ledger on disk ([`crate::proto::punch::reuse`]): `punch-codes` in
//! natkit's state directory, readable by its owner only. Failing to read or write it costs
//! only the warning, never the session.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::proto::punch::code::Code;
use crate::proto::punch::reuse::{reuse_warning, CodeLedger};

/// Records a use of the hand-made `code`; the warning to show when it was used before.
pub(super) fn note_hand_made(code: &Code) -> Option<String> {
    let path = crate::net::sys::state_dir().join("punch-codes");
    let mut ledger = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| CodeLedger::parse(&t))
        .unwrap_or_else(|| CodeLedger::new(rand::random()));
    let before = ledger.note(code, crate::net::sys::unix_now());
    let saved = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| {
            let tmp = path.with_extension("tmp");
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(ledger.render().as_bytes())?;
            std::fs::rename(&tmp, &path)
        });
    if let Err(e) = saved {
        tracing::debug!(path = %path.display(), "cannot record the code: {e}");
    }
    (before > 0).then(|| reuse_warning(before))
}
