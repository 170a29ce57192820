//! The operator actions the command line (`pause`, `resume`, `orders redrive`) and the
//! dashboard (`/admin`) share: what they change and the audit entry each leaves. The callers
//! only parse their input and present the result.
//!
//! Invariants:
//! - Every action that changes something records one `operator_actions` row (action, operator,
//!   filter as JSON, count, per-Order detail) after the change, whichever surface ran it.
//! - A pause or resume invalidates this replica's pauses cache when one is given, so the page
//!   that follows shows the change at once; other replicas follow within the cache time.
//! - A redrive only selects Orders in a state nothing is still working on (`failed`,
//!   `writeback_rejected`); the preview (a dry run) calls nothing and writes nothing.
//! - A redrive sets the Salesforce Orders back to `Activating` through sObject Collections
//!   updates (`allOrNone: false`, one result per Order); the worker's guard, ledger claim and
//!   `sf-order:` reconciliation then treat each new activation event like any operator
//!   re-trigger, so no Order is provisioned twice.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    ids::SalesforceId,
    ledger::{Ledger, OrderRecord, OrderState, PausePart},
    pause::{PauseState, Pauses},
    salesforce::rest::{COLLECTION_MAX, RecordResult, RestClient},
};

/// The value redriven Orders are set back to.
pub const ACTIVATING: &str = "Activating";
/// Most Orders one redrive may select.
pub const REDRIVE_LIMIT_MAX: i64 = 10_000;
/// The selection size when none is given.
pub const REDRIVE_LIMIT_DEFAULT: i64 = 1000;

/// The parts named by two flags; both when neither is set.
pub fn parts(intake: bool, provisioning: bool) -> Vec<PausePart> {
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

/// A reason as stored: trimmed, absent when blank, at most 500 characters.
fn clean_reason(reason: Option<&str>) -> Option<String> {
    reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.chars().take(500).collect())
}

/// Pauses `parts` for `by` (with `reason`), records the action and returns the pauses as the
/// ledger holds them afterwards.
pub async fn pause(
    ledger: &Ledger,
    cache: Option<&Pauses>,
    parts: &[PausePart],
    by: &str,
    reason: Option<&str>,
) -> anyhow::Result<PauseState> {
    let by = by.trim();
    if by.is_empty() {
        bail!("the operator's name must not be empty");
    }
    if parts.is_empty() {
        bail!("name at least one part to pause");
    }
    let reason = clean_reason(reason);
    for part in parts {
        ledger.pause(*part, by, reason.as_deref()).await?;
    }
    let filter = json!({
        "parts": parts.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "reason": reason,
    });
    ledger
        .record_operator_action("pause", by, &filter.to_string(), parts.len() as i64, None)
        .await
        .context("recording the operator action (the parts are paused)")?;
    if let Some(c) = cache {
        c.invalidate();
    }
    Ok(PauseState::from_rows(ledger.pauses().await?))
}

/// Resumes `parts` for `by`; returns the parts that were paused and the pauses afterwards.
pub async fn resume(
    ledger: &Ledger,
    cache: Option<&Pauses>,
    parts: &[PausePart],
    by: &str,
) -> anyhow::Result<(Vec<PausePart>, PauseState)> {
    let by = by.trim();
    if by.is_empty() {
        bail!("the operator's name must not be empty");
    }
    let mut changed = Vec::new();
    for part in parts {
        if ledger.resume(*part).await? {
            changed.push(*part);
        }
    }
    let filter = json!({ "parts": parts.iter().map(|p| p.as_str()).collect::<Vec<_>>() });
    ledger
        .record_operator_action(
            "resume",
            by,
            &filter.to_string(),
            changed.len() as i64,
            None,
        )
        .await
        .context("recording the operator action (the parts are resumed)")?;
    if let Some(c) = cache {
        c.invalidate();
    }
    Ok((changed, PauseState::from_rows(ledger.pauses().await?)))
}

/// `90s`, `30m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_since(raw: &str) -> Result<Duration, String> {
    let t = raw.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 90s, 30m, 2h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?} is not a duration like 90s, 30m, 2h or 7d")),
    };
    if n == 0 {
        return Err("the window must be longer than 0".into());
    }
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

/// Which Orders a redrive selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveFilter {
    /// `failed` or `writeback_rejected`.
    pub state: OrderState,
    /// Only Orders that failed with this code.
    pub code: Option<String>,
    /// Only Orders whose ledger row changed within this long (database clock).
    pub since: Option<Duration>,
    /// At most this many, most recently updated first.
    pub limit: i64,
}

impl RedriveFilter {
    /// Checks the state and the limit; a blank code means none.
    pub fn new(
        state: OrderState,
        code: Option<&str>,
        since: Option<Duration>,
        limit: i64,
    ) -> anyhow::Result<Self> {
        if !matches!(state, OrderState::Failed | OrderState::WritebackRejected) {
            bail!(
                "the state must be failed or writeback_rejected (other Orders are still being worked on or done), got {state}"
            );
        }
        if !(1..=REDRIVE_LIMIT_MAX).contains(&limit) {
            bail!("the limit must be between 1 and {REDRIVE_LIMIT_MAX}, got {limit}");
        }
        Ok(Self {
            state,
            code: code
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            since,
            limit,
        })
    }

    /// The filter as the audit trail records it.
    pub fn to_json(&self) -> Value {
        json!({
            "state": self.state.as_str(),
            "code": self.code,
            "since_secs": self.since.map(|d| d.as_secs()),
            "limit": self.limit,
        })
    }
}

/// The Orders a redrive with `filter` would set back (the dry run).
pub async fn redrive_preview(
    ledger: &Ledger,
    filter: &RedriveFilter,
) -> anyhow::Result<Vec<OrderRecord>> {
    let within_ms = filter
        .since
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
    Ok(ledger
        .find_orders(
            filter.state.as_str(),
            filter.code.as_deref(),
            within_ms,
            filter.limit,
        )
        .await?)
}

/// What one redrive did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedriveReport {
    /// The `operator_actions` row.
    pub action_id: i64,
    pub operator: String,
    /// One per Order, in the selection's order.
    pub results: Vec<RecordResult>,
    pub succeeded: usize,
    pub failed: usize,
}

/// Sets `orders` (a selection made with `filter`) back to [`ACTIVATING`] in Salesforce and
/// records the action for `operator`.
pub async fn redrive(
    ledger: &Ledger,
    rest: &RestClient,
    filter: &RedriveFilter,
    orders: &[OrderRecord],
    operator: &str,
) -> anyhow::Result<RedriveReport> {
    let mut ids = Vec::with_capacity(orders.len());
    for o in orders {
        ids.push(
            SalesforceId::parse(&o.sf_order_id)
                .map_err(|e| anyhow::anyhow!("ledger Order id {:?}: {e}", o.sf_order_id))?,
        );
    }
    let results: Vec<RecordResult> = rest.set_activation_status(&ids, ACTIVATING).await;
    let succeeded = results.iter().filter(|r| r.success).count();
    let failed: Vec<&RecordResult> = results.iter().filter(|r| !r.success).collect();
    let detail = json!({
        "requested": results.len(),
        "succeeded": succeeded,
        "failed": failed,
        "calls": results.len().div_ceil(COLLECTION_MAX),
    });
    let failed = failed.len();
    let action_id = ledger
        .record_operator_action(
            "redrive",
            operator,
            &filter.to_json().to_string(),
            i64::try_from(succeeded).unwrap_or(i64::MAX),
            Some(&detail.to_string()),
        )
        .await
        .context("recording the operator action (the Orders were set)")?;
    Ok(RedriveReport {
        action_id,
        operator: operator.to_owned(),
        results,
        succeeded,
        failed,
    })
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

    #[test]
    fn since_takes_seconds_minutes_hours_days() {
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_since("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_since("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "h", "2w", "0h", "-1h", "1.5h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_redrive_selects_only_finished_orders() {
        assert!(RedriveFilter::new(OrderState::Done, None, None, 10).is_err());
        assert!(RedriveFilter::new(OrderState::Failed, None, None, 0).is_err());
        let f = RedriveFilter::new(OrderState::Failed, Some("  "), None, 10).expect("filter");
        assert_eq!(f.code, None);
        assert_eq!(f.to_json()["state"], "failed");
    }
}
