//! Dependency outages pause work: they never fail, strand or duplicate an Order.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use provisioner_sim::Faults;
use serde_json::Value;

use crate::helpers::{Db, Options, TestApp, spawn_app, wait_until};

/// Short breaker settings so an outage of seconds exercises open → half-open → open → closed.
fn breaker_env() -> Vec<(&'static str, String)> {
    vec![
        ("BREAKER_FAILURE_THRESHOLD", "3".into()),
        ("BREAKER_PROBE_INTERVAL_SECS", "1".into()),
        ("BREAKER_PROBE_MAX_INTERVAL_SECS", "2".into()),
        ("BREAKER_ALERT_AFTER_SECS", "2".into()),
        ("ALERT_CHECK_INTERVAL_SECS", "1".into()),
        ("JOB_MAX_ATTEMPTS", "2".into()),
    ]
}

async fn health(http: &reqwest::Client, base: &str) -> Option<Value> {
    http.get(format!("{base}/health/sf-events"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn statuses(app: &TestApp, ids: &[provisioner::ids::SalesforceId]) -> Vec<Option<String>> {
    ids.iter().map(|id| app.activation(id)).collect()
}

fn deferred(app: &TestApp) -> u64 {
    // One label at a time: `get_or_create` holds the family's lock while its guard lives, and
    // creating the second label under the first's guard would deadlock.
    let mut n = 0;
    for reason in ["whmcs_open", "whmcs_half_open"] {
        n += app
            .state
            .metrics
            .jobs_deferred
            .get_or_create(&provisioner::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .get();
    }
    n
}

/// Asserts every Order ended Activated with exactly one WHMCS order.
fn all_activated_once(app: &TestApp, ids: &[provisioner::ids::SalesforceId]) {
    for id in ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whmcs_down_pauses_orders_and_every_one_is_activated_once_after_recovery() {
    let mut app = spawn_app(Options {
        extra_env: breaker_env(),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    app.sim.sim.set_faults(Faults {
        whmcs_down: true,
        ..Default::default()
    });
    let outage = Instant::now();
    let ids = app.seed_approved(100);
    // The outage lasts at least 30 s and until the breaker has been seen open, has made jobs
    // wait and has gone through failed probes (WHMCS requests keep coming only one at a time).
    let seen = std::sync::Mutex::new(BTreeSet::new());
    wait_until(
        Duration::from_secs(120),
        "the WHMCS breaker to hold jobs back through a 30 s outage",
        || async {
            if let Some(h) = health(&http, &app.http).await {
                if let Some(s) = h["dependencies"]["whmcs"]["state"].as_str() {
                    seen.lock().expect("seen").insert(s.to_owned());
                }
                if h["alert"]["dependencies"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|d| d == "whmcs"))
                {
                    seen.lock().expect("seen").insert("alert".to_owned());
                }
            }
            outage.elapsed() >= Duration::from_secs(30) && deferred(&app) >= 200
        },
    )
    .await;
    let seen = seen.into_inner().expect("seen");
    for s in ["open", "alert"] {
        assert!(seen.contains(s), "breaker states seen: {seen:?}");
    }
    let h = health(&http, &app.http).await.expect("health");
    assert!(
        h["dependencies"]["whmcs"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("WHMCS_HTTP")),
        "{h}"
    );
    let during = statuses(&app, &ids);
    assert!(
        during.iter().all(|s| s.as_deref() == Some("Activating")),
        "no Order may leave Activating during the outage: {during:?}"
    );
    // Held back: a handful of calls per probe, not every job retrying on its own.
    let requests = app.sim.sim.totals().whmcs_requests;
    eprintln!("WHMCS requests during the outage: {requests}");
    assert!(
        requests < 300,
        "{requests} WHMCS requests during the outage"
    );
    assert!(
        app.state
            .metrics
            .render()
            .contains("provisioner_dependency_state{dependency=\"whmcs\"}"),
    );

    app.sim.sim.set_faults(Faults::default());
    app.wait_terminal(&ids, Duration::from_secs(180)).await;
    all_activated_once(&app, &ids);
    let h = health(&http, &app.http).await.expect("health");
    assert_eq!(h["dependencies"]["whmcs"]["state"], "closed", "{h}");
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_request_limit_pauses_orders_without_failing_them() {
    let mut app = spawn_app(Options {
        extra_env: breaker_env(),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    app.sim.sim.set_faults(Faults {
        sf_request_limit: true,
        ..Default::default()
    });
    let outage = Instant::now();
    let ids = app.seed_approved(20);
    let open_seen = std::sync::atomic::AtomicBool::new(false);
    wait_until(
        Duration::from_secs(90),
        "the Salesforce breaker to open through a 20 s REQUEST_LIMIT_EXCEEDED",
        || async {
            if let Some(h) = health(&http, &app.http).await {
                if h["dependencies"]["salesforce"]["state"] == "open" {
                    open_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            open_seen.load(std::sync::atomic::Ordering::Relaxed)
                && outage.elapsed() >= Duration::from_secs(20)
        },
    )
    .await;
    let h = health(&http, &app.http).await.expect("health");
    assert!(
        h["dependencies"]["salesforce"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("REQUEST_LIMIT_EXCEEDED")),
        "{h}"
    );
    let during = statuses(&app, &ids);
    assert!(
        during.iter().all(|s| s.as_deref() == Some("Activating")),
        "{during:?}"
    );
    app.sim.sim.set_faults(Faults::default());
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    all_activated_once(&app, &ids);
    app.stop().await.expect("stop");
}

use crate::helpers::free_port;

async fn metric(http: &reqwest::Client, port: u16, prefix: &str) -> f64 {
    let Ok(r) = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whmcs_auth_failure_latches_every_replica_until_reset_auth() {
    let app = spawn_app(Options {
        db: Db::Postgres,
        start: false,
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_auth_failed: true,
        ..Default::default()
    });
    let ports = [free_port(), free_port()];
    let _children: Vec<_> = ports
        .iter()
        .map(|p| {
            crate::helpers::daemon_process(
                &app,
                &[
                    ("HTTP_ADDR", format!("127.0.0.1:{p}")),
                    ("LEADER_LEASE_TTL_SECS", "3".into()),
                    ("BREAKER_PROBE_INTERVAL_SECS", "1".into()),
                    ("BREAKER_PROBE_MAX_INTERVAL_SECS", "2".into()),
                    ("WORKER_CONCURRENCY", "8".into()),
                    ("ALERT_CHECK_INTERVAL_SECS", "1".into()),
                ],
            )
        })
        .collect();
    let http = reqwest::Client::new();
    let ids = app.seed_approved(20);
    // Both replicas latch, and keep putting jobs back without calling WHMCS.
    wait_until(
        Duration::from_secs(120),
        "both replicas to report whmcs auth_failed and defer jobs",
        || async {
            let mut ok = true;
            for p in ports {
                let h = health(&http, &format!("http://127.0.0.1:{p}")).await;
                ok &= h.is_some_and(|h| {
                    h["dependencies"]["whmcs"]["state"] == "auth_failed"
                        && h["alert"]["dependencies"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|d| d == "whmcs"))
                });
            }
            let mut deferred = 0.0;
            for p in ports {
                deferred += metric(
                    &http,
                    p,
                    "provisioner_jobs_deferred_total{reason=\"whmcs_auth_failed\"}",
                )
                .await;
            }
            ok && deferred >= 40.0
        },
    )
    .await;
    let requests = app.sim.sim.totals().whmcs_requests;
    assert!(
        (1..=3).contains(&requests),
        "at most 3 WHMCS requests during the fault, saw {requests}"
    );
    let during = statuses(&app, &ids);
    assert!(
        during.iter().all(|s| s.as_deref() == Some("Activating")),
        "{during:?}"
    );

    // The operator fixes WHMCS and lifts the latch.
    app.sim.sim.set_faults(Faults::default());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["whmcs", "reset-auth", "--json"])
        .env_clear()
        .envs(app.env.iter().cloned())
        .output()
        .await
        .expect("run reset-auth");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["cleared"], true, "{v}");
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    all_activated_once(&app, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_other_whmcs_credentials_lifts_the_latch() {
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("WHMCS_API_SECRET", "wrong-secret".into()),
            // Waiting jobs look at the latch again within seconds, not minutes.
            ("BREAKER_PROBE_INTERVAL_SECS", "1".into()),
            ("BREAKER_PROBE_MAX_INTERVAL_SECS", "5".into()),
        ],
        ..Default::default()
    })
    .await;
    let ids = app.seed_approved(5);
    wait_until(Duration::from_secs(60), "the WHMCS latch", || async {
        app.state.deps.whmcs.snapshot().state == provisioner::deps::BreakerState::AuthFailed
    })
    .await;
    app.stop().await.expect("stop");
    assert_eq!(app.sim.sim.totals().whmcs_requests, 1);
    assert!(
        statuses(&app, &ids)
            .iter()
            .all(|s| s.as_deref() == Some("Activating"))
    );

    // The same wrong credentials after a restart: still latched, no call.
    app.state = provisioner::daemon::AppState::build(
        provisioner::config::Config::load_from(None, app.env.clone()).expect("config"),
    )
    .await
    .expect("state");
    assert_eq!(
        app.state.deps.whmcs.snapshot().state,
        provisioner::deps::BreakerState::AuthFailed
    );

    // Fixed credentials: the start lifts the latch and every Order is provisioned once.
    let secret = app.sim.whmcs_secret.clone();
    app.env.retain(|(k, _)| k != "WHMCS_API_SECRET");
    app.env.push(("WHMCS_API_SECRET".into(), secret));
    app.state = provisioner::daemon::AppState::build(
        provisioner::config::Config::load_from(None, app.env.clone()).expect("config"),
    )
    .await
    .expect("state");
    assert_eq!(
        app.state.deps.whmcs.snapshot().state,
        provisioner::deps::BreakerState::Closed
    );
    app.start();
    app.wait_terminal(&ids, Duration::from_secs(90)).await;
    all_activated_once(&app, &ids);
    app.stop().await.expect("stop");
}

/// Jobs put back while the WHMCS latch held do not sleep out their delay once the operator
/// lifts it: `reset-auth` makes them due at once (default probe intervals: without that they
/// would wait 30 s or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_auth_releases_the_waiting_jobs_at_once() {
    let app = spawn_app(Options::default()).await;
    app.sim.sim.set_faults(Faults {
        whmcs_auth_failed: true,
        ..Default::default()
    });
    let ids = app.seed_approved(5);
    wait_until(
        Duration::from_secs(60),
        "the latch, and every job put back",
        || async {
            app.state.deps.whmcs.snapshot().state == provisioner::deps::BreakerState::AuthFailed
                && app
                    .state
                    .queue
                    .stats()
                    .await
                    .is_ok_and(|s| s.delayed >= 5 && s.pending + s.running == 0)
        },
    )
    .await;
    app.sim.sim.set_faults(Faults::default());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["whmcs", "reset-auth", "--json"])
        .env_clear()
        .envs(app.env.iter().cloned())
        .output()
        .await
        .expect("run reset-auth");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["cleared"], true, "{v}");
    assert!(v["released_jobs"].as_u64().is_some_and(|n| n >= 5), "{v}");
    // Well inside the shortest delay a waiting job is given (the 30 s probe interval).
    app.wait_terminal(&ids, Duration::from_secs(20)).await;
    all_activated_once(&app, &ids);
}

/// Every key of the app's queue in Redis (jobs, metadata, run markers, bookkeeping).
async fn queue_keys(app: &TestApp) -> usize {
    let name = app
        .env
        .iter()
        .find(|(k, _)| k == "QUEUE_NAME")
        .map(|(_, v)| v.clone())
        .expect("QUEUE_NAME");
    let mut conn = app.state.queue.redis();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{name}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_whmcs_outage_holds_intake_at_the_pending_limit_and_redis_stays_bounded() {
    const MAX_PENDING: u64 = 20;
    const BATCH: u64 = 10;
    const CONCURRENCY: u64 = 4;
    let mut env = breaker_env();
    env.extend([
        ("SF_EVENTS_MAX_PENDING_JOBS", MAX_PENDING.to_string()),
        ("SF_EVENTS_BATCH_SIZE", BATCH.to_string()),
        ("WORKER_CONCURRENCY", CONCURRENCY.to_string()),
    ]);
    let mut app = spawn_app(Options {
        extra_env: env,
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_down: true,
        ..Default::default()
    });
    let ids = app.seed_approved(60);
    // Jobs taken in while the breaker is open: the threshold, plus the batch a top-up may ask
    // for, plus the jobs the workers hold at that moment (running jobs are not waiting ones).
    let bound = MAX_PENDING + BATCH + CONCURRENCY;
    let (mut max_waiting, mut max_inbox, mut max_keys) = (0u64, 0i64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(150);
    // Many deferrals: every waiting job is put back every 1–3 s.
    while deferred(&app) < 600 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 600 deferrals (saw {})",
            deferred(&app)
        );
        let s = app.state.queue.stats().await.expect("queue stats");
        max_waiting = max_waiting.max(s.pending + s.delayed);
        let inbox: i64 = app
            .state
            .ledger
            .inbox_counts()
            .await
            .expect("inbox counts")
            .values()
            .sum();
        max_inbox = max_inbox.max(inbox);
        max_keys = max_keys.max(queue_keys(&app).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "during the outage: {} deferrals, at most {max_waiting} jobs waiting, {max_inbox} events taken in, {max_keys} queue keys",
        deferred(&app)
    );
    assert!(
        max_waiting <= bound,
        "{max_waiting} jobs waiting in the queue (limit {MAX_PENDING}, bound {bound})"
    );
    assert!(
        max_inbox as u64 <= bound,
        "{max_inbox} events taken in during the outage (limit {MAX_PENDING}, bound {bound})"
    );
    assert!(
        max_inbox as u64 >= MAX_PENDING,
        "intake stopped before the limit: {max_inbox}"
    );
    // Per event taken in: its finished job's metadata, its run marker, at most one waiting
    // deferral entry; plus the deferral entries finished since the last cleanup (every 5 s)
    // and the queue's own keys. Without the cleanup every one of the 600 deferrals leaves a key.
    assert!(
        max_keys <= 300,
        "{max_keys} Redis keys for the queue after {} deferrals",
        deferred(&app)
    );
    let during = statuses(&app, &ids);
    assert!(
        during.iter().all(|s| s.as_deref() == Some("Activating")),
        "no Order may leave Activating during the outage: {during:?}"
    );

    app.sim.sim.set_faults(Faults::default());
    app.wait_terminal(&ids, Duration::from_secs(180)).await;
    all_activated_once(&app, &ids);
    // Once the deferral entries have run, the cleanup takes their keys away.
    wait_until(
        Duration::from_secs(30),
        "the finished deferral entries to be cleaned up",
        || async {
            let mut conn = app.state.queue.redis();
            let done: Vec<String> = redis::cmd("SMEMBERS")
                .arg(app.state.queue.config().done_jobs_set())
                .query_async(&mut conn)
                .await
                .expect("SMEMBERS");
            !done.iter().any(|id| id.contains("~w"))
        },
    )
    .await;
    app.stop().await.expect("stop");
}
