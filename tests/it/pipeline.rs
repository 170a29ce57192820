//! The provisioning pipeline end to end: approval → event → queue → worker → WHMCS → write-back.

use std::time::Duration;

use provisioner::{
    ids::SalesforceId,
    queue::{Job, JobSource, ProvisionOrderV1},
};
use provisioner_sim::{Faults, ItemSeed, OrderSeed, WhmcsFaultKind};

use crate::helpers::{Db, Options, TestApp, sf_id, spawn_app, wait_until};

async fn approve_all_and_check(db: Db, n: usize) {
    let mut app = spawn_app(Options {
        db,
        ..Default::default()
    })
    .await;
    let ids = app.seed_approved(n);
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        let c = app.sim.sim.counts(id);
        assert_eq!(
            (c.soql, c.patch),
            (1, 1),
            "exactly 2 Salesforce calls for {id}"
        );
        assert_eq!((c.add_order, c.accept_order), (1, 1), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
        let o = app.sim.sim.order(id).expect("order");
        assert!(o.whmcs_order_id.is_some() && o.error_code.is_none());
        assert_eq!(o.status, "Activated");
    }
    let t = app.sim.sim.totals();
    assert_eq!((t.add_order, t.accept_order), (n as u64, n as u64));
    assert_eq!((t.soql, t.patch), (n as u64, n as u64));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_orders_sqlite() {
    approve_all_and_check(Db::Sqlite, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_orders_postgres() {
    approve_all_and_check(Db::Postgres, 500).await;
}

fn job_for(id: &SalesforceId, event_id: &str) -> Job {
    Job::ProvisionOrderV1(ProvisionOrderV1 {
        event_id: event_id.to_owned(),
        replay_id: None,
        order_id: id.to_string(),
        idem_key: None,
        correlation_id: event_id.to_owned(),
        event_created_ms: 0,
        source: JobSource::Operator,
    })
}

async fn duplicates_make_one_order(db: Db) {
    let mut app = spawn_app(Options {
        db,
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    app.sim.sim.approve(&id);
    // The same Order handed to the workers three more times at once, under other job ids, as
    // a redelivery after a crash or a second replica would.
    app.state
        .queue
        .push(vec![
            job_for(&id, "dup-a"),
            job_for(&id, "dup-b"),
            job_for(&id, "dup-c"),
        ])
        .await
        .expect("push");
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    wait_until(
        Duration::from_secs(30),
        "all four jobs to finish",
        || async {
            app.state
                .queue
                .stats()
                .await
                .map(|s| s.done >= 4)
                .unwrap_or(false)
        },
    )
    .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_jobs_make_one_whmcs_order_sqlite() {
    duplicates_make_one_order(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_jobs_make_one_whmcs_order_postgres() {
    duplicates_make_one_order(Db::Postgres).await;
}

async fn ambiguous_add_order_is_reconciled_not_repeated_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        // Reconciliation is the subject: the breaker stays closed, so every job keeps sending
        // (an open breaker holds back calls waiting for room, and jobs wait for its probe).
        extra_env: vec![("BREAKER_FAILURE_THRESHOLD", "1000".into())],
        ..Default::default()
    })
    .await;
    // Every WHMCS call creates its effect, then answers 500: AddOrder's outcome is unknown.
    app.sim.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        whmcs_error_kind: WhmcsFaultKind::AfterCommit,
        ..Faults::default()
    });
    let ids = app.seed_approved(5);
    wait_until(
        Duration::from_secs(60),
        "AddOrder to be attempted for every order",
        || async { ids.iter().all(|id| app.sim.sim.counts(id).add_order >= 1) },
    )
    .await;
    app.sim.sim.set_faults(Faults::default());
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(
            app.sim.sim.whmcs_orders_for(id).len(),
            1,
            "one WHMCS order for {id}"
        );
    }
    app.stop().await.expect("stop");
}

/// One more activation event for the Order, as a Flow firing again (or late) would publish it.
fn publish_again(app: &TestApp, id: &SalesforceId) {
    app.sim.sim.publish(provisioner_sim::EventPayload {
        created_date_ms: chrono::Utc::now().timestamp_millis(),
        created_by_id: "005000000000001AAA".into(),
        order_id: Some(id.to_string()),
        ..Default::default()
    });
}

/// An Order (not approved) of one item mapped to the WHMCS product `pid`.
fn seed_with_product(app: &TestApp, pid: &str) -> SalesforceId {
    sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: Some(pid.into()),
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    }))
}

async fn business_error_fails_then_retrigger_after_fix_succeeds_once_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        ..Default::default()
    })
    .await;
    let id = seed_with_product(&app, "99");
    app.sim.sim.set_faults(Faults {
        whmcs_reject_products: vec!["99".into()],
        ..Faults::default()
    });
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    let o = app.sim.sim.order(&id).expect("order");
    assert_eq!(o.activation_status.as_deref(), Some("Failed"));
    assert_eq!(o.error_code.as_deref(), Some("WHMCS_NO_ITEMS"));
    assert!(
        o.error_message
            .as_deref()
            .is_some_and(|m| !m.is_empty() && m.chars().count() <= 255)
    );
    assert_eq!(
        app.sim.sim.counts(&id).add_order,
        1,
        "business errors are not retried"
    );

    // The operator fixes the mapping and re-triggers.
    app.sim.sim.set_item_product(&id, 0, Some("1".into()));
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "re-triggered order to activate",
        || async { app.activation(&id).as_deref() == Some("Activated") },
    )
    .await;
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    app.stop().await.expect("stop");
}

/// Two events for one Order (the Flow fired twice) both read Salesforce; one job claims the
/// Order and fails it, the other waits for the lease. An operator fixes the mapping and sets the
/// Order back to `Activating` after that failure's write-back but before its ledger record (the
/// re-trigger's own event is not in yet). The waiting job must not take the failure for its own
/// work: it reads the Order again and provisions it, once, without the reconciler.
async fn retrigger_seen_by_a_job_waiting_on_the_failed_attempt_is_provisioned_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        extra_env: vec![("RECONCILER_INTERVAL_SECS", "0".into())],
        ..Default::default()
    })
    .await;
    let id = seed_with_product(&app, "99");
    let rejecting = Faults {
        whmcs_reject_products: vec!["99".into()],
        sf_hold_patch_answers: true,
        ..Faults::default()
    };
    // Both jobs' Salesforce reads are held until both have been made: both read the ledger
    // before either claims the Order.
    app.sim.sim.set_faults(Faults {
        sf_hold_query_answers: true,
        ..rejecting.clone()
    });
    app.sim.sim.approve(&id);
    publish_again(&app, &id);
    wait_until(Duration::from_secs(60), "both jobs' reads", || async {
        app.sim.sim.counts(&id).soql == 2
    })
    .await;
    app.sim.sim.set_faults(rejecting);
    wait_until(
        Duration::from_secs(60),
        "one job's failure written back (its answer held), the other job waiting after its read",
        || async {
            app.activation(&id).as_deref() == Some("Failed")
                && app.sim.sim.counts(&id).soql == 2
                && app.state.metrics.jobs_waiting_for_lease.get() == 1
        },
    )
    .await;
    app.sim.sim.set_item_product(&id, 0, Some("1".into()));
    app.sim
        .sim
        .set_order_field(&id, "Activation_Status__c", "Activating".into());
    app.sim.sim.set_faults(Faults::default());
    wait_until(
        Duration::from_secs(60),
        "the re-triggered order to activate",
        || async { app.activation(&id).as_deref() == Some("Activated") },
    )
    .await;
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    let c = app.sim.sim.counts(&id);
    assert_eq!(c.add_order, 2, "one refused, one added");
    assert_eq!(c.soql, 3, "the waiting job read the Order once more");
    app.stop().await.expect("stop");
}

/// A second event for an Order another job is working on (the Flow fired twice) waits for that
/// job's lease without calling Salesforce, then reads the Order once and finds it done.
async fn a_duplicate_waits_for_the_lease_without_calling_salesforce_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        extra_env: vec![("RECONCILER_INTERVAL_SECS", "0".into())],
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    app.sim.sim.set_faults(Faults {
        sf_hold_patch_answers: true,
        ..Faults::default()
    });
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "the write-back applied (its answer held)",
        || async { app.activation(&id).as_deref() == Some("Activated") },
    )
    .await;
    publish_again(&app, &id);
    wait_until(
        Duration::from_secs(60),
        "the second job to wait for the lease",
        || async { app.state.metrics.jobs_waiting_for_lease.get() == 1 },
    )
    .await;
    assert_eq!(
        app.sim.sim.counts(&id).soql,
        1,
        "no Salesforce read while the lease is held"
    );
    app.sim.sim.set_faults(Faults::default());
    wait_until(Duration::from_secs(60), "both jobs to finish", || async {
        app.state
            .queue
            .stats()
            .await
            .map(|s| s.done >= 2)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(app.state.metrics.jobs_waiting_for_lease.get(), 0);
    let c = app.sim.sim.counts(&id);
    assert_eq!(
        (c.soql, c.add_order, c.patch),
        (2, 1, 1),
        "the second job read the Order once, after the lease, and did nothing more"
    );
    assert!(
        app.state
            .metrics
            .render()
            .contains("reason=\"not_activating\"")
    );
    app.stop().await.expect("stop");
}

async fn missing_mapping_is_a_precise_failure_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        ..Default::default()
    })
    .await;
    let no_client = sf_id(app.sim.sim.seed_order(OrderSeed {
        whmcs_client_id: None,
        ..OrderSeed::default()
    }));
    let no_product = sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: None,
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    }));
    app.sim.sim.approve(&no_client);
    app.sim.sim.approve(&no_product);
    app.wait_terminal(
        &[no_client.clone(), no_product.clone()],
        Duration::from_secs(60),
    )
    .await;
    let a = app.sim.sim.order(&no_client).expect("order");
    let b = app.sim.sim.order(&no_product).expect("order");
    assert_eq!(a.error_code.as_deref(), Some("MAPPING_CLIENT_MISSING"));
    assert_eq!(b.error_code.as_deref(), Some("MAPPING_PRODUCT_MISSING"));
    assert_eq!(app.sim.sim.totals().add_order, 0);
    app.stop().await.expect("stop");
}

async fn flaky_whmcs_still_provisions_everything_once_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        extra_env: vec![("JOB_MAX_ATTEMPTS", "12".into())],
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_error_rate: 0.3,
        whmcs_error_kind: WhmcsFaultKind::Http500,
        seed: 7,
        ..Faults::default()
    });
    let ids = app.seed_approved(60);
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
    app.stop().await.expect("stop");
}

async fn order_not_activating_gets_no_whmcs_call_on(db: Db) {
    let mut app = spawn_app(Options {
        db,
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    // An event for an Order that is not (or no longer) Activating, e.g. pulled back by an
    // operator before the worker read it.
    publish_again(&app, &id);
    let control = app.seed(1).remove(0);
    app.sim.sim.approve(&control);
    app.wait_terminal(std::slice::from_ref(&control), Duration::from_secs(60))
        .await;
    wait_until(
        Duration::from_secs(30),
        "the guarded order to be read",
        || async { app.sim.sim.counts(&id).soql >= 1 },
    )
    .await;
    wait_until(Duration::from_secs(30), "its job to finish", || async {
        app.state
            .queue
            .stats()
            .await
            .map(|s| s.done >= 2)
            .unwrap_or(false)
    })
    .await;
    let c = app.sim.sim.counts(&id);
    assert_eq!((c.add_order, c.accept_order, c.patch), (0, 0, 0));
    assert!(
        app.state
            .metrics
            .render()
            .contains("reason=\"not_activating\"")
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_add_order_is_reconciled_not_repeated_sqlite() {
    ambiguous_add_order_is_reconciled_not_repeated_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_add_order_is_reconciled_not_repeated_postgres() {
    ambiguous_add_order_is_reconciled_not_repeated_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_error_fails_then_retrigger_after_fix_succeeds_once_sqlite() {
    business_error_fails_then_retrigger_after_fix_succeeds_once_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_error_fails_then_retrigger_after_fix_succeeds_once_postgres() {
    business_error_fails_then_retrigger_after_fix_succeeds_once_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrigger_seen_by_a_job_waiting_on_the_failed_attempt_is_provisioned_sqlite() {
    retrigger_seen_by_a_job_waiting_on_the_failed_attempt_is_provisioned_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrigger_seen_by_a_job_waiting_on_the_failed_attempt_is_provisioned_postgres() {
    retrigger_seen_by_a_job_waiting_on_the_failed_attempt_is_provisioned_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waits_for_the_lease_without_calling_salesforce_sqlite() {
    a_duplicate_waits_for_the_lease_without_calling_salesforce_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waits_for_the_lease_without_calling_salesforce_postgres() {
    a_duplicate_waits_for_the_lease_without_calling_salesforce_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_whmcs_still_provisions_everything_once_sqlite() {
    flaky_whmcs_still_provisions_everything_once_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_whmcs_still_provisions_everything_once_postgres() {
    flaky_whmcs_still_provisions_everything_once_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mapping_is_a_precise_failure_sqlite() {
    missing_mapping_is_a_precise_failure_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mapping_is_a_precise_failure_postgres() {
    missing_mapping_is_a_precise_failure_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_not_activating_gets_no_whmcs_call_sqlite() {
    order_not_activating_gets_no_whmcs_call_on(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_not_activating_gets_no_whmcs_call_postgres() {
    order_not_activating_gets_no_whmcs_call_on(Db::Postgres).await;
}

/// The value of `provisioner_<name>{dependency="<dep>"}` in the daemon's metrics.
fn dependency_gauge(app: &crate::helpers::TestApp, name: &str, dep: &str) -> Option<i64> {
    let text = app.state.metrics.render();
    let prefix = format!("provisioner_{name}{{dependency=\"{dep}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// With latency, a burst runs many more than 8 calls at once, but never more WHMCS calls than
/// `WHMCS_MAX_IN_FLIGHT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whmcs_calls_in_flight_follow_the_limit_not_a_fixed_worker_count_sqlite() {
    const CEILING: u64 = 12;
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("WHMCS_MAX_IN_FLIGHT", CEILING.to_string()),
            ("WHMCS_MIN_IN_FLIGHT", "2".into()),
        ],
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 80,
        whmcs_latency_max_ms: 120,
        sf_latency_ms: 20,
        ..Default::default()
    });
    // The daemon's start-up call to WHMCS (its version check) may already have answered and
    // raised the limit by one.
    let start = dependency_gauge(&app, "dependency_limit", "whmcs");
    assert!(
        matches!(start, Some(2 | 3)),
        "the limit starts at the floor, saw {start:?}"
    );
    let ids = app.seed_approved(150);
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
    let t = app.sim.sim.totals();
    assert!(
        t.whmcs_max_in_flight <= CEILING,
        "at most {CEILING} WHMCS calls at once, saw {}",
        t.whmcs_max_in_flight
    );
    assert!(
        t.whmcs_max_in_flight > 8,
        "more than 8 WHMCS calls at once, saw {}",
        t.whmcs_max_in_flight
    );
    let limit = dependency_gauge(&app, "dependency_limit", "whmcs").expect("limit gauge");
    assert!(limit > 8 && limit <= CEILING as i64, "limit {limit}");
    wait_until(
        Duration::from_secs(10),
        "no WHMCS call in flight",
        || async { dependency_gauge(&app, "dependency_in_flight", "whmcs") == Some(0) },
    )
    .await;
    assert!(dependency_gauge(&app, "dependency_limit", "salesforce").is_some_and(|l| l >= 4));
    app.stop().await.expect("clean stop");
}

/// Until WHMCS has answered a call, this process sends its calls one at a time (a wrong secret
/// then costs one rejected call, not a burst). The jobs that queued behind the first call go out
/// together once it answered: a backlog waiting at startup is not sent one call at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_before_whmcs_first_answered_go_out_together_sqlite() {
    const ORDERS: usize = 16;
    let mut app = spawn_app(Options {
        start: false,
        extra_env: vec![
            ("WHMCS_MIN_IN_FLIGHT", ORDERS.to_string()),
            ("WHMCS_MAX_IN_FLIGHT", ORDERS.to_string()),
        ],
        ..Default::default()
    })
    .await;
    // Slow enough that every job reaches WHMCS while the daemon's first call (its version
    // check) is still waiting for an answer.
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 1500,
        ..Default::default()
    });
    let ids = app.seed_approved(ORDERS);
    app.start();
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
    // One at a time, AddOrder after AddOrder, never has more than two calls in flight (an
    // AddOrder and the AcceptOrder of the one before).
    let t = app.sim.sim.totals();
    assert!(
        t.whmcs_max_in_flight >= ORDERS as u64 / 2,
        "the queued calls went out together, saw at most {} at once",
        t.whmcs_max_in_flight
    );
    app.stop().await.expect("clean stop");
}

/// A worker whose job slots are all busy in slow calls takes no job it cannot start: the jobs
/// waiting stay in the queue for a replica with a free slot, and the worker keeps heartbeating.
/// (apalis heartbeats only while it holds no prefetched job: a worker holding one behind busy
/// slots went silent, was stopped by the watchdog, and other replicas re-enqueued its running
/// jobs as orphans.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_every_slot_busy_takes_no_more_jobs_and_keeps_heartbeating() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("WORKER_CONCURRENCY", "2".into()),
            ("WHMCS_MIN_IN_FLIGHT", "4".into()),
            ("WHMCS_TIMEOUT_SECS", "300".into()),
            // Jobs are pushed by the test, several in one push.
            ("SF_EVENTS_ENABLED", "false".into()),
        ],
        ..Default::default()
    })
    .await;
    let in_flight = |n: u64| {
        let sim = app.sim.sim.clone();
        async move { sim.totals().whmcs_in_flight == n }
    };
    // The daemon's first call (its version check) has been answered; every AddOrder from now
    // on outlasts the test.
    wait_until(Duration::from_secs(30), "the version check", || async {
        app.sim.sim.totals().whmcs_calls > 0 && in_flight(0).await
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 120_000,
        ..Default::default()
    });
    let ids = app.seed_approved(4);
    let push = |ids: &[SalesforceId]| {
        let jobs = ids
            .iter()
            .map(|id| job_for(id, &format!("slot-{id}")))
            .collect();
        app.state.queue.push(jobs)
    };
    push(&ids[..1]).await.expect("push");
    wait_until(Duration::from_secs(30), "the first AddOrder", || {
        in_flight(1)
    })
    .await;
    // One slot left: one more job starts, and the other two must stay queued.
    push(&ids[1..]).await.expect("push");
    wait_until(Duration::from_secs(30), "the second AddOrder", || {
        in_flight(2)
    })
    .await;

    // The worker holds only the jobs it runs; the other two wait in the queue.
    let stats = app.state.queue.stats().await.expect("stats");
    assert_eq!(
        (stats.running, stats.pending + stats.delayed),
        (2, 2),
        "{stats:?}"
    );

    // Heartbeats go on while both slots stay busy (every 10 s; scores are in seconds).
    let worker = format!("{}-w0", app.state.instance);
    let beat = || {
        let mut redis = app.state.queue.redis();
        let (set, worker) = (app.state.queue.config().workers_set(), worker.clone());
        async move {
            redis::cmd("ZSCORE")
                .arg(set)
                .arg(worker)
                .query_async::<Option<f64>>(&mut redis)
                .await
                .expect("ZSCORE")
                .expect("the worker is registered")
        }
    };
    let first = beat().await;
    wait_until(
        Duration::from_secs(25),
        "a heartbeat with every slot busy",
        || async { beat().await > first },
    )
    .await;
    assert_eq!(
        app.sim.sim.totals().whmcs_in_flight,
        2,
        "both slots stayed busy"
    );
    let stats = app.state.queue.stats().await.expect("stats");
    assert_eq!(
        stats.pending + stats.delayed,
        2,
        "the waiting jobs were not taken"
    );
}
