//! The per-step audit trail of a provisioning job: every external call (the Order read, `AddOrder`,
//! `AcceptOrder`, `GetOrders`, `WhmcsDetails`, the write-back) is timed and recorded in the
//! ledger's `order_steps` with the Order, the job, the attempt, the outcome (`ok` or the error
//! class), the WHMCS ids involved and the error text.
//!
//! Invariants:
//! - The job's identity travels in a task-local scope ([`scope`], opened around one job run), so
//!   the provisioning code marks a call with one wrapper ([`record`]) and nothing else; calls made outside a job (order-status lookups, `check`) are not recorded.
//! - Recording never slows or fails the job: the step is queued to the ledger's audit writer
//!   ([`Ledger::queue_step`], which batches concurrent jobs' steps into one `INSERT`); a full
//!   queue or a failed insert is logged, never returned.
//! - Only what the clients already put in their errors is stored (their texts are redacted);
//!   request bodies are never recorded.

use std::{cell::Cell, future::Future, time::Instant};

use crate::{
    error::{Classify, ErrorClass},
    ledger::{Ledger, StepRow},
    queue::ProvisionOrderV1,
    salesforce::rest::SfOrder,
    whmcs::{AddOrderResult, WhmcsOrder},
};

/// The external steps a job records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The Order read (one SOQL).
    ReadOrder,
    AddOrder,
    AcceptOrder,
    /// A `GetOrders` lookup (reconciliation by notes tag, or one order by id).
    GetOrders,
    WhmcsDetails,
    /// The write-back PATCH.
    WriteBack,
}

impl Step {
    /// The name stored in `order_steps.step`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReadOrder => "read_order",
            Self::AddOrder => "add_order",
            Self::AcceptOrder => "accept_order",
            Self::GetOrders => "get_orders",
            Self::WhmcsDetails => "whmcs_details",
            Self::WriteBack => "write_back",
        }
    }
}

/// WHMCS ids a step is known to involve before it runs.
#[derive(Debug, Clone, Default)]
pub struct Ids<'a> {
    pub client: Option<&'a str>,
    pub order: Option<u64>,
}

impl<'a> Ids<'a> {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn client(client: &'a str) -> Self {
        Self {
            client: Some(client),
            order: None,
        }
    }

    pub fn order(order: u64) -> Self {
        Self {
            client: None,
            order: Some(order),
        }
    }
}

/// WHMCS ids a step's result reveals.
pub trait StepResult {
    /// `(client id, order id)`.
    fn whmcs_ids(&self) -> (Option<String>, Option<u64>) {
        (None, None)
    }
}

impl StepResult for () {}
impl StepResult for String {}

impl StepResult for Option<SfOrder> {
    fn whmcs_ids(&self) -> (Option<String>, Option<u64>) {
        match self {
            Some(o) => (
                o.whmcs_client_id.clone(),
                o.whmcs_order_id
                    .as_deref()
                    .and_then(|s| s.trim().parse().ok()),
            ),
            None => (None, None),
        }
    }
}

impl StepResult for AddOrderResult {
    fn whmcs_ids(&self) -> (Option<String>, Option<u64>) {
        (None, Some(self.order_id))
    }
}

impl StepResult for Option<WhmcsOrder> {
    fn whmcs_ids(&self) -> (Option<String>, Option<u64>) {
        match self {
            Some(o) => (Some(o.user_id.to_string()), Some(o.id)),
            None => (None, None),
        }
    }
}

/// The job a task is running.
struct JobScope {
    order: String,
    job_id: String,
    attempt: Cell<Option<i64>>,
}

tokio::task_local! {
    static CURRENT: JobScope;
}

/// Runs `f` (one run of `job`) with its steps attributed to the job.
pub async fn scope<F: Future>(job: &ProvisionOrderV1, f: F) -> F::Output {
    CURRENT
        .scope(
            JobScope {
                order: job.order_id.clone(),
                job_id: job.event_id.clone(),
                attempt: Cell::new(None),
            },
            f,
        )
        .await
}

/// Attributes the job's following steps to ledger attempt `id`.
pub fn set_attempt(id: i64) {
    let _ = CURRENT.try_with(|s| s.attempt.set(Some(id)));
}

/// `ok`, or the error class.
fn outcome_name(class: Option<ErrorClass>) -> &'static str {
    match class {
        None => "ok",
        Some(ErrorClass::Transient) => "transient",
        Some(ErrorClass::Permanent) => "permanent",
        Some(ErrorClass::Config) => "config",
    }
}

/// Runs one external call and records it in `ledger` as `step` of the current job (see the
/// module documentation); `ids` are the WHMCS ids known before the call.
pub async fn record<T, E, Fut>(ledger: &Ledger, step: Step, ids: Ids<'_>, call: Fut) -> Result<T, E>
where
    T: StepResult,
    E: Classify + std::fmt::Display,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let result = call.await;
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let Ok((order, job_id, attempt_id)) =
        CURRENT.try_with(|s| (s.order.clone(), s.job_id.clone(), s.attempt.get()))
    else {
        return result;
    };
    let (found_client, found_order) = match &result {
        Ok(v) => v.whmcs_ids(),
        Err(_) => (None, None),
    };
    let (class, code, message) = match &result {
        Ok(_) => (None, None, None),
        Err(e) => (Some(e.class()), Some(e.code()), Some(e.to_string())),
    };
    let whmcs_client_id = ids.client.map(str::to_owned).or(found_client);
    let whmcs_order_id = ids
        .order
        .or(found_order)
        .and_then(|v| i64::try_from(v).ok());
    ledger.queue_step(StepRow {
        order,
        job_id: Some(job_id),
        attempt_id,
        step: step.as_str(),
        started,
        duration_ms,
        outcome: outcome_name(class),
        error_code: code,
        error_message: message,
        whmcs_client_id,
        whmcs_order_id,
    });
    result
}
