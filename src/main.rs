//! `provisioner` binary: parse the command line, load configuration, start telemetry and hand
//! over to the library.

use std::process::ExitCode;

use clap::Parser;
use provisioner::cli::{Cli, Command, dispatch};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch(cli.config.as_deref(), cli.command.unwrap_or(Command::Serve)).await
}
