//! The seeded chaos run of the test suite: the real binary (`serve`, debug build) as a child
//! process against the simulator and a `redis-server` of its own, 300 orders approved while the
//! daemon is SIGKILLed and restarted 3 times, Redis is restarted (queued jobs lost) and flushed
//! once, streams drop, tokens are revoked, WHMCS and Salesforce fail in every way the simulator
//! knows (WHMCS down, rejecting the credentials, committing after the daemon's timeout), three
//! Orders have every write-back rejected, and poison events arrive. Afterwards nothing may be
//! lost, duplicated or stuck, no outage may have failed an Order, the authentication window may
//! have cost at most 3 WHMCS calls, and exactly the three Orders end `writeback_rejected`.
//!
//! Needs the `redis-server` binary on `PATH` (`scripts/services.sh` installs it).

use provisioner_lab::{
    chaos::{self, ChaosArgs},
    support::daemon_exe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_run_loses_duplicates_and_strands_nothing() {
    let args = <ChaosArgs as clap::Parser>::parse_from([
        "chaos",
        "--orders",
        "300",
        "--seed",
        "42",
        "--kills",
        "3",
        "--redis-restarts",
        "1",
        "--stream-drops",
        "3",
        "--token-revocations",
        "2",
        "--whmcs-faults",
        "4",
        "--whmcs-outages",
        "1",
        "--whmcs-auth-failures",
        "1",
        "--whmcs-slow-commits",
        "1",
        "--redis-flushes",
        "1",
        "--writeback-rejects",
        "3",
        "--sf-faults",
        "4",
        "--poison",
        "3",
        "--rate",
        "15",
        "--duration",
        "200",
    ]);
    let report = chaos::run(&args, &daemon_exe(None).expect("the provisioner binary"))
        .await
        .expect("the chaos run could not be set up");
    let table = report.table();
    println!("{table}");

    let i = &report.injected;
    assert_eq!(i.kills, 3, "{table}");
    assert_eq!(i.redis_restarts, 1, "{table}");
    assert!(i.stream_drops > 0 && i.token_revocations > 0, "{table}");
    assert!(
        i.whmcs_5xx_windows
            + i.whmcs_timeout_windows
            + i.whmcs_after_commit_windows
            + i.whmcs_commit_then_timeout_windows
            + i.whmcs_latency_windows
            == 4,
        "{table}"
    );
    assert_eq!(
        (
            i.whmcs_outage_windows,
            i.whmcs_auth_failure_windows,
            i.whmcs_auth_resets,
            i.whmcs_slow_commit_windows,
            i.redis_flushes
        ),
        (1, 1, 1, 1, 1),
        "{table}"
    );
    assert!(
        i.sf_lock_row_calls > 0 && i.sf_unavailable_calls > 0,
        "{table}"
    );

    assert_eq!(report.lost_events, 0, "lost events\n{table}");
    assert_eq!(report.duplicate_add_orders, 0, "duplicated\n{table}");
    assert_eq!(
        report.stuck_activating + report.stuck_untouched,
        0,
        "stuck\n{table}"
    );
    assert_eq!(report.unmapped_orders, 6, "{table}");
    assert_eq!(report.unmapped_failed_as_expected, 6, "{table}");
    assert_eq!(
        report.activated_with_one_whmcs_order, report.activated,
        "{table}"
    );
    assert_eq!(report.cursor, report.last_published_replay_id, "{table}");
    assert_eq!(report.failed_by_outage, 0, "failed by an outage\n{table}");
    assert_eq!(report.whmcs_calls_per_auth_window.len(), 1, "{table}");
    assert!(
        report.whmcs_calls_per_auth_window.iter().all(|c| *c <= 3),
        "{table}"
    );
    assert_eq!(
        (
            report.writeback_rejects_seeded,
            report.writeback_rejected,
            report.writeback_rejected_as_expected
        ),
        (3, 3, 3),
        "{table}"
    );
    assert!(report.ok(), "{table}");
}
