//! The subscription's replay cursor, one row per channel: what the subscriber stores after
//! each batch (fenced by its lease's token) and what operators read and set.
//!
//! Invariant: a write carrying an older fencing token than the stored one changes nothing, so a
//! subscriber that lost its lease can never move the cursor.

use sqlx::Row;

use super::{Ledger, Result, now_ms};
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
            Some(r) => hex::decode(r.try_get::<String, _>("replay_id")?).ok(),
            None => None,
        })
    }

    /// Stores the replay id of a channel (used for keepalive `latest_replay_id`s and by
    /// operators); `fencing_token` rejects a write from a subscriber that lost its lease.
    pub async fn save_cursor(
        &self,
        channel: &str,
        replay_id: &[u8],
        fencing_token: i64,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let n = sqlx::query(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             fencing_token = excluded.fencing_token, updated_at = excluded.updated_at \
             WHERE cursors.fencing_token <= excluded.fencing_token",
        )
        .bind(channel)
        .bind(hex::encode(replay_id))
        .bind(fencing_token)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Forgets a channel's cursor (the next subscription starts from the configured preset).
    pub async fn clear_cursor(&self, channel: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query("DELETE FROM cursors WHERE channel = $1")
            .bind(channel)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// A channel's cursor row as stored (including an EARLIEST request).
    pub async fn cursor_row(&self, channel: &str) -> Result<Option<CursorRow>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(
            "SELECT replay_id, fencing_token, updated_at FROM cursors WHERE channel = $1",
        )
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| {
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
        sqlx::query(
            "INSERT INTO cursors (channel, replay_id, fencing_token, updated_at) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id, \
             updated_at = excluded.updated_at",
        )
        .bind(channel)
        .bind(value)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
