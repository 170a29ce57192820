//! The `provisioning` job queue: apalis + apalis-redis, with the workarounds that apalis-redis
//! 1.0 needs to be safe in a long-running daemon (see `docs/ARCHITECTURE.md`, "Queue").
//!
//! Redis key layout (prefix = queue name, default `provisioning`):
//! `:scheduled` ZSET (every push lands here first), `:active` LIST, `:inflight:<worker>` SET,
//! `:data` HASH (id → job JSON), `:meta:<id>` HASH, `:done` / `:dead` SETs, `:workers` ZSET;
//! and ours: `:runs:<id>` counter (how many times a worker started the job, [`Queue::mark_run`]),
//! `:deferrals` ZSET (the entries of jobs put back to wait, [`Queue::push_after`]).
//! The pub/sub channel `:order-changes` carries the cross-replica change feed ([`feed`]).
//!
//! Invariants and workarounds:
//! - Job ids are the event's EventUuid (or a reconciler/operator id), so pushing the same event
//!   twice is a no-op (`HSETNX` on `:data`).
//! - The connection manager has a 10 s response timeout (the 500 ms default kills workers).
//! - Each worker gets a unique name per process and per restart; the orphan timeout is
//!   heartbeat × missed heartbeats, set explicitly (10 s × 3).
//! - Workers fetch one job at a time (`batch_size` 1). apalis 1.0 heartbeats and drains its
//!   acknowledgements only while its prefetch buffer is empty: with a larger batch, a worker
//!   whose slots are all busy in slow calls holds the rest of its batch, stops heartbeating
//!   and is declared dead (by the watchdog, and by other replicas that re-enqueue its running
//!   jobs). One job per fetch also leaves waiting jobs to replicas with free slots.
//! - Workers poll every 200 ms for jobs pushed elsewhere (other replicas, re-enqueued orphans)
//!   and are woken at once when this process pushes jobs ([`Queue::wake_strategy`]); tasks run
//!   on their own tokio task.
//! - The handler never returns a plain `Err` for business outcomes (the backend would retry it
//!   up to 25 times); transient retries happen inside the job, bounded by `job_max_attempts`.
//! - Queue statistics are read from the keys directly (the built-in metrics are broken).
//! - apalis does not count a re-run of a job whose worker died (orphan re-enqueue keeps the
//!   attempt number), so every start of a job is counted in `:runs:<id>` before the job does
//!   anything: a job knows it is not its first execution even when its ledger lost the earlier
//!   run's commits.
//! - Durability is checked, not assumed: [`Queue::durability`] reads Redis's persistence and
//!   replicas (startup warns when Redis keeps nothing on disk). When Redis had replicas at
//!   start, every [`Queue::push`] waits (`WAIT 1`, `redis_wait_replica_ms`) for one to confirm
//!   before returning: a push no replica confirmed is an error, so the subscriber's cursor does
//!   not move and the events come again (the re-push is a no-op by job id). Pushes use their
//!   own connection, so a `WAIT` never blocks the workers' commands.
//! - The backlog stays far below the ~8,000 due-jobs limit of `fetch_next.lua`: the subscriber
//!   stops fetching events above `sf_events_max_pending_jobs` jobs waiting, delayed ones
//!   included ([`Queue::pending`]), so a long outage holds the events in Salesforce, not Redis.
//! - Deferral entries (`<event id>~w<random>`) are deleted as soon as they ran
//!   ([`Queue::cleanup_deferrals`], housekeeping): repeated deferrals do not grow Redis.

pub mod feed;

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::*;
use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use apalis_redis::{Config as RedisQueueConfig, ConnectionManager, RedisStorage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::config::{QueueConfig, RedisTls};

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("queue push failed: {0}")]
    Push(String),
}

/// Heartbeat interval of queue workers.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Missed heartbeats after which a worker's jobs are re-enqueued by another worker.
pub const MISSED_HEARTBEATS: usize = 3;
/// How long a job's run marker outlives its last start (longer than the 72 h job-id dedupe).
pub const RUN_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often idle workers look for new jobs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why a job was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    /// A Pub/Sub event.
    Event,
    /// The stuck-order reconciler.
    Reconciler,
    /// An operator, through the CLI.
    Operator,
}

/// Provision one Salesforce Order. Idempotent: the ledger row of `order_id` decides what is
/// left to do, so running it twice never creates a second WHMCS order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionOrderV1 {
    /// EventUuid of the triggering event (or a generated id for reconciler/operator jobs).
    pub event_id: String,
    /// Hex replay id of the triggering event, if any.
    pub replay_id: Option<String>,
    /// 18-character Salesforce Order id.
    pub order_id: String,
    pub idem_key: Option<String>,
    pub correlation_id: String,
    /// Event `CreatedDate`, epoch ms (for event-lag metrics).
    pub event_created_ms: i64,
    pub source: JobSource,
}

/// The queue payload: typed and versioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Job {
    ProvisionOrderV1(ProvisionOrderV1),
}

impl Job {
    /// The job id in Redis (dedupe key).
    pub fn id(&self) -> &str {
        match self {
            Job::ProvisionOrderV1(j) => &j.event_id,
        }
    }
}

/// Counts by state, read straight from the Redis keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub pending: u64,
    pub delayed: u64,
    pub running: u64,
    pub failed: u64,
    pub done: u64,
    pub workers: u64,
}

/// What Redis keeps across a restart, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// Append-only file.
    Aof,
    /// Snapshots only (a restart loses the writes since the last one).
    Rdb,
    /// Nothing on disk: a restart loses every queued job.
    None,
    /// Redis refused to say (managed services often refuse `CONFIG`).
    Unknown,
}

/// Redis's durability as it reports it: persistence and connected replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Durability {
    pub persistence: Persistence,
    pub replicas: u64,
}

/// The value of `field` in an `INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Producer side and statistics of the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    storage: RedisStorage<Job>,
    conn: ConnectionManager,
    /// Pushes go through their own connection: `WAIT` blocks the connection it runs on, and
    /// it covers exactly the writes made on it.
    push_storage: RedisStorage<Job>,
    push_conn: ConnectionManager,
    /// `Some` when Redis had replicas at start: how long a push waits for one to confirm.
    wait_replica: Option<Duration>,
    cfg: RedisQueueConfig,
    /// The queue name: the prefix of every key.
    name: String,
    /// Bumped after every successful push, to wake this process's idle workers.
    pushed: Arc<watch::Sender<u64>>,
}

/// Worker poll strategy: fetch when this process pushed jobs, and every [`POLL_INTERVAL`]
/// (jobs pushed by other replicas, re-enqueued orphans).
pub struct PushOrPoll {
    pushed: WatchStream<u64>,
    tick: tokio::time::Interval,
}

impl PollStrategy for PushOrPoll {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        // Poll both sources until they are pending, so both hold this task's waker.
        let mut ready = false;
        while self.tick.poll_tick(cx).is_ready() {
            ready = true;
        }
        while let Poll::Ready(Some(_)) = self.pushed.poll_next_unpin(cx) {
            ready = true;
        }
        if ready {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("queue", &self.cfg.active_jobs_list())
            .finish()
    }
}

/// The Redis client for `url`: plaintext for `redis://`; for `rediss://`, TLS (rustls) that
/// trusts `tls.ca_pem` if given (else the system's roots) and presents the client certificate if
/// given. A `rediss://` URL never falls back to plaintext.
pub fn redis_client(url: &str, tls: &RedisTls) -> Result<redis::Client> {
    if !url.starts_with("rediss://") || (tls.ca_pem.is_none() && tls.client.is_none()) {
        return Ok(redis::Client::open(url)?);
    }
    use secrecy::ExposeSecret;
    Ok(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: tls
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.expose_secret().as_bytes().to_vec(),
                }),
            root_cert: tls.ca_pem.clone(),
        },
    )?)
}

/// Opens a Redis connection manager with timeouts that do not kill workers under load. Every
/// Redis connection of the daemon (queue, workers, lease, operator commands) is opened here.
pub async fn connect_redis(url: &str, tls: &RedisTls) -> Result<ConnectionManager> {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(6)
        .set_max_delay(Duration::from_secs(2));
    Ok(redis_client(url, tls)?
        .get_connection_manager_with_config(cfg)
        .await?)
}

/// Makes every delayed job of the queue named `name` due within `RELEASE_AFTER`, e.g. once an
/// operator lifted what they wait for (`whmcs reset-auth`): jobs put back for an outage or a
/// rejected credential would otherwise sleep out their delay. The short wait lets every replica
/// see the change first (each re-reads the WHMCS latch at least once a second). Safe for any
/// delayed job: each one checks again what it waited for (a breaker, an AddOrder's in-doubt
/// window) and waits again if it must. Returns how many were released.
pub async fn release_delayed(conn: &mut ConnectionManager, name: &str) -> Result<u64> {
    const RELEASE: &str = r"
        local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
        for i = 1, #ids do redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ids[i]) end
        return #ids";
    const RELEASE_AFTER: i64 = 2;
    let key = RedisQueueConfig::default().queue(name).scheduled_jobs_set();
    let at = chrono::Utc::now().timestamp() + RELEASE_AFTER;
    Ok(redis::Script::new(RELEASE)
        .key(key)
        .arg(at)
        .invoke_async(conn)
        .await?)
}

/// Deletes every key of the queue named `name` (all its jobs and bookkeeping): for a throwaway
/// queue such as the demo's, never for a daemon's. Best effort.
pub async fn delete_all_keys(url: &str, name: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{name}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
    Ok(())
}

impl Queue {
    pub async fn connect(cfg: &QueueConfig) -> Result<Self> {
        let conn = connect_redis(&cfg.redis_url, &cfg.tls).await?;
        let qcfg = RedisQueueConfig::default()
            .queue(&cfg.name)
            // One job per fetch: a prefetched job waits in the worker's buffer while every slot
            // is busy, and apalis neither heartbeats nor acknowledges while its buffer is
            // non-empty (so the watchdog stops the process and other replicas re-enqueue its
            // running jobs as orphans); it also keeps the job from an idle replica.
            .batch_size(1)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS)
            .emit_events(false)
            .idempotency_ttl(Some(Duration::from_secs(72 * 3600)));
        let storage = RedisStorage::<Job>::new(conn.clone()).with_config(qcfg.clone());
        let push_conn = connect_redis(&cfg.redis_url, &cfg.tls).await?;
        let push_storage = RedisStorage::<Job>::new(push_conn.clone()).with_config(qcfg.clone());
        let mut queue = Self {
            storage,
            conn,
            push_storage,
            push_conn,
            wait_replica: None,
            cfg: qcfg,
            name: cfg.name.clone(),
            pushed: Arc::new(watch::channel(0).0),
        };
        if let Some(wait) = cfg.wait_replica {
            // A deployment whose Redis has replicas relies on them: from now on a push counts
            // only once a replica has it, even if the replicas go away later.
            match queue.replicas().await {
                Ok(n) if n > 0 => queue.wait_replica = Some(wait),
                Ok(_) => {}
                // Some managed services refuse INFO: pushes then cannot count on replicas.
                Err(e) => tracing::warn!(
                    error.message = %e,
                    "cannot ask Redis for its replicas; pushes do not wait for one"
                ),
            }
        }
        Ok(queue)
    }

    /// Whether pushes wait for a replica (Redis had replicas at start), and how long.
    pub fn waits_for_replica(&self) -> Option<Duration> {
        self.wait_replica
    }

    /// Connected replicas (`INFO replication` → `connected_slaves`).
    pub async fn replicas(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        Ok(info_field(&info, "connected_slaves")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// What Redis keeps across a restart (`INFO persistence`, then `CONFIG GET save`) and how
    /// many replicas it has.
    pub async fn durability(&self) -> Result<Durability> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await?;
        let persistence = if info_field(&info, "aof_enabled") == Some("1") {
            Persistence::Aof
        } else {
            let save: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("save")
                .query_async(&mut conn)
                .await;
            match save {
                Ok(v) => match v.get(1) {
                    Some(rules) if !rules.trim().is_empty() => Persistence::Rdb,
                    Some(_) => Persistence::None,
                    None => Persistence::Unknown,
                },
                Err(_) => Persistence::Unknown,
            }
        };
        Ok(Durability {
            persistence,
            replicas: self.replicas().await?,
        })
    }

    /// The poll strategy for this process's workers: woken by [`Queue::push`], and polling.
    pub fn wake_strategy(&self) -> PushOrPoll {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        PushOrPoll {
            pushed: WatchStream::from_changes(self.pushed.subscribe()),
            tick,
        }
    }

    /// The apalis storage, for workers.
    pub fn storage(&self) -> RedisStorage<Job> {
        self.storage.clone()
    }

    pub fn redis(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Durably enqueues jobs (one Redis round trip per batch); an id already present is ignored.
    pub async fn push(&self, jobs: Vec<Job>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let id = TaskId::from_string(job.id().to_owned());
                TaskBuilder::new(job).task_id(id).build()
            })
            .collect();
        let mut storage = self.push_storage.clone();
        storage
            .push_all(futures::stream::iter(tasks))
            .await
            .map_err(|e| QueueError::Push(e.to_string()))?;
        self.pushed.send_modify(|v| *v = v.wrapping_add(1));
        if let Some(wait) = self.wait_replica {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            let mut conn = self.push_conn.clone();
            let acked: u64 = redis::cmd("WAIT")
                .arg(1)
                .arg(ms)
                .query_async(&mut conn)
                .await?;
            if acked < 1 {
                return Err(QueueError::Push(format!(
                    "no Redis replica confirmed the push within {ms} ms"
                )));
            }
        }
        Ok(())
    }

    /// Counts one more start of job `id` and returns how many starts there were, this one
    /// included (one round trip). The counter expires [`RUN_MARKER_TTL`] after the last start.
    pub async fn mark_run(&self, id: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let key = format!("{}:runs:{id}", self.name);
        let (runs, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, RUN_MARKER_TTL.as_secs() as i64)
            .query_async(&mut conn)
            .await?;
        Ok(runs)
    }

    /// Enqueues `job` under the task id `id`, to run after `delay` (second resolution): a job
    /// put back to wait, as a new queue entry with the same payload. The entry is recorded in
    /// `:deferrals` so that [`Queue::cleanup_deferrals`] removes it once it has run.
    pub async fn push_after(&self, job: Job, id: String, delay: Duration) -> Result<()> {
        let task = TaskBuilder::new(job)
            .task_id(TaskId::from_string(id.clone()))
            .run_after(delay)
            .build();
        let mut conn = self.conn.clone();
        // Recorded first (scored by when it becomes due): an entry pushed but not recorded
        // would only be cleaned up as an old finished job.
        let due = chrono::Utc::now().timestamp() + i64::try_from(delay.as_secs()).unwrap_or(0);
        let () = redis::cmd("ZADD")
            .arg(self.deferrals_set())
            .arg(due)
            .arg(&id)
            .query_async(&mut conn)
            .await?;
        let mut storage = self.storage.clone();
        storage
            .push_all(futures::stream::iter([task]))
            .await
            .map_err(|e| QueueError::Push(e.to_string()))?;
        Ok(())
    }

    /// The set of deferral entries (task id → when it becomes due, epoch seconds).
    fn deferrals_set(&self) -> String {
        format!("{}:deferrals", self.name)
    }

    /// Deletes deferral entries ([`Queue::push_after`]) that have run to the end: their data,
    /// meta and `:done` membership. Unlike an event's job, a deferral entry's id is random, so
    /// keeping it serves no dedupe; removed at once, repeated deferrals during a long outage
    /// leave Redis no bigger than the jobs actually waiting. An entry that ended dead is left
    /// to [`Queue::cleanup`]. Looks at up to 1,000 entries already due per call, oldest first;
    /// returns how many were deleted.
    pub async fn cleanup_deferrals(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let set = self.deferrals_set();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&set)
            .arg("-inf")
            .arg(chrono::Utc::now().timestamp())
            .arg("LIMIT")
            .arg(0)
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let metas: Vec<String> = ids
            .iter()
            .map(|id| format!("{}:{}", self.cfg.job_meta_hash(), id))
            .collect();
        let mut p = redis::pipe();
        for (id, meta) in ids.iter().zip(&metas) {
            p.cmd("HGET").arg(meta).arg("status");
            p.cmd("SISMEMBER").arg(self.cfg.dead_jobs_set()).arg(id);
        }
        let answers: Vec<redis::Value> = p.query_async(&mut conn).await?;
        let mut p = redis::pipe();
        let (mut removed, mut forgotten) = (0u64, 0u64);
        for ((id, meta), pair) in ids.iter().zip(&metas).zip(answers.chunks(2)) {
            let [status, dead] = pair else { break };
            let status: Option<String> =
                redis::from_redis_value(status.clone()).map_err(|e| QueueError::Redis(e.into()))?;
            let dead: bool =
                redis::from_redis_value(dead.clone()).map_err(|e| QueueError::Redis(e.into()))?;
            if status.as_deref() == Some("Done") {
                p.cmd("SREM").arg(self.cfg.done_jobs_set()).arg(id).ignore();
                p.cmd("HDEL").arg(self.cfg.job_data_hash()).arg(id).ignore();
                p.cmd("DEL").arg(meta).ignore();
                p.cmd("ZREM").arg(&set).arg(id).ignore();
                removed += 1;
            } else if status.is_none() || dead {
                // Gone already (Redis lost it, or it was cleaned up as a finished job), or
                // dead (left to `cleanup`): nothing to watch any more.
                p.cmd("ZREM").arg(&set).arg(id).ignore();
                forgotten += 1;
            }
        }
        if removed + forgotten > 0 {
            let () = p.query_async(&mut conn).await?;
        }
        Ok(removed)
    }

    /// Number of jobs waiting to run: the active list and every scheduled job, due or not (a
    /// job put back to wait for a dependency is still work the queue holds). One round trip
    /// (the subscriber asks before every demand top-up).
    pub async fn pending(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let (active, scheduled): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(self.cfg.active_jobs_list())
            .cmd("ZCARD")
            .arg(self.cfg.scheduled_jobs_set())
            .query_async(&mut conn)
            .await?;
        Ok(active + scheduled)
    }

    /// Counts by state.
    pub async fn stats(&self) -> Result<QueueStats> {
        let mut conn = self.conn.clone();
        let now = chrono::Utc::now().timestamp();
        let workers: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.cfg.workers_set())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut p = redis::pipe();
        p.cmd("LLEN")
            .arg(self.cfg.active_jobs_list())
            .cmd("ZCOUNT")
            .arg(self.cfg.scheduled_jobs_set())
            .arg(0)
            .arg(now)
            .cmd("ZCOUNT")
            .arg(self.cfg.scheduled_jobs_set())
            .arg(format!("({now}"))
            .arg("+inf")
            .cmd("SCARD")
            .arg(self.cfg.done_jobs_set())
            .cmd("SCARD")
            .arg(self.cfg.dead_jobs_set());
        for w in &workers {
            p.cmd("SCARD")
                .arg(format!("{}:{}", self.cfg.inflight_jobs_set(), w));
        }
        let v: Vec<u64> = p.query_async(&mut conn).await?;
        let at = |i: usize| v.get(i).copied().unwrap_or_default();
        Ok(QueueStats {
            pending: at(0) + at(1),
            delayed: at(2),
            done: at(3),
            failed: at(4),
            running: v.iter().skip(5).sum(),
            workers: workers.len() as u64,
        })
    }

    /// Number of distinct jobs ever pushed and not yet cleaned up (`HLEN :data`).
    pub async fn job_count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HLEN")
            .arg(self.cfg.job_data_hash())
            .query_async(&mut conn)
            .await?)
    }

    /// Whether a job with this id is stored.
    pub async fn contains(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HEXISTS")
            .arg(self.cfg.job_data_hash())
            .arg(id)
            .query_async(&mut conn)
            .await?)
    }

    /// Round trip for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Deletes finished jobs older than `age` — done and dead alike: data, meta and their ids in
    /// `:done` / `:dead` (apalis never expires them).
    pub async fn cleanup(&self, age: Duration) -> Result<u64> {
        let mut removed = 0;
        for set in [self.cfg.done_jobs_set(), self.cfg.dead_jobs_set()] {
            removed += self.cleanup_set(&set, age).await?;
        }
        Ok(removed)
    }

    async fn cleanup_set(&self, set: &str, age: Duration) -> Result<u64> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SRANDMEMBER")
            .arg(set)
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        let cutoff =
            chrono::Utc::now().timestamp() - i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        if ids.is_empty() {
            return Ok(0);
        }
        // Two round trips for the whole sample: every `done_at` in one pipeline, every removal
        // in another.
        let metas: Vec<String> = ids
            .iter()
            .map(|id| format!("{}:{}", self.cfg.job_meta_hash(), id))
            .collect();
        let mut p = redis::pipe();
        for meta in &metas {
            p.cmd("HGET").arg(meta).arg("done_at");
        }
        let done_at: Vec<Option<i64>> = p.query_async(&mut conn).await?;
        let mut p = redis::pipe();
        let mut removed = 0;
        for ((id, meta), at) in ids.iter().zip(&metas).zip(done_at) {
            if at.is_some_and(|t| t < cutoff) {
                p.cmd("SREM").arg(set).arg(id).ignore();
                p.cmd("HDEL").arg(self.cfg.job_data_hash()).arg(id).ignore();
                p.cmd("DEL").arg(meta).ignore();
                removed += 1;
            }
        }
        if removed > 0 {
            let () = p.query_async(&mut conn).await?;
        }
        Ok(removed)
    }

    /// Queue workers (of any process) that heartbeated within `window`: a sign of running
    /// daemons.
    pub async fn live_workers(&self, window: Duration) -> Result<u64> {
        let mut conn = self.redis();
        let since = chrono::Utc::now().timestamp() - window.as_secs() as i64;
        Ok(redis::cmd("ZCOUNT")
            .arg(self.config().workers_set())
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await?)
    }

    /// The queue's status of one job: `Pending`, `Running`, `Done`, `Failed`, … (`Stored` when
    /// only its payload is left), or `None` when Redis no longer (or never) held it.
    pub async fn job_status(&self, id: &str) -> Result<Option<String>> {
        let mut conn = self.redis();
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("{}:{}", self.config().job_meta_hash(), id))
            .arg("status")
            .query_async(&mut conn)
            .await?;
        if status.is_some() {
            return Ok(status);
        }
        Ok(self.contains(id).await?.then(|| "Stored".to_owned()))
    }

    pub fn config(&self) -> &RedisQueueConfig {
        &self.cfg
    }
}
