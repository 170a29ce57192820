//! `provisioner-lab`: `chaos` and `bench` against the simulator (see the crate docs).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use provisioner_lab::{bench, chaos, floor};

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
    /// Measure the CPU an Order's loopback round trips cost with no protocol at all: the floor
    /// under the daemon's CPU per Order at latency.
    Floor(floor::FloorArgs),
    /// The floor run's client (started by `floor`).
    #[command(hide = true)]
    FloorClient(floor::FloorClientArgs),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::FloorClient(args) = command {
        // Its own `current_thread` runtime, as the daemon's.
        return floor::client_main(args);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match command {
            Command::Chaos(args) => chaos::main(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Floor(args) => floor::run(args).await,
            Command::FloorClient(_) => ExitCode::FAILURE,
        }
    })
}
