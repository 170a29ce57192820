//! Hostile HTTP input: forged and ill-timed tokens, injection attempts and garbage in ids,
//! oversized requests, and clients that send their headers too slowly.

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
        extra_env: vec![("API_RATE_LIMIT_PER_SEC", "0".into())],
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
