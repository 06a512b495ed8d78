//! Exit codes, one table for every binary (each man page lists the ones its binary uses).
//!
//! Bad usage exits with 2, clap's convention, which natprobe's contract folds into "error".

/// Success; for natprobe: this host can accept unsolicited inbound traffic.
pub const OK: i32 = 0;
/// natprobe: this host cannot accept unsolicited inbound traffic (NAT or firewall filters it).
pub const CANNOT_HOST: i32 = 1;
/// No server answered, the network is unusable, bad usage, or another error.
pub const NO_ANSWER: i32 = 2;
/// Alias of [`NO_ANSWER`] for errors that are not about answers.
pub const ERROR: i32 = 2;
/// punch: the other side used a different code.
pub const WRONG_CODE: i32 = 3;
