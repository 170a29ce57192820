//! `provisioner-lab bench`: the figures users care about, measured end to end on this machine.
//!
//! The driver runs the simulator in-process (with the latency `--sf-latency` and
//! `--whmcs-latency` give every call, fixed or uniform in a range; none by default) and the
//! daemon as a child process (this very binary, `serve`), so the daemon's CPU seconds
//! (`/proc/<pid>/stat`) and memory (`/proc/<pid>/status`) are its own. Redis and the ledger database are real. For each
//! ledger (SQLite, PostgreSQL) it measures:
//!
//! - start-up time to a subscribed stream (`/health/sf-events` state `connected`) and idle RSS;
//! - approval → write-back latency at a steady rate and at saturation (approval time taken when
//!   the simulator publishes the event, write-back time recorded by the simulator on the PATCH);
//! - pipeline throughput for N orders, first approval → last write-back;
//! - daemon CPU seconds per 1,000 orders and peak RSS;
//! - Salesforce REST and WHMCS calls per order (simulator counters);
//! - the order-status API with keep-alive connections, 200 and 304 paths (a small HTTP/1.1 load
//!   generator in this module, loopback only, bounded in time and count);
//! - catch-up: events retained before the daemon starts → time to drain, peak RSS.
//!
//! Repeated figures are medians over `--runs`. Everything it creates is its own: a unique queue
//! name (its Redis keys are deleted at the end), a temporary SQLite file or a PostgreSQL schema
//! (dropped at the end). Results are printed as a table and written as JSON.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use provisioner_sim::{OrderSeed, RecordId as SalesforceId, SimConfig, SimHandle, Simulator};

use crate::support::{self, create_schema, daemon_exe, drop_schema};

/// Which ledger a benchmark section runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDb {
    Sqlite,
    Postgres,
}

impl BenchDb {
    fn name(self) -> &'static str {
        match self {
            BenchDb::Sqlite => "sqlite",
            BenchDb::Postgres => "postgres",
        }
    }
}

/// Options of `provisioner-lab bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The `provisioner` binary to run (default: `$PROVISIONER_BIN`, else the one built beside
    /// this program).
    #[arg(long)]
    pub daemon: Option<PathBuf>,
    /// Orders per saturation run (throughput is first approval → last write-back).
    #[arg(long, default_value_t = 5000)]
    pub orders: usize,
    /// Repetitions of each quick figure (start-up, steady latency, saturation, API); medians
    /// are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/latest.json")]
    pub json: PathBuf,
    /// Ledgers to benchmark (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub db: Vec<BenchDb>,
    /// Redis for the daemon's queue (a unique queue name is used and cleaned up).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PostgreSQL server for the PostgreSQL ledger (a fresh schema is created and dropped).
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
    /// Approvals per second of the steady-rate latency run.
    #[arg(long, default_value_t = 100)]
    pub steady_rate: u32,
    /// Seconds of each steady-rate run.
    #[arg(long, default_value_t = 10)]
    pub steady_secs: u64,
    /// Seconds of each order-status API run (0 skips the order-status API runs).
    #[arg(long, default_value_t = 5)]
    pub api_secs: u64,
    /// Concurrent keep-alive connections of the order-status API load.
    #[arg(long, default_value_t = 32)]
    pub api_connections: usize,
    /// Events retained before the daemon starts, for the catch-up run (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub catchup_events: usize,
    /// `RUST_LOG` of the daemon (its logs go to a file next to the JSON results).
    #[arg(long, default_value = "info")]
    pub daemon_log: String,
    /// Extra daemon setting, `KEY=VALUE` (repeatable), e.g. `--daemon-env WORKER_CONCURRENCY=16`.
    #[arg(long = "daemon-env", value_parser = parse_key_value)]
    pub daemon_env: Vec<(String, String)>,
    /// Latency the simulator adds to every Salesforce call (REST and OAuth): fixed (`100ms`)
    /// or uniform in a range (`50..200ms`).
    #[arg(long, default_value = "0ms", value_parser = parse_latency)]
    pub sf_latency: Latency,
    /// Latency the simulator adds to every WHMCS call: fixed (`300ms`) or uniform in a range
    /// (`200..800ms`).
    #[arg(long, default_value = "0ms", value_parser = parse_latency)]
    pub whmcs_latency: Latency,
}

/// A simulated dependency's latency: `min_ms`, or uniform in `min_ms..=max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.max_ms > self.min_ms {
            write!(f, "{}..{}ms", self.min_ms, self.max_ms)
        } else {
            write!(f, "{}ms", self.min_ms)
        }
    }
}

/// `100ms`, `1s`, `50..200ms`, `0` (milliseconds when no unit is given).
pub fn parse_latency(s: &str) -> Result<Latency, String> {
    let s = s.trim();
    let (body, factor) = if let Some(b) = s.strip_suffix("ms") {
        (b, 1)
    } else if let Some(b) = s.strip_suffix('s') {
        (b, 1000)
    } else {
        (s, 1)
    };
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map(|v| v * factor)
            .map_err(|_| format!("expected a latency such as 100ms or 50..200ms, got {s:?}"))
    };
    let (min_ms, max_ms) = match body.split_once("..") {
        Some((a, b)) => (ms(a)?, ms(b)?),
        None => {
            let v = ms(body)?;
            (v, v)
        }
    };
    if max_ms < min_ms {
        return Err(format!("the range {s:?} ends below its start"));
    }
    Ok(Latency { min_ms, max_ms })
}

/// A simulator with the benchmark's latencies.
async fn start_sim(args: &BenchArgs) -> anyhow::Result<SimHandle> {
    let sim = Simulator::start(SimConfig::default()).await?;
    let mut faults = sim.sim.faults();
    faults.sf_latency_ms = args.sf_latency.min_ms;
    faults.sf_latency_max_ms = args.sf_latency.max_ms;
    faults.whmcs_latency_ms = args.whmcs_latency.min_ms;
    faults.whmcs_latency_max_ms = args.whmcs_latency.max_ms;
    sim.sim.set_faults(faults);
    Ok(sim)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The HS256 secret the benchmark's daemon accepts portal tokens with.
const PORTAL_SECRET: &str = "bench-portal-secret-0123456789abcdef";
/// Longest wait for any one phase to finish.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// Runs the benchmark; exit 0 when every phase completed.
pub async fn run(args: BenchArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(mut args: BenchArgs) -> anyhow::Result<()> {
    args.runs = args.runs.max(1);
    args.orders = args.orders.max(1);
    let exe = daemon_exe(args.daemon.as_deref())?;
    let out_dir = args
        .json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let machine = machine_info();
    println!(
        "provisioner bench: {} orders per saturation run, {} runs, ledgers {:?}",
        args.orders,
        args.runs,
        args.db.iter().map(|d| d.name()).collect::<Vec<_>>()
    );
    println!(
        "simulated latency: Salesforce {}, WHMCS {}",
        args.sf_latency, args.whmcs_latency
    );
    println!(
        "machine: {} cores, {}",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?")
    );
    let mut results = BTreeMap::new();
    for db in args.db.clone() {
        println!("\n== {} ledger ==", db.name());
        let section = bench_db(&args, &exe, &out_dir, db)
            .await
            .with_context(|| format!("{} ledger", db.name()))?;
        results.insert(db.name().to_owned(), section);
    }
    let report = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine,
        "settings": {
            "orders": args.orders,
            "runs": args.runs,
            "steady_rate": args.steady_rate,
            "steady_secs": args.steady_secs,
            "api_secs": args.api_secs,
            "api_connections": args.api_connections,
            "catchup_events": args.catchup_events,
            "daemon_log": args.daemon_log,
            "sf_latency": args.sf_latency.to_string(),
            "whmcs_latency": args.whmcs_latency.to_string(),
            "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "results": results,
    });
    print_table(&report);
    std::fs::write(&args.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nresults written to {}", args.json.display());
    Ok(())
}

// ── one ledger ───────────────────────────────────────────────────────────────────────────────

async fn bench_db(
    args: &BenchArgs,
    exe: &Path,
    out_dir: &Path,
    db: BenchDb,
) -> anyhow::Result<Value> {
    let sim = start_sim(args).await?;
    let mut cleanup = Cleanup::default();
    let result = bench_db_inner(args, exe, out_dir, db, &sim, &mut cleanup).await;
    sim.shutdown().await;
    cleanup.run(&args.redis_url).await;
    result
}

async fn bench_db_inner(
    args: &BenchArgs,
    exe: &Path,
    out_dir: &Path,
    db: BenchDb,
    sim: &SimHandle,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Value> {
    // Start-up and idle memory: `runs` fresh daemons (fresh ledger and queue); the last one
    // stays up for the load phases.
    let mut startups = Vec::new();
    let mut idle_rss = Vec::new();
    let mut daemon = None;
    for run in 0..args.runs {
        if let Some(d) = daemon.take() {
            Daemon::stop(d).await;
        }
        let d = Daemon::spawn(args, exe, out_dir, db, sim, cleanup, &[]).await?;
        let startup = d.wait_subscribed(Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = d.mem()?.rss_mb;
        println!(
            "start-up run {}: subscribed after {:.0} ms, idle RSS {rss:.1} MB",
            run + 1,
            startup.as_secs_f64() * 1e3
        );
        startups.push(startup.as_secs_f64() * 1e3);
        idle_rss.push(rss);
        daemon = Some(d);
    }
    let Some(daemon) = daemon else {
        bail!("no daemon started");
    };

    let mut out = json!({
        "startup_ms": median(&startups),
        "idle_rss_mb": median(&idle_rss),
    });

    // Steady rate.
    let mut steady = Vec::new();
    for run in 0..args.runs {
        let n = (u64::from(args.steady_rate) * args.steady_secs) as usize;
        let r = pipeline_run(sim, &daemon, n.max(1), Some(args.steady_rate)).await?;
        println!(
            "steady {}/s run {}: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, CPU {:.3} s/1000",
            args.steady_rate,
            run + 1,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.cpu_per_1000
        );
        steady.push(r);
    }
    out["steady"] = summarize(&steady);

    // Saturation.
    let mut sat = Vec::new();
    for run in 0..args.runs {
        let r = pipeline_run(sim, &daemon, args.orders, None).await?;
        println!(
            "saturation run {}: {:.0} orders/s, p50 {:.1} ms, p99 {:.1} ms, CPU {:.3} s/1000, \
             {:.1} ctx switches/order, SF {:.2}/order, WHMCS {:.2}/order",
            run + 1,
            r.throughput,
            r.p50_ms,
            r.p99_ms,
            r.cpu_per_1000,
            r.ctx_per_order,
            r.sf_calls_per_order,
            r.whmcs_calls_per_order
        );
        sat.push(r);
    }
    out["saturation"] = summarize(&sat);
    let mem = daemon.mem()?;
    out["peak_rss_mb"] = json!(mem.hwm_mb);
    tokio::time::sleep(Duration::from_secs(2)).await;
    out["rss_after_load_mb"] = json!(daemon.mem()?.rss_mb);

    // Order-status API (`--api-secs 0` skips it: not even the requests that fetch the ETags).
    if args.api_secs > 0 {
        let ids = sat.last().map(|r| r.ids.clone()).unwrap_or_default();
        let account = ids
            .first()
            .and_then(|id| sim.sim.order(id))
            .map(|o| o.account_id.to_string())
            .context("no order to query")?;
        let token = portal_token(&account)?;
        let sample: Vec<SalesforceId> = ids.iter().take(1000).cloned().collect();
        let mut api200 = Vec::new();
        let mut api304 = Vec::new();
        for run in 0..args.runs {
            for (revalidate, all) in [(false, &mut api200), (true, &mut api304)] {
                let cpu0 = daemon.cpu_secs()?;
                let mut r = api_run(
                    daemon.addr,
                    &sample,
                    &token,
                    revalidate,
                    args.api_connections,
                    Duration::from_secs(args.api_secs),
                )
                .await?;
                r.daemon_us_per_request =
                    (daemon.cpu_secs()? - cpu0) * 1e6 / (r.requests.max(1) as f64);
                println!(
                    "order-status API {} run {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, \
                     daemon CPU {:.1} us/request",
                    if revalidate { "304" } else { "200" },
                    run + 1,
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    r.daemon_us_per_request
                );
                all.push(r);
            }
        }
        out["api_200"] = summarize_api(&api200);
        out["api_304"] = summarize_api(&api304);
    }
    out["daemon_cpu_s_total"] = json!(daemon.cpu_secs()?);
    Daemon::stop(daemon).await;

    // Catch-up: a fresh simulator whose topic already retains the events.
    if args.catchup_events > 0 {
        let csim = start_sim(args).await?;
        let r = catchup_run(args, exe, out_dir, db, &csim, cleanup).await;
        csim.shutdown().await;
        let r = r?;
        let f = |k: &str| r[k].as_f64().unwrap_or_default();
        println!(
            "catch-up {} events: drained in {:.1} s ({:.0} orders/s), peak RSS {:.1} MB",
            args.catchup_events,
            f("drain_s"),
            f("orders_per_s"),
            f("peak_rss_mb")
        );
        out["catchup"] = r;
    }
    Ok(out)
}

/// One pipeline measurement: `n` orders approved at `rate` per second (or all at once).
struct PipelineRun {
    ids: Vec<SalesforceId>,
    throughput: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_per_1000: f64,
    ctx_per_order: f64,
    sf_calls_per_order: f64,
    whmcs_calls_per_order: f64,
    not_activated: usize,
}

async fn pipeline_run(
    sim: &SimHandle,
    daemon: &Daemon,
    n: usize,
    rate: Option<u32>,
) -> anyhow::Result<PipelineRun> {
    let ids: Vec<SalesforceId> = (0..n)
        .map(|_| sim.sim.seed_order(OrderSeed::default()))
        .collect();
    let before = sim.sim.totals();
    let cpu0 = daemon.cpu_secs()?;
    let ctx0 = daemon.ctx_switches();
    let mut approved = Vec::with_capacity(n);
    match rate {
        None => {
            for id in &ids {
                approved.push(Instant::now());
                sim.sim.approve(id);
            }
        }
        Some(rate) => {
            let start = tokio::time::Instant::now();
            let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            for (i, id) in ids.iter().enumerate() {
                tokio::time::sleep_until(start + every * i as u32).await;
                approved.push(Instant::now());
                sim.sim.approve(id);
            }
        }
    }
    let done = wait_written_back(sim, &ids).await?;
    let cpu = daemon.cpu_secs()? - cpu0;
    let ctx = daemon.ctx_switches().saturating_sub(ctx0);
    let after = sim.sim.totals();
    let mut lat: Vec<f64> = done
        .iter()
        .zip(&approved)
        .map(|(d, a)| d.saturating_duration_since(*a).as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(f64::total_cmp);
    let first = approved.first().copied().unwrap_or_else(Instant::now);
    let last = done.iter().max().copied().unwrap_or(first);
    let span = last.saturating_duration_since(first).as_secs_f64();
    let not_activated = ids
        .iter()
        .filter(|id| {
            sim.sim
                .order(id)
                .and_then(|o| o.activation_status)
                .as_deref()
                != Some("Activated")
        })
        .count();
    let nf = n as f64;
    Ok(PipelineRun {
        throughput: if span > 0.0 { nf / span } else { 0.0 },
        p50_ms: percentile(&lat, 50.0),
        p95_ms: percentile(&lat, 95.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or_default(),
        cpu_per_1000: cpu / nf * 1000.0,
        ctx_per_order: ctx as f64 / nf,
        sf_calls_per_order: (after.rest_calls - before.rest_calls) as f64 / nf,
        whmcs_calls_per_order: (after.whmcs_calls - before.whmcs_calls) as f64 / nf,
        not_activated,
        ids,
    })
}

/// Waits until every Order took its write-back PATCH; returns the PATCH times.
async fn wait_written_back(sim: &SimHandle, ids: &[SalesforceId]) -> anyhow::Result<Vec<Instant>> {
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        let at = sim.sim.patched_at(ids);
        if at.iter().all(Option::is_some) {
            return Ok(at.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            let missing = at.iter().filter(|a| a.is_none()).count();
            bail!(
                "{missing} of {} orders not written back within {PHASE_LIMIT:?}",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn summarize(runs: &[PipelineRun]) -> Value {
    let m = |f: fn(&PipelineRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    json!({
        "orders_per_run": runs.first().map(|r| r.ids.len()).unwrap_or_default(),
        "runs": runs.len(),
        "throughput_orders_per_s": m(|r| r.throughput),
        "latency_ms": {
            "p50": m(|r| r.p50_ms),
            "p95": m(|r| r.p95_ms),
            "p99": m(|r| r.p99_ms),
            "max": m(|r| r.max_ms),
        },
        "cpu_s_per_1000_orders": m(|r| r.cpu_per_1000),
        "context_switches_per_order": m(|r| r.ctx_per_order),
        "sf_calls_per_order": m(|r| r.sf_calls_per_order),
        "whmcs_calls_per_order": m(|r| r.whmcs_calls_per_order),
        "not_activated": runs.iter().map(|r| r.not_activated).sum::<usize>(),
        "per_run": runs.iter().map(|r| json!({
            "throughput": r.throughput, "p50": r.p50_ms, "p95": r.p95_ms, "p99": r.p99_ms,
            "cpu_s_per_1000": r.cpu_per_1000,
        })).collect::<Vec<_>>(),
    })
}

async fn catchup_run(
    args: &BenchArgs,
    exe: &Path,
    out_dir: &Path,
    db: BenchDb,
    sim: &SimHandle,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Value> {
    let n = args.catchup_events;
    let ids: Vec<SalesforceId> = (0..n)
        .map(|_| sim.sim.seed_order(OrderSeed::default()))
        .collect();
    for id in &ids {
        sim.sim.approve(id);
    }
    let started = Instant::now();
    let daemon = Daemon::spawn(
        args,
        exe,
        out_dir,
        db,
        sim,
        cleanup,
        &[("SF_EVENTS_REPLAY", "ALL".into())],
    )
    .await?;
    // Sample RSS while draining (VmHWM is the true peak; the samples show the shape).
    let mut max_rss = 0.0f64;
    let deadline = Instant::now() + PHASE_LIMIT;
    let done = loop {
        let at = sim.sim.patched_at(&ids);
        if let Ok(m) = daemon.mem() {
            max_rss = max_rss.max(m.rss_mb);
        }
        if at.iter().all(Option::is_some) {
            break at.into_iter().flatten().max().unwrap_or(started);
        }
        if Instant::now() > deadline {
            Daemon::stop(daemon).await;
            bail!("catch-up did not finish within {PHASE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drain = done.saturating_duration_since(started).as_secs_f64();
    let mem = daemon.mem()?;
    let cpu = daemon.cpu_secs()?;
    Daemon::stop(daemon).await;
    Ok(json!({
        "events": n,
        "drain_s": drain,
        "orders_per_s": n as f64 / drain.max(1e-9),
        "peak_rss_mb": mem.hwm_mb,
        "max_sampled_rss_mb": max_rss,
        "cpu_s_per_1000_orders": cpu / n as f64 * 1000.0,
    }))
}

// ── the daemon child process ─────────────────────────────────────────────────────────────────

/// Resources to remove at the end: queue names (Redis keys) and PostgreSQL schemas.
#[derive(Default)]
struct Cleanup {
    queues: Vec<String>,
    schemas: Vec<(String, String)>,
    dirs: Vec<PathBuf>,
}

impl Cleanup {
    async fn run(self, redis_url: &str) {
        if let Err(e) = drop_queues(redis_url, &self.queues).await {
            eprintln!("bench: cannot delete the benchmark's Redis keys: {e:#}");
        }
        for (url, schema) in &self.schemas {
            if let Err(e) = drop_schema(url, schema).await {
                eprintln!("bench: cannot drop schema {schema}: {e:#}");
            }
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

async fn drop_queues(redis_url: &str, queues: &[String]) -> anyhow::Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    let mut conn = provisioner::queue::connect_redis(redis_url, &Default::default()).await?;
    for q in queues {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{q}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

struct Mem {
    rss_mb: f64,
    hwm_mb: f64,
}

struct Daemon {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    http: reqwest::Client,
    started: Instant,
    tck: f64,
}

impl Daemon {
    async fn spawn(
        args: &BenchArgs,
        exe: &Path,
        out_dir: &Path,
        db: BenchDb,
        sim: &SimHandle,
        cleanup: &mut Cleanup,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let queue = format!("bench-{}", uuid::Uuid::new_v4().simple());
        cleanup.queues.push(queue.clone());
        let database_url = match db {
            BenchDb::Sqlite => {
                let dir = std::env::temp_dir().join(format!("provisioner-bench-{}", &queue[6..]));
                std::fs::create_dir_all(&dir)?;
                cleanup.dirs.push(dir.clone());
                format!("sqlite://{}/ledger.db", dir.display())
            }
            BenchDb::Postgres => {
                let (url, schema) = create_schema(&args.postgres_url, "bench").await?;
                cleanup.schemas.push((args.postgres_url.clone(), schema));
                url
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = out_dir.join(format!("daemon-{}.log", db.name()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .env_clear()
            .envs(sim.daemon_env())
            .env("REDIS_URL", &args.redis_url)
            .env("QUEUE_NAME", &queue)
            .env("DATABASE_URL", &database_url)
            .env("HTTP_ADDR", addr.to_string())
            .env("PORTAL_JWT_SECRET", PORTAL_SECRET)
            .env("SF_EVENTS_REPLAY", "LATEST")
            // The order-status runs measure throughput from one address and one Account.
            .env("API_RATE_LIMIT_PER_SEC", "0")
            .env("API_ACCOUNT_RATE_LIMIT_PER_SEC", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", &args.daemon_log);
        for (k, v) in &args.daemon_env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd.spawn().context("spawning the daemon")?;
        let pid = child.id().context("daemon pid")?;
        Ok(Self {
            child,
            pid,
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            started,
            tck: support::clock_ticks(),
        })
    }

    /// Time from spawn until `/health/sf-events` reports a connected subscription.
    async fn wait_subscribed(&self, within: Duration) -> anyhow::Result<Duration> {
        let url = format!("http://{}/health/sf-events", self.addr);
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["state"] == "connected" {
                        return Ok(self.started.elapsed());
                    }
                }
            }
            if self.started.elapsed() > within {
                bail!("daemon not subscribed within {within:?} (see its log)");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// utime + stime of the daemon, in seconds.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        support::cpu_secs(&format!("/proc/{}", self.pid), self.tck)
    }

    /// Context switches (voluntary + involuntary) of all the daemon's threads so far.
    fn ctx_switches(&self) -> u64 {
        support::ctx_switches(&format!("/proc/{}", self.pid))
    }

    fn mem(&self) -> anyhow::Result<Mem> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = |key: &str| -> f64 {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default()
        };
        Ok(Mem {
            rss_mb: kb("VmRSS:") / 1024.0,
            hwm_mb: kb("VmHWM:") / 1024.0,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within 20 s.
    async fn stop(mut d: Daemon) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &d.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(20), d.child.wait())
            .await
            .is_err()
        {
            let _ = d.child.kill().await;
        }
    }
}

fn portal_token(account: &str) -> anyhow::Result<String> {
    let claims = json!({
        "sf_account_id": account,
        "exp": chrono::Utc::now().timestamp() + 3600,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(PORTAL_SECRET.as_bytes()),
    )?)
}

// ── order-status API load ────────────────────────────────────────────────────────────────────

struct ApiRun {
    rps: f64,
    daemon_us_per_request: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

/// Most requests one API run sends (it also stops after its duration).
const API_MAX_REQUESTS: u64 = 5_000_000;

async fn api_run(
    addr: SocketAddr,
    ids: &[SalesforceId],
    token: &str,
    revalidate: bool,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<ApiRun> {
    anyhow::ensure!(!ids.is_empty(), "no orders to query");
    // One request per order, with the order's current ETag for the 304 path.
    let mut requests = Vec::with_capacity(ids.len());
    {
        let mut conn = Conn::open(addr).await?;
        for id in ids {
            let plain = format!(
                "GET /api/orders/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            let req = if revalidate {
                let resp = conn.call(plain.as_bytes()).await?;
                let etag = resp.etag.context("order-status response without ETag")?;
                format!(
                    "GET /api/orders/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nIf-None-Match: {etag}\r\n\r\n"
                )
            } else {
                plain
            };
            requests.push(req.into_bytes());
        }
    }
    let requests = Arc::new(requests);
    let expect = if revalidate { 304 } else { 200 };
    let started = Instant::now();
    let deadline = started + duration;
    let per_conn = API_MAX_REQUESTS / connections.max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections.max(1) {
        let requests = requests.clone();
        tasks.spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut conn = match Conn::open(addr).await {
                Ok(c) => c,
                Err(_) => return (lat, 1),
            };
            let mut i = c * 7919;
            let mut sent = 0u64;
            while Instant::now() < deadline && sent < per_conn {
                let req = &requests[i % requests.len()];
                i += 1;
                sent += 1;
                let t = Instant::now();
                match conn.call(req).await {
                    Ok(r) if r.status == expect => {
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        match Conn::open(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (lat, errors)
        });
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, e) = r?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let ms: Vec<f64> = [50.0, 99.0]
        .iter()
        .map(|p| {
            let i = rank(all.len(), *p);
            all.get(i).map(|v| f64::from(*v) / 1e3).unwrap_or_default()
        })
        .collect();
    Ok(ApiRun {
        rps: all.len() as f64 / elapsed,
        daemon_us_per_request: 0.0,
        p50_ms: ms[0],
        p99_ms: ms[1],
        requests: all.len() as u64,
        errors,
    })
}

fn summarize_api(runs: &[ApiRun]) -> Value {
    let m = |f: fn(&ApiRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    json!({
        "requests_per_s": m(|r| r.rps),
        "p50_ms": m(|r| r.p50_ms),
        "p99_ms": m(|r| r.p99_ms),
        "daemon_cpu_us_per_request": m(|r| r.daemon_us_per_request),
        "requests": runs.iter().map(|r| r.requests).sum::<u64>(),
        "errors": runs.iter().map(|r| r.errors).sum::<u64>(),
        "per_run": runs.iter().map(|r| json!({"rps": r.rps, "p99": r.p99_ms})).collect::<Vec<_>>(),
    })
}

/// A keep-alive HTTP/1.1 connection that sends one request at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Reply {
    status: u16,
    etag: Option<String>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn call(&mut self, req: &[u8]) -> anyhow::Result<Reply> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            anyhow::ensure!(self.buf.len() < 64 * 1024, "response head too large");
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let mut len = 0usize;
        let mut etag = None;
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                } else if k.eq_ignore_ascii_case("etag") {
                    etag = Some(v.trim().to_owned());
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not expected here");
                }
            }
        }
        let total = head_end + len;
        while self.buf.len() < total {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Reply { status, etag })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ── statistics and output ────────────────────────────────────────────────────────────────────

/// Nearest-rank index of percentile `p` in a sorted slice of `len` values.
fn rank(len: usize, p: f64) -> usize {
    if len == 0 {
        return 0;
    }
    let r = (p / 100.0 * len as f64).ceil() as usize;
    r.clamp(1, len) - 1
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(rank(sorted.len(), p))
        .copied()
        .unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn machine_info() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": kernel,
    })
}

/// A target: JSON pointer into one ledger's results, and the bound.
struct Target {
    label: &'static str,
    pointer: &'static str,
    unit: &'static str,
    at_least: Option<f64>,
    at_most: Option<f64>,
    exactly: Option<f64>,
}

const TARGETS: &[Target] = &[
    Target {
        label: "throughput, N orders at saturation",
        pointer: "/saturation/throughput_orders_per_s",
        unit: "orders/s",
        at_least: Some(1500.0),
        at_most: None,
        exactly: None,
    },
    Target {
        label: "latency p50 @ steady rate",
        pointer: "/steady/latency_ms/p50",
        unit: "ms",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "latency p95 @ steady rate",
        pointer: "/steady/latency_ms/p95",
        unit: "ms",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "latency p99 @ steady rate",
        pointer: "/steady/latency_ms/p99",
        unit: "ms",
        at_least: None,
        at_most: Some(25.0),
        exactly: None,
    },
    Target {
        label: "latency p50 @ saturation",
        pointer: "/saturation/latency_ms/p50",
        unit: "ms",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "latency p95 @ saturation",
        pointer: "/saturation/latency_ms/p95",
        unit: "ms",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "latency p99 @ saturation",
        pointer: "/saturation/latency_ms/p99",
        unit: "ms",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "daemon CPU per 1,000 orders (saturation)",
        pointer: "/saturation/cpu_s_per_1000_orders",
        unit: "s",
        at_least: None,
        at_most: Some(0.3),
        exactly: None,
    },
    Target {
        label: "daemon CPU per 1,000 orders (steady)",
        pointer: "/steady/cpu_s_per_1000_orders",
        unit: "s",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "daemon context switches per order (saturation)",
        pointer: "/saturation/context_switches_per_order",
        unit: "",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "start-up to subscribed",
        pointer: "/startup_ms",
        unit: "ms",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "idle RSS",
        pointer: "/idle_rss_mb",
        unit: "MB",
        at_least: None,
        at_most: Some(20.0),
        exactly: None,
    },
    Target {
        label: "peak RSS (steady + saturation)",
        pointer: "/peak_rss_mb",
        unit: "MB",
        at_least: None,
        at_most: Some(80.0),
        exactly: None,
    },
    Target {
        label: "Salesforce REST calls per order",
        pointer: "/saturation/sf_calls_per_order",
        unit: "",
        at_least: None,
        at_most: None,
        exactly: Some(2.0),
    },
    Target {
        label: "WHMCS calls per order",
        pointer: "/saturation/whmcs_calls_per_order",
        unit: "",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "order-status API 200: req/s",
        pointer: "/api_200/requests_per_s",
        unit: "req/s",
        at_least: Some(30_000.0),
        at_most: None,
        exactly: None,
    },
    Target {
        label: "order-status API 200: p99",
        pointer: "/api_200/p99_ms",
        unit: "ms",
        at_least: None,
        at_most: Some(5.0),
        exactly: None,
    },
    Target {
        label: "order-status API 200: daemon CPU per request",
        pointer: "/api_200/daemon_cpu_us_per_request",
        unit: "us",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "order-status API 304: req/s",
        pointer: "/api_304/requests_per_s",
        unit: "req/s",
        at_least: Some(30_000.0),
        at_most: None,
        exactly: None,
    },
    Target {
        label: "order-status API 304: p99",
        pointer: "/api_304/p99_ms",
        unit: "ms",
        at_least: None,
        at_most: Some(5.0),
        exactly: None,
    },
    Target {
        label: "order-status API 304: daemon CPU per request",
        pointer: "/api_304/daemon_cpu_us_per_request",
        unit: "us",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "catch-up: time to drain",
        pointer: "/catchup/drain_s",
        unit: "s",
        at_least: None,
        at_most: None,
        exactly: None,
    },
    Target {
        label: "catch-up: peak RSS",
        pointer: "/catchup/peak_rss_mb",
        unit: "MB",
        at_least: None,
        at_most: Some(80.0),
        exactly: None,
    },
];

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(report: &Value) {
    let Some(results) = report["results"].as_object() else {
        return;
    };
    let dbs: Vec<&String> = results.keys().collect();
    println!();
    let mut header = format!("{:<42}", "figure");
    for db in &dbs {
        header.push_str(&format!(" {db:>12}"));
    }
    header.push_str(&format!(" {:>16}", "target"));
    println!("{header}");
    println!("{}", "─".repeat(header.chars().count()));
    for t in TARGETS {
        let label = if t.unit.is_empty() || t.label.contains(t.unit) {
            t.label.to_owned()
        } else {
            format!("{} ({})", t.label, t.unit)
        };
        let mut line = format!("{label:<42}");
        let mut all_met = true;
        let mut any = false;
        for db in &dbs {
            match results[*db].pointer(t.pointer).and_then(Value::as_f64) {
                Some(v) => {
                    any = true;
                    let met = t.at_least.is_none_or(|b| v >= b)
                        && t.at_most.is_none_or(|b| v <= b)
                        && t.exactly.is_none_or(|b| (v - b).abs() < 1e-9);
                    all_met &= met;
                    line.push_str(&format!(" {:>12}", fmt_num(v)));
                }
                None => line.push_str(&format!(" {:>12}", "-")),
            }
        }
        let target = match (t.at_least, t.at_most, t.exactly) {
            (Some(b), _, _) => format!("≥ {}", fmt_num(b)),
            (_, Some(b), _) => format!("≤ {}", fmt_num(b)),
            (_, _, Some(b)) => format!("= {}", fmt_num(b)),
            _ => String::new(),
        };
        let verdict = if target.is_empty() || !any {
            ""
        } else if all_met {
            " ok"
        } else {
            " MISSED"
        };
        line.push_str(&format!(" {:>16}{verdict}", target));
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn latencies_are_fixed_or_uniform_ranges() {
        let l = |min_ms, max_ms| Ok(Latency { min_ms, max_ms });
        assert_eq!(parse_latency("100ms"), l(100, 100));
        assert_eq!(parse_latency("50..200ms"), l(50, 200));
        assert_eq!(parse_latency("1s"), l(1000, 1000));
        assert_eq!(parse_latency("0"), l(0, 0));
        assert_eq!(parse_latency("0..1s"), l(0, 1000));
        assert!(parse_latency("200..50ms").is_err());
        assert!(parse_latency("fast").is_err());
        assert_eq!(
            parse_latency("50..200ms").map(|l| l.to_string()),
            Ok("50..200ms".to_owned())
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
