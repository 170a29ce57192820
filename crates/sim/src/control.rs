//! The simulator's JSON control surface under `/sim`, for the `sim` CLI subcommand, the demo and
//! the chaos tool (which run the daemon as a child process and drive the simulator over HTTP).
//!
//! Every endpoint maps onto one [`Simulator`] method; nothing here holds state of its own.
//! Replay ids and raw payloads travel as lower-case hex. The surface is unauthenticated: the
//! simulator is a local test tool and binds to loopback by default.

// Helpers return a finished error `Response` as their `Err`; those are cold paths, so the
// size of the variant does not matter.
#![allow(clippy::result_large_err)]

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Faults, OrderSeed, Simulator};
use crate::event::EventPayload;
use crate::ids::RecordId;

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/sim/orders", post(create_order))
        .route("/sim/orders/bulk", post(create_bulk))
        .route("/sim/orders/{id}", get(show_order).patch(patch_order))
        .route("/sim/orders/{id}/approve", post(approve))
        .route("/sim/orders/{id}/items/{index}", put(set_item))
        .route("/sim/state", get(state))
        .route("/sim/faults", put(set_faults).get(get_faults))
        .route("/sim/revoke-tokens", post(revoke_tokens))
        .route("/sim/drop-streams", post(drop_streams))
        .route("/sim/publish", post(publish))
        .route("/sim/publish-raw", post(publish_raw))
        .route("/sim/schemas/{id}/alias", post(add_schema_alias))
}

fn bad_request(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "order not found"})),
    )
        .into_response()
}

/// Parses a JSON body leniently: an empty body means "all defaults".
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, Response> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
}

fn parse_id(id: &str) -> Result<RecordId, Response> {
    RecordId::parse(id).map_err(|_| bad_request("not a 15- or 18-character Salesforce id"))
}

async fn create_order(State(sim): State<Simulator>, bytes: axum::body::Bytes) -> Response {
    match body::<OrderSeed>(&bytes) {
        Ok(seed) => Json(json!({"id": sim.seed_order(seed)})).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Bulk {
    count: usize,
    #[serde(flatten)]
    seed: OrderSeed,
}

async fn create_bulk(State(sim): State<Simulator>, bytes: axum::body::Bytes) -> Response {
    let bulk = match body::<Bulk>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if bulk.count > 1_000_000 {
        return bad_request("count must be at most 1000000");
    }
    let ids: Vec<RecordId> = (0..bulk.count)
        .map(|_| sim.seed_order(bulk.seed.clone()))
        .collect();
    Json(json!({"ids": ids})).into_response()
}

async fn show_order(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(order) = sim.order(&id) else {
        return not_found();
    };
    let mut v = serde_json::to_value(order).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert(
            "counts".into(),
            serde_json::to_value(sim.counts(&id)).unwrap_or(Value::Null),
        );
        m.insert(
            "whmcs_orders".into(),
            serde_json::to_value(sim.whmcs_orders_for(&id)).unwrap_or(Value::Null),
        );
    }
    Json(v).into_response()
}

async fn patch_order(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(fields): Json<Map<String, Value>>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if sim.order(&id).is_none() {
        return not_found();
    }
    for (k, v) in fields {
        sim.set_order_field(&id, &k, v);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn approve(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let rid = sim.approve(&id);
    Json(json!({"replayId": hex::encode(rid)})).into_response()
}

#[derive(Deserialize)]
struct ItemProduct {
    #[serde(alias = "product_id", rename = "productId")]
    product_id: Option<String>,
}

async fn set_item(
    State(sim): State<Simulator>,
    Path((id, index)): Path<(String, usize)>,
    Json(body): Json<ItemProduct>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match sim.order(&id) {
        None => not_found(),
        Some(o) if index >= o.items.len() => bad_request("no item at that index"),
        Some(_) => {
            sim.set_item_product(&id, index, body.product_id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn state(State(sim): State<Simulator>) -> Response {
    Json(json!({
        "totals": sim.totals(),
        "streams": sim.stream_stats(),
        "latestReplayId": sim.latest_replay_id().map(hex::encode),
        "faults": sim.faults(),
        "schemaId": sim.schema_id(),
    }))
    .into_response()
}

async fn set_faults(State(sim): State<Simulator>, bytes: axum::body::Bytes) -> Response {
    match body::<Faults>(&bytes) {
        Ok(f) => {
            sim.set_faults(f);
            Json(json!({"faults": sim.faults()})).into_response()
        }
        Err(r) => r,
    }
}

async fn get_faults(State(sim): State<Simulator>) -> Response {
    Json(json!({"faults": sim.faults()})).into_response()
}

async fn revoke_tokens(State(sim): State<Simulator>) -> Response {
    sim.revoke_tokens();
    StatusCode::NO_CONTENT.into_response()
}

async fn drop_streams(State(sim): State<Simulator>) -> Response {
    sim.drop_streams();
    StatusCode::NO_CONTENT.into_response()
}

/// An arbitrary event, field by field (every field optional).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PublishBody {
    order_id: Option<String>,
    idem_key: Option<String>,
    correlation_id: Option<String>,
    requested_by: Option<String>,
    version: Option<f64>,
    created_date_ms: Option<i64>,
    created_by_id: Option<String>,
}

async fn publish(State(sim): State<Simulator>, bytes: axum::body::Bytes) -> Response {
    let b = match body::<PublishBody>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let rid = sim.publish(EventPayload {
        created_date_ms: b
            .created_date_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        created_by_id: b
            .created_by_id
            .unwrap_or_else(|| sim.0.user_id.as_str().to_owned()),
        order_id: b.order_id,
        idem_key: b.idem_key,
        correlation_id: b.correlation_id,
        requested_by: b.requested_by,
        version: b.version,
    });
    Json(json!({"replayId": hex::encode(rid)})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBody {
    schema_id: String,
    payload_hex: String,
}

async fn publish_raw(State(sim): State<Simulator>, Json(b): Json<RawBody>) -> Response {
    let Ok(payload) = hex::decode(b.payload_hex.trim()) else {
        return bad_request("payloadHex is not hex");
    };
    let rid = sim.publish_raw(&b.schema_id, payload);
    Json(json!({"replayId": hex::encode(rid)})).into_response()
}

/// Makes `GetSchema` answer `id` with the topic's schema.
async fn add_schema_alias(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    sim.add_schema_alias(&id);
    StatusCode::NO_CONTENT.into_response()
}
