//! The `orders` table: one row per Salesforce Order, its state machine and its lease.
//!
//! Invariants:
//! - An Order is worked on by at most one job at a time. [`Ledger::claim`] takes the lease with
//!   a single conditional upsert, and every change is conditioned on still holding it.
//! - Every WHMCS client id an Order's `AddOrder` was attempted under is kept (`order_clients`),
//!   written in the same transaction as the `adding` intent ([`Ledger::mark_adding`]), so
//!   reconciliation can search all of them after the Account is re-mapped.

use std::{collections::BTreeMap, time::Duration};

use sqlx::{AnyConnection, FromRow, Row};

use super::{
    Arg, Backend, Change, Ledger, ORDER_COLUMNS, Opening, OrderRecord, OrderUpdate, Result, millis,
    now_ms, state,
};
use crate::ids::SalesforceId;

impl Ledger {
    /// Takes the Order's lease for `owner` if nobody holds a live one. Returns the row when
    /// acquired, `None` when another job holds it. Expiry is judged on the database's clock.
    pub async fn claim(
        &self,
        order: &SalesforceId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<OrderRecord>> {
        let now = self.db_now();
        // One statement: create the row with the lease taken, or take the lease of an existing
        // row if it is free, ours or expired; the row comes back only when the lease was taken.
        let sql = format!(
            "INSERT INTO orders (sf_order_id, state, lease_owner, lease_until, attempts, \
             created_at, updated_at) VALUES ($1, $2, $3, {now} + $4, 1, {now}, {now}) \
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
            .bind(millis(lease))
            .fetch_optional(&mut *conn)
            .await?;
        drop(conn);
        if row.is_some() {
            self.changes.changed(order.as_str());
        }
        Ok(row.as_ref().map(OrderRecord::from_row).transpose()?)
    }

    /// The [`Ledger::claim`] and [`Ledger::begin_attempt`] of an Order the ledger has never
    /// seen, in one transaction and one trip: creates its row with the lease taken by `owner`
    /// and the attempt's details written, and opens its first attempt. Returns the row and the
    /// attempt's id; `None` (nothing written) when the row exists by now, which the caller then
    /// claims the usual way.
    pub async fn claim_new(
        &self,
        order: &SalesforceId,
        owner: &str,
        lease: Duration,
        first: &Opening<'_>,
    ) -> Result<Option<(OrderRecord, i64)>> {
        let now = self.db_now();
        let insert = format!(
            "INSERT INTO orders (sf_order_id, state, lease_owner, lease_until, attempts, \
             created_at, updated_at, last_event_id, correlation_id, account_id, sf_status) \
             VALUES ($1, $2, $3, {now} + $4, 1, {now}, {now}, $5, $6, $7, $8) \
             ON CONFLICT (sf_order_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
        );
        let attempt = "INSERT INTO attempts (sf_order_id, event_id, started_at)";
        let sql = match self.backend {
            // The attempt only if the row was created (`changes()`).
            Backend::Sqlite => format!(
                "{insert}; {attempt} SELECT $1, $5, {now} WHERE changes() > 0 \
                 RETURNING id AS attempt_id"
            ),
            Backend::Postgres => format!(
                "WITH c AS ({insert}), a AS ({attempt} SELECT $1, $5, {now} FROM c \
                 RETURNING id) SELECT c.*, a.id AS attempt_id FROM c, a"
            ),
        };
        let args = [
            Arg::Text(order.as_str()),
            Arg::Text(state::NEW),
            Arg::Text(owner),
            Arg::Int(millis(lease)),
            Arg::Text(first.event_id),
            Arg::Text(first.correlation_id),
            Arg::OptText(first.account_id),
            Arg::OptText(first.sf_status),
        ];
        let rows = self.one_trip(&sql, &args).await?;
        let (Some(created), Some(opened)) = (rows.first(), rows.last()) else {
            return Ok(None);
        };
        let row = OrderRecord::from_row(created)?;
        let attempt: i64 = opened.try_get("attempt_id")?;
        self.changes.changed(order.as_str());
        Ok(Some((row, attempt)))
    }

    /// Extends a lease `owner` still holds, live on the database's clock, by `lease` from now.
    /// `false` when it was lost: another job took it, or it expired (the holder must then stop
    /// before its next external side effect, even if nobody has taken it yet).
    pub async fn renew(&self, order: &SalesforceId, owner: &str, lease: Duration) -> Result<bool> {
        let now = self.db_now();
        let mut conn = self.writer().await?;
        let n = sqlx::query(&format!(
            "UPDATE orders SET lease_until = {now} + $3 \
             WHERE sf_order_id = $1 AND lease_owner = $2 AND lease_until >= {now}"
        ))
        .bind(order.as_str())
        .bind(owner)
        .bind(millis(lease))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Whether `owner` still holds a live lease on the Order, asked right before an external
    /// side effect: renews it (so the effect runs with a full lease ahead) and answers from the
    /// database's clock, never from this process's.
    pub async fn still_holds(
        &self,
        order: &SalesforceId,
        owner: &str,
        lease: Duration,
    ) -> Result<bool> {
        self.renew(order, owner, lease).await
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

    /// Commits the intent to call `AddOrder` under `client_id` (`state = adding`) and adds the
    /// client id to the Order's history, in one transaction, while `owner` holds a live lease,
    /// which it extends by `lease` (so the `AddOrder` that follows needs no separate check);
    /// `false` (nothing written) when the lease was lost or expired.
    pub async fn mark_adding(
        &self,
        order: &SalesforceId,
        owner: &str,
        client_id: &str,
        lease: Duration,
    ) -> Result<bool> {
        let change = Change {
            state: Some(state::ADDING),
            whmcs_client_id: Some(client_id),
            renew: Some(lease),
            adding_now: true,
            ..Default::default()
        };
        let now = self.db_now();
        let u = Self::order_update(now, order, owner, &change, None);
        let n = u.args.len();
        // The history row only if the intent was written; the intent's `RETURNING` says
        // whether it was.
        let insert = format!(
            "INSERT INTO order_clients (sf_order_id, whmcs_client_id, first_seen_at) \
             SELECT $1, ${}, {now}",
            n + 1
        );
        let sql = self.change_then(&u.sql, |applied| {
            format!(
                "{insert} WHERE {applied} ON CONFLICT (sf_order_id, whmcs_client_id) DO NOTHING"
            )
        });
        let mut args = u.args;
        args.push(Arg::Text(client_id));
        if self.one_trip(&sql, &args).await?.is_empty() {
            return Ok(false);
        }
        self.changes.changed(order.as_str());
        Ok(true)
    }

    /// How long the Order must still wait before a new `AddOrder`: the time left until
    /// `window` has passed since the last `adding` intent whose `AddOrder` may still be running
    /// (database clock); `None` when there is no such intent or the window has passed.
    pub async fn add_in_doubt(
        &self,
        order: &SalesforceId,
        window: std::time::Duration,
    ) -> Result<Option<std::time::Duration>> {
        let now = self.db_now();
        let mut conn = self.reader().await?;
        let left: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT adding_at + $2 - {now} FROM orders \
             WHERE sf_order_id = $1 AND adding_at IS NOT NULL AND whmcs_order_id IS NULL"
        ))
        .bind(order.as_str())
        .bind(millis(window))
        .fetch_optional(&mut *conn)
        .await?;
        Ok(left
            .filter(|ms| *ms > 0)
            .map(|ms| std::time::Duration::from_millis(ms.unsigned_abs())))
    }

    /// Records that the Order's last `AddOrder` has ended without creating an order WHMCS could
    /// still commit (WHMCS answered, or the request was never sent), while `owner` holds the
    /// lease.
    pub async fn add_concluded(&self, order: &SalesforceId, owner: &str) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = sqlx::query(
            "UPDATE orders SET adding_at = NULL WHERE sf_order_id = $1 AND lease_owner = $2",
        )
        .bind(order.as_str())
        .bind(owner)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every WHMCS client id the Order's `AddOrder` was attempted under, with the time of the
    /// first attempt under it (epoch ms), oldest first.
    pub async fn client_ids(&self, order: &SalesforceId) -> Result<Vec<(String, i64)>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query(
            "SELECT whmcs_client_id, first_seen_at FROM order_clients WHERE sf_order_id = $1 \
             ORDER BY first_seen_at, whmcs_client_id",
        )
        .bind(order.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("whmcs_client_id")?, r.try_get("first_seen_at")?)))
            .collect()
    }

    /// Applies a change while `owner` still holds the lease; `false` when it was lost (the
    /// caller must stop: another job owns the Order now).
    pub async fn update(&self, order: &SalesforceId, owner: &str, c: &Change<'_>) -> Result<bool> {
        let now = self.db_now();
        let mut conn = self.writer().await?;
        let changed = Self::update_on(&mut conn, now, order, owner, c).await?;
        drop(conn);
        if changed {
            self.changes.changed(order.as_str());
        }
        Ok(changed)
    }

    /// Applies `c` while `owner` owns the Order, even if its lease expired, and in the same
    /// statement extends the lease by `lease` if it is still live on the database's clock: a
    /// record that must not be lost (the WHMCS order id) that also answers the lease check of
    /// the external step right after it.
    pub async fn update_keeping_lease(
        &self,
        order: &SalesforceId,
        owner: &str,
        c: &Change<'_>,
        lease: Duration,
    ) -> Result<super::LeaseAfter> {
        let now = self.db_now();
        let mut conn = self.writer().await?;
        let after = Self::write_on(&mut conn, now, order, owner, c, Some(lease)).await?;
        drop(conn);
        if after != super::LeaseAfter::Lost {
            self.changes.changed(order.as_str());
        }
        Ok(after)
    }

    /// [`Ledger::update`] on a given connection; `now` is [`Ledger::db_now`].
    pub(super) async fn update_on(
        conn: &mut AnyConnection,
        now: &str,
        order: &SalesforceId,
        owner: &str,
        c: &Change<'_>,
    ) -> Result<bool> {
        Ok(Self::write_on(conn, now, order, owner, c, None).await? != super::LeaseAfter::Lost)
    }

    /// The one `UPDATE` of an Order row behind every change. `keep`: renew the lease by this
    /// much if it is live, and say whether it was (without it, `Live` means only "applied").
    async fn write_on(
        conn: &mut AnyConnection,
        now: &str,
        order: &SalesforceId,
        owner: &str,
        c: &Change<'_>,
        keep: Option<Duration>,
    ) -> Result<super::LeaseAfter> {
        use super::LeaseAfter;
        let u = Self::order_update(now, order, owner, c, keep);
        let q = Arg::bind_all(sqlx::query(&u.sql), &u.args);
        if !u.returns_live {
            return Ok(if q.execute(&mut *conn).await?.rows_affected() > 0 {
                LeaseAfter::Live
            } else {
                LeaseAfter::Lost
            });
        }
        Ok(match q.fetch_optional(&mut *conn).await? {
            None => LeaseAfter::Lost,
            Some(row) if row.try_get::<i64, _>("live")? == 1 => LeaseAfter::Live,
            Some(_) => LeaseAfter::Lapsed,
        })
    }

    /// The `UPDATE` statement of [`Ledger::write_on`] and its arguments: `$1` is the Order,
    /// `$2` the owner, then one per changed column (`args.len()` in all), so statements that
    /// follow it in one SQLite script number theirs from `args.len() + 1`.
    pub(super) fn order_update<'a>(
        now: &str,
        order: &'a SalesforceId,
        owner: &'a str,
        c: &Change<'a>,
        keep: Option<Duration>,
    ) -> OrderUpdate<'a> {
        // A change that renews or releases the lease decides it already.
        let keep = keep.filter(|_| c.renew.is_none() && !c.release);
        let mut sets: Vec<String> = vec![format!("updated_at = {now}")];
        if c.adding_now {
            sets.push(format!("adding_at = {now}"));
        }
        let mut args = vec![Arg::Text(order.as_str()), Arg::Text(owner)];
        let error =
            |part: fn((&'a str, &'a str)) -> &'a str| c.error.map(|e| Arg::OptText(e.map(part)));
        let columns = [
            ("state", c.state.map(Arg::Text)),
            ("outcome", c.outcome.map(Arg::OptText)),
            ("account_id", c.account_id.map(Arg::Text)),
            ("whmcs_client_id", c.whmcs_client_id.map(Arg::Text)),
            ("whmcs_order_id", c.whmcs_order_id.map(Arg::Int)),
            ("whmcs_service_ids", c.whmcs_service_ids.map(Arg::Text)),
            ("error_code", error(|(code, _)| code)),
            ("error_message", error(|(_, message)| message)),
            ("sf_status", c.sf_status.map(Arg::Text)),
            ("last_event_id", c.last_event_id.map(Arg::Text)),
            ("correlation_id", c.correlation_id.map(Arg::Text)),
        ];
        for (column, arg) in columns {
            if let Some(arg) = arg {
                args.push(arg);
                sets.push(format!("{column} = ${}", args.len()));
            }
        }
        if c.release {
            sets.push("lease_owner = NULL, lease_until = NULL".into());
        } else if let Some(lease) = c.renew {
            // `lease_until = now + $n`: the argument is the lease's length.
            args.push(Arg::Int(millis(lease)));
            sets.push(format!("lease_until = {now} + ${}", args.len()));
        } else if let Some(lease) = keep {
            args.push(Arg::Int(millis(lease)));
            sets.push(format!(
                "lease_until = CASE WHEN lease_until >= {now} THEN {now} + ${} \
                 ELSE lease_until END",
                args.len()
            ));
        }
        let live = if c.renew.is_some() && !c.release {
            format!(" AND lease_until >= {now}")
        } else {
            String::new()
        };
        // Whether the lease is live after the change: extended (live) or left as it was
        // (expired). The database's "now" is one reading per statement on SQLite; on
        // PostgreSQL a later reading only makes an expired lease look more expired.
        let returning = if keep.is_some() {
            format!(
                " RETURNING CAST(CASE WHEN lease_until >= {now} THEN 1 ELSE 0 END AS BIGINT) \
                 AS live"
            )
        } else {
            String::new()
        };
        OrderUpdate {
            sql: format!(
                "UPDATE orders SET {} WHERE sf_order_id = $1 AND lease_owner = $2{live}{returning}",
                sets.join(", ")
            ),
            args,
            returns_live: keep.is_some(),
        }
    }

    /// The Order's row, if the ledger knows it.
    pub async fn get(&self, order: &SalesforceId) -> Result<Option<OrderRecord>> {
        Ok(self.get_with_lease(order).await?.map(|(row, _)| row))
    }

    /// The Order's row, and whether a run holds a live lease on it (live on the database's
    /// clock), in one read.
    pub async fn get_with_lease(
        &self,
        order: &SalesforceId,
    ) -> Result<Option<(OrderRecord, bool)>> {
        let now = self.db_now();
        let sql = format!(
            "SELECT {ORDER_COLUMNS}, CAST(CASE WHEN lease_owner IS NOT NULL AND lease_until >= \
             {now} THEN 1 ELSE 0 END AS BIGINT) AS leased FROM orders WHERE sf_order_id = $1"
        );
        let mut conn = self.reader().await?;
        let row = sqlx::query(&sql)
            .bind(order.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let leased = row.try_get::<i64, _>("leased")? != 0;
        Ok(Some((OrderRecord::from_row(&row)?, leased)))
    }

    /// The rows of these Orders the ledger knows (any order; unknown ids are left out).
    pub async fn get_many(&self, orders: &[SalesforceId]) -> Result<Vec<OrderRecord>> {
        let mut out = Vec::with_capacity(orders.len());
        let mut conn = self.reader().await?;
        // 200 ids per statement: well under both engines' parameter limits.
        for chunk in orders.chunks(200) {
            let sql = format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE sf_order_id IN ({})",
                super::placeholders(1, chunk.len())
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
        self.select_orders(state, None, None, limit).await
    }

    /// The most recently updated Orders, optionally only those in `state` and those whose error
    /// code is `code`.
    pub async fn list_filtered(
        &self,
        state: Option<&str>,
        code: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OrderRecord>> {
        self.select_orders(state, code, None, limit).await
    }

    /// Orders in `state`, optionally with error `code` and updated within the last `within_ms`
    /// (database clock), most recently updated first.
    pub async fn find_orders(
        &self,
        state: &str,
        code: Option<&str>,
        within_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OrderRecord>> {
        self.select_orders(Some(state), code, within_ms, limit)
            .await
    }

    /// The one Order selection behind [`Ledger::list`], [`Ledger::list_filtered`] and
    /// [`Ledger::find_orders`]: every filter optional, most recently updated first.
    async fn select_orders(
        &self,
        state: Option<&str>,
        code: Option<&str>,
        within_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OrderRecord>> {
        let mut sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE 1 = 1");
        let mut n = 0;
        if state.is_some() {
            n += 1;
            sql.push_str(&format!(" AND state = ${n}"));
        }
        if code.is_some() {
            n += 1;
            sql.push_str(&format!(" AND error_code = ${n}"));
        }
        if within_ms.is_some() {
            n += 1;
            sql.push_str(&format!(" AND updated_at >= {} - ${n}", self.db_now()));
        }
        sql.push_str(&format!(" ORDER BY updated_at DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(&sql);
        if let Some(s) = state {
            q = q.bind(s);
        }
        if let Some(c) = code {
            q = q.bind(c);
        }
        if let Some(w) = within_ms {
            q = q.bind(w);
        }
        let mut conn = self.reader().await?;
        let rows = q.bind(limit).fetch_all(&mut *conn).await?;
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

    /// Orders whose WHMCS order exists but whose attempt never recorded an outcome (its run
    /// stopped between WHMCS and the ledger's last update, and its job is gone — e.g. Redis lost
    /// it), idle for `idle` and changed within `horizon` (database clock), with no live lease;
    /// oldest first, at most `limit`. Salesforce may already show such an Order's outcome, so
    /// the Salesforce-side sweep does not see it.
    pub async fn unfinished_after_whmcs(
        &self,
        idle: std::time::Duration,
        horizon: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<String>> {
        let now = self.db_now();
        let mut conn = self.reader().await?;
        Ok(sqlx::query_scalar(&format!(
            "SELECT sf_order_id FROM orders \
             WHERE outcome IS NULL AND state IN ($1, $2) \
             AND (lease_until IS NULL OR lease_until < {now}) \
             AND updated_at < {now} - $3 AND updated_at > {now} - $4 \
             ORDER BY updated_at LIMIT $5"
        ))
        .bind(state::WHMCS_ADDED)
        .bind(state::WHMCS_ACCEPTED)
        .bind(millis(idle))
        .bind(millis(horizon))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?)
    }

    /// The database's current time in epoch milliseconds (the clock every `updated_at` and
    /// lease is written with).
    pub async fn clock_ms(&self) -> Result<i64> {
        let mut conn = self.reader().await?;
        Ok(sqlx::query_scalar(&format!("SELECT {}", self.db_now()))
            .fetch_one(&mut *conn)
            .await?)
    }

    /// How far the database's clock is ahead of this process's (negative: behind), in
    /// milliseconds, measured against the midpoint of the round trip.
    pub async fn clock_skew_ms(&self) -> Result<i64> {
        let sent = now_ms();
        let db = self.clock_ms().await?;
        let received = now_ms();
        Ok(db - (sent + (received - sent) / 2))
    }

    /// Orders in `state` whose row changed at or after `since_ms` (database clock).
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
