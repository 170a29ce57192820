//! The portal's order-status API: `GET /api/orders/{id}` (JSON, ETag) and
//! `GET /api/orders/{id}/events` (Server-Sent Events).
//!
//! Invariants:
//! - Every request is authorised first (HS256 only, `exp` required, `nbf` honoured, optional
//!   issuer/audience), then the id is validated; nothing reaches the ledger or Salesforce with
//!   an unvalidated id.
//! - Orders of another Account answer exactly like unknown Orders (404, same body).
//! - Known Orders come from the ledger (no Salesforce call); unknown ones from one coalesced,
//!   cached Salesforce lookup (a bounded `moka` cache: found and not-found for
//!   `order_lookup_cache_secs`, failures for `order_lookup_error_cache_secs`).
//! - A lookup that would call Salesforce first passes its budget, in this order: none while the
//!   last `Sforce-Limit-Info` shows the org's API usage at or above
//!   `sf_lookup_stop_at_usage_percent` (the workers' calls per Order keep their room); at most
//!   `sf_lookup_max_concurrent` in flight; `sf_lookup_per_account_per_min` per Account (charged
//!   to the caller whose request misses the cache); `sf_lookup_rate_per_sec` overall. A refused
//!   lookup answers 503 with `Retry-After`, is not cached, and makes no call.
//! - An SSE stream registers for its Order's changes (`watchers`) *before* reading the current
//!   status, so no change is lost between the two; it sends the current status first, then one
//!   event per change of the Order's status (`status`, `activationStatus`, `error`; a ledger
//!   write that moves only `updatedAt` or `whmcsOrderId` sends none), and ends on daemon
//!   shutdown or when the token that opened it expires (its `exp`). At most `sse_max_clients`
//!   streams are open (then 503), and at most
//!   `sse_max_per_account` of one Account (then 429).
//! - A failed Order's `error.message` is the configured customer text for its code; the raw
//!   message (which may name WHMCS internals) is never served here.

use std::{
    collections::HashMap,
    convert::Infallible,
    hash::{Hash, Hasher},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Extension,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Http, error, limit, retry_later, view::Encoded, watchers::Watching};
use crate::{
    config::{ApiAuth, CustomerErrors, HttpConfig},
    ids::SalesforceId,
    ledger::{OrderRecord, outcome},
};

/// How a browser should wait before reconnecting a dropped SSE stream.
const SSE_RETRY: Duration = Duration::from_secs(5);

/// Most verified tokens remembered at once.
const MAX_TOKENS: u64 = 10_000;

/// Verifies portal session tokens, remembering each verified token until its `exp`.
pub(super) struct Auth {
    key: DecodingKey,
    validation: Validation,
    claim: String,
    /// Tokens that passed verification, by their full text, each kept until its `exp` (then
    /// verified again, with the leeway). Only valid tokens enter, so callers cannot fill it
    /// with garbage; it is bounded all the same.
    verified: moka::sync::Cache<Box<str>, Caller>,
}

/// Keeps a verified token until its `exp`.
struct UntilExpiry;

impl moka::Expiry<Box<str>, Caller> for UntilExpiry {
    fn expire_after_create(
        &self,
        _token: &Box<str>,
        caller: &Caller,
        _at: Instant,
    ) -> Option<Duration> {
        let left_ms =
            caller.expires_at.saturating_mul(1000) - chrono::Utc::now().timestamp_millis();
        Some(Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)))
    }
}

impl Auth {
    /// `None` when API auth is disabled.
    pub(super) fn from_config(auth: &ApiAuth) -> Option<Self> {
        match auth {
            ApiAuth::Jwt {
                secret,
                account_claim,
                issuer,
                audience,
            } => {
                // HS256 only: `alg: none`, RS*/ES* and other HMAC sizes are all refused.
                let mut v = Validation::new(Algorithm::HS256);
                v.validate_exp = true;
                v.validate_nbf = true;
                v.leeway = 30;
                // A configured issuer/audience must be present, not merely right when present.
                let mut required = vec!["exp"];
                if let Some(iss) = issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                match audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                Some(Self {
                    key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                    validation: v,
                    claim: account_claim.clone(),
                    verified: moka::sync::Cache::builder()
                        .max_capacity(MAX_TOKENS)
                        .expire_after(UntilExpiry)
                        .build(),
                })
            }
            ApiAuth::Disabled => None,
        }
    }
}

/// The verified caller of an authorised request.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) account: SalesforceId,
    /// The token's `exp` (Unix seconds).
    pub(super) expires_at: i64,
}

/// The caller as the rate-limit middleware verified it (`None`: auth disabled), so the handler
/// need not verify the token again.
#[derive(Clone)]
pub(super) struct Verified(pub(super) Option<Caller>);

/// Open event streams by Account. A [`StreamSlot`] counts one until it is dropped.
#[derive(Clone, Default)]
pub(super) struct StreamsByAccount(Arc<Mutex<HashMap<SalesforceId, usize>>>);

impl StreamsByAccount {
    /// A slot for one more stream of `account`, unless it already has `max` open.
    fn acquire(&self, account: &SalesforceId, max: usize) -> Option<StreamSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(account.clone()).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            streams: self.clone(),
            account: account.clone(),
        })
    }

    #[cfg(test)]
    fn open(&self, account: &SalesforceId) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(account).copied().unwrap_or(0)
    }
}

/// One open stream of an Account; releases its place when dropped.
pub(super) struct StreamSlot {
    streams: StreamsByAccount,
    account: SalesforceId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.account) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.account);
            }
        }
    }
}

/// Most lookup results cached at once.
const MAX_CACHED: u64 = 10_000;
/// `Retry-After` while the org's API usage is above the threshold.
const USAGE_RETRY: Duration = Duration::from_secs(60);

/// What a Salesforce lookup found, as cached.
#[derive(Clone)]
enum Looked {
    Found(OrderView),
    Missing,
    Failed,
}

/// How long each kind of result is cached.
struct LookedExpiry {
    answer: Duration,
    failure: Duration,
}

impl moka::Expiry<SalesforceId, Looked> for LookedExpiry {
    fn expire_after_create(
        &self,
        _id: &SalesforceId,
        value: &Looked,
        _at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Looked::Failed => self.failure,
            Looked::Found(_) | Looked::Missing => self.answer,
        })
    }
}

/// Salesforce lookups of Orders unknown to the ledger: their cache and their budget.
pub(super) struct Lookups {
    cache: moka::future::Cache<SalesforceId, Looked>,
    /// `None`: lookups are off (`sf_lookup_rate_per_sec = 0`).
    rate: Option<DefaultDirectRateLimiter>,
    per_account: Option<limit::Keyed<SalesforceId>>,
    in_flight: Arc<Semaphore>,
    stop_at_usage_percent: u64,
}

impl Lookups {
    pub(super) fn new(http: &HttpConfig) -> Self {
        let budget = http.lookup_budget;
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED)
                .expire_after(LookedExpiry {
                    answer: http.lookup_cache,
                    failure: http.lookup_error_cache,
                })
                .build(),
            rate: NonZeroU32::new(budget.per_sec)
                .map(|n| RateLimiter::direct(Quota::per_second(n))),
            per_account: NonZeroU32::new(budget.per_account_per_min)
                .map(|n| limit::Keyed::new(Quota::per_minute(n))),
            in_flight: Arc::new(Semaphore::new(budget.max_concurrent.max(1))),
            stop_at_usage_percent: budget.stop_at_usage_percent,
        }
    }

    /// Admits one Salesforce call for `account`'s request: the permit to hold while it runs, or
    /// how long to wait.
    fn admit(
        &self,
        rate: &DefaultDirectRateLimiter,
        api_usage: Option<(u64, u64)>,
        account: Option<&SalesforceId>,
    ) -> Result<OwnedSemaphorePermit, Duration> {
        if let Some((used, limit)) = api_usage {
            if limit > 0
                && u128::from(used) * 100
                    >= u128::from(limit) * u128::from(self.stop_at_usage_percent)
            {
                // Debug only: a flood of unknown ids must not flood the log.
                tracing::debug!(
                    salesforce.api_used = used,
                    salesforce.api_limit = limit,
                    "Salesforce API usage is high; order lookups paused"
                );
                return Err(USAGE_RETRY);
            }
        }
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Duration::from_secs(1))?;
        if let (Some(per_account), Some(account)) = (&self.per_account, account) {
            per_account.check(account)?;
        }
        rate.check()
            .map_err(|not_until| not_until.wait_time_from(rate.clock().now()))?;
        Ok(permit)
    }
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

impl OrderView {
    /// The body as served, its ETag and the Account it belongs to.
    fn encode(&self) -> Option<Encoded> {
        let body = serde_json::to_vec(self).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        let etag = HeaderValue::from_str(&format!("W/\"{:016x}\"", h.finish())).ok()?;
        let mut shown = std::collections::hash_map::DefaultHasher::new();
        (
            &self.status,
            &self.activation_status,
            self.error.as_ref().map(Value::to_string),
        )
            .hash(&mut shown);
        Some(Encoded {
            body: body.into(),
            etag,
            shown: shown.finish(),
            account: self
                .account_id
                .as_deref()
                .and_then(|a| SalesforceId::parse(a).ok()),
        })
    }
}

fn ms_to_rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn from_ledger(r: &OrderRecord, texts: &CustomerErrors) -> OrderView {
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
                Some(json!({"code": code, "message": texts.message(code)}))
            }
            _ => None,
        },
        updated_at: ms_to_rfc3339(r.updated_at),
        account_id: r.account_id.clone(),
    }
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "Order not found")
}

fn unavailable() -> Response {
    retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Try again shortly",
        Duration::from_secs(5),
    )
}

fn invalid_id() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_id",
        "Order ids are 15 or 18 alphanumeric characters",
    )
}

/// Verifies the portal JWT; returns the caller (Account and token expiry), or `None` when auth
/// is disabled.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
pub(super) fn authorize(s: &Http, headers: &HeaderMap) -> Result<Option<Caller>, Response> {
    let Some(auth) = &s.auth else {
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
    let token = token.trim();
    if let Some(caller) = auth.verified.get(token) {
        return Ok(Some(caller));
    }
    let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &auth.key, &auth.validation)
        .map_err(|_| unauthorized())?;
    let account = data
        .claims
        .get(&auth.claim)
        .and_then(Value::as_str)
        .and_then(|a| SalesforceId::parse(a).ok())
        .ok_or_else(unauthorized)?;
    // Required and type-checked by the validation above (a number, possibly fractional).
    let expires_at = data
        .claims
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)))
        .ok_or_else(unauthorized)?;
    let caller = Caller {
        account,
        expires_at,
    };
    auth.verified.insert(token.into(), caller.clone());
    Ok(Some(caller))
}

/// Authorises the caller and validates the id, in that order.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
fn admit(
    s: &Http,
    caller: Option<Extension<Verified>>,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<(Option<Caller>, SalesforceId), Response> {
    let caller = match caller {
        Some(Extension(Verified(caller))) => caller,
        None => authorize(s, headers)?,
    };
    let id = path
        .ok()
        .and_then(|Path(raw)| SalesforceId::parse(&raw).ok())
        .ok_or_else(invalid_id)?;
    Ok((caller, id))
}

/// The Order as `account` may see it, encoded with its ETag: 404 for an unknown Order or one
/// of another Account (the same body either way).
async fn visible(
    s: &Http,
    id: &SalesforceId,
    account: Option<&SalesforceId>,
) -> Result<Arc<Encoded>, Response> {
    match current(s, id, account).await? {
        Some(v) if v.visible_to(account) => Ok(v),
        _ => Err(not_found()),
    }
}

fn internal() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

/// The Order's status as served: from the view, else from the ledger (then cached in the view),
/// else from a Salesforce lookup for Orders the ledger does not know.
async fn current(
    s: &Http,
    id: &SalesforceId,
    account: Option<&SalesforceId>,
) -> Result<Option<Arc<Encoded>>, Response> {
    match s.view.get(id) {
        Ok(hit) => Ok(Some(hit)),
        // Boxed: the ledger's and the lookup's futures are large, and inline they would make
        // the future of every request (allocated and moved for each one) as large, hits
        // included.
        Err(mark) => Box::pin(not_in_view(s, id, account, mark)).await,
    }
}

/// [`current`] for an Order the view does not hold: from the ledger (then cached in the view
/// if `mark` allows), else from a Salesforce lookup.
async fn not_in_view(
    s: &Http,
    id: &SalesforceId,
    account: Option<&SalesforceId>,
    mark: Option<super::view::ReadMark>,
) -> Result<Option<Arc<Encoded>>, Response> {
    match s.app.ledger.get(id).await {
        Ok(Some(r)) if r.account_id.is_some() => {
            let view = from_ledger(&r, &s.app.cfg.http.customer_errors);
            let encoded = Arc::new(view.encode().ok_or_else(internal)?);
            if let Some(mark) = mark {
                s.view.insert(id.clone(), mark, encoded.clone());
            }
            Ok(Some(encoded))
        }
        Ok(_) => match lookup(s, id, account).await? {
            Some(v) => Ok(Some(Arc::new(v.encode().ok_or_else(internal)?))),
            None => Ok(None),
        },
        Err(e) => {
            tracing::error!(error.message = %e, "ledger read failed");
            Err(unavailable())
        }
    }
}

/// `GET /api/orders/{id}`.
pub(super) async fn status(
    State(s): State<Http>,
    caller: Option<Extension<Verified>>,
    path: Result<Path<String>, PathRejection>,
    // The request itself rather than a `HeaderMap`, whose extractor copies every header.
    req: axum::extract::Request,
) -> Response {
    let headers = req.headers();
    let (caller, id) = match admit(&s, caller, headers, path) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let account = caller.map(|c| c.account);
    let order = match visible(&s, &id, account.as_ref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let etag = order.etag.as_bytes();
    let matches = headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            t == etag || t == b"*"
        })
    });
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = axum::body::Body::from(order.body.clone()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, order.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    resp
}

/// One open SSE stream.
struct Watch {
    s: Http,
    id: SalesforceId,
    account: Option<SalesforceId>,
    /// Wakes the stream when its Order may have changed.
    watching: Watching,
    /// What the last event showed ([`Encoded::shown`]).
    last_shown: u64,
    first: Option<Event>,
    /// When the token that opened the stream expires; the stream ends then.
    expires: Option<tokio::time::Instant>,
    _permit: OwnedSemaphorePermit,
    _slot: Option<StreamSlot>,
}

/// Completes at `deadline`, or never.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The instant a token with `exp` (Unix seconds) expires.
fn expiry_instant(exp: i64) -> tokio::time::Instant {
    let left_ms = exp.saturating_mul(1000) - chrono::Utc::now().timestamp_millis();
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

fn status_event(order: &Encoded) -> Event {
    Event::default()
        .event("status")
        .id(order.etag.to_str().unwrap_or_default())
        .data(String::from_utf8_lossy(&order.body))
}

impl Watch {
    /// The next status event; `None` ends the stream (shutdown, or the Order became invisible).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if let Some(ev) = self.first.take() {
            return Some((Ok(ev), self));
        }
        loop {
            tokio::select! {
                () = self.s.shutdown.cancelled() => return None,
                () = until(self.expires) => return None,
                () = self.watching.changed() => {}
            }
            let order = match current(&self.s, &self.id, self.account.as_ref()).await {
                Ok(Some(v)) if v.visible_to(self.account.as_ref()) => v,
                Ok(_) => return None,
                Err(_) => continue, // logged by `current`; the next change reads again
            };
            if order.shown != self.last_shown {
                let ev = status_event(&order);
                self.last_shown = order.shown;
                return Some((Ok(ev), self));
            }
        }
    }
}

/// `GET /api/orders/{id}/events`: the current status, then every change, as SSE.
pub(super) async fn events(
    State(s): State<Http>,
    caller: Option<Extension<Verified>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let (caller, id) = match admit(&s, caller, &headers, path) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let slot = match &caller {
        Some(c) => match s
            .sse_accounts
            .acquire(&c.account, s.app.cfg.http.sse_max_per_account)
        {
            Some(slot) => Some(slot),
            None => {
                return retry_later(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_streams",
                    "Too many open event streams for this account; close one or poll GET /api/orders/{id}",
                    SSE_RETRY,
                );
            }
        },
        None => None,
    };
    let expires = caller.as_ref().map(|c| expiry_instant(c.expires_at));
    let account = caller.map(|c| c.account);
    let Ok(permit) = s.sse.clone().try_acquire_owned() else {
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "Too many open event streams; poll GET /api/orders/{id} or retry later",
            SSE_RETRY,
        );
    };
    // Subscribe before reading, so a change between the read and the first event is not lost.
    let watching = s.watchers.watch(&id);
    let order = match visible(&s, &id, account.as_ref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let keepalive = s.app.cfg.http.sse_keepalive;
    let watch = Watch {
        first: Some(status_event(&order).retry(SSE_RETRY)),
        last_shown: order.shown,
        s,
        id,
        account,
        watching,
        expires,
        _permit: permit,
        _slot: slot,
    };
    let stream = futures::stream::unfold(watch, Watch::next);
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    // Reverse proxies (nginx) must not buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One Salesforce read per unknown Order per cache period, shared by concurrent callers, within
/// the lookup budget (see the module invariants).
async fn lookup(
    s: &Http,
    id: &SalesforceId,
    account: Option<&SalesforceId>,
) -> Result<Option<OrderView>, Response> {
    let lookups = &*s.lookups;
    let Some(rate) = &lookups.rate else {
        return Ok(None); // lookups are off: the ledger is all the API knows
    };
    let result = lookups
        .cache
        .try_get_with(id.clone(), async {
            let _permit = lookups.admit(rate, s.app.rest.api_usage(), account)?;
            Ok::<_, Duration>(match s.app.rest.get_order(id).await {
                Ok(Some(o)) => {
                    let status = match o.activation_status.as_deref() {
                        Some("Activating") => "Activating".to_owned(),
                        Some("Activated") => "Provisioned".to_owned(),
                        Some("Failed") => "Failed".to_owned(),
                        _ => o.status.clone().unwrap_or_else(|| "Unknown".into()),
                    };
                    Looked::Found(OrderView {
                        sf_order_id: o.id.to_string(),
                        status,
                        activation_status: o.activation_status.clone(),
                        whmcs_order_id: o.whmcs_order_id.clone(),
                        error: None,
                        updated_at: None,
                        account_id: o.account_id.as_ref().map(ToString::to_string),
                    })
                }
                Ok(None) => Looked::Missing,
                Err(e) => {
                    tracing::warn!(error.message = %e, "Salesforce order lookup failed");
                    Looked::Failed
                }
            })
        })
        .await;
    match result {
        Ok(Looked::Found(v)) => Ok(Some(v)),
        Ok(Looked::Missing) => Ok(None),
        Ok(Looked::Failed) => Err(unavailable()),
        Err(wait) => {
            tracing::debug!(order.id = %id, "order lookup refused by its budget");
            Err(retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Try again shortly",
                *wait,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(account: Option<&str>) -> OrderView {
        OrderView {
            sf_order_id: SalesforceId::synthesize("801", 1).to_string(),
            status: "Activating".into(),
            activation_status: Some("Activating".into()),
            whmcs_order_id: None,
            error: None,
            updated_at: None,
            account_id: account.map(str::to_owned),
        }
    }

    #[test]
    fn visibility_compares_15_and_18_character_account_ids() {
        let acct = SalesforceId::synthesize("001", 42);
        assert!(
            view(Some(acct.short()))
                .encode()
                .expect("encode")
                .visible_to(Some(&acct))
        );
        assert!(
            view(Some(acct.as_str()))
                .encode()
                .expect("encode")
                .visible_to(Some(&acct))
        );
        let other = SalesforceId::synthesize("001", 43);
        assert!(
            !view(Some(acct.as_str()))
                .encode()
                .expect("encode")
                .visible_to(Some(&other))
        );
        assert!(!view(None).encode().expect("encode").visible_to(Some(&acct)));
        assert!(view(None).encode().expect("encode").visible_to(None));
    }

    #[test]
    fn failed_orders_show_the_customer_text_of_their_code() {
        let texts = CustomerErrors {
            by_code: [(
                "WHMCS_CLIENT_NOT_FOUND".to_owned(),
                "Not set up yet.".to_owned(),
            )]
            .into(),
            default: "Something went wrong.".into(),
        };
        let record = |code: &str| OrderRecord {
            sf_order_id: SalesforceId::synthesize("801", 7).to_string(),
            outcome: Some(outcome::FAILED.into()),
            error_code: Some(code.into()),
            error_message: Some("Client ID Not Found (whmcs.internal/api.php)".into()),
            account_id: Some(SalesforceId::synthesize("001", 7).to_string()),
            state: "failed".into(),
            whmcs_client_id: None,
            whmcs_order_id: None,
            whmcs_service_ids: None,
            sf_status: None,
            last_event_id: None,
            correlation_id: None,
            attempts: 1,
            created_at: 0,
            updated_at: 0,
        };
        let v = from_ledger(&record("WHMCS_CLIENT_NOT_FOUND"), &texts);
        assert_eq!(
            v.error,
            Some(json!({"code": "WHMCS_CLIENT_NOT_FOUND", "message": "Not set up yet."}))
        );
        let v = from_ledger(&record("WHMCS_HTTP"), &texts);
        assert_eq!(
            v.error,
            Some(json!({"code": "WHMCS_HTTP", "message": "Something went wrong."}))
        );
    }

    #[test]
    fn streams_per_account_are_counted_and_released() {
        let streams = StreamsByAccount::default();
        let (a, b) = (
            SalesforceId::synthesize("001", 1),
            SalesforceId::synthesize("001", 2),
        );
        let first = streams.acquire(&a, 2).expect("1st");
        let second = streams.acquire(&a, 2).expect("2nd");
        assert!(streams.acquire(&a, 2).is_none());
        assert!(streams.acquire(&b, 2).is_some());
        drop(first);
        assert_eq!(streams.open(&a), 1);
        let _third = streams.acquire(&a, 2).expect("a place was released");
        drop(second);
        assert_eq!(streams.open(&a), 1);
    }

    #[test]
    fn etag_changes_with_the_body_and_is_stable_otherwise() {
        let a = view(None).encode().expect("encode");
        let b = view(None).encode().expect("encode");
        assert_eq!(a.etag, b.etag);
        let mut changed = view(None);
        changed.status = "Provisioned".into();
        assert_ne!(changed.encode().expect("encode").etag, a.etag);
        assert!(a.etag.as_bytes().starts_with(b"W/\""));
    }
}
