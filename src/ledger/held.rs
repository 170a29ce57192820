//! PostgreSQL: the connections single statements run on, taken from sqlx's pool once and held.
//!
//! sqlx pings a pooled connection every time it goes back to the pool (a `Sync` and its
//! `ReadyForQuery`: one more round trip per statement, in a task of its own). The ledger's
//! statements outside transactions are autocommit, so a connection can serve the next one
//! right away; these slots keep it.
//!
//! Invariants:
//! - Only single statements run here: a statement cut off by a cancelled caller leaves no
//!   transaction open (sqlx reads what is left of its answer before the connection's next
//!   statement). Transactions of several statements take a pooled connection, whose return to
//!   the pool rolls back one a cancelled caller left open.
//! - A held connection is checked (one ping) before it is used again when it has been idle
//!   longer than [`IDLE_CHECK`] or when any ledger connection of this process has failed since
//!   it was last handed out ([`note_error`]); one that fails its check goes back to the pool
//!   (which closes it) and the slot takes a fresh one. A server restart therefore costs each
//!   slot at most one failed statement.
//! - At most `slots` connections are held; the pool keeps the rest for transactions,
//!   migrations and operator tools. [`Held::release_all`] gives them back so the pool can close.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Any, AnyPool, Connection, pool::PoolConnection};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// A held connection idle for longer than this is pinged before its next statement.
pub const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Connections a slot checks, after a failure, before it uses one unchecked.
const RECOVERY_TRIES: u32 = 4;

/// Connection-level failures (I/O, TLS, protocol) seen by any ledger of this process.
static CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Counts `e` if it means the connection it ran on may be broken.
pub fn note_error(e: &sqlx::Error) {
    let broken = match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE classes 08 (connection exception) and 57 (operator intervention: the
        // server terminated the session or is shutting down).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
        _ => false,
    };
    if broken {
        CONNECTION_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Slot {
    conn: Option<PoolConnection<Any>>,
    /// [`CONNECTION_ERRORS`] when the connection was last handed out.
    errors_seen: u64,
    last_used: Option<Instant>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// A held connection while one statement uses it (the slot is unlocked before the permit
/// goes back, so a permit always finds a free slot).
pub struct HeldConn<'a> {
    pub conn: tokio::sync::MappedMutexGuard<'a, PoolConnection<Any>>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
pub struct Held {
    slots: Vec<Mutex<Slot>>,
    free: std::sync::Arc<Semaphore>,
    next: AtomicUsize,
}

impl Held {
    /// `slots` (at least 1) connections held at most.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots).map(|_| Mutex::new(Slot::default())).collect(),
            free: std::sync::Arc::new(Semaphore::new(slots)),
            next: AtomicUsize::new(0),
        }
    }

    /// A free held connection, connected and checked as the module says.
    pub async fn take<'a>(&'a self, pool: &AnyPool) -> Result<HeldConn<'a>, sqlx::Error> {
        let permit = self
            .free
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // A permit means a slot is free: the scan finds it unless one is being released right
        // now, in which case waiting for the first is as good.
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.slots[(start + i) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[start % n].lock().await,
        };
        let errors = CONNECTION_ERRORS.load(Ordering::Relaxed);
        let recovering = guard.errors_seen != errors;
        let idle = guard.last_used.is_none_or(|t| t.elapsed() > IDLE_CHECK);
        if idle || recovering {
            if let Some(c) = guard.conn.as_mut() {
                if c.ping().await.is_err() {
                    // Back to the pool, whose own check closes it.
                    guard.conn = None;
                }
            }
        }
        // After a failure the pool's idle connections may be as dead as this one (it hands
        // them out unchecked): a few fresh ones are checked before one is taken unchecked.
        let mut tries = 0;
        while guard.conn.is_none() {
            let mut fresh = pool.acquire().await?;
            tries += 1;
            if recovering && tries < RECOVERY_TRIES && fresh.ping().await.is_err() {
                continue;
            }
            guard.conn = Some(fresh);
        }
        guard.errors_seen = errors;
        guard.last_used = Some(Instant::now());
        let conn = tokio::sync::MutexGuard::try_map(guard, |s| s.conn.as_mut())
            .map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(HeldConn {
            conn,
            _permit: permit,
        })
    }

    /// Gives every held connection back to the pool (before the pool closes).
    pub async fn release_all(&self) {
        self.free.close();
        for slot in &self.slots {
            slot.lock().await.conn = None;
        }
    }
}
