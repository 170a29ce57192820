//! `provisioner-lab chaos`: a seeded reliability run of the real daemon under crashes and faults,
//! followed by an audit of the invariants of `docs/ARCHITECTURE.md`.
//!
//! The run owns everything it touches: the simulator (in this process), a `redis-server` on a
//! free loopback port without persistence, a fresh ledger (a SQLite file, or a new schema in a
//! PostgreSQL database), and the daemon itself as a child process (`serve`). It seeds orders
//! (a deterministic ~2 % of them without a WHMCS product mapping, which must fail with
//! `MAPPING_PRODUCT_MISSING`), approves them at a steady rate, and meanwhile injects faults at
//! times drawn from the seed: SIGKILL + restart of the daemon, dropped Pub/Sub streams, revoked
//! tokens, Redis restarts (queued jobs are lost: the stuck-order reconciler must recover them),
//! a Redis `FLUSHALL` while the daemon runs, WHMCS 5xx / timeouts / after-commit failures /
//! latency spikes, WHMCS outages (503 on every call: the breaker opens, jobs wait), WHMCS
//! authentication failures (403: the latch holds every call back until the run lifts it with
//! `provisioner whmcs reset-auth`, as an operator would), slow commits (AddOrder commits after
//! the daemon's timeout, inside timeout + execution allowance), Salesforce `UNABLE_TO_LOCK_ROW`
//! and 503, poison events, and a seeded set of Orders whose every write-back Salesforce
//! rejects (they must end `writeback_rejected`, provisioned once: finished, not stuck). Then it
//! lifts every fault, waits (bounded) for the daemon to settle, stops it with SIGTERM and
//! audits.
//!
//! Invariants of the run:
//! - Every random choice comes from `--seed`; wall-clock timing still varies between runs, so a
//!   seed fixes the plan (what, when, to which orders), not the interleaving.
//! - Child processes are killed when the run ends, whatever the outcome (`kill_on_drop`).
//! - Only loopback addresses are used.
//! - WHMCS fault windows never overlap; Redis stays up (no restart, no flush) from a few seconds
//!   before an authentication-failure window until a second after it, since the latch lives in
//!   Redis.
//! - An outage never fails an Order: a Failed code other than a business answer is a violation.
//! - A daemon that exits on its own (e.g. because Redis vanished) is restarted after a short
//!   delay, as a container runtime would; such exits are reported, not hidden.
//! - The audit reads the simulator (Salesforce and WHMCS state) and the ledger after the daemon
//!   stopped, so nothing moves while it is taken.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{ExitCode, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;
use sqlx::Row;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::{Child, Command},
};

use provisioner::{config::DatabaseConfig, ledger::Ledger};
use provisioner_sim::{
    Faults, ItemSeed, OrderSeed, RecordId as SalesforceId, SimConfig, SimHandle, Simulator,
    WhmcsFaultKind,
};

use crate::support::{create_schema, daemon_exe, drop_schema, free_port};

/// Options of a chaos run (also the `provisioner-lab chaos` command line).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "chaos")]
pub struct ChaosArgs {
    /// The `provisioner` binary to run (default: `$PROVISIONER_BIN`, else the one built beside
    /// this program).
    #[arg(long)]
    pub daemon: Option<PathBuf>,
    /// Orders to seed and approve.
    #[arg(long, default_value_t = 5000)]
    pub orders: usize,
    /// Seed of every random choice: fault times and kinds, which orders lack a mapping.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// SIGKILL + restart of the daemon, this many times.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Redis restarts (kill, then start again on the same port; queued jobs are lost).
    #[arg(long, default_value_t = 1)]
    pub redis_restarts: u32,
    /// Pub/Sub streams dropped by the simulator.
    #[arg(long, default_value_t = 5)]
    pub stream_drops: u32,
    /// Revocations of every issued Salesforce access token.
    #[arg(long, default_value_t = 3)]
    pub token_revocations: u32,
    /// WHMCS fault windows (5xx, timeouts, after-commit failures, latency spikes), a few
    /// seconds each.
    #[arg(long, default_value_t = 10)]
    pub whmcs_faults: u32,
    /// WHMCS outage windows (every call answers 503; the breaker opens), among the WHMCS
    /// windows.
    #[arg(long, default_value_t = 2)]
    pub whmcs_outages: u32,
    /// WHMCS authentication-failure windows (every call answers 403 `Authentication Failed`);
    /// each is followed by `provisioner whmcs reset-auth`, as an operator would run it.
    #[arg(long, default_value_t = 1)]
    pub whmcs_auth_failures: u32,
    /// WHMCS slow-commit windows: AddOrder commits after the daemon's timeout (see
    /// `SLOW_COMMIT_MS`), inside timeout + execution allowance.
    #[arg(long, default_value_t = 2)]
    pub whmcs_slow_commits: u32,
    /// Redis `FLUSHALL`s while the daemon runs (queued jobs, leases and run markers vanish).
    #[arg(long, default_value_t = 1)]
    pub redis_flushes: u32,
    /// Orders (with a product mapping) whose every write-back Salesforce rejects: they must end
    /// `writeback_rejected` in the ledger, provisioned once.
    #[arg(long, default_value_t = 10)]
    pub writeback_rejects: usize,
    /// Salesforce fault bursts (the next N REST calls answer UNABLE_TO_LOCK_ROW or 503).
    #[arg(long, default_value_t = 6)]
    pub sf_faults: u32,
    /// Poison events (undecodable payloads, unknown schema) published among the approvals.
    #[arg(long, default_value_t = 5)]
    pub poison: u32,
    /// Approvals per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Cap on the whole run, in seconds; orders not finished by then count as stuck.
    #[arg(long, default_value_t = 1800)]
    pub duration: u64,
    /// Ledger on PostgreSQL: a base URL in which a fresh schema is created (default: a fresh
    /// SQLite file).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Also write the audit as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The redis-server binary to run.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Keep the work directory (daemon and Redis logs, SQLite ledger) even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// Print progress while the run goes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub progress: bool,
}

impl Default for ChaosArgs {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["chaos"])
    }
}

/// Settings of the daemon under test, on top of the simulator's environment: short backoffs and
/// timeouts so recovery fits in a run, a fast stuck-order reconciler.
const DAEMON_ENV: &[(&str, &str)] = &[
    ("SF_EVENTS_REPLAY", "ALL"),
    ("API_AUTH", "disabled"),
    ("LOG_FORMAT", "json"),
    ("JOB_MAX_ATTEMPTS", "8"),
    ("JOB_BACKOFF_INITIAL_MS", "50"),
    ("JOB_BACKOFF_MAX_MS", "1000"),
    ("SF_EVENTS_BACKOFF_INITIAL_MS", "50"),
    ("SF_EVENTS_BACKOFF_MAX_MS", "1000"),
    ("SF_EVENTS_WATCHDOG_SECS", "30"),
    ("SF_HTTP_TIMEOUT_SECS", "5"),
    ("WHMCS_TIMEOUT_SECS", "3"),
    // The slow-commit windows commit `SLOW_COMMIT_MS` after the request: past the timeout,
    // inside timeout + allowance. A short allowance keeps runs short.
    ("WHMCS_EXECUTION_ALLOWANCE_SECS", "2"),
    // Outage windows last seconds: probes every few seconds, not the production minutes.
    ("BREAKER_PROBE_INTERVAL_SECS", "2"),
    ("BREAKER_PROBE_MAX_INTERVAL_SECS", "8"),
    ("SHUTDOWN_GRACE_SECS", "10"),
    ("RECONCILER_INTERVAL_SECS", "5"),
    ("RECONCILER_STUCK_AFTER_SECS", "30"),
];

/// How long after the request a slow-commit window's AddOrder commits: past the daemon's
/// `WHMCS_TIMEOUT_SECS` (3 s), inside timeout + `WHMCS_EXECUTION_ALLOWANCE_SECS` (5 s).
const SLOW_COMMIT_MS: u64 = 4000;
/// Error codes of business answers the run provokes; any other Failed code is an outage that
/// failed an Order.
const BUSINESS_CODES: &[&str] = &[UNMAPPED_CODE];
/// WHMCS requests allowed during one authentication-failure window (the first rejected login,
/// and calls already on their way).
const AUTH_WINDOW_MAX_CALLS: u64 = 3;

/// How long a crashed daemon stays down before it is started again.
const RESTART_DELAY: Duration = Duration::from_millis(500);
/// Share of orders seeded without a WHMCS product mapping.
const UNMAPPED_SHARE: f64 = 0.02;
/// Error code those orders must fail with.
const UNMAPPED_CODE: &str = "MAPPING_PRODUCT_MISSING";

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub orders: usize,
    pub approve_secs: f64,
    pub settle_secs: f64,
    pub total_secs: f64,
    pub settled: bool,
    pub injected: Injected,
    /// Daemon processes started (first start, restarts after kills and after own exits).
    pub daemon_starts: u32,
    /// Exits of the daemon that the run did not cause, with their status.
    pub daemon_exits_on_its_own: Vec<String>,
    pub activated: usize,
    /// Failed orders by error code.
    pub failed_by_code: BTreeMap<String, usize>,
    /// Orders seeded without a product mapping.
    pub unmapped_orders: usize,
    /// Unmapped orders that failed with `MAPPING_PRODUCT_MISSING` and were never provisioned.
    pub unmapped_failed_as_expected: usize,
    /// Mapped orders that ended Failed (transient faults outlasting the retries).
    pub mapped_failed: usize,
    /// Orders Failed with a code that is not a business answer (an outage failed them).
    pub failed_by_outage: usize,
    /// WHMCS requests during each authentication-failure window.
    pub whmcs_calls_per_auth_window: Vec<u64>,
    /// Orders seeded with every write-back rejected.
    pub writeback_rejects_seeded: usize,
    /// Orders whose ledger row ended `writeback_rejected`.
    pub writeback_rejected: usize,
    /// Of those, seeded ones, provisioned with exactly one WHMCS order.
    pub writeback_rejected_as_expected: usize,
    /// Still `Activating` after the settle deadline, though the ledger knows them.
    pub stuck_activating: usize,
    /// Still `Activating` and never worked on (no ledger row).
    pub stuck_untouched: usize,
    /// WHMCS orders created, in total.
    pub whmcs_orders: usize,
    /// Activated orders with exactly one WHMCS order.
    pub activated_with_one_whmcs_order: usize,
    /// Failed orders with more than one WHMCS order.
    pub failed_with_several_whmcs_orders: usize,
    /// Orders with more than one WHMCS order (AddOrder took effect twice).
    pub duplicate_add_orders: usize,
    /// AddOrder calls, in total (retries of calls that never reached WHMCS included).
    pub add_order_calls: u64,
    /// Approvals whose event never reached the daemon's inbox.
    pub lost_events: usize,
    /// Poison events recorded as such in the inbox.
    pub poison_recorded: usize,
    /// Orders worked on by a job the stuck-order reconciler enqueued.
    pub reconciled_orders: usize,
    /// The subscription cursor stored in the ledger, hex.
    pub cursor: Option<String>,
    /// Replay id of the last event the simulator published, hex.
    pub last_published_replay_id: Option<String>,
    /// Orders whose ledger row disagrees with Salesforce (outcome or WHMCS order id).
    pub ledger_mismatches: usize,
    /// Salesforce REST calls per approved order: (queries, updates).
    pub soql_per_order: f64,
    pub patch_per_order: f64,
    /// Exit status of the daemon on the final SIGTERM.
    pub final_stop: String,
    /// Every invariant that broke, in words. Empty on success.
    pub violations: Vec<String>,
    /// Examples of offending orders (at most a few per kind).
    pub examples: Vec<String>,
    /// Where logs and the SQLite ledger were kept, if they were.
    pub work_dir: Option<String>,
}

/// Faults injected during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Injected {
    pub kills: u32,
    pub redis_restarts: u32,
    pub stream_drops: u32,
    pub token_revocations: u32,
    pub whmcs_5xx_windows: u32,
    pub whmcs_timeout_windows: u32,
    pub whmcs_after_commit_windows: u32,
    pub whmcs_commit_then_timeout_windows: u32,
    pub whmcs_latency_windows: u32,
    pub whmcs_outage_windows: u32,
    pub whmcs_auth_failure_windows: u32,
    pub whmcs_slow_commit_windows: u32,
    /// `provisioner whmcs reset-auth` runs that succeeded.
    pub whmcs_auth_resets: u32,
    pub redis_flushes: u32,
    pub sf_lock_row_calls: u32,
    pub sf_unavailable_calls: u32,
    pub poison_events: u32,
}

impl ChaosReport {
    /// No invariant broke.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human-readable audit (a Markdown table plus a verdict).
    pub fn table(&self) -> String {
        let i = &self.injected;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos run: {} orders, seed {}, approvals over {:.1} s, settled in {:.1} s (total {:.1} s)",
            self.orders, self.seed, self.approve_secs, self.settle_secs, self.total_secs
        );
        let _ = writeln!(
            s,
            "injected: {} daemon SIGKILLs, {} Redis restarts, {} Redis FLUSHALLs, {} stream drops, \
             {} token revocations, WHMCS windows ({} 5xx, {} timeout, {} after-commit 500, \
             {} commit-then-timeout, {} latency, {} down, {} auth failure + {} reset-auth, \
             {} slow commit), Salesforce {} × UNABLE_TO_LOCK_ROW + {} × 503, {} poison events, \
             {} Orders with every write-back rejected",
            i.kills,
            i.redis_restarts,
            i.redis_flushes,
            i.stream_drops,
            i.token_revocations,
            i.whmcs_5xx_windows,
            i.whmcs_timeout_windows,
            i.whmcs_after_commit_windows,
            i.whmcs_commit_then_timeout_windows,
            i.whmcs_latency_windows,
            i.whmcs_outage_windows,
            i.whmcs_auth_failure_windows,
            i.whmcs_auth_resets,
            i.whmcs_slow_commit_windows,
            i.sf_lock_row_calls,
            i.sf_unavailable_calls,
            i.poison_events,
            self.writeback_rejects_seeded
        );
        let _ = writeln!(
            s,
            "daemon: {} starts, {} exits on its own{}",
            self.daemon_starts,
            self.daemon_exits_on_its_own.len(),
            if self.daemon_exits_on_its_own.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.daemon_exits_on_its_own.join("; "))
            }
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| check | result | expected |");
        let _ = writeln!(s, "|---|---:|---:|");
        let mut row = |name: &str, value: String, expected: String| {
            let _ = writeln!(s, "| {name} | {value} | {expected} |");
        };
        row("orders approved", self.orders.to_string(), String::new());
        row(
            "Activated",
            self.activated.to_string(),
            (self.orders - self.unmapped_orders - self.writeback_rejects_seeded).to_string(),
        );
        let failed: usize = self.failed_by_code.values().sum();
        let reasons = self
            .failed_by_code
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        row(
            "Failed, with reason",
            if reasons.is_empty() {
                "0".into()
            } else {
                format!("{failed} ({reasons})")
            },
            format!("{} ({UNMAPPED_CODE})", self.unmapped_orders),
        );
        row(
            "Failed by an outage (code not a business answer)",
            self.failed_by_outage.to_string(),
            "0".into(),
        );
        row(
            "writeback_rejected (seeded, provisioned once)",
            format!(
                "{} ({})",
                self.writeback_rejected, self.writeback_rejected_as_expected
            ),
            format!(
                "{} ({})",
                self.writeback_rejects_seeded, self.writeback_rejects_seeded
            ),
        );
        row(
            "WHMCS calls during each auth-failure window",
            if self.whmcs_calls_per_auth_window.is_empty() {
                "none".into()
            } else {
                self.whmcs_calls_per_auth_window
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            format!("≤ {AUTH_WINDOW_MAX_CALLS} each"),
        );
        row(
            "stuck: Activating, worked on",
            self.stuck_activating.to_string(),
            "0".into(),
        );
        row(
            "stuck: Activating, never touched",
            self.stuck_untouched.to_string(),
            "0".into(),
        );
        row(
            "Activated orders with exactly one WHMCS order",
            self.activated_with_one_whmcs_order.to_string(),
            self.activated.to_string(),
        );
        row(
            "Failed orders with more than one WHMCS order",
            self.failed_with_several_whmcs_orders.to_string(),
            "0".into(),
        );
        row(
            "unmapped orders Failed with MAPPING_PRODUCT_MISSING, never provisioned",
            self.unmapped_failed_as_expected.to_string(),
            self.unmapped_orders.to_string(),
        );
        row(
            "lost events (approved, never in the inbox)",
            self.lost_events.to_string(),
            "0".into(),
        );
        row(
            "duplicate AddOrders (Salesforce Orders with > 1 WHMCS order)",
            self.duplicate_add_orders.to_string(),
            "0".into(),
        );
        row(
            "WHMCS orders created / AddOrder calls",
            format!("{} / {}", self.whmcs_orders, self.add_order_calls),
            String::new(),
        );
        row(
            "poison events skipped",
            self.poison_recorded.to_string(),
            self.injected.poison_events.to_string(),
        );
        row(
            "orders recovered by the stuck-order reconciler",
            self.reconciled_orders.to_string(),
            String::new(),
        );
        row(
            "cursor = last published replay id",
            format!(
                "{} = {}",
                self.cursor.as_deref().unwrap_or("none"),
                self.last_published_replay_id.as_deref().unwrap_or("none")
            ),
            "equal".into(),
        );
        row(
            "ledger disagrees with Salesforce",
            self.ledger_mismatches.to_string(),
            "0".into(),
        );
        row(
            "Salesforce queries / updates per order",
            format!("{:.2} / {:.2}", self.soql_per_order, self.patch_per_order),
            String::new(),
        );
        row("final SIGTERM", self.final_stop.clone(), "exit 0".into());
        let _ = writeln!(s);
        if self.ok() {
            let _ = writeln!(s, "result: PASS (every invariant held)");
        } else {
            let _ = writeln!(s, "result: FAIL");
            for v in &self.violations {
                let _ = writeln!(s, "  - {v}");
            }
            for e in &self.examples {
                let _ = writeln!(s, "    e.g. {e}");
            }
        }
        if let Some(dir) = &self.work_dir {
            let _ = writeln!(s, "logs and ledger kept in {dir}");
        }
        s
    }
}

/// `provisioner-lab chaos`: runs, prints the table, writes the JSON; exit 0 only if every invariant
/// held.
pub async fn main(args: ChaosArgs) -> ExitCode {
    let exe = match daemon_exe(args.daemon.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chaos: cannot locate the provisioner binary: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args, &exe).await {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = &args.json {
                let written = serde_json::to_vec_pretty(&report)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| std::fs::write(path, b).map_err(anyhow::Error::from));
                if let Err(e) = written {
                    eprintln!("chaos: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone)]
enum Action {
    Kill,
    Restart,
    RedisStop,
    RedisStart,
    /// `FLUSHALL` on the run's Redis, as soon as the daemon runs.
    RedisFlush,
    DropStreams,
    RevokeTokens,
    Whmcs(WhmcsWindow),
    WhmcsClear,
    SfLockRow(u32),
    SfUnavailable(u32),
    Poison {
        unknown_schema: bool,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy)]
enum WhmcsWindow {
    Error(WhmcsFaultKind, f64),
    Latency(u64),
    /// Every call answers 503.
    Down,
    /// Every call answers 403 `Authentication Failed`; lifted with `whmcs reset-auth`.
    AuthFailed,
    /// AddOrder commits [`SLOW_COMMIT_MS`] after the request.
    SlowCommit,
}

/// `n` instants spread over `[lo, hi)` of `window`: one per equal slot, uniform in the first
/// `fill` share of it (so whatever follows an instant has the rest of the slot to itself).
/// Returns the instants and the slot length.
fn spread(
    rng: &mut StdRng,
    n: u32,
    window: Duration,
    (lo, hi): (f64, f64),
    fill: f64,
) -> (Vec<Duration>, Duration) {
    let w = window.as_secs_f64();
    let span = (hi - lo) * w / f64::from(n.max(1));
    let at = (0..n)
        .map(|k| {
            let start = lo * w + span * f64::from(k);
            Duration::from_secs_f64(start + rng.random_range(0.0..fill) * span)
        })
        .collect();
    (at, Duration::from_secs_f64(span))
}

/// The fault plan, sorted by time.
fn plan(args: &ChaosArgs, rng: &mut StdRng, window: Duration) -> Vec<(Duration, Action)> {
    let mut p: Vec<(Duration, Action)> = Vec::new();
    // A killed daemon stays down for up to 1.5 s, never past its slot.
    let (kills, slot) = spread(rng, args.kills, window, (0.05, 0.95), 0.6);
    for at in kills {
        p.push((at, Action::Kill));
        let down = rng.random_range(0.0..1.5f64).min(slot.as_secs_f64() * 0.3);
        p.push((at + Duration::from_secs_f64(down), Action::Restart));
    }
    // WHMCS windows: the rotating transient kinds, then outages, authentication failures and
    // slow commits, shuffled by the seed over the slots.
    enum Kind {
        /// The k-th of the five transient kinds.
        Rotating(u32),
        Fixed(WhmcsWindow),
    }
    let offset = rng.random_range(0..5u32);
    let mut kinds: Vec<Kind> = (0..args.whmcs_faults)
        .map(|k| Kind::Rotating((k + offset) % 5))
        .collect();
    kinds.extend((0..args.whmcs_outages).map(|_| Kind::Fixed(WhmcsWindow::Down)));
    kinds.extend((0..args.whmcs_auth_failures).map(|_| Kind::Fixed(WhmcsWindow::AuthFailed)));
    kinds.extend((0..args.whmcs_slow_commits).map(|_| Kind::Fixed(WhmcsWindow::SlowCommit)));
    kinds.shuffle(rng);
    let total = u32::try_from(kinds.len()).unwrap_or(u32::MAX);
    let (windows, slot) = spread(rng, total, window, (0.0, 1.0), 0.5);
    // Authentication windows, widened by a Redis downtime before and a second after: Redis
    // stays up through them, or the latch (kept in Redis) would be lost mid-window.
    let mut guarded: Vec<(Duration, Duration)> = Vec::new();
    for (at, kind) in windows.into_iter().zip(kinds) {
        let kind = match kind {
            Kind::Rotating(k) => match k {
                0 => WhmcsWindow::Error(WhmcsFaultKind::Http500, rng.random_range(0.2..0.4)),
                1 => WhmcsWindow::Error(WhmcsFaultKind::Timeout, rng.random_range(0.05..0.15)),
                2 => WhmcsWindow::Error(WhmcsFaultKind::AfterCommit, rng.random_range(0.2..0.4)),
                3 => {
                    WhmcsWindow::Error(WhmcsFaultKind::CommitThenHang, rng.random_range(0.05..0.15))
                }
                _ => WhmcsWindow::Latency(rng.random_range(300..1500)),
            },
            Kind::Fixed(w) => w,
        };
        // Each window ends before the next slot starts, so windows never overlap. Outages
        // last longer (long enough to open the breaker when the slot allows).
        let (lo, hi) = match kind {
            WhmcsWindow::Down => (4.0, 12.0),
            _ => (2.0, 8.0f64),
        };
        let len = rng.random_range(lo..hi).min(slot.as_secs_f64() * 0.45);
        let end = at + Duration::from_secs_f64(len);
        if matches!(kind, WhmcsWindow::AuthFailed) {
            guarded.push((
                at.saturating_sub(Duration::from_secs(4)),
                end + Duration::from_secs(1),
            ));
        }
        p.push((at, Action::Whmcs(kind)));
        p.push((end, Action::WhmcsClear));
    }
    // Moves an instant out of every guarded span (to its end).
    let clear_of = |mut at: Duration| {
        for (from, to) in &guarded {
            if at >= *from && at < *to {
                at = *to;
            }
        }
        at
    };
    let (stops, slot) = spread(rng, args.redis_restarts, window, (0.2, 0.8), 0.6);
    for at in stops {
        let at = clear_of(at);
        p.push((at, Action::RedisStop));
        let down = rng.random_range(0.5..3.0f64).min(slot.as_secs_f64() * 0.3);
        p.push((at + Duration::from_secs_f64(down), Action::RedisStart));
    }
    for at in spread(rng, args.redis_flushes, window, (0.1, 0.9), 1.0).0 {
        p.push((clear_of(at), Action::RedisFlush));
    }
    for at in spread(rng, args.stream_drops, window, (0.02, 0.98), 1.0).0 {
        p.push((at, Action::DropStreams));
    }
    for at in spread(rng, args.token_revocations, window, (0.02, 0.98), 1.0).0 {
        p.push((at, Action::RevokeTokens));
    }
    for (k, at) in spread(rng, args.sf_faults, window, (0.02, 0.98), 1.0)
        .0
        .into_iter()
        .enumerate()
    {
        let n = rng.random_range(3..15);
        p.push((
            at,
            if k % 2 == 0 {
                Action::SfLockRow(n)
            } else {
                Action::SfUnavailable(n)
            },
        ));
    }
    for (k, at) in spread(rng, args.poison, window, (0.02, 0.98), 1.0)
        .0
        .into_iter()
        .enumerate()
    {
        let len = rng.random_range(1..40);
        let bytes = (0..len).map(|_| rng.random::<u8>()).collect();
        p.push((
            at,
            Action::Poison {
                unknown_schema: k % 3 == 2,
                bytes,
            },
        ));
    }
    // Stable: a restart planned at the same instant as its kill still comes after it.
    p.sort_by_key(|(at, _)| *at);
    p
}

/// The daemon child process, restarted like a container runtime would.
struct Daemon {
    exe: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    http: String,
    child: Option<Child>,
    /// Down on purpose (killed, waiting for its planned restart).
    held_down: bool,
    restart_at: Option<Instant>,
    starts: u32,
    own_exits: Vec<String>,
}

impl Daemon {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.child = Some(child);
        self.held_down = false;
        self.restart_at = None;
        self.starts += 1;
        Ok(())
    }

    async fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.held_down = true;
    }

    /// Restarts a daemon that exited on its own, after [`RESTART_DELAY`].
    fn supervise(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.own_exits
                    .push(format!("at {:.1} s: {status}", elapsed.as_secs_f64()));
                self.child = None;
                self.restart_at = Some(Instant::now() + RESTART_DELAY);
            }
        }
        if self.child.is_none() && !self.held_down {
            match self.restart_at {
                Some(at) if Instant::now() < at => {}
                _ => self.spawn()?,
            }
        }
        Ok(())
    }

    /// SIGTERM and wait (bounded) for the exit status.
    async fn terminate(&mut self, within: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(within, child.wait()).await {
            Ok(Ok(status)) => describe(status),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                format!("still running after {} s (killed)", within.as_secs())
            }
        }
    }

    async fn ready(&self, http: &reqwest::Client) -> bool {
        matches!(
            http.get(format!("{}/health/ready", self.http)).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}

/// `provisioner whmcs reset-auth`, with the daemon's settings, as an operator would run it after
/// fixing the credentials.
async fn reset_auth(daemon: &Daemon) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(&daemon.exe)
            .args(["whmcs", "reset-auth", "--json"])
            .env_clear()
            .envs(daemon.env.iter().cloned())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("whmcs reset-auth did not finish within 30 s")?
    .context("running whmcs reset-auth")?;
    if !out.status.success() {
        bail!(
            "whmcs reset-auth: {}: {}",
            describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit {c}"),
        None => format!("{status}"),
    }
}

/// A `redis-server` of the run's own, without persistence.
struct Redis {
    bin: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (is Redis installed?)", self.bin))?;
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// `FLUSHALL`: every key gone, as after an operator's mistake or a failover to an empty
    /// replica. `false` if Redis did not confirm (not up yet): try again later.
    async fn flushall(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.write_all(b"FLUSHALL\r\n").await?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await?;
            std::io::Result::Ok(&buf == b"+OK\r\n")
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Ok(true))
        )
    }

    async fn ping(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.write_all(b"PING\r\n").await?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await?;
            std::io::Result::Ok(&buf == b"+PONG\r\n")
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Ok(true))
        )
    }

    async fn wait_up(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.ping().await {
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not answer on 127.0.0.1:{} within {} s (see {})",
                    self.port,
                    within.as_secs(),
                    self.dir.join("redis.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The ledger database: a SQLite file in the work dir, or a fresh PostgreSQL schema.
async fn ledger_url(base: Option<&str>, dir: &Path) -> anyhow::Result<(String, Option<String>)> {
    match base {
        None => Ok((format!("sqlite://{}/ledger.db", dir.display()), None)),
        Some(base) => {
            let (url, schema) = create_schema(base, "chaos")
                .await
                .context("--database-url")?;
            Ok((url, Some(schema)))
        }
    }
}

/// One approved order, as the run knows it.
struct Seeded {
    id: SalesforceId,
    unmapped: bool,
    /// Salesforce rejects every write-back of this Order.
    rejected: bool,
    replay_id: Option<String>,
}

/// Runs the whole scenario against `daemon_exe` and returns the audit.
pub async fn run(args: &ChaosArgs, daemon_exe: &Path) -> anyhow::Result<ChaosReport> {
    if args.orders == 0 || args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--orders and --rate must be positive");
    }
    let started = Instant::now();
    let cap = Duration::from_secs(args.duration.max(10));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let dir = std::env::temp_dir().join(format!(
        "provisioner-chaos-{}-{}",
        args.seed,
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let say = |msg: String| {
        if args.progress {
            println!("[{:>7.1} s] {msg}", started.elapsed().as_secs_f64());
        }
    };

    let sim = Simulator::start(SimConfig {
        keepalive_interval: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await
    .context("starting the simulator")?;
    let mut redis = Redis {
        bin: args.redis_server.clone(),
        port: free_port()?,
        dir: dir.clone(),
        child: None,
    };
    redis.spawn()?;
    redis.wait_up(Duration::from_secs(10)).await?;
    let (database_url, schema) = ledger_url(args.database_url.as_deref(), &dir).await?;

    let result = drive(
        args,
        daemon_exe,
        &sim,
        &mut redis,
        &database_url,
        &dir,
        &mut rng,
        started,
        cap,
        &say,
    )
    .await;
    redis.stop().await;
    sim.shutdown().await;
    let mut report = result.with_context(|| format!("logs kept in {}", dir.display()))?;
    report.total_secs = started.elapsed().as_secs_f64();
    let keep = args.keep || !report.ok();
    if keep {
        report.work_dir = Some(dir.display().to_string());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let (Some(base), Some(schema)) = (args.database_url.as_deref(), schema) {
        if keep {
            report.work_dir = Some(format!("{} (ledger: schema {schema})", dir.display()));
        } else {
            let _ = drop_schema(base, &schema).await;
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &ChaosArgs,
    daemon_exe: &Path,
    sim: &SimHandle,
    redis: &mut Redis,
    database_url: &str,
    dir: &Path,
    rng: &mut StdRng,
    started: Instant,
    cap: Duration,
    say: &dyn Fn(String),
) -> anyhow::Result<ChaosReport> {
    let s = &sim.sim;
    // Orders: many WHMCS clients, 1–3 items, a deterministic ~2 % without a product mapping.
    let n = args.orders;
    let unmapped_count =
        ((n as f64 * UNMAPPED_SHARE).round() as usize).clamp(usize::from(n >= 2), n);
    let unmapped: HashSet<usize> = rand::seq::index::sample(rng, n, unmapped_count)
        .into_iter()
        .collect();
    let mut orders: Vec<Seeded> = (0..n)
        .map(|i| {
            let items = (0..rng.random_range(1..=3usize))
                .map(|k| ItemSeed {
                    product_id: if unmapped.contains(&i) && k == 0 {
                        None
                    } else {
                        Some(rng.random_range(1..=20u32).to_string())
                    },
                    billing_cycle: Some(
                        ["monthly", "annually", "quarterly"][rng.random_range(0..3usize)].into(),
                    ),
                    quantity: f64::from(rng.random_range(1..=3u32)),
                })
                .collect();
            let id = s.seed_order(OrderSeed {
                whmcs_client_id: Some((1 + i % 200).to_string()),
                items,
                status: "Draft".into(),
            });
            Seeded {
                id,
                unmapped: unmapped.contains(&i),
                rejected: false,
                replay_id: None,
            }
        })
        .collect();
    // A seeded set of mapped Orders whose every write-back Salesforce rejects.
    let mapped: Vec<usize> = (0..n).filter(|i| !unmapped.contains(i)).collect();
    let rejected_count = args.writeback_rejects.min(mapped.len());
    for k in rand::seq::index::sample(rng, mapped.len(), rejected_count) {
        orders[mapped[k]].rejected = true;
    }
    let base_faults = Faults {
        sf_reject_writeback: orders
            .iter()
            .filter(|o| o.rejected)
            .map(|o| o.id.as_str().to_owned())
            .collect(),
        ..Faults::default()
    };
    s.set_faults(base_faults.clone());
    let window = Duration::from_secs_f64(n as f64 / args.rate);
    let plan = plan(args, rng, window);
    say(format!(
        "seeded {n} orders ({unmapped_count} without a product mapping, {rejected_count} with every write-back rejected); {} faults planned over {:.1} s of approvals; work dir {}",
        plan.len(),
        window.as_secs_f64(),
        dir.display()
    ));

    let http_port = free_port()?;
    let mut env: Vec<(String, String)> = sim
        .daemon_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.extend(
        [
            ("REDIS_URL", redis.url()),
            ("DATABASE_URL", database_url.to_owned()),
            ("QUEUE_NAME", "provisioning".to_owned()),
            ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            (
                "RUST_LOG",
                std::env::var("CHAOS_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env.extend(
        DAEMON_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut daemon = Daemon {
        exe: daemon_exe.to_owned(),
        env,
        log: dir.join("daemon.log"),
        http: format!("http://127.0.0.1:{http_port}"),
        child: None,
        held_down: false,
        restart_at: None,
        starts: 0,
        own_exits: Vec::new(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    daemon.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.ready(&http).await {
        daemon.supervise(started.elapsed())?;
        if Instant::now() >= deadline {
            bail!(
                "the daemon did not become ready within 60 s (see {})",
                daemon.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ledger = Ledger::connect(&DatabaseConfig {
        url: database_url.to_owned(),
        auto_migrate: false,
        max_connections: 2,
    })
    .await
    .context("opening the ledger")?;
    say(format!("daemon ready at {}; approving", daemon.http));

    // Approvals at a steady rate, faults as planned.
    let mut report = ChaosReport {
        seed: args.seed,
        orders: n,
        unmapped_orders: unmapped_count,
        writeback_rejects_seeded: rejected_count,
        ..ChaosReport::default()
    };
    // WHMCS requests counted when the open authentication window began.
    let mut auth_window_from: Option<u64> = None;
    let mut auth_calls: Vec<u64> = Vec::new();
    let mut flushes_due = 0u32;
    let inj = &mut report.injected;
    let t0 = Instant::now();
    let mut approved = 0usize;
    let mut next = 0usize;
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let now = t0.elapsed();
        let due = ((now.as_secs_f64() * args.rate) as usize).min(n);
        while approved < due {
            let o = &mut orders[approved];
            o.replay_id = Some(hex::encode(s.approve(&o.id)));
            approved += 1;
        }
        while next < plan.len() && plan[next].0 <= now {
            let (_, action) = &plan[next];
            next += 1;
            match action {
                Action::Kill => {
                    daemon.sigkill().await;
                    inj.kills += 1;
                    say(format!("SIGKILL daemon ({} of {})", inj.kills, args.kills));
                }
                Action::Restart if daemon.child.is_none() => daemon.spawn()?,
                Action::Restart => {}
                Action::RedisStop => {
                    redis.stop().await;
                    inj.redis_restarts += 1;
                    say("Redis killed (queued jobs are gone)".into());
                }
                Action::RedisStart if redis.child.is_none() => {
                    redis.spawn()?;
                    say("Redis started again, empty".into());
                }
                Action::RedisStart => {}
                Action::RedisFlush => flushes_due += 1,
                Action::DropStreams => {
                    s.drop_streams();
                    inj.stream_drops += 1;
                }
                Action::RevokeTokens => {
                    s.revoke_tokens();
                    inj.token_revocations += 1;
                }
                Action::Whmcs(w) => {
                    let mut f = s.faults();
                    f.seed = rng.random();
                    match *w {
                        WhmcsWindow::Error(kind, rate) => {
                            f.whmcs_error_kind = kind;
                            f.whmcs_error_rate = rate;
                            match kind {
                                WhmcsFaultKind::Http500 => inj.whmcs_5xx_windows += 1,
                                WhmcsFaultKind::Timeout => inj.whmcs_timeout_windows += 1,
                                WhmcsFaultKind::AfterCommit => inj.whmcs_after_commit_windows += 1,
                                WhmcsFaultKind::CommitThenHang => {
                                    inj.whmcs_commit_then_timeout_windows += 1;
                                }
                            }
                        }
                        WhmcsWindow::Latency(ms) => {
                            f.whmcs_latency_ms = ms;
                            inj.whmcs_latency_windows += 1;
                        }
                        WhmcsWindow::Down => {
                            f.whmcs_down = true;
                            inj.whmcs_outage_windows += 1;
                            say("WHMCS down (503)".into());
                        }
                        WhmcsWindow::AuthFailed => {
                            auth_window_from = Some(s.totals().whmcs_requests);
                            f.whmcs_auth_failed = true;
                            inj.whmcs_auth_failure_windows += 1;
                            say("WHMCS rejects the credentials (403)".into());
                        }
                        WhmcsWindow::SlowCommit => {
                            f.whmcs_slow_commit_ms = SLOW_COMMIT_MS;
                            inj.whmcs_slow_commit_windows += 1;
                        }
                    }
                    s.set_faults(f);
                }
                Action::WhmcsClear => {
                    let calls = auth_window_from
                        .take()
                        .map(|from| s.totals().whmcs_requests - from);
                    let mut f = s.faults();
                    f.whmcs_error_rate = 0.0;
                    f.whmcs_latency_ms = 0;
                    f.whmcs_down = false;
                    f.whmcs_auth_failed = false;
                    f.whmcs_slow_commit_ms = 0;
                    s.set_faults(f);
                    if let Some(calls) = calls {
                        auth_calls.push(calls);
                        // The operator fixed the credentials and lifts the latch.
                        match reset_auth(&daemon).await {
                            Ok(()) => {
                                inj.whmcs_auth_resets += 1;
                                say(format!(
                                    "WHMCS accepts the credentials again ({calls} WHMCS requests in the window); whmcs reset-auth run"
                                ));
                            }
                            Err(e) => say(format!("whmcs reset-auth failed: {e:#}")),
                        }
                    }
                }
                Action::SfLockRow(k) => {
                    let mut f = s.faults();
                    f.sf_lock_row_next += k;
                    s.set_faults(f);
                    inj.sf_lock_row_calls += k;
                }
                Action::SfUnavailable(k) => {
                    let mut f = s.faults();
                    f.sf_unavailable_next += k;
                    s.set_faults(f);
                    inj.sf_unavailable_calls += k;
                }
                Action::Poison {
                    unknown_schema,
                    bytes,
                } => {
                    let schema = if *unknown_schema {
                        "UnknownSchemaId0000000".to_owned()
                    } else {
                        s.schema_id()
                    };
                    s.publish_raw(&schema, bytes.clone());
                    inj.poison_events += 1;
                }
            }
        }
        if flushes_due > 0
            && daemon.child.is_some()
            && redis.child.is_some()
            && redis.flushall().await
        {
            flushes_due -= 1;
            inj.redis_flushes += 1;
            say("Redis FLUSHALL (queued jobs, leases, run markers and latches are gone)".into());
        }
        daemon.supervise(started.elapsed())?;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let (a, f) = terminal_counts(s, &orders);
            say(format!(
                "approved {approved}/{n}: {a} activated, {f} failed; {} faults fired, {} daemon starts",
                next, daemon.starts
            ));
        }
        if approved == n && next == plan.len() {
            break;
        }
        if started.elapsed() >= cap {
            say("duration cap reached during the approvals".into());
            break;
        }
    }
    report.approve_secs = t0.elapsed().as_secs_f64();
    report.whmcs_calls_per_auth_window = auth_calls;

    // Lift every fault (the write-back rejections stay: they are the Orders' own) and let the
    // daemon settle.
    s.set_faults(base_faults);
    if redis.child.is_none() {
        redis.spawn()?;
        redis.wait_up(Duration::from_secs(10)).await?;
    }
    if daemon.child.is_none() {
        daemon.spawn()?;
    }
    if report.injected.whmcs_auth_failure_windows > report.injected.whmcs_auth_resets {
        // A window the cap cut short: lift its latch too.
        if reset_auth(&daemon).await.is_ok() {
            report.injected.whmcs_auth_resets += 1;
        }
    }
    for _ in 0..flushes_due {
        if redis.flushall().await {
            report.injected.redis_flushes += 1;
        }
    }
    say("all faults lifted; waiting for the daemon to settle".into());
    let settle = Instant::now();
    let tip = s.latest_replay_id().map(hex::encode);
    loop {
        daemon.supervise(started.elapsed())?;
        let (a, f) = terminal_counts(s, &orders);
        // Orders whose write-back Salesforce refused for good are finished in the ledger.
        let rejected: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE state = $1")
            .bind(provisioner::ledger::state::WRITEBACK_REJECTED)
            .fetch_one(ledger.pool())
            .await
            .unwrap_or(0);
        let finished = a + f + usize::try_from(rejected).unwrap_or(0);
        if finished == n {
            let cursor = ledger
                .load_cursor(&sim.topic)
                .await
                .ok()
                .flatten()
                .map(hex::encode);
            // A job cut off by a kill finishes its ledger row only when it runs again.
            let open: Option<i64> =
                sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE outcome IS NULL")
                    .fetch_one(ledger.pool())
                    .await
                    .ok();
            if cursor == tip && open == Some(0) {
                report.settled = true;
                break;
            }
        }
        if started.elapsed() >= cap {
            say("duration cap reached while settling".into());
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            say(format!(
                "settling: {a} activated, {f} failed, {rejected} writeback_rejected, {} not finished",
                n.saturating_sub(finished)
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.settle_secs = settle.elapsed().as_secs_f64();
    report.final_stop = daemon.terminate(Duration::from_secs(30)).await;
    report.daemon_starts = daemon.starts;
    report.daemon_exits_on_its_own = daemon.own_exits.clone();
    say(format!("daemon stopped ({}); auditing", report.final_stop));
    audit(&mut report, s, &ledger, &sim.topic, &orders).await?;
    ledger.pool().close().await;
    Ok(report)
}

fn terminal_counts(s: &Simulator, orders: &[Seeded]) -> (usize, usize) {
    let (mut a, mut f) = (0, 0);
    for o in orders {
        match s.order(&o.id).and_then(|o| o.activation_status).as_deref() {
            Some("Activated") => a += 1,
            Some("Failed") => f += 1,
            _ => {}
        }
    }
    (a, f)
}

/// Ledger view of one Order.
struct LedgerRow {
    state: String,
    outcome: Option<String>,
    whmcs_order_id: Option<i64>,
}

async fn audit(
    r: &mut ChaosReport,
    s: &Simulator,
    ledger: &Ledger,
    channel: &str,
    orders: &[Seeded],
) -> anyhow::Result<()> {
    let rows: HashMap<String, LedgerRow> =
        sqlx::query("SELECT sf_order_id, state, outcome, whmcs_order_id FROM orders")
            .fetch_all(ledger.pool())
            .await
            .context("reading the ledger's orders")?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("sf_order_id")?,
                    LedgerRow {
                        state: row.try_get("state")?,
                        outcome: row.try_get("outcome")?,
                        whmcs_order_id: row.try_get("whmcs_order_id")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
    let mut inbox: HashMap<String, String> = HashMap::new();
    for row in sqlx::query("SELECT replay_id, status FROM event_inbox")
        .fetch_all(ledger.pool())
        .await
        .context("reading the ledger's inbox")?
    {
        inbox.insert(row.try_get("replay_id")?, row.try_get("status")?);
    }
    r.poison_recorded = inbox.values().filter(|st| *st == "poison").count();
    let reconciled: i64 = sqlx::query(
        "SELECT COUNT(DISTINCT sf_order_id) AS n FROM attempts WHERE event_id LIKE 'reconcile:%'",
    )
    .fetch_one(ledger.pool())
    .await
    .context("reading the ledger's attempts")?
    .try_get("n")?;
    r.reconciled_orders = usize::try_from(reconciled).unwrap_or_default();
    r.cursor = ledger.load_cursor(channel).await?.map(hex::encode);
    r.last_published_replay_id = s.latest_replay_id().map(hex::encode);

    let mut examples: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut note = |kind: &'static str, text: String| {
        let v = examples.entry(kind).or_default();
        if v.len() < 3 {
            v.push(text);
        }
    };
    for o in orders {
        let Some(sf) = s.order(&o.id) else {
            continue;
        };
        let whmcs = s.whmcs_orders_for(&o.id);
        let row = rows.get(o.id.as_str());
        r.whmcs_orders += whmcs.len();
        if whmcs.len() > 1 {
            r.duplicate_add_orders += 1;
            note(
                "duplicate",
                format!(
                    "{} has WHMCS orders {:?}",
                    o.id,
                    whmcs.iter().map(|w| w.id).collect::<Vec<_>>()
                ),
            );
        }
        let in_inbox = o
            .replay_id
            .as_ref()
            .is_some_and(|rid| inbox.contains_key(rid));
        if !in_inbox {
            r.lost_events += 1;
            note("lost", format!("{} (replay id {:?})", o.id, o.replay_id));
        }
        match sf.activation_status.as_deref() {
            Some("Activated") => {
                r.activated += 1;
                if whmcs.len() == 1 {
                    r.activated_with_one_whmcs_order += 1;
                } else {
                    note(
                        "activated",
                        format!("{} Activated with {} WHMCS orders", o.id, whmcs.len()),
                    );
                }
                let agrees = row.is_some_and(|l| {
                    l.outcome.as_deref() == Some(provisioner::ledger::outcome::PROVISIONED)
                        && l.whmcs_order_id.map(|v| v.to_string()) == sf.whmcs_order_id
                }) && whmcs.first().map(|w| w.id.to_string()) == sf.whmcs_order_id;
                if !agrees {
                    r.ledger_mismatches += 1;
                    note(
                        "mismatch",
                        format!(
                            "{}: Salesforce Activated with WHMCS order {:?}, ledger {:?}",
                            o.id,
                            sf.whmcs_order_id,
                            row.map(|l| (&l.state, &l.outcome, l.whmcs_order_id))
                        ),
                    );
                }
                if o.unmapped {
                    note(
                        "unmapped",
                        format!("{} has no product mapping but was Activated", o.id),
                    );
                }
            }
            Some("Failed") => {
                let code = sf.error_code.clone().unwrap_or_else(|| "(no code)".into());
                *r.failed_by_code.entry(code.clone()).or_default() += 1;
                if !BUSINESS_CODES.contains(&code.as_str()) {
                    r.failed_by_outage += 1;
                    note("outage", format!("{} Failed with {code}", o.id));
                }
                if whmcs.len() > 1 {
                    r.failed_with_several_whmcs_orders += 1;
                }
                if o.unmapped {
                    if code == UNMAPPED_CODE && whmcs.is_empty() {
                        r.unmapped_failed_as_expected += 1;
                    } else {
                        note(
                            "unmapped",
                            format!(
                                "{} failed with {code} and {} WHMCS orders",
                                o.id,
                                whmcs.len()
                            ),
                        );
                    }
                } else {
                    r.mapped_failed += 1;
                }
                let agrees = row.is_some_and(|l| {
                    l.outcome.as_deref() == Some(provisioner::ledger::outcome::FAILED)
                });
                if !agrees || sf.error_message.as_deref().is_none_or(str::is_empty) {
                    r.ledger_mismatches += 1;
                    note(
                        "mismatch",
                        format!(
                            "{}: Salesforce Failed ({code}), ledger {:?}",
                            o.id,
                            row.map(|l| (&l.state, &l.outcome))
                        ),
                    );
                }
            }
            _ if row.is_some_and(|l| l.state == provisioner::ledger::state::WRITEBACK_REJECTED) => {
                // Finished: Salesforce refused the write-back for good; the ledger keeps it.
                r.writeback_rejected += 1;
                let provisioned = row.is_some_and(|l| {
                    l.outcome.as_deref() == Some(provisioner::ledger::outcome::PROVISIONED)
                        && l.whmcs_order_id.is_some()
                        && l.whmcs_order_id.and_then(|v| u64::try_from(v).ok())
                            == whmcs.first().map(|w| w.id)
                });
                if o.rejected && whmcs.len() == 1 && provisioned {
                    r.writeback_rejected_as_expected += 1;
                } else {
                    note(
                        "writeback",
                        format!(
                            "{} writeback_rejected (seeded: {}) with {} WHMCS orders, ledger {:?}",
                            o.id,
                            o.rejected,
                            whmcs.len(),
                            row.map(|l| (&l.outcome, l.whmcs_order_id))
                        ),
                    );
                }
            }
            other => {
                if row.is_some() {
                    r.stuck_activating += 1;
                } else {
                    r.stuck_untouched += 1;
                }
                note(
                    "stuck",
                    format!(
                        "{} is {:?}, ledger {:?}",
                        o.id,
                        other,
                        row.map(|l| (&l.state, &l.outcome))
                    ),
                );
            }
        }
        r.add_order_calls += s.counts(&o.id).add_order;
    }
    let totals = s.totals();
    r.soql_per_order = totals.soql as f64 / orders.len() as f64;
    r.patch_per_order = totals.patch as f64 / orders.len() as f64;

    let v = &mut r.violations;
    let stuck = r.stuck_activating + r.stuck_untouched;
    if stuck > 0 {
        v.push(format!(
            "{stuck} orders stuck ({} worked on, {} never touched)",
            r.stuck_activating, r.stuck_untouched
        ));
    }
    if r.failed_by_outage > 0 {
        v.push(format!(
            "{} Orders Failed with a code that is not a business answer",
            r.failed_by_outage
        ));
    }
    if r.writeback_rejected != r.writeback_rejects_seeded
        || r.writeback_rejected_as_expected != r.writeback_rejects_seeded
    {
        v.push(format!(
            "{} Orders ended writeback_rejected ({} of them seeded and provisioned once), {} seeded",
            r.writeback_rejected, r.writeback_rejected_as_expected, r.writeback_rejects_seeded
        ));
    }
    for (k, calls) in r.whmcs_calls_per_auth_window.iter().enumerate() {
        if *calls > AUTH_WINDOW_MAX_CALLS {
            v.push(format!(
                "{calls} WHMCS requests during authentication-failure window {} (at most {AUTH_WINDOW_MAX_CALLS})",
                k + 1
            ));
        }
    }
    if r.injected.whmcs_auth_resets != r.injected.whmcs_auth_failure_windows {
        v.push(format!(
            "whmcs reset-auth succeeded {} times for {} authentication-failure windows",
            r.injected.whmcs_auth_resets, r.injected.whmcs_auth_failure_windows
        ));
    }
    if r.activated_with_one_whmcs_order != r.activated {
        v.push(format!(
            "{} Activated orders do not have exactly one WHMCS order",
            r.activated - r.activated_with_one_whmcs_order
        ));
    }
    if r.failed_with_several_whmcs_orders > 0 {
        v.push(format!(
            "{} Failed orders have more than one WHMCS order",
            r.failed_with_several_whmcs_orders
        ));
    }
    if r.unmapped_failed_as_expected != r.unmapped_orders {
        v.push(format!(
            "{} of {} orders without a product mapping did not fail cleanly with {UNMAPPED_CODE}",
            r.unmapped_orders - r.unmapped_failed_as_expected,
            r.unmapped_orders
        ));
    }
    if r.lost_events > 0 {
        v.push(format!(
            "{} approval events never reached the inbox",
            r.lost_events
        ));
    }
    if r.duplicate_add_orders > 0 {
        v.push(format!(
            "{} Salesforce Orders have more than one WHMCS order",
            r.duplicate_add_orders
        ));
    }
    if r.poison_recorded != r.injected.poison_events as usize {
        v.push(format!(
            "{} poison events recorded, {} injected",
            r.poison_recorded, r.injected.poison_events
        ));
    }
    if r.cursor != r.last_published_replay_id {
        v.push("the stored cursor is not the last published replay id".into());
    }
    if r.ledger_mismatches > 0 {
        v.push(format!(
            "{} orders: ledger and Salesforce disagree",
            r.ledger_mismatches
        ));
    }
    if r.final_stop != "exit 0" {
        v.push(format!(
            "the daemon did not stop cleanly on SIGTERM: {}",
            r.final_stop
        ));
    }
    r.examples = examples.into_values().flatten().collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_a_function_of_the_seed() {
        let args = ChaosArgs::default();
        let w = Duration::from_secs(100);
        let a = plan(&args, &mut StdRng::seed_from_u64(7), w);
        let b = plan(&args, &mut StdRng::seed_from_u64(7), w);
        let c = plan(&args, &mut StdRng::seed_from_u64(8), w);
        let times = |p: &[(Duration, Action)]| p.iter().map(|(t, _)| *t).collect::<Vec<_>>();
        assert_eq!(times(&a), times(&b));
        assert_ne!(times(&a), times(&c));
        let kills = a.iter().filter(|(_, x)| matches!(x, Action::Kill)).count();
        let restarts = a
            .iter()
            .filter(|(_, x)| matches!(x, Action::Restart))
            .count();
        assert_eq!((kills, restarts), (10, 10));
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "sorted");
        assert!(a.iter().all(|(t, _)| *t < w + Duration::from_secs(10)));
    }

    #[test]
    fn every_kill_is_followed_by_its_restart_and_windows_do_not_overlap() {
        let args = ChaosArgs::default();
        let p = plan(
            &args,
            &mut StdRng::seed_from_u64(3),
            Duration::from_secs(60),
        );
        let mut down = false;
        let mut open = false;
        for (_, a) in &p {
            match a {
                Action::Kill => {
                    assert!(!down, "a kill while down");
                    down = true;
                }
                Action::Restart => {
                    assert!(down, "a restart while up");
                    down = false;
                }
                Action::Whmcs(_) => {
                    assert!(!open, "overlapping WHMCS windows");
                    open = true;
                }
                Action::WhmcsClear => open = false,
                _ => {}
            }
        }
        assert!(!down && !open);
    }

    #[test]
    fn defaults_match_the_documented_run() {
        let a = ChaosArgs::default();
        assert_eq!((a.orders, a.kills, a.redis_restarts), (5000, 10, 1));
        assert!(a.progress);
    }
}
