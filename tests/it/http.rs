//! HTTP surface: health, readiness, metrics, the portal's order-status API (JSON and SSE),
//! CORS, rate limiting, and the OpenAPI document checked against real responses.
//!
//! Shared helpers for the other HTTP test modules live here too: portal tokens, an SSE reader
//! and the OpenAPI validator.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use provisioner::ids::SalesforceId;
use provisioner_sim::{Faults, OrderSeed};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, sf_id, spawn_app, wait_until};

/// The portal secret `spawn_app` configures.
pub const PORTAL_SECRET: &[u8] = b"portal-test-secret-0123456789abcdef";

pub fn token(account: &str, exp_offset: i64) -> String {
    token_with(
        &json!({
            "sub": "portal-user",
            "sf_account_id": account,
            "exp": chrono::Utc::now().timestamp() + exp_offset,
        }),
        PORTAL_SECRET,
    )
}

/// An HS256 token with the given claims and secret.
pub fn token_with(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("jwt")
}

/// Waits until the daemon answers `/health/live`.
pub async fn http_up(base: &str) {
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(20), "HTTP up", || async {
        http.get(format!("{base}/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// The account of a simulator Order, as the portal token carries it.
pub fn account_of(app: &TestApp, id: &SalesforceId) -> String {
    app.sim.sim.order(id).expect("order").account_id.to_string()
}

/// One item of a Server-Sent Events stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Event {
        event: String,
        id: String,
        data: String,
        retry: Option<u64>,
    },
    Comment,
}

/// Reads a `text/event-stream` response item by item.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().expect("ascii");
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next item; `None` when the server ended the stream. Panics after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseItem> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return Some(parse_sse_block(&block));
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("SSE item within the deadline")
                .expect("SSE read");
            match chunk {
                Some(bytes) => self
                    .buf
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                None => return None,
            }
        }
    }

    /// The next status event (skipping keep-alive comments), with whether a comment came first.
    pub async fn next_event(&mut self, within: Duration) -> Option<(Value, bool)> {
        let mut comment = false;
        loop {
            match self.next(within).await? {
                SseItem::Comment => comment = true,
                SseItem::Event { event, data, .. } => {
                    assert_eq!(event, "status");
                    return Some((serde_json::from_str(&data).expect("JSON data"), comment));
                }
            }
        }
    }
}

fn parse_sse_block(block: &str) -> SseItem {
    let (mut event, mut id, mut data, mut retry) = (String::new(), String::new(), Vec::new(), None);
    let mut only_comments = true;
    for line in block.lines().filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        only_comments = false;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "id" => id = value.to_owned(),
            "data" => data.push(value.to_owned()),
            "retry" => retry = Some(value.parse().expect("retry ms")),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if only_comments {
        return SseItem::Comment;
    }
    SseItem::Event {
        event,
        id,
        data: data.join("\n"),
        retry,
    }
}

/// The served OpenAPI document, for checking real responses against it.
pub struct Spec {
    doc: Value,
}

impl Spec {
    pub async fn fetch(base: &str) -> Self {
        let r = reqwest::get(format!("{base}/openapi.json"))
            .await
            .expect("openapi");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let doc: Value = r.json().await.expect("openapi JSON");
        // The document itself is valid JSON Schema where it embeds schemas.
        for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
            assert!(
                jsonschema::meta::is_valid(schema),
                "schema {name} is not valid JSON Schema"
            );
        }
        Self { doc }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling {r}")),
            None => v,
        }
    }

    /// The documented response of `path` (a template such as `/api/orders/{sfOrderId}`).
    pub fn response(&self, path: &str, status: u16) -> &Value {
        let op = &self.doc["paths"][path]["get"];
        assert!(op.is_object(), "{path} undocumented");
        let r = &op["responses"][status.to_string()];
        assert!(r.is_object(), "{path} {status} undocumented");
        self.resolve(r)
    }

    /// Checks status, documented headers and (for JSON) the body against the document.
    pub async fn check(&self, path: &str, resp: reqwest::Response) -> (u16, Option<Value>) {
        let status = resp.status().as_u16();
        let doc = self.response(path, status).clone();
        for (name, h) in doc["headers"].as_object().into_iter().flatten() {
            if name.eq_ignore_ascii_case("x-request-id") {
                continue; // checked for every response below
            }
            let h = self.resolve(h);
            let v = resp
                .headers()
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{path} {status}: header {name} missing"))
                .to_str()
                .expect("ascii");
            let value = match h["schema"]["type"].as_str() {
                Some("integer") => json!(v.parse::<i64>().expect("integer header")),
                _ => json!(v),
            };
            self.validate(
                &h["schema"],
                &value,
                &format!("{path} {status} header {name}"),
            );
        }
        assert!(
            resp.headers().contains_key("x-request-id"),
            "{path} {status}: no x-request-id"
        );
        let content = doc["content"].as_object();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = resp.bytes().await.expect("body");
        let Some(content) = content else {
            assert!(
                body.is_empty(),
                "{path} {status}: body where none is documented"
            );
            return (status, None);
        };
        let ct = ct.unwrap_or_else(|| panic!("{path} {status}: no content-type"));
        let media = content
            .keys()
            .find(|m| ct.starts_with(m.as_str()))
            .unwrap_or_else(|| panic!("{path} {status}: content-type {ct} undocumented"));
        if media != "application/json" {
            return (status, None);
        }
        let value: Value = serde_json::from_slice(&body).expect("JSON body");
        self.validate(
            &content[media]["schema"],
            &value,
            &format!("{path} {status}"),
        );
        (status, Some(value))
    }

    /// Validates `value` against `schema` (which may refer to `#/components/...`).
    pub fn validate(&self, schema: &Value, value: &Value, what: &str) {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let v = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .expect("schema compiles");
        let errors: Vec<String> = v
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\n{value:#}");
    }

    /// Validates `value` against `#/components/schemas/{name}`.
    pub fn validate_schema(&self, name: &str, value: &Value) {
        self.validate(
            &json!({"$ref": format!("#/components/schemas/{name}")}),
            value,
            name,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_status_api_statuses() {
    let mut app = spawn_app(Options::default()).await;
    let http = reqwest::Client::new();
    let base = app.http.clone();
    wait_until(Duration::from_secs(20), "HTTP up", || async {
        http.get(format!("{base}/health/live")).send().await.is_ok()
    })
    .await;
    let id = app.seed(1).remove(0);
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    let order = app.sim.sim.order(&id).expect("order");
    let account = order.account_id.to_string();
    let url = format!("{base}/api/orders/{id}");

    // 401: no token, bad token, expired token.
    assert_eq!(http.get(&url).send().await.expect("req").status(), 401);
    assert_eq!(
        http.get(&url)
            .bearer_auth("garbage")
            .send()
            .await
            .expect("req")
            .status(),
        401
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(token(&account, -3600))
            .send()
            .await
            .expect("req")
            .status(),
        401
    );
    // alg none is refused.
    let none = format!(
        "eyJhbGciOiJub25lIn0.{}.",
        base64_url(&json!({"sf_account_id": account, "exp": 9_999_999_999u64}).to_string())
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(none)
            .send()
            .await
            .expect("req")
            .status(),
        401
    );

    let good = token(&account, 600);
    // 400: malformed id (checked before anything else touches it).
    let r = http
        .get(format!("{base}/api/orders/801'%20OR%201=1"))
        .bearer_auth(&good)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);

    // 200: own order, served from the ledger with zero Salesforce calls.
    let soql_before = app.sim.sim.counts(&id).soql;
    let r = http.get(&url).bearer_auth(&good).send().await.expect("req");
    assert_eq!(r.status(), 200);
    let etag = r
        .headers()
        .get("etag")
        .expect("etag")
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["sfOrderId"], id.to_string());
    assert_eq!(body["status"], "Provisioned");
    assert_eq!(body["activationStatus"], "Activated");
    assert!(body["whmcsOrderId"].is_string());
    assert!(body["error"].is_null());
    assert!(body["updatedAt"].is_string());
    // 15-character id is the same order.
    let r = http
        .get(format!("{base}/api/orders/{}", id.short()))
        .bearer_auth(&good)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.sim.sim.counts(&id).soql,
        soql_before,
        "no Salesforce call for known orders"
    );

    // 304 with If-None-Match.
    let r = http
        .get(&url)
        .bearer_auth(&good)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 304);

    // 404: other account's order and unknown order look the same.
    let other = token("001000000000999", 600);
    let r1 = http
        .get(&url)
        .bearer_auth(&other)
        .send()
        .await
        .expect("req");
    assert_eq!(r1.status(), 404);
    let b1 = r1.text().await.expect("body");
    let unknown = provisioner::ids::SalesforceId::synthesize("801", 777_777);
    let r2 = http
        .get(format!("{base}/api/orders/{unknown}"))
        .bearer_auth(&good)
        .send()
        .await
        .expect("req");
    assert_eq!(r2.status(), 404);
    assert_eq!(b1, r2.text().await.expect("body"));

    // Health and metrics.
    let r = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.expect("json");
    assert_eq!(ready["database"]["ok"], true);
    assert_eq!(ready["redis"]["ok"], true);
    let r = http
        .get(format!("{base}/health/sf-events"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.expect("json");
    assert_eq!(h["enabled"], true);
    assert_eq!(h["state"], "connected");
    assert!(h["cursor"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(h["queue"]["done"].as_u64().is_some());
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("req")
        .text()
        .await
        .expect("text");
    for series in [
        "provisioner_provisioning_attempts_total{outcome=\"provisioned\"} 1",
        "provisioner_events_received_total",
        "provisioner_provisioning_duration_seconds_bucket",
        "provisioner_event_lag_seconds_bucket",
        "provisioner_subscription_reconnects_total",
        "provisioner_salesforce_api_usage_used",
    ] {
        assert!(m.contains(series), "{series} missing:\n{m}");
    }
    app.stop().await.expect("stop");
}

pub fn base64_url(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | (u32::from(v) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_redis_is_unreachable_at_start() {
    // A daemon pointed at a Redis that does not answer does not start.
    let dir = std::env::temp_dir();
    let _ = dir;
    let mut env: Vec<(String, String)> = vec![
        ("SF_CLIENT_ID", "x"),
        ("SF_AUTH_FLOW", "client_credentials"),
        ("SF_CLIENT_SECRET", "y"),
        ("WHMCS_API_URL", "http://127.0.0.1:9/includes/api.php"),
        ("WHMCS_API_IDENTIFIER", "i"),
        ("WHMCS_API_SECRET", "s"),
        ("PORTAL_JWT_SECRET", "portal-test-secret-0123456789abcdef"),
        ("REDIS_URL", "redis://127.0.0.1:9"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.push((
        "DATABASE_URL".into(),
        format!(
            "sqlite://{}/prov-{}.db",
            std::env::temp_dir().display(),
            uuid::Uuid::new_v4().simple()
        ),
    ));
    let cfg = provisioner::config::Config::load_from(None, env).expect("config");
    let err = match provisioner::daemon::AppState::build(cfg).await {
        Ok(_) => panic!("must not start without Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("REDIS_URL"), "{err}");
}

/// `/api/orders/{id}` of `id` with `token`.
async fn get_order(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut r = http.get(format!("{base}/api/orders/{id}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.expect("request")
}

async fn open_events(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    token: &str,
) -> reqwest::Response {
    http.get(format!("{base}/api/orders/{id}/events"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_pushes_activating_then_provisioned_live_and_ends_on_shutdown() {
    let mut app = spawn_app(Options {
        extra_env: vec![("SSE_KEEPALIVE_SECS", "1".into())],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let spec = Spec::fetch(&app.http).await;
    // WHMCS answers slowly, so the Order is still Activating while the stream is open.
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 1500,
        ..Faults::default()
    });
    let id = app.seed(1).remove(0);
    let account = account_of(&app, &id);
    let good = token(&account, 600);
    let http = reqwest::Client::new();
    let base = app.http.clone();

    app.sim.sim.approve(&id);
    // Same auth and id rules as the JSON endpoint.
    let r = http
        .get(format!("{base}/api/orders/{id}/events"))
        .send()
        .await
        .expect("req");
    spec.check("/api/orders/{sfOrderId}/events", r).await;
    let r = open_events(&http, &base, "801'--", &good).await;
    assert_eq!(spec.check("/api/orders/{sfOrderId}/events", r).await.0, 400);
    let r = open_events(&http, &base, id.as_str(), &token("001000000000999", 600)).await;
    assert_eq!(spec.check("/api/orders/{sfOrderId}/events", r).await.0, 404);

    let mut sse = SseReader::new(open_events(&http, &base, id.as_str(), &good).await);
    let first = sse.next(Duration::from_secs(10)).await.expect("first item");
    let SseItem::Event {
        event,
        id: event_id,
        data,
        retry,
    } = first
    else {
        panic!("first item must be the current status, got {first:?}")
    };
    assert_eq!(event, "status");
    assert!(event_id.starts_with("W/\""), "{event_id}");
    assert_eq!(retry, Some(5000), "reconnect delay advertised");
    let first: Value = serde_json::from_str(&data).expect("json");
    spec.validate_schema("OrderStatus", &first);
    assert_eq!(first["sfOrderId"], id.to_string());
    assert_eq!(first["status"], "Activating");

    let (next, saw_keepalive) = sse
        .next_event(Duration::from_secs(60))
        .await
        .expect("the change is pushed");
    spec.validate_schema("OrderStatus", &next);
    assert_eq!(next["status"], "Provisioned");
    assert_eq!(next["activationStatus"], "Activated");
    assert!(next["whmcsOrderId"].is_string());
    assert!(
        saw_keepalive,
        "keep-alive comments while waiting 3 s with a 1 s interval"
    );
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));

    // The ETag of the pushed event is the one the JSON endpoint serves.
    let r = get_order(&http, &base, id.as_str(), Some(&good)).await;
    let etag = r.headers()["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(r.json::<Value>().await.expect("json"), next);
    assert!(etag.starts_with("W/\""));

    // Shutdown ends the stream (instead of holding the daemon until its grace period).
    let started = std::time::Instant::now();
    let stop = tokio::spawn(async move {
        app.stop().await.expect("clean stop");
        app
    });
    loop {
        match sse.next(Duration::from_secs(10)).await {
            None => break,
            Some(SseItem::Comment) => continue,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    let _app = stop.await.expect("stop task");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?} with a stream open",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_are_bounded_with_503_and_retry_after() {
    const MAX: usize = 20;
    let app = spawn_app(Options {
        extra_env: vec![
            ("SSE_MAX_CLIENTS", MAX.to_string()),
            // All streams belong to one Account; this test is about the service-wide bound.
            ("SSE_MAX_PER_ACCOUNT", (MAX + 10).to_string()),
            ("API_RATE_LIMIT_PER_SEC", "0".into()),
            ("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let spec = Spec::fetch(&app.http).await;
    let id = app.seed(1).remove(0);
    let good = token(&account_of(&app, &id), 600);
    let http = reqwest::Client::new();
    let base = app.http.clone();
    let soql_before = app.sim.sim.counts(&id).soql;

    // 25 clients at once: exactly MAX get a stream, the rest 503 with Retry-After.
    let attempts = futures::future::join_all(
        (0..MAX + 5).map(|_| open_events(&http, &base, id.as_str(), &good)),
    )
    .await;
    let mut open = Vec::new();
    let mut refused = 0;
    for r in attempts {
        if r.status() == 200 {
            open.push(SseReader::new(r));
        } else {
            let (status, body) = spec.check("/api/orders/{sfOrderId}/events", r).await;
            assert_eq!(status, 503);
            assert_eq!(body.expect("body")["error"], "too_many_streams");
            refused += 1;
        }
    }
    assert_eq!((open.len(), refused), (MAX, 5));
    for s in &mut open {
        let (v, _) = s.next_event(Duration::from_secs(10)).await.expect("status");
        assert_eq!(v["sfOrderId"], id.to_string());
    }
    // The order is unknown to the ledger: one Salesforce read served all of them (coalesced,
    // cached).
    assert_eq!(app.sim.sim.counts(&id).soql, soql_before + 1);
    // The JSON endpoint is not affected by the stream limit.
    assert_eq!(
        get_order(&http, &base, id.as_str(), Some(&good))
            .await
            .status(),
        200
    );
    // A closed stream frees its slot.
    drop(open.pop());
    wait_until(Duration::from_secs(10), "a slot to free up", || async {
        open_events(&http, &base, id.as_str(), &good).await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after_per_client() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0.5".into()),
            ("API_RATE_LIMIT_BURST", "5".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let spec = Spec::fetch(&app.http).await;
    let http = reqwest::Client::new();
    let base = app.http.clone();
    let good = token("001000000000001", 600);
    // A burst of 12 (malformed ids: cheap, no Salesforce call); a spoofed X-Forwarded-For
    // does not earn a fresh bucket because no proxy is trusted.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..12 {
        let r = http
            .get(format!("{base}/api/orders/bad-{i}"))
            .bearer_auth(&good)
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("req");
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").parse::<u64>().expect("seconds"));
            let (_, body) = spec.check("/api/orders/{sfOrderId}", r).await;
            assert_eq!(body.expect("body")["error"], "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(&statuses[..5], &[400; 5], "the burst passes: {statuses:?}");
    assert!(limited >= 5, "the rest is limited: {statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    // Health, metrics and the document are never limited.
    for path in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
        let r = http.get(format!("{base}{path}")).send().await.expect("req");
        assert_eq!(r.status(), 200, "{path}");
    }
    // The bucket refills at the configured rate.
    wait_until(Duration::from_secs(5), "the bucket to refill", || async {
        http.get(format!("{base}/api/orders/bad"))
            .bearer_auth(&good)
            .send()
            .await
            .is_ok_and(|r| r.status() == 400)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_configured_origins_only() {
    let app = spawn_app(Options {
        extra_env: vec![(
            "CORS_ALLOWED_ORIGINS",
            "https://portal.example.com, http://localhost:3000".into(),
        )],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/api/orders/{}",
        app.http,
        SalesforceId::synthesize("801", 5)
    );
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "authorization, if-none-match",
            )
            .send()
    };
    let r = preflight("https://portal.example.com").await.expect("req");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://portal.example.com"
    );
    let allowed_headers = r.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization") && allowed_headers.contains("if-none-match"),
        "{allowed_headers}"
    );
    let r = preflight("https://evil.example.com").await.expect("req");
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    // The actual request: the browser may read the ETag and the 401.
    let r = http
        .get(&url)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("retry-after"),
        "{exposed}"
    );
    let r = http
        .get(&url)
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .expect("req");
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_real_response() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "1".into()),
            ("API_RATE_LIMIT_BURST", "12".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let spec = Spec::fetch(&app.http).await;
    let http = reqwest::Client::new();
    let base = app.http.clone();
    let get = |path: String| {
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}{path}")).send().await.expect("req") }
    };

    // A provisioned and a failed Order in the ledger, and one Salesforce-only Order.
    let ok = app.seed(1).remove(0);
    let bad = sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![provisioner_sim::ItemSeed {
            product_id: None,
            ..Default::default()
        }],
        ..Default::default()
    }));
    // Another customer's Order, never approved: Salesforce-only.
    let draft = sf_id(app.sim.sim.seed_order(OrderSeed {
        whmcs_client_id: Some("2".into()),
        ..Default::default()
    }));
    app.sim.sim.approve(&ok);
    app.sim.sim.approve(&bad);
    app.wait_terminal(&[ok.clone(), bad.clone()], Duration::from_secs(60))
        .await;
    let mut seen = std::collections::BTreeSet::new();
    let mut record = |path: &str, status: u16| {
        seen.insert(format!("{path} {status}"));
    };

    for path in [
        "/health/live",
        "/health/ready",
        "/health/sf-events",
        "/metrics",
        "/openapi.json",
    ] {
        let (status, _) = spec.check(path, get(path.to_owned()).await).await;
        assert_eq!(status, 200, "{path}");
        record(path, status);
    }

    let order = "/api/orders/{sfOrderId}";
    let mut statuses = Vec::new();
    for id in [&ok, &bad, &draft] {
        let t = token(&account_of(&app, id), 600);
        let r = get_order(&http, &base, id.as_str(), Some(&t)).await;
        let etag = r.headers().get("etag").cloned();
        let (status, body) = spec.check(order, r).await;
        assert_eq!(status, 200);
        statuses.push(body.expect("body")["status"].clone());
        // 304 with the ETag.
        let r = http
            .get(format!("{base}/api/orders/{id}"))
            .bearer_auth(&t)
            .header("if-none-match", etag.expect("etag"))
            .send()
            .await
            .expect("req");
        assert_eq!(spec.check(order, r).await.0, 304);
    }
    assert_eq!(
        statuses,
        [json!("Provisioned"), json!("Failed"), json!("Draft")]
    );
    let t = token(&account_of(&app, &bad), 600);
    let r = get_order(&http, &base, bad.as_str(), Some(&t)).await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "MAPPING_PRODUCT_MISSING");
    record(order, 200);
    record(order, 304);
    let t = token(&account_of(&app, &ok), 600);
    for (id, tok, want) in [
        ("not-an-id", Some(t.as_str()), 400),
        (ok.as_str(), None, 401),
        (ok.as_str(), Some("x.y.z"), 401),
        (draft.as_str(), Some(t.as_str()), 404),
    ] {
        let r = get_order(&http, &base, id, tok).await;
        assert_eq!(spec.check(order, r).await.0, want, "{id}");
        record(order, want);
    }
    // 429: spend the rest of the burst.
    let mut limited = None;
    for _ in 0..20 {
        let r = get_order(&http, &base, "x", Some(&t)).await;
        if r.status() == 429 {
            limited = Some(spec.check(order, r).await.0);
            break;
        }
    }
    assert_eq!(limited, Some(429));
    record(order, 429);

    // 503: the ledger goes away.
    app.state.ledger.close().await;
    let (status, body) = spec
        .check("/health/ready", get("/health/ready".into()).await)
        .await;
    assert_eq!(status, 503);
    assert_eq!(body.expect("body")["database"]["ok"], false);
    record("/health/ready", 503);
    // An Order this daemon has not served yet: a served one may be answered from memory.
    let unseen = SalesforceId::synthesize("801", 987_654);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = get_order(&http, &base, unseen.as_str(), Some(&t)).await;
        if r.status() != 429 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "rate limit refill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, body) = spec.check(order, r).await;
    assert_eq!(status, 503);
    assert_eq!(body.expect("body")["error"], "unavailable");
    record(order, 503);

    // 503 from /health/sf-events: a daemon that cannot reach the Pub/Sub API.
    let down = spawn_app(Options {
        extra_env: vec![("SF_PUBSUB_ENDPOINT", "http://127.0.0.1:9".into())],
        ..Default::default()
    })
    .await;
    http_up(&down.http).await;
    let r = reqwest::get(format!("{}/health/sf-events", down.http))
        .await
        .expect("req");
    let (status, body) = spec.check("/health/sf-events", r).await;
    assert_eq!(status, 503);
    assert_ne!(body.expect("body")["state"], "connected");
    record("/health/sf-events", 503);

    // Every documented JSON response was produced at least once (SSE ones: see the SSE tests).
    let documented: std::collections::BTreeSet<String> = spec.doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(p, _)| !p.ends_with("/events"))
        .flat_map(|(p, item)| {
            item["get"]["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(move |s| format!("{p} {s}"))
        })
        .collect();
    assert_eq!(seen, documented);
}
