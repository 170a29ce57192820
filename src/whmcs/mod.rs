//! WHMCS External API client: `AddOrder`, `AcceptOrder` and the `GetOrders` reads used to verify
//! and reconcile (`POST api.php`, form-encoded, PHP bracket arrays, lenient JSON), plus
//! `WhmcsDetails` (the installation's version, remembered once read: before 8.12 `AddOrder`
//! ignores `qty[]`) and `GetProducts` (which product ids exist).
//!
//! Invariants:
//! - One HTTP request per call (no retries here; the worker owns backoff, and auth failures must
//!   never be retried at all, see [`error`]). [`WhmcsClient::find_order_by_notes`] pages through
//!   `GetOrders`, one request per page, newest first (WHMCS orders `GetOrders` by id
//!   descending and has no sort parameter), and stops at the first page reaching orders dated
//!   before the caller's `not_before`: a client's long history costs one or two calls.
//! - Every request has a total timeout (`WhmcsConfig::timeout`, default 120 s because
//!   `AcceptOrder` runs the module create synchronously). A timeout or a broken connection is
//!   reported as ambiguous ([`WhmcsError::is_ambiguous`]): WHMCS may have acted.
//! - The form body carries `identifier`/`secret`/`accesskey`; it is built, sent and dropped here
//!   and never appears in an error, a log line or a `Debug` output.
//! - Booleans follow PHP truthiness: `noemail=1` is sent for true and omitted for false.

pub mod error;

use std::{fmt, fmt::Write as _, sync::Arc, time::Duration};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub use self::error::{WhmcsError, WhmcsErrorKind, decode_response};
use crate::{lenient, net};

/// Connection settings. `Debug` redacts the secret and the access key.
#[derive(Clone, Debug)]
pub struct WhmcsConfig {
    /// Full URL of `api.php`, e.g. `https://billing.example.com/includes/api.php`.
    pub api_url: String,
    pub identifier: String,
    pub secret: SecretString,
    /// Optional `accesskey` (bypasses WHMCS's API IP restriction).
    pub access_key: Option<SecretString>,
    /// Total timeout per call.
    pub timeout: Duration,
}

impl WhmcsConfig {
    /// `AcceptOrder` runs module create (cPanel, Plesk, …) inside the HTTP call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// Settings with no access key and the default timeout.
    pub fn new(
        api_url: impl Into<String>,
        identifier: impl Into<String>,
        secret: SecretString,
    ) -> Self {
        Self {
            api_url: api_url.into(),
            identifier: identifier.into(),
            secret,
            access_key: None,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// One product line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub pid: String,
    pub billing_cycle: String,
    pub qty: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOrderRequest {
    pub client_id: String,
    pub payment_method: String,
    pub lines: Vec<OrderLine>,
    /// Stored as the order's notes; the reconciliation tag (`sf-order:<OrderId>`).
    pub notes: String,
    pub no_email: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOrderResult {
    pub order_id: u64,
    pub service_ids: Vec<u64>,
    pub invoice_id: Option<u64>,
}

/// An order as `GetOrders` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhmcsOrder {
    pub id: u64,
    pub user_id: u64,
    /// `Pending`, `Active`, `Fraud`, `Cancelled`, …
    pub status: String,
    pub notes: String,
    /// `relid` of the order's product line items.
    pub service_ids: Vec<u64>,
    /// `date` (`Y-m-d H:i:s`), in the WHMCS server's local time zone, which the API does not
    /// name. `None` when absent or unreadable.
    pub date: Option<chrono::NaiveDateTime>,
}

struct Inner {
    http: reqwest::Client,
    cfg: WhmcsConfig,
    /// The version `WhmcsDetails` last reported.
    version: std::sync::RwLock<Option<String>>,
}

/// The first WHMCS release whose `AddOrder` honours `qty[]`.
pub const QUANTITY_SINCE: (u64, u64) = (8, 12);

/// Whether a WHMCS version (`8.13.1`, `8.12.0-release.1`) honours `AddOrder`'s `qty[]`; `None`
/// if the version cannot be read.
pub fn honours_quantity(version: &str) -> Option<bool> {
    let mut parts = version
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u64>);
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor) >= QUANTITY_SINCE)
}

/// WHMCS API client. Cheap to clone (one `Arc`); uses the shared HTTP connection pool.
#[derive(Clone)]
pub struct WhmcsClient {
    inner: Arc<Inner>,
    /// Told every call's result; refuses calls while our credentials are latched as rejected.
    breaker: Option<Arc<crate::deps::Breaker>>,
    /// How many calls go out at once (see [`crate::deps::limiter`]).
    limiter: Option<Arc<crate::deps::limiter::Limiter>>,
}

impl fmt::Debug for WhmcsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhmcsClient")
            .field("api_url", &self.inner.cfg.api_url)
            .field("timeout", &self.inner.cfg.timeout)
            .finish_non_exhaustive()
    }
}

/// Page size of the reconciliation scan.
const NOTES_SCAN_PAGE: u64 = 100;

impl WhmcsClient {
    pub fn new(http: reqwest::Client, cfg: WhmcsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                cfg,
                version: std::sync::RwLock::new(None),
            }),
            breaker: None,
            limiter: None,
        }
    }

    /// This client with at most `limiter`'s limit of calls in flight.
    pub fn with_limiter(mut self, limiter: Arc<crate::deps::limiter::Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// This client with `breaker` told of every call (see [`crate::deps`]).
    pub fn with_breaker(mut self, breaker: Arc<crate::deps::Breaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Creates a Pending order (no provisioning yet; see [`Self::accept_order`]).
    ///
    /// An error with [`WhmcsError::is_ambiguous`] means the order may exist: reconcile with
    /// [`Self::find_order_by_notes`] before calling this again.
    pub async fn add_order(&self, req: &AddOrderRequest) -> Result<AddOrderResult, WhmcsError> {
        let room = self.room(ADD_ORDER).await?;
        self.add_order_in(room, req).await
    }

    /// Accepts a Pending order and runs its module create (`autosetup=1`). An order that is not
    /// Pending (e.g. accepted by an earlier attempt) is [`WhmcsErrorKind::NotPending`]: check it
    /// with [`Self::get_order`].
    pub async fn accept_order(&self, order_id: u64) -> Result<(), WhmcsError> {
        let mut form = self.form("AcceptOrder");
        form.append_pair("orderid", &order_id.to_string())
            .append_pair("autosetup", "1");
        self.call("AcceptOrder", form.finish()).await.map(drop)
    }

    /// The installation's version (`WhmcsDetails` → `whmcs.version`), remembered for
    /// [`Self::known_version`].
    pub async fn details(&self) -> Result<String, WhmcsError> {
        const ACTION: &str = "WhmcsDetails";
        let v = self.call(ACTION, self.form(ACTION).finish()).await?;
        let version = v
            .get("whmcs")
            .and_then(|w| w.get("version"))
            .and_then(lenient::string_of)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                WhmcsError::new(ACTION, WhmcsErrorKind::BadResponse, "no whmcs.version")
            })?;
        if let Ok(mut known) = self.inner.version.write() {
            *known = Some(version.clone());
        }
        Ok(version)
    }

    /// The version [`Self::details`] last read, if any.
    pub fn known_version(&self) -> Option<String> {
        self.inner.version.read().ok().and_then(|v| v.clone())
    }

    /// Of `pids`, those `GetProducts` does not list (one call for all of them).
    pub async fn missing_products(&self, pids: &[String]) -> Result<Vec<String>, WhmcsError> {
        const ACTION: &str = "GetProducts";
        if pids.is_empty() {
            return Ok(Vec::new());
        }
        let mut form = self.form(ACTION);
        form.append_pair("pid", &pids.join(","));
        let v = self.call(ACTION, form.finish()).await?;
        let found: std::collections::HashSet<u64> = lenient::list(v.get("products"), "product")
            .iter()
            .filter_map(|p| p.get("pid").and_then(lenient::u64_of))
            .collect();
        Ok(pids
            .iter()
            .filter(|p| lenient::str_to_u64(p).is_none_or(|id| !found.contains(&id)))
            .cloned()
            .collect())
    }

    /// One page of a client's orders, newest first: `(total, orders)`.
    pub async fn get_orders(
        &self,
        user_id: &str,
        start: u64,
        limit: u64,
    ) -> Result<(u64, Vec<WhmcsOrder>), WhmcsError> {
        let mut form = self.form("GetOrders");
        form.append_pair("userid", user_id)
            .append_pair("limitstart", &start.to_string())
            .append_pair("limitnum", &limit.to_string());
        let v = self.call("GetOrders", form.finish()).await?;
        decode_orders(&v).ok_or_else(|| {
            WhmcsError::new(
                "GetOrders",
                WhmcsErrorKind::BadResponse,
                "order without an id",
            )
        })
    }

    /// One order by id, `None` if WHMCS does not know it.
    pub async fn get_order(&self, order_id: u64) -> Result<Option<WhmcsOrder>, WhmcsError> {
        let mut form = self.form("GetOrders");
        form.append_pair("id", &order_id.to_string());
        let v = self.call("GetOrders", form.finish()).await?;
        let (_, orders) = decode_orders(&v).ok_or_else(|| {
            WhmcsError::new(
                "GetOrders",
                WhmcsErrorKind::BadResponse,
                "order without an id",
            )
        })?;
        Ok(orders.into_iter().find(|o| o.id == order_id))
    }

    /// The newest order of `user_id` whose notes contain `notes`, scanning `GetOrders` pages of
    /// 100 newest-first until found, exhausted, or — with `not_before` — past a page holding an
    /// order dated before it (every later page is older still). `not_before` is compared with
    /// WHMCS's local-time `date`, so the caller leaves a margin for the time zone and clock
    /// differences. An empty `notes` matches nothing.
    pub async fn find_order_by_notes(
        &self,
        user_id: &str,
        notes: &str,
        not_before: Option<chrono::NaiveDateTime>,
    ) -> Result<Option<WhmcsOrder>, WhmcsError> {
        let notes = notes.trim();
        if notes.is_empty() {
            return Ok(None);
        }
        let mut start = 0;
        loop {
            let (total, page) = self.get_orders(user_id, start, NOTES_SCAN_PAGE).await?;
            let seen = page.len() as u64;
            let reached_older = not_before
                .is_some_and(|limit| page.iter().any(|o| o.date.is_some_and(|d| d < limit)));
            if let Some(found) = page.into_iter().find(|o| o.notes.contains(notes)) {
                return Ok(Some(found));
            }
            start += seen;
            if seen == 0 || start >= total || reached_older {
                return Ok(None);
            }
        }
    }

    /// The auth and envelope fields every call carries.
    fn form(&self, action: &str) -> Form {
        let cfg = &self.inner.cfg;
        let mut form = Form(String::with_capacity(256));
        form.append_pair("action", action)
            .append_pair("identifier", &cfg.identifier)
            .append_pair("secret", cfg.secret.expose_secret())
            .append_pair("responsetype", "json");
        if let Some(key) = &cfg.access_key {
            form.append_pair("accesskey", key.expose_secret());
        }
        form
    }

    fn add_order_form(&self, req: &AddOrderRequest) -> String {
        let mut form = self.form("AddOrder");
        form.append_pair("clientid", &req.client_id)
            .append_pair("paymentmethod", &req.payment_method);
        // PHP bracket arrays, index-aligned: pid[0], billingcycle[0], qty[0], pid[1], …
        let (mut key, mut qty) = (String::with_capacity(24), String::with_capacity(10));
        for (i, line) in req.lines.iter().enumerate() {
            qty.clear();
            let _ = write!(qty, "{}", line.qty);
            for (name, value) in [
                ("pid", line.pid.as_str()),
                ("billingcycle", line.billing_cycle.as_str()),
                ("qty", qty.as_str()),
            ] {
                key.clear();
                let _ = write!(key, "{name}[{i}]");
                form.append_pair(&key, value);
            }
        }
        form.append_pair("notes", &req.notes);
        if req.no_email {
            form.append_pair("noemail", "1");
        }
        form.finish()
    }

    /// [`Self::add_order`] in room taken beforehand with [`Self::room`].
    pub async fn add_order_in(
        &self,
        room: Room<'_>,
        req: &AddOrderRequest,
    ) -> Result<AddOrderResult, WhmcsError> {
        let v = self
            .call_in(room, ADD_ORDER, self.add_order_form(req))
            .await?;
        decode_add_order(&v).ok_or_else(|| {
            WhmcsError::new(
                ADD_ORDER,
                WhmcsErrorKind::BadResponse,
                "success without an orderid",
            )
        })
    }

    /// Waits until a call may go out (the breaker lets it, and the in-flight limit has room)
    /// and holds that room for one call: a caller that must commit something before sending
    /// (the `adding` intent) takes it first, so it never commits and then waits.
    pub async fn room(&self, action: &str) -> Result<Room<'_>, WhmcsError> {
        let serial = match &self.breaker {
            Some(b) => b.before_call().await.map_err(|s| {
                WhmcsError::new(
                    action,
                    WhmcsErrorKind::Auth,
                    format!(
                        "not sent: WHMCS rejected our credentials at {} ({}); fix them, or run `provisioner whmcs reset-auth`",
                        s.since.to_rfc3339(),
                        s.last_error.as_deref().unwrap_or("authentication failed")
                    ),
                )
            })?,
            None => None,
        };
        let permit = match &self.limiter {
            Some(l) => Some(l.acquire().await),
            None => None,
        };
        // A call that waited for room while the breaker opened is not sent: WHMCS is known to
        // be out, and the job waits for it instead (nothing reached WHMCS).
        if self.breaker.as_ref().is_some_and(|b| b.is_open()) {
            return Err(WhmcsError::new(
                action,
                WhmcsErrorKind::Connect,
                "not sent: the WHMCS breaker is open",
            ));
        }
        Ok(Room {
            _serial: serial,
            permit,
        })
    }

    /// Posts one action and decodes the envelope. Transport failures are classified by whether
    /// the request may have reached WHMCS.
    async fn call(&self, action: &str, body: String) -> Result<Value, WhmcsError> {
        let room = self.room(action).await?;
        self.call_in(room, action, body).await
    }

    /// [`Self::call`] in room already taken.
    async fn call_in(
        &self,
        room: Room<'_>,
        action: &str,
        body: String,
    ) -> Result<Value, WhmcsError> {
        let inner = &*self.inner;
        let Room { _serial, permit } = room;
        let started = std::time::Instant::now();
        let result = async {
            let response = inner
                .http
                .post(&inner.cfg.api_url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(body)
                .timeout(inner.cfg.timeout)
                .send()
                .await
                .map_err(|e| transport_error(action, &e))?;
            let status = response.status().as_u16();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transport_error(action, &e))?;
            decode_response(status, &bytes, action)
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let result = result.map_err(|mut e| {
            e.scrub(inner.cfg.secret.expose_secret());
            if let Some(key) = &inner.cfg.access_key {
                e.scrub(key.expose_secret());
            }
            e
        });
        let told = match &result {
            Ok(_) => crate::deps::CallResult::Answered,
            Err(e) => e.breaker_result(),
        };
        if let Some(p) = permit {
            p.finish((&told).into());
        }
        if let Some(b) = &self.breaker {
            b.record(told).await;
        }
        match result {
            Ok(v) => {
                tracing::debug!(
                    whmcs.action = action,
                    duration_ms = elapsed_ms,
                    "WHMCS call succeeded"
                );
                Ok(v)
            }
            Err(e) => {
                tracing::debug!(
                    whmcs.action = action,
                    duration_ms = elapsed_ms,
                    error.code = %crate::error::Classify::code(&e),
                    "WHMCS call failed"
                );
                Err(e)
            }
        }
    }
}

/// The action name of `AddOrder` (also the name its room is taken under).
pub const ADD_ORDER: &str = "AddOrder";

/// Room for one WHMCS call ([`WhmcsClient::room`]): the breaker's admission and an in-flight
/// permit, given back when the call ends or the room is dropped unused.
pub struct Room<'a> {
    _serial: Option<tokio::sync::MutexGuard<'a, ()>>,
    permit: Option<crate::deps::limiter::Permit<'a>>,
}

fn transport_error(action: &str, e: &reqwest::Error) -> WhmcsError {
    let kind = match net::TransportFailure::of(e) {
        net::TransportFailure::Connect => WhmcsErrorKind::Connect,
        net::TransportFailure::Timeout => WhmcsErrorKind::Timeout,
        net::TransportFailure::Lost => WhmcsErrorKind::ConnectionLost,
    };
    WhmcsError::new(action, kind, net::describe(e))
}

/// `AddOrder` success fields: `orderid` (required), `serviceids` (or the older `productids`) as
/// a comma string, `invoiceid` (absent or 0 without an invoice).
pub fn decode_add_order(v: &Value) -> Option<AddOrderResult> {
    let order_id = v
        .get("orderid")
        .and_then(lenient::u64_of)
        .filter(|id| *id > 0)?;
    let service_ids = v
        .get("serviceids")
        .or_else(|| v.get("productids"))
        .map(lenient::id_list)
        .unwrap_or_default();
    Some(AddOrderResult {
        order_id,
        service_ids,
        invoice_id: v
            .get("invoiceid")
            .and_then(lenient::u64_of)
            .filter(|id| *id > 0),
    })
}

/// `GetOrders` success: `(totalresults, orders)`. `None` if an order lacks a usable id.
pub fn decode_orders(v: &Value) -> Option<(u64, Vec<WhmcsOrder>)> {
    let orders = lenient::list(v.get("orders"), "order")
        .iter()
        .map(decode_order)
        .collect::<Option<Vec<_>>>()?;
    let total = v
        .get("totalresults")
        .and_then(lenient::u64_of)
        .unwrap_or(orders.len() as u64);
    Some((total, orders))
}

fn decode_order(o: &Value) -> Option<WhmcsOrder> {
    let text = |k: &str| o.get(k).and_then(lenient::string_of).unwrap_or_default();
    Some(WhmcsOrder {
        id: o.get("id").and_then(lenient::u64_of)?,
        user_id: o.get("userid").and_then(lenient::u64_of).unwrap_or(0),
        status: text("status"),
        notes: text("notes"),
        service_ids: lenient::list(o.get("lineitems"), "lineitem")
            .iter()
            .filter(|li| {
                li.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t.eq_ignore_ascii_case("product"))
            })
            .filter_map(|li| li.get("relid").and_then(lenient::u64_of))
            .filter(|id| *id > 0)
            .collect(),
        date: o.get("date").and_then(Value::as_str).and_then(|d| {
            chrono::NaiveDateTime::parse_from_str(d.trim(), "%Y-%m-%d %H:%M:%S").ok()
        }),
    })
}

/// A form body under construction (`application/x-www-form-urlencoded`). Unlike
/// `form_urlencoded::Serializer` it is `Send`, so it can live across an `.await`.
struct Form(String);

impl Form {
    fn append_pair(&mut self, key: &str, value: &str) -> &mut Self {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0
            .extend(url::form_urlencoded::byte_serialize(key.as_bytes()));
        self.0.push('=');
        self.0
            .extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
        self
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn quantities_are_honoured_from_8_12() {
        for (v, expected) in [
            ("8.7.2", Some(false)),
            ("8.11.4", Some(false)),
            ("7.10.3", Some(false)),
            ("8.12.0", Some(true)),
            ("8.13.1-release.1", Some(true)),
            ("9.0.0", Some(true)),
            ("", None),
            ("unknown", None),
        ] {
            assert_eq!(super::honours_quantity(v), expected, "{v}");
        }
    }

    use super::*;
    use crate::error::{Classify, ErrorClass};

    const SECRET: &str = "S3cr3t&Value=Pa55";
    const ACCESS_KEY: &str = "acc#Key!42";

    fn client() -> WhmcsClient {
        let mut cfg = WhmcsConfig::new(
            "https://billing.example.com/includes/api.php",
            "IDENT123",
            SecretString::from(SECRET),
        );
        cfg.access_key = Some(SecretString::from(ACCESS_KEY));
        WhmcsClient::new(reqwest::Client::new(), cfg)
    }

    fn request(no_email: bool) -> AddOrderRequest {
        AddOrderRequest {
            client_id: "42".into(),
            payment_method: "banktransfer".into(),
            lines: vec![
                OrderLine {
                    pid: "7".into(),
                    billing_cycle: "monthly".into(),
                    qty: 1,
                },
                OrderLine {
                    pid: "9".into(),
                    billing_cycle: "annually".into(),
                    qty: 3,
                },
            ],
            notes: "sf-order:801000000000005AAA".into(),
            no_email,
        }
    }

    #[test]
    fn bracket_array_encoding() {
        let body = client().add_order_form(&request(true));
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("action"), Some("AddOrder"));
        assert_eq!(get("identifier"), Some("IDENT123"));
        assert_eq!(get("secret"), Some(SECRET));
        assert_eq!(get("accesskey"), Some(ACCESS_KEY));
        assert_eq!(get("responsetype"), Some("json"));
        assert_eq!(get("clientid"), Some("42"));
        assert_eq!(get("paymentmethod"), Some("banktransfer"));
        assert_eq!(get("pid[0]"), Some("7"));
        assert_eq!(get("billingcycle[0]"), Some("monthly"));
        assert_eq!(get("qty[0]"), Some("1"));
        assert_eq!(get("pid[1]"), Some("9"));
        assert_eq!(get("billingcycle[1]"), Some("annually"));
        assert_eq!(get("qty[1]"), Some("3"));
        assert_eq!(get("notes"), Some("sf-order:801000000000005AAA"));
        assert_eq!(get("noemail"), Some("1"));
        // Wire form as PHP's http_build_query writes it.
        assert!(
            body.contains("&pid%5B0%5D=7&billingcycle%5B0%5D=monthly&qty%5B0%5D=1&"),
            "{body}"
        );
        assert!(
            body.contains("notes=sf-order%3A801000000000005AAA"),
            "{body}"
        );

        // PHP-truthy: false is omitted, never "0" or "false".
        let body = client().add_order_form(&request(false));
        assert!(!body.contains("noemail"), "{body}");
    }

    #[test]
    fn lenient_add_order_decoding() {
        let r = decode_add_order(
            &json!({"result":"success","orderid":"12","serviceids":"5,6",
            "addonids":"","domainids":"","invoiceid":"77"}),
        )
        .expect("decoded");
        assert_eq!(
            r,
            AddOrderResult {
                order_id: 12,
                service_ids: vec![5, 6],
                invoice_id: Some(77)
            }
        );
        let r = decode_add_order(
            &json!({"result":"success","orderid":12,"productids":"9","invoiceid":0}),
        )
        .expect("decoded");
        assert_eq!((r.service_ids, r.invoice_id), (vec![9], None));
        let r = decode_add_order(&json!({"result":"success","orderid":"3","serviceids":""}))
            .expect("decoded");
        assert!(r.service_ids.is_empty() && r.invoice_id.is_none());
        assert!(decode_add_order(&json!({"result":"success"})).is_none());
        assert!(decode_add_order(&json!({"result":"success","orderid":""})).is_none());
    }

    #[test]
    fn lenient_get_orders_decoding() {
        let v = json!({"result":"success","totalresults":"2","startnumber":0,"numreturned":2,
        "orders":{"order":[
            {"id":"11","ordernum":"7858259149","userid":"42","status":"Pending",
             "notes":"sf-order:801000000000005AAA",
             "lineitems":{"lineitem":[
                 {"type":"product","relid":"5","product":"VPS"},
                 {"type":"domain","relid":9},
                 {"type":"product","relid":6}]}},
            {"id":10,"userid":42,"status":"Active","notes":null,"lineitems":"",
             "date":"2020-09-23 13:59:35"}
        ]}});
        let (total, orders) = decode_orders(&v).expect("decoded");
        assert_eq!(total, 2);
        assert_eq!(
            orders[0],
            WhmcsOrder {
                id: 11,
                user_id: 42,
                status: "Pending".into(),
                notes: "sf-order:801000000000005AAA".into(),
                service_ids: vec![5, 6],
                date: None,
            }
        );
        assert_eq!((orders[1].id, orders[1].notes.as_str()), (10, ""));
        assert_eq!(
            orders[1].date,
            chrono::NaiveDate::from_ymd_opt(2020, 9, 23).and_then(|d| d.and_hms_opt(13, 59, 35))
        );
        assert!(orders[1].service_ids.is_empty());

        // Empty list as "", and a lone object instead of a one-element list.
        let (total, orders) =
            decode_orders(&json!({"result":"success","totalresults":0,"orders":""}))
                .expect("empty");
        assert_eq!((total, orders.len()), (0, 0));
        let (total, orders) = decode_orders(&json!({"result":"success","totalresults":1,
            "orders":{"order":{"id":"3","lineitems":{"lineitem":{"type":"product","relid":"8"}}}}}))
        .expect("single");
        assert_eq!(
            (total, orders[0].id, orders[0].service_ids.clone()),
            (1, 3, vec![8])
        );
        let (_, orders) = decode_orders(&json!({"orders":{"order":[]}})).expect("missing total");
        assert!(orders.is_empty());
        assert!(decode_orders(&json!({"orders":{"order":[{"status":"Active"}]}})).is_none());
    }

    #[tokio::test]
    async fn transport_errors_are_classified_and_carry_no_secret() {
        // Nothing listens on a port that was free a moment ago: a connect error, request unsent.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let mut cfg = WhmcsConfig::new(
            format!("http://127.0.0.1:{port}/includes/api.php"),
            "IDENT123",
            SecretString::from(SECRET),
        );
        cfg.timeout = Duration::from_secs(5);
        let whmcs = WhmcsClient::new(reqwest::Client::new(), cfg);
        let e = whmcs.add_order(&request(true)).await.expect_err("refused");
        assert_eq!(e.kind, WhmcsErrorKind::Connect);
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(!e.is_ambiguous());
        assert_eq!(e.action, "AddOrder");
        for text in [e.to_string(), format!("{e:?}"), format!("{whmcs:?}")] {
            assert!(!text.contains(SECRET) && !text.contains("S3cr3t"), "{text}");
            assert!(!text.contains("IDENT123"), "{text}");
        }
    }

    #[test]
    fn secrets_absent_from_debug() {
        let c = client();
        let cfg_dbg = format!("{:?}", c.inner.cfg);
        assert!(
            !cfg_dbg.contains("S3cr3t") && !cfg_dbg.contains(ACCESS_KEY),
            "{cfg_dbg}"
        );
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("S3cr3t") && !dbg.contains(ACCESS_KEY),
            "{dbg}"
        );
    }
}
