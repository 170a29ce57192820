//! The raw, flat settings exactly as `config/default.toml` names them, and how they are read:
//! defaults → optional file → environment (figment). Nothing here judges a value; that is
//! [`super::validate`]'s job, so each problem is reported once, naming its setting. Enumerated
//! settings are strings here; their values are the serde names of the enums they become
//! (in this file for those that select other settings, in [`super`] for the rest).

use std::{collections::BTreeMap, path::Path};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, DEFAULT_TOML, err};

/// The raw, flat settings as they appear in `default.toml`.
#[derive(Debug, Deserialize)]
pub(super) struct Raw {
    pub(super) sf_events_enabled: bool,
    pub(super) sf_provision_event_channel: String,
    pub(super) sf_events_replay: String,
    pub(super) sf_pubsub_endpoint: String,
    pub(super) sf_events_batch_size: i32,
    pub(super) sf_events_watchdog_secs: u64,
    pub(super) sf_events_max_pending_jobs: u64,
    pub(super) sf_events_backoff_initial_ms: u64,
    pub(super) sf_events_backoff_max_ms: u64,
    pub(super) sf_login_url: String,
    pub(super) sf_auth_flow: String,
    pub(super) sf_client_id: String,
    pub(super) sf_username: String,
    pub(super) sf_private_key_path: String,
    pub(super) sf_private_key: SecretString,
    pub(super) sf_client_secret: SecretString,
    pub(super) sf_api_version: String,
    pub(super) sf_http_timeout_secs: u64,
    pub(super) sf_field_event_order_id: String,
    pub(super) sf_field_event_idem_key: String,
    pub(super) sf_field_event_correlation_id: String,
    pub(super) sf_field_event_requested_by: String,
    pub(super) sf_field_activation_status: String,
    pub(super) sf_field_whmcs_order_id: String,
    pub(super) sf_field_error_code: String,
    pub(super) sf_field_error_message: String,
    pub(super) sf_field_last_attempt_at: String,
    pub(super) sf_field_account_whmcs_client_id: String,
    pub(super) sf_field_product_whmcs_product_id: String,
    pub(super) sf_field_product_whmcs_billing_cycle: String,
    pub(super) whmcs_api_url: String,
    pub(super) whmcs_api_identifier: String,
    pub(super) whmcs_api_secret: SecretString,
    pub(super) whmcs_api_access_key: SecretString,
    pub(super) whmcs_payment_method: String,
    pub(super) whmcs_timeout_secs: u64,
    pub(super) whmcs_execution_allowance_secs: u64,
    pub(super) whmcs_quantity_mode: String,
    pub(super) redis_tls_ca_file: String,
    pub(super) redis_tls_cert_file: String,
    pub(super) redis_tls_key_file: String,
    pub(super) https_proxy: SecretString,
    pub(super) http_proxy: SecretString,
    pub(super) no_proxy: String,
    pub(super) redis_url: String,
    pub(super) queue_name: String,
    pub(super) worker_concurrency: usize,
    pub(super) job_max_attempts: u32,
    pub(super) job_backoff_initial_ms: u64,
    pub(super) job_backoff_max_ms: u64,
    pub(super) whmcs_max_in_flight: usize,
    pub(super) whmcs_min_in_flight: usize,
    pub(super) sf_max_in_flight: usize,
    pub(super) sf_min_in_flight: usize,
    pub(super) breaker_failure_threshold: u32,
    pub(super) breaker_probe_interval_secs: u64,
    pub(super) breaker_probe_max_interval_secs: u64,
    pub(super) breaker_alert_after_secs: u64,
    pub(super) whmcs_auth_probe_interval_secs: u64,
    pub(super) database_url: String,
    pub(super) database_auto_migrate: bool,
    pub(super) database_max_connections: u32,
    pub(super) http_addr: String,
    pub(super) internal_http_addr: String,
    pub(super) portal_jwt_secret: SecretString,
    pub(super) portal_jwt_account_claim: String,
    pub(super) portal_jwt_issuer: String,
    pub(super) portal_jwt_audience: String,
    pub(super) api_auth: String,
    pub(super) customer_error_messages: String,
    pub(super) customer_error_message_default: String,
    pub(super) order_lookup_cache_secs: u64,
    pub(super) order_lookup_error_cache_secs: u64,
    pub(super) sf_lookup_rate_per_sec: u32,
    pub(super) sf_lookup_max_concurrent: usize,
    pub(super) sf_lookup_per_account_per_min: u32,
    pub(super) sf_lookup_stop_at_usage_percent: u64,
    pub(super) cors_allowed_origins: String,
    pub(super) api_rate_limit_per_sec: f64,
    pub(super) api_rate_limit_burst: u32,
    pub(super) api_account_rate_limit_per_sec: f64,
    pub(super) api_account_rate_limit_burst: u32,
    pub(super) http_trusted_proxies: String,
    pub(super) http_trusted_proxy_hops: usize,
    pub(super) sse_max_clients: usize,
    pub(super) sse_max_per_account: usize,
    pub(super) sse_keepalive_secs: u64,
    pub(super) http_header_read_timeout_secs: u64,
    pub(super) http_max_connections: usize,
    pub(super) http_idle_timeout_secs: u64,
    pub(super) alert_webhook_url: String,
    pub(super) alert_window_secs: u64,
    pub(super) alert_failure_rate_threshold: f64,
    pub(super) alert_min_samples: i64,
    pub(super) alert_repeat_interval_secs: u64,
    pub(super) alert_check_interval_secs: u64,
    pub(super) alert_webhook_timeout_secs: u64,
    pub(super) log_format: String,
    pub(super) shutdown_grace_secs: u64,
    pub(super) reconciler_interval_secs: u64,
    pub(super) reconciler_stuck_after_secs: u64,
    pub(super) reconciler_batch_limit: u32,
    pub(super) leader_lease_ttl_secs: u64,
    pub(super) redis_wait_replica_ms: u64,
    pub(super) test_clock_offset_secs: i64,
    pub(super) audit_retention_days: u32,
    pub(super) admin_token: SecretString,
}

/// `sf_auth_flow`'s values (the flow's credentials are other settings).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum AuthFlowName {
    Jwt,
    ClientCredentials,
}

/// `api_auth`'s values (the JWT's settings are other settings).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ApiAuthName {
    Jwt,
    Disabled,
}

/// Defaults → optional file → environment, deserialised but not yet validated.
pub(super) fn load_raw(
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
    // A variable set under its upper-case name wins over other spellings (`HTTPS_PROXY` over
    // `https_proxy`), whatever the order of the environment.
    let mut overrides: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (k, v) in env {
        let key = k.to_ascii_lowercase();
        if !known.contains_key(&key) {
            continue;
        }
        let upper = k == key.to_ascii_uppercase();
        match overrides.get(&key) {
            Some((_, true)) if !upper => {}
            _ => {
                overrides.insert(key, (v, upper));
            }
        }
    }
    let overrides: BTreeMap<String, String> =
        overrides.into_iter().map(|(k, (v, _))| (k, v)).collect();
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
