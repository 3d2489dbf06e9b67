//! The `sluice` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;
use sluice::cli::{self, Cli};
use sluice::config::ConfigError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                // EX_USAGE: a bad config, and nothing was started.
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
