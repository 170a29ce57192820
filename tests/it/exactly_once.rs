//! Exactly one WHMCS order per Salesforce Order when the ledger loses its last commits (power
//! loss), when the Account is re-mapped to another WHMCS client between attempts, when a client
//! has a long order history, and when a failure happens after the WHMCS order exists.

use std::time::Duration;

use provisioner::{
    config::DatabaseConfig,
    ledger::Ledger,
    queue::{Job, JobSource, ProvisionOrderV1},
};
use provisioner_sim::{Faults, WhmcsFaultKind};
use serde_json::Value;

use crate::helpers::{Db, Options, daemon_process, spawn_app, wait_until};

fn env_of<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .expect("setting present")
}

/// Power cut after AddOrder reached WHMCS: the process dies, and the ledger comes back without
/// its last transactions (restored from a copy taken before the `adding` intent was
/// committed). The queue re-runs the orphaned job; with no trace of the attempt in the ledger it
/// must still look WHMCS up before adding, and adopt the order the dead run created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_before_the_adding_commit_makes_one_whmcs_order() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let database_url = env_of(&app.env, "DATABASE_URL").to_owned();
    let ledger_file = std::path::PathBuf::from(
        database_url
            .trim_start_matches("sqlite://")
            .split('?')
            .next()
            .expect("path"),
    );
    let snapshot = ledger_file.with_file_name("before-adding.db");
    // The ledger as the disk will show it after the power cut: migrated, nothing of this Order.
    sqlx::query(&format!("VACUUM INTO '{}'", snapshot.display()))
        .execute(app.state.ledger.pool())
        .await
        .expect("snapshot");
    app.state.ledger.close().await;

    // WHMCS creates the order and never answers: the process dies with the order created.
    app.sim.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        whmcs_error_kind: WhmcsFaultKind::CommitThenHang,
        ..Faults::default()
    });
    let id = app.seed(1).remove(0);
    let mut child = daemon_process(&app, &[]);
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "AddOrder to reach WHMCS",
        || async { app.sim.sim.whmcs_orders_for(&id).len() == 1 },
    )
    .await;
    child.kill().await.expect("SIGKILL");
    app.sim.sim.set_faults(Faults::default());

    // The disk lost the ledger's last transactions.
    for suffix in ["", "-wal", "-shm"] {
        let mut f = ledger_file.clone().into_os_string();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
    std::fs::copy(&snapshot, &ledger_file).expect("restore the ledger");

    let mut child = daemon_process(&app, &[]);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(150))
        .await;
    child.kill().await.expect("stop");
    let created = app.sim.sim.whmcs_orders_for(&id);
    assert_eq!(created.len(), 1, "one WHMCS order: {created:?}");
    assert_eq!(app.sim.sim.counts(&id).add_order, 1, "AddOrder sent once");
    let order = app.sim.sim.order(&id).expect("order");
    assert_eq!(order.activation_status.as_deref(), Some("Activated"));
    assert_eq!(order.whmcs_order_id, Some(created[0].id.to_string()));
    assert_eq!(created[0].status, "Active");
}

/// AddOrder's outcome is unknown (WHMCS created the order, then answered 500) and the lookup
/// fails too: the Order is marked Failed without a WHMCS id. An operator then re-maps the
/// Account to another WHMCS client and re-triggers. The re-run must find the order under the
/// client id of the first attempt instead of creating a second one under the new one.
async fn remapped_client_finds_the_order_under_the_old_client_id_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        extra_env: vec![("JOB_MAX_ATTEMPTS", "2".into())],
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    app.sim.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        whmcs_error_kind: WhmcsFaultKind::AfterCommit,
        ..Faults::default()
    });
    app.sim.sim.approve(&id);
    // WHMCS keeps failing after committing: the Order is not failed for that (an outage never
    // fails an Order); its job waits, with the order it created recorded nowhere but WHMCS.
    wait_until(
        Duration::from_secs(60),
        "the ambiguous AddOrder and its client id",
        || async {
            app.sim.sim.whmcs_orders_for(&id).len() == 1
                && !app
                    .state
                    .ledger
                    .client_ids(&id)
                    .await
                    .expect("client ids")
                    .is_empty()
        },
    )
    .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activating"));
    let first = app.sim.sim.whmcs_orders_for(&id);
    assert_eq!(first.len(), 1, "the ambiguous AddOrder created the order");
    assert_eq!(first[0].userid, 1);
    let sf_id = id.to_string();
    assert_eq!(
        app.state
            .ledger
            .client_ids(&id)
            .await
            .expect("client ids")
            .into_iter()
            .map(|(c, _)| c)
            .collect::<Vec<_>>(),
        vec!["1".to_owned()],
        "{sf_id}"
    );

    app.sim.sim.set_faults(Faults::default());
    app.sim.sim.set_account_client_id(&id, Some("2".into()));
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "the re-triggered Order to activate",
        || async { app.activation(&id).as_deref() == Some("Activated") },
    )
    .await;
    let created = app.sim.sim.whmcs_orders_for(&id);
    assert_eq!(created.len(), 1, "one WHMCS order: {created:?}");
    assert_eq!(created[0].userid, 1, "the order under the old client id");
    assert_eq!(created[0].status, "Active");
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);
    let order = app.sim.sim.order(&id).expect("order");
    assert_eq!(order.whmcs_order_id, Some(created[0].id.to_string()));
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remapped_client_finds_the_order_under_the_old_client_id_sqlite() {
    remapped_client_finds_the_order_under_the_old_client_id_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remapped_client_finds_the_order_under_the_old_client_id_postgres() {
    remapped_client_finds_the_order_under_the_old_client_id_on(Db::Postgres).await;
}

/// A client with 5,000 older orders: the lookup before AddOrder scans newest first and stops at
/// orders older than the Order's first attempt, so it costs at most two `GetOrders` calls
/// instead of fifty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_client_history_costs_at_most_two_get_orders_calls() {
    let mut app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    let month_ago = (chrono::Utc::now() - chrono::Duration::days(30))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    app.sim.sim.seed_whmcs_history(1, 5_000, &month_ago);

    // A dead run committed the intent to add under client 1 an hour ago (long enough for any
    // AddOrder of its to have ended); AddOrder never reached WHMCS.
    let ledger = app.state.ledger.clone();
    let dead = "dead-process:run";
    ledger
        .claim(&id, dead, Duration::from_millis(200))
        .await
        .expect("claim")
        .expect("free");
    assert!(
        ledger
            .mark_adding(&id, dead, "1", Duration::from_millis(200))
            .await
            .expect("adding")
    );
    sqlx::query("UPDATE orders SET adding_at = adding_at - 3600000")
        .execute(ledger.pool())
        .await
        .expect("age the intent");
    app.sim
        .sim
        .set_order_field(&id, "Activation_Status__c", Value::from("Activating"));

    let before = app.sim.sim.totals().get_orders;
    let event_id = "evt-long-history";
    app.state
        .queue
        .push(vec![Job::ProvisionOrderV1(ProvisionOrderV1 {
            event_id: event_id.into(),
            replay_id: None,
            order_id: id.to_string(),
            idem_key: None,
            correlation_id: event_id.into(),
            event_created_ms: chrono::Utc::now().timestamp_millis(),
            source: JobSource::Event,
        })])
        .await
        .expect("push");
    app.start();
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    let calls = app.sim.sim.totals().get_orders - before;
    assert!(
        (1..=2).contains(&calls),
        "the lookup ran and stopped early: {calls} GetOrders calls"
    );
    app.stop().await.expect("stop");
}

/// AcceptOrder fails for a business reason after the WHMCS order was created: the Failed
/// write-back carries `WHMCS_Order_ID__c`. With the ledger then lost, an operator re-trigger
/// reuses that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_write_back_keeps_the_whmcs_order_id() {
    let mut app = spawn_app(Options::default()).await;
    let id = app.seed(1).remove(0);
    app.sim.sim.set_faults(Faults {
        whmcs_accept_error: Some("Module create failed: server unreachable".into()),
        ..Faults::default()
    });
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    let created = app.sim.sim.whmcs_orders_for(&id);
    assert_eq!(created.len(), 1);
    let order = app.sim.sim.order(&id).expect("order");
    assert_eq!(order.activation_status.as_deref(), Some("Failed"));
    assert_eq!(
        order.whmcs_order_id,
        Some(created[0].id.to_string()),
        "the Failed write-back names the WHMCS order"
    );

    // The ledger forgets the Order; the operator fixes WHMCS and re-triggers.
    let ledger = Ledger::connect(&DatabaseConfig {
        url: env_of(&app.env, "DATABASE_URL").to_owned(),
        auto_migrate: false,
        max_connections: 1,
    })
    .await
    .expect("ledger");
    for table in ["orders", "attempts", "order_clients"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE sf_order_id = $1"))
            .bind(id.as_str())
            .execute(ledger.pool())
            .await
            .expect("forget");
    }
    app.sim.sim.set_faults(Faults::default());
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "the re-triggered Order to activate",
        || async { app.activation(&id).as_deref() == Some("Activated") },
    )
    .await;
    let after = app.sim.sim.whmcs_orders_for(&id);
    assert_eq!(after.len(), 1, "the order was reused: {after:?}");
    assert_eq!(after[0].status, "Active");
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);
    assert_eq!(
        app.sim.sim.order(&id).and_then(|o| o.whmcs_order_id),
        Some(created[0].id.to_string())
    );
    app.stop().await.expect("stop");
}

/// WHMCS commits an AddOrder long after the daemon stopped waiting (a slow order hook), and the
/// process is SIGKILLed while the request is in flight. The re-run (after the 30 s lease)
/// finds the `adding` intent and no order in WHMCS yet: it must wait until WHMCS_TIMEOUT_SECS +
/// WHMCS_EXECUTION_ALLOWANCE_SECS have passed since the intent, look again, and adopt the order
/// the first AddOrder created — never send a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_after_sigkill_makes_one_whmcs_order() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    // The order commits 45 s after the client's 2 s timeout, beyond the Order's 30 s lease.
    app.sim.sim.set_faults(Faults {
        whmcs_slow_commit_ms: 47_000,
        ..Faults::default()
    });
    let env = [
        ("WHMCS_TIMEOUT_SECS", "2".to_owned()),
        ("WHMCS_EXECUTION_ALLOWANCE_SECS", "60".to_owned()),
    ];
    let id = app.seed(1).remove(0);
    let mut child = daemon_process(&app, &env);
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "AddOrder to reach WHMCS",
        || async { app.sim.sim.counts(&id).add_order == 1 },
    )
    .await;
    child.kill().await.expect("SIGKILL");
    let mut child = daemon_process(&app, &env);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(180))
        .await;
    child.kill().await.expect("stop");
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(
        app.sim.sim.whmcs_orders_for(&id).len(),
        1,
        "one WHMCS order"
    );
    assert_eq!(
        app.sim.sim.counts(&id).add_order,
        1,
        "no second AddOrder while the first could still commit"
    );
}

/// The same within one run: AddOrder times out, the lookup finds nothing (the commit is still
/// to come), and the job waits out the window instead of sending AddOrder again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_add_order_is_not_resent_while_it_may_still_commit() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_slow_commit_ms: 6_000,
        ..Faults::default()
    });
    let env = [
        ("WHMCS_TIMEOUT_SECS", "1".to_owned()),
        ("WHMCS_EXECUTION_ALLOWANCE_SECS", "8".to_owned()),
    ];
    let id = app.seed(1).remove(0);
    let mut child = daemon_process(&app, &env);
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(90))
        .await;
    child.kill().await.expect("stop");
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);
}

/// AcceptOrder is performed but its answer is lost (500 after the commit): the job looks the
/// order up (`GetOrders id=`) and sees it Active instead of sending AcceptOrder again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_accept_order_is_looked_up_before_it_is_resent() {
    let app = spawn_app(Options::default()).await;
    app.sim.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        whmcs_error_kind: WhmcsFaultKind::AfterCommit,
        whmcs_error_actions: vec!["AcceptOrder".into()],
        ..Faults::default()
    });
    let id = app.seed_approved(1).remove(0);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    let counts = app.sim.sim.counts(&id);
    assert_eq!(counts.accept_order, 1, "AcceptOrder sent once");
    assert!(
        app.sim.sim.totals().get_orders >= 1,
        "the order was looked up"
    );
}
