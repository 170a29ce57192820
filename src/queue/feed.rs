//! The cross-replica change feed: every process publishes the Orders its ledger changed on the
//! Redis pub/sub channel `{queue}:order-changes` and reads the other processes' changes from it,
//! so each process's order-status view and SSE streams learn of every change, whoever made it.
//!
//! A message is `{origin}\n{body}`: `origin` is the publishing process's instance name; `body`
//! is comma-separated Order ids, `*` (this process may have missed announcing some changes:
//! treat every Order as changed), or `hb` (a heartbeat).
//!
//! Invariants:
//! - The feed is declared live ([`Changes::feed_live`]) only after this process received its
//!   own heartbeat through Redis, which proves the whole publish → subscribe path; it is
//!   declared down (readers get `Lost`) when the subscription drops or nothing (not even the
//!   heartbeat published every [`HEARTBEAT`]) arrives for [`SILENCE`].
//! - A change is published at most [`COALESCE`] after it was announced, with whatever else
//!   changed meanwhile (each Order once per message): one message per window, whatever the
//!   rate of changes.
//! - Changes that could not be published stay pending (at most [`MAX_PENDING`] ids; beyond
//!   that, and when this process's own notifications lagged, the next message is `*`), and are
//!   published once Redis answers again.
//! - Pub/sub is fire-and-forget: a replica that is not subscribed when a message is sent misses
//!   it, which is why readers cache ledger rows only while the feed is live.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::changes::{Change, Changes};

/// How often each process publishes a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence on the subscription after which the feed counts as down.
pub const SILENCE: Duration = Duration::from_secs(4);
/// Most unpublished ids kept while Redis does not answer.
pub const MAX_PENDING: usize = 10_000;
/// Most ids in one message.
const BATCH: usize = 500;
/// How long a change waits for others to share its message: at most this much is added to the
/// time another replica takes to see it, and a process publishes at most one message of
/// changes per window, whatever its rate of changes.
pub const COALESCE: Duration = Duration::from_millis(20);
/// How long connecting the subscription may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel of the queue named `queue`.
pub fn channel(queue: &str) -> String {
    format!("{queue}:order-changes")
}

/// The feed of one process.
pub struct Feed {
    pub client: redis::Client,
    pub publish: ConnectionManager,
    pub channel: String,
    /// This process's instance name.
    pub origin: String,
    pub changes: Changes,
}

/// What a message says.
#[derive(Debug, PartialEq, Eq)]
enum Body<'a> {
    Heartbeat,
    All,
    Orders(Vec<&'a str>),
}

fn encode(origin: &str, body: &Body<'_>) -> String {
    match body {
        Body::Heartbeat => format!("{origin}\nhb"),
        Body::All => format!("{origin}\n*"),
        Body::Orders(ids) => format!("{origin}\n{}", ids.join(",")),
    }
}

fn decode(message: &str) -> Option<(&str, Body<'_>)> {
    let (origin, body) = message.split_once('\n')?;
    Some((
        origin,
        match body {
            "hb" => Body::Heartbeat,
            "*" => Body::All,
            ids => Body::Orders(ids.split(',').filter(|id| !id.is_empty()).collect()),
        },
    ))
}

/// Local changes not yet published.
#[derive(Default)]
struct Pending {
    /// Each changed Order once, in the order of its first change.
    ids: Vec<std::sync::Arc<str>>,
    seen: std::collections::HashSet<std::sync::Arc<str>>,
    /// Some were not kept: publish `*`.
    overflow: bool,
}

impl Pending {
    fn take(&mut self, change: Result<Change, RecvError>) {
        match change {
            Ok(Change::Local(id)) if self.seen.contains(&id) => {}
            Ok(Change::Local(id)) if self.ids.len() < MAX_PENDING => {
                self.seen.insert(id.clone());
                self.ids.push(id);
            }
            Ok(Change::Local(_)) | Err(RecvError::Lagged(_)) => self.overflow = true,
            Ok(_) | Err(RecvError::Closed) => {}
        }
    }
}

impl Feed {
    /// Runs until `shutdown`: publishes this process's changes, applies the others'.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.changes.expect_feed();
        tokio::join!(self.publish_loop(&shutdown), self.subscribe_loop(&shutdown));
        Ok(())
    }

    async fn publish_loop(&self, shutdown: &CancellationToken) {
        let mut rx = self.changes.subscribe();
        let mut pending = Pending::default();
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conn = self.publish.clone();
        let mut failing = false;
        loop {
            let heartbeat = tokio::select! {
                () = shutdown.cancelled() => return,
                r = rx.recv() => {
                    if matches!(r, Err(RecvError::Closed)) {
                        return;
                    }
                    pending.take(r);
                    // Gather what else changes meanwhile into the same message: one publish
                    // (and one wake-up of every replica) per window, not per change.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(COALESCE) => {}
                    }
                    false
                }
                _ = tick.tick() => true,
            };
            loop {
                match rx.try_recv() {
                    Ok(c) => pending.take(Ok(c)),
                    Err(TryRecvError::Lagged(n)) => pending.take(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            let mut messages = Vec::new();
            if pending.overflow {
                messages.push(encode(&self.origin, &Body::All));
            } else {
                for chunk in pending.ids.chunks(BATCH) {
                    let ids: Vec<&str> = chunk.iter().map(|id| &**id).collect();
                    messages.push(encode(&self.origin, &Body::Orders(ids)));
                }
            }
            if heartbeat {
                messages.push(encode(&self.origin, &Body::Heartbeat));
            }
            if messages.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for m in &messages {
                pipe.publish(&self.channel, m).ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    pending = Pending::default();
                    if failing {
                        tracing::info!("order change feed: publishing again");
                        failing = false;
                    }
                }
                Err(e) => {
                    // Kept for the next try (bounded by `MAX_PENDING`).
                    if !failing {
                        tracing::warn!(error.message = %e, "order change feed: cannot publish; other replicas serve order status from the database until it recovers");
                        failing = true;
                    }
                }
            }
        }
    }

    async fn subscribe_loop(&self, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => {
                    self.changes.feed_live(false);
                    return;
                }
                r = self.subscribed() => r,
            };
            self.changes.feed_live(false);
            match outcome {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error.message = %e, "order change feed down; order status is read from the database until it is back");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One subscription, until it drops or falls silent.
    async fn subscribed(&self) -> anyhow::Result<()> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
        pubsub.subscribe(&self.channel).await?;
        let mut messages = pubsub.on_message();
        loop {
            let Ok(next) = tokio::time::timeout(SILENCE, messages.next()).await else {
                anyhow::bail!("no message (not even a heartbeat) for {SILENCE:?}");
            };
            let Some(msg) = next else {
                anyhow::bail!("subscription closed");
            };
            let payload: String = msg.get_payload()?;
            let Some((origin, body)) = decode(&payload) else {
                continue;
            };
            if origin == self.origin {
                // Our own message came back: the path works.
                self.changes.feed_live(true);
                continue;
            }
            match body {
                Body::Heartbeat => {}
                Body::All => self.changes.lost(),
                Body::Orders(ids) => {
                    for id in ids {
                        self.changes.changed_elsewhere(id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = encode("host-1", &Body::Orders(vec!["a", "b"]));
        assert_eq!(decode(&m), Some(("host-1", Body::Orders(vec!["a", "b"]))));
        assert_eq!(
            decode(&encode("h", &Body::Heartbeat)),
            Some(("h", Body::Heartbeat))
        );
        assert_eq!(decode(&encode("h", &Body::All)), Some(("h", Body::All)));
        assert_eq!(decode("no separator"), None);
    }

    #[test]
    fn pending_ids_are_bounded_and_overflow_to_everything() {
        let mut p = Pending::default();
        for i in 0..MAX_PENDING + 1 {
            p.take(Ok(Change::Local(i.to_string().into())));
        }
        assert_eq!(p.ids.len(), MAX_PENDING);
        assert!(p.overflow);
        let mut p = Pending::default();
        p.take(Err(RecvError::Lagged(3)));
        assert!(p.overflow);
        p.take(Ok(Change::Remote("x".into())));
        assert!(
            p.ids.is_empty(),
            "other replicas' changes are not published again"
        );
    }

    #[test]
    fn an_order_changed_several_times_is_published_once() {
        let mut p = Pending::default();
        for id in ["a", "b", "a", "c", "b", "a"] {
            p.take(Ok(Change::Local(id.into())));
        }
        let ids: Vec<&str> = p.ids.iter().map(|id| &**id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(!p.overflow);
    }

    /// Changes a few milliseconds apart share messages (real Redis): without the window, each
    /// would be published on its own as soon as it is announced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_close_together_share_one_message() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = redis::Client::open(url.as_str()).expect("client");
        let channel = channel(&format!("test-feed-{}", uuid::Uuid::new_v4().simple()));
        let mut sub = client.get_async_pubsub().await.expect("Redis reachable");
        sub.subscribe(&channel).await.expect("subscribe");
        let changes = Changes::new();
        let feed = Feed {
            client: client.clone(),
            publish: ConnectionManager::new(client.clone()).await.expect("conn"),
            channel: channel.clone(),
            origin: "p".into(),
            changes: changes.clone(),
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn(feed.run(stop.clone()));
        // The feed's own subscription is up once its heartbeat came back.
        let mut messages = sub.on_message();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let next = |m: redis::Msg| m.get_payload::<String>().expect("payload");
        let first = tokio::time::timeout_at(deadline, messages.next())
            .await
            .expect("a heartbeat within 10 s")
            .map(next);
        assert_eq!(first.as_deref(), Some("p\nhb"));
        // Further apart than a publish takes, closer than the window.
        const N: usize = 40;
        let mut every = tokio::time::interval(Duration::from_millis(5));
        for i in 0..N {
            every.tick().await;
            changes.changed(&format!("o{i}"));
        }
        let (mut seen, mut bodies) = (std::collections::HashSet::new(), 0);
        while seen.len() < N {
            let body = tokio::time::timeout_at(deadline, messages.next())
                .await
                .expect("every change published within 10 s")
                .map(next)
                .expect("message");
            let Some((_, Body::Orders(ids))) = decode(&body) else {
                continue;
            };
            bodies += 1;
            seen.extend(ids.into_iter().map(str::to_owned));
        }
        assert!(bodies < N / 2, "{N} changes took {bodies} messages");
        stop.cancel();
        running.await.expect("feed task").expect("feed");
    }
}
