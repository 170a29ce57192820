//! The simulator's sObject Collections update: `PATCH /services/data/vXX.X/composite/sobjects`
//! with `{"allOrNone": bool, "records": [{"attributes": {"type": "Order"}, "id": …, field: …}]}`,
//! answering one result per record in request order (`{"id","success","errors"}`).
//!
//! Invariants:
//! * At most [`MAX_RECORDS`] records per request (`EXCEEDED_ID_LIMIT` beyond), each validated as
//!   a single-record PATCH validates it; a refused record changes nothing of itself. With
//!   `allOrNone: true` one refused record leaves every record unchanged
//!   (`ALL_OR_NONE_OPERATION_ROLLED_BACK` for the others).
//! * The request counts as one REST call and one PATCH (`Totals::patch`), consumes injected
//!   faults like every REST resource, and honours `sf_reject_writeback` per record.
//! * Every Order the update sets to `Activating` (from another value) gets a fresh activation
//!   event, published after the state lock is released, as the record-triggered Flow does.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::rest::{FieldError, apply_writes, check_patch_field};
use super::{rest_auth, rest_error, rest_fault, rest_json, valid_version};
use crate::Simulator;
use crate::ids::RecordId;

/// Most records of one request (Salesforce's limit).
pub const MAX_RECORDS: usize = 200;

fn record_error(code: &'static str, message: &str) -> FieldError {
    FieldError {
        code,
        message: message.to_owned(),
        field: None,
    }
}

pub(super) async fn update(
    State(sim): State<Simulator>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, requested) = {
        let mut st = sim.0.lock();
        let usage = match rest_auth(&mut st, &headers) {
            Ok(u) => u,
            Err(r) => return r,
        };
        if let Some(r) = rest_fault(&mut st, usage) {
            return r;
        }
        if !valid_version(&version) {
            return rest_error(
                StatusCode::NOT_FOUND,
                usage,
                "NOT_FOUND",
                super::NOT_FOUND_MSG,
            );
        }
        st.totals.patch += 1;
        let parsed: Option<(bool, Vec<Value>)> = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut m)) => {
                let all_or_none = m.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
                match m.remove("records") {
                    Some(Value::Array(records)) => Some((all_or_none, records)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((all_or_none, records)) = parsed else {
            return rest_error(
                StatusCode::BAD_REQUEST,
                usage,
                "JSON_PARSER_ERROR",
                "The request body must be {\"allOrNone\": …, \"records\": [ … ]}",
            );
        };
        if records.len() > MAX_RECORDS {
            return rest_error(
                StatusCode::BAD_REQUEST,
                usage,
                "EXCEEDED_ID_LIMIT",
                &format!(
                    "record limit reached. cannot submit more than {MAX_RECORDS} records into this call"
                ),
            );
        }
        // Validate every record first.
        type Checked = Result<(RecordId, Vec<(String, Value)>), FieldError>;
        let checked: Vec<Checked> = records
            .iter()
            .map(|rec| {
                let Some(fields) = rec.as_object() else {
                    return Err(record_error("JSON_PARSER_ERROR", "a record must be an object"));
                };
                let object = fields
                    .get("attributes")
                    .and_then(|a| a.get("type"))
                    .and_then(Value::as_str);
                if object != Some("Order") {
                    return Err(record_error(
                        "INVALID_TYPE",
                        "every record needs attributes.type = Order",
                    ));
                }
                let id = fields
                    .get("id")
                    .or_else(|| fields.get("Id"))
                    .and_then(Value::as_str)
                    .and_then(|s| RecordId::parse(s).ok());
                let Some(id) = id else {
                    return Err(record_error("MALFORMED_ID", "invalid or missing record id"));
                };
                let Some(order) = st.orders.get(&id) else {
                    return Err(record_error(
                        "ENTITY_IS_DELETED",
                        "entity is deleted",
                    ));
                };
                let listed = st
                    .faults
                    .sf_reject_writeback
                    .iter()
                    .any(|s| RecordId::parse(s).is_ok_and(|l| l == id));
                if listed {
                    return Err(record_error(
                        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                        "Activated Orders need a signed contract (validation rule Order_Requires_Contract)",
                    ));
                }
                let mut writes = Vec::new();
                for (name, value) in fields {
                    if matches!(name.as_str(), "attributes" | "id" | "Id") {
                        continue;
                    }
                    writes.push(check_patch_field(&st, order, name, value)?);
                }
                Ok((id, writes))
            })
            .collect();
        let refused = checked.iter().any(Result::is_err);
        let mut results = Vec::with_capacity(checked.len());
        let mut requested = Vec::new();
        for c in checked {
            match c {
                Ok((id, _)) if all_or_none && refused => results.push(json!({
                    "id": id.as_str(), "success": false,
                    "errors": [record_error(
                        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    ).json()],
                })),
                Ok((id, writes)) => {
                    if apply_writes(&mut st, &id, writes) {
                        requested.push(id.clone());
                    }
                    results.push(json!({"id": id.as_str(), "success": true, "errors": []}));
                }
                Err(e) => results.push(json!({
                    "success": false,
                    "errors": [e.json()],
                })),
            }
        }
        (
            rest_json(StatusCode::OK, usage, &Value::Array(results)),
            requested,
        )
    };
    for id in &requested {
        sim.activation_requested(id);
    }
    response
}
