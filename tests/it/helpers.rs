//! Test harness: `spawn_app` starts a simulator and a daemon wired to it.

use std::{future::Future, time::Duration};

use provisioner::{
    config::Config,
    daemon::{self as app, AppState},
    ids::SalesforceId,
};
use provisioner_sim::{OrderSeed, SimConfig, SimHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The daemon's id of a record the simulator minted.
pub fn sf_id(id: impl AsRef<str>) -> SalesforceId {
    SalesforceId::parse(id.as_ref()).expect("the simulator mints valid ids")
}

/// Which ledger database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub sim: SimHandle,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
    pub env: Vec<(String, String)>,
    pub http: String,
    _dir: std::path::PathBuf,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh database URL: a new SQLite file, or a new PostgreSQL schema.
pub async fn fresh_database(db: Db, dir: &std::path::Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}/ledger.db", dir.display()),
        Db::Postgres => {
            let base = std::env::var("TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
                .await
                .expect(
                    "PostgreSQL reachable at TEST_POSTGRES_URL (scripts/services.sh starts it)",
                );
            sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str())
                .await
                .expect("create schema");
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options=-c%20search_path%3D{schema}")
        }
    }
}

pub struct Options {
    pub db: Db,
    pub sim: SimConfig,
    pub extra_env: Vec<(&'static str, String)>,
    pub start: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            db: Db::Sqlite,
            sim: SimConfig::default(),
            extra_env: Vec::new(),
            start: true,
        }
    }
}

pub async fn spawn_app(opts: Options) -> TestApp {
    let sim = provisioner_sim::Simulator::start(opts.sim)
        .await
        .expect("simulator");
    let dir = std::env::temp_dir().join(format!("prov-it-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let database_url = fresh_database(opts.db, &dir).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let mut env: Vec<(String, String)> = sim
        .daemon_env()
        .into_iter()
        .chain([
            ("SF_EVENTS_REPLAY", "ALL".into()),
            ("REDIS_URL", redis_url()),
            (
                "QUEUE_NAME",
                format!("test-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("DATABASE_URL", database_url),
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            (
                "PORTAL_JWT_SECRET",
                "portal-test-secret-0123456789abcdef".into(),
            ),
            ("JOB_BACKOFF_INITIAL_MS", "20".into()),
            ("JOB_BACKOFF_MAX_MS", "200".into()),
            ("SF_EVENTS_BACKOFF_INITIAL_MS", "20".into()),
            ("SF_EVENTS_BACKOFF_MAX_MS", "200".into()),
            ("SHUTDOWN_GRACE_SECS", "5".into()),
            ("LOG_FORMAT", "pretty".into()),
        ])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for (k, v) in opts.extra_env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_owned(), v));
    }
    if std::env::var("TEST_LOG").is_ok() {
        provisioner::telemetry::init(provisioner::config::LogFormat::Pretty);
    }
    let cfg = Config::load_from(None, env.clone()).expect("test config");
    let state = AppState::build(cfg).await.expect("app state");
    let mut app = TestApp {
        sim,
        state,
        shutdown: CancellationToken::new(),
        task: None,
        env,
        http: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    if opts.start {
        app.start();
    }
    app
}

impl TestApp {
    pub fn start(&mut self) {
        self.shutdown = CancellationToken::new();
        self.task = Some(tokio::spawn(app::run_with_state(
            self.state.clone(),
            self.shutdown.clone(),
        )));
    }

    /// Stops the daemon gracefully and waits for it; returns its result.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(t) => tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("daemon stops within 30 s")
                .expect("daemon task"),
            None => Ok(()),
        }
    }

    pub fn seed(&self, n: usize) -> Vec<SalesforceId> {
        (0..n)
            .map(|_| sf_id(self.sim.sim.seed_order(OrderSeed::default())))
            .collect()
    }

    /// Seeds `n` Orders and approves each, as the Salesforce Flow would.
    pub fn seed_approved(&self, n: usize) -> Vec<SalesforceId> {
        let ids = self.seed(n);
        for id in &ids {
            self.sim.sim.approve(id);
        }
        ids
    }

    pub fn activation(&self, id: &SalesforceId) -> Option<String> {
        self.sim.sim.order(id).and_then(|o| o.activation_status)
    }

    /// Waits until every order's activation status is terminal.
    pub async fn wait_terminal(&self, ids: &[SalesforceId], within: Duration) {
        wait_until(within, "orders to reach Activated/Failed", || async {
            ids.iter()
                .all(|id| matches!(self.activation(id).as_deref(), Some("Activated" | "Failed")))
        })
        .await;
    }
}

/// Polls `cond` until it is true; panics with `what` after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Where a daemon process's log goes: a file of its own under `TEST_LOG_DIR`, the test's stderr
/// with `TEST_LOG`, or nowhere.
fn daemon_log() -> std::process::Stdio {
    if let Ok(dir) = std::env::var("TEST_LOG_DIR") {
        let path = std::path::Path::new(&dir).join(format!("daemon-{}.log", uuid::Uuid::new_v4()));
        if let Ok(f) = std::fs::File::create(path) {
            return f.into();
        }
    }
    if std::env::var("TEST_LOG").is_ok() {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}

/// Sends SIGTERM to a running child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// The daemon binary as a child process with the app's environment plus `extra`.
pub fn daemon_process(app: &TestApp, extra: &[(&str, String)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"));
    cmd.arg("serve")
        .env_clear()
        .envs(app.env.iter().cloned())
        .envs(extra.iter().map(|(k, v)| (*k, v.clone())))
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(daemon_log())
        .kill_on_drop(true);
    cmd.spawn().expect("spawn provisioner")
}
