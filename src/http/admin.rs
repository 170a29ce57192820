//! The operator dashboard: a small server-rendered page at `/admin` and its data as JSON at
//! `/admin/api/summary` — subscription state, cursor, queue depth, the failure rate over the
//! alert's window, Orders by state and the most recent Orders with their errors — and one page
//! per Order at `/admin/orders/{id}` (JSON: `/admin/api/orders/{id}`): its ledger row, attempts
//! and the timeline of its external steps (the audit trail). Every Order id in a list links to
//! its page. The list can be filtered by state and error code (`/admin?state=failed&code=…`).
//! Charts of the last hours (Orders provisioned and failed per minute, queue depth, approval →
//! write-back latency) are drawn on the server as inline SVG. The pages reload themselves every
//! few seconds (meta refresh; they run no script) except `/admin/actions`, the operator actions:
//! pause and resume intake or provisioning, and redrive failed Orders (a dry-run preview
//! listing the matching Orders, then a confirmation), all POST forms.
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
//! - Only the action forms (`POST /admin/actions/{pause,resume,redrive}`) change anything, and
//!   only through [`crate::operator`], the code the command line runs, so they leave the same
//!   `operator_actions` entries (operator `dashboard`). Each form carries a CSRF token bound to
//!   the session (HMAC-SHA256 of the session's random id under a key derived from the admin
//!   token with its own context); a missing or wrong one answers 403 and changes nothing. The
//!   token is compared in constant time (`subtle`).
//! - The charts use the database's clock for the ledger's series; the queue depth comes from
//!   the samples this process's housekeeping loop keeps in memory.
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
    ledger::{AttemptRecord, MinuteRow, OperatorAction, OrderRecord, OrderState, StepRecord},
    operator::{self, RedriveFilter},
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
/// Context of the CSRF key's derivation from the admin token.
const CSRF_KEY_CONTEXT: &[u8] = b"provisioner admin csrf v1";
/// The operator name the dashboard's actions are recorded under.
pub const DASHBOARD_OPERATOR: &str = "dashboard";
/// How far back the charts reach.
pub const CHART_WINDOW: Duration = Duration::from_secs(3 * 3600);
/// Operator actions listed.
const RECENT_ACTIONS: i64 = 10;
/// Orders a redrive from the dashboard selects at most.
const DASHBOARD_REDRIVE_LIMIT: i64 = 1000;

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
    /// Key of the CSRF tokens (derived from the admin token).
    csrf_key: [u8; 32],
}

/// The session-signing key: HMAC-SHA256 of a fixed context, keyed by the admin token. Knowing
/// a session (or this key) reveals nothing about the token.
fn session_key(token: &[u8]) -> [u8; 32] {
    hmac_sha256(token, SESSION_KEY_CONTEXT)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data);
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
        csrf_key: hmac_sha256(token.expose_secret().as_bytes(), CSRF_KEY_CONTEXT),
    };
    Router::new()
        .route("/admin", get(page))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/summary", get(summary_json))
        .route("/admin/orders/{id}", get(order_page))
        .route("/admin/api/orders/{id}", get(order_json))
        .route("/admin/actions", get(actions_page))
        .route("/admin/actions/pause", post(pause_action))
        .route("/admin/actions/resume", post(resume_action))
        .route("/admin/actions/redrive", post(redrive_action))
        .with_state(dash)
}

// ── authentication ──────────────────────────────────────────────────────────────────────────

#[derive(Debug, Serialize, Deserialize)]
struct Session {
    sub: String,
    iat: i64,
    exp: i64,
    /// Random id of the session: what its CSRF token is bound to.
    #[serde(default)]
    sid: String,
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
    if decode_session(d, session).is_some() {
        Access::Granted
    } else {
        Access::Missing
    }
}

fn decode_session(d: &Dash, jwt: &str) -> Option<Session> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.sub = Some(SESSION_SUBJECT.into());
    v.validate_aud = false;
    v.leeway = 0;
    jsonwebtoken::decode::<Session>(jwt, &d.decoding, &v)
        .ok()
        .map(|t| t.claims)
}

/// The CSRF token of the request's credential: bound to the session's id, or to the bearer
/// token (which a browser never sends on its own). `None` without a valid credential.
fn csrf_token(d: &Dash, headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let subject = match bearer {
        Some(t) if token_matches(d, t) => "bearer".to_owned(),
        Some(_) => return None,
        None => {
            let s = decode_session(d, cookie_value(headers, COOKIE)?)?;
            format!("session:{}", s.sid)
        }
    };
    Some(hex::encode(hmac_sha256(&d.csrf_key, subject.as_bytes())))
}

/// Whether `presented` is the request's CSRF token (constant-time comparison).
fn csrf_ok(d: &Dash, headers: &HeaderMap, presented: Option<&str>) -> bool {
    match (csrf_token(d, headers), presented) {
        (Some(want), Some(got)) => bool::from(want.as_bytes().ct_eq(got.trim().as_bytes())),
        _ => false,
    }
}

fn session_cookie(d: &Dash, peer: &Peer) -> Option<HeaderValue> {
    let now = chrono::Utc::now().timestamp();
    let claims = Session {
        sub: SESSION_SUBJECT.into(),
        iat: now,
        exp: now + SESSION_SECS,
        sid: uuid::Uuid::new_v4().simple().to_string(),
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
    /// The error code the recent Orders are filtered by.
    pub code_filter: Option<String>,
    /// The most recent operator actions, newest first.
    pub operator_actions: Option<Vec<OperatorAction>>,
    /// The charts' data.
    pub charts: Option<Charts>,
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

/// The data of the charts over [`CHART_WINDOW`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Charts {
    pub window_secs: u64,
    /// The database's clock when the series were read (epoch milliseconds).
    pub now_ms: i64,
    /// Finished attempts per minute (minutes without any are absent).
    pub minutes: Vec<MinuteRow>,
    /// `(epoch milliseconds, ready + delayed jobs)`, oldest first.
    pub queue_depth: Vec<(i64, u64)>,
}

/// An error-code filter as accepted: trimmed, non-empty, at most 100 characters.
fn code_filter(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim)
        .filter(|c| !c.is_empty() && c.len() <= 100)
}

/// Gathers the summary; `state_filter` must be a ledger state (anything else is ignored),
/// `code_filter` an error code.
pub async fn summary(app: &AppState, state_filter: Option<&str>, code: Option<&str>) -> Summary {
    let filter = state_filter.filter(|s| STATES.contains(s));
    let code = code_filter(code);
    let mut errors = Vec::new();
    let h = app.health.snapshot();
    let channel = app.cfg.events.channel.clone();
    let queue = read("queue", &mut errors, app.queue.stats()).await;
    let stored = read("cursor", &mut errors, app.ledger.cursor_row(&channel))
        .await
        .flatten()
        .map(|c| c.replay_id);
    let failure_rate = read(
        "failure rate",
        &mut errors,
        app.ledger.outcome_counts_within(app.cfg.alert.window),
    )
    .await
    .map(|(failed, finished)| FailureRate::judge(&app.cfg.alert, failed, finished));
    let orders_by_state = read("orders", &mut errors, app.ledger.counts_by_state()).await;
    let recent_orders = read(
        "recent orders",
        &mut errors,
        app.ledger.list_filtered(filter, code, RECENT_ORDERS),
    )
    .await
    .map(|v| v.iter().map(OrderRow::from).collect());
    let operator_actions = read(
        "operator actions",
        &mut errors,
        app.ledger.operator_actions(RECENT_ACTIONS),
    )
    .await;
    let window_ms = CHART_WINDOW.as_millis() as i64;
    let charts = read("charts", &mut errors, app.ledger.minute_series(window_ms))
        .await
        .map(|(now_ms, minutes)| Charts {
            window_secs: CHART_WINDOW.as_secs(),
            now_ms,
            minutes,
            queue_depth: app.queue_depth.since(now_ms - window_ms),
        });
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
        code_filter: code.map(str::to_owned),
        operator_actions,
        charts,
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
    code: Option<String>,
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
    let s = summary(&d.app, filter, q.code.as_deref()).await;
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
    harden(Json(summary(&d.app, q.state.as_deref(), q.code.as_deref()).await).into_response())
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

// ── actions ─────────────────────────────────────────────────────────────────────────────────

/// `part` of the pause and resume forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PartChoice {
    Intake,
    Provisioning,
    Both,
}

impl PartChoice {
    fn parts(self) -> Vec<crate::ledger::PausePart> {
        operator::parts(
            matches!(self, Self::Intake | Self::Both),
            matches!(self, Self::Provisioning | Self::Both),
        )
    }
}

#[derive(Debug, Deserialize)]
struct PauseForm {
    csrf: Option<String>,
    part: PartChoice,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ResumeForm {
    csrf: Option<String>,
    part: PartChoice,
}

#[derive(Debug, Deserialize)]
struct RedriveForm {
    csrf: Option<String>,
    state: String,
    code: Option<String>,
    since: Option<String>,
    /// `yes` on the confirmation; absent for the preview.
    confirm: Option<String>,
}

fn forbidden() -> Response {
    harden(html_response(
        StatusCode::FORBIDDEN,
        frame(
            "provisioner · forbidden",
            false,
            html! {
                section {
                    p { "The form's security token is missing or not valid for this session; nothing was changed." }
                    p { a href="/admin/actions" { "Back to the actions" } }
                }
            },
        ),
    ))
}

fn action_failed(status: StatusCode, message: &str) -> Response {
    harden(html_response(
        status,
        frame(
            "provisioner · action failed",
            false,
            html! {
                section id="action-error" {
                    div class="errors" { (message) }
                    p { a href="/admin/actions" { "Back to the actions" } }
                }
            },
        ),
    ))
}

fn see_actions() -> Response {
    harden(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/admin/actions")],
        )
            .into_response(),
    )
}

/// Access and CSRF checks every action runs first.
fn check_action(
    d: &Dash,
    peer: &Peer,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Option<Response> {
    if let Some(r) = denied(access(d, peer, headers), true) {
        return Some(r);
    }
    if !csrf_ok(d, headers, csrf) {
        tracing::warn!(peer = ?peer.0, "dashboard: action refused (CSRF token missing or wrong)");
        return Some(forbidden());
    }
    None
}

/// What the actions page shows.
pub struct ActionsView {
    pub paused: crate::pause::PauseState,
    pub actions: Option<Vec<OperatorAction>>,
    pub errors: Vec<String>,
}

async fn actions_page(State(d): State<Dash>, peer: Peer, headers: HeaderMap) -> Response {
    if let Some(r) = denied(access(&d, &peer, &headers), true) {
        return r;
    }
    let mut errors = Vec::new();
    let actions = read(
        "operator actions",
        &mut errors,
        d.app.ledger.operator_actions(RECENT_ACTIONS),
    )
    .await;
    let v = ActionsView {
        paused: d.app.pauses.current().await,
        actions,
        errors,
    };
    let csrf = csrf_token(&d, &headers).unwrap_or_default();
    harden(html_response(StatusCode::OK, render_actions(&v, &csrf)))
}

async fn pause_action(
    State(d): State<Dash>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<PauseForm>,
) -> Response {
    if let Some(r) = check_action(&d, &peer, &headers, f.csrf.as_deref()) {
        return r;
    }
    match operator::pause(
        &d.app.ledger,
        Some(&d.app.pauses),
        &f.part.parts(),
        DASHBOARD_OPERATOR,
        f.reason.as_deref(),
    )
    .await
    {
        Ok(_) => see_actions(),
        Err(e) => {
            tracing::warn!(error.message = %e, "dashboard: pause failed");
            action_failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "The pause could not be stored; try again.",
            )
        }
    }
}

async fn resume_action(
    State(d): State<Dash>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<ResumeForm>,
) -> Response {
    if let Some(r) = check_action(&d, &peer, &headers, f.csrf.as_deref()) {
        return r;
    }
    match operator::resume(
        &d.app.ledger,
        Some(&d.app.pauses),
        &f.part.parts(),
        DASHBOARD_OPERATOR,
    )
    .await
    {
        Ok(_) => see_actions(),
        Err(e) => {
            tracing::warn!(error.message = %e, "dashboard: resume failed");
            action_failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "The resume could not be stored; try again.",
            )
        }
    }
}

/// The redrive's preview or, once confirmed, its result.
pub enum RedriveView {
    Preview {
        filter: RedriveFilter,
        since: Option<String>,
        orders: Vec<OrderRecord>,
    },
    Done {
        filter: RedriveFilter,
        report: operator::RedriveReport,
    },
}

async fn redrive_action(
    State(d): State<Dash>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<RedriveForm>,
) -> Response {
    if let Some(r) = check_action(&d, &peer, &headers, f.csrf.as_deref()) {
        return r;
    }
    let Some(state) = OrderState::parse(f.state.trim()) else {
        return action_failed(StatusCode::BAD_REQUEST, "Unknown state.");
    };
    let since_raw = f.since.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let since = match since_raw.map(operator::parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return action_failed(StatusCode::BAD_REQUEST, &e),
    };
    let filter = match RedriveFilter::new(state, f.code.as_deref(), since, DASHBOARD_REDRIVE_LIMIT)
    {
        Ok(f) => f,
        Err(e) => return action_failed(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let orders = match operator::redrive_preview(&d.app.ledger, &filter).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error.message = %e, "dashboard: redrive selection failed");
            return action_failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "The ledger could not be read; try again.",
            );
        }
    };
    let csrf = csrf_token(&d, &headers).unwrap_or_default();
    if f.confirm.as_deref() != Some("yes") || orders.is_empty() {
        let v = RedriveView::Preview {
            filter,
            since: since_raw.map(str::to_owned),
            orders,
        };
        return harden(html_response(StatusCode::OK, render_redrive(&v, &csrf)));
    }
    match operator::redrive(
        &d.app.ledger,
        &d.app.rest,
        &filter,
        &orders,
        DASHBOARD_OPERATOR,
    )
    .await
    {
        Ok(report) => {
            let v = RedriveView::Done { filter, report };
            harden(html_response(StatusCode::OK, render_redrive(&v, &csrf)))
        }
        Err(e) => {
            tracing::warn!(error.message = %e, "dashboard: redrive failed");
            action_failed(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("The redrive failed: {e}"),
            )
        }
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
overflow-wrap:anywhere}code{font-size:12px}.filters a{margin-right:10px}.filters form{display:inline-block;margin-left:8px}\
.charts{display:flex;flex-wrap:wrap;gap:14px}.chart{margin:0}.chart figcaption{font-size:12px;color:#52606d}\
.chart svg{background:#fbfcfd;border:1px solid #e4e8ee}.errors{background:#fde2e1;\
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

/// The recent operator actions as a table.
fn render_action_list(actions: Option<&[OperatorAction]>) -> Markup {
    html! {
        @match actions {
            Some([]) => p { "No operator actions yet." },
            Some(list) => table id="actions-list" {
                thead { tr { th { "#" } th { "When" } th { "Action" } th { "Operator" } th { "Count" } th { "Filter" } } }
                tbody {
                    @for a in list {
                        tr class="action" data-action=(a.action) {
                            td { (a.id) }
                            td { (ms_time(a.created_at)) }
                            td { (a.action) }
                            td { (a.operator) }
                            td { (a.count) }
                            td { (code(&a.filter)) }
                        }
                    }
                }
            },
            None => p { "unavailable" },
        }
    }
}

/// One series of a chart: a name, a colour and `(epoch ms, value)` points.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(i64, f64)>,
}

const CHART_W: f64 = 560.0;
const CHART_H: f64 = 150.0;
const CHART_LEFT: f64 = 44.0;
const CHART_BOTTOM: f64 = 20.0;

/// A line chart over `[from, to]` (epoch ms) as inline SVG, the y axis from 0 to the largest
/// value.
fn line_chart(
    id: &str,
    title: &str,
    unit: &str,
    from: i64,
    to: i64,
    series: &[Series<'_>],
) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let top = if max <= 0.0 { 1.0 } else { max };
    let span = (to - from).max(1) as f64;
    let plot_w = CHART_W - CHART_LEFT - 8.0;
    let plot_h = CHART_H - CHART_BOTTOM - 8.0;
    let x = |t: i64| CHART_LEFT + ((t - from) as f64 / span).clamp(0.0, 1.0) * plot_w;
    let y = |v: f64| 8.0 + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
    let fmt = |v: f64| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    html! {
        figure class="chart" id=(id) {
            figcaption {
                (title)
                @for s in series {
                    " " span style={ "color:" (s.color) } { "■ " (s.name) }
                }
            }
            svg xmlns="http://www.w3.org/2000/svg" width=(CHART_W) height=(CHART_H)
                viewBox={ "0 0 " (CHART_W) " " (CHART_H) } role="img" aria-label=(title) {
                line x1=(CHART_LEFT) y1=(y(0.0)) x2=(CHART_LEFT + plot_w) y2=(y(0.0)) stroke="#9aa5b1" {}
                line x1=(CHART_LEFT) y1="8" x2=(CHART_LEFT) y2=(y(0.0)) stroke="#9aa5b1" {}
                text x=(CHART_LEFT - 4.0) y="14" text-anchor="end" font-size="10" fill="#52606d" { (fmt(top)) " " (unit) }
                text x=(CHART_LEFT - 4.0) y=(y(0.0)) text-anchor="end" font-size="10" fill="#52606d" { "0" }
                text x=(CHART_LEFT) y=(CHART_H - 4.0) font-size="10" fill="#52606d" { "−" (human(Duration::from_millis(((to - from).max(0)) as u64))) }
                text x=(CHART_LEFT + plot_w) y=(CHART_H - 4.0) text-anchor="end" font-size="10" fill="#52606d" { "now" }
                @for s in series {
                    @if s.points.len() > 1 {
                        polyline class="series" fill="none" stroke=(s.color) stroke-width="1.5"
                            points=(s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ")) {}
                    }
                    @for (t, v) in s.points.iter().filter(|_| s.points.len() <= 60) {
                        circle cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="2" fill=(s.color) {}
                    }
                }
            }
        }
    }
}

/// The dashboard's charts: Orders per minute, queue depth, approval → write-back latency.
fn render_charts(c: &Charts) -> Markup {
    let from = c.now_ms - (c.window_secs as i64) * 1000;
    let to = c.now_ms;
    // Every minute of the window, zero where nothing finished.
    let first = from.div_euclid(60_000) * 60_000;
    let by_minute: HashMap<i64, &MinuteRow> = c.minutes.iter().map(|m| (m.minute_ms, m)).collect();
    let minutes: Vec<i64> = (0..)
        .map(|i| first + i * 60_000)
        .take_while(|m| *m <= to)
        .collect();
    let per_minute = |f: fn(&MinuteRow) -> i64| -> Vec<(i64, f64)> {
        minutes
            .iter()
            .map(|m| (*m, by_minute.get(m).map_or(0.0, |r| f(r) as f64)))
            .collect()
    };
    let latency: Vec<(i64, f64)> = c
        .minutes
        .iter()
        .filter(|m| m.latency_n > 0)
        .map(|m| {
            (
                m.minute_ms,
                m.latency_sum_ms as f64 / m.latency_n as f64 / 1000.0,
            )
        })
        .collect();
    let depth: Vec<(i64, f64)> = c.queue_depth.iter().map(|(t, d)| (*t, *d as f64)).collect();
    let provisioned: i64 = c.minutes.iter().map(|m| m.provisioned).sum();
    let failed: i64 = c.minutes.iter().map(|m| m.failed).sum();
    html! {
        section id="charts" style="margin-top:14px" {
            h2 { "Last " (human(Duration::from_secs(c.window_secs))) " · " (provisioned) " provisioned · " (failed) " failed" }
            div class="charts" {
                (line_chart("chart-orders", "Orders per minute", "", from, to, &[
                    Series { name: "provisioned", color: "#2f9e44", points: per_minute(|m| m.provisioned) },
                    Series { name: "failed", color: "#e03131", points: per_minute(|m| m.failed) },
                ]))
                (line_chart("chart-queue", "Queue depth (ready + delayed)", "", from, to, &[
                    Series { name: "jobs", color: "#1c7ed6", points: depth },
                ]))
                (line_chart("chart-latency", "Approval → write-back latency (mean per minute)", "s", from, to, &[
                    Series { name: "seconds", color: "#f08c00", points: latency },
                ]))
            }
        }
    }
}

/// The actions page: pause, resume, redrive (no refresh, so a half-typed form is kept).
fn render_actions(v: &ActionsView, csrf: &str) -> Markup {
    let paused = v.paused.to_json();
    let body = html! {
        @if !v.errors.is_empty() {
            div class="errors" id="errors" { (v.errors.join(" · ")) }
        }
        div class="grid" {
            section id="pauses" {
                h2 { "Paused" }
                p id="paused" { (paused_text(&paused)) }
                form id="pause-form" method="post" action="/admin/actions/pause" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Part " (part_select()) }
                    label { " Reason " input type="text" name="reason" maxlength="500"; }
                    " " button type="submit" { "Pause" }
                }
                form id="resume-form" method="post" action="/admin/actions/resume" style="margin-top:8px" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Part " (part_select()) }
                    " " button type="submit" { "Resume" }
                }
            }
            section id="redrive" style="grid-column:span 3" {
                h2 { "Redrive" }
                p { "Sets the matching Salesforce Orders back to Activating; Salesforce publishes a new activation event for each. The next page lists them (nothing changes) and asks for confirmation." }
                form id="redrive-form" method="post" action="/admin/actions/redrive" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "State " select name="state" {
                        option value="failed" { "failed" }
                        option value="writeback_rejected" { "writeback_rejected" }
                    } }
                    label { " Error code " input type="text" name="code" placeholder="any"; }
                    label { " Updated within " input type="text" name="since" placeholder="e.g. 2h, 7d" size="8"; }
                    " " button type="submit" { "Preview" }
                }
            }
        }
        section id="operator" style="margin-top:14px" {
            h2 { "Recent operator actions" }
            (render_action_list(v.actions.as_deref()))
        }
    };
    frame("provisioner · actions", false, body)
}

fn part_select() -> Markup {
    html! {
        select name="part" {
            option value="provisioning" { "provisioning" }
            option value="intake" { "intake" }
            option value="both" { "both" }
        }
    }
}

/// The redrive's preview (with the confirmation form) or its result.
fn render_redrive(v: &RedriveView, csrf: &str) -> Markup {
    let body = match v {
        RedriveView::Preview {
            filter,
            since,
            orders,
        } => html! {
            section id="redrive-preview" {
                h2 { "Redrive preview (dry run: nothing changed)" }
                p {
                    "State " (code(filter.state.as_str()))
                    @if let Some(c) = &filter.code { " · code " (code(c)) }
                    @if let Some(s) = since { " · updated within " (s) }
                    " · " span id="matched" { (orders.len()) } " order(s) match"
                }
                @if orders.is_empty() {
                    p { "No orders match; nothing to redrive." }
                } @else {
                    table {
                        thead { tr { th { "Order" } th { "State" } th { "Updated" } th { "Error" } } }
                        tbody {
                            @for o in orders {
                                tr class="preview" {
                                    td { (order_link(&o.sf_order_id)) }
                                    td { (badge(&o.state)) }
                                    td { (ms_time(o.updated_at)) }
                                    td class="err" {
                                        @if let Some(c) = &o.error_code { (code(c)) " " }
                                        (o.error_message.as_deref().unwrap_or(""))
                                    }
                                }
                            }
                        }
                    }
                    form id="redrive-confirm" method="post" action="/admin/actions/redrive" style="margin-top:10px" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="state" value=(filter.state.as_str());
                        input type="hidden" name="code" value=(filter.code.as_deref().unwrap_or(""));
                        input type="hidden" name="since" value=(since.as_deref().unwrap_or(""));
                        input type="hidden" name="confirm" value="yes";
                        button type="submit" { "Set these " (orders.len()) " order(s) back to Activating" }
                    }
                }
                p { a href="/admin/actions" { "Back to the actions" } }
            }
        },
        RedriveView::Done { filter, report } => html! {
            section id="redrive-result" {
                h2 { "Redrive done" }
                p {
                    span id="redriven" { (report.succeeded) } " of " (report.results.len())
                    " order(s) set back to Activating (state " (code(filter.state.as_str())) ", operator action "
                    (report.action_id) "); Salesforce publishes a new activation event for each."
                }
                table {
                    thead { tr { th { "Order" } th { "Result" } th { "Error" } } }
                    tbody {
                        @for r in &report.results {
                            tr class="result" {
                                td { (order_link(r.id.as_str())) }
                                td { (badge(if r.success { "done" } else { "failed" })) }
                                td class="err" {
                                    (r.code.as_deref().unwrap_or("")) " " (r.message.as_deref().unwrap_or(""))
                                }
                            }
                        }
                    }
                }
                p { a href="/admin/actions" { "Back to the actions" } }
            }
        },
    };
    frame("provisioner · redrive", false, body)
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
                    @match &s.charts {
                        Some(c) => (render_charts(c)),
                        None => section id="charts" style="margin-top:14px" { h2 { "Charts" } p { "unavailable" } },
                    }
                    section id="operator" style="margin-top:14px" {
                        h2 { "Operator actions · " a href="/admin/actions" { "pause, resume, redrive" } }
                        (render_action_list(s.operator_actions.as_deref()))
                    }
                    section id="orders" style="margin-top:14px" {
                        h2 {
                            "Recent orders"
                            @if let Some(f) = &s.state_filter { " · state " (f) }
                            @if let Some(c) = &s.code_filter { " · code " (c) }
                        }
                        div class="filters" {
                            "Filter: "
                            a href="/admin" { "all" }
                            @for st in STATES {
                                a href={ "/admin?state=" (st) } { (st) }
                            }
                            form id="filter" method="get" action="/admin" {
                                select name="state" {
                                    option value="" { "any state" }
                                    @for st in STATES {
                                        option value=(st) selected[s.state_filter.as_deref() == Some(st)] { (st) }
                                    }
                                }
                                " "
                                input type="text" name="code" placeholder="error code" value=(s.code_filter.as_deref().unwrap_or(""));
                                " "
                                button type="submit" { "Filter" }
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
            code_filter: None,
            operator_actions: Some(vec![]),
            charts: Some(Charts {
                window_secs: 3 * 3600,
                now_ms: 1_767_225_600_000,
                minutes: vec![MinuteRow {
                    minute_ms: 1_767_225_540_000,
                    provisioned: 3,
                    failed: 1,
                    latency_sum_ms: 6000,
                    latency_n: 3,
                }],
                queue_depth: vec![(1_767_225_590_000, 4), (1_767_225_595_000, 2)],
            }),
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
        // The charts are inline SVG: the per-minute series and the queue depth samples.
        assert_eq!(html.matches("<svg").count(), 3, "{html}");
        assert!(
            html.contains("id=\"chart-orders\"") && html.contains("<polyline"),
            "{html}"
        );
        assert!(html.contains("3 provisioned · 1 failed"), "{html}");
        assert!(!html.contains("<script"), "{html}");
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
