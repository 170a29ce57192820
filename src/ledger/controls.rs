//! Operator controls kept in the ledger: the pauses of intake and provisioning (`pauses`) and
//! the dead letters of poison events (`poison_events`).
//!
//! Invariants:
//! - A pause is one row per part, so it survives a restart of every replica and the loss of
//!   Redis's data; its time comes from the database's clock. Resuming deletes the row.
//! - A poison event is stored in the same transaction as its inbox row and the cursor that moves
//!   past it ([`Ledger::record_events_with_poison`]): the cursor never moves past evidence that
//!   was not kept. At most [`POISON_PAYLOAD_MAX`] bytes of a payload are kept (`truncated`
//!   says when more arrived); rows are never deleted.
//! - Marking a dead letter replayed and turning its inbox row from `poison` to `enqueued` is one
//!   transaction, done after the job is in the queue (the order the subscriber keeps).

use sqlx::{Connection, Row};

use super::{Ledger, Result};

/// Bytes of a poison event's payload kept as evidence.
pub const POISON_PAYLOAD_MAX: usize = 64 * 1024;

/// What a pause stops.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum PausePart {
    /// The subscriber fetches no events (they stay retained in Salesforce).
    Intake,
    /// No job starts a WHMCS call (jobs wait in the queue).
    Provisioning,
}

impl PausePart {
    pub const ALL: [PausePart; 2] = [Self::Intake, Self::Provisioning];

    /// The name stored in the ledger and used as the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Intake => "intake",
            Self::Provisioning => "provisioning",
        }
    }
}

/// One paused part.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PauseRow {
    pub part: String,
    /// Epoch milliseconds on the database's clock.
    pub since: i64,
    pub by: String,
    pub reason: Option<String>,
}

/// A poison event to keep (see [`Ledger::record_events_with_poison`]).
#[derive(Debug, Clone)]
pub struct PoisonEntry<'a> {
    pub replay_id: &'a [u8],
    pub event_id: Option<&'a str>,
    pub schema_id: Option<&'a str>,
    /// The poison kind (`unknown_schema`, `undecodable`, …).
    pub reason: &'a str,
    /// The decoder's message.
    pub detail: Option<String>,
    pub payload: &'a [u8],
}

/// A dead letter as operators see it (without its payload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoisonRow {
    pub replay_id: String,
    pub channel: String,
    pub event_id: Option<String>,
    pub schema_id: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
    /// Size of the payload as received.
    pub payload_bytes: i64,
    /// Only the first [`POISON_PAYLOAD_MAX`] bytes were kept.
    pub truncated: bool,
    pub received_at: i64,
    pub replayed_at: Option<i64>,
    /// The Order the replayed event named.
    pub sf_order_id: Option<String>,
}

const POISON_COLUMNS: &str = "replay_id, channel, event_id, schema_id, reason, detail, \
    payload_size, truncated, received_at, replayed_at, sf_order_id";

fn poison_row(r: &sqlx::any::AnyRow) -> Result<PoisonRow> {
    Ok(PoisonRow {
        replay_id: r.try_get("replay_id")?,
        channel: r.try_get("channel")?,
        event_id: r.try_get("event_id")?,
        schema_id: r.try_get("schema_id")?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
        payload_bytes: r.try_get("payload_size")?,
        truncated: r.try_get::<i64, _>("truncated")? != 0,
        received_at: r.try_get("received_at")?,
        replayed_at: r.try_get("replayed_at")?,
        sf_order_id: r.try_get("sf_order_id")?,
    })
}

impl Ledger {
    /// Pauses `part` (again: the start time stays, who and why are replaced).
    pub async fn pause(&self, part: PausePart, by: &str, reason: Option<&str>) -> Result<()> {
        let mut conn = self.writer().await?;
        let sql = format!(
            "INSERT INTO pauses (part, paused_at, paused_by, reason) VALUES ($1, {}, $2, $3) \
             ON CONFLICT (part) DO UPDATE SET paused_by = excluded.paused_by, \
             reason = excluded.reason",
            self.db_now()
        );
        sqlx::query(&sql)
            .bind(part.as_str())
            .bind(by)
            .bind(reason)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Resumes `part`; whether it was paused.
    pub async fn resume(&self, part: PausePart) -> Result<bool> {
        let mut conn = self.writer().await?;
        let n = sqlx::query("DELETE FROM pauses WHERE part = $1")
            .bind(part.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Every paused part.
    pub async fn pauses(&self) -> Result<Vec<PauseRow>> {
        let mut conn = self.reader().await?;
        let rows =
            sqlx::query("SELECT part, paused_at, paused_by, reason FROM pauses ORDER BY part")
                .fetch_all(&mut *conn)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(PauseRow {
                    part: r.try_get("part")?,
                    since: r.try_get("paused_at")?,
                    by: r.try_get("paused_by")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// The most recent dead letters, newest first.
    pub async fn poison_events(&self, limit: i64) -> Result<Vec<PoisonRow>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {POISON_COLUMNS} FROM poison_events \
             ORDER BY received_at DESC, replay_id DESC LIMIT $1"
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&mut *conn).await?;
        rows.iter().map(poison_row).collect()
    }

    /// Dead letters kept, and those of them not replayed.
    pub async fn poison_counts(&self) -> Result<(i64, i64)> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS kept, \
             COALESCE(SUM(CASE WHEN replayed_at IS NULL THEN 1 ELSE 0 END), 0) AS pending \
             FROM poison_events",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok((row.try_get("kept")?, row.try_get("pending")?))
    }

    /// One dead letter and its kept payload, by hex replay id.
    pub async fn poison_event(&self, replay_id: &str) -> Result<Option<(PoisonRow, Vec<u8>)>> {
        let mut conn = self.reader().await?;
        let sql =
            format!("SELECT {POISON_COLUMNS}, payload FROM poison_events WHERE replay_id = $1");
        let row = sqlx::query(&sql)
            .bind(replay_id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| {
            let payload: String = r.try_get("payload")?;
            Ok((poison_row(&r)?, hex::decode(payload).unwrap_or_default()))
        })
        .transpose()
    }

    /// Marks a dead letter replayed (its job is in the queue) and its inbox row `enqueued`, in
    /// one transaction; `false` if it was already replayed.
    pub async fn mark_poison_replayed(
        &self,
        replay_id: &str,
        event_id: &str,
        sf_order_id: &str,
    ) -> Result<bool> {
        let mut conn = self.writer_for_transaction().await?;
        let mut tx = conn.begin().await?;
        let n = sqlx::query(&format!(
            "UPDATE poison_events SET replayed_at = {}, sf_order_id = $1 \
             WHERE replay_id = $2 AND replayed_at IS NULL",
            self.db_now()
        ))
        .bind(sf_order_id)
        .bind(replay_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE event_inbox SET status = 'enqueued', sf_order_id = $1 \
             WHERE event_id = $2 AND status = 'poison'",
        )
        .bind(sf_order_id)
        .bind(event_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The inbox status of one event (`enqueued`, `poison`), if the inbox holds it.
    pub async fn inbox_status(&self, event_id: &str) -> Result<Option<String>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query("SELECT status FROM event_inbox WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| r.try_get("status").map_err(Into::into))
            .transpose()
    }
}

/// The INSERT of a batch's dead letters, in the subscriber's transaction.
pub(super) async fn insert_poison(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    channel: &str,
    poison: &[PoisonEntry<'_>],
    now: &str,
) -> Result<()> {
    for p in poison {
        let kept = &p.payload[..p.payload.len().min(POISON_PAYLOAD_MAX)];
        sqlx::query(&format!(
            "INSERT INTO poison_events (replay_id, channel, event_id, schema_id, reason, detail, \
             payload, payload_size, truncated, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {now}) ON CONFLICT (replay_id) DO NOTHING",
        ))
        .bind(hex::encode(p.replay_id))
        .bind(channel)
        .bind(p.event_id)
        .bind(p.schema_id)
        .bind(p.reason)
        .bind(p.detail.as_deref())
        .bind(hex::encode(kept))
        .bind(i64::try_from(p.payload.len()).unwrap_or(i64::MAX))
        .bind(i64::from(kept.len() < p.payload.len()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::DatabaseConfig, ledger::InboxEntry};

    async fn ledger() -> Ledger {
        Ledger::open(&DatabaseConfig {
            url: "sqlite::memory:".into(),
            auto_migrate: true,
            max_connections: 2,
        })
        .await
        .expect("ledger")
    }

    /// A payload above the cap is kept truncated (and says so); replaying marks the dead letter
    /// and its inbox row once.
    #[tokio::test]
    async fn dead_letters_keep_a_bounded_payload_and_are_replayed_once() {
        let l = ledger().await;
        let big = vec![7u8; POISON_PAYLOAD_MAX + 10];
        let inbox = [InboxEntry {
            event_id: "e1",
            replay_id: &[1],
            sf_order_id: None,
            status: "poison",
        }];
        let poison = [PoisonEntry {
            replay_id: &[1],
            event_id: Some("e1"),
            schema_id: Some("s1"),
            reason: "undecodable",
            detail: Some("bad datum".into()),
            payload: &big,
        }];
        l.record_events_with_poison("ch", &inbox, &poison, &[1], 0)
            .await
            .expect("record");
        let (row, payload) = l.poison_event("01").await.expect("read").expect("row");
        assert!(row.truncated);
        assert_eq!(row.payload_bytes, big.len() as i64);
        assert_eq!(payload.len(), POISON_PAYLOAD_MAX);
        assert_eq!(l.poison_counts().await.expect("counts"), (1, 1));
        assert!(
            l.mark_poison_replayed("01", "e1", "801000000000001AAA")
                .await
                .expect("mark")
        );
        assert!(
            !l.mark_poison_replayed("01", "e1", "801000000000001AAA")
                .await
                .expect("mark")
        );
        assert_eq!(
            l.inbox_status("e1").await.expect("inbox").as_deref(),
            Some("enqueued")
        );
        assert_eq!(l.poison_counts().await.expect("counts"), (1, 0));
    }

    /// Pausing again keeps the start and replaces who and why; resuming reports whether it was
    /// paused.
    #[tokio::test]
    async fn pauses_keep_their_start_and_resume_once() {
        let l = ledger().await;
        l.pause(PausePart::Intake, "alice", Some("maintenance"))
            .await
            .expect("pause");
        let first = l.pauses().await.expect("pauses");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].part, "intake");
        l.pause(PausePart::Intake, "bob", None)
            .await
            .expect("pause");
        let again = l.pauses().await.expect("pauses");
        assert_eq!(again[0].since, first[0].since);
        assert_eq!(
            (again[0].by.as_str(), again[0].reason.as_deref()),
            ("bob", None)
        );
        assert!(l.resume(PausePart::Intake).await.expect("resume"));
        assert!(!l.resume(PausePart::Intake).await.expect("resume"));
        assert!(l.pauses().await.expect("pauses").is_empty());
    }
}
