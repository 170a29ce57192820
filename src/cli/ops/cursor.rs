//! `provisioner cursor show|set`: where the next subscription starts. `set` asks for
//! confirmation and refuses while a subscriber holds the leader lease.

use super::*;

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

impl Tools {
    pub(super) async fn cursor_show(&self, json: bool) -> anyhow::Result<ExitCode> {
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

    pub(super) async fn cursor_set(&self, args: CursorSet) -> anyhow::Result<ExitCode> {
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
}

/// Where the next subscription starts, given the stored cursor row and `SF_EVENTS_REPLAY`.
pub(super) fn next_start(row: Option<&CursorRow>, replay: ReplayStart) -> String {
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
