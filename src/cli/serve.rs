//! `provisioner serve` (the default command): loads and validates the whole configuration,
//! starts logging, and runs the daemon until a signal stops it. A configuration error is one line
//! naming the setting (exit 2); a part that dies makes the process exit non-zero.

use std::{path::Path, process::ExitCode};

use tokio_util::sync::CancellationToken;

use super::{fail, load};
use crate::{daemon, telemetry};

/// Runs the daemon; returns the process exit code.
pub async fn run(config: Option<&Path>) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(cfg.log_format);
    let token = CancellationToken::new();
    daemon::on_signal(token.clone());
    match daemon::run(cfg, token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("provisioner stopped with an error", &e),
    }
}
