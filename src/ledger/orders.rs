//! The `orders` table: one row per Salesforce Order, its state machine and its lease.
//!
//! Invariant: an Order is worked on by at most one job at a time. [`Ledger::claim`] takes the
//! lease with a single conditional upsert, and every change is conditioned on still holding it.

use std::{collections::BTreeMap, time::Duration};

use sqlx::{AnyConnection, FromRow, Row};

use super::{Change, Ledger, ORDER_COLUMNS, OrderRecord, Result, now_ms, state};
use crate::ids::SalesforceId;

impl Ledger {
    /// Takes the Order's lease for `owner` if nobody holds a live one. Returns the row when
    /// acquired, `None` when another job holds it.
    pub async fn claim(
        &self,
        order: &SalesforceId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<OrderRecord>> {
        let now = now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // One statement: create the row with the lease taken, or take the lease of an existing
        // row if it is free, ours or expired; the row comes back only when the lease was taken.
        let sql = format!(
            "INSERT INTO orders (sf_order_id, state, lease_owner, lease_until, attempts, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $5) \
             ON CONFLICT (sf_order_id) DO UPDATE SET lease_owner = excluded.lease_owner, \
             lease_until = excluded.lease_until, attempts = orders.attempts + 1, \
             updated_at = excluded.updated_at \
             WHERE orders.lease_owner IS NULL OR orders.lease_owner = excluded.lease_owner \
             OR orders.lease_until < excluded.updated_at \
             RETURNING {ORDER_COLUMNS}"
        );
        let mut conn = self.writer().await?;
        let row = sqlx::query(&sql)
            .bind(order.as_str())
            .bind(state::NEW)
            .bind(owner)
            .bind(until)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.as_ref().map(OrderRecord::from_row).transpose()?)
    }

    /// Extends a held lease; `false` when it was lost.
    pub async fn renew(&self, order: &SalesforceId, owner: &str, lease: Duration) -> Result<bool> {
        let now = now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let mut conn = self.writer().await?;
        let n = sqlx::query(
            "UPDATE orders SET lease_until = $3 WHERE sf_order_id = $1 AND lease_owner = $2",
        )
        .bind(order.as_str())
        .bind(owner)
        .bind(until)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Gives the lease back.
    pub async fn release(&self, order: &SalesforceId, owner: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query(
            "UPDATE orders SET lease_owner = NULL, lease_until = NULL \
             WHERE sf_order_id = $1 AND lease_owner = $2",
        )
        .bind(order.as_str())
        .bind(owner)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Applies a change while `owner` still holds the lease; `false` when it was lost (the
    /// caller must stop: another job owns the Order now).
    pub async fn update(&self, order: &SalesforceId, owner: &str, c: &Change<'_>) -> Result<bool> {
        let mut conn = self.writer().await?;
        Self::update_on(&mut conn, order, owner, c).await
    }

    pub(super) async fn update_on(
        conn: &mut AnyConnection,
        order: &SalesforceId,
        owner: &str,
        c: &Change<'_>,
    ) -> Result<bool> {
        let mut sets: Vec<String> = vec!["updated_at = $3".into()];
        let mut n = 3;
        let mut next = |col: &str, sets: &mut Vec<String>| {
            n += 1;
            sets.push(format!("{col} = ${n}"));
        };
        // The bind order below must follow the column order pushed here.
        if c.state.is_some() {
            next("state", &mut sets);
        }
        if c.outcome.is_some() {
            next("outcome", &mut sets);
        }
        if c.account_id.is_some() {
            next("account_id", &mut sets);
        }
        if c.whmcs_client_id.is_some() {
            next("whmcs_client_id", &mut sets);
        }
        if c.whmcs_order_id.is_some() {
            next("whmcs_order_id", &mut sets);
        }
        if c.whmcs_service_ids.is_some() {
            next("whmcs_service_ids", &mut sets);
        }
        if c.error.is_some() {
            next("error_code", &mut sets);
            next("error_message", &mut sets);
        }
        if c.sf_status.is_some() {
            next("sf_status", &mut sets);
        }
        if c.last_event_id.is_some() {
            next("last_event_id", &mut sets);
        }
        if c.correlation_id.is_some() {
            next("correlation_id", &mut sets);
        }
        if c.release {
            sets.push("lease_owner = NULL, lease_until = NULL".into());
        }
        let sql = format!(
            "UPDATE orders SET {} WHERE sf_order_id = $1 AND lease_owner = $2",
            sets.join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(order.as_str())
            .bind(owner)
            .bind(now_ms());
        if let Some(v) = c.state {
            q = q.bind(v);
        }
        if let Some(v) = c.outcome {
            q = q.bind(v);
        }
        if let Some(v) = c.account_id {
            q = q.bind(v);
        }
        if let Some(v) = c.whmcs_client_id {
            q = q.bind(v);
        }
        if let Some(v) = c.whmcs_order_id {
            q = q.bind(v);
        }
        if let Some(v) = c.whmcs_service_ids {
            q = q.bind(v);
        }
        if let Some(v) = c.error {
            q = q.bind(v.map(|(code, _)| code)).bind(v.map(|(_, msg)| msg));
        }
        if let Some(v) = c.sf_status {
            q = q.bind(v);
        }
        if let Some(v) = c.last_event_id {
            q = q.bind(v);
        }
        if let Some(v) = c.correlation_id {
            q = q.bind(v);
        }
        Ok(q.execute(&mut *conn).await?.rows_affected() > 0)
    }

    /// The Order's row, if the ledger knows it.
    pub async fn get(&self, order: &SalesforceId) -> Result<Option<OrderRecord>> {
        let mut conn = self.reader().await?;
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE sf_order_id = $1");
        let row = sqlx::query(&sql)
            .bind(order.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.as_ref().map(OrderRecord::from_row).transpose()?)
    }

    /// The rows of these Orders the ledger knows (any order; unknown ids are left out).
    pub async fn get_many(&self, orders: &[SalesforceId]) -> Result<Vec<OrderRecord>> {
        let mut out = Vec::with_capacity(orders.len());
        let mut conn = self.reader().await?;
        // 200 ids per statement: well under both engines' parameter limits.
        for chunk in orders.chunks(200) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE sf_order_id IN ({})",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for row in q.fetch_all(&mut *conn).await? {
                out.push(OrderRecord::from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Most recently updated Orders, optionally in one state.
    pub async fn list(&self, state: Option<&str>, limit: i64) -> Result<Vec<OrderRecord>> {
        let mut conn = self.reader().await?;
        let rows = match state {
            Some(s) => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE state = $1 ORDER BY updated_at DESC LIMIT $2"
                );
                sqlx::query(&sql)
                    .bind(s)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
            }
            None => {
                let sql =
                    format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY updated_at DESC LIMIT $1");
                sqlx::query(&sql).bind(limit).fetch_all(&mut *conn).await?
            }
        };
        Ok(rows
            .iter()
            .map(OrderRecord::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Number of Orders per state.
    pub async fn counts_by_state(&self) -> Result<BTreeMap<String, i64>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM orders GROUP BY state")
            .fetch_all(&mut *conn)
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(r.try_get("state")?, r.try_get("n")?);
        }
        Ok(out)
    }

    /// Orders in `state` whose row changed at or after `since_ms`.
    pub async fn count_in_state_since(&self, state: &str, since_ms: i64) -> Result<i64> {
        let mut conn = self.reader().await?;
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE state = $1 AND updated_at >= $2")
                .bind(state)
                .bind(since_ms)
                .fetch_one(&mut *conn)
                .await?;
        Ok(row.try_get("n")?)
    }

    /// The lease holder of an Order and until when (epoch ms), if any.
    pub async fn lease_of(&self, order: &SalesforceId) -> Result<Option<(String, Option<i64>)>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query("SELECT lease_owner, lease_until FROM orders WHERE sf_order_id = $1")
            .bind(order.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let owner: Option<String> = r.try_get("lease_owner")?;
        let until: Option<i64> = r.try_get("lease_until")?;
        Ok(owner.map(|o| (o, until)))
    }
}
