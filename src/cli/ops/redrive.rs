//! `provisioner orders redrive`: sets the Salesforce Orders of a ledger selection (failed,
//! optionally with one error code, updated within a window) back to `Activating`, as an operator
//! re-triggering each by hand would; the Salesforce Flow then publishes a new activation event
//! for each.
//!
//! Invariants:
//! - `--dry-run` only lists the selection: no Salesforce call, no ledger write.
//! - Without `--yes` it asks `y/N` on the terminal and refuses without one.
//! - One sObject Collections update per [`COLLECTION_MAX`] Orders (`allOrNone: false`), with one
//!   result per Order; one `operator_actions` row (operator, filter, count of Orders set, per-Order
//!   failures) per run that called Salesforce.
//! - A redriven Order is never provisioned twice: the worker's guard, ledger claim and
//!   `sf-order:` reconciliation treat the new event like any operator re-trigger.
//! - Needs the Salesforce settings (`SF_*`) besides the tools' ones; never WHMCS's.

use super::*;
use crate::salesforce::{
    auth::{AuthFlow, TokenProvider},
    rest::{COLLECTION_MAX, RecordResult, RestClient},
};

/// The value the Orders are set back to.
const ACTIVATING: &str = "Activating";
/// Most Orders one redrive may select.
pub const REDRIVE_LIMIT_MAX: i64 = 10_000;

/// Arguments of `orders redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Ledger state of the Orders to redrive: `failed`, or `writeback_rejected`.
    #[arg(long, value_enum)]
    pub state: OrderState,
    /// Only Orders that failed with this error code (e.g. WHMCS_NO_ITEMS).
    #[arg(long)]
    pub code: Option<String>,
    /// Only Orders whose ledger row changed within this long: `90s`, `30m`, `2h`, `7d`.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Duration>,
    /// At most this many Orders, most recently updated first.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=REDRIVE_LIMIT_MAX))]
    pub limit: i64,
    /// Only list the Orders that would be redriven.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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

/// Who runs the command, as the audit trail records it.
fn operator() -> String {
    let user = ["PROVISIONER_OPERATOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "unknown".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    let who = match host {
        Some(h) => format!("{user}@{h}"),
        None => user,
    };
    truncate(&who, 120)
}

impl Tools {
    pub(super) async fn orders_redrive(&self, args: RedriveArgs) -> anyhow::Result<ExitCode> {
        if !matches!(
            args.state,
            OrderState::Failed | OrderState::WritebackRejected
        ) {
            bail!(
                "--state must be failed or writeback_rejected (other Orders are still being worked on or done), got {}",
                args.state
            );
        }
        let code = args
            .code
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let filter = json!({
            "state": args.state.as_str(),
            "code": code,
            "since_secs": args.since.map(|d| d.as_secs()),
            "limit": args.limit,
        });
        // Salesforce settings are checked before anything else (not needed for a dry run).
        let sf = if args.dry_run {
            None
        } else {
            Some(Config::load_for_redrive(self.path.as_deref()).map_err(anyhow::Error::from)?)
        };
        let ledger = self.ledger().await?;
        let within_ms = args
            .since
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        let orders = ledger
            .find_orders(args.state.as_str(), code, within_ms, args.limit)
            .await?;
        let listing: Vec<Value> = orders
            .iter()
            .map(|o| {
                json!({
                    "sf_order_id": o.sf_order_id,
                    "state": o.state,
                    "error_code": o.error_code,
                    "error_message": o.error_message,
                    "whmcs_order_id": o.whmcs_order_id,
                    "updated_at": o.updated_at,
                })
            })
            .collect();
        let print_list = |out: &mut dyn Write| -> std::io::Result<()> {
            let rows = orders
                .iter()
                .map(|o| {
                    vec![
                        o.sf_order_id.clone(),
                        o.state.clone(),
                        fmt_ms(o.updated_at),
                        truncate(&error_text(o), 70),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(&["ORDER", "STATE", "UPDATED", "ERROR"], rows)
            )
        };
        if args.dry_run || orders.is_empty() {
            if args.json {
                print_json(&json!({
                    "dry_run": args.dry_run,
                    "filter": filter,
                    "matched": orders.len(),
                    "orders": listing,
                }))?;
            } else if orders.is_empty() {
                println!("no orders match");
            } else {
                print_list(&mut std::io::stdout().lock())?;
                println!(
                    "{} order(s) would be set back to {ACTIVATING} (dry run: nothing changed)",
                    orders.len()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let Some(sf) = sf else {
            bail!("Salesforce settings were not loaded");
        };
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                eprintln!(
                    "provisioner: refusing to redrive {} order(s) without confirmation: stdin is not a terminal; pass --yes (or --dry-run to list them)",
                    orders.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            print_list(&mut std::io::stderr().lock())?;
            eprint!(
                "Set these {} Salesforce Order(s) back to {ACTIVATING}? [y/N] ",
                orders.len()
            );
            std::io::stderr().flush().ok();
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                eprintln!("provisioner: nothing redriven");
                return Ok(ExitCode::FAILURE);
            }
        }
        let http = crate::net::client(sf.salesforce.http_timeout, &sf.proxy)
            .context("building the HTTP client")?;
        let tokens = TokenProvider::new(http.clone(), AuthFlow::from_config(&sf.salesforce))
            .context("SF_PRIVATE_KEY")?;
        let rest = RestClient::new(
            http,
            tokens,
            &sf.salesforce.api_version,
            sf.salesforce.fields.clone(),
        )
        .with_timeout(sf.salesforce.http_timeout);
        let mut ids = Vec::with_capacity(orders.len());
        for o in &orders {
            ids.push(parse_id(&o.sf_order_id)?);
        }
        let results: Vec<RecordResult> = rest.set_activation_status(&ids, ACTIVATING).await;
        let succeeded = results.iter().filter(|r| r.success).count();
        let failed: Vec<&RecordResult> = results.iter().filter(|r| !r.success).collect();
        let who = operator();
        let detail = json!({
            "requested": results.len(),
            "succeeded": succeeded,
            "failed": failed,
            "calls": results.len().div_ceil(COLLECTION_MAX),
        });
        let action_id = ledger
            .record_operator_action(
                "redrive",
                &who,
                &filter.to_string(),
                i64::try_from(succeeded).unwrap_or(i64::MAX),
                Some(&detail.to_string()),
            )
            .await
            .context("recording the operator action (the Orders were set)")?;
        if args.json {
            print_json(&json!({
                "dry_run": false,
                "action_id": action_id,
                "operator": who,
                "filter": filter,
                "matched": orders.len(),
                "redriven": succeeded,
                "failed": failed.len(),
                "results": results,
            }))?;
        } else {
            let rows = results
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        if r.success { "set" } else { "failed" }.to_owned(),
                        match (&r.code, &r.message) {
                            (Some(c), Some(m)) => truncate(&format!("{c}: {m}"), 90),
                            (Some(c), None) => c.clone(),
                            _ => String::new(),
                        },
                    ]
                })
                .collect();
            print!("{}", table(&["ORDER", "RESULT", "ERROR"], rows));
            println!(
                "{succeeded} of {} order(s) set back to {ACTIVATING} (operator action {action_id}); Salesforce publishes a new activation event for each",
                results.len()
            );
        }
        Ok(if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
