//! Who is watching which Order: the SSE streams' subscriptions to change notifications, by
//! Order, so a change wakes only the streams of its Order (not every open stream).
//!
//! Invariants:
//! - A stream registers ([`Watchers::watch`]) before it reads the Order's current status; every
//!   notification for that Order applied after the registration bumps the version its
//!   [`Watching`] sees, so no change between the read and the first wait is lost.
//! - One dispatcher task per router (started with the first stream) applies the notifications:
//!   an Order's version is bumped for a notification of that Order, every watched Order's for
//!   `Lost` or a lagging receiver (see `crate::changes`).
//! - Bounded: an Order is in the table only while a stream watches it (at most
//!   `sse_max_clients` entries); the last stream to stop removes it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use tokio::sync::{broadcast::error::RecvError, watch};

use crate::{changes::Changes, ids::SalesforceId};

type Table = HashMap<SalesforceId, watch::Sender<u64>>;

/// See the module invariants.
pub(super) struct Watchers {
    table: Arc<Mutex<Table>>,
    changes: Changes,
    dispatcher: OnceLock<()>,
}

/// One stream's subscription to its Order's changes; leaves the table with the last one.
pub(super) struct Watching {
    rx: Option<watch::Receiver<u64>>,
    id: SalesforceId,
    table: Arc<Mutex<Table>>,
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchers {
    pub(super) fn new(changes: &Changes) -> Self {
        Self {
            table: Arc::default(),
            changes: changes.clone(),
            dispatcher: OnceLock::new(),
        }
    }

    /// Registers a stream of `id` (starting the dispatcher on first use).
    pub(super) fn watch(&self, id: &SalesforceId) -> Watching {
        self.dispatcher.get_or_init(|| {
            let (table, mut rx) = (self.table.clone(), self.changes.subscribe());
            tokio::spawn(async move {
                loop {
                    let change = rx.recv().await;
                    let table = lock(&table);
                    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|v| *v += 1);
                    match change {
                        Ok(c) => match c.order_id() {
                            Some(id) => {
                                if let Some(tx) =
                                    SalesforceId::parse(id).ok().and_then(|id| table.get(&id))
                                {
                                    bump(tx);
                                }
                            }
                            None => table.values().for_each(bump),
                        },
                        Err(RecvError::Lagged(_)) => table.values().for_each(bump),
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        });
        let rx = lock(&self.table)
            .entry(id.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watching {
            rx: Some(rx),
            id: id.clone(),
            table: self.table.clone(),
        }
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
        lock(&self.table).len()
    }
}

impl Watching {
    /// Completes when the Order may have changed since the last call (or the registration).
    pub(super) async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut table = lock(&self.table);
        if table
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            table.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_change_wakes_only_its_orders_streams_and_the_table_empties() {
        let changes = Changes::new();
        let watchers = Watchers::new(&changes);
        let (a, b) = (
            SalesforceId::synthesize("801", 1),
            SalesforceId::synthesize("801", 2),
        );
        let mut wa = watchers.watch(&a);
        let mut wb = watchers.watch(&b);
        let wa2 = watchers.watch(&a);
        assert_eq!(watchers.watched(), 2);
        // A change made before the stream waits is not lost.
        changes.changed(a.as_str());
        tokio::time::timeout(Duration::from_secs(5), wa.changed())
            .await
            .expect("a's stream woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), wb.changed())
                .await
                .is_err(),
            "b's stream stays asleep"
        );
        changes.lost();
        tokio::time::timeout(Duration::from_secs(5), wb.changed())
            .await
            .expect("every stream woken by a loss");
        drop(wa);
        assert_eq!(
            watchers.watched(),
            2,
            "a is still watched by another stream"
        );
        drop(wa2);
        drop(wb);
        assert_eq!(watchers.watched(), 0);
    }
}
