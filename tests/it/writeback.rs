//! Write-backs Salesforce refuses for good (validation rules, locked records): the Order ends
//! `writeback_rejected`, the alert fires once, and neither redeliveries nor the stuck-order
//! reconciler drive it again; a rule that only guards the Order's `Status` is met by writing
//! the activation fields alone.

use std::time::Duration;

use provisioner::ledger::state;
use provisioner_sim::{Faults, OrderSeed};

use crate::{
    helpers::{Options, TestApp, sf_id, spawn_app, wait_until},
    observability::Hook,
};

async fn sweeps(app: &TestApp) -> Option<chrono::DateTime<chrono::Utc>> {
    app.state.reconciler.lock().expect("report").last_run_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_rejected_for_good_is_terminal_alerted_once_and_left_alone() {
    let hook = Hook::default();
    let url = hook.start("T000/B000/writeback").await;
    let app = spawn_app(Options {
        extra_env: vec![
            ("ALERT_WEBHOOK_URL", url),
            ("ALERT_CHECK_INTERVAL_SECS", "1".into()),
            // The failure-rate alert stays quiet: only the write-back alert may post.
            ("ALERT_MIN_SAMPLES", "1000".into()),
            ("RECONCILER_INTERVAL_SECS", "1".into()),
            ("RECONCILER_STUCK_AFTER_SECS", "0".into()),
        ],
        ..Options::default()
    })
    .await;
    let rejected = sf_id(app.sim.sim.seed_order(OrderSeed::default()));
    let status_guarded = sf_id(app.sim.sim.seed_order(OrderSeed::default()));
    let ok = sf_id(app.sim.sim.seed_order(OrderSeed::default()));
    app.sim.sim.set_faults(Faults {
        sf_reject_writeback: vec![rejected.to_string()],
        sf_reject_status_change: vec![status_guarded.to_string()],
        ..Faults::default()
    });
    for id in [&rejected, &status_guarded, &ok] {
        app.sim.sim.approve(id);
    }
    wait_until(
        Duration::from_secs(60),
        "every ledger row finished",
        || async {
            let mut done = 0;
            for id in [&rejected, &status_guarded, &ok] {
                if app
                    .state
                    .ledger
                    .get(id)
                    .await
                    .expect("ledger")
                    .is_some_and(|r| r.outcome.is_some())
                {
                    done += 1;
                }
            }
            done == 3
        },
    )
    .await;

    let row = app
        .state
        .ledger
        .get(&rejected)
        .await
        .expect("ledger")
        .expect("row");
    assert_eq!(row.state, state::WRITEBACK_REJECTED);
    assert_eq!(row.outcome.as_deref(), Some("Provisioned"));
    assert_eq!(
        row.error_code.as_deref(),
        Some("FIELD_CUSTOM_VALIDATION_EXCEPTION")
    );
    assert!(row.whmcs_order_id.is_some(), "{row:?}");
    let listed = app
        .state
        .ledger
        .list(Some(state::WRITEBACK_REJECTED), 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let sf = app.sim.sim.order(&rejected).expect("order");
    assert_eq!(sf.activation_status.as_deref(), Some("Activating"));

    // A rule on `Status` alone: the activation fields are written without it.
    let guarded = app.sim.sim.order(&status_guarded).expect("order");
    assert_eq!(guarded.activation_status.as_deref(), Some("Activated"));
    assert_ne!(guarded.status, "Activated");
    assert_eq!(
        app.state
            .ledger
            .get(&status_guarded)
            .await
            .expect("ledger")
            .expect("row")
            .state,
        state::DONE
    );
    let done = app.sim.sim.order(&ok).expect("order");
    assert_eq!(done.status, "Activated");

    // One alert for the rejection.
    wait_until(Duration::from_secs(20), "the write-back alert", || async {
        !hook.delivered().is_empty()
    })
    .await;

    // Three reconciler sweeps later: the rejected Order was not enqueued, not re-read for
    // provisioning, not written again, and no second alert went out.
    let calls = app.sim.sim.counts(&rejected);
    let enqueued = app.state.reconciler.lock().expect("report").total_enqueued;
    for n in 0..3 {
        let before = sweeps(&app).await;
        wait_until(
            Duration::from_secs(20),
            &format!("reconciler sweep {n}"),
            || async { sweeps(&app).await != before },
        )
        .await;
    }
    let after = app.sim.sim.counts(&rejected);
    assert_eq!(
        after.patch, calls.patch,
        "no write-back after the rejection"
    );
    assert_eq!(after.add_order, 1, "one WHMCS order");
    assert_eq!(
        app.state.reconciler.lock().expect("report").total_enqueued,
        enqueued,
        "the reconciler left the rejected Order alone"
    );
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(
        delivered[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("write-back")),
        "{delivered:?}"
    );
    assert!(
        app.state
            .metrics
            .render()
            .contains("provisioner_writeback_rejected_total 1"),
        "counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_pages_past_orders_it_must_leave_alone() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("RECONCILER_INTERVAL_SECS", "1".into()),
            ("RECONCILER_STUCK_AFTER_SECS", "0".into()),
            ("RECONCILER_BATCH_LIMIT", "2".into()),
        ],
        ..Options::default()
    })
    .await;
    let rejected: Vec<_> = (0..3)
        .map(|_| sf_id(app.sim.sim.seed_order(OrderSeed::default())))
        .collect();
    app.sim.sim.set_faults(Faults {
        sf_reject_writeback: rejected.iter().map(ToString::to_string).collect(),
        ..Faults::default()
    });
    for id in &rejected {
        app.sim.sim.approve(id);
    }
    wait_until(
        Duration::from_secs(60),
        "three rejected write-backs",
        || async {
            app.state
                .ledger
                .list(Some(state::WRITEBACK_REJECTED), 10)
                .await
                .expect("list")
                .len()
                == 3
        },
    )
    .await;
    // An Order set Activating whose event never arrived: only the reconciler can find it, and
    // it sorts after the three rejected ones (same last attempt: none; then by Id).
    let stuck = sf_id(app.sim.sim.seed_order(OrderSeed::default()));
    app.sim
        .sim
        .set_order_field(&stuck, "Activation_Status__c", "Activating".into());
    wait_until(
        Duration::from_secs(30),
        "the stuck Order to be provisioned",
        || async { app.activation(&stuck).as_deref() == Some("Activated") },
    )
    .await;
    for id in &rejected {
        assert_eq!(app.sim.sim.counts(id).add_order, 1);
        assert_eq!(app.activation(id).as_deref(), Some("Activating"));
    }
}
