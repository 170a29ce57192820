//! A faithful local Salesforce (Pub/Sub gRPC, OAuth token endpoint, REST) and WHMCS (`api.php`)
//! for tests, the demo, chaos runs and benchmarks.
//!
//! This module owns the simulator's public Rust API ([`Simulator`], [`SimConfig`], [`SimHandle`],
//! [`Faults`] and the snapshot types) and the one piece of shared state every protocol front end
//! works on. Submodules own one wire protocol each: [`pubsub`] (tonic server), [`salesforce`]
//! (OAuth, REST records, sObject Collections updates and SOQL queries; a write setting an Order
//! to `Activating` publishes its activation event, as the Flow does), [`whmcs`] (`api.php`) and
//! [`control`] (the JSON control surface under `/sim`).
//!
//! Invariants:
//! * All mutable state lives in one [`State`] behind one `std::sync::Mutex`; the lock is only held
//!   for short, synchronous sections and never across an `.await`.
//! * Every lookup on a hot path is by key (HashMap / BTreeSet indices); nothing scans all orders
//!   or all events per request.
//! * Events are kept forever (retention = all) in publication order; an event's replay id is its
//!   1-based sequence number as 8 big-endian bytes followed by two zero bytes.
//! * Anything that open Subscribe streams must react to (a publish, new faults, revoked tokens,
//!   dropped streams) bumps the `wake` watch channel after the lock is released.

mod control;
mod event;
mod ids;
mod pubsub;
mod salesforce;
mod whmcs;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apache_avro::Schema;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::event::{EVENT_SCHEMA_JSON as EVENT_SCHEMA, EventPayload};
use crate::event::{EVENT_SCHEMA_JSON, encode};
pub use crate::ids::{BadId, RecordId};

pub use whmcs::{WhmcsLineSnapshot, WhmcsOrderSnapshot};

/// Id of the user that "approves" orders and owns the integration (the JWT `sub`).
const USER_PREFIX: &str = "005";
/// Most events a single FetchResponse carries, and the most demand a stream may have.
pub(crate) const MAX_BATCH: u32 = 100;

/// How the simulator is reached and which credentials it accepts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Pub/Sub gRPC listener (default `127.0.0.1:0`).
    pub grpc_addr: SocketAddr,
    /// OAuth + REST + WHMCS + control listener (default `127.0.0.1:0`).
    pub http_addr: SocketAddr,
    pub client_id: String,
    /// Accepted by the client-credentials flow.
    pub client_secret: String,
    /// The JWT `sub` the bearer flow accepts.
    pub username: String,
    /// RS256 public key (PEM); when `Some`, JWT bearer grants are verified against it, when
    /// `None` every JWT grant is rejected with `invalid_grant`.
    pub jwt_public_key_pem: Option<String>,
    pub whmcs_identifier: String,
    pub whmcs_secret: String,
    pub topic: String,
    /// An empty keepalive FetchResponse is sent when demand is pending and nothing was sent on the
    /// stream for this long.
    pub keepalive_interval: Duration,
    /// 18-character org id (`tenantid`).
    pub org_id: String,
    /// The WHMCS version `WhmcsDetails` reports. Before 8.12 `AddOrder` ignores `qty[]` (one
    /// service of quantity 1 per line), as WHMCS does; from 8.12 it honours it.
    pub whmcs_version: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self {
            grpc_addr: local,
            http_addr: local,
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            username: "integration@example.com".into(),
            jwt_public_key_pem: None,
            whmcs_identifier: "sim-identifier".into(),
            whmcs_secret: "sim-secret".into(),
            topic: "/event/OrderProvisionRequested__e".into(),
            keepalive_interval: Duration::from_secs(270),
            org_id: "00D000000000001EAA".into(),
            whmcs_version: "8.13.1".into(),
        }
    }
}

/// What kind of transient failure a faulted WHMCS call shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WhmcsFaultKind {
    /// HTTP 500 with an HTML body, nothing performed.
    #[default]
    #[serde(alias = "http500", alias = "HTTP500")]
    Http500,
    /// Hang for 60 s (longer than any sane client timeout), then 504; nothing performed.
    #[serde(alias = "timeout")]
    Timeout,
    /// Perform the action, then answer 500 as if it failed: an ambiguous outcome.
    #[serde(alias = "after_commit", alias = "afterCommit")]
    AfterCommit,
    /// Perform the call, then hang as `Timeout` does: the caller's process can be killed after
    /// WHMCS committed but before it learnt the result.
    CommitThenHang,
}

/// Injected faults. [`Simulator::set_faults`] replaces all of them at once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// End a Subscribe stream with UNAVAILABLE after every N events delivered on it.
    #[serde(alias = "dropStreamEvery")]
    pub drop_stream_every: Option<u32>,
    /// Send nothing on Subscribe streams (no events, no keepalives).
    pub silent: bool,
    /// 0..1 probability that a WHMCS call fails transiently.
    #[serde(alias = "whmcsErrorRate")]
    pub whmcs_error_rate: f64,
    #[serde(alias = "whmcsErrorKind")]
    pub whmcs_error_kind: WhmcsFaultKind,
    /// The actions `whmcs_error_rate` applies to, e.g. `["AcceptOrder"]`; empty: AddOrder,
    /// AcceptOrder and GetOrders.
    #[serde(alias = "whmcsErrorActions")]
    pub whmcs_error_actions: Vec<String>,
    /// Latency of every WHMCS call, in milliseconds; with `whmcs_latency_max_ms` above it, the
    /// least of a uniform draw per call.
    #[serde(alias = "whmcsLatencyMs")]
    pub whmcs_latency_ms: u64,
    /// Most latency of a WHMCS call (uniform between `whmcs_latency_ms` and this); 0 or not
    /// above `whmcs_latency_ms`: fixed.
    #[serde(alias = "whmcsLatencyMaxMs")]
    pub whmcs_latency_max_ms: u64,
    /// Latency of every Salesforce HTTP call (REST and OAuth), in milliseconds; with
    /// `sf_latency_max_ms` above it, the least of a uniform draw per call.
    #[serde(alias = "sfLatencyMs")]
    pub sf_latency_ms: u64,
    /// Most latency of a Salesforce call; 0 or not above `sf_latency_ms`: fixed.
    #[serde(alias = "sfLatencyMaxMs")]
    pub sf_latency_max_ms: u64,
    /// AddOrder with any of these pids fails with "No items added to cart…".
    #[serde(alias = "whmcsRejectProducts")]
    pub whmcs_reject_products: Vec<String>,
    /// AcceptOrder on a Pending order answers this error (a failed module create) and leaves the
    /// order Pending.
    #[serde(alias = "whmcsAcceptError")]
    pub whmcs_accept_error: Option<String>,
    /// The next N Salesforce REST calls answer 400 UNABLE_TO_LOCK_ROW.
    #[serde(alias = "sfLockRowNext")]
    pub sf_lock_row_next: u32,
    /// The next N Salesforce REST calls answer 503 SERVER_UNAVAILABLE.
    #[serde(alias = "sfUnavailableNext")]
    pub sf_unavailable_next: u32,
    /// PATCHes of these Orders (ids, either spelling) that change the standard `Status` field
    /// answer 400 FIELD_CUSTOM_VALIDATION_EXCEPTION, as an org's validation rule would.
    #[serde(alias = "sfRejectStatusChange")]
    pub sf_reject_status_change: Vec<String>,
    /// Every PATCH of these Orders answers 400 FIELD_CUSTOM_VALIDATION_EXCEPTION.
    #[serde(alias = "sfRejectWriteback")]
    pub sf_reject_writeback: Vec<String>,
    /// Report this many API calls used in `Sforce-Limit-Info` instead of the real count (the
    /// limit stays the same), e.g. to show an org close to its daily API limit.
    #[serde(alias = "sfApiUsed")]
    pub sf_api_used: Option<u64>,
    /// WHMCS is down: every call answers 503 with an HTML page, nothing performed.
    #[serde(alias = "whmcsDown")]
    pub whmcs_down: bool,
    /// WHMCS rejects every call with 403 `Authentication Failed` (as with a wrong secret).
    #[serde(alias = "whmcsAuthFailed")]
    pub whmcs_auth_failed: bool,
    /// Every Salesforce REST call answers 403 `REQUEST_LIMIT_EXCEEDED`.
    #[serde(alias = "sfRequestLimit")]
    pub sf_request_limit: bool,
    /// AddOrder commits this many milliseconds after the request arrived, whether or not the
    /// caller is still waiting (a slow order hook, a PHP process outliving the web server's
    /// timeout); the answer follows the commit. 0: no delay.
    #[serde(alias = "whmcsSlowCommitMs")]
    pub whmcs_slow_commit_ms: u64,
    /// Salesforce applies every PATCH of a single Order at once but answers it only once this is
    /// cleared: the caller learns late that its write-back succeeded (a slow way back), while
    /// others already read the new values.
    #[serde(alias = "sfHoldPatchAnswers")]
    pub sf_hold_patch_answers: bool,
    /// Salesforce runs every SOQL query at once (it is counted) but answers it only once this is
    /// cleared.
    #[serde(alias = "sfHoldQueryAnswers")]
    pub sf_hold_query_answers: bool,
    /// Seed of the RNG behind `whmcs_error_rate`.
    pub seed: u64,
}

impl Faults {
    /// The latency of one call: `min`, or a uniform draw in `min..=max` when `max` is above it.
    pub(crate) fn draw_latency(rng: &mut StdRng, min: u64, max: u64) -> std::time::Duration {
        let ms = if max > min {
            rand::Rng::random_range(rng, min..=max)
        } else {
            min
        };
        std::time::Duration::from_millis(ms)
    }
}

/// One Order to create.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderSeed {
    /// `Account.WHMCS_Client_ID__c`; orders with the same value share one Account.
    #[serde(alias = "whmcsClientId")]
    pub whmcs_client_id: Option<String>,
    pub items: Vec<ItemSeed>,
    pub status: String,
}

impl Default for OrderSeed {
    fn default() -> Self {
        Self {
            whmcs_client_id: Some("1".into()),
            items: vec![ItemSeed::default()],
            status: "Draft".into(),
        }
    }
}

/// One OrderItem to create (its Product2 carries the WHMCS mapping).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ItemSeed {
    /// `Product2.WHMCS_Product_ID__c`.
    #[serde(alias = "productId")]
    pub product_id: Option<String>,
    /// `Product2.WHMCS_Billing_Cycle__c`.
    #[serde(alias = "billingCycle")]
    pub billing_cycle: Option<String>,
    pub quantity: f64,
}

impl Default for ItemSeed {
    fn default() -> Self {
        Self {
            product_id: Some("1".into()),
            billing_cycle: Some("monthly".into()),
            quantity: 1.0,
        }
    }
}

/// Snapshot of one OrderItem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimItem {
    pub id: RecordId,
    pub product2_id: RecordId,
    pub product_id: Option<String>,
    pub billing_cycle: Option<String>,
    pub quantity: f64,
}

/// Snapshot of one Order as Salesforce stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimOrder {
    pub id: RecordId,
    pub account_id: RecordId,
    pub order_number: String,
    pub status: String,
    pub activation_status: Option<String>,
    pub whmcs_order_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub last_attempt_at: Option<String>,
    /// Every Order field as stored (canonical API names).
    pub fields: Map<String, Value>,
    pub items: Vec<SimItem>,
}

/// Calls attributed to one Salesforce Order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCounts {
    pub soql: u64,
    pub patch: u64,
    pub add_order: u64,
    pub accept_order: u64,
    pub get_orders: u64,
}

/// Simulator-wide call counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub soql: u64,
    pub patch: u64,
    pub add_order: u64,
    pub accept_order: u64,
    pub get_orders: u64,
    pub token_requests: u64,
    pub events_published: u64,
    pub subscribe_calls: u64,
    /// WHMCS orders created.
    pub whmcs_orders: u64,
    /// Authenticated Salesforce REST calls (the `api-usage` counter).
    pub rest_calls: u64,
    /// Authenticated WHMCS API calls.
    pub whmcs_calls: u64,
    /// Every request to the WHMCS API, including rejected and faulted ones.
    pub whmcs_requests: u64,
    /// WHMCS API requests being served now.
    pub whmcs_in_flight: u64,
    /// Most WHMCS API requests ever served at once since the simulator started.
    pub whmcs_max_in_flight: u64,
}

/// Subscribe stream statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    pub streams_opened: u64,
    /// Streams currently open.
    pub streams_open: u64,
    /// Largest total demand a client ever asked for on one stream, before capping to 100.
    pub max_outstanding_requested: u64,
    pub events_delivered: u64,
    pub keepalives_sent: u64,
}

pub(crate) struct ItemRec {
    pub id: RecordId,
    pub product2_id: RecordId,
    pub product_id: Option<String>,
    pub billing_cycle: Option<String>,
    pub quantity: f64,
}

pub(crate) struct OrderRec {
    pub id: RecordId,
    pub account_id: RecordId,
    /// Canonical field name → value.
    pub fields: Map<String, Value>,
    pub items: Vec<ItemRec>,
    pub counts: CallCounts,
    /// When the Order last took a successful PATCH (write-back latency in benchmarks).
    pub patched_at: Option<std::time::Instant>,
}

impl OrderRec {
    pub fn str_field(&self, name: &str) -> Option<String> {
        self.fields
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

pub(crate) struct AccountRec {
    pub id: RecordId,
    pub whmcs_client_id: Option<String>,
}

pub(crate) struct StoredEvent {
    pub event: pubsub_proto::ConsumerEvent,
}

/// Standard and custom Order fields every record has (value may be null).
const ORDER_FIELDS: &[&str] = &[
    "Id",
    "OrderNumber",
    "Status",
    "StatusCode",
    "AccountId",
    "EffectiveDate",
    "Type",
    "Description",
    "CreatedDate",
    "LastModifiedDate",
    "Activation_Status__c",
    "WHMCS_Order_ID__c",
    "WHMCS_Service_Ids__c",
    "WHMCS_Invoice_Id__c",
    "Activation_Error_Code__c",
    "Activation_Error_Message__c",
    "Activation_Last_Attempt_At__c",
];

/// All mutable simulator state. One lock; see the module invariants.
pub(crate) struct State {
    pub next_order: u64,
    pub next_account: u64,
    pub next_item: u64,
    pub orders: HashMap<RecordId, OrderRec>,
    /// `Activation_Status__c` value → orders carrying it (ordered by id = creation order).
    pub by_activation: HashMap<String, BTreeSet<RecordId>>,
    pub accounts: HashMap<RecordId, AccountRec>,
    pub account_by_client: HashMap<Option<String>, RecordId>,
    /// Lower-cased field name → canonical API name (Salesforce field names are case-insensitive).
    pub known_fields: HashMap<String, String>,
    pub tokens: HashSet<String>,
    pub events: Vec<StoredEvent>,
    pub whmcs: whmcs::WhmcsState,
    pub faults: Faults,
    pub rng: StdRng,
    pub totals: Totals,
    pub streams: StreamStats,
    /// Bumped by [`Simulator::drop_streams`]; streams opened under an older epoch end.
    pub drop_epoch: u64,
    /// Further ids `GetSchema` answers with the topic's schema ([`Simulator::add_schema_alias`]).
    pub schema_aliases: HashSet<String>,
}

impl State {
    fn new() -> Self {
        let known_fields = ORDER_FIELDS
            .iter()
            .map(|f| (f.to_ascii_lowercase(), (*f).to_owned()))
            .collect();
        Self {
            next_order: 0,
            next_account: 0,
            next_item: 0,
            orders: HashMap::new(),
            by_activation: HashMap::new(),
            accounts: HashMap::new(),
            account_by_client: HashMap::new(),
            known_fields,
            tokens: HashSet::new(),
            events: Vec::new(),
            whmcs: whmcs::WhmcsState::default(),
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(0),
            totals: Totals::default(),
            streams: StreamStats::default(),
            drop_epoch: 0,
            schema_aliases: HashSet::new(),
        }
    }

    /// Canonical spelling of an Order field, if the field exists.
    pub fn canonical_field(&self, name: &str) -> Option<&str> {
        self.known_fields
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Sets one Order field (canonical name), keeping the activation index and StatusCode in
    /// step.
    pub fn write_field(&mut self, id: &RecordId, field: &str, value: Value) {
        let Some(rec) = self.orders.get_mut(id) else {
            return;
        };
        if field == "Activation_Status__c" {
            if let Some(set) = rec
                .fields
                .get(field)
                .and_then(Value::as_str)
                .and_then(|old| self.by_activation.get_mut(old))
            {
                set.remove(id);
            }
            if let Some(new) = value.as_str() {
                self.by_activation
                    .entry(new.to_owned())
                    .or_default()
                    .insert(id.clone());
            }
        }
        if field == "Status" {
            let code = if value.as_str() == Some("Activated") {
                "Activated"
            } else {
                "Draft"
            };
            rec.fields.insert("StatusCode".into(), Value::from(code));
        }
        rec.fields.insert(field.to_owned(), value);
    }

    pub fn touch(&mut self, id: &RecordId) {
        if let Some(rec) = self.orders.get_mut(id) {
            rec.fields
                .insert("LastModifiedDate".into(), Value::from(sf_datetime_now()));
        }
    }

    pub fn tip(&self) -> u64 {
        self.events.len() as u64
    }
}

/// Salesforce's datetime format, e.g. `2024-05-01T12:00:00.000+0000`.
pub(crate) fn sf_datetime_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}

/// Replay id of the event with 1-based sequence `seq`.
pub(crate) fn replay_id(seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(10);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

/// Sequence number of a replay id this simulator could have issued (not checked against the tip).
pub(crate) fn parse_replay_id(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 10 || bytes[8..] != [0, 0] {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let seq = u64::from_be_bytes(seq);
    (seq > 0).then_some(seq)
}

pub(crate) struct Inner {
    pub cfg: SimConfig,
    pub grpc_url: String,
    pub http_url: String,
    pub schema: Schema,
    pub schema_id: String,
    pub jwt_key: Option<jsonwebtoken::DecodingKey>,
    pub user_id: RecordId,
    pub state: Mutex<State>,
    /// Version counter; bumped whenever open streams must re-evaluate.
    pub wake: watch::Sender<u64>,
    pub shutdown: CancellationToken,
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn wake_streams(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Appends one event; returns its replay id. Caller wakes the streams after unlocking.
    pub fn append_event(
        &self,
        st: &mut State,
        id: String,
        schema_id: String,
        payload: Vec<u8>,
    ) -> Vec<u8> {
        let seq = st.tip() + 1;
        let rid = replay_id(seq);
        st.events.push(StoredEvent {
            event: pubsub_proto::ConsumerEvent {
                event: Some(pubsub_proto::ProducerEvent {
                    id,
                    schema_id,
                    payload,
                    headers: Vec::new(),
                }),
                replay_id: rid.clone(),
            },
        });
        st.totals.events_published += 1;
        rid
    }
}

/// The simulator. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Simulator(pub(crate) Arc<Inner>);

/// A running simulator: its URLs, the [`Simulator`] and the servers' shutdown handle.
pub struct SimHandle {
    /// `http://127.0.0.1:PORT` of the Pub/Sub gRPC server (`SF_PUBSUB_ENDPOINT`).
    pub grpc_url: String,
    /// `http://127.0.0.1:PORT` of OAuth, REST, WHMCS and the control surface.
    pub http_url: String,
    pub sim: Simulator,
    pub org_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub username: String,
    pub whmcs_identifier: String,
    pub whmcs_secret: String,
    pub topic: String,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// `SF_LOGIN_URL` (also the expected JWT `aud`).
    pub fn login_url(&self) -> String {
        self.http_url.clone()
    }

    /// `WHMCS_API_URL`.
    pub fn whmcs_url(&self) -> String {
        format!("{}/includes/api.php", self.http_url)
    }

    /// Environment for a daemon child process pointed at this simulator. The auth flow is
    /// `jwt` when the simulator verifies JWTs (the caller adds `SF_PRIVATE_KEY_PATH`), else
    /// `client_credentials`.
    pub fn daemon_env(&self) -> Vec<(&'static str, String)> {
        let flow = if self.sim.0.jwt_key.is_some() {
            "jwt"
        } else {
            "client_credentials"
        };
        vec![
            ("SF_PUBSUB_ENDPOINT", self.grpc_url.clone()),
            ("SF_LOGIN_URL", self.login_url()),
            ("SF_AUTH_FLOW", flow.into()),
            ("SF_CLIENT_ID", self.client_id.clone()),
            ("SF_CLIENT_SECRET", self.client_secret.clone()),
            ("SF_USERNAME", self.username.clone()),
            ("SF_PROVISION_EVENT_CHANNEL", self.topic.clone()),
            ("WHMCS_API_URL", self.whmcs_url()),
            ("WHMCS_API_IDENTIFIER", self.whmcs_identifier.clone()),
            ("WHMCS_API_SECRET", self.whmcs_secret.clone()),
        ]
    }

    /// Stops both servers: open Subscribe streams end with UNAVAILABLE, hanging WHMCS calls are
    /// cut short. Waits (bounded) for the listeners to close.
    pub async fn shutdown(self) {
        self.sim.0.shutdown.cancel();
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

fn url_for(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

fn schema_id_for(json: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (json, "sim").hash(&mut b);
    // 22 characters, like Salesforce's base64url MD5 schema ids.
    format!("{:016x}{:016x}", a.finish(), b.finish())[..22].to_owned()
}

/// Starts the simulator and serves until `shutdown` resolves; prints one line per listener.
pub async fn run_standalone(
    cfg: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let handle = Simulator::start(cfg).await?;
    println!(
        "sim: Pub/Sub gRPC listening on {} (SF_PUBSUB_ENDPOINT; topic {}, tenant {})",
        handle.grpc_url, handle.topic, handle.org_id
    );
    println!(
        "sim: HTTP listening on {} (SF_LOGIN_URL, REST /services/data, WHMCS_API_URL={}, control /sim)",
        handle.http_url,
        handle.whmcs_url()
    );
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

impl Simulator {
    /// Binds both listeners and starts serving.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<SimHandle> {
        anyhow::ensure!(
            cfg.org_id.len() == 18 && cfg.org_id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "sim org_id must be 18 alphanumeric characters"
        );
        let schema = Schema::parse_str(EVENT_SCHEMA_JSON)?;
        let jwt_key = match &cfg.jwt_public_key_pem {
            Some(pem) => Some(
                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("sim jwt_public_key_pem: {e}"))?,
            ),
            None => None,
        };
        let grpc_listener = TcpListener::bind(cfg.grpc_addr).await?;
        let http_listener = TcpListener::bind(cfg.http_addr).await?;
        let grpc_url = url_for(grpc_listener.local_addr()?);
        let http_url = url_for(http_listener.local_addr()?);
        let (wake, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            schema_id: schema_id_for(EVENT_SCHEMA_JSON),
            schema,
            jwt_key,
            user_id: RecordId::mint(USER_PREFIX, 1),
            grpc_url: grpc_url.clone(),
            http_url: http_url.clone(),
            state: Mutex::new(State::new()),
            wake,
            shutdown: CancellationToken::new(),
            cfg,
        });
        let sim = Simulator(inner.clone());

        let grpc_task = {
            let token = inner.shutdown.clone();
            let svc = pubsub_proto::pub_sub_server::PubSubServer::new(pubsub::PubSubService::new(
                sim.clone(),
            ));
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            tokio::spawn(async move {
                let res = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "sim gRPC server failed");
                }
            })
        };
        let http_task = {
            use axum::serve::ListenerExt;
            let token = inner.shutdown.clone();
            let app = router(sim.clone());
            let listener = http_listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "sim: set_nodelay failed");
                }
            });
            tokio::spawn(async move {
                let res = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "sim HTTP server failed");
                }
            })
        };
        let c = &inner.cfg;
        Ok(SimHandle {
            grpc_url,
            http_url,
            org_id: c.org_id.clone(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            username: c.username.clone(),
            whmcs_identifier: c.whmcs_identifier.clone(),
            whmcs_secret: c.whmcs_secret.clone(),
            topic: c.topic.clone(),
            sim,
            tasks: vec![grpc_task, http_task],
        })
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.0.cfg
    }

    /// `http://127.0.0.1:PORT` of the Pub/Sub gRPC server.
    pub fn grpc_url(&self) -> &str {
        &self.0.grpc_url
    }

    /// `http://127.0.0.1:PORT` of OAuth, REST, WHMCS and the control surface.
    pub fn http_url(&self) -> &str {
        &self.0.http_url
    }

    /// Id of the topic's (only) schema.
    pub fn schema_id(&self) -> String {
        self.0.schema_id.clone()
    }

    /// Creates the Account (one per distinct `whmcs_client_id`) if needed, the Order and its
    /// items. Status from the seed, `Activation_Status__c` null.
    pub fn seed_order(&self, seed: OrderSeed) -> RecordId {
        let mut st = self.0.lock();
        let account_id = match st.account_by_client.get(&seed.whmcs_client_id) {
            Some(id) => id.clone(),
            None => {
                st.next_account += 1;
                let id = RecordId::mint("001", st.next_account);
                st.accounts.insert(
                    id.clone(),
                    AccountRec {
                        id: id.clone(),
                        whmcs_client_id: seed.whmcs_client_id.clone(),
                    },
                );
                st.account_by_client
                    .insert(seed.whmcs_client_id.clone(), id.clone());
                id
            }
        };
        st.next_order += 1;
        let n = st.next_order;
        let id = RecordId::mint("801", n);
        let now = sf_datetime_now();
        let mut fields = Map::new();
        for f in ORDER_FIELDS {
            fields.insert((*f).to_owned(), Value::Null);
        }
        fields.insert("Id".into(), Value::from(id.as_str()));
        fields.insert("OrderNumber".into(), Value::from(format!("{:08}", 100 + n)));
        fields.insert("AccountId".into(), Value::from(account_id.as_str()));
        fields.insert("EffectiveDate".into(), Value::from(&now[..10]));
        fields.insert("CreatedDate".into(), Value::from(now.clone()));
        fields.insert("LastModifiedDate".into(), Value::from(now));
        let items = seed
            .items
            .iter()
            .map(|it| {
                st.next_item += 1;
                ItemRec {
                    id: RecordId::mint("802", st.next_item),
                    product2_id: RecordId::mint("01t", st.next_item),
                    product_id: it.product_id.clone(),
                    billing_cycle: it.billing_cycle.clone(),
                    quantity: it.quantity,
                }
            })
            .collect();
        st.orders.insert(
            id.clone(),
            OrderRec {
                id: id.clone(),
                account_id,
                fields,
                items,
                counts: CallCounts::default(),
                patched_at: None,
            },
        );
        st.write_field(&id, "Status", Value::from(seed.status));
        id
    }

    /// Acts as the Salesforce Flow on approval: sets `Activation_Status__c = "Activating"` and
    /// publishes the event. An unknown id still gets an event (useful for poison tests).
    pub fn approve(&self, id: &(impl AsRef<str> + ?Sized)) -> Vec<u8> {
        let raw = id.as_ref();
        if let Ok(id) = RecordId::parse(raw) {
            let mut st = self.0.lock();
            if st.orders.contains_key(&id) {
                st.write_field(&id, "Activation_Status__c", Value::from("Activating"));
                st.touch(&id);
            }
        }
        self.activation_requested(raw)
    }

    /// The Flow's reaction to an Order set to `Activating` (by [`Simulator::approve`], or by a
    /// REST PATCH or sObject Collections update): publishes `OrderProvisionRequested__e` for it;
    /// returns the replay id.
    pub(crate) fn activation_requested(&self, id: &(impl AsRef<str> + ?Sized)) -> Vec<u8> {
        let raw = id.as_ref();
        let user = self.0.user_id.as_str().to_owned();
        self.publish(EventPayload {
            created_date_ms: chrono::Utc::now().timestamp_millis(),
            created_by_id: user.clone(),
            order_id: Some(RecordId::parse(raw).map_or_else(|_| raw.to_owned(), String::from)),
            idem_key: Some(uuid::Uuid::new_v4().to_string()),
            correlation_id: Some(uuid::Uuid::new_v4().to_string()),
            requested_by: Some(user),
            version: Some(1.0),
        })
    }

    /// Publishes an arbitrary event with the topic's schema; returns its replay id.
    pub fn publish(&self, payload: EventPayload) -> Vec<u8> {
        let bytes = encode(&self.0.schema, &payload)
            .expect("every EventPayload encodes with the built-in event schema");
        self.publish_raw(&self.0.schema_id.clone(), bytes)
    }

    /// The Avro encoding of `payload` with the topic's schema (for events published raw).
    pub fn encode_event(&self, payload: &EventPayload) -> Vec<u8> {
        encode(&self.0.schema, payload)
            .expect("every EventPayload encodes with the built-in event schema")
    }

    /// From now on `GetSchema` answers `schema_id` with the topic's schema: an event published
    /// raw under that id, poison until then, becomes decodable.
    pub fn add_schema_alias(&self, schema_id: &str) {
        self.0.lock().schema_aliases.insert(schema_id.to_owned());
    }

    /// Publishes any bytes under any schema id (poison injection); returns the replay id.
    pub fn publish_raw(&self, schema_id: &str, payload: Vec<u8>) -> Vec<u8> {
        let rid = {
            let mut st = self.0.lock();
            self.0.append_event(
                &mut st,
                uuid::Uuid::new_v4().to_string(),
                schema_id.to_owned(),
                payload,
            )
        };
        self.0.wake_streams();
        rid
    }

    /// Snapshot of one Order.
    pub fn order(&self, id: &(impl AsRef<str> + ?Sized)) -> Option<SimOrder> {
        let id = RecordId::parse(id.as_ref()).ok()?;
        let st = self.0.lock();
        st.orders.get(&id).map(snapshot)
    }

    /// Sets one field as an operator would in the UI (no event is published; call
    /// [`Simulator::approve`] for that). Unknown fields are created.
    pub fn set_order_field(&self, id: &(impl AsRef<str> + ?Sized), field: &str, value: Value) {
        let Ok(id) = RecordId::parse(id.as_ref()) else {
            return;
        };
        let id = &id;
        let mut st = self.0.lock();
        if !st.orders.contains_key(id) {
            return;
        }
        let canonical = match st.canonical_field(field) {
            Some(c) => c.to_owned(),
            None => {
                st.known_fields
                    .insert(field.to_ascii_lowercase(), field.to_owned());
                field.to_owned()
            }
        };
        st.write_field(id, &canonical, value);
        st.touch(id);
    }

    /// Re-maps the Order's Account to another WHMCS client (`Account.WHMCS_Client_ID__c`), as an
    /// operator editing the Account would; every Order of that Account sees the new value.
    pub fn set_account_client_id(&self, id: &(impl AsRef<str> + ?Sized), client: Option<String>) {
        let Ok(id) = RecordId::parse(id.as_ref()) else {
            return;
        };
        let mut st = self.0.lock();
        let Some(account) = st.orders.get(&id).map(|o| o.account_id.clone()) else {
            return;
        };
        let old = st
            .accounts
            .get_mut(&account)
            .map(|a| std::mem::replace(&mut a.whmcs_client_id, client.clone()));
        if let Some(old) = old {
            if st.account_by_client.get(&old) == Some(&account) {
                st.account_by_client.remove(&old);
            }
        }
        st.account_by_client.entry(client).or_insert(account);
    }

    /// Gives WHMCS client `client` `n` older orders dated `date` (`YYYY-MM-DD HH:MM:SS`, WHMCS's
    /// format), untagged: a long order history for reconciliation scans.
    pub fn seed_whmcs_history(&self, client: u64, n: usize, date: &str) {
        self.0.lock().whmcs.seed_history(client, n, date);
    }

    /// Changes (or removes) the WHMCS product mapping of the item at `index`.
    pub fn set_item_product(
        &self,
        id: &(impl AsRef<str> + ?Sized),
        index: usize,
        product_id: Option<String>,
    ) {
        let Ok(id) = RecordId::parse(id.as_ref()) else {
            return;
        };
        let id = &id;
        let mut st = self.0.lock();
        if let Some(item) = st
            .orders
            .get_mut(id)
            .and_then(|rec| rec.items.get_mut(index))
        {
            item.product_id = product_id;
        }
    }

    /// Calls attributed to one Order.
    pub fn counts(&self, id: &(impl AsRef<str> + ?Sized)) -> CallCounts {
        let Ok(id) = RecordId::parse(id.as_ref()) else {
            return CallCounts::default();
        };
        let st = self.0.lock();
        st.orders.get(&id).map(|r| r.counts).unwrap_or_default()
    }

    /// When each Order last took a successful PATCH (`None`: never), in one lock; for latency
    /// measurements (approval → write-back).
    pub fn patched_at(&self, ids: &[RecordId]) -> Vec<Option<std::time::Instant>> {
        let st = self.0.lock();
        ids.iter()
            .map(|id| st.orders.get(id).and_then(|r| r.patched_at))
            .collect()
    }

    pub fn totals(&self) -> Totals {
        self.0.lock().totals
    }

    /// WHMCS orders whose notes are `sf-order:<id>`, oldest first.
    pub fn whmcs_orders_for(&self, id: &(impl AsRef<str> + ?Sized)) -> Vec<WhmcsOrderSnapshot> {
        let Ok(id) = RecordId::parse(id.as_ref()) else {
            return Vec::new();
        };
        let st = self.0.lock();
        st.whmcs.orders_for(&id)
    }

    /// Replay id of the newest event.
    pub fn latest_replay_id(&self) -> Option<Vec<u8>> {
        let st = self.0.lock();
        (st.tip() > 0).then(|| replay_id(st.tip()))
    }

    pub fn stream_stats(&self) -> StreamStats {
        self.0.lock().streams
    }

    /// Replaces all faults (and reseeds the error-rate RNG).
    pub fn set_faults(&self, f: Faults) {
        {
            let mut st = self.0.lock();
            st.rng = StdRng::seed_from_u64(f.seed);
            st.faults = f;
        }
        self.0.wake_streams();
    }

    pub fn faults(&self) -> Faults {
        self.0.lock().faults.clone()
    }

    /// Invalidates every issued access token; open Subscribe streams end with UNAUTHENTICATED.
    pub fn revoke_tokens(&self) {
        self.0.lock().tokens.clear();
        self.0.wake_streams();
    }

    /// Ends every open Subscribe stream now with UNAVAILABLE.
    pub fn drop_streams(&self) {
        self.0.lock().drop_epoch += 1;
        self.0.wake_streams();
    }
}

pub(crate) fn snapshot(rec: &OrderRec) -> SimOrder {
    SimOrder {
        id: rec.id.clone(),
        account_id: rec.account_id.clone(),
        order_number: rec.str_field("OrderNumber").unwrap_or_default(),
        status: rec.str_field("Status").unwrap_or_default(),
        activation_status: rec.str_field("Activation_Status__c"),
        whmcs_order_id: rec.str_field("WHMCS_Order_ID__c"),
        error_code: rec.str_field("Activation_Error_Code__c"),
        error_message: rec.str_field("Activation_Error_Message__c"),
        last_attempt_at: rec.str_field("Activation_Last_Attempt_At__c"),
        fields: rec.fields.clone(),
        items: rec
            .items
            .iter()
            .map(|i| SimItem {
                id: i.id.clone(),
                product2_id: i.product2_id.clone(),
                product_id: i.product_id.clone(),
                billing_cycle: i.billing_cycle.clone(),
                quantity: i.quantity,
            })
            .collect(),
    }
}

fn router(sim: Simulator) -> axum::Router {
    axum::Router::new()
        .merge(
            salesforce::routes()
                .layer(axum::middleware::from_fn_with_state(
                    sim.clone(),
                    salesforce::hold,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    sim.clone(),
                    salesforce::latency,
                )),
        )
        .merge(whmcs::routes())
        .merge(control::routes())
        .fallback(salesforce::not_found)
        .with_state(sim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ids_round_trip() {
        let r = replay_id(42);
        assert_eq!(r.len(), 10);
        assert_eq!(parse_replay_id(&r), Some(42));
        assert_eq!(parse_replay_id(&replay_id(0)), None);
        assert_eq!(parse_replay_id(&[0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(parse_replay_id(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 1]), None);
    }

    #[test]
    fn user_id_is_the_documented_one() {
        assert_eq!(
            RecordId::mint(USER_PREFIX, 1).as_str(),
            "005000000000001AAA"
        );
    }
}
