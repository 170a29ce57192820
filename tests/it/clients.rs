//! The daemon's Salesforce and WHMCS clients against the simulator over loopback.

use std::time::Duration;

use provisioner::{
    error::{Classify, ErrorClass},
    ids::SalesforceId,
    salesforce::rest::OrderUpdate,
};
use provisioner_sim::Faults;

use crate::helpers::{Options, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_reauthenticates_once_on_401_and_retries_once() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    let rest = &app.state.rest;
    assert!(rest.get_order(&id).await.expect("read").is_some());
    let tokens = app.sim.sim.totals().token_requests;
    let soql = app.sim.sim.counts(&id).soql;
    app.sim.sim.revoke_tokens();
    let order = rest
        .get_order(&id)
        .await
        .expect("read after revocation")
        .expect("order");
    assert_eq!(order.id, id);
    assert_eq!(
        app.sim.sim.totals().token_requests,
        tokens + 1,
        "exactly one re-auth"
    );
    // The 401 is refused before the simulator counts a query: one counted query is the retry.
    assert_eq!(app.sim.sim.counts(&id).soql, soql + 1, "exactly one retry");
    assert!(
        rest.api_usage()
            .is_some_and(|(used, limit)| used > 0 && limit > 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_permanent_errors_are_not_retried_and_transient_ones_are_classified() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let rest = &app.state.rest;
    let unknown = SalesforceId::synthesize("801", 123_456);
    let update = OrderUpdate::Failed {
        code: "X".into(),
        message: "y".into(),
        whmcs_order_id: None,
        at: chrono::Utc::now(),
    };
    let before = app.sim.sim.totals().rest_calls;
    let e = rest
        .update_order(&unknown, &update)
        .await
        .expect_err("unknown order");
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    assert_eq!(e.code(), "NOT_FOUND");
    assert_eq!(app.sim.sim.totals().rest_calls, before + 1, "not retried");

    let id = app.seed(1).remove(0);
    app.sim.sim.set_faults(Faults {
        sf_lock_row_next: 1,
        ..Faults::default()
    });
    let e = rest.get_order(&id).await.expect_err("locked row");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.code(), "UNABLE_TO_LOCK_ROW");
    assert!(
        rest.get_order(&id)
            .await
            .expect("next call works")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whmcs_bad_credentials_are_a_config_error() {
    let mut env = crate::helpers::spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await
    .env;
    env.retain(|(k, _)| k != "WHMCS_API_SECRET");
    env.push(("WHMCS_API_SECRET".into(), "wrong-secret".into()));
    let cfg = provisioner::config::Config::load_from(None, env).expect("config");
    let state = provisioner::daemon::AppState::build(cfg)
        .await
        .expect("state");
    let e = tokio::time::timeout(Duration::from_secs(10), state.whmcs.get_orders("1", 0, 1))
        .await
        .expect("answers")
        .expect_err("rejected");
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_provisions_with_the_jwt_bearer_flow() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public =
        std::fs::read_to_string(format!("{fixtures}/jwt_rsa.pub.pem")).expect("public key");
    let mut app = spawn_app(Options {
        sim: provisioner_sim::SimConfig {
            jwt_public_key_pem: Some(public),
            ..Default::default()
        },
        extra_env: vec![
            ("SF_AUTH_FLOW", "jwt".into()),
            ("SF_USERNAME", "integration@example.com".into()),
            ("SF_PRIVATE_KEY_PATH", format!("{fixtures}/jwt_rsa.pem")),
        ],
        ..Default::default()
    })
    .await;
    let id = app.seed(1).remove(0);
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_command_reports_each_dependency() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let run = |env: Vec<(String, String)>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .arg("check")
            .env_clear()
            .envs(env)
            .output()
            .await
            .expect("run check")
    };
    let out = run(app.env.clone()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for dep in [
        "database",
        "redis",
        "salesforce auth",
        "pub/sub topic",
        "whmcs",
    ] {
        assert!(text.contains(&format!("[ ok ] {dep}")), "{dep}:\n{text}");
    }
    let mut bad = app.env.clone();
    bad.retain(|(k, _)| k != "WHMCS_API_SECRET");
    bad.push(("WHMCS_API_SECRET".into(), "wrong-secret".into()));
    let out = run(bad).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("[FAIL] whmcs"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
}

/// Serves `app` on a fresh loopback port until the test ends.
async fn serve_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A WHMCS endpoint answering 307 towards another server: the redirect is not followed, so
/// the request (with the API secret in its body) never reaches the other server; the call
/// fails as an HTTP error that is retried later, not a business failure of the Order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whmcs_redirects_are_not_followed() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::http::{StatusCode, header::LOCATION};
    use provisioner::whmcs::{WhmcsClient, WhmcsConfig, WhmcsErrorKind};
    use secrecy::SecretString;

    let elsewhere_hits = Arc::new(AtomicUsize::new(0));
    let hits = elsewhere_hits.clone();
    let elsewhere = serve_loopback(axum::Router::new().fallback(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        async { r#"{"result":"success","totalresults":0,"orders":{"order":[]}}"# }
    }))
    .await;
    let redirect_hits = Arc::new(AtomicUsize::new(0));
    let hits = redirect_hits.clone();
    let location = format!("http://{elsewhere}/includes/api.php");
    let redirecting = serve_loopback(axum::Router::new().fallback(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        let location = location.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location)]) }
    }))
    .await;

    let http =
        provisioner::net::client(Duration::from_secs(10), &Default::default()).expect("client");
    let whmcs = WhmcsClient::new(
        http,
        WhmcsConfig::new(
            format!("http://{redirecting}/includes/api.php"),
            "identifier",
            SecretString::from("api-secret-value"),
        ),
    );
    let e = whmcs.get_order(42).await.expect_err("a 307 is not success");
    assert_eq!(redirect_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed: the secret went to another server"
    );
    assert_eq!(e.kind, WhmcsErrorKind::Http { status: 307 }, "{e}");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(!e.is_ambiguous(), "{e}");
}
