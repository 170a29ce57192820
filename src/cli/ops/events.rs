//! `provisioner events poison|replay`: the dead letters the subscriber kept for poison events,
//! and the replay of one of them once the cause is fixed.
//!
//! Invariants:
//! - A replay goes the normal way: the stored payload is decoded with the schema fetched from
//!   the Pub/Sub API by its schema id (the subscriber's client and decoder), the job (id = the
//!   event's uuid, so a second push is a no-op) is pushed to the queue, then the dead letter is
//!   marked replayed and its inbox row turned `enqueued` in one ledger transaction. The worker
//!   still reads the Order, acts only on `Activating` and takes the ledger lease; the job is an
//!   operator's (it searches WHMCS before any `AddOrder`), so it can never provision twice.
//! - A dead letter that still does not decode, has no event id, or whose payload was truncated
//!   is not pushed: the command says why and exits non-zero.
//! - Dead letters are kept (never deleted); a replayed one shows when it was replayed.

use apache_avro::Schema;

use super::*;

use crate::{
    ledger::PoisonRow,
    net,
    salesforce::{
        auth::{AuthFlow, TokenProvider},
        event,
        pubsub::{self, PubSub},
    },
};

/// `provisioner events …`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List the dead letters (poison events), newest first.
    Poison {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Decode a dead letter again (schema fetched from Salesforce by its id) and, if it now
    /// decodes, enqueue its job; exits non-zero with the reason if it still fails.
    Replay {
        /// The event's replay id (hex, as `events poison` prints it).
        replay_id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Why a replay did not enqueue a job.
struct Refusal {
    reason: &'static str,
    message: String,
}

impl Tools {
    pub(super) async fn events_poison(&self, json: bool, limit: u32) -> anyhow::Result<ExitCode> {
        let ledger = self.ledger().await?;
        let rows = ledger.poison_events(i64::from(limit.max(1))).await?;
        if json {
            print_json(&json!({ "poison_events": rows }))?;
            return Ok(ExitCode::SUCCESS);
        }
        if rows.is_empty() {
            println!("no poison events");
            return Ok(ExitCode::SUCCESS);
        }
        print!(
            "{}",
            table(
                &[
                    "REPLAY ID",
                    "RECEIVED",
                    "REASON",
                    "EVENT ID",
                    "SCHEMA ID",
                    "BYTES",
                    "REPLAYED",
                    "DETAIL"
                ],
                rows.iter()
                    .map(|r| vec![
                        r.replay_id.clone(),
                        fmt_ms(r.received_at),
                        r.reason.clone(),
                        opt(&r.event_id),
                        opt(&r.schema_id),
                        format!(
                            "{}{}",
                            r.payload_bytes,
                            if r.truncated { " (truncated)" } else { "" }
                        ),
                        match (r.replayed_at, &r.sf_order_id) {
                            (Some(t), Some(o)) => format!("{} ({o})", fmt_ms(t)),
                            (Some(t), None) => fmt_ms(t),
                            (None, _) => "-".into(),
                        },
                        truncate(r.detail.as_deref().unwrap_or(""), 60),
                    ])
                    .collect(),
            )
        );
        Ok(ExitCode::SUCCESS)
    }

    pub(super) async fn events_replay(
        &self,
        config: Option<&Path>,
        replay_id: &str,
        json: bool,
    ) -> anyhow::Result<ExitCode> {
        let rid = replay_id.trim().to_ascii_lowercase();
        if rid.is_empty() || hex::decode(&rid).is_err() {
            bail!("the replay id must be hex (as `events poison` prints it), got {replay_id:?}");
        }
        let ledger = self.ledger().await?;
        let Some((row, payload)) = ledger.poison_event(&rid).await? else {
            bail!("no poison event with replay id {rid}");
        };
        if let Some(at) = row.replayed_at {
            let out = json!({
                "replay_id": rid,
                "replayed": true,
                "already": true,
                "event_id": row.event_id,
                "order_id": row.sf_order_id,
                "replayed_at": at,
            });
            if json {
                print_json(&out)?;
            } else {
                println!(
                    "poison event {rid} was already replayed at {} (Order {})",
                    fmt_ms(at),
                    opt(&row.sf_order_id)
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let job = match self.decode_again(config, &row, &payload).await? {
            Ok(job) => job,
            Err(r) => {
                if json {
                    print_json(&json!({
                        "replay_id": rid,
                        "replayed": false,
                        "reason": r.reason,
                        "error": r.message,
                    }))?;
                } else {
                    eprintln!(
                        "provisioner: poison event {rid} still cannot be replayed ({}): {}",
                        r.reason,
                        clean(&r.message)
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
        };
        let queue = self.queue().await?;
        let order_id = job.order_id.clone();
        let event_id = job.event_id.clone();
        // The same dedupe as the subscriber: an event the inbox holds as enqueued is not pushed.
        let pushed = if ledger.inbox_status(&event_id).await?.as_deref() == Some("enqueued") {
            false
        } else {
            queue
                .push(vec![Job::ProvisionOrderV1(job)])
                .await
                .context("enqueueing the job")?;
            true
        };
        ledger
            .mark_poison_replayed(&rid, &event_id, &order_id)
            .await?;
        if json {
            print_json(&json!({
                "replay_id": rid,
                "replayed": true,
                "already": false,
                "event_id": event_id,
                "order_id": order_id,
                "job_id": pushed.then_some(&event_id),
            }))?;
        } else if pushed {
            println!("poison event {rid} decoded: job {event_id} enqueued for Order {order_id}");
        } else {
            println!(
                "poison event {rid} decoded; its event {event_id} was already enqueued (Order {order_id})"
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Decodes the stored payload with the schema the Pub/Sub API now gives for its id.
    async fn decode_again(
        &self,
        config: Option<&Path>,
        row: &PoisonRow,
        payload: &[u8],
    ) -> anyhow::Result<Result<ProvisionOrderV1, Refusal>> {
        let refuse = |reason: &'static str, message: String| Ok(Err(Refusal { reason, message }));
        let Some(event_id) = row.event_id.clone() else {
            return refuse("no_event", "the event had no body".into());
        };
        if row.truncated {
            return refuse(
                "truncated",
                format!(
                    "only {} of the payload's {} bytes were kept",
                    ledger::POISON_PAYLOAD_MAX,
                    row.payload_bytes
                ),
            );
        }
        let Some(schema_id) = row.schema_id.clone() else {
            return refuse("no_schema_id", "the event carried no schema id".into());
        };
        let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let http = net::client(cfg.salesforce.http_timeout, &cfg.proxy)
            .context("building the HTTP client")?;
        let tokens = TokenProvider::new(http, AuthFlow::from_config(&cfg.salesforce))
            .context("SF_PRIVATE_KEY")?;
        let session = tokens
            .session()
            .await
            .context("Salesforce authentication")?;
        let channel =
            pubsub::channel(&cfg.events.endpoint, &cfg.proxy).context("SF_PUBSUB_ENDPOINT")?;
        let mut client = PubSub::new(channel);
        let schema = match client.get_schema(&session, &schema_id).await {
            Ok(json) => Schema::parse_str(&json),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return refuse(
                    "unknown_schema",
                    format!("schema {schema_id} is unknown to the Pub/Sub API"),
                );
            }
            Err(status) => bail!(
                "fetching schema {schema_id} from the Pub/Sub API: {:?} {}",
                status.code(),
                status.message()
            ),
        };
        let Ok(schema) = schema else {
            return refuse(
                "bad_schema",
                format!("schema {schema_id} is not valid Avro"),
            );
        };
        apache_avro::util::max_allocation_bytes(event::MAX_EVENT_BYTES);
        match event::decode(&schema, &schema_id, payload, &cfg.events.fields) {
            Ok(req) => Ok(Ok(ProvisionOrderV1 {
                event_id: event_id.clone(),
                replay_id: Some(row.replay_id.clone()),
                order_id: req.order_id.to_string(),
                idem_key: req.idem_key,
                correlation_id: req.correlation_id.unwrap_or(event_id),
                event_created_ms: req.created_date_ms,
                source: JobSource::Operator,
            })),
            Err(p) => refuse(p.kind(), p.to_string()),
        }
    }
}
