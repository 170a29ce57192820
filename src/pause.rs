//! The operator pauses as one replica sees them: the ledger's `pauses` rows read through a short
//! cache, for the subscriber (intake), the job gate (provisioning), health, metrics and the
//! dashboard.
//!
//! Invariants:
//! - The ledger is read at most once per [`CACHE_TTL`] per replica, whatever the number of jobs
//!   asking (one refresh at a time; the others use the value it stores), so a pause or resume
//!   takes effect on every replica within about that time.
//! - A failed read keeps the last known state (a pause is not lifted because the ledger could
//!   not be read); before any successful read nothing is paused. Either way the failure is
//!   logged and read again at the next expiry.
//! - Each refresh sets the `provisioner_paused{part}` gauges.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing::warn;

use crate::{
    ledger::{Ledger, PausePart, PauseRow},
    metrics::{Metrics, PartLabel},
};

/// How long a read of the pauses is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// A read of the ledger's pauses may take at most this long before the last known state is used.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Which parts are paused, by whom, since when and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseState {
    pub intake: Option<PauseRow>,
    pub provisioning: Option<PauseRow>,
}

impl PauseState {
    /// From the ledger's rows.
    pub fn from_rows(rows: Vec<PauseRow>) -> Self {
        let mut s = Self::default();
        for r in rows {
            if r.part == PausePart::Intake.as_str() {
                s.intake = Some(r);
            } else if r.part == PausePart::Provisioning.as_str() {
                s.provisioning = Some(r);
            }
        }
        s
    }

    pub fn get(&self, part: PausePart) -> Option<&PauseRow> {
        match part {
            PausePart::Intake => self.intake.as_ref(),
            PausePart::Provisioning => self.provisioning.as_ref(),
        }
    }

    /// `{"intake": {"since", "by", "reason"} | null, "provisioning": … | null}` (`since` as
    /// RFC 3339): the shape `/health/sf-events` and `queue stats --json` show.
    pub fn to_json(&self) -> Value {
        let one = |p: Option<&PauseRow>| match p {
            Some(p) => json!({
                "since": chrono::DateTime::from_timestamp_millis(p.since),
                "by": p.by,
                "reason": p.reason,
            }),
            None => Value::Null,
        };
        json!({
            "intake": one(self.intake.as_ref()),
            "provisioning": one(self.provisioning.as_ref()),
        })
    }
}

/// The cached pauses of one replica.
#[derive(Debug)]
pub struct Pauses {
    ledger: Ledger,
    ttl: Duration,
    cached: std::sync::Mutex<(Option<Instant>, PauseState)>,
    refresh: tokio::sync::Mutex<()>,
    gauges: [prometheus_client::metrics::gauge::Gauge; 2],
}

impl Pauses {
    pub fn new(ledger: Ledger, metrics: &Metrics) -> Self {
        let gauge = |p: PausePart| {
            metrics
                .paused
                .get_or_create(&PartLabel {
                    part: p.as_str().to_owned(),
                })
                .clone()
        };
        Self {
            ledger,
            ttl: CACHE_TTL,
            cached: std::sync::Mutex::new((None, PauseState::default())),
            refresh: tokio::sync::Mutex::new(()),
            gauges: [gauge(PausePart::Intake), gauge(PausePart::Provisioning)],
        }
    }

    fn fresh(&self) -> Option<PauseState> {
        let c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match c.0 {
            Some(at) if at.elapsed() < self.ttl => Some(c.1.clone()),
            _ => None,
        }
    }

    /// The pauses, read from the ledger when the cached read is older than the TTL.
    pub async fn current(&self) -> PauseState {
        if let Some(s) = self.fresh() {
            return s;
        }
        let _one = self.refresh.lock().await;
        if let Some(s) = self.fresh() {
            return s;
        }
        let read = tokio::time::timeout(READ_TIMEOUT, self.ledger.pauses()).await;
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(Ok(rows)) => c.1 = PauseState::from_rows(rows),
            Ok(Err(e)) => {
                warn!(error.message = %e, "cannot read the operator pauses; keeping the last known state")
            }
            Err(_) => warn!("reading the operator pauses timed out; keeping the last known state"),
        }
        c.0 = Some(Instant::now());
        self.gauges[0].set(i64::from(c.1.intake.is_some()));
        self.gauges[1].set(i64::from(c.1.provisioning.is_some()));
        c.1.clone()
    }

    /// Forgets the cached read, so the next [`Self::current`] reads the ledger (after this
    /// replica changed a pause).
    pub fn invalidate(&self) {
        self.cached.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }

    /// Whether `part` is paused (cached).
    pub async fn is_paused(&self, part: PausePart) -> bool {
        self.current().await.get(part).is_some()
    }
}
