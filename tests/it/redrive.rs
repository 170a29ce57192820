//! Operator controls: the per-step audit trail (`orders show` timeline, retention pruning) and
//! the bulk redrive (`orders redrive`), with the real binary against the simulator, Redis and a
//! SQLite ledger prepared by an in-process daemon.

use std::{process::Stdio, time::Duration};

use provisioner::{
    config::Config,
    ids::SalesforceId,
    ledger::{Ledger, NewStep},
};
use provisioner_sim::Faults;
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{Db, Options, TestApp, spawn_app, wait_until};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `provisioner <args>` with the tools' settings plus the Salesforce ones (`SF_*`), no
/// WHMCS credentials, stdin closed.
async fn tool(app: &TestApp, args: &[&str]) -> Out {
    let keep =
        |k: &str| ["DATABASE_URL", "REDIS_URL", "QUEUE_NAME"].contains(&k) || k.starts_with("SF_");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(args)
            .env_clear()
            .envs(app.env.iter().filter(|(k, _)| keep(k)).cloned())
            .env("USER", "ops-tester")
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
    assert!(out.ok, "{args:?} failed: {}\n{}", out.stderr, out.stdout);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
}

async fn wait_activation(app: &TestApp, ids: &[SalesforceId], want: &str) {
    wait_until(
        Duration::from_secs(90),
        &format!("orders {want}"),
        || async {
            ids.iter()
                .all(|id| app.activation(id).as_deref() == Some(want))
        },
    )
    .await;
}

/// The step names of an Order's timeline, once its last step is recorded.
async fn steps_until(app: &TestApp, id: &SalesforceId, last: &str) -> Vec<Value> {
    wait_until(
        Duration::from_secs(30),
        "the last step recorded",
        || async {
            app.state
                .ledger
                .steps(id)
                .await
                .expect("steps")
                .last()
                .is_some_and(|s| s.step == last)
        },
    )
    .await;
    let v = tool_json(app, &["orders", "show", id.as_str(), "--json"]).await;
    v["steps"].as_array().expect("steps").clone()
}

fn names(steps: &[Value]) -> Vec<&str> {
    steps
        .iter()
        .map(|s| s["step"].as_str().expect("step"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_reactivates_thirty_failed_orders_exactly_once_each() {
    let mut app = spawn_app(Options::default()).await;
    // WHMCS refuses the product every seeded Order uses: each fails with one business code.
    app.sim.sim.set_faults(Faults {
        whmcs_reject_products: vec!["1".into()],
        ..Faults::default()
    });
    let ids = app.seed_approved(30);
    wait_activation(&app, &ids, "Failed").await;
    wait_until(Duration::from_secs(30), "ledger rows failed", || async {
        let rows = app
            .state
            .ledger
            .find_orders("failed", Some("WHMCS_NO_ITEMS"), None, 100)
            .await
            .expect("find");
        rows.len() == 30
    })
    .await;
    assert!(
        ids.iter()
            .all(|id| app.sim.sim.whmcs_orders_for(id).is_empty())
    );

    // A dry run lists them and changes nothing.
    let published = app.sim.sim.totals().events_published;
    let v = tool_json(
        &app,
        &[
            "orders",
            "redrive",
            "--state",
            "failed",
            "--code",
            "WHMCS_NO_ITEMS",
            "--since",
            "2h",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["matched"], 30, "{v}");
    assert_eq!(v["orders"].as_array().expect("orders").len(), 30);
    let out = tool(
        &app,
        &["orders", "redrive", "--state", "failed", "--dry-run"],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("dry run: nothing changed"),
        "{}",
        out.stdout
    );
    // Another code matches nothing.
    let v = tool_json(
        &app,
        &[
            "orders",
            "redrive",
            "--state",
            "failed",
            "--code",
            "OTHER",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(v["matched"], 0, "{v}");
    // Without --yes and without a terminal it refuses.
    let out = tool(
        &app,
        &[
            "orders",
            "redrive",
            "--state",
            "failed",
            "--code",
            "WHMCS_NO_ITEMS",
        ],
    )
    .await;
    assert!(!out.ok && out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(app.sim.sim.totals().events_published, published);
    assert!(
        ids.iter()
            .all(|id| app.activation(id).as_deref() == Some("Failed"))
    );
    assert!(
        app.state
            .ledger
            .operator_actions(10)
            .await
            .expect("actions")
            .is_empty()
    );

    // The cause is fixed; the redrive sets all 30 back to Activating in one collection call.
    app.sim.sim.set_faults(Faults::default());
    let patches_before = app.sim.sim.totals().patch;
    let v = tool_json(
        &app,
        &[
            "orders",
            "redrive",
            "--state",
            "failed",
            "--code",
            "WHMCS_NO_ITEMS",
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(v["dry_run"], false, "{v}");
    assert_eq!(
        (v["matched"].as_u64(), v["redriven"].as_u64()),
        (Some(30), Some(30)),
        "{v}"
    );
    assert_eq!(v["failed"], 0, "{v}");
    assert!(
        v["operator"]
            .as_str()
            .is_some_and(|o| o.starts_with("ops-tester")),
        "{v}"
    );
    assert_eq!(v["results"].as_array().expect("results").len(), 30);
    assert_eq!(
        app.sim.sim.totals().patch - patches_before,
        1,
        "one sObject Collections call for 30 Orders"
    );
    wait_activation(&app, &ids, "Activated").await;
    for id in &ids {
        assert_eq!(
            app.sim.sim.whmcs_orders_for(id).len(),
            1,
            "exactly one WHMCS order for {id}"
        );
    }
    let actions = app
        .state
        .ledger
        .operator_actions(10)
        .await
        .expect("actions");
    assert_eq!(actions.len(), 1, "{actions:?}");
    let a = &actions[0];
    assert_eq!((a.action.as_str(), a.count), ("redrive", 30));
    assert!(a.operator.starts_with("ops-tester"), "{}", a.operator);
    let filter: Value = serde_json::from_str(&a.filter).expect("filter json");
    assert_eq!(filter["code"], "WHMCS_NO_ITEMS");
    assert_eq!(filter["state"], "failed");

    // A redriven Order's timeline shows the failed run, then the run that reconciled first.
    let steps = steps_until(&app, &ids[0], "write_back").await;
    let n = names(&steps);
    assert_eq!(n.iter().filter(|s| **s == "write_back").count(), 2, "{n:?}");
    let second = n
        .iter()
        .rposition(|s| *s == "read_order")
        .expect("second read");
    assert_eq!(
        &n[second..],
        [
            "read_order",
            "get_orders",
            "add_order",
            "accept_order",
            "write_back"
        ],
        "{n:?}"
    );
    // Nothing is left to redrive.
    let v = tool_json(
        &app,
        &["orders", "redrive", "--state", "failed", "--yes", "--json"],
    )
    .await;
    assert_eq!(v["matched"], 0, "{v}");
    assert_eq!(
        app.state
            .ledger
            .operator_actions(10)
            .await
            .expect("actions")
            .len(),
        1
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_lists_every_external_step_in_order() {
    let mut app = spawn_app(Options::default()).await;
    let id = app.seed_approved(1).remove(0);
    wait_activation(&app, std::slice::from_ref(&id), "Activated").await;
    let steps = steps_until(&app, &id, "write_back").await;
    assert_eq!(
        names(&steps),
        ["read_order", "add_order", "accept_order", "write_back"],
        "{steps:?}"
    );
    let whmcs = app.sim.sim.whmcs_orders_for(&id)[0].id;
    let job = app
        .state
        .ledger
        .get(&id)
        .await
        .expect("get")
        .expect("row")
        .last_event_id;
    let attempt = app.state.ledger.attempts(&id).await.expect("attempts")[0].id;
    let mut last_start = 0;
    for s in &steps {
        assert_eq!(s["outcome"], "ok", "{s}");
        assert!(s["duration_ms"].as_i64().is_some_and(|d| d >= 0), "{s}");
        let start = s["started_at"].as_i64().expect("start");
        assert!(start >= last_start, "steps in order: {steps:?}");
        last_start = start;
        assert_eq!(s["job_id"].as_str(), job.as_deref(), "{s}");
    }
    assert!(
        steps[0]["attempt_id"].is_null(),
        "the read precedes the attempt"
    );
    for s in &steps[1..] {
        assert_eq!(s["attempt_id"].as_i64(), Some(attempt), "{s}");
        assert_eq!(s["whmcs_order_id"].as_u64(), Some(whmcs), "{s}");
    }
    assert_eq!(steps[1]["whmcs_client_id"], "1");
    let out = tool(&app, &["orders", "show", id.as_str()]).await;
    assert!(out.ok, "{}", out.stderr);
    for needle in [
        "Timeline",
        "read_order",
        "add_order",
        "accept_order",
        "write_back",
        " ms",
    ] {
        assert!(out.stdout.contains(needle), "{needle}:\n{}", out.stdout);
    }

    // An Order whose first attempt failed and that is re-triggered reconciles (GetOrders)
    // before AddOrder; the failed AddOrder is recorded with its class and code.
    app.sim.sim.set_faults(Faults {
        whmcs_reject_products: vec!["1".into()],
        ..Faults::default()
    });
    let other = app.seed_approved(1).remove(0);
    wait_activation(&app, std::slice::from_ref(&other), "Failed").await;
    app.sim.sim.set_faults(Faults::default());
    steps_until(&app, &other, "write_back").await;
    app.sim.sim.approve(&other);
    wait_activation(&app, std::slice::from_ref(&other), "Activated").await;
    wait_until(
        Duration::from_secs(30),
        "second write-back recorded",
        || async {
            app.state
                .ledger
                .steps(&other)
                .await
                .expect("steps")
                .iter()
                .filter(|s| s.step == "write_back")
                .count()
                == 2
        },
    )
    .await;
    let v = tool_json(&app, &["orders", "show", other.as_str(), "--json"]).await;
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(
        names(steps),
        [
            "read_order",
            "add_order",
            "write_back",
            "read_order",
            "get_orders",
            "add_order",
            "accept_order",
            "write_back"
        ],
        "{steps:?}"
    );
    assert_eq!(steps[1]["outcome"], "permanent");
    assert_eq!(steps[1]["error_code"], "WHMCS_NO_ITEMS");
    assert!(
        steps[1]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("No items")),
        "{}",
        steps[1]
    );
    assert_eq!(steps[4]["outcome"], "ok");
    assert_eq!(steps[4]["whmcs_client_id"], "1");
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_older_than_the_retention_are_pruned_in_the_background_sqlite() {
    steps_older_than_the_retention_are_pruned_in_the_background(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_older_than_the_retention_are_pruned_in_the_background_postgres() {
    steps_older_than_the_retention_are_pruned_in_the_background(Db::Postgres).await;
}

/// Also exercises the ledger's redrive selection and operator actions on both databases.
async fn steps_older_than_the_retention_are_pruned_in_the_background(db: Db) {
    let mut app = spawn_app(Options {
        db,
        start: false,
        extra_env: vec![("AUDIT_RETENTION_DAYS", "30".into())],
        ..Default::default()
    })
    .await;
    let cfg = Config::load_from(None, app.env.clone()).expect("config");
    assert_eq!(cfg.audit_retention_days, 30);
    let ledger: Ledger = app.state.ledger.clone();
    let id = SalesforceId::synthesize("801", 42);
    for (step, age_days) in [("read_order", 31), ("add_order", 29), ("write_back", 0)] {
        ledger
            .record_step(&NewStep {
                order: id.as_str(),
                job_id: Some("old-job"),
                attempt_id: None,
                step,
                started: std::time::Instant::now(),
                duration_ms: 5,
                outcome: "ok",
                error_code: None,
                error_message: None,
                whmcs_client_id: None,
                whmcs_order_id: None,
            })
            .await
            .expect("record");
        // Age the row with the database's own arithmetic.
        sqlx::query("UPDATE order_steps SET started_at = started_at - $1 WHERE step = $2")
            .bind(age_days * 86_400_000_i64)
            .bind(step)
            .execute(ledger.pool())
            .await
            .expect("age");
    }
    assert_eq!(ledger.steps(&id).await.expect("steps").len(), 3);
    app.start();
    wait_until(Duration::from_secs(30), "the old step pruned", || async {
        ledger.steps(&id).await.expect("steps").len() == 2
    })
    .await;
    let left: Vec<String> = ledger
        .steps(&id)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(left, ["add_order", "write_back"]);

    // The redrive's selection and its audit row, on this database.
    assert!(
        ledger
            .find_orders("failed", Some("X"), Some(3_600_000), 10)
            .await
            .expect("find")
            .is_empty()
    );
    let action = ledger
        .record_operator_action("redrive", "ops@host", "{}", 0, None)
        .await
        .expect("action");
    let actions = ledger.operator_actions(5).await.expect("actions");
    assert_eq!((actions.len(), actions[0].id), (1, action));
    app.stop().await.expect("stop");
}

/// The REST client's collection update against the simulator: 200 records per call, one result
/// per Order in order, a record Salesforce refuses does not stop the others, and the Flow
/// publishes one event per Order newly set to `Activating`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_updates_go_200_per_call_with_a_result_per_order() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let mut ids = app.seed(250);
    let unknown = SalesforceId::synthesize("801", 999_999);
    ids.insert(7, unknown.clone());
    let before = app.sim.sim.totals();
    let results = app
        .state
        .rest
        .set_activation_status(&ids, "Activating")
        .await;
    let after = app.sim.sim.totals();
    assert_eq!(after.patch - before.patch, 2, "251 records: two calls");
    assert_eq!(results.len(), 251);
    for (r, id) in results.iter().zip(&ids) {
        assert_eq!(&r.id, id);
        assert_eq!(r.success, *id != unknown, "{r:?}");
    }
    assert_eq!(results[7].code.as_deref(), Some("ENTITY_IS_DELETED"));
    assert_eq!(after.events_published - before.events_published, 250);
    assert!(
        ids.iter()
            .filter(|id| **id != unknown)
            .all(|id| app.activation(id).as_deref() == Some("Activating"))
    );
    // Already Activating: the Flow does not fire again.
    let again = app
        .state
        .rest
        .set_activation_status(&ids[..3], "Activating")
        .await;
    assert!(again.iter().all(|r| r.success));
    assert_eq!(
        app.sim.sim.totals().events_published,
        after.events_published
    );
}
