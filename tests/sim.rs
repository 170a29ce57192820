//! Integration tests of the simulator over loopback: a real tonic client for Pub/Sub and reqwest
//! for OAuth, REST, WHMCS and the control surface. No test sleeps to synchronise; every wait is a
//! deadline around awaiting a message or response.

use std::time::Duration;

use apache_avro::Schema;
use provisioner::ids::SalesforceId;
use provisioner::salesforce::event::{EventFields, decode};
use provisioner::salesforce::pb::{
    FetchRequest, FetchResponse, ReplayPreset, SchemaRequest, TopicRequest,
    pub_sub_client::PubSubClient,
};
use provisioner_sim::{
    EventPayload, Faults, ItemSeed, OrderSeed, SimConfig, SimHandle, Simulator, WhmcsFaultKind,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(10);
const CORRUPTED: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
const AUTH_ERROR: &str = "sfdc.platform.eventbus.grpc.service.auth.error";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).expect("fixture readable")
}

async fn start(cfg: SimConfig) -> SimHandle {
    Simulator::start(cfg).await.expect("simulator starts")
}

async fn start_default() -> SimHandle {
    start(SimConfig::default()).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("reqwest client")
}

async fn token(h: &SimHandle) -> String {
    let resp = http()
        .post(format!("{}/services/oauth2/token", h.login_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", h.client_id.as_str()),
            ("client_secret", h.client_secret.as_str()),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("token json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn client(h: &SimHandle) -> PubSubClient<Channel> {
    PubSubClient::connect(h.grpc_url.clone())
        .await
        .expect("grpc connect")
}

fn with_auth<T>(msg: T, h: &SimHandle, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    md.insert("accesstoken", token.parse().expect("ascii token"));
    md.insert("instanceurl", h.http_url.parse().expect("ascii url"));
    md.insert("tenantid", h.org_id.parse().expect("ascii org"));
    req
}

fn fetch(preset: ReplayPreset, replay_id: Vec<u8>, n: i32) -> FetchRequest {
    FetchRequest {
        topic_name: "/event/OrderProvisionRequested__e".into(),
        replay_preset: preset as i32,
        replay_id,
        num_requested: n,
        auth_refresh: String::new(),
    }
}

fn more(n: i32) -> FetchRequest {
    FetchRequest {
        num_requested: n,
        ..Default::default()
    }
}

struct Sub {
    tx: mpsc::Sender<FetchRequest>,
    stream: Streaming<FetchResponse>,
}

impl Sub {
    async fn open(h: &SimHandle, token: &str, first: FetchRequest) -> Result<Sub, Status> {
        let mut c = client(h).await;
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first fetch");
        let stream = c
            .subscribe(with_auth(ReceiverStream::new(rx), h, token))
            .await?
            .into_inner();
        Ok(Sub { tx, stream })
    }

    async fn request(&self, n: i32) {
        self.tx.send(more(n)).await.expect("send fetch");
    }

    /// The next FetchResponse (or the stream's error), within the deadline.
    async fn next(&mut self) -> Result<FetchResponse, Status> {
        match tokio::time::timeout(DEADLINE, self.stream.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => panic!("stream ended without a status"),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no message within {DEADLINE:?}"),
        }
    }

    /// Collects exactly `n` events (over as many batches as the server sends).
    async fn events(&mut self, n: usize) -> Vec<(FetchResponse, usize)> {
        let mut got = 0;
        let mut batches = Vec::new();
        while got < n {
            let r = self.next().await.expect("fetch response");
            let k = r.events.len();
            got += k;
            batches.push((r, k));
        }
        assert_eq!(got, n, "server delivered more than the demand");
        batches
    }
}

fn error_code(s: &Status) -> Option<String> {
    s.metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn publish_n(sim: &Simulator, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            sim.publish(EventPayload {
                created_date_ms: 1_700_000_000_000 + i as i64,
                created_by_id: "005000000000001AAA".into(),
                order_id: Some(SalesforceId::synthesize("801", 1000 + i as u64).to_string()),
                ..Default::default()
            })
        })
        .collect()
}

fn replay_ids(batches: &[(FetchResponse, usize)]) -> Vec<Vec<u8>> {
    batches
        .iter()
        .flat_map(|(r, _)| r.events.iter().map(|e| e.replay_id.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pub/Sub

#[tokio::test]
async fn subscribe_receives_avro_events_decodable_with_get_schema() {
    let h = start_default().await;
    let tok = token(&h).await;
    let mut c = client(&h).await;
    let topic = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: h.topic.clone(),
            },
            &h,
            &tok,
        ))
        .await
        .expect("get_topic")
        .into_inner();
    assert_eq!(topic.tenant_guid, h.org_id);
    assert!(topic.can_subscribe);
    let schema_info = c
        .get_schema(with_auth(
            SchemaRequest {
                schema_id: topic.schema_id.clone(),
            },
            &h,
            &tok,
        ))
        .await
        .expect("get_schema")
        .into_inner();
    let schema = Schema::parse_str(&schema_info.schema_json).expect("schema parses");

    let order = h.sim.seed_order(OrderSeed::default());
    let rid = h.sim.approve(&order);
    assert_eq!(h.sim.latest_replay_id(), Some(rid.clone()));
    assert_eq!(rid.len(), 10);

    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Earliest, vec![], 10))
        .await
        .expect("subscribe");
    let batches = sub.events(1).await;
    let (resp, _) = &batches[0];
    assert_eq!(resp.pending_num_requested, 9);
    assert_eq!(resp.latest_replay_id, rid);
    let ev = &resp.events[0];
    assert_eq!(ev.replay_id, rid);
    let pe = ev.event.as_ref().expect("producer event");
    assert!(uuid::Uuid::parse_str(&pe.id).is_ok(), "event id is a uuid");
    assert_eq!(pe.schema_id, topic.schema_id);
    let req =
        decode(&schema, &pe.schema_id, &pe.payload, &EventFields::default()).expect("decodes");
    assert_eq!(req.order_id.as_str(), order.as_str());
    assert!(req.idem_key.is_some() && req.correlation_id.is_some());
    assert_eq!(req.created_by_id, "005000000000001AAA");
    assert!(req.created_date_ms > 0);

    let snap = h.sim.order(&order).expect("order exists");
    assert_eq!(snap.activation_status.as_deref(), Some("Activating"));
    assert_eq!(snap.status, "Draft");
    let stats = h.sim.stream_stats();
    assert_eq!(stats.streams_opened, 1);
    assert_eq!(stats.events_delivered, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn flow_control_delivers_exactly_the_demand() {
    let h = start_default().await;
    let tok = token(&h).await;
    // EARLIEST, so the events published right after opening are in the stream's range whenever
    // the server processes the first FetchRequest.
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Earliest, vec![], 5))
        .await
        .expect("subscribe");
    let rids = publish_n(&h.sim, 20);

    let first = sub.events(5).await;
    assert_eq!(replay_ids(&first), rids[..5].to_vec());
    assert_eq!(first.last().map(|(r, _)| r.pending_num_requested), Some(0));
    assert_eq!(h.sim.stream_stats().events_delivered, 5);

    sub.request(15).await;
    let second = sub.events(15).await;
    assert_eq!(replay_ids(&second), rids[5..].to_vec());
    assert_eq!(second.last().map(|(r, _)| r.pending_num_requested), Some(0));
    assert_eq!(h.sim.stream_stats().events_delivered, 20);
    assert_eq!(h.sim.stream_stats().max_outstanding_requested, 15);
    h.shutdown().await;
}

#[tokio::test]
async fn demand_is_capped_at_100_but_recorded_uncapped() {
    let h = start_default().await;
    let tok = token(&h).await;
    let rids = publish_n(&h.sim, 150);
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Earliest, vec![], 250))
        .await
        .expect("subscribe");
    let batches = sub.events(100).await;
    assert!(batches.iter().all(|(_, k)| *k <= 100));
    assert_eq!(replay_ids(&batches), rids[..100].to_vec());
    assert_eq!(
        batches.last().map(|(r, _)| r.pending_num_requested),
        Some(0)
    );
    assert_eq!(h.sim.stream_stats().max_outstanding_requested, 250);
    // More demand picks up exactly where the cap stopped.
    sub.request(50).await;
    let rest = sub.events(50).await;
    assert_eq!(replay_ids(&rest), rids[100..].to_vec());
    h.shutdown().await;
}

#[tokio::test]
async fn custom_replay_resumes_strictly_after_the_id() {
    let h = start_default().await;
    let tok = token(&h).await;
    let rids = publish_n(&h.sim, 10);
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Custom, rids[3].clone(), 100))
        .await
        .expect("subscribe");
    let batches = sub.events(6).await;
    assert_eq!(replay_ids(&batches), rids[4..].to_vec());
    assert_eq!(
        batches.last().map(|(r, _)| r.pending_num_requested),
        Some(94)
    );
    assert_eq!(h.sim.stream_stats().events_delivered, 6);
    h.shutdown().await;
}

#[tokio::test]
async fn bogus_replay_ids_fail_with_salesforce_error_codes() {
    let h = start_default().await;
    let tok = token(&h).await;
    let rids = publish_n(&h.sim, 2);
    let beyond_tip = {
        let mut r = rids[1].clone();
        r[7] += 5;
        r
    };
    for bad in [vec![1, 2, 3], vec![0xff; 10], beyond_tip] {
        let mut sub = match Sub::open(&h, &tok, fetch(ReplayPreset::Custom, bad.clone(), 10)).await
        {
            Ok(s) => s,
            Err(status) => panic!("subscribe call itself failed: {status:?}"),
        };
        let status = sub.next().await.expect_err("stream must fail");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(error_code(&status).as_deref(), Some(CORRUPTED), "{bad:?}");
    }
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Custom, vec![], 10))
        .await
        .expect("subscribe");
    let status = sub.next().await.expect_err("stream must fail");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        error_code(&status).as_deref(),
        Some("sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed")
    );
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Latest, vec![], 0))
        .await
        .expect("subscribe");
    let status = sub.next().await.expect_err("stream must fail");
    assert_eq!(
        error_code(&status).as_deref(),
        Some("sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn keepalive_carries_the_latest_replay_id() {
    let h = start(SimConfig {
        keepalive_interval: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    let tok = token(&h).await;
    let rids = publish_n(&h.sim, 3);
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Latest, vec![], 7))
        .await
        .expect("subscribe");
    let ka = sub.next().await.expect("keepalive");
    assert!(ka.events.is_empty());
    assert_eq!(ka.latest_replay_id, rids[2]);
    assert_eq!(ka.pending_num_requested, 7);
    let ka2 = sub.next().await.expect("second keepalive");
    assert!(ka2.events.is_empty());
    assert!(h.sim.stream_stats().keepalives_sent >= 2);
    h.shutdown().await;
}

#[tokio::test]
async fn revoke_tokens_ends_open_streams_unauthenticated() {
    let h = start_default().await;
    let tok = token(&h).await;
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Earliest, vec![], 10))
        .await
        .expect("subscribe");
    publish_n(&h.sim, 1);
    sub.events(1).await;
    h.sim.revoke_tokens();
    let status = sub.next().await.expect_err("stream must end");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_code(&status).as_deref(), Some(AUTH_ERROR));

    // The old token is dead for new calls too; a fresh one works.
    let mut c = client(&h).await;
    let err = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: h.topic.clone(),
            },
            &h,
            &tok,
        ))
        .await
        .expect_err("revoked token rejected");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_code(&err).as_deref(), Some(AUTH_ERROR));
    let fresh = token(&h).await;
    c.get_topic(with_auth(
        TopicRequest {
            topic_name: h.topic.clone(),
        },
        &h,
        &fresh,
    ))
    .await
    .expect("fresh token accepted");
    h.shutdown().await;
}

#[tokio::test]
async fn grpc_rejects_bad_tokens_and_unknown_topics() {
    let h = start_default().await;
    let tok = token(&h).await;
    let mut c = client(&h).await;
    let err = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: h.topic.clone(),
            },
            &h,
            "00D000000000001!bogus",
        ))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_code(&err).as_deref(), Some(AUTH_ERROR));
    let err = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: "/event/Nope__e".into(),
            },
            &h,
            &tok,
        ))
        .await
        .expect_err("unknown topic");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        error_code(&err).as_deref(),
        Some("sfdc.platform.eventbus.grpc.topic.not.found")
    );
    let err = c
        .get_schema(with_auth(
            SchemaRequest {
                schema_id: "nope".into(),
            },
            &h,
            &tok,
        ))
        .await
        .expect_err("unknown schema");
    assert_eq!(err.code(), Code::NotFound);
    let err = Sub::open(&h, "bogus", fetch(ReplayPreset::Latest, vec![], 1))
        .await
        .err()
        .expect("subscribe with bad token fails");
    assert_eq!(err.code(), Code::Unauthenticated);
    h.shutdown().await;
}

#[tokio::test]
async fn stream_faults_drop_every_and_drop_streams() {
    let h = start_default().await;
    let tok = token(&h).await;
    let rids = publish_n(&h.sim, 5);
    h.sim.set_faults(Faults {
        drop_stream_every: Some(3),
        ..Faults::default()
    });
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Earliest, vec![], 10))
        .await
        .expect("subscribe");
    let got = sub.events(3).await;
    assert_eq!(replay_ids(&got), rids[..3].to_vec());
    let status = sub.next().await.expect_err("dropped after 3");
    assert_eq!(status.code(), Code::Unavailable);

    h.sim.set_faults(Faults::default());
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Custom, rids[2].clone(), 10))
        .await
        .expect("resubscribe");
    let got = sub.events(2).await;
    assert_eq!(replay_ids(&got), rids[3..].to_vec());
    h.sim.drop_streams();
    let status = sub.next().await.expect_err("dropped");
    assert_eq!(status.code(), Code::Unavailable);
    h.shutdown().await;
}

#[tokio::test]
async fn silent_fault_withholds_events_until_lifted() {
    let h = start(SimConfig {
        keepalive_interval: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let tok = token(&h).await;
    h.sim.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let mut sub = Sub::open(&h, &tok, fetch(ReplayPreset::Earliest, vec![], 10))
        .await
        .expect("subscribe");
    let rids = publish_n(&h.sim, 2);
    // While silent, nothing arrives (not even keepalives) within several keepalive intervals.
    let quiet = tokio::time::timeout(Duration::from_millis(500), sub.stream.message()).await;
    assert!(quiet.is_err(), "silent stream sent something");
    assert_eq!(h.sim.stream_stats().keepalives_sent, 0);
    h.sim.set_faults(Faults::default());
    let got = sub.events(2).await;
    assert_eq!(replay_ids(&got), rids);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// OAuth

fn jwt(key_pem: &str, iss: &str, sub: &str, aud: &str, exp_in: i64) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let exp = chrono::Utc::now().timestamp() + exp_in;
    let claims = json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp});
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("rsa key"),
    )
    .expect("sign")
}

async fn jwt_grant(h: &SimHandle, assertion: &str) -> (u16, Value) {
    let resp = http()
        .post(format!("{}/services/oauth2/token", h.login_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .expect("token request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

#[tokio::test]
async fn jwt_bearer_accepts_the_right_key_only() {
    let h = start(SimConfig {
        jwt_public_key_pem: Some(fixture("jwt_rsa.pub.pem")),
        ..SimConfig::default()
    })
    .await;
    let good_key = fixture("jwt_rsa.pem");
    let other_key = fixture("other_rsa.pem");
    let aud = h.login_url();

    let (status, body) = jwt_grant(&h, &jwt(&good_key, &h.client_id, &h.username, &aud, 120)).await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().expect("token");
    assert!(access.starts_with(&h.org_id[..15]) && access.contains('!'));
    assert_eq!(body["instance_url"], h.http_url.as_str());
    assert_eq!(
        body["id"],
        format!("{}/id/{}/005000000000001AAA", h.http_url, h.org_id).as_str()
    );
    assert_eq!(body["token_type"], "Bearer");

    for (assertion, why) in [
        (
            jwt(&other_key, &h.client_id, &h.username, &aud, 120),
            "wrong key",
        ),
        (
            jwt(
                &good_key,
                &h.client_id,
                &h.username,
                "https://login.salesforce.com",
                120,
            ),
            "wrong aud",
        ),
        (
            jwt(&good_key, &h.client_id, "someone@else", &aud, 120),
            "wrong sub",
        ),
        (
            jwt(&good_key, &h.client_id, &h.username, &aud, -600),
            "expired",
        ),
        (
            jwt(&good_key, &h.client_id, &h.username, &aud, 3600),
            "exp too far",
        ),
        ("not.a.jwt".to_owned(), "garbage"),
    ] {
        let (status, body) = jwt_grant(&h, &assertion).await;
        assert_eq!(status, 400, "{why}");
        assert_eq!(body["error"], "invalid_grant", "{why}: {body}");
    }
    let (status, body) =
        jwt_grant(&h, &jwt(&good_key, "other-client", &h.username, &aud, 120)).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid_client"))
    );
    assert_eq!(h.sim.totals().token_requests, 8);
    h.shutdown().await;
}

#[tokio::test]
async fn jwt_grant_rejected_without_a_configured_key() {
    let h = start_default().await;
    let (status, body) = jwt_grant(
        &h,
        &jwt(
            &fixture("jwt_rsa.pem"),
            &h.client_id,
            &h.username,
            &h.login_url(),
            120,
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    h.shutdown().await;
}

#[tokio::test]
async fn client_credentials_requires_the_secret() {
    let h = start_default().await;
    let tok = token(&h).await;
    assert!(!tok.is_empty());
    let resp = http()
        .post(format!("{}/services/oauth2/token", h.login_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", h.client_id.as_str()),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].is_string());
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// REST

const ORDER_READ: &str = "SELECT Id, OrderNumber, Status, AccountId, Activation_Status__c, \
    WHMCS_Order_ID__c, Account.WHMCS_Client_ID__c, (SELECT Id, Quantity, \
    Product2.WHMCS_Product_ID__c, Product2.WHMCS_Billing_Cycle__c FROM OrderItems) \
    FROM Order WHERE Id = '{}'";

fn rest(h: &SimHandle, path: &str) -> String {
    format!("{}/services/data/v65.0/{path}", h.http_url)
}

async fn soql(h: &SimHandle, tok: &str, q: &str) -> reqwest::Response {
    http()
        .get(rest(h, "query"))
        .query(&[("q", q)])
        .bearer_auth(tok)
        .send()
        .await
        .expect("query")
}

#[tokio::test]
async fn rest_query_and_patch_round_trip() {
    let h = start_default().await;
    let tok = token(&h).await;
    let order = h.sim.seed_order(OrderSeed {
        whmcs_client_id: Some("42".into()),
        items: vec![
            ItemSeed::default(),
            ItemSeed {
                product_id: Some("7".into()),
                billing_cycle: Some("annually".into()),
                quantity: 2.0,
            },
        ],
        status: "Pending Review".into(),
    });
    let read = ORDER_READ.replace("{}", order.as_str());

    // No token → 401 INVALID_SESSION_ID, with the limit header.
    let resp = http()
        .get(rest(&h, "query"))
        .query(&[("q", read.as_str())])
        .send()
        .await
        .expect("query");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("sforce-limit-info"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    let resp = soql(&h, &tok, &read).await;
    assert_eq!(resp.status(), 200);
    let limit = resp.headers()["sforce-limit-info"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(limit, "api-usage=1/100000");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["done"], true);
    let rec = &body["records"][0];
    assert_eq!(rec["attributes"]["type"], "Order");
    assert_eq!(rec["Id"], order.as_str());
    assert_eq!(rec["Status"], "Pending Review");
    assert_eq!(rec["Activation_Status__c"], Value::Null);
    assert_eq!(rec["WHMCS_Order_ID__c"], Value::Null);
    assert_eq!(rec["Account"]["WHMCS_Client_ID__c"], "42");
    let snap = h.sim.order(&order).expect("order");
    assert_eq!(rec["AccountId"], snap.account_id.as_str());
    assert_eq!(rec["OrderNumber"], snap.order_number.as_str());
    let items = &rec["OrderItems"];
    assert_eq!(items["totalSize"], 2);
    assert_eq!(items["records"][0]["Quantity"], 1.0);
    assert_eq!(items["records"][0]["Product2"]["WHMCS_Product_ID__c"], "1");
    assert_eq!(
        items["records"][0]["Product2"]["WHMCS_Billing_Cycle__c"],
        "monthly"
    );
    assert_eq!(items["records"][1]["Quantity"], 2.0);
    assert_eq!(items["records"][1]["Product2"]["WHMCS_Product_ID__c"], "7");

    // PATCH (field names are case-insensitive, as in Salesforce) → 204, then visible.
    let resp = http()
        .patch(rest(&h, &format!("sobjects/Order/{order}")))
        .bearer_auth(&tok)
        .json(&json!({
            "Activation_Status__c": "Activated",
            "Status": "Activated",
            "WHMCS_Order_Id__c": "17",
            "Activation_Error_Code__c": null,
            "Activation_Last_Attempt_At__c": "2024-05-01T12:00:00Z",
        }))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 204);
    let snap = h.sim.order(&order).expect("order");
    assert_eq!(snap.activation_status.as_deref(), Some("Activated"));
    assert_eq!(snap.whmcs_order_id.as_deref(), Some("17"));
    assert_eq!(
        snap.last_attempt_at.as_deref(),
        Some("2024-05-01T12:00:00.000+0000")
    );
    let resp = http()
        .get(rest(&h, &format!("sobjects/Order/{}", order.short())))
        .bearer_auth(&tok)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["WHMCS_Order_ID__c"], "17");
    assert_eq!(body["StatusCode"], "Activated");
    assert_eq!(
        h.sim.counts(&order),
        provisioner_sim::CallCounts {
            soql: 1,
            patch: 1,
            ..Default::default()
        }
    );

    // The reconciler's query finds it through the activation index.
    let resp = soql(
        &h,
        &tok,
        "SELECT Id FROM Order WHERE Activation_Status__c = 'Activated' AND \
         (Activation_Last_Attempt_At__c = null OR Activation_Last_Attempt_At__c < 2030-01-01T00:00:00Z) LIMIT 10",
    )
    .await;
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["totalSize"], 1, "{body}");

    // Errors.
    let resp = soql(&h, &tok, "SELECT Id FROM Order WHERE Id = '801xyz'").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "INVALID_QUERY_FILTER_OPERATOR");
    let resp = soql(&h, &tok, "SELEC Id FROM Order").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY");
    let resp = soql(
        &h,
        &tok,
        "SELECT Nope__c FROM Order WHERE Id = '801000000000001AAA'",
    )
    .await;
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    let missing = SalesforceId::synthesize("801", 999);
    let resp = http()
        .patch(rest(&h, &format!("sobjects/Order/{missing}")))
        .bearer_auth(&tok)
        .json(&json!({"Status": "Activated"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "NOT_FOUND");
    let resp = http()
        .patch(rest(&h, &format!("sobjects/Order/{order}")))
        .bearer_auth(&tok)
        .json(&json!({"Activation_Status__c": "Bogus"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body[0]["errorCode"],
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn rest_faults_consume_one_call_each() {
    let h = start_default().await;
    let tok = token(&h).await;
    let order = h.sim.seed_order(OrderSeed {
        items: vec![],
        ..OrderSeed::default()
    });
    h.sim.set_faults(Faults {
        sf_lock_row_next: 1,
        sf_unavailable_next: 1,
        ..Faults::default()
    });
    let read = ORDER_READ.replace("{}", order.as_str());
    let resp = soql(&h, &tok, &read).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "UNABLE_TO_LOCK_ROW");
    let resp = soql(&h, &tok, &read).await;
    assert_eq!(resp.status(), 503);
    let resp = soql(&h, &tok, &read).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["records"][0]["OrderItems"], Value::Null);
    assert_eq!(h.sim.counts(&order).soql, 3);
    assert_eq!(h.sim.totals().rest_calls, 3);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// WHMCS

async fn whmcs(h: &SimHandle, fields: &[(&str, &str)]) -> (u16, String) {
    let mut form: Vec<(&str, &str)> = vec![
        ("identifier", h.whmcs_identifier.as_str()),
        ("secret", h.whmcs_secret.as_str()),
        ("responsetype", "json"),
    ];
    form.extend_from_slice(fields);
    let resp = http()
        .post(h.whmcs_url())
        .form(&form)
        .send()
        .await
        .expect("whmcs call");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).expect("json body")
}

#[tokio::test]
async fn whmcs_add_accept_and_find_by_notes() {
    let h = start_default().await;
    let order = h.sim.seed_order(OrderSeed::default());
    let notes = format!("sf-order:{order}");

    let (status, body) = whmcs(&h, &[("action", "GetOrders"), ("userid", "5")]).await;
    assert_eq!(status, 200);
    let v = json_of(&body);
    assert_eq!(v["totalresults"], 0);
    assert_eq!(v["orders"], "");

    let (status, body) = whmcs(
        &h,
        &[
            ("action", "AddOrder"),
            ("clientid", "5"),
            ("paymentmethod", "banktransfer"),
            ("pid[0]", "1"),
            ("billingcycle[0]", "monthly"),
            ("qty[0]", "1"),
            ("pid[1]", "7"),
            ("billingcycle[1]", "annually"),
            ("noemail", "1"),
            ("notes", notes.as_str()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["result"], "success", "{body}");
    let orderid = v["orderid"]
        .as_str()
        .expect("orderid is a string")
        .to_owned();
    assert_eq!(v["serviceids"], "1,2");
    assert!(v["invoiceid"].is_string());

    let (_, body) = whmcs(
        &h,
        &[
            ("action", "AcceptOrder"),
            ("orderid", &orderid),
            ("autosetup", "1"),
        ],
    )
    .await;
    assert_eq!(json_of(&body)["result"], "success", "{body}");
    let (_, body) = whmcs(
        &h,
        &[
            ("action", "AcceptOrder"),
            ("orderid", &orderid),
            ("autosetup", "1"),
        ],
    )
    .await;
    let v = json_of(&body);
    assert_eq!(v["result"], "error");
    assert_eq!(v["message"], "Order ID not found or Status not Pending");

    let (_, body) = whmcs(
        &h,
        &[("action", "GetOrders"), ("userid", "5"), ("limitnum", "25")],
    )
    .await;
    let v = json_of(&body);
    assert_eq!(v["totalresults"], 1);
    let found = v["orders"]["order"]
        .as_array()
        .expect("orders list")
        .iter()
        .find(|o| o["notes"] == notes.as_str())
        .expect("found by notes")
        .clone();
    assert_eq!(
        found["id"].as_u64().map(|n| n.to_string()),
        Some(orderid.clone())
    );
    assert_eq!(found["status"], "Active");
    assert_eq!(found["lineitems"]["lineitem"][1]["relid"], 2);

    let snaps = h.sim.whmcs_orders_for(&order);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].status, "Active");
    assert_eq!(snaps[0].lines.len(), 2);
    let counts = h.sim.counts(&order);
    assert_eq!(
        (counts.add_order, counts.accept_order, counts.get_orders),
        (1, 2, 1)
    );
    assert_eq!(h.sim.totals().whmcs_orders, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn whmcs_errors_auth_and_faults() {
    let h = start_default().await;
    let order = h.sim.seed_order(OrderSeed::default());
    let notes = format!("sf-order:{order}");
    let add = |pid: &'static str, client: &'static str| {
        vec![
            ("action", "AddOrder"),
            ("clientid", client),
            ("paymentmethod", "banktransfer"),
            ("pid[0]", pid),
            ("billingcycle[0]", "monthly"),
        ]
    };

    let resp = http()
        .post(h.whmcs_url())
        .form(&[
            ("identifier", "x"),
            ("secret", "y"),
            ("action", "GetOrders"),
        ])
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        json_of(&resp.text().await.expect("body"))["message"],
        "Authentication Failed"
    );

    let (status, body) = whmcs(&h, &[("action", "Frobnicate")]).await;
    assert_eq!(status, 403);
    assert!(
        json_of(&body)["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Invalid API Action"))
    );

    let (_, body) = whmcs(&h, &add("1", "0")).await;
    assert_eq!(json_of(&body)["message"], "Client ID Not Found");

    h.sim.set_faults(Faults {
        whmcs_reject_products: vec!["9".into()],
        ..Faults::default()
    });
    let (status, body) = whmcs(&h, &add("9", "3")).await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body)["message"],
        "No items added to cart so order cannot proceed"
    );

    h.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        ..Faults::default()
    });
    let (status, body) = whmcs(&h, &add("1", "3")).await;
    assert_eq!(status, 500);
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "HTML, not JSON"
    );
    assert_eq!(h.sim.totals().whmcs_orders, 0);

    h.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        whmcs_error_kind: WhmcsFaultKind::AfterCommit,
        ..Faults::default()
    });
    let mut fields = add("1", "3");
    fields.push(("notes", notes.as_str()));
    let (status, _) = whmcs(&h, &fields).await;
    assert_eq!(status, 500);
    assert_eq!(
        h.sim.whmcs_orders_for(&order).len(),
        1,
        "performed despite the 500"
    );
    h.sim.set_faults(Faults::default());
    let (_, body) = whmcs(&h, &[("action", "GetOrders"), ("userid", "3")]).await;
    assert_eq!(
        json_of(&body)["orders"]["order"][0]["notes"],
        notes.as_str()
    );
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Control surface

#[tokio::test]
async fn control_surface_drives_the_simulator() {
    let h = start_default().await;
    let c = http();
    let base = &h.http_url;
    let v: Value = c
        .post(format!("{base}/sim/orders"))
        .json(&json!({"whmcs_client_id": "9"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = v["id"].as_str().expect("id").to_owned();
    let v: Value = c
        .post(format!("{base}/sim/orders/bulk"))
        .json(&json!({"count": 3}))
        .send()
        .await
        .expect("bulk")
        .json()
        .await
        .expect("json");
    assert_eq!(v["ids"].as_array().map(Vec::len), Some(3));
    let v: Value = c
        .post(format!("{base}/sim/orders/{id}/approve"))
        .send()
        .await
        .expect("approve")
        .json()
        .await
        .expect("json");
    let rid = v["replayId"].as_str().expect("hex").to_owned();
    assert_eq!(rid.len(), 20);
    let resp = c
        .patch(format!("{base}/sim/orders/{id}"))
        .json(&json!({"Activation_Status__c": "Failed"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 204);
    let v: Value = c
        .get(format!("{base}/sim/orders/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(v["activation_status"], "Failed");
    assert!(v["counts"].is_object() && v["whmcs_orders"].is_array());
    let resp = c
        .put(format!("{base}/sim/faults"))
        .json(&json!({"sfLockRowNext": 2, "silent": false}))
        .send()
        .await
        .expect("faults");
    assert_eq!(resp.status(), 200);
    assert_eq!(h.sim.faults().sf_lock_row_next, 2);
    let v: Value = c
        .post(format!("{base}/sim/publish-raw"))
        .json(&json!({"schemaId": "bogus", "payloadHex": "ffff"}))
        .send()
        .await
        .expect("raw")
        .json()
        .await
        .expect("json");
    assert!(v["replayId"].is_string());
    let v: Value = c
        .get(format!("{base}/sim/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    assert_eq!(v["totals"]["events_published"], 2);
    assert_eq!(v["latestReplayId"], v2_hex(&h.sim));
    assert_eq!(v["faults"]["sf_lock_row_next"], 2);
    h.shutdown().await;
}

fn v2_hex(sim: &Simulator) -> String {
    hex::encode(sim.latest_replay_id().expect("events exist"))
}
