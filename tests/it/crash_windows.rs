//! Crash windows found by `provisioner chaos`: states a SIGKILL leaves behind, set up exactly,
//! then the re-run of the job must bring the ledger and Salesforce back into agreement.

use std::time::Duration;

use provisioner::{
    ledger::{Change, outcome, state},
    queue::{Job, JobSource, ProvisionOrderV1},
    whmcs::{AddOrderRequest, OrderLine},
};
use serde_json::Value;

use crate::helpers::{Options, spawn_app, wait_until};

/// Sets up what a run that died after its write-back leaves: WHMCS order created and accepted,
/// Salesforce `Activated` with its id, the ledger at `whmcs_accepted` with no outcome.
async fn died_after_write_back(
    app: &crate::helpers::TestApp,
    event_id: &str,
) -> (provisioner::ids::SalesforceId, i64) {
    let id = app.seed(1).remove(0);

    // The dead run: claimed, AddOrder + AcceptOrder done, Salesforce written back, ledger not.
    let ledger = app.state.ledger.clone();
    let dead = "dead-process:run";
    ledger
        .claim(&id, dead, Duration::from_millis(200))
        .await
        .expect("claim")
        .expect("free");
    ledger
        .start_attempt(&id, Some(event_id))
        .await
        .expect("attempt");
    let created = app
        .state
        .whmcs
        .add_order(&AddOrderRequest {
            client_id: "1".into(),
            payment_method: "banktransfer".into(),
            lines: vec![OrderLine {
                pid: "1".into(),
                billing_cycle: "monthly".into(),
                qty: 1,
            }],
            notes: format!("sf-order:{id}"),
            no_email: true,
        })
        .await
        .expect("AddOrder");
    app.state
        .whmcs
        .accept_order(created.order_id)
        .await
        .expect("AcceptOrder");
    let whmcs_id = i64::try_from(created.order_id).expect("id");
    assert!(
        ledger
            .update(
                &id,
                dead,
                &Change {
                    state: Some(state::WHMCS_ACCEPTED),
                    outcome: Some(None),
                    whmcs_client_id: Some("1"),
                    whmcs_order_id: Some(whmcs_id),
                    last_event_id: Some(event_id),
                    ..Default::default()
                },
            )
            .await
            .expect("update")
    );
    for (field, value) in [
        ("Activation_Status__c", Value::from("Activated")),
        ("Status", Value::from("Activated")),
        (
            "WHMCS_Order_ID__c",
            Value::from(created.order_id.to_string()),
        ),
    ] {
        app.sim.sim.set_order_field(&id, field, value);
    }

    (id, whmcs_id)
}

/// Waits (`what`) until the ledger has an outcome for `id`, and checks it is the provisioned
/// one, with the WHMCS order `whmcs_id`.
async fn recorded_as_provisioned(
    app: &crate::helpers::TestApp,
    id: &provisioner::ids::SalesforceId,
    whmcs_id: i64,
    what: &str,
) {
    let ledger = &app.state.ledger;
    wait_until(Duration::from_secs(60), what, || async {
        ledger
            .get(id)
            .await
            .expect("ledger")
            .is_some_and(|r| r.outcome.is_some())
    })
    .await;
    let row = ledger.get(id).await.expect("ledger").expect("row");
    assert_eq!(row.outcome.as_deref(), Some(outcome::PROVISIONED));
    assert_eq!(row.state, state::DONE);
    assert_eq!(row.whmcs_order_id, Some(whmcs_id));
}

/// The process died after the write-back PATCH reached Salesforce and before the ledger
/// recorded the outcome. The re-run finds the Order no longer `Activating`; it must still
/// record the outcome Salesforce shows, or the portal reports the Order as `Activating` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_write_back_and_ledger_is_recorded_by_the_rerun() {
    let mut app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let event_id = "evt-crashed-after-write-back";
    let (id, whmcs_id) = died_after_write_back(&app, event_id).await;
    let ledger = app.state.ledger.clone();

    // The queue runs the interrupted job again.
    app.state
        .queue
        .push(vec![Job::ProvisionOrderV1(ProvisionOrderV1 {
            event_id: event_id.into(),
            replay_id: None,
            order_id: id.to_string(),
            idem_key: None,
            correlation_id: event_id.into(),
            event_created_ms: 0,
            source: JobSource::Event,
        })])
        .await
        .expect("push");
    app.start();
    recorded_as_provisioned(&app, &id, whmcs_id, "the re-run to record the outcome").await;
    let attempts = ledger.attempts(&id).await.expect("attempts");
    assert!(
        attempts.iter().all(|a| a.finished_at.is_some()),
        "{attempts:?}"
    );
    // Nothing was provisioned again, and Salesforce was not written twice.
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);
    assert_eq!(app.sim.sim.counts(&id).patch, 0);
    app.stop().await.expect("clean stop");
}

/// The same window for a failure: the ledger kept the code before the write-back; the re-run
/// records the outcome with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_failed_write_back_and_ledger_is_recorded_by_the_rerun() {
    let mut app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    let event_id = "evt-crashed-after-failed-write-back";
    let ledger = app.state.ledger.clone();
    let dead = "dead-process:run";
    ledger
        .claim(&id, dead, Duration::from_millis(200))
        .await
        .expect("claim")
        .expect("free");
    ledger
        .start_attempt(&id, Some(event_id))
        .await
        .expect("attempt");
    let (code, message) = (
        "MAPPING_PRODUCT_MISSING",
        "Order Product 802000000000001AAA has no WHMCS product id",
    );
    assert!(
        ledger
            .update(
                &id,
                dead,
                &Change {
                    outcome: Some(None),
                    last_event_id: Some(event_id),
                    error: Some(Some((code, message))),
                    ..Default::default()
                },
            )
            .await
            .expect("update")
    );
    for (field, value) in [
        ("Activation_Status__c", Value::from("Failed")),
        ("Activation_Error_Code__c", Value::from(code)),
        ("Activation_Error_Message__c", Value::from(message)),
    ] {
        app.sim.sim.set_order_field(&id, field, value);
    }
    app.state
        .queue
        .push(vec![Job::ProvisionOrderV1(ProvisionOrderV1 {
            event_id: event_id.into(),
            replay_id: None,
            order_id: id.to_string(),
            idem_key: None,
            correlation_id: event_id.into(),
            event_created_ms: 0,
            source: JobSource::Event,
        })])
        .await
        .expect("push");
    app.start();
    wait_until(
        Duration::from_secs(60),
        "the re-run to record the outcome",
        || async {
            ledger
                .get(&id)
                .await
                .expect("ledger")
                .is_some_and(|r| r.outcome.is_some())
        },
    )
    .await;
    let row = ledger.get(&id).await.expect("ledger").expect("row");
    assert_eq!(row.outcome.as_deref(), Some(outcome::FAILED));
    assert_eq!(row.state, state::FAILED);
    assert_eq!(row.error_code.as_deref(), Some(code));
    assert_eq!(row.error_message.as_deref(), Some(message));
    let attempts = ledger.attempts(&id).await.expect("attempts");
    assert!(
        attempts.iter().all(|a| a.finished_at.is_some()),
        "{attempts:?}"
    );
    assert!(app.sim.sim.whmcs_orders_for(&id).is_empty());
    assert_eq!(app.sim.sim.counts(&id).patch, 0);
    app.stop().await.expect("clean stop");
}

/// The same window, and the job is gone too (Redis lost it): nothing runs it again, and
/// Salesforce already shows the Order `Activated`, so the Salesforce-side sweep does not see it.
/// The reconciler's ledger-side pass must re-enqueue it so the outcome is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_job_after_the_write_back_is_finished_by_the_reconciler() {
    let mut app = spawn_app(Options {
        start: false,
        extra_env: vec![
            ("RECONCILER_INTERVAL_SECS", "1".into()),
            ("RECONCILER_STUCK_AFTER_SECS", "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let (id, whmcs_id) = died_after_write_back(&app, "evt-lost-after-write-back").await;
    app.start();
    recorded_as_provisioned(
        &app,
        &id,
        whmcs_id,
        "the reconciler to have the outcome recorded",
    )
    .await;
    assert_eq!(app.sim.sim.whmcs_orders_for(&id).len(), 1);
    assert_eq!(app.sim.sim.counts(&id).patch, 0);
    app.stop().await.expect("clean stop");
}
