//! The `sluice` binary: parse the command line, run it (the CLI sets up logging once the config
//! is read), map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;
use sluice::cli::{self, Cli};
use sluice::config::ConfigError;

/// mimalloc instead of glibc's malloc: the event path allocates per event (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command's output into a closed pipe (`sluice job list | head -1`) ends it quietly,
    // as for any Unix tool; Rust ignores SIGPIPE, and println! would panic. Not for the
    // host: nothing it writes should end it.
    if !matches!(
        cli.command,
        cli::Command::Run { .. } | cli::Command::Bench(_)
    ) {
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
    let result = runtime.block_on(cli::run(cli));
    // A plugin call still running on a blocking thread after the grace period must not keep
    // the process alive: its batch is uncommitted, so it stays pending in Redis. Cut off by
    // the runtime's shutdown, such a call panics ("being shutdown"): expected, said in a line.
    std::panic::set_hook(Box::new(|_| {
        eprintln!(
            "sluice: a plugin call still running at exit was cut off; its batch stays pending"
        );
    }));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
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
