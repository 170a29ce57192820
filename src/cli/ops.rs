//! Operator tools on the command line: `orders list|show|requeue`, `cursor show|set`,
//! `queue stats`. They read and write the ledger and the Redis queue directly and never call
//! Salesforce or WHMCS, so they load only the settings they use ([`Config::load_for_tools`]).
//! Output is a human table by default and JSON (snake_case keys) with `--json`.
//!
//! Invariants:
//! - Nothing here bypasses the worker's guards. `orders requeue` only enqueues a
//!   `ProvisionOrderV1` job (source `operator`, fresh id `op-<uuid>`); the worker still reads the
//!   Order, acts only on `Activation_Status__c = Activating`, takes the ledger lease and reuses
//!   any WHMCS order already created, so a requeue can never provision an Order twice.
//! - `cursor set` changes where the *next* subscription starts and asks for confirmation
//!   (interactive `y/N`, or `--yes`); without a terminal and without `--yes` it refuses. It keeps
//!   the row's fencing token, so it neither blocks nor outranks the subscriber.
//! - `cursor set --earliest` stores a one-shot request ([`EARLIEST_REQUEST`] in place of the
//!   replay id): the next subscription starts from EARLIEST whatever `SF_EVENTS_REPLAY` says,
//!   and the first cursor the subscriber stores afterwards replaces the request. Until then
//!   every (re)subscription starts from EARLIEST again, so a crash cannot skip the replay.
//!   `SF_EVENTS_REPLAY` keeps its meaning: the start when nothing at all is stored, and the
//!   fallback after a rejected cursor.
//! - A running subscriber keeps writing the cursor from its live stream, so `cursor set` refuses
//!   while the subscriber lease (`<queue>:leader`, see [`crate::leader`]) is held: stop every
//!   daemon with `SF_EVENTS_ENABLED=true` first. The check is not a lock; a subscriber that
//!   takes the lease during the write is reported.
//! - Replaying does not re-run events the inbox already holds (they are skipped as
//!   duplicates); an Order whose job was lost after its event was recorded is recovered with
//!   `orders requeue`.
//! - Text from the ledger (error messages come from WHMCS and Salesforce) is stripped of control
//!   characters before it reaches the terminal.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::{
    config::{Config, ReplayStart, ToolsConfig},
    ids::SalesforceId,
    ingest::lease::Lease,
    ledger::{self, CursorRow, EARLIEST_REQUEST, Ledger, OrderRecord, state},
    queue::{self, Job, JobSource, ProvisionOrderV1, Queue},
};

/// Workers whose last heartbeat is at most this old count as alive.
const LIVE_WORKER_WINDOW: Duration = Duration::from_secs(queue::HEARTBEAT.as_secs() * 3);

/// `provisioner orders …`
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// List Orders in the ledger, most recently updated first.
    List {
        /// Only Orders in this ledger state.
        #[arg(long, value_enum)]
        state: Option<LedgerState>,
        /// At most this many Orders (1–1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one Order: ledger row, WHMCS ids, errors, attempt history, events and their jobs.
    Show {
        /// Salesforce Order id (15 or 18 characters).
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a new provisioning job for an Order, e.g. one left Activating after its job was
    /// lost. Safe at any time: the worker acts only on Activating Orders and never creates a
    /// second WHMCS order.
    Requeue {
        /// Salesforce Order id (15 or 18 characters).
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `provisioner cursor …`
#[derive(Debug, Subcommand)]
pub enum CursorCommand {
    /// Show the stored replay cursor of the subscription and where the next one starts.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change where the next subscription starts (stop the subscribing daemons first).
    Set(CursorSet),
}

/// Arguments of `cursor set`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["replay_id", "earliest"])))]
pub struct CursorSet {
    /// Resume after this replay id (hex, as `cursor show` and the logs print it).
    #[arg(long)]
    pub replay_id: Option<String>,
    /// Start the next subscription from EARLIEST (everything Salesforce still retains, up to
    /// 72 h), whatever SF_EVENTS_REPLAY says; events already in the inbox are skipped.
    #[arg(long)]
    pub earliest: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `provisioner queue …`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Jobs by state, live workers, Orders by state and the failure rate of the last hour.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Ledger states, as `--state` accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum LedgerState {
    New,
    Adding,
    WhmcsAdded,
    WhmcsAccepted,
    Done,
    Failed,
}

impl LedgerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => state::NEW,
            Self::Adding => state::ADDING,
            Self::WhmcsAdded => state::WHMCS_ADDED,
            Self::WhmcsAccepted => state::WHMCS_ACCEPTED,
            Self::Done => state::DONE,
            Self::Failed => state::FAILED,
        }
    }
}

/// One operator command.
#[derive(Debug)]
pub enum OpsCommand {
    Orders(OrdersCommand),
    Cursor(CursorCommand),
    Queue(QueueCommand),
}

/// Runs one operator command; exit 0 on success, 1 on failure or refusal, 2 on bad settings.
pub async fn run(config: Option<&Path>, command: OpsCommand) -> ExitCode {
    let cfg = match Config::load_for_tools(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provisioner: {e}");
            return ExitCode::from(2);
        }
    };
    let tools = Tools { cfg };
    let result = match command {
        OpsCommand::Orders(OrdersCommand::List { state, limit, json }) => {
            tools.orders_list(state, limit, json).await
        }
        OpsCommand::Orders(OrdersCommand::Show { id, json }) => tools.orders_show(&id, json).await,
        OpsCommand::Orders(OrdersCommand::Requeue { id, json }) => {
            tools.orders_requeue(&id, json).await
        }
        OpsCommand::Cursor(CursorCommand::Show { json }) => tools.cursor_show(json).await,
        OpsCommand::Cursor(CursorCommand::Set(args)) => tools.cursor_set(args).await,
        OpsCommand::Queue(QueueCommand::Stats { json }) => tools.queue_stats(json).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("provisioner: {}", crate::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

struct Tools {
    cfg: ToolsConfig,
}

impl Tools {
    async fn ledger(&self) -> anyhow::Result<Ledger> {
        let mut db = self.cfg.database.clone();
        if db.url.starts_with("sqlite:") {
            let path = db
                .url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            if path != ":memory:" && !Path::new(&path).exists() {
                bail!(
                    "DATABASE_URL: the ledger {path} does not exist (run where the daemon runs, or set DATABASE_URL)"
                );
            }
            // Never create a ledger file from an operator command.
            if !db.url.contains("mode=") {
                db.url.push_str(if db.url.contains('?') {
                    "&mode=rw"
                } else {
                    "?mode=rw"
                });
            }
        }
        db.max_connections = db.max_connections.min(2);
        tokio::time::timeout(Duration::from_secs(15), Ledger::connect(&db))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .context("opening the ledger (DATABASE_URL)")
    }

    async fn queue(&self) -> anyhow::Result<Queue> {
        self.queue_within(Duration::from_secs(15)).await
    }

    async fn queue_within(&self, limit: Duration) -> anyhow::Result<Queue> {
        tokio::time::timeout(limit, Queue::connect(&self.cfg.queue))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .context("connecting to Redis (REDIS_URL)")
    }

    /// Holder of the subscriber lease (the running subscriber's instance), if any.
    async fn leader(&self, queue: &Queue) -> anyhow::Result<Option<String>> {
        let lease = Lease::new(
            queue.redis(),
            &self.cfg.queue.name,
            "operator",
            Duration::ZERO,
        );
        tokio::time::timeout(Duration::from_secs(3), lease.holder())
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))?
            .context("reading the subscriber lease")
    }

    async fn orders_list(
        &self,
        state: Option<LedgerState>,
        limit: i64,
        json: bool,
    ) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let orders = ledger.list(state.map(LedgerState::as_str), limit).await?;
        if json {
            print_json(&json!({ "orders": orders }))?;
            return Ok(ExitCode::SUCCESS);
        }
        if orders.is_empty() {
            println!(
                "no orders{}",
                state
                    .map(|s| format!(" in state {}", s.as_str()))
                    .unwrap_or_default()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let rows = orders
            .iter()
            .map(|o| {
                vec![
                    o.sf_order_id.clone(),
                    o.state.clone(),
                    o.outcome.clone().unwrap_or_default(),
                    o.whmcs_order_id.map(|v| v.to_string()).unwrap_or_default(),
                    o.attempts.to_string(),
                    fmt_ms(o.updated_at),
                    truncate(&error_text(o), 60),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "ORDER",
                    "STATE",
                    "OUTCOME",
                    "WHMCS ORDER",
                    "ATTEMPTS",
                    "UPDATED",
                    "ERROR"
                ],
                rows
            )
        );
        Ok(ExitCode::SUCCESS)
    }

    async fn orders_show(&self, raw: &str, json: bool) -> anyhow::Result<ExitCode> {
        let id = parse_id(raw)?;
        let ledger = self.ledger().await?;
        let order = ledger.get(&id).await?;
        let attempts = ledger.attempts(&id).await?;
        let events = ledger.inbox_for(&id).await?;
        let lease = ledger.lease_of(&id).await?;
        if order.is_none() && events.is_empty() {
            eprintln!("provisioner: order {id} is not known to the ledger");
            return Ok(ExitCode::FAILURE);
        }
        // Job states from Redis, for every job id the ledger knows of; best effort.
        let mut job_ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        for a in &attempts {
            if let Some(e) = &a.event_id {
                if !job_ids.contains(e) {
                    job_ids.push(e.clone());
                }
            }
        }
        let mut jobs: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut queue_error = None;
        match self.queue().await {
            Ok(q) => {
                for j in &job_ids {
                    match q.job_status(j).await {
                        Ok(s) => {
                            jobs.insert(j.clone(), s);
                        }
                        Err(e) => {
                            queue_error = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            Err(e) => queue_error = Some(format!("{e:#}")),
        }
        if json {
            print_json(&json!({
                "order": order,
                "lease": lease.as_ref().map(|(owner, until)| json!({"owner": owner, "until": until})),
                "attempts": attempts,
                "events": events,
                "jobs": jobs,
                "queue_error": queue_error,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut out = String::new();
        match &order {
            Some(o) => {
                let pairs: Vec<(&str, String)> = vec![
                    ("Order", o.sf_order_id.clone()),
                    ("State", o.state.clone()),
                    ("Outcome", o.outcome.clone().unwrap_or_else(|| "-".into())),
                    ("Account", opt(&o.account_id)),
                    ("WHMCS client", opt(&o.whmcs_client_id)),
                    (
                        "WHMCS order",
                        o.whmcs_order_id
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ),
                    ("WHMCS services", opt(&o.whmcs_service_ids)),
                    ("Error", {
                        let e = error_text(o);
                        if e.is_empty() { "-".into() } else { e }
                    }),
                    ("Salesforce status", opt(&o.sf_status)),
                    ("Last event", opt(&o.last_event_id)),
                    ("Correlation id", opt(&o.correlation_id)),
                    ("Attempts", o.attempts.to_string()),
                    ("Created", fmt_ms(o.created_at)),
                    ("Updated", fmt_ms(o.updated_at)),
                    (
                        "Lease",
                        match &lease {
                            Some((owner, until)) => format!(
                                "{owner} until {}",
                                until.map(fmt_ms).unwrap_or_else(|| "-".into())
                            ),
                            None => "free".into(),
                        },
                    ),
                ];
                for (k, v) in pairs {
                    out.push_str(&format!("{k:<18} {}\n", clean(&v)));
                }
            }
            None => out.push_str(&format!(
                "Order {id}: no ledger row yet (no job has claimed it)\n"
            )),
        }
        out.push_str("\nAttempts\n");
        if attempts.is_empty() {
            out.push_str("  none\n");
        } else {
            let rows = attempts
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.event_id.clone().unwrap_or_default(),
                        fmt_ms(a.started_at),
                        a.finished_at
                            .map(fmt_ms)
                            .unwrap_or_else(|| "running".into()),
                        a.outcome.clone().unwrap_or_default(),
                        match (&a.error_code, &a.error_message) {
                            (Some(c), Some(m)) => format!("{c}: {m}"),
                            (Some(c), None) => c.clone(),
                            _ => String::new(),
                        },
                    ]
                })
                .collect();
            out.push_str(&table(
                &["#", "EVENT/JOB", "STARTED", "FINISHED", "OUTCOME", "ERROR"],
                rows,
            ));
        }
        out.push_str("\nEvents (inbox)\n");
        if events.is_empty() {
            out.push_str("  none\n");
        } else {
            let rows = events
                .iter()
                .map(|e| {
                    vec![
                        e.event_id.clone(),
                        e.replay_id.clone(),
                        e.status.clone(),
                        fmt_ms(e.received_at),
                        match jobs.get(&e.event_id) {
                            Some(Some(s)) => s.clone(),
                            Some(None) => "gone".into(),
                            None => "?".into(),
                        },
                    ]
                })
                .collect();
            out.push_str(&table(
                &["EVENT", "REPLAY ID", "STATUS", "RECEIVED", "JOB"],
                rows,
            ));
        }
        if let Some(e) = queue_error {
            out.push_str(&format!("\n(queue not readable: {})\n", clean(&e)));
        }
        print!("{out}");
        Ok(ExitCode::SUCCESS)
    }

    async fn orders_requeue(&self, raw: &str, json: bool) -> anyhow::Result<ExitCode> {
        let id = parse_id(raw)?;
        let ledger = self.ledger().await?;
        let row = ledger.get(&id).await?;
        let queue = self.queue().await?;
        let job_id = format!("op-{}", uuid::Uuid::new_v4());
        queue
            .push(vec![Job::ProvisionOrderV1(ProvisionOrderV1 {
                event_id: job_id.clone(),
                replay_id: None,
                order_id: id.to_string(),
                idem_key: None,
                correlation_id: job_id.clone(),
                event_created_ms: 0,
                source: JobSource::Operator,
            })])
            .await
            .context("enqueueing the job")?;
        let workers = queue.live_workers(LIVE_WORKER_WINDOW).await.ok();
        if json {
            print_json(&json!({
                "job_id": job_id,
                "order_id": id.as_str(),
                "queue": self.cfg.queue.name,
                "ledger_state": row.as_ref().map(|r| r.state.clone()),
                "live_workers": workers,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "enqueued job {job_id} for order {id} on queue {}",
            self.cfg.queue.name
        );
        match row.as_ref().map(|r| r.state.as_str()) {
            None => {
                println!("ledger: no row yet; the job provisions the Order if it is Activating")
            }
            Some(state::DONE) => println!(
                "ledger: done (already provisioned); the job does nothing unless Salesforce shows it Activating again"
            ),
            Some(s) => println!(
                "ledger: {s}; the job resumes from there if the Order is still Activating in Salesforce"
            ),
        }
        if workers == Some(0) {
            eprintln!(
                "warning: no queue worker heartbeated in the last {} s; the job waits until a daemon runs",
                LIVE_WORKER_WINDOW.as_secs()
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn cursor_show(&self, json: bool) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let row = ledger.cursor_row(&self.cfg.channel).await?;
        let next = next_start(row.as_ref(), self.cfg.replay);
        let leader = match self.queue_within(Duration::from_secs(3)).await {
            Ok(q) => self.leader(&q).await.ok().flatten(),
            Err(_) => None,
        };
        if json {
            print_json(&json!({
                "channel": self.cfg.channel,
                "subscriber": leader,
                "cursor": row,
                "sf_events_replay": replay_name(self.cfg.replay),
                "next_start": next,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<18} {}", "Channel", self.cfg.channel);
        match &row {
            Some(c) => {
                println!("{:<18} {}", "Stored cursor", c.replay_id);
                println!("{:<18} {}", "Updated", fmt_ms(c.updated_at));
                println!("{:<18} {}", "Fencing token", c.fencing_token);
            }
            None => println!("{:<18} none", "Stored cursor"),
        }
        println!(
            "{:<18} {} (as configured here)",
            "SF_EVENTS_REPLAY",
            replay_name(self.cfg.replay)
        );
        println!("{:<18} {next}", "Next subscription");
        println!(
            "{:<18} {}",
            "Subscriber",
            leader
                .map(|h| format!("running ({})", clean(&h)))
                .unwrap_or_else(|| "none holds the lease".into())
        );
        Ok(ExitCode::SUCCESS)
    }

    async fn cursor_set(&self, args: CursorSet) -> anyhow::Result<ExitCode> {
        let value = match (&args.replay_id, args.earliest) {
            (Some(hex_id), false) => {
                let v = hex_id.trim().to_ascii_lowercase();
                if v.is_empty() || v.len() > 256 || hex::decode(&v).is_err() {
                    bail!("--replay-id must be a non-empty hex string, got {hex_id:?}");
                }
                v
            }
            (None, true) => EARLIEST_REQUEST.to_owned(),
            _ => bail!("give exactly one of --replay-id and --earliest"),
        };
        let ledger = self.ledger().await?;
        let before = ledger.cursor_row(&self.cfg.channel).await?;
        let after = CursorRow {
            replay_id: value.clone(),
            fencing_token: before.as_ref().map(|c| c.fencing_token).unwrap_or(0),
            updated_at: ledger::now_ms(),
        };
        let plan = next_start(Some(&after), self.cfg.replay);
        // A subscriber holding the lease keeps storing the cursor of its live stream.
        let queue = self.queue_within(Duration::from_secs(3)).await.ok();
        let leader = match &queue {
            Some(q) => self.leader(q).await.ok(),
            None => None,
        };
        let current = before
            .as_ref()
            .map(|c| c.replay_id.as_str())
            .unwrap_or("none");
        eprintln!("channel:  {}", self.cfg.channel);
        eprintln!("current:  {current}");
        eprintln!("new:      {value}");
        eprintln!("effect:   next subscription {plan}");
        match &leader {
            Some(Some(holder)) => {
                eprintln!(
                    "provisioner: refusing to change the cursor: a subscriber is running (lease {}:leader held by {}) and would overwrite it; stop every daemon with SF_EVENTS_ENABLED=true, then retry",
                    self.cfg.queue.name,
                    clean(holder)
                );
                return Ok(ExitCode::FAILURE);
            }
            Some(None) => {}
            None => eprintln!(
                "note: Redis not reachable; cannot tell whether a subscriber is running (it would overwrite the cursor)"
            ),
        }
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                eprintln!(
                    "provisioner: refusing to change the cursor without confirmation: stdin is not a terminal; pass --yes"
                );
                return Ok(ExitCode::FAILURE);
            }
            eprint!("Change the cursor? [y/N] ");
            std::io::stderr().flush().ok();
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                eprintln!("provisioner: cursor unchanged");
                return Ok(ExitCode::FAILURE);
            }
        }
        ledger
            .store_operator_cursor(&self.cfg.channel, &value)
            .await?;
        // The lease check is not a lock: say so if a subscriber started meanwhile.
        if let Some(q) = &queue {
            if let Ok(Some(holder)) = self.leader(q).await {
                eprintln!(
                    "warning: a subscriber took the lease meanwhile ({}); check with `provisioner cursor show`",
                    clean(&holder)
                );
            }
        }
        if args.json {
            print_json(&json!({
                "channel": self.cfg.channel,
                "previous": before,
                "cursor": value,
                "next_start": plan,
            }))?;
        } else {
            println!(
                "cursor of {} set to {value}; next subscription {plan}",
                self.cfg.channel
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn queue_stats(&self, json: bool) -> anyhow::Result<ExitCode> {
        let queue = self.queue().await?;
        let stats = queue.stats().await.context("reading queue statistics")?;
        let stored = queue.job_count().await?;
        let workers = queue.live_workers(LIVE_WORKER_WINDOW).await?;
        let ledger = self.ledger().await?;
        let by_state = ledger.counts_by_state().await?;
        let inbox = ledger.inbox_counts().await?;
        let (failed, total) = ledger
            .outcome_counts_since(ledger::now_ms() - 3_600_000)
            .await?;
        if json {
            print_json(&json!({
                "queue": self.cfg.queue.name,
                "jobs": stats,
                "jobs_stored": stored,
                "live_workers": workers,
                "orders_by_state": by_state,
                "inbox": inbox,
                "last_hour": {"failed": failed, "finished": total},
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("Queue {}", self.cfg.queue.name);
        print!(
            "{}",
            table(
                &[
                    "PENDING",
                    "DELAYED",
                    "RUNNING",
                    "FAILED",
                    "DONE",
                    "STORED",
                    "WORKERS (LIVE)"
                ],
                vec![vec![
                    stats.pending.to_string(),
                    stats.delayed.to_string(),
                    stats.running.to_string(),
                    stats.failed.to_string(),
                    stats.done.to_string(),
                    stored.to_string(),
                    format!("{} ({workers})", stats.workers),
                ]],
            )
        );
        println!("\nOrders by ledger state");
        let states = [
            state::NEW,
            state::ADDING,
            state::WHMCS_ADDED,
            state::WHMCS_ACCEPTED,
            state::DONE,
            state::FAILED,
        ];
        print!(
            "{}",
            table(
                &states
                    .map(str::to_ascii_uppercase)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                vec![
                    states
                        .iter()
                        .map(|s| by_state.get(*s).copied().unwrap_or(0).to_string())
                        .collect()
                ],
            )
        );
        println!(
            "\nInbox: {} enqueued, {} poison",
            inbox.get("enqueued").copied().unwrap_or(0),
            inbox.get("poison").copied().unwrap_or(0)
        );
        println!(
            "Last hour: {failed} failed of {total} finished attempts ({})",
            percent(failed, total)
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Where the next subscription starts, given the stored cursor row and `SF_EVENTS_REPLAY`.
fn next_start(row: Option<&CursorRow>, replay: ReplayStart) -> String {
    match row {
        Some(c) if c.replay_id == EARLIEST_REQUEST => {
            "starts from EARLIEST (operator request, once)".into()
        }
        Some(c) if hex::decode(&c.replay_id).is_ok() => {
            format!("resumes after replay id {}", c.replay_id)
        }
        _ => format!(
            "starts from {} (SF_EVENTS_REPLAY; no cursor stored)",
            replay_name(replay)
        ),
    }
}

fn replay_name(r: ReplayStart) -> &'static str {
    match r {
        ReplayStart::Latest => "LATEST",
        ReplayStart::Earliest => "ALL",
    }
}

fn parse_id(raw: &str) -> anyhow::Result<SalesforceId> {
    SalesforceId::parse(raw.trim())
        .map_err(|_| anyhow::anyhow!("{raw:?} is not a 15- or 18-character Salesforce Order id"))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn error_text(o: &OrderRecord) -> String {
    match (&o.error_code, &o.error_message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => String::new(),
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SSZ`.
pub fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `failed / total` as a percentage with one decimal, `-` when nothing finished.
pub fn percent(failed: i64, total: i64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1} %", failed as f64 * 100.0 / total as f64)
    }
}

/// Replaces control characters (newlines, escape sequences) with spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    let s = clean(s);
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A left-aligned text table with a header row; cells are cleaned of control characters.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_strips_control_characters() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            vec![
                vec!["xyz".into(), "1".into(), "end".into()],
                vec!["q".into(), "two\nlines\x1b[31m".into(), "".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A    LONG HEADER     C");
        assert_eq!(lines[1], "xyz  1               end");
        assert_eq!(lines[2], "q    two lines [31m");
        assert!(!t.contains('\x1b'));
    }

    #[test]
    fn next_start_explains_each_case() {
        let row = |v: &str| CursorRow {
            replay_id: v.into(),
            fencing_token: 0,
            updated_at: 0,
        };
        assert!(next_start(None, ReplayStart::Latest).contains("LATEST"));
        assert!(
            next_start(Some(&row("00ff")), ReplayStart::Latest).contains("after replay id 00ff")
        );
        assert!(next_start(Some(&row(EARLIEST_REQUEST)), ReplayStart::Latest).contains("EARLIEST"));
        // The request is not hex: nothing reading `replay_id` as a cursor can take it for one.
        assert!(hex::decode(EARLIEST_REQUEST).is_err());
    }

    #[test]
    fn truncate_and_percent() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(percent(0, 0), "-");
        assert_eq!(percent(1, 8), "12.5 %");
    }
}
