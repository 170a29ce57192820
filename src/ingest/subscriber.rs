//! The Pub/Sub subscriber: one long-lived `Subscribe` stream on `sf_provision_event_channel`,
//! turning each event into a durably enqueued provisioning job. The stream itself (channel,
//! authentication, flow-control requests, schemas) is the Salesforce client's `pubsub` module;
//! this module decides what to ask for and what to do with each batch.
//!
//! Invariants:
//! - **Nothing lost.** For each batch: decode → enqueue in Redis → then, in one ledger
//!   transaction, the inbox rows and the cursor. A failure anywhere before the commit tears the
//!   stream down and resubscribes from the stored cursor, so the batch is delivered again.
//! - **Nothing enqueued twice.** Event ids already in the inbox are skipped, and a job's id is
//!   its EventUuid, so a re-push after a crash between enqueue and commit is a no-op.
//! - **Flow control.** At most `sf_events_batch_size` (≤ 100) events outstanding; topped up
//!   whenever half is consumed, but only while the queue has fewer than
//!   `sf_events_max_pending_jobs` waiting jobs, delayed ones included (backpressure: during an
//!   outage the deferred jobs count, so Salesforce's 72 h retention is the buffer, not Redis;
//!   memory stays bounded).
//! - **Never stalls.** No response (event or keepalive) within `sf_events_watchdog_secs` → the
//!   stream is torn down and resubscribed. Every reconnect uses capped exponential backoff with
//!   full jitter and is counted.
//! - **Corrupted cursor.** `replayid.corrupted` / `validation.failed` for a stored cursor → log
//!   at error with the lost cursor, count it, forget the cursor and resubscribe once from
//!   `sf_events_replay`; that start cannot fail the same way, so there is no resubscribe loop.
//! - **Poison events** (undecodable, unknown schema, missing/malformed order id) are logged with
//!   their replay id, counted, recorded in the inbox as `poison` and kept as dead letters (payload
//!   included, in the same transaction as the cursor), and skipped.
//! - **Paused intake** (an operator pause in the ledger, read through a short cache): no
//!   subscription is opened and an open one is dropped; no flow-control request is sent while
//!   paused, so the events stay retained in Salesforce and the cursor does not move.
//! - **Fenced.** A cursor write (batch, keepalive, clear) refused for an older fencing token ends
//!   the subscriber: its replica gives leadership up and acquires it again with a new token.
//! - Shutdown: on cancellation the stream is dropped between batches; the cursor is already
//!   stored for every enqueued event.

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::Schema;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, error, info, warn};

use crate::salesforce::{
    auth::{Session, TokenProvider},
    event::{self, Poison},
    pb,
    pubsub::{self, Demand, PubSub, SubscribeFrom, error_code, is_replay_error},
};
use crate::{
    config::{EventsConfig, ReplayStart},
    jobs::retry::Backoff,
    ledger::{InboxEntry, Ledger, LedgerError, PausePart, PoisonEntry},
    metrics::Metrics,
    net::proxy::ProxyConfig,
    pause::Pauses,
    queue::{Job, JobSource, ProvisionOrderV1, Queue},
    status::{SubState, SubscriptionHealth},
};

/// Why a stream ended.
enum StreamEnd {
    Shutdown,
    Watchdog,
    Closed,
    Failed(Status),
    /// Queue or ledger failure: resubscribe from the stored cursor.
    Internal(String),
    Auth(String),
    /// A cursor write was refused: a newer leader's token is stored. Leadership is given up
    /// (and acquired again with a new token), never resubscribed with the same token.
    Fenced,
    /// An operator paused intake: the stream is dropped and nothing more is requested.
    Paused,
}

/// How a ledger failure ends the stream.
fn ledger_end(e: LedgerError) -> StreamEnd {
    match e {
        LedgerError::Fenced => StreamEnd::Fenced,
        e => StreamEnd::Internal(e.to_string()),
    }
}

/// How often the pause of intake is looked at (through the pauses' cache).
const PAUSE_POLL: Duration = Duration::from_millis(250);

/// The subscriber task.
pub struct Subscriber {
    pub cfg: EventsConfig,
    pub tokens: TokenProvider,
    pub ledger: Ledger,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub health: Arc<SubscriptionHealth>,
    /// Fencing token of the subscriber lease (0 with a single replica).
    pub fencing_token: i64,
    /// Outbound proxies (the channel tunnels through one unless exempted).
    pub proxy: ProxyConfig,
    /// Operator pauses: while intake is paused nothing is requested from Salesforce.
    pub pauses: Arc<Pauses>,
}

impl Subscriber {
    fn backoff(&self, failures: u32) -> Duration {
        Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max).delay(failures)
    }

    /// Runs until `shutdown`; returns an error only for unrecoverable setup failures.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Platform events are at most 1 MB: a hostile length prefix must not make the Avro
        // decoder allocate more (its default cap is 512 MiB).
        apache_avro::util::max_allocation_bytes(event::MAX_EVENT_BYTES);
        let mut client = PubSub::new(pubsub::channel(&self.cfg.endpoint, &self.proxy)?);
        let mut schemas: HashMap<String, Option<Arc<Schema>>> = HashMap::new();
        let mut failures: u32 = 0;
        let mut first = true;
        let mut paused = false;
        // A stored cursor rejected by Salesforce is replaced by the preset exactly once per
        // cursor: after a fallback the next subscription starts from the preset.
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if self.pauses.is_paused(PausePart::Intake).await {
                if !paused {
                    info!("intake paused by an operator: not subscribing");
                }
                paused = true;
                self.health.update(|h| h.state = SubState::Paused);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(PAUSE_POLL) => {}
                }
                continue;
            }
            if paused {
                info!("intake resumed: subscribing from the stored cursor");
            } else if !first {
                self.metrics.reconnects.inc();
                self.health.update(|h| h.reconnects += 1);
            }
            first = false;
            paused = false;
            self.health.update(|h| h.state = SubState::Connecting);
            let end = self
                .subscribe_once(&mut client, &mut schemas, &shutdown, &mut failures)
                .await;
            let delay = match end {
                StreamEnd::Shutdown => return Ok(()),
                StreamEnd::Paused => {
                    self.health.update(|h| h.state = SubState::Paused);
                    continue;
                }
                StreamEnd::Fenced => {
                    warn!(
                        fencing_token = self.fencing_token,
                        "cursor write refused: a newer subscriber leader's token is stored; giving up leadership"
                    );
                    self.health
                        .update(|h| h.last_error = Some("fenced: cursor write refused".into()));
                    return Ok(());
                }
                StreamEnd::Watchdog => {
                    self.metrics.watchdog_resubscribes.inc();
                    warn!(
                        watchdog_secs = self.cfg.watchdog.as_secs(),
                        "no event or keepalive in time; resubscribing"
                    );
                    self.health
                        .update(|h| h.last_error = Some("watchdog: stream silent".into()));
                    Duration::ZERO
                }
                StreamEnd::Closed => {
                    info!("subscription stream closed by the server; resubscribing");
                    self.backoff(failures)
                }
                StreamEnd::Auth(msg) => {
                    warn!(error.message = %msg, "authentication rejected; re-minting the token");
                    self.health.update(|h| h.last_error = Some(msg));
                    if let Some(s) = self.tokens.current() {
                        if let Err(e) = self.tokens.refresh(s.generation).await {
                            error!(error.message = %e, "cannot obtain a Salesforce token");
                            self.health.update(|h| h.last_error = Some(e.to_string()));
                        }
                    }
                    self.backoff(failures)
                }
                StreamEnd::Internal(msg) => {
                    error!(error.message = %msg, "cannot hand events over; resubscribing from the stored cursor");
                    self.health.update(|h| h.last_error = Some(msg));
                    self.backoff(failures)
                }
                StreamEnd::Failed(status) => {
                    let code =
                        error_code(&status).unwrap_or_else(|| format!("grpc.{:?}", status.code()));
                    warn!(error.code = %code, error.message = %status.message(), "subscription failed");
                    self.health.update(|h| h.last_error = Some(code.clone()));
                    match status.code() {
                        tonic::Code::NotFound | tonic::Code::PermissionDenied => {
                            error!(channel = %self.cfg.channel, "topic not found or not permitted: check SF_PROVISION_EVENT_CHANNEL and the integration user's permissions");
                            self.cfg.backoff_max
                        }
                        _ => self.backoff(failures),
                    }
                }
            };
            failures = failures.saturating_add(1);
            if !delay.is_zero() {
                self.health.update(|h| h.state = SubState::Backoff);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    async fn subscribe_once(
        &self,
        client: &mut PubSub,
        schemas: &mut HashMap<String, Option<Arc<Schema>>>,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> StreamEnd {
        // A new subscription asks for a whole batch at once: open it only when the queue has
        // room, so stream resets during an outage never pull events past the backpressure
        // threshold.
        loop {
            match self.queue.pending().await {
                Ok(pending) if pending < self.cfg.max_pending_jobs => break,
                Ok(pending) => debug!(pending, "queue full; waiting before subscribing"),
                Err(e) => return StreamEnd::Internal(e.to_string()),
            }
            if self.pauses.is_paused(PausePart::Intake).await {
                return StreamEnd::Paused;
            }
            tokio::select! {
                () = shutdown.cancelled() => return StreamEnd::Shutdown,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        let session = match self.tokens.session().await {
            Ok(s) => s,
            Err(e) => return StreamEnd::Internal(format!("salesforce auth: {e}")),
        };
        let cursor = match self.ledger.load_cursor(&self.cfg.channel).await {
            Ok(c) => c,
            Err(e) => return StreamEnd::Internal(e.to_string()),
        };
        // `provisioner cursor set --earliest` overrides SF_EVENTS_REPLAY until a cursor is stored.
        let replay = match self.ledger.replay_request(&self.cfg.channel).await {
            Ok(r) => r.unwrap_or(self.cfg.replay),
            Err(e) => return StreamEnd::Internal(e.to_string()),
        };
        let preset = match replay {
            ReplayStart::Latest => pb::ReplayPreset::Latest,
            ReplayStart::Earliest => pb::ReplayPreset::Earliest,
        };
        let from = match &cursor {
            Some(c) => SubscribeFrom {
                preset: pb::ReplayPreset::Custom,
                replay_id: c.clone(),
            },
            None => SubscribeFrom {
                preset,
                replay_id: Vec::new(),
            },
        };
        self.health.update(|h| h.cursor = cursor.clone());
        let batch = self.cfg.batch_size;
        info!(channel = %self.cfg.channel, replay = ?from.preset, cursor = cursor.as_deref().map(hex::encode), "subscribing");
        let (mut stream, demand) = match client
            .subscribe(&session, &self.cfg.channel, from, batch)
            .await
        {
            Ok(s) => s,
            Err(status) => return self.classify(status, cursor.as_deref()).await,
        };
        // The server accepted the subscription: connected, even before the first event or
        // keepalive arrives.
        self.health.update(|h| h.state = SubState::Connected);
        let mut outstanding = batch;
        let mut starved = false;
        let mut room_check = tokio::time::interval(Duration::from_millis(250));
        room_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pause_check = tokio::time::interval(PAUSE_POLL);
        pause_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The watchdog runs from the last response (the pause check does not restart it).
        let mut watchdog_at = tokio::time::Instant::now() + self.cfg.watchdog;
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return StreamEnd::Shutdown,
                _ = pause_check.tick() => {
                    if self.pauses.is_paused(PausePart::Intake).await {
                        info!("intake paused by an operator: closing the stream");
                        return StreamEnd::Paused;
                    }
                    continue;
                }
                _ = room_check.tick(), if starved => {
                    watchdog_at = tokio::time::Instant::now() + self.cfg.watchdog;
                    match self.top_up(&demand, &mut outstanding, batch).await {
                        Ok(s) => starved = s,
                        Err(end) => return end,
                    }
                    continue;
                }
                m = tokio::time::timeout_at(watchdog_at, stream.message()) => m,
            };
            let resp = match msg {
                Err(_) => return StreamEnd::Watchdog,
                Ok(Ok(Some(resp))) => resp,
                Ok(Ok(None)) => return StreamEnd::Closed,
                Ok(Err(status)) => return self.classify(status, cursor.as_deref()).await,
            };
            *failures = 0;
            self.health.update(|h| {
                h.state = SubState::Connected;
            });
            if resp.events.is_empty() {
                self.metrics.keepalives.inc();
                let now = chrono::Utc::now();
                self.health.update(|h| h.last_keepalive_at = Some(now));
                if !resp.latest_replay_id.is_empty()
                    && self.health.snapshot().cursor.as_deref() != Some(&resp.latest_replay_id[..])
                {
                    match self
                        .ledger
                        .save_cursor(
                            &self.cfg.channel,
                            &resp.latest_replay_id,
                            self.fencing_token,
                        )
                        .await
                    {
                        Ok(()) => self
                            .health
                            .update(|h| h.cursor = Some(resp.latest_replay_id.clone())),
                        Err(e) => return ledger_end(e),
                    }
                }
            } else {
                let n = i32::try_from(resp.events.len()).unwrap_or(i32::MAX);
                outstanding = (outstanding - n).max(0);
                if let Err(end) = self
                    .handle_batch(client, schemas, &session, resp.events)
                    .await
                {
                    return end;
                }
            }
            watchdog_at = tokio::time::Instant::now() + self.cfg.watchdog;
            if outstanding <= batch / 2 {
                match self.top_up(&demand, &mut outstanding, batch).await {
                    Ok(s) => starved = s,
                    Err(end) => return end,
                }
            }
        }
    }

    /// Requests more events if the queue has room. Returns whether demand is being held back.
    async fn top_up(
        &self,
        demand: &Demand,
        outstanding: &mut i32,
        batch: i32,
    ) -> Result<bool, StreamEnd> {
        if self.pauses.is_paused(PausePart::Intake).await {
            return Err(StreamEnd::Paused);
        }
        let pending = self
            .queue
            .pending()
            .await
            .map_err(|e| StreamEnd::Internal(e.to_string()))?;
        if pending >= self.cfg.max_pending_jobs {
            debug!(pending, "queue full; holding back demand");
            return Ok(true);
        }
        let want = batch - *outstanding;
        if want > 0 {
            if demand.request(want).await.is_err() {
                return Err(StreamEnd::Closed);
            }
            *outstanding += want;
        }
        Ok(false)
    }

    async fn classify(&self, status: Status, cursor: Option<&[u8]>) -> StreamEnd {
        let code = error_code(&status).unwrap_or_default();
        if is_replay_error(&code) {
            if let Some(lost) = cursor {
                self.metrics.cursor_fallbacks.inc();
                self.health.update(|h| {
                    h.cursor_fallbacks += 1;
                    h.cursor = None;
                });
                error!(
                    error.code = %code,
                    lost_cursor = %hex::encode(lost),
                    fallback = ?self.cfg.replay,
                    "stored replay id rejected by Salesforce; falling back to SF_EVENTS_REPLAY once (the stuck-order reconciler covers events in between)"
                );
                if let Err(e) = self
                    .ledger
                    .clear_cursor(&self.cfg.channel, self.fencing_token)
                    .await
                {
                    return ledger_end(e);
                }
                return StreamEnd::Failed(status);
            }
        }
        if status.code() == tonic::Code::Unauthenticated
            || code.contains("auth.error")
            || code.contains("auth.refresh")
        {
            return StreamEnd::Auth(if code.is_empty() {
                "UNAUTHENTICATED".into()
            } else {
                code
            });
        }
        StreamEnd::Failed(status)
    }

    async fn schema(
        &self,
        client: &mut PubSub,
        schemas: &mut HashMap<String, Option<Arc<Schema>>>,
        session: &Session,
        schema_id: &str,
    ) -> Result<Option<Arc<Schema>>, StreamEnd> {
        if let Some(s) = schemas.get(schema_id) {
            return Ok(s.clone());
        }
        let parsed = match client.get_schema(session, schema_id).await {
            Ok(json) => Schema::parse_str(&json).ok().map(Arc::new),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => return Err(self.classify(status, None).await),
        };
        schemas.insert(schema_id.to_owned(), parsed.clone());
        Ok(parsed)
    }

    async fn handle_batch(
        &self,
        client: &mut PubSub,
        schemas: &mut HashMap<String, Option<Arc<Schema>>>,
        session: &Session,
        events: Vec<pb::ConsumerEvent>,
    ) -> Result<(), StreamEnd> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let Some(last_replay) = events.last().map(|e| e.replay_id.clone()) else {
            return Ok(());
        };
        self.metrics.events_received.inc_by(events.len() as u64);
        let ids: Vec<&str> = events
            .iter()
            .filter_map(|e| e.event.as_ref())
            .map(|e| e.id.as_str())
            .collect();
        let seen = self
            .ledger
            .seen_events(&ids)
            .await
            .map_err(|e| StreamEnd::Internal(e.to_string()))?;
        let mut jobs = Vec::with_capacity(events.len());
        let mut order_ids: Vec<Option<String>> = Vec::with_capacity(events.len());
        let mut statuses: Vec<&'static str> = Vec::with_capacity(events.len());
        let mut poison = 0u64;
        let mut dead_letters: Vec<PoisonEntry<'_>> = Vec::new();
        let mut duplicates = 0u64;
        for ce in &events {
            let Some(ev) = ce.event.as_ref() else {
                order_ids.push(None);
                statuses.push("poison");
                poison += 1;
                self.metrics.poison("empty_event");
                warn!(replay_id = %hex::encode(&ce.replay_id), "event without body skipped");
                dead_letters.push(PoisonEntry {
                    replay_id: &ce.replay_id,
                    event_id: None,
                    schema_id: None,
                    reason: "empty_event",
                    detail: None,
                    payload: &[],
                });
                continue;
            };
            if seen.iter().any(|s| s == &ev.id) {
                duplicates += 1;
                order_ids.push(None);
                statuses.push("duplicate");
                continue;
            }
            let decoded = match self.schema(client, schemas, session, &ev.schema_id).await? {
                Some(schema) => {
                    event::decode(&schema, &ev.schema_id, &ev.payload, &self.cfg.fields)
                }
                None => Err(Poison::UnknownSchema(ev.schema_id.clone())),
            };
            match decoded {
                Ok(req) => {
                    if req.created_date_ms > 0 {
                        self.metrics
                            .event_lag
                            .observe((now_ms - req.created_date_ms).max(0) as f64 / 1000.0);
                    }
                    order_ids.push(Some(req.order_id.to_string()));
                    statuses.push("enqueued");
                    jobs.push(Job::ProvisionOrderV1(ProvisionOrderV1 {
                        event_id: ev.id.clone(),
                        replay_id: Some(hex::encode(&ce.replay_id)),
                        order_id: req.order_id.to_string(),
                        idem_key: req.idem_key,
                        correlation_id: req.correlation_id.unwrap_or_else(|| ev.id.clone()),
                        event_created_ms: req.created_date_ms,
                        source: JobSource::Event,
                    }));
                }
                Err(p) => {
                    poison += 1;
                    self.metrics.poison(p.kind());
                    warn!(replay_id = %hex::encode(&ce.replay_id), event.id = %ev.id, reason = p.kind(), error.message = %p, "poison event skipped");
                    order_ids.push(None);
                    statuses.push("poison");
                    dead_letters.push(PoisonEntry {
                        replay_id: &ce.replay_id,
                        event_id: Some(&ev.id),
                        schema_id: Some(&ev.schema_id),
                        reason: p.kind(),
                        detail: Some(p.to_string()),
                        payload: &ev.payload,
                    });
                }
            }
        }
        let enqueued = jobs.len() as u64;
        self.queue
            .push(jobs)
            .await
            .map_err(|e| StreamEnd::Internal(format!("enqueue: {e}")))?;
        let entries: Vec<InboxEntry<'_>> = events
            .iter()
            .zip(order_ids.iter().zip(statuses.iter()))
            .filter(|(_, (_, st))| **st != "duplicate")
            .filter_map(|(ce, (oid, st))| {
                ce.event.as_ref().map(|ev| InboxEntry {
                    event_id: &ev.id,
                    replay_id: &ce.replay_id,
                    sf_order_id: oid.as_deref(),
                    status: st,
                })
            })
            .collect();
        self.ledger
            .record_events_with_poison(
                &self.cfg.channel,
                &entries,
                &dead_letters,
                &last_replay,
                self.fencing_token,
            )
            .await
            .map_err(ledger_end)?;
        if duplicates > 0 {
            self.metrics.duplicate_events.inc_by(duplicates);
        }
        let now = chrono::Utc::now();
        self.health.update(|h| {
            h.cursor = Some(last_replay);
            h.last_event_at = Some(now);
            h.events_received += events.len() as u64;
            h.events_enqueued += enqueued;
            h.poison_events += poison;
            h.duplicates += duplicates;
        });
        Ok(())
    }
}
