//! Log setup: human lines or JSON on stderr, filtered by `RUST_LOG`.
//!
//! Lines are formatted on the thread that logs and written by one background thread
//! (`tracing-appender`) through a buffer, so a request never waits on a `write`
//! syscall and a burst of access lines costs one syscall per batch, not per line.
//! If stderr cannot keep up and 128 k lines are queued, new lines are dropped
//! rather than slowing the data plane.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Keeps the log writer running; dropping it writes out every queued line.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber writing to stderr; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("keygate-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Guard(guard)
}
