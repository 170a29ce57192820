//! `provisioner sim`: runs the local Salesforce + WHMCS simulator (`crates/sim`) until a signal
//! stops it, after printing the settings that point `serve` at it (or writing them to a file).

use std::{path::Path, process::ExitCode};

use tokio_util::sync::CancellationToken;

use super::fail;
use crate::{config::LogFormat, daemon, telemetry};

/// Runs the simulator on the given addresses; returns the process exit code.
pub async fn run(
    grpc_addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    env_file: Option<&Path>,
) -> ExitCode {
    telemetry::init(LogFormat::Pretty);
    let cfg = provisioner_sim::SimConfig {
        grpc_addr,
        http_addr,
        ..Default::default()
    };
    let token = CancellationToken::new();
    daemon::on_signal(token.clone());
    match sim(cfg, env_file, token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("simulator failed", &e),
    }
}

/// Runs the simulator until `token` is cancelled, after printing (or writing to `env_file`) the
/// environment that points `serve` at it.
async fn sim(
    cfg: provisioner_sim::SimConfig,
    env_file: Option<&Path>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let handle = provisioner_sim::Simulator::start(cfg).await?;
    let env = handle.daemon_env();
    eprintln!(
        "sim: Pub/Sub gRPC on {}, HTTP (OAuth, REST, WHMCS api.php, control /sim) on {}",
        handle.grpc_url, handle.http_url
    );
    match env_file {
        Some(path) => {
            let body: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            std::fs::write(path, body)
                .with_context(|| format!("writing --env-file {}", path.display()))?;
            eprintln!(
                "sim: wrote the settings that point `provisioner serve` at the simulator to {}",
                path.display()
            );
        }
        None => {
            println!("# Settings that point `provisioner serve` at this simulator:");
            for (k, v) in &env {
                println!("export {k}={}", shell_quote(v));
            }
        }
    }
    token.cancelled().await;
    handle.shutdown().await;
    Ok(())
}

/// `v` as one POSIX shell word.
fn shell_quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b))
    {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}
