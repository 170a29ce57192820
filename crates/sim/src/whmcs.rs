//! The simulator's WHMCS External API: `POST /includes/api.php`, form-encoded, PHP bracket
//! arrays (`pid[0]=…`), JSON responses in WHMCS's own style (ids as strings in AddOrder, numbers
//! in GetOrders, `""` for empty lists, business errors with HTTP 200, auth errors with 403).
//!
//! Owns the WHMCS order book (orders, services, invoices) and its indices by client and by the
//! Salesforce order named in the `sf-order:<id>` notes tag. Actions: AddOrder, AcceptOrder,
//! GetOrders, plus GetClientsDetails, GetPaymentMethods, GetProducts and WhmcsDetails for
//! connectivity and compatibility checks.
//!
//! Versions (`SimConfig::whmcs_version`): before 8.12 `AddOrder` ignores `qty[]` and creates one
//! service of quantity 1 per line; from 8.12 a line's service carries its quantity. GetProducts
//! knows every positive product id except those in `Faults::whmcs_reject_products`.
//!
//! Invariants:
//! * Order ids are dense (`id = index + 1`); per-client and per-Salesforce-order indices make
//!   every lookup O(1) or O(page).
//! * Credentials are checked before any fault is injected; a failed auth never mutates state.
//! * Faults (latency, error rate, timeout, after-commit, a failing module create on AcceptOrder)
//!   are decided under the lock, slept out without it; a hanging call ends early when the
//!   simulator shuts down.
//! * GetOrders answers newest first (`ORDER BY id DESC`, as WHMCS does; it has no sort
//!   parameter) with each order's `date` in `Y-m-d H:i:s`; [`WhmcsState::seed_history`] gives a
//!   client thousands of older orders at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Simulator, State as SimState, WhmcsFaultKind};
use crate::ids::RecordId;

const PAYMENT_METHODS: &[(&str, &str)] = &[
    ("banktransfer", "Bank Transfer"),
    ("mailin", "Mail In Payment"),
    ("paypal", "PayPal"),
    ("stripe", "Credit Card"),
];
const BILLING_CYCLES: &[(&str, &str)] = &[
    ("free", "Free Account"),
    ("onetime", "One Time"),
    ("monthly", "Monthly"),
    ("quarterly", "Quarterly"),
    ("semiannually", "Semi-Annually"),
    ("annually", "Annually"),
    ("biennially", "Biennially"),
    ("triennially", "Triennially"),
];
const NO_ITEMS: &str = "No items added to cart so order cannot proceed";
const NOT_PENDING: &str = "Order ID not found or Status not Pending";
/// How long a `Timeout` fault hangs before answering 504.
const HANG: Duration = Duration::from_secs(60);

/// One line (service) of a WHMCS order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhmcsLineSnapshot {
    pub service_id: u64,
    pub product_id: u64,
    pub billing_cycle: String,
    pub qty: u64,
    pub status: String,
}

/// Snapshot of one WHMCS order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhmcsOrderSnapshot {
    pub id: u64,
    pub ordernum: u64,
    pub userid: u64,
    /// `Pending` until accepted, then `Active`.
    pub status: String,
    pub notes: String,
    pub payment_method: String,
    pub invoice_id: u64,
    pub lines: Vec<WhmcsLineSnapshot>,
}

impl WhmcsOrderSnapshot {
    pub fn service_ids(&self) -> Vec<u64> {
        self.lines.iter().map(|l| l.service_id).collect()
    }
}

struct WOrder {
    snap: WhmcsOrderSnapshot,
    date: String,
    sf_order: Option<RecordId>,
}

/// The WHMCS order book.
#[derive(Default)]
pub(crate) struct WhmcsState {
    orders: Vec<WOrder>,
    by_client: HashMap<u64, Vec<u64>>,
    by_sf: HashMap<RecordId, Vec<u64>>,
    next_service: u64,
    next_invoice: u64,
}

impl WhmcsState {
    fn get(&self, id: u64) -> Option<&WOrder> {
        id.checked_sub(1)
            .and_then(|i| self.orders.get(usize::try_from(i).ok()?))
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut WOrder> {
        id.checked_sub(1)
            .and_then(|i| self.orders.get_mut(usize::try_from(i).ok()?))
    }

    /// Adds `n` Active orders for `client` dated `date` (WHMCS's `Y-m-d H:i:s`), with no
    /// Salesforce tag and no services: a long order history in one call.
    pub fn seed_history(&mut self, client: u64, n: usize, date: &str) {
        for _ in 0..n {
            let id = self.orders.len() as u64 + 1;
            self.by_client.entry(client).or_default().push(id);
            self.orders.push(WOrder {
                snap: WhmcsOrderSnapshot {
                    id,
                    ordernum: 1_000_000_000 + (id.wrapping_mul(2_654_435_761) % 8_999_999_999),
                    userid: client,
                    status: "Active".into(),
                    notes: String::new(),
                    payment_method: "banktransfer".into(),
                    invoice_id: 0,
                    lines: Vec::new(),
                },
                date: date.to_owned(),
                sf_order: None,
            });
        }
    }

    pub fn orders_for(&self, sf: &RecordId) -> Vec<WhmcsOrderSnapshot> {
        self.by_sf
            .get(sf)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.get(*id).map(|o| o.snap.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/includes/api.php", post(api))
}

/// Form fields with PHP array semantics: `k[0]=…`, `k[]=…` build arrays; later scalars win.
struct Params {
    scalars: HashMap<String, String>,
    arrays: HashMap<String, BTreeMap<usize, String>>,
}

impl Params {
    fn new(pairs: Vec<(String, String)>) -> Self {
        let mut scalars = HashMap::new();
        let mut arrays: HashMap<String, BTreeMap<usize, String>> = HashMap::new();
        for (k, v) in pairs {
            let bracket = k
                .split_once('[')
                .and_then(|(name, rest)| rest.strip_suffix(']').map(|idx| (name, idx)));
            match bracket {
                Some((name, idx)) => {
                    let arr = arrays.entry(name.to_owned()).or_default();
                    let index = if idx.is_empty() {
                        arr.keys().next_back().map_or(0, |k| k + 1)
                    } else if let Ok(i) = idx.parse() {
                        i
                    } else {
                        continue;
                    };
                    arr.insert(index, v);
                }
                None => {
                    scalars.insert(k, v);
                }
            }
        }
        Self { scalars, arrays }
    }

    fn get(&self, k: &str) -> &str {
        self.scalars.get(k).map(String::as_str).unwrap_or("")
    }

    fn at(&self, k: &str, i: usize) -> Option<&str> {
        self.arrays.get(k)?.get(&i).map(String::as_str)
    }
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    json_reply(status, &json!({"result": "error", "message": message}))
}

fn html(status: StatusCode, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    r
}

fn sf_of_notes(notes: &str) -> Option<RecordId> {
    notes
        .trim()
        .strip_prefix("sf-order:")
        .and_then(|id| RecordId::parse(id.trim()).ok())
}

/// A positive integer as PHP's `(int)` would accept it from a form field.
fn positive_int(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|n| *n > 0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    AddOrder,
    AcceptOrder,
    GetOrders,
    GetClientsDetails,
    GetPaymentMethods,
    GetProducts,
    WhmcsDetails,
}

/// Whether a WHMCS version honours `AddOrder`'s `qty[]` (8.12 and later).
fn honours_qty(version: &str) -> bool {
    let mut parts = version
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (8, 12)
}

/// One WHMCS API request being served (`Totals::whmcs_in_flight`).
struct InFlight<'a>(&'a Simulator);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.0.0.lock();
        st.totals.whmcs_in_flight = st.totals.whmcs_in_flight.saturating_sub(1);
    }
}

async fn api(State(sim): State<Simulator>, body: Bytes) -> Response {
    let inner = sim.0.clone();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let p = Params::new(pairs);
    let (down, auth_failed) = {
        let mut st = inner.lock();
        st.totals.whmcs_requests += 1;
        st.totals.whmcs_in_flight += 1;
        st.totals.whmcs_max_in_flight =
            st.totals.whmcs_max_in_flight.max(st.totals.whmcs_in_flight);
        (st.faults.whmcs_down, st.faults.whmcs_auth_failed)
    };
    // Counts this request out when it ends, however it ends (answered or dropped).
    let _in_flight = InFlight(&sim);
    if down {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            "<html>503 Service Unavailable</html>",
        );
    }
    if auth_failed {
        return error(StatusCode::FORBIDDEN, "Authentication Failed");
    }
    let identifier = match p.get("identifier") {
        "" => p.get("username"),
        v => v,
    };
    let secret = match p.get("secret") {
        "" => p.get("password"),
        v => v,
    };
    if identifier != inner.cfg.whmcs_identifier || secret != inner.cfg.whmcs_secret {
        return error(StatusCode::FORBIDDEN, "Authentication Failed");
    }
    let action_name = p.get("action");
    let action = match action_name.to_ascii_lowercase().as_str() {
        "" => return error(StatusCode::BAD_REQUEST, "Empty action request"),
        "addorder" => Action::AddOrder,
        "acceptorder" => Action::AcceptOrder,
        "getorders" => Action::GetOrders,
        "getclientsdetails" => Action::GetClientsDetails,
        "getpaymentmethods" => Action::GetPaymentMethods,
        "getproducts" => Action::GetProducts,
        "whmcsdetails" => Action::WhmcsDetails,
        other => {
            return error(
                StatusCode::FORBIDDEN,
                &format!("Invalid API Action: \"{other}\" is not a valid API action"),
            );
        }
    };

    // Count the call and decide its fault under the lock.
    let (latency, fault, slow_commit) = {
        let mut st = inner.lock();
        st.totals.whmcs_calls += 1;
        attribute(&mut st, action, &p);
        let (min, max) = (st.faults.whmcs_latency_ms, st.faults.whmcs_latency_max_ms);
        let latency = crate::Faults::draw_latency(&mut st.rng, min, max);
        let f = &st.faults;
        let slow_commit = f.whmcs_slow_commit_ms;
        let rate = f.whmcs_error_rate;
        let kind = f.whmcs_error_kind;
        // Injected errors hit the order actions; the informational ones (version, products,
        // clients) answer, as a WHMCS whose order hooks fail still does.
        let order_action = if f.whmcs_error_actions.is_empty() {
            matches!(
                action,
                Action::AddOrder | Action::AcceptOrder | Action::GetOrders
            )
        } else {
            f.whmcs_error_actions
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p.get("action")))
        };
        let fault = (order_action && rate > 0.0 && st.rng.random::<f64>() < rate).then_some(kind);
        (latency, fault, slow_commit)
    };
    if action == Action::AddOrder && slow_commit > 0 {
        // The commit runs on its own task: a caller that gives up does not stop it.
        let commit = tokio::spawn({
            let sim = sim.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(slow_commit)).await;
                perform(&sim, action, &p)
            }
        });
        return tokio::select! {
            r = commit => r.unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "commit task failed")),
            _ = inner.shutdown.cancelled() => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        };
    }
    if !latency.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(latency) => {}
            _ = inner.shutdown.cancelled() => {}
        }
    }
    match fault {
        Some(WhmcsFaultKind::Http500) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            "<html>Internal Server Error</html>",
        ),
        Some(WhmcsFaultKind::Timeout) => {
            tokio::select! {
                _ = tokio::time::sleep(HANG) => {}
                _ = inner.shutdown.cancelled() => {}
            }
            html(
                StatusCode::GATEWAY_TIMEOUT,
                "<html><body><h1>504 Gateway Time-out</h1></body></html>",
            )
        }
        Some(WhmcsFaultKind::CommitThenHang) => {
            let _performed = perform(&sim, action, &p);
            tokio::select! {
                _ = tokio::time::sleep(HANG) => {}
                _ = inner.shutdown.cancelled() => {}
            }
            html(
                StatusCode::GATEWAY_TIMEOUT,
                "<html><body><h1>504 Gateway Time-out</h1></body></html>",
            )
        }
        Some(WhmcsFaultKind::AfterCommit) => {
            let _performed = perform(&sim, action, &p);
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html>Internal Server Error</html>",
            )
        }
        None => perform(&sim, action, &p),
    }
}

/// Counts AddOrder / AcceptOrder calls against the Salesforce order they concern.
fn attribute(st: &mut SimState, action: Action, p: &Params) {
    let sf = match action {
        Action::AddOrder => {
            st.totals.add_order += 1;
            sf_of_notes(p.get("notes"))
        }
        Action::AcceptOrder => {
            st.totals.accept_order += 1;
            positive_int(p.get("orderid"))
                .and_then(|id| st.whmcs.get(id))
                .and_then(|o| o.sf_order.clone())
        }
        Action::GetOrders => {
            st.totals.get_orders += 1;
            None
        }
        Action::GetClientsDetails
        | Action::GetPaymentMethods
        | Action::GetProducts
        | Action::WhmcsDetails => None,
    };
    if let Some(rec) = sf.and_then(|id| st.orders.get_mut(&id)) {
        match action {
            Action::AddOrder => rec.counts.add_order += 1,
            Action::AcceptOrder => rec.counts.accept_order += 1,
            _ => {}
        }
    }
}

fn perform(sim: &Simulator, action: Action, p: &Params) -> Response {
    let version = sim.0.cfg.whmcs_version.clone();
    let mut st = sim.0.lock();
    match action {
        Action::AddOrder => add_order(&mut st, p, honours_qty(&version)),
        Action::WhmcsDetails => json_reply(
            StatusCode::OK,
            &json!({
                "result": "success",
                "whmcs": {"version": version, "canonicalversion": format!("{version}-release.1")},
            }),
        ),
        Action::GetProducts => get_products(&st, p),
        Action::AcceptOrder => accept_order(&mut st, p),
        Action::GetOrders => get_orders(&mut st, p),
        Action::GetClientsDetails => match positive_int(p.get("clientid")) {
            Some(id) => json_reply(
                StatusCode::OK,
                &json!({
                    "result": "success",
                    "client": {
                        "id": id, "client_id": id, "userid": id,
                        "firstname": "Client", "lastname": id.to_string(),
                        "email": format!("client{id}@example.com"),
                        "status": "Active", "currency": 1,
                    }
                }),
            ),
            None => error(StatusCode::OK, "Client Not Found"),
        },
        Action::GetPaymentMethods => {
            let list: Vec<Value> = PAYMENT_METHODS
                .iter()
                .map(|(m, d)| json!({"module": m, "displayname": d}))
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({"result": "success", "totalresults": list.len(), "paymentmethods": {"paymentmethod": list}}),
            )
        }
    }
}

/// `GetProducts` for `pid` (one id or a comma list; empty: nothing, the simulator has no
/// catalogue to list).
fn get_products(st: &SimState, p: &Params) -> Response {
    let rejected = &st.faults.whmcs_reject_products;
    let products: Vec<Value> = p
        .get("pid")
        .split(',')
        .filter_map(positive_int)
        .filter(|pid| !rejected.iter().any(|r| positive_int(r) == Some(*pid)))
        .map(|pid| {
            json!({
                "pid": pid, "gid": 1, "type": "other", "name": format!("Product {pid}"),
                "module": "", "paytype": "recurring", "allowqty": 1,
            })
        })
        .collect();
    let total = products.len();
    let products = if products.is_empty() {
        Value::from("")
    } else {
        json!({"product": products})
    };
    json_reply(
        StatusCode::OK,
        &json!({"result": "success", "totalresults": total, "products": products}),
    )
}

fn add_order(st: &mut SimState, p: &Params, honours_qty: bool) -> Response {
    let Some(client) = positive_int(p.get("clientid")) else {
        return error(StatusCode::OK, "Client ID Not Found");
    };
    let method = p.get("paymentmethod");
    if !PAYMENT_METHODS.iter().any(|(m, _)| *m == method) {
        let valid: Vec<&str> = PAYMENT_METHODS.iter().map(|(m, _)| *m).collect();
        return error(
            StatusCode::OK,
            &format!(
                "Invalid Payment Method. Valid options include {}",
                valid.join(",")
            ),
        );
    }
    if p.scalars.contains_key("pid") {
        return error(StatusCode::OK, "Expecting parameter 'pid' to be an array");
    }
    let Some(pids) = p.arrays.get("pid").filter(|a| !a.is_empty()) else {
        return error(StatusCode::OK, NO_ITEMS);
    };
    let mut lines = Vec::with_capacity(pids.len());
    for (&i, pid) in pids {
        let Some(pid_n) = positive_int(pid) else {
            return error(StatusCode::OK, NO_ITEMS);
        };
        if st
            .faults
            .whmcs_reject_products
            .iter()
            .any(|r| r.trim() == pid.trim())
        {
            return error(StatusCode::OK, NO_ITEMS);
        }
        let cycle = p
            .at("billingcycle", i)
            .unwrap_or("monthly")
            .to_ascii_lowercase();
        let Some((_, label)) = BILLING_CYCLES.iter().find(|(c, _)| *c == cycle) else {
            return error(StatusCode::OK, NO_ITEMS);
        };
        let qty = match p.at("qty", i) {
            // Before 8.12 WHMCS reads no quantity: one service per line.
            _ if !honours_qty => 1,
            None | Some("") => 1,
            Some(q) => match q.trim().parse::<f64>() {
                Ok(q) if q >= 1.0 => q as u64,
                _ => 1,
            },
        };
        lines.push((pid_n, (*label).to_owned(), qty));
    }
    let w = &mut st.whmcs;
    let id = w.orders.len() as u64 + 1;
    let invoice_id = if p.get("noinvoice").is_empty() || p.get("noinvoice") == "0" {
        w.next_invoice += 1;
        w.next_invoice
    } else {
        0
    };
    let lines: Vec<WhmcsLineSnapshot> = lines
        .into_iter()
        .map(|(pid, cycle, qty)| {
            w.next_service += 1;
            WhmcsLineSnapshot {
                service_id: w.next_service,
                product_id: pid,
                billing_cycle: cycle,
                qty,
                status: "Pending".into(),
            }
        })
        .collect();
    let notes = p.get("notes").to_owned();
    let sf_order = sf_of_notes(&notes);
    let snap = WhmcsOrderSnapshot {
        id,
        // Deterministic 10-digit order number, like WHMCS's random ones.
        ordernum: 1_000_000_000 + (id.wrapping_mul(2_654_435_761) % 8_999_999_999),
        userid: client,
        status: "Pending".into(),
        notes,
        payment_method: method.to_owned(),
        invoice_id,
        lines,
    };
    let service_ids: Vec<String> = snap
        .lines
        .iter()
        .map(|l| l.service_id.to_string())
        .collect();
    let service_ids = service_ids.join(",");
    w.by_client.entry(client).or_default().push(id);
    if let Some(sf) = &sf_order {
        w.by_sf.entry(sf.clone()).or_default().push(id);
    }
    w.orders.push(WOrder {
        snap,
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        sf_order,
    });
    st.totals.whmcs_orders += 1;
    let mut body = json!({
        "result": "success",
        "orderid": id.to_string(),
        "serviceids": service_ids,
        "productids": service_ids,
        "addonids": "",
        "domainids": "",
    });
    if invoice_id > 0 {
        body["invoiceid"] = Value::from(invoice_id.to_string());
    }
    json_reply(StatusCode::OK, &body)
}

fn accept_order(st: &mut SimState, p: &Params) -> Response {
    let module_error = st.faults.whmcs_accept_error.clone();
    let order = positive_int(p.get("orderid")).and_then(|id| st.whmcs.get_mut(id));
    match order {
        // A module create that failed: WHMCS answers the module's message and the order stays
        // Pending, so a later AcceptOrder retries it.
        Some(o) if o.snap.status == "Pending" && module_error.is_some() => error(
            StatusCode::OK,
            module_error.as_deref().unwrap_or("Module create failed"),
        ),
        Some(o) if o.snap.status == "Pending" => {
            o.snap.status = "Active".into();
            for l in &mut o.snap.lines {
                l.status = "Active".into();
            }
            json_reply(StatusCode::OK, &json!({"result": "success"}))
        }
        _ => error(StatusCode::OK, NOT_PENDING),
    }
}

fn order_json(o: &WOrder) -> Value {
    let s = &o.snap;
    let method_name = PAYMENT_METHODS
        .iter()
        .find(|(m, _)| *m == s.payment_method)
        .map_or(s.payment_method.as_str(), |(_, n)| n);
    let lines: Vec<Value> = s
        .lines
        .iter()
        .map(|l| {
            json!({
                "type": "product",
                "relid": l.service_id,
                "producttype": "Other Product/Service",
                "product": format!("Product {}", l.product_id),
                "domain": "",
                "billingcycle": l.billing_cycle,
                "amount": "0.00",
                "status": l.status,
            })
        })
        .collect();
    json!({
        "id": s.id,
        "ordernum": s.ordernum,
        "userid": s.userid,
        "contactid": 0,
        "requestor_id": 0,
        "admin_requestor_id": 0,
        "date": o.date,
        "nameservers": "",
        "transfersecret": "",
        "renewals": "",
        "promocode": "",
        "promotype": "",
        "promovalue": "",
        "orderdata": "[]",
        "amount": "0.00",
        "paymentmethod": s.payment_method,
        "invoiceid": s.invoice_id,
        "status": s.status,
        "ipaddress": "",
        "fraudmodule": "",
        "fraudoutput": "",
        "notes": s.notes,
        "paymentmethodname": method_name,
        "paymentstatus": if s.invoice_id > 0 { "Unpaid" } else { "" },
        "lineitems": {"lineitem": lines},
    })
}

fn get_orders(st: &mut SimState, p: &Params) -> Response {
    let start = p.get("limitstart").trim().parse::<usize>().unwrap_or(0);
    let num = p
        .get("limitnum")
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(25);
    let status = p.get("status");
    let w = &st.whmcs;
    let keep = |o: &&WOrder| status.is_empty() || o.snap.status.eq_ignore_ascii_case(status);
    // Candidate order ids, newest first.
    let (total, page): (usize, Vec<&WOrder>) = if let Some(id) = positive_int(p.get("id")) {
        let v: Vec<&WOrder> = w
            .get(id)
            .filter(|o| match positive_int(p.get("userid")) {
                Some(u) => o.snap.userid == u,
                None => true,
            })
            .into_iter()
            .filter(keep)
            .collect();
        (v.len(), v.into_iter().skip(start).take(num).collect())
    } else if !p.get("userid").is_empty() {
        let ids = positive_int(p.get("userid"))
            .and_then(|u| w.by_client.get(&u))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let iter = ids.iter().rev().filter_map(|id| w.get(*id)).filter(keep);
        if status.is_empty() {
            (ids.len(), iter.skip(start).take(num).collect())
        } else {
            let all: Vec<&WOrder> = iter.collect();
            (all.len(), all.into_iter().skip(start).take(num).collect())
        }
    } else if status.is_empty() {
        (
            w.orders.len(),
            w.orders.iter().rev().skip(start).take(num).collect(),
        )
    } else {
        let all: Vec<&WOrder> = w.orders.iter().rev().filter(keep).collect();
        (all.len(), all.into_iter().skip(start).take(num).collect())
    };
    let sf_hits: Vec<RecordId> = page.iter().filter_map(|o| o.sf_order.clone()).collect();
    let orders: Vec<Value> = page.iter().map(|o| order_json(o)).collect();
    for sf in sf_hits {
        if let Some(rec) = st.orders.get_mut(&sf) {
            rec.counts.get_orders += 1;
        }
    }
    let numreturned = orders.len();
    let orders = if orders.is_empty() {
        Value::from("")
    } else {
        json!({"order": orders})
    };
    json_reply(
        StatusCode::OK,
        &json!({
            "result": "success",
            "totalresults": total,
            "startnumber": start,
            "numreturned": numreturned,
            "orders": orders,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_arrays() {
        let p = Params::new(vec![
            ("pid[0]".into(), "7".into()),
            ("pid[1]".into(), "8".into()),
            ("billingcycle[1]".into(), "annually".into()),
            ("qty[]".into(), "2".into()),
            ("clientid".into(), "3".into()),
        ]);
        assert_eq!(p.get("clientid"), "3");
        assert_eq!(p.at("pid", 1), Some("8"));
        assert_eq!(p.at("billingcycle", 0), None);
        assert_eq!(p.at("qty", 0), Some("2"));
    }

    #[test]
    fn quantity_support_starts_at_8_12() {
        assert!(!honours_qty("8.7.2"));
        assert!(!honours_qty("8.11.9"));
        assert!(honours_qty("8.12.0"));
        assert!(honours_qty("8.13.1-release.1"));
        assert!(honours_qty("9.0.0"));
    }

    #[test]
    fn notes_tag() {
        assert_eq!(
            sf_of_notes("sf-order:801000000000001AAA").map(|i| i.to_string()),
            Some("801000000000001AAA".into())
        );
        assert_eq!(sf_of_notes("other"), None);
        assert_eq!(positive_int("0"), None);
        assert_eq!(positive_int("-1"), None);
        assert_eq!(positive_int("12"), Some(12));
    }
}
