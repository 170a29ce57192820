//! Hostile HTTP input: forged and ill-timed tokens, injection attempts and garbage in ids,
//! oversized requests, clients that send their headers too slowly, floods of unknown ids
//! (the Salesforce lookup budget), forged `X-Forwarded-For`, noisy accounts behind a shared
//! address, too many and idle connections.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use provisioner::ids::SalesforceId;
use provisioner_sim::OrderSeed;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    helpers::{Options, sf_id, spawn_app},
    http::{PORTAL_SECRET, account_of, base64_url, http_up, token_with},
};

const ISSUER: &str = "https://portal.example.com";
const AUDIENCE: &str = "provisioner";

fn signed(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("jwt")
}

/// A token with a hand-written header and signature part.
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        base64_url(&header.to_string()),
        base64_url(&claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_premature_tokens_are_401() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("PORTAL_JWT_ISSUER", ISSUER.into()),
            ("PORTAL_JWT_AUDIENCE", AUDIENCE.into()),
            ("API_RATE_LIMIT_PER_SEC", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let id = sf_id(app.sim.sim.seed_order(OrderSeed::default()));
    let account = account_of(&app, &id);
    let now = chrono::Utc::now().timestamp();
    let claims = |patch: Value| {
        let mut c = json!({
            "sub": "portal-user",
            "sf_account_id": account,
            "exp": now + 600,
            "iss": ISSUER,
            "aud": AUDIENCE,
        });
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let hs = |c: &Value| token_with(c, PORTAL_SECRET);
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("../fixtures/jwt_rsa.pem")).expect("rsa");
    let public_pem = include_bytes!("../fixtures/jwt_rsa.pub.pem");
    let valid = hs(&claims(json!({})));
    let valid_sig = valid.rsplit('.').next().expect("signature").to_owned();

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            forged(
                &json!({"alg": "none", "typ": "JWT"}),
                &claims(json!({})),
                "",
            ),
        ),
        (
            "alg None",
            forged(&json!({"alg": "None"}), &claims(json!({})), ""),
        ),
        (
            "alg NONE with a signature",
            forged(&json!({"alg": "NONE"}), &claims(json!({})), &valid_sig),
        ),
        (
            "alg missing",
            forged(&json!({"typ": "JWT"}), &claims(json!({})), &valid_sig),
        ),
        (
            "RS256 with a key the service never trusted",
            signed(Algorithm::RS256, &rsa, &claims(json!({}))),
        ),
        (
            "HS256 keyed with an RSA public key (algorithm confusion)",
            signed(
                Algorithm::HS256,
                &EncodingKey::from_secret(public_pem),
                &claims(json!({})),
            ),
        ),
        (
            "RS256 header over an HS256 signature",
            forged(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &claims(json!({})),
                &valid_sig,
            ),
        ),
        (
            "HS512 with the right secret",
            signed(
                Algorithm::HS512,
                &EncodingKey::from_secret(PORTAL_SECRET),
                &claims(json!({})),
            ),
        ),
        (
            "HS384 with the right secret",
            signed(
                Algorithm::HS384,
                &EncodingKey::from_secret(PORTAL_SECRET),
                &claims(json!({})),
            ),
        ),
        (
            "wrong secret",
            token_with(&claims(json!({})), b"not-the-portal-secret"),
        ),
        (
            "expired beyond the leeway",
            hs(&claims(json!({"exp": now - 120}))),
        ),
        (
            "not valid before an hour from now",
            hs(&claims(json!({"nbf": now + 3600}))),
        ),
        ("no exp", hs(&claims(json!({"exp": null})))),
        ("exp as a string", hs(&claims(json!({"exp": "9999999999"})))),
        (
            "wrong issuer",
            hs(&claims(json!({"iss": "https://evil.example.com"}))),
        ),
        ("no issuer", hs(&claims(json!({"iss": null})))),
        (
            "wrong audience",
            hs(&claims(json!({"aud": "someone-else"}))),
        ),
        ("no audience", hs(&claims(json!({"aud": null})))),
        (
            "no account claim",
            hs(&claims(json!({"sf_account_id": null}))),
        ),
        (
            "account claim is an injection",
            hs(&claims(json!({"sf_account_id": "' OR 1=1 --"}))),
        ),
        (
            "account claim is a number",
            hs(&claims(json!({"sf_account_id": 1}))),
        ),
        ("payload swapped under a valid signature", {
            let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
            parts[1] = base64_url(&claims(json!({"sf_account_id": "001000000000999"})).to_string());
            parts.join(".")
        }),
        ("garbage", "not.a.jwt".into()),
        ("two parts", "eyJhbGciOiJIUzI1NiJ9.e30".into()),
        (
            "huge",
            format!(
                "{}.{}.{}",
                "A".repeat(8000),
                "B".repeat(8000),
                "C".repeat(100)
            ),
        ),
    ];

    let http = reqwest::Client::new();
    let url = format!("{}/api/orders/{id}", app.http);
    let soql_before = app.sim.sim.totals().soql;
    for (what, token) in &cases {
        for path in ["", "/events"] {
            let r = http
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("req");
            assert_eq!(r.status(), 401, "{what} ({path})");
            assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["error"], "unauthorized", "{what}");
        }
    }
    for (what, header) in [
        ("basic scheme", format!("Basic {valid}")),
        ("no scheme", valid.clone()),
        ("empty bearer", "Bearer ".into()),
    ] {
        let r = http
            .get(&url)
            .header("authorization", header)
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 401, "{what}");
    }
    assert_eq!(
        app.sim.sim.totals().soql,
        soql_before,
        "nothing reaches Salesforce without a valid token"
    );

    // Controls: the valid token, and one with a past `nbf` and a few seconds of clock skew.
    for (what, token) in [
        ("valid", valid.clone()),
        ("nbf in the past", hs(&claims(json!({"nbf": now - 10})))),
        (
            "expired within the 30 s leeway",
            hs(&claims(json!({"exp": now - 5}))),
        ),
    ] {
        let r = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_injection_ids_are_400_before_any_salesforce_call() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0".into()),
            ("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let good = crate::http::token("001000000000001", 600);
    let valid = SalesforceId::synthesize("801", 1);
    let bad_checksum = format!("{}ZZZ", valid.short());
    let long = "8".repeat(10_000);
    // As sent on the wire (percent-encoded where a URL needs it).
    let ids: Vec<&str> = vec![
        "801'%20OR%20'1'='1",
        "801000000000001'--",
        "%27%20OR%20Id%20!%3D%20null%20--",
        "801000000000001%27",
        "801000000000001%27%20OR%20Id%20%21%3D%20%27",
        "801000000000001;DELETE",
        "%FF%FE%FD",
        "%C0%AF",
        "%00",
        "801000000000001%00",
        "80100000000000%0A1",
        "..%2F..%2Fetc%2Fpasswd",
        "%E2%80%AE801000000000001",
        "801000000000001%20",
        "%2580100000000001",
        "80100000000001",
        "8010000000000010000",
        &bad_checksum,
        &long,
    ];
    let http = reqwest::Client::new();
    let before = app.sim.sim.totals();
    for id in &ids {
        for suffix in ["", "/events"] {
            let url = format!("{}/api/orders/{id}{suffix}", app.http);
            let r = http.get(&url).bearer_auth(&good).send().await.expect("req");
            let status = r.status();
            let text = r.text().await.expect("body");
            assert_eq!(status, 400, "{id}{suffix}: {text}");
            let body: Value = serde_json::from_str(&text).expect("JSON error body");
            assert_eq!(body["error"], "invalid_id", "{id}");
        }
    }
    let after = app.sim.sim.totals();
    assert_eq!(
        (after.soql, after.rest_calls),
        (before.soql, before.rest_calls),
        "the simulator saw no Salesforce query"
    );
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// Sends `request` on a fresh connection (writing and reading concurrently, since the server
/// may answer before it has read everything) and returns the status code of the answer.
async fn raw_status(addr: &str, request: Vec<u8>) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server answers or closes within 10 s");
    writer.abort();
    let head = String::from_utf8_lossy(&buf);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_the_server_stays_up() {
    let app = spawn_app(Options::default()).await;
    http_up(&app.http).await;
    let addr = host_port(&app.http);
    let path = format!("/api/orders/{}", SalesforceId::synthesize("801", 1));

    let big_header = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    assert_eq!(raw_status(&addr, big_header.into_bytes()).await, Some(431));

    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw_status(&addr, many.into_bytes()).await, Some(431));

    let long_uri = format!(
        "GET /api/orders/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "8".repeat(100 * 1024)
    );
    let status = raw_status(&addr, long_uri.into_bytes()).await;
    assert!(matches!(status, Some(414 | 431)), "{status:?}");

    let mut big_body = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        10 * 1024 * 1024
    )
    .into_bytes();
    big_body.extend(std::iter::repeat_n(b'x', 200 * 1024));
    assert_eq!(raw_status(&addr, big_body).await, Some(413));

    // Not HTTP at all.
    let status = raw_status(&addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec()).await;
    assert!(matches!(status, None | Some(400)), "{status:?}");

    let r = reqwest::get(format!("{}/health/live", app.http))
        .await
        .expect("still serving");
    assert_eq!(r.status(), 200);
}

/// Connects and feeds `prefix`, then one byte of `trickle` every `gap`; returns how long the
/// server kept the connection open and whether it ever answered 200.
async fn slow_client(addr: &str, prefix: &[u8], trickle: &[u8], gap: Duration) -> (Duration, bool) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let (prefix, trickle) = (prefix.to_vec(), trickle.to_vec());
    let writer = tokio::spawn(async move {
        if wr.write_all(&prefix).await.is_err() {
            return;
        }
        for b in trickle {
            tokio::time::sleep(gap).await;
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Never finish the headers.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "the server never closed the slow connection"
    );
    (started.elapsed(), got.starts_with(b"HTTP/1.1 200"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_cut_off() {
    let app = spawn_app(Options {
        extra_env: vec![("HTTP_HEADER_READ_TIMEOUT_SECS", "1".into())],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let addr = host_port(&app.http);
    let header = format!("X-Slow: {}\r\n", "a".repeat(200));
    let (trickled, silent, early, fast) = tokio::join!(
        // Headers byte by byte, 100 ms apart: would take 20 s to finish.
        slow_client(
            &addr,
            b"GET /health/live HTTP/1.1\r\nHost: x\r\n",
            header.as_bytes(),
            Duration::from_millis(100),
        ),
        // Connects and says nothing.
        slow_client(&addr, b"", b"", Duration::ZERO),
        // Trickles from the very first byte (before the protocol is known).
        slow_client(
            &addr,
            b"",
            b"GET /health/live HTTP/1.1\r\n",
            Duration::from_millis(300)
        ),
        // Meanwhile a normal client is served at once.
        async {
            let t = Instant::now();
            let r = reqwest::get(format!("{}/health/live", app.http))
                .await
                .expect("req");
            (t.elapsed(), r.status().as_u16())
        },
    );
    for (what, (kept, answered)) in [("trickle", trickled), ("silent", silent), ("early", early)] {
        assert!(
            !answered,
            "{what}: a request with unfinished headers was answered"
        );
        assert!(
            kept >= Duration::from_millis(900) && kept < Duration::from_secs(4),
            "{what}: connection kept {kept:?} with a 1 s header timeout"
        );
    }
    assert_eq!(fast.1, 200);
    assert!(fast.0 < Duration::from_secs(1), "{:?}", fast.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served_too() {
    let app = spawn_app(Options::default()).await;
    http_up(&app.http).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = h2
        .get(format!("{}/health/live", app.http))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = h2
        .get(format!("{}/api/orders/x", app.http))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(r.status(), 401);
}

/// An id no Salesforce org in these tests holds.
fn unknown_id(n: u64) -> SalesforceId {
    SalesforceId::synthesize("801", 700_000_000 + n)
}

/// `GET /api/orders/{id}` as `account`: the status and `Retry-After` (seconds), if any.
async fn get_as(
    http: &reqwest::Client,
    base: &str,
    id: &SalesforceId,
    account: &str,
) -> (u16, Option<u64>) {
    let r = http
        .get(format!("{base}/api/orders/{id}"))
        .bearer_auth(crate::http::token(account, 600))
        .send()
        .await
        .expect("req");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (r.status().as_u16(), retry)
}

/// Salesforce REST calls so far (queries included).
fn rest_calls(app: &crate::helpers::TestApp) -> u64 {
    app.sim.sim.totals().rest_calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_order_lookups_stay_within_the_salesforce_budget() {
    const ACCOUNTS: u64 = 4;
    const PER_ACCOUNT_PER_MIN: u64 = 3;
    const PER_SEC: u64 = 2;
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0".into()),
            ("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0".into()),
            ("RECONCILER_INTERVAL_SECS", "0".into()),
            ("SF_LOOKUP_RATE_PER_SEC", PER_SEC.to_string()),
            (
                "SF_LOOKUP_PER_ACCOUNT_PER_MIN",
                PER_ACCOUNT_PER_MIN.to_string(),
            ),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let http = reqwest::Client::new();
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|a| SalesforceId::synthesize("001", 500 + a).to_string())
        .collect();
    let (calls_before, soql_before) = (rest_calls(&app), app.sim.sim.totals().soql);
    let started = Instant::now();
    // 2,000 distinct unknown ids, spread over the accounts, 32 requests at a time.
    let answers: Vec<(u16, Option<u64>)> =
        futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter((0..2000u64).map(|i| {
                let (http, base) = (http.clone(), app.http.clone());
                let account = accounts[(i % ACCOUNTS) as usize].clone();
                async move { get_as(&http, &base, &unknown_id(i), &account).await }
            })),
            32,
        ))
        .await;
    let elapsed = started.elapsed();
    let calls = rest_calls(&app) - calls_before;
    let soql = app.sim.sim.totals().soql - soql_before;
    // The budget: PER_ACCOUNT_PER_MIN per account in this first minute, and PER_SEC overall
    // (a burst of PER_SEC, then PER_SEC a second).
    let per_account = ACCOUNTS * PER_ACCOUNT_PER_MIN;
    let global = PER_SEC + PER_SEC * elapsed.as_secs().saturating_add(1);
    assert!(
        calls <= per_account.min(global),
        "{calls} Salesforce calls in {elapsed:?}; budget {per_account} per minute, {global} by rate"
    );
    assert!(calls >= 1 && soql == calls, "{calls} calls, {soql} queries");
    // Every looked-up id is a 404; everything beyond the budget a 503 with Retry-After.
    let not_found = answers.iter().filter(|(s, _)| *s == 404).count() as u64;
    assert_eq!(not_found, calls, "one 404 per lookup made");
    for (status, retry) in &answers {
        assert!(
            *status == 404 || (*status == 503 && retry.is_some_and(|r| r >= 1)),
            "{status} {retry:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_stop_while_salesforce_api_usage_is_high() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0".into()),
            ("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0".into()),
            ("RECONCILER_INTERVAL_SECS", "0".into()),
            ("SF_LOOKUP_RATE_PER_SEC", "1000".into()),
            ("SF_LOOKUP_PER_ACCOUNT_PER_MIN", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let http = reqwest::Client::new();
    let account = SalesforceId::synthesize("001", 600).to_string();
    // The org reports 85 % of its daily API calls used (the default threshold is 80 %).
    app.sim.sim.set_faults(provisioner_sim::Faults {
        sf_api_used: Some(85_000),
        ..Default::default()
    });
    // The first lookup is made, and brings the usage reading back.
    let before = rest_calls(&app);
    assert_eq!(
        get_as(&http, &app.http, &unknown_id(1), &account).await.0,
        404
    );
    assert_eq!(rest_calls(&app), before + 1);
    // From then on no lookup reaches Salesforce.
    for i in 2..22 {
        let (status, retry) = get_as(&http, &app.http, &unknown_id(i), &account).await;
        assert_eq!(status, 503, "lookup {i}");
        assert!(retry.is_some_and(|r| r >= 1), "{retry:?}");
    }
    assert_eq!(rest_calls(&app), before + 1, "no call while usage is high");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lookups_are_remembered_briefly() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0".into()),
            ("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0".into()),
            ("RECONCILER_INTERVAL_SECS", "0".into()),
            ("ORDER_LOOKUP_ERROR_CACHE_SECS", "2".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let http = reqwest::Client::new();
    let account = SalesforceId::synthesize("001", 700).to_string();
    let id = unknown_id(1);
    // Salesforce answers the next query 503.
    app.sim.sim.set_faults(provisioner_sim::Faults {
        sf_unavailable_next: 1,
        ..Default::default()
    });
    let before = rest_calls(&app);
    let (status, retry) = get_as(&http, &app.http, &id, &account).await;
    assert_eq!((status, rest_calls(&app)), (503, before + 1));
    assert!(retry.is_some(), "{retry:?}");
    // Asked again at once: the failure is remembered, no second call.
    assert_eq!(get_as(&http, &app.http, &id, &account).await.0, 503);
    assert_eq!(rest_calls(&app), before + 1, "the failure was not cached");
    // Briefly: after the error TTL the Order is looked up again (and now found missing).
    crate::helpers::wait_until(Duration::from_secs(10), "the failure to expire", || async {
        get_as(&http, &app.http, &id, &account).await.0 == 404
    })
    .await;
    assert_eq!(rest_calls(&app), before + 2);
}

/// A client that connects from `local` (any 127/8 address reaches the loopback listener).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0.01".into()),
            ("API_RATE_LIMIT_BURST", "2".into()),
            ("HTTP_TRUSTED_PROXIES", "127.0.0.1/32".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let send = |client: reqwest::Client, xff: String| {
        let base = app.http.clone();
        async move {
            client
                .get(format!("{base}/api/orders/bad"))
                .header("x-forwarded-for", xff)
                .send()
                .await
                .expect("req")
                .status()
                .as_u16()
        }
    };
    // Through the trusted proxy (127.0.0.1): client A spends its burst; a spoofed left-hand
    // entry does not make it someone else; client B has its own bucket.
    let proxy = client_from("127.0.0.1");
    assert_eq!(send(proxy.clone(), "203.0.113.1".into()).await, 401);
    assert_eq!(
        send(proxy.clone(), "6.6.6.6, 203.0.113.1".into()).await,
        401
    );
    assert_eq!(
        send(proxy.clone(), "7.7.7.7, 203.0.113.1".into()).await,
        429
    );
    assert_eq!(send(proxy.clone(), "203.0.113.2".into()).await, 401);
    // A trusted hop on the right is skipped.
    assert_eq!(
        send(proxy.clone(), "203.0.113.3, 127.0.0.1".into()).await,
        401
    );
    // Straight from an untrusted peer (127.0.0.2): a forged header, fresh on every request,
    // changes nothing: the peer's own bucket runs dry.
    let direct = client_from("127.0.0.2");
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(send(direct.clone(), format!("198.51.100.{i}")).await);
    }
    assert_eq!(statuses, [401, 401, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_spend_the_limit_of_a_shared_address() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("API_RATE_LIMIT_PER_SEC", "0.01".into()),
            ("API_RATE_LIMIT_BURST", "10".into()),
            ("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0.01".into()),
            ("API_ACCOUNT_RATE_LIMIT_BURST", "3".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let http = reqwest::Client::new();
    let get = |account: &str| {
        let (http, base) = (http.clone(), app.http.clone());
        let token = crate::http::token(account, 600);
        async move {
            // A malformed id: answered 400 without touching Salesforce.
            let r = http
                .get(format!("{base}/api/orders/bad"))
                .bearer_auth(token)
                .send()
                .await
                .expect("req");
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }
    };
    let noisy = SalesforceId::synthesize("001", 801).to_string();
    let quiet = SalesforceId::synthesize("001", 802).to_string();
    // The noisy customer gets its burst of 3, then 429 with Retry-After, however long it keeps
    // trying.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, retry_after) = get(&noisy).await;
        assert!(status != 429 || retry_after);
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[400; 3], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another customer from the same address is still served.
    for _ in 0..3 {
        assert_eq!(get(&quiet).await.0, 400);
    }
}

/// Sends a keep-alive `GET /health/live` on `stream` and reads the whole response; `None` if
/// nothing complete arrived within `within`.
async fn health_over(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(within, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a response");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().expect("length"))
                    })
                    .expect("content-length");
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_app(Options {
        extra_env: vec![("HTTP_MAX_CONNECTIONS", "2".into())],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let addr = host_port(&app.http);
    // Two kept-alive connections, both served.
    let mut first = TcpStream::connect(&addr).await.expect("connect");
    let mut second = TcpStream::connect(&addr).await.expect("connect");
    for s in [&mut first, &mut second] {
        let r = health_over(s, Duration::from_secs(10))
            .await
            .expect("served");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // A third connects (the kernel's backlog takes it) but is not served while both stay open.
    let mut third = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(
        health_over(&mut third, Duration::from_millis(1500)).await,
        None,
        "a connection beyond the cap was served"
    );
    // The open ones still are.
    assert!(
        health_over(&mut second, Duration::from_secs(10))
            .await
            .expect("served")
            .starts_with("HTTP/1.1 200")
    );
    // One closes: the waiting connection is taken up and its request answered.
    drop(first);
    let mut buf = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = third.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed instead of served");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "the waiting connection was never served");
    assert!(buf.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let app = spawn_app(Options {
        extra_env: vec![
            ("HTTP_IDLE_TIMEOUT_SECS", "1".into()),
            ("HTTP_HEADER_READ_TIMEOUT_SECS", "30".into()),
        ],
        ..Default::default()
    })
    .await;
    http_up(&app.http).await;
    let addr = host_port(&app.http);
    let mut conn = TcpStream::connect(&addr).await.expect("connect");
    let r = health_over(&mut conn, Duration::from_secs(10))
        .await
        .expect("served");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let idle_since = Instant::now();
    // Kept alive, then closed by the server once idle for the timeout.
    let mut chunk = [0u8; 64];
    let eof = tokio::time::timeout(Duration::from_secs(8), conn.read(&mut chunk)).await;
    assert!(
        matches!(eof, Ok(Ok(0) | Err(_))),
        "the idle connection was not closed: {eof:?}"
    );
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        idle_since.elapsed()
    );

    // HTTP/2 (prior knowledge): after one request, the idle connection is closed too (GOAWAY,
    // then EOF), although the client answers the server's pings.
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let request = axum::http::Request::get(format!("{}/health/live", app.http))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(request, true).expect("send");
    assert_eq!(response.await.expect("response").status(), 200);
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), driver).await;
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "the idle HTTP/2 connection was not closed: {closed:?}"
    );
    assert!(idle_since.elapsed() >= Duration::from_millis(900));
}
