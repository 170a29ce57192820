//! `provisioner` binary: parse the command line, start the runtime ([`provisioner::runtime`]) and
//! hand over to the library (configuration, telemetry, the command).

use std::process::ExitCode;

use clap::Parser;
use provisioner::cli::{Cli, Command, dispatch};

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
