//! [`AppState`]: the parts of one daemon process, built once from the configuration and shared
//! (cheaply cloned) by the HTTP handlers, the supervisor and the tests.
//!
//! A leaf of the module graph: it knows the clients, the ledger, the queue and the status
//! types, and nothing that runs them (the daemon, the HTTP surface and the background loops
//! take what they need from it).

use std::sync::Arc;

use anyhow::Context;

use crate::{
    changes::Changes,
    config::Config,
    deps::{
        AuthLatch, Breaker, Dependencies, Dependency,
        limiter::{LimitSettings, Limiter},
    },
    jobs::provision::{Provisioner, WorkerSettings},
    ledger::Ledger,
    metrics::Metrics,
    net,
    pause::Pauses,
    queue::Queue,
    salesforce::{
        auth::{AuthFlow, TokenProvider},
        rest::RestClient,
    },
    status::{AlertStatus, QueueDepthHistory, SubscriptionHealth, SweepReport},
    whmcs::{WhmcsClient, WhmcsConfig},
};

/// Everything the parts share.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub ledger: Ledger,
    pub queue: Queue,
    pub tokens: TokenProvider,
    pub rest: RestClient,
    pub whmcs: WhmcsClient,
    pub metrics: Arc<Metrics>,
    pub health: Arc<SubscriptionHealth>,
    /// Order change notifications (the ledger's, and other replicas' through the feed).
    pub changes: Changes,
    pub alert: Arc<AlertStatus>,
    /// Unique name of this process (lease owner, worker names).
    pub instance: String,
    /// The stuck-order reconciler's last sweep.
    pub reconciler: Arc<std::sync::Mutex<SweepReport>>,
    /// This process's dependency breakers (the WHMCS authentication latch is shared in Redis).
    pub deps: Dependencies,
    /// The operator pauses (in the ledger), as this process reads them through a short cache.
    pub pauses: Arc<Pauses>,
    /// Queue depth samples of the last hours (taken by the housekeeping loop).
    pub queue_depth: Arc<QueueDepthHistory>,
}

impl AppState {
    /// Connects to the ledger (migrating if configured) and Redis, and builds the clients.
    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        let cfg = Arc::new(cfg);
        crate::ledger::set_test_clock_offset(cfg.test_clock_offset_secs);
        let ledger = Ledger::open(&cfg.database)
            .await
            .context("opening the ledger (DATABASE_URL)")?;
        let queue = Queue::connect(&cfg.queue)
            .await
            .with_context(|| format!("connecting to Redis ({})", cfg.queue.redis_settings()))?;
        let sf_http = net::client(cfg.salesforce.http_timeout, &cfg.proxy)
            .context("building the HTTP client")?;
        let flow = AuthFlow::from_config(&cfg.salesforce);
        let metrics = Arc::new(Metrics::new());
        let latch = AuthLatch::new(
            queue.redis(),
            &cfg.queue.name,
            crate::deps::fingerprint(&[
                &cfg.whmcs.api_url,
                &cfg.whmcs.identifier,
                secrecy::ExposeSecret::expose_secret(&cfg.whmcs.secret),
                cfg.whmcs
                    .access_key
                    .as_ref()
                    .map_or("", secrecy::ExposeSecret::expose_secret),
            ]),
        );
        let deps = Dependencies {
            whmcs: Arc::new(Breaker::new(
                Dependency::Whmcs,
                cfg.breaker.clone(),
                Some(latch),
                metrics.dependency_gauge(Dependency::Whmcs.as_str()),
            )),
            salesforce: Arc::new(Breaker::new(
                Dependency::Salesforce,
                cfg.breaker.clone(),
                None,
                metrics.dependency_gauge(Dependency::Salesforce.as_str()),
            )),
        };
        deps.whmcs.init().await;
        let tokens = TokenProvider::new(sf_http.clone(), flow).context("SF_PRIVATE_KEY")?;
        let rest = RestClient::new(
            sf_http,
            tokens.clone(),
            &cfg.salesforce.api_version,
            cfg.salesforce.fields.clone(),
        )
        .with_breaker(deps.salesforce.clone())
        .with_limiter(limiter(
            &metrics,
            Dependency::Salesforce,
            cfg.limits.salesforce,
        ));
        let whmcs = WhmcsClient::new(
            net::client(cfg.whmcs.timeout, &cfg.proxy).context("building the HTTP client")?,
            WhmcsConfig {
                api_url: cfg.whmcs.api_url.clone(),
                identifier: cfg.whmcs.identifier.clone(),
                secret: cfg.whmcs.secret.clone(),
                access_key: cfg.whmcs.access_key.clone(),
                timeout: cfg.whmcs.timeout,
            },
        )
        .with_breaker(deps.whmcs.clone())
        .with_limiter(limiter(&metrics, Dependency::Whmcs, cfg.limits.whmcs));
        let changes = ledger.changes().clone();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "provisioner".into());
        let instance = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let pauses = Arc::new(Pauses::new(ledger.clone(), &metrics));
        Ok(Self {
            health: Arc::new(SubscriptionHealth::new(cfg.events.enabled)),
            cfg,
            ledger,
            queue,
            tokens,
            rest,
            whmcs,
            metrics,
            changes,
            alert: Arc::default(),
            instance,
            reconciler: Arc::default(),
            deps,
            pauses,
            queue_depth: Arc::default(),
        })
    }

    pub fn provisioner(&self) -> Provisioner {
        Provisioner {
            ledger: self.ledger.clone(),
            rest: self.rest.clone(),
            whmcs: self.whmcs.clone(),
            metrics: self.metrics.clone(),
            settings: WorkerSettings {
                payment_method: self.cfg.whmcs.payment_method.clone(),
                max_attempts: self.cfg.queue.max_attempts,
                backoff_initial: self.cfg.queue.backoff_initial,
                backoff_max: self.cfg.queue.backoff_max,
                quantity_mode: self.cfg.whmcs.quantity_mode,
                add_in_doubt_window: self.cfg.whmcs.timeout + self.cfg.whmcs.execution_allowance,
            },
            instance: self.instance.clone(),
            deps: self.deps.clone(),
            pauses: self.pauses.clone(),
        }
    }
}

/// The adaptive in-flight limiter of one dependency, reporting into its gauges.
fn limiter(metrics: &Metrics, dep: Dependency, settings: LimitSettings) -> Arc<Limiter> {
    let (limit, in_flight) = metrics.limit_gauges(dep.as_str());
    Arc::new(Limiter::new(settings, limit, in_flight))
}
