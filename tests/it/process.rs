//! The real binary as a child process: crashes (SIGKILL), graceful shutdown (SIGTERM),
//! configuration errors and the command line.

use std::time::Duration;

use provisioner_sim::Faults;
use tokio::process::{Child, Command};

use crate::helpers::{Options, TestApp, sigterm, spawn_app, wait_until};

fn daemon(app: &TestApp) -> Child {
    crate::helpers::daemon_process(app, &[])
}

/// Once the daemon answers HTTP (its signal handlers are installed by then: a SIGTERM before
/// that gets the signal's default action, as any process that has not started yet), SIGTERM;
/// then it must exit with status 0 within `within`.
async fn stop_cleanly(app: &TestApp, child: &mut Child, within: Duration) {
    crate::http::http_up(&app.http).await;
    sigterm(child);
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_add_order_is_reconciled_on_restart() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    // WHMCS takes long to answer AddOrder: the process dies after WHMCS created the order but
    // before the ledger recorded its id.
    app.sim.sim.set_faults(Faults {
        whmcs_error_rate: 1.0,
        whmcs_error_kind: provisioner_sim::WhmcsFaultKind::CommitThenHang,
        ..Faults::default()
    });
    let id = app.seed(1).remove(0);
    let mut child = daemon(&app);
    app.sim.sim.approve(&id);
    wait_until(
        Duration::from_secs(60),
        "AddOrder to reach WHMCS",
        || async { app.sim.sim.whmcs_orders_for(&id).len() == 1 },
    )
    .await;
    child.kill().await.expect("SIGKILL");
    app.sim.sim.set_faults(Faults::default());
    let mut child = daemon(&app);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(150))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(
        app.sim.sim.whmcs_orders_for(&id).len(),
        1,
        "one WHMCS order"
    );
    assert_eq!(
        app.sim.sim.counts(&id).add_order,
        1,
        "AddOrder is never sent twice"
    );
    stop_cleanly(&app, &mut child, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_work_exits_zero_and_leaves_nothing_half_done() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 1000,
        ..Faults::default()
    });
    let ids = app.seed(20);
    // SIGTERM may cut an AddOrder short (its outcome unknown, never executed by the simulator):
    // the restart then waits out the in-doubt window before adding again; keep it short.
    // Two WHMCS calls at a time: most jobs are still waiting when SIGTERM comes.
    let env = [
        ("WHMCS_TIMEOUT_SECS", "5".to_owned()),
        ("WHMCS_EXECUTION_ALLOWANCE_SECS", "5".to_owned()),
        ("WHMCS_MIN_IN_FLIGHT", "2".to_owned()),
        ("WHMCS_MAX_IN_FLIGHT", "2".to_owned()),
    ];
    let mut child = crate::helpers::daemon_process(&app, &env);
    for id in &ids {
        app.sim.sim.approve(id);
    }
    wait_until(Duration::from_secs(60), "work to be under way", || async {
        app.sim.sim.totals().add_order >= 1
    })
    .await;
    stop_cleanly(&app, &mut child, Duration::from_secs(30)).await;
    assert!(
        app.sim.sim.totals().add_order < ids.len() as u64,
        "work was left for the restart"
    );
    // Whatever was started is either finished or resumes cleanly: a second run completes all.
    app.sim.sim.set_faults(Faults::default());
    let mut child = crate::helpers::daemon_process(&app, &env);
    app.wait_terminal(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(app.activation(id).as_deref(), Some("Activated"), "{id}");
        assert_eq!(app.sim.sim.whmcs_orders_for(id).len(), 1, "{id}");
    }
    stop_cleanly(&app, &mut child, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn config_error_stops_with_one_line_naming_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("serve")
        .env_clear()
        .env("WHMCS_API_URL", "http://127.0.0.1:1/includes/api.php")
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SF_CLIENT_ID"), "{stderr}");
}

/// `check` reports unreachable dependencies and a malformed webhook without printing the
/// credentials inside their URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_config_errors_print_no_url_credentials() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let run = |extra: Vec<(&'static str, String)>| {
        let env = app.env.clone();
        async move {
            let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
                .arg("check")
                .env_clear()
                .envs(env)
                .envs(extra)
                .env("RUST_LOG", "debug")
                .output()
                .await
                .expect("run check");
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let (ok, output) = run(vec![(
        "DATABASE_URL",
        "postgres://ledger:db-pass-4711@127.0.0.1:1/prov".into(),
    )])
    .await;
    assert!(!ok, "{output}");
    assert!(output.contains("DATABASE_URL"), "{output}");
    assert!(!output.contains("db-pass-4711"), "{output}");
    let (ok, output) = run(vec![(
        "REDIS_URL",
        "redis://default:redis-pass-4711@127.0.0.1:1/0".into(),
    )])
    .await;
    assert!(!ok, "{output}");
    assert!(output.contains("REDIS_URL"), "{output}");
    assert!(!output.contains("redis-pass-4711"), "{output}");
    let (ok, output) = run(vec![(
        "ALERT_WEBHOOK_URL",
        "hooks.example.com/services/T0/B0/hook-secret-4711".into(),
    )])
    .await;
    assert!(!ok, "{output}");
    assert!(output.contains("ALERT_WEBHOOK_URL"), "{output}");
    assert!(!output.contains("hook-secret-4711"), "{output}");
}

#[tokio::test]
async fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("--help")
        .output()
        .await
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "migrate", "check", "healthcheck", "sim", "demo"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["demo", "--orders", "6"])
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("run demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("activated                 5"), "{text}");
    assert!(text.contains("MAPPING_PRODUCT_MISSING"), "{text}");
    assert!(text.contains("WHMCS orders duplicated   0"), "{text}");
    assert!(text.contains("result: OK"), "{text}");
}

/// A job waiting for room under WHMCS's in-flight limit has committed no `adding` intent, so a
/// shutdown while jobs wait leaves only the AddOrders actually sent in doubt (an intent without
/// a call would hold its Order back for the whole in-doubt window after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_stopped_while_waiting_for_whmcs_leave_no_adding_intent() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    app.sim.sim.set_faults(Faults {
        whmcs_latency_ms: 1500,
        ..Faults::default()
    });
    let ids = app.seed(8);
    let env = [
        ("WHMCS_MIN_IN_FLIGHT", "1".to_owned()),
        ("WHMCS_MAX_IN_FLIGHT", "1".to_owned()),
    ];
    let mut child = crate::helpers::daemon_process(&app, &env);
    for id in &ids {
        app.sim.sim.approve(id);
    }
    // Every job has opened its attempt (what follows before AddOrder needs no I/O), and one
    // AddOrder holds WHMCS's only slot: the others wait for it.
    wait_until(
        Duration::from_secs(60),
        "every job to open its attempt",
        || async {
            let mut open = 0;
            for id in &ids {
                let attempts = app.state.ledger.attempts(id).await.expect("attempts");
                open += usize::from(attempts.iter().any(|a| a.finished_at.is_none()));
            }
            open == ids.len() && app.sim.sim.totals().add_order >= 1
        },
    )
    .await;
    stop_cleanly(&app, &mut child, Duration::from_secs(60)).await;
    for id in &ids {
        let row = app.state.ledger.get(id).await.expect("get").expect("row");
        if row.state == "adding" {
            assert!(
                app.sim.sim.counts(id).add_order >= 1,
                "{id} was left with an adding intent although its AddOrder was never sent"
            );
        }
    }
}
