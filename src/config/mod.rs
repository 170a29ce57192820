//! Configuration: `config/default.toml` (embedded) → optional file → environment variables.
//!
//! Every key of `default.toml` is settable from the environment under its upper-case name
//! (`sf_client_id` → `SF_CLIENT_ID`), which is exactly the contract's variable list. [`Config::load`]
//! validates everything up front: the daemon either starts with a coherent configuration or
//! stops with one [`ConfigError`] line naming the setting. Secrets are [`SecretString`]s and
//! never appear in `Debug` output.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::Deserialize;

use crate::{salesforce::event::EventFields, salesforce::rest::OrderFieldNames};

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

/// The raw, flat settings as they appear in `default.toml`.
#[derive(Debug, Deserialize)]
struct Raw {
    sf_events_enabled: bool,
    sf_provision_event_channel: String,
    sf_events_replay: String,
    sf_pubsub_endpoint: String,
    sf_events_batch_size: i32,
    sf_events_watchdog_secs: u64,
    sf_events_max_pending_jobs: u64,
    sf_events_backoff_initial_ms: u64,
    sf_events_backoff_max_ms: u64,
    sf_login_url: String,
    sf_auth_flow: String,
    sf_client_id: String,
    sf_username: String,
    sf_private_key_path: String,
    sf_private_key: SecretString,
    sf_client_secret: SecretString,
    sf_api_version: String,
    sf_http_timeout_secs: u64,
    sf_field_event_order_id: String,
    sf_field_event_idem_key: String,
    sf_field_event_correlation_id: String,
    sf_field_event_requested_by: String,
    sf_field_activation_status: String,
    sf_field_whmcs_order_id: String,
    sf_field_error_code: String,
    sf_field_error_message: String,
    sf_field_last_attempt_at: String,
    sf_field_account_whmcs_client_id: String,
    sf_field_product_whmcs_product_id: String,
    sf_field_product_whmcs_billing_cycle: String,
    whmcs_api_url: String,
    whmcs_api_identifier: String,
    whmcs_api_secret: SecretString,
    whmcs_api_access_key: SecretString,
    whmcs_payment_method: String,
    whmcs_timeout_secs: u64,
    redis_url: String,
    queue_name: String,
    worker_concurrency: usize,
    job_max_attempts: u32,
    job_backoff_initial_ms: u64,
    job_backoff_max_ms: u64,
    database_url: String,
    database_auto_migrate: bool,
    database_max_connections: u32,
    http_addr: String,
    portal_jwt_secret: SecretString,
    portal_jwt_account_claim: String,
    portal_jwt_issuer: String,
    portal_jwt_audience: String,
    api_auth: String,
    order_lookup_cache_secs: u64,
    cors_allowed_origins: String,
    api_rate_limit_per_sec: f64,
    api_rate_limit_burst: u32,
    http_trusted_proxy_hops: usize,
    sse_max_clients: usize,
    sse_keepalive_secs: u64,
    http_header_read_timeout_secs: u64,
    alert_webhook_url: String,
    alert_window_secs: u64,
    alert_failure_rate_threshold: f64,
    alert_min_samples: i64,
    alert_repeat_interval_secs: u64,
    alert_check_interval_secs: u64,
    alert_webhook_timeout_secs: u64,
    log_format: String,
    shutdown_grace_secs: u64,
    reconciler_interval_secs: u64,
    reconciler_stuck_after_secs: u64,
    reconciler_batch_limit: u32,
    leader_lease_ttl_secs: u64,
    admin_token: SecretString,
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

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn secret_non_empty(s: SecretString) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    (!s.expose_secret().trim().is_empty()).then_some(s)
}

fn require(name: &str, v: String) -> Result<String, ConfigError> {
    non_empty(v).ok_or_else(|| err(name, "is required"))
}

fn http_url(name: &str, v: &str) -> Result<(), ConfigError> {
    match url::Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(err(
            name,
            format!("must be an http:// or https:// URL, got {v:?}"),
        )),
    }
}

/// `CORS_ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]` origins, or `*`.
fn cors_origins(v: &str) -> Result<Vec<String>, ConfigError> {
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| o.trim_end_matches('/').to_owned())
        .collect();
    if list.iter().any(|o| o == "*") {
        return if list.len() == 1 {
            Ok(list)
        } else {
            Err(err(
                "cors_allowed_origins",
                "`*` cannot be combined with origins",
            ))
        };
    }
    for o in &list {
        let ok = url::Url::parse(o).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.username().is_empty()
        });
        if !ok {
            return Err(err(
                "cors_allowed_origins",
                format!("{o:?} is not an origin like https://portal.example.com"),
            ));
        }
    }
    Ok(list)
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

/// Defaults → optional file → environment, deserialised but not yet validated.
fn load_raw(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Raw, ConfigError> {
    let mut figment = Figment::new().merge(Toml::string(DEFAULT_TOML));
    if let Some(path) = file {
        if !path.exists() {
            return Err(err(
                "PROVISIONER_CONFIG",
                format!("file {} does not exist", path.display()),
            ));
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only keys that `default.toml` defines are taken from the environment, as strings;
    // `extract_lossy` then reads "8" as a number and "true" as a bool where a field wants one.
    let known: BTreeMap<String, figment::value::Value> = Figment::from(Toml::string(DEFAULT_TOML))
        .extract()
        .map_err(|e| err("config/default.toml", e.to_string()))?;
    let overrides: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.to_ascii_lowercase();
            known.contains_key(&key).then_some((key, v))
        })
        .collect();
    figment = figment.merge(Serialized::defaults(overrides));
    let raw: Raw = figment.extract_lossy().map_err(|e| {
        let setting = e.path.join(".");
        let setting = if setting.is_empty() {
            "config".into()
        } else {
            setting
        };
        err(&setting, e.kind.to_string())
    })?;
    Ok(raw)
}

fn replay_setting(v: &str) -> Result<ReplayStart, ConfigError> {
    match v.trim().to_ascii_uppercase().as_str() {
        "LATEST" => Ok(ReplayStart::Latest),
        "ALL" | "EARLIEST" => Ok(ReplayStart::Earliest),
        other => Err(err(
            "sf_events_replay",
            format!("must be LATEST or ALL, got {other:?}"),
        )),
    }
}

fn channel_setting(v: &str) -> Result<String, ConfigError> {
    let channel = require("sf_provision_event_channel", v.to_owned())?;
    if !channel.starts_with("/event/") && !channel.starts_with("/data/") {
        return Err(err(
            "sf_provision_event_channel",
            format!("must be a topic such as /event/Name__e, got {channel:?}"),
        ));
    }
    Ok(channel)
}

fn queue_settings(r: &Raw) -> Result<QueueConfig, ConfigError> {
    let redis_url = require("redis_url", r.redis_url.clone())?;
    if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
        return Err(err("redis_url", "must start with redis:// or rediss://"));
    }
    let queue_name = require("queue_name", r.queue_name.clone())?;
    if queue_name.contains(char::is_whitespace) {
        return Err(err("queue_name", "must not contain spaces"));
    }
    if r.worker_concurrency == 0 {
        return Err(err("worker_concurrency", "must be at least 1"));
    }
    if r.job_max_attempts == 0 {
        return Err(err("job_max_attempts", "must be at least 1"));
    }
    Ok(QueueConfig {
        redis_url,
        name: queue_name,
        concurrency: r.worker_concurrency,
        max_attempts: r.job_max_attempts,
        backoff_initial: Duration::from_millis(r.job_backoff_initial_ms.max(1)),
        backoff_max: Duration::from_millis(
            r.job_backoff_max_ms.max(r.job_backoff_initial_ms.max(1)),
        ),
    })
}

fn database_settings(r: &Raw) -> Result<DatabaseConfig, ConfigError> {
    let database_url = require("database_url", r.database_url.clone())?;
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://"))
    {
        return Err(err(
            "database_url",
            "must start with sqlite:, postgres:// or postgresql://",
        ));
    }
    if r.database_max_connections == 0 {
        return Err(err("database_max_connections", "must be at least 1"));
    }
    Ok(DatabaseConfig {
        url: database_url,
        auto_migrate: r.database_auto_migrate,
        max_connections: r.database_max_connections,
    })
}

/// The dashboard token: empty disables the dashboard; otherwise long enough not to be guessed.
fn admin_token_setting(v: SecretString) -> Result<Option<SecretString>, ConfigError> {
    use secrecy::ExposeSecret;
    let Some(token) = secret_non_empty(v) else {
        return Ok(None);
    };
    let t = token.expose_secret();
    if t.trim() != t || t.chars().count() < 16 {
        return Err(err(
            "admin_token",
            "must be at least 16 characters without surrounding spaces (empty disables /admin)",
        ));
    }
    Ok(Some(token))
}

impl Config {
    fn validate(r: Raw) -> Result<Self, ConfigError> {
        let queue = queue_settings(&r)?;
        let database = database_settings(&r)?;
        let replay = replay_setting(&r.sf_events_replay)?;
        let endpoint = require("sf_pubsub_endpoint", r.sf_pubsub_endpoint)?;
        http_url("sf_pubsub_endpoint", &endpoint)?;
        if !(1..=100).contains(&r.sf_events_batch_size) {
            return Err(err("sf_events_batch_size", "must be between 1 and 100"));
        }
        if r.sf_events_watchdog_secs == 0 {
            return Err(err("sf_events_watchdog_secs", "must be at least 1"));
        }
        if r.sf_events_max_pending_jobs == 0 {
            return Err(err("sf_events_max_pending_jobs", "must be at least 1"));
        }
        if r.sf_events_backoff_initial_ms == 0
            || r.sf_events_backoff_max_ms < r.sf_events_backoff_initial_ms
        {
            return Err(err(
                "sf_events_backoff_max_ms",
                "must be at least sf_events_backoff_initial_ms (> 0)",
            ));
        }
        let channel = channel_setting(&r.sf_provision_event_channel)?;

        let login_url = require("sf_login_url", r.sf_login_url)?
            .trim_end_matches('/')
            .to_owned();
        http_url("sf_login_url", &login_url)?;
        let client_id = require("sf_client_id", r.sf_client_id)?;
        let auth = match r.sf_auth_flow.trim() {
            "jwt" => {
                let username = require("sf_username", r.sf_username)?;
                let inline = secret_non_empty(r.sf_private_key);
                let path = non_empty(r.sf_private_key_path);
                let pem = match (path, inline) {
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "sf_private_key",
                            "set either SF_PRIVATE_KEY or SF_PRIVATE_KEY_PATH, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(err(
                            "sf_private_key_path",
                            "is required for SF_AUTH_FLOW=jwt (or set SF_PRIVATE_KEY)",
                        ));
                    }
                    (None, Some(pem)) => pem,
                    (Some(path), None) => {
                        SecretString::from(std::fs::read_to_string(&path).map_err(|e| {
                            err("sf_private_key_path", format!("cannot read {path}: {e}"))
                        })?)
                    }
                };
                {
                    use secrecy::ExposeSecret;
                    if !pem.expose_secret().contains("PRIVATE KEY-----") {
                        return Err(err("sf_private_key", "is not a PEM private key"));
                    }
                }
                SalesforceAuth::Jwt {
                    username,
                    private_key_pem: pem,
                }
            }
            "client_credentials" => SalesforceAuth::ClientCredentials {
                client_secret: secret_non_empty(r.sf_client_secret).ok_or_else(|| {
                    err(
                        "sf_client_secret",
                        "is required for SF_AUTH_FLOW=client_credentials",
                    )
                })?,
            },
            other => {
                return Err(err(
                    "sf_auth_flow",
                    format!("must be jwt or client_credentials, got {other:?}"),
                ));
            }
        };
        let api_version = require("sf_api_version", r.sf_api_version)?;
        let api_version = api_version.trim_start_matches('v').to_owned();
        if api_version.parse::<f32>().is_err() {
            return Err(err(
                "sf_api_version",
                format!("must look like 65.0, got {api_version:?}"),
            ));
        }

        let whmcs_url = require("whmcs_api_url", r.whmcs_api_url)?;
        http_url("whmcs_api_url", &whmcs_url)?;
        let whmcs = WhmcsSettings {
            api_url: whmcs_url,
            identifier: require("whmcs_api_identifier", r.whmcs_api_identifier)?,
            secret: secret_non_empty(r.whmcs_api_secret)
                .ok_or_else(|| err("whmcs_api_secret", "is required"))?,
            access_key: secret_non_empty(r.whmcs_api_access_key),
            payment_method: require("whmcs_payment_method", r.whmcs_payment_method)?,
            timeout: Duration::from_secs(r.whmcs_timeout_secs.max(1)),
        };

        let addr: SocketAddr = r.http_addr.trim().parse().map_err(|_| {
            err(
                "http_addr",
                format!("must be host:port, got {:?}", r.http_addr),
            )
        })?;
        let api_auth = match r.api_auth.trim() {
            "jwt" => ApiAuth::Jwt {
                secret: secret_non_empty(r.portal_jwt_secret).ok_or_else(|| {
                    err("portal_jwt_secret", "is required unless API_AUTH=disabled")
                })?,
                account_claim: require("portal_jwt_account_claim", r.portal_jwt_account_claim)?,
                issuer: non_empty(r.portal_jwt_issuer),
                audience: non_empty(r.portal_jwt_audience),
            },
            "disabled" => ApiAuth::Disabled,
            other => {
                return Err(err(
                    "api_auth",
                    format!("must be jwt or disabled, got {other:?}"),
                ));
            }
        };
        let alert_webhook_url = non_empty(r.alert_webhook_url);
        if let Some(u) = &alert_webhook_url {
            http_url("alert_webhook_url", u)?;
        }
        let cors_allowed_origins = cors_origins(&r.cors_allowed_origins)?;
        let rate_limit = match (r.api_rate_limit_per_sec, r.api_rate_limit_burst) {
            (p, _) if !p.is_finite() || p < 0.0 => {
                return Err(err("api_rate_limit_per_sec", "must be 0 (off) or positive"));
            }
            (0.0, _) => None,
            (_, 0) => return Err(err("api_rate_limit_burst", "must be at least 1")),
            (per_sec, burst) => Some(RateLimit { per_sec, burst }),
        };
        for (name, v) in [
            ("sse_max_clients", r.sse_max_clients as u64),
            ("sse_keepalive_secs", r.sse_keepalive_secs),
            (
                "http_header_read_timeout_secs",
                r.http_header_read_timeout_secs,
            ),
            ("alert_window_secs", r.alert_window_secs),
            ("alert_min_samples", r.alert_min_samples.max(0) as u64),
            ("alert_repeat_interval_secs", r.alert_repeat_interval_secs),
            ("alert_check_interval_secs", r.alert_check_interval_secs),
            ("alert_webhook_timeout_secs", r.alert_webhook_timeout_secs),
        ] {
            if v == 0 {
                return Err(err(name, "must be at least 1"));
            }
        }
        if !(r.alert_failure_rate_threshold > 0.0 && r.alert_failure_rate_threshold < 1.0) {
            return Err(err(
                "alert_failure_rate_threshold",
                "must be a fraction between 0 and 1, e.g. 0.1",
            ));
        }
        let log_format = match r.log_format.trim() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(err(
                    "log_format",
                    format!("must be json or pretty, got {other:?}"),
                ));
            }
        };

        if r.leader_lease_ttl_secs < 3 {
            return Err(err("leader_lease_ttl_secs", "must be at least 3"));
        }
        if r.reconciler_interval_secs > 0 && r.reconciler_batch_limit == 0 {
            return Err(err("reconciler_batch_limit", "must be at least 1"));
        }
        Ok(Config {
            reconciler: ReconcilerConfig {
                interval: (r.reconciler_interval_secs > 0)
                    .then(|| Duration::from_secs(r.reconciler_interval_secs)),
                stuck_after: Duration::from_secs(r.reconciler_stuck_after_secs),
                batch_limit: r.reconciler_batch_limit,
            },
            leader_lease_ttl: Duration::from_secs(r.leader_lease_ttl_secs),
            events: EventsConfig {
                enabled: r.sf_events_enabled,
                channel,
                replay,
                endpoint: endpoint.trim_end_matches('/').to_owned(),
                batch_size: r.sf_events_batch_size,
                watchdog: Duration::from_secs(r.sf_events_watchdog_secs),
                max_pending_jobs: r.sf_events_max_pending_jobs,
                backoff_initial: Duration::from_millis(r.sf_events_backoff_initial_ms),
                backoff_max: Duration::from_millis(r.sf_events_backoff_max_ms),
                fields: EventFields {
                    order_id: require("sf_field_event_order_id", r.sf_field_event_order_id)?,
                    idem_key: require("sf_field_event_idem_key", r.sf_field_event_idem_key)?,
                    correlation_id: require(
                        "sf_field_event_correlation_id",
                        r.sf_field_event_correlation_id,
                    )?,
                    requested_by: require(
                        "sf_field_event_requested_by",
                        r.sf_field_event_requested_by,
                    )?,
                },
            },
            salesforce: SalesforceConfig {
                login_url,
                client_id,
                auth,
                api_version,
                http_timeout: Duration::from_secs(r.sf_http_timeout_secs.max(1)),
                fields: OrderFieldNames {
                    activation_status: require(
                        "sf_field_activation_status",
                        r.sf_field_activation_status,
                    )?,
                    whmcs_order_id: require("sf_field_whmcs_order_id", r.sf_field_whmcs_order_id)?,
                    error_code: require("sf_field_error_code", r.sf_field_error_code)?,
                    error_message: require("sf_field_error_message", r.sf_field_error_message)?,
                    last_attempt_at: require(
                        "sf_field_last_attempt_at",
                        r.sf_field_last_attempt_at,
                    )?,
                    account_whmcs_client_id: require(
                        "sf_field_account_whmcs_client_id",
                        r.sf_field_account_whmcs_client_id,
                    )?,
                    product_whmcs_product_id: require(
                        "sf_field_product_whmcs_product_id",
                        r.sf_field_product_whmcs_product_id,
                    )?,
                    product_whmcs_billing_cycle: require(
                        "sf_field_product_whmcs_billing_cycle",
                        r.sf_field_product_whmcs_billing_cycle,
                    )?,
                },
            },
            whmcs,
            queue,
            database,
            http: HttpConfig {
                addr,
                auth: api_auth,
                lookup_cache: Duration::from_secs(r.order_lookup_cache_secs),
                cors_allowed_origins,
                rate_limit,
                trusted_proxy_hops: r.http_trusted_proxy_hops,
                sse_max_clients: r.sse_max_clients,
                sse_keepalive: Duration::from_secs(r.sse_keepalive_secs),
                header_read_timeout: Duration::from_secs(r.http_header_read_timeout_secs),
            },
            alert_webhook_url,
            alert: AlertConfig {
                window: Duration::from_secs(r.alert_window_secs),
                threshold: r.alert_failure_rate_threshold,
                min_samples: r.alert_min_samples,
                repeat_interval: Duration::from_secs(r.alert_repeat_interval_secs),
                check_interval: Duration::from_secs(r.alert_check_interval_secs),
                webhook_timeout: Duration::from_secs(r.alert_webhook_timeout_secs),
            },
            log_format,
            shutdown_grace: Duration::from_secs(r.shutdown_grace_secs),
            admin_token: admin_token_setting(r.admin_token)?,
        })
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
