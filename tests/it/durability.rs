//! Dependency failures pause work and never fail, strand or duplicate an Order: leases judged
//! on the database's clock, fencing that survives Redis losing its data, and a queue whose
//! durability is checked.

use std::time::Duration;

use provisioner_sim::Faults;
use serde_json::Value;

use crate::helpers::{Db, Options, daemon_process, fresh_database, spawn_app, wait_until};

use crate::helpers::free_port;

async fn health_of(http: &reqwest::Client, port: u16) -> Option<Value> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/health/sf-events"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Two replicas share one PostgreSQL ledger and one queue; one replica's clock runs 25 s ahead.
/// Every Order is approved twice: the first job runs on the true-clock replica in slow WHMCS
/// calls (6 s each), the second on the replica ahead, waiting for the Order's lease. Leases are
/// judged on the database's clock, so the replica ahead never takes a lease that is still live
/// (on its own clock it would after 5 s): no attempt is cut off, no WHMCS order is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_hold_on_the_database_clock_when_a_replica_clock_runs_ahead() {
    let app = spawn_app(Options {
        db: Db::Postgres,
        start: false,
        // Every job of the test in flight at once, so both jobs of an Order run together.
        extra_env: vec![
            ("WORKER_CONCURRENCY", "200".into()),
            ("WHMCS_MIN_IN_FLIGHT", "200".into()),
            ("WHMCS_MAX_IN_FLIGHT", "400".into()),
        ],
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 6000,
        ..Default::default()
    });
    let (p1, p2) = (free_port(), free_port());
    let lease_ttl = ("LEADER_LEASE_TTL_SECS", "3".to_owned());
    // WHMCS answers within its timeout; should a replica die mid-call, the wait before a new
    // AddOrder stays short.
    let whmcs_timeout = ("WHMCS_TIMEOUT_SECS", "10".to_owned());
    let allowance = ("WHMCS_EXECUTION_ALLOWANCE_SECS", "5".to_owned());
    let http = reqwest::Client::new();
    let answers = |port: u16| {
        let http = http.clone();
        async move { health_of(&http, port).await.is_some() }
    };
    // The replica on the true clock starts alone and takes every Order's first job.
    let mut honest = daemon_process(
        &app,
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{p1}")),
            lease_ttl.clone(),
            whmcs_timeout.clone(),
            allowance.clone(),
        ],
    );
    wait_until(Duration::from_secs(60), "the first replica", || answers(p1)).await;
    let ids = app.seed_approved(200);
    wait_until(
        Duration::from_secs(60),
        "every first job to hold its Order's lease",
        || async {
            let mut held = 0;
            for id in &ids {
                if app.state.ledger.lease_of(id).await.ok().flatten().is_some() {
                    held += 1;
                }
            }
            held == ids.len()
        },
    )
    .await;
    // The replica 25 s ahead takes the second jobs (the first replica's workers are all busy)
    // and waits for each Order's lease while the first job is in a slow WHMCS call.
    let mut ahead = daemon_process(
        &app,
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{p2}")),
            lease_ttl,
            whmcs_timeout,
            allowance,
            ("TEST_CLOCK_OFFSET_SECS", "25".into()),
        ],
    );
    wait_until(Duration::from_secs(60), "the second replica", || {
        answers(p2)
    })
    .await;
    for id in &ids {
        app.sim.sim.approve(id);
    }
    // About 20 s alone on the 2-core machine (two rounds of 6-second calls, and the second
    // jobs' waits for the leases); the whole suite running beside it stretches that.
    app.wait_terminal(&ids, Duration::from_secs(240)).await;
    // Let the second job of every Order finish too.
    wait_until(Duration::from_secs(120), "the queue to drain", || async {
        app.state
            .queue
            .stats()
            .await
            .is_ok_and(|s| s.pending + s.delayed + s.running == 0)
    })
    .await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        // One WHMCS order. (A second AddOrder may arrive if a replica died while its first was
        // still in WHMCS's hands and never executed: then the in-doubt window was waited out and
        // the lookup found nothing.)
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
        // An attempt cut off by a lease taken while it still ran is left open, or closed with
        // the lost lease as its reason.
        let attempts = app.state.ledger.attempts(id).await.expect("attempts");
        assert!(
            attempts.iter().all(|a| a.finished_at.is_some()
                && !a
                    .error_message
                    .as_deref()
                    .is_some_and(|m| m.contains("was lost"))),
            "{id}: an attempt lost its lease while running: {attempts:?}"
        );
    }
    let _ = honest.kill().await;
    let _ = ahead.kill().await;
}

/// A `redis-server` of the test's own on a free port, keeping nothing on disk; killed on drop.
/// Tests that flush Redis or stop it use one, never the shared Redis.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl PrivateRedis {
    /// Starts a server on `port` (a free one when `None`), a replica of `replica_of` if given.
    async fn start(port: Option<u16>, replica_of: Option<u16>) -> Self {
        let port = port.unwrap_or_else(free_port);
        let dir = std::env::temp_dir().join(format!("redis-it-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(master) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = cmd.spawn().expect("redis-server installed");
        let r = Self {
            port,
            child,
            _dir: tempdir::Dir(dir),
        };
        wait_until(
            Duration::from_secs(10),
            "redis-server to answer",
            || async { r.info("server").await.is_some() },
        )
        .await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    async fn info(&self, section: &str) -> Option<String> {
        let mut c = self.conn().await?;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut c)
            .await
            .ok()
    }

    async fn connected_replicas(&self) -> Option<u64> {
        let info = self.info("replication").await?;
        info.lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn flushall(&self) {
        let mut c = self.conn().await.expect("private redis");
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut c)
            .await
            .expect("FLUSHALL");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The leader's fencing token comes from the ledger. After a restart (a second leadership, so
/// a second token is stored with the cursor), Redis loses all its data while the leader runs:
/// the lease vanishes, the leader stands down and re-acquires with a newer token from the
/// ledger, intake resumes by itself within the lease TTL, no resubscribe loop, and every
/// Order approved before and after the flush ends Activated exactly once (the reconciler
/// re-enqueues the jobs the flush lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_survives_redis_losing_its_data() {
    let redis = PrivateRedis::start(None, None).await;
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("REDIS_URL", redis.url()),
            ("LEADER_LEASE_TTL_SECS", "3".into()),
            ("RECONCILER_INTERVAL_SECS", "1".into()),
            ("RECONCILER_STUCK_AFTER_SECS", "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let connected = |app: &crate::helpers::TestApp| {
        app.state.health.snapshot().state == provisioner::status::SubState::Connected
    };
    let channel = app.state.cfg.events.channel.clone();
    let first = app.seed(10);
    for id in &first {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&first, Duration::from_secs(60)).await;
    // A restart: the next leadership stores a newer token with the cursor.
    app.stop().await.expect("stop");
    app.start();
    let second = app.seed(10);
    for id in &second {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&second, Duration::from_secs(60)).await;
    let token_before = app
        .state
        .ledger
        .cursor_row(&channel)
        .await
        .expect("cursor")
        .expect("stored cursor")
        .fencing_token;
    assert!(token_before >= 2, "two leaderships: {token_before}");
    let reconnects_before = app.state.health.snapshot().reconnects;

    // Orders in flight while Redis loses everything.
    let third = app.seed(20);
    for id in &third {
        app.sim.sim.approve(id);
    }
    redis.flushall().await;
    let flushed_at = tokio::time::Instant::now();
    // The lease vanished with the data; a leader takes it again by itself.
    let lease_key = format!("{}:leader", app.state.cfg.queue.name);
    wait_until(
        Duration::from_secs(15),
        "the subscriber lease to be taken again",
        || async {
            let Some(mut c) = redis.conn().await else {
                return false;
            };
            let holder: Option<String> = redis::cmd("GET")
                .arg(&lease_key)
                .query_async(&mut c)
                .await
                .unwrap_or(None);
            holder.is_some()
        },
    )
    .await;
    let fourth = app.seed(20);
    for id in &fourth {
        app.sim.sim.approve(id);
    }
    // Intake resumes by itself: the events approved after the flush reach the inbox.
    let fourth_ids: Vec<String> = fourth.iter().map(ToString::to_string).collect();
    wait_until(
        Duration::from_secs(30),
        "intake to resume after the flush",
        || async {
            let mut seen = 0;
            for id in &fourth_ids {
                let n: i64 = sqlx::Row::get(
                    &sqlx::query("SELECT COUNT(*) AS n FROM event_inbox WHERE sf_order_id = $1")
                        .bind(id)
                        .fetch_one(app.state.ledger.pool())
                        .await
                        .expect("inbox"),
                    "n",
                );
                seen += usize::from(n > 0);
            }
            seen == fourth_ids.len() && connected(&app)
        },
    )
    .await;
    let resumed_after = flushed_at.elapsed();
    // Lease TTL (3 s) to notice and re-acquire, plus the subscription's own round trips.
    assert!(
        resumed_after < Duration::from_secs(12),
        "intake resumed only after {resumed_after:?}"
    );
    let token_after = app
        .state
        .ledger
        .cursor_row(&channel)
        .await
        .expect("cursor")
        .expect("stored cursor")
        .fencing_token;
    assert!(
        token_after > token_before,
        "a new leadership writes with a newer token: {token_before} → {token_after}"
    );

    let all: Vec<_> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .chain(&fourth)
        .cloned()
        .collect();
    app.wait_terminal(&all, Duration::from_secs(120)).await;
    for id in &all {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
    let reconnects = app.state.health.snapshot().reconnects - reconnects_before;
    assert!(reconnects <= 3, "resubscribe loop: {reconnects} reconnects");
    app.stop().await.expect("stop");
}

/// Redis that keeps nothing on disk is reported, not assumed away: `/health/sf-events` shows
/// its persistence as "none" and `provisioner check` warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_persistence_is_reported_by_health_and_check() {
    let redis = PrivateRedis::start(None, None).await;
    let mut app = spawn_app(Options {
        extra_env: vec![("REDIS_URL", redis.url())],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let port: u16 = app
        .http
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    wait_until(Duration::from_secs(30), "/health/sf-events", || async {
        health_of(&http, port).await.is_some()
    })
    .await;
    let health = health_of(&http, port).await.expect("health");
    let redis_health = &health["redis"];
    assert_eq!(redis_health["persistence"], "none", "{redis_health}");
    assert_eq!(redis_health["replicas"], 0, "{redis_health}");
    assert_eq!(redis_health["pushWaitsForReplica"], false, "{redis_health}");
    app.stop().await.expect("stop");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("check")
        .env_clear()
        .envs(app.env.iter().cloned())
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[warn] redis: Redis keeps nothing on disk"),
        "{stdout}"
    );
    assert!(
        stdout.contains("persistence None, 0 connected replica(s)"),
        "{stdout}"
    );
}

/// With a replica, every push waits for it (`WAIT 1`) before the cursor moves. With the replica
/// stopped, the push is not confirmed: the cursor stays and the events are not recorded, until
/// the replica is back and the same events come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_wait_for_a_redis_replica_before_the_cursor_moves() {
    let master = PrivateRedis::start(None, None).await;
    let replica_port = free_port();
    let replica = PrivateRedis::start(Some(replica_port), Some(master.port)).await;
    wait_until(
        Duration::from_secs(20),
        "the replica to be in sync",
        || async {
            master.connected_replicas().await == Some(1)
                && master
                    .info("replication")
                    .await
                    .is_some_and(|i| i.contains("state=online"))
        },
    )
    .await;
    let app = spawn_app(Options {
        extra_env: vec![
            ("REDIS_URL", master.url()),
            ("REDIS_WAIT_REPLICA_MS", "300".into()),
        ],
        ..Default::default()
    })
    .await;
    assert_eq!(
        app.state.queue.waits_for_replica(),
        Some(Duration::from_millis(300))
    );
    let channel = app.state.cfg.events.channel.clone();
    let first = app.seed(5);
    for id in &first {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&first, Duration::from_secs(60)).await;
    for id in &first {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
    }
    // The cursor moved once a replica confirmed the pushes.
    wait_until(
        Duration::from_secs(30),
        "the cursor to be stored",
        || async {
            app.state
                .ledger
                .load_cursor(&channel)
                .await
                .is_ok_and(|c| c.is_some())
        },
    )
    .await;
    let cursor = app
        .state
        .ledger
        .load_cursor(&channel)
        .await
        .expect("cursor");

    // The replica goes away: no push is confirmed any more.
    drop(replica);
    wait_until(
        Duration::from_secs(20),
        "the replica to be gone",
        || async { master.connected_replicas().await == Some(0) },
    )
    .await;
    let second = app.seed(3);
    for id in &second {
        app.sim.sim.approve(id);
    }
    wait_until(
        Duration::from_secs(30),
        "an unconfirmed push to be reported",
        || async {
            app.state
                .health
                .snapshot()
                .last_error
                .is_some_and(|e| e.contains("no Redis replica confirmed"))
        },
    )
    .await;
    let inbox = |ids: Vec<String>| {
        let pool = app.state.ledger.pool().clone();
        async move {
            let mut n = 0;
            for id in ids {
                let row =
                    sqlx::query("SELECT COUNT(*) AS n FROM event_inbox WHERE sf_order_id = $1")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .expect("inbox");
                n += sqlx::Row::get::<i64, _>(&row, "n");
            }
            n
        }
    };
    let second_ids: Vec<String> = second.iter().map(ToString::to_string).collect();
    assert_eq!(
        app.state
            .ledger
            .load_cursor(&channel)
            .await
            .expect("cursor"),
        cursor,
        "the cursor moved past events no replica confirmed"
    );
    assert_eq!(inbox(second_ids.clone()).await, 0);

    // The replica is back: the same events come again and the cursor moves.
    let _replica = PrivateRedis::start(Some(replica_port), Some(master.port)).await;
    wait_until(
        Duration::from_secs(30),
        "the events to be recorded once a replica confirms",
        || async { inbox(second_ids.clone()).await == 3 },
    )
    .await;
    assert_ne!(
        app.state
            .ledger
            .load_cursor(&channel)
            .await
            .expect("cursor"),
        cursor
    );
    app.wait_terminal(&second, Duration::from_secs(60)).await;
    for id in &second {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
}

/// A leader whose cursor write is refused (a newer token is stored, as after a split brain)
/// gives leadership up and takes it again with a newer token from the ledger: intake resumes by
/// itself and the subscriber does not resubscribe in a loop with its stale token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_leader_stands_down_and_returns_with_a_newer_token() {
    let mut app = spawn_app(Options {
        extra_env: vec![("LEADER_LEASE_TTL_SECS", "3".into())],
        ..Default::default()
    })
    .await;
    let channel = app.state.cfg.events.channel.clone();
    let first = app.seed(5);
    for id in &first {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&first, Duration::from_secs(60)).await;
    let stored = app
        .state
        .ledger
        .cursor_row(&channel)
        .await
        .expect("cursor")
        .expect("stored cursor")
        .fencing_token;
    // Another leader, unknown to this one, wrote the cursor with a much newer token.
    let newer = stored + 100;
    sqlx::query("UPDATE cursors SET fencing_token = $1")
        .bind(newer)
        .execute(app.state.ledger.pool())
        .await
        .expect("newer token");
    let reconnects_before = app.state.health.snapshot().reconnects;
    let second = app.seed(5);
    for id in &second {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&second, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(30),
        "the cursor to be written with a newer token",
        || async {
            app.state
                .ledger
                .cursor_row(&channel)
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.fencing_token > newer)
        },
    )
    .await;
    for id in first.iter().chain(&second) {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
    let reconnects = app.state.health.snapshot().reconnects - reconnects_before;
    assert!(reconnects <= 3, "resubscribe loop: {reconnects} reconnects");
    app.stop().await.expect("stop");
}

/// A migrated ledger on a fresh database of `db` (or on `url`, e.g. in-memory SQLite), and the
/// temporary directory to remove afterwards.
async fn test_ledger(
    db: Db,
    url: Option<&str>,
) -> (provisioner::ledger::Ledger, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let url = match url {
        Some(u) => u.to_owned(),
        None => fresh_database(db, &dir).await,
    };
    let l = provisioner::ledger::Ledger::open(&provisioner::config::DatabaseConfig {
        url,
        auto_migrate: true,
        max_connections: 2,
    })
    .await
    .expect("ledger");
    (l, dir)
}

/// The record of a WHMCS order id (`Ledger::update_keeping_lease`) is written for the run that
/// owns the Order whether or not its lease is still live, renews the lease only while it is,
/// and says which it was; another run's record writes nothing.
async fn a_kept_record_renews_only_a_live_lease(db: Db) {
    use provisioner::ledger::{Change, LeaseAfter, state};
    let (l, dir) = test_ledger(db, None).await;
    let id = crate::helpers::sf_id("801000000000009AAA");
    let lease = Duration::from_secs(30);
    assert!(l.claim(&id, "a", lease).await.expect("claim").is_some());
    let added = |order| Change {
        state: Some(state::WHMCS_ADDED),
        whmcs_order_id: Some(order),
        ..Default::default()
    };
    let long = Duration::from_secs(600);
    let change = added(41);
    let kept = l.update_keeping_lease(&id, "a", &change, long);
    assert_eq!(kept.await.expect("keep"), LeaseAfter::Live);
    let (_, until) = l.lease_of(&id).await.expect("lease").expect("row");
    let now = l.clock_ms().await.expect("clock");
    assert!(until.expect("held") > now + 500_000, "extended to 600 s");
    let change = added(40);
    let other = l.update_keeping_lease(&id, "b", &change, long);
    assert_eq!(other.await.expect("keep"), LeaseAfter::Lost);
    sqlx::query("UPDATE orders SET lease_until = 0")
        .execute(l.pool())
        .await
        .expect("expire");
    let change = added(42);
    let lapsed = l.update_keeping_lease(&id, "a", &change, long);
    assert_eq!(lapsed.await.expect("keep"), LeaseAfter::Lapsed);
    let row = l.get(&id).await.expect("get").expect("row");
    assert_eq!(
        row.whmcs_order_id,
        Some(42),
        "recorded though the lease lapsed"
    );
    let (_, until) = l.lease_of(&id).await.expect("lease").expect("row");
    assert_eq!(until, Some(0), "a lapsed lease is not renewed");
    assert!(!l.still_holds(&id, "a", lease).await.expect("holds"));
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_kept_record_renews_only_a_live_lease_sqlite() {
    a_kept_record_renews_only_a_live_lease(Db::Sqlite).await;
}

#[tokio::test]
async fn a_kept_record_renews_only_a_live_lease_postgres() {
    a_kept_record_renews_only_a_live_lease(Db::Postgres).await;
}

/// The job's three one-trip transactions (attempt opened, `adding` intent, attempt closed; one
/// SQLite script or one PostgreSQL statement each) write everything or nothing: with the lease
/// held they apply whole, without it nothing at all. `url`: `None` for a fresh database of
/// `db`, or a given one (in-memory SQLite).
async fn one_trip_transactions_apply_whole_or_not_at_all(db: Db, url: Option<&str>) {
    use provisioner::ledger::{Change, outcome, state};
    let (l, dir) = test_ledger(db, url).await;
    let id = crate::helpers::sf_id("801000000000010AAA");
    let lease = Duration::from_secs(30);
    assert!(l.claim(&id, "a", lease).await.expect("claim").is_some());
    let start = Change {
        last_event_id: Some("ev-1"),
        ..Default::default()
    };
    assert_eq!(
        l.begin_attempt(&id, "b", Some("ev-1"), &start, true)
            .await
            .expect("begin"),
        None,
        "not b's lease"
    );
    assert!(l.attempts(&id).await.expect("attempts").is_empty());
    let first = l
        .begin_attempt(&id, "a", Some("ev-1"), &start, true)
        .await
        .expect("begin")
        .expect("a's lease");
    assert!(!l.mark_adding(&id, "b", "77", lease).await.expect("adding"));
    let row = l.get(&id).await.expect("get").expect("row");
    assert_eq!(
        (row.state.as_str(), row.whmcs_client_id),
        (state::NEW, None)
    );
    assert!(l.client_ids(&id).await.expect("clients").is_empty());
    assert!(l.mark_adding(&id, "a", "77", lease).await.expect("adding"));
    let row = l.get(&id).await.expect("get").expect("row");
    assert_eq!(row.state, state::ADDING);
    assert_eq!(row.last_event_id.as_deref(), Some("ev-1"));
    let clients = l.client_ids(&id).await.expect("clients");
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].0, "77");
    // A later run of the same owner closes the attempt left open as abandoned.
    let second = l
        .begin_attempt(&id, "a", Some("ev-2"), &Change::default(), false)
        .await
        .expect("begin")
        .expect("a's lease");
    let attempts = l.attempts(&id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].id, first);
    assert_eq!(attempts[0].outcome.as_deref(), Some(outcome::ABANDONED));
    assert_eq!((attempts[1].id, attempts[1].finished_at), (second, None));
    let failed = Change {
        state: Some(state::FAILED),
        outcome: Some(Some(outcome::FAILED)),
        error: Some(Some(("X", "why"))),
        release: true,
        ..Default::default()
    };
    let err = Some(("X", "why"));
    assert!(
        !l.end_attempt(&id, "b", &failed, second, outcome::FAILED, err)
            .await
            .expect("end"),
        "not b's lease"
    );
    let attempts = l.attempts(&id).await.expect("attempts");
    assert_eq!(attempts[1].finished_at, None, "nothing written for b");
    assert_eq!(l.get(&id).await.expect("get").expect("row").outcome, None);
    assert!(
        l.end_attempt(&id, "a", &failed, second, outcome::FAILED, err)
            .await
            .expect("end")
    );
    let attempts = l.attempts(&id).await.expect("attempts");
    assert_eq!(attempts[1].outcome.as_deref(), Some(outcome::FAILED));
    assert_eq!(attempts[1].error_message.as_deref(), Some("why"));
    let row = l.get(&id).await.expect("get").expect("row");
    assert_eq!(row.outcome.as_deref(), Some(outcome::FAILED));
    // The last change gave the lease back.
    assert!(l.claim(&id, "b", lease).await.expect("claim").is_some());
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn one_trip_transactions_apply_whole_or_not_at_all_sqlite() {
    one_trip_transactions_apply_whole_or_not_at_all(Db::Sqlite, None).await;
}

#[tokio::test]
async fn one_trip_transactions_apply_whole_or_not_at_all_sqlite_in_memory() {
    one_trip_transactions_apply_whole_or_not_at_all(Db::Sqlite, Some("sqlite::memory:")).await;
}

#[tokio::test]
async fn one_trip_transactions_apply_whole_or_not_at_all_postgres() {
    one_trip_transactions_apply_whole_or_not_at_all(Db::Postgres, None).await;
}

/// An Order the ledger has never seen is claimed with its first attempt opened, in one trip
/// (`Ledger::claim_new`): row, lease and attempt together. Once the row exists it writes
/// nothing, whoever asks, and the caller claims the usual way.
async fn a_new_order_is_claimed_with_its_first_attempt(db: Db, url: Option<&str>) {
    use provisioner::ledger::{Opening, state};
    let (l, dir) = test_ledger(db, url).await;
    let id = crate::helpers::sf_id("801000000000011AAA");
    let lease = Duration::from_secs(30);
    let first = Opening {
        event_id: "ev-1",
        correlation_id: "corr-1",
        account_id: Some("001000000000001AAA"),
        sf_status: Some("Draft"),
    };
    let (row, attempt) = l
        .claim_new(&id, "a", lease, &first)
        .await
        .expect("claim")
        .expect("a new row");
    assert_eq!((row.state.as_str(), row.attempts), (state::NEW, 1));
    assert_eq!(row.last_event_id.as_deref(), Some("ev-1"));
    assert_eq!(row.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(row.account_id.as_deref(), Some("001000000000001AAA"));
    assert_eq!(row.sf_status.as_deref(), Some("Draft"));
    assert_eq!(row.outcome, None);
    let attempts = l.attempts(&id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].id,
            attempts[0].event_id.as_deref(),
            attempts[0].finished_at
        ),
        (attempt, Some("ev-1"), None)
    );
    let (owner, until) = l.lease_of(&id).await.expect("lease").expect("row");
    assert_eq!(owner, "a");
    let now = l.clock_ms().await.expect("clock");
    assert!(until.expect("held") > now + 20_000, "a live lease");
    assert!(
        l.claim(&id, "b", lease).await.expect("claim").is_none(),
        "a holds it"
    );
    // The row exists: nothing is written, for another owner or the same one.
    let again = Opening {
        event_id: "ev-2",
        ..first
    };
    for owner in ["b", "a"] {
        assert!(
            l.claim_new(&id, owner, lease, &again)
                .await
                .expect("claim")
                .is_none()
        );
    }
    assert_eq!(l.attempts(&id).await.expect("attempts").len(), 1);
    let now = l.get(&id).await.expect("get").expect("row");
    assert_eq!(
        (now.attempts, now.last_event_id.as_deref()),
        (1, Some("ev-1"))
    );
    assert_eq!(l.lease_of(&id).await.expect("lease").expect("row").0, "a");
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_new_order_is_claimed_with_its_first_attempt_sqlite() {
    a_new_order_is_claimed_with_its_first_attempt(Db::Sqlite, None).await;
}

#[tokio::test]
async fn a_new_order_is_claimed_with_its_first_attempt_sqlite_in_memory() {
    a_new_order_is_claimed_with_its_first_attempt(Db::Sqlite, Some("sqlite::memory:")).await;
}

#[tokio::test]
async fn a_new_order_is_claimed_with_its_first_attempt_postgres() {
    a_new_order_is_claimed_with_its_first_attempt(Db::Postgres, None).await;
}

/// PostgreSQL: the ledger holds its connections for single statements outside sqlx's pool
/// (which pings each one it gets back). When the server drops every one of them (a restart, a
/// failover, an administrator), the next statement may fail, but the ledger then checks its
/// connections and takes fresh ones: a few failures at most, then every statement works, and
/// transactions (pooled connections) too.
#[tokio::test]
async fn held_postgres_connections_recover_when_the_server_drops_them() {
    let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let app_name = format!("ledger_{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "{}&application_name={app_name}",
        fresh_database(Db::Postgres, &dir).await
    );
    let l = provisioner::ledger::Ledger::open(&provisioner::config::DatabaseConfig {
        url: url.clone(),
        auto_migrate: true,
        max_connections: 5,
    })
    .await
    .expect("ledger");
    let id = crate::helpers::sf_id("801000000000011AAA");
    let lease = Duration::from_secs(30);
    assert!(l.claim(&id, "a", lease).await.expect("claim").is_some());
    // Concurrent reads connect every held slot (three of five connections).
    let reads = futures::future::join_all((0..6).map(|_| l.get(&id))).await;
    assert!(reads.iter().all(Result::is_ok), "{reads:?}");

    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("admin connection");
    let killed: i64 = sqlx::Row::get(
        &sqlx::query(&format!(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE application_name = '{app_name}' AND pid <> pg_backend_pid()"
        ))
        .fetch_one(&mut admin)
        .await
        .expect("terminate"),
        "n",
    );
    assert!(
        killed >= 2,
        "the ledger's connections were dropped ({killed})"
    );

    let mut failures = 0;
    let mut in_a_row = 0;
    for _ in 0..200 {
        match l.still_holds(&id, "a", lease).await {
            Ok(holds) => {
                assert!(holds, "the lease survives the connections");
                in_a_row += 1;
                if in_a_row == 20 {
                    break;
                }
            }
            Err(_) => {
                failures += 1;
                in_a_row = 0;
            }
        }
    }
    assert_eq!(in_a_row, 20, "statements work again ({failures} failures)");
    assert!(
        failures <= 3,
        "{failures} failed statements before recovery"
    );
    // A transaction of several statements (the cursor and inbox) runs on a pooled connection.
    let cursor = [1_u8, 2, 3];
    let mut committed = false;
    for _ in 0..4 {
        if l.record_events_with_poison("/event/T__e", &[], &[], &cursor, 1)
            .await
            .is_ok()
        {
            committed = true;
            break;
        }
    }
    assert!(committed, "a transaction commits after the drop");
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A replica whose own clock runs an hour behind provisions one Order and fails another (a
/// product WHMCS refuses). Every time the ledger kept for them — attempts' start and end, the
/// WHMCS client history, the inbox's arrival, the cursor's write — is the database's, and the
/// failure-rate window, measured back from the database's now, counts both attempts. (On the
/// replica's clock they would all lie an hour in the past: outside every window of the others.)
/// The replica reports how far its clock is off (`provisioner_clock_skew_milliseconds`).
async fn stored_times_come_from_the_database_clock(db: Db) {
    use provisioner_sim::{ItemSeed, OrderSeed};
    let app = spawn_app(Options {
        db,
        start: false,
        ..Default::default()
    })
    .await;
    let ledger = &app.state.ledger;
    let before = ledger.clock_ms().await.expect("database clock");
    let mut behind = daemon_process(&app, &[("TEST_CLOCK_OFFSET_SECS", "-3600".into())]);
    app.sim.sim.set_faults(Faults {
        whmcs_reject_products: vec!["99".into()],
        ..Faults::default()
    });
    let good = app.seed_approved(1).remove(0);
    let bad = crate::helpers::sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: Some("99".into()),
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    }));
    app.sim.sim.approve(&bad);
    app.wait_terminal(&[good.clone(), bad.clone()], Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&good).as_deref(), Some("Activated"));
    assert_eq!(app.activation(&bad).as_deref(), Some("Failed"));
    wait_until(
        Duration::from_secs(30),
        "every attempt to close",
        || async {
            let mut closed = true;
            for id in [&good, &bad] {
                let attempts = ledger.attempts(id).await.unwrap_or_default();
                closed &= !attempts.is_empty() && attempts.iter().all(|a| a.finished_at.is_some());
            }
            closed
        },
    )
    .await;
    // Everything kept, then the database's now: the subscriber may write the cursor again
    // meanwhile, never later than that now.
    let mut kept: Vec<(&str, i64)> = Vec::new();
    for id in [&good, &bad] {
        let attempts = ledger.attempts(id).await.expect("attempts");
        assert!(!attempts.is_empty(), "{id}: no attempt");
        for a in &attempts {
            kept.push(("attempt start", a.started_at));
            kept.push(("attempt end", a.finished_at.expect("finished")));
        }
        let inbox = ledger.inbox_for(id).await.expect("inbox");
        assert!(!inbox.is_empty(), "{id}: no inbox row");
        kept.extend(inbox.iter().map(|row| ("inbox arrival", row.received_at)));
    }
    let clients = ledger.client_ids(&good).await.expect("client history");
    assert!(!clients.is_empty(), "no client history");
    kept.extend(clients.iter().map(|(_, t)| ("client first seen", *t)));
    let cursor = ledger
        .cursor_row(&app.state.cfg.events.channel)
        .await
        .expect("cursor")
        .expect("a stored cursor");
    kept.push(("cursor write", cursor.updated_at));
    let after = ledger.clock_ms().await.expect("database clock");
    for (what, t) in kept {
        assert!(
            (before..=after).contains(&t),
            "{what} at {t}, outside [{before}, {after}] on the database's clock"
        );
    }
    assert_eq!(
        ledger
            .outcome_counts_within(Duration::from_secs(600))
            .await
            .expect("outcome counts"),
        (1, 2),
        "failed and finished attempts of the last 10 minutes"
    );
    // The replica reports its skew, about an hour (the database's clock minus its own).
    let http = reqwest::Client::new();
    let metrics = format!("{}/metrics", app.http);
    wait_until(Duration::from_secs(30), "the clock skew metric", || async {
        let Ok(r) = http.get(&metrics).send().await else {
            return false;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("provisioner_clock_skew_milliseconds "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_some_and(|ms| (3_590_000..=3_610_000).contains(&ms))
    })
    .await;
    let _ = behind.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_times_come_from_the_database_clock_sqlite() {
    stored_times_come_from_the_database_clock(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_times_come_from_the_database_clock_postgres() {
    stored_times_come_from_the_database_clock(Db::Postgres).await;
}
