//! Queue housekeeping and statistics against a real Redis.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::helpers::{Options, spawn_app, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_finished_jobs_and_pending_counts_ready_ones() {
    let mut app = spawn_app(Options::default()).await;
    let queue = app.state.queue.clone();
    assert_eq!(queue.pending().await.expect("pending"), 0);
    let ids = app.seed_approved(3);
    app.wait_terminal(&ids, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(10), "3 finished jobs", || async {
        queue.stats().await.expect("stats").done == 3
    })
    .await;
    assert_eq!(queue.pending().await.expect("pending"), 0);
    // Nothing is old enough for a one-hour cutoff.
    assert_eq!(
        queue
            .cleanup(Duration::from_secs(3600))
            .await
            .expect("cleanup"),
        0
    );
    assert_eq!(queue.job_count().await.expect("count"), 3);
    // With no age limit every finished job goes once its `done_at` second has passed.
    let removed = AtomicU64::new(0);
    wait_until(Duration::from_secs(10), "cleanup of 3 jobs", || {
        let (queue, removed) = (queue.clone(), &removed);
        async move {
            let n = queue.cleanup(Duration::ZERO).await.expect("cleanup");
            removed.fetch_add(n, Ordering::Relaxed) + n == 3
        }
    })
    .await;
    assert_eq!(queue.job_count().await.expect("count"), 0);
    assert_eq!(queue.stats().await.expect("stats").done, 0);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_dead_jobs_like_done_ones() {
    let app = spawn_app(Options {
        start: false,
        ..Default::default()
    })
    .await;
    let queue = app.state.queue.clone();
    let cfg = queue.config().clone();
    let mut conn = queue.redis();
    let old = chrono::Utc::now().timestamp() - 7200;
    for (id, done_at) in [
        ("dead-old", old),
        ("dead-new", chrono::Utc::now().timestamp()),
    ] {
        let () = redis::pipe()
            .cmd("SADD")
            .arg(cfg.dead_jobs_set())
            .arg(id)
            .ignore()
            .cmd("HSET")
            .arg(cfg.job_data_hash())
            .arg(id)
            .arg("{}")
            .ignore()
            .cmd("HSET")
            .arg(format!("{}:{}", cfg.job_meta_hash(), id))
            .arg("status")
            .arg("Killed")
            .arg("done_at")
            .arg(done_at)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("seed dead jobs");
    }
    assert_eq!(queue.stats().await.expect("stats").failed, 2);
    assert_eq!(
        queue
            .cleanup(Duration::from_secs(3600))
            .await
            .expect("cleanup"),
        1
    );
    assert_eq!(queue.stats().await.expect("stats").failed, 1);
    assert!(!queue.contains("dead-old").await.expect("contains"));
    assert!(queue.contains("dead-new").await.expect("contains"));
}
