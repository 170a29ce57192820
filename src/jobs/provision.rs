//! The provisioning job: one job = one Salesforce Order.
//!
//! read the Order (one SOQL) → guard `Activation_Status__c = Activating` → claim the Order in
//! the ledger → resolve the WHMCS client and products → `AddOrder` (notes `sf-order:<Id>`) →
//! `AcceptOrder(autosetup)` → one `PATCH` of the Order → ledger done.
//!
//! Invariants (see `docs/ARCHITECTURE.md`):
//! - Never `AddOrder` twice for one Order. The ledger's `adding` intent is committed before the
//!   call. Before any `AddOrder`, every run that is not provably the Order's first — the queue
//!   ran this job before (attempt count, or its run marker in Redis), the job comes from the
//!   reconciler or an operator, or the ledger saw an earlier claim, `adding` intent or client id
//!   — looks the order up with `GetOrders(userid)` and the notes tag, whatever the ledger row
//!   says, so the protection does not depend on the ledger's last commit surviving a power loss.
//!   Any `AddOrder` failure that may have reached WHMCS (timeouts, resets, 5xx) is followed by
//!   the same lookup. The lookup searches every WHMCS client id the Order was attempted under
//!   (the Account may have been re-mapped in between), newest orders first, and stops at orders
//!   dated before the Order's first attempt less [`RECONCILE_MARGIN`]. A WHMCS order id already
//!   on the ledger row or on the Salesforce Order is reused, including when an operator
//!   re-triggers a Failed Order.
//! - The WHMCS order id is never lost: a `Failed` write-back for an Order whose WHMCS order exists
//!   (e.g. `AcceptOrder` failed) carries `WHMCS_Order_ID__c`.
//! - Only one job works on an Order at a time (ledger lease, renewed while the job runs). A job
//!   whose Order another run holds waits for it before reading Salesforce, so a duplicate event
//!   costs one read, after that run's outcome, and waiting costs no API call.
//! - Transient failures are retried inside the job with capped, jittered exponential backoff,
//!   `job_max_attempts` times; then the job waits for its dependency
//!   ([`JobError::Unavailable`]: put back in the queue, see `jobs::gate`). Only a
//!   business answer (unknown client or product, WHMCS says the order is invalid) marks the
//!   Order Failed; an outage, a connection error or a configuration problem (credentials,
//!   permissions) never does.
//! - If Salesforce itself cannot be reached to read or write back the Order, the job returns an
//!   error and the queue runs it again later; the ledger state makes that re-run resume, not
//!   repeat.
//! - Every step runs inside a span carrying the order id, event id and correlation id, and every
//!   external call is recorded in the audit trail (`jobs::steps`).
//! - WHMCS never provisions fewer units than ordered: before 8.12 (or when its version cannot be
//!   read) `AddOrder` ignores `qty[]`, so a quantity N is sent as N lines of quantity 1, or the
//!   Order fails with `WHMCS_QTY_UNSUPPORTED` (`WHMCS_QUANTITY_MODE`).

use std::{fmt::Display, sync::Arc, time::Duration};

use tracing::{Instrument, error, info, info_span, warn};

use crate::{
    config::QuantityMode,
    error::{Classify, ErrorClass},
    ids::SalesforceId,
    jobs::{
        retry::Backoff,
        steps::{self, Ids, Step},
    },
    ledger::{self, Change, Ledger, OrderRecord},
    metrics::Metrics,
    queue::{JobSource, ProvisionOrderV1},
    salesforce::rest::{OrderUpdate, RestClient, SfError, SfOrder},
    whmcs::{AddOrderRequest, OrderLine, WhmcsClient, WhmcsOrder},
};

/// Most WHMCS order lines an Order may expand to (quantity N → N lines of 1).
pub const MAX_EXPANDED_LINES: u32 = 500;

/// The value of `Activation_Status__c` the worker acts on.
pub const ACTIVATING: &str = "Activating";
/// Outcome of an attempt that ended waiting for a dependency (not counted by the alert).
pub const DEFERRED: &str = "Deferred";
/// How long a claim on an Order lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How far before the Order's first attempt the reconciliation scan still looks. WHMCS dates its
/// orders in its server's local time without naming the zone (at most 12 h behind UTC), and the
/// two clocks may disagree: a day covers both.
pub const RECONCILE_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Provisioned { whmcs_order_id: u64 },
    Failed { code: String, message: String },
    Skipped(&'static str),
}

/// Tunables of the job.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub payment_method: String,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub quantity_mode: QuantityMode,
    /// How long after an `adding` intent an `AddOrder` whose outcome is unknown may still
    /// commit in WHMCS (`WHMCS_TIMEOUT_SECS` + `WHMCS_EXECUTION_ALLOWANCE_SECS`).
    pub add_in_doubt_window: Duration,
}

/// Everything a job needs; shared by all jobs of a process.
pub struct Provisioner {
    pub ledger: Ledger,
    pub rest: RestClient,
    pub whmcs: WhmcsClient,
    pub metrics: Arc<Metrics>,
    pub settings: WorkerSettings,
    /// Lease owner name of this process.
    pub instance: String,
    /// Breakers of WHMCS and Salesforce (the job gate asks them before a job starts).
    pub deps: crate::deps::Dependencies,
    /// The operator pauses (the job gate holds jobs while provisioning is paused).
    pub pauses: Arc<crate::pause::Pauses>,
}

/// How the queue is running this job: what it knows about earlier executions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// The queue's attempt number of this job (1 on its first execution; apalis counts retries
    /// after an error, not re-runs of a job whose worker died).
    pub queue_attempt: usize,
    /// How many times a worker started this job id, counting this run (the queue's run marker,
    /// which survives a worker's death).
    pub runs: u64,
}

impl Execution {
    /// Whether this is, as far as the queue knows, the job's first execution.
    pub fn is_first(self) -> bool {
        self.queue_attempt <= 1 && self.runs <= 1
    }
}

/// Where reconciliation looks for an order created by an earlier attempt.
#[derive(Debug, Clone)]
struct Search {
    /// WHMCS client ids, the current one first.
    clients: Vec<String>,
    /// Orders dated before this (WHMCS local time) are too old to be ours.
    not_before: Option<chrono::NaiveDateTime>,
}

/// A failure that ends the attempt with the Order marked Failed.
#[derive(Debug, Clone)]
struct Fail {
    code: String,
    message: String,
}

impl Fail {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Errors that end the job without an outcome; the queue runs it again later.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("ledger: {0}")]
    Ledger(#[from] ledger::LedgerError),
    #[error("salesforce unavailable: {0}")]
    Salesforce(String),
    #[error("order {0} is being provisioned by another job")]
    Busy(String),
    #[error("lease on order {0} was lost")]
    LeaseLost(String),
    /// An earlier `AddOrder` for the Order may still be running in WHMCS and its order is not
    /// there yet: no new one is sent before `delay` has passed; the job waits and looks again.
    #[error("an earlier AddOrder for order {order} may still commit in WHMCS")]
    AddInDoubt { order: String, delay: Duration },
    /// A dependency cannot serve the job now (outage, rejected credentials, configuration): the
    /// job waits in the queue; the Order stays `Activating`.
    #[error("{} unavailable: {message}", dependency.as_str())]
    Unavailable {
        dependency: crate::deps::Dependency,
        message: String,
    },
}

/// Salesforce refused the Order's write-back for good after this job's event: only a newer
/// activation request (an operator's re-trigger publishes a newer event) or an operator's requeue
/// drives it again, not a redelivery, a duplicate or the reconciler.
fn writeback_rejected_before(job: &ProvisionOrderV1, row: &OrderRecord) -> bool {
    row.state == ledger::state::WRITEBACK_REJECTED
        && job.source != JobSource::Operator
        && job.event_created_ms <= row.updated_at
}

/// What an attempt of `job` on `order` writes to the Order's row as it opens.
fn opening<'a>(job: &'a ProvisionOrderV1, order: &'a SfOrder) -> ledger::Opening<'a> {
    ledger::Opening {
        event_id: &job.event_id,
        correlation_id: &job.correlation_id,
        account_id: order.account_id.as_ref().map(SalesforceId::as_str),
        sf_status: order.status.as_deref(),
    }
}

/// Counts one waiting job in a gauge while it lives.
struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Waiting<'a> {
    fn on(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn tag(order: &SalesforceId) -> String {
    format!("sf-order:{}", order.as_str())
}

impl Provisioner {
    fn backoff(&self, attempt: u32) -> Duration {
        Backoff::new(self.settings.backoff_initial, self.settings.backoff_max).delay(attempt)
    }

    /// Runs `f` until it succeeds, fails non-transiently, or `max_attempts` are spent.
    async fn retry<T, E, F, Fut>(&self, what: &str, mut f: F) -> Result<T, E>
    where
        E: Classify + Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.class() == ErrorClass::Transient
                        && attempt + 1 < self.settings.max_attempts =>
                {
                    let delay = self.backoff(attempt);
                    warn!(step = what, attempt, error.code = %e.code(), error.message = %e, delay_ms = delay.as_millis() as u64, "transient failure, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one job; `execution` says what the queue knows about earlier runs of it.
    pub async fn run(
        &self,
        job: &ProvisionOrderV1,
        execution: Execution,
    ) -> Result<Outcome, JobError> {
        let span = info_span!(
            "provision",
            order.id = %job.order_id,
            event.id = %job.event_id,
            correlation.id = %job.correlation_id,
            job.source = ?job.source,
            job.attempt = execution.queue_attempt,
            job.runs = execution.runs,
        );
        async {
            let started = std::time::Instant::now();
            // Boxed: the job's steps make a large future, and the queue's layers move the job's
            // future (into a box, into a task) before it runs; a pointer moves instead.
            let outcome = steps::scope(job, Box::pin(self.run_inner(job, execution))).await;
            match &outcome {
                Ok(Outcome::Provisioned { whmcs_order_id }) => {
                    self.metrics.attempt("provisioned");
                    self.metrics
                        .provisioning_duration
                        .observe(started.elapsed().as_secs_f64());
                    if job.event_created_ms > 0 {
                        let lag = (ledger::now_ms() - job.event_created_ms).max(0) as f64 / 1000.0;
                        self.metrics.approval_to_writeback.observe(lag);
                    }
                    info!(
                        whmcs.order_id = whmcs_order_id,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "order provisioned"
                    );
                }
                Ok(Outcome::Failed { code, message }) => {
                    self.metrics.attempt("failed");
                    self.metrics
                        .provisioning_duration
                        .observe(started.elapsed().as_secs_f64());
                    warn!(error.code = %code, error.message = %message, "order failed");
                }
                Ok(Outcome::Skipped(reason)) => {
                    self.metrics.attempt("skipped");
                    self.metrics.skip(reason);
                    info!(reason, "order skipped");
                }
                // Waiting for another job's lease or for an earlier AddOrder is routine
                // (duplicate events, replicas): no error for an operator to chase.
                Err(e @ (JobError::Busy(_) | JobError::AddInDoubt { .. })) => {
                    info!(reason = %e, "job waits; it will run again");
                }
                Err(e @ JobError::LeaseLost(_)) => {
                    warn!(error.message = %e, "job stopped; it will run again");
                }
                Err(e) => error!(error.message = %e, "job did not finish; it will run again"),
            }
            if let Some(api) = self.rest.api_usage() {
                self.metrics.salesforce_api_used.set(api.0 as i64);
                self.metrics.salesforce_api_limit.set(api.1 as i64);
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn run_inner(
        &self,
        job: &ProvisionOrderV1,
        execution: Execution,
    ) -> Result<Outcome, JobError> {
        let Ok(id) = SalesforceId::parse(&job.order_id) else {
            return Ok(Outcome::Skipped("invalid_order_id"));
        };
        // While another run holds the Order's lease (a duplicate event, another replica's or the
        // reconciler's job), wait for it before reading Salesforce: the read then shows what
        // that run did, and a job that waits in vain (`Busy`, it runs again later) costs no API
        // call.
        let before = self
            .while_leased(&id, || async {
                Ok(match self.ledger.get_with_lease(&id).await? {
                    Some((_, true)) => None,
                    row => Some(row.map(|(row, _)| row)),
                })
            })
            .await?;
        // A redelivered job whose attempt already finished: nothing to do, no Salesforce call.
        if let Some(row) = &before {
            if row.last_event_id.as_deref() == Some(job.event_id.as_str()) && row.outcome.is_some()
            {
                return Ok(Outcome::Skipped("duplicate_event"));
            }
            if writeback_rejected_before(job, row) {
                return Ok(Outcome::Skipped("writeback_rejected"));
            }
        }
        let order = match self.read_order(&id).await? {
            Ok(order) => order,
            Err(skipped) => return Ok(skipped),
        };
        if order.activation_status.as_deref() != Some(ACTIVATING) {
            self.adopt_written_back(&id, &order).await?;
            return Ok(Outcome::Skipped("not_activating"));
        }

        // Each run holds the lease under its own name, so two jobs of this process for the same
        // Order exclude each other too.
        let owner = format!("{}:{}", self.instance, uuid::Uuid::new_v4().simple());
        // An Order the ledger has never seen (the usual first event) is created with its first
        // attempt opened, in one trip; one whose row appeared meanwhile is claimed as usual.
        let created = match before {
            None => {
                self.ledger
                    .claim_new(&id, &owner, LEASE, &opening(job, &order))
                    .await?
            }
            Some(_) => None,
        };
        let (row, opened) = match created {
            Some((row, attempt)) => (row, Some(attempt)),
            None => (self.claim(&id, &owner).await?, None),
        };
        // Another job finished an attempt on this Order between this job's ledger read and its
        // claim (the Salesforce read in between showed the Order before that job's write-back):
        // nothing is left to do.
        // Every claim counts one attempt, ours included.
        let finished_meanwhile = row.outcome.is_some()
            && match &before {
                None => row.attempts > 1,
                Some(b) => row.attempts > b.attempts + 1 || b.outcome.is_none(),
            };
        // That job wrote its outcome back to Salesforce before recording it here, so Salesforce
        // shows it now, unless an operator re-triggered the Order after that write-back: then
        // this job is the re-trigger's and goes on, with the Order as it is now (the operator
        // may have fixed its mapping). One more read, only in this race.
        let order = if finished_meanwhile {
            let now = if writeback_rejected_before(job, &row) {
                Ok(Err(Outcome::Skipped("writeback_rejected")))
            } else {
                self.read_order(&id).await
            };
            match now {
                Ok(Ok(now)) if now.activation_status.as_deref() == Some(ACTIVATING) => now,
                other => {
                    if let Err(e) = self.ledger.release(&id, &owner).await {
                        warn!(error.message = %e, "lease release failed; it expires by itself");
                    }
                    return match other {
                        Ok(Ok(_)) => Ok(Outcome::Skipped("finished_meanwhile")),
                        Ok(Err(skipped)) => Ok(skipped),
                        Err(e) => Err(e),
                    };
                }
            }
        } else {
            order
        };
        // Renews the lease while the run goes on, in the run's own task; ends only when the
        // lease is lost, which ends the run.
        let renewing = async {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                match self.ledger.renew(&id, &owner, LEASE).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => warn!(error.message = %e, "lease renewal failed"),
                }
            }
        };
        // The attempt the claimed run opened (0: none yet), to close if the run is cut off.
        let started = std::sync::atomic::AtomicI64::new(0);
        let result = tokio::select! {
            r = self.provision_claimed(job, execution, &id, &order, row, opened, &owner, &started) => r,
            () = renewing => {
                let e = JobError::LeaseLost(id.to_string());
                let attempt = started.load(std::sync::atomic::Ordering::Relaxed);
                if attempt != 0 {
                    self.close_deferred(attempt, &e).await;
                }
                Err(e)
            }
        };
        // A finished attempt gave the lease back with its last change.
        let released = matches!(
            result,
            Ok(Outcome::Provisioned { .. } | Outcome::Failed { .. })
        );
        if !released {
            if let Err(e) = self.ledger.release(&id, &owner).await {
                warn!(error.message = %e, "lease release failed; it expires by itself");
            }
        }
        result
    }

    /// A run that died between its write-back and the ledger's final update left the ledger
    /// without the outcome Salesforce already shows, and every later run stops at the guard. The
    /// portal reads the ledger, so record that outcome here: `Activated` when Salesforce carries
    /// the WHMCS order the ledger recorded, `Failed` with the code the ledger kept before the
    /// write-back. Orders whose ledger row is finished (the usual duplicate) cost nothing more.
    async fn adopt_written_back(&self, id: &SalesforceId, order: &SfOrder) -> Result<(), JobError> {
        let Some(row) = self.ledger.get(id).await? else {
            return Ok(());
        };
        if row.outcome.is_some() || row.last_event_id.is_none() {
            return Ok(());
        }
        let in_salesforce = order
            .whmcs_order_id
            .as_deref()
            .and_then(|s| s.trim().parse::<i64>().ok());
        let (state, label) = match order.activation_status.as_deref() {
            Some("Activated")
                if row.whmcs_order_id.is_some() && row.whmcs_order_id == in_salesforce =>
            {
                (ledger::state::DONE, ledger::outcome::PROVISIONED)
            }
            Some("Failed") => (ledger::state::FAILED, ledger::outcome::FAILED),
            _ => return Ok(()),
        };
        let owner = format!("{}:{}", self.instance, uuid::Uuid::new_v4().simple());
        let row = self.claim(id, &owner).await?;
        let result = async {
            if row.outcome.is_some() {
                return Ok(());
            }
            let err = (label == ledger::outcome::FAILED).then(|| {
                (
                    row.error_code.as_deref().unwrap_or("INTERRUPTED"),
                    row.error_message.as_deref().unwrap_or(
                        "The attempt was interrupted after Salesforce recorded its outcome",
                    ),
                )
            });
            let change = Change {
                state: Some(state),
                outcome: Some(Some(label)),
                error: Some(err),
                ..Default::default()
            };
            // The outcome and the interrupted attempt's close in one transaction: nobody sees
            // the one without the other.
            let attempts = self.ledger.attempts(id).await?;
            let held = match attempts.iter().rev().find(|a| a.finished_at.is_none()) {
                Some(open) => {
                    self.ledger
                        .end_attempt(id, &owner, &change, open.id, label, err)
                        .await?
                }
                None => self.ledger.update(id, &owner, &change).await?,
            };
            if !held {
                return Err(JobError::LeaseLost(id.to_string()));
            }
            info!(
                outcome = label,
                "recorded the outcome an interrupted attempt wrote back to Salesforce"
            );
            Ok(())
        }
        .await;
        if let Err(e) = self.ledger.release(id, &owner).await {
            warn!(error.message = %e, "lease release failed; it expires by itself");
        }
        result
    }

    /// Reads the Order (retrying transient failures). `Ok(Err(outcome))`: there is nothing to
    /// provision (the Order is gone, or Salesforce refuses it for good); `Err`: Salesforce
    /// cannot answer now and the job runs again later.
    async fn read_order(&self, id: &SalesforceId) -> Result<Result<SfOrder, Outcome>, JobError> {
        match self
            .retry("read_order", || {
                steps::record(
                    &self.ledger,
                    Step::ReadOrder,
                    Ids::none(),
                    self.rest.get_order(id),
                )
            })
            .await
        {
            Ok(Some(o)) => Ok(Ok(o)),
            Ok(None) => Ok(Err(Outcome::Skipped("order_not_found"))),
            Err(e) => {
                self.metrics
                    .salesforce_errors
                    .get_or_create(&crate::metrics::ReasonLabel { reason: e.code() })
                    .inc();
                if e.class() == ErrorClass::Permanent {
                    error!(error.code = %e.code(), error.message = %e, "cannot read the order");
                    return Ok(Err(Outcome::Skipped("order_unreadable")));
                }
                // Transient, or a configuration problem (credentials, permissions, field names)
                // an operator must fix: the job runs again later rather than being dropped, and
                // the reconciler re-enqueues the Order if the queue gives up on it.
                if e.class() == ErrorClass::Config {
                    error!(error.code = %e.code(), error.message = %e, "cannot read the order: Salesforce configuration problem");
                }
                Err(JobError::Salesforce(e.to_string()))
            }
        }
    }

    /// Waits for the Order's lease; another job holding it finishes or its lease expires.
    async fn claim(&self, id: &SalesforceId, owner: &str) -> Result<OrderRecord, JobError> {
        self.while_leased(id, || async {
            Ok(self.ledger.claim(id, owner, LEASE).await?)
        })
        .await
    }

    /// Asks `try_once` until it answers (`None`: another run holds the Order's lease), waiting
    /// in between until that run finishes or its lease expires; `Busy` after twice the lease's
    /// length. Counted in `jobs_waiting_for_lease` while it waits.
    async fn while_leased<T, F, Fut>(
        &self,
        id: &SalesforceId,
        mut try_once: F,
    ) -> Result<T, JobError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, JobError>>,
    {
        let deadline = tokio::time::Instant::now() + LEASE * 2;
        let mut wait = Duration::from_millis(20);
        let mut waiting = None;
        loop {
            if let Some(v) = try_once().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JobError::Busy(id.to_string()));
            }
            waiting.get_or_insert_with(|| Waiting::on(&self.metrics.jobs_waiting_for_lease));
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    async fn update(
        &self,
        id: &SalesforceId,
        owner: &str,
        change: &Change<'_>,
    ) -> Result<(), JobError> {
        if self.ledger.update(id, owner, change).await? {
            Ok(())
        } else {
            Err(JobError::LeaseLost(id.to_string()))
        }
    }

    /// Stops the job unless it still holds the Order's lease, live on the database's clock;
    /// asked right before every external side effect (AddOrder, AcceptOrder, the write-back)
    /// unless the ledger change just before it already checked and renewed the lease, so a job
    /// whose renewals failed or whose lease expired never acts after another took over.
    async fn ensure_lease(&self, id: &SalesforceId, owner: &str) -> Result<(), JobError> {
        if self.ledger.still_holds(id, owner, LEASE).await? {
            Ok(())
        } else {
            warn!("lease on the order expired or was taken; stopping before the next side effect");
            Err(JobError::LeaseLost(id.to_string()))
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn provision_claimed(
        &self,
        job: &ProvisionOrderV1,
        execution: Execution,
        id: &SalesforceId,
        order: &SfOrder,
        row: OrderRecord,
        opened: Option<i64>,
        owner: &str,
        started: &std::sync::atomic::AtomicI64,
    ) -> Result<Outcome, JobError> {
        let attempt = match opened {
            // Opened with the Order's new row.
            Some(attempt) => attempt,
            None => {
                // Another job finished this very event while we waited for the lease.
                if row.last_event_id.as_deref() == Some(job.event_id.as_str())
                    && row.outcome.is_some()
                {
                    return Ok(Outcome::Skipped("duplicate_event"));
                }
                let opening = opening(job, order);
                self.ledger
                    .begin_attempt(
                        id,
                        owner,
                        Some(opening.event_id),
                        &opening.change(),
                        row.attempts <= 1,
                    )
                    .await?
                    .ok_or_else(|| JobError::LeaseLost(id.to_string()))?
            }
        };
        steps::set_attempt(attempt);
        started.store(attempt, std::sync::atomic::Ordering::Relaxed);
        let result = self
            .attempt_claimed(job, execution, id, order, &row, owner, attempt)
            .await;
        if let Err(e) = &result {
            // The attempt ends without an outcome: the job waits and runs again.
            self.close_deferred(attempt, e).await;
        }
        result
    }

    /// Closes an attempt that ended without an outcome, with the reason.
    async fn close_deferred(&self, attempt: i64, e: &JobError) {
        let message = e.to_string();
        if let Err(le) = self
            .ledger
            .finish_attempt(attempt, DEFERRED, Some(("DEFERRED", message.as_str())))
            .await
        {
            warn!(error.message = %le, "cannot close the deferred attempt");
        }
    }

    /// The attempt `attempt` on a claimed Order: WHMCS, then the write-back, then the ledger's
    /// final update.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_claimed(
        &self,
        job: &ProvisionOrderV1,
        execution: Execution,
        id: &SalesforceId,
        order: &SfOrder,
        row: &OrderRecord,
        owner: &str,
        attempt: i64,
    ) -> Result<Outcome, JobError> {
        // The WHMCS order this attempt created, found or reused, even if a later step failed.
        let mut whmcs_order = None;
        let result = self
            .drive(job, execution, id, order, row, owner, &mut whmcs_order)
            .await;
        let (outcome, update) = match result {
            Ok(whmcs_order_id) => (
                Outcome::Provisioned { whmcs_order_id },
                OrderUpdate::Activated {
                    whmcs_order_id: whmcs_order_id.to_string(),
                    at: chrono::Utc::now(),
                },
            ),
            Err(StepError::Job(e)) => return Err(e),
            Err(StepError::Fail(f)) => (
                Outcome::Failed {
                    code: f.code.clone(),
                    message: f.message.clone(),
                },
                OrderUpdate::Failed {
                    code: f.code,
                    message: f.message,
                    whmcs_order_id: whmcs_order.map(|o: u64| o.to_string()),
                    at: chrono::Utc::now(),
                },
            ),
        };
        // Keep the failure's code before the write-back, so a run that dies right after it can
        // still tell the ledger why (see `adopt_written_back`).
        // The lease check of the write-back: a failure's update renews the lease; a success's
        // last change (`drive`'s `whmcs_accepted`) did.
        if let Outcome::Failed { code, message } = &outcome {
            self.update(
                id,
                owner,
                &Change {
                    error: Some(Some((code.as_str(), message.as_str()))),
                    renew: Some(LEASE),
                    ..Default::default()
                },
            )
            .await?;
        }

        // Write back (one PATCH). If Salesforce stays unreachable, the job runs again later and
        // resumes here: the ledger already holds the WHMCS state.
        let rejected = self.write_back(id, &update).await?;
        let (mut state, outcome_label, mut err) = match &outcome {
            Outcome::Provisioned { .. } => {
                (ledger::state::DONE, ledger::outcome::PROVISIONED, None)
            }
            Outcome::Failed { code, message } => (
                ledger::state::FAILED,
                ledger::outcome::FAILED,
                Some((code.as_str(), message.as_str())),
            ),
            Outcome::Skipped(_) => (ledger::state::NEW, "Skipped", None),
        };
        let rejection = rejected.as_ref().map(|e| {
            (
                e.code(),
                format!("Salesforce rejected the write-back: {}", e.message),
            )
        });
        if let Some((code, message)) = &rejection {
            state = ledger::state::WRITEBACK_REJECTED;
            err = Some((code.as_str(), message.as_str()));
        }
        let change = Change {
            state: Some(state),
            outcome: Some(Some(outcome_label)),
            error: Some(err),
            release: true,
            ..Default::default()
        };
        if !self
            .ledger
            .end_attempt(id, owner, &change, attempt, outcome_label, err)
            .await?
        {
            return Err(JobError::LeaseLost(id.to_string()));
        }
        Ok(outcome)
    }

    /// Writes the outcome onto the Order. `Ok(None)`: written. `Ok(Some(e))`: Salesforce refused
    /// it for good (a validation rule, a locked record, a restricted picklist) — for a
    /// provisioned Order after one more try without the standard `Status` field, which org
    /// rules most often guard. `Err`: Salesforce is unreachable, limited or misconfigured: the
    /// job runs again later (never a terminal state for an outage).
    async fn write_back(
        &self,
        id: &SalesforceId,
        update: &OrderUpdate,
    ) -> Result<Option<SfError>, JobError> {
        let mut update = update.clone();
        loop {
            let e = match self
                .retry("write_back", || {
                    steps::record(
                        &self.ledger,
                        Step::WriteBack,
                        writeback_ids(&update),
                        self.rest.update_order(id, &update),
                    )
                })
                .await
            {
                Ok(()) => return Ok(None),
                Err(e) => e,
            };
            self.metrics
                .salesforce_errors
                .get_or_create(&crate::metrics::ReasonLabel { reason: e.code() })
                .inc();
            match e.class() {
                ErrorClass::Transient => return Err(JobError::Salesforce(e.to_string())),
                ErrorClass::Config => {
                    error!(error.code = %e.code(), error.message = %e, "Salesforce refused the write-back: configuration problem; the job runs again later");
                    return Err(JobError::Salesforce(e.to_string()));
                }
                ErrorClass::Permanent => {}
            }
            if let OrderUpdate::Activated { whmcs_order_id, at } = &update {
                warn!(error.code = %e.code(), error.message = %e, "Salesforce rejected the write-back; retrying without the Order Status");
                update = OrderUpdate::ActivatedFieldsOnly {
                    whmcs_order_id: whmcs_order_id.clone(),
                    at: *at,
                };
                continue;
            }
            self.metrics.writeback_rejected.inc();
            error!(error.code = %e.code(), error.message = %e, "Salesforce rejected the write-back for good; the Order stays writeback_rejected until an operator re-triggers it");
            return Ok(Some(e));
        }
    }

    /// WHMCS steps, resumed from the ledger state. Returns the WHMCS order id; `whmcs_order` is
    /// set as soon as the WHMCS order is known to exist.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        job: &ProvisionOrderV1,
        execution: Execution,
        id: &SalesforceId,
        order: &SfOrder,
        row: &OrderRecord,
        owner: &str,
        whmcs_order: &mut Option<u64>,
    ) -> Result<u64, StepError> {
        let client_id = order
            .whmcs_client_id
            .clone()
            .or_else(|| row.whmcs_client_id.clone())
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                Fail::new(
                    "MAPPING_CLIENT_MISSING",
                    "The Order's Account has no WHMCS client id",
                )
            })?;

        // A WHMCS order we already created (ledger) or Salesforce already knows is reused.
        let known = row
            .whmcs_order_id
            .and_then(|v| u64::try_from(v).ok())
            .or_else(|| {
                order
                    .whmcs_order_id
                    .as_deref()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            });
        let mut whmcs_order_id = known;
        *whmcs_order = known;
        let accepted = row.state == ledger::state::WHMCS_ACCEPTED
            || (known.is_some()
                && (row.state == ledger::state::DONE
                    || (row.state == ledger::state::WRITEBACK_REJECTED
                        && row.outcome.as_deref() == Some(ledger::outcome::PROVISIONED))));

        // Whether this drive's last ledger change renewed a live lease (then the next
        // external step needs no other check).
        let mut lease_fresh = false;
        if whmcs_order_id.is_none() {
            let lines = self.fit_quantities(order_lines(order)?).await?;
            // A row this run created has no client history (it is written with the `adding`
            // intent, after the row): the common first run costs no extra read.
            let fresh_row = row.attempts <= 1
                && row.state == ledger::state::NEW
                && row.whmcs_client_id.is_none();
            let history = if fresh_row {
                Vec::new()
            } else {
                self.ledger.client_ids(id).await?
            };
            // Anything but a provable first run may follow an attempt that created the order
            // without recording it (crash, timeout, 5xx after commit, or a ledger that lost its
            // last commits): look before adding, whatever the ledger row says.
            let first_run = execution.is_first() && job.source == JobSource::Event && fresh_row;
            let search = search_scope(job, row, &client_id, &history);
            if !first_run {
                if let Some(found) = self.reconcile(id, &search).await? {
                    info!(
                        whmcs.order_id = found.id,
                        whmcs.client_id = found.user_id,
                        "found the order an earlier attempt created"
                    );
                    whmcs_order_id = Some(found.id);
                    *whmcs_order = Some(found.id);
                    self.record_added(id, owner, &found.id, &found.service_ids)
                        .await?;
                    lease_fresh = true;
                }
            }
            if whmcs_order_id.is_none() {
                // An earlier AddOrder whose outcome is unknown may still commit: no second one
                // until it cannot any more (the lookup above runs again after the wait).
                if !first_run {
                    if let Some(delay) = self
                        .ledger
                        .add_in_doubt(id, self.settings.add_in_doubt_window)
                        .await?
                    {
                        return Err(JobError::AddInDoubt {
                            order: id.to_string(),
                            delay,
                        }
                        .into());
                    }
                }
                // Room for the AddOrder before its intent is committed: a job that waits for
                // WHMCS capacity, or is stopped while waiting, leaves no intent behind (an
                // intent without a call would hold the Order back for the in-doubt window).
                // Without room (breaker open, credentials latched) the call below reports why.
                let room = self.whmcs.room(crate::whmcs::ADD_ORDER).await.ok();
                // Checks and renews the lease: the AddOrder right after needs no other check.
                if !self
                    .ledger
                    .mark_adding(id, owner, &client_id, LEASE)
                    .await?
                {
                    return Err(JobError::LeaseLost(id.to_string()).into());
                }
                let request = AddOrderRequest {
                    client_id: client_id.clone(),
                    payment_method: self.settings.payment_method.clone(),
                    lines,
                    notes: tag(id),
                    no_email: true,
                };
                let current = Search {
                    clients: vec![client_id.clone()],
                    not_before: search.not_before,
                };
                let created = self
                    .add_order_once(id, owner, &current, &request, room)
                    .await?;
                *whmcs_order = Some(created.0);
                // Recorded while this run owns the Order, even if its lease lapsed during the
                // call (the next run then needs no search); the same statement renews a live
                // lease, which is AcceptOrder's lease check.
                self.record_added(id, owner, &created.0, &created.1).await?;
                lease_fresh = true;
                whmcs_order_id = Some(created.0);
            }
        }
        let whmcs_order_id =
            whmcs_order_id.ok_or_else(|| Fail::new("INTERNAL", "no WHMCS order id"))?;

        if !accepted {
            match self
                .accept_once(id, owner, whmcs_order_id, lease_fresh)
                .await?
            {
                Ok(()) => {}
                Err(e) if e.kind == crate::whmcs::WhmcsErrorKind::NotPending => {
                    // Accepted by an earlier attempt, or cancelled: ask WHMCS.
                    let current = self
                        .retry("get_order", || {
                            steps::record(
                                &self.ledger,
                                Step::GetOrders,
                                Ids::order(whmcs_order_id),
                                self.whmcs.get_order(whmcs_order_id),
                            )
                        })
                        .await
                        .map_err(|e| self.whmcs_fail("GetOrders", &e))?;
                    match current {
                        Some(o) if o.status.eq_ignore_ascii_case("Active") => {}
                        Some(o) => {
                            return Err(Fail::new(
                                "WHMCS_ORDER_NOT_PENDING",
                                format!(
                                    "WHMCS order {whmcs_order_id} is {} and cannot be accepted",
                                    o.status
                                ),
                            )
                            .into());
                        }
                        None => {
                            *whmcs_order = None;
                            return Err(Fail::new(
                                "WHMCS_ORDER_MISSING",
                                format!("WHMCS order {whmcs_order_id} no longer exists"),
                            )
                            .into());
                        }
                    }
                }
                Err(e) => return Err(self.whmcs_fail("AcceptOrder", &e)),
            }
        }
        // Always the last change of a successful drive, and it renews the lease: the write-back
        // that follows relies on it as its lease check.
        self.update(
            id,
            owner,
            &Change {
                state: Some(ledger::state::WHMCS_ACCEPTED),
                renew: Some(LEASE),
                ..Default::default()
            },
        )
        .await?;
        Ok(whmcs_order_id)
    }

    /// Records the WHMCS order (`whmcs_added`) while this run owns the Order, even if its lease
    /// lapsed during the call; `Ok` only when the lease was live and is now renewed, so the
    /// `AcceptOrder` that follows needs no other check.
    async fn record_added(
        &self,
        id: &SalesforceId,
        owner: &str,
        order_id: &u64,
        services: &[u64],
    ) -> Result<(), JobError> {
        let services = services
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let change = Change {
            state: Some(ledger::state::WHMCS_ADDED),
            whmcs_order_id: Some(i64::try_from(*order_id).unwrap_or(i64::MAX)),
            whmcs_service_ids: Some(&services),
            ..Default::default()
        };
        match self
            .ledger
            .update_keeping_lease(id, owner, &change, LEASE)
            .await?
        {
            ledger::LeaseAfter::Live => Ok(()),
            ledger::LeaseAfter::Lapsed => {
                warn!(
                    "lease on the order expired during the WHMCS call; the order id is recorded, stopping before the next side effect"
                );
                Err(JobError::LeaseLost(id.to_string()))
            }
            ledger::LeaseAfter::Lost => Err(JobError::LeaseLost(id.to_string())),
        }
    }

    /// `AddOrder` with reconciliation: any failure that may have reached WHMCS is followed by a
    /// lookup before the next try, so the order is created at most once.
    async fn add_order_once(
        &self,
        id: &SalesforceId,
        owner: &str,
        search: &Search,
        request: &AddOrderRequest,
        mut room: Option<crate::whmcs::Room<'_>>,
    ) -> Result<(u64, Vec<u64>), StepError> {
        let mut attempt = 0;
        // The caller's last change (the `adding` intent) renewed the lease: the first try
        // needs no other check.
        let mut checked = true;
        loop {
            if !std::mem::take(&mut checked) {
                self.ensure_lease(id, owner).await?;
            }
            let call = async {
                match room.take() {
                    Some(room) => self.whmcs.add_order_in(room, request).await,
                    None => self.whmcs.add_order(request).await,
                }
            };
            match steps::record(
                &self.ledger,
                Step::AddOrder,
                Ids::client(&request.client_id),
                call,
            )
            .await
            {
                Ok(r) => return Ok((r.order_id, r.service_ids)),
                Err(e) if e.class() == ErrorClass::Transient => {
                    self.metrics.whmcs_error("AddOrder", &e.code());
                    let running = e.may_still_run();
                    if !running {
                        // WHMCS answered, or the request never left: nothing of this AddOrder
                        // can commit later.
                        self.ledger.add_concluded(id, owner).await?;
                    }
                    if e.kind != crate::whmcs::WhmcsErrorKind::Connect {
                        warn!(attempt, error.code = %e.code(), error.message = %e, "AddOrder outcome unknown; reconciling");
                        if let Some(found) = self.reconcile(id, search).await? {
                            info!(
                                whmcs.order_id = found.id,
                                "found the order AddOrder created"
                            );
                            return Ok((found.id, found.service_ids));
                        }
                    }
                    if running {
                        if let Some(delay) = self
                            .ledger
                            .add_in_doubt(id, self.settings.add_in_doubt_window)
                            .await?
                        {
                            warn!(
                                error.code = %e.code(),
                                wait_ms = delay.as_millis() as u64,
                                "AddOrder may still commit in WHMCS; waiting before looking again"
                            );
                            return Err(JobError::AddInDoubt {
                                order: id.to_string(),
                                delay,
                            }
                            .into());
                        }
                    }
                    attempt += 1;
                    if attempt >= self.settings.max_attempts {
                        // An outage never fails the Order: wait for WHMCS (the re-run looks
                        // the order up first, the ledger holds the `adding` intent).
                        return Err(JobError::Unavailable {
                            dependency: crate::deps::Dependency::Whmcs,
                            message: format!("WHMCS AddOrder kept failing: {e}"),
                        }
                        .into());
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => {
                    // WHMCS answered (a business or configuration error): nothing of this
                    // AddOrder can commit later.
                    self.ledger.add_concluded(id, owner).await?;
                    return Err(self.whmcs_fail("AddOrder", &e));
                }
            }
        }
    }

    /// `AcceptOrder`, looking the order up (`GetOrders id=`) after any failure whose outcome is
    /// unknown before sending it again. The outer result ends the step (lease lost, WHMCS out of
    /// reach for the lookup); the inner one is WHMCS's answer for the caller to judge. Every
    /// try is preceded by a lease check, except the first when `lease_fresh` (the caller's last
    /// ledger change checked and renewed the lease).
    async fn accept_once(
        &self,
        id: &SalesforceId,
        owner: &str,
        whmcs_order_id: u64,
        lease_fresh: bool,
    ) -> Result<Result<(), crate::whmcs::WhmcsError>, StepError> {
        let mut attempt = 0;
        let mut checked = lease_fresh;
        loop {
            if !std::mem::take(&mut checked) {
                self.ensure_lease(id, owner).await?;
            }
            let e = match steps::record(
                &self.ledger,
                Step::AcceptOrder,
                Ids::order(whmcs_order_id),
                self.whmcs.accept_order(whmcs_order_id),
            )
            .await
            {
                Ok(()) => return Ok(Ok(())),
                Err(e) if e.class() == ErrorClass::Transient => e,
                Err(e) => return Ok(Err(e)),
            };
            self.metrics.whmcs_error("AcceptOrder", &e.code());
            attempt += 1;
            if e.kind != crate::whmcs::WhmcsErrorKind::Connect {
                warn!(attempt, error.code = %e.code(), error.message = %e, "AcceptOrder outcome unknown; looking the order up");
                let current = self
                    .retry("get_order", || {
                        steps::record(
                            &self.ledger,
                            Step::GetOrders,
                            Ids::order(whmcs_order_id),
                            self.whmcs.get_order(whmcs_order_id),
                        )
                    })
                    .await
                    .map_err(|e| self.whmcs_fail("GetOrders", &e))?;
                match current {
                    Some(o) if o.status.eq_ignore_ascii_case("Active") => return Ok(Ok(())),
                    // Still Pending (or gone, which the caller's lookup reports): send again.
                    Some(o) if o.status.eq_ignore_ascii_case("Pending") => {}
                    _ => {
                        return Ok(Err(crate::whmcs::WhmcsError {
                            action: "AcceptOrder".into(),
                            kind: crate::whmcs::WhmcsErrorKind::NotPending,
                            message: e.message,
                        }));
                    }
                }
            }
            if attempt >= self.settings.max_attempts {
                return Ok(Err(e));
            }
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// Lines WHMCS provisions in full: unchanged when every quantity is 1 or WHMCS honours
    /// `qty[]` (8.12+); otherwise expanded to lines of quantity 1, or refused
    /// (`WHMCS_QTY_UNSUPPORTED`), as `WHMCS_QUANTITY_MODE` says.
    async fn fit_quantities(&self, lines: Vec<OrderLine>) -> Result<Vec<OrderLine>, StepError> {
        if lines.iter().all(|l| l.qty <= 1) {
            return Ok(lines);
        }
        let version = match self.whmcs.known_version() {
            Some(v) => Some(v),
            None => match self
                .retry("WhmcsDetails", || {
                    steps::record(
                        &self.ledger,
                        Step::WhmcsDetails,
                        Ids::none(),
                        self.whmcs.details(),
                    )
                })
                .await
            {
                Ok(v) => Some(v),
                // The API role may not grant WhmcsDetails, or the answer has no version:
                // assume the old behaviour (never fewer units than ordered).
                Err(e)
                    if e.class() == ErrorClass::Config
                        || e.kind == crate::whmcs::WhmcsErrorKind::BadResponse =>
                {
                    warn!(error.code = %e.code(), error.message = %e, "WHMCS version unknown; treating it as older than 8.12");
                    None
                }
                Err(e) => return Err(self.whmcs_fail("WhmcsDetails", &e)),
            },
        };
        if version
            .as_deref()
            .and_then(crate::whmcs::honours_quantity)
            .unwrap_or(false)
        {
            return Ok(lines);
        }
        let shown = version.as_deref().unwrap_or("of unknown version");
        let units: u32 = lines.iter().map(|l| l.qty.max(1)).sum();
        match self.settings.quantity_mode {
            QuantityMode::Reject => Err(Fail::new(
                "WHMCS_QTY_UNSUPPORTED",
                format!(
                    "WHMCS {shown} ignores order quantities (8.12+ needed) and WHMCS_QUANTITY_MODE=reject"
                ),
            )
            .into()),
            QuantityMode::Expand if units > MAX_EXPANDED_LINES => Err(Fail::new(
                "WHMCS_QTY_UNSUPPORTED",
                format!(
                    "WHMCS {shown} ignores order quantities and {units} units exceed {MAX_EXPANDED_LINES} order lines"
                ),
            )
            .into()),
            QuantityMode::Expand => Ok(expand_quantities(lines)),
        }
    }

    /// Finds the WHMCS order tagged with this Salesforce Order under any of the search's
    /// clients, if any.
    async fn reconcile(
        &self,
        id: &SalesforceId,
        search: &Search,
    ) -> Result<Option<WhmcsOrder>, StepError> {
        let notes = tag(id);
        for client_id in &search.clients {
            let found = self
                .retry("reconcile", || {
                    steps::record(
                        &self.ledger,
                        Step::GetOrders,
                        Ids::client(client_id),
                        self.whmcs
                            .find_order_by_notes(client_id, &notes, search.not_before),
                    )
                })
                .await
                .map_err(|e| self.whmcs_fail("GetOrders", &e))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// A WHMCS failure the step cannot get past: a business answer fails the Order; an outage
    /// (retries spent) or a configuration problem makes the job wait.
    fn whmcs_fail(&self, action: &str, e: &crate::whmcs::WhmcsError) -> StepError {
        self.metrics.whmcs_error(action, &e.code());
        match e.class() {
            ErrorClass::Permanent => Fail::new(&e.code(), format!("WHMCS {action}: {e}")).into(),
            class => {
                if class == ErrorClass::Config {
                    error!(action, error.code = %e.code(), error.message = %e, "WHMCS rejected our credentials or permissions; the job waits");
                }
                JobError::Unavailable {
                    dependency: crate::deps::Dependency::Whmcs,
                    message: format!("WHMCS {action}: {e}"),
                }
                .into()
            }
        }
    }
}

/// The WHMCS order id a write-back carries, for the audit trail.
fn writeback_ids(update: &OrderUpdate) -> Ids<'static> {
    let id = match update {
        OrderUpdate::Activated { whmcs_order_id, .. }
        | OrderUpdate::ActivatedFieldsOnly { whmcs_order_id, .. } => Some(whmcs_order_id),
        OrderUpdate::Failed { whmcs_order_id, .. } => whmcs_order_id.as_ref(),
    };
    Ids {
        client: None,
        order: id.and_then(|s| s.trim().parse().ok()),
    }
}

/// The clients to search and how far back: the current client first, then every client id the
/// ledger saw for this Order (newest first); orders dated before the Order's first attempt less
/// [`RECONCILE_MARGIN`] are not looked at. The first attempt is the earliest of the ledger row's
/// creation, the client history and the event's creation. A ledger row just created by this run
/// proves nothing (its history may be lost): then only the event's time bounds the scan, and
/// without one the scan covers the client's whole history.
fn search_scope(
    job: &ProvisionOrderV1,
    row: &OrderRecord,
    current: &str,
    history: &[(String, i64)],
) -> Search {
    let mut clients = vec![current.to_owned()];
    for c in history
        .iter()
        .rev()
        .map(|(c, _)| c.as_str())
        .chain(row.whmcs_client_id.as_deref())
    {
        if !c.trim().is_empty() && !clients.iter().any(|k| k == c) {
            clients.push(c.to_owned());
        }
    }
    let ledger_knew = row.attempts > 1 || !history.is_empty() || row.whmcs_client_id.is_some();
    let first_attempt_ms = [
        ledger_knew.then_some(row.created_at),
        history.iter().map(|(_, at)| *at).min(),
        (job.event_created_ms > 0).then_some(job.event_created_ms),
    ]
    .into_iter()
    .flatten()
    .min();
    let margin_ms = i64::try_from(RECONCILE_MARGIN.as_millis()).unwrap_or(i64::MAX);
    let not_before = first_attempt_ms
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms.saturating_sub(margin_ms)))
        .map(|t| t.naive_utc());
    Search {
        clients,
        not_before,
    }
}

/// Why the WHMCS steps stopped.
#[derive(Debug)]
enum StepError {
    Fail(Fail),
    Job(JobError),
}

impl From<Fail> for StepError {
    fn from(f: Fail) -> Self {
        StepError::Fail(f)
    }
}

impl From<JobError> for StepError {
    fn from(e: JobError) -> Self {
        StepError::Job(e)
    }
}

impl From<ledger::LedgerError> for StepError {
    fn from(e: ledger::LedgerError) -> Self {
        StepError::Job(e.into())
    }
}

/// Each line of quantity N as N lines of quantity 1, in order.
fn expand_quantities(lines: Vec<OrderLine>) -> Vec<OrderLine> {
    lines
        .into_iter()
        .flat_map(|l| {
            let n = l.qty.max(1) as usize;
            std::iter::repeat_n(OrderLine { qty: 1, ..l }, n)
        })
        .collect()
}

/// Maps the Order's items to WHMCS order lines; a missing mapping is a precise failure.
fn order_lines(order: &SfOrder) -> Result<Vec<OrderLine>, Fail> {
    if order.items.is_empty() {
        return Err(Fail::new(
            "ORDER_HAS_NO_ITEMS",
            "The Order has no Order Products",
        ));
    }
    order
        .items
        .iter()
        .map(|item| {
            let pid = item
                .whmcs_product_id
                .clone()
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| {
                    Fail::new(
                        "MAPPING_PRODUCT_MISSING",
                        format!("Order Product {} has no WHMCS product id", item.id),
                    )
                })?;
            let billing_cycle = item
                .billing_cycle
                .clone()
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    Fail::new(
                        "MAPPING_BILLING_CYCLE_MISSING",
                        format!("Order Product {} has no WHMCS billing cycle", item.id),
                    )
                })?
                .to_ascii_lowercase();
            if item.quantity < 1.0 || item.quantity.fract() != 0.0 || item.quantity > 10_000.0 {
                return Err(Fail::new(
                    "INVALID_QUANTITY",
                    format!("Order Product {} has quantity {}", item.id, item.quantity),
                ));
            }
            Ok(OrderLine {
                pid,
                billing_cycle,
                qty: item.quantity as u32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(event_created_ms: i64) -> ProvisionOrderV1 {
        ProvisionOrderV1 {
            event_id: "e".into(),
            replay_id: None,
            order_id: "801000000000001AAA".into(),
            idem_key: None,
            correlation_id: "c".into(),
            event_created_ms,
            source: JobSource::Event,
        }
    }

    fn row(attempts: i64, created_at: i64, client: Option<&str>) -> OrderRecord {
        OrderRecord {
            sf_order_id: "801000000000001AAA".into(),
            state: ledger::state::NEW.into(),
            outcome: None,
            account_id: None,
            whmcs_client_id: client.map(str::to_owned),
            whmcs_order_id: None,
            whmcs_service_ids: None,
            error_code: None,
            error_message: None,
            sf_status: None,
            last_event_id: None,
            correlation_id: None,
            attempts,
            created_at,
            updated_at: created_at,
        }
    }

    fn ms(t: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(t)
            .expect("time")
            .timestamp_millis()
    }

    #[test]
    fn a_run_is_first_only_if_the_queue_never_started_it() {
        let first = Execution {
            queue_attempt: 1,
            runs: 1,
        };
        assert!(first.is_first());
        assert!(!Execution { runs: 2, ..first }.is_first(), "orphan re-run");
        assert!(
            !Execution {
                queue_attempt: 2,
                ..first
            }
            .is_first(),
            "retry after an error"
        );
    }

    #[test]
    fn search_covers_every_client_and_starts_a_day_before_the_first_attempt() {
        let history = vec![
            ("7".to_owned(), ms("2026-05-02T10:00:00Z")),
            ("9".to_owned(), ms("2026-05-03T10:00:00Z")),
        ];
        let s = search_scope(
            &job(ms("2026-05-04T00:00:00Z")),
            &row(3, ms("2026-05-01T12:00:00Z"), Some("9")),
            "11",
            &history,
        );
        assert_eq!(
            s.clients,
            ["11", "9", "7"],
            "current first, then newest to oldest, once each"
        );
        assert_eq!(
            s.not_before.map(|t| t.to_string()).as_deref(),
            Some("2026-04-30 12:00:00"),
            "the ledger row's creation less a day"
        );

        // A row this run just created proves nothing: only the event bounds the scan …
        let s = search_scope(
            &job(ms("2026-05-04T00:00:00Z")),
            &row(1, ms("2026-06-01T00:00:00Z"), None),
            "11",
            &[],
        );
        assert_eq!(s.clients, ["11"]);
        assert_eq!(
            s.not_before.map(|t| t.to_string()).as_deref(),
            Some("2026-05-03 00:00:00")
        );
        // … and without an event time the whole history is scanned.
        let s = search_scope(
            &job(0),
            &row(1, ms("2026-06-01T00:00:00Z"), None),
            "11",
            &[],
        );
        assert_eq!(s.not_before, None);
    }
}
