//! The audit trail: `order_steps` (one row per external call of a provisioning job, pruned after
//! the retention) and `operator_actions` (one row per bulk operator command).
//!
//! Invariants:
//! - Steps of running jobs are queued ([`Ledger::queue_step`], never waiting) to one writer task
//!   per ledger, which inserts them in multi-row `INSERT`s (one trip to the database per batch,
//!   at most [`STEP_BATCH`] rows): after the first step of a batch it gathers others for up to
//!   [`STEP_GATHER`], so jobs running side by side share statements even when their calls are
//!   slow. At most [`STEP_QUEUE`] steps wait; beyond that a step is dropped and counted, never
//!   the job slowed. [`Ledger::flush_steps`] writes what is queued at once (before the daemon
//!   exits).
//! - A step's start time is on the database's clock: one reading of it (refreshed every
//!   [`STEP_CLOCK_REFRESH`]) paired with this process's monotonic clock dates every step, so
//!   every replica's rows share one clock, pruning compares like with like, and a job's
//!   sequential steps never appear out of order by rounding.
//! - Error texts are stored as the clients produced them (already redacted), cut to
//!   [`ERROR_TEXT_MAX`] characters; no request body is ever stored.
//! - Pruning deletes in batches of [`PRUNE_BATCH`] rows, so it never holds the writer for long.

use sqlx::{FromRow, Row};

use super::{Ledger, Result};
use crate::ids::SalesforceId;

/// Longest error text kept per step.
pub const ERROR_TEXT_MAX: usize = 1000;
/// Rows deleted per pruning statement.
pub const PRUNE_BATCH: i64 = 5000;
/// Most steps inserted by one statement (SQLite looks parameter names up linearly, so a
/// statement's binding cost grows with the square of its parameters: 20 rows is 220).
pub const STEP_BATCH: usize = 20;
/// Most steps waiting for the writer.
pub const STEP_QUEUE: usize = 10_000;
/// How long the writer waits for more steps to share a statement with the first one it got
/// (unless a full batch is already there, or a flush is asked for).
pub const STEP_GATHER: std::time::Duration = std::time::Duration::from_millis(50);
/// The insert of a batch of steps, up to its `VALUES` rows.
const STEP_INSERT: &str = "INSERT INTO order_steps (sf_order_id, job_id, attempt_id, step, \
     started_at, duration_ms, outcome, error_code, error_message, whmcs_client_id, \
     whmcs_order_id) VALUES ";
/// Columns of [`STEP_INSERT`]: one placeholder each per step.
const STEP_COLUMNS: usize = 11;
/// Longest [`Ledger::flush_steps`] waits for the writer.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the writer task receives.
#[derive(Debug)]
enum StepMsg {
    Row(StepRow),
    /// Write what is queued now, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A step of a running job, queued for the writer ([`Ledger::queue_step`]).
#[derive(Debug, Clone)]
pub struct StepRow {
    pub order: String,
    pub job_id: Option<String>,
    pub attempt_id: Option<i64>,
    pub step: &'static str,
    /// When the step started (this process's monotonic clock).
    pub started: std::time::Instant,
    pub duration_ms: i64,
    pub outcome: &'static str,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub whmcs_client_id: Option<String>,
    pub whmcs_order_id: Option<i64>,
}

impl StepRow {
    fn borrowed(&self) -> NewStep<'_> {
        NewStep {
            order: &self.order,
            job_id: self.job_id.as_deref(),
            attempt_id: self.attempt_id,
            step: self.step,
            started: self.started,
            duration_ms: self.duration_ms,
            outcome: self.outcome,
            error_code: self.error_code.as_deref(),
            error_message: self.error_message.as_deref(),
            whmcs_client_id: self.whmcs_client_id.as_deref(),
            whmcs_order_id: self.whmcs_order_id,
        }
    }
}

/// How long one reading of the database's clock dates steps.
pub const STEP_CLOCK_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// The queue of steps waiting for a ledger's writer task.
#[derive(Debug, Default)]
pub(super) struct StepQueue {
    tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<StepMsg>>,
    dropped: std::sync::atomic::AtomicU64,
    /// The last reading of the database's clock ([`Ledger::step_clock`]).
    clock: std::sync::Mutex<Option<(std::time::Instant, i64)>>,
}

/// `started` on the database's clock, given that the database read `anchor_ms` at `anchor`.
/// One reading dates every step it covers, so a job's sequential steps keep their order.
fn on_database_clock(
    anchor: std::time::Instant,
    anchor_ms: i64,
    started: std::time::Instant,
) -> i64 {
    match started.checked_duration_since(anchor) {
        Some(after) => anchor_ms.saturating_add(super::millis(after)),
        None => anchor_ms.saturating_sub(super::millis(anchor.duration_since(started))),
    }
}

/// One external step of a provisioning job, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, FromRow)]
pub struct StepRecord {
    pub id: i64,
    pub job_id: Option<String>,
    pub attempt_id: Option<i64>,
    pub step: String,
    /// Epoch milliseconds, database clock.
    pub started_at: i64,
    pub duration_ms: i64,
    /// `ok`, or the error class: `transient`, `permanent`, `config`.
    pub outcome: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub whmcs_client_id: Option<String>,
    pub whmcs_order_id: Option<i64>,
}

/// A step to record.
#[derive(Debug, Clone)]
pub struct NewStep<'a> {
    pub order: &'a str,
    pub job_id: Option<&'a str>,
    pub attempt_id: Option<i64>,
    pub step: &'a str,
    /// When the step started (this process's monotonic clock).
    pub started: std::time::Instant,
    pub duration_ms: i64,
    pub outcome: &'a str,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub whmcs_client_id: Option<&'a str>,
    pub whmcs_order_id: Option<i64>,
}

/// One operator action, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, FromRow)]
pub struct OperatorAction {
    pub id: i64,
    pub action: String,
    pub operator: String,
    /// The command's filter (JSON text).
    pub filter: String,
    pub count: i64,
    /// Per-Order results (JSON text).
    pub detail: Option<String>,
    /// Epoch milliseconds, database clock.
    pub created_at: i64,
}

fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Ledger {
    /// Records one step now (one `INSERT`).
    pub async fn record_step(&self, s: &NewStep<'_>) -> Result<()> {
        self.record_steps(std::slice::from_ref(s)).await
    }

    /// Records steps in one multi-row `INSERT`.
    pub async fn record_steps(&self, steps: &[NewStep<'_>]) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let (anchor, anchor_ms) = self.step_clock().await?;
        let sql = step_insert_sql(steps.len());
        let mut conn = self.writer().await?;
        let mut q = sqlx::query(&sql);
        for s in steps {
            q = q
                .bind(s.order)
                .bind(s.job_id)
                .bind(s.attempt_id)
                .bind(s.step)
                .bind(on_database_clock(anchor, anchor_ms, s.started))
                .bind(s.duration_ms.max(0))
                .bind(s.outcome)
                .bind(s.error_code)
                .bind(s.error_message.map(|m| cut(m, ERROR_TEXT_MAX)))
                .bind(s.whmcs_client_id)
                .bind(s.whmcs_order_id);
        }
        q.execute(&mut *conn).await?;
        Ok(())
    }

    /// An instant of this process and the database's clock at that instant, read again once
    /// [`STEP_CLOCK_REFRESH`] has passed.
    async fn step_clock(&self) -> Result<(std::time::Instant, i64)> {
        let cached = *self.steps.clock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, ms)) = cached {
            if at.elapsed() < STEP_CLOCK_REFRESH {
                return Ok((at, ms));
            }
        }
        let before = std::time::Instant::now();
        let ms = self.clock_ms().await?;
        // The database read its clock somewhere during the round trip: take its middle.
        let at = before + before.elapsed() / 2;
        *self.steps.clock.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, ms));
        Ok((at, ms))
    }

    /// Queues a step of a running job for this ledger's writer task (started on first use);
    /// never waits. `false` when the queue was full and the step was dropped.
    pub fn queue_step(&self, row: StepRow) -> bool {
        let tx = self.steps.tx.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(STEP_QUEUE);
            tokio::spawn(write_steps(self.clone(), rx));
            tx
        });
        match tx.try_send(StepMsg::Row(row)) {
            Ok(()) => true,
            Err(_) => {
                let n = self
                    .steps
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n + 1,
                        "audit trail queue full: steps dropped (the ledger is not keeping up)"
                    );
                }
                false
            }
        }
    }

    /// Waits (at most 5 s) until every step queued so far is written; at once when no step was
    /// ever queued. Called before the daemon exits, so the last jobs' steps are kept.
    pub async fn flush_steps(&self) {
        let Some(tx) = self.steps.tx.get() else {
            return;
        };
        let (done, written) = tokio::sync::oneshot::channel();
        let sent = tokio::time::timeout(FLUSH_TIMEOUT, async {
            tx.send(StepMsg::Flush(done)).await.is_ok() && written.await.is_ok()
        });
        if !matches!(sent.await, Ok(true)) {
            tracing::warn!("audit trail: queued steps not all written before stopping");
        }
    }

    /// An Order's steps, oldest first.
    pub async fn steps(&self, order: &SalesforceId) -> Result<Vec<StepRecord>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query(
            "SELECT id, job_id, attempt_id, step, started_at, duration_ms, outcome, error_code, \
             error_message, whmcs_client_id, whmcs_order_id FROM order_steps \
             WHERE sf_order_id = $1 ORDER BY started_at, id",
        )
        .bind(order.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| StepRecord::from_row(r).map_err(Into::into))
            .collect()
    }

    /// Deletes the steps that started more than `retention_days` ago on the database's clock;
    /// returns how many were deleted.
    pub async fn prune_steps(&self, retention_days: u32) -> Result<u64> {
        let now = self.db_now();
        let sql = format!(
            "DELETE FROM order_steps WHERE id IN (SELECT id FROM order_steps \
             WHERE started_at < {now} - $1 ORDER BY started_at LIMIT $2)"
        );
        let window_ms = i64::from(retention_days) * 86_400_000;
        let mut total = 0;
        loop {
            let n = {
                let mut conn = self.writer().await?;
                sqlx::query(&sql)
                    .bind(window_ms)
                    .bind(PRUNE_BATCH)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
            };
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Records an operator action; returns its id.
    pub async fn record_operator_action(
        &self,
        action: &str,
        operator: &str,
        filter: &str,
        count: i64,
        detail: Option<&str>,
    ) -> Result<i64> {
        let now = self.db_now();
        let sql = format!(
            "INSERT INTO operator_actions (action, operator, filter, count, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, {now}) RETURNING id"
        );
        let mut conn = self.writer().await?;
        let row = sqlx::query(&sql)
            .bind(action)
            .bind(operator)
            .bind(filter)
            .bind(count)
            .bind(detail)
            .fetch_one(&mut *conn)
            .await?;
        Ok(row.try_get("id")?)
    }

    /// The most recent operator actions, newest first.
    pub async fn operator_actions(&self, limit: i64) -> Result<Vec<OperatorAction>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query(
            "SELECT id, action, operator, filter, count, detail, created_at \
             FROM operator_actions ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| OperatorAction::from_row(r).map_err(Into::into))
            .collect()
    }
}

/// [`STEP_INSERT`] with `rows` rows of numbered placeholders, written into one string.
fn step_insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(STEP_INSERT.len() + rows * 64);
    sql.push_str(STEP_INSERT);
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        super::push_placeholders(&mut sql, i * STEP_COLUMNS + 1, STEP_COLUMNS);
        sql.push(')');
    }
    sql
}

/// The writer task of a ledger's step queue: inserts whatever has queued up (gathering for up
/// to [`STEP_GATHER`] after the first step), until every sender is gone.
async fn write_steps(ledger: Ledger, mut rx: tokio::sync::mpsc::Receiver<StepMsg>) {
    let flush = |m: &StepMsg| matches!(m, StepMsg::Flush(_));
    let mut batch = Vec::with_capacity(STEP_BATCH);
    while rx.recv_many(&mut batch, STEP_BATCH).await > 0 {
        let until = tokio::time::Instant::now() + STEP_GATHER;
        while batch.len() < STEP_BATCH && !batch.iter().any(flush) {
            let room = STEP_BATCH - batch.len();
            let more = rx.recv_many(&mut batch, room);
            match tokio::time::timeout_at(until, more).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let rows: Vec<NewStep<'_>> = batch
            .iter()
            .filter_map(|m| match m {
                StepMsg::Row(r) => Some(r.borrowed()),
                StepMsg::Flush(_) => None,
            })
            .collect();
        if !rows.is_empty() {
            if let Err(e) = ledger.record_steps(&rows).await {
                tracing::warn!(steps = rows.len(), error.message = %e, "cannot record steps in the audit trail");
            }
        }
        drop(rows);
        for m in batch.drain(..) {
            if let StepMsg::Flush(done) = m {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;

    /// A successful step of job `j`, attempt 1, started now.
    fn queued(order: &SalesforceId, step: &'static str) -> StepRow {
        StepRow {
            order: order.as_str().to_owned(),
            job_id: Some("j".into()),
            attempt_id: Some(1),
            step,
            started: std::time::Instant::now(),
            duration_ms: 1,
            outcome: "ok",
            error_code: None,
            error_message: None,
            whmcs_client_id: None,
            whmcs_order_id: None,
        }
    }

    #[test]
    fn a_batch_insert_numbers_each_rows_placeholders() {
        let sql = step_insert_sql(2);
        assert!(sql.starts_with("INSERT INTO order_steps (sf_order_id, job_id, "));
        assert!(
            sql.ends_with(
                "whmcs_order_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11), \
                 ($12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
            ),
            "{sql}"
        );
        assert!(
            step_insert_sql(1).ends_with("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        );
    }

    #[test]
    fn one_clock_reading_keeps_sequential_steps_in_order() {
        let anchor = std::time::Instant::now();
        let at = |us: i64| {
            if us >= 0 {
                anchor + std::time::Duration::from_micros(us.unsigned_abs())
            } else {
                anchor - std::time::Duration::from_micros(us.unsigned_abs())
            }
        };
        assert_eq!(on_database_clock(anchor, 1_000_000, anchor), 1_000_000);
        assert_eq!(on_database_clock(anchor, 1_000_000, at(-2_500)), 999_998);
        assert_eq!(on_database_clock(anchor, 1_000_000, at(2_500)), 1_000_002);
        // Steps a fraction of a millisecond apart, on both sides of the reading.
        let mut last = i64::MIN;
        for us in (-5_000..5_000).step_by(137) {
            let t = on_database_clock(anchor, 1_000_000, at(us));
            assert!(t >= last, "{us} µs: {t} < {last}");
            last = t;
        }
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[tokio::test]
    async fn steps_are_read_in_order_and_pruned_by_database_time() {
        let l = Ledger::open(&DatabaseConfig {
            url: "sqlite::memory:".into(),
            auto_migrate: true,
            max_connections: 1,
        })
        .await
        .expect("ledger");
        let id = SalesforceId::synthesize("801", 3);
        for (step, ago) in [("write_back", 10), ("read_order", 500)] {
            let started = std::time::Instant::now()
                .checked_sub(std::time::Duration::from_millis(ago))
                .expect("instant");
            l.record_step(&NewStep {
                order: id.as_str(),
                job_id: Some("j"),
                attempt_id: None,
                step,
                started,
                duration_ms: 3,
                outcome: "ok",
                error_code: None,
                error_message: None,
                whmcs_client_id: None,
                whmcs_order_id: None,
            })
            .await
            .expect("record");
        }
        let steps = l.steps(&id).await.expect("steps");
        assert_eq!(
            steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(),
            ["read_order", "write_back"]
        );
        assert_eq!(l.prune_steps(1).await.expect("prune"), 0);
        sqlx::query("UPDATE order_steps SET started_at = started_at - 2 * 86400000 WHERE step = 'read_order'")
            .execute(l.pool())
            .await
            .expect("age");
        assert_eq!(l.prune_steps(1).await.expect("prune"), 1);
        assert_eq!(l.steps(&id).await.expect("steps").len(), 1);
    }

    #[tokio::test]
    async fn queued_steps_are_all_written_in_batches() {
        let l = Ledger::open(&DatabaseConfig {
            url: "sqlite::memory:".into(),
            auto_migrate: true,
            max_connections: 1,
        })
        .await
        .expect("ledger");
        let id = SalesforceId::synthesize("801", 4);
        // More than one statement's worth, queued at once.
        for n in 0..(STEP_BATCH * 2 + 17) {
            assert!(l.queue_step(StepRow {
                job_id: Some(format!("job-{n}")),
                whmcs_client_id: Some("7".into()),
                whmcs_order_id: Some(i64::try_from(n).expect("n")),
                ..queued(&id, "add_order")
            }));
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let steps = l.steps(&id).await.expect("steps");
            if steps.len() == STEP_BATCH * 2 + 17 {
                let mut ids: Vec<i64> = steps.iter().filter_map(|s| s.whmcs_order_id).collect();
                ids.sort_unstable();
                assert_eq!(
                    ids,
                    (0..i64::try_from(STEP_BATCH * 2 + 17).expect("n")).collect::<Vec<_>>()
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of the queued steps written",
                steps.len()
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A flush writes what is queued at once (the writer would otherwise gather for
    /// `STEP_GATHER` first), so steps queued before a shutdown are kept.
    #[tokio::test]
    async fn a_flush_writes_queued_steps_without_waiting_for_more() {
        let l = Ledger::open(&DatabaseConfig {
            url: "sqlite::memory:".into(),
            auto_migrate: true,
            max_connections: 1,
        })
        .await
        .expect("ledger");
        l.flush_steps().await;
        let id = SalesforceId::synthesize("801", 5);
        for step in ["read_order", "add_order", "accept_order"] {
            assert!(l.queue_step(queued(&id, step)));
        }
        l.flush_steps().await;
        assert_eq!(l.steps(&id).await.expect("steps").len(), 3);
    }
}
