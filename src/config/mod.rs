//! Configuration: `config/default.toml` (embedded) → optional file → environment variables.
//!
//! Every key of `default.toml` is settable from the environment under its upper-case name
//! (`sf_client_id` → `SF_CLIENT_ID`), which is exactly the contract's variable list. [`Config::load`]
//! validates everything up front: the daemon either starts with a coherent configuration or
//! stops with one [`ConfigError`] line naming the setting. Secrets are [`SecretString`]s and
//! never appear in `Debug` output.

use std::{net::SocketAddr, path::Path, time::Duration};

use secrecy::SecretString;

pub use crate::net::proxy::ProxyConfig;
use crate::{salesforce::event::EventFields, salesforce::rest::OrderFieldNames};

mod raw;
mod validate;

use raw::load_raw;
use validate::{
    channel_setting, database_settings, log_format_setting, proxy_settings, queue_settings,
    replay_setting, salesforce_only,
};

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

/// Where to start a subscription that has no stored cursor (`sf_events_replay`: `LATEST`, or
/// `ALL` = `EARLIEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ReplayStart {
    Latest,
    #[serde(alias = "ALL")]
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

/// `log_format`: `json` or `pretty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// How long WHMCS may keep running an AddOrder after the client's timeout.
    pub execution_allowance: Duration,
    /// What to do with quantities above 1 when WHMCS is older than 8.12.
    pub quantity_mode: QuantityMode,
}

/// How an Order Product of quantity N reaches a WHMCS that ignores `qty[]` (before 8.12).
/// `whmcs_quantity_mode`: `expand` or `reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantityMode {
    /// N lines of quantity 1.
    #[default]
    Expand,
    /// The Order fails with `WHMCS_QTY_UNSUPPORTED`.
    Reject,
}

#[derive(Clone)]
pub struct QueueConfig {
    pub redis_url: String,
    /// Certificates for a `rediss://` URL.
    pub tls: RedisTls,
    pub name: String,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Longest wait for one Redis replica to confirm a push (`WAIT`), when Redis had replicas
    /// at start; `None` never waits.
    pub wait_replica: Option<Duration>,
}

impl QueueConfig {
    /// The settings a failed Redis connection points at, for error lines.
    pub fn redis_settings(&self) -> &'static str {
        match (&self.tls.ca_pem, &self.tls.client) {
            (Some(_), Some(_)) => "REDIS_URL, REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE",
            (Some(_), None) => "REDIS_URL, REDIS_TLS_CA_FILE",
            (None, Some(_)) => "REDIS_URL, REDIS_TLS_CERT_FILE",
            (None, None) => "REDIS_URL",
        }
    }
}

/// TLS material for `rediss://`, read from the files at load time. `Debug` shows only which
/// parts are set.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM CA certificate(s) trusted for the server; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, for mutual TLS.
    pub client: Option<(Vec<u8>, SecretString)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field(
                "ca",
                &if self.ca_pem.is_some() {
                    "REDIS_TLS_CA_FILE"
                } else {
                    "system roots"
                },
            )
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

#[derive(Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub auto_migrate: bool,
    pub max_connections: u32,
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConfig")
            .field("redis_url", &redact_credentials(&self.redis_url))
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_credentials(&self.url))
            .field("auto_migrate", &self.auto_migrate)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The marker that replaces a credential in displayed URLs.
const REDACTED: &str = "REDACTED";

/// A connection URL fit for display: user, password and any `password`-like query parameter
/// replaced by `REDACTED`; a URL that does not parse is not shown at all.
pub fn redact_credentials(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        return format!("<{REDACTED} unparsable URL>");
    };
    if !u.username().is_empty() {
        let _ = u.set_username(REDACTED);
    }
    if u.password().is_some() {
        let _ = u.set_password(Some(REDACTED));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = ["pass", "pwd", "secret", "token", "key", "auth"]
                    .iter()
                    .any(|s| lower.contains(s));
                let v = if secret {
                    REDACTED.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A webhook URL fit for display: scheme, host and port only (webhook paths and queries are
/// themselves credentials, e.g. Slack's).
pub fn redact_webhook(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => format!(
            "{}://{}{}/{REDACTED}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => format!("<{REDACTED} unparsable URL>"),
    }
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
    /// Listener of health, metrics and the dashboard; `None`: `addr` serves everything.
    pub internal_addr: Option<SocketAddr>,
    pub auth: ApiAuth,
    pub lookup_cache: Duration,
    /// Origins allowed by CORS; empty: no CORS headers; `["*"]`: any origin.
    pub cors_allowed_origins: Vec<String>,
    /// Per-client limit on `/api`; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Per-account limit on `/api`, after authentication; `None`: unlimited.
    pub account_rate_limit: Option<RateLimit>,
    /// Addresses of the reverse proxies whose `X-Forwarded-For` entries are trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub sse_max_clients: usize,
    /// Concurrent event streams of one Account.
    pub sse_max_per_account: usize,
    pub sse_keepalive: Duration,
    pub header_read_timeout: Duration,
    /// What customers see of a failed Order's error.
    pub customer_errors: CustomerErrors,
    /// Most open connections.
    pub max_connections: usize,
    /// An open connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// How failed Salesforce lookups are remembered.
    pub lookup_error_cache: Duration,
    pub lookup_budget: LookupBudget,
}

/// Customer-safe error texts by error code, and the text of every other code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerErrors {
    pub by_code: std::collections::BTreeMap<String, String>,
    pub default: String,
}

impl CustomerErrors {
    /// The text shown for `code`.
    pub fn message(&self, code: &str) -> &str {
        self.by_code.get(code).map_or(&self.default, String::as_str)
    }
}

/// What the order-status API may spend on Salesforce lookups of Orders the ledger lacks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookupBudget {
    /// Lookups per second over all clients; 0: none at all.
    pub per_sec: u32,
    /// Lookups in flight at once (at least 1).
    pub max_concurrent: usize,
    /// Lookups per Account per minute; 0: no per-account budget.
    pub per_account_per_min: u32,
    /// No lookups while the org's API usage is at or above this percent (1..=100).
    pub stop_at_usage_percent: u64,
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

/// The validated configuration of one daemon process. `Debug` shows no credential: secrets are
/// [`SecretString`]s, connection URLs lose their user and password, the webhook its path.
#[derive(Clone)]
pub struct Config {
    pub events: EventsConfig,
    pub salesforce: SalesforceConfig,
    pub whmcs: WhmcsSettings,
    pub queue: QueueConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    /// Outbound proxies (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).
    pub proxy: ProxyConfig,
    pub alert_webhook_url: Option<String>,
    pub alert: AlertConfig,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub reconciler: ReconcilerConfig,
    /// TTL of the subscriber leadership lease.
    pub leader_lease_ttl: Duration,
    /// Test-only skew of this process's clock, in seconds (`test_clock_offset_secs`).
    pub test_clock_offset_secs: i64,
    /// Days the per-step audit trail is kept (`audit_retention_days`).
    pub audit_retention_days: u32,
    /// Bearer token of the operator dashboard (`/admin`); `None` disables it (404).
    pub admin_token: Option<SecretString>,
    /// Dependency breakers and the WHMCS authentication latch.
    pub breaker: crate::deps::BreakerSettings,
    /// Adaptive in-flight limits per dependency (`*_MIN_IN_FLIGHT`, `*_MAX_IN_FLIGHT`).
    pub limits: DependencyLimits,
}

/// The bounds of each dependency's adaptive in-flight limit (`deps::limiter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyLimits {
    pub whmcs: crate::deps::limiter::LimitSettings,
    pub salesforce: crate::deps::limiter::LimitSettings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("events", &self.events)
            .field("salesforce", &self.salesforce)
            .field("whmcs", &self.whmcs)
            .field("queue", &self.queue)
            .field("database", &self.database)
            .field("http", &self.http)
            .field(
                "alert_webhook_url",
                &self.alert_webhook_url.as_deref().map(redact_webhook),
            )
            .field("alert", &self.alert)
            .field("log_format", &self.log_format)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("reconciler", &self.reconciler)
            .field("leader_lease_ttl", &self.leader_lease_ttl)
            .field("admin_token", &self.admin_token)
            .field("audit_retention_days", &self.audit_retention_days)
            .field("limits", &self.limits)
            .finish()
    }
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

/// What `provisioner orders redrive` needs: the tools' settings, and Salesforce (OAuth, REST,
/// field names) with the outbound proxy; WHMCS and HTTP settings may be absent.
#[derive(Debug, Clone)]
pub struct RedriveConfig {
    pub tools: ToolsConfig,
    pub salesforce: SalesforceConfig,
    pub proxy: ProxyConfig,
}

/// What `provisioner migrate` needs: the ledger, and how to log.
#[derive(Debug, Clone)]
pub struct MigrateConfig {
    pub database: DatabaseConfig,
    pub log_format: LogFormat,
}

/// What `provisioner check` works from: every configuration problem at once, and the ledger
/// and queue settings when those are valid on their own (so their reachability is checked even
/// when another setting is wrong).
#[derive(Debug)]
pub struct CheckConfig {
    pub config: Result<Config, Vec<ConfigError>>,
    pub database: Option<DatabaseConfig>,
    pub queue: Option<QueueConfig>,
}

impl Config {
    /// Loads defaults → optional file → the given environment, then validates; fails with the
    /// first problem (see [`Config::load_for_check_from`] for all of them).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::validate_all(load_raw(file, env)?).map_err(|mut all| all.swap_remove(0))
    }

    /// Loads like [`Config::load_from`], reporting every problem, not only the first.
    pub fn load_for_check_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> CheckConfig {
        match load_raw(file, env) {
            Ok(r) => CheckConfig {
                database: database_settings(&r).ok(),
                queue: queue_settings(&r).ok(),
                config: Self::validate_all(r),
            },
            Err(e) => CheckConfig {
                config: Err(vec![e]),
                database: None,
                queue: None,
            },
        }
    }

    /// [`Config::load_for_check_from`] with the process environment.
    pub fn load_for_check(file: Option<&Path>) -> CheckConfig {
        Self::load_for_check_from(file, std::env::vars())
    }

    /// Validates only what `migrate` uses (the database settings and `LOG_FORMAT`).
    pub fn load_for_migrate_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<MigrateConfig, ConfigError> {
        let r = load_raw(file, env)?;
        Ok(MigrateConfig {
            database: database_settings(&r)?,
            log_format: log_format_setting(&r.log_format)?,
        })
    }

    /// [`Config::load_for_migrate_from`] with the process environment.
    pub fn load_for_migrate(file: Option<&Path>) -> Result<MigrateConfig, ConfigError> {
        Self::load_for_migrate_from(file, std::env::vars())
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

    /// Validates what `orders redrive` uses ([`RedriveConfig`]).
    pub fn load_for_redrive_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RedriveConfig, ConfigError> {
        let r = load_raw(file, env)?;
        Ok(RedriveConfig {
            tools: ToolsConfig {
                database: database_settings(&r)?,
                queue: queue_settings(&r)?,
                channel: channel_setting(&r.sf_provision_event_channel)?,
                replay: replay_setting(&r.sf_events_replay)?,
            },
            salesforce: salesforce_only(&r)?,
            proxy: proxy_settings(&r)?,
        })
    }

    /// [`Config::load_for_redrive_from`] with the process environment.
    pub fn load_for_redrive(file: Option<&Path>) -> Result<RedriveConfig, ConfigError> {
        Self::load_for_redrive_from(file, std::env::vars())
    }

    /// [`Config::load_for_tools_from`] with the process environment.
    pub fn load_for_tools(file: Option<&Path>) -> Result<ToolsConfig, ConfigError> {
        Self::load_for_tools_from(file, std::env::vars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTAL: &str = "unit-test-portal-secret-0123456789abcdef";

    fn base() -> Vec<(String, String)> {
        [
            ("SF_CLIENT_ID", "cid"),
            ("SF_AUTH_FLOW", "client_credentials"),
            ("SF_CLIENT_SECRET", "12345"),
            ("WHMCS_API_URL", "http://127.0.0.1:1/includes/api.php"),
            ("WHMCS_API_IDENTIFIER", "id"),
            ("WHMCS_API_SECRET", "s3cret"),
            ("PORTAL_JWT_SECRET", PORTAL),
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
    fn in_flight_limits_default_and_read_their_settings() {
        use crate::deps::limiter::LimitSettings;
        let c = with(&[]).expect("valid");
        assert_eq!(c.queue.concurrency, 128);
        assert_eq!(
            c.limits,
            DependencyLimits {
                whmcs: LimitSettings {
                    floor: 4,
                    ceiling: 32
                },
                salesforce: LimitSettings {
                    floor: 4,
                    ceiling: 32
                },
            }
        );
        let c = with(&[
            ("WHMCS_MAX_IN_FLIGHT", "10"),
            ("WHMCS_MIN_IN_FLIGHT", "10"),
            ("SF_MAX_IN_FLIGHT", "64"),
            ("SF_MIN_IN_FLIGHT", "1"),
        ])
        .expect("valid");
        assert_eq!((c.limits.whmcs.floor, c.limits.whmcs.ceiling), (10, 10));
        assert_eq!(
            (c.limits.salesforce.floor, c.limits.salesforce.ceiling),
            (1, 64)
        );
    }

    /// SF_LOGIN_URL, SF_PUBSUB_ENDPOINT and WHMCS_API_URL: https://, or http:// to loopback.
    fn plain_http_rule(setting: &str, remote: &str, loopback: &[&str]) {
        let e = with(&[(setting, remote)]).expect_err(remote);
        assert_eq!(e.setting, setting, "{e}");
        assert!(e.message.contains("https://"), "{e}");
        let https = remote.replacen("http://", "https://", 1);
        with(&[(setting, https.as_str())]).unwrap_or_else(|e| panic!("{https}: {e}"));
        for ok in loopback {
            with(&[(setting, ok)]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn sf_login_url_needs_https_unless_loopback() {
        plain_http_rule(
            "SF_LOGIN_URL",
            "http://login.salesforce.com",
            &["http://127.0.0.1:7000", "http://localhost:7000"],
        );
    }

    #[test]
    fn sf_pubsub_endpoint_needs_https_unless_loopback() {
        plain_http_rule(
            "SF_PUBSUB_ENDPOINT",
            "http://api.pubsub.salesforce.com:7443",
            &["http://127.0.0.1:7443", "http://[::1]:7443"],
        );
    }

    #[test]
    fn whmcs_api_url_needs_https_unless_loopback() {
        plain_http_rule(
            "WHMCS_API_URL",
            "http://billing.example.com/includes/api.php",
            &[
                "http://127.0.0.2:80/includes/api.php",
                "http://localhost/includes/api.php",
            ],
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut env = base();
        env.retain(|(k, _)| k != "SF_CLIENT_ID");
        env.push(("WORKER_CONCURRENCY".into(), "0".into()));
        env.push(("LOG_FORMAT".into(), "xml".into()));
        let check = Config::load_for_check_from(None, env.clone());
        let errors = check.config.expect_err("three problems");
        let settings: Vec<&str> = errors.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            settings,
            ["WORKER_CONCURRENCY", "SF_CLIENT_ID", "LOG_FORMAT"]
        );
        assert!(
            check.database.is_some(),
            "the ledger settings are valid on their own"
        );
        assert!(
            check.queue.is_none(),
            "WORKER_CONCURRENCY is part of the queue settings"
        );
        // `serve` stops at the first.
        let first = Config::load_from(None, env).expect_err("invalid");
        assert_eq!(first.setting, "WORKER_CONCURRENCY");
    }

    #[test]
    fn migrate_needs_only_the_database() {
        let only_db = [("DATABASE_URL".to_owned(), "sqlite::memory:".to_owned())];
        let m = Config::load_for_migrate_from(None, only_db).expect("valid for migrate");
        assert_eq!(m.database.url, "sqlite::memory:");
        let e = Config::load_for_migrate_from(
            None,
            [("DATABASE_URL".to_owned(), "mysql://x".to_owned())],
        )
        .expect_err("bad database url");
        assert_eq!(e.setting, "DATABASE_URL");
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
            (with(&[("WHMCS_MIN_IN_FLIGHT", "0")]), "WHMCS_MIN_IN_FLIGHT"),
            (
                with(&[("WHMCS_MIN_IN_FLIGHT", "40")]),
                "WHMCS_MAX_IN_FLIGHT",
            ),
            (
                with(&[("SF_MIN_IN_FLIGHT", "8"), ("SF_MAX_IN_FLIGHT", "4")]),
                "SF_MAX_IN_FLIGHT",
            ),
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
                with(&[("HTTP_TRUSTED_PROXIES", "10.0.0.0/33")]),
                "HTTP_TRUSTED_PROXIES",
            ),
            (
                with(&[("HTTP_TRUSTED_PROXY_HOPS", "1")]),
                "HTTP_TRUSTED_PROXY_HOPS",
            ),
            (
                with(&[("API_ACCOUNT_RATE_LIMIT_BURST", "0")]),
                "API_ACCOUNT_RATE_LIMIT_BURST",
            ),
            (
                with(&[("SF_LOOKUP_STOP_AT_USAGE_PERCENT", "0")]),
                "SF_LOOKUP_STOP_AT_USAGE_PERCENT",
            ),
            (
                with(&[("SF_LOOKUP_STOP_AT_USAGE_PERCENT", "101")]),
                "SF_LOOKUP_STOP_AT_USAGE_PERCENT",
            ),
            (
                with(&[("SF_LOOKUP_MAX_CONCURRENT", "0")]),
                "SF_LOOKUP_MAX_CONCURRENT",
            ),
            (
                with(&[("HTTP_MAX_CONNECTIONS", "0")]),
                "HTTP_MAX_CONNECTIONS",
            ),
            (
                with(&[("HTTP_IDLE_TIMEOUT_SECS", "0")]),
                "HTTP_IDLE_TIMEOUT_SECS",
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
            (
                with(&[("INTERNAL_HTTP_ADDR", "nowhere")]),
                "INTERNAL_HTTP_ADDR",
            ),
            (
                with(&[
                    ("HTTP_ADDR", "127.0.0.1:8080"),
                    ("INTERNAL_HTTP_ADDR", "127.0.0.1:8080"),
                ]),
                "INTERNAL_HTTP_ADDR",
            ),
            (with(&[("SSE_MAX_PER_ACCOUNT", "0")]), "SSE_MAX_PER_ACCOUNT"),
            (
                with(&[("CUSTOMER_ERROR_MESSAGES", "WHMCS_ERROR")]),
                "CUSTOMER_ERROR_MESSAGES",
            ),
            (
                with(&[("CUSTOMER_ERROR_MESSAGES", "lower=text")]),
                "CUSTOMER_ERROR_MESSAGES",
            ),
            (
                with(&[("CUSTOMER_ERROR_MESSAGE_DEFAULT", " ")]),
                "CUSTOMER_ERROR_MESSAGE_DEFAULT",
            ),
            (with(&[("PORTAL_JWT_SECRET", "short")]), "PORTAL_JWT_SECRET"),
            (
                with(&[("WHMCS_QUANTITY_MODE", "sometimes")]),
                "WHMCS_QUANTITY_MODE",
            ),
            (
                with(&[("REDIS_TLS_CA_FILE", "/etc/hostname")]),
                "REDIS_TLS_CA_FILE",
            ),
            (
                with(&[
                    ("REDIS_URL", "rediss://127.0.0.1:6380"),
                    ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
                ]),
                "REDIS_TLS_CA_FILE",
            ),
            (
                with(&[
                    ("REDIS_URL", "rediss://127.0.0.1:6380"),
                    ("REDIS_TLS_CERT_FILE", "/nonexistent/client.pem"),
                ]),
                "REDIS_TLS_KEY_FILE",
            ),
            (
                with(&[("DATABASE_URL", "postgres://u:p@db/x?sslmode=strict")]),
                "DATABASE_URL",
            ),
            (
                with(&[(
                    "DATABASE_URL",
                    "postgres://u:p@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                )]),
                "DATABASE_URL",
            ),
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
        assert!(c.http.trusted_proxies.is_empty());
        assert_eq!(
            c.http.account_rate_limit,
            Some(RateLimit {
                per_sec: 5.0,
                burst: 20
            })
        );
        assert_eq!(c.http.max_connections, 1024);
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            c.http.lookup_budget,
            LookupBudget {
                per_sec: 5,
                max_concurrent: 4,
                per_account_per_min: 30,
                stop_at_usage_percent: 80,
            }
        );
        assert!((c.alert.threshold - 0.1).abs() < 1e-9);
        let c = with(&[
            (
                "CORS_ALLOWED_ORIGINS",
                "https://portal.example.com/, http://localhost:3000",
            ),
            ("API_RATE_LIMIT_PER_SEC", "0.5"),
            ("API_RATE_LIMIT_BURST", "3"),
            (
                "HTTP_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.1.10 ,2001:db8::/32",
            ),
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
        assert_eq!(
            c.http.trusted_proxies,
            ["10.0.0.0/8", "192.168.1.10/32", "2001:db8::/32"]
                .map(|n| n.parse::<ipnet::IpNet>().expect("net"))
        );
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
            !dbg.contains("s3cret") && !dbg.contains(PORTAL) && !dbg.contains("12345"),
            "{dbg}"
        );
    }

    #[test]
    fn portal_secret_must_be_long_and_not_a_placeholder() {
        for bad in [
            "change-me-to-a-long-random-secret",
            "changeme",
            "secret",
            "SECRET",
            "portal-test-secret",
            "0123456789abcdef0123456789abcde",
            "please-change-me-0123456789abcdef0123456789",
        ] {
            let e = with(&[("PORTAL_JWT_SECRET", bad)]).expect_err(bad);
            assert_eq!(e.setting, "PORTAL_JWT_SECRET", "{e}");
            if bad.len() > 8 {
                assert!(
                    !e.to_string().contains(bad),
                    "the error repeats the secret: {e}"
                );
            }
        }
        with(&[("PORTAL_JWT_SECRET", "0123456789abcdef0123456789abcdef")]).expect("32 bytes");
        // The `.env.example` value is refused as it stands.
        let example = include_str!("../../.env.example")
            .lines()
            .find_map(|l| l.strip_prefix("PORTAL_JWT_SECRET="))
            .expect("listed in .env.example");
        assert!(with(&[("PORTAL_JWT_SECRET", example)]).is_err());
    }

    #[test]
    fn customer_error_table_and_internal_listener_are_read() {
        let c = with(&[]).expect("valid");
        assert!(c.http.internal_addr.is_none());
        assert_eq!(c.http.sse_max_per_account, 5);
        let e = &c.http.customer_errors;
        assert!(
            e.message("WHMCS_CLIENT_NOT_FOUND")
                .contains("billing account")
        );
        assert_eq!(e.message("WHMCS_ERROR"), e.default);
        let c = with(&[
            ("INTERNAL_HTTP_ADDR", "127.0.0.1:9090"),
            (
                "CUSTOMER_ERROR_MESSAGES",
                "WHMCS_ERROR = Billing said no. ; WHMCS_TIMEOUT=Billing is slow.;",
            ),
            ("CUSTOMER_ERROR_MESSAGE_DEFAULT", "Something went wrong."),
        ])
        .expect("valid");
        assert_eq!(
            c.http.internal_addr,
            Some("127.0.0.1:9090".parse().expect("addr"))
        );
        let e = &c.http.customer_errors;
        assert_eq!(e.message("WHMCS_ERROR"), "Billing said no.");
        assert_eq!(e.message("WHMCS_TIMEOUT"), "Billing is slow.");
        assert_eq!(e.message("WHMCS_CLIENT_NOT_FOUND"), "Something went wrong.");
    }

    #[test]
    fn debug_hides_credentials_in_urls() {
        let c = with(&[
            (
                "DATABASE_URL",
                "postgres://ledger:db-pass-123@db.internal:5432/prov?sslmode=require&password=qp-456",
            ),
            ("REDIS_URL", "redis://default:redis-pass-789@redis.internal:6379/0"),
            (
                "ALERT_WEBHOOK_URL",
                "https://hooks.slack.example/services/T000/B000/hook-secret-xyz?token=tq",
            ),
        ])
        .expect("valid");
        let dbg = format!("{c:?}");
        for secret in [
            "db-pass-123",
            "qp-456",
            "ledger:",
            "redis-pass-789",
            "hook-secret-xyz",
            "T000",
            "tq",
        ] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains("db.internal:5432/prov"), "{dbg}");
        assert!(dbg.contains("sslmode=require"), "{dbg}");
        assert!(dbg.contains("redis.internal:6379"), "{dbg}");
        assert!(
            dbg.contains("https://hooks.slack.example/REDACTED"),
            "{dbg}"
        );
        assert_eq!(redact_credentials("not a url"), "<REDACTED unparsable URL>");
        assert_eq!(
            redact_credentials("sqlite:///var/lib/ledger.db"),
            "sqlite:///var/lib/ledger.db"
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
    fn audit_retention_and_the_redrive_settings() {
        assert_eq!(with(&[]).expect("valid").audit_retention_days, 90);
        let c = with(&[("AUDIT_RETENTION_DAYS", "7")]).expect("valid");
        assert_eq!(c.audit_retention_days, 7);
        for bad in ["0", "36501", "x"] {
            let e = with(&[("AUDIT_RETENTION_DAYS", bad)]).expect_err(bad);
            assert_eq!(e.setting, "AUDIT_RETENTION_DAYS", "{e}");
        }
        // The redrive needs Salesforce, not WHMCS nor the portal secret.
        let env: Vec<(String, String)> = [
            ("SF_CLIENT_ID", "cid"),
            ("SF_AUTH_FLOW", "client_credentials"),
            ("SF_CLIENT_SECRET", "12345"),
            ("SF_FIELD_ACTIVATION_STATUS", "Provisioning_Status__c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = Config::load_for_redrive_from(None, env).expect("valid without WHMCS");
        assert_eq!(
            r.salesforce.fields.activation_status,
            "Provisioning_Status__c"
        );
        assert_eq!(r.tools.queue.name, "provisioning");
        let e = Config::load_for_redrive_from(None, Vec::new()).expect_err("needs Salesforce");
        assert_eq!(e.setting, "SF_CLIENT_ID", "{e}");
    }

    #[test]
    fn proxy_settings_accept_both_cases_upper_wins_and_stay_redacted() {
        let c = with(&[]).expect("valid");
        assert!(c.proxy.https.is_none() && c.proxy.http.is_none());
        let c = with(&[
            ("https_proxy", "http://low:pw1@lower.corp:3128"),
            ("no_proxy", ".internal.corp"),
        ])
        .expect("valid");
        assert_eq!(
            c.proxy.https.as_ref().map(|p| p.redacted()).as_deref(),
            Some("http://lower.corp:3128")
        );
        assert_eq!(c.proxy.no_proxy, ".internal.corp");
        // Upper-case wins whichever comes first in the environment.
        for order in [["HTTP_PROXY", "http_proxy"], ["http_proxy", "HTTP_PROXY"]] {
            let mut env = base();
            for k in order {
                let host = if k == "HTTP_PROXY" { "upper" } else { "lower" };
                env.push((k.to_owned(), format!("http://{host}.corp:8080")));
            }
            let c = Config::load_from(None, env).expect("valid");
            assert_eq!(
                c.proxy.http.as_ref().map(|p| p.redacted()).as_deref(),
                Some("http://upper.corp:8080"),
                "{order:?}"
            );
        }
        let c = with(&[("HTTPS_PROXY", "http://alice:hunter2@proxy.corp:3128")]).expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("alice"), "{dbg}");
        for (k, v) in [
            ("HTTPS_PROXY", "socks5://alice:hunter2@proxy.corp:1080"),
            ("HTTP_PROXY", "http://alice:hunter2@proxy.corp:3128/pac"),
        ] {
            let e = with(&[(k, v)]).expect_err(k);
            assert_eq!(e.setting, k, "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
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
