//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod coturn;
#[allow(dead_code)]
pub mod lab;
pub mod miniupnpd;
pub mod natprobe_json;
pub mod punch;
pub mod relay;
