//! The subcommands behind `main`: each returns the process exit code. Configuration errors are
//! printed as one line naming the setting.

use std::{path::Path, process::ExitCode, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    cli::Command,
    config::{Config, LogFormat},
    daemon,
    ledger::Ledger,
    telemetry,
};

fn load(config: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprintln!("provisioner: {e}");
        ExitCode::from(2)
    })
}

fn fail(context: &str, e: &anyhow::Error) -> ExitCode {
    tracing::error!(error.message = %format!("{e:#}"), "{context}");
    eprintln!("provisioner: {context}: {e:#}");
    ExitCode::FAILURE
}

/// Runs one subcommand.
pub async fn dispatch(config: Option<&Path>, command: Command) -> ExitCode {
    match command {
        Command::Serve => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(cfg.log_format);
            let token = CancellationToken::new();
            tokio::spawn(daemon::on_signal(token.clone()));
            match daemon::run(cfg, token).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("provisioner stopped with an error", &e),
            }
        }
        Command::Migrate => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(cfg.log_format);
            let result = async {
                let ledger = Ledger::connect(&cfg.database).await?;
                ledger.migrate().await?;
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail("migration failed", &e),
            }
        }
        Command::Check => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(LogFormat::Pretty);
            crate::cli::check::run(cfg).await
        }
        Command::Healthcheck { url } => healthcheck(url).await,
        Command::Sim {
            grpc_addr,
            http_addr,
        } => {
            telemetry::init(LogFormat::Pretty);
            let cfg = provisioner_sim::SimConfig {
                grpc_addr,
                http_addr,
                ..Default::default()
            };
            let token = CancellationToken::new();
            tokio::spawn(daemon::on_signal(token.clone()));
            match provisioner_sim::run_standalone(cfg, token.cancelled_owned()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("simulator failed", &e),
            }
        }
        Command::Orders { command } => {
            crate::cli::ops::run(config, crate::cli::ops::OpsCommand::Orders(command)).await
        }
        Command::Cursor { command } => {
            crate::cli::ops::run(config, crate::cli::ops::OpsCommand::Cursor(command)).await
        }
        Command::Queue { command } => {
            crate::cli::ops::run(config, crate::cli::ops::OpsCommand::Queue(command)).await
        }
        Command::Whmcs { command } => crate::cli::whmcs::run(config, command).await,
        Command::Demo { orders, redis_url } => crate::cli::demo::run(orders, &redis_url).await,
    }
}

async fn healthcheck(url: Option<String>) -> ExitCode {
    let base = url.unwrap_or_else(|| {
        let addr = std::env::var("HTTP_ADDR").unwrap_or_else(|_| "0.0.0.0:8080".into());
        let port = addr.rsplit(':').next().unwrap_or("8080").to_owned();
        format!("http://127.0.0.1:{port}")
    });
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return ExitCode::FAILURE,
    };
    match client
        .get(format!("{}/health/ready", base.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}
