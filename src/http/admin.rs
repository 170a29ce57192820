//! The operator dashboard: a small server-rendered page at `/admin` and its data as JSON at
//! `/admin/api/summary` — subscription state, cursor, queue depth, failure rate of the last
//! hour, Orders by state and the most recent Orders with their errors. The page reloads itself
//! every few seconds (meta refresh; it runs no script at all).
//!
//! Invariants:
//! - Disabled unless `ADMIN_TOKEN` is set: without it no `/admin` route exists (404).
//! - Every response needs the token: `Authorization: Bearer <token>`, or a session cookie
//!   obtained once through `/admin?token=<token>` (or the login form's POST). The cookie is
//!   `HttpOnly; SameSite=Strict; Path=/admin`, holds an HS256-signed session (12 h) rather than
//!   the token, and the login answers with a redirect so the token leaves the address bar.
//!   Rotating the token ends every session. Tokens are compared in constant time and never
//!   logged (the request span records only the path).
//! - Read-only: no handler changes anything, so there is nothing to forge across sites.
//! - Every piece of text put into the page goes through [`esc`]; the page's CSP allows no
//!   script, no framing and no external resource.
//! - Each data source is read with a timeout; one that fails is shown as unavailable instead
//!   of failing the page.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{
    ledger::{OrderRecord, OrderState},
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
/// Window of the failure rate.
const FAILURE_WINDOW: Duration = Duration::from_secs(3600);
/// Failure rate above which the dashboard highlights it (the alerting threshold).
const ALERT_RATE: f64 = 0.10;
/// Timeout of each data source read.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

const STATES: [&str; 6] = {
    let [a, b, c, d, e, f] = OrderState::ALL;
    [
        a.as_str(),
        b.as_str(),
        c.as_str(),
        d.as_str(),
        e.as_str(),
        f.as_str(),
    ]
};

#[derive(Clone)]
struct Dash {
    app: AppState,
    token: Arc<SecretString>,
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
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
    let secret = token.expose_secret().as_bytes().to_vec();
    let dash = Dash {
        app,
        encoding: Arc::new(EncodingKey::from_secret(&secret)),
        decoding: Arc::new(DecodingKey::from_secret(&secret)),
        token: Arc::new(token),
    };
    Router::new()
        .route("/admin", get(page))
        .route("/admin/login", post(login))
        .route("/admin/api/summary", get(summary_json))
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

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn token_matches(d: &Dash, candidate: &str) -> bool {
    ct_eq(
        candidate.trim().as_bytes(),
        d.token.expose_secret().as_bytes(),
    )
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

fn authorized(d: &Dash, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if let Some(t) = bearer {
        return token_matches(d, t);
    }
    let Some(session) = cookie_value(headers, COOKIE) else {
        return false;
    };
    let mut v = Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.sub = Some(SESSION_SUBJECT.into());
    v.validate_aud = false;
    v.leeway = 0;
    jsonwebtoken::decode::<Session>(session, &d.decoding, &v).is_ok()
}

fn session_cookie(d: &Dash, headers: &HeaderMap) -> Option<HeaderValue> {
    let now = chrono::Utc::now().timestamp();
    let claims = Session {
        sub: SESSION_SUBJECT.into(),
        iat: now,
        exp: now + SESSION_SECS,
    };
    let jwt = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &d.encoding).ok()?;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    HeaderValue::from_str(&format!(
        "{COOKIE}={jwt}; Path=/admin; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{}",
        if https { "; Secure" } else { "" }
    ))
    .ok()
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

fn login_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>provisioner · sign in</title><style>{CSS}</style></head><body>\
         <main class=\"login\"><h1>provisioner</h1><p>{}</p>\
         <form method=\"post\" action=\"/admin/login\">\
         <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label>\
         <button type=\"submit\">Open dashboard</button></form></main></body></html>",
        esc(message)
    );
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    harden(r)
}

/// A successful login: the session cookie and a redirect to the page without the token.
fn signed_in(d: &Dash, headers: &HeaderMap, state: Option<&str>) -> Response {
    let location = match state {
        Some(s) => format!("/admin?state={s}"),
        None => "/admin".to_owned(),
    };
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(c) = session_cookie(d, headers) {
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

/// Finished attempts of the last hour.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRate {
    pub window_secs: u64,
    pub failed: i64,
    pub finished: i64,
    /// `failed / finished`, absent when nothing finished.
    pub rate: Option<f64>,
    /// Above the 10 % alerting threshold.
    pub alert: bool,
}

/// Everything the dashboard shows; also served as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub generated_at: String,
    pub instance: String,
    pub version: &'static str,
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
    let since = crate::ledger::now_ms() - FAILURE_WINDOW.as_millis() as i64;
    let failure_rate = read(
        "failure rate",
        &mut errors,
        app.ledger.outcome_counts_since(since),
    )
    .await
    .map(|(failed, finished)| {
        let rate = (finished > 0).then(|| failed as f64 / finished as f64);
        FailureRate {
            window_secs: FAILURE_WINDOW.as_secs(),
            failed,
            finished,
            rate,
            alert: rate.is_some_and(|r| r > ALERT_RATE),
        }
    });
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
    }
}

// ── handlers ────────────────────────────────────────────────────────────────────────────────

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn page(State(d): State<Dash>, Query(q): Query<PageQuery>, headers: HeaderMap) -> Response {
    let filter = q.state.as_deref().filter(|s| STATES.contains(s));
    if let Some(t) = &q.token {
        return if token_matches(&d, t) {
            signed_in(&d, &headers, filter)
        } else {
            login_page(StatusCode::UNAUTHORIZED, "That token is not valid.")
        };
    }
    if !authorized(&d, &headers) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Sign in with the admin token (ADMIN_TOKEN).",
        );
    }
    let s = summary(&d.app, filter).await;
    harden(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            render(&s),
        )
            .into_response(),
    )
}

async fn login(State(d): State<Dash>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if token_matches(&d, &f.token) {
        signed_in(&d, &headers, None)
    } else {
        login_page(StatusCode::UNAUTHORIZED, "That token is not valid.")
    }
}

async fn summary_json(
    State(d): State<Dash>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&d, &headers) {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "unauthorized", "message": "A valid admin token is required"})),
        )
            .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return harden(r);
    }
    harden(Json(summary(&d.app, q.state.as_deref()).await).into_response())
}

// ── rendering ───────────────────────────────────────────────────────────────────────────────

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

fn sub_state_name(s: SubState) -> &'static str {
    match s {
        SubState::Connecting => "connecting",
        SubState::Connected => "connected",
        SubState::Backoff => "backoff",
        SubState::Disabled => "disabled",
        SubState::Standby => "standby",
    }
}

fn badge_class(state: &str) -> &'static str {
    match state {
        "done" | "connected" | "Provisioned" => "ok",
        "failed" | "Failed" | "backoff" => "bad",
        "disabled" | "standby" => "muted",
        _ => "warn",
    }
}

fn badge(text: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        badge_class(text),
        esc(text)
    )
}

fn kv(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<dl>");
    for (k, v) in rows {
        s.push_str(&format!("<dt>{}</dt><dd>{v}</dd>", esc(k)));
    }
    s.push_str("</dl>");
    s
}

const CSS: &str = "\
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,'DejaVu Sans',sans-serif;\
background:#f4f6f9;color:#1d2733}header{background:#1d3557;color:#fff;padding:14px 24px;display:flex;\
justify-content:space-between;align-items:baseline}header h1{margin:0;font-size:20px}header small{opacity:.8}\
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

/// Renders the page; every dynamic value is escaped.
pub fn render(s: &Summary) -> String {
    let sub = &s.subscription;
    let mut html = String::with_capacity(16 * 1024);
    html.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>provisioner · operations</title><style>{CSS}</style></head><body>\
         <header><h1>provisioner</h1><small>instance <code>{}</code> · v{} · {} · refreshes every {REFRESH_SECS} s</small></header><main>",
        esc(&s.instance),
        esc(s.version),
        esc(&s.generated_at),
    ));
    if !s.errors.is_empty() {
        html.push_str(&format!(
            "<div class=\"errors\" id=\"errors\">{}</div>",
            esc(&s.errors.join(" · "))
        ));
    }
    html.push_str("<div class=\"grid\">");

    // Subscription.
    html.push_str("<section id=\"subscription\"><h2>Subscription</h2>");
    html.push_str(&kv(&[
        ("State", badge(sub_state_name(sub.state))),
        ("Channel", format!("<code>{}</code>", esc(&sub.channel))),
        (
            "Cursor",
            format!(
                "<code>{}</code>",
                esc(sub.cursor.as_deref().unwrap_or("none"))
            ),
        ),
        (
            "Stored",
            format!(
                "<code>{}</code>",
                esc(sub.stored_cursor.as_deref().unwrap_or("none"))
            ),
        ),
        ("Last event", esc(&when(sub.last_event_at))),
        ("Keepalive", esc(&when(sub.last_keepalive_at))),
        (
            "Events",
            format!(
                "{} received · {} enqueued · {} poison",
                sub.events_received, sub.events_enqueued, sub.poison_events
            ),
        ),
        ("Reconnects", sub.reconnects.to_string()),
        (
            "Last error",
            esc(sub.last_error.as_deref().unwrap_or("none")),
        ),
    ]));
    html.push_str("</section>");

    // Queue.
    html.push_str("<section id=\"queue\"><h2>Queue</h2>");
    match &s.queue {
        Some(q) => {
            html.push_str(&format!(
                "<div class=\"big\">{}</div><div>waiting</div>",
                q.pending + q.delayed
            ));
            html.push_str(&kv(&[
                ("Ready", q.pending.to_string()),
                ("Delayed", q.delayed.to_string()),
                ("Running", q.running.to_string()),
                ("Failed", q.failed.to_string()),
                ("Done", q.done.to_string()),
                ("Workers", q.workers.to_string()),
            ]));
        }
        None => html.push_str("<p>unavailable</p>"),
    }
    html.push_str("</section>");

    // Failure rate.
    match &s.failure_rate {
        Some(f) => {
            html.push_str(&format!(
                "<section id=\"failure-rate\" class=\"{}\"><h2>Failure rate · last hour</h2>",
                if f.alert { "alert" } else { "" }
            ));
            html.push_str(&format!(
                "<div class=\"big\">{}</div><div>{} failed of {} finished{}</div>",
                f.rate
                    .map(|r| format!("{:.1} %", r * 100.0))
                    .unwrap_or_else(|| "–".into()),
                f.failed,
                f.finished,
                if f.alert { " · above 10 %" } else { "" }
            ));
        }
        None => html.push_str(
            "<section id=\"failure-rate\"><h2>Failure rate · last hour</h2><p>unavailable</p>",
        ),
    }
    html.push_str("</section>");

    // Orders by state.
    html.push_str("<section id=\"orders-by-state\"><h2>Orders by state</h2>");
    match &s.orders_by_state {
        Some(m) => {
            let rows: Vec<(&str, String)> = STATES
                .iter()
                .map(|st| {
                    (
                        *st,
                        format!(
                            "<a href=\"/admin?state={}\">{}</a>",
                            esc(st),
                            m.get(*st).copied().unwrap_or(0)
                        ),
                    )
                })
                .collect();
            html.push_str(&kv(&rows));
        }
        None => html.push_str("<p>unavailable</p>"),
    }
    html.push_str("</section></div>");

    // Recent orders.
    html.push_str(&format!(
        "<section id=\"orders\" style=\"margin-top:14px\"><h2>Recent orders{}</h2>\
         <div class=\"filters\">Filter: <a href=\"/admin\">all</a>",
        s.state_filter
            .as_deref()
            .map(|f| format!(" · state {}", esc(f)))
            .unwrap_or_default()
    ));
    for st in STATES {
        html.push_str(&format!("<a href=\"/admin?state={0}\">{0}</a>", esc(st)));
    }
    html.push_str("</div>");
    match &s.recent_orders {
        Some(orders) if orders.is_empty() => html.push_str("<p>No orders yet.</p>"),
        Some(orders) => {
            html.push_str(
                "<table><thead><tr><th>Order</th><th>State</th><th>Outcome</th>\
                 <th>WHMCS order</th><th>Attempts</th><th>Updated</th><th>Error</th></tr></thead><tbody>",
            );
            for o in orders {
                let error = match (&o.error_code, &o.error_message) {
                    (Some(c), Some(m)) => format!("<code>{}</code> {}", esc(c), esc(m)),
                    (Some(c), None) => format!("<code>{}</code>", esc(c)),
                    (None, Some(m)) => esc(m),
                    (None, None) => String::new(),
                };
                html.push_str(&format!(
                    "<tr class=\"order\" data-state=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{error}</td></tr>",
                    esc(&o.state),
                    esc(&o.sf_order_id),
                    badge(&o.state),
                    o.outcome.as_deref().map(badge).unwrap_or_default(),
                    o.whmcs_order_id.map(|v| v.to_string()).unwrap_or_default(),
                    o.attempts,
                    esc(o.updated_at.as_deref().unwrap_or("")),
                ));
            }
            html.push_str("</tbody></table>");
        }
        None => html.push_str("<p>unavailable</p>"),
    }
    html.push_str("</section></main></body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            generated_at: "2026-01-01T00:00:00Z".into(),
            instance: "host-1".into(),
            version: "0.1.0",
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
                window_secs: 3600,
                failed: 1,
                finished: 4,
                rate: Some(0.25),
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
        }
    }

    #[test]
    fn everything_dynamic_is_escaped() {
        let html = render(&sample());
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains(
                "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quoted&quot;"
            )
        );
        assert!(html.contains("801000000000001AAA"));
        assert!(html.contains("25.0 %") && html.contains("class=\"alert\""));
        assert!(html.contains(&format!(
            "http-equiv=\"refresh\" content=\"{REFRESH_SECS}\""
        )));
    }

    #[test]
    fn esc_covers_the_five_characters() {
        assert_eq!(esc("&<>\"'a"), "&amp;&lt;&gt;&quot;&#39;a");
    }

    #[test]
    fn cookie_lookup_and_constant_time_compare() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; provisioner_admin=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie_value(&h, "c"), None);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"abcd"));
    }
}
