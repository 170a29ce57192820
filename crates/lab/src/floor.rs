//! `provisioner-lab floor`: the CPU an Order's round trips cost with no protocol at all.
//!
//! A job makes a fixed number of request/response trips over loopback TCP (Redis, the ledger,
//! Salesforce, WHMCS), and the daemon's CPU per Order at realistic latency is at least what
//! those trips cost: the kernel's TCP path, waking the peer, and waking the runtime when the
//! answer comes. This run measures that floor alone. A child process (a `current_thread` tokio
//! runtime, as the daemon's) plays Orders as chains of plain trips of fixed sizes against an
//! echo server in this process that answers each after the requested delay. No HTTP, SQL,
//! RESP, JSON, TLS, logging or queue: only the sockets and the runtime. Its CPU per 1,000
//! Orders, read from `/proc` as the benchmark reads the daemon's, is about the least a client
//! making the same trips one at a time on tokio's sockets can spend on the same machine.
//!
//! Invariants: the child's work per Order is exactly `trips` writes of `request_bytes` and
//! reads of `response_bytes`, with each trip's header built before the clock starts; the
//! server's CPU is not counted (it is this process).

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::support;

/// What a run measures.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Orders approved at once.
    #[arg(long, default_value_t = 2000)]
    pub orders: usize,
    /// Orders in flight (the daemon at SF 100 ms / WHMCS 300 ms holds about 42 to reach
    /// 52 Orders/s).
    #[arg(long, default_value_t = 42)]
    pub in_flight: usize,
    /// The trips of one Order, in order, each `count x delay` (`ms` or `us`). The default is a
    /// job on PostgreSQL: the queue's fetch and lease, the run marker, the ledger's dedupe
    /// read, the Salesforce read, the claim, the `adding` intent, `AddOrder`, the record of its
    /// id, `AcceptOrder`, the write-back check, the `PATCH`, the close, the queue's
    /// acknowledgement.
    #[arg(
        long,
        default_value = "3x200us,1x300us,1x100ms,2x300us,1x300ms,1x300us,1x300ms,1x300us,1x100ms,1x300us,1x200us"
    )]
    pub trips: String,
    /// Bytes of each request.
    #[arg(long, default_value_t = 400)]
    pub request_bytes: usize,
    /// Bytes of each response.
    #[arg(long, default_value_t = 800)]
    pub response_bytes: usize,
}

/// The child's side (internal): plays the Orders against `addr`, prints its figures as JSON.
#[derive(Debug, Clone, Args)]
pub struct FloorClientArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub run: FloorArgs,
}

impl FloorArgs {
    /// The request header of each trip of an Order, in order, after checking the arguments:
    /// the parent refuses bad ones before it starts the child, and the child trusts nothing.
    fn plan(&self) -> anyhow::Result<Vec<[u8; HEADER]>> {
        anyhow::ensure!(
            (HEADER..=MAX_BYTES).contains(&self.request_bytes),
            "--request-bytes must be {HEADER}..={MAX_BYTES}"
        );
        anyhow::ensure!(
            (1..=MAX_BYTES).contains(&self.response_bytes),
            "--response-bytes must be 1..={MAX_BYTES}"
        );
        let (req, resp) = (
            u32::try_from(self.request_bytes)?.to_le_bytes(),
            u32::try_from(self.response_bytes)?.to_le_bytes(),
        );
        Ok(parse_trips(&self.trips)?
            .into_iter()
            .map(|delay| {
                let mut head = [0u8; HEADER];
                let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
                head[..8].copy_from_slice(&us.to_le_bytes());
                head[8..12].copy_from_slice(&req);
                head[12..].copy_from_slice(&resp);
                head
            })
            .collect())
    }
}

/// One trip: how long the server holds its answer.
fn parse_trips(spec: &str) -> anyhow::Result<Vec<Duration>> {
    let mut trips = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (count, delay) = part
            .split_once('x')
            .with_context(|| format!("trip `{part}`: expected COUNTxDELAY, e.g. 2x300us"))?;
        let count: usize = count
            .parse()
            .with_context(|| format!("trip `{part}`: bad count"))?;
        let delay = if let Some(us) = delay.strip_suffix("us") {
            Duration::from_micros(us.parse()?)
        } else if let Some(ms) = delay.strip_suffix("ms") {
            Duration::from_millis(ms.parse()?)
        } else {
            anyhow::bail!("trip `{part}`: delay must end in ms or us");
        };
        trips.extend(std::iter::repeat_n(delay, count));
    }
    anyhow::ensure!(!trips.is_empty(), "no trips in `{spec}`");
    Ok(trips)
}

/// Header of a request: delay in µs, request length, response length.
const HEADER: usize = 16;
/// Largest request or response the echo server handles.
const MAX_BYTES: usize = 64 * 1024;

/// The echo server: each request is answered with `response length` bytes after its delay.
async fn serve(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let mut header = [0u8; HEADER];
            let mut scratch = vec![0u8; MAX_BYTES];
            loop {
                if sock.read_exact(&mut header).await.is_err() {
                    return;
                }
                let word = |r: std::ops::Range<usize>| {
                    header
                        .get(r)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(0, u32::from_le_bytes) as usize
                };
                let delay_us = header
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                let (req, resp) = (word(8..12), word(12..16));
                let rest = req.saturating_sub(HEADER).min(scratch.len());
                if sock.read_exact(&mut scratch[..rest]).await.is_err() {
                    return;
                }
                let delay = Duration::from_micros(delay_us);
                if delay >= Duration::from_millis(1) {
                    tokio::time::sleep(delay).await;
                } else if !delay.is_zero() {
                    // The runtime's timers tick in milliseconds and fire together: a database's
                    // sub-millisecond answers would arrive in batches and wake the client less
                    // often than a real server's do.
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
                }
                if resp > scratch.len() || sock.write_all(&scratch[..resp]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Runs the floor: the server here, the Orders in a child process; prints the figures.
pub async fn run(args: FloorArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(args: FloorArgs) -> anyhow::Result<()> {
    let trips = args.plan()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener));
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args(["floor-client", "--addr", &addr.to_string()])
        .args(["--orders", &args.orders.to_string()])
        .args(["--in-flight", &args.in_flight.to_string()])
        .args(["--trips", &args.trips])
        .args(["--request-bytes", &args.request_bytes.to_string()])
        .args(["--response-bytes", &args.response_bytes.to_string()])
        .output()
        .await
        .context("running the floor client")?;
    anyhow::ensure!(
        out.status.success(),
        "floor client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("floor client output")?;
    let num = |k: &str| v[k].as_f64().unwrap_or_default();
    println!(
        "floor: {} Orders of {} trips ({} B out, {} B back), {} in flight",
        num("orders"),
        trips.len(),
        args.request_bytes,
        args.response_bytes,
        args.in_flight
    );
    println!(
        "  {:.1} Orders/s, CPU {:.3} s per 1,000 Orders, {:.1} context switches per Order",
        num("orders_per_sec"),
        num("cpu_secs_per_1000"),
        num("ctx_switches_per_order"),
    );
    Ok(())
}

/// The child: plays the Orders on a `current_thread` runtime and prints its figures as JSON.
pub fn client_main(args: FloorClientArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(client(args)) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: FloorClientArgs) -> anyhow::Result<serde_json::Value> {
    let trips = Arc::new(args.run.plan()?);
    let (req_len, resp_len) = (args.run.request_bytes, args.run.response_bytes);
    // One connection per Order in flight, connected before the clock starts.
    let mut conns = Vec::new();
    for _ in 0..args.run.in_flight.max(1) {
        let s = TcpStream::connect(args.addr).await?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let played = Arc::new(AtomicUsize::new(0));
    let tck = support::clock_ticks();
    let (cpu0, ctx0) = (
        support::cpu_secs("/proc/self", tck)?,
        support::ctx_switches("/proc/self"),
    );
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for mut sock in conns {
        let (next, played, trips) = (next.clone(), played.clone(), trips.clone());
        let orders = args.run.orders;
        workers.spawn(async move {
            let mut request = vec![0u8; req_len];
            let mut response = vec![0u8; resp_len];
            while next.fetch_add(1, Ordering::Relaxed) < orders {
                for head in trips.iter() {
                    request[..HEADER].copy_from_slice(head);
                    sock.write_all(&request).await?;
                    sock.read_exact(&mut response).await?;
                }
                played.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = support::cpu_secs("/proc/self", tck)? - cpu0;
    let ctx = support::ctx_switches("/proc/self").saturating_sub(ctx0);
    let played = played.load(Ordering::Relaxed);
    let n = played.max(1) as f64;
    Ok(serde_json::json!({
        "orders": played,
        "trips_per_order": trips.len(),
        "elapsed_secs": elapsed,
        "orders_per_sec": n / elapsed,
        "cpu_secs_per_1000": cpu / n * 1000.0,
        "ctx_switches_per_order": ctx as f64 / n,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_expand_counts_and_units() {
        let t = parse_trips("2x300us, 1x100ms").expect("parses");
        assert_eq!(
            t,
            vec![
                Duration::from_micros(300),
                Duration::from_micros(300),
                Duration::from_millis(100)
            ]
        );
        assert!(parse_trips("2x300").is_err());
        assert!(parse_trips("").is_err());
    }
}
