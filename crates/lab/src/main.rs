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
    match Cli::parse().command {
        Command::Chaos(args) => block_on(chaos::main(args)),
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Floor(args) => block_on(floor::run(args)),
        // Its own `current_thread` runtime, as the daemon's.
        Command::FloorClient(args) => floor::client_main(args),
    }
}

/// Runs a command on tokio's multi-threaded runtime.
fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(command),
        Err(e) => {
            eprintln!("runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
