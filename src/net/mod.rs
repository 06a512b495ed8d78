//! Drivers: the tokio tasks that own sockets and timers and carry out what the cores in
//! [`crate::proto`] decide. They never import the app layer.
pub mod natprobe;
pub mod portmap;
pub mod punch;
pub mod relay;
pub mod stream;
pub mod sys;
