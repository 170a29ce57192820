//! `provisioner whmcs reset-auth`: lifts the WHMCS authentication latch ([`crate::deps`]) after
//! the operator fixed the credentials, the IP allow-list or the access key.
//!
//! Invariants: it touches only the latch of the configured queue (through
//! [`crate::deps::AuthLatch`], which owns the key) and never calls WHMCS; running daemons follow
//! the lifted latch within about a second, their next WHMCS call being sent alone (one failed
//! login at most if the credentials are still wrong). Loads only the operator tools' settings.

use std::{path::Path, process::ExitCode};

use clap::Subcommand;
use serde_json::json;

use crate::{config::Config, deps::AuthLatch, queue};

/// `provisioner whmcs …`
#[derive(Debug, Subcommand)]
pub enum WhmcsCommand {
    /// Lift the authentication latch: WHMCS calls resume on every replica.
    ResetAuth {
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `whmcs` command; exit 0 on success, 1 on failure, 2 on bad settings.
pub async fn run(config: Option<&Path>, command: WhmcsCommand) -> ExitCode {
    let cfg = match Config::load_for_tools(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provisioner: {e}");
            return ExitCode::from(2);
        }
    };
    let WhmcsCommand::ResetAuth { json } = command;
    let key = AuthLatch::key(&cfg.queue.name);
    let result = async {
        let mut conn = queue::connect_redis(&cfg.queue.redis_url, &cfg.queue.tls).await?;
        let cleared = AuthLatch::clear_key(conn.clone(), &key).await?;
        // Jobs that were put back while the latch held run now, not after their delay.
        let released = if cleared {
            queue::release_delayed(&mut conn, &cfg.queue.name).await?
        } else {
            0
        };
        anyhow::Ok((cleared, released))
    }
    .await;
    match result {
        Ok((cleared, released)) => {
            if json {
                println!(
                    "{}",
                    json!({"queue": cfg.queue.name, "cleared": cleared, "released_jobs": released})
                );
            } else if cleared {
                println!(
                    "WHMCS authentication latch lifted; WHMCS calls resume ({released} waiting job(s) released)"
                );
            } else {
                println!("no WHMCS authentication latch was set");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("provisioner: lifting the WHMCS authentication latch (REDIS_URL): {e:#}");
            ExitCode::FAILURE
        }
    }
}
