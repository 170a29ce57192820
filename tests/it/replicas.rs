//! Several replicas and the stuck-order reconciler.

use std::time::Duration;

use serde_json::Value;
use tokio::process::Child;

use crate::helpers::{Db, Options, TestApp, spawn_app, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_recovers_orders_whose_events_never_arrived() {
    let mut app = spawn_app(Options {
        start: false,
        extra_env: vec![
            // Events published before the first subscription are not replayed: they are lost
            // to this daemon, as after a flushed Redis or a cursor fallback.
            ("SF_EVENTS_REPLAY", "LATEST".into()),
            ("RECONCILER_INTERVAL_SECS", "1".into()),
            ("RECONCILER_STUCK_AFTER_SECS", "0".into()),
        ],
        ..Default::default()
    })
    .await;
    let ids = app.seed_approved(5);
    app.start();
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"));
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1);
    }
    let report = app.state.reconciler.lock().expect("report").clone();
    assert!(report.total_enqueued >= 5, "{report:?}");
    assert!(
        app.state
            .metrics
            .render()
            .contains("provisioner_reconciler_enqueued_total")
    );
    app.stop().await.expect("stop");
}

fn replica(app: &TestApp, port: u16) -> Child {
    crate::helpers::daemon_process(
        app,
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("LEADER_LEASE_TTL_SECS", "3".into()),
        ],
    )
}

use crate::helpers::free_port;

async fn state_of(http: &reqwest::Client, port: u16) -> Option<String> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/health/sf-events"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v["state"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_leader_takeover_loses_and_duplicates_nothing() {
    let app = spawn_app(Options {
        db: Db::Postgres,
        start: false,
        // A killed replica may leave an AddOrder of unknown outcome: keep the in-doubt wait
        // short.
        extra_env: vec![
            ("WHMCS_TIMEOUT_SECS", "5".into()),
            ("WHMCS_EXECUTION_ALLOWANCE_SECS", "5".into()),
        ],
        ..Default::default()
    })
    .await;
    let ports = [free_port(), free_port(), free_port()];
    let mut children: Vec<Option<Child>> = ports.iter().map(|p| Some(replica(&app, *p))).collect();
    let http = reqwest::Client::new();
    let leader_slot = std::sync::Mutex::new(None);
    wait_until(
        Duration::from_secs(60),
        "one leader and two standbys",
        || async {
            let mut states = Vec::new();
            for p in ports {
                states.push(state_of(&http, p).await);
            }
            let leaders: Vec<usize> = (0..3)
                .filter(|i| states[*i].as_deref() == Some("connected"))
                .collect();
            let standbys = states
                .iter()
                .filter(|s| s.as_deref() == Some("standby"))
                .count();
            let ok = leaders.len() == 1 && standbys == 2;
            if ok {
                *leader_slot.lock().expect("slot") = Some(leaders[0]);
            }
            ok
        },
    )
    .await;
    let leader = leader_slot.lock().expect("slot").expect("leader");

    let first = app.seed(60);
    for id in &first {
        app.sim.sim.approve(id);
    }
    wait_until(
        Duration::from_secs(60),
        "some orders provisioned",
        || async {
            first
                .iter()
                .filter(|id| app.activation(id).as_deref() == Some("Activated"))
                .count()
                >= 10
        },
    )
    .await;
    // Kill the leader mid-run; keep approving.
    if let Some(mut c) = children[leader].take() {
        c.kill().await.expect("SIGKILL leader");
    }
    let second = app.seed(60);
    for id in &second {
        app.sim.sim.approve(id);
    }
    wait_until(
        Duration::from_secs(60),
        "a standby to take over",
        || async {
            let mut n = 0;
            for (i, p) in ports.iter().enumerate() {
                if i != leader && state_of(&http, *p).await.as_deref() == Some("connected") {
                    n += 1;
                }
            }
            n == 1
        },
    )
    .await;
    let all: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    app.wait_terminal(&all, Duration::from_secs(120)).await;
    for id in &all {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
        assert_eq!(app.sim.sim.counts(id).add_order, 1, "{id}");
    }
    for c in children.iter_mut().flatten() {
        let _ = c.kill().await;
    }
}
