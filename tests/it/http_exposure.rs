//! What the HTTP surface exposes, and to whom: customer-safe error texts, `nosniff` on every
//! response, event streams bounded per Account and ended by token expiry, and the internal
//! listener that keeps health, metrics and the dashboard off the public address.

use std::time::Duration;

use provisioner_sim::{ItemSeed, OrderSeed};
use serde_json::Value;

use crate::{
    helpers::{Options, sf_id, spawn_app, wait_until},
    http::{Spec, SseItem, SseReader, account_of, http_up, token},
};

const ADMIN: &str = "exposure-admin-token-0123456789";

fn nosniff(r: &reqwest::Response) {
    assert_eq!(
        r.headers()
            .get("x-content-type-options")
            .map(|v| v.to_str().expect("ascii")),
        Some("nosniff"),
        "{} lacks nosniff",
        r.url()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_see_the_configured_text_while_operators_keep_the_raw_message() {
    let app = spawn_app(Options {
        extra_env: vec![
            (
                "CUSTOMER_ERROR_MESSAGES",
                "MAPPING_PRODUCT_MISSING=This product needs a manual setup.".into(),
            ),
            (
                "CUSTOMER_ERROR_MESSAGE_DEFAULT",
                "Something went wrong; we are on it.".into(),
            ),
            ("ADMIN_TOKEN", ADMIN.into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let spec = Spec::fetch(&app.http).await;
    let no_product = sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: None,
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    }));
    let no_client = sf_id(app.sim.sim.seed_order(OrderSeed {
        whmcs_client_id: None,
        ..OrderSeed::default()
    }));
    let both = [no_product.clone(), no_client.clone()];
    for id in &both {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&both, Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let admin: Value = http
        .get(format!("{}/admin/api/summary", app.http))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("summary")
        .json()
        .await
        .expect("json");
    for (id, code, text) in [
        (
            &no_product,
            "MAPPING_PRODUCT_MISSING",
            "This product needs a manual setup.",
        ),
        (
            &no_client,
            "MAPPING_CLIENT_MISSING",
            "Something went wrong; we are on it.",
        ),
    ] {
        let t = token(&account_of(&app, id), 600);
        let r = http
            .get(format!("{}/api/orders/{id}", app.http))
            .bearer_auth(&t)
            .send()
            .await
            .expect("req");
        nosniff(&r);
        let (status, body) = spec.check("/api/orders/{sfOrderId}", r).await;
        assert_eq!(status, 200);
        let body = body.expect("body");
        assert_eq!(body["status"], "Failed");
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["message"], text);
        // The raw message stays with the operators: ledger, Salesforce, dashboard.
        let row = app
            .state
            .ledger
            .get(id)
            .await
            .expect("ledger")
            .expect("row");
        let raw = row.error_message.expect("raw message in the ledger");
        assert!(!raw.is_empty() && raw != text, "{raw}");
        let sf = app.sim.sim.order(id).expect("order");
        assert_eq!(sf.error_message.as_deref(), Some(raw.as_str()));
        let shown = admin["recentOrders"]
            .as_array()
            .expect("recent orders")
            .iter()
            .find(|o| o["sfOrderId"] == id.as_str())
            .expect("on the dashboard");
        assert_eq!(shown["errorMessage"], raw.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_nosniff() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("ADMIN_TOKEN", ADMIN.into()),
            ("API_RATE_LIMIT_PER_SEC", "0.1".into()),
            ("API_RATE_LIMIT_BURST", "3".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let http = reqwest::Client::new();
    let base = &app.http;
    let id = app.seed(1).remove(0);
    let good = token(&account_of(&app, &id), 600);
    for path in [
        "/health/live",
        "/health/ready",
        "/health/sf-events",
        "/metrics",
        "/openapi.json",
        "/no-such-route",
        "/admin",
        "/admin/api/summary",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect("req");
        nosniff(&r);
    }
    let mut statuses = std::collections::BTreeSet::new();
    for t in [
        None,
        Some(good.as_str()),
        Some(good.as_str()),
        Some("x.y.z"),
    ] {
        for suffix in ["", "/events"] {
            let mut req = http.get(format!("{base}/api/orders/{id}{suffix}"));
            if let Some(t) = t {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.expect("req");
            nosniff(&r);
            statuses.insert(r.status().as_u16());
        }
    }
    // Errors (401), successes (200) and the rate limiter's own answers (429) alike.
    assert!(
        [200, 401, 429].iter().all(|s| statuses.contains(s)),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_account() {
    let app = spawn_app(Options {
        extra_env: vec![("API_RATE_LIMIT_PER_SEC", "0".into())],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let spec = Spec::fetch(&app.http).await;
    let mine = app.seed(1).remove(0);
    let theirs = sf_id(app.sim.sim.seed_order(OrderSeed {
        whmcs_client_id: Some("2".into()),
        ..OrderSeed::default()
    }));
    let (a, b) = (account_of(&app, &mine), account_of(&app, &theirs));
    assert_ne!(a, b);
    let (ta, tb) = (token(&a, 600), token(&b, 600));
    let http = reqwest::Client::new();
    let open = |id: String, t: String| {
        let (http, base) = (http.clone(), app.http.clone());
        async move {
            http.get(format!("{base}/api/orders/{id}/events"))
                .bearer_auth(t)
                .send()
                .await
                .expect("req")
        }
    };
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = SseReader::new(open(mine.to_string(), ta.clone()).await);
        s.next_event(Duration::from_secs(10)).await.expect("status");
        streams.push(s);
    }
    // The sixth stream of the same Account is refused...
    let r = open(mine.to_string(), ta.clone()).await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, body) = spec.check("/api/orders/{sfOrderId}/events", r).await;
    assert_eq!(status, 429);
    assert_eq!(body.expect("body")["error"], "too_many_streams");
    // ...while another Account still gets one.
    let mut other = SseReader::new(open(theirs.to_string(), tb.clone()).await);
    other
        .next_event(Duration::from_secs(10))
        .await
        .expect("status");
    // Closing a stream gives its place back.
    drop(streams.pop());
    wait_until(Duration::from_secs(10), "a place to free up", || {
        let r = open(mine.to_string(), ta.clone());
        async move { r.await.status() == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_when_its_token_expires() {
    let app = spawn_app(Options {
        extra_env: vec![("SSE_KEEPALIVE_SECS", "1".into())],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let id = app.seed(1).remove(0);
    let account = account_of(&app, &id);
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let r = http
        .get(format!("{}/api/orders/{id}/events", app.http))
        .bearer_auth(token(&account, 2))
        .send()
        .await
        .expect("req");
    let mut sse = SseReader::new(r);
    sse.next_event(Duration::from_secs(10))
        .await
        .expect("current status first");
    // Nothing changes about the Order: only the token's expiry can end the stream.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match sse.next(Duration::from_secs(15)).await {
                None => break,
                Some(SseItem::Comment) => continue,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token by 13 s");
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(10),
        "stream lived {lived:?}"
    );
    // A stream with a long-lived token stays open past that point.
    let r = http
        .get(format!("{}/api/orders/{id}/events", app.http))
        .bearer_auth(token(&account, 600))
        .send()
        .await
        .expect("req");
    let mut sse = SseReader::new(r);
    sse.next_event(Duration::from_secs(10))
        .await
        .expect("status");
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            sse.next(Duration::from_secs(5)).await,
            Some(SseItem::Comment),
            "keep-alives, and no end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_listener_takes_health_metrics_and_admin_off_the_public_address() {
    let internal_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let internal = format!("127.0.0.1:{internal_port}");
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("INTERNAL_HTTP_ADDR", internal.clone()),
            ("ADMIN_TOKEN", ADMIN.into()),
        ],
        ..Default::default()
    })
    .await;
    let inner = format!("http://{internal}");
    http_up(&inner).await;
    let http = reqwest::Client::new();
    let status = |url: String, bearer: Option<String>| {
        let http = http.clone();
        async move {
            let mut r = http.get(url);
            if let Some(t) = bearer {
                r = r.bearer_auth(t);
            }
            r.send().await.expect("req").status().as_u16()
        }
    };
    let id = app.seed(1).remove(0);
    let t = token(&account_of(&app, &id), 600);
    let public = app.http.clone();
    for path in [
        "/metrics",
        "/health/live",
        "/health/ready",
        "/health/sf-events",
        "/admin",
    ] {
        assert_eq!(
            status(format!("{public}{path}"), Some(ADMIN.into())).await,
            404,
            "{path} on the public listener"
        );
    }
    assert_eq!(
        status(format!("{inner}/metrics"), None).await,
        200,
        "metrics on the internal listener"
    );
    assert_eq!(status(format!("{inner}/health/ready"), None).await, 200);
    assert_eq!(
        status(format!("{inner}/admin/api/summary"), Some(ADMIN.into())).await,
        200
    );
    assert_eq!(status(format!("{public}/openapi.json"), None).await, 200);
    assert_eq!(
        status(format!("{public}/api/orders/{id}"), Some(t.clone())).await,
        200
    );
    assert_eq!(
        status(format!("{inner}/api/orders/{id}"), Some(t)).await,
        404,
        "the API is not on the internal listener"
    );

    // `healthcheck`, given both addresses as in the container, probes the internal one.
    let http_addr = app
        .env
        .iter()
        .find(|(k, _)| k == "HTTP_ADDR")
        .map(|(_, v)| v.clone())
        .expect("HTTP_ADDR");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("healthcheck")
        .env_clear()
        .env("HTTP_ADDR", &http_addr)
        .env("INTERNAL_HTTP_ADDR", &internal)
        .output()
        .await
        .expect("healthcheck");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    app.stop().await.expect("clean stop");
    wait_until(Duration::from_secs(10), "both listeners to close", || {
        let (a, b) = (
            reqwest::get(format!("{inner}/health/live")),
            reqwest::get(format!("{public}/openapi.json")),
        );
        async move { a.await.is_err() && b.await.is_err() }
    })
    .await;
}
