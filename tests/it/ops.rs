//! Operator tools: the real binary (`orders`, `cursor`, `queue`) as a child process against a
//! ledger and Redis queue prepared by a daemon, with only the database, Redis and queue
//! settings in its environment (no Salesforce or WHMCS credentials).

use std::{process::Stdio, time::Duration};

use provisioner::{config::ReplayStart, ids::SalesforceId};
use provisioner_sim::{ItemSeed, OrderSeed};
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{Db, Options, TestApp, sf_id, spawn_app, wait_until};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `provisioner <args>` with the tools' settings only and stdin closed.
async fn tool(app: &TestApp, args: &[&str]) -> Out {
    let keep = [
        "DATABASE_URL",
        "REDIS_URL",
        "QUEUE_NAME",
        "SF_PROVISION_EVENT_CHANNEL",
    ];
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(args)
            .env_clear()
            .envs(
                app.env
                    .iter()
                    .filter(|(k, _)| keep.contains(&k.as_str()))
                    .cloned(),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tool finishes within 60 s")
    .expect("run provisioner");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn tool_json(app: &TestApp, args: &[&str]) -> Value {
    let out = tool(app, args).await;
    assert!(out.ok, "{args:?} failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_list_show_and_queue_stats_after_a_provisioning_run() {
    let mut app = spawn_app(Options::default()).await;
    let good = app.seed(2);
    let bad = sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: None,
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    }));
    let all: Vec<SalesforceId> = good.iter().cloned().chain([bad.clone()]).collect();
    for id in &all {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&all, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "ledger rows finished", || async {
        let rows = app.state.ledger.list(None, 10).await.expect("list");
        rows.len() == 3 && rows.iter().all(|r| r.outcome.is_some())
    })
    .await;
    wait_until(Duration::from_secs(30), "jobs done", || async {
        app.state.queue.stats().await.expect("stats").done == 3
    })
    .await;

    // list: JSON and a table, filtered by state.
    let v = tool_json(&app, &["orders", "list", "--json"]).await;
    let orders = v["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 3, "{v}");
    for id in &good {
        let o = orders
            .iter()
            .find(|o| o["sf_order_id"] == id.as_str())
            .expect("listed");
        assert_eq!(o["state"], "done");
        assert!(o["whmcs_order_id"].as_i64().is_some());
    }
    let out = tool(&app, &["orders", "list", "--state", "failed"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.starts_with("ORDER"), "{}", out.stdout);
    assert!(out.stdout.contains(bad.as_str()), "{}", out.stdout);
    assert!(
        out.stdout.contains("MAPPING_PRODUCT_MISSING"),
        "{}",
        out.stdout
    );
    assert!(
        good.iter().all(|id| !out.stdout.contains(id.as_str())),
        "{}",
        out.stdout
    );
    let out = tool(&app, &["orders", "list", "--state", "bogus"]).await;
    assert!(!out.ok);

    // show: ledger row, WHMCS ids, attempts, inbox events with their job.
    let whmcs_id = app.sim.sim.whmcs_orders_for(&good[0])[0].id;
    let out = tool(&app, &["orders", "show", good[0].short()]).await;
    assert!(out.ok, "{}", out.stderr);
    for needle in [
        good[0].as_str(),
        "Provisioned",
        &whmcs_id.to_string(),
        "Attempts",
        "Events (inbox)",
        "enqueued",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle} missing:\n{}",
            out.stdout
        );
    }
    let v = tool_json(&app, &["orders", "show", bad.as_str(), "--json"]).await;
    assert_eq!(v["order"]["state"], "failed");
    assert_eq!(v["order"]["error_code"], "MAPPING_PRODUCT_MISSING");
    let attempts = v["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{v}");
    assert_eq!(attempts[0]["outcome"], "Failed");
    let events = v["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{v}");
    let event_id = events[0]["event_id"].as_str().expect("event id");
    assert_eq!(attempts[0]["event_id"], event_id);
    assert_eq!(v["jobs"][event_id], "Done", "{v}");

    // Unknown and malformed ids.
    let unknown = SalesforceId::parse("801000000000999").expect("id");
    let out = tool(&app, &["orders", "show", unknown.as_str()]).await;
    assert!(
        !out.ok && out.stderr.contains("not known"),
        "{}",
        out.stderr
    );
    let out = tool(&app, &["orders", "show", "801'; DROP TABLE orders"]).await;
    assert!(
        !out.ok && out.stderr.contains("not a 15- or 18-character"),
        "{}",
        out.stderr
    );

    // queue stats.
    let v = tool_json(&app, &["queue", "stats", "--json"]).await;
    assert_eq!(v["orders_by_state"]["done"], 2, "{v}");
    assert_eq!(v["orders_by_state"]["failed"], 1, "{v}");
    assert_eq!(v["inbox"]["enqueued"], 3, "{v}");
    assert_eq!(v["last_hour"]["failed"], 1, "{v}");
    assert_eq!(v["last_hour"]["finished"], 3, "{v}");
    assert!(v["live_workers"].as_u64().expect("workers") >= 1, "{v}");
    let out = tool(&app, &["queue", "stats"]).await;
    assert!(out.ok && out.stdout.contains("PENDING"), "{}", out.stdout);
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_set_needs_confirmation_and_earliest_replays_skipped_events_sqlite() {
    cursor_set_and_replay(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_set_needs_confirmation_and_earliest_replays_skipped_events_postgres() {
    cursor_set_and_replay(Db::Postgres).await;
}

async fn cursor_set_and_replay(db: Db) {
    // SF_EVENTS_REPLAY=LATEST: a replay from EARLIEST can only come from the operator request.
    let mut app = spawn_app(Options {
        db,
        // No stuck-order reconciler: only the replay may bring the skipped Order back.
        extra_env: vec![
            ("SF_EVENTS_REPLAY", "LATEST".into()),
            ("RECONCILER_INTERVAL_SECS", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    let channel = app.state.cfg.events.channel.clone();
    wait_until(Duration::from_secs(30), "subscription", || async {
        app.sim.sim.stream_stats().streams_open >= 1
    })
    .await;
    let ids = app.seed(3);
    let (first, skipped, later) = (&ids[0], &ids[1], &ids[2]);
    app.sim.sim.approve(first);
    app.wait_terminal(std::slice::from_ref(first), Duration::from_secs(60))
        .await;
    // While the subscriber runs (it holds the lease) the cursor cannot be set, even with --yes.
    let v = tool_json(&app, &["cursor", "show", "--json"]).await;
    assert!(v["subscriber"].is_string(), "{v}");
    let out = tool(&app, &["cursor", "set", "--earliest", "--yes"]).await;
    assert!(
        !out.ok && out.stderr.contains("subscriber is running"),
        "{}",
        out.stderr
    );
    assert_eq!(
        provisioner::ledger::Ledger::replay_request(&app.state.ledger, &channel)
            .await
            .expect("request"),
        None
    );
    app.stop().await.expect("stop");

    let v = tool_json(&app, &["cursor", "show", "--json"]).await;
    let stored = v["cursor"]["replay_id"]
        .as_str()
        .expect("cursor")
        .to_owned();
    assert!(hex::decode(&stored).is_ok(), "{v}");
    assert!(
        v["next_start"]
            .as_str()
            .expect("next")
            .contains(&format!("after replay id {stored}")),
        "{v}"
    );

    // The approval of `skipped` happens while no daemon runs; the operator then moves the cursor
    // past it (as a lost or rejected cursor would).
    let tip = hex::encode(app.sim.sim.approve(skipped));

    // Without --yes and without a terminal: refused, nothing changes.
    let out = tool(&app, &["cursor", "set", "--replay-id", &tip]).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    let now = app
        .state
        .ledger
        .load_cursor(&channel)
        .await
        .expect("cursor");
    assert_eq!(now.map(hex::encode), Some(stored.clone()));
    // Malformed replay ids and a missing target are refused before anything else.
    let out = tool(&app, &["cursor", "set", "--replay-id", "zz", "--yes"]).await;
    assert!(!out.ok && out.stderr.contains("hex"), "{}", out.stderr);
    let out = tool(&app, &["cursor", "set", "--yes"]).await;
    assert!(!out.ok);

    let out = tool(&app, &["cursor", "set", "--replay-id", &tip, "--yes"]).await;
    assert!(out.ok, "{}", out.stderr);
    let now = app
        .state
        .ledger
        .load_cursor(&channel)
        .await
        .expect("cursor");
    assert_eq!(now.map(hex::encode), Some(tip.clone()));

    // The daemon resumes after the operator's cursor: a new approval is provisioned, the
    // skipped one is not.
    app.start();
    app.sim.sim.approve(later);
    app.wait_terminal(std::slice::from_ref(later), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(skipped).as_deref(), Some("Activating"));
    app.stop().await.expect("stop");

    // --earliest: a one-shot request that overrides SF_EVENTS_REPLAY=LATEST.
    let out = tool(&app, &["cursor", "set", "--earliest", "--yes"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        provisioner::ledger::Ledger::replay_request(&app.state.ledger, &channel)
            .await
            .expect("request"),
        Some(ReplayStart::Earliest)
    );
    let v = tool_json(&app, &["cursor", "show", "--json"]).await;
    assert!(
        v["next_start"].as_str().expect("next").contains("EARLIEST"),
        "{v}"
    );
    app.start();
    app.wait_terminal(std::slice::from_ref(skipped), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(skipped).as_deref(), Some("Activated"));
    // Events already in the inbox were skipped, not provisioned again.
    for id in &ids {
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
        assert_eq!(app.sim.sim.counts(id).add_order, 1, "{id}");
    }
    // The request is consumed: a real cursor replaces it.
    wait_until(Duration::from_secs(30), "a stored cursor", || async {
        app.state
            .ledger
            .load_cursor(&channel)
            .await
            .expect("cursor")
            .is_some()
    })
    .await;
    assert_eq!(
        provisioner::ledger::Ledger::replay_request(&app.state.ledger, &channel)
            .await
            .expect("request"),
        None
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_provisions_an_activating_order_whose_job_was_lost() {
    // No stuck-order reconciler: only the operator's requeue may run the Order.
    let mut app = spawn_app(Options {
        extra_env: vec![("RECONCILER_INTERVAL_SECS", "0".into())],
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    // The Order is Activating in Salesforce and a worker had claimed it, then the worker died
    // and its job vanished from Redis: nothing will ever run it again by itself.
    app.sim
        .sim
        .set_order_field(&id, "Activation_Status__c", "Activating".into());
    let row = app
        .state
        .ledger
        .claim(&id, "dead-worker", Duration::from_millis(1))
        .await
        .expect("claim");
    assert_eq!(row.expect("claimed").state, "new");

    let v = tool_json(&app, &["orders", "requeue", id.short(), "--json"]).await;
    let job = v["job_id"].as_str().expect("job id").to_owned();
    assert!(job.starts_with("op-"), "{v}");
    assert_eq!(v["ledger_state"], "new");
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);

    // The attempt is recorded under the operator's job id.
    wait_until(Duration::from_secs(30), "ledger done", || async {
        app.state
            .ledger
            .get(&id)
            .await
            .expect("get")
            .is_some_and(|r| r.state == "done")
    })
    .await;
    let v = tool_json(&app, &["orders", "show", id.as_str(), "--json"]).await;
    assert!(
        v["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .any(|a| a["event_id"] == job.as_str() && a["outcome"] == "Provisioned"),
        "{v}"
    );

    // Requeueing a provisioned Order again is harmless: the guard skips it.
    let out = tool(&app, &["orders", "requeue", id.as_str()]).await;
    assert!(
        out.ok && out.stdout.contains("already provisioned"),
        "{}",
        out.stdout
    );
    let job2 = out
        .stdout
        .split_whitespace()
        .nth(2)
        .expect("job id")
        .to_owned();
    assert!(job2.starts_with("op-"), "{}", out.stdout);
    let queue = app.state.queue.clone();
    let meta = format!("{}:{job2}", queue.config().job_meta_hash());
    wait_until(Duration::from_secs(30), "second job done", || async {
        let status: Option<String> = redis::cmd("HGET")
            .arg(&meta)
            .arg("status")
            .query_async(&mut queue.redis())
            .await
            .expect("redis");
        status.as_deref() == Some("Done")
    })
    .await;
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);
    app.stop().await.expect("stop");
}
