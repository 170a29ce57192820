//! The provisioning ledger (sqlx; SQLite by default, PostgreSQL for several replicas).
//!
//! It owns four tables (see `migrations/`): `orders` — one row per Salesforce Order and its
//! state machine; `attempts` — the history of every attempt; `event_inbox` — every event id the
//! subscriber has enqueued (or skipped as poison), so a redelivered event is never enqueued twice;
//! `cursors` — the subscription's replay id.
//!
//! Invariants:
//! - An Order is worked on by at most one job at a time: [`Ledger::claim`] takes a lease with a
//!   single conditional upsert (`INSERT … ON CONFLICT DO UPDATE … WHERE`), and every state
//!   change is conditioned on still holding it. A crashed holder's lease expires and another
//!   job takes over.
//! - The intent to call WHMCS `AddOrder` (`state = adding`) is committed *before* the call and the
//!   WHMCS order id right after it, so a re-run always knows whether it must reconcile first.
//! - The inbox row and the cursor are written in one transaction, after the job is in Redis.
//! - SQL is portable (TEXT and BIGINT only, `$n` placeholders) so one code path serves both
//!   databases; migrations differ only where the dialects do (`migrations/{sqlite,postgres}`).

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Row,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
    pool::PoolConnection,
};

use crate::{config::DatabaseConfig, ids::SalesforceId};

/// Settings of every SQLite connection.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;";

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger setup: {0}")]
    Setup(String),
    #[error("cursor write refused: a newer subscriber leader holds the lease")]
    Fenced,
}

/// Which SQL engine backs the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// States of the per-Order state machine.
pub mod state {
    pub const NEW: &str = "new";
    pub const ADDING: &str = "adding";
    pub const WHMCS_ADDED: &str = "whmcs_added";
    pub const WHMCS_ACCEPTED: &str = "whmcs_accepted";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
}

/// Outcomes written back to Salesforce.
pub mod outcome {
    pub const PROVISIONED: &str = "Provisioned";
    pub const FAILED: &str = "Failed";
}

/// One Order as the ledger knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrderRecord {
    pub sf_order_id: String,
    pub state: String,
    pub outcome: Option<String>,
    pub account_id: Option<String>,
    pub whmcs_client_id: Option<String>,
    pub whmcs_order_id: Option<i64>,
    pub whmcs_service_ids: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub sf_status: Option<String>,
    pub last_event_id: Option<String>,
    pub correlation_id: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One attempt in an Order's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptRecord {
    pub id: i64,
    pub event_id: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const ORDER_COLUMNS: &str = "sf_order_id, state, outcome, account_id, whmcs_client_id, \
    whmcs_order_id, whmcs_service_ids, error_code, error_message, sf_status, last_event_id, \
    correlation_id, attempts, created_at, updated_at";

fn order_from_row(row: &sqlx::any::AnyRow) -> Result<OrderRecord> {
    Ok(OrderRecord {
        sf_order_id: row.try_get("sf_order_id")?,
        state: row.try_get("state")?,
        outcome: row.try_get("outcome")?,
        account_id: row.try_get("account_id")?,
        whmcs_client_id: row.try_get("whmcs_client_id")?,
        whmcs_order_id: row.try_get("whmcs_order_id")?,
        whmcs_service_ids: row.try_get("whmcs_service_ids")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        sf_status: row.try_get("sf_status")?,
        last_event_id: row.try_get("last_event_id")?,
        correlation_id: row.try_get("correlation_id")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A change to an Order row, applied only while the caller holds the lease.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    pub state: Option<&'a str>,
    pub outcome: Option<Option<&'a str>>,
    pub account_id: Option<&'a str>,
    pub whmcs_client_id: Option<&'a str>,
    pub whmcs_order_id: Option<i64>,
    pub whmcs_service_ids: Option<&'a str>,
    pub error: Option<Option<(&'a str, &'a str)>>,
    pub sf_status: Option<&'a str>,
    pub last_event_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    /// Give the lease back in the same statement (the job's last change).
    pub release: bool,
}

/// Handle to the ledger database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// Migrations, readiness, operator tools; every write on PostgreSQL.
    pool: AnyPool,
    /// Reads where no SQLite reader connections are held (PostgreSQL, in-memory SQLite).
    read: AnyPool,
    /// SQLite: the connection every write goes through, held outside the pool (a pooled
    /// connection is pinged each time it goes back: one more trip to SQLite's thread per write).
    writer: Option<Arc<tokio::sync::Mutex<AnyConnection>>>,
    /// SQLite: query-only connections for reads, held outside the pool for the same reason.
    readers: Arc<Vec<tokio::sync::Mutex<AnyConnection>>>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    /// Set by [`Ledger::close`]: held connections refuse work like a closed pool.
    closed: Arc<std::sync::atomic::AtomicBool>,
    backend: Backend,
}

/// The connection a statement runs on: held (SQLite) or pooled.
enum LedgerConn<'a> {
    Pooled(PoolConnection<Any>),
    Shared(tokio::sync::MutexGuard<'a, AnyConnection>),
}

impl std::ops::Deref for LedgerConn<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            LedgerConn::Pooled(c) => c,
            LedgerConn::Shared(g) => g,
        }
    }
}

impl std::ops::DerefMut for LedgerConn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            LedgerConn::Pooled(c) => c,
            LedgerConn::Shared(g) => g,
        }
    }
}

impl Ledger {
    /// Connects (creating a SQLite file and its directory if absent) without migrating.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if cfg.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = cfg.url.clone();
        // An in-memory SQLite database exists once per connection: it gets one pooled
        // connection for everything.
        let mut in_memory = false;
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            in_memory = path == ":memory:" || path.is_empty() || url.contains("mode=memory");
            if !in_memory {
                if let Some(dir) = std::path::Path::new(&path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            LedgerError::Setup(format!("cannot create {}: {e}", dir.display()))
                        })?;
                    }
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let opts = AnyConnectOptions::from_str(&url)?;
        // SQLite: one writer connection. Several writers only took turns on the file lock
        // (sleeping in the busy handler) and each dropped its page cache whenever another had
        // written; reads (order status, dedupe checks) get their own connections.
        let (writers, readers) = match backend {
            Backend::Sqlite if in_memory => (1, 0),
            Backend::Sqlite => (1, cfg.max_connections.clamp(1, 4)),
            Backend::Postgres => (cfg.max_connections, 0),
        };
        let pool = Self::pool_with(&opts, writers, backend).await?;
        let read = pool.clone();
        let (writer, readers) = if backend == Backend::Sqlite && !in_memory {
            use sqlx::{ConnectOptions, Executor};
            let mut conn = opts.connect().await?;
            conn.execute(SQLITE_PRAGMAS).await?;
            let mut held = Vec::new();
            for _ in 0..readers {
                let mut r = opts.connect().await?;
                r.execute(SQLITE_PRAGMAS).await?;
                r.execute("PRAGMA query_only = ON;").await?;
                held.push(tokio::sync::Mutex::new(r));
            }
            (Some(Arc::new(tokio::sync::Mutex::new(conn))), held)
        } else {
            (None, Vec::new())
        };
        Ok(Self {
            pool,
            read,
            writer,
            readers: Arc::new(readers),
            next_reader: Arc::default(),
            closed: Arc::default(),
            backend,
        })
    }

    /// A connection for a read: a free SQLite reader (else the next one in turn), or one from
    /// the read pool.
    async fn reader(&self) -> Result<LedgerConn<'_>> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(sqlx::Error::PoolClosed.into());
        }
        let n = self.readers.len();
        if n == 0 {
            return Ok(LedgerConn::Pooled(self.read.acquire().await?));
        }
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Ok(g) = self.readers[(start + i) % n].try_lock() {
                return Ok(LedgerConn::Shared(g));
            }
        }
        Ok(LedgerConn::Shared(self.readers[start % n].lock().await))
    }

    /// The connection for a write: SQLite's single writer, or one from the pool.
    async fn writer(&self) -> Result<LedgerConn<'_>> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(sqlx::Error::PoolClosed.into());
        }
        Ok(match &self.writer {
            Some(w) => LedgerConn::Shared(w.lock().await),
            None => LedgerConn::Pooled(self.pool.acquire().await?),
        })
    }

    async fn pool_with(opts: &AnyConnectOptions, max: u32, backend: Backend) -> Result<AnyPool> {
        Ok(AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx already pings every connection when it is returned to the pool; a second
            // ping on acquire doubled the round trips of every statement.
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await?)
    }

    /// Connects and, if `auto_migrate`, applies pending migrations.
    pub async fn open(cfg: &DatabaseConfig) -> Result<Self> {
        let ledger = Self::connect(cfg).await?;
        if cfg.auto_migrate {
            ledger.migrate().await?;
        }
        Ok(ledger)
    }

    /// The connection pool (operator tools and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; later calls fail as with an unreachable database.
    pub async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.pool.close().await;
        self.read.close().await;
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations (takes the database's migration lock).
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATOR.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATOR.run(&self.pool).await?,
        }
        Ok(())
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ── cursor and inbox ────────────────────────────────────────────────────────────────────

    /// The stored replay id of a channel.
    pub async fn load_cursor(&self, channel: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query("SELECT replay_id FROM cursors WHERE channel = $1")
            .bind(channel)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match row {
            Some(r) => hex::decode(r.try_get::<String, _>("replay_id")?).ok(),
            None => None,
        })
    }

    /// Stores the replay id of a channel (used for keepalive `latest_replay_id`s and by
    /// operators); `fencing_token` rejects a write from a subscriber that lost its lease.
    pub async fn save_cursor(
        &self,
        channel: &str,
        replay_id: &[u8],
        fencing_token: i64,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let n = sqlx::query(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             fencing_token = excluded.fencing_token, updated_at = excluded.updated_at \
             WHERE cursors.fencing_token <= excluded.fencing_token",
        )
        .bind(channel)
        .bind(hex::encode(replay_id))
        .bind(fencing_token)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Forgets a channel's cursor (the next subscription starts from the configured preset).
    pub async fn clear_cursor(&self, channel: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query("DELETE FROM cursors WHERE channel = $1")
            .bind(channel)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Which of these event ids the inbox already holds.
    pub async fn seen_events(&self, event_ids: &[&str]) -> Result<Vec<String>> {
        let mut conn = self.reader().await?;
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=event_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT event_id FROM event_inbox WHERE event_id IN ({})",
            placeholders.join(", ")
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
        let now = now_ms();
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        // One multi-row INSERT per chunk, not one statement per event.
        for chunk in events.chunks(INBOX_ROWS_PER_INSERT) {
            let mut sql = String::with_capacity(128 + chunk.len() * 32);
            sql.push_str(
                "INSERT INTO event_inbox (event_id, replay_id, sf_order_id, status, received_at) \
                 VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5
                ));
            }
            sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q
                    .bind(e.event_id)
                    .bind(hex::encode(e.replay_id))
                    .bind(e.sf_order_id)
                    .bind(e.status)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        let written = sqlx::query(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             fencing_token = excluded.fencing_token, updated_at = excluded.updated_at \
             WHERE cursors.fencing_token <= excluded.fencing_token",
        )
        .bind(channel)
        .bind(hex::encode(cursor))
        .bind(fencing_token)
        .bind(now)
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

    /// Of these Orders, those the ledger saw move since `since_ms`: an order row updated, or an
    /// event received for it (the reconciler leaves them alone).
    pub async fn recently_active(
        &self,
        orders: &[SalesforceId],
        since_ms: i64,
    ) -> Result<Vec<String>> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (0..orders.len()).map(|i| format!("${}", i + 2)).collect();
        let list = list.join(", ");
        let sql = format!(
            "SELECT sf_order_id FROM orders WHERE updated_at >= $1 AND sf_order_id IN ({list}) \
             UNION SELECT sf_order_id FROM event_inbox WHERE received_at >= $1 AND sf_order_id IN ({list})"
        );
        let mut q = sqlx::query(&sql).bind(since_ms);
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

    // ── orders ──────────────────────────────────────────────────────────────────────────────

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
        row.as_ref().map(order_from_row).transpose()
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

    async fn update_on(
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
        row.as_ref().map(order_from_row).transpose()
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
        rows.iter().map(order_from_row).collect()
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

    /// Opens an attempt and applies `c` (while `owner` holds the lease) on one connection: one
    /// pool round trip instead of two. `None` when the lease was lost.
    pub async fn begin_attempt(
        &self,
        order: &SalesforceId,
        owner: &str,
        event_id: Option<&str>,
        c: &Change<'_>,
    ) -> Result<Option<i64>> {
        let mut conn = self.writer().await?;
        let attempt = Self::start_attempt_on(&mut conn, order, event_id).await?;
        Ok(Self::update_on(&mut conn, order, owner, c)
            .await?
            .then_some(attempt))
    }

    /// Applies the job's last change `c` and, if the lease was still held, closes the attempt,
    /// on one connection. `false` when the lease was lost (nothing written).
    pub async fn end_attempt(
        &self,
        order: &SalesforceId,
        owner: &str,
        c: &Change<'_>,
        attempt_id: i64,
        outcome: &str,
        error: Option<(&str, &str)>,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        if !Self::update_on(&mut conn, order, owner, c).await? {
            return Ok(false);
        }
        Self::finish_attempt_on(&mut conn, attempt_id, outcome, error).await?;
        Ok(true)
    }

    /// Opens an attempt in the Order's history.
    pub async fn start_attempt(&self, order: &SalesforceId, event_id: Option<&str>) -> Result<i64> {
        let mut conn = self.writer().await?;
        Self::start_attempt_on(&mut conn, order, event_id).await
    }

    async fn start_attempt_on(
        conn: &mut AnyConnection,
        order: &SalesforceId,
        event_id: Option<&str>,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO attempts (sf_order_id, event_id, started_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(order.as_str())
        .bind(event_id)
        .bind(now_ms())
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
        Self::finish_attempt_on(&mut conn, attempt_id, outcome, error).await
    }

    async fn finish_attempt_on(
        conn: &mut AnyConnection,
        attempt_id: i64,
        outcome: &str,
        error: Option<(&str, &str)>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE attempts SET finished_at = $2, outcome = $3, error_code = $4, error_message = $5 \
             WHERE id = $1",
        )
        .bind(attempt_id)
        .bind(now_ms())
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
            .map(|r| {
                Ok(AttemptRecord {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    outcome: r.try_get("outcome")?,
                    error_code: r.try_get("error_code")?,
                    error_message: r.try_get("error_message")?,
                })
            })
            .collect()
    }

    /// Finished attempts since `since_ms`, split into (failed, total), for the alert window.
    pub async fn outcome_counts_since(&self, since_ms: i64) -> Result<(i64, i64)> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN outcome = $2 THEN 1 ELSE 0 END), 0) AS failed, \
             COUNT(*) AS total FROM attempts WHERE finished_at >= $1 AND outcome IN ($2, $3)",
        )
        .bind(since_ms)
        .bind(outcome::FAILED)
        .bind(outcome::PROVISIONED)
        .fetch_one(&mut *conn)
        .await?;
        Ok((row.try_get("failed")?, row.try_get("total")?))
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn ledger(url: String) -> Ledger {
        Ledger::open(&DatabaseConfig {
            url,
            auto_migrate: true,
            max_connections: 8,
        })
        .await
        .expect("ledger")
    }

    /// Writes (single writer) and reads (reader pool) see one database, on a file and in memory.
    async fn claim_write_read(l: &Ledger) {
        let id = SalesforceId::synthesize("801", 1);
        let row = l
            .claim(&id, "a", Duration::from_secs(30))
            .await
            .expect("claim")
            .expect("free lease");
        assert_eq!((row.state.as_str(), row.attempts), (state::NEW, 1));
        assert!(
            l.claim(&id, "b", Duration::from_secs(30))
                .await
                .expect("claim")
                .is_none(),
            "a held lease is not taken"
        );
        let attempt = l
            .begin_attempt(&id, "a", Some("ev-1"), &Change::default())
            .await
            .expect("begin")
            .expect("lease held");
        let done = Change {
            state: Some(state::DONE),
            outcome: Some(Some(outcome::PROVISIONED)),
            release: true,
            ..Default::default()
        };
        assert!(
            l.end_attempt(&id, "a", &done, attempt, outcome::PROVISIONED, None)
                .await
                .expect("end")
        );
        let row = l.get(&id).await.expect("get").expect("row");
        assert_eq!(row.outcome.as_deref(), Some(outcome::PROVISIONED));
        assert_eq!(l.attempts(&id).await.expect("attempts").len(), 1);
        // The last change gave the lease back.
        assert!(
            l.claim(&id, "b", Duration::from_secs(30))
                .await
                .expect("claim")
                .is_some()
        );
    }

    #[tokio::test]
    async fn sqlite_file_and_memory_ledgers_read_their_writes() {
        let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
        let file = ledger(format!("sqlite://{}/l.db", dir.display())).await;
        assert!(file.writer.is_some());
        claim_write_read(&file).await;
        let mem = ledger("sqlite::memory:".into()).await;
        assert!(mem.writer.is_none());
        claim_write_read(&mem).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
