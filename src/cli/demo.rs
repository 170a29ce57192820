//! `provisioner demo`: the whole pipeline on one machine. Starts the simulator and the daemon
//! in-process (fresh SQLite ledger, a queue name of its own on the given Redis), seeds sample
//! orders (one with a missing product mapping, to show a clean failure), approves them as the
//! Salesforce Flow would, prints progress and ends with a summary.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use provisioner_sim::{Faults, ItemSeed, OrderSeed, RecordId, SimConfig, Simulator};

use crate::{config::Config, daemon};

/// Runs the demo; exit 0 when every order reached its expected end state.
pub async fn run(orders: usize, redis_url: &str) -> ExitCode {
    match run_inner(orders.max(1), redis_url).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {}", crate::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(orders: usize, redis_url: &str) -> anyhow::Result<bool> {
    let sim = Simulator::start(SimConfig::default()).await?;
    let dir = std::env::temp_dir().join(format!(
        "provisioner-demo-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let queue = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let env: Vec<(String, String)> = sim
        .daemon_env()
        .into_iter()
        .chain([
            ("SF_EVENTS_REPLAY", "ALL".into()),
            ("REDIS_URL", redis_url.into()),
            ("QUEUE_NAME", queue.clone()),
            (
                "DATABASE_URL",
                format!("sqlite://{}/ledger.db", dir.display()),
            ),
            ("HTTP_ADDR", "127.0.0.1:0".into()),
            ("API_AUTH", "disabled".into()),
            ("LOG_FORMAT", "pretty".into()),
        ])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let cfg = Config::load_from(None, env)?;
    let token = CancellationToken::new();
    let daemon = tokio::spawn(daemon::run(cfg, token.clone()));

    println!(
        "provisioner demo: simulator at {} (gRPC {}), queue {queue}",
        sim.http_url, sim.grpc_url
    );
    let mut ids: Vec<RecordId> = Vec::with_capacity(orders);
    for i in 0..orders {
        let seed = if i == orders / 2 && orders > 1 {
            OrderSeed {
                items: vec![ItemSeed {
                    product_id: None,
                    ..ItemSeed::default()
                }],
                ..OrderSeed::default()
            }
        } else {
            OrderSeed::default()
        };
        ids.push(sim.sim.seed_order(seed));
    }
    println!("seeded {orders} orders; approving them as the Salesforce Flow would");
    // A little WHMCS latency and paced approvals, so the progress is visible.
    sim.sim.set_faults(Faults {
        whmcs_latency_ms: 100,
        ..Faults::default()
    });
    let started = Instant::now();
    let approvals = {
        let (sim, ids) = (sim.sim.clone(), ids.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for id in &ids {
                tick.tick().await;
                sim.approve(id);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    let (mut activated, mut failed) = (0, 0);
    while Instant::now() < deadline {
        activated = 0;
        failed = 0;
        for id in &ids {
            match sim
                .sim
                .order(id)
                .and_then(|o| o.activation_status)
                .as_deref()
            {
                Some("Activated") => activated += 1,
                Some("Failed") => failed += 1,
                _ => {}
            }
        }
        let line = format!(
            "progress: {activated} activated, {failed} failed, {} in flight",
            orders - activated - failed
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        if activated + failed == orders || daemon.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    approvals.abort();
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon).await;

    let totals = sim.sim.totals();
    let duplicates = ids
        .iter()
        .filter(|id| sim.sim.whmcs_orders_for(id).len() > 1)
        .count();
    println!();
    println!("summary");
    println!("  orders approved           {orders}");
    println!("  activated                 {activated}");
    println!("  failed (with reason)      {failed}");
    for id in &ids {
        if let Some(o) = sim.sim.order(id) {
            if o.activation_status.as_deref() == Some("Failed") {
                println!(
                    "    {} {}: {}",
                    id,
                    o.error_code.unwrap_or_default(),
                    o.error_message.unwrap_or_default()
                );
            }
        }
    }
    println!("  WHMCS AddOrder calls      {}", totals.add_order);
    println!("  WHMCS orders duplicated   {duplicates}");
    println!(
        "  Salesforce REST calls     {} ({} queries, {} updates)",
        totals.soql + totals.patch,
        totals.soql,
        totals.patch
    );
    println!("  elapsed                   {:.2} s", elapsed.as_secs_f64());
    let expected_failed = usize::from(orders > 1);
    let ok = activated + failed == orders && failed == expected_failed && duplicates == 0;
    println!("result: {}", if ok { "OK" } else { "UNEXPECTED" });
    let _ = crate::queue::delete_all_keys(redis_url, &queue).await;
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
    Ok(ok)
}
