//! The subcommands behind `main`: each returns the process exit code. Configuration errors are
//! printed as one line naming the setting (`check` prints all of them); each command validates
//! only the settings it uses. Error chains are printed with each cause once
//! ([`crate::error::chain`]).

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
    let message = crate::error::chain(e);
    tracing::error!(error.message = %message, "{context}");
    eprintln!("provisioner: {context}: {message}");
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
        Command::Check { products } => {
            telemetry::init(LogFormat::Pretty);
            crate::cli::check::run(Config::load_for_check(config), products).await
        }
        Command::Healthcheck { url } => healthcheck(url).await,
        Command::Sim {
            grpc_addr,
            http_addr,
            env_file,
        } => {
            telemetry::init(LogFormat::Pretty);
            let cfg = provisioner_sim::SimConfig {
                grpc_addr,
                http_addr,
                ..Default::default()
            };
            let token = CancellationToken::new();
            tokio::spawn(daemon::on_signal(token.clone()));
            match sim(cfg, env_file.as_deref(), token).await {
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
        Command::Pause(args) => {
            crate::cli::ops::run(config, crate::cli::ops::OpsCommand::Pause(args)).await
        }
        Command::Resume(args) => {
            crate::cli::ops::run(config, crate::cli::ops::OpsCommand::Resume(args)).await
        }
        Command::Events { command } => {
            crate::cli::ops::run(config, crate::cli::ops::OpsCommand::Events(command)).await
        }
        Command::Whmcs { command } => crate::cli::whmcs::run(config, command).await,
        Command::Demo { orders, redis_url } => crate::cli::demo::run(orders, &redis_url).await,
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

async fn healthcheck(url: Option<String>) -> ExitCode {
    let base = url.unwrap_or_else(|| {
        local_base(
            std::env::var("INTERNAL_HTTP_ADDR").ok().as_deref(),
            std::env::var("HTTP_ADDR").ok().as_deref(),
        )
    });
    // The daemon is local: never through a proxy from the environment.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
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

/// Where `healthcheck` finds `/health/ready` on this host: the internal listener when one is
/// configured (health is served only there then), else `HTTP_ADDR`; a wildcard address is
/// reached over loopback.
fn local_base(internal: Option<&str>, public: Option<&str>) -> String {
    let addr = internal
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .or(public.map(str::trim).filter(|a| !a.is_empty()))
        .unwrap_or("0.0.0.0:8080");
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
        Ok(a) => format!("http://{a}"),
        Err(_) => {
            let port = addr.rsplit(':').next().unwrap_or("8080");
            format!("http://127.0.0.1:{port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local_base;

    #[test]
    fn healthcheck_probes_the_internal_listener_when_there_is_one() {
        assert_eq!(local_base(None, None), "http://127.0.0.1:8080");
        assert_eq!(
            local_base(None, Some("0.0.0.0:8081")),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            local_base(Some(""), Some("0.0.0.0:8081")),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            local_base(Some("0.0.0.0:9090"), Some("0.0.0.0:8081")),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            local_base(Some("10.0.0.5:9090"), Some("0.0.0.0:8081")),
            "http://10.0.0.5:9090"
        );
        assert_eq!(local_base(Some("[::]:9090"), None), "http://127.0.0.1:9090");
    }
}
