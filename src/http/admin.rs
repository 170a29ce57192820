//! The operator dashboard: a small server-rendered page at `/admin` and its data as JSON at
//! `/admin/api/summary` — subscription state, cursor, queue depth, the failure rate over the
//! alert's window, Orders by state and the most recent Orders with their errors — and one page
//! per Order at `/admin/orders/{id}` (JSON: `/admin/api/orders/{id}`): its ledger row, attempts
//! and the timeline of its external steps (the audit trail). Every Order id in a list links to
//! its page. The pages reload themselves every few seconds (meta refresh; they run no script).
//!
//! Invariants:
//! - Disabled unless `ADMIN_TOKEN` is set: without it no `/admin` route exists (404).
//! - Every response needs the token: `Authorization: Bearer <token>`, or a session cookie
//!   obtained through the login form (`POST /admin/login`). A token in the URL is never
//!   accepted (URLs end up in proxy logs and browser history). The cookie is
//!   `HttpOnly; SameSite=Strict; Path=/admin`, `Secure` unless the client is on loopback, and
//!   holds an HS256-signed session (12 h) whose key is derived from the token (HMAC-SHA256 with
//!   a fixed context), never the token itself. Rotating the token ends every session;
//!   `POST /admin/logout` clears the cookie.
//! - Tokens are compared in constant time (`subtle`, over SHA-256 digests so the length does
//!   not leak either) and never logged (the request span records only the path).
//! - Failed sign-ins (form or bearer) are limited per client address: after
//!   [`MAX_FAILED_LOGINS`] within [`FAILED_LOGIN_WINDOW`] every attempt answers 429 until the
//!   window has passed.
//! - Read-only apart from the session: no handler changes anything else.
//! - The HTML is built with `maud`, which escapes every dynamic value by construction; the
//!   page's CSP allows no script, no framing and no external resource.
//! - The failure rate uses the alert's own settings (`ALERT_WINDOW_SECS`,
//!   `ALERT_FAILURE_RATE_THRESHOLD`, `ALERT_MIN_SAMPLES`), so the page and the alert agree.
//! - Each data source is read with a timeout; one that fails is shown as unavailable instead
//!   of failing the page.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{ConnectInfo, FromRequestParts, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    ids::SalesforceId,
    ledger::{AttemptRecord, OrderRecord, OrderState, StepRecord},
    queue::QueueStats,
    state::AppState,
    status::SubState,
};

/// Name of the session cookie.
pub const COOKIE: &str = "provisioner_admin";
/// Lifetime of a dashboard session, in seconds.
const SESSION_SECS: i64 = 12 * 3600;
/// Seconds between page reloads.
pub const REFRESH_SECS: u32 = 5;
/// Orders shown in the recent-orders table.
const RECENT_ORDERS: i64 = 50;
/// Timeout of each data source read.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed sign-ins one client address may make per [`FAILED_LOGIN_WINDOW`].
pub const MAX_FAILED_LOGINS: u32 = 5;
/// The window of [`MAX_FAILED_LOGINS`].
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Context of the session key's derivation from the admin token.
const SESSION_KEY_CONTEXT: &[u8] = b"provisioner admin session cookie v1";

const STATES: [&str; OrderState::ALL.len()] = {
    let mut out = [""; OrderState::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = OrderState::ALL[i].as_str();
        i += 1;
    }
    out
};

#[derive(Clone)]
struct Dash {
    app: AppState,
    /// SHA-256 of the admin token: what candidates are compared with.
    token_digest: [u8; 32],
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    failures: Arc<FailedLogins>,
}

/// The session-signing key: HMAC-SHA256 of a fixed context, keyed by the admin token. Knowing
/// a session (or this key) reveals nothing about the token.
fn session_key(token: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(SESSION_KEY_CONTEXT);
    mac.finalize().into_bytes().into()
}

/// The dashboard's routes, or none at all (404) when `ADMIN_TOKEN` is empty. Generic over the
/// outer router's state so it merges into any router.
pub fn routes<S>(app: AppState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let Some(token) = app.cfg.admin_token.clone() else {
        return Router::new();
    };
    let key = session_key(token.expose_secret().as_bytes());
    let dash = Dash {
        app,
        token_digest: Sha256::digest(token.expose_secret().as_bytes()).into(),
        encoding: Arc::new(EncodingKey::from_secret(&key)),
        decoding: Arc::new(DecodingKey::from_secret(&key)),
        failures: Arc::new(FailedLogins::default()),
    };
    Router::new()
        .route("/admin", get(page))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/summary", get(summary_json))
        .route("/admin/orders/{id}", get(order_page))
        .route("/admin/api/orders/{id}", get(order_json))
        .with_state(dash)
}

// ── authentication ──────────────────────────────────────────────────────────────────────────

#[derive(Debug, Serialize, Deserialize)]
struct Session {
    sub: String,
    iat: i64,
    exp: i64,
}

const SESSION_SUBJECT: &str = "provisioner-admin";

/// The client's address (the TCP peer), when the server recorded it.
struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

impl Peer {
    /// The key failed sign-ins are counted under (an unknown peer shares one).
    fn ip(&self) -> IpAddr {
        self.0
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical())
    }

    fn is_loopback(&self) -> bool {
        self.0.is_some_and(|a| a.ip().to_canonical().is_loopback())
    }
}

/// Failed sign-ins by client address, in fixed windows.
#[derive(Default)]
struct FailedLogins(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl FailedLogins {
    /// `Err(retry_after)` while `ip` has used up its failures in the current window.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((start, n)) if *n >= MAX_FAILED_LOGINS => {
                let left = FAILED_LOGIN_WINDOW.saturating_sub(start.elapsed());
                if left.is_zero() { Ok(()) } else { Err(left) }
            }
            _ => Ok(()),
        }
    }

    fn record(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 10_000 {
            map.retain(|_, (start, _)| now.duration_since(*start) < FAILED_LOGIN_WINDOW);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILED_LOGIN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

fn token_matches(d: &Dash, candidate: &str) -> bool {
    let digest: [u8; 32] = Sha256::digest(candidate.trim().as_bytes()).into();
    bool::from(digest.ct_eq(&d.token_digest))
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// How a request presents itself.
enum Access {
    Granted,
    /// No credential, or an invalid session cookie.
    Missing,
    /// A wrong bearer token (counted as a failed sign-in).
    Refused,
    /// Too many failed sign-ins from this address; retry after the duration.
    Throttled(Duration),
}

fn access(d: &Dash, peer: &Peer, headers: &HeaderMap) -> Access {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if let Some(t) = bearer {
        if let Err(wait) = d.failures.check(peer.ip()) {
            return Access::Throttled(wait);
        }
        if token_matches(d, t) {
            return Access::Granted;
        }
        d.failures.record(peer.ip());
        return Access::Refused;
    }
    let Some(session) = cookie_value(headers, COOKIE) else {
        return Access::Missing;
    };
    let mut v = Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.sub = Some(SESSION_SUBJECT.into());
    v.validate_aud = false;
    v.leeway = 0;
    if jsonwebtoken::decode::<Session>(session, &d.decoding, &v).is_ok() {
        Access::Granted
    } else {
        Access::Missing
    }
}

fn session_cookie(d: &Dash, peer: &Peer) -> Option<HeaderValue> {
    let now = chrono::Utc::now().timestamp();
    let claims = Session {
        sub: SESSION_SUBJECT.into(),
        iat: now,
        exp: now + SESSION_SECS,
    };
    let jwt = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &d.encoding).ok()?;
    HeaderValue::from_str(&format!(
        "{COOKIE}={jwt}; Path=/admin; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{}",
        secure_attr(peer)
    ))
    .ok()
}

/// `; Secure` unless the client is on loopback (a browser on the host itself, over plain
/// HTTP); everyone else reaches the dashboard through TLS.
fn secure_attr(peer: &Peer) -> &'static str {
    if peer.is_loopback() { "" } else { "; Secure" }
}

/// Security headers every dashboard response carries.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn with_retry_after(mut r: Response, wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let mut r = html_response(status, render_login(message));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    harden(r)
}

fn throttled_page(wait: Duration) -> Response {
    with_retry_after(
        login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins from this address; wait a minute and try again.",
        ),
        wait,
    )
}

/// A successful login: the session cookie and a redirect to the page.
fn signed_in(d: &Dash, peer: &Peer) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/admin")]).into_response();
    if let Some(c) = session_cookie(d, peer) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    harden(r)
}

// ── data ────────────────────────────────────────────────────────────────────────────────────

/// One row of the recent-orders table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRow {
    pub sf_order_id: String,
    pub state: String,
    pub outcome: Option<String>,
    pub whmcs_order_id: Option<i64>,
    pub attempts: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub updated_at: Option<String>,
}

impl From<&OrderRecord> for OrderRow {
    fn from(o: &OrderRecord) -> Self {
        Self {
            sf_order_id: o.sf_order_id.clone(),
            state: o.state.clone(),
            outcome: o.outcome.clone(),
            whmcs_order_id: o.whmcs_order_id,
            attempts: o.attempts,
            error_code: o.error_code.clone(),
            error_message: o.error_message.clone(),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// The subscription as this process sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub enabled: bool,
    pub channel: String,
    pub state: SubState,
    /// Replay id the subscriber last stored (hex).
    pub cursor: Option<String>,
    /// The ledger's cursor row (hex, or `EARLIEST` while an operator replay request waits).
    pub stored_cursor: Option<String>,
    pub last_event_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_keepalive_at: Option<chrono::DateTime<chrono::Utc>>,
    pub events_received: u64,
    pub events_enqueued: u64,
    pub poison_events: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// Finished attempts over the alert's window, judged as the alert judges them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRate {
    /// `ALERT_WINDOW_SECS`.
    pub window_secs: u64,
    pub failed: i64,
    pub finished: i64,
    /// `failed / finished`, absent when nothing finished.
    pub rate: Option<f64>,
    /// `ALERT_FAILURE_RATE_THRESHOLD`.
    pub threshold: f64,
    /// `ALERT_MIN_SAMPLES`.
    pub min_samples: i64,
    /// Above the threshold with enough samples: what fires the alert.
    pub alert: bool,
}

impl FailureRate {
    /// The rate of `failed` of `finished` under the alert's settings.
    pub fn judge(cfg: &crate::config::AlertConfig, failed: i64, finished: i64) -> Self {
        let rate = (finished > 0).then(|| failed as f64 / finished as f64);
        Self {
            window_secs: cfg.window.as_secs(),
            failed,
            finished,
            rate,
            threshold: cfg.threshold,
            min_samples: cfg.min_samples,
            alert: finished >= cfg.min_samples && rate.is_some_and(|r| r > cfg.threshold),
        }
    }
}

/// Everything the dashboard shows; also served as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub generated_at: String,
    pub instance: String,
    pub version: &'static str,
    /// The WHMCS installation's version (`WhmcsDetails`), once read.
    pub whmcs_version: Option<String>,
    pub subscription: SubscriptionView,
    pub queue: Option<QueueStats>,
    pub failure_rate: Option<FailureRate>,
    pub orders_by_state: Option<BTreeMap<String, i64>>,
    pub recent_orders: Option<Vec<OrderRow>>,
    pub state_filter: Option<String>,
    /// Data sources that could not be read.
    pub errors: Vec<String>,
    /// Breaker state of each dependency (as in `/health/sf-events`).
    pub dependencies: serde_json::Value,
    /// Operator pauses (as in `/health/sf-events`).
    pub paused: serde_json::Value,
}

async fn read<T, E: std::fmt::Display>(
    what: &str,
    errors: &mut Vec<String>,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(READ_TIMEOUT, f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(source = what, error.message = %e, "dashboard: data source failed");
            errors.push(format!("{what} unavailable"));
            None
        }
        Err(_) => {
            errors.push(format!("{what} timed out"));
            None
        }
    }
}

/// Gathers the summary; `state_filter` must be a ledger state (anything else is ignored).
pub async fn summary(app: &AppState, state_filter: Option<&str>) -> Summary {
    let filter = state_filter.filter(|s| STATES.contains(s));
    let mut errors = Vec::new();
    let h = app.health.snapshot();
    let channel = app.cfg.events.channel.clone();
    let queue = read("queue", &mut errors, app.queue.stats()).await;
    let stored = read("cursor", &mut errors, app.ledger.cursor_row(&channel))
        .await
        .flatten()
        .map(|c| c.replay_id);
    let since = crate::ledger::now_ms() - app.cfg.alert.window.as_millis() as i64;
    let failure_rate = read(
        "failure rate",
        &mut errors,
        app.ledger.outcome_counts_since(since),
    )
    .await
    .map(|(failed, finished)| FailureRate::judge(&app.cfg.alert, failed, finished));
    let orders_by_state = read("orders", &mut errors, app.ledger.counts_by_state()).await;
    let recent_orders = read(
        "recent orders",
        &mut errors,
        app.ledger.list(filter, RECENT_ORDERS),
    )
    .await
    .map(|v| v.iter().map(OrderRow::from).collect());
    Summary {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        instance: app.instance.clone(),
        version: env!("CARGO_PKG_VERSION"),
        whmcs_version: app.whmcs.known_version(),
        subscription: SubscriptionView {
            enabled: app.cfg.events.enabled,
            channel,
            state: h.state,
            cursor: h.cursor.as_deref().map(hex::encode),
            stored_cursor: stored,
            last_event_at: h.last_event_at,
            last_keepalive_at: h.last_keepalive_at,
            events_received: h.events_received,
            events_enqueued: h.events_enqueued,
            poison_events: h.poison_events,
            reconnects: h.reconnects,
            last_error: h.last_error,
        },
        queue,
        failure_rate,
        orders_by_state,
        recent_orders,
        state_filter: filter.map(str::to_owned),
        errors,
        dependencies: app.deps.to_json(),
        paused: app.pauses.current().await.to_json(),
    }
}

// ── handlers ────────────────────────────────────────────────────────────────────────────────

/// Query of the page and the JSON summary. Anything else (a `token` in particular) is ignored.
#[derive(Debug, Deserialize)]
struct PageQuery {
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn page(
    State(d): State<Dash>,
    peer: Peer,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let filter = q.state.as_deref().filter(|s| STATES.contains(s));
    match access(&d, &peer, &headers) {
        Access::Granted => {}
        Access::Throttled(wait) => return throttled_page(wait),
        Access::Refused => {
            return login_page(StatusCode::UNAUTHORIZED, "That token is not valid.");
        }
        Access::Missing => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                "Sign in with the admin token (ADMIN_TOKEN).",
            );
        }
    }
    let s = summary(&d.app, filter).await;
    harden(html_response(StatusCode::OK, render_page(&s)))
}

async fn login(State(d): State<Dash>, peer: Peer, Form(f): Form<LoginForm>) -> Response {
    if let Err(wait) = d.failures.check(peer.ip()) {
        return throttled_page(wait);
    }
    if token_matches(&d, &f.token) {
        signed_in(&d, &peer)
    } else {
        d.failures.record(peer.ip());
        tracing::warn!(peer = ?peer.0, "dashboard: failed sign-in");
        login_page(StatusCode::UNAUTHORIZED, "That token is not valid.")
    }
}

/// `POST /admin/logout`: clears the session cookie and shows the login form.
async fn logout(peer: Peer) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/admin")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure_attr(&peer)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    harden(r)
}

async fn summary_json(
    State(d): State<Dash>,
    peer: Peer,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let error = |status: StatusCode, kind: &str, message: &str| {
        (
            status,
            Json(serde_json::json!({"error": kind, "message": message})),
        )
            .into_response()
    };
    match access(&d, &peer, &headers) {
        Access::Granted => {}
        Access::Throttled(wait) => {
            return harden(with_retry_after(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many failed sign-ins from this address",
                ),
                wait,
            ));
        }
        Access::Missing | Access::Refused => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A valid admin token is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return harden(r);
        }
    }
    harden(Json(summary(&d.app, q.state.as_deref()).await).into_response())
}

/// One Order as its page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub sf_order_id: String,
    pub order: Option<OrderRecord>,
    pub attempts: Option<Vec<AttemptRecord>>,
    /// The external steps, oldest first.
    pub steps: Option<Vec<StepRecord>>,
    pub errors: Vec<String>,
}

/// Gathers one Order's page; `None` when the ledger knows nothing of it.
pub async fn order_view(app: &AppState, id: &SalesforceId) -> Option<OrderView> {
    let mut errors = Vec::new();
    let order = read("order", &mut errors, app.ledger.get(id))
        .await
        .flatten();
    let attempts = read("attempts", &mut errors, app.ledger.attempts(id)).await;
    let steps = read("steps", &mut errors, app.ledger.steps(id)).await;
    let known = order.is_some()
        || attempts.as_ref().is_some_and(|a| !a.is_empty())
        || steps.as_ref().is_some_and(|s| !s.is_empty());
    (known || !errors.is_empty()).then(|| OrderView {
        sf_order_id: id.to_string(),
        order,
        attempts,
        steps,
        errors,
    })
}

/// The answer to a request without access, as HTML (`html`) or JSON.
fn denied(access: Access, html: bool) -> Option<Response> {
    let json_error = |status: StatusCode, kind: &str, message: &str| {
        (
            status,
            Json(serde_json::json!({"error": kind, "message": message})),
        )
            .into_response()
    };
    match access {
        Access::Granted => None,
        Access::Throttled(wait) if html => Some(throttled_page(wait)),
        Access::Throttled(wait) => Some(harden(with_retry_after(
            json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many failed sign-ins from this address",
            ),
            wait,
        ))),
        Access::Refused if html => Some(login_page(
            StatusCode::UNAUTHORIZED,
            "That token is not valid.",
        )),
        Access::Missing if html => Some(login_page(
            StatusCode::UNAUTHORIZED,
            "Sign in with the admin token (ADMIN_TOKEN).",
        )),
        Access::Missing | Access::Refused => {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A valid admin token is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(harden(r))
        }
    }
}

async fn order_page(
    State(d): State<Dash>,
    peer: Peer,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = denied(access(&d, &peer, &headers), true) {
        return r;
    }
    let not_found = |message: &str| {
        harden(html_response(
            StatusCode::NOT_FOUND,
            render_not_found(message),
        ))
    };
    let Ok(id) = SalesforceId::parse(raw.trim()) else {
        return not_found("That is not a Salesforce Order id.");
    };
    match order_view(&d.app, &id).await {
        Some(v) => harden(html_response(StatusCode::OK, render_order(&v))),
        None => not_found("The ledger knows no such Order."),
    }
}

async fn order_json(
    State(d): State<Dash>,
    peer: Peer,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = denied(access(&d, &peer, &headers), false) {
        return r;
    }
    let not_found = |message: &str| {
        harden(
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "not_found", "message": message})),
            )
                .into_response(),
        )
    };
    let Ok(id) = SalesforceId::parse(raw.trim()) else {
        return not_found("not a Salesforce Order id");
    };
    match order_view(&d.app, &id).await {
        Some(v) => harden(Json(v).into_response()),
        None => not_found("the ledger knows no such Order"),
    }
}

// ── rendering ───────────────────────────────────────────────────────────────────────────────

/// An Order id linking to its page.
fn order_link(id: &str) -> Markup {
    html! { a href={ "/admin/orders/" (id) } { (code(id)) } }
}

fn ms_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The head and header every page shares.
fn frame(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh {
                    meta http-equiv="refresh" content=(REFRESH_SECS);
                }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { a href="/admin" style="color:#fff;text-decoration:none" { "provisioner" } }
                    small {
                        form method="post" action="/admin/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn render_not_found(message: &str) -> Markup {
    frame(
        "provisioner · order",
        false,
        html! {
            section { p { (message) } p { a href="/admin" { "Back to the dashboard" } } }
        },
    )
}

/// One Order's page: ledger row, attempts, step timeline (maud escapes every dynamic value).
fn render_order(v: &OrderView) -> Markup {
    let body = html! {
        @if !v.errors.is_empty() {
            div class="errors" id="errors" { (v.errors.join(" · ")) }
        }
        section id="order" {
            h2 { "Order " (code(&v.sf_order_id)) }
            @match &v.order {
                Some(o) => (kv(&[
                    ("State", badge(&o.state)),
                    ("Outcome", html! { @if let Some(out) = &o.outcome { (badge(out)) } @else { "–" } }),
                    ("WHMCS client", html! { (o.whmcs_client_id.as_deref().unwrap_or("–")) }),
                    ("WHMCS order", html! { @if let Some(w) = o.whmcs_order_id { (w) } @else { "–" } }),
                    ("WHMCS services", html! { (o.whmcs_service_ids.as_deref().unwrap_or("–")) }),
                    ("Error", html! {
                        @if let Some(c) = &o.error_code { (code(c)) " " }
                        (o.error_message.as_deref().unwrap_or(""))
                    }),
                    ("Attempts", html! { (o.attempts) }),
                    ("Last event", html! { (code(o.last_event_id.as_deref().unwrap_or("–"))) }),
                    ("Updated", html! { (rfc3339(o.updated_at).unwrap_or_default()) }),
                ])),
                None => p { "No ledger row (no job has claimed it)." },
            }
        }
        section id="timeline" style="margin-top:14px" {
            h2 { "Timeline" }
            @match &v.steps {
                Some(steps) if steps.is_empty() => p { "No steps recorded." },
                Some(steps) => table {
                    thead {
                        tr {
                            th { "Started" } th { "Step" } th { "Duration" } th { "Outcome" }
                            th { "Attempt" } th { "Job" } th { "WHMCS client" } th { "WHMCS order" }
                            th { "Error" }
                        }
                    }
                    tbody {
                        @for st in steps {
                            tr class="step" data-step=(st.step) {
                                td { (ms_time(st.started_at)) }
                                td { (code(&st.step)) }
                                td { (st.duration_ms) " ms" }
                                td { (badge(if st.outcome == "ok" { "done" } else { "failed" })) " " (st.outcome) }
                                td { @if let Some(a) = st.attempt_id { (a) } }
                                td { (code(st.job_id.as_deref().unwrap_or(""))) }
                                td { (st.whmcs_client_id.as_deref().unwrap_or("")) }
                                td { @if let Some(w) = st.whmcs_order_id { (w) } }
                                td class="err" {
                                    @if let Some(c) = &st.error_code { (code(c)) " " }
                                    (st.error_message.as_deref().unwrap_or(""))
                                }
                            }
                        }
                    }
                },
                None => p { "unavailable" },
            }
        }
        section id="attempts" style="margin-top:14px" {
            h2 { "Attempts" }
            @match &v.attempts {
                Some(a) if a.is_empty() => p { "None." },
                Some(a) => table {
                    thead {
                        tr { th { "#" } th { "Event / job" } th { "Started" } th { "Finished" } th { "Outcome" } th { "Error" } }
                    }
                    tbody {
                        @for at in a {
                            tr {
                                td { (at.id) }
                                td { (code(at.event_id.as_deref().unwrap_or(""))) }
                                td { (ms_time(at.started_at)) }
                                td { (at.finished_at.map(ms_time).unwrap_or_else(|| "running".into())) }
                                td { (at.outcome.as_deref().unwrap_or("")) }
                                td class="err" {
                                    @if let Some(c) = &at.error_code { (code(c)) " " }
                                    (at.error_message.as_deref().unwrap_or(""))
                                }
                            }
                        }
                    }
                },
                None => p { "unavailable" },
            }
        }
    };
    frame(
        &format!("provisioner · order {}", v.sf_order_id),
        true,
        body,
    )
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match t {
        Some(t) => {
            let age = (chrono::Utc::now() - t).num_seconds().max(0);
            format!(
                "{} ({age} s ago)",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        }
        None => "never".into(),
    }
}

/// A duration as operators read it: "15 min", "1 h", "90 s".
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s % 3600 == 0 {
        format!("{} h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn sub_state_name(s: SubState) -> &'static str {
    match s {
        SubState::Connecting => "connecting",
        SubState::Connected => "connected",
        SubState::Backoff => "backoff",
        SubState::Disabled => "disabled",
        SubState::Standby => "standby",
        SubState::Paused => "paused",
    }
}

/// The operator pauses in one line: `intake (by alice: reason) · provisioning (by bob)` or `no`.
fn paused_text(paused: &serde_json::Value) -> String {
    let parts: Vec<String> = ["intake", "provisioning"]
        .into_iter()
        .filter_map(|part| {
            let p = paused.get(part).filter(|p| !p.is_null())?;
            let by = p.get("by").and_then(|v| v.as_str()).unwrap_or("?");
            Some(match p.get("reason").and_then(|v| v.as_str()) {
                Some(r) => format!("{part} (by {by}: {r})"),
                None => format!("{part} (by {by})"),
            })
        })
        .collect();
    if parts.is_empty() {
        "no".into()
    } else {
        parts.join(" · ")
    }
}

fn badge_class(state: &str) -> &'static str {
    match state {
        "done" | "connected" | "Provisioned" => "ok",
        "failed" | "Failed" | "backoff" => "bad",
        "disabled" | "standby" | "paused" => "muted",
        _ => "warn",
    }
}

fn badge(text: &str) -> Markup {
    html! { span class={ "badge " (badge_class(text)) } { (text) } }
}

fn kv(rows: &[(&str, Markup)]) -> Markup {
    html! {
        dl {
            @for (k, v) in rows {
                dt { (k) }
                dd { (v) }
            }
        }
    }
}

fn code(text: &str) -> Markup {
    html! { code { (text) } }
}

const CSS: &str = "\
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,'DejaVu Sans',sans-serif;\
background:#f4f6f9;color:#1d2733}header{background:#1d3557;color:#fff;padding:14px 24px;display:flex;\
justify-content:space-between;align-items:baseline}header h1{margin:0;font-size:20px}header small{opacity:.8}\
header form{display:inline;margin-left:12px}header button{font-size:12px}\
main{padding:18px 24px}.grid{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:14px}\
section{background:#fff;border:1px solid #d8dee6;border-radius:6px;padding:12px 16px}\
h2{font-size:13px;text-transform:uppercase;letter-spacing:.05em;color:#52606d;margin:0 0 8px}\
dl{display:grid;grid-template-columns:auto 1fr;gap:3px 12px;margin:0}dt{color:#52606d}\
dd{margin:0;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}\
.big{font-size:30px;font-weight:600}.badge{display:inline-block;padding:1px 8px;border-radius:10px;\
font-size:12px;font-weight:600}.ok{background:#d3f4dc;color:#14532d}.bad{background:#fde2e1;color:#8a1c1c}\
.warn{background:#fff1c2;color:#6b4e00}.muted{background:#e6e9ee;color:#3e4c59}\
.alert{border-color:#e5484d;background:#fff5f5}table{width:100%;border-collapse:collapse;margin-top:6px}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e4e8ee;vertical-align:top}\
th{font-size:12px;color:#52606d;text-transform:uppercase}td.err{color:#8a1c1c;max-width:460px;\
overflow-wrap:anywhere}code{font-size:12px}.filters a{margin-right:10px}.errors{background:#fde2e1;\
color:#8a1c1c;padding:8px 12px;border-radius:6px;margin-bottom:12px}\
.login{max-width:420px;margin:80px auto;background:#fff;padding:24px;border:1px solid #d8dee6;border-radius:6px}\
.login input{display:block;width:100%;margin:6px 0 12px;padding:6px}";

/// The sign-in form.
pub fn render_login(message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "provisioner · sign in" }
                style { (PreEscaped(CSS)) }
            }
            body {
                main class="login" {
                    h1 { "provisioner" }
                    p { (message) }
                    form method="post" action="/admin/login" {
                        label {
                            "Admin token "
                            input type="password" name="token" autocomplete="current-password" autofocus;
                        }
                        button type="submit" { "Open dashboard" }
                    }
                }
            }
        }
    }
}

/// Renders the page (maud escapes every dynamic value).
fn render_page(s: &Summary) -> Markup {
    let sub = &s.subscription;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "provisioner · operations" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "provisioner" }
                    small {
                        "instance " (code(&s.instance)) " · v" (s.version)
                        " · WHMCS " (s.whmcs_version.as_deref().unwrap_or("version unknown"))
                        " · " (s.generated_at)
                        " · refreshes every " (REFRESH_SECS) " s"
                        form method="post" action="/admin/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if !s.errors.is_empty() {
                        div class="errors" id="errors" { (s.errors.join(" · ")) }
                    }
                    div class="grid" {
                        section id="subscription" {
                            h2 { "Subscription" }
                            (kv(&[
                                ("State", badge(sub_state_name(sub.state))),
                                ("Channel", code(&sub.channel)),
                                ("Cursor", code(sub.cursor.as_deref().unwrap_or("none"))),
                                ("Stored", code(sub.stored_cursor.as_deref().unwrap_or("none"))),
                                ("Last event", html! { (when(sub.last_event_at)) }),
                                ("Keepalive", html! { (when(sub.last_keepalive_at)) }),
                                ("Events", html! {
                                    (sub.events_received) " received · " (sub.events_enqueued)
                                    " enqueued · " (sub.poison_events) " poison"
                                }),
                                ("Reconnects", html! { (sub.reconnects) }),
                                ("Paused", html! { (paused_text(&s.paused)) }),
                                ("Last error", html! { (sub.last_error.as_deref().unwrap_or("none")) }),
                            ]))
                        }
                        section id="queue" {
                            h2 { "Queue" }
                            @match &s.queue {
                                Some(q) => {
                                    div class="big" { (q.pending + q.delayed) }
                                    div { "waiting" }
                                    (kv(&[
                                        ("Ready", html! { (q.pending) }),
                                        ("Delayed", html! { (q.delayed) }),
                                        ("Running", html! { (q.running) }),
                                        ("Failed", html! { (q.failed) }),
                                        ("Done", html! { (q.done) }),
                                        ("Workers", html! { (q.workers) }),
                                    ]))
                                }
                                None => p { "unavailable" },
                            }
                        }
                        @match &s.failure_rate {
                            Some(f) => section id="failure-rate" class=[f.alert.then_some("alert")] {
                                h2 { "Failure rate · last " (human(Duration::from_secs(f.window_secs))) }
                                div class="big" {
                                    @match f.rate {
                                        Some(r) => (format!("{:.1} %", r * 100.0)),
                                        None => "–",
                                    }
                                }
                                div {
                                    (f.failed) " failed of " (f.finished) " finished"
                                    @if f.alert {
                                        " · above " (format!("{:.1}", f.threshold * 100.0)) " %"
                                    }
                                }
                            },
                            None => section id="failure-rate" {
                                h2 { "Failure rate" }
                                p { "unavailable" }
                            },
                        }
                        section id="orders-by-state" {
                            h2 { "Orders by state" }
                            @match &s.orders_by_state {
                                Some(m) => {
                                    dl {
                                        @for st in STATES {
                                            dt { (st) }
                                            dd {
                                                a href={ "/admin?state=" (st) } {
                                                    (m.get(st).copied().unwrap_or(0))
                                                }
                                            }
                                        }
                                    }
                                }
                                None => p { "unavailable" },
                            }
                        }
                    }
                    section id="orders" style="margin-top:14px" {
                        h2 {
                            "Recent orders"
                            @if let Some(f) = &s.state_filter { " · state " (f) }
                        }
                        div class="filters" {
                            "Filter: "
                            a href="/admin" { "all" }
                            @for st in STATES {
                                a href={ "/admin?state=" (st) } { (st) }
                            }
                        }
                        @match &s.recent_orders {
                            Some(orders) if orders.is_empty() => p { "No orders yet." },
                            Some(orders) => table {
                                thead {
                                    tr {
                                        th { "Order" } th { "State" } th { "Outcome" }
                                        th { "WHMCS order" } th { "Attempts" } th { "Updated" }
                                        th { "Error" }
                                    }
                                }
                                tbody {
                                    @for o in orders {
                                        tr class="order" data-state=(o.state) {
                                            td { (order_link(&o.sf_order_id)) }
                                            td { (badge(&o.state)) }
                                            td { @if let Some(out) = &o.outcome { (badge(out)) } }
                                            td { @if let Some(w) = o.whmcs_order_id { (w) } }
                                            td { (o.attempts) }
                                            td { (o.updated_at.as_deref().unwrap_or("")) }
                                            td class="err" {
                                                @if let Some(c) = &o.error_code { (code(c)) " " }
                                                @if let Some(m) = &o.error_message { (m) }
                                            }
                                        }
                                    }
                                }
                            },
                            None => p { "unavailable" },
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            generated_at: "2026-01-01T00:00:00Z".into(),
            instance: "host-1".into(),
            version: "0.1.0",
            whmcs_version: Some("8.13.1".into()),
            subscription: SubscriptionView {
                enabled: true,
                channel: "/event/OrderProvisionRequested__e".into(),
                state: SubState::Connected,
                cursor: Some("00ff".into()),
                stored_cursor: Some("00ff".into()),
                last_event_at: None,
                last_keepalive_at: None,
                events_received: 3,
                events_enqueued: 3,
                poison_events: 0,
                reconnects: 1,
                last_error: Some("<img src=x onerror=alert(1)>".into()),
            },
            queue: Some(QueueStats::default()),
            failure_rate: Some(FailureRate {
                window_secs: 900,
                failed: 1,
                finished: 4,
                rate: Some(0.25),
                threshold: 0.1,
                min_samples: 3,
                alert: true,
            }),
            orders_by_state: Some(BTreeMap::from([("failed".to_owned(), 1)])),
            recent_orders: Some(vec![OrderRow {
                sf_order_id: "801000000000001AAA".into(),
                state: "failed".into(),
                outcome: Some("Failed".into()),
                whmcs_order_id: None,
                attempts: 1,
                error_code: Some("WHMCS_ERROR".into()),
                error_message: Some("<script>alert('x')</script> & \"quoted\"".into()),
                updated_at: Some("2026-01-01T00:00:00Z".into()),
            }]),
            state_filter: None,
            errors: vec![],
            dependencies: serde_json::Value::Null,
            paused: serde_json::json!({"intake": null, "provisioning": null}),
        }
    }

    #[test]
    fn everything_dynamic_is_escaped() {
        let html = render_page(&sample()).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&lt;script&gt;alert("), "{html}");
        assert!(
            html.contains("&lt;/script&gt; &amp; &quot;quoted&quot;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(html.contains("801000000000001AAA"));
        assert!(html.contains("25.0 %") && html.contains("class=\"alert\""));
        assert!(
            html.contains("last 15 min") && html.contains("above 10.0 %"),
            "{html}"
        );
        assert!(html.contains(&format!(
            "http-equiv=\"refresh\" content=\"{REFRESH_SECS}\""
        )));
        assert!(html.contains("action=\"/admin/logout\""), "{html}");
        let login = render_login("<b>hi</b>").into_string();
        assert!(login.contains("&lt;b&gt;hi&lt;/b&gt;") && !login.contains("<b>"));
        assert!(login.contains("method=\"post\" action=\"/admin/login\""));
    }

    #[test]
    fn failure_rate_is_judged_like_the_alert() {
        let cfg = crate::config::AlertConfig {
            window: Duration::from_secs(900),
            threshold: 0.2,
            min_samples: 5,
            repeat_interval: Duration::from_secs(3600),
            check_interval: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(10),
        };
        // 15 % is above a fixed 10 % but below this alert's 20 %.
        let f = FailureRate::judge(&cfg, 3, 20);
        assert!(!f.alert);
        assert_eq!((f.window_secs, f.threshold), (900, 0.2));
        assert!(FailureRate::judge(&cfg, 5, 20).alert);
        // Too few samples: no alert, whatever the rate.
        assert!(!FailureRate::judge(&cfg, 4, 4).alert);
        assert!(FailureRate::judge(&cfg, 0, 0).rate.is_none());
    }

    #[test]
    fn cookie_lookup_and_session_key() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; provisioner_admin=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie_value(&h, "c"), None);
        let token = b"dashboard-token-0123456789";
        let key = session_key(token);
        assert_eq!(key, session_key(token), "stable");
        assert_ne!(key, session_key(b"dashboard-token-0123456780"));
        assert!(!key.windows(token.len()).any(|w| w == token));
        assert_ne!(&key[..], &Sha256::digest(token)[..]);
    }

    #[test]
    fn failed_logins_are_limited_per_address_and_window() {
        let f = FailedLogins::default();
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(f.check(a).is_ok());
            f.record(a);
        }
        let wait = f.check(a).expect_err("throttled");
        assert!(wait <= FAILED_LOGIN_WINDOW && !wait.is_zero());
        assert!(f.check(b).is_ok(), "other addresses are not affected");
        // Once the window has passed the address may try again.
        f.0.lock().expect("lock").get_mut(&a).expect("entry").0 -= FAILED_LOGIN_WINDOW;
        assert!(f.check(a).is_ok());
        f.record(a);
        assert!(f.check(a).is_ok(), "a new window starts with one failure");
    }

    #[test]
    fn peers_on_loopback_get_no_secure_cookie() {
        assert_eq!(
            secure_attr(&Peer(Some("127.0.0.1:5000".parse().expect("addr")))),
            ""
        );
        assert_eq!(
            secure_attr(&Peer(Some("[::1]:5000".parse().expect("addr")))),
            ""
        );
        assert_eq!(
            secure_attr(&Peer(Some(
                "[::ffff:127.0.0.1]:5000".parse().expect("addr")
            ))),
            ""
        );
        assert_eq!(
            secure_attr(&Peer(Some("192.0.2.7:5000".parse().expect("addr")))),
            "; Secure"
        );
        assert_eq!(secure_attr(&Peer(None)), "; Secure");
    }
}
