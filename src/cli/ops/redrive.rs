//! `provisioner orders redrive`: sets the Salesforce Orders of a ledger selection (failed,
//! optionally with one error code, updated within a window) back to `Activating`, as an operator
//! re-triggering each by hand would; the Salesforce Flow then publishes a new activation event
//! for each.
//!
//! Invariants:
//! - `--dry-run` only lists the selection: no Salesforce call, no ledger write.
//! - Without `--yes` it asks `y/N` on the terminal and refuses without one.
//! - The selection and the Salesforce update are [`crate::operator`]'s (shared with the
//!   dashboard): one sObject Collections update per 200 Orders (`allOrNone: false`), with one
//!   result per Order; one `operator_actions` row (operator, filter, count of Orders set, per-Order
//!   failures) per run that called Salesforce.
//! - A redriven Order is never provisioned twice: the worker's guard, ledger claim and
//!   `sf-order:` reconciliation treat the new event like any operator re-trigger.
//! - Needs the Salesforce settings (`SF_*`) besides the tools' ones; never WHMCS's.

use super::*;
use crate::{
    operator::{self, ACTIVATING, REDRIVE_LIMIT_MAX, RedriveFilter},
    salesforce::auth::{AuthFlow, TokenProvider},
    salesforce::rest::{RecordResult, RestClient},
};

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
    #[arg(long, value_parser = operator::parse_since)]
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
        let selection =
            RedriveFilter::new(args.state, args.code.as_deref(), args.since, args.limit)?;
        let filter = selection.to_json();
        // Salesforce settings are checked before anything else (not needed for a dry run).
        let sf = if args.dry_run {
            None
        } else {
            Some(Config::load_for_redrive(self.path.as_deref()).map_err(anyhow::Error::from)?)
        };
        let ledger = self.ledger().await?;
        let orders = operator::redrive_preview(&ledger, &selection).await?;
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
        let report = operator::redrive(&ledger, &rest, &selection, &orders, &operator()).await?;
        let (action_id, who, results, succeeded) = (
            report.action_id,
            report.operator,
            report.results,
            report.succeeded,
        );
        let failed: Vec<&RecordResult> = results.iter().filter(|r| !r.success).collect();
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
