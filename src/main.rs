//! The `keygate` binary: parse the command line and run it.

use clap::Parser;

// Per-thread heaps suit the thread-per-core data plane: see docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = keygate::cli::Cli::parse();
    let _logs = keygate::telemetry::init(cli.log_format);
    keygate::cli::run(cli)
}
