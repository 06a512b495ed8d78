//! The application layer: command-line definitions and every human rendering. Binaries parse
//! arguments with [`cli`], call the library and render through [`output`].
pub mod cli;
pub mod output;
pub mod relay;
