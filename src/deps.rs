//! Dependency breakers: what this process knows about the health of WHMCS and the Salesforce
//! REST API, and the WHMCS authentication latch shared by every replica through Redis.
//!
//! Each dependency has one [`Breaker`] per process (shared through `AppState`; replicas each
//! keep their own, except for the WHMCS authentication latch, which lives in Redis). The
//! clients report every call's result into it ([`Breaker::record`]); the job gate
//! (`jobs::gate`) asks it whether a job may start ([`Breaker::admit`]).
//!
//! States: `closed` (calls flow), `open` (`breaker_failure_threshold` consecutive outage
//! failures: connection errors, timeouts, 5xx, Salesforce `REQUEST_LIMIT_EXCEEDED` /
//! `UNABLE_TO_LOCK_ROW` …), `half_open` (one probe job runs after a capped, jittered interval; its
//! success closes the breaker, its failure opens it again with a longer interval) and
//! `auth_failed` (the dependency rejected our credentials).
//!
//! Invariants:
//! - An outage or an authentication failure never fails an Order: jobs that need an unhealthy
//!   dependency are not started; they are put back in the queue with a delay.
//! - WHMCS authentication failures latch at once, in this process and in Redis
//!   (`<queue>:deps:whmcs:auth_latch`, with a fingerprint of identifier and secret): no replica
//!   sends another WHMCS call until the latch is lifted — by a start with different credentials,
//!   by `provisioner whmcs reset-auth`, or by one probe per `whmcs_auth_probe_interval_secs`
//!   (claimed in Redis, so one probe for all replicas).
//! - Until a WHMCS call of this process has been answered (credentials not yet proven), WHMCS
//!   calls are sent one at a time, each after re-reading the latch: wrong credentials cost at
//!   most one failed login per process.
//! - State is held in short `std::sync::Mutex` sections, never across an `.await`.
//! - The fingerprint is a SHA-256 of the credentials; neither they nor it are logged.
//!
//! How many calls go out at once is [`limiter`]'s (an adaptive in-flight limit per dependency).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::jobs::retry::Backoff;

pub mod limiter;

/// The dependencies a job needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    Whmcs,
    Salesforce,
}

impl Dependency {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Whmcs => "whmcs",
            Self::Salesforce => "salesforce",
        }
    }
}

/// A breaker's state (the names are part of the health contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    AuthFailed,
}

impl BreakerState {
    /// Value of the `provisioner_dependency_state` gauge: 0 closed, 1 open, 2 half-open,
    /// 3 authentication failed.
    pub const fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::AuthFailed => 3,
        }
    }
}

/// What `/health/sf-events` shows of one dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// The breaker settings (`breaker_*`, `whmcs_auth_probe_interval_secs`).
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Consecutive outage failures that open the breaker.
    pub failure_threshold: u32,
    /// First delay before a probe; doubled after each failed probe, up to `probe_max`.
    pub probe_interval: Duration,
    pub probe_max: Duration,
    /// A breaker open (or half-open) longer than this raises the alert; `auth_failed` at once.
    pub alert_after: Duration,
    /// Delay before a probe of rejected credentials.
    pub auth_probe_interval: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            probe_interval: Duration::from_secs(30),
            probe_max: Duration::from_secs(300),
            alert_after: Duration::from_secs(300),
            auth_probe_interval: Duration::from_secs(1200),
        }
    }
}

/// What a call told about its dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// The dependency answered (success, or a business/validation answer).
    Answered,
    /// The dependency could not serve the call (connection, timeout, 5xx, rate limit, lock).
    Outage(String),
    /// The dependency rejected our credentials.
    AuthFailed(String),
}

/// Whether a job may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The dependency is healthy.
    Go,
    /// The job is the half-open probe; call [`Breaker::end_probe`] when it ends.
    Probe,
    /// Not now: put the job back for about this long.
    Wait(Duration),
}

/// Why a call was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspended {
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
}

struct Inner {
    state: BreakerState,
    since: DateTime<Utc>,
    last_error: Option<String>,
    failures: u32,
    failed_probes: u32,
    next_probe: Instant,
    probe_in_flight: bool,
    /// A call of this process has been answered (credentials proven).
    verified: bool,
    latch_checked: Option<Instant>,
}

/// The breaker of one dependency in this process.
pub struct Breaker {
    dep: Dependency,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    /// Serialises calls until the credentials are proven (WHMCS).
    serial: tokio::sync::Mutex<()>,
    latch: Option<AuthLatch>,
    gauge: Gauge,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("dependency", &self.dep)
            .field("state", &self.snapshot().state)
            .finish_non_exhaustive()
    }
}

/// How often a process re-reads the Redis latch while admitting jobs.
const LATCH_REFRESH: Duration = Duration::from_secs(1);

impl Breaker {
    pub fn new(
        dep: Dependency,
        settings: BreakerSettings,
        latch: Option<AuthLatch>,
        gauge: Gauge,
    ) -> Self {
        gauge.set(BreakerState::Closed.gauge());
        Self {
            dep,
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                since: Utc::now(),
                last_error: None,
                failures: 0,
                failed_probes: 0,
                next_probe: Instant::now(),
                probe_in_flight: false,
                verified: false,
                latch_checked: None,
            }),
            serial: tokio::sync::Mutex::new(()),
            latch,
            gauge,
        }
    }

    pub fn dependency(&self) -> Dependency {
        self.dep
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the breaker is open (not half-open): calls are not to be sent.
    pub fn is_open(&self) -> bool {
        self.lock().state == BreakerState::Open
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let i = self.lock();
        BreakerSnapshot {
            state: i.state,
            since: i.since,
            last_error: i.last_error.clone(),
        }
    }

    /// Whether the alert should fire for this dependency at `now`.
    pub fn alarming(&self, now: DateTime<Utc>) -> bool {
        let s = self.snapshot();
        let after = chrono::Duration::from_std(self.settings.alert_after).unwrap_or_default();
        match s.state {
            BreakerState::Closed => false,
            BreakerState::AuthFailed => true,
            BreakerState::Open | BreakerState::HalfOpen => now - s.since >= after,
        }
    }

    fn set_state(&self, i: &mut Inner, state: BreakerState) {
        if i.state != state {
            let from = i.state;
            i.state = state;
            if !(from == BreakerState::Open && state == BreakerState::HalfOpen
                || from == BreakerState::HalfOpen && state == BreakerState::Open)
            {
                i.since = Utc::now();
            }
            self.gauge.set(state.gauge());
            match state {
                BreakerState::Closed => {
                    info!(dependency = self.dep.as_str(), "dependency breaker closed")
                }
                BreakerState::Open if from == BreakerState::HalfOpen => {}
                BreakerState::Open => warn!(
                    dependency = self.dep.as_str(),
                    error.message = i.last_error.as_deref().unwrap_or(""),
                    "dependency breaker opened: jobs that need it wait"
                ),
                BreakerState::HalfOpen => info!(
                    dependency = self.dep.as_str(),
                    "dependency breaker half-open: one probe job runs"
                ),
                BreakerState::AuthFailed => error!(
                    dependency = self.dep.as_str(),
                    error.message = i.last_error.as_deref().unwrap_or(""),
                    "dependency rejected our credentials: no further call until fixed"
                ),
            }
        }
    }

    fn probe_delay(&self, failed_probes: u32) -> Duration {
        Backoff::new(self.settings.probe_interval, self.settings.probe_max).delay(failed_probes)
    }

    /// Reads this process's credentials' latch from Redis (at most once per second unless
    /// `force`) and follows it: latched elsewhere → `auth_failed` here; lifted → closed.
    async fn follow_latch(&self, force: bool) {
        let Some(latch) = &self.latch else { return };
        {
            let i = self.lock();
            if !force && i.latch_checked.is_some_and(|t| t.elapsed() < LATCH_REFRESH) {
                return;
            }
        }
        let read = latch.read().await;
        let mut i = self.lock();
        i.latch_checked = Some(Instant::now());
        match read {
            Ok(Some(rec)) if rec.fingerprint == latch.fingerprint => {
                if i.state != BreakerState::AuthFailed {
                    i.last_error = Some(rec.error);
                    i.probe_in_flight = false;
                    let since_ms = Utc::now().timestamp_millis() - rec.since_ms;
                    let elapsed = Duration::from_millis(since_ms.max(0) as u64);
                    i.next_probe =
                        Instant::now() + self.settings.auth_probe_interval.saturating_sub(elapsed);
                    self.set_state(&mut i, BreakerState::AuthFailed);
                    if let Some(t) = DateTime::from_timestamp_millis(rec.since_ms) {
                        i.since = t;
                    }
                }
            }
            Ok(_) => {
                if i.state == BreakerState::AuthFailed && !i.probe_in_flight {
                    info!(
                        dependency = self.dep.as_str(),
                        "authentication latch lifted"
                    );
                    i.failures = 0;
                    i.verified = false;
                    self.set_state(&mut i, BreakerState::Closed);
                }
            }
            Err(e) => {
                warn!(dependency = self.dep.as_str(), error.message = %e, "cannot read the authentication latch");
            }
        }
    }

    /// At start-up: a latch set under other credentials is lifted (the operator changed them);
    /// one set under these credentials is followed.
    pub async fn init(&self) {
        let Some(latch) = &self.latch else { return };
        match latch.read().await {
            Ok(Some(rec)) if rec.fingerprint != latch.fingerprint => match latch.clear().await {
                Ok(_) => info!(
                    dependency = self.dep.as_str(),
                    "credentials changed since the authentication latch was set; latch lifted"
                ),
                Err(e) => {
                    warn!(dependency = self.dep.as_str(), error.message = %e, "cannot lift the authentication latch")
                }
            },
            Ok(_) => {}
            Err(e) => {
                warn!(dependency = self.dep.as_str(), error.message = %e, "cannot read the authentication latch")
            }
        }
        self.follow_latch(true).await;
    }

    /// Whether a job that needs this dependency may start now.
    pub async fn admit(&self) -> Admission {
        self.follow_latch(false).await;
        let (state, due, in_flight) = {
            let i = self.lock();
            (i.state, Instant::now() >= i.next_probe, i.probe_in_flight)
        };
        match state {
            BreakerState::Closed => return Admission::Go,
            BreakerState::AuthFailed if due && !in_flight => {
                // One probe for all replicas per interval.
                if let Some(latch) = &self.latch {
                    match latch.claim_probe(self.settings.auth_probe_interval).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let mut i = self.lock();
                            i.next_probe = Instant::now() + self.settings.auth_probe_interval;
                            return Admission::Wait(self.settings.probe_max);
                        }
                        Err(e) => {
                            warn!(error.message = %e, "cannot claim the authentication probe");
                            return Admission::Wait(self.probe_delay(0));
                        }
                    }
                }
            }
            _ => {}
        }
        let mut i = self.lock();
        let now = Instant::now();
        match i.state {
            BreakerState::Closed => Admission::Go,
            BreakerState::Open | BreakerState::AuthFailed
                if now >= i.next_probe && !i.probe_in_flight =>
            {
                i.probe_in_flight = true;
                if i.state == BreakerState::Open {
                    self.set_state(&mut i, BreakerState::HalfOpen);
                } else {
                    info!(
                        dependency = self.dep.as_str(),
                        "probing the rejected credentials once"
                    );
                }
                Admission::Probe
            }
            BreakerState::HalfOpen if !i.probe_in_flight => {
                i.probe_in_flight = true;
                Admission::Probe
            }
            // Waiting jobs look again at least every `probe_max`: a lifted latch (operator
            // reset) or a closed breaker lets them through without waiting out a long probe
            // interval.
            _ => Admission::Wait(
                i.next_probe
                    .saturating_duration_since(now)
                    .clamp(self.settings.probe_interval, self.settings.probe_max),
            ),
        }
    }

    /// The probe job ended. If it never reached the dependency, another job may probe.
    pub fn end_probe(&self) {
        let mut i = self.lock();
        if i.probe_in_flight {
            i.probe_in_flight = false;
            if i.state == BreakerState::AuthFailed {
                // The probe never reached the dependency: try again at the next probe time.
                i.next_probe = Instant::now() + self.settings.auth_probe_interval;
            }
        }
    }

    /// Called by a client before each call. Refuses while the credentials are latched (except
    /// for the probe); until they are proven, holds the returned guard across the call so calls
    /// go one at a time.
    pub async fn before_call(&self) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, Suspended> {
        let check = |i: &Inner| {
            if i.state == BreakerState::AuthFailed && !i.probe_in_flight {
                Err(Suspended {
                    since: i.since,
                    last_error: i.last_error.clone(),
                })
            } else {
                Ok(i.verified)
            }
        };
        let verified = check(&self.lock())?;
        if verified || self.latch.is_none() {
            return Ok(None);
        }
        let guard = self.serial.lock().await;
        // A call answered while this one waited its turn: the credentials are proven, and the
        // calls queued behind the first go out together instead of one after another.
        if self.lock().verified {
            return Ok(None);
        }
        self.follow_latch(true).await;
        if check(&self.lock())? {
            return Ok(None);
        }
        Ok(Some(guard))
    }

    /// Reports one call's result.
    pub async fn record(&self, result: CallResult) {
        let mut write_latch = None;
        let mut clear_latch = false;
        {
            let mut i = self.lock();
            match result {
                CallResult::Answered => {
                    i.verified = true;
                    i.failures = 0;
                    i.failed_probes = 0;
                    i.probe_in_flight = false;
                    if i.state == BreakerState::AuthFailed {
                        clear_latch = true;
                    }
                    self.set_state(&mut i, BreakerState::Closed);
                }
                CallResult::Outage(message) => {
                    i.failures = i.failures.saturating_add(1);
                    i.last_error = Some(message);
                    match i.state {
                        BreakerState::HalfOpen => {
                            i.failed_probes = i.failed_probes.saturating_add(1);
                            i.probe_in_flight = false;
                            i.next_probe = Instant::now() + self.probe_delay(i.failed_probes);
                            self.set_state(&mut i, BreakerState::Open);
                        }
                        BreakerState::Closed if i.failures >= self.settings.failure_threshold => {
                            i.failed_probes = 0;
                            i.next_probe = Instant::now() + self.probe_delay(0);
                            self.set_state(&mut i, BreakerState::Open);
                        }
                        _ => {}
                    }
                }
                CallResult::AuthFailed(message) => {
                    i.last_error = Some(message.clone());
                    i.probe_in_flight = false;
                    // Rejected credentials are retried rarely: WHMCS bans after a few failed
                    // logins; Salesforce's token endpoint at a capped, growing interval.
                    let delay = if self.latch.is_some() {
                        self.settings.auth_probe_interval
                    } else {
                        i.failed_probes = i.failed_probes.saturating_add(1);
                        self.probe_delay(i.failed_probes)
                    };
                    i.next_probe = Instant::now() + delay;
                    self.set_state(&mut i, BreakerState::AuthFailed);
                    write_latch = Some((i.since, message));
                }
            }
        }
        if let Some(latch) = &self.latch {
            if let Some((since, message)) = write_latch {
                if let Err(e) = latch.set(since.timestamp_millis(), &message).await {
                    error!(error.message = %e, "cannot store the authentication latch in Redis");
                }
            } else if clear_latch {
                if let Err(e) = latch.clear().await {
                    warn!(error.message = %e, "cannot lift the authentication latch");
                }
            }
        }
    }
}

/// The breakers of one process.
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub whmcs: Arc<Breaker>,
    pub salesforce: Arc<Breaker>,
}

impl Dependencies {
    pub fn all(&self) -> [&Arc<Breaker>; 2] {
        [&self.whmcs, &self.salesforce]
    }

    /// The `dependencies` object of `/health/sf-events`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "whmcs": self.whmcs.snapshot(),
            "salesforce": self.salesforce.snapshot(),
        })
    }
}

/// What the Redis latch holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatchRecord {
    pub fingerprint: String,
    pub since_ms: i64,
    pub error: String,
}

/// The WHMCS authentication latch in Redis.
#[derive(Clone)]
pub struct AuthLatch {
    conn: ConnectionManager,
    key: String,
    fingerprint: String,
}

impl std::fmt::Debug for AuthLatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLatch")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the credentials (hex), to tell whether a latch was set under these.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

impl AuthLatch {
    /// The latch key of a queue.
    pub fn key(queue_name: &str) -> String {
        format!("{queue_name}:deps:whmcs:auth_latch")
    }

    fn probe_key(&self) -> String {
        format!("{}:probe", self.key)
    }

    pub fn new(conn: ConnectionManager, queue_name: &str, fingerprint: String) -> Self {
        Self {
            conn,
            key: Self::key(queue_name),
            fingerprint,
        }
    }

    pub async fn read(&self) -> redis::RedisResult<Option<LatchRecord>> {
        let mut conn = self.conn.clone();
        let v: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut conn)
            .await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn set(&self, since_ms: i64, error: &str) -> redis::RedisResult<()> {
        let rec = LatchRecord {
            fingerprint: self.fingerprint.clone(),
            since_ms,
            error: error.to_owned(),
        };
        let json = serde_json::to_string(&rec).unwrap_or_default();
        let mut conn = self.conn.clone();
        // Keep the first latch's time: a second failure does not move `since`.
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&json)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        if set.is_none() {
            if let Some(old) = self.read().await? {
                if old.fingerprint != self.fingerprint {
                    let () = redis::cmd("SET")
                        .arg(&self.key)
                        .arg(&json)
                        .query_async(&mut conn)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Lifts the latch; `true` if one was set.
    pub async fn clear(&self) -> redis::RedisResult<bool> {
        Self::clear_key(self.conn.clone(), &self.key).await
    }

    /// Lifts the latch of `key` (the operator command); `true` if one was set.
    pub async fn clear_key(mut conn: ConnectionManager, key: &str) -> redis::RedisResult<bool> {
        let n: u64 = redis::cmd("DEL")
            .arg(key)
            .arg(format!("{key}:probe"))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// Claims the one probe of the next `interval` for this process.
    async fn claim_probe(&self, interval: Duration) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.probe_key())
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(interval.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(
            Dependency::Salesforce,
            BreakerSettings {
                failure_threshold: threshold,
                probe_interval: Duration::from_millis(20),
                probe_max: Duration::from_millis(40),
                alert_after: Duration::from_secs(60),
                auth_probe_interval: Duration::from_millis(20),
            },
            None,
            Gauge::default(),
        )
    }

    #[tokio::test]
    async fn opens_after_the_threshold_probes_once_and_closes_on_success() {
        let b = breaker(3);
        for _ in 0..2 {
            b.record(CallResult::Outage("503".into())).await;
        }
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        b.record(CallResult::Outage("503".into())).await;
        assert_eq!(b.snapshot().state, BreakerState::Open);
        assert!(matches!(b.admit().await, Admission::Wait(_)));
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(b.admit().await, Admission::Probe);
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        // Only one probe at a time.
        assert!(matches!(b.admit().await, Admission::Wait(_)));
        b.record(CallResult::Answered).await;
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        assert_eq!(b.admit().await, Admission::Go);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_and_an_answer_resets_the_count() {
        let b = breaker(2);
        b.record(CallResult::Outage("x".into())).await;
        b.record(CallResult::Answered).await;
        b.record(CallResult::Outage("x".into())).await;
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        b.record(CallResult::Outage("x".into())).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(b.admit().await, Admission::Probe);
        b.record(CallResult::Outage("still down".into())).await;
        let s = b.snapshot();
        assert_eq!(s.state, BreakerState::Open);
        assert_eq!(s.last_error.as_deref(), Some("still down"));
    }

    #[tokio::test]
    async fn auth_failure_latches_at_once_and_refuses_calls() {
        let b = breaker(5);
        b.record(CallResult::AuthFailed("Authentication Failed".into()))
            .await;
        assert_eq!(b.snapshot().state, BreakerState::AuthFailed);
        assert!(b.before_call().await.is_err());
        assert!(b.alarming(Utc::now()));
    }

    #[test]
    fn fingerprints_differ_by_credentials_and_hide_them() {
        let a = fingerprint(&["id", "secret"]);
        assert_ne!(a, fingerprint(&["id", "secret2"]));
        assert_ne!(a, fingerprint(&["ids", "ecret"]));
        assert!(!a.contains("secret"));
    }
}
