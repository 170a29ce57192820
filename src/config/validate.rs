//! Validation: turns [`Raw`] settings into a [`Config`], checking every value and every
//! cross-field rule, and failing with one [`ConfigError`] that names the setting.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;

use super::raw::Raw;
use super::*;

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

pub(super) fn replay_setting(v: &str) -> Result<ReplayStart, ConfigError> {
    match v.trim().to_ascii_uppercase().as_str() {
        "LATEST" => Ok(ReplayStart::Latest),
        "ALL" | "EARLIEST" => Ok(ReplayStart::Earliest),
        other => Err(err(
            "sf_events_replay",
            format!("must be LATEST or ALL, got {other:?}"),
        )),
    }
}

pub(super) fn channel_setting(v: &str) -> Result<String, ConfigError> {
    let channel = require("sf_provision_event_channel", v.to_owned())?;
    if !channel.starts_with("/event/") && !channel.starts_with("/data/") {
        return Err(err(
            "sf_provision_event_channel",
            format!("must be a topic such as /event/Name__e, got {channel:?}"),
        ));
    }
    Ok(channel)
}

pub(super) fn queue_settings(r: &Raw) -> Result<QueueConfig, ConfigError> {
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

pub(super) fn database_settings(r: &Raw) -> Result<DatabaseConfig, ConfigError> {
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
fn breaker_settings(r: &Raw) -> Result<crate::deps::BreakerSettings, ConfigError> {
    for (name, v) in [
        (
            "breaker_failure_threshold",
            u64::from(r.breaker_failure_threshold),
        ),
        ("breaker_probe_interval_secs", r.breaker_probe_interval_secs),
        ("breaker_alert_after_secs", r.breaker_alert_after_secs),
        (
            "whmcs_auth_probe_interval_secs",
            r.whmcs_auth_probe_interval_secs,
        ),
    ] {
        if v == 0 {
            return Err(err(name, "must be at least 1"));
        }
    }
    if r.breaker_probe_max_interval_secs < r.breaker_probe_interval_secs {
        return Err(err(
            "breaker_probe_max_interval_secs",
            "must be at least breaker_probe_interval_secs",
        ));
    }
    Ok(crate::deps::BreakerSettings {
        failure_threshold: r.breaker_failure_threshold,
        probe_interval: Duration::from_secs(r.breaker_probe_interval_secs),
        probe_max: Duration::from_secs(r.breaker_probe_max_interval_secs),
        alert_after: Duration::from_secs(r.breaker_alert_after_secs),
        auth_probe_interval: Duration::from_secs(r.whmcs_auth_probe_interval_secs),
    })
}

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
    pub(super) fn validate(r: Raw) -> Result<Self, ConfigError> {
        let breaker = breaker_settings(&r)?;
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
            breaker,
        })
    }
}
