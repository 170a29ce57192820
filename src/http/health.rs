//! What monitoring reads: readiness (database and Redis reachable), the subscription's health
//! with the alert and the reconciler (`/health/sf-events`), and Prometheus metrics.
//!
//! Invariant: every probe here is bounded in time and costs no Salesforce or WHMCS call.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::Http;
use crate::status::SubState;

pub(super) async fn ready(State(s): State<Http>) -> Response {
    let (db, redis) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), s.app.ledger.ping()),
        tokio::time::timeout(Duration::from_secs(3), s.app.queue.ping()),
    );
    let check = |ok: bool, err: Option<String>| json!({"ok": ok, "error": err});
    let db_ok = matches!(db, Ok(Ok(())));
    let redis_ok = matches!(redis, Ok(Ok(())));
    let body = json!({
        "status": if db_ok && redis_ok { "ok" } else { "unavailable" },
        "database": check(db_ok, (!db_ok).then(|| "database unreachable".to_owned())),
        "redis": check(redis_ok, (!redis_ok).then(|| "redis unreachable".to_owned())),
        // Informational: an unhealthy WHMCS or Salesforce makes jobs wait, not this process
        // unready (restarting it would not help).
        "dependencies": s.app.deps.to_json(),
    });
    let code = if db_ok && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub(super) async fn sf_events(State(s): State<Http>) -> Response {
    let h = s.app.health.snapshot();
    let queue = s.app.queue.stats().await.ok();
    let durability = tokio::time::timeout(Duration::from_secs(2), s.app.queue.durability())
        .await
        .ok()
        .and_then(Result::ok);
    let enabled = s.app.cfg.events.enabled;
    let watchdog = chrono::Duration::from_std(s.app.cfg.events.watchdog).unwrap_or_default();
    let now = chrono::Utc::now();
    let recent = |t: Option<chrono::DateTime<chrono::Utc>>| t.is_some_and(|t| now - t <= watchdog);
    let healthy = match h.state {
        SubState::Disabled | SubState::Standby | SubState::Paused => true,
        SubState::Connected => true,
        _ => recent(h.last_event_at) || recent(h.last_keepalive_at),
    } && queue.is_some();
    let alert_cfg = &s.app.cfg.alert;
    let alert = s.app.alert.snapshot();
    let body = json!({
        "enabled": enabled,
        "channel": s.app.cfg.events.channel,
        "state": h.state,
        "cursor": h.cursor.as_deref().map(hex::encode),
        "lastEventAt": h.last_event_at,
        "lastKeepaliveAt": h.last_keepalive_at,
        "eventsReceived": h.events_received,
        "eventsEnqueued": h.events_enqueued,
        "poisonEvents": h.poison_events,
        "duplicateEvents": h.duplicates,
        "reconnects": h.reconnects,
        "cursorFallbacks": h.cursor_fallbacks,
        "lastError": h.last_error,
        "dependencies": s.app.deps.to_json(),
        "paused": s.app.pauses.current().await.to_json(),
        "reconciler": *s.app.reconciler.lock().unwrap_or_else(|p| p.into_inner()),
        "redis": durability.map(|d| json!({
            "persistence": d.persistence,
            "replicas": d.replicas,
            "pushWaitsForReplica": s.app.queue.waits_for_replica().is_some(),
        })),
        "queue": queue.map(|q| json!({"pending": q.pending + q.delayed, "running": q.running, "failed": q.failed, "done": q.done})),
        "alert": {
            "firing": alert.firing,
            "failureRate": alert.failure_rate,
            "failed": alert.failed,
            "total": alert.total,
            "threshold": alert_cfg.threshold,
            "windowSecs": alert_cfg.window.as_secs(),
            "minSamples": alert_cfg.min_samples,
            "since": alert.since,
            "lastNotifiedAt": alert.last_notified_at,
            "checkedAt": alert.checked_at,
            "checks": alert.checks,
            "dependencies": alert.dependencies,
        },
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub(super) async fn metrics(State(s): State<Http>) -> Response {
    // Refreshes the `provisioner_paused` gauges (bounded, cached).
    s.app.pauses.current().await;
    let m = &s.app.metrics;
    m.change_feed_live.set(i64::from(s.app.changes.complete()));
    m.change_feed_losses
        .set(i64::try_from(s.app.changes.losses()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.app.metrics.render(),
    )
        .into_response()
}
