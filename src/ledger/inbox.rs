//! The event inbox: every event id the subscriber enqueued (or kept as poison), so that a
//! redelivered event is never enqueued twice.
//!
//! Invariant: a batch's inbox rows are written in the same transaction as the cursor, after
//! the batch's jobs are in Redis.

use std::collections::BTreeMap;

use sqlx::{Connection, Row};

use super::{Ledger, LedgerError, PoisonEntry, Result};
use crate::ids::SalesforceId;

impl Ledger {
    /// Which of these event ids the inbox already holds.
    pub async fn seen_events(&self, event_ids: &[&str]) -> Result<Vec<String>> {
        let mut conn = self.reader().await?;
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT event_id FROM event_inbox WHERE event_id IN ({})",
            super::placeholders(1, event_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in event_ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("event_id").map_err(Into::into))
            .collect()
    }

    /// Records a batch of handled events in the inbox and advances the cursor, atomically.
    /// Call only after their jobs are durably in the queue.
    pub async fn record_events(
        &self,
        channel: &str,
        events: &[InboxEntry<'_>],
        cursor: &[u8],
        fencing_token: i64,
    ) -> Result<()> {
        self.record_events_with_poison(channel, events, &[], cursor, fencing_token)
            .await
    }

    /// [`Ledger::record_events`], keeping the batch's poison events as dead letters in the same
    /// transaction.
    pub async fn record_events_with_poison(
        &self,
        channel: &str,
        events: &[InboxEntry<'_>],
        poison: &[PoisonEntry<'_>],
        cursor: &[u8],
        fencing_token: i64,
    ) -> Result<()> {
        // Times are the database's, like every time the ledger keeps.
        let now = self.db_now();
        let mut conn = self.writer_for_transaction().await?;
        let mut tx = conn.begin().await?;
        // One multi-row INSERT per chunk, not one statement per event.
        for chunk in events.chunks(INBOX_ROWS_PER_INSERT) {
            let mut sql = String::with_capacity(128 + chunk.len() * 32);
            sql.push_str(
                "INSERT INTO event_inbox (event_id, replay_id, sf_order_id, status, received_at) \
                 VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 4;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, {now})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4
                ));
            }
            sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q
                    .bind(e.event_id)
                    .bind(hex::encode(e.replay_id))
                    .bind(e.sf_order_id)
                    .bind(e.status);
            }
            q.execute(&mut *tx).await?;
        }
        super::controls::insert_poison(&mut tx, channel, poison, now).await?;
        let written = sqlx::query(&format!(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, $3, {now}) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             fencing_token = excluded.fencing_token, updated_at = excluded.updated_at \
             WHERE cursors.fencing_token <= excluded.fencing_token",
        ))
        .bind(channel)
        .bind(hex::encode(cursor))
        .bind(fencing_token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written == 0 {
            // A newer leader owns the subscription: discard this batch's bookkeeping.
            tx.rollback().await?;
            return Err(LedgerError::Fenced);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Of these Orders, those the ledger saw move in the last `window` (database clock): an
    /// order row updated, or an event received for it (the reconciler leaves them alone).
    pub async fn recently_active(
        &self,
        orders: &[SalesforceId],
        window: std::time::Duration,
    ) -> Result<Vec<String>> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let list = super::placeholders(2, orders.len());
        let sql = format!(
            "SELECT sf_order_id FROM orders WHERE updated_at >= {now} - $1 AND sf_order_id IN ({list}) \
             UNION SELECT sf_order_id FROM event_inbox WHERE received_at >= {now} - $1 \
             AND sf_order_id IN ({list})",
            now = self.db_now()
        );
        let mut q = sqlx::query(&sql).bind(super::millis(window));
        for id in orders {
            q = q.bind(id.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("sf_order_id").map_err(Into::into))
            .collect()
    }

    /// Number of events in the inbox by status (`enqueued`, `poison`).
    pub async fn inbox_counts(&self) -> Result<BTreeMap<String, i64>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM event_inbox GROUP BY status")
            .fetch_all(&mut *conn)
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(r.try_get("status")?, r.try_get("n")?);
        }
        Ok(out)
    }

    /// Every inbox row of one Order, oldest first.
    pub async fn inbox_for(&self, order: &SalesforceId) -> Result<Vec<InboxRow>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query(
            "SELECT event_id, replay_id, status, received_at FROM event_inbox \
             WHERE sf_order_id = $1 ORDER BY received_at, event_id",
        )
        .bind(order.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxRow {
                    event_id: r.try_get("event_id")?,
                    replay_id: r.try_get("replay_id")?,
                    status: r.try_get("status")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }
}

/// Inbox rows per INSERT statement (5 parameters each; well below both engines' limits).
const INBOX_ROWS_PER_INSERT: usize = 200;

/// One event to record in the inbox.
#[derive(Debug, Clone)]
pub struct InboxEntry<'a> {
    pub event_id: &'a str,
    pub replay_id: &'a [u8],
    pub sf_order_id: Option<&'a str>,
    /// `enqueued` or `poison`.
    pub status: &'a str,
}

/// One event of the inbox, as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InboxRow {
    pub event_id: String,
    pub replay_id: String,
    pub status: String,
    pub received_at: i64,
}
