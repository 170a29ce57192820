//! The HTTP surface (axum on a hyper server of our own): health, readiness, subscription health,
//! Prometheus metrics, the OpenAPI document and the portal's order-status API (JSON and
//! Server-Sent Events).
//!
//! Submodules: [`orders`] (order status, auth, Salesforce lookup cache, SSE), [`view`] (recent
//! Orders' status in memory, coherent with every replica's ledger), [`watchers`] (SSE streams'
//! subscriptions by Order), [`health`]
//! (readiness, subscription health, metrics), [`admin`] (operator dashboard), [`limit`]
//! (per-client and per-Account rate limits), [`server`] (accept loop with connection cap,
//! header-read and idle timeouts, and graceful shutdown).
//!
//! Invariants:
//! - Order status is served from the in-memory view or the ledger for every Order the service
//!   knows: zero Salesforce calls. Unknown Orders are looked up in Salesforce once, cached for
//!   `order_lookup_cache_secs` (failures for `order_lookup_error_cache_secs`); concurrent
//!   lookups of one id share a single call. Lookups stay within a budget (global rate and
//!   concurrency, per Account, and none while the org's API usage is high); beyond it the
//!   answer is 503 with `Retry-After`, never a Salesforce call.
//! - An Order of another Account and an unknown Order get the same 404 body, so ids cannot be
//!   probed. Ids are validated (15/18 characters) before anything else touches them.
//! - Responses carry an `ETag`; a matching `If-None-Match` gets an empty 304.
//! - Every request has a request id (a sane client `x-request-id`, or a generated UUID), echoed
//!   in the response and carried by the span of every log line the request produces.
//! - `/api` is rate limited per client address and per Account; health, metrics and the
//!   OpenAPI document are not.
//! - With `INTERNAL_HTTP_ADDR` set, health, metrics and the dashboard are served only on that
//!   listener ([`Surface::Internal`]) and the public one serves `/api` and the OpenAPI
//!   document; without it one listener serves everything.
//! - Every response carries `X-Content-Type-Options: nosniff`.
//! - A 5xx is logged as a failed response, except a 503 from `/health/…` (the answer probes poll
//!   for during start-up and outages; the daemon logs the cause itself, not once per probe).
//! - A failed Order's `error.message` is the customer-safe text configured for its code,
//!   never the raw WHMCS or Salesforce message.
//! - No handler logs or returns a secret or token. The served OpenAPI document is
//!   `docs/openapi.json`, checked against real responses by the integration tests.

mod admin;
mod health;
mod limit;
mod orders;
mod server;
mod view;
mod watchers;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::{
    classify::{
        ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos,
        ServerErrorsAsFailures, ServerErrorsFailureClass,
    },
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};

use crate::state::AppState;

pub use server::{serve, serve_surface};

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `HTTP_ADDR`: `/api` and the OpenAPI document, plus everything else when no internal
    /// listener is configured.
    Public,
    /// `INTERNAL_HTTP_ADDR`: health, metrics and the operator dashboard.
    Internal,
}

/// The OpenAPI 3.1 document of this API (`GET /openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Largest request body accepted (the API takes none; this bounds what a client can push).
const MAX_BODY: usize = 64 * 1024;

/// Shared HTTP state: one `Arc`, since axum clones the state for every request.
#[derive(Clone)]
struct Http(Arc<HttpState>);

impl std::ops::Deref for Http {
    type Target = HttpState;
    fn deref(&self) -> &HttpState {
        &self.0
    }
}

struct HttpState {
    app: Arc<AppState>,
    /// Recent Orders' status as served (see [`view`]).
    view: view::View,
    /// The SSE streams' subscriptions to their Orders' changes (see [`watchers`]).
    watchers: watchers::Watchers,
    auth: Option<Arc<orders::Auth>>,
    lookups: Arc<orders::Lookups>,
    sse: Arc<Semaphore>,
    /// Open event streams by Account.
    sse_accounts: orders::StreamsByAccount,
    limits: Arc<limit::Limits>,
    /// Cancelled when the daemon shuts down: ends SSE streams.
    shutdown: CancellationToken,
}

/// Builds the routes of one listener with their state, without the layers every request passes
/// through ([`layered`] adds those); SSE streams end when `shutdown` is cancelled.
pub fn surface_router(app: AppState, surface: Surface, shutdown: CancellationToken) -> Router {
    let http = &app.cfg.http;
    let split = http.internal_addr.is_some();
    let limits = Arc::new(limit::Limits::new(
        http.rate_limit,
        http.account_rate_limit,
        http.trusted_proxies.clone(),
    ));
    let cors = cors_layer(&http.cors_allowed_origins);
    let state = Http(Arc::new(HttpState {
        view: view::View::new(&app.changes),
        watchers: watchers::Watchers::new(&app.changes),
        auth: orders::Auth::from_config(&http.auth).map(Arc::new),
        lookups: Arc::new(orders::Lookups::new(http)),
        sse: Arc::new(Semaphore::new(http.sse_max_clients)),
        sse_accounts: orders::StreamsByAccount::default(),
        limits,
        shutdown,
        app: Arc::new(app),
    }));
    let mut api = Router::new()
        .route("/api/orders/{id}", get(orders::status))
        .route("/api/orders/{id}/events", get(orders::events));
    // With both rate limits off (0), requests skip the limiter's middleware altogether.
    if state.limits.any() {
        api = api.route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit::enforce,
        ));
    }
    if let Some(cors) = cors {
        api = api.layer(cors);
    }
    let internal = Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/health/ready", get(health::ready))
        .route("/health/sf-events", get(health::sf_events))
        .route("/metrics", get(health::metrics))
        .merge(admin::routes((*state.app).clone()));
    let public = Router::new()
        .route("/openapi.json", get(openapi))
        .merge(api);
    let routes = match (surface, split) {
        (Surface::Public, false) => public.merge(internal),
        (Surface::Public, true) => public,
        (Surface::Internal, _) => internal,
    };
    routes.with_state(state)
}

/// `router` wrapped in the layers every request passes through, outermost first: the
/// `nosniff` header, the request id (a client's unusable one dropped, a missing one generated),
/// the request's span and log, the request id echoed, the body limit, the 30 s timeout.
///
/// They wrap the router once, around it, rather than through `Router::layer`, which wraps
/// every route: axum then clones a boxed copy of the whole stack for each request and boxes the
/// response body again at each layer.
pub fn layered(
    router: Router,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::http::Response<
        impl http_body::Body<Data = axum::body::Bytes, Error = axum::Error> + Send + Unpin + 'static,
    >,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(tower::util::MapRequestLayer::new(drop_unusable_request_id))
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(
            TraceLayer::new(HealthAnswers).make_span_with(|req: &axum::http::Request<_>| {
                let rid = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request.id = %rid)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .service(router)
}

/// Request ids for requests that bring none: random UUIDs (v4) drawn from the thread's
/// generator, not the system's (`MakeRequestUuid` makes one `getrandom` system call per
/// request). They name a request in the logs; nothing secret depends on them.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
            .ok()
            .map(RequestId::new)
    }
}

/// What the request log counts as a failed response (logged at error level): a 5xx, except a
/// 503 from `/health/…`, which is the answer "not ready / not connected" that probes poll for
/// during start-up and outages (the daemon logs the cause itself, once, not once per probe).
#[derive(Clone, Copy)]
struct HealthAnswers;

impl MakeClassifier for HealthAnswers {
    type Classifier = FailedResponses;
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn make_classifier<B>(&self, req: &axum::http::Request<B>) -> FailedResponses {
        FailedResponses {
            health: req.uri().path().starts_with("/health/"),
        }
    }
}

/// [`HealthAnswers`]' verdict on one response.
#[derive(Clone, Copy)]
struct FailedResponses {
    health: bool,
}

impl ClassifyResponse for FailedResponses {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if self.health && res.status() == StatusCode::SERVICE_UNAVAILABLE {
            ClassifiedResponse::Ready(Ok(()))
        } else {
            ServerErrorsAsFailures::new().classify_response(res)
        }
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        ServerErrorsAsFailures::new().classify_error(error)
    }
}

/// A client's `x-request-id` is kept only if it is short and plain (it ends up in every log
/// line of the request); otherwise it is dropped and a UUID generated instead.
fn drop_unusable_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let usable = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    };
    if req
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !usable(v))
    {
        req.headers_mut().remove("x-request-id");
    }
    req
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::IF_NONE_MATCH,
                header::CACHE_CONTROL,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::ETAG,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// A JSON error body `{"error": kind, "message": message}`.
fn error(code: StatusCode, kind: &str, message: &str) -> Response {
    (code, Json(json!({"error": kind, "message": message}))).into_response()
}

/// An error that asks the client to come back after `retry_after`.
fn retry_later(code: StatusCode, kind: &str, message: &str, retry_after: Duration) -> Response {
    let mut r = error(code, kind, message);
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        OPENAPI_JSON,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_json_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for path in [
            "/health/live",
            "/health/ready",
            "/health/sf-events",
            "/metrics",
            "/openapi.json",
            "/api/orders/{sfOrderId}",
            "/api/orders/{sfOrderId}/events",
        ] {
            assert!(doc["paths"][path]["get"].is_object(), "{path} undocumented");
        }
    }

    #[test]
    fn health_probes_answered_503_are_not_logged_as_failures() {
        let verdict = |path: &str, status: StatusCode| {
            let req = axum::http::Request::get(path).body(()).expect("request");
            let res = axum::http::Response::builder()
                .status(status)
                .body(())
                .expect("response");
            match HealthAnswers.make_classifier(&req).classify_response(&res) {
                ClassifiedResponse::Ready(r) => r.is_ok(),
                ClassifiedResponse::RequiresEos(_) => unreachable!("never waits for the end"),
            }
        };
        for path in ["/health/ready", "/health/sf-events"] {
            assert!(verdict(path, StatusCode::SERVICE_UNAVAILABLE), "{path}");
            assert!(!verdict(path, StatusCode::INTERNAL_SERVER_ERROR), "{path}");
        }
        assert!(!verdict("/api/orders/x", StatusCode::SERVICE_UNAVAILABLE));
        assert!(!verdict("/metrics", StatusCode::SERVICE_UNAVAILABLE));
        assert!(!verdict("/healthz/ready", StatusCode::SERVICE_UNAVAILABLE));
        assert!(verdict("/api/orders/x", StatusCode::NOT_FOUND));
    }

    #[test]
    fn generated_request_ids_are_distinct_v4_uuids() {
        let req = axum::http::Request::new(());
        let mut make = RandomRequestId;
        let ids: std::collections::HashSet<String> = (0..100)
            .map(|_| {
                let id = make.make_request_id(&req).expect("id");
                let text = id.header_value().to_str().expect("ascii").to_owned();
                let uuid = uuid::Uuid::parse_str(&text).expect("uuid");
                assert_eq!(uuid.get_version_num(), 4, "{text}");
                text
            })
            .collect();
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let r = retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "slow down",
            Duration::from_millis(1200),
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "x",
            "y",
            Duration::from_millis(0),
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
