//! The provisioning ledger (sqlx; SQLite by default, PostgreSQL for several replicas).
//!
//! It owns these tables (see `migrations/`): `orders` — one row per Salesforce Order and its
//! state machine; `attempts` — the history of every attempt; `order_clients` — every WHMCS client
//! id an Order's `AddOrder` was attempted under; `event_inbox` — every event id the subscriber
//! has enqueued (or skipped as poison), so a redelivered event is never enqueued twice;
//! `cursors` — the subscription's replay id; `leader_epochs` — fencing tokens; `pauses` and
//! `poison_events` — the operator controls (`controls`); `order_steps` and
//! `operator_actions` — the audit trail (`audit`: every external step of a job, every bulk
//! operator command).
//!
//! Invariants:
//! - An Order is worked on by at most one job at a time: [`Ledger::claim`] takes a lease with a
//!   single conditional upsert (`INSERT … ON CONFLICT DO UPDATE … WHERE`), and every state
//!   change is conditioned on still holding it. A crashed holder's lease expires and another
//!   job takes over.
//! - The intent to call WHMCS `AddOrder` (`state = adding`, with its client id) is committed
//!   *before* the call and the WHMCS order id right after it.
//! - Durability: SQLite runs with `synchronous = NORMAL` in WAL mode. A power cut or OS crash
//!   can lose the last commits (never corrupt the file); nothing that keeps an Order from being
//!   provisioned twice depends on them, because a job re-run after such a loss is recognised by
//!   the queue and reconciles with WHMCS before adding (see `jobs::provision`). `FULL` would add
//!   an fsync to every commit, 27–48× the time of a write transaction on the measured disk
//!   (`sqlite_commit_cost`, README "Performance"). PostgreSQL keeps its own settings.
//! - One clock: every time the ledger stores (lease expiries, `updated_at`, attempts' start and
//!   end, inbox and dead-letter arrival, cursor writes, audit steps) is the database's
//!   ([`db_now_sql`], written in the statement itself), and every window over them ("the last
//!   hour", "since the lease") is measured back from the database's now. Replicas with skewed
//!   clocks therefore agree on leases, on the failure-rate alert and on what the reconciler
//!   treats as recently active.
//! - The inbox row and the cursor are written in one transaction, after the job is in Redis.
//! - Every committed change of an `orders` row (claim, state change, outcome) is announced on
//!   [`Ledger::changes`] after its commit; lease renewals and releases, which the portal cannot
//!   see, are not.
//! - SQL is portable (TEXT and BIGINT only, `$n` placeholders) so one code path serves both
//!   databases; migrations differ only where the dialects do (`migrations/{sqlite,postgres}`).
//!   One exception, for speed: the job's transactions of several statements (a new Order's row
//!   with its first attempt, attempt opened, `adding` intent, attempt closed) each go to the
//!   database in one trip ([`Ledger::one_trip`]), every statement conditioned on the lease
//!   change (or the row's creation) before it. On SQLite that is a script (`changes()`), on
//!   PostgreSQL one statement of data-modifying `WITH` clauses, since it takes one statement
//!   per prepared query.

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Any, AnyConnection, AnyPool,
    any::AnyRow,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
    pool::PoolConnection,
};

use crate::{changes::Changes, config::DatabaseConfig};

mod attempts;
mod audit;
mod controls;
mod cursor;
mod held;
mod inbox;
mod orders;

pub use attempts::MinuteRow;
pub use audit::{NewStep, OperatorAction, StepRecord, StepRow};
pub use controls::{POISON_PAYLOAD_MAX, PausePart, PauseRow, PoisonEntry, PoisonRow};
pub use cursor::{CursorRow, EARLIEST_REQUEST};
pub use inbox::{InboxEntry, InboxRow};

/// Settings of every SQLite connection (`synchronous = NORMAL`: see the module's durability note).
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;";

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}")]
    Db(sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger setup: {0}")]
    Setup(String),
    #[error("cursor write refused: a newer subscriber leader holds the lease")]
    Fenced,
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        // A broken connection shows here first: held connections check themselves once.
        held::note_error(&e);
        LedgerError::Db(e)
    }
}

/// Which SQL engine backs the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The per-Order state machine: `new → adding → whmcs_added → whmcs_accepted → done`, or
/// `failed` from any state. The one place the states are spelled; the ledger stores
/// [`OrderState::as_str`], operators filter with the same names (`--state whmcs_added`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum OrderState {
    New,
    /// The intent to call `AddOrder` is committed; the call may or may not have reached WHMCS.
    Adding,
    WhmcsAdded,
    WhmcsAccepted,
    Done,
    Failed,
    /// Provisioned or failed, but Salesforce refused the write-back for good (validation rule,
    /// locked record, restricted picklist): nothing drives the Order again until an operator
    /// re-triggers it.
    WritebackRejected,
}

impl OrderState {
    /// Every state, in the order of the happy path (then the terminal ones).
    pub const ALL: [OrderState; 7] = [
        Self::New,
        Self::Adding,
        Self::WhmcsAdded,
        Self::WhmcsAccepted,
        Self::Done,
        Self::Failed,
        Self::WritebackRejected,
    ];

    /// The name stored in the ledger.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Adding => "adding",
            Self::WhmcsAdded => "whmcs_added",
            Self::WhmcsAccepted => "whmcs_accepted",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::WritebackRejected => "writeback_rejected",
        }
    }

    /// The state a stored name means; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored names of [`OrderState`], for SQL binds and comparisons with stored rows.
pub mod state {
    use super::OrderState;

    pub const NEW: &str = OrderState::New.as_str();
    pub const ADDING: &str = OrderState::Adding.as_str();
    pub const WHMCS_ADDED: &str = OrderState::WhmcsAdded.as_str();
    pub const WHMCS_ACCEPTED: &str = OrderState::WhmcsAccepted.as_str();
    pub const DONE: &str = OrderState::Done.as_str();
    pub const FAILED: &str = OrderState::Failed.as_str();
    pub const WRITEBACK_REJECTED: &str = OrderState::WritebackRejected.as_str();
}

/// Outcomes written back to Salesforce.
pub mod outcome {
    pub const PROVISIONED: &str = "Provisioned";
    pub const FAILED: &str = "Failed";
    /// An attempt whose run stopped without closing it, closed by the next claim.
    pub const ABANDONED: &str = "Abandoned";
}

/// One Order as the ledger knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct AttemptRecord {
    pub id: i64,
    pub event_id: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Test-only skew of this process's clock (`test_clock_offset_secs`), in milliseconds.
static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Skews [`now_ms`] by `offset` (test-only: shows that leases never depend on a process's clock).
pub fn set_test_clock_offset(offset_secs: i64) {
    CLOCK_OFFSET_MS.store(
        offset_secs.saturating_mul(1000),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Milliseconds since the Unix epoch on this process's clock (plus the test-only skew). Used only
/// for figures within one process (e.g. an event's lag behind its `CreatedDate`); nothing the
/// ledger stores or compares comes from it (see [`db_now_sql`]).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
        + CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
}

const ORDER_COLUMNS: &str = "sf_order_id, state, outcome, account_id, whmcs_client_id, \
    whmcs_order_id, whmcs_service_ids, error_code, error_message, sf_status, last_event_id, \
    correlation_id, attempts, created_at, updated_at";

/// Appends `count` numbered placeholders from `$first`, comma-separated (`$3, $4, $5`): an
/// `IN (…)` list, or one row of a multi-row `VALUES`.
pub(crate) fn push_placeholders(sql: &mut String, first: usize, count: usize) {
    use std::fmt::Write as _;
    for n in first..first + count {
        if n > first {
            sql.push_str(", ");
        }
        // Writing to a `String` cannot fail.
        let _ = write!(sql, "${n}");
    }
}

/// [`push_placeholders`] into a string of their own.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    let mut sql = String::with_capacity(count * 5);
    push_placeholders(&mut sql, first, count);
    sql
}

/// A duration in milliseconds, as bound next to the database's "now" (a lease's end, a window's
/// start): saturates at half of `i64`'s range, so `now ± it` never overflows in SQL.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(i64::MAX / 2, |ms| ms.min(i64::MAX / 2))
}

/// SQL for the database's current time in epoch milliseconds.
pub(crate) const fn db_now_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
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
    /// Apply the change only while the lease is live on the database's clock, and extend it by
    /// this much from now in the same statement: the change then also answers
    /// [`Ledger::still_holds`] for an external step that follows it at once.
    pub renew: Option<std::time::Duration>,
    /// Set `adding_at` to the database's now (the `adding` intent).
    pub adding_now: bool,
}

/// What an attempt writes to its Order's row as it opens: with a new Order's row
/// ([`Ledger::claim_new`]), or as the change of [`Ledger::begin_attempt`] ([`Opening::change`]).
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    /// The event the attempt runs for (`last_event_id`, and the attempt's `event_id`).
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub account_id: Option<&'a str>,
    pub sf_status: Option<&'a str>,
}

impl<'a> Opening<'a> {
    /// The row change of an attempt opening on an existing row (an earlier outcome cleared).
    pub fn change(&self) -> Change<'a> {
        Change {
            last_event_id: Some(self.event_id),
            correlation_id: Some(self.correlation_id),
            account_id: self.account_id,
            sf_status: self.sf_status,
            outcome: Some(None),
            ..Default::default()
        }
    }
}

/// The lease after a change made with [`Ledger::update_keeping_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAfter {
    /// Another run holds the Order: nothing was written.
    Lost,
    /// Written (the run still owns the Order), but its lease had expired on the database's
    /// clock: not renewed; the run must stop before its next external side effect.
    Lapsed,
    /// Written, and the lease was live and is now extended.
    Live,
}

/// An argument of a statement whose text is built at run time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
}

impl<'a> Arg<'a> {
    /// Binds `args` in order (`$1`, `$2`, …).
    fn bind_all(
        mut q: sqlx::query::Query<'a, Any, sqlx::any::AnyArguments<'a>>,
        args: &[Arg<'a>],
    ) -> sqlx::query::Query<'a, Any, sqlx::any::AnyArguments<'a>> {
        for a in args {
            q = match *a {
                Arg::Text(v) => q.bind(v),
                Arg::OptText(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
            };
        }
        q
    }
}

/// The `UPDATE` behind an Order change (`Ledger::order_update`).
pub(crate) struct OrderUpdate<'a> {
    sql: String,
    args: Vec<Arg<'a>>,
    /// It returns one row with `live` (whether the lease is live after it).
    returns_live: bool,
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
    /// PostgreSQL: the connections single statements run on, held outside the pool
    /// ([`held`]); transactions take pooled ones.
    held: Option<Arc<held::Held>>,
    /// Set by [`Ledger::close`]: held connections refuse work like a closed pool.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// SQLite: a script ([`Ledger::one_trip`]) was sent on the writer and not seen to its end
    /// (its caller was cancelled): the writer may be inside its transaction. Read and cleared
    /// while holding that connection, by its next user, which rolls the transaction back first.
    script_open: Arc<std::sync::atomic::AtomicBool>,
    backend: Backend,
    /// Told of every committed change of an `orders` row the portal can see.
    changes: Changes,
    /// Audit steps waiting for the writer task.
    steps: Arc<audit::StepQueue>,
}

/// The connection a statement runs on: held (SQLite's, PostgreSQL's for single statements) or
/// pooled.
enum LedgerConn<'a> {
    Pooled(PoolConnection<Any>),
    Shared(tokio::sync::MutexGuard<'a, AnyConnection>),
    Held(held::HeldConn<'a>),
}

impl std::ops::Deref for LedgerConn<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            LedgerConn::Pooled(c) => c,
            LedgerConn::Shared(g) => g,
            LedgerConn::Held(h) => &h.conn,
        }
    }
}

impl std::ops::DerefMut for LedgerConn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            LedgerConn::Pooled(c) => c,
            LedgerConn::Shared(g) => g,
            LedgerConn::Held(h) => &mut h.conn,
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
        // PostgreSQL: all but two of the pool's connections (one of two, none of one) may be
        // held for single statements; the rest serve transactions, migrations and tools.
        let held = match (backend, usize::try_from(cfg.max_connections)) {
            (Backend::Postgres, Ok(n)) if n >= 2 => Some(Arc::new(held::Held::new((n - 2).max(1)))),
            _ => None,
        };
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
            held,
            closed: Arc::default(),
            script_open: Arc::default(),
            backend,
            changes: Changes::new(),
            steps: Arc::default(),
        })
    }

    /// A connection for a read: a free SQLite reader (else the next one in turn), or one from
    /// the read pool.
    async fn reader(&self) -> Result<LedgerConn<'_>> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(sqlx::Error::PoolClosed.into());
        }
        if let Some(held) = &self.held {
            return Ok(LedgerConn::Held(held.take(&self.pool).await?));
        }
        let n = self.readers.len();
        if n == 0 {
            // An in-memory SQLite ledger reads on its one connection, the writer's.
            let mut conn = LedgerConn::Pooled(self.read.acquire().await?);
            self.settle(&mut conn).await;
            return Ok(conn);
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

    /// The connection for a single write statement (or a SQLite script, [`Ledger::one_trip`]):
    /// SQLite's single writer, a held PostgreSQL connection, or one from the pool.
    async fn writer(&self) -> Result<LedgerConn<'_>> {
        match &self.held {
            // Refused once closed: `close` closes the held connections first.
            Some(held) => Ok(LedgerConn::Held(held.take(&self.pool).await?)),
            None => self.writer_for_transaction().await,
        }
    }

    /// The connection for a transaction of several statements: SQLite's single writer, or one
    /// from the pool (never a held PostgreSQL connection: returning a pooled one rolls back a
    /// transaction its cancelled caller left open).
    async fn writer_for_transaction(&self) -> Result<LedgerConn<'_>> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(sqlx::Error::PoolClosed.into());
        }
        let mut conn = match &self.writer {
            Some(w) => LedgerConn::Shared(w.lock().await),
            None => LedgerConn::Pooled(self.pool.acquire().await?),
        };
        self.settle(&mut conn).await;
        Ok(conn)
    }

    /// SQLite: ends the transaction a cancelled script ([`Ledger::one_trip`]) may have left open
    /// on `conn`, the connection it ran on (the writer; for an in-memory ledger its only one),
    /// before anything else runs there. An error only means none was open.
    async fn settle(&self, conn: &mut AnyConnection) {
        use std::sync::atomic::Ordering;
        if self.backend == Backend::Sqlite && self.script_open.load(Ordering::Acquire) {
            use sqlx::Executor;
            let _ = conn.execute("ROLLBACK").await;
            self.script_open.store(false, Ordering::Release);
        }
    }

    /// The SQL of a [`Ledger::one_trip`] made of an Order change (`update`, from
    /// `order_update`) and one statement that must run only if the change applied:
    /// `follow(applied)`, where `applied` is this dialect's condition for that. The change
    /// returns one row (`applied`) when it applied, none when the lease was lost.
    fn change_then(&self, update: &str, follow: impl Fn(&str) -> String) -> String {
        match self.backend {
            Backend::Sqlite => format!(
                "{update} RETURNING 1 AS applied; {}",
                follow("changes() > 0")
            ),
            Backend::Postgres => format!(
                "WITH u AS ({update} RETURNING 1 AS applied), f AS ({}) SELECT applied FROM u",
                follow("EXISTS (SELECT 1 FROM u)")
            ),
        }
    }

    /// Runs one transaction of several statements in one trip to the database, and returns
    /// the rows its statements returned (a transaction says what it did through `RETURNING`).
    ///
    /// - **SQLite:** `sql` is a script of statements separated by `;`, run as
    ///   `BEGIN IMMEDIATE; sql; COMMIT` in one command to SQLite's thread (instead of one per
    ///   statement plus `BEGIN` and `COMMIT`). Nothing can be decided between its statements,
    ///   so each carries its own condition (`changes()`: the statement before it changed a row).
    ///   A failed statement stops the script and it is rolled back here; a caller cancelled
    ///   mid-script leaves `script_open` set, and the next use of the connection rolls back
    ///   first ([`Ledger::settle`]). Either way it commits whole or not at all. Rows-changed
    ///   counts are not used: SQLite reports the previous statement's for `BEGIN` and `COMMIT`.
    /// - **PostgreSQL:** `sql` is one statement (data-modifying `WITH` clauses, each
    ///   conditioned on the one before), atomic by itself.
    async fn one_trip(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<AnyRow>> {
        use futures::TryStreamExt;
        use sqlx::Executor;
        use std::sync::atomic::Ordering;
        let mut conn = self.writer().await?;
        if self.backend == Backend::Postgres {
            return Ok(Arg::bind_all(sqlx::query(sql), args)
                .fetch_all(&mut *conn)
                .await?);
        }
        let script = format!("BEGIN IMMEDIATE; {sql}; COMMIT");
        self.script_open.store(true, Ordering::Release);
        let query = Arg::bind_all(sqlx::query(&script), args);
        let ran: std::result::Result<Vec<_>, sqlx::Error> =
            conn.fetch_many(query).try_collect().await;
        if ran.is_err() {
            let _ = conn.execute("ROLLBACK").await;
        }
        self.script_open.store(false, Ordering::Release);
        Ok(ran?
            .into_iter()
            .filter_map(|part| match part {
                sqlx::Either::Left(_) => None,
                sqlx::Either::Right(row) => Some(row),
            })
            .collect())
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

    /// The notifications of this ledger's committed Order changes (see [`crate::changes`]).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The connection pool (operator tools and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; later calls fail as with an unreachable database.
    pub async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(held) = &self.held {
            held.release_all().await;
        }
        self.pool.close().await;
        self.read.close().await;
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQL for "now" in epoch milliseconds on the database's clock: every replica compares
    /// leases against this one clock, never against its own.
    pub(crate) fn db_now(&self) -> &'static str {
        db_now_sql(self.backend)
    }

    /// Applies pending migrations (takes the database's migration lock).
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATOR.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATOR.run(&self.pool).await?,
        }
        Ok(())
    }

    /// PostgreSQL: whether this process's connections are encrypted (`pg_stat_ssl` of one
    /// pooled session); `None` on SQLite.
    pub async fn tls_in_use(&self) -> Result<Option<bool>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let row = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(&self.pool)
            .await?;
        Ok(Some(match row {
            Some(r) => sqlx::Row::try_get::<bool, _>(&r, "ssl")?,
            None => false,
        }))
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SalesforceId;

    #[test]
    fn placeholders_are_numbered_from_the_first() {
        assert_eq!(placeholders(1, 3), "$1, $2, $3");
        assert_eq!(placeholders(2, 1), "$2");
        assert_eq!(placeholders(1, 0), "");
        let mut row = String::from("(");
        push_placeholders(&mut row, 12, 2);
        assert_eq!(row, "($12, $13");
    }

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
            .begin_attempt(&id, "a", Some("ev-1"), &Change::default(), true)
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

    /// A lease that expired on the database's clock is not held, even if nobody took it.
    #[tokio::test]
    async fn an_expired_lease_is_not_held() {
        let l = ledger("sqlite::memory:".into()).await;
        let id = SalesforceId::synthesize("801", 7);
        let lease = Duration::from_secs(30);
        assert!(l.claim(&id, "a", lease).await.expect("claim").is_some());
        assert!(l.still_holds(&id, "a", lease).await.expect("holds"));
        assert!(!l.still_holds(&id, "b", lease).await.expect("holds"));
        sqlx::query("UPDATE orders SET lease_until = 0")
            .execute(l.pool())
            .await
            .expect("expire");
        assert!(!l.still_holds(&id, "a", lease).await.expect("holds"));
        assert!(l.claim(&id, "b", lease).await.expect("claim").is_some());
    }

    /// A change that renews the lease applies only while it is live, and extends it.
    #[tokio::test]
    async fn a_renewing_change_needs_a_live_lease_and_extends_it() {
        let l = ledger("sqlite::memory:".into()).await;
        let id = SalesforceId::synthesize("801", 8);
        let lease = Duration::from_secs(30);
        assert!(l.claim(&id, "a", lease).await.expect("claim").is_some());
        let renewing = Change {
            state: Some(state::WHMCS_ACCEPTED),
            renew: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        assert!(l.update(&id, "a", &renewing).await.expect("update"));
        let (_, until) = l.lease_of(&id).await.expect("lease").expect("row");
        let now = l.clock_ms().await.expect("clock");
        assert!(until.expect("held") > now + 500_000, "extended to 600 s");
        assert!(
            !l.update(&id, "b", &renewing).await.expect("update"),
            "not b's"
        );
        sqlx::query("UPDATE orders SET lease_until = 0")
            .execute(l.pool())
            .await
            .expect("expire");
        assert!(
            !l.update(&id, "a", &renewing).await.expect("update"),
            "an expired lease is not renewed by a change"
        );
        assert!(
            !l.mark_adding(&id, "a", "1", lease).await.expect("adding"),
            "nor by the adding intent"
        );
        let plain = Change {
            sf_status: Some("Activated"),
            ..Default::default()
        };
        assert!(
            l.update(&id, "a", &plain).await.expect("update"),
            "a change that does not renew needs only the owner"
        );
    }

    /// Fencing tokens come from the ledger, above every stored cursor token; every cursor write
    /// (save, batch, clear) with an older token is refused.
    #[tokio::test]
    async fn fencing_tokens_are_allocated_in_the_ledger_and_fence_every_cursor_write() {
        let l = ledger("sqlite::memory:".into()).await;
        // A cursor written by a leader whose token came from elsewhere (an older release).
        l.save_cursor("ch", &[1], 5).await.expect("save");
        let t1 = l.next_leader_epoch("q:leader").await.expect("epoch");
        let t2 = l.next_leader_epoch("q:leader").await.expect("epoch");
        assert_eq!((t1, t2), (6, 7));
        l.save_cursor("ch", &[2], t2).await.expect("save");
        assert!(matches!(
            l.save_cursor("ch", &[3], t1).await,
            Err(LedgerError::Fenced)
        ));
        assert!(matches!(
            l.clear_cursor("ch", t1).await,
            Err(LedgerError::Fenced)
        ));
        assert!(matches!(
            l.record_events("ch", &[], &[4], t1).await,
            Err(LedgerError::Fenced)
        ));
        assert_eq!(l.load_cursor("ch").await.expect("load"), Some(vec![2]));
        // A cleared cursor keeps its token: an older leader still cannot write.
        l.clear_cursor("ch", t2).await.expect("clear");
        assert_eq!(l.load_cursor("ch").await.expect("load"), None);
        assert_eq!(l.cursor_row("ch").await.expect("row"), None);
        assert!(matches!(
            l.save_cursor("ch", &[5], t1).await,
            Err(LedgerError::Fenced)
        ));
        assert_eq!(l.next_leader_epoch("q:leader").await.expect("epoch"), 8);
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

    /// A script whose caller was cancelled may leave its transaction open on the writer: the
    /// next write rolls it back first, so nothing of it is committed and later writes commit.
    #[tokio::test]
    async fn a_script_cut_off_midway_is_rolled_back_by_the_next_write() {
        let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
        let l = ledger(format!("sqlite://{}/l.db", dir.display())).await;
        let id = SalesforceId::synthesize("801", 3);
        let lease = Duration::from_secs(30);
        assert!(l.claim(&id, "a", lease).await.expect("claim").is_some());
        {
            // What a cancelled script leaves: its first statements ran, `COMMIT` did not.
            use sqlx::Executor;
            let mut conn = l.writer().await.expect("writer");
            l.script_open
                .store(true, std::sync::atomic::Ordering::Release);
            conn.execute("BEGIN IMMEDIATE; UPDATE orders SET state = 'half'")
                .await
                .expect("half a script");
        }
        let change = Change {
            state: Some(state::WHMCS_ACCEPTED),
            ..Default::default()
        };
        assert!(l.update(&id, "a", &change).await.expect("update"));
        let row = l.get(&id).await.expect("get").expect("row");
        assert_eq!(row.state, state::WHMCS_ACCEPTED, "the next write committed");
        assert!(
            !l.script_open.load(std::sync::atomic::Ordering::Acquire),
            "cleared"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The cost of a durable commit: `n` claim + release pairs (two write transactions each)
    /// on a file ledger under `synchronous = NORMAL` (the setting used) and `FULL`. Prints the
    /// per-transaction times and their ratio; run with
    /// `cargo test --lib sqlite_commit_cost -- --ignored --nocapture` on the target disk.
    #[tokio::test]
    #[ignore = "a timing, not a check"]
    async fn sqlite_commit_cost() {
        use sqlx::Executor;
        let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
        let n = 500;
        for round in 0..3 {
            let mut per_tx = Vec::new();
            for mode in ["NORMAL", "FULL"] {
                let l = ledger(format!("sqlite://{}/{mode}-{round}.db", dir.display())).await;
                if let Some(w) = &l.writer {
                    w.lock()
                        .await
                        .execute(format!("PRAGMA synchronous = {mode}").as_str())
                        .await
                        .expect("pragma");
                }
                let started = std::time::Instant::now();
                for i in 0..n {
                    let id = SalesforceId::synthesize("801", i % 50);
                    l.claim(&id, "a", Duration::from_secs(30))
                        .await
                        .expect("claim")
                        .expect("free");
                    l.release(&id, "a").await.expect("release");
                }
                per_tx.push(started.elapsed().as_secs_f64() * 1e6 / (2 * n) as f64);
                l.close().await;
            }
            println!(
                "synchronous=NORMAL {:.0} µs/tx, FULL {:.0} µs/tx, FULL/NORMAL {:.0}x",
                per_tx[0],
                per_tx[1],
                per_tx[1] / per_tx[0]
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
