//! The simulator's REST record resources: `sobjects/Order/{id}` GET (all fields or a `fields`
//! list) and PATCH, and the API version list.
//!
//! Invariants:
//! * PATCH validates every field before writing any (a rejected PATCH changes nothing):
//!   read-only fields, text types, restricted picklists, datetimes and text length, with
//!   Salesforce's error codes.
//! * GET and PATCH count as REST calls and consume injected faults like every REST resource.
//! * A PATCH that sets `Activation_Status__c` to `Activating` (from another value) publishes an
//!   activation event, as the org's record-triggered Flow does ([`crate::Simulator::approve`]).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{
    NOT_FOUND_MSG, json_response, order_url, parse_datetime, rest_auth, rest_error, rest_fault,
    rest_field_error, rest_json, valid_version, with_usage,
};
use crate::ids::RecordId;
use crate::{OrderRec, Simulator, State as SimState};

/// Order fields the REST API refuses to write.
const READ_ONLY: &[&str] = &[
    "Id",
    "OrderNumber",
    "StatusCode",
    "CreatedDate",
    "LastModifiedDate",
];
/// Order fields that hold text (values must be strings or null).
const TEXT_FIELDS: &[&str] = &[
    "Status",
    "AccountId",
    "EffectiveDate",
    "Type",
    "Description",
    "Activation_Status__c",
    "WHMCS_Order_ID__c",
    "WHMCS_Service_Ids__c",
    "WHMCS_Invoice_Id__c",
    "Activation_Error_Code__c",
    "Activation_Error_Message__c",
    "Activation_Last_Attempt_At__c",
];
const ACTIVATION_VALUES: &[&str] = &["Activating", "Activated", "Failed"];
const STATUS_VALUES: &[&str] = &["Draft", "Pending Review", "Approved", "Activated"];
const MAX_TEXT: usize = 255;

pub(super) async fn versions() -> Response {
    json_response(
        StatusCode::OK,
        &json!([
            {"label": "Winter '26", "url": "/services/data/v65.0", "version": "65.0"},
            {"label": "Spring '26", "url": "/services/data/v66.0", "version": "66.0"},
        ]),
    )
}

pub(super) async fn get_record(
    State(sim): State<Simulator>,
    Path((version, object, id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let inner = &sim.0;
    let mut st = inner.lock();
    let usage = match rest_auth(&mut st, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Some(r) = rest_fault(&mut st, usage) {
        return r;
    }
    let id = RecordId::parse(&id).ok();
    let rec = match (valid_version(&version) && object == "Order", id) {
        (true, Some(id)) => st.orders.get(&id),
        _ => None,
    };
    let Some(rec) = rec else {
        return rest_error(StatusCode::NOT_FOUND, usage, "NOT_FOUND", NOT_FOUND_MSG);
    };
    let params: Vec<(String, String)> = raw
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let wanted = params
        .iter()
        .find(|(k, _)| k == "fields")
        .map(|(_, v)| v.as_str());
    let mut out = Map::new();
    out.insert(
        "attributes".into(),
        json!({"type": "Order", "url": order_url(&version, &rec.id)}),
    );
    match wanted {
        Some(list) => {
            for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let Some(canon) = st.canonical_field(f) else {
                    return rest_error(
                        StatusCode::BAD_REQUEST,
                        usage,
                        "INVALID_FIELD",
                        &format!("No such column '{f}' on sobject of type Order"),
                    );
                };
                out.insert(
                    canon.to_owned(),
                    rec.fields.get(canon).cloned().unwrap_or(Value::Null),
                );
            }
        }
        None => {
            for (k, v) in &rec.fields {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    rest_json(StatusCode::OK, usage, &Value::Object(out))
}

/// Normalises a datetime to Salesforce's `yyyy-MM-ddTHH:mm:ss.SSS+0000` form.
fn normalize_datetime(s: &str) -> Option<String> {
    parse_datetime(s).map(|dt| {
        dt.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
            .to_string()
    })
}

fn field_label(canon: &str) -> String {
    canon.trim_end_matches("__c").replace('_', " ")
}

/// Why one field of a PATCH is refused (always HTTP 400).
pub(super) struct FieldError {
    pub code: &'static str,
    pub message: String,
    /// The field Salesforce names in `fields`, when it names one.
    pub field: Option<String>,
}

impl FieldError {
    fn new(code: &'static str, message: String, field: Option<&str>) -> Self {
        Self {
            code,
            message,
            field: field.map(str::to_owned),
        }
    }

    /// The whole-request answer (single-record PATCH).
    fn response(&self, usage: u64) -> Response {
        match &self.field {
            Some(f) => {
                rest_field_error(StatusCode::BAD_REQUEST, usage, self.code, &self.message, f)
            }
            None => rest_error(StatusCode::BAD_REQUEST, usage, self.code, &self.message),
        }
    }

    /// One entry of a record's `errors` (sObject Collections).
    pub(super) fn json(&self) -> Value {
        json!({
            "statusCode": self.code,
            "message": self.message,
            "fields": self.field.iter().collect::<Vec<_>>(),
        })
    }
}

/// Validates one PATCH field; returns the canonical name and the value to store.
pub(super) fn check_patch_field(
    st: &SimState,
    rec: &OrderRec,
    name: &str,
    value: &Value,
) -> Result<(String, Value), FieldError> {
    let Some(canon) = st.canonical_field(name) else {
        return Err(FieldError::new(
            "INVALID_FIELD",
            format!("No such column '{name}' on sobject of type Order"),
            None,
        ));
    };
    if READ_ONLY.contains(&canon) {
        return Err(FieldError::new(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {canon}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."
            ),
            Some(canon),
        ));
    }
    if TEXT_FIELDS.contains(&canon) && !(value.is_null() || value.is_string()) {
        return Err(FieldError::new(
            "JSON_PARSER_ERROR",
            format!("Cannot deserialize instance of string from {value} value for field {canon}"),
            None,
        ));
    }
    let text = value.as_str();
    let picklist_error = || {
        FieldError::new(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            format!(
                "{}: bad value for restricted picklist field: {}",
                field_label(canon),
                text.unwrap_or("null")
            ),
            Some(canon),
        )
    };
    let mut stored = value.clone();
    match canon {
        "Activation_Status__c" if text.is_some_and(|t| !ACTIVATION_VALUES.contains(&t)) => {
            return Err(picklist_error());
        }
        "Status" => {
            let current = rec.fields.get("Status").and_then(Value::as_str);
            match text {
                Some(t) if STATUS_VALUES.contains(&t) || Some(t) == current => {}
                _ => return Err(picklist_error()),
            }
        }
        "Activation_Last_Attempt_At__c" => {
            if let Some(t) = text {
                match normalize_datetime(t) {
                    Some(n) => stored = Value::from(n),
                    None => {
                        return Err(FieldError::new(
                            "JSON_PARSER_ERROR",
                            format!(
                                "Cannot deserialize value of type `DateTime` from String \"{t}\" for field {canon}"
                            ),
                            None,
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    if TEXT_FIELDS.contains(&canon) && text.is_some_and(|t| t.chars().count() > MAX_TEXT) {
        return Err(FieldError::new(
            "STRING_TOO_LONG",
            format!(
                "{}: data value too large (max length={MAX_TEXT})",
                field_label(canon)
            ),
            Some(canon),
        ));
    }
    Ok((canon.to_owned(), stored))
}

pub(super) async fn patch_record(
    State(sim): State<Simulator>,
    Path((version, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inner = &sim.0;
    let mut st = inner.lock();
    let usage = match rest_auth(&mut st, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let id = match RecordId::parse(&id) {
        Ok(id) if valid_version(&version) && object == "Order" && st.orders.contains_key(&id) => id,
        _ => {
            if let Some(r) = rest_fault(&mut st, usage) {
                return r;
            }
            return rest_error(StatusCode::NOT_FOUND, usage, "NOT_FOUND", NOT_FOUND_MSG);
        }
    };
    st.totals.patch += 1;
    if let Some(rec) = st.orders.get_mut(&id) {
        rec.counts.patch += 1;
    }
    if let Some(r) = rest_fault(&mut st, usage) {
        return r;
    }
    let fields: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return rest_error(
                StatusCode::BAD_REQUEST,
                usage,
                "JSON_PARSER_ERROR",
                "The request body must be a JSON object of field values",
            );
        }
    };
    let listed = |list: &[String]| {
        list.iter()
            .any(|s| RecordId::parse(s).is_ok_and(|listed| listed == id))
    };
    if listed(&st.faults.sf_reject_writeback)
        || (fields.contains_key("Status") && listed(&st.faults.sf_reject_status_change))
    {
        return rest_error(
            StatusCode::BAD_REQUEST,
            usage,
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "Activated Orders need a signed contract (validation rule Order_Requires_Contract)",
        );
    }
    let Some(rec) = st.orders.get(&id) else {
        return rest_error(StatusCode::NOT_FOUND, usage, "NOT_FOUND", NOT_FOUND_MSG);
    };
    let mut writes = Vec::with_capacity(fields.len());
    for (name, value) in &fields {
        if name == "attributes" {
            continue;
        }
        match check_patch_field(&st, rec, name, value) {
            Ok(w) => writes.push(w),
            Err(e) => return e.response(usage),
        }
    }
    let requested = apply_writes(&mut st, &id, writes);
    drop(st);
    if requested {
        sim.activation_requested(&id);
    }
    with_usage(StatusCode::NO_CONTENT.into_response(), usage)
}

/// Writes validated fields onto an Order; `true` when the write set `Activation_Status__c` to
/// `Activating` from another value (the record-triggered Flow then publishes the activation
/// event; the caller does so once the state lock is released).
pub(super) fn apply_writes(st: &mut SimState, id: &RecordId, writes: Vec<(String, Value)>) -> bool {
    let before = st
        .orders
        .get(id)
        .and_then(|r| r.fields.get("Activation_Status__c"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut requested = false;
    for (canon, value) in writes {
        if canon == "Activation_Status__c"
            && value.as_str() == Some("Activating")
            && before.as_deref() != Some("Activating")
        {
            requested = true;
        }
        st.write_field(id, &canon, value);
    }
    st.touch(id);
    if let Some(rec) = st.orders.get_mut(id) {
        rec.patched_at = Some(std::time::Instant::now());
    }
    requested
}
