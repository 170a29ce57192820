//! `provisioner queue stats`: the Redis queue's depth by state, live workers and the leader, the
//! operator pauses and the dead letters.

use super::*;

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

impl Tools {
    pub(super) async fn queue_stats(&self, json: bool) -> anyhow::Result<ExitCode> {
        let queue = self.queue().await?;
        let stats = queue.stats().await.context("reading queue statistics")?;
        let stored = queue.job_count().await?;
        let workers = queue.live_workers(LIVE_WORKER_WINDOW).await?;
        let ledger = self.ledger().await?;
        let by_state = ledger.counts_by_state().await?;
        let inbox = ledger.inbox_counts().await?;
        let (failed, total) = ledger
            .outcome_counts_within(std::time::Duration::from_secs(3600))
            .await?;
        let paused = crate::pause::PauseState::from_rows(ledger.pauses().await?);
        let (poison_kept, poison_pending) = ledger.poison_counts().await?;
        if json {
            print_json(&json!({
                "queue": self.cfg.queue.name,
                "jobs": stats,
                "jobs_stored": stored,
                "live_workers": workers,
                "orders_by_state": by_state,
                "inbox": inbox,
                "last_hour": {"failed": failed, "finished": total},
                "paused": paused.to_json(),
                "dead_letters": {"kept": poison_kept, "not_replayed": poison_pending},
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("Queue {}", self.cfg.queue.name);
        print!("{}", super::controls::describe(&paused));
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
            "\nInbox: {} enqueued, {} poison ({} dead letters kept, {} not replayed)",
            inbox.get("enqueued").copied().unwrap_or(0),
            inbox.get("poison").copied().unwrap_or(0),
            poison_kept,
            poison_pending
        );
        println!(
            "Last hour: {failed} failed of {total} finished attempts ({})",
            percent(failed, total)
        );
        Ok(ExitCode::SUCCESS)
    }
}
