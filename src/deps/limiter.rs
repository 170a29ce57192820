//! Adaptive in-flight limits: how many calls this process sends to one dependency at once.
//!
//! One [`Limiter`] per dependency and process (WHMCS, Salesforce REST), held by its client and
//! taken around every HTTP call ([`Limiter::acquire`]); the job's slot is only a memory bound.
//! The limit follows AIMD between a floor and a ceiling (`*_MIN_IN_FLIGHT`, `*_MAX_IN_FLIGHT`):
//! - **additive increase**: +1 for each answered call whose latency stayed within twice the
//!   dependency's baseline (a slow moving average of answered calls' latency, plus 10 ms of
//!   slack), when at least half the limit was in use as the call started;
//! - **multiplicative decrease**: halved on an overload signal (5xx, 429, timeout, connection
//!   error, Salesforce `REQUEST_LIMIT_EXCEEDED` / `UNABLE_TO_LOCK_ROW`: whatever the breaker
//!   counts as an outage), at most once per round — calls that started before the last
//!   decrease do not decrease it again;
//! - credentials rejected, or a call dropped before it ended: no change.
//!
//! It starts at the floor. The breakers (`deps`) decide whether a job may start at all; this
//! decides how many calls of the started jobs go out at once.
//!
//! Invariants:
//! - In-flight calls never exceed the current limit once calls started under a higher one have
//!   ended, and never exceed the ceiling.
//! - The limit stays within `[floor, ceiling]`.
//! - Waiting is FIFO and cancel-safe (a tokio `Semaphore`); a lowered limit retires permits as
//!   they come back (a debt), so nobody is admitted over it.
//! - State is held in one short `std::sync::Mutex` section, never across an `.await`.
//!
//! Hand-written: the adaptive-concurrency crates found (`tower-acc`, `rate_limiter_aimd`) are
//! tower layers or young forks; the calls here are plain client methods.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The bounds of one dependency's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// The limit never goes below this (and starts here).
    pub floor: usize,
    /// The limit never goes above this.
    pub ceiling: usize,
}

/// What a call told about its dependency's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency answered (success or a business answer): latency counts.
    Answered,
    /// The dependency is overloaded or unreachable: decrease.
    Overload,
    /// Says nothing about load (rejected credentials, cancelled).
    Ignore,
}

/// Multiplier of a decrease.
const BACKOFF: f64 = 0.5;
/// A latency within `TOLERANCE ×` the baseline (plus `SLACK`) lets the limit grow.
const TOLERANCE: f64 = 2.0;
const SLACK: Duration = Duration::from_millis(10);
/// Weight of one answered call in the baseline.
const BASELINE_WEIGHT: f64 = 0.05;

struct State {
    /// The limit, fractional (decreases are multiplicative).
    limit: f64,
    /// Permits the semaphore stands for: `limit` rounded down.
    permits: usize,
    /// Permits to retire as they come back (a decrease found them in use).
    debt: usize,
    in_flight: usize,
    /// Bumped at each decrease; a call remembers the round it started in.
    round: u64,
    /// Moving average of answered calls' latency, seconds.
    baseline: Option<f64>,
}

/// The adaptive in-flight limit of one dependency in this process.
pub struct Limiter {
    settings: LimitSettings,
    semaphore: Semaphore,
    state: Mutex<State>,
    limit_gauge: Gauge,
    in_flight_gauge: Gauge,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (limit, in_flight) = self.current();
        f.debug_struct("Limiter")
            .field("limit", &limit)
            .field("in_flight", &in_flight)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Limiter {
    /// A limiter at `settings.floor` (a floor of 0 counts as 1; a ceiling below the floor as
    /// the floor — the configuration refuses both). The gauges show the limit and the calls in
    /// flight.
    pub fn new(settings: LimitSettings, limit_gauge: Gauge, in_flight_gauge: Gauge) -> Self {
        let floor = settings.floor.max(1);
        let settings = LimitSettings {
            floor,
            ceiling: settings.ceiling.max(floor),
        };
        limit_gauge.set(floor as i64);
        in_flight_gauge.set(0);
        Self {
            settings,
            semaphore: Semaphore::new(floor),
            state: Mutex::new(State {
                limit: floor as f64,
                permits: floor,
                debt: 0,
                in_flight: 0,
                round: 0,
                baseline: None,
            }),
            limit_gauge,
            in_flight_gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current limit and the calls in flight.
    pub fn current(&self) -> (usize, usize) {
        let s = self.lock();
        (s.permits, s.in_flight)
    }

    /// Waits for room for one call. Finish the permit with the call's outcome
    /// ([`Permit::finish`]); dropping it unfinished counts as [`Outcome::Ignore`].
    pub async fn acquire(&self) -> Permit<'_> {
        // The semaphore is never closed, so `acquire` cannot fail; if it ever did, the call
        // goes out unlimited rather than never.
        let permit = self.semaphore.acquire().await.ok();
        let (round, in_flight) = {
            let mut s = self.lock();
            s.in_flight += 1;
            self.in_flight_gauge.set(s.in_flight as i64);
            (s.round, s.in_flight)
        };
        Permit {
            limiter: self,
            permit,
            started: Instant::now(),
            round,
            in_flight,
            outcome: Outcome::Ignore,
        }
    }

    fn release(&self, permit: Option<SemaphorePermit<'_>>, call: Call) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        let ceiling = self.settings.ceiling as f64;
        let floor = self.settings.floor as f64;
        match call.outcome {
            Outcome::Answered => {
                let secs = call.latency.as_secs_f64();
                let base = *s.baseline.get_or_insert(secs);
                let fast = secs <= TOLERANCE * base + SLACK.as_secs_f64();
                s.baseline = Some(base + BASELINE_WEIGHT * (secs - base));
                if fast && call.in_flight * 2 >= s.permits {
                    s.limit = (s.limit + 1.0).min(ceiling);
                }
            }
            Outcome::Overload if call.round == s.round => {
                s.limit = (s.limit * BACKOFF).max(floor);
                s.round += 1;
            }
            Outcome::Overload | Outcome::Ignore => {}
        }
        let target = (s.limit.floor() as usize).clamp(self.settings.floor, self.settings.ceiling);
        if target > s.permits {
            let grow = target - s.permits;
            let repaid = grow.min(s.debt);
            s.debt -= repaid;
            self.semaphore.add_permits(grow - repaid);
        } else if target < s.permits {
            let shrink = s.permits - target;
            let retired = self.semaphore.forget_permits(shrink);
            s.debt += shrink - retired;
        }
        s.permits = target;
        if let Some(p) = permit {
            if s.debt > 0 {
                s.debt -= 1;
                p.forget();
            } else {
                drop(p);
            }
        }
        self.limit_gauge.set(s.permits as i64);
        self.in_flight_gauge.set(s.in_flight as i64);
    }
}

/// Room for one call; give it back with [`Permit::finish`].
pub struct Permit<'a> {
    limiter: &'a Limiter,
    permit: Option<SemaphorePermit<'a>>,
    started: Instant,
    round: u64,
    /// Calls in flight when this one started (itself included).
    in_flight: usize,
    outcome: Outcome,
}

/// What a finished call tells the limiter.
struct Call {
    round: u64,
    in_flight: usize,
    latency: Duration,
    outcome: Outcome,
}

impl Permit<'_> {
    /// Ends the call with what it told about the dependency.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.release(
            self.permit.take(),
            Call {
                round: self.round,
                in_flight: self.in_flight,
                latency: self.started.elapsed(),
                outcome: self.outcome,
            },
        );
    }
}

impl From<&super::CallResult> for Outcome {
    fn from(r: &super::CallResult) -> Self {
        match r {
            super::CallResult::Answered => Self::Answered,
            super::CallResult::Outage(_) => Self::Overload,
            super::CallResult::AuthFailed(_) => Self::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(floor: usize, ceiling: usize) -> Limiter {
        Limiter::new(
            LimitSettings { floor, ceiling },
            Gauge::default(),
            Gauge::default(),
        )
    }

    /// Holds `n` permits, then finishes them all with `o`.
    async fn round(l: &Limiter, n: usize, o: Outcome) {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(l.acquire().await);
        }
        for p in held {
            p.finish(o);
        }
    }

    #[tokio::test]
    async fn starts_at_the_floor_and_grows_by_one_per_fast_answer_up_to_the_ceiling() {
        let l = limiter(2, 6);
        assert_eq!(l.current(), (2, 0));
        round(&l, 2, Outcome::Answered).await;
        assert_eq!(l.current(), (4, 0));
        round(&l, 4, Outcome::Answered).await;
        assert_eq!(l.current(), (6, 0), "capped at the ceiling");
        round(&l, 6, Outcome::Answered).await;
        assert_eq!(l.current(), (6, 0));
        assert_eq!(l.semaphore.available_permits(), 6);
    }

    #[tokio::test]
    async fn an_idle_limit_does_not_grow() {
        let l = limiter(2, 32);
        round(&l, 2, Outcome::Answered).await;
        let (limit, _) = l.current();
        for _ in 0..10 {
            round(&l, 1, Outcome::Answered).await;
        }
        assert_eq!(
            l.current().0,
            limit,
            "one call at a time uses less than half"
        );
    }

    #[tokio::test]
    async fn an_overload_halves_once_per_round_down_to_the_floor() {
        let l = limiter(3, 32);
        for _ in 0..10 {
            let (n, _) = l.current();
            round(&l, n, Outcome::Answered).await;
        }
        assert_eq!(l.current().0, 32);
        // 32 calls in flight all fail: one decrease, not 32.
        round(&l, 32, Outcome::Overload).await;
        assert_eq!(l.current(), (16, 0));
        assert_eq!(l.semaphore.available_permits(), 16);
        round(&l, 16, Outcome::Overload).await;
        round(&l, 8, Outcome::Overload).await;
        round(&l, 4, Outcome::Overload).await;
        assert_eq!(l.current().0, 3, "never below the floor");
        round(&l, 3, Outcome::Overload).await;
        assert_eq!(l.current().0, 3);
        assert_eq!(l.semaphore.available_permits(), 3);
    }

    #[tokio::test]
    async fn a_decrease_with_calls_in_flight_admits_nobody_over_the_new_limit() {
        let l = limiter(1, 8);
        for _ in 0..4 {
            let (n, _) = l.current();
            round(&l, n, Outcome::Answered).await;
        }
        assert_eq!(l.current().0, 8);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(l.acquire().await);
        }
        let first = held.remove(0);
        first.finish(Outcome::Overload);
        assert_eq!(l.current(), (4, 7));
        // Three more end: still 4 in flight, at the limit; no room yet.
        for _ in 0..3 {
            held.remove(0).finish(Outcome::Ignore);
        }
        assert_eq!(l.current(), (4, 4));
        assert_eq!(l.semaphore.available_permits(), 0);
        held.remove(0).finish(Outcome::Ignore);
        assert_eq!(l.semaphore.available_permits(), 1);
        let waiter = tokio::time::timeout(Duration::from_secs(5), l.acquire()).await;
        assert!(waiter.is_ok(), "room again below the limit");
    }

    #[tokio::test]
    async fn slow_answers_and_ignored_calls_do_not_grow_the_limit() {
        let l = limiter(2, 32);
        round(&l, 2, Outcome::Ignore).await;
        assert_eq!(l.current().0, 2);
        // A baseline of ~0 s, then answers far above twice it plus the slack.
        l.lock().baseline = Some(0.001);
        let mut held = vec![l.acquire().await, l.acquire().await];
        for p in &mut held {
            p.started -= Duration::from_millis(200);
        }
        for p in held {
            p.finish(Outcome::Answered);
        }
        assert_eq!(l.current().0, 2);
    }

    #[tokio::test]
    async fn bounds_are_sanitised() {
        let l = limiter(0, 0);
        assert_eq!(l.current().0, 1);
        round(&l, 1, Outcome::Answered).await;
        assert_eq!(l.current().0, 1);
    }
}
