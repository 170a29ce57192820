//! Subscriber leadership across replicas: a Redis lease with a fencing token from the ledger.
//!
//! Hand-written (two Lua scripts) because a lease needs compare-and-renew and
//! compare-and-delete on the owner, which no well-kept Redis lock crate offers with a fencing
//! token.
//!
//! Every replica runs workers; only the holder of the lease `<queue>:leader` runs the Pub/Sub
//! subscriber and the stuck-order reconciler. Acquiring the lease allocates the next fencing
//! token in the ledger ([`Ledger::next_leader_epoch`], strictly increasing there, so it survives
//! Redis losing its data), and the subscriber writes that token with every cursor: the ledger
//! refuses a cursor write whose token is older than the stored one, so a leader that lost its
//! lease (paused, partitioned, or whose lease vanished with a flushed Redis) cannot move the
//! cursor back or record events after a newer leader took over. A leader whose cursor write was
//! refused gives its leadership up and acquires it again, with a new token.
//!
//! The lease lives `leader_lease_ttl_secs` and is renewed every third of it; a renewal that
//! fails or finds another holder ends this replica's leadership at once (its subscriber is
//! cancelled). A standby tries to acquire every third of the TTL, so it takes over within one
//! TTL of the leader's death. On graceful shutdown the leader deletes the lease so a standby
//! takes over immediately.

use std::{future::Future, time::Duration};

use redis::{Script, aio::ConnectionManager};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    ledger::Ledger,
    status::{SubState, SubscriptionHealth},
};

/// Lease keys of one queue.
#[derive(Debug, Clone)]
pub struct Lease {
    conn: ConnectionManager,
    ledger: Ledger,
    key: String,
    owner: String,
    ttl: Duration,
}

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

impl Lease {
    pub fn new(
        conn: ConnectionManager,
        ledger: Ledger,
        queue: &str,
        owner: &str,
        ttl: Duration,
    ) -> Self {
        Self {
            conn,
            ledger,
            key: format!("{queue}:leader"),
            owner: owner.to_owned(),
            ttl,
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes the lease if free; returns the new fencing token, allocated in the ledger.
    pub async fn try_acquire(&self) -> anyhow::Result<Option<i64>> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        match self.ledger.next_leader_epoch(&self.key).await {
            Ok(token) => Ok(Some(token)),
            Err(e) => {
                // No token, no leadership: hand the lease back for a replica that can get one.
                if let Err(re) = self.release().await {
                    warn!(error.message = %re, "cannot release the subscriber lease; it expires by itself");
                }
                Err(e.into())
            }
        }
    }

    /// Extends the lease; `false` if this replica no longer holds it.
    pub async fn renew(&self) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = Script::new(RENEW)
            .key(&self.key)
            .arg(&self.owner)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Gives the lease up if this replica holds it.
    pub async fn release(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Current holder of `queue`'s lease, if any (operator tools: no ledger needed).
    pub async fn holder_of(
        mut conn: ConnectionManager,
        queue: &str,
    ) -> redis::RedisResult<Option<String>> {
        redis::cmd("GET")
            .arg(format!("{queue}:leader"))
            .query_async(&mut conn)
            .await
    }

    /// Runs `lead(fencing_token, leadership)` while this replica holds the lease, standing by
    /// otherwise, until `shutdown`. `lead` must return when `leadership` is cancelled.
    pub async fn run<F, Fut>(
        self,
        health: &SubscriptionHealth,
        shutdown: CancellationToken,
        mut lead: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(i64, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let period = self.ttl / 3;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.try_acquire().await {
                Ok(Some(token)) => {
                    info!(fencing_token = token, "subscriber leadership acquired");
                    let leadership = shutdown.child_token();
                    let mut task = tokio::spawn(lead(token, leadership.clone()));
                    let mut tick = tokio::time::interval(period);
                    tick.tick().await;
                    let outcome = loop {
                        tokio::select! {
                            r = &mut task => break Some(r),
                            _ = tick.tick() => {
                                match self.renew().await {
                                    Ok(true) => {}
                                    Ok(false) => {
                                        warn!("subscriber lease lost to another replica; standing by");
                                        break None;
                                    }
                                    Err(e) => {
                                        warn!(error.message = %e, "cannot renew the subscriber lease; standing by");
                                        break None;
                                    }
                                }
                            }
                        }
                    };
                    leadership.cancel();
                    let lost = outcome.is_none();
                    let result = match outcome {
                        Some(r) => r,
                        None => task.await,
                    };
                    if shutdown.is_cancelled() {
                        if let Err(e) = self.release().await {
                            warn!(error.message = %e, "cannot release the subscriber lease; it expires by itself");
                        }
                        return result.map_err(anyhow::Error::from).and_then(|r| r);
                    }
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(anyhow::anyhow!("leader task panicked: {e}")),
                    }
                    // The leader stopped by itself (its cursor write was fenced) or lost the
                    // lease: give the lease up so the next acquisition, by this replica or
                    // another, comes with a new fencing token.
                    if !lost {
                        if let Err(e) = self.release().await {
                            warn!(error.message = %e, "cannot release the subscriber lease; it expires by itself");
                        }
                    }
                    health.update(|h| h.state = SubState::Standby);
                }
                Ok(None) => health.update(|h| {
                    if h.state != SubState::Standby {
                        h.state = SubState::Standby;
                    }
                }),
                Err(e) => {
                    warn!(error.message = %e, "cannot take the subscriber lease (Redis or ledger unreachable)")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}
