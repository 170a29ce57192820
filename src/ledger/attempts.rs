//! The `attempts` table: the history of every attempt on an Order, for operators and for the
//! failure-rate alert.

use sqlx::{FromRow, Row};

use super::{Arg, AttemptRecord, Backend, Change, Ledger, Result, outcome};
use crate::ids::SalesforceId;

impl Ledger {
    /// Opens an attempt and applies `c` (while `owner` holds the lease) in one transaction: both
    /// or neither. `None` when the lease was lost (nothing written). `first_claim`: the lease
    /// was the Order's first ever (its row's `attempts` is 1), so no earlier attempt can be
    /// open and none is looked for.
    pub async fn begin_attempt(
        &self,
        order: &SalesforceId,
        owner: &str,
        event_id: Option<&str>,
        c: &Change<'_>,
        first_claim: bool,
    ) -> Result<Option<i64>> {
        let now = self.db_now();
        let u = Self::order_update(now, order, owner, c, None);
        let n = u.args.len();
        let mut args = u.args;
        // The attempt is inserted only if the change applied.
        let insert = format!(
            "INSERT INTO attempts (sf_order_id, event_id, started_at) SELECT $1, ${}, {now}",
            n + 1
        );
        args.push(Arg::OptText(event_id));
        // An attempt still open belongs to a run that no longer holds the lease (we do): its
        // process stopped, or it lost the lease and stops before its next side effect.
        let abandon = (!first_claim).then(|| {
            args.extend([
                Arg::Text(outcome::ABANDONED),
                Arg::Text("ABANDONED"),
                Arg::Text(
                    "the run stopped without finishing (its process ended, or its lease expired)",
                ),
            ]);
            format!(
                "UPDATE attempts SET finished_at = {now}, outcome = ${}, error_code = ${}, \
                 error_message = ${} WHERE sf_order_id = $1 AND finished_at IS NULL",
                n + 2,
                n + 3,
                n + 4
            )
        });
        let sql = match self.backend {
            // Open attempts are closed first, for the lease's owner only, so that `changes()`
            // before the insert is the change's.
            Backend::Sqlite => {
                let mut sql = abandon
                    .map(|a| {
                        format!(
                            "{a} AND EXISTS (SELECT 1 FROM orders WHERE sf_order_id = $1 \
                             AND lease_owner = $2); "
                        )
                    })
                    .unwrap_or_default();
                sql.push_str(&format!(
                    "{}; {insert} WHERE changes() > 0 RETURNING id",
                    u.sql
                ));
                sql
            }
            Backend::Postgres => format!(
                "WITH u AS ({} RETURNING 1){} {insert} WHERE EXISTS (SELECT 1 FROM u) RETURNING id",
                u.sql,
                abandon
                    .map(|a| format!(", a AS ({a} AND EXISTS (SELECT 1 FROM u))"))
                    .unwrap_or_default()
            ),
        };
        let rows = self.one_trip(&sql, &args).await?;
        let Some(row) = rows.first() else {
            // Lease lost: no attempt is recorded either.
            return Ok(None);
        };
        let attempt: i64 = row.try_get("id")?;
        self.changes.changed(order.as_str());
        Ok(Some(attempt))
    }

    /// Applies the job's last change `c` and, if the lease was still held, closes the attempt,
    /// in one transaction. `false` when the lease was lost (nothing written).
    pub async fn end_attempt(
        &self,
        order: &SalesforceId,
        owner: &str,
        c: &Change<'_>,
        attempt_id: i64,
        outcome: &str,
        error: Option<(&str, &str)>,
    ) -> Result<bool> {
        let now = self.db_now();
        let u = Self::order_update(now, order, owner, c, None);
        let n = u.args.len();
        // The attempt is closed only if the change applied; the change's `RETURNING` says
        // whether it did.
        let close = format!(
            "UPDATE attempts SET finished_at = {now}, outcome = ${}, error_code = ${}, \
             error_message = ${} WHERE id = ${}",
            n + 1,
            n + 2,
            n + 3,
            n + 4
        );
        let sql = self.change_then(&u.sql, |applied| format!("{close} AND {applied}"));
        let mut args = u.args;
        args.extend([
            Arg::Text(outcome),
            Arg::OptText(error.map(|e| e.0)),
            Arg::OptText(error.map(|e| e.1)),
            Arg::Int(attempt_id),
        ]);
        if self.one_trip(&sql, &args).await?.is_empty() {
            return Ok(false);
        }
        self.changes.changed(order.as_str());
        Ok(true)
    }

    /// Opens an attempt in the Order's history.
    pub async fn start_attempt(&self, order: &SalesforceId, event_id: Option<&str>) -> Result<i64> {
        let mut conn = self.writer().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO attempts (sf_order_id, event_id, started_at) VALUES ($1, $2, {}) \
             RETURNING id",
            self.db_now()
        ))
        .bind(order.as_str())
        .bind(event_id)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Closes an attempt with its outcome.
    pub async fn finish_attempt(
        &self,
        attempt_id: i64,
        outcome: &str,
        error: Option<(&str, &str)>,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query(&format!(
            "UPDATE attempts SET finished_at = {}, outcome = $2, error_code = $3, \
             error_message = $4 WHERE id = $1",
            self.db_now()
        ))
        .bind(attempt_id)
        .bind(outcome)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// An Order's attempt history, oldest first.
    pub async fn attempts(&self, order: &SalesforceId) -> Result<Vec<AttemptRecord>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query(
            "SELECT id, event_id, started_at, finished_at, outcome, error_code, error_message \
             FROM attempts WHERE sf_order_id = $1 ORDER BY id",
        )
        .bind(order.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| AttemptRecord::from_row(r).map_err(Into::into))
            .collect()
    }

    /// Attempts finished in the last `window` (database clock), split into (failed, total), for
    /// the failure-rate alert.
    pub async fn outcome_counts_within(&self, window: std::time::Duration) -> Result<(i64, i64)> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(&format!(
            "SELECT COALESCE(SUM(CASE WHEN outcome = $2 THEN 1 ELSE 0 END), 0) AS failed, \
             COUNT(*) AS total FROM attempts WHERE finished_at >= {} - $1 AND outcome IN ($2, $3)",
            self.db_now()
        ))
        .bind(super::millis(window))
        .bind(outcome::FAILED)
        .bind(outcome::PROVISIONED)
        .fetch_one(&mut *conn)
        .await?;
        Ok((row.try_get("failed")?, row.try_get("total")?))
    }

    /// Finished attempts of the last `window_ms` (database clock) per minute: how many were
    /// provisioned, how many failed, and the time from the activation event's arrival to the
    /// attempt's end (the write-back) for those that came from an event. Returns the database's
    /// current time with the minutes that had any, oldest first.
    pub async fn minute_series(&self, window_ms: i64) -> Result<(i64, Vec<MinuteRow>)> {
        let at = self.clock_ms().await?;
        let mut conn = self.reader().await?;
        let rows = sqlx::query(
            "SELECT a.finished_at / 60000 AS minute, \
             CAST(SUM(CASE WHEN a.outcome = $2 THEN 1 ELSE 0 END) AS BIGINT) AS provisioned, \
             CAST(SUM(CASE WHEN a.outcome = $3 THEN 1 ELSE 0 END) AS BIGINT) AS failed, \
             CAST(COALESCE(SUM(a.finished_at - i.received_at), 0) AS BIGINT) AS latency_sum, \
             COUNT(i.received_at) AS latency_n \
             FROM attempts a LEFT JOIN event_inbox i ON i.event_id = a.event_id \
             WHERE a.finished_at >= $1 AND a.outcome IN ($2, $3) \
             GROUP BY a.finished_at / 60000 ORDER BY a.finished_at / 60000",
        )
        .bind(at - window_ms)
        .bind(outcome::PROVISIONED)
        .bind(outcome::FAILED)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(MinuteRow {
                minute_ms: r.try_get::<i64, _>("minute")? * 60_000,
                provisioned: r.try_get("provisioned")?,
                failed: r.try_get("failed")?,
                latency_sum_ms: r.try_get("latency_sum")?,
                latency_n: r.try_get("latency_n")?,
            });
        }
        Ok((at, out))
    }
}

/// One minute of finished attempts (see [`Ledger::minute_series`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MinuteRow {
    /// Start of the minute, epoch milliseconds (database clock).
    pub minute_ms: i64,
    pub provisioned: i64,
    pub failed: i64,
    /// Sum of event-arrival-to-write-back times of the attempts that came from an event.
    pub latency_sum_ms: i64,
    pub latency_n: i64,
}
