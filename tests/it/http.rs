//! HTTP surface: health, readiness, metrics and the portal's order-status API.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Options, spawn_app, wait_until};

fn token(account: &str, exp_offset: i64) -> String {
    let claims = json!({
        "sub": "portal-user",
        "sf_account_id": account,
        "exp": chrono::Utc::now().timestamp() + exp_offset,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"portal-test-secret"),
    )
    .expect("jwt")
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

fn base64_url(s: &str) -> String {
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
        ("PORTAL_JWT_SECRET", "p"),
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
    let err = match provisioner::app::AppState::build(cfg).await {
        Ok(_) => panic!("must not start without Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("REDIS_URL"), "{err}");
}
