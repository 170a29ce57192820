//! The tokio runtime every command runs on.
//!
//! `provisioner` waits on its dependencies far more than it computes: at realistic latency an
//! Order costs about a millisecond of CPU spread over a second of calls, and the order-status
//! API serves tens of thousands of requests per second on one core. So the runtime has one
//! thread by default (tokio's `current_thread` scheduler, as proxies such as linkerd2-proxy
//! do): every wake-up is handled where it lands, with no worker parking and unparking another
//! to steal a task. SQLite keeps its own threads (sqlx), and `spawn_blocking` its pool.
//!
//! `TOKIO_WORKER_THREADS` (tokio's own variable) asks for the multi-threaded scheduler with
//! that many worker threads, for a deployment whose portal traffic needs more than one core.
//! A value that is not a whole number of at least 1 is a configuration error, reported as one
//! line naming the variable (tokio itself would panic).

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// The environment variable that selects the multi-threaded scheduler and its thread count.
pub const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// How many runtime threads to run, from the value of [`WORKER_THREADS_VAR`] (if set).
///
/// `None` → one thread (the default); `Some(n)` → `n` worker threads.
pub fn worker_threads(value: Option<&str>) -> Result<NonZeroUsize, String> {
    match value {
        None => Ok(NonZeroUsize::MIN),
        Some(v) => v.trim().parse::<NonZeroUsize>().map_err(|_| {
            format!("{WORKER_THREADS_VAR}: must be a whole number of at least 1 (got {v:?})")
        }),
    }
}

/// Build the runtime: `current_thread` for one thread, multi-threaded otherwise.
pub fn build() -> Result<Runtime, String> {
    let value = std::env::var(WORKER_THREADS_VAR).ok();
    let threads = worker_threads(value.as_deref())?;
    let mut builder = if threads.get() == 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(threads.get());
        b
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_unless_asked() {
        assert_eq!(worker_threads(None).expect("default").get(), 1);
        assert_eq!(worker_threads(Some("4")).expect("4").get(), 4);
        assert_eq!(worker_threads(Some(" 2 ")).expect("2").get(), 2);
    }

    #[test]
    fn a_bad_thread_count_names_the_variable() {
        for bad in ["0", "-1", "two", ""] {
            let e = worker_threads(Some(bad)).expect_err(bad);
            assert!(e.starts_with("TOKIO_WORKER_THREADS: "), "{e}");
        }
    }

    #[test]
    fn the_runtime_runs_spawned_tasks() {
        let rt = build().expect("runtime");
        let got = rt.block_on(async { tokio::spawn(async { 7 }).await.expect("task") });
        assert_eq!(got, 7);
    }
}
