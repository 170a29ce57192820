//! The order-status view: polls are answered from memory, and every replica's answer follows
//! changes made by any replica (the cross-replica change feed over Redis pub/sub).

use std::time::Duration;

use provisioner_sim::Faults;
use serde_json::Value;

use crate::{
    helpers::{Db, Options, daemon_process, spawn_app, wait_until},
    http::{SseReader, account_of, http_up, token},
};

use crate::helpers::free_port;

/// The order's `status` as `base` serves it (`None` unless 200).
async fn status_at(http: &reqwest::Client, base: &str, id: &str, token: &str) -> Option<String> {
    let r = http
        .get(format!("{base}/api/orders/{id}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["status"].as_str().map(str::to_owned)
}

/// A gauge of `/metrics` at `base`.
async fn gauge(http: &reqwest::Client, base: &str, name: &str) -> Option<i64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_answers_with_changes_made_by_another() {
    let app = spawn_app(Options {
        db: Db::Postgres,
        ..Default::default()
    })
    .await;
    // Two WHMCS calls of 1.5 s: the Order stays Activating long enough for both replicas to
    // cache it.
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 1500,
        ..Faults::default()
    });
    let port = free_port();
    let _other = daemon_process(&app, &[("HTTP_ADDR", format!("127.0.0.1:{port}"))]);
    let bases = [app.http.clone(), format!("http://127.0.0.1:{port}")];
    let http = reqwest::Client::new();
    for base in &bases {
        http_up(base).await;
    }
    wait_until(
        Duration::from_secs(20),
        "both change feeds live",
        || async {
            for base in &bases {
                if gauge(&http, base, "provisioner_change_feed_live").await != Some(1) {
                    return false;
                }
            }
            true
        },
    )
    .await;

    let id = app.seed_approved(1).remove(0);
    let tok = token(&account_of(&app, &id), 600);
    // Both replicas serve (and so hold) the Order while it is Activating; whichever runs the
    // job, the other learns of its changes only through the feed.
    wait_until(Duration::from_secs(30), "Activating on both", || async {
        for base in &bases {
            if status_at(&http, base, id.as_str(), &tok).await.as_deref() != Some("Activating") {
                return false;
            }
        }
        true
    })
    .await;
    let mut streams = Vec::new();
    for base in &bases {
        let resp = http
            .get(format!("{base}/api/orders/{id}/events"))
            .bearer_auth(&tok)
            .send()
            .await
            .expect("events");
        streams.push(SseReader::new(resp));
    }
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    // Far within the view's 60 s lifetime of an entry: only a notification can explain it.
    wait_until(Duration::from_secs(3), "Provisioned on both", || async {
        for base in &bases {
            if status_at(&http, base, id.as_str(), &tok).await.as_deref() != Some("Provisioned") {
                return false;
            }
        }
        true
    })
    .await;
    for (i, stream) in streams.iter_mut().enumerate() {
        loop {
            let (v, _) = stream
                .next_event(Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("stream {i} ended"));
            if v["status"] == "Provisioned" {
                break;
            }
            assert_eq!(v["status"], "Activating", "stream {i}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_are_answered_from_memory_and_a_dropped_feed_falls_back_to_the_ledger() {
    let mut app = spawn_app(Options::default()).await;
    let http = reqwest::Client::new();
    http_up(&app.http).await;
    let id = app.seed_approved(1).remove(0);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    let tok = token(&account_of(&app, &id), 600);
    wait_until(Duration::from_secs(20), "the change feed live", || async {
        gauge(&http, &app.http, "provisioner_change_feed_live").await == Some(1)
    })
    .await;
    wait_until(Duration::from_secs(10), "Provisioned", || async {
        status_at(&http, &app.http, id.as_str(), &tok)
            .await
            .as_deref()
            == Some("Provisioned")
    })
    .await;

    // Take the table away from under the daemon: an answer now can only come from memory.
    let url = app
        .env
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone())
        .expect("DATABASE_URL");
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("ledger");
    sqlx::Executor::execute(&mut db, "ALTER TABLE orders RENAME TO orders_away")
        .await
        .expect("rename");
    for _ in 0..3 {
        assert_eq!(
            status_at(&http, &app.http, id.as_str(), &tok)
                .await
                .as_deref(),
            Some("Provisioned"),
            "served from memory"
        );
    }

    // Every pub/sub connection of the Redis server dropped: this daemon can no longer know
    // of other replicas' changes, so it stops answering from memory until its feed is back.
    let losses_before = gauge(&http, &app.http, "provisioner_change_feed_losses")
        .await
        .expect("losses gauge");
    let redis = redis::Client::open(crate::helpers::redis_url()).expect("redis");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    wait_until(Duration::from_secs(10), "the loss noticed", || async {
        gauge(&http, &app.http, "provisioner_change_feed_losses")
            .await
            .is_some_and(|n| n > losses_before)
    })
    .await;
    // The loss dropped every cached answer: with the table away, the ledger read fails.
    let r = http
        .get(format!("{}/api/orders/{id}", app.http))
        .bearer_auth(&tok)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503, "nothing stale is served after a loss");
    sqlx::Executor::execute(&mut db, "ALTER TABLE orders_away RENAME TO orders")
        .await
        .expect("rename back");
    wait_until(Duration::from_secs(10), "the feed live again", || async {
        gauge(&http, &app.http, "provisioner_change_feed_live").await == Some(1)
    })
    .await;
    assert_eq!(
        status_at(&http, &app.http, id.as_str(), &tok)
            .await
            .as_deref(),
        Some("Provisioned")
    );
    app.stop().await.expect("stop");
}
