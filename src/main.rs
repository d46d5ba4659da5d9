//! The `keygate` binary: parse the command line and run it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = keygate::cli::Cli::parse();
    let _logs = keygate::telemetry::init(cli.log_format);
    keygate::cli::run(cli)
}
