//! The simulator's Salesforce Pub/Sub API: a tonic server for `eventbus.v1.PubSub` that behaves
//! like `api.pubsub.salesforce.com` for the parts a subscriber depends on.
//!
//! Owns: metadata auth (`accesstoken` / `instanceurl` / `tenantid`), GetTopic, GetSchema,
//! Publish and the Subscribe pull stream (replay presets, flow control, keepalives, fault
//! injection). Salesforce error codes travel in the Status metadata key `error-code`.
//!
//! Invariants:
//! * A stream never delivers more events than the client's outstanding demand, and outstanding
//!   demand never exceeds 100 (larger requests are capped; the uncapped value is recorded).
//! * Events are delivered in replay order, each exactly once per stream, starting strictly after
//!   the stream's start position.
//! * Streams wait on the shared `wake` watch channel (and the keepalive deadline): no polling.
//! * The state lock is taken only in synchronous sections, never across `.await`.

use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use super::{Inner, MAX_BATCH, Simulator, parse_replay_id, replay_id};
use crate::event::EVENT_SCHEMA_JSON;
use pubsub_proto::{
    self, FetchRequest, FetchResponse, ManagedFetchRequest, ManagedFetchResponse, PublishRequest,
    PublishResponse, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest,
    pub_sub_server::PubSub,
};

pub(crate) const AUTH_ERROR: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
pub(crate) const TOPIC_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.topic.not.found";
pub(crate) const SCHEMA_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.schema.not.found";
pub(crate) const REPLAY_CORRUPTED: &str =
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
pub(crate) const REPLAY_VALIDATION: &str =
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed";
pub(crate) const REQUESTED_INVALID: &str =
    "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid";
pub(crate) const TOPIC_MISMATCH: &str =
    "sfdc.platform.eventbus.grpc.subscription.fetch.topic.mismatch";
pub(crate) const SERVICE_UNAVAILABLE: &str = "sfdc.platform.eventbus.grpc.service.unavailable";

/// A Status carrying a Salesforce `error-code` (and an `rpc-id`), as the real service sends.
pub(crate) fn sf_status(code: Code, error_code: &'static str, msg: &str, rpc_id: &str) -> Status {
    let mut md = MetadataMap::new();
    md.insert("error-code", MetadataValue::from_static(error_code));
    if let Ok(v) = rpc_id.parse() {
        md.insert("rpc-id", v);
    }
    Status::with_metadata(code, format!("{msg} rpcId: {rpc_id}"), md)
}

/// A transport-reset-like end of stream (no Salesforce error code).
fn reset_status() -> Status {
    Status::unavailable("RST_STREAM closed stream. HTTP/2 error code: NO_ERROR")
}

fn new_rpc_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks the three auth metadata keys; returns the access token.
fn authorize(inner: &Inner, md: &MetadataMap, rpc_id: &str) -> Result<String, Status> {
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = get("accesstoken");
    let fail = |why: &str| Err(sf_status(Code::Unauthenticated, AUTH_ERROR, why, rpc_id));
    if token.is_empty() {
        return fail("An authentication exception occurred: missing accesstoken header.");
    }
    if get("instanceurl").is_empty() {
        return fail("An authentication exception occurred: missing instanceurl header.");
    }
    if get("tenantid") != inner.cfg.org_id {
        return fail("An authentication exception occurred: tenantid does not match the session.");
    }
    if !inner.lock().tokens.contains(token) {
        return fail(
            "An authentication exception occurred. The session does not have valid authentication credentials.",
        );
    }
    Ok(token.to_owned())
}

pub(crate) struct PubSubService {
    sim: Simulator,
}

impl PubSubService {
    pub fn new(sim: Simulator) -> Self {
        Self { sim }
    }
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    type SubscribeStream = ReceiverStream<Result<FetchResponse, Status>>;
    type PublishStreamStream = BoxStream<PublishResponse>;
    type ManagedSubscribeStream = BoxStream<ManagedFetchResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let inner = self.sim.0.clone();
        let rpc_id = new_rpc_id();
        inner.lock().totals.subscribe_calls += 1;
        let token = authorize(&inner, request.metadata(), &rpc_id)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run_stream(inner, token, rpc_id, request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        let inner = &self.sim.0;
        let rpc_id = new_rpc_id();
        authorize(inner, request.metadata(), &rpc_id)?;
        let req = request.into_inner();
        if req.schema_id != inner.schema_id && !inner.lock().schema_aliases.contains(&req.schema_id)
        {
            return Err(sf_status(
                Code::NotFound,
                SCHEMA_NOT_FOUND,
                &format!("Schema {} not found.", req.schema_id),
                &rpc_id,
            ));
        }
        Ok(Response::new(SchemaInfo {
            schema_json: EVENT_SCHEMA_JSON.to_owned(),
            schema_id: req.schema_id,
            rpc_id,
        }))
    }

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let inner = &self.sim.0;
        let rpc_id = new_rpc_id();
        authorize(inner, request.metadata(), &rpc_id)?;
        let req = request.into_inner();
        if req.topic_name != inner.cfg.topic {
            return Err(topic_not_found(&req.topic_name, &rpc_id));
        }
        Ok(Response::new(TopicInfo {
            topic_name: inner.cfg.topic.clone(),
            tenant_guid: inner.cfg.org_id.clone(),
            can_publish: true,
            can_subscribe: true,
            schema_id: inner.schema_id.clone(),
            rpc_id,
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let inner = &self.sim.0;
        let rpc_id = new_rpc_id();
        authorize(inner, request.metadata(), &rpc_id)?;
        let req = request.into_inner();
        if req.topic_name != inner.cfg.topic {
            return Err(topic_not_found(&req.topic_name, &rpc_id));
        }
        let mut results = Vec::with_capacity(req.events.len());
        {
            let mut st = inner.lock();
            for ev in req.events {
                let id = if ev.id.is_empty() {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    ev.id
                };
                let error = if ev.schema_id != inner.schema_id {
                    Some(format!("schema {} is not the topic's schema", ev.schema_id))
                } else {
                    let mut reader = ev.payload.as_slice();
                    match apache_avro::from_avro_datum(&inner.schema, &mut reader, None) {
                        Ok(_) if reader.is_empty() => None,
                        Ok(_) => Some("payload has trailing bytes".to_owned()),
                        Err(e) => Some(format!("payload does not match the schema: {e}")),
                    }
                };
                match error {
                    Some(msg) => results.push(pubsub_proto::PublishResult {
                        replay_id: Vec::new(),
                        error: Some(pubsub_proto::Error {
                            code: pubsub_proto::ErrorCode::Publish as i32,
                            msg,
                        }),
                        correlation_key: id,
                    }),
                    None => {
                        let rid = inner.append_event(&mut st, id.clone(), ev.schema_id, ev.payload);
                        results.push(pubsub_proto::PublishResult {
                            replay_id: rid,
                            error: None,
                            correlation_key: id,
                        });
                    }
                }
            }
        }
        inner.wake_streams();
        Ok(Response::new(PublishResponse {
            results,
            schema_id: inner.schema_id.clone(),
            rpc_id,
        }))
    }

    async fn publish_stream(
        &self,
        _request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Err(Status::unimplemented(
            "PublishStream is not implemented by the simulator",
        ))
    }

    async fn managed_subscribe(
        &self,
        _request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        Err(Status::unimplemented(
            "ManagedSubscribe is not implemented by the simulator",
        ))
    }
}

fn topic_not_found(topic: &str, rpc_id: &str) -> Status {
    sf_status(
        Code::NotFound,
        TOPIC_NOT_FOUND,
        &format!("The topic {topic} does not exist or you do not have access to it."),
        rpc_id,
    )
}

type Tx = mpsc::Sender<Result<FetchResponse, Status>>;

/// Keeps `streams_open` honest however the stream task ends.
struct OpenGuard(Arc<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.streams.streams_open = st.streams.streams_open.saturating_sub(1);
    }
}

/// Per-stream bookkeeping.
struct Sub {
    token: String,
    rpc_id: String,
    /// Sequence of the last event delivered (or skipped by the start position).
    cursor: u64,
    /// Outstanding demand, capped at [`MAX_BATCH`].
    demand: u32,
    delivered: u64,
    epoch: u64,
}

enum Step {
    Send(FetchResponse, bool),
    End(Status),
    Wait { keepalive: bool },
}

/// Sends one item unless the client went away or the simulator shuts down.
async fn send(inner: &Inner, tx: &Tx, item: Result<FetchResponse, Status>) -> bool {
    tokio::select! {
        biased;
        _ = inner.shutdown.cancelled() => false,
        r = tx.send(item) => r.is_ok(),
    }
}

/// Validates and applies the first FetchRequest: topic, start position and initial demand.
fn start(inner: &Inner, sub: &mut Sub, first: &FetchRequest) -> Result<(), Status> {
    let rpc = sub.rpc_id.as_str();
    if first.topic_name != inner.cfg.topic {
        return Err(topic_not_found(&first.topic_name, rpc));
    }
    let mut st = inner.lock();
    let tip = st.tip();
    sub.cursor = match ReplayPreset::try_from(first.replay_preset) {
        Ok(ReplayPreset::Latest) => tip,
        Ok(ReplayPreset::Earliest) => 0,
        Ok(ReplayPreset::Custom) => {
            if first.replay_id.is_empty() {
                return Err(sf_status(
                    Code::InvalidArgument,
                    REPLAY_VALIDATION,
                    "The Replay ID validation failed. A CUSTOM replay preset needs a replay ID.",
                    rpc,
                ));
            }
            match parse_replay_id(&first.replay_id) {
                Some(seq) if seq <= tip => seq,
                _ => {
                    return Err(sf_status(
                        Code::InvalidArgument,
                        REPLAY_CORRUPTED,
                        "The Replay ID validation failed. Ensure that the Replay ID is valid.",
                        rpc,
                    ));
                }
            }
        }
        Err(_) => {
            return Err(sf_status(
                Code::InvalidArgument,
                REPLAY_VALIDATION,
                "Unknown replay preset.",
                rpc,
            ));
        }
    };
    sub.epoch = st.drop_epoch;
    st.streams.streams_opened += 1;
    st.streams.streams_open += 1;
    add_demand(&mut st, sub, first.num_requested)
}

fn add_demand(st: &mut super::State, sub: &mut Sub, n: i32) -> Result<(), Status> {
    if n <= 0 {
        return Err(sf_status(
            Code::InvalidArgument,
            REQUESTED_INVALID,
            "The number of requested events must be greater than zero.",
            &sub.rpc_id,
        ));
    }
    let uncapped = u64::from(sub.demand) + n.unsigned_abs() as u64;
    st.streams.max_outstanding_requested = st.streams.max_outstanding_requested.max(uncapped);
    sub.demand = uncapped.min(u64::from(MAX_BATCH)) as u32;
    Ok(())
}

/// Decides what the stream does next, under the lock.
fn step(inner: &Inner, sub: &mut Sub) -> Step {
    let mut st = inner.lock();
    if !st.tokens.contains(&sub.token) {
        return Step::End(sf_status(
            Code::Unauthenticated,
            AUTH_ERROR,
            "An authentication exception occurred. The session is no longer valid.",
            &sub.rpc_id,
        ));
    }
    if st.drop_epoch != sub.epoch {
        return Step::End(reset_status());
    }
    if st.faults.silent {
        return Step::Wait { keepalive: false };
    }
    let tip = st.tip();
    if sub.demand == 0 || sub.cursor >= tip {
        return Step::Wait {
            keepalive: sub.demand > 0,
        };
    }
    let mut n = u64::from(sub.demand.min(MAX_BATCH)).min(tip - sub.cursor);
    let mut end_after = false;
    if let Some(every) = st.faults.drop_stream_every.filter(|e| *e > 0) {
        let left = u64::from(every).saturating_sub(sub.delivered);
        if left == 0 {
            return Step::End(reset_status());
        }
        if n >= left {
            n = left;
            end_after = true;
        }
    }
    let from = sub.cursor as usize;
    let to = from + n as usize;
    let events: Vec<pubsub_proto::ConsumerEvent> = st.events[from..to]
        .iter()
        .map(|e| e.event.clone())
        .collect();
    sub.cursor += n;
    sub.delivered += n;
    sub.demand -= n as u32;
    st.streams.events_delivered += n;
    drop(st);
    Step::Send(
        FetchResponse {
            events,
            latest_replay_id: replay_id(sub.cursor),
            rpc_id: sub.rpc_id.clone(),
            pending_num_requested: sub.demand as i32,
        },
        end_after,
    )
}

/// One Subscribe stream, from the first FetchRequest to its end.
async fn run_stream(
    inner: Arc<Inner>,
    token: String,
    rpc_id: String,
    mut inbound: Streaming<FetchRequest>,
    tx: Tx,
) {
    let mut wake = inner.wake.subscribe();
    let first = tokio::select! {
        biased;
        _ = inner.shutdown.cancelled() => return,
        _ = tx.closed() => return,
        m = inbound.next() => m,
    };
    let Some(Ok(first)) = first else {
        return;
    };
    let mut sub = Sub {
        token,
        rpc_id,
        cursor: 0,
        demand: 0,
        delivered: 0,
        epoch: 0,
    };
    if let Err(status) = start(&inner, &mut sub, &first) {
        send(&inner, &tx, Err(status)).await;
        return;
    }
    let _open = OpenGuard(inner.clone());
    let interval = inner.cfg.keepalive_interval;
    let mut last_sent = Instant::now();
    let mut inbound_open = true;
    loop {
        // Mark the current version seen before looking at the state: a change after this point
        // wakes the select below.
        wake.borrow_and_update();
        match step(&inner, &mut sub) {
            Step::Send(resp, end_after) => {
                if !send(&inner, &tx, Ok(resp)).await {
                    return;
                }
                last_sent = Instant::now();
                if end_after {
                    send(&inner, &tx, Err(reset_status())).await;
                    return;
                }
            }
            Step::End(status) => {
                send(&inner, &tx, Err(status)).await;
                return;
            }
            Step::Wait { keepalive } => {
                let deadline = last_sent + interval;
                tokio::select! {
                    biased;
                    _ = inner.shutdown.cancelled() => {
                        let status = sf_status(
                            Code::Unavailable,
                            SERVICE_UNAVAILABLE,
                            "The service is unavailable. Try again later.",
                            &sub.rpc_id,
                        );
                        // The receiver may be gone already; nothing else to do either way.
                        let _ = tx.try_send(Err(status));
                        return;
                    }
                    _ = tx.closed() => return,
                    r = wake.changed() => {
                        if r.is_err() {
                            return;
                        }
                    }
                    m = inbound.next(), if inbound_open => match m {
                        Some(Ok(req)) => {
                            if !req.topic_name.is_empty() && req.topic_name != inner.cfg.topic {
                                let status = sf_status(
                                    Code::InvalidArgument,
                                    TOPIC_MISMATCH,
                                    "The topic name in the FetchRequest does not match the subscription.",
                                    &sub.rpc_id,
                                );
                                send(&inner, &tx, Err(status)).await;
                                return;
                            }
                            let res = {
                                let mut st = inner.lock();
                                add_demand(&mut st, &mut sub, req.num_requested)
                            };
                            if let Err(status) = res {
                                send(&inner, &tx, Err(status)).await;
                                return;
                            }
                        }
                        // Client cancelled or the transport failed.
                        Some(Err(_)) => return,
                        // Half-close: keep serving the outstanding demand.
                        None => inbound_open = false,
                    },
                    _ = tokio::time::sleep_until(deadline), if keepalive => {
                        let latest = {
                            let mut st = inner.lock();
                            st.streams.keepalives_sent += 1;
                            let tip = st.tip();
                            if tip > 0 { replay_id(tip) } else { Vec::new() }
                        };
                        let resp = FetchResponse {
                            events: Vec::new(),
                            latest_replay_id: latest,
                            rpc_id: sub.rpc_id.clone(),
                            pending_num_requested: sub.demand as i32,
                        };
                        if !send(&inner, &tx, Ok(resp)).await {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }
}
