//! Validation: turns [`Raw`] settings into a [`Config`], checking every value and every
//! cross-field rule. Each problem is one [`ConfigError`] naming its setting; validation goes on
//! past a problem so that every one is reported at once (`provisioner check`).
//!
//! Enumerated settings are read through their types' serde names ([`enum_setting`]); the raw
//! value stays a string so that a bad one is one error naming the setting, not a failed load.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use serde::de::{DeserializeOwned, IntoDeserializer, value::StrDeserializer};

use super::raw::{ApiAuthName, AuthFlowName, Raw};
use super::*;

/// Reads the value of an enumerated setting (already trimmed, or case-folded where the setting
/// ignores case) as `T` through its serde names; anything else is one error naming the
/// setting: "must be {expected}, got {value:?}".
fn enum_setting<T: DeserializeOwned>(
    setting: &str,
    value: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    let de: StrDeserializer<'_, serde::de::value::Error> = value.into_deserializer();
    T::deserialize(de).map_err(|_| err(setting, format!("must be {expected}, got {value:?}")))
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

/// An endpoint the daemon sends credentials or business data to: `https://`, or `http://` only
/// to a loopback host (the simulator).
fn endpoint_url(name: &str, v: &str) -> Result<(), ConfigError> {
    http_url(name, v)?;
    match url::Url::parse(v) {
        Ok(u) if crate::net::is_secure_or_loopback(&u) => Ok(()),
        _ => Err(err(
            name,
            format!(
                "must be an https:// URL (http:// is allowed only for loopback hosts), got {v:?}"
            ),
        )),
    }
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

/// A token bucket from its two settings: a rate of 0 turns it off.
fn token_bucket(
    (rate_name, per_sec): (&str, f64),
    (burst_name, burst): (&str, u32),
) -> Result<Option<RateLimit>, ConfigError> {
    if !per_sec.is_finite() || per_sec < 0.0 {
        return Err(err(rate_name, "must be 0 (off) or positive"));
    }
    if per_sec == 0.0 {
        return Ok(None);
    }
    if burst == 0 {
        return Err(err(burst_name, "must be at least 1"));
    }
    Ok(Some(RateLimit { per_sec, burst }))
}

/// `HTTP_TRUSTED_PROXIES`: comma-separated IP addresses or CIDR blocks.
fn trusted_proxies(v: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    v.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.parse::<ipnet::IpNet>()
                .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    err(
                        "http_trusted_proxies",
                        format!("{e:?} is not an IP address or CIDR block like 10.0.0.0/8"),
                    )
                })
        })
        .collect()
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
    enum_setting(
        "sf_events_replay",
        &v.trim().to_ascii_uppercase(),
        "LATEST or ALL",
    )
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
    let tls = redis_tls(r, redis_url.starts_with("rediss://"))?;
    if r.redis_wait_replica_ms > 60_000 {
        return Err(err("redis_wait_replica_ms", "must be at most 60000"));
    }
    Ok(QueueConfig {
        redis_url,
        tls,
        name: queue_name,
        concurrency: r.worker_concurrency,
        max_attempts: r.job_max_attempts,
        backoff_initial: Duration::from_millis(r.job_backoff_initial_ms.max(1)),
        backoff_max: Duration::from_millis(
            r.job_backoff_max_ms.max(r.job_backoff_initial_ms.max(1)),
        ),
        wait_replica: (r.redis_wait_replica_ms > 0)
            .then(|| Duration::from_millis(r.redis_wait_replica_ms)),
    })
}

/// Reads a PEM file named by `setting`; `marker` must occur in it (e.g. `CERTIFICATE-----`).
fn pem_file(setting: &str, path: &str, marker: &str, what: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes =
        std::fs::read(path).map_err(|e| err(setting, format!("cannot read {path}: {e}")))?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(err(setting, format!("{path} is not a PEM {what}")));
    }
    Ok(bytes)
}

fn redis_tls(r: &Raw, tls_url: bool) -> Result<RedisTls, ConfigError> {
    let ca = non_empty(r.redis_tls_ca_file.clone());
    let cert = non_empty(r.redis_tls_cert_file.clone());
    let key = non_empty(r.redis_tls_key_file.clone());
    if !tls_url {
        for (name, v) in [
            ("redis_tls_ca_file", &ca),
            ("redis_tls_cert_file", &cert),
            ("redis_tls_key_file", &key),
        ] {
            if v.is_some() {
                return Err(err(name, "is set but REDIS_URL is not rediss:// (TLS)"));
            }
        }
        return Ok(RedisTls::default());
    }
    let ca_pem = ca
        .map(|p| pem_file("redis_tls_ca_file", &p, "CERTIFICATE-----", "certificate"))
        .transpose()?;
    let client = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "redis_tls_key_file",
                "is required with REDIS_TLS_CERT_FILE",
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "redis_tls_cert_file",
                "is required with REDIS_TLS_KEY_FILE",
            ));
        }
        (Some(c), Some(k)) => {
            let cert = pem_file("redis_tls_cert_file", &c, "CERTIFICATE-----", "certificate")?;
            let key = pem_file("redis_tls_key_file", &k, "PRIVATE KEY-----", "private key")?;
            let key = String::from_utf8(key).map_err(|_| {
                err(
                    "redis_tls_key_file",
                    format!("{k} is not a PEM private key"),
                )
            })?;
            Some((cert, SecretString::from(key)))
        }
    };
    Ok(RedisTls { ca_pem, client })
}

/// `sslmode` and `sslrootcert` of a PostgreSQL URL, checked here so a typo stops the start with
/// a line naming DATABASE_URL (the URL itself, which may hold a password, is never echoed).
fn postgres_tls_params(database_url: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(database_url)
        .map_err(|e| err("database_url", format!("is not a valid URL: {e}")))?;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                const MODES: [&str; 6] = [
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ];
                if !MODES.contains(&v.as_ref()) {
                    return Err(err(
                        "database_url",
                        format!("sslmode must be one of {}, got {v:?}", MODES.join(", ")),
                    ));
                }
            }
            "sslrootcert" => {
                pem_file(
                    "database_url",
                    &v,
                    "CERTIFICATE-----",
                    "certificate (sslrootcert)",
                )?;
            }
            _ => {}
        }
    }
    Ok(())
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
    if !database_url.starts_with("sqlite:") {
        postgres_tls_params(&database_url)?;
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

fn quantity_mode_setting(v: &str) -> Result<QuantityMode, ConfigError> {
    enum_setting("whmcs_quantity_mode", v.trim(), "expand or reject")
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

/// The adaptive in-flight limits: floors of at least 1, each floor at most its ceiling.
fn limit_settings(r: &Raw) -> Result<DependencyLimits, ConfigError> {
    use crate::deps::limiter::LimitSettings;
    let pair = |min: (&str, usize), max: (&str, usize)| {
        if min.1 == 0 {
            return Err(err(min.0, "must be at least 1"));
        }
        if max.1 < min.1 {
            return Err(err(
                max.0,
                format!(
                    "must be at least {} ({})",
                    min.0.to_ascii_uppercase(),
                    min.1
                ),
            ));
        }
        Ok(LimitSettings {
            floor: min.1,
            ceiling: max.1,
        })
    };
    Ok(DependencyLimits {
        whmcs: pair(
            ("whmcs_min_in_flight", r.whmcs_min_in_flight),
            ("whmcs_max_in_flight", r.whmcs_max_in_flight),
        )?,
        salesforce: pair(
            ("sf_min_in_flight", r.sf_min_in_flight),
            ("sf_max_in_flight", r.sf_max_in_flight),
        )?,
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

/// Every problem found while validating, in the order of the settings.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value, or `None` with the error recorded.
    fn ok<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// The value, or a placeholder with the error recorded (never returned: any recorded
    /// problem makes validation fail).
    fn val<T: Default>(&mut self, r: Result<T, ConfigError>) -> T {
        self.ok(r).unwrap_or_default()
    }

    fn fail(&mut self, e: ConfigError) {
        self.0.push(e);
    }
}

fn salesforce_auth(
    flow: &str,
    username: String,
    private_key: SecretString,
    private_key_path: String,
    client_secret: SecretString,
) -> Result<SalesforceAuth, ConfigError> {
    let flow: AuthFlowName =
        enum_setting("sf_auth_flow", flow.trim(), "jwt or client_credentials")?;
    match flow {
        AuthFlowName::Jwt => {
            let username = require("sf_username", username)?;
            let inline = secret_non_empty(private_key);
            let path = non_empty(private_key_path);
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
            Ok(SalesforceAuth::Jwt {
                username,
                private_key_pem: pem,
            })
        }
        AuthFlowName::ClientCredentials => Ok(SalesforceAuth::ClientCredentials {
            client_secret: secret_non_empty(client_secret).ok_or_else(|| {
                err(
                    "sf_client_secret",
                    "is required for SF_AUTH_FLOW=client_credentials",
                )
            })?,
        }),
    }
}

/// `CUSTOMER_ERROR_MESSAGES` (`CODE=text;CODE=text`) and the default text.
fn customer_errors_setting(table: &str, default: &str) -> Result<CustomerErrors, ConfigError> {
    const MAX: usize = 255;
    let mut by_code = std::collections::BTreeMap::new();
    for entry in table.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((code, text)) = entry.split_once('=') else {
            return Err(err(
                "customer_error_messages",
                format!("entries are CODE=text, got {entry:?}"),
            ));
        };
        let (code, text) = (code.trim(), text.trim());
        if code.is_empty()
            || !code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(err(
                "customer_error_messages",
                format!("{code:?} is not an error code like WHMCS_ERROR"),
            ));
        }
        if text.is_empty() || text.chars().count() > MAX {
            return Err(err(
                "customer_error_messages",
                format!("the text of {code} must be 1 to {MAX} characters"),
            ));
        }
        by_code.insert(code.to_owned(), text.to_owned());
    }
    let default = default.trim();
    if default.is_empty() || default.chars().count() > MAX {
        return Err(err(
            "customer_error_message_default",
            format!("must be 1 to {MAX} characters"),
        ));
    }
    Ok(CustomerErrors {
        by_code,
        default: default.to_owned(),
    })
}

/// Secrets people leave in place from examples; compared without case.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "change-me-to-a-long-random-secret",
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "portal",
    "portal-secret",
    "jwt-secret",
    "your-secret",
    "your-256-bit-secret",
];

/// The portal's HS256 secret: anyone who knows it can mint tokens for any Account, so it must
/// be long (at least 32 bytes, the HS256 key size) and not a value copied from an example.
fn portal_secret_setting(v: SecretString) -> Result<SecretString, ConfigError> {
    use secrecy::ExposeSecret;
    let secret = secret_non_empty(v)
        .ok_or_else(|| err("portal_jwt_secret", "is required unless API_AUTH=disabled"))?;
    let s = secret.expose_secret();
    let lower = s.trim().to_ascii_lowercase();
    let placeholder = PLACEHOLDER_SECRETS.contains(&lower.as_str())
        || ["change-me", "changeme", "replace-with", "replace-me"]
            .iter()
            .any(|p| lower.contains(p));
    if placeholder {
        return Err(err(
            "portal_jwt_secret",
            "is a placeholder; set a random secret, e.g. `openssl rand -base64 48`",
        ));
    }
    if s.len() < 32 {
        return Err(err(
            "portal_jwt_secret",
            format!(
                "must be at least 32 bytes, got {}; e.g. `openssl rand -base64 48`",
                s.len()
            ),
        ));
    }
    Ok(secret)
}

fn api_auth_setting(
    r_api_auth: &str,
    secret: SecretString,
    claim: String,
    issuer: String,
    audience: String,
) -> Result<ApiAuth, ConfigError> {
    match enum_setting("api_auth", r_api_auth.trim(), "jwt or disabled")? {
        ApiAuthName::Jwt => Ok(ApiAuth::Jwt {
            secret: portal_secret_setting(secret)?,
            account_claim: require("portal_jwt_account_claim", claim)?,
            issuer: non_empty(issuer),
            audience: non_empty(audience),
        }),
        ApiAuthName::Disabled => Ok(ApiAuth::Disabled),
    }
}

pub(super) fn log_format_setting(v: &str) -> Result<LogFormat, ConfigError> {
    enum_setting("log_format", v.trim(), "json or pretty")
}

/// The Salesforce OAuth and REST settings (login URL, client, credentials, API version, field
/// names), every problem recorded in `p`; `None` if any of them is wrong.
fn salesforce_settings(r: &Raw, p: &mut Problems) -> Option<SalesforceConfig> {
    let before = p.0.len();
    let login_url = p.val(
        require("sf_login_url", r.sf_login_url.clone()).and_then(|u| {
            let u = u.trim_end_matches('/').to_owned();
            endpoint_url("sf_login_url", &u).map(|()| u)
        }),
    );
    let client_id = p.val(require("sf_client_id", r.sf_client_id.clone()));
    let auth = p.ok(salesforce_auth(
        &r.sf_auth_flow,
        r.sf_username.clone(),
        r.sf_private_key.clone(),
        r.sf_private_key_path.clone(),
        r.sf_client_secret.clone(),
    ));
    let api_version = p.val(
        require("sf_api_version", r.sf_api_version.clone()).and_then(|v| {
            let v = v.trim_start_matches('v').to_owned();
            if v.parse::<f32>().is_err() {
                return Err(err(
                    "sf_api_version",
                    format!("must look like 65.0, got {v:?}"),
                ));
            }
            Ok(v)
        }),
    );

    let order_fields = OrderFieldNames {
        activation_status: p.val(require(
            "sf_field_activation_status",
            r.sf_field_activation_status.clone(),
        )),
        whmcs_order_id: p.val(require(
            "sf_field_whmcs_order_id",
            r.sf_field_whmcs_order_id.clone(),
        )),
        error_code: p.val(require(
            "sf_field_error_code",
            r.sf_field_error_code.clone(),
        )),
        error_message: p.val(require(
            "sf_field_error_message",
            r.sf_field_error_message.clone(),
        )),
        last_attempt_at: p.val(require(
            "sf_field_last_attempt_at",
            r.sf_field_last_attempt_at.clone(),
        )),
        account_whmcs_client_id: p.val(require(
            "sf_field_account_whmcs_client_id",
            r.sf_field_account_whmcs_client_id.clone(),
        )),
        product_whmcs_product_id: p.val(require(
            "sf_field_product_whmcs_product_id",
            r.sf_field_product_whmcs_product_id.clone(),
        )),
        product_whmcs_billing_cycle: p.val(require(
            "sf_field_product_whmcs_billing_cycle",
            r.sf_field_product_whmcs_billing_cycle.clone(),
        )),
    };
    let auth = auth?;
    if p.0.len() > before {
        return None;
    }
    Some(SalesforceConfig {
        login_url,
        client_id,
        auth,
        api_version,
        http_timeout: Duration::from_secs(r.sf_http_timeout_secs.max(1)),
        fields: order_fields,
    })
}

/// The outbound proxies (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).
pub(super) fn proxy_settings(r: &Raw) -> Result<ProxyConfig, ConfigError> {
    use secrecy::ExposeSecret;
    ProxyConfig::parse(
        r.https_proxy.expose_secret(),
        r.http_proxy.expose_secret(),
        &r.no_proxy,
    )
    .map_err(|(setting, message)| err(setting, message))
}

/// [`salesforce_settings`] failing with the first problem (for commands that need only these).
pub(super) fn salesforce_only(r: &Raw) -> Result<SalesforceConfig, ConfigError> {
    let mut p = Problems::default();
    match salesforce_settings(r, &mut p) {
        Some(c) => Ok(c),
        None => Err(p
            .0
            .into_iter()
            .next()
            .unwrap_or_else(|| err("sf_client_id", "is invalid"))),
    }
}

impl Config {
    /// Validates everything, failing with every problem found (in the order of the settings).
    pub(super) fn validate_all(r: Raw) -> Result<Self, Vec<ConfigError>> {
        let mut p = Problems::default();
        let breaker = p.ok(breaker_settings(&r));
        let limits = p.ok(limit_settings(&r));
        let queue = p.ok(queue_settings(&r));
        let database = p.ok(database_settings(&r));
        let replay = p.ok(replay_setting(&r.sf_events_replay));
        let endpoint = p.val(
            require("sf_pubsub_endpoint", r.sf_pubsub_endpoint.clone())
                .and_then(|e| endpoint_url("sf_pubsub_endpoint", &e).map(|()| e)),
        );
        if !(1..=100).contains(&r.sf_events_batch_size) {
            p.fail(err("sf_events_batch_size", "must be between 1 and 100"));
        }
        if r.sf_events_watchdog_secs == 0 {
            p.fail(err("sf_events_watchdog_secs", "must be at least 1"));
        }
        if r.sf_events_max_pending_jobs == 0 {
            p.fail(err("sf_events_max_pending_jobs", "must be at least 1"));
        }
        if r.sf_events_backoff_initial_ms == 0
            || r.sf_events_backoff_max_ms < r.sf_events_backoff_initial_ms
        {
            p.fail(err(
                "sf_events_backoff_max_ms",
                "must be at least sf_events_backoff_initial_ms (> 0)",
            ));
        }
        let channel = p.val(channel_setting(&r.sf_provision_event_channel));
        let salesforce = salesforce_settings(&r, &mut p);
        let proxy = p.ok(proxy_settings(&r));

        let whmcs_url = p.val(
            require("whmcs_api_url", r.whmcs_api_url)
                .and_then(|u| endpoint_url("whmcs_api_url", &u).map(|()| u)),
        );
        let whmcs_identifier = p.val(require("whmcs_api_identifier", r.whmcs_api_identifier));
        let whmcs_secret = p.ok(secret_non_empty(r.whmcs_api_secret)
            .ok_or_else(|| err("whmcs_api_secret", "is required")));
        let whmcs_payment_method = p.val(require("whmcs_payment_method", r.whmcs_payment_method));
        let whmcs_quantity_mode = p.val(quantity_mode_setting(&r.whmcs_quantity_mode));

        let addr: Option<SocketAddr> = p.ok(r.http_addr.trim().parse().map_err(|_| {
            err(
                "http_addr",
                format!("must be host:port, got {:?}", r.http_addr),
            )
        }));
        let internal_addr: Option<Option<SocketAddr>> = p.ok(match r.internal_http_addr.trim() {
            "" => Ok(None),
            v => match v.parse::<SocketAddr>() {
                Err(_) => Err(err(
                    "internal_http_addr",
                    format!("must be host:port or empty, got {v:?}"),
                )),
                Ok(a) if Some(a) == addr => Err(err(
                    "internal_http_addr",
                    "must differ from HTTP_ADDR (or be empty)",
                )),
                Ok(a) => Ok(Some(a)),
            },
        });
        let customer_errors = p.ok(customer_errors_setting(
            &r.customer_error_messages,
            &r.customer_error_message_default,
        ));
        let api_auth = p.ok(api_auth_setting(
            &r.api_auth,
            r.portal_jwt_secret,
            r.portal_jwt_account_claim,
            r.portal_jwt_issuer,
            r.portal_jwt_audience,
        ));
        let alert_webhook_url = non_empty(r.alert_webhook_url);
        if let Some(u) = &alert_webhook_url {
            // Not echoed: a webhook URL is itself a credential.
            p.ok(http_url("alert_webhook_url", u)
                .map_err(|_| err("alert_webhook_url", "must be an http:// or https:// URL")));
        }
        let cors_allowed_origins = p.val(cors_origins(&r.cors_allowed_origins));
        let rate_limit = p
            .ok(token_bucket(
                ("api_rate_limit_per_sec", r.api_rate_limit_per_sec),
                ("api_rate_limit_burst", r.api_rate_limit_burst),
            ))
            .flatten();
        let account_rate_limit = p
            .ok(token_bucket(
                (
                    "api_account_rate_limit_per_sec",
                    r.api_account_rate_limit_per_sec,
                ),
                (
                    "api_account_rate_limit_burst",
                    r.api_account_rate_limit_burst,
                ),
            ))
            .flatten();
        if r.http_trusted_proxy_hops != 0 {
            p.fail(err(
                "http_trusted_proxy_hops",
                "is replaced by http_trusted_proxies (the proxies' addresses or CIDR blocks); set it to 0",
            ));
        }
        let trusted_proxies = p.val(trusted_proxies(&r.http_trusted_proxies));
        if !(1..=100).contains(&r.sf_lookup_stop_at_usage_percent) {
            p.fail(err(
                "sf_lookup_stop_at_usage_percent",
                "must be a percentage from 1 to 100",
            ));
        }
        for (name, v) in [
            (
                "sf_lookup_max_concurrent",
                r.sf_lookup_max_concurrent as u64,
            ),
            ("http_max_connections", r.http_max_connections as u64),
            ("http_idle_timeout_secs", r.http_idle_timeout_secs),
            ("sse_max_clients", r.sse_max_clients as u64),
            ("sse_max_per_account", r.sse_max_per_account as u64),
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
                p.fail(err(name, "must be at least 1"));
            }
        }
        if !(r.alert_failure_rate_threshold > 0.0 && r.alert_failure_rate_threshold < 1.0) {
            p.fail(err(
                "alert_failure_rate_threshold",
                "must be a fraction between 0 and 1, e.g. 0.1",
            ));
        }
        let log_format = p.ok(log_format_setting(&r.log_format));

        if r.leader_lease_ttl_secs < 3 {
            p.fail(err("leader_lease_ttl_secs", "must be at least 3"));
        }
        if r.test_clock_offset_secs.abs() > 86_400 {
            p.fail(err(
                "test_clock_offset_secs",
                "must be within ±86400 (test-only; leave it 0)",
            ));
        }
        if !(1..=36_500).contains(&r.audit_retention_days) {
            p.fail(err("audit_retention_days", "must be between 1 and 36500"));
        }
        if r.reconciler_interval_secs > 0 && r.reconciler_batch_limit == 0 {
            p.fail(err("reconciler_batch_limit", "must be at least 1"));
        }
        let event_fields = EventFields {
            order_id: p.val(require(
                "sf_field_event_order_id",
                r.sf_field_event_order_id,
            )),
            idem_key: p.val(require(
                "sf_field_event_idem_key",
                r.sf_field_event_idem_key,
            )),
            correlation_id: p.val(require(
                "sf_field_event_correlation_id",
                r.sf_field_event_correlation_id,
            )),
            requested_by: p.val(require(
                "sf_field_event_requested_by",
                r.sf_field_event_requested_by,
            )),
        };
        let admin_token = p.ok(admin_token_setting(r.admin_token));

        let (
            Some(queue),
            Some(database),
            Some(replay),
            Some(salesforce),
            Some(whmcs_secret),
            Some(addr),
            Some(api_auth),
            Some(log_format),
            Some(admin_token),
            Some(internal_addr),
            Some(customer_errors),
            Some(proxy),
            Some(breaker),
            Some(limits),
        ) = (
            queue,
            database,
            replay,
            salesforce,
            whmcs_secret,
            addr,
            api_auth,
            log_format,
            admin_token,
            internal_addr,
            customer_errors,
            proxy,
            breaker,
            limits,
        )
        else {
            return Err(p.0);
        };
        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            reconciler: ReconcilerConfig {
                interval: (r.reconciler_interval_secs > 0)
                    .then(|| Duration::from_secs(r.reconciler_interval_secs)),
                stuck_after: Duration::from_secs(r.reconciler_stuck_after_secs),
                batch_limit: r.reconciler_batch_limit,
            },
            leader_lease_ttl: Duration::from_secs(r.leader_lease_ttl_secs),
            test_clock_offset_secs: r.test_clock_offset_secs,
            audit_retention_days: r.audit_retention_days,
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
                fields: event_fields,
            },
            salesforce,
            whmcs: WhmcsSettings {
                api_url: whmcs_url,
                identifier: whmcs_identifier,
                secret: whmcs_secret,
                access_key: secret_non_empty(r.whmcs_api_access_key),
                payment_method: whmcs_payment_method,
                timeout: Duration::from_secs(r.whmcs_timeout_secs.max(1)),
                execution_allowance: Duration::from_secs(r.whmcs_execution_allowance_secs),
                quantity_mode: whmcs_quantity_mode,
            },
            queue,
            database,
            http: HttpConfig {
                addr,
                internal_addr,
                auth: api_auth,
                lookup_cache: Duration::from_secs(r.order_lookup_cache_secs),
                cors_allowed_origins,
                rate_limit,
                account_rate_limit,
                trusted_proxies,
                sse_max_clients: r.sse_max_clients,
                sse_max_per_account: r.sse_max_per_account,
                sse_keepalive: Duration::from_secs(r.sse_keepalive_secs),
                header_read_timeout: Duration::from_secs(r.http_header_read_timeout_secs),
                customer_errors,
                max_connections: r.http_max_connections,
                idle_timeout: Duration::from_secs(r.http_idle_timeout_secs),
                lookup_error_cache: Duration::from_secs(r.order_lookup_error_cache_secs),
                lookup_budget: LookupBudget {
                    per_sec: r.sf_lookup_rate_per_sec,
                    max_concurrent: r.sf_lookup_max_concurrent,
                    per_account_per_min: r.sf_lookup_per_account_per_min,
                    stop_at_usage_percent: r.sf_lookup_stop_at_usage_percent,
                },
            },
            proxy,
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
            admin_token,
            breaker,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerated_settings_read_their_serde_names_and_name_the_setting_otherwise() {
        assert_eq!(replay_setting(" latest ").ok(), Some(ReplayStart::Latest));
        assert_eq!(replay_setting("ALL").ok(), Some(ReplayStart::Earliest));
        assert_eq!(replay_setting("earliest").ok(), Some(ReplayStart::Earliest));
        assert_eq!(log_format_setting("json").ok(), Some(LogFormat::Json));
        assert_eq!(
            quantity_mode_setting("reject").ok(),
            Some(QuantityMode::Reject)
        );
        let e = replay_setting("sometimes")
            .err()
            .map(|e| (e.setting, e.message));
        assert_eq!(
            e,
            Some((
                "SF_EVENTS_REPLAY".to_owned(),
                "must be LATEST or ALL, got \"SOMETIMES\"".to_owned()
            ))
        );
        let e = log_format_setting("JSON")
            .err()
            .map(|e| (e.setting, e.message));
        assert_eq!(
            e,
            Some((
                "LOG_FORMAT".to_owned(),
                "must be json or pretty, got \"JSON\"".to_owned()
            ))
        );
    }
}
