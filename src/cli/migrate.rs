//! `provisioner migrate`: applies the ledger's pending migrations and exits. It validates only the
//! settings it uses (the database and logging), so it runs before the rest is configured.

use std::{path::Path, process::ExitCode};

use super::fail;
use crate::{config::Config, ledger::Ledger, telemetry};

/// Applies the migrations; returns the process exit code.
pub async fn run(config: Option<&Path>) -> ExitCode {
    let cfg = match Config::load_for_migrate(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provisioner: {e}");
            return ExitCode::from(2);
        }
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
