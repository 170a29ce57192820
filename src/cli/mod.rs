//! Command line (clap): `serve` (default), `migrate`, `check`, `healthcheck`, `sim`, `demo` and
//! the operator tools `orders`, `cursor`, `queue`, `pause`,
//! `resume`, `events` ([`ops`]) and `whmcs reset-auth` ([`whmcs`]).
//! Each command's code is in its own file; [`dispatch`] runs one and turns its outcome into the
//! exit code. Configuration errors are printed as one line naming the setting (`check` prints
//! all of them); each command validates only the settings it uses. Error chains are printed with
//! each cause once (`error::chain`). Operator commands go through the ledger's and the queue's
//! APIs: no SQL and no Redis key lives here.

pub mod check;
pub mod demo;
pub mod healthcheck;
pub mod migrate;
pub mod ops;
pub mod serve;
pub mod sim;
pub mod whmcs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::telemetry;

/// Turns Salesforce Order approvals into provisioned WHMCS orders, exactly once.
#[derive(Debug, Parser)]
#[command(name = "provisioner", version, about, long_about = None)]
pub struct Cli {
    /// Optional TOML file layered over the defaults (environment variables still win).
    #[arg(long, global = true, env = "PROVISIONER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: subscriber, workers and HTTP server (the default).
    Serve,
    /// Apply pending ledger migrations and exit.
    Migrate,
    /// Validate the configuration and reach Salesforce (token, topic, schema), WHMCS (and its
    /// version), Redis and the database; print a report and exit non-zero if anything fails.
    Check {
        /// Also check that WHMCS has each mapped product: the ids given (`--products 1,2,3`),
        /// or without a value every `WHMCS_Product_ID__c` set on a Salesforce Product.
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "IDS")]
        products: Option<String>,
    },
    /// Exit 0 if the local daemon answers /health/ready, 1 otherwise (container health checks).
    Healthcheck {
        /// Base URL of the daemon; default: derived from HTTP_ADDR on 127.0.0.1.
        #[arg(long)]
        url: Option<String>,
    },
    /// Run the local Salesforce + WHMCS simulator.
    Sim {
        /// gRPC (Pub/Sub) listen address.
        #[arg(long, default_value = "127.0.0.1:7011")]
        grpc_addr: std::net::SocketAddr,
        /// HTTP (OAuth, REST, WHMCS, control) listen address.
        #[arg(long, default_value = "127.0.0.1:7012")]
        http_addr: std::net::SocketAddr,
        /// Write the settings that point `serve` at the simulator to this file (`KEY=value`
        /// lines, for `docker run --env-file` or `set -a; . FILE`) instead of printing them as
        /// `export` lines.
        #[arg(long, value_name = "PATH")]
        env_file: Option<std::path::PathBuf>,
    },
    /// Operator tools: list and inspect Orders in the ledger (with each one's step timeline),
    /// re-enqueue one, redrive failed ones.
    Orders {
        #[command(subcommand)]
        command: crate::cli::ops::OrdersCommand,
    },
    /// Operator tools: show or set the subscription's replay cursor.
    Cursor {
        #[command(subcommand)]
        command: crate::cli::ops::CursorCommand,
    },
    /// Operator tools: queue statistics.
    Queue {
        #[command(subcommand)]
        command: crate::cli::ops::QueueCommand,
    },
    /// Operator tools: pause intake (no events fetched) and/or provisioning (no job starts a
    /// WHMCS call), cluster-wide; both when neither flag is given.
    Pause(crate::cli::ops::PauseArgs),
    /// Operator tools: resume what `pause` stopped; both parts when neither flag is given.
    Resume(crate::cli::ops::ResumeArgs),
    /// Operator tools: dead letters (poison events) — list them, replay one.
    Events {
        #[command(subcommand)]
        command: crate::cli::ops::EventsCommand,
    },
    /// Operator tools: lift the WHMCS authentication latch after fixing the credentials.
    Whmcs {
        #[command(subcommand)]
        command: crate::cli::whmcs::WhmcsCommand,
    },
    /// Run a demo end to end: simulator + daemon + sample orders, with progress and a summary.
    Demo {
        /// Number of orders to approve.
        #[arg(long, default_value_t = 20)]
        orders: usize,
        /// Redis to use for the demo's queue.
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
    },
}

/// Runs one subcommand; returns the process exit code.
pub async fn dispatch(config: Option<&Path>, command: Command) -> ExitCode {
    match command {
        Command::Serve => serve::run(config).await,
        Command::Migrate => migrate::run(config).await,
        Command::Check { products } => {
            telemetry::init(LogFormat::Pretty);
            check::run(Config::load_for_check(config), products).await
        }
        Command::Healthcheck { url } => healthcheck::run(url).await,
        Command::Sim {
            grpc_addr,
            http_addr,
            env_file,
        } => sim::run(grpc_addr, http_addr, env_file.as_deref()).await,
        Command::Orders { command } => ops::run(config, ops::OpsCommand::Orders(command)).await,
        Command::Cursor { command } => ops::run(config, ops::OpsCommand::Cursor(command)).await,
        Command::Queue { command } => ops::run(config, ops::OpsCommand::Queue(command)).await,
        Command::Pause(args) => ops::run(config, ops::OpsCommand::Pause(args)).await,
        Command::Resume(args) => ops::run(config, ops::OpsCommand::Resume(args)).await,
        Command::Events { command } => ops::run(config, ops::OpsCommand::Events(command)).await,
        Command::Whmcs { command } => whmcs::run(config, command).await,
        Command::Demo { orders, redis_url } => demo::run(orders, &redis_url).await,
    }
}

/// Loads and validates the whole configuration; on error prints it and gives exit code 2.
fn load(config: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprintln!("provisioner: {e}");
        ExitCode::from(2)
    })
}

/// Logs and prints a command's error chain; gives the failure exit code.
fn fail(context: &str, e: &anyhow::Error) -> ExitCode {
    let message = crate::error::chain(e);
    tracing::error!(error.message = %message, "{context}");
    eprintln!("provisioner: {context}: {message}");
    ExitCode::FAILURE
}
