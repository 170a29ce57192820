//! The job gate: what a queue worker does with a provisioning job around [`Provisioner::run`].
//!
//! Before the job starts, the operator pause of provisioning is asked (`crate::pause`, cached), then
//! the breakers of Salesforce and WHMCS ([`crate::deps`]); a job held by a pause or needing an
//! unhealthy dependency is not started but put back in the queue with a delay (the half-open
//! probe is one job let through). A job already past the gate when a pause starts finishes. A
//! job that ends without an outcome — a dependency outage or configuration problem, the ledger
//! unreachable, the Order busy, an earlier AddOrder still in doubt — is put back the same way.
//!
//! Invariants:
//! - Waiting never spends a give-up budget and never marks an Order Failed: the deferred job is a
//!   new queue entry (`<event id>~w<random>`) carrying the same payload, delayed by the
//!   breaker's probe interval with jitter, and the handler returns success to apalis, so the
//!   backend's 25-attempt retry (and its dead set) is never reached by waiting.
//! - The payload, including its event id, is unchanged: the ledger still recognises the event
//!   (a finished one is skipped as a duplicate), and a re-run resumes from the ledger state.
//! - Only when the deferral itself cannot be stored (Redis down) is the error returned to apalis,
//!   whose own retry then runs the job again.

use std::time::Duration;

use rand::Rng;
use tracing::{debug, info, warn};

use crate::{
    deps::{Admission, Breaker, Dependency},
    jobs::provision::{Execution, JobError, Provisioner},
    ledger::PausePart,
    metrics::ReasonLabel,
    queue::{Job, ProvisionOrderV1, Queue, QueueError},
};

/// Delay before a job that found its Order busy (another job holds the lease) runs again.
const BUSY_DELAY: Duration = Duration::from_secs(2);

/// Delay before a job held by an operator pause asks again.
const PAUSE_DELAY: Duration = Duration::from_secs(2);

/// The deferral reason of a job held by an operator pause.
const PAUSED: &str = "paused";

/// `delay` plus up to half of it again, at least one second (the queue's resolution).
fn jittered(delay: Duration) -> Duration {
    let ms = delay.as_millis().max(1000) as u64;
    Duration::from_millis(ms + rand::rng().random_range(0..=ms / 2))
}

/// Runs one job through the gate.
pub async fn run(
    p: &Provisioner,
    queue: &Queue,
    job: ProvisionOrderV1,
    execution: Execution,
) -> Result<(), QueueError> {
    if p.pauses.is_paused(PausePart::Provisioning).await {
        return defer(p, queue, job, jittered(PAUSE_DELAY), PAUSED).await;
    }
    let breakers: [(&Breaker, Dependency); 2] = [
        (&p.deps.salesforce, Dependency::Salesforce),
        (&p.deps.whmcs, Dependency::Whmcs),
    ];
    let mut probes: Vec<&Breaker> = Vec::new();
    for (breaker, dep) in breakers {
        match breaker.admit().await {
            Admission::Go => {}
            Admission::Probe => probes.push(breaker),
            Admission::Wait(delay) => {
                for b in &probes {
                    b.end_probe();
                }
                let state = breaker.snapshot().state;
                let reason = format!(
                    "{}_{}",
                    dep.as_str(),
                    serde_json::to_value(state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                );
                return defer(p, queue, job, jittered(delay), &reason).await;
            }
        }
    }
    let result = p.run(&job, execution).await;
    for b in &probes {
        b.end_probe();
    }
    let Err(e) = result else {
        return Ok(());
    };
    let (delay, reason) = match &e {
        JobError::Unavailable { dependency, .. } => {
            let b = match dependency {
                Dependency::Whmcs => &p.deps.whmcs,
                Dependency::Salesforce => &p.deps.salesforce,
            };
            (
                jittered(b.settings().probe_interval),
                format!("{}_unavailable", dependency.as_str()),
            )
        }
        JobError::Salesforce(_) => (
            jittered(p.deps.salesforce.settings().probe_interval),
            "salesforce_unavailable".to_owned(),
        ),
        JobError::Ledger(_) => (
            jittered(p.deps.salesforce.settings().probe_interval),
            "ledger_unavailable".to_owned(),
        ),
        JobError::Busy(_) | JobError::LeaseLost(_) => {
            (jittered(BUSY_DELAY), "order_busy".to_owned())
        }
        // The wait is exact (the earliest moment a new AddOrder is safe), plus a little jitter
        // so that Orders caught by one WHMCS incident do not all return in the same second.
        JobError::AddInDoubt { delay, .. } => (
            *delay + Duration::from_millis(rand::rng().random_range(1000..=3000)),
            "whmcs_add_in_doubt".to_owned(),
        ),
    };
    defer(p, queue, job, delay, &reason).await
}

/// Puts the job back in the queue, to run after `delay`.
async fn defer(
    p: &Provisioner,
    queue: &Queue,
    job: ProvisionOrderV1,
    delay: Duration,
    reason: &str,
) -> Result<(), QueueError> {
    let id = format!(
        "{}~w{}",
        job.event_id,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    p.metrics
        .jobs_deferred
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
    if reason == PAUSED {
        debug!(
            order.id = %job.order_id,
            event.id = %job.event_id,
            "job deferred: provisioning is paused"
        );
    } else {
        info!(
            order.id = %job.order_id,
            event.id = %job.event_id,
            reason,
            delay_ms = delay.as_millis() as u64,
            "job deferred: waiting for a dependency"
        );
    }
    queue
        .push_after(Job::ProvisionOrderV1(job), id, delay)
        .await
        .inspect_err(|e| warn!(error.message = %e, "cannot defer the job; the queue retries it"))
}
