//! The stuck-order reconciler: a periodic sweep that finds Orders Salesforce still shows as
//! `Activating` but nobody is working on, and enqueues them again.
//!
//! It covers what the event stream alone cannot: events lost beyond the 72 h retention, jobs
//! lost with a flushed or restarted Redis without persistence, and events skipped by a cursor
//! fallback. One SOQL query per sweep (`Activating` and last attempt older than
//! `reconciler_stuck_after_secs`, or never attempted); Orders the ledger saw move within that
//! window (row updated or event received) are left alone. Enqueuing is always safe: the worker
//! re-reads the Order, claims it and resumes from the ledger, so a reconciled Order is never
//! provisioned twice. Runs only on the subscriber leader.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::ReconcilerConfig,
    ledger::Ledger,
    metrics::Metrics,
    queue::{Job, JobSource, ProvisionOrderV1, Queue},
    salesforce::rest::RestClient,
    status::SweepReport,
};

pub struct Reconciler {
    pub cfg: ReconcilerConfig,
    pub rest: RestClient,
    pub ledger: Ledger,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub report: Arc<std::sync::Mutex<SweepReport>>,
    /// The subscriber's backpressure threshold: no sweep while the queue is this full.
    pub max_pending_jobs: u64,
}

impl Reconciler {
    /// One sweep; returns the number of Orders enqueued.
    pub async fn sweep(&self) -> anyhow::Result<u64> {
        let now = chrono::Utc::now();
        // The queue is busy: whatever is stuck waits for the next sweep rather than growing the
        // backlog past the subscriber's backpressure threshold.
        if self.queue.pending().await? >= self.max_pending_jobs {
            return Ok(0);
        }
        let stuck_after = chrono::Duration::from_std(self.cfg.stuck_after).unwrap_or_default();
        let candidates = self
            .rest
            .query_stuck_orders(now - stuck_after, self.cfg.batch_limit)
            .await?;
        let active = self
            .ledger
            .recently_active(&candidates, (now - stuck_after).timestamp_millis())
            .await?;
        let bucket = now.timestamp() / 60;
        let jobs: Vec<Job> = candidates
            .iter()
            .filter(|id| !active.iter().any(|a| a == id.as_str()))
            .map(|id| {
                let event_id = format!("reconcile:{id}:{bucket}");
                Job::ProvisionOrderV1(ProvisionOrderV1 {
                    correlation_id: event_id.clone(),
                    event_id,
                    replay_id: None,
                    order_id: id.to_string(),
                    idem_key: None,
                    event_created_ms: 0,
                    source: JobSource::Reconciler,
                })
            })
            .collect();
        let n = jobs.len() as u64;
        self.queue.push(jobs).await?;
        self.metrics.reconciled.inc_by(n);
        if n > 0 {
            info!(
                candidates = candidates.len(),
                enqueued = n,
                "stuck orders re-enqueued"
            );
        }
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.last_run_at = Some(now);
        r.candidates = candidates.len() as u64;
        r.enqueued = n;
        r.total_enqueued += n;
        r.last_error = None;
        Ok(n)
    }

    /// Sweeps every interval until `stop`; the first sweep runs one interval after start.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Some(interval) = self.cfg.interval else {
            stop.cancelled().await;
            return Ok(());
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(interval.max(Duration::from_secs(1))) => {}
            }
            if let Err(e) = self.sweep().await {
                warn!(error.message = %format!("{e:#}"), "stuck-order sweep failed; retrying next interval");
                self.report
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_error = Some(e.to_string());
            }
        }
    }
}
