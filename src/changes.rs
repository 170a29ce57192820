//! Order change notifications: who learns that an Order's ledger row changed, and whether this
//! process can trust that it learns of every change.
//!
//! The ledger announces every committed change of an `orders` row that the portal can see
//! ([`Changes::changed`]); the cross-replica feed (`queue::feed`, Redis pub/sub) carries them to
//! the other processes and brings theirs in ([`Changes::changed_elsewhere`]). Readers are the
//! order-status view and the SSE streams of the HTTP surface.
//!
//! Invariants:
//! - A notification is sent after the change is committed, never before, so a reader woken by
//!   it reads the new row.
//! - [`Changes::complete`] is `true` only while every change of every process reaches this one:
//!   always in a process that runs alone (no feed expected), and in a daemon only while its
//!   feed is subscribed and proven live. Caches of ledger rows are used only while it holds.
//! - When notifications may have been missed (the feed dropped, a receiver lagged) readers get
//!   [`Change::Lost`] and must treat every Order as changed.
//!
//! A leaf of the module graph: plain data and a `tokio::sync::broadcast` channel.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::broadcast;

/// Notifications buffered per receiver before it lags (and then gets [`Change::Lost`]).
const CAPACITY: usize = 4096;

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This process changed the Order (its 18-character id).
    Local(Arc<str>),
    /// Another process changed the Order (learnt through the feed).
    Remote(Arc<str>),
    /// Notifications may have been missed: any Order may have changed.
    Lost,
}

impl Change {
    /// The Order this notification is about (`None` for [`Change::Lost`]).
    pub fn order_id(&self) -> Option<&str> {
        match self {
            Self::Local(id) | Self::Remote(id) => Some(id),
            Self::Lost => None,
        }
    }

    /// Whether a reader watching `order_id` must read it again.
    pub fn concerns(&self, order_id: &str) -> bool {
        self.order_id().is_none_or(|id| id == order_id)
    }
}

/// The change notifications of one process; cheap to clone.
#[derive(Clone, Debug)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
    state: Arc<FeedState>,
}

#[derive(Debug, Default)]
struct FeedState {
    /// A cross-replica feed is expected (set once by the daemon).
    expected: AtomicBool,
    /// The feed is subscribed and proven live.
    live: AtomicBool,
    /// Bumped whenever notifications may have been missed.
    losses: AtomicU64,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            state: Arc::default(),
        }
    }

    /// Announces a committed change of the Order made by this process.
    pub fn changed(&self, order_id: &str) {
        let _ = self.tx.send(Change::Local(order_id.into()));
    }

    /// Announces a change another process made (from the feed).
    pub fn changed_elsewhere(&self, order_id: &str) {
        let _ = self.tx.send(Change::Remote(order_id.into()));
    }

    /// Announces that notifications may have been missed.
    pub fn lost(&self) {
        self.state.losses.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Change::Lost);
    }

    /// Receives every notification sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Declares that other processes share the ledger: from now on notifications are complete
    /// only while [`Changes::feed_live`] says the feed is.
    pub fn expect_feed(&self) {
        self.state.expected.store(true, Ordering::SeqCst);
    }

    /// Records whether the feed is subscribed and proven live. Going down announces
    /// [`Change::Lost`] (and counts a loss); coming back announces it again, so readers look
    /// once more at what changed while it was down.
    pub fn feed_live(&self, live: bool) {
        let was = self.state.live.swap(live, Ordering::SeqCst);
        if was && !live {
            self.lost();
        } else if !was && live {
            let _ = self.tx.send(Change::Lost);
        }
    }

    /// Whether every change of every process reaches this one (see the module invariants).
    pub fn complete(&self) -> bool {
        !self.state.expected.load(Ordering::SeqCst) || self.state.live.load(Ordering::SeqCst)
    }

    /// How many times notifications may have been missed so far.
    pub fn losses(&self) -> u64 {
        self.state.losses.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_process_is_complete_a_replica_only_while_its_feed_is_live() {
        let c = Changes::new();
        assert!(c.complete());
        c.expect_feed();
        assert!(!c.complete());
        c.feed_live(true);
        assert!(c.complete());
        let mut rx = c.subscribe();
        c.feed_live(false);
        assert!(!c.complete());
        assert_eq!(rx.try_recv().expect("lost"), Change::Lost);
        assert_eq!(c.losses(), 1);
        c.feed_live(true);
        assert_eq!(
            rx.try_recv().expect("back"),
            Change::Lost,
            "readers look again"
        );
        c.feed_live(true);
        assert!(rx.try_recv().is_err(), "only on a change of state");
        assert_eq!(c.losses(), 1);
    }

    #[test]
    fn lost_concerns_every_order() {
        assert!(Change::Lost.concerns("a"));
        assert!(Change::Local("a".into()).concerns("a"));
        assert!(!Change::Remote("b".into()).concerns("a"));
    }
}
