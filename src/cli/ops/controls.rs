//! `provisioner pause|resume [--intake] [--provisioning]`: the cluster-wide operator pauses,
//! stored in the ledger (who, when on the database's clock, why). Every replica follows a change
//! within the pauses' cache time (`crate::pause`, about a second).

use super::*;

use crate::{
    ledger::{PausePart, PauseRow},
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
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The parts the flags name; both when neither is given.
fn parts(intake: bool, provisioning: bool) -> Vec<PausePart> {
    match (intake, provisioning) {
        (false, false) => PausePart::ALL.to_vec(),
        _ => PausePart::ALL
            .into_iter()
            .filter(|p| match p {
                PausePart::Intake => intake,
                PausePart::Provisioning => provisioning,
            })
            .collect(),
    }
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
        let by = args.by.trim();
        if by.is_empty() {
            bail!("--by must not be empty");
        }
        let reason = args
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        let ledger = self.ledger().await?;
        let parts = parts(args.intake, args.provisioning);
        for part in &parts {
            ledger.pause(*part, by, reason).await?;
        }
        let state = PauseState::from_rows(ledger.pauses().await?);
        self.report(&parts, &state, args.json, "paused")
    }

    pub(super) async fn resume(&self, args: ResumeArgs) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let mut changed = Vec::new();
        for part in parts(args.intake, args.provisioning) {
            if ledger.resume(part).await? {
                changed.push(part);
            }
        }
        let state = PauseState::from_rows(ledger.pauses().await?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flag_means_both_parts() {
        assert_eq!(parts(false, false), PausePart::ALL.to_vec());
        assert_eq!(parts(true, false), vec![PausePart::Intake]);
        assert_eq!(parts(false, true), vec![PausePart::Provisioning]);
        assert_eq!(parts(true, true), PausePart::ALL.to_vec());
    }
}
