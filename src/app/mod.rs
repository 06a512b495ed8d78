//! The application layer: command-line definitions and every human rendering. Binaries parse
//! arguments with [`cli`], call the library and render through [`output`].
pub mod cli;
pub mod natprobe;
pub mod output;
pub mod portmap;
pub mod punch;
pub mod relay;

/// The tokio runtime a binary runs on, or the error printed and [`crate::exit::ERROR`].
/// natprobe, punch and portmap do one thing at a time (one thread is enough); the relay
/// serves many clients at once (`multi_thread`).
pub fn runtime(prog: &str, multi_thread: bool) -> Result<tokio::runtime::Runtime, i32> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        output::print_error(prog, &e);
        crate::exit::ERROR
    })
}
