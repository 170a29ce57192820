//! WHMCS versions: before 8.12 `AddOrder` ignores `qty[]`, so an Order Product of quantity N
//! must reach WHMCS as N lines of 1 (or fail with `WHMCS_QTY_UNSUPPORTED`); from 8.12 it is sent
//! as it is. The version is read with `WhmcsDetails` and shown by `check` and the dashboard;
//! `check --products` verifies the mapped product ids exist in WHMCS.

use std::time::Duration;

use provisioner_sim::{Faults, ItemSeed, OrderSeed, SimConfig};

use crate::helpers::{Options, TestApp, sf_id, spawn_app, wait_until};

const ADMIN_TOKEN: &str = "dashboard-token-0123456789";

async fn app_with_whmcs(version: &str, extra_env: Vec<(&'static str, String)>) -> TestApp {
    spawn_app(Options {
        sim: SimConfig {
            whmcs_version: version.to_owned(),
            ..Default::default()
        },
        extra_env,
        ..Default::default()
    })
    .await
}

/// An Order with one Order Product of quantity 3 (product 7) and one of quantity 1 (product 8).
fn seed_quantities(app: &TestApp) -> provisioner::ids::SalesforceId {
    sf_id(app.sim.sim.seed_order(OrderSeed {
        items: vec![
            ItemSeed {
                product_id: Some("7".into()),
                quantity: 3.0,
                ..ItemSeed::default()
            },
            ItemSeed {
                product_id: Some("8".into()),
                quantity: 1.0,
                ..ItemSeed::default()
            },
        ],
        ..OrderSeed::default()
    }))
}

/// (product id, quantity) of each service WHMCS created for the Order.
fn services(app: &TestApp, id: &provisioner::ids::SalesforceId) -> Vec<(u64, u64)> {
    let orders = app.sim.sim.whmcs_orders_for(id);
    assert_eq!(orders.len(), 1, "one WHMCS order");
    orders[0]
        .lines
        .iter()
        .map(|l| (l.product_id, l.qty))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_8_12_each_unit_is_its_own_line() {
    let mut app = app_with_whmcs("8.7.2", vec![("ADMIN_TOKEN", ADMIN_TOKEN.to_owned())]).await;
    let id = seed_quantities(&app);
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    // Three services of product 7 and one of product 8: every unit ordered.
    assert_eq!(services(&app, &id), [(7, 1), (7, 1), (7, 1), (8, 1)]);
    assert_eq!(app.sim.sim.counts(&id).add_order, 1);

    // The dashboard shows the version the daemon read at start.
    let http = reqwest::Client::new();
    let summary: serde_json::Value = http
        .get(format!("{}/admin/api/summary", app.http))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("summary")
        .json()
        .await
        .expect("json");
    assert_eq!(summary["whmcsVersion"], "8.7.2", "{summary}");
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_8_12_reject_mode_fails_the_order_without_calling_add_order() {
    let mut app = app_with_whmcs("8.7.2", vec![("WHMCS_QUANTITY_MODE", "reject".to_owned())]).await;
    let id = seed_quantities(&app);
    let single = app.seed(1).remove(0);
    app.sim.sim.approve(&id);
    app.sim.sim.approve(&single);
    app.wait_terminal(&[id.clone(), single.clone()], Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Failed"));
    let o = app.sim.sim.order(&id).expect("order");
    assert_eq!(o.error_code.as_deref(), Some("WHMCS_QTY_UNSUPPORTED"));
    assert!(
        o.error_message.as_deref().unwrap_or("").contains("8.7.2"),
        "{o:?}"
    );
    assert_eq!(app.sim.sim.counts(&id).add_order, 0);
    assert!(app.sim.sim.whmcs_orders_for(&id).is_empty());
    // Quantities of 1 are unaffected.
    assert_eq!(app.activation(&single).as_deref(), Some("Activated"));
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_8_12_quantities_are_sent_as_they_are() {
    let mut app = app_with_whmcs("8.13.1", Vec::new()).await;
    let id = seed_quantities(&app);
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(services(&app, &id), [(7, 3), (8, 1)]);
    wait_until(
        Duration::from_secs(10),
        "the version read at start",
        || async { app.state.whmcs.known_version().as_deref() == Some("8.13.1") },
    )
    .await;
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_version_is_treated_as_before_8_12() {
    // WhmcsDetails answers without a version.
    let mut app = app_with_whmcs("", Vec::new()).await;
    let id = seed_quantities(&app);
    app.sim.sim.approve(&id);
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(app.activation(&id).as_deref(), Some("Activated"));
    assert_eq!(services(&app, &id), [(7, 1), (7, 1), (7, 1), (8, 1)]);
    assert_eq!(app.state.whmcs.known_version(), None);
    app.stop().await.expect("stop");
}

/// `provisioner check` with the app's environment and `args`: (success, stdout).
async fn check(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("check")
        .args(args)
        .env_clear()
        .envs(app.env.iter().cloned())
        .output()
        .await
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_version_and_verifies_mapped_products() {
    let app = spawn_app(Options {
        sim: SimConfig {
            whmcs_version: "8.7.2".into(),
            ..Default::default()
        },
        start: false,
        ..Default::default()
    })
    .await;
    seed_quantities(&app);
    app.seed(1);
    let (ok, text) = check(&app, &[]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("[ ok ] whmcs version: 8.7.2 (before 8.12")
            && text.contains("WHMCS_QUANTITY_MODE=expand"),
        "{text}"
    );
    assert!(!text.contains("whmcs products"), "{text}");

    // Every id mapped on a Salesforce Product (1, 7, 8) exists.
    let (ok, text) = check(&app, &["--products"]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("[ ok ] whmcs products: all 3 mapped on Salesforce Products exist (1, 7, 8)"),
        "{text}"
    );
    // WHMCS no longer has product 7.
    app.sim.sim.set_faults(Faults {
        whmcs_reject_products: vec!["7".into()],
        ..Faults::default()
    });
    let (ok, text) = check(&app, &["--products"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "[FAIL] whmcs products: 1 of 3 mapped on Salesforce Products not in WHMCS: 7"
        ),
        "{text}"
    );
    // Ids given on the command line.
    let (ok, text) = check(&app, &["--products", "1,8"]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("[ ok ] whmcs products: all 2 given exist (1, 8)"),
        "{text}"
    );
}
