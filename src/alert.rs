//! Failure-rate alerting: every `alert_check_interval_secs` the share of failed provisioning
//! attempts over the last `alert_window_secs` is computed from the ledger; above
//! `alert_failure_rate_threshold` (with at least `alert_min_samples` finished attempts) the alert
//! fires: an error log line, `alert.firing` in `/health/sf-events`, and a Slack-compatible JSON
//! POST `{"text": "…"}` to `ALERT_WEBHOOK_URL` if set.
//!
//! Invariants:
//! - A notification (log + webhook) goes out at most once per `alert_repeat_interval_secs`,
//!   however often the alert flaps; the health flag follows every evaluation.
//! - A webhook delivery that fails is retried at the next evaluations (at most
//!   [`MAX_DELIVERY_TRIES`] tries) while the alert still fires; it never counts twice.
//! - The webhook URL (often a secret, e.g. a Slack hook) is never logged: errors are logged
//!   without their URL. Every POST has a timeout.
//! - A failing ledger read is logged and skipped; it never stops the daemon.
//! - The same loop raises the dependency alert: a breaker open longer than
//!   `breaker_alert_after_secs`, or rejected credentials ([`crate::deps`]), is logged, listed under
//!   `alert.dependencies` in `/health/sf-events` and posted to the webhook, again at most once per
//!   `alert_repeat_interval_secs` per dependency.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{config::AlertConfig, ledger, net::proxy::ProxyConfig, status::AlertStatus};

/// Delivery tries per notification.
pub const MAX_DELIVERY_TRIES: u32 = 3;

/// What one evaluation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Below the threshold (or too few samples), and it was already.
    Quiet,
    /// Crossed above the threshold, or still above and the repeat interval has passed: notify.
    Notify,
    /// Above the threshold, notified recently.
    Firing,
    /// Back below the threshold.
    Resolved,
}

/// The alert's state machine, free of I/O.
#[derive(Debug)]
pub struct Evaluator {
    threshold: f64,
    min_samples: i64,
    repeat: Duration,
    firing: bool,
    last_notified: Option<Instant>,
}

impl Evaluator {
    pub fn new(cfg: &AlertConfig) -> Self {
        Self {
            threshold: cfg.threshold,
            min_samples: cfg.min_samples,
            repeat: cfg.repeat_interval,
            firing: false,
            last_notified: None,
        }
    }

    /// Feeds one window's counts.
    pub fn observe(&mut self, failed: i64, total: i64, now: Instant) -> Decision {
        let over = total >= self.min_samples
            && total > 0
            && (failed as f64 / total as f64) > self.threshold;
        if !over {
            return if std::mem::replace(&mut self.firing, false) {
                Decision::Resolved
            } else {
                Decision::Quiet
            };
        }
        self.firing = true;
        let due = self
            .last_notified
            .is_none_or(|t| now.saturating_duration_since(t) >= self.repeat);
        if due {
            self.last_notified = Some(now);
            Decision::Notify
        } else {
            Decision::Firing
        }
    }
}

fn message(cfg: &AlertConfig, instance: &str, failed: i64, total: i64) -> String {
    format!(
        "provisioner: {failed} of {total} provisioning attempts failed in the last {} ({:.1} %), \
         above the {:.1} % threshold (instance {}). See /health/sf-events and the logs.",
        human(cfg.window),
        failed as f64 * 100.0 / total.max(1) as f64,
        cfg.threshold * 100.0,
        instance,
    )
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// POSTs `{"text": text}`; the error never contains the URL.
async fn deliver(client: &reqwest::Client, url: &str, text: &str) -> Result<(), String> {
    let resp = client
        .post(url)
        .json(&json!({ "text": text }))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered HTTP {}", resp.status().as_u16()))
    }
}

/// What the alert loop reads and writes.
pub struct Alerter {
    pub cfg: AlertConfig,
    /// `ALERT_WEBHOOK_URL`, if set (a secret: never logged).
    pub webhook: Option<String>,
    pub ledger: ledger::Ledger,
    pub status: Arc<AlertStatus>,
    /// This process's name, quoted in the message.
    pub instance: String,
    /// Proxies for the webhook call.
    pub proxy: ProxyConfig,
    /// The dependency breakers watched by the dependency alert.
    pub deps: Option<crate::deps::Dependencies>,
}

/// Runs the alert loop until `shutdown`.
pub async fn run(alerter: Alerter, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Alerter {
        cfg,
        webhook,
        ledger,
        status,
        instance,
        proxy,
        deps,
    } = alerter;
    let mut dep_notified: std::collections::HashMap<&'static str, Instant> = Default::default();
    let client = crate::net::client(cfg.webhook_timeout, &proxy)?;
    let mut evaluator = Evaluator::new(&cfg);
    // A notification whose webhook delivery is still owed: (text, tries so far).
    let mut owed: Option<(String, u32)> = None;
    let mut tick = tokio::time::interval(cfg.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Write-backs Salesforce refused since this point are announced once each check. The rows'
    // `updated_at` is on the database's clock, so this point is too: now, or (the database not
    // answering yet) the first check's time.
    let mut rejected_since = ledger.clock_ms().await.ok();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let checked_at = match ledger.clock_ms().await {
            Ok(t) => t,
            Err(e) => {
                warn!(error.message = %e, "cannot read the database clock for the alert");
                continue;
            }
        };
        match ledger
            .count_in_state_since(
                ledger::state::WRITEBACK_REJECTED,
                *rejected_since.get_or_insert(checked_at),
            )
            .await
        {
            Ok(0) => rejected_since = Some(checked_at + 1),
            Ok(n) => {
                rejected_since = Some(checked_at + 1);
                let text = format!(
                    "provisioner: Salesforce refused the write-back of {n} Order(s) for good \
                     (validation rule, locked record or picklist); they stay `writeback_rejected` \
                     until an operator fixes the cause and re-triggers them (instance {instance}). \
                     See `provisioner orders list --state writeback_rejected`."
                );
                error!(alert.writeback_rejected = n, "{text}");
                if let Some(url) = &webhook {
                    if let Err(e) = deliver(&client, url, &text).await {
                        warn!(error.message = %e, "write-back alert not delivered to the webhook");
                    }
                }
            }
            Err(e) => {
                warn!(error.message = %e, "cannot read write-back rejections for the alert");
            }
        }
        if let Some(deps) = &deps {
            let now = Utc::now();
            let firing: Vec<&crate::deps::Breaker> = deps
                .all()
                .into_iter()
                .map(|b| &**b)
                .filter(|b| b.alarming(now))
                .collect();
            status.update(|a| {
                a.dependencies = firing
                    .iter()
                    .map(|b| b.dependency().as_str().to_owned())
                    .collect();
            });
            dep_notified.retain(|name, _| firing.iter().any(|b| b.dependency().as_str() == *name));
            for b in firing {
                let name = b.dependency().as_str();
                let due = dep_notified
                    .get(name)
                    .is_none_or(|t| t.elapsed() >= cfg.repeat_interval);
                if !due {
                    continue;
                }
                dep_notified.insert(name, Instant::now());
                let snap = b.snapshot();
                let text = format!(
                    "provisioner: {name} is {:?} since {} ({}); jobs that need it wait, no Order is failed (instance {instance}). See /health/sf-events.",
                    snap.state,
                    snap.since.to_rfc3339(),
                    snap.last_error.as_deref().unwrap_or("no error recorded"),
                );
                error!(dependency = name, "{text}");
                if let Some(url) = &webhook {
                    if let Err(e) = deliver(&client, url, &text).await {
                        warn!(error.message = %e, "dependency alert webhook failed; retrying at the next repeat");
                    }
                }
            }
        }
        let (failed, total) = match ledger.outcome_counts_within(cfg.window).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error.message = %e, "cannot read attempt outcomes for the failure-rate alert");
                continue;
            }
        };
        let decision = evaluator.observe(failed, total, Instant::now());
        let now = Utc::now();
        status.update(|a| {
            a.checks += 1;
            a.checked_at = Some(now);
            a.failed = failed;
            a.total = total;
            a.failure_rate = (total > 0).then(|| failed as f64 / total as f64);
            match decision {
                Decision::Notify | Decision::Firing => {
                    if !a.firing {
                        a.since = Some(now);
                    }
                    a.firing = true;
                }
                Decision::Resolved | Decision::Quiet => {
                    a.firing = false;
                    a.since = None;
                }
            }
            if decision == Decision::Notify {
                a.last_notified_at = Some(now);
            }
        });
        match decision {
            Decision::Notify => {
                let text = message(&cfg, &instance, failed, total);
                error!(
                    alert.failed = failed,
                    alert.total = total,
                    alert.threshold = cfg.threshold,
                    alert.window_secs = cfg.window.as_secs(),
                    "{text}"
                );
                owed = webhook.is_some().then_some((text, 0));
            }
            Decision::Resolved => {
                info!(
                    alert.failed = failed,
                    alert.total = total,
                    "provisioning failure rate back below the alert threshold"
                );
                owed = None;
            }
            Decision::Firing | Decision::Quiet => {}
        }
        if let (Some(url), Some((text, tries))) = (&webhook, owed.as_mut()) {
            *tries += 1;
            match deliver(&client, url, text).await {
                Ok(()) => {
                    info!("failure-rate alert posted to the webhook");
                    owed = None;
                }
                Err(e) if *tries >= MAX_DELIVERY_TRIES => {
                    error!(error.message = %e, tries = *tries, "alert webhook failed; giving up on this notification");
                    owed = None;
                }
                Err(e) => {
                    warn!(error.message = %e, tries = *tries, "alert webhook failed; retrying at the next check");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertConfig {
        AlertConfig {
            window: Duration::from_secs(900),
            threshold: 0.1,
            min_samples: 10,
            repeat_interval: Duration::from_secs(3600),
            check_interval: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn fires_above_threshold_with_enough_samples_only() {
        let mut e = Evaluator::new(&cfg());
        let t = Instant::now();
        assert_eq!(e.observe(0, 0, t), Decision::Quiet);
        assert_eq!(e.observe(5, 5, t), Decision::Quiet, "too few samples");
        assert_eq!(
            e.observe(1, 10, t),
            Decision::Quiet,
            "10 % is not above 10 %"
        );
        assert_eq!(e.observe(2, 10, t), Decision::Notify);
        assert_eq!(e.observe(3, 10, t), Decision::Firing);
        assert_eq!(e.observe(0, 10, t), Decision::Resolved);
        assert_eq!(e.observe(0, 10, t), Decision::Quiet);
    }

    #[test]
    fn notifies_at_most_once_per_repeat_interval_even_when_flapping() {
        let mut e = Evaluator::new(&cfg());
        let t0 = Instant::now();
        assert_eq!(e.observe(5, 10, t0), Decision::Notify);
        assert_eq!(
            e.observe(0, 10, t0 + Duration::from_secs(60)),
            Decision::Resolved
        );
        assert_eq!(
            e.observe(5, 10, t0 + Duration::from_secs(120)),
            Decision::Firing,
            "re-fired within the interval: flagged, not notified"
        );
        assert_eq!(
            e.observe(5, 10, t0 + Duration::from_secs(3599)),
            Decision::Firing
        );
        assert_eq!(
            e.observe(5, 10, t0 + Duration::from_secs(3600)),
            Decision::Notify
        );
    }

    #[test]
    fn status_snapshot_serialises_camel_case() {
        let s = AlertStatus::default();
        s.update(|a| {
            a.firing = true;
            a.failure_rate = Some(0.5);
        });
        let v = serde_json::to_value(s.snapshot()).expect("json");
        assert_eq!(v["firing"], true);
        assert_eq!(v["failureRate"], 0.5);
        assert!(v.get("lastNotifiedAt").is_some());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(900)), "15 min");
        assert_eq!(human(Duration::from_secs(7200)), "2 h");
        assert_eq!(human(Duration::from_secs(45)), "45 s");
    }
}
