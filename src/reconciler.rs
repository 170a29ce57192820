//! The stuck-order reconciler: a periodic sweep that finds Orders Salesforce still shows as
//! `Activating` but nobody is working on, and enqueues them again.
//!
//! It covers what the event stream alone cannot: events lost beyond the 72 h retention, jobs
//! lost with a flushed or restarted Redis without persistence, and events skipped by a cursor
//! fallback. SOQL pages of candidates (`Activating` and last attempt older than
//! `reconciler_stuck_after_secs`, or never attempted; least recently attempted first); Orders
//! the ledger saw move within that window (row updated or event received), `writeback_rejected`
//! ones and ones whose outcome is newer than their last activation request are left alone.
//! A second, ledger-side pass re-enqueues Orders whose WHMCS order exists but whose attempt
//! never recorded an outcome (the run died after WHMCS or after the write-back and its job was
//! lost): Salesforce may already show them `Activated`, so only the ledger knows they are
//! unfinished; their job records the outcome Salesforce shows.
//! Enqueuing is always safe: the worker re-reads the Order, claims it and resumes from the
//! ledger, so a reconciled Order is never provisioned twice. Runs only on the subscriber leader,
//! and not while an operator pause of intake or provisioning is in force.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::ReconcilerConfig,
    ids::SalesforceId,
    ledger::{Ledger, OrderRecord, state},
    metrics::Metrics,
    pause::Pauses,
    queue::{Job, JobSource, ProvisionOrderV1, Queue},
    salesforce::rest::{RestClient, StuckOrder},
    status::SweepReport,
};

/// Most queries one sweep makes.
const MAX_PAGES: usize = 10;
/// Salesforce's largest `OFFSET`.
const OFFSET_MAX: u32 = 2000;
/// How far back the ledger-side pass looks for Orders left between WHMCS and the ledger's last
/// update (older ones are for an operator: `orders list`).
const UNFINISHED_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether the ledger's row says this stuck-looking Order must not be re-driven: Salesforce
/// refused its write-back for good, or its recorded outcome is newer than its last activation
/// request (a business failure, or a result whose write-back is pending an operator).
fn leave_alone(row: &OrderRecord, stuck: &StuckOrder) -> bool {
    if row.state == state::WRITEBACK_REJECTED {
        return true;
    }
    row.outcome.is_some()
        && stuck
            .last_modified
            .is_none_or(|t| row.updated_at >= t.timestamp_millis())
}

pub struct Reconciler {
    pub cfg: ReconcilerConfig,
    pub rest: RestClient,
    pub ledger: Ledger,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub report: Arc<std::sync::Mutex<SweepReport>>,
    /// The subscriber's backpressure threshold: no sweep while the queue is this full.
    pub max_pending_jobs: u64,
    /// Operator pauses: no sweep while intake or provisioning is paused.
    pub pauses: Arc<Pauses>,
}

impl Reconciler {
    /// One sweep; returns the number of Orders enqueued.
    ///
    /// Pages through the stuck candidates, least recently attempted first, until it has
    /// enqueued `batch_limit` Orders or seen them all (at most [`MAX_PAGES`] queries), so a
    /// page full of Orders it must leave alone never starves the ones behind it. It leaves
    /// alone: Orders the ledger saw move within `stuck_after`; `writeback_rejected` ones
    /// (Salesforce refused their outcome; an operator re-triggers them); and Orders whose ledger
    /// outcome is newer than their last activation request (`LastModifiedDate`) — the reconciler
    /// never re-runs a business failure. A fresh operator re-trigger moves `LastModifiedDate`
    /// past the outcome (and publishes a new event anyway).
    pub async fn sweep(&self) -> anyhow::Result<u64> {
        let now = chrono::Utc::now();
        // An operator paused intake (the events wait in Salesforce and come on resume) or
        // provisioning (jobs would only wait): enqueuing now would go round the pause.
        let paused = self.pauses.current().await;
        if paused.intake.is_some() || paused.provisioning.is_some() {
            return Ok(0);
        }
        // The queue is busy: whatever is stuck waits for the next sweep rather than growing the
        // backlog past the subscriber's backpressure threshold.
        if self.queue.pending().await? >= self.max_pending_jobs {
            return Ok(0);
        }
        let stuck_after = chrono::Duration::from_std(self.cfg.stuck_after).unwrap_or_default();
        let want = self.cfg.batch_limit as usize;
        let bucket = now.timestamp() / 60;
        let mut jobs: Vec<Job> = Vec::new();
        let mut seen = 0usize;
        let mut offset = 0u32;
        for _ in 0..MAX_PAGES {
            let page = self
                .rest
                .query_stuck_orders(now - stuck_after, self.cfg.batch_limit, offset)
                .await?;
            seen += page.len();
            let ids: Vec<SalesforceId> = page.iter().map(|s| s.id.clone()).collect();
            let active = self
                .ledger
                .recently_active(&ids, self.cfg.stuck_after)
                .await?;
            let rows = self.ledger.get_many(&ids).await?;
            for s in &page {
                if jobs.len() >= want {
                    break;
                }
                if active.iter().any(|a| a == s.id.as_str()) {
                    continue;
                }
                let row = rows.iter().find(|r| r.sf_order_id == s.id.as_str());
                if row.is_some_and(|r| leave_alone(r, s)) {
                    continue;
                }
                let event_id = format!("reconcile:{}:{bucket}", s.id);
                jobs.push(Job::ProvisionOrderV1(ProvisionOrderV1 {
                    correlation_id: event_id.clone(),
                    event_id,
                    replay_id: None,
                    order_id: s.id.to_string(),
                    idem_key: None,
                    event_created_ms: 0,
                    source: JobSource::Reconciler,
                }));
            }
            if jobs.len() >= want || page.len() < self.cfg.batch_limit as usize {
                break;
            }
            offset = offset.saturating_add(page.len() as u32);
            if offset >= OFFSET_MAX {
                break;
            }
        }
        // Orders the ledger left between WHMCS and its last update (their job is gone): the
        // job reads Salesforce and records the outcome it shows, or finishes the attempt.
        if jobs.len() < want {
            let left = self
                .ledger
                .unfinished_after_whmcs(
                    self.cfg.stuck_after,
                    UNFINISHED_HORIZON,
                    (want - jobs.len()) as u32,
                )
                .await?;
            for id in left {
                let event_id = format!("reconcile:{id}:{bucket}");
                if jobs.iter().any(|j| j.id() == event_id) {
                    continue;
                }
                seen += 1;
                jobs.push(Job::ProvisionOrderV1(ProvisionOrderV1 {
                    correlation_id: event_id.clone(),
                    event_id,
                    replay_id: None,
                    order_id: id,
                    idem_key: None,
                    event_created_ms: 0,
                    source: JobSource::Reconciler,
                }));
            }
        }
        let n = jobs.len() as u64;
        self.queue.push(jobs).await?;
        self.metrics.reconciled.inc_by(n);
        if n > 0 {
            info!(candidates = seen, enqueued = n, "stuck orders re-enqueued");
        }
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.last_run_at = Some(now);
        r.candidates = seen as u64;
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
