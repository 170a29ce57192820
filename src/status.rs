//! The status the parts report into and the HTTP surface reads: the subscription's health, the
//! failure-rate alert, the stuck-order reconciler's last sweep and the recent queue depth.
//!
//! A leaf: these types hold plain data behind short `std::sync::Mutex` sections (never held
//! across an `.await`), so the writer (a background part) and the readers (health, metrics,
//! dashboard) never wait on each other's I/O.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Subscription states reported by `/health/sf-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubState {
    Connecting,
    Connected,
    Backoff,
    Disabled,
    Standby,
    /// An operator paused intake: not subscribed.
    Paused,
}

/// What `/health/sf-events` shows of the subscription.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthSnapshot {
    pub state: SubState,
    pub cursor: Option<Vec<u8>>,
    pub last_event_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_keepalive_at: Option<chrono::DateTime<chrono::Utc>>,
    pub events_received: u64,
    pub events_enqueued: u64,
    pub poison_events: u64,
    pub duplicates: u64,
    pub reconnects: u64,
    pub cursor_fallbacks: u64,
    pub last_error: Option<String>,
}

/// Shared, cheaply readable subscription state.
#[derive(Debug)]
pub struct SubscriptionHealth(Mutex<HealthSnapshot>);

impl SubscriptionHealth {
    pub fn new(enabled: bool) -> Self {
        Self(Mutex::new(HealthSnapshot {
            state: if enabled {
                SubState::Connecting
            } else {
                SubState::Disabled
            },
            cursor: None,
            last_event_at: None,
            last_keepalive_at: None,
            events_received: 0,
            events_enqueued: 0,
            poison_events: 0,
            duplicates: 0,
            reconnects: 0,
            cursor_fallbacks: 0,
            last_error: None,
        }))
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut HealthSnapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What `/health/sf-events` reports under `alert`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertSnapshot {
    pub firing: bool,
    /// Failed / finished attempts in the window; `None` before the first evaluation or with
    /// no finished attempt.
    pub failure_rate: Option<f64>,
    pub failed: i64,
    pub total: i64,
    /// When the current firing period started.
    pub since: Option<DateTime<Utc>>,
    pub last_notified_at: Option<DateTime<Utc>>,
    pub checked_at: Option<DateTime<Utc>>,
    /// Evaluations so far.
    pub checks: u64,
    /// Dependencies whose breaker has been open longer than `breaker_alert_after_secs`, or
    /// whose credentials were rejected (`whmcs`, `salesforce`).
    pub dependencies: Vec<String>,
}

/// The alert state shared with the HTTP server.
#[derive(Debug, Default)]
pub struct AlertStatus(Mutex<AlertSnapshot>);

impl AlertStatus {
    pub fn snapshot(&self) -> AlertSnapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut AlertSnapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What the last sweep did, for health output.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub last_run_at: Option<chrono::DateTime<chrono::Utc>>,
    pub candidates: u64,
    pub enqueued: u64,
    pub total_enqueued: u64,
    pub last_error: Option<String>,
}

/// Queue depth samples kept: six hours at the housekeeping loop's five seconds.
pub const QUEUE_DEPTH_SAMPLES: usize = 6 * 720;

/// The queue depth (ready + delayed jobs) over the last hours, as this process sampled it: a
/// ring of `(epoch milliseconds, depth)`, oldest first, for the dashboard's chart.
#[derive(Debug, Default)]
pub struct QueueDepthHistory(Mutex<std::collections::VecDeque<(i64, u64)>>);

impl QueueDepthHistory {
    /// Adds one sample taken now, dropping the oldest beyond [`QUEUE_DEPTH_SAMPLES`].
    pub fn record(&self, depth: u64) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= QUEUE_DEPTH_SAMPLES {
            ring.pop_front();
        }
        ring.push_back((crate::ledger::now_ms(), depth));
    }

    /// The samples taken at or after `since_ms`, oldest first.
    pub fn since(&self, since_ms: i64) -> Vec<(i64, u64)> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .filter(|(t, _)| *t >= since_ms)
            .copied()
            .collect()
    }
}
