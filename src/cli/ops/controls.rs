//! `provisioner pause|resume [--intake] [--provisioning]`: the cluster-wide operator pauses,
//! stored in the ledger (who, when on the database's clock, why). Every replica follows a change
//! within the pauses' cache time (`crate::pause`, about a second). The change and its
//! `operator_actions` entry are [`crate::operator`]'s (shared with the dashboard).

use super::*;

use crate::{
    ledger::{PausePart, PauseRow},
    operator,
    pause::PauseState,
};

/// Arguments of `pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Pause intake: the subscriber fetches no more events (they stay retained in Salesforce,
    /// the cursor does not move).
    #[arg(long)]
    pub intake: bool,
    /// Pause provisioning: no job starts a WHMCS call (jobs wait in the queue; one already
    /// running finishes).
    #[arg(long)]
    pub provisioning: bool,
    /// Why (shown by health, `queue stats` and the dashboard).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Who pauses.
    #[arg(long, env = "USER", default_value = "operator", value_name = "NAME")]
    pub by: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Resume intake.
    #[arg(long)]
    pub intake: bool,
    /// Resume provisioning.
    #[arg(long)]
    pub provisioning: bool,
    /// Who resumes.
    #[arg(long, env = "USER", default_value = "operator", value_name = "NAME")]
    pub by: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One line per part: `intake paused since … by … (reason)` or `intake running`.
pub(super) fn describe(state: &PauseState) -> String {
    let mut out = String::new();
    for part in PausePart::ALL {
        let line = match state.get(part) {
            Some(PauseRow {
                since, by, reason, ..
            }) => format!(
                "{:<13} paused since {} by {}{}",
                part.as_str(),
                fmt_ms(*since),
                clean(by),
                reason
                    .as_deref()
                    .map(|r| format!(" ({})", clean(r)))
                    .unwrap_or_default()
            ),
            None => format!("{:<13} running", part.as_str()),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

impl Tools {
    pub(super) async fn pause(&self, args: PauseArgs) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let parts = operator::parts(args.intake, args.provisioning);
        let state =
            operator::pause(&ledger, None, &parts, &args.by, args.reason.as_deref()).await?;
        self.report(&parts, &state, args.json, "paused")
    }

    pub(super) async fn resume(&self, args: ResumeArgs) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let parts = operator::parts(args.intake, args.provisioning);
        let (changed, state) = operator::resume(&ledger, None, &parts, &args.by).await?;
        self.report(&changed, &state, args.json, "resumed")
    }

    fn report(
        &self,
        changed: &[PausePart],
        state: &PauseState,
        json: bool,
        verb: &str,
    ) -> anyhow::Result<ExitCode> {
        if json {
            print_json(&json!({
                "changed": changed.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "paused": state.to_json(),
            }))?;
        } else {
            if changed.is_empty() {
                println!("nothing was paused");
            } else {
                let names: Vec<&str> = changed.iter().map(|p| p.as_str()).collect();
                println!(
                    "{} {verb}; every replica follows within about {} s",
                    names.join(" and "),
                    crate::pause::CACHE_TTL.as_secs().max(1)
                );
            }
            print!("{}", describe(state));
        }
        Ok(ExitCode::SUCCESS)
    }
}
