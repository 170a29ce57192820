//! `provisioner healthcheck` as the container runtime runs it (Dockerfile `HEALTHCHECK`, compose
//! `healthcheck`): exit 1 when nothing answers, 0 against a ready daemon (with `--url`, and
//! derived from `HTTP_ADDR` as in the image), 1 again once the daemon has stopped.

use std::{process::Output, time::Duration};

use tokio::process::Command;

use crate::helpers::{Options, spawn_app, wait_until};

async fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("healthcheck")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("healthcheck returns within its own 3 s timeout")
        .expect("run provisioner healthcheck")
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
    // dropped here: nothing listens on the port any more
}

#[tokio::test]
async fn healthcheck_exits_1_when_nothing_answers() {
    let port = closed_port();
    let out = healthcheck(&["--url", &format!("http://127.0.0.1:{port}")], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    // The port derived from HTTP_ADDR, as inside the container.
    let addr = format!("0.0.0.0:{port}");
    let out = healthcheck(&[], &[("HTTP_ADDR", &addr)]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_the_daemon() {
    let mut app = spawn_app(Options::default()).await;
    let client = reqwest::Client::new();
    let ready = format!("{}/health/ready", app.http);
    wait_until(
        Duration::from_secs(30),
        "/health/ready to answer 200",
        || {
            let req = client.get(&ready).timeout(Duration::from_secs(2)).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        },
    )
    .await;

    let out = healthcheck(&["--url", &app.http], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let http_addr = app
        .env
        .iter()
        .find(|(k, _)| k == "HTTP_ADDR")
        .map(|(_, v)| v.clone())
        .expect("HTTP_ADDR");
    let out = healthcheck(&[], &[("HTTP_ADDR", &http_addr)]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    app.stop().await.expect("daemon stops cleanly");
    wait_until(Duration::from_secs(10), "the HTTP server to close", || {
        let req = client.get(&ready).timeout(Duration::from_secs(1)).send();
        async move { req.await.is_err() }
    })
    .await;
    let out = healthcheck(&["--url", &app.http], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
