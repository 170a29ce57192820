//! Salesforce REST client: the worker's one read (SOQL with the `OrderItems` subquery) and one
//! write (PATCH) per Order, the reconciler's stuck-order query, the operators' bulk redrive
//! (sObject Collections `PATCH composite/sobjects`, [`COLLECTION_MAX`] records per call, one
//! result per record), and classification of every REST failure into an [`ErrorClass`].
//!
//! Invariants:
//! - Exactly one HTTP request per call, plus at most one replay of it after a 401 (the token is
//!   re-minted through [`TokenProvider::refresh`] with the generation that failed). No other
//!   retries happen here: the worker owns backoff. (Follow-up pages of a query result, which
//!   Salesforce only returns for very large results, are the one exception.)
//! - Nothing caller-supplied is spliced into SOQL unchecked: record ids are [`SalesforceId`]s
//!   (alphanumeric), datetimes are formatted by us, field API names come from configuration and
//!   are checked by [`OrderFieldNames::validate`].
//! - Every request has a total timeout ([`REST_TIMEOUT`] unless changed with
//!   [`RestClient::with_timeout`]). Error values never contain the access token.
//! - `api_usage` reflects the last `Sforce-Limit-Info` header seen on any response.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{
    RequestBuilder,
    header::{ACCEPT, CONTENT_TYPE, HeaderMap},
};
use secrecy::ExposeSecret;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value;

use super::auth::{AuthError, TokenProvider};
use crate::{
    error::{Classify, ErrorClass},
    ids::SalesforceId,
    lenient, net,
};

/// Default total timeout of one REST request.
pub const REST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `Activation_Error_Message__c` written (Text(255)).
pub const ERROR_MESSAGE_MAX: usize = 255;
/// Ids per `WHERE Id IN (...)` query, keeping the GET URL well under Salesforce's limits.
const IDS_PER_QUERY: usize = 200;
/// Most records one sObject Collections request may carry (Salesforce's limit).
pub const COLLECTION_MAX: usize = 200;
/// Largest `LIMIT` of the stuck-order query (one result batch, no follow-up pages).
const STUCK_LIMIT_MAX: u32 = 2000;

/// API names of the fields the daemon reads and writes (configurable; defaults match the
/// contract).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct OrderFieldNames {
    pub activation_status: String,
    pub whmcs_order_id: String,
    pub error_code: String,
    pub error_message: String,
    pub last_attempt_at: String,
    /// On Account.
    pub account_whmcs_client_id: String,
    /// On Product2.
    pub product_whmcs_product_id: String,
    /// On Product2.
    pub product_whmcs_billing_cycle: String,
}

impl Default for OrderFieldNames {
    fn default() -> Self {
        Self {
            activation_status: "Activation_Status__c".into(),
            whmcs_order_id: "WHMCS_Order_ID__c".into(),
            error_code: "Activation_Error_Code__c".into(),
            error_message: "Activation_Error_Message__c".into(),
            last_attempt_at: "Activation_Last_Attempt_At__c".into(),
            account_whmcs_client_id: "WHMCS_Client_ID__c".into(),
            product_whmcs_product_id: "WHMCS_Product_ID__c".into(),
            product_whmcs_billing_cycle: "WHMCS_Billing_Cycle__c".into(),
        }
    }
}

impl OrderFieldNames {
    /// Every name must be a Salesforce API name (`[A-Za-z][A-Za-z0-9_]*`); they are spliced into
    /// SOQL. The error names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("activation_status", &self.activation_status),
            ("whmcs_order_id", &self.whmcs_order_id),
            ("error_code", &self.error_code),
            ("error_message", &self.error_message),
            ("last_attempt_at", &self.last_attempt_at),
            ("account_whmcs_client_id", &self.account_whmcs_client_id),
            ("product_whmcs_product_id", &self.product_whmcs_product_id),
            (
                "product_whmcs_billing_cycle",
                &self.product_whmcs_billing_cycle,
            ),
        ];
        for (setting, name) in all {
            let b = name.as_bytes();
            let ok = b.len() <= 80
                && b.first().is_some_and(u8::is_ascii_alphabetic)
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
            if !ok {
                return Err(format!(
                    "Salesforce field name `{setting}` = {name:?} is not an API name"
                ));
            }
        }
        Ok(())
    }
}

/// An Order as the worker needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SfOrder {
    pub id: SalesforceId,
    pub order_number: Option<String>,
    pub status: Option<String>,
    pub account_id: Option<SalesforceId>,
    pub activation_status: Option<String>,
    pub whmcs_order_id: Option<String>,
    /// From the Order's Account.
    pub whmcs_client_id: Option<String>,
    pub items: Vec<SfOrderItem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SfOrderItem {
    pub id: String,
    pub quantity: f64,
    /// From the item's Product2.
    pub whmcs_product_id: Option<String>,
    /// From the item's Product2.
    pub billing_cycle: Option<String>,
}

/// The result of one record of an sObject Collections update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordResult {
    pub id: SalesforceId,
    pub success: bool,
    /// Salesforce's `statusCode` (or the request's error code when the whole call failed).
    pub code: Option<String>,
    pub message: Option<String>,
}

/// Per-record results of a `composite/sobjects` response, in the order of `ids` (Salesforce
/// answers in request order); a record the answer leaves out counts as failed.
fn parse_collection_results(
    ids: &[SalesforceId],
    body: &[u8],
) -> Result<Vec<RecordResult>, SfError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| SfError::bad_response(200, "collection result is not JSON"))?;
    let Some(list) = v.as_array() else {
        return Err(SfError::bad_response(
            200,
            "collection result is not a list",
        ));
    };
    Ok(ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let Some(r) = list.get(i) else {
                return RecordResult {
                    id: id.clone(),
                    success: false,
                    code: Some("SF_BAD_RESPONSE".into()),
                    message: Some("no result for this record".into()),
                };
            };
            let success = r.get("success").and_then(Value::as_bool).unwrap_or(false);
            let first = r
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|e| e.first());
            RecordResult {
                id: id.clone(),
                success,
                code: first
                    .and_then(|e| e.get("statusCode"))
                    .and_then(lenient::string_of)
                    .or_else(|| (!success).then(|| "UNKNOWN".to_owned())),
                message: first
                    .and_then(|e| e.get("message"))
                    .and_then(lenient::string_of),
            }
        })
        .collect())
}

/// An Order the reconciler may re-drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckOrder {
    pub id: SalesforceId,
    /// `LastModifiedDate`; `None` if Salesforce did not say.
    pub last_modified: Option<DateTime<Utc>>,
}

/// The final write-back of one provisioning attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderUpdate {
    Activated {
        whmcs_order_id: String,
        at: DateTime<Utc>,
    },
    /// [`OrderUpdate::Activated`] without the standard `Status` field: the retry for an org
    /// whose validation rules or Order lifecycle refuse the `Status` change.
    ActivatedFieldsOnly {
        whmcs_order_id: String,
        at: DateTime<Utc>,
    },
    /// `whmcs_order_id` is set when the WHMCS order exists (e.g. `AcceptOrder` failed): it is
    /// written too, so a re-trigger reuses that order even if the ledger lost it.
    Failed {
        code: String,
        message: String,
        whmcs_order_id: Option<String>,
        at: DateTime<Utc>,
    },
}

/// A failed Salesforce REST call. `status` is 0 when no HTTP answer was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SfError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub class: ErrorClass,
}

impl fmt::Display for SfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == 0 {
            write!(
                f,
                "Salesforce request failed ({}): {}",
                self.code, self.message
            )
        } else {
            write!(
                f,
                "Salesforce HTTP {} {}: {}",
                self.status, self.code, self.message
            )
        }
    }
}

impl Classify for SfError {
    fn class(&self) -> ErrorClass {
        self.class
    }
    fn code(&self) -> String {
        self.code.clone()
    }
}

impl From<AuthError> for SfError {
    fn from(e: AuthError) -> Self {
        Self {
            status: e.status(),
            code: e.code(),
            message: e.to_string(),
            class: e.class(),
        }
    }
}

impl SfError {
    /// What this failure tells the Salesforce breaker: rejected credentials (the OAuth token
    /// request), an outage (network, 5xx, rate limit, row lock), or an answer.
    pub fn breaker_result(&self) -> crate::deps::CallResult {
        if self.class == ErrorClass::Transient {
            crate::deps::CallResult::Outage(self.to_string())
        } else if self.class == ErrorClass::Config && self.code.starts_with("SF_AUTH_") {
            crate::deps::CallResult::AuthFailed(self.to_string())
        } else {
            crate::deps::CallResult::Answered
        }
    }

    fn transport(e: &reqwest::Error) -> Self {
        Self {
            status: 0,
            code: if e.is_timeout() {
                "SF_TIMEOUT"
            } else {
                "SF_NETWORK"
            }
            .into(),
            message: net::describe(e),
            class: ErrorClass::Transient,
        }
    }

    fn bad_response(status: u16, what: &str) -> Self {
        Self {
            status,
            code: "SF_BAD_RESPONSE".into(),
            message: format!("unexpected Salesforce response: {what}"),
            class: ErrorClass::Transient,
        }
    }
}

const TRANSIENT_CODES: &[&str] = &[
    "REQUEST_LIMIT_EXCEEDED",
    "UNABLE_TO_LOCK_ROW",
    "SERVER_UNAVAILABLE",
    "QUERY_TIMEOUT",
];
const CONFIG_CODES: &[&str] = &[
    "INVALID_SESSION_ID",
    "INVALID_AUTH_HEADER",
    "INVALID_FIELD",
    "INVALID_FIELD_FOR_INSERT_UPDATE",
    "INVALID_TYPE",
    "MALFORMED_QUERY",
    "MALFORMED_ID",
    "JSON_PARSER_ERROR",
    "API_DISABLED_FOR_ORG",
    "API_CURRENTLY_DISABLED",
    "FUNCTIONALITY_NOT_ENABLED",
];
const PERMANENT_CODES: &[&str] = &[
    "NOT_FOUND",
    "ENTITY_IS_DELETED",
    "ENTITY_IS_LOCKED",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    "FIELD_FILTER_VALIDATION_EXCEPTION",
    "FIELD_INTEGRITY_EXCEPTION",
    "REQUIRED_FIELD_MISSING",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
    "INVALID_CROSS_REFERENCE_KEY",
    "STRING_TOO_LONG",
    "DUPLICATE_VALUE",
];

/// The class of a REST failure from its HTTP status and Salesforce `errorCode`.
pub fn classify(status: u16, code: &str) -> ErrorClass {
    if TRANSIENT_CODES.contains(&code) || status >= 500 || matches!(status, 408 | 409 | 412 | 429) {
        ErrorClass::Transient
    } else if CONFIG_CODES.contains(&code) || code.starts_with("INSUFFICIENT_ACCESS") {
        ErrorClass::Config
    } else if PERMANENT_CODES.contains(&code) {
        ErrorClass::Permanent
    } else {
        match status {
            401 | 403 | 410 => ErrorClass::Config,
            400..=499 => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        }
    }
}

/// Decodes a REST error body (`[{"message","errorCode","fields"}]`, leniently: also a bare
/// object, or the OAuth `{"error","error_description"}` form). A body without a usable code
/// gets `SF_HTTP_<status>`. Never panics.
pub fn parse_error_body(status: u16, body: &[u8]) -> SfError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let errors: &[Value] = match &parsed {
        Some(Value::Array(items)) => items,
        Some(one @ Value::Object(_)) => std::slice::from_ref(one),
        _ => &[],
    };
    let field = |e: &Value, a: &str, b: &str| {
        e.get(a)
            .or_else(|| e.get(b))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let code = errors
        .iter()
        .find_map(|e| field(e, "errorCode", "error"))
        .and_then(|c| {
            let sane = c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            sane.then(|| c.to_ascii_uppercase())
        })
        .unwrap_or_else(|| format!("SF_HTTP_{status}"));
    let mut message = String::new();
    for m in errors
        .iter()
        .filter_map(|e| field(e, "message", "error_description"))
    {
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(&m);
        if message.len() > 1000 {
            message = clip_chars(&message, 1000).to_owned();
            break;
        }
    }
    if message.is_empty() {
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        message = format!("HTTP {status} {reason}").trim_end().to_owned();
    }
    SfError {
        status,
        class: classify(status, &code),
        code,
        message,
    }
}

/// `used/limit` from `Sforce-Limit-Info` (`api-usage=10018/100000`, possibly with other
/// comma-separated entries such as `per-app-api-usage=…`). Never panics.
pub fn parse_limit_info(header: &str) -> Option<(u64, u64)> {
    header.split([',', ';']).find_map(|part| {
        let (used, limit) = part.trim().strip_prefix("api-usage=")?.split_once('/')?;
        Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
    })
}

/// At most `max` characters of `s`, cut on a char boundary.
fn clip_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// The longest prefix of `s` that fits a Salesforce text field of `max` characters. Salesforce
/// counts UTF-16 code units, so a character outside the BMP (emoji) counts as two; for other
/// text this is simply the first `max` characters. Always cut on a char boundary.
pub fn truncate_for_field(s: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &s[..i];
        }
    }
    s
}

/// Salesforce datetime literal / JSON value: `2024-05-01T12:00:00Z` (no fractional seconds).
/// A Salesforce date-time (`2026-05-01T12:00:00.000+0000`, or RFC 3339).
fn parse_sf_datetime(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn soql_datetime(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

struct Inner {
    http: reqwest::Client,
    tokens: TokenProvider,
    /// `/services/data/v65.0`
    data_path: String,
    fields: OrderFieldNames,
    /// The order SELECT up to and including `WHERE Id `.
    order_select: String,
    api_used: AtomicU64,
    /// 0 = no header seen yet.
    api_limit: AtomicU64,
}

/// Salesforce REST client. Cheap to clone (one `Arc`); clones share the token cache and the
/// API-usage reading.
#[derive(Clone)]
pub struct RestClient {
    inner: Arc<Inner>,
    timeout: Duration,
    /// Told every call's result (see [`crate::deps`]).
    breaker: Option<Arc<crate::deps::Breaker>>,
    /// How many calls go out at once (see [`crate::deps::limiter`]).
    limiter: Option<Arc<crate::deps::limiter::Limiter>>,
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestClient")
            .field("data_path", &self.inner.data_path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One page of a query result.
struct QueryPage {
    records: Vec<Value>,
    next: Option<String>,
}

fn parse_query_page(body: &[u8]) -> Result<QueryPage, SfError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|_| SfError::bad_response(200, "query result is not JSON"))?;
    let records = match v.get_mut("records").map(Value::take) {
        Some(Value::Array(records)) => records,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(SfError::bad_response(200, "`records` is not a list")),
    };
    Ok(QueryPage {
        records,
        next: next_records_url(&v),
    })
}

/// `nextRecordsUrl` of a (sub)query result that is not `done`.
fn next_records_url(result: &Value) -> Option<String> {
    if result.get("done").and_then(Value::as_bool) == Some(false) {
        result
            .get("nextRecordsUrl")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("/services/data/"))
            .map(str::to_owned)
    } else {
        None
    }
}

fn parse_item(rec: &Value, f: &OrderFieldNames) -> Result<SfOrderItem, SfError> {
    let product = rec.get("Product2");
    let product_field = |name: &str| {
        product
            .and_then(|p| p.get(name))
            .and_then(lenient::string_of)
    };
    Ok(SfOrderItem {
        id: rec
            .get("Id")
            .and_then(lenient::string_of)
            .ok_or_else(|| SfError::bad_response(200, "OrderItem without Id"))?,
        quantity: rec
            .get("Quantity")
            .and_then(lenient::f64_of)
            .ok_or_else(|| SfError::bad_response(200, "OrderItem without a numeric Quantity"))?,
        whmcs_product_id: product_field(&f.product_whmcs_product_id),
        billing_cycle: product_field(&f.product_whmcs_billing_cycle),
    })
}

/// An Order record of the order query, and the URL of further OrderItems if the subquery was
/// paged.
fn parse_order(rec: &Value, f: &OrderFieldNames) -> Result<(SfOrder, Option<String>), SfError> {
    let text = |name: &str| rec.get(name).and_then(lenient::string_of);
    let id = rec
        .get("Id")
        .and_then(Value::as_str)
        .and_then(|s| SalesforceId::parse(s).ok())
        .ok_or_else(|| SfError::bad_response(200, "Order without a valid Id"))?;
    let items_result = rec.get("OrderItems");
    let items = lenient::list(items_result, "records")
        .iter()
        .map(|r| parse_item(r, f))
        .collect::<Result<Vec<_>, _>>()?;
    let order = SfOrder {
        id,
        order_number: text("OrderNumber"),
        status: text("Status"),
        account_id: rec
            .get("AccountId")
            .and_then(Value::as_str)
            .and_then(|s| SalesforceId::parse(s).ok()),
        activation_status: text(&f.activation_status),
        whmcs_order_id: text(&f.whmcs_order_id),
        whmcs_client_id: rec
            .get("Account")
            .and_then(|a| a.get(&f.account_whmcs_client_id))
            .and_then(lenient::string_of),
        items,
    };
    Ok((order, items_result.and_then(next_records_url)))
}

/// PATCH body of an [`OrderUpdate`], keyed by the configured field names.
struct PatchBody<'a> {
    fields: &'a OrderFieldNames,
    update: &'a OrderUpdate,
}

impl Serialize for PatchBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.fields;
        let len = match self.update {
            OrderUpdate::Activated { .. } => 6,
            OrderUpdate::ActivatedFieldsOnly { .. } => 5,
            OrderUpdate::Failed { whmcs_order_id, .. } => 4 + usize::from(whmcs_order_id.is_some()),
        };
        let mut m = s.serialize_map(Some(len))?;
        match self.update {
            OrderUpdate::Activated { whmcs_order_id, at }
            | OrderUpdate::ActivatedFieldsOnly { whmcs_order_id, at } => {
                m.serialize_entry(&f.activation_status, "Activated")?;
                if matches!(self.update, OrderUpdate::Activated { .. }) {
                    m.serialize_entry("Status", "Activated")?;
                }
                m.serialize_entry(&f.whmcs_order_id, whmcs_order_id)?;
                m.serialize_entry(&f.error_code, &())?;
                m.serialize_entry(&f.error_message, &())?;
                m.serialize_entry(&f.last_attempt_at, &soql_datetime(at))?;
            }
            OrderUpdate::Failed {
                code,
                message,
                whmcs_order_id,
                at,
            } => {
                m.serialize_entry(&f.activation_status, "Failed")?;
                if let Some(id) = whmcs_order_id {
                    m.serialize_entry(&f.whmcs_order_id, id)?;
                }
                m.serialize_entry(&f.error_code, truncate_for_field(code, ERROR_MESSAGE_MAX))?;
                m.serialize_entry(
                    &f.error_message,
                    truncate_for_field(message, ERROR_MESSAGE_MAX),
                )?;
                m.serialize_entry(&f.last_attempt_at, &soql_datetime(at))?;
            }
        }
        m.end()
    }
}

impl RestClient {
    /// `api_version` is `"65.0"` (a leading `v` is accepted). Call
    /// [`OrderFieldNames::validate`] on configured names first.
    pub fn new(
        http: reqwest::Client,
        tokens: TokenProvider,
        api_version: &str,
        fields: OrderFieldNames,
    ) -> Self {
        let version = api_version.trim().trim_start_matches(['v', 'V']);
        let order_select = format!(
            "SELECT Id, OrderNumber, Status, AccountId, {}, {}, Account.{}, \
             (SELECT Id, Quantity, Product2.{}, Product2.{} FROM OrderItems) \
             FROM Order WHERE Id ",
            fields.activation_status,
            fields.whmcs_order_id,
            fields.account_whmcs_client_id,
            fields.product_whmcs_product_id,
            fields.product_whmcs_billing_cycle,
        );
        Self {
            inner: Arc::new(Inner {
                http,
                tokens,
                data_path: format!("/services/data/v{version}"),
                fields,
                order_select,
                api_used: AtomicU64::new(0),
                api_limit: AtomicU64::new(0),
            }),
            timeout: REST_TIMEOUT,
            breaker: None,
            limiter: None,
        }
    }

    /// The same client with another total timeout per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reads one Order with its items (one SOQL query). `Ok(None)` if no such Order.
    pub async fn get_order(&self, id: &SalesforceId) -> Result<Option<SfOrder>, SfError> {
        let soql = format!("{}= '{id}'", self.inner.order_select);
        Ok(self.query_orders(&soql).await?.into_iter().next())
    }

    /// Reads several Orders (one query per 200 ids). Unknown ids are simply absent.
    pub async fn get_orders(&self, ids: &[SalesforceId]) -> Result<Vec<SfOrder>, SfError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let mut soql = String::with_capacity(self.inner.order_select.len() + chunk.len() * 22);
            soql.push_str(&self.inner.order_select);
            soql.push_str("IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    soql.push(',');
                }
                soql.push('\'');
                soql.push_str(id.as_str());
                soql.push('\'');
            }
            soql.push(')');
            out.extend(self.query_orders(&soql).await?);
        }
        Ok(out)
    }

    /// One page of Orders that look stuck: `Activating`, last attempt before `older_than` or
    /// never attempted; least recently attempted first (never-attempted ones first of all),
    /// `offset` rows in. Carries each Order's `LastModifiedDate` (when the last activation
    /// request, or any other edit, happened) so the reconciler can tell a fresh request from an
    /// outcome the ledger already holds.
    pub async fn query_stuck_orders(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<StuckOrder>, SfError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let f = &self.inner.fields;
        let soql = format!(
            "SELECT Id, LastModifiedDate FROM Order WHERE {status} = 'Activating' \
             AND ({last} = null OR {last} < {at}) ORDER BY {last} ASC NULLS FIRST, Id \
             LIMIT {n} OFFSET {offset}",
            status = f.activation_status,
            last = f.last_attempt_at,
            at = soql_datetime(&older_than),
            n = limit.min(STUCK_LIMIT_MAX),
        );
        let page = self.query(&soql).await?;
        page.records
            .iter()
            .map(|r| {
                let id = r
                    .get("Id")
                    .and_then(Value::as_str)
                    .and_then(|s| SalesforceId::parse(s).ok())
                    .ok_or_else(|| SfError::bad_response(200, "Order without a valid Id"))?;
                let last_modified = r
                    .get("LastModifiedDate")
                    .and_then(Value::as_str)
                    .and_then(parse_sf_datetime);
                Ok(StuckOrder { id, last_modified })
            })
            .collect()
    }

    /// The distinct WHMCS product ids that Products (`Product2`) map to, sorted; for checking
    /// them against WHMCS.
    pub async fn mapped_product_ids(&self) -> Result<Vec<String>, SfError> {
        let field = &self.inner.fields.product_whmcs_product_id;
        let soql = format!("SELECT {field} FROM Product2 WHERE {field} != null");
        let page = self.query(&soql).await?;
        let ids: std::collections::BTreeSet<String> = page
            .records
            .iter()
            .filter_map(|r| r.get(field.as_str()))
            .filter_map(crate::lenient::string_of)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(ids.into_iter().collect())
    }

    /// Writes the outcome of an attempt onto the Order (one PATCH).
    pub async fn update_order(
        &self,
        id: &SalesforceId,
        update: &OrderUpdate,
    ) -> Result<(), SfError> {
        let body = serde_json::to_vec(&PatchBody {
            fields: &self.inner.fields,
            update,
        })
        .map_err(|_| SfError::bad_response(0, "could not encode the update"))?;
        let path = format!("{}/sobjects/Order/{id}", self.inner.data_path);
        self.send(
            |http, instance| {
                http.patch(format!("{instance}{path}"))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            |_| Ok(()),
        )
        .await
    }

    /// Sets `Activation_Status__c` (the configured field) to `value` on every Order of `ids`
    /// with sObject Collections updates (`allOrNone: false`, [`COLLECTION_MAX`] records per
    /// call); one result per Order, in order. A call that fails as a whole marks each of its
    /// records failed with the call's error; later calls are still made.
    pub async fn set_activation_status(
        &self,
        ids: &[SalesforceId],
        value: &str,
    ) -> Vec<RecordResult> {
        let path = format!("{}/composite/sobjects", self.inner.data_path);
        let field = &self.inner.fields.activation_status;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(COLLECTION_MAX) {
            let records: Vec<Value> = chunk
                .iter()
                .map(|id| {
                    let mut rec = serde_json::Map::new();
                    rec.insert("attributes".into(), serde_json::json!({"type": "Order"}));
                    rec.insert("id".into(), Value::from(id.as_str()));
                    rec.insert(field.clone(), Value::from(value));
                    Value::Object(rec)
                })
                .collect();
            let body = serde_json::json!({"allOrNone": false, "records": records}).to_string();
            let result = self
                .send(
                    |http, instance| {
                        http.patch(format!("{instance}{path}"))
                            .header(CONTENT_TYPE, "application/json")
                            .body(body.clone())
                    },
                    |b| parse_collection_results(chunk, b),
                )
                .await;
            match result {
                Ok(r) => out.extend(r),
                Err(e) => out.extend(chunk.iter().map(|id| RecordResult {
                    id: id.clone(),
                    success: false,
                    code: Some(e.code.clone()),
                    message: Some(e.to_string()),
                })),
            }
        }
        out
    }

    /// Last `Sforce-Limit-Info` reading as `(used, limit)`, if any response carried one.
    pub fn api_usage(&self) -> Option<(u64, u64)> {
        let limit = self.inner.api_limit.load(Ordering::Relaxed);
        (limit != 0).then(|| (self.inner.api_used.load(Ordering::Relaxed), limit))
    }

    /// Runs the order SELECT and parses every record, following paged OrderItems.
    async fn query_orders(&self, soql: &str) -> Result<Vec<SfOrder>, SfError> {
        let page = self.query(soql).await?;
        let mut orders = Vec::with_capacity(page.records.len());
        for rec in &page.records {
            let (mut order, mut next) = parse_order(rec, &self.inner.fields)?;
            while let Some(url) = next.take() {
                let more = self.get_page(&url).await?;
                for item in &more.records {
                    order.items.push(parse_item(item, &self.inner.fields)?);
                }
                next = more.next;
            }
            orders.push(order);
        }
        Ok(orders)
    }

    /// A query with all its result pages (more than one only for very large results).
    async fn query(&self, soql: &str) -> Result<QueryPage, SfError> {
        let path = format!("{}/query", self.inner.data_path);
        let mut page = self
            .send(
                |http, instance| http.get(format!("{instance}{path}")).query(&[("q", soql)]),
                parse_query_page,
            )
            .await?;
        while let Some(url) = page.next.take() {
            let more = self.get_page(&url).await?;
            page.records.extend(more.records);
            page.next = more.next;
        }
        Ok(page)
    }

    /// A follow-up page (`nextRecordsUrl`, a path on the instance).
    async fn get_page(&self, path: &str) -> Result<QueryPage, SfError> {
        self.send(
            |http, instance| http.get(format!("{instance}{path}")),
            parse_query_page,
        )
        .await
    }

    /// Sends the request built by `build` (given the client and the instance URL) with the
    /// current token; on 401 re-mints once and replays. Success bodies go through `parse`.
    async fn send<T>(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, SfError>,
    ) -> Result<T, SfError> {
        let permit = match &self.limiter {
            Some(l) => Some(l.acquire().await),
            None => None,
        };
        let result = self.send_once(build, parse).await;
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
        result
    }

    /// This client with at most `limiter`'s limit of calls in flight.
    pub fn with_limiter(mut self, limiter: Arc<crate::deps::limiter::Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// This client with `breaker` told of every call.
    pub fn with_breaker(mut self, breaker: Arc<crate::deps::Breaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    async fn send_once<T>(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, SfError>,
    ) -> Result<T, SfError> {
        let inner = &*self.inner;
        let mut session = inner.tokens.session().await?;
        let mut replayed = false;
        loop {
            let response = build(&inner.http, &session.instance_url)
                .bearer_auth(session.access_token.expose_secret())
                .header(ACCEPT, "application/json")
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|e| SfError::transport(&e))?;
            self.record_limits(response.headers());
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| SfError::transport(&e))?;
            if (200..300).contains(&status) {
                return parse(&body);
            }
            if status == 401 && !replayed {
                tracing::info!(
                    sf.token_generation = session.generation,
                    "Salesforce rejected the access token; re-minting"
                );
                session = inner.tokens.refresh(session.generation).await?;
                replayed = true;
                continue;
            }
            let mut err = parse_error_body(status, &body);
            if status == 401 {
                err.code = "INVALID_SESSION_ID".into();
                err.class = ErrorClass::Config;
            }
            return Err(err);
        }
    }

    fn record_limits(&self, headers: &HeaderMap) {
        if let Some((used, limit)) = headers
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
        {
            self.inner.api_used.store(used, Ordering::Relaxed);
            self.inner.api_limit.store(limit, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn oid(n: u64) -> SalesforceId {
        SalesforceId::synthesize("801", n)
    }

    #[test]
    fn collection_results_follow_the_request_order() {
        let ids = [oid(1), oid(2), oid(3)];
        let r = parse_collection_results(
            &ids,
            br#"[{"id":"801000000000001AAA","success":true,"errors":[]},
                 {"success":false,"errors":[{"statusCode":"ENTITY_IS_DELETED","message":"gone","fields":[]}]}]"#,
        )
        .expect("parsed");
        assert!(r[0].success && r[0].code.is_none());
        assert_eq!(
            (r[1].success, r[1].code.as_deref(), r[1].message.as_deref()),
            (false, Some("ENTITY_IS_DELETED"), Some("gone"))
        );
        assert_eq!((r[2].id.clone(), r[2].success), (oid(3), false));
        assert!(parse_collection_results(&ids, b"{}").is_err());
    }

    #[test]
    fn error_classification_table() {
        use ErrorClass::*;
        let cases: &[(u16, &str, ErrorClass)] = &[
            (401, "INVALID_SESSION_ID", Config),
            (403, "REQUEST_LIMIT_EXCEEDED", Transient),
            (400, "UNABLE_TO_LOCK_ROW", Transient),
            (503, "UNABLE_TO_LOCK_ROW", Transient),
            (503, "SERVER_UNAVAILABLE", Transient),
            (500, "UNKNOWN_EXCEPTION", Transient),
            (502, "SF_HTTP_502", Transient),
            (429, "SF_HTTP_429", Transient),
            (404, "NOT_FOUND", Permanent),
            (404, "ENTITY_IS_DELETED", Permanent),
            (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", Permanent),
            (400, "REQUIRED_FIELD_MISSING", Permanent),
            (400, "FIELD_INTEGRITY_EXCEPTION", Permanent),
            (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", Permanent),
            (400, "ENTITY_IS_LOCKED", Permanent),
            (400, "SOME_NEW_DATA_ERROR", Permanent),
            (400, "INVALID_FIELD", Config),
            (400, "MALFORMED_QUERY", Config),
            (403, "INSUFFICIENT_ACCESS_OR_READONLY", Config),
            (403, "INSUFFICIENT_ACCESS", Config),
            (403, "SOMETHING_ELSE", Config),
            (410, "SF_HTTP_410", Config),
        ];
        for (status, code, class) in cases {
            assert_eq!(classify(*status, code), *class, "{status} {code}");
        }
    }

    #[test]
    fn error_body_parsing() {
        let e = parse_error_body(
            400,
            br#"[{"message":"Status: bad value","errorCode":"FIELD_CUSTOM_VALIDATION_EXCEPTION","fields":["Status"]}]"#,
        );
        assert_eq!(e.code, "FIELD_CUSTOM_VALIDATION_EXCEPTION");
        assert_eq!(e.message, "Status: bad value");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(e.status, 400);
        assert_eq!(e.code(), e.code);

        let e = parse_error_body(
            403,
            br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
        );
        assert_eq!(
            (e.code.as_str(), e.class),
            ("REQUEST_LIMIT_EXCEEDED", ErrorClass::Transient)
        );

        // Two errors: first code, both messages.
        let e = parse_error_body(
            400,
            br#"[{"message":"a","errorCode":"STRING_TOO_LONG"},{"message":"b","errorCode":"X"}]"#,
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("STRING_TOO_LONG", "a; b")
        );

        // Bare object; OAuth-style object.
        let e = parse_error_body(404, br#"{"errorCode":"NOT_FOUND","message":"gone"}"#);
        assert_eq!(
            (e.code.as_str(), e.class),
            ("NOT_FOUND", ErrorClass::Permanent)
        );
        let e = parse_error_body(401, br#"{"error":"invalid_token","error_description":"x"}"#);
        assert_eq!(
            (e.code.as_str(), e.class),
            ("INVALID_TOKEN", ErrorClass::Config)
        );

        // Non-JSON bodies fall back to the status.
        let e = parse_error_body(503, b"<html>Service Unavailable</html>");
        assert_eq!(e.code, "SF_HTTP_503");
        assert_eq!(e.message, "HTTP 503 Service Unavailable");
        assert_eq!(e.class, ErrorClass::Transient);
        let e = parse_error_body(400, b"");
        assert_eq!(
            (e.code.as_str(), e.class),
            ("SF_HTTP_400", ErrorClass::Permanent)
        );
        // A weird code is not used as a metrics label.
        let e = parse_error_body(400, br#"[{"errorCode":"bad code {}","message":"m"}]"#);
        assert_eq!(e.code, "SF_HTTP_400");
        assert_eq!(e.to_string(), "Salesforce HTTP 400 SF_HTTP_400: m");
    }

    #[test]
    fn auth_errors_keep_their_class() {
        let e: SfError = AuthError::Rejected {
            status: 400,
            error: "invalid_grant".into(),
            description: "expired".into(),
        }
        .into();
        assert_eq!(e.class, ErrorClass::Config);
        assert_eq!(e.code, "SF_AUTH_INVALID_GRANT");
        assert_eq!(e.status, 400);
        let e: SfError = AuthError::Transport {
            message: "connection failed".into(),
            timeout: false,
        }
        .into();
        assert_eq!((e.class, e.status), (ErrorClass::Transient, 0));
        assert!(
            e.to_string()
                .starts_with("Salesforce request failed (SF_AUTH_NETWORK)")
        );
    }

    #[test]
    fn limit_info_parsing() {
        assert_eq!(
            parse_limit_info("api-usage=10018/100000"),
            Some((10018, 100000))
        );
        assert_eq!(
            parse_limit_info("api-usage=25/5000, api-bursts=1/750"),
            Some((25, 5000))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=sample), api-usage=3/15000"),
            Some((3, 15000))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=x)"),
            None
        );
        for bad in [
            "",
            "api-usage=",
            "api-usage=1",
            "api-usage=a/b",
            "api-usage=-1/5",
        ] {
            assert_eq!(parse_limit_info(bad), None, "{bad}");
        }
    }

    #[test]
    fn truncation_is_char_safe() {
        let msg = "é".repeat(300);
        let cut = truncate_for_field(&msg, ERROR_MESSAGE_MAX);
        assert_eq!(cut.chars().count(), 255);
        assert_eq!(cut.len(), 510);
        let mixed = format!("a{}", "日本語".repeat(100));
        assert_eq!(truncate_for_field(&mixed, 255).chars().count(), 255);
        assert_eq!(truncate_for_field("short", 255), "short");
        // Characters outside the BMP count twice, as in Salesforce.
        let emoji = "😀".repeat(200);
        assert_eq!(truncate_for_field(&emoji, 255).chars().count(), 127);
    }

    #[test]
    fn patch_bodies() {
        let f = OrderFieldNames::default();
        let at = DateTime::parse_from_rfc3339("2026-05-01T12:00:00.250Z")
            .expect("date")
            .with_timezone(&Utc);
        let ok = OrderUpdate::Activated {
            whmcs_order_id: "1234".into(),
            at,
        };
        let v: Value = serde_json::to_value(PatchBody {
            fields: &f,
            update: &ok,
        })
        .expect("json");
        assert_eq!(
            v,
            json!({
                "Activation_Status__c": "Activated",
                "Status": "Activated",
                "WHMCS_Order_ID__c": "1234",
                "Activation_Error_Code__c": null,
                "Activation_Error_Message__c": null,
                "Activation_Last_Attempt_At__c": "2026-05-01T12:00:00Z"
            })
        );
        let failed = OrderUpdate::Failed {
            code: "WHMCS_NO_ITEMS".into(),
            message: "ü".repeat(400),
            whmcs_order_id: None,
            at,
        };
        let v: Value = serde_json::to_value(PatchBody {
            fields: &f,
            update: &failed,
        })
        .expect("json");
        assert_eq!(v["Activation_Status__c"], "Failed");
        assert_eq!(v["Activation_Error_Code__c"], "WHMCS_NO_ITEMS");
        assert_eq!(
            v["Activation_Error_Message__c"]
                .as_str()
                .expect("str")
                .chars()
                .count(),
            255
        );
        assert!(v.get("Status").is_none());
        assert!(v.get("WHMCS_Order_ID__c").is_none());
        // A failure after the WHMCS order exists keeps its id on the Order.
        let failed = OrderUpdate::Failed {
            code: "WHMCS_ERROR".into(),
            message: "module create failed".into(),
            whmcs_order_id: Some("77".into()),
            at,
        };
        let v: Value = serde_json::to_value(PatchBody {
            fields: &f,
            update: &failed,
        })
        .expect("json");
        assert_eq!(v["Activation_Status__c"], "Failed");
        assert_eq!(v["WHMCS_Order_ID__c"], "77");
        assert_eq!(v.as_object().map(|o| o.len()), Some(5));
    }

    #[test]
    fn order_select_shape() {
        let client = RestClient::new(
            reqwest::Client::new(),
            crate::salesforce::auth::TokenProvider::new(
                reqwest::Client::new(),
                crate::salesforce::auth::AuthFlow::ClientCredentials {
                    login_url: "https://acme.my.salesforce.com".into(),
                    client_id: "id".into(),
                    client_secret: "s".into(),
                },
            )
            .expect("provider"),
            "v65.0",
            OrderFieldNames::default(),
        );
        assert_eq!(client.inner.data_path, "/services/data/v65.0");
        assert_eq!(
            format!("{}= '{}'", client.inner.order_select, oid(1)),
            format!(
                "SELECT Id, OrderNumber, Status, AccountId, Activation_Status__c, WHMCS_Order_ID__c, \
                 Account.WHMCS_Client_ID__c, (SELECT Id, Quantity, Product2.WHMCS_Product_ID__c, \
                 Product2.WHMCS_Billing_Cycle__c FROM OrderItems) FROM Order WHERE Id = '{}'",
                oid(1)
            )
        );
        assert_eq!(client.api_usage(), None);
        assert_eq!(
            soql_datetime(&DateTime::from_timestamp(1_700_000_000, 5).expect("ts")),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn field_names_validate() {
        assert!(OrderFieldNames::default().validate().is_ok());
        let bad = OrderFieldNames {
            whmcs_order_id: "X__c, (SELECT Id FROM Users)".into(),
            ..OrderFieldNames::default()
        };
        let e = bad.validate().expect_err("injection");
        assert!(e.contains("whmcs_order_id"), "{e}");
    }

    #[test]
    fn lenient_order_records() {
        let f = OrderFieldNames::default();
        let account = SalesforceId::synthesize("001", 7);
        let rec = json!({
            "attributes": {"type": "Order", "url": "/services/data/v65.0/sobjects/Order/x"},
            "Id": oid(5).as_str(),
            "OrderNumber": "00000105",
            "Status": "Approved",
            "AccountId": account.as_str(),
            "Activation_Status__c": "Activating",
            "WHMCS_Order_ID__c": null,
            "Account": {"attributes": {}, "WHMCS_Client_ID__c": 42.0},
            "OrderItems": {"totalSize": 2, "done": true, "records": [
                {"Id": "802000000000001AAA", "Quantity": 2.0,
                 "Product2": {"WHMCS_Product_ID__c": "7", "WHMCS_Billing_Cycle__c": "monthly"}},
                {"Id": "802000000000002AAA", "Quantity": "1",
                 "Product2": {"WHMCS_Product_ID__c": 9, "WHMCS_Billing_Cycle__c": null}}
            ]}
        });
        let (order, next) = parse_order(&rec, &f).expect("order");
        assert_eq!(next, None);
        assert_eq!(order.id, oid(5));
        assert_eq!(order.account_id, Some(account));
        assert_eq!(order.activation_status.as_deref(), Some("Activating"));
        assert_eq!(order.whmcs_order_id, None);
        assert_eq!(order.whmcs_client_id.as_deref(), Some("42"));
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.items[0].quantity, 2.0);
        assert_eq!(order.items[0].whmcs_product_id.as_deref(), Some("7"));
        assert_eq!(order.items[1].quantity, 1.0);
        assert_eq!(order.items[1].whmcs_product_id.as_deref(), Some("9"));
        assert_eq!(order.items[1].billing_cycle, None);

        // No items (null subquery), no Account.
        let bare = json!({"Id": oid(6).as_str(), "OrderItems": null, "Account": null});
        let (order, _) = parse_order(&bare, &f).expect("bare order");
        assert!(order.items.is_empty());
        assert_eq!(order.whmcs_client_id, None);

        // Paged subquery.
        let paged = json!({"Id": oid(6).as_str(), "OrderItems": {"done": false,
            "nextRecordsUrl": "/services/data/v65.0/query/01gxx-200", "records": []}});
        let (_, next) = parse_order(&paged, &f).expect("paged order");
        assert_eq!(
            next.as_deref(),
            Some("/services/data/v65.0/query/01gxx-200")
        );

        // Broken records are errors, not guesses.
        assert!(parse_order(&json!({"Id": "nope"}), &f).is_err());
        let no_qty = json!({"Id": oid(6).as_str(), "OrderItems": {"records": [{"Id": "802"}]}});
        assert_eq!(
            parse_order(&no_qty, &f).expect_err("no quantity").code,
            "SF_BAD_RESPONSE"
        );
    }

    #[test]
    fn query_pages() {
        let p = parse_query_page(br#"{"totalSize":0,"done":true,"records":[]}"#).expect("empty");
        assert!(p.records.is_empty() && p.next.is_none());
        let p = parse_query_page(
            br#"{"totalSize":3,"done":false,"nextRecordsUrl":"/services/data/v65.0/query/01g-2","records":[{"Id":"x"}]}"#,
        )
        .expect("paged");
        assert_eq!(
            (p.records.len(), p.next.as_deref()),
            (1, Some("/services/data/v65.0/query/01g-2"))
        );
        // A next URL pointing elsewhere is ignored.
        let p = parse_query_page(
            br#"{"done":false,"nextRecordsUrl":"https://evil.example/x","records":[]}"#,
        )
        .expect("paged");
        assert!(p.next.is_none());
        assert!(parse_query_page(b"<html>").is_err());
    }
}
