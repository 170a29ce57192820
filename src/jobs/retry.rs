//! The one backoff policy: capped exponential growth with jitter, used for every retry in the
//! daemon (a job's transient-failure retries, the subscriber's reconnects).
//!
//! Invariants: a delay is never zero and never above the cap; the random half keeps many
//! replicas (or many jobs) that failed together from retrying in lock-step.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay before retry number `attempt` (0-based): `initial · 2^attempt`, capped at
    /// `max`, then drawn uniformly from its upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.as_millis() as u64;
        let cap = self.max.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.min(20)).min(cap).max(1);
        Duration::from_millis(rand::rng().random_range(exp.div_ceil(2)..=exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_stays_under_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..100 {
            let d0 = b.delay(0);
            assert!((50..=100).contains(&(d0.as_millis() as u64)), "{d0:?}");
            let d3 = b.delay(3);
            assert!((400..=800).contains(&(d3.as_millis() as u64)), "{d3:?}");
            let d30 = b.delay(30);
            assert!((1000..=2000).contains(&(d30.as_millis() as u64)), "{d30:?}");
        }
    }

    #[test]
    fn never_zero() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.delay(5), Duration::from_millis(1));
    }
}
