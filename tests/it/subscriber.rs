//! The Pub/Sub subscriber against the simulator's gRPC server: flow control, resubscribes,
//! token revocation, corrupted cursors, poison events, the watchdog.

use std::time::Duration;

use provisioner::ids::SalesforceId;
use provisioner_sim::{EventPayload, Faults};
use sqlx::Row;

use crate::helpers::{Options, TestApp, spawn_app, wait_until};

fn payload(n: u64) -> EventPayload {
    EventPayload {
        created_date_ms: chrono::Utc::now().timestamp_millis(),
        created_by_id: "005000000000001AAA".into(),
        // Orders the simulator does not know: workers skip them after one read, so these
        // tests exercise the subscriber without provisioning.
        order_id: Some(SalesforceId::synthesize("801", 900_000 + n).to_string()),
        idem_key: Some(format!("k{n}")),
        correlation_id: Some(format!("c{n}")),
        requested_by: None,
        version: Some(1.0),
    }
}

async fn inbox(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query("SELECT replay_id, status FROM event_inbox ORDER BY received_at, replay_id")
        .fetch_all(app.state.ledger.pool())
        .await
        .expect("inbox")
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("replay_id"),
                r.get::<String, _>("status"),
            )
        })
        .collect()
}

async fn wait_inbox(app: &TestApp, n: usize) {
    wait_until(
        Duration::from_secs(90),
        &format!("{n} events in the inbox"),
        || async { inbox(app).await.len() >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_in_bursts_are_enqueued_once_in_order_within_flow_control() {
    let mut app = spawn_app(Options::default()).await;
    let mut published = Vec::new();
    for burst in 0..10u64 {
        for i in 0..100u64 {
            published.push(app.sim.sim.publish(payload(burst * 100 + i)));
        }
        tokio::task::yield_now().await;
    }
    wait_inbox(&app, 1000).await;
    let rows = inbox(&app).await;
    assert_eq!(rows.len(), 1000);
    let mut replay_ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let expected: Vec<String> = published.iter().map(hex::encode).collect();
    replay_ids.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(replay_ids, sorted_expected, "every event exactly once");
    assert_eq!(
        app.state.queue.job_count().await.expect("count"),
        1000,
        "1000 distinct jobs"
    );
    assert!(app.sim.sim.stream_stats().max_outstanding_requested <= 100);
    let cursor = app
        .state
        .ledger
        .load_cursor(&app.state.cfg.events.channel)
        .await
        .expect("cursor");
    assert_eq!(
        cursor.as_deref(),
        published.last().map(Vec::as_slice),
        "cursor at the last event"
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_dropped_every_seven_events_loses_and_duplicates_nothing() {
    let mut app = spawn_app(Options::default()).await;
    app.sim.sim.set_faults(Faults {
        drop_stream_every: Some(7),
        ..Faults::default()
    });
    for i in 0..300 {
        app.sim.sim.publish(payload(i));
    }
    wait_inbox(&app, 300).await;
    assert_eq!(inbox(&app).await.len(), 300);
    assert_eq!(app.state.queue.job_count().await.expect("count"), 300);
    assert!(
        app.state.health.snapshot().reconnects >= 40,
        "{:?}",
        app.state.health.snapshot()
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_reauthenticate_and_resume_from_the_cursor() {
    let mut app = spawn_app(Options::default()).await;
    for i in 0..100 {
        app.sim.sim.publish(payload(i));
    }
    wait_inbox(&app, 100).await;
    let tokens_before = app.sim.sim.totals().token_requests;
    app.sim.sim.revoke_tokens();
    for i in 100..200 {
        app.sim.sim.publish(payload(i));
    }
    wait_inbox(&app, 200).await;
    assert_eq!(inbox(&app).await.len(), 200);
    assert_eq!(app.state.queue.job_count().await.expect("count"), 200);
    assert!(
        app.sim.sim.totals().token_requests > tokens_before,
        "a new token was minted"
    );
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_stored_cursor_falls_back_once_and_the_stream_continues() {
    let mut app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    for i in 0..10 {
        app.sim.sim.publish(payload(i));
    }
    let channel = app.state.cfg.events.channel.clone();
    app.state
        .ledger
        .save_cursor(&channel, &[0xff; 10], 0)
        .await
        .expect("cursor");
    app.start();
    wait_inbox(&app, 10).await;
    for i in 10..20 {
        app.sim.sim.publish(payload(i));
    }
    wait_inbox(&app, 20).await;
    let h = app.state.health.snapshot();
    assert_eq!(h.cursor_fallbacks, 1, "{h:?}");
    assert!(
        app.state
            .metrics
            .render()
            .contains("provisioner_subscription_cursor_fallbacks_total 1")
    );
    assert_eq!(app.state.queue.job_count().await.expect("count"), 20);
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_skipped_and_counted() {
    let mut app = spawn_app(Options::default()).await;
    let mut valid = 0;
    for i in 0..20u64 {
        match i % 5 {
            1 => {
                app.sim
                    .sim
                    .publish_raw(&app.sim.sim.schema_id(), vec![0xde, 0xad, 0xbe, 0xef, 0xff]);
            }
            2 => {
                app.sim.sim.publish_raw("unknown-schema-id", vec![0, 1, 2]);
            }
            3 => {
                app.sim.sim.publish(EventPayload {
                    order_id: None,
                    ..payload(i)
                });
            }
            4 => {
                app.sim.sim.publish(EventPayload {
                    order_id: Some("801'; DELETE".into()),
                    ..payload(i)
                });
            }
            _ => {
                valid += 1;
                app.sim.sim.publish(payload(i));
            }
        }
    }
    wait_inbox(&app, 20).await;
    let rows = inbox(&app).await;
    assert_eq!(rows.iter().filter(|r| r.1 == "poison").count(), 16);
    assert_eq!(rows.iter().filter(|r| r.1 == "enqueued").count(), valid);
    assert_eq!(
        app.state.queue.job_count().await.expect("count"),
        valid as u64
    );
    let metrics = app.state.metrics.render();
    for reason in [
        "undecodable",
        "unknown_schema",
        "missing_order_id",
        "malformed_order_id",
    ] {
        assert!(
            metrics.contains(&format!(
                "provisioner_poison_events_total{{reason=\"{reason}\"}} 4"
            )),
            "{reason}\n{metrics}"
        );
    }
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_trips_the_watchdog_and_resubscribes() {
    let mut app = spawn_app(Options {
        extra_env: vec![("SF_EVENTS_WATCHDOG_SECS", "1".into())],
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    wait_until(
        Duration::from_secs(30),
        "two watchdog resubscribes",
        || async {
            app.state
                .metrics
                .render()
                .contains("provisioner_subscription_watchdog_resubscribes_total 2")
        },
    )
    .await;
    app.sim.sim.set_faults(Faults::default());
    app.sim.sim.publish(payload(1));
    wait_inbox(&app, 1).await;
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_enqueue_and_cursor_save_enqueues_nothing_twice() {
    let mut app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let ids = app.seed(5);
    let replays: Vec<Vec<u8>> = ids.iter().map(|id| app.sim.sim.approve(id)).collect();
    // First run: everything is handled and the cursor is stored.
    app.start();
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    app.stop().await.expect("stop");
    // Simulate a crash after the jobs were enqueued but before the inbox and cursor were
    // committed: forget both, then start again. Every event is delivered a second time.
    sqlx::query("DELETE FROM cursors")
        .execute(app.state.ledger.pool())
        .await
        .expect("clear");
    sqlx::query("DELETE FROM event_inbox")
        .execute(app.state.ledger.pool())
        .await
        .expect("delete");
    let jobs_before = app.state.queue.job_count().await.expect("count");
    app.start();
    wait_inbox(&app, replays.len()).await;
    wait_until(
        Duration::from_secs(30),
        "redelivered jobs to settle",
        || async {
            app.state
                .queue
                .stats()
                .await
                .map(|s| s.pending == 0 && s.running == 0)
                .unwrap_or(false)
        },
    )
    .await;
    assert_eq!(
        app.state.queue.job_count().await.expect("count"),
        jobs_before,
        "no new jobs"
    );
    for id in &ids {
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1);
        assert_eq!(app.sim.sim.counts(id).add_order, 1);
    }
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_keeps_the_queue_bounded_and_loses_nothing() {
    let mut app = spawn_app(Options {
        start: false,
        extra_env: vec![
            ("SF_EVENTS_BATCH_SIZE", "5".into()),
            ("SF_EVENTS_MAX_PENDING_JOBS", "5".into()),
            ("WORKER_CONCURRENCY", "2".into()),
        ],
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 20,
        ..Faults::default()
    });
    let ids = app.seed_approved(60);
    app.start();
    let mut max_pending = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stats = app.state.queue.stats().await.expect("stats");
        max_pending = max_pending.max(stats.pending);
        let done = ids
            .iter()
            .filter(|id| app.activation(id).as_deref() == Some("Activated"))
            .count();
        if done == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done}/60 activated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // At most the threshold plus one batch of demand is ever waiting in Redis.
    assert!(max_pending <= 10, "queue grew to {max_pending}");
    assert!(app.sim.sim.stream_stats().max_outstanding_requested <= 5);
    for id in &ids {
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1);
    }
    app.stop().await.expect("stop");
}
