//! The operator dashboard (`/admin`): token protection over HTTP, and the page as headless
//! Chromium renders it (screenshot decoded and checked, DOM searched for the orders).

use std::{path::PathBuf, process::Stdio, time::Duration};

use provisioner::ids::SalesforceId;
use provisioner_sim::{ItemSeed, OrderSeed};
use reqwest::{StatusCode, header, redirect::Policy};
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{Options, TestApp, sf_id, spawn_app, wait_until};

const TOKEN: &str = "dashboard-test-token-0123456789";

async fn app_with_dashboard(token: Option<&str>) -> TestApp {
    let app = spawn_app(Options {
        extra_env: token
            .map(|t| vec![("ADMIN_TOKEN", t.to_owned())])
            .unwrap_or_default(),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let base = app.http.clone();
    wait_until(Duration::from_secs(20), "HTTP up", || async {
        http.get(format!("{base}/health/live")).send().await.is_ok()
    })
    .await;
    app
}

/// Seeds and approves `ok` good orders and one without a product mapping; waits until all are
/// finished in Salesforce and in the ledger.
async fn provision(app: &TestApp, ok: usize) -> (Vec<SalesforceId>, SalesforceId) {
    let good = app.seed(ok);
    let bad = sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![ItemSeed {
            product_id: None,
            ..ItemSeed::default()
        }],
        ..OrderSeed::default()
    }));
    let all: Vec<SalesforceId> = good.iter().cloned().chain([bad.clone()]).collect();
    for id in &all {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&all, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "ledger rows finished", || async {
        let rows = app.state.ledger.list(None, 100).await.expect("list");
        rows.len() == all.len() && rows.iter().all(|r| r.outcome.is_some())
    })
    .await;
    (good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_404_without_a_token_setting() {
    let mut app = app_with_dashboard(None).await;
    let http = reqwest::Client::new();
    for path in ["/admin", "/admin/api/summary"] {
        let r = http
            .get(format!("{}{path}", app.http))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_by_header_or_login_cookie() {
    let mut app = app_with_dashboard(Some(TOKEN)).await;
    let (good, bad) = provision(&app, 2).await;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let base = app.http.clone();

    // 401 without a token, with a wrong one, and with a forged cookie.
    for (path, auth) in [
        ("/admin", None),
        ("/admin", Some("wrong-token-wrong-token")),
        ("/admin/api/summary", None),
        ("/admin/api/summary", Some("wrong-token-wrong-token")),
    ] {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("request");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} {auth:?}");
        let body = r.text().await.expect("body");
        assert!(!body.contains(good[0].as_str()), "{path} leaks data");
    }
    let r = http
        .get(format!("{base}/admin"))
        .header(header::COOKIE, "provisioner_admin=eyJhbGciOiJub25lIn0.e30.")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{base}/admin?token=not-the-token"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // 200 with the bearer token: JSON summary and the page.
    let r = http
        .get(format!("{base}/admin/api/summary"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["subscription"]["channel"],
        "/event/OrderProvisionRequested__e"
    );
    assert!(v["queue"]["done"].is_u64(), "{v}");
    assert_eq!(v["failureRate"]["failed"], 1, "{v}");
    assert_eq!(v["failureRate"]["finished"], 3, "{v}");
    assert_eq!(v["ordersByState"]["done"], 2, "{v}");
    let recent = v["recentOrders"].as_array().expect("orders");
    assert_eq!(recent.len(), 3, "{v}");
    let failed = recent
        .iter()
        .find(|o| o["sfOrderId"] == bad.as_str())
        .expect("failed order listed");
    assert_eq!(failed["errorCode"], "MAPPING_PRODUCT_MISSING");
    let r = http
        .get(format!("{base}/admin?state=failed"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.text().await.expect("html");
    assert!(
        html.contains(bad.as_str()),
        "filtered page lists the failed order"
    );
    assert!(
        !html.contains(good[0].as_str()),
        "filtered page omits done orders"
    );

    // ?token= login: a redirect without the token and a hardened session cookie.
    let r = http
        .get(format!("{base}/admin?token={TOKEN}"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/admin")
    );
    let cookie = r
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("session cookie")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie holds a session, not the token"
    );
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let r = http
        .get(format!("{base}/admin"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(html.contains(good[0].as_str()) && html.contains(bad.as_str()));
    // The login form posts the token instead.
    let r = http
        .post(format!("{base}/admin/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers().get(header::SET_COOKIE).is_some());
    app.stop().await.expect("stop");
}

/// The Chromium binary: `CHROMIUM`, or `chromium` / `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CHROMIUM={} does not exist: run `bash scripts/chromium.sh` or fix CHROMIUM",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Chromium is required for the dashboard browser test and was not found: \
         run `bash scripts/chromium.sh` (scripts/test.sh does) or set CHROMIUM"
    );
}

/// Runs headless Chromium with a fresh profile; returns its stdout.
async fn headless(dir: &std::path::Path, args: &[String]) -> String {
    let profile = dir.join(format!("profile-{}", uuid::Uuid::new_v4().simple()));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("Chromium finishes within 120 s")
    .expect("Chromium starts");
    assert!(
        out.status.success(),
        "Chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_headless_chromium() {
    let browser = chromium();
    let mut app = app_with_dashboard(Some(TOKEN)).await;
    let (good, bad) = provision(&app, 3).await;
    let dir = std::env::temp_dir().join(format!("prov-dash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    // The browser signs in with ?token=, follows the redirect and sends the session cookie.
    let url = format!("{}/admin?token={TOKEN}", app.http);

    let shot = dir.join("dashboard.png");
    headless(
        &dir,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".into(),
            url.clone(),
        ],
    )
    .await;
    assert!(
        shot.is_file(),
        "{} did not write {}",
        browser.display(),
        shot.display()
    );
    let file = std::io::BufReader::new(std::fs::File::open(&shot).expect("open screenshot"));
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("decode");
    assert_eq!((info.width, info.height), (1280, 900), "{}", shot.display());
    let channels = info.color_type.samples();
    let luma: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| match p {
            [g] | [g, _] => f64::from(*g),
            [r, g, b, ..] => 0.299 * f64::from(*r) + 0.587 * f64::from(*g) + 0.114 * f64::from(*b),
            [] => 0.0,
        })
        .collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    let variance = luma.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / luma.len() as f64;
    let dark = luma.iter().filter(|l| **l < 128.0).count() as f64 / luma.len() as f64;
    assert!(
        variance > 100.0 && dark > 0.01,
        "the screenshot looks blank (variance {variance:.1}, dark share {dark:.3}): {}",
        shot.display()
    );

    let dom = headless(&dir, &["--dump-dom".into(), url]).await;
    assert!(
        dom.contains("Recent orders"),
        "not the dashboard (login failed?):\n{dom}"
    );
    for id in &good {
        assert!(dom.contains(id.as_str()), "{id} missing from the DOM");
    }
    assert!(dom.contains(bad.as_str()), "{bad} missing from the DOM");
    assert_eq!(
        dom.matches("data-state=\"done\"").count(),
        good.len(),
        "done rows"
    );
    assert_eq!(
        dom.matches("data-state=\"failed\"").count(),
        1,
        "failed row"
    );
    assert!(dom.contains("MAPPING_PRODUCT_MISSING"));
    assert!(dom.contains("connected"), "subscription state shown");
    app.stop().await.expect("stop");
    std::fs::remove_dir_all(&dir).ok();
}
