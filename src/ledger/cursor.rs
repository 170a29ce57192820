//! The subscription's replay cursor, one row per channel: what the subscriber stores after
//! each batch (fenced by its lease's token) and what operators read and set.
//!
//! Invariants:
//! - A write carrying an older fencing token than the stored one changes nothing and answers
//!   [`LedgerError::Fenced`], so a subscriber that lost its lease can never move (or clear) the
//!   cursor.
//! - Fencing tokens are allocated here ([`Ledger::next_leader_epoch`]), strictly increasing and
//!   above every token a cursor carries, so they survive the loss of Redis's data.
//! - A cleared cursor keeps its row (empty replay id) and so its fencing token.

use sqlx::Row;

use super::{Ledger, LedgerError, Result};
use crate::config::ReplayStart;

/// What an operator stores as the cursor to ask for a replay from the earliest retained event.
pub const EARLIEST_REQUEST: &str = "EARLIEST";

/// The stored cursor row of a channel.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CursorRow {
    /// Hex replay id, or [`EARLIEST_REQUEST`].
    pub replay_id: String,
    pub fencing_token: i64,
    pub updated_at: i64,
}

impl Ledger {
    /// The stored replay id of a channel.
    pub async fn load_cursor(&self, channel: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query("SELECT replay_id FROM cursors WHERE channel = $1")
            .bind(channel)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match row {
            Some(r) => hex::decode(r.try_get::<String, _>("replay_id")?)
                .ok()
                .filter(|id| !id.is_empty()),
            None => None,
        })
    }

    /// Stores the replay id of a channel (used for keepalive `latest_replay_id`s);
    /// `fencing_token` rejects ([`LedgerError::Fenced`]) a write from a subscriber that lost
    /// its lease.
    pub async fn save_cursor(
        &self,
        channel: &str,
        replay_id: &[u8],
        fencing_token: i64,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        let n = sqlx::query(&format!(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, $3, {}) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             fencing_token = excluded.fencing_token, updated_at = excluded.updated_at \
             WHERE cursors.fencing_token <= excluded.fencing_token",
            self.db_now()
        ))
        .bind(channel)
        .bind(hex::encode(replay_id))
        .bind(fencing_token)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(LedgerError::Fenced);
        }
        Ok(())
    }

    /// Forgets a channel's cursor (the next subscription starts from the configured preset),
    /// fenced like every cursor write: the row stays, with an empty replay id and this token.
    pub async fn clear_cursor(&self, channel: &str, fencing_token: i64) -> Result<()> {
        let mut conn = self.writer().await?;
        let n = sqlx::query(&format!(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, '', $2, {}) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             fencing_token = excluded.fencing_token, updated_at = excluded.updated_at \
             WHERE cursors.fencing_token <= excluded.fencing_token",
            self.db_now()
        ))
        .bind(channel)
        .bind(fencing_token)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(LedgerError::Fenced);
        }
        Ok(())
    }

    /// Allocates the next fencing token of the leadership `name`: one more than the last one
    /// allocated and than any token a cursor carries (tokens from before this table existed).
    pub async fn next_leader_epoch(&self, name: &str) -> Result<i64> {
        let mut conn = self.writer().await?;
        sqlx::query(
            "INSERT INTO leader_epochs (name, epoch) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *conn)
        .await?;
        let row = sqlx::query(
            "UPDATE leader_epochs SET epoch = CASE \
             WHEN epoch >= (SELECT COALESCE(MAX(fencing_token), 0) FROM cursors) THEN epoch + 1 \
             ELSE (SELECT COALESCE(MAX(fencing_token), 0) FROM cursors) + 1 END \
             WHERE name = $1 RETURNING epoch",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get("epoch")?)
    }

    /// A channel's cursor row as stored (including an EARLIEST request); `None` when there is
    /// none or it was cleared.
    pub async fn cursor_row(&self, channel: &str) -> Result<Option<CursorRow>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(
            "SELECT replay_id, fencing_token, updated_at FROM cursors WHERE channel = $1",
        )
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?;
        row.filter(|r| {
            r.try_get::<String, _>("replay_id")
                .is_ok_and(|id| !id.is_empty())
        })
        .map(|r| {
            Ok(CursorRow {
                replay_id: r.try_get("replay_id")?,
                fencing_token: r.try_get("fencing_token")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// An operator's pending request for where the next subscription starts, overriding
    /// `SF_EVENTS_REPLAY` once. The subscriber asks before subscribing.
    pub async fn replay_request(&self, channel: &str) -> Result<Option<ReplayStart>> {
        Ok(self
            .cursor_row(channel)
            .await?
            .filter(|c| c.replay_id == EARLIEST_REQUEST)
            .map(|_| ReplayStart::Earliest))
    }

    /// Stores an operator's cursor (a hex replay id or [`EARLIEST_REQUEST`]), keeping the row's
    /// fencing token.
    pub async fn store_operator_cursor(&self, channel: &str, value: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query(&format!(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, 0, {}) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             updated_at = excluded.updated_at",
            self.db_now()
        ))
        .bind(channel)
        .bind(value)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
