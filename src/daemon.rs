//! The daemon: builds every part from the configuration and supervises them.
//!
//! Parts run under one [`CancellationToken`]: the HTTP server, the Pub/Sub subscriber, the queue
//! workers (apalis `Monitor`) and housekeeping. Shutdown (SIGTERM/SIGINT, or the token from a
//! test) stops the subscriber between batches (its cursor is already stored), stops workers
//! from taking new jobs and lets in-flight jobs finish within `shutdown_grace_secs` (a job cut
//! off is re-run by another worker and resumes from the ledger), then exits 0.
//! Any part that ends while the token is not cancelled — including a queue worker that stopped
//! heartbeating, which apalis would otherwise hide — is logged by name and the process exits
//! non-zero so the container runtime restarts it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use apalis::prelude::*;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use crate::state::AppState;
use crate::{
    config::Config,
    ingest::{lease::Lease, subscriber::Subscriber},
    jobs::provision::{Execution, Provisioner},
    metrics::StateLabel,
    queue::{self, Job},
    reconciler::Reconciler,
    status::SubState,
};

async fn handle_job(
    job: Job,
    attempt: Attempt,
    p: Data<Arc<Provisioner>>,
    queue: Data<queue::Queue>,
) -> Result<(), BoxDynError> {
    // Counted before anything else, so a run cut off by a crash is known to the next one even
    // if the ledger lost that run's commits. Without Redis the job cannot be trusted to run
    // safely: it fails and the queue runs it again.
    let runs = queue.mark_run(job.id()).await?;
    let execution = Execution {
        queue_attempt: attempt.current(),
        runs,
    };
    match job {
        Job::ProvisionOrderV1(j) => {
            crate::jobs::gate::run(&p, &queue, j, execution).await?;
            Ok(())
        }
    }
}

/// Runs the queue workers until `shutdown`; returns early only if they all died.
async fn run_workers(
    state: AppState,
    shutdown: CancellationToken,
    last_beat: Arc<AtomicI64>,
) -> anyhow::Result<()> {
    let provisioner = Arc::new(state.provisioner());
    let storage = state.queue.storage();
    let instance = state.instance.clone();
    let concurrency = state.cfg.queue.concurrency;
    let beat = last_beat.clone();
    let queue = state.queue.clone();
    let monitor = Monitor::new()
        .register(move |restarts| {
            let beat = beat.clone();
            WorkerBuilder::new(format!("{instance}-w{restarts}"))
                .backend(storage.clone().poll_with_strategy(queue.wake_strategy()))
                .catch_panic()
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .data(provisioner.clone())
                .data(queue.clone())
                .on_event(move |ctx, ev| match ev {
                    Event::Start | Event::HeartBeat => {
                        beat.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                    }
                    Event::Error(e) => warn!(worker = ctx.name(), error.message = %e, "queue worker error"),
                    Event::Exit => info!(worker = ctx.name(), "queue worker exited"),
                    _ => {}
                })
                .build(handle_job)
        })
        .should_restart(|ctx, err| {
            error!(worker = ctx.name(), error.message = %err, restarts = ctx.restarts(), "queue worker failed; restarting");
            true
        })
        .shutdown_timeout(state.cfg.shutdown_grace);
    let token = shutdown.clone();
    monitor
        .run_with_signal(async move {
            token.cancelled().await;
            Ok(())
        })
        .await
        .context("queue workers")?;
    Ok(())
}

/// Housekeeping ticks between two prunings of the audit trail (one hour); the first tick
/// prunes too.
const AUDIT_PRUNE_EVERY: u64 = 720;

/// Housekeeping ticks between two measurements of the clock skew (one minute); the first tick
/// measures too.
const CLOCK_CHECK_EVERY: u64 = 12;

/// How far this process's clock may be off the database's before it is reported. Leases never
/// depend on it; the queue's orphan detection (`HEARTBEAT` × `MISSED_HEARTBEATS`, judged by
/// each replica on its own clock) and the delays of deferred jobs do.
const CLOCK_SKEW_WARN: Duration = Duration::from_secs(2);

/// Measures this process's clock against the database's: exported as
/// `provisioner_clock_skew_milliseconds`, logged at warn while beyond [`CLOCK_SKEW_WARN`] and
/// once at info when it is back within. `skewed`: whether the last measurement was beyond.
async fn check_clock(state: &AppState, skewed: &mut bool) {
    let skew_ms = match state.ledger.clock_skew_ms().await {
        Ok(v) => v,
        Err(e) => {
            warn!(error.message = %e, "cannot read the database's clock");
            return;
        }
    };
    state.metrics.clock_skew_ms.set(skew_ms);
    let beyond = skew_ms.unsigned_abs() > CLOCK_SKEW_WARN.as_millis() as u64;
    if beyond {
        warn!(
            clock.skew_ms = skew_ms,
            "this process's clock is {:.1} s {} the ledger database's; leases are unaffected, \
             but replicas judge each other's queue heartbeats and job delays on their own clocks: \
             synchronise this host's clock (NTP)",
            skew_ms.unsigned_abs() as f64 / 1000.0,
            if skew_ms > 0 { "behind" } else { "ahead of" }
        );
    } else if *skewed {
        info!(
            clock.skew_ms = skew_ms,
            "this process's clock agrees with the database's again"
        );
    }
    *skewed = beyond;
}

/// Exports queue depth to metrics, cleans up finished jobs (the entries of deferred jobs every
/// tick, others after 24 h), prunes the audit trail past `AUDIT_RETENTION_DAYS` (database
/// clock; every replica may prune, deleting is idempotent) and checks this process's clock
/// against the database's ([`check_clock`]).
async fn housekeeping(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    let mut skewed = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        n += 1;
        if n % CLOCK_CHECK_EVERY == 1 {
            check_clock(&state, &mut skewed).await;
        }
        match state.queue.stats().await {
            Ok(s) => {
                state.queue_depth.record(s.pending + s.delayed);
                for (label, v) in [
                    ("pending", s.pending),
                    ("delayed", s.delayed),
                    ("running", s.running),
                    ("failed", s.failed),
                    ("done", s.done),
                ] {
                    state
                        .metrics
                        .queue_depth
                        .get_or_create(&StateLabel {
                            state: label.into(),
                        })
                        .set(v as i64);
                }
            }
            Err(e) => warn!(error.message = %e, "cannot read queue statistics"),
        }
        if n % AUDIT_PRUNE_EVERY == 1 {
            match state
                .ledger
                .prune_steps(state.cfg.audit_retention_days)
                .await
            {
                Ok(0) => {}
                Ok(pruned) => info!(pruned, "pruned the audit trail"),
                Err(e) => warn!(error.message = %e, "cannot prune the audit trail"),
            }
        }
        if let Err(e) = state.queue.cleanup_deferrals().await {
            warn!(error.message = %e, "cleanup of deferred jobs' entries failed");
        }
        if n % 120 == 0 {
            if let Err(e) = state.queue.cleanup(Duration::from_secs(24 * 3600)).await {
                warn!(error.message = %e, "queue cleanup failed");
            }
        }
    }
}

/// What an operator must hear about Redis's durability, if anything.
pub fn durability_warning(d: &queue::Durability) -> Option<String> {
    match d.persistence {
        queue::Persistence::None => Some(
            "Redis keeps nothing on disk (no AOF, no RDB): a Redis restart loses every queued job \
             (the stuck-order reconciler re-enqueues Activating Orders); enable appendonly in production"
                .into(),
        ),
        queue::Persistence::Rdb => Some(
            "Redis persists snapshots only (no AOF): a restart loses the jobs queued since the last one; \
             enable appendonly in production"
                .into(),
        ),
        queue::Persistence::Aof | queue::Persistence::Unknown => None,
    }
}

/// Runs the daemon until `shutdown` is cancelled (exit 0) or a part fails (error).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::build(cfg).await?;
    run_with_state(state, shutdown).await
}

/// Like [`run`], with parts already built (tests reach into the state).
pub async fn run_with_state(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    if matches!(state.cfg.http.auth, crate::config::ApiAuth::Disabled) {
        warn!("API_AUTH=disabled: /api/orders answers without authentication; use only locally");
    }
    let listener = tokio::net::TcpListener::bind(state.cfg.http.addr)
        .await
        .with_context(|| format!("HTTP_ADDR: cannot listen on {}", state.cfg.http.addr))?;
    let internal = match state.cfg.http.internal_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("INTERNAL_HTTP_ADDR: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    info!(
        http.addr = %listener.local_addr()?,
        http.internal_addr = ?internal.as_ref().and_then(|l| l.local_addr().ok()),
        instance = %state.instance,
        "provisioner starting"
    );
    match state.queue.durability().await {
        Ok(d) => {
            if let Some(w) = durability_warning(&d) {
                error!(redis.persistence = ?d.persistence, "{w}");
            }
            match state.queue.waits_for_replica() {
                Some(wait) => info!(
                    redis.replicas = d.replicas,
                    wait_ms = wait.as_millis() as u64,
                    "every push waits for a Redis replica to confirm it"
                ),
                None if d.replicas > 0 => warn!(
                    redis.replicas = d.replicas,
                    "Redis has replicas but pushes do not wait for them (REDIS_WAIT_REPLICA_MS=0)"
                ),
                None => {}
            }
        }
        Err(e) => warn!(error.message = %e, "cannot read Redis's persistence settings"),
    }

    {
        // The WHMCS version decides how order quantities are sent; read it once at start (a
        // job reads it itself if this fails).
        let whmcs = state.whmcs.clone();
        tokio::spawn(async move {
            match whmcs.details().await {
                Ok(v) if crate::whmcs::honours_quantity(&v) == Some(true) => {
                    info!(whmcs.version = %v, "WHMCS version");
                }
                Ok(v) => warn!(
                    whmcs.version = %v,
                    "WHMCS is older than 8.12: order quantities above 1 follow WHMCS_QUANTITY_MODE"
                ),
                Err(e) => {
                    warn!(error.message = %e, "could not read the WHMCS version (WhmcsDetails)")
                }
            }
        });
    }
    let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    {
        // Before anything serves: until the feed is live, nothing caches ledger rows.
        state.changes.expect_feed();
        let feed = queue::feed::Feed {
            client: queue::redis_client(&state.cfg.queue.redis_url, &state.cfg.queue.tls)
                .context("REDIS_URL")?,
            publish: state.queue.redis(),
            channel: queue::feed::channel(&state.cfg.queue.name),
            origin: state.instance.clone(),
            changes: state.changes.clone(),
        };
        let token = shutdown.clone();
        parts.spawn(async move { ("change-feed", feed.run(token).await) });
    }
    {
        let (s, token) = (state.clone(), shutdown.clone());
        parts.spawn(async move {
            let r = crate::http::serve(listener, s, token).await;
            ("http", r.map_err(anyhow::Error::from))
        });
    }
    if let Some(listener) = internal {
        let (s, token) = (state.clone(), shutdown.clone());
        parts.spawn(async move {
            let r = crate::http::serve_surface(listener, s, crate::http::Surface::Internal, token)
                .await;
            ("internal-http", r.map_err(anyhow::Error::from))
        });
    }
    if state.cfg.events.enabled {
        let lease = Lease::new(
            state.queue.redis(),
            state.ledger.clone(),
            &state.cfg.queue.name,
            &state.instance,
            state.cfg.leader_lease_ttl,
        );
        let (s, token) = (state.clone(), shutdown.clone());
        parts.spawn(async move {
            let health = s.health.clone();
            let r = lease
                .run(&health, token, move |fencing_token, leadership| {
                    let s = s.clone();
                    async move { lead(s, fencing_token, leadership).await }
                })
                .await;
            ("subscriber", r)
        });
    } else {
        state.health.update(|h| h.state = SubState::Disabled);
    }
    let last_beat = Arc::new(AtomicI64::new(chrono::Utc::now().timestamp_millis()));
    {
        let (s, token, beat) = (state.clone(), shutdown.clone(), last_beat.clone());
        parts.spawn(async move { ("workers", run_workers(s, token, beat).await) });
    }
    {
        let (token, beat) = (shutdown.clone(), last_beat.clone());
        parts.spawn(async move {
            // apalis reports success even when every worker died: watch heartbeats ourselves.
            let limit = (queue::HEARTBEAT * 3).as_millis() as i64;
            let mut tick = tokio::time::interval(queue::HEARTBEAT);
            loop {
                tokio::select! {
                    () = token.cancelled() => return ("worker-watchdog", Ok(())),
                    _ = tick.tick() => {}
                }
                let age = chrono::Utc::now().timestamp_millis() - beat.load(Ordering::Relaxed);
                if age > limit {
                    return (
                        "worker-watchdog",
                        Err(anyhow::anyhow!(
                            "queue workers stopped heartbeating {age} ms ago"
                        )),
                    );
                }
            }
        });
    }
    {
        let (s, token) = (state.clone(), shutdown.clone());
        parts.spawn(async move { ("housekeeping", housekeeping(s, token).await) });
    }
    {
        let (s, token) = (state.clone(), shutdown.clone());
        let alerter = crate::alert::Alerter {
            cfg: s.cfg.alert.clone(),
            webhook: s.cfg.alert_webhook_url.clone(),
            ledger: s.ledger.clone(),
            status: s.alert.clone(),
            instance: s.instance.clone(),
            proxy: s.cfg.proxy.clone(),
            deps: Some(s.deps.clone()),
        };
        parts.spawn(async move { ("alerts", crate::alert::run(alerter, token).await) });
    }

    let mut failure: Option<anyhow::Error> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let grace = state.cfg.shutdown_grace + Duration::from_secs(5);
    loop {
        let joined = tokio::select! {
            j = parts.join_next() => match j {
                Some(j) => j,
                None => break,
            },
            () = shutdown.cancelled(), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + grace);
                continue;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                warn!(grace_secs = grace.as_secs(), "parts did not stop within the grace period; aborting them");
                parts.abort_all();
                break;
            }
        };
        let (name, result) = match joined {
            Ok(v) => v,
            Err(e) if e.is_cancelled() => continue,
            Err(e) => ("task", Err(anyhow::anyhow!("panicked: {e}"))),
        };
        if shutdown.is_cancelled() && failure.is_none() {
            if let Err(e) = result {
                warn!(part = name, error.message = %e, "part ended with an error during shutdown");
            }
            continue;
        }
        if failure.is_some() {
            continue;
        }
        let e = result
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("ended unexpectedly"));
        error!(part = name, error.message = %e, "a part of the daemon stopped; shutting down");
        failure = Some(e.context(format!("{name} stopped")));
        shutdown.cancel();
    }
    // The last jobs' audit steps, still gathering for a batch.
    state.ledger.flush_steps().await;
    match failure {
        Some(e) => Err(e),
        None => {
            info!("provisioner stopped");
            Ok(())
        }
    }
}

/// What the subscriber leader runs: the Pub/Sub subscriber (writing cursors with the lease's
/// fencing token) and the stuck-order reconciler, until leadership ends.
async fn lead(
    state: AppState,
    fencing_token: i64,
    leadership: CancellationToken,
) -> anyhow::Result<()> {
    let sub = Subscriber {
        cfg: state.cfg.events.clone(),
        tokens: state.tokens.clone(),
        ledger: state.ledger.clone(),
        queue: state.queue.clone(),
        metrics: state.metrics.clone(),
        health: state.health.clone(),
        fencing_token,
        proxy: state.cfg.proxy.clone(),
        pauses: state.pauses.clone(),
    };
    let reconciler = Reconciler {
        cfg: state.cfg.reconciler.clone(),
        rest: state.rest.clone(),
        ledger: state.ledger.clone(),
        queue: state.queue.clone(),
        metrics: state.metrics.clone(),
        report: state.reconciler.clone(),
        max_pending_jobs: state.cfg.events.max_pending_jobs,
        pauses: state.pauses.clone(),
    };
    // A subscriber that stops by itself (fenced) ends the leadership: the reconciler too.
    let stop = leadership.child_token();
    let (a, b) = tokio::join!(
        async {
            let r = sub.run(stop.clone()).await;
            stop.cancel();
            r
        },
        reconciler.run(stop.clone())
    );
    a.and(b)
}

/// Cancels `token` on SIGTERM or SIGINT. The handlers are in place when this returns (before
/// the caller starts anything), so a signal that arrives early stops the process gracefully
/// instead of killing it; if they cannot be installed, the signal's default action remains.
pub fn on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    if let Err(e) = &term {
        warn!(error.message = %e, "cannot handle SIGTERM");
    }
    if let Err(e) = &int {
        warn!(error.message = %e, "cannot handle SIGINT");
    }
    tokio::spawn(async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => info!("SIGTERM received; shutting down"),
            () = wait(int) => info!("SIGINT received; shutting down"),
        }
        token.cancel();
    });
}
