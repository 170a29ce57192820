//! Operator controls: `pause` / `resume` of intake and provisioning (the real binary against the
//! daemon's ledger, the daemon in-process against the simulator and Redis), and the dead letters
//! of poison events (`events poison`, `events replay`).

use std::{process::Stdio, time::Duration};

use provisioner::metrics::ReasonLabel;
use provisioner_sim::EventPayload;
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{Db, Options, TestApp, spawn_app, wait_until};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `provisioner <args>` with stdin closed: with the operator tools' settings only, or with
/// the daemon's whole environment (`events replay` reaches Salesforce).
async fn run(app: &TestApp, args: &[&str], whole_env: bool) -> Out {
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
                    .filter(|(k, _)| whole_env || keep.contains(&k.as_str()))
                    .cloned(),
            )
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command finishes within 60 s")
    .expect("run provisioner");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn parse(args: &[&str], out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}\n{}", out.stdout, out.stderr))
}

/// `provisioner <args>` with the tools' settings; must succeed; its JSON output.
async fn tool_json(app: &TestApp, args: &[&str]) -> Value {
    let out = run(app, args, false).await;
    assert!(out.ok, "{args:?} failed: {}", out.stderr);
    parse(args, &out)
}

async fn health(app: &TestApp) -> Option<Value> {
    reqwest::Client::new()
        .get(format!("{}/health/sf-events", app.http))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(format!("{}/metrics", app.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

fn deferred_for_pause(app: &TestApp) -> u64 {
    app.state
        .metrics
        .jobs_deferred
        .get_or_create(&ReasonLabel {
            reason: "paused".into(),
        })
        .get()
}

/// Intake paused while 50 Orders are approved: nothing is fetched (no event delivered, no job,
/// no inbox row, the cursor unchanged) — the events stay in Salesforce; on resume all 50 are
/// provisioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_intake_fetches_nothing_and_resume_provisions_every_order() {
    let mut app = spawn_app(Options::default()).await;
    wait_until(Duration::from_secs(20), "the subscription", || async {
        health(&app)
            .await
            .is_some_and(|h| h["state"] == "connected")
    })
    .await;

    let args = [
        "pause",
        "--intake",
        "--reason",
        "CRM maintenance",
        "--by",
        "alice",
        "--json",
    ];
    let paused = tool_json(&app, &args).await;
    assert_eq!(paused["changed"], serde_json::json!(["intake"]), "{paused}");
    assert_eq!(paused["paused"]["intake"]["by"], "alice", "{paused}");
    assert_eq!(
        paused["paused"]["intake"]["reason"], "CRM maintenance",
        "{paused}"
    );
    assert!(paused["paused"]["provisioning"].is_null(), "{paused}");

    // The subscriber reports the pause once its stream is gone.
    wait_until(
        Duration::from_secs(10),
        "health to report paused",
        || async {
            health(&app).await.is_some_and(|h| {
                h["state"] == "paused"
                    && h["paused"]["intake"]["by"] == "alice"
                    && h["paused"]["intake"]["since"].is_string()
                    && h["paused"]["provisioning"].is_null()
            })
        },
    )
    .await;
    let m = metrics(&app).await;
    assert!(m.contains("provisioner_paused{part=\"intake\"} 1"), "{m}");
    assert!(
        m.contains("provisioner_paused{part=\"provisioning\"} 0"),
        "{m}"
    );

    let channel = app.state.cfg.events.channel.clone();
    let cursor = app
        .state
        .ledger
        .load_cursor(&channel)
        .await
        .expect("cursor");
    let delivered = app.sim.sim.stream_stats().events_delivered;
    let published = app.sim.sim.totals().events_published;
    let ids = app.seed_approved(50);
    assert_eq!(app.sim.sim.totals().events_published, published + 50);

    // Nothing moves over a bounded window (the one bounded wait: absence of progress).
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            app.sim.sim.stream_stats().events_delivered,
            delivered,
            "no event fetched while intake is paused"
        );
        let q = app.state.queue.stats().await.expect("queue stats");
        assert_eq!(
            q.pending + q.delayed + q.running + q.done,
            0,
            "no job pushed: {q:?}"
        );
        assert!(
            app.state
                .ledger
                .inbox_counts()
                .await
                .expect("inbox")
                .is_empty(),
            "no inbox row"
        );
        assert_eq!(
            app.state
                .ledger
                .load_cursor(&channel)
                .await
                .expect("cursor"),
            cursor,
            "the cursor does not move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activating"));
    }
    let stats = tool_json(&app, &["queue", "stats", "--json"]).await;
    assert_eq!(stats["paused"]["intake"]["by"], "alice", "{stats}");
    assert!(stats["paused"]["provisioning"].is_null(), "{stats}");

    let resumed = tool_json(&app, &["resume", "--intake", "--json"]).await;
    assert_eq!(
        resumed["changed"],
        serde_json::json!(["intake"]),
        "{resumed}"
    );
    assert!(resumed["paused"]["intake"].is_null(), "{resumed}");
    app.wait_terminal(&ids, Duration::from_secs(90)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
    }
    let h = health(&app).await.expect("health");
    assert!(h["paused"]["intake"].is_null(), "{h}");
    // Resuming what is not paused changes nothing.
    let again = tool_json(&app, &["resume", "--json"]).await;
    assert_eq!(again["changed"], serde_json::json!([]), "{again}");
    app.stop().await.expect("clean stop");
}

/// Provisioning paused (on PostgreSQL): events are taken in and their jobs wait in the queue
/// without any WHMCS or Salesforce call; on resume every Order is provisioned once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_provisioning_makes_jobs_wait_without_calls_then_resume_provisions() {
    let mut app = spawn_app(Options {
        db: Db::Postgres,
        ..Default::default()
    })
    .await;
    let paused = tool_json(&app, &["pause", "--provisioning", "--by", "bob", "--json"]).await;
    assert_eq!(paused["changed"], serde_json::json!(["provisioning"]));
    assert!(paused["paused"]["intake"].is_null(), "{paused}");
    wait_until(
        Duration::from_secs(10),
        "health to report paused",
        || async {
            health(&app).await.is_some_and(|h| {
                h["paused"]["provisioning"]["by"] == "bob"
                    && h["paused"]["provisioning"]["reason"].is_null()
            })
        },
    )
    .await;

    // The daemon reads the WHMCS version once at start (not a job): counted from after it.
    wait_until(Duration::from_secs(10), "the WHMCS version", || async {
        app.state.whmcs.known_version().is_some()
    })
    .await;
    let before = app.sim.sim.totals();
    let ids = app.seed_approved(10);
    // Every event is taken in (intake runs) and the held jobs have been put back at least
    // twice over (each job goes round every 2–3 s while paused).
    wait_until(
        Duration::from_secs(30),
        "jobs held by the pause",
        || async {
            app.state
                .ledger
                .inbox_counts()
                .await
                .is_ok_and(|c| c.get("enqueued").copied() == Some(10))
                && deferred_for_pause(&app) >= 20
        },
    )
    .await;
    let totals = app.sim.sim.totals();
    assert_eq!(
        totals.whmcs_requests, before.whmcs_requests,
        "no WHMCS call while paused"
    );
    assert_eq!(totals.soql, before.soql, "no job started while paused");
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activating"));
    }
    let q = app.state.queue.stats().await.expect("queue stats");
    assert_eq!(q.failed, 0, "{q:?}");
    let m = metrics(&app).await;
    assert!(
        m.contains("provisioner_paused{part=\"provisioning\"} 1"),
        "{m}"
    );

    let resumed = tool_json(&app, &["resume", "--json"]).await;
    assert_eq!(resumed["changed"], serde_json::json!(["provisioning"]));
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
    }
    assert_eq!(app.sim.sim.totals().whmcs_orders, 10, "each Order once");
    app.stop().await.expect("clean stop");
}

/// A poison event (published under a schema id the Pub/Sub API does not know) is kept with its
/// evidence and listed; replaying it fails while the schema is still unknown, then, once the
/// schema is served, enqueues its job and the Order is provisioned — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_kept_listed_and_replayed_once_it_decodes() {
    let mut app = spawn_app(Options::default()).await;
    let id = app.seed(1).remove(0);
    app.sim
        .sim
        .set_order_field(&id, "Activation_Status__c", Value::from("Activating"));
    let payload = app.sim.sim.encode_event(&EventPayload {
        created_date_ms: chrono::Utc::now().timestamp_millis(),
        created_by_id: "005000000000001AAA".into(),
        order_id: Some(id.to_string()),
        idem_key: Some("poison-k1".into()),
        correlation_id: Some("poison-c1".into()),
        requested_by: None,
        version: Some(1.0),
    });
    let schema = "NewSchemaNotYetServed1";
    let rid = hex::encode(app.sim.sim.publish_raw(schema, payload.clone()));

    wait_until(Duration::from_secs(30), "the dead letter", || async {
        app.state
            .ledger
            .poison_events(10)
            .await
            .is_ok_and(|rows| rows.iter().any(|r| r.replay_id == rid))
    })
    .await;
    let listed = tool_json(&app, &["events", "poison", "--json"]).await;
    let rows = listed["poison_events"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{listed}");
    let row = &rows[0];
    assert_eq!(row["replay_id"], rid.as_str());
    assert_eq!(row["reason"], "unknown_schema");
    assert_eq!(row["schema_id"], schema);
    assert!(row["event_id"].is_string(), "{row}");
    assert_eq!(row["payload_bytes"], payload.len());
    assert_eq!(row["truncated"], false);
    assert!(row["replayed_at"].is_null(), "{row}");
    let table = run(&app, &["events", "poison"], false).await;
    assert!(table.ok && table.stdout.contains(&rid), "{}", table.stdout);

    // Still unknown: the replay says why and exits non-zero; nothing is enqueued.
    let args = ["events", "replay", rid.as_str(), "--json"];
    let refused = run(&app, &args, true).await;
    assert!(!refused.ok, "{}", refused.stdout);
    let refused = parse(&args, &refused);
    assert_eq!(refused["replayed"], false, "{refused}");
    assert_eq!(refused["reason"], "unknown_schema", "{refused}");
    assert_eq!(app.activation(&id).as_deref(), Some("Activating"));
    assert_eq!(app.state.ledger.get(&id).await.expect("ledger"), None);

    // The fix: the Pub/Sub API now serves the schema.
    app.sim.sim.add_schema_alias(schema);
    let out = run(&app, &args, true).await;
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    let replayed = parse(&args, &out);
    assert_eq!(replayed["replayed"], true, "{replayed}");
    assert_eq!(replayed["already"], false, "{replayed}");
    assert_eq!(replayed["order_id"], id.to_string(), "{replayed}");
    assert_eq!(replayed["job_id"], row["event_id"], "{replayed}");
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));

    // A second replay changes nothing.
    let again = parse(&args, &run(&app, &args, true).await);
    assert_eq!(again["already"], true, "{again}");
    let listed = tool_json(&app, &["events", "poison", "--json"]).await;
    let row = &listed["poison_events"][0];
    assert!(row["replayed_at"].is_i64(), "{row}");
    assert_eq!(row["sf_order_id"], id.to_string());
    let stats = tool_json(&app, &["queue", "stats", "--json"]).await;
    assert_eq!(
        stats["dead_letters"],
        serde_json::json!({"kept": 1, "not_replayed": 0}),
        "{stats}"
    );
    assert_eq!(stats["inbox"]["enqueued"], 1, "{stats}");
    assert_eq!(app.sim.sim.totals().whmcs_orders, 1, "provisioned once");
    app.stop().await.expect("clean stop");
}
