//! Observability: the Prometheus text parsed strictly after a provisioning run, the
//! failure-rate alert and its webhook, and the daemon's own logs (captured from the real binary)
//! carrying request / correlation ids and no secret.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use provisioner::ids::SalesforceId;
use provisioner_sim::{Faults, ItemSeed, OrderSeed, SimConfig};
use serde_json::Value;
use tokio::{io::AsyncReadExt, process::Command};

use crate::{
    helpers::{Db, Options, TestApp, sf_id, sigterm, spawn_app, wait_until},
    http::{SseReader, account_of, http_up, token, token_with},
};

// ─── A strict parser of the Prometheus / OpenMetrics text format ────────────────────────────

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses `text`, panicking on anything that is not valid exposition format.
    fn parse(text: &str) -> Self {
        let mut e = Self::default();
        let mut helps = BTreeSet::new();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.last(),
            Some(&"# EOF"),
            "OpenMetrics text ends with # EOF"
        );
        for (n, line) in lines[..lines.len() - 1].iter().enumerate() {
            let at = || format!("line {}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name) = (parts.next(), parts.next());
                let name = name.unwrap_or_else(|| panic!("{}", at())).to_owned();
                assert!(valid_name(&name), "{}", at());
                match kind {
                    Some("HELP") => assert!(helps.insert(name), "duplicate HELP, {}", at()),
                    Some("TYPE") => {
                        let t = parts.next().unwrap_or_else(|| panic!("{}", at()));
                        assert!(
                            [
                                "counter",
                                "gauge",
                                "histogram",
                                "summary",
                                "info",
                                "stateset",
                                "unknown"
                            ]
                            .contains(&t),
                            "{}",
                            at()
                        );
                        assert!(
                            e.types.insert(name, t.to_owned()).is_none(),
                            "duplicate TYPE, {}",
                            at()
                        );
                    }
                    Some("UNIT") => {}
                    _ => panic!("unknown comment, {}", at()),
                }
                continue;
            }
            assert!(!line.is_empty(), "empty line, {}", at());
            let sample = parse_sample(line).unwrap_or_else(|| panic!("bad sample, {}", at()));
            let family = e.family_of(&sample.name);
            assert!(family.is_some(), "sample of an undeclared family, {}", at());
            e.samples.push(sample);
        }
        e
    }

    fn family_of(&self, sample: &str) -> Option<(&str, &str)> {
        self.types.iter().find_map(|(f, t)| {
            let suffix = sample.strip_prefix(f.as_str())?;
            let ok = match t.as_str() {
                "counter" => matches!(suffix, "_total" | "_created"),
                "histogram" => matches!(suffix, "_bucket" | "_count" | "_sum" | "_created"),
                "summary" => matches!(suffix, "" | "_count" | "_sum" | "_created"),
                "info" => suffix == "_info",
                _ => suffix.is_empty(),
            };
            ok.then_some((f.as_str(), t.as_str()))
        })
    }

    fn values(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of the one sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<f64> = self
            .values(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} is ambiguous");
        hits.first().copied()
    }

    /// Checks a histogram: cumulative buckets, `+Inf` = `_count`; returns `_count`.
    fn histogram_count(&self, family: &str) -> f64 {
        assert_eq!(
            self.types.get(family).map(String::as_str),
            Some("histogram")
        );
        let buckets = self.values(&format!("{family}_bucket"));
        assert!(!buckets.is_empty(), "{family} has buckets");
        let mut last = -1.0;
        let mut prev_le = f64::NEG_INFINITY;
        for b in &buckets {
            let le: f64 = parse_value(&b.labels["le"]).expect("le");
            assert!(le > prev_le, "{family}: buckets in order");
            assert!(b.value >= last, "{family}: cumulative buckets");
            (prev_le, last) = (le, b.value);
        }
        assert!(prev_le.is_infinite(), "{family}: ends with +Inf");
        let count = self.value(&format!("{family}_count"), &[]).expect("_count");
        assert_eq!(last, count, "{family}: +Inf bucket = count");
        assert!(self.value(&format!("{family}_sum"), &[]).is_some());
        count
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &body[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = body[start..].find('=')? + start;
            let key = &body[start..eq];
            if !valid_name(key) || body.as_bytes().get(eq + 1) != Some(&b'"') {
                return None;
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return None;
            }
        }
    }
    let mut parts = rest.strip_prefix(' ')?.split(' ');
    let value = parse_value(parts.next()?)?;
    if let Some(ts) = parts.next() {
        ts.parse::<f64>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[test]
fn the_parser_rejects_what_it_should() {
    let ok = "# HELP a_total x\n# TYPE a counter\na_total{k=\"v\\\"q\",l=\"\"} 3\n# EOF";
    let e = Exposition::parse(ok);
    assert_eq!(e.value("a_total", &[("k", "v\"q")]), Some(3.0));
    for bad in [
        "a_total 1\n# EOF",                        // undeclared
        "# TYPE a counter\na 1\n# EOF",            // counter sample without _total
        "# TYPE a counter\na_total{k=v} 1\n# EOF", // unquoted label
        "# TYPE a counter\na_total 1 2 3\n# EOF",  // extra field
        "# TYPE a counter\na_total one\n# EOF",    // not a number
        "# TYPE a counter\na_total 1",             // no EOF
    ] {
        assert!(
            std::panic::catch_unwind(|| Exposition::parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_carry_the_contract_series_after_a_run() {
    let app = spawn_app(Options::default()).await;
    http_up(&app.http).await;
    app.sim.sim.set_faults(Faults {
        whmcs_reject_products: vec!["99".into()],
        ..Faults::default()
    });
    let mut ids = app.seed(3);
    ids.push(sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: Some("99".into()),
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    })));
    for id in &ids {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    assert_eq!(app.activation(&ids[3]).as_deref(), Some("Failed"));

    let http = reqwest::Client::new();
    let fetch = || async {
        let r = http
            .get(format!("{}/metrics", app.http))
            .send()
            .await
            .expect("metrics");
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        Exposition::parse(&r.text().await.expect("text"))
    };
    // The attempt counters are final once the worker wrote back; the queue gauges come from the
    // housekeeping tick.
    wait_until(Duration::from_secs(20), "all series", || async {
        let m = fetch().await;
        m.value(
            "provisioner_provisioning_attempts_total",
            &[("outcome", "failed")],
        ) == Some(1.0)
            && m.value(
                "provisioner_provisioning_attempts_total",
                &[("outcome", "provisioned")],
            ) == Some(3.0)
            && !m.values("provisioner_queue_depth").is_empty()
    })
    .await;
    let m = fetch().await;
    assert_eq!(
        m.histogram_count("provisioner_provisioning_duration_seconds"),
        4.0
    );
    assert!(m.histogram_count("provisioner_event_lag_seconds") >= 4.0);
    assert!(
        m.value("provisioner_events_received_total", &[])
            .expect("events")
            >= 4.0
    );
    assert!(
        m.value("provisioner_subscription_reconnects_total", &[])
            .is_some()
    );
    let whmcs = m.values("provisioner_whmcs_errors_total");
    assert!(
        whmcs.iter().any(
            |s| s.labels.get("action").map(String::as_str) == Some("AddOrder")
                && s.labels.get("code").is_some_and(|c| !c.is_empty())
                && s.value >= 1.0
        ),
        "{whmcs:?}"
    );
    for state in ["pending", "running", "failed", "done"] {
        assert!(
            m.value("provisioner_queue_depth", &[("state", state)])
                .is_some(),
            "queue_depth{{state={state}}}"
        );
    }
    let used = m
        .value("provisioner_salesforce_api_usage_used", &[])
        .expect("used");
    let limit = m
        .value("provisioner_salesforce_api_usage_limit", &[])
        .expect("limit");
    assert!(used >= 1.0 && limit > used, "{used}/{limit}");
    // Labels stay low-cardinality: no order id anywhere.
    for s in &m.samples {
        for v in s.labels.values() {
            assert!(
                SalesforceId::parse(v).is_err(),
                "order id in a label: {s:?}"
            );
        }
    }
}

// ─── Alerts ─────────────────────────────────────────────────────────────────────────────────

/// A loopback receiver standing in for a chat webhook.
#[derive(Clone, Default)]
pub struct Hook {
    /// Bodies of the POSTs it answered 200 to.
    delivered: Arc<Mutex<Vec<Value>>>,
    /// POSTs received in all.
    received: Arc<Mutex<usize>>,
    /// Answer 500 to this many POSTs first.
    fail_first: usize,
}

impl Hook {
    /// Starts the receiver; returns its URL (with a secret-looking path).
    pub async fn start(&self, secret: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/services/{secret}",
            listener.local_addr().expect("addr")
        );
        let app = Router::new()
            .route("/services/{*secret}", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    pub fn delivered(&self) -> Vec<Value> {
        self.delivered.lock().expect("lock").clone()
    }

    fn received(&self) -> usize {
        *self.received.lock().expect("lock")
    }
}

async fn receive(State(h): State<Hook>, Json(body): Json<Value>) -> StatusCode {
    let n = {
        let mut r = h.received.lock().expect("lock");
        *r += 1;
        *r
    };
    if n <= h.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    h.delivered.lock().expect("lock").push(body);
    StatusCode::OK
}

/// Orders whose product has no WHMCS mapping: each fails at once (MAPPING_PRODUCT_MISSING).
fn seed_failing(app: &TestApp, n: usize) -> Vec<SalesforceId> {
    (0..n)
        .map(|_| {
            sf_id(app.sim.sim.seed_order(OrderSeed {
                items: vec![ItemSeed {
                    product_id: None,
                    ..ItemSeed::default()
                }],
                ..OrderSeed::default()
            }))
        })
        .collect()
}

async fn sf_events(app: &TestApp) -> (u16, Value) {
    let r = reqwest::get(format!("{}/health/sf-events", app.http))
        .await
        .expect("health");
    (r.status().as_u16(), r.json().await.expect("json"))
}

async fn storm(app: &TestApp, failing: usize, good: usize) {
    let mut ids = seed_failing(app, failing);
    ids.extend(app.seed(good));
    for id in &ids {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
}

fn alert_env(url: String) -> Vec<(&'static str, String)> {
    vec![
        ("ALERT_WEBHOOK_URL", url),
        ("ALERT_CHECK_INTERVAL_SECS", "1".into()),
        ("ALERT_MIN_SAMPLES", "5".into()),
        ("ALERT_WINDOW_SECS", "600".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_storm_posts_the_webhook_exactly_once_sqlite() {
    failure_storm_posts_the_webhook_exactly_once(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_storm_posts_the_webhook_exactly_once_postgres() {
    failure_storm_posts_the_webhook_exactly_once(Db::Postgres).await;
}

async fn failure_storm_posts_the_webhook_exactly_once(db: Db) {
    let hook = Hook::default();
    let url = hook.start("T000/B000/storm").await;
    let app = spawn_app(Options {
        db,
        extra_env: alert_env(url),
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    // A healthy start: nothing fires.
    storm(&app, 0, 5).await;
    wait_until(
        Duration::from_secs(20),
        "an evaluation of 5 successes",
        || async { sf_events(&app).await.1["alert"]["total"] == 5 },
    )
    .await;
    let (_, h) = sf_events(&app).await;
    assert_eq!(h["alert"]["firing"], false);
    assert_eq!(h["alert"]["failureRate"], 0.0);

    // 6 failures out of 11: 55 %.
    storm(&app, 6, 0).await;
    wait_until(Duration::from_secs(20), "the webhook", || async {
        !hook.delivered().is_empty()
    })
    .await;
    wait_until(
        Duration::from_secs(20),
        "an evaluation of all 11",
        || async { sf_events(&app).await.1["alert"]["total"] == 11 },
    )
    .await;
    let (status, h) = sf_events(&app).await;
    assert_eq!(
        status, 200,
        "the alert is flagged, the subscription is still healthy"
    );
    let alert = &h["alert"];
    assert_eq!(alert["firing"], true);
    assert_eq!(alert["failed"], 6);
    assert!(alert["lastNotifiedAt"].is_string() && alert["since"].is_string());
    let text = hook.delivered()[0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(
        text.contains("provisioning attempts failed in the last 10 min")
            && text.contains("above the 10.0 % threshold"),
        "{text}"
    );

    // The storm goes on: more failures, more evaluations, still one notification.
    storm(&app, 4, 0).await;
    let checks = sf_events(&app).await.1["alert"]["checks"]
        .as_u64()
        .expect("checks");
    wait_until(
        Duration::from_secs(20),
        "three more evaluations",
        || async {
            let a = sf_events(&app).await.1["alert"].clone();
            a["checks"].as_u64().is_some_and(|c| c >= checks + 3) && a["failed"] == 10
        },
    )
    .await;
    assert_eq!(sf_events(&app).await.1["alert"]["firing"], true);
    assert_eq!(hook.received(), 1, "{:?}", hook.delivered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webhook_delivery_is_retried_once_not_duplicated() {
    let hook = Hook {
        fail_first: 1,
        ..Hook::default()
    };
    let url = hook.start("T000/B000/retry").await;
    let app = spawn_app(Options {
        extra_env: alert_env(url),
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    storm(&app, 5, 0).await;
    wait_until(Duration::from_secs(20), "a delivered alert", || async {
        hook.delivered().len() == 1
    })
    .await;
    let checks = sf_events(&app).await.1["alert"]["checks"]
        .as_u64()
        .expect("checks");
    wait_until(
        Duration::from_secs(20),
        "three more evaluations",
        || async {
            sf_events(&app).await.1["alert"]["checks"]
                .as_u64()
                .is_some_and(|c| c >= checks + 3)
        },
    )
    .await;
    assert_eq!(
        hook.received(),
        2,
        "one failed POST, one retry, nothing more"
    );
}

// ─── Logs of the real binary ────────────────────────────────────────────────────────────────

/// The daemon binary with the app's environment, logging JSON lines at `RUST_LOG` level; its
/// stderr is read while it runs (a full pipe would block it).
struct LoggedDaemon {
    /// `PROVISIONER_TEST_BIN`: a private copy of the binary, for machines where several
    /// checkouts share one target directory (and so one `target/debug/provisioner`).
    bin: String,
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl LoggedDaemon {
    fn start(app: &TestApp, rust_log: &str) -> Self {
        let bin = std::env::var("PROVISIONER_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_provisioner").to_owned());
        let mut child = Command::new(&bin)
            .arg("serve")
            .env_clear()
            .envs(app.env.iter().cloned())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn provisioner");
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out).await;
            out
        });
        Self { bin, child, stderr }
    }

    /// SIGTERM, then the exit status (within 30 s) and everything it logged.
    async fn stop(mut self) -> (std::process::ExitStatus, String) {
        sigterm(&self.child);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits")
            .expect("status");
        let logs = String::from_utf8(self.stderr.await.expect("reader")).expect("utf-8 logs");
        (status, logs)
    }
}

/// Probes polling `/health/sf-events` while the subscription is down get their 503, and the
/// request log records each at debug level, not as a failed response at error level: the
/// daemon logs the cause itself, not once per probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answered_503_are_not_logged_as_errors() {
    let app = spawn_app(Options {
        start: false,
        extra_env: vec![("SF_PUBSUB_ENDPOINT", "http://127.0.0.1:9".into())],
        ..Default::default()
    })
    .await;
    let daemon = LoggedDaemon::start(&app, "warn,tower_http=debug,provisioner::http=info");
    http_up(&app.http).await;
    for _ in 0..3 {
        let r = reqwest::get(format!("{}/health/sf-events", app.http))
            .await
            .expect("probe");
        assert_eq!(r.status(), 503);
    }
    let (_, logs) = daemon.stop().await;
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let probes = |message: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == message && l["span"]["path"] == "/health/sf-events")
            .count()
    };
    assert!(
        probes("finished processing request") >= 3,
        "each probe is in the request log:\n{logs}"
    );
    assert_eq!(
        probes("response failed"),
        0,
        "no error line per probe:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_logs_carry_ids_and_never_a_secret() {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let sf_secret = format!("sf-client-secret-{unique}");
    let whmcs_secret = format!("whmcs-secret-{unique}");
    let access_key = format!("whmcs-access-key-{unique}");
    let portal_secret = format!("portal-secret-{unique}");
    let hook_secret = format!("T0SECRET/B0SECRET/{unique}");
    let hook = Hook::default();
    let hook_url = hook.start(&hook_secret).await;
    let mut extra_env = alert_env(hook_url);
    extra_env.extend([
        ("SF_CLIENT_SECRET", sf_secret.clone()),
        ("WHMCS_API_SECRET", whmcs_secret.clone()),
        ("WHMCS_API_ACCESS_KEY", access_key.clone()),
        ("PORTAL_JWT_SECRET", portal_secret.clone()),
        ("ALERT_MIN_SAMPLES", "3".into()),
    ]);
    let app = spawn_app(Options {
        start: false,
        sim: SimConfig {
            client_secret: sf_secret.clone(),
            whmcs_secret: whmcs_secret.clone(),
            ..SimConfig::default()
        },
        extra_env,
        ..Default::default()
    })
    .await;
    let daemon = LoggedDaemon::start(&app, "debug");
    let bin_shown = daemon.bin.clone();
    http_up(&app.http).await;
    let probe = reqwest::get(format!("{}/openapi.json", app.http))
        .await
        .expect("probe");
    assert_eq!(
        probe.status(),
        200,
        "the binary at {bin_shown} is not this checkout's build (another checkout sharing the \
         target directory rebuilt it?); set PROVISIONER_TEST_BIN to a copy of this build"
    );

    // A provisioning run with a failure (fires the alert and its webhook), and a token revoked
    // on the way so the daemon mints a second one.
    let mut ids = app.seed(2);
    ids.extend(seed_failing(&app, 1));
    for id in &ids {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    app.sim.sim.revoke_tokens();
    let late = app.seed(1);
    app.sim.sim.approve(&late[0]);
    app.wait_terminal(&late, Duration::from_secs(60)).await;
    assert!(
        app.sim.sim.totals().token_requests >= 2,
        "a token was re-minted"
    );
    wait_until(Duration::from_secs(20), "the alert webhook", || async {
        !hook.delivered().is_empty()
    })
    .await;

    // Portal traffic: a good token, a bad one, a stream, a caller-chosen request id.
    let http = reqwest::Client::new();
    let account = account_of(&app, &ids[0]);
    let portal_token = token_with(
        &serde_json::json!({
            "sf_account_id": account,
            "exp": chrono::Utc::now().timestamp() + 600,
        }),
        portal_secret.as_bytes(),
    );
    let r = http
        .get(format!("{}/api/orders/{}", app.http, ids[0]))
        .bearer_auth(&portal_token)
        .header("x-request-id", "req-observability-1")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-observability-1");
    let wrong = token(&account, 600); // signed with another secret
    let r = http
        .get(format!("{}/api/orders/{}", app.http, ids[0]))
        .bearer_auth(&wrong)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    let generated = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let mut sse = SseReader::new(
        http.get(format!("{}/api/orders/{}/events", app.http, ids[0]))
            .bearer_auth(&portal_token)
            .send()
            .await
            .expect("req"),
    );
    sse.next_event(Duration::from_secs(10))
        .await
        .expect("status");

    // Graceful stop with the stream open.
    let (status, logs) = daemon.stop().await;
    assert!(status.success(), "{status}");
    drop(sse);

    // No secret, token or webhook path in any form.
    let org = app.sim.sim.config().org_id.clone();
    let mut secrets = vec![
        ("SF client secret", sf_secret.clone()),
        ("WHMCS secret", whmcs_secret.clone()),
        ("WHMCS access key", access_key.clone()),
        ("portal JWT secret", portal_secret.clone()),
        ("portal token", portal_token.clone()),
        ("wrong portal token", wrong.clone()),
        ("webhook path", hook_secret.clone()),
        ("Salesforce access token", format!("{}!", &org[..15])),
    ];
    for t in [&portal_token, &wrong] {
        let sig = t.rsplit('.').next().expect("sig").to_owned();
        secrets.push(("portal token signature", sig));
    }
    for (what, secret) in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{what} appears in the logs"
        );
    }

    // Every line is JSON; HTTP lines carry a request id, provisioning lines the order and
    // correlation ids.
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.len() > 50, "debug logs captured: {}", lines.len());
    let span_name = |l: &Value| l["span"]["name"].as_str().map(str::to_owned);
    let mut http_lines = 0;
    let mut provisioning_lines = 0;
    let mut request_ids = BTreeSet::new();
    for l in &lines {
        let target = l["target"].as_str().unwrap_or_default();
        if target.starts_with("tower_http") || span_name(l).as_deref() == Some("http") {
            http_lines += 1;
            let rid = l["span"]["request.id"].as_str().unwrap_or_default();
            assert!(
                !rid.is_empty() && rid != "-",
                "HTTP line without request id: {l}"
            );
            request_ids.insert(rid.to_owned());
        }
        if target.starts_with("provisioner::jobs::provision")
            || span_name(l).as_deref() == Some("provision")
        {
            provisioning_lines += 1;
            assert_eq!(span_name(l).as_deref(), Some("provision"), "{l}");
            for field in ["order.id", "correlation.id"] {
                let v = l["span"][field].as_str().unwrap_or_default();
                assert!(!v.is_empty(), "provisioning line without {field}: {l}");
            }
        }
    }
    assert!(http_lines >= 6, "{http_lines} HTTP lines");
    assert!(
        provisioning_lines >= 4,
        "{provisioning_lines} provisioning lines"
    );
    assert!(request_ids.contains("req-observability-1"));
    assert!(request_ids.contains(&generated));
    assert!(!request_ids.contains("bad id with spaces"));
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("provisioning attempts failed"))),
        "the alert is logged as an error"
    );
}
