//! The order-status view: recent Orders' status bodies, encoded exactly as served (JSON and
//! ETag), in memory, so the portal's polls cost no database round trip.
//!
//! Invariants:
//! - Bounded: at most [`CAPACITY`] Orders (moka, TinyLFU admission), each dropped [`TTL`] after
//!   it was read from the ledger.
//! - Coherent with the ledger of every replica: before any answer, every change notification
//!   received so far is applied (the Order's entry dropped; everything on `Lost`), and
//!   notifications are sent after their commit, so an answer never predates a change announced
//!   before the request. Nothing is served or cached while notifications may be incomplete
//!   ([`Changes::complete`]: a replica whose cross-replica feed is down reads the ledger).
//! - A ledger read that raced a change is not cached: a read remembers the generation of its
//!   Order's shard, and its result is inserted only if no notification for that shard (and no
//!   `Lost`) was applied since; the check and the insert happen under the lock that applies
//!   notifications.

use std::sync::{Arc, Mutex};

use axum::{body::Bytes, http::HeaderValue};
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::{
    changes::{Change, Changes},
    ids::SalesforceId,
};

/// Most Orders held.
pub(super) const CAPACITY: u64 = 10_000;
/// How long an entry is kept after its ledger read (a bound on staleness should a notification
/// ever be lost without being noticed).
pub(super) const TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Generation shards: a change of one Order spoils only concurrent reads of its shard.
const SHARDS: usize = 64;

/// One Order's status as served.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) body: Bytes,
    pub(super) etag: HeaderValue,
    /// A digest of the Order's status (`status`, `activationStatus`, `error`): SSE streams send
    /// an event when it changes, not on every ledger write.
    pub(super) shown: u64,
    /// The Order's Account; `None` only for Orders looked up without one.
    pub(super) account: Option<SalesforceId>,
}

impl Encoded {
    /// Whether the caller of `account` may see it (`None`: auth disabled, everyone).
    pub(super) fn visible_to(&self, account: Option<&SalesforceId>) -> bool {
        account.is_none_or(|a| self.account.as_ref() == Some(a))
    }
}

/// Where a read stands: the generations it must still see unchanged to cache its result.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadMark {
    shard: usize,
    shard_gen: u64,
    all_gen: u64,
}

struct Applied {
    rx: broadcast::Receiver<Change>,
    shard_gens: [u64; SHARDS],
    all_gen: u64,
}

/// See the module invariants.
pub(super) struct View {
    cache: moka::sync::Cache<SalesforceId, Arc<Encoded>>,
    applied: Mutex<Applied>,
    changes: Changes,
}

fn shard_of(id: &str) -> usize {
    // FNV-1a: the shard only spreads concurrent reads, it needs no resistance to collisions.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % SHARDS as u64) as usize
}

impl View {
    pub(super) fn new(changes: &Changes) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
            applied: Mutex::new(Applied {
                rx: changes.subscribe(),
                shard_gens: [0; SHARDS],
                all_gen: 0,
            }),
            changes: changes.clone(),
        }
    }

    /// Applies every notification received so far.
    fn apply(&self, a: &mut Applied) {
        loop {
            match a.rx.try_recv() {
                Ok(change) => match change.order_id() {
                    Some(id) => {
                        a.shard_gens[shard_of(id)] += 1;
                        if let Ok(id) = SalesforceId::parse(id) {
                            self.cache.invalidate(&id);
                        }
                    }
                    None => self.forget_all(a),
                },
                Err(TryRecvError::Lagged(_)) => self.forget_all(a),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    fn forget_all(&self, a: &mut Applied) {
        a.all_gen += 1;
        self.cache.invalidate_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Order's cached status, or (on a miss) the mark a ledger read takes to cache its
    /// result; `Err(None)` when nothing may be cached now.
    pub(super) fn get(&self, id: &SalesforceId) -> Result<Arc<Encoded>, Option<ReadMark>> {
        if !self.changes.complete() {
            return Err(None);
        }
        let mark = {
            let mut a = self.lock();
            self.apply(&mut a);
            let shard = shard_of(id.as_str());
            ReadMark {
                shard,
                shard_gen: a.shard_gens[shard],
                all_gen: a.all_gen,
            }
        };
        self.cache.get(id).ok_or(Some(mark))
    }

    /// Caches what a read started at `mark` found, unless a change of its shard was applied
    /// since (or notifications became incomplete).
    pub(super) fn insert(&self, id: SalesforceId, mark: ReadMark, entry: Arc<Encoded>) {
        let mut a = self.lock();
        self.apply(&mut a);
        if self.changes.complete()
            && a.shard_gens[mark.shard] == mark.shard_gen
            && a.all_gen == mark.all_gen
        {
            self.cache.insert(id, entry);
        }
    }

    #[cfg(test)]
    fn cached(&self, id: &SalesforceId) -> bool {
        self.cache.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<Encoded> {
        Arc::new(Encoded {
            body: Bytes::from_static(b"{}"),
            etag: HeaderValue::from_static("W/\"1\""),
            shown: 1,
            account: None,
        })
    }

    #[test]
    fn a_change_drops_the_entry_before_the_next_answer() {
        let changes = Changes::new();
        let view = View::new(&changes);
        let id = SalesforceId::synthesize("801", 1);
        let mark = view.get(&id).expect_err("empty").expect("cacheable");
        view.insert(id.clone(), mark, entry());
        assert!(view.get(&id).is_ok());
        changes.changed(id.as_str());
        assert!(view.get(&id).is_err(), "served after a change");
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_cached() {
        let changes = Changes::new();
        let view = View::new(&changes);
        let id = SalesforceId::synthesize("801", 2);
        let mark = view.get(&id).expect_err("empty").expect("cacheable");
        // The ledger read happens here; meanwhile another replica changes the Order.
        changes.changed_elsewhere(id.as_str());
        // Another request applies the notification before the read inserts.
        let _ = view.get(&SalesforceId::synthesize("801", 3));
        view.insert(id.clone(), mark, entry());
        assert!(!view.cached(&id));
        // A change of an Order of another shard does not spoil the read.
        let other = (4..200)
            .map(|n| SalesforceId::synthesize("801", n))
            .find(|o| shard_of(o.as_str()) != shard_of(id.as_str()))
            .expect("another shard");
        let mark = view.get(&id).expect_err("empty").expect("cacheable");
        changes.changed(other.as_str());
        view.insert(id.clone(), mark, entry());
        assert!(view.cached(&id));
    }

    #[test]
    fn nothing_is_served_or_cached_while_the_feed_is_down() {
        let changes = Changes::new();
        changes.expect_feed();
        let view = View::new(&changes);
        let id = SalesforceId::synthesize("801", 5);
        assert!(matches!(view.get(&id), Err(None)));
        changes.feed_live(true);
        let mark = view.get(&id).expect_err("empty").expect("cacheable");
        view.insert(id.clone(), mark, entry());
        assert!(view.get(&id).is_ok());
        changes.feed_live(false);
        assert!(matches!(view.get(&id), Err(None)));
        changes.feed_live(true);
        assert!(view.get(&id).is_err(), "the loss dropped everything");
    }
}
