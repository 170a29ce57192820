//! Prometheus metrics of one daemon process, registered once and shared (`Arc<Metrics>`).
//! Names are part of the contract (`/metrics`); labels are low-cardinality codes only, never
//! order ids or messages.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhmcsErrorLabels {
    pub action: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabel {
    pub dependency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabel {
    pub part: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Finished provisioning attempts by outcome (`provisioned`, `failed`, `skipped`).
    pub attempts: Family<OutcomeLabel, Counter>,
    /// Seconds from job start to Salesforce write-back.
    pub provisioning_duration: Histogram,
    /// WHMCS errors by action and code.
    pub whmcs_errors: Family<WhmcsErrorLabels, Counter>,
    /// Salesforce REST errors by code.
    pub salesforce_errors: Family<ReasonLabel, Counter>,
    /// Events received from the Pub/Sub API (including poison and duplicates).
    pub events_received: Counter,
    /// Poison events skipped, by reason.
    pub poison_events: Family<ReasonLabel, Counter>,
    /// Events already in the inbox, not enqueued again.
    pub duplicate_events: Counter,
    /// Seconds between the event's CreatedDate and its arrival.
    pub event_lag: Histogram,
    /// End-to-end seconds from the event's CreatedDate to the Salesforce write-back.
    pub approval_to_writeback: Histogram,
    /// Subscription (re)connects after the first.
    pub reconnects: Counter,
    /// Watchdog-triggered resubscribes.
    pub watchdog_resubscribes: Counter,
    /// Stored cursors rejected by Salesforce, replaced by the configured preset.
    pub cursor_fallbacks: Counter,
    /// Keepalive responses received.
    pub keepalives: Counter,
    /// Jobs by queue state.
    pub queue_depth: Family<StateLabel, Gauge>,
    /// Salesforce daily API requests used / limit, from `Sforce-Limit-Info`.
    pub salesforce_api_used: Gauge,
    pub salesforce_api_limit: Gauge,
    /// Orders skipped by the guard, by reason.
    pub skipped: Family<ReasonLabel, Counter>,
    /// Orders enqueued by the stuck-order reconciler.
    pub reconciled: Counter,
    /// Write-backs Salesforce refused for good (the Order is left `writeback_rejected`).
    pub writeback_rejected: Counter,
    /// State of each dependency's breaker: 0 closed, 1 open, 2 half-open, 3 auth failed.
    pub dependency_state: Family<DependencyLabel, Gauge>,
    /// Each dependency's adaptive in-flight limit (`deps::limiter`).
    pub dependency_limit: Family<DependencyLabel, Gauge>,
    /// Calls in flight to each dependency.
    pub dependency_in_flight: Family<DependencyLabel, Gauge>,
    /// Jobs put back in the queue to wait for a dependency, by reason.
    pub jobs_deferred: Family<ReasonLabel, Counter>,
    /// 1 while an operator pause of the part (`intake`, `provisioning`) is in force, else 0.
    pub paused: Family<PartLabel, Gauge>,
    /// 1 while this process learns of every Order change of every replica (its cross-replica
    /// change feed is live, or it needs none), else 0: the order-status view then reads the
    /// ledger.
    pub change_feed_live: Gauge,
    /// Times this process may have missed Order change notifications (feed drops, lags).
    pub change_feed_losses: Gauge,
    /// The database's clock minus this process's, in milliseconds, as housekeeping last
    /// measured it.
    pub clock_skew_ms: Gauge,
    /// Jobs of this process waiting for another run's lease on their Order (a duplicate event,
    /// another replica's or the reconciler's job); they call no dependency while they wait.
    pub jobs_waiting_for_lease: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("provisioner");
        let m = Self {
            attempts: Family::default(),
            provisioning_duration: Histogram::new(latency_buckets()),
            whmcs_errors: Family::default(),
            salesforce_errors: Family::default(),
            events_received: Counter::default(),
            poison_events: Family::default(),
            duplicate_events: Counter::default(),
            event_lag: Histogram::new(latency_buckets()),
            approval_to_writeback: Histogram::new(latency_buckets()),
            reconnects: Counter::default(),
            watchdog_resubscribes: Counter::default(),
            cursor_fallbacks: Counter::default(),
            keepalives: Counter::default(),
            queue_depth: Family::default(),
            salesforce_api_used: Gauge::default(),
            salesforce_api_limit: Gauge::default(),
            skipped: Family::default(),
            reconciled: Counter::default(),
            writeback_rejected: Counter::default(),
            dependency_state: Family::default(),
            dependency_limit: Family::default(),
            dependency_in_flight: Family::default(),
            jobs_deferred: Family::default(),
            paused: Family::default(),
            change_feed_live: Gauge::default(),
            change_feed_losses: Gauge::default(),
            clock_skew_ms: Gauge::default(),
            jobs_waiting_for_lease: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "provisioning_attempts",
            "Finished provisioning attempts by outcome",
            m.attempts.clone(),
        );
        registry.register(
            "provisioning_duration_seconds",
            "Seconds from job start to Salesforce write-back",
            m.provisioning_duration.clone(),
        );
        registry.register(
            "whmcs_errors",
            "WHMCS errors by action and code",
            m.whmcs_errors.clone(),
        );
        registry.register(
            "salesforce_errors",
            "Salesforce REST errors by code",
            m.salesforce_errors.clone(),
        );
        registry.register(
            "events_received",
            "Events received from the Pub/Sub API",
            m.events_received.clone(),
        );
        registry.register(
            "poison_events",
            "Poison events skipped, by reason",
            m.poison_events.clone(),
        );
        registry.register(
            "duplicate_events",
            "Redelivered events already in the inbox",
            m.duplicate_events.clone(),
        );
        registry.register(
            "event_lag_seconds",
            "Seconds between an event's CreatedDate and its arrival",
            m.event_lag.clone(),
        );
        registry.register(
            "approval_to_writeback_seconds",
            "Seconds from the event's CreatedDate to the Salesforce write-back",
            m.approval_to_writeback.clone(),
        );
        registry.register(
            "subscription_reconnects",
            "Pub/Sub resubscribes",
            m.reconnects.clone(),
        );
        registry.register(
            "subscription_watchdog_resubscribes",
            "Resubscribes after a silent stream",
            m.watchdog_resubscribes.clone(),
        );
        registry.register(
            "subscription_cursor_fallbacks",
            "Stored cursors rejected by Salesforce",
            m.cursor_fallbacks.clone(),
        );
        registry.register(
            "subscription_keepalives",
            "Keepalive responses",
            m.keepalives.clone(),
        );
        registry.register("queue_depth", "Jobs by queue state", m.queue_depth.clone());
        registry.register(
            "salesforce_api_usage_used",
            "Salesforce API requests used (Sforce-Limit-Info)",
            m.salesforce_api_used.clone(),
        );
        registry.register(
            "salesforce_api_usage_limit",
            "Salesforce API request limit (Sforce-Limit-Info)",
            m.salesforce_api_limit.clone(),
        );
        registry.register(
            "orders_skipped",
            "Orders skipped by the guard, by reason",
            m.skipped.clone(),
        );
        registry.register(
            "reconciler_enqueued",
            "Orders enqueued by the stuck-order reconciler",
            m.reconciled.clone(),
        );
        registry.register(
            "writeback_rejected",
            "Write-backs Salesforce refused for good (validation rule, locked record, …)",
            m.writeback_rejected.clone(),
        );
        registry.register(
            "dependency_state",
            "Breaker state by dependency: 0 closed, 1 open, 2 half-open, 3 auth failed",
            m.dependency_state.clone(),
        );
        registry.register(
            "dependency_limit",
            "Adaptive limit of calls in flight, by dependency",
            m.dependency_limit.clone(),
        );
        registry.register(
            "dependency_in_flight",
            "Calls in flight, by dependency",
            m.dependency_in_flight.clone(),
        );
        registry.register(
            "jobs_deferred",
            "Jobs put back in the queue to wait for a dependency, by reason",
            m.jobs_deferred.clone(),
        );
        registry.register(
            "clock_skew_milliseconds",
            "The ledger database's clock minus this process's (leases use the database's; the \
             queue's orphan detection and delays use each process's own)",
            m.clock_skew_ms.clone(),
        );
        registry.register(
            "jobs_waiting_for_lease",
            "Jobs waiting for another run's lease on their Order (no dependency is called meanwhile)",
            m.jobs_waiting_for_lease.clone(),
        );
        registry.register(
            "paused",
            "1 while an operator pause of the part is in force",
            m.paused.clone(),
        );
        registry.register(
            "change_feed_live",
            "1 while every replica's Order changes reach this process (order status may be served from memory)",
            m.change_feed_live.clone(),
        );
        registry.register(
            "change_feed_losses",
            "Times Order change notifications may have been missed (the cached order status was dropped)",
            m.change_feed_losses.clone(),
        );
        for part in ["intake", "provisioning"] {
            m.paused
                .get_or_create(&PartLabel {
                    part: part.to_owned(),
                })
                .set(0);
        }
        Self { registry, ..m }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn attempt(&self, outcome: &str) {
        self.attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn skip(&self, reason: &str) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn whmcs_error(&self, action: &str, code: &str) {
        self.whmcs_errors
            .get_or_create(&WhmcsErrorLabels {
                action: action.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// The gauge of one dependency's breaker state.
    pub fn dependency_gauge(&self, dependency: &str) -> Gauge {
        self.dependency_state
            .get_or_create(&DependencyLabel {
                dependency: dependency.to_owned(),
            })
            .clone()
    }

    /// The gauges of one dependency's in-flight limit and calls in flight.
    pub fn limit_gauges(&self, dependency: &str) -> (Gauge, Gauge) {
        let label = DependencyLabel {
            dependency: dependency.to_owned(),
        };
        (
            self.dependency_limit.get_or_create(&label).clone(),
            self.dependency_in_flight.get_or_create(&label).clone(),
        )
    }

    pub fn poison(&self, reason: &str) {
        self.poison_events
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
