//! The Pub/Sub API client: the gRPC channel (TLS, HTTP/2 keepalives, the proxy's `CONNECT`
//! tunnel), the authentication metadata every call carries, the `Subscribe` bidi stream with its
//! flow-control requests, `GetTopic` and `GetSchema`, and reading Salesforce's error code from a
//! gRPC status.
//!
//! A pure client: what to do with the events (queue, ledger, cursor, watchdog, backpressure) is
//! the subscriber's.
//!
//! Invariants:
//! - Every call carries `accesstoken`, `instanceurl` and `tenantid` from one [`Session`]; a
//!   credential that is not valid gRPC metadata fails the call locally, it is never sent.
//! - Responses are capped at 16 MiB (a batch of 100 platform events of at most 1 MB is smaller).
//! - The channel is lazy: building it never connects, the first call does.

use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status, Streaming,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::{
    auth::Session,
    pb::{self, pub_sub_client::PubSubClient},
};
use crate::net::proxy::ProxyConfig;

/// Largest response accepted from the Pub/Sub API.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Builds the gRPC channel: TLS for `https://`, plaintext for `http://`, HTTP/2 keepalives;
/// through a `CONNECT` tunnel when `proxy` routes the endpoint through a proxy (TLS then runs
/// inside the tunnel).
pub fn channel(endpoint: &str, proxy: &ProxyConfig) -> Result<Channel, tonic::transport::Error> {
    let mut ep = Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if endpoint.starts_with("https://") {
        ep = ep.tls_config(ClientTlsConfig::new().with_webpki_roots())?;
    }
    Ok(match proxy.tunnel(ep.uri()) {
        Some(tunnel) => ep.connect_with_connector_lazy(tunnel),
        None => ep.connect_lazy(),
    })
}

/// Wraps `msg` in a request carrying the session's authentication metadata.
fn request<T>(msg: T, s: &Session) -> Result<Request<T>, Status> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    let v = |s: &str| {
        MetadataValue::try_from(s).map_err(|_| Status::internal("credential is not valid metadata"))
    };
    md.insert("accesstoken", v(s.access_token.expose_secret())?);
    md.insert("instanceurl", v(&s.instance_url)?);
    md.insert("tenantid", v(&s.org_id)?);
    Ok(r)
}

/// Salesforce error code carried in a gRPC status's `error-code` metadata.
pub fn error_code(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether `code` says the requested replay id is unusable (corrupted, or failed validation).
pub fn is_replay_error(code: &str) -> bool {
    code.contains("replayid.corrupted") || code.contains("replayid.validation.failed")
}

/// A Pub/Sub API client over one channel.
#[derive(Debug, Clone)]
pub struct PubSub {
    client: PubSubClient<Channel>,
}

/// Where a subscription starts.
#[derive(Debug, Clone)]
pub struct SubscribeFrom {
    pub preset: pb::ReplayPreset,
    /// The replay id for [`pb::ReplayPreset::Custom`]; empty otherwise.
    pub replay_id: Vec<u8>,
}

/// The stream was closed: no more demand can be sent.
#[derive(Debug)]
pub struct StreamClosed;

/// Sends flow-control requests on an open `Subscribe` stream.
#[derive(Debug)]
pub struct Demand {
    topic: String,
    tx: mpsc::Sender<pb::FetchRequest>,
}

impl Demand {
    /// Asks for `n` more events.
    pub async fn request(&self, n: i32) -> Result<(), StreamClosed> {
        let req = pb::FetchRequest {
            topic_name: self.topic.clone(),
            num_requested: n,
            ..Default::default()
        };
        self.tx.send(req).await.map_err(|_| StreamClosed)
    }
}

impl PubSub {
    /// A client over `channel` (see [`channel`]).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: PubSubClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
        }
    }

    /// Opens a `Subscribe` stream on `topic` from `from`, asking for `num_requested` events.
    /// Returns the responses and the handle that asks for more.
    pub async fn subscribe(
        &mut self,
        session: &Session,
        topic: &str,
        from: SubscribeFrom,
        num_requested: i32,
    ) -> Result<(Streaming<pb::FetchResponse>, Demand), Status> {
        let (tx, rx) = mpsc::channel::<pb::FetchRequest>(8);
        let first = pb::FetchRequest {
            topic_name: topic.to_owned(),
            replay_preset: from.preset as i32,
            replay_id: from.replay_id,
            num_requested,
            auth_refresh: String::new(),
        };
        // The receiver is alive: the first request is buffered for the stream.
        if tx.send(first).await.is_err() {
            return Err(Status::cancelled("subscription request stream closed"));
        }
        let req = request(ReceiverStream::new(rx), session)?;
        let stream = self.client.subscribe(req).await?.into_inner();
        let demand = Demand {
            topic: topic.to_owned(),
            tx,
        };
        Ok((stream, demand))
    }

    /// `GetTopic`: the topic's schema id and whether this user may subscribe.
    pub async fn get_topic(
        &mut self,
        session: &Session,
        topic: &str,
    ) -> Result<pb::TopicInfo, Status> {
        let req = request(
            pb::TopicRequest {
                topic_name: topic.to_owned(),
            },
            session,
        )?;
        Ok(self.client.get_topic(req).await?.into_inner())
    }

    /// `GetSchema`: the Avro schema (JSON) with id `schema_id`.
    pub async fn get_schema(
        &mut self,
        session: &Session,
        schema_id: &str,
    ) -> Result<String, Status> {
        let req = request(
            pb::SchemaRequest {
                schema_id: schema_id.to_owned(),
            },
            session,
        )?;
        Ok(self.client.get_schema(req).await?.into_inner().schema_json)
    }
}
