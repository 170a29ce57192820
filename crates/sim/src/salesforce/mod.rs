//! The simulator's Salesforce HTTP side: the routes, and the response shapes and checks every
//! resource shares (bearer authentication and API usage counting, injected REST faults, the
//! JSON error shapes, API version paths). Submodules own one surface each: [`oauth`] (token
//! endpoint, identity, userinfo), [`rest`] (`sobjects/Order/{id}` GET and PATCH, the version
//! list), [`collections`] (the sObject Collections update, `composite/sobjects`) and [`soql`]
//! (the `query` resource).
//!
//! Invariants:
//! * Every REST response (success or error) carries `Sforce-Limit-Info: api-usage=<n>/100000`;
//!   `n` counts authenticated REST calls.
//! * REST errors use Salesforce's JSON array shape `[{"message","errorCode"}]`, OAuth errors the
//!   object shape `{"error","error_description"}`.
//! * One request takes the state lock once (twice at most), briefly; no `.await` under it.

// Helpers return a finished error `Response` as their `Err`; those are cold paths, so the
// size of the variant does not matter.
#![allow(clippy::result_large_err)]

mod collections;
mod oauth;
mod rest;
mod soql;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

use crate::Simulator;
use crate::State as SimState;
use crate::ids::RecordId;

const API_LIMIT: u64 = 100_000;

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/services/oauth2/token", post(oauth::token))
        .route("/services/oauth2/userinfo", get(oauth::userinfo))
        .route("/id/{org}/{user}", get(oauth::identity))
        .route("/services/data", get(rest::versions))
        .route("/services/data/", get(rest::versions))
        .route("/services/data/{version}/query", get(soql::query))
        .route("/services/data/{version}/query/", get(soql::query))
        .route(
            "/services/data/{version}/sobjects/{object}/{id}",
            get(rest::get_record).patch(rest::patch_record),
        )
        .route(
            "/services/data/{version}/composite/sobjects",
            patch(collections::update),
        )
}

/// Holds every Salesforce request (REST and OAuth) for the configured latency
/// (`sf_latency_ms`, `sf_latency_max_ms`) before it is served.
pub(super) async fn latency(
    axum::extract::State(sim): axum::extract::State<Simulator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (delay, shutdown) = {
        let mut st = sim.0.lock();
        let (min, max) = (st.faults.sf_latency_ms, st.faults.sf_latency_max_ms);
        (
            crate::Faults::draw_latency(&mut st.rng, min, max),
            sim.0.shutdown.clone(),
        )
    };
    if !delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    next.run(request).await
}

/// Serves the request, then holds a successful answer while its kind is held: a single
/// Order's PATCH (`sf_hold_patch_answers`) or a SOQL query (`sf_hold_query_answers`). Its effects
/// are applied and counted at once; the caller learns of them when the fault is cleared (every
/// fault change wakes the wait) or the simulator shuts down.
pub(super) async fn hold(
    axum::extract::State(sim): axum::extract::State<Simulator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let held: fn(&crate::Faults) -> bool = match *request.method() {
        axum::http::Method::PATCH if path.contains("/sobjects/") => |f| f.sf_hold_patch_answers,
        axum::http::Method::GET if path.trim_end_matches('/').ends_with("/query") => {
            |f| f.sf_hold_query_answers
        }
        _ => return next.run(request).await,
    };
    let response = next.run(request).await;
    if response.status().is_success() {
        let inner = &sim.0;
        let mut changes = inner.wake.subscribe();
        while held(&inner.lock().faults) {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = inner.shutdown.cancelled() => break,
            }
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Response helpers

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    r
}

fn with_usage(mut r: Response, usage: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("api-usage={usage}/{API_LIMIT}")) {
        r.headers_mut().insert("sforce-limit-info", v);
    }
    r
}

fn rest_json(status: StatusCode, usage: u64, body: &Value) -> Response {
    with_usage(json_response(status, body), usage)
}

fn rest_error(status: StatusCode, usage: u64, code: &str, message: &str) -> Response {
    rest_json(
        status,
        usage,
        &json!([{ "message": message, "errorCode": code }]),
    )
}

fn rest_field_error(
    status: StatusCode,
    usage: u64,
    code: &str,
    message: &str,
    field: &str,
) -> Response {
    rest_json(
        status,
        usage,
        &json!([{ "message": message, "errorCode": code, "fields": [field] }]),
    )
}

const NOT_FOUND_MSG: &str = "The requested resource does not exist";

/// Fallback for every unknown path of the HTTP listener.
pub(super) async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!([{ "errorCode": "NOT_FOUND", "message": NOT_FOUND_MSG }]),
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim())
}

/// Authenticates a REST call and counts it. `Err` is the finished 401.
fn rest_auth(st: &mut SimState, headers: &HeaderMap) -> Result<u64, Response> {
    match bearer(headers) {
        Some(t) if st.tokens.contains(t) => {
            st.totals.rest_calls += 1;
            Ok(st.faults.sf_api_used.unwrap_or(st.totals.rest_calls))
        }
        _ => Err(rest_error(
            StatusCode::UNAUTHORIZED,
            st.faults.sf_api_used.unwrap_or(st.totals.rest_calls),
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )),
    }
}

/// Consumes one injected REST fault, if any is pending.
fn rest_fault(st: &mut SimState, usage: u64) -> Option<Response> {
    if st.faults.sf_request_limit {
        return Some(rest_error(
            StatusCode::FORBIDDEN,
            usage,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        ));
    }
    if st.faults.sf_lock_row_next > 0 {
        st.faults.sf_lock_row_next -= 1;
        return Some(rest_error(
            StatusCode::BAD_REQUEST,
            usage,
            "UNABLE_TO_LOCK_ROW",
            "unable to obtain exclusive access to this record or 1 records",
        ));
    }
    if st.faults.sf_unavailable_next > 0 {
        st.faults.sf_unavailable_next -= 1;
        return Some(rest_error(
            StatusCode::SERVICE_UNAVAILABLE,
            usage,
            "SERVER_UNAVAILABLE",
            "Server temporarily unavailable. Please try again later.",
        ));
    }
    None
}

fn valid_version(v: &str) -> bool {
    v.strip_prefix('v')
        .and_then(|n| n.split_once('.'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

fn order_url(version: &str, id: &RecordId) -> String {
    format!("/services/data/{version}/sobjects/Order/{id}")
}

/// Parses a Salesforce datetime (RFC 3339, or with a `+0000` style offset).
fn parse_datetime(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
}
