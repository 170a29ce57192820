//! Operator tools on the command line: `orders list|show|requeue|redrive`, `cursor show|set`,
//! `queue stats`, `pause`, `resume`, `events poison|replay`. They read and write the ledger and
//! the Redis queue directly and never call WHMCS. Two call Salesforce and so load its settings:
//! `events replay` (the Pub/Sub API, for a schema) and `orders redrive` (sets Orders back to
//! `Activating`); the others load only the settings they use ([`Config::load_for_tools`]).
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
//!   while the subscriber lease (`<queue>:leader`, see [`crate::ingest::lease`]) is held: stop every
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
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};

use crate::{
    config::{Config, ReplayStart, ToolsConfig},
    ids::SalesforceId,
    ingest::lease::Lease,
    ledger::{self, CursorRow, EARLIEST_REQUEST, Ledger, OrderRecord, OrderState, state},
    queue::{self, Job, JobSource, ProvisionOrderV1, Queue},
};

mod controls;
mod cursor;
mod events;
mod orders;
mod queue_stats;
mod redrive;

pub use crate::operator::parse_since;
pub use controls::{PauseArgs, ResumeArgs};
pub use cursor::{CursorCommand, CursorSet};
pub use events::EventsCommand;
pub use orders::OrdersCommand;
pub use queue_stats::QueueCommand;
pub use redrive::RedriveArgs;

/// Workers whose last heartbeat is at most this old count as alive.
const LIVE_WORKER_WINDOW: Duration = Duration::from_secs(queue::HEARTBEAT.as_secs() * 3);

/// One operator command.
#[derive(Debug)]
pub enum OpsCommand {
    Orders(OrdersCommand),
    Cursor(CursorCommand),
    Queue(QueueCommand),
    Pause(PauseArgs),
    Resume(ResumeArgs),
    Events(EventsCommand),
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
    let tools = Tools {
        cfg,
        path: config.map(Path::to_path_buf),
    };
    let result = match command {
        OpsCommand::Orders(OrdersCommand::List { state, limit, json }) => {
            tools.orders_list(state, limit, json).await
        }
        OpsCommand::Orders(OrdersCommand::Show { id, json }) => tools.orders_show(&id, json).await,
        OpsCommand::Orders(OrdersCommand::Requeue { id, json }) => {
            tools.orders_requeue(&id, json).await
        }
        OpsCommand::Orders(OrdersCommand::Redrive(args)) => tools.orders_redrive(args).await,
        OpsCommand::Cursor(CursorCommand::Show { json }) => tools.cursor_show(json).await,
        OpsCommand::Cursor(CursorCommand::Set(args)) => tools.cursor_set(args).await,
        OpsCommand::Queue(QueueCommand::Stats { json }) => tools.queue_stats(json).await,
        OpsCommand::Pause(args) => tools.pause(args).await,
        OpsCommand::Resume(args) => tools.resume(args).await,
        OpsCommand::Events(EventsCommand::Poison { json, limit }) => {
            tools.events_poison(json, limit).await
        }
        OpsCommand::Events(EventsCommand::Replay { replay_id, json }) => {
            tools.events_replay(config, &replay_id, json).await
        }
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
    /// The `--config` file, for commands that load more settings.
    path: Option<PathBuf>,
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
            .with_context(|| format!("connecting to Redis ({})", self.cfg.queue.redis_settings()))
    }

    /// Holder of the subscriber lease (the running subscriber's instance), if any.
    async fn leader(&self, queue: &Queue) -> anyhow::Result<Option<String>> {
        tokio::time::timeout(
            Duration::from_secs(3),
            Lease::holder_of(queue.redis(), &self.cfg.queue.name),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))?
        .context("reading the subscriber lease")
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
    use super::cursor::next_start;
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
