//! Configuration: `config/default.toml` (embedded) → optional file → environment variables.
//!
//! Every key of `default.toml` is settable from the environment under its upper-case name
//! (`sf_client_id` → `SF_CLIENT_ID`), which is exactly the contract's variable list. [`Config::load`]
//! validates everything up front: the daemon either starts with a coherent configuration or
//! stops with one [`ConfigError`] line naming the setting. Secrets are [`SecretString`]s and
//! never appear in `Debug` output.

use std::{net::SocketAddr, path::Path, time::Duration};

use secrecy::SecretString;

use crate::{salesforce::event::EventFields, salesforce::rest::OrderFieldNames};

mod raw;
mod validate;

use raw::load_raw;
use validate::{channel_setting, database_settings, queue_settings, replay_setting};

/// The embedded defaults: the single source of every setting's name and default value.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// A setting that is missing, malformed or contradicts another one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    /// Upper-case setting name, as the environment variable is spelt.
    pub setting: String,
    pub message: String,
}

fn err(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_ascii_uppercase(),
        message: message.into(),
    }
}

/// Where to start a subscription that has no stored cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStart {
    Latest,
    Earliest,
}

/// How the daemon authenticates to Salesforce.
#[derive(Debug, Clone)]
pub enum SalesforceAuth {
    Jwt {
        username: String,
        private_key_pem: SecretString,
    },
    ClientCredentials {
        client_secret: SecretString,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Pub/Sub subscription settings.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    pub enabled: bool,
    pub channel: String,
    pub replay: ReplayStart,
    pub endpoint: String,
    pub batch_size: i32,
    pub watchdog: Duration,
    pub max_pending_jobs: u64,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub fields: EventFields,
}

/// Salesforce OAuth + REST settings.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    pub login_url: String,
    pub client_id: String,
    pub auth: SalesforceAuth,
    pub api_version: String,
    pub http_timeout: Duration,
    pub fields: OrderFieldNames,
}

#[derive(Debug, Clone)]
pub struct WhmcsSettings {
    pub api_url: String,
    pub identifier: String,
    pub secret: SecretString,
    pub access_key: Option<SecretString>,
    pub payment_method: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub redis_url: String,
    pub name: String,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub auto_migrate: bool,
    pub max_connections: u32,
}

/// Portal API authentication.
#[derive(Debug, Clone)]
pub enum ApiAuth {
    Jwt {
        secret: SecretString,
        account_claim: String,
        issuer: Option<String>,
        audience: Option<String>,
    },
    Disabled,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub auth: ApiAuth,
    pub lookup_cache: Duration,
    /// Origins allowed by CORS; empty: no CORS headers; `["*"]`: any origin.
    pub cors_allowed_origins: Vec<String>,
    /// Per-client limit on `/api`; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Reverse proxies in front of the daemon whose `X-Forwarded-For` entries are trusted.
    pub trusted_proxy_hops: usize,
    pub sse_max_clients: usize,
    pub sse_keepalive: Duration,
    pub header_read_timeout: Duration,
}

/// Token bucket per client: `per_sec` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

/// Failure-rate alerting.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub window: Duration,
    /// Fraction of failed attempts (0..1) above which the alert fires.
    pub threshold: f64,
    /// Finished attempts in the window needed before the rate means anything.
    pub min_samples: i64,
    pub repeat_interval: Duration,
    pub check_interval: Duration,
    pub webhook_timeout: Duration,
}

/// Stuck-order reconciler settings.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// `None` when disabled.
    pub interval: Option<Duration>,
    pub stuck_after: Duration,
    pub batch_limit: u32,
}

/// The validated configuration of one daemon process.
#[derive(Debug, Clone)]
pub struct Config {
    pub events: EventsConfig,
    pub salesforce: SalesforceConfig,
    pub whmcs: WhmcsSettings,
    pub queue: QueueConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub alert_webhook_url: Option<String>,
    pub alert: AlertConfig,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub reconciler: ReconcilerConfig,
    /// TTL of the subscriber leadership lease.
    pub leader_lease_ttl: Duration,
    /// Bearer token of the operator dashboard (`/admin`); `None` disables it (404).
    pub admin_token: Option<SecretString>,
    /// Dependency breakers and the WHMCS authentication latch.
    pub breaker: crate::deps::BreakerSettings,
}

/// What the operator tools (`orders`, `cursor`, `queue`) need: the ledger, the queue and the
/// subscription's channel. [`Config::load_for_tools`] validates only these, so the tools run
/// without Salesforce or WHMCS credentials.
#[derive(Debug, Clone)]
pub struct ToolsConfig {
    pub database: DatabaseConfig,
    pub queue: QueueConfig,
    pub channel: String,
    /// `SF_EVENTS_REPLAY` as this configuration sets it (shown by `cursor show`).
    pub replay: ReplayStart,
}

impl Config {
    /// Loads defaults → optional file → the given environment, then validates.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::validate(load_raw(file, env)?)
    }

    /// Loads with the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Config::load_from`], validating only what the operator tools use (database,
    /// Redis and queue, channel); Salesforce and WHMCS settings may be absent.
    pub fn load_for_tools_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ToolsConfig, ConfigError> {
        let r = load_raw(file, env)?;
        Ok(ToolsConfig {
            database: database_settings(&r)?,
            queue: queue_settings(&r)?,
            channel: channel_setting(&r.sf_provision_event_channel)?,
            replay: replay_setting(&r.sf_events_replay)?,
        })
    }

    /// [`Config::load_for_tools_from`] with the process environment.
    pub fn load_for_tools(file: Option<&Path>) -> Result<ToolsConfig, ConfigError> {
        Self::load_for_tools_from(file, std::env::vars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        [
            ("SF_CLIENT_ID", "cid"),
            ("SF_AUTH_FLOW", "client_credentials"),
            ("SF_CLIENT_SECRET", "12345"),
            ("WHMCS_API_URL", "http://127.0.0.1:1/includes/api.php"),
            ("WHMCS_API_IDENTIFIER", "id"),
            ("WHMCS_API_SECRET", "s3cret"),
            ("PORTAL_JWT_SECRET", "portal"),
            ("PATH", "/usr/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env = base();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        Config::load_from(None, env)
    }

    fn without(key: &str) -> Result<Config, ConfigError> {
        let env = base()
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect::<Vec<_>>();
        Config::load_from(None, env)
    }

    #[test]
    fn minimal_environment_is_valid_and_numeric_strings_stay_strings() {
        let c = with(&[("SF_API_VERSION", "66.0"), ("WORKER_CONCURRENCY", "3")]).expect("valid");
        assert_eq!(c.salesforce.api_version, "66.0");
        assert_eq!(c.queue.concurrency, 3);
        assert_eq!(c.events.replay, ReplayStart::Latest);
        assert!(matches!(
            c.salesforce.auth,
            SalesforceAuth::ClientCredentials { .. }
        ));
    }

    #[test]
    fn each_failure_names_its_setting() {
        let cases: Vec<(Result<Config, ConfigError>, &str)> = vec![
            (without("SF_CLIENT_ID"), "SF_CLIENT_ID"),
            (without("SF_CLIENT_SECRET"), "SF_CLIENT_SECRET"),
            (without("WHMCS_API_URL"), "WHMCS_API_URL"),
            (without("WHMCS_API_SECRET"), "WHMCS_API_SECRET"),
            (without("PORTAL_JWT_SECRET"), "PORTAL_JWT_SECRET"),
            (with(&[("DATABASE_URL", "mysql://x")]), "DATABASE_URL"),
            (with(&[("REDIS_URL", "http://x")]), "REDIS_URL"),
            (
                with(&[("SF_EVENTS_REPLAY", "SOMETIMES")]),
                "SF_EVENTS_REPLAY",
            ),
            (with(&[("SF_AUTH_FLOW", "password")]), "SF_AUTH_FLOW"),
            (
                with(&[("SF_AUTH_FLOW", "jwt"), ("SF_USERNAME", "u")]),
                "SF_PRIVATE_KEY_PATH",
            ),
            (with(&[("SF_AUTH_FLOW", "jwt")]), "SF_USERNAME"),
            (
                with(&[
                    ("SF_AUTH_FLOW", "jwt"),
                    ("SF_USERNAME", "u"),
                    ("SF_PRIVATE_KEY_PATH", "/nonexistent/key.pem"),
                ]),
                "SF_PRIVATE_KEY_PATH",
            ),
            (with(&[("HTTP_ADDR", "not-an-addr")]), "HTTP_ADDR"),
            (with(&[("WORKER_CONCURRENCY", "0")]), "WORKER_CONCURRENCY"),
            (
                with(&[("WORKER_CONCURRENCY", "many")]),
                "WORKER_CONCURRENCY",
            ),
            (
                with(&[("SF_EVENTS_BATCH_SIZE", "500")]),
                "SF_EVENTS_BATCH_SIZE",
            ),
            (
                with(&[("SF_PUBSUB_ENDPOINT", "grpc://x")]),
                "SF_PUBSUB_ENDPOINT",
            ),
            (with(&[("LOG_FORMAT", "xml")]), "LOG_FORMAT"),
            (with(&[("API_AUTH", "maybe")]), "API_AUTH"),
            (with(&[("ALERT_WEBHOOK_URL", "nope")]), "ALERT_WEBHOOK_URL"),
            (
                with(&[("LEADER_LEASE_TTL_SECS", "1")]),
                "LEADER_LEASE_TTL_SECS",
            ),
            (
                with(&[("RECONCILER_BATCH_LIMIT", "0")]),
                "RECONCILER_BATCH_LIMIT",
            ),
            (
                with(&[("CORS_ALLOWED_ORIGINS", "https://a.example/path")]),
                "CORS_ALLOWED_ORIGINS",
            ),
            (
                with(&[("CORS_ALLOWED_ORIGINS", "*,https://a.example")]),
                "CORS_ALLOWED_ORIGINS",
            ),
            (
                with(&[("API_RATE_LIMIT_PER_SEC", "-1")]),
                "API_RATE_LIMIT_PER_SEC",
            ),
            (
                with(&[("API_RATE_LIMIT_BURST", "0")]),
                "API_RATE_LIMIT_BURST",
            ),
            (with(&[("SSE_MAX_CLIENTS", "0")]), "SSE_MAX_CLIENTS"),
            (
                with(&[("HTTP_HEADER_READ_TIMEOUT_SECS", "0")]),
                "HTTP_HEADER_READ_TIMEOUT_SECS",
            ),
            (
                with(&[("ALERT_FAILURE_RATE_THRESHOLD", "10")]),
                "ALERT_FAILURE_RATE_THRESHOLD",
            ),
            (with(&[("ALERT_WINDOW_SECS", "0")]), "ALERT_WINDOW_SECS"),
            (with(&[("ALERT_MIN_SAMPLES", "0")]), "ALERT_MIN_SAMPLES"),
        ];
        for (result, setting) in cases {
            let e = result.expect_err(setting);
            assert_eq!(e.setting, setting, "{e}");
            let line = e.to_string();
            assert!(!line.contains('\n') && line.contains(setting), "{line}");
        }
    }

    #[test]
    fn http_and_alert_settings_are_read_from_the_environment() {
        let c = with(&[]).expect("valid");
        assert!(c.http.cors_allowed_origins.is_empty());
        assert!(c.http.rate_limit.is_some());
        assert_eq!(c.http.trusted_proxy_hops, 0);
        assert!((c.alert.threshold - 0.1).abs() < 1e-9);
        let c = with(&[
            (
                "CORS_ALLOWED_ORIGINS",
                "https://portal.example.com/, http://localhost:3000",
            ),
            ("API_RATE_LIMIT_PER_SEC", "0.5"),
            ("API_RATE_LIMIT_BURST", "3"),
            ("HTTP_TRUSTED_PROXY_HOPS", "1"),
            ("SSE_MAX_CLIENTS", "7"),
            ("ALERT_FAILURE_RATE_THRESHOLD", "0.25"),
            ("ALERT_MIN_SAMPLES", "4"),
            ("ALERT_WINDOW_SECS", "60"),
        ])
        .expect("valid");
        assert_eq!(
            c.http.cors_allowed_origins,
            ["https://portal.example.com", "http://localhost:3000"]
        );
        assert_eq!(
            c.http.rate_limit,
            Some(RateLimit {
                per_sec: 0.5,
                burst: 3
            })
        );
        assert_eq!(c.http.trusted_proxy_hops, 1);
        assert_eq!(c.http.sse_max_clients, 7);
        assert!((c.alert.threshold - 0.25).abs() < 1e-9);
        assert_eq!(c.alert.min_samples, 4);
        assert_eq!(c.alert.window, Duration::from_secs(60));
        let off = with(&[
            ("API_RATE_LIMIT_PER_SEC", "0"),
            ("CORS_ALLOWED_ORIGINS", "*"),
        ])
        .expect("valid");
        assert_eq!(off.http.rate_limit, None);
        assert_eq!(off.http.cors_allowed_origins, ["*"]);
    }

    #[test]
    fn api_auth_disabled_needs_no_secret() {
        let env = base().into_iter().filter(|(k, _)| k != "PORTAL_JWT_SECRET");
        let mut env: Vec<_> = env.collect();
        env.push(("API_AUTH".into(), "disabled".into()));
        let c = Config::load_from(None, env).expect("valid");
        assert!(matches!(c.http.auth, ApiAuth::Disabled));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = with(&[]).expect("valid");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret") && !dbg.contains("portal\"") && !dbg.contains("12345"),
            "{dbg}"
        );
    }

    #[test]
    fn file_layer_overrides_defaults_and_env_overrides_file() {
        let dir = std::env::temp_dir().join(format!("prov-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "worker_concurrency = 4\nqueue_name = \"fromfile\"\n")
            .expect("write");
        let mut env = base();
        env.push(("QUEUE_NAME".into(), "fromenv".into()));
        let c = Config::load_from(Some(&path), env).expect("valid");
        assert_eq!(c.queue.concurrency, 4);
        assert_eq!(c.queue.name, "fromenv");
        let missing = Config::load_from(Some(&dir.join("none.toml")), base()).expect_err("missing");
        assert_eq!(missing.setting, "PROVISIONER_CONFIG");
    }
    #[test]
    fn tools_need_no_salesforce_or_whmcs_settings() {
        let env = [
            ("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/db"),
            ("QUEUE_NAME", "q1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let t = Config::load_for_tools_from(None, env).expect("valid without credentials");
        assert_eq!(t.queue.name, "q1");
        assert_eq!(t.database.url, "postgres://u:p@127.0.0.1:5432/db");
        assert_eq!(t.channel, "/event/OrderProvisionRequested__e");
        assert_eq!(t.replay, ReplayStart::Latest);
        // The full daemon configuration still refuses the same environment.
        assert!(Config::load_from(None, Vec::new()).is_err());
        // What the tools do use is validated, naming the setting.
        for (k, v) in [
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "http://x"),
            ("QUEUE_NAME", "a b"),
            ("SF_PROVISION_EVENT_CHANNEL", "Order__e"),
            ("SF_EVENTS_REPLAY", "SOMETIMES"),
        ] {
            let e = Config::load_for_tools_from(None, [(k.to_owned(), v.to_owned())]).expect_err(k);
            assert_eq!(e.setting, k, "{e}");
        }
    }

    #[test]
    fn admin_token_is_optional_long_and_redacted() {
        assert!(with(&[]).expect("valid").admin_token.is_none());
        let e = with(&[("ADMIN_TOKEN", "short")]).expect_err("too short");
        assert_eq!(e.setting, "ADMIN_TOKEN");
        let c = with(&[("ADMIN_TOKEN", "dashboard-token-0123456789")]).expect("valid");
        assert!(c.admin_token.is_some());
        assert!(!format!("{c:?}").contains("dashboard-token"));
    }
}
