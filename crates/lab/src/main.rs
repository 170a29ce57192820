//! `provisioner-lab`: `chaos` and `bench` against the simulator (see the crate docs).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use provisioner_lab::{bench, chaos};

/// Reliability and performance runs of the provisioner daemon against the simulator.
#[derive(Debug, Parser)]
#[command(name = "provisioner-lab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reliability run: the daemon as a child process against the simulator and a Redis of its
    /// own, under seeded crashes and faults; audits the invariants, exits non-zero if one broke.
    Chaos(chaos::ChaosArgs),
    /// Measure throughput, latency, CPU, memory, API speed and catch-up against the simulator
    /// (run from a release build: `scripts/bench.sh`).
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Chaos(args) => chaos::main(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
