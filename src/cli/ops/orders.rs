//! `provisioner orders list|show|requeue|redrive`: the ledger's view of Orders with each one's
//! step timeline (the audit trail), re-enqueueing one (through the worker's guards, so a requeue
//! can never provision an Order twice) and redriving many (`redrive`).

use super::*;

/// `provisioner orders …`
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// List Orders in the ledger, most recently updated first.
    List {
        /// Only Orders in this ledger state.
        #[arg(long, value_enum)]
        state: Option<OrderState>,
        /// At most this many Orders (1–1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one Order: ledger row, WHMCS ids, errors, attempt history, the timeline of its
    /// external steps, events and their jobs.
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
    /// Set the Salesforce Orders of a ledger selection back to Activating (the Flow publishes a
    /// new activation event for each): e.g. every Order that failed with one code, once its cause
    /// is fixed. Lists and asks for confirmation first. Safe: an Order is never provisioned twice.
    Redrive(super::RedriveArgs),
}

impl Tools {
    pub(super) async fn orders_list(
        &self,
        state: Option<OrderState>,
        limit: i64,
        json: bool,
    ) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let orders = ledger.list(state.map(OrderState::as_str), limit).await?;
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

    pub(super) async fn orders_show(&self, raw: &str, json: bool) -> anyhow::Result<ExitCode> {
        let id = parse_id(raw)?;
        let ledger = self.ledger().await?;
        let order = ledger.get(&id).await?;
        let attempts = ledger.attempts(&id).await?;
        let events = ledger.inbox_for(&id).await?;
        let lease = ledger.lease_of(&id).await?;
        let steps = ledger.steps(&id).await?;
        if order.is_none() && events.is_empty() && steps.is_empty() {
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
                "steps": steps,
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
        out.push_str("\nTimeline (external steps)\n");
        if steps.is_empty() {
            out.push_str("  none recorded\n");
        } else {
            out.push_str(&timeline_table(&steps));
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

    pub(super) async fn orders_requeue(&self, raw: &str, json: bool) -> anyhow::Result<ExitCode> {
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
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS.mmmZ`.
fn fmt_ms_precise(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The steps of an Order as a table, oldest first.
fn timeline_table(steps: &[ledger::StepRecord]) -> String {
    let rows = steps
        .iter()
        .map(|s| {
            vec![
                fmt_ms_precise(s.started_at),
                s.step.clone(),
                format!("{} ms", s.duration_ms),
                s.outcome.clone(),
                s.attempt_id.map(|a| a.to_string()).unwrap_or_default(),
                s.job_id.clone().unwrap_or_default(),
                s.whmcs_client_id.clone().unwrap_or_default(),
                s.whmcs_order_id.map(|v| v.to_string()).unwrap_or_default(),
                match (&s.error_code, &s.error_message) {
                    (Some(c), Some(m)) => truncate(&format!("{c}: {m}"), 80),
                    (Some(c), None) => c.clone(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    table(
        &[
            "STARTED",
            "STEP",
            "DURATION",
            "OUTCOME",
            "ATTEMPT",
            "JOB",
            "WHMCS CLIENT",
            "WHMCS ORDER",
            "ERROR",
        ],
        rows,
    )
}
