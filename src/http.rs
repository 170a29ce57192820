//! The HTTP surface (axum): health, readiness, subscription health, Prometheus metrics and the
//! portal's order-status API.
//!
//! Invariants:
//! - Order status is served from the ledger for every Order the service knows: zero Salesforce
//!   calls. Unknown Orders are looked up in Salesforce once, cached for
//!   `order_lookup_cache_secs`; concurrent lookups of one id share a single call.
//! - An Order of another Account and an unknown Order get the same 404 body, so ids cannot be
//!   probed. Ids are validated (15/18 characters) before anything else touches them.
//! - Responses carry an `ETag`; a matching `If-None-Match` gets an empty 304.
//! - No handler logs or returns a secret or token.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    app::AppState,
    config::ApiAuth,
    ids::SalesforceId,
    ledger::{OrderRecord, outcome},
    salesforce::subscriber::SubState,
};

type Lookup = Arc<OnceCell<Option<OrderView>>>;

/// Shared HTTP state.
#[derive(Clone)]
struct Http {
    /// Behind an `Arc`: axum clones the state for every request.
    app: Arc<AppState>,
    decoding: Option<Arc<(DecodingKey, Validation, String)>>,
    lookups: Arc<Mutex<HashMap<SalesforceId, (Instant, Lookup)>>>,
}

/// What the portal sees of one Order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderView {
    sf_order_id: String,
    status: String,
    activation_status: Option<String>,
    whmcs_order_id: Option<String>,
    error: Option<Value>,
    updated_at: Option<String>,
    #[serde(skip)]
    account_id: Option<String>,
}

fn ms_to_rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn from_ledger(r: &OrderRecord) -> OrderView {
    let (status, activation) = match r.outcome.as_deref() {
        Some(outcome::PROVISIONED) => ("Provisioned", "Activated"),
        Some(outcome::FAILED) => ("Failed", "Failed"),
        _ => ("Activating", "Activating"),
    };
    OrderView {
        sf_order_id: r.sf_order_id.clone(),
        status: status.into(),
        activation_status: Some(activation.into()),
        whmcs_order_id: r.whmcs_order_id.map(|v| v.to_string()),
        error: match (r.outcome.as_deref(), &r.error_code) {
            (Some(outcome::FAILED), Some(code)) => {
                Some(json!({"code": code, "message": r.error_message.clone().unwrap_or_default()}))
            }
            _ => None,
        },
        updated_at: ms_to_rfc3339(r.updated_at),
        account_id: r.account_id.clone(),
    }
}

/// Builds the router with all routes and layers.
pub fn router(app: AppState) -> Router {
    let decoding = match &app.cfg.http.auth {
        ApiAuth::Jwt {
            secret,
            account_claim,
            issuer,
            audience,
        } => {
            let mut v = Validation::new(Algorithm::HS256);
            v.set_required_spec_claims(&["exp"]);
            v.leeway = 30;
            if let Some(iss) = issuer {
                v.set_issuer(&[iss]);
            }
            match audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            Some(Arc::new((
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                v,
                account_claim.clone(),
            )))
        }
        ApiAuth::Disabled => None,
    };
    let state = Http {
        app: Arc::new(app),
        decoding,
        lookups: Arc::new(Mutex::new(HashMap::new())),
    };
    Router::new()
        .route("/health/live", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/health/ready", get(ready))
        .route("/health/sf-events", get(sf_events))
        .route("/metrics", get(metrics))
        .route("/api/orders/{id}", get(order_status))
        .with_state(state)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let rid = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request.id = %rid)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn ready(State(s): State<Http>) -> Response {
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
    });
    let code = if db_ok && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn sf_events(State(s): State<Http>) -> Response {
    let h = s.app.health.snapshot();
    let queue = s.app.queue.stats().await.ok();
    let enabled = s.app.cfg.events.enabled;
    let watchdog = chrono::Duration::from_std(s.app.cfg.events.watchdog).unwrap_or_default();
    let now = chrono::Utc::now();
    let recent = |t: Option<chrono::DateTime<chrono::Utc>>| t.is_some_and(|t| now - t <= watchdog);
    let healthy = match h.state {
        SubState::Disabled | SubState::Standby => true,
        SubState::Connected => true,
        _ => recent(h.last_event_at) || recent(h.last_keepalive_at),
    } && queue.is_some();
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
        "queue": queue.map(|q| json!({"pending": q.pending + q.delayed, "running": q.running, "failed": q.failed, "done": q.done})),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Http>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.app.metrics.render(),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "message": "Order not found"})),
    )
        .into_response()
}

fn error(code: StatusCode, kind: &str, message: &str) -> Response {
    (code, Json(json!({"error": kind, "message": message}))).into_response()
}

/// Verifies the portal JWT; returns the caller's Account id, or `None` when auth is disabled.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
fn authorize(s: &Http, headers: &HeaderMap) -> Result<Option<SalesforceId>, Response> {
    let Some(keys) = &s.decoding else {
        return Ok(None);
    };
    let unauthorized = || {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid bearer token is required",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(unauthorized)?;
    let (key, validation, claim) = &**keys;
    let data = jsonwebtoken::decode::<HashMap<String, Value>>(token.trim(), key, validation)
        .map_err(|_| unauthorized())?;
    let account = data
        .claims
        .get(claim)
        .and_then(Value::as_str)
        .and_then(|a| SalesforceId::parse(a).ok())
        .ok_or_else(unauthorized)?;
    Ok(Some(account))
}

fn etag_of(body: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("W/\"{:016x}\"", h.finish())
}

async fn order_status(
    State(s): State<Http>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let account = match authorize(&s, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(id) = SalesforceId::parse(&raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "Order ids are 15 or 18 alphanumeric characters",
        );
    };
    let view = match s.app.ledger.get(&id).await {
        Ok(Some(r)) if r.account_id.is_some() => Some(from_ledger(&r)),
        Ok(_) => match lookup(&s, &id).await {
            Ok(v) => v,
            Err(r) => return r,
        },
        Err(e) => {
            tracing::error!(error.message = %e, "ledger read failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Try again shortly",
            );
        }
    };
    let Some(view) = view else { return not_found() };
    if let Some(account) = account {
        let owner = view
            .account_id
            .as_deref()
            .and_then(|a| SalesforceId::parse(a).ok());
        if owner.as_ref() != Some(&account) {
            return not_found();
        }
    }
    let body = match serde_json::to_vec(&view) {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
    };
    let etag = etag_of(&body);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    resp
}

/// One Salesforce read per unknown Order per cache period, shared by concurrent callers.
async fn lookup(s: &Http, id: &SalesforceId) -> Result<Option<OrderView>, Response> {
    let ttl = s.app.cfg.http.lookup_cache;
    let cell = {
        let mut map = s.lookups.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 10_000 {
            map.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        }
        match map.get(id) {
            Some((at, cell)) if now.duration_since(*at) < ttl => cell.clone(),
            _ => {
                let cell: Lookup = Arc::new(OnceCell::new());
                map.insert(id.clone(), (now, cell.clone()));
                cell
            }
        }
    };
    let result = cell
        .get_or_try_init(|| async {
            match s.app.rest.get_order(id).await {
                Ok(Some(o)) => {
                    let status = match o.activation_status.as_deref() {
                        Some("Activating") => "Activating".to_owned(),
                        Some("Activated") => "Provisioned".to_owned(),
                        Some("Failed") => "Failed".to_owned(),
                        _ => o.status.clone().unwrap_or_else(|| "Unknown".into()),
                    };
                    Ok(Some(OrderView {
                        sf_order_id: o.id.to_string(),
                        status,
                        activation_status: o.activation_status.clone(),
                        whmcs_order_id: o.whmcs_order_id.clone(),
                        error: None,
                        updated_at: None,
                        account_id: o.account_id.as_ref().map(ToString::to_string),
                    }))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
    match result {
        Ok(v) => Ok(v.clone()),
        Err(e) => {
            s.lookups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            tracing::warn!(error.message = %e, "Salesforce order lookup failed");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Try again shortly",
            ))
        }
    }
}
