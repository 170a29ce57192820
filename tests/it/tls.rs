//! TLS to Redis and PostgreSQL: the pipeline through a `redis-server` that speaks only TLS
//! (certificates minted per test), PostgreSQL with `sslmode`, what `provisioner check` reports,
//! and the start refusing a server whose certificate the configured CA did not sign.

use std::{path::PathBuf, process::Stdio, time::Duration};

use provisioner::{config::Config, daemon::AppState};

use crate::helpers::{Db, Options, TestApp, fresh_database, spawn_app, wait_until};

/// A CA and a server certificate for 127.0.0.1 / localhost that it signed, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!("prov-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "provisioner test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), pem).expect("write pem");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` listening only with TLS (`--port 0`) on a free port; killed on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl TlsRedis {
    async fn start(pki: &Pki) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &pki.path("server.pem")])
            .args(["--tls-key-file", &pki.path("server.key")])
            .args(["--tls-ca-cert-file", &pki.path("ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .args(["--dir", &pki.dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (built with TLS; scripts/services.sh installs it)");
        let server = Self { child, port };
        let url = server.url();
        let tls = provisioner::config::RedisTls {
            ca_pem: Some(std::fs::read(pki.path("ca.pem")).expect("ca")),
            client: None,
        };
        wait_until(
            Duration::from_secs(20),
            "TLS redis-server to answer",
            || {
                let (url, tls) = (url.clone(), tls.clone());
                async move {
                    let Ok(client) = provisioner::queue::redis_client(&url, &tls) else {
                        return false;
                    };
                    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        server
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `provisioner check` with the app's environment plus `extra`: (success, stdout).
async fn check(app: &TestApp, extra: &[(&str, String)]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("check")
        .env_clear()
        .envs(app.env.iter().cloned())
        .envs(extra.iter().map(|(k, v)| (*k, v.clone())))
        .output()
        .await
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn approve_and_expect_activated(app: &TestApp, n: usize) {
    let ids = app.seed_approved(n);
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_runs_through_a_tls_only_redis() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki).await;
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("REDIS_URL", redis.url()),
            ("REDIS_TLS_CA_FILE", pki.path("ca.pem")),
        ],
        ..Default::default()
    })
    .await;
    approve_and_expect_activated(&app, 5).await;
    // The jobs went through the TLS server (the only Redis at that address).
    assert!(app.state.queue.job_count().await.expect("job count") >= 5);
    let (ok, text) = check(&app, &[]).await;
    assert!(
        text.contains("[ ok ] redis: reachable (TLS)"),
        "{ok}\n{text}"
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_from_another_ca_stops_the_start_naming_the_setting() {
    let pki = Pki::new();
    let other = Pki::new();
    let redis = TlsRedis::start(&pki).await;
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .arg("serve")
            .env_clear()
            .envs(app.env.iter().cloned())
            .env("REDIS_URL", redis.url())
            .env("REDIS_TLS_CA_FILE", other.path("ca.pem"))
            .env("RUST_LOG", "off")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the daemon gives up within 60 s")
    .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("provisioner:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("REDIS_TLS_CA_FILE"), "{stderr}");
    // Plaintext to a TLS-only port is refused too (no silent downgrade possible: the TLS
    // server has no plaintext port), and a CA file with a redis:// URL is a configuration error.
    let e = Config::load_from(
        None,
        app.env
            .iter()
            .cloned()
            .chain([
                ("REDIS_URL".to_owned(), "redis://127.0.0.1:6379".to_owned()),
                ("REDIS_TLS_CA_FILE".to_owned(), pki.path("ca.pem")),
            ])
            .collect::<Vec<_>>(),
    )
    .expect_err("CA without rediss://");
    assert_eq!(e.setting, "REDIS_TLS_CA_FILE");
}

/// The URL of a fresh PostgreSQL schema with `params` appended.
async fn postgres_url(params: &str) -> String {
    let dir = std::env::temp_dir();
    format!("{}&{params}", fresh_database(Db::Postgres, &dir).await)
}

/// The PostgreSQL server's certificate file (`SHOW ssl_cert_file`), after making sure TLS is on.
async fn server_certificate() -> String {
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("PostgreSQL");
    let show = |q: &'static str| sqlx::query_scalar::<_, String>(q);
    let ssl = show("SHOW ssl").fetch_one(&mut conn).await.expect("ssl");
    assert_eq!(ssl, "on", "the test PostgreSQL must have ssl=on");
    show("SHOW ssl_cert_file")
        .fetch_one(&mut conn)
        .await
        .expect("ssl_cert_file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_follows_sslmode_and_check_reports_it() {
    server_certificate().await;
    let url = postgres_url("sslmode=require").await;
    let mut app = spawn_app(Options {
        db: Db::Postgres,
        extra_env: vec![("DATABASE_URL", url)],
        ..Default::default()
    })
    .await;
    assert_eq!(
        app.state.ledger.tls_in_use().await.expect("pg_stat_ssl"),
        Some(true)
    );
    approve_and_expect_activated(&app, 5).await;
    let (ok, text) = check(&app, &[]).await;
    assert!(
        text.contains("[ ok ] database: Postgres reachable (TLS, sslmode=require)"),
        "{ok}\n{text}"
    );
    app.stop().await.expect("stop");

    let plain = postgres_url("sslmode=disable").await;
    let (_, text) = check(&app, &[("DATABASE_URL", plain)]).await;
    assert!(
        text.contains("[ ok ] database: Postgres reachable (no TLS, sslmode=disable)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_trusts_only_the_given_root() {
    let cert = server_certificate().await;
    // The server's certificate names localhost.
    let verified = postgres_url(&format!("sslmode=verify-full&sslrootcert={cert}"))
        .await
        .replace("@127.0.0.1:", "@localhost:");
    let app = spawn_app(Options {
        db: Db::Postgres,
        extra_env: vec![("DATABASE_URL", verified)],
        start: false,
        ..Default::default()
    })
    .await;
    assert_eq!(
        app.state.ledger.tls_in_use().await.expect("pg_stat_ssl"),
        Some(true)
    );
    let (_, text) = check(&app, &[]).await;
    assert!(
        text.contains("[ ok ] database: Postgres reachable (TLS, sslmode=verify-full)"),
        "{text}"
    );

    // Another CA: the certificate is refused and the start fails naming DATABASE_URL.
    let other = Pki::new();
    let wrong = postgres_url(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        other.path("ca.pem")
    ))
    .await;
    let mut env = app.env.clone();
    env.retain(|(k, _)| k != "DATABASE_URL");
    env.push(("DATABASE_URL".into(), wrong));
    let cfg = Config::load_from(None, env).expect("config");
    let err = match AppState::build(cfg).await {
        Ok(_) => panic!("a server certificate from another CA must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("DATABASE_URL") && !err.contains('\n'), "{err}");
}
