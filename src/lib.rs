//! natkit: host from behind NAT again.
//!
//! The crate is four layers, and imports point one way only (`tests/layering.rs` checks):
//!
//! ```text
//! wire  ──▶  proto  ──▶  net  ──▶  app  ──▶  src/bin/*
//! codecs     sans-IO     sockets   CLI and    parse, call,
//!            state       and       rendering  render, exit
//!            machines    tasks
//! ```
//!
//! - [`wire`]: byte formats as checked views and value types (`parse`/`emit`); never panics on
//!   input, imports nothing else of the crate.
//! - [`proto`]: the protocol logic as state machines — bytes and instants in, bytes and deadlines
//!   out; time is an argument and randomness an injected RNG, so tests run on a virtual clock.
//! - [`net`]: the drivers that own sockets, timers and tasks and carry out what a core decides.
//! - [`app`]: command-line definitions (clap) and every human rendering.
//!
//! [`defaults`] holds every timeout and limit with its reason; [`exit`] the exit codes.
pub mod app;
pub mod defaults;
pub mod exit;
pub mod net;
pub mod proto;
pub mod wire;
