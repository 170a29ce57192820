//! Outbound proxy: with `HTTPS_PROXY`/`HTTP_PROXY` set, every outbound connection (Salesforce
//! OAuth and REST, WHMCS, the Pub/Sub gRPC channel, the alert webhook) goes through the proxy,
//! credentials included; `NO_PROXY` exempts targets; `provisioner check` reports each route
//! without the proxy's credentials.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, routing::post};
use provisioner_sim::{ItemSeed, OrderSeed};

use crate::{
    forward_proxy::ForwardProxy,
    helpers::{Options, TestApp, sf_id, spawn_app, wait_until},
};

const PASSWORD: &str = "pr0xy-s3cret";

/// Host and port of an `http://host:port` URL.
fn authority(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

async fn provision(app: &TestApp, n: usize) {
    let ids = app.seed_approved(n);
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
    }
}

/// What the proxy must have carried for a provisioning run against `app`'s simulator.
fn assert_everything_proxied(app: &TestApp, seen: &[String]) {
    let http = app.sim.sim.http_url().to_owned();
    let grpc = authority(app.sim.sim.grpc_url()).to_owned();
    let has = |prefix: String| seen.iter().any(|s| s.starts_with(&prefix));
    assert!(
        has(format!("POST {http}/services/oauth2/token")),
        "token request not proxied: {seen:#?}"
    );
    assert!(
        has(format!("GET {http}/services/data/")),
        "REST query not proxied: {seen:#?}"
    );
    assert!(
        has(format!("PATCH {http}/services/data/")),
        "REST write-back not proxied: {seen:#?}"
    );
    assert!(
        has(format!("POST {}", app.sim.whmcs_url())),
        "WHMCS not proxied: {seen:#?}"
    );
    assert!(
        has(format!("CONNECT {grpc}")),
        "Pub/Sub channel not tunnelled: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|s| s.starts_with("DENIED")),
        "a request lacked the proxy credentials: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_provisioned_through_an_authenticating_proxy() {
    let proxy = ForwardProxy::start(Some(("corp", PASSWORD))).await;
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("HTTPS_PROXY", proxy.url_with_credentials.clone()),
            ("HTTP_PROXY", proxy.url_with_credentials.clone()),
        ],
        ..Default::default()
    })
    .await;
    provision(&app, 3).await;
    assert_everything_proxied(&app, &proxy.seen());
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_case_proxy_variables_are_honoured() {
    let proxy = ForwardProxy::start(None).await;
    let mut app = spawn_app(Options {
        extra_env: vec![("http_proxy", proxy.url.clone())],
        ..Default::default()
    })
    .await;
    provision(&app, 1).await;
    assert_everything_proxied(&app, &proxy.seen());
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_targets_bypass_the_proxy() {
    let proxy = ForwardProxy::start(None).await;
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("HTTPS_PROXY", proxy.url.clone()),
            ("HTTP_PROXY", proxy.url.clone()),
            ("NO_PROXY", "example.invalid, 127.0.0.1".into()),
        ],
        ..Default::default()
    })
    .await;
    provision(&app, 2).await;
    assert_eq!(
        proxy.seen(),
        Vec::<String>::new(),
        "the proxy carried traffic"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_route_without_proxy_credentials() {
    let proxy = ForwardProxy::start(Some(("corp", PASSWORD))).await;
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let run = |extra: Vec<(&'static str, String)>| {
        let mut env = app.env.clone();
        env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
                .arg("check")
                .env_clear()
                .envs(env)
                .output()
                .await
                .expect("run check");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };
    let via = format!("via proxy {}", proxy.url);
    let (ok, text) = run(vec![("HTTP_PROXY", proxy.url_with_credentials.clone())]).await;
    assert!(ok, "{text}");
    for route in ["salesforce login", "pub/sub", "whmcs", "salesforce rest"] {
        assert!(
            text.contains(&format!("[info] route to {route} (127.0.0.1): {via}")),
            "{route}:\n{text}"
        );
    }
    assert!(
        !text.contains(PASSWORD) && !text.contains("corp:"),
        "{text}"
    );
    assert_everything_proxied_by_check(&app, &proxy.seen());

    // Exempted: reported as such, and the proxy sees nothing more.
    let before = proxy.seen().len();
    let (ok, text) = run(vec![
        ("HTTP_PROXY", proxy.url_with_credentials.clone()),
        ("NO_PROXY", "127.0.0.1".into()),
    ])
    .await;
    assert!(ok, "{text}");
    assert!(
        text.contains("[info] route to whmcs (127.0.0.1): direct (NO_PROXY)"),
        "{text}"
    );
    assert_eq!(proxy.seen().len(), before, "{:#?}", proxy.seen());

    // Wrong proxy password: the checks fail, and the password is not shown.
    let wrong = proxy.url_with_credentials.replace(PASSWORD, "wrong-pass");
    let (ok, text) = run(vec![("HTTP_PROXY", wrong)]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("[FAIL]"), "{text}");
    assert!(!text.contains("wrong-pass"), "{text}");
}

/// `check` reaches the token endpoint, Pub/Sub (GetTopic) and WHMCS.
fn assert_everything_proxied_by_check(app: &TestApp, seen: &[String]) {
    let http = app.sim.sim.http_url().to_owned();
    let grpc = authority(app.sim.sim.grpc_url()).to_owned();
    for prefix in [
        format!("POST {http}/services/oauth2/token"),
        format!("POST {}", app.sim.whmcs_url()),
        format!("CONNECT {grpc}"),
    ] {
        assert!(
            seen.iter().any(|s| s.starts_with(&prefix)),
            "{prefix}: {seen:#?}"
        );
    }
}

/// TLS to an `https://` Pub/Sub endpoint runs inside the tunnel, end to end: a TLS front for
/// `localhost` (test CA) relays to the simulator's gRPC port; the channel built with the
/// daemon's tunnel connector verifies the server's certificate and speaks HTTP/2 through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tls_runs_inside_the_proxy_tunnel() {
    use provisioner::{config::ProxyConfig, salesforce::pb};
    use secrecy::ExposeSecret;
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let read = |name: &str| std::fs::read(format!("{fixtures}/{name}")).expect("fixture");
    let proxy = ForwardProxy::start(Some(("corp", PASSWORD))).await;
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;

    // TLS front: terminates TLS (ALPN h2) and relays to the simulator's plaintext gRPC port.
    let certs = CertificateDer::pem_slice_iter(&read("localhost.pem"))
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(&read("localhost.key")).expect("key");
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let front_port = front.local_addr().expect("addr").port();
    let grpc = authority(app.sim.sim.grpc_url()).to_owned();
    let relay = tokio::spawn(async move {
        while let Ok((tcp, _)) = front.accept().await {
            let (acceptor, grpc) = (acceptor.clone(), grpc.clone());
            tokio::spawn(async move {
                if let (Ok(mut tls), Ok(mut upstream)) = (
                    acceptor.accept(tcp).await,
                    tokio::net::TcpStream::connect(&grpc).await,
                ) {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });

    let proxies = ProxyConfig::parse(&proxy.url_with_credentials, "", "").expect("proxy settings");
    let endpoint = Endpoint::from_shared(format!("https://localhost:{front_port}"))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .domain_name("localhost"),
        )
        .expect("tls config");
    let tunnel = proxies
        .tunnel(endpoint.uri())
        .expect("the endpoint is routed through the proxy");
    let channel = endpoint
        .connect_with_connector(tunnel)
        .await
        .expect("TLS through the tunnel");
    let session = app.state.tokens.session().await.expect("session");
    let mut req = tonic::Request::new(pb::TopicRequest {
        topic_name: app.state.cfg.events.channel.clone(),
    });
    let md = req.metadata_mut();
    md.insert(
        "accesstoken",
        session.access_token.expose_secret().parse().expect("token"),
    );
    md.insert("instanceurl", session.instance_url.parse().expect("url"));
    md.insert("tenantid", session.org_id.parse().expect("org"));
    let topic = pb::pub_sub_client::PubSubClient::new(channel)
        .get_topic(req)
        .await
        .expect("GetTopic over TLS through the proxy")
        .into_inner();
    assert!(topic.can_subscribe, "{topic:?}");
    assert_eq!(
        proxy.seen(),
        [format!("CONNECT localhost:{front_port}")],
        "exactly one tunnel, with credentials"
    );
    relay.abort();
}

/// The alert webhook goes through the proxy too; `NO_PROXY` exempts only what it names (the
/// simulator at 127.0.0.1, not the webhook addressed as `localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_webhook_goes_through_the_proxy() {
    let proxy = ForwardProxy::start(None).await;
    let posts: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let webhook = format!(
        "http://localhost:{}/services/T000/hook-secret",
        listener.local_addr().expect("addr").port()
    );
    let receiver = Router::new()
        .route(
            "/services/{*rest}",
            post(
                |State(p): State<Arc<Mutex<Vec<String>>>>, body: String| async move {
                    p.lock().expect("lock").push(body);
                },
            ),
        )
        .with_state(posts.clone());
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let mut app = spawn_app(Options {
        extra_env: vec![
            ("HTTP_PROXY", proxy.url.clone()),
            ("NO_PROXY", "127.0.0.1".into()),
            ("ALERT_WEBHOOK_URL", webhook.clone()),
            ("ALERT_CHECK_INTERVAL_SECS", "1".into()),
            ("ALERT_MIN_SAMPLES", "5".into()),
            ("ALERT_WINDOW_SECS", "600".into()),
        ],
        ..Default::default()
    })
    .await;
    // Orders whose product has no WHMCS mapping fail at once: 100 % failures.
    let ids: Vec<_> = (0..6)
        .map(|_| {
            sf_id(app.sim.sim.seed_order(OrderSeed {
                items: vec![ItemSeed {
                    product_id: None,
                    ..ItemSeed::default()
                }],
                ..OrderSeed::default()
            }))
        })
        .collect();
    for id in &ids {
        app.sim.sim.approve(id);
    }
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(20), "the webhook", || async {
        !posts.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(proxy.seen(), [format!("POST {webhook}")]);
    app.stop().await.expect("clean stop");
}
