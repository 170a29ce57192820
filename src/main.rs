//! `provisioner` binary: parse the command line, start the runtime ([`provisioner::runtime`]) and
//! hand over to the library (configuration, telemetry, the command).

use std::process::ExitCode;

use clap::Parser;
use provisioner::cli::{Cli, Command, dispatch};

/// mimalloc, not the C library's allocator: every Order makes about a thousand short-lived
/// allocations across the HTTP, SQL and queue clients, and mimalloc serves them in a fraction
/// of glibc's instructions (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match provisioner::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("provisioner: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(dispatch(
        cli.config.as_deref(),
        cli.command.unwrap_or(Command::Serve),
    ))
}
