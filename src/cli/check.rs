//! `provisioner check`: reports every configuration problem, then reaches every dependency
//! once, on one screen an operator can act on. Every check runs even when an earlier one
//! failed: the ledger and Redis are checked whenever their own settings are valid; Salesforce
//! and WHMCS need the whole configuration. Exit code 0 only if nothing failed.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::{
    config::{CheckConfig, Config, QuantityMode},
    error::chain,
    ledger::Ledger,
    net,
    queue::Queue,
    salesforce::{
        auth::{AuthFlow, TokenProvider},
        pubsub::{self, PubSub},
        rest::RestClient,
    },
    whmcs::{WhmcsClient, WhmcsConfig, honours_quantity},
};

fn line(ok: bool, what: &str, detail: &str) {
    println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
}

/// `[info] route to <what> (<host>): direct | direct (NO_PROXY) | via proxy http://host:port`;
/// only the target's host is shown (a webhook URL is a secret), never proxy credentials.
fn route(cfg: &Config, what: &str, url: &str) {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    println!("[info] route to {what} ({host}): {}", cfg.proxy.route(url));
}

/// Runs every check and prints one line per problem or dependency. `products`: also check
/// these WHMCS product ids (comma-separated), or with `Some("")` the ids mapped on Salesforce
/// Products.
pub async fn run(check: CheckConfig, products: Option<String>) -> ExitCode {
    let mut ok = true;
    let cfg = match check.config {
        Ok(cfg) => {
            line(true, "configuration", "valid");
            route(&cfg, "salesforce login", &cfg.salesforce.login_url);
            route(&cfg, "pub/sub", &cfg.events.endpoint);
            route(&cfg, "whmcs", &cfg.whmcs.api_url);
            if let Some(webhook) = &cfg.alert_webhook_url {
                route(&cfg, "alert webhook", webhook);
            }
            Some(cfg)
        }
        Err(errors) => {
            ok = false;
            for e in &errors {
                line(
                    false,
                    "configuration",
                    &format!("{}: {}", e.setting, e.message),
                );
            }
            None
        }
    };
    match &check.database {
        Some(db) => match async {
            let ledger = Ledger::connect(db).await?;
            ledger.ping().await?;
            anyhow::Ok(ledger.tls_in_use().await?)
        }
        .await
        {
            Ok(None) => line(true, "database", "reachable"),
            Ok(Some(tls)) => line(
                true,
                "database",
                &format!(
                    "Postgres reachable ({}, sslmode={})",
                    if tls { "TLS" } else { "no TLS" },
                    postgres_sslmode(&db.url)
                ),
            ),
            Err(e) => {
                ok = false;
                line(false, "database", &chain(&e.context("DATABASE_URL")));
            }
        },
        None => {
            ok = false;
            line(false, "database", "not checked: fix its settings above");
        }
    }
    match &check.queue {
        Some(q) => match Queue::connect(q).await.context(q.redis_settings()) {
            Ok(queue) => match queue.ping().await {
                Ok(()) => {
                    let tls = q.redis_url.starts_with("rediss://");
                    line(
                        true,
                        "redis",
                        if tls { "reachable (TLS)" } else { "reachable" },
                    );
                    match queue.durability().await {
                        Ok(d) => {
                            if let Some(warning) = crate::daemon::durability_warning(&d) {
                                println!("[warn] redis: {warning}");
                            }
                            let waits = match queue.waits_for_replica() {
                                Some(w) => {
                                    format!("pushes wait up to {} ms for one", w.as_millis())
                                }
                                None => "pushes do not wait for one".into(),
                            };
                            println!(
                                "[info] redis: persistence {:?}, {} connected replica(s); {waits}",
                                d.persistence, d.replicas
                            );
                        }
                        Err(e) => println!("[warn] redis: cannot read its persistence: {e}"),
                    }
                }
                Err(e) => {
                    ok = false;
                    line(
                        false,
                        "redis",
                        &chain(&anyhow::Error::new(e).context("REDIS_URL")),
                    );
                }
            },
            Err(e) => {
                ok = false;
                line(false, "redis", &chain(&e));
            }
        },
        None => {
            ok = false;
            line(false, "redis", "not checked: fix its settings above");
        }
    }
    let Some(cfg) = cfg else {
        line(
            false,
            "salesforce / whmcs",
            "not checked: fix the configuration above",
        );
        return ExitCode::FAILURE;
    };
    ok &= remote_checks(&cfg, products.as_deref()).await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Salesforce (token, Pub/Sub topic) and WHMCS (with its version, and the products when asked);
/// true if all answered as expected.
async fn remote_checks(cfg: &Config, products: Option<&str>) -> bool {
    let mut ok = true;
    let rest = net::client(cfg.salesforce.http_timeout, &cfg.proxy)
        .context("building the HTTP client")
        .and_then(|http| {
            let tokens = TokenProvider::new(http.clone(), AuthFlow::from_config(&cfg.salesforce))
                .context("SF_PRIVATE_KEY")?;
            let rest = RestClient::new(
                http,
                tokens.clone(),
                &cfg.salesforce.api_version,
                cfg.salesforce.fields.clone(),
            );
            Ok((tokens, rest))
        });
    let session = match &rest {
        Ok((tokens, _)) => match tokens.session().await {
            Ok(s) => {
                line(
                    true,
                    "salesforce auth",
                    &format!("org {} at {}", s.org_id, s.instance_url),
                );
                route(cfg, "salesforce rest", &s.instance_url);
                Some(s)
            }
            Err(e) => {
                ok = false;
                line(false, "salesforce auth", &e.to_string());
                None
            }
        },
        Err(e) => {
            ok = false;
            line(false, "salesforce auth", &chain(e));
            None
        }
    };
    if let Some(s) = session {
        match pubsub::channel(&cfg.events.endpoint, &cfg.proxy) {
            Ok(channel) => {
                let mut client = PubSub::new(channel);
                match client.get_topic(&s, &cfg.events.channel).await {
                    Ok(t) => {
                        let good = t.can_subscribe;
                        ok &= good;
                        line(
                            good,
                            "pub/sub topic",
                            &format!(
                                "{} can_subscribe={} schema {}",
                                t.topic_name, t.can_subscribe, t.schema_id
                            ),
                        );
                    }
                    Err(e) => {
                        ok = false;
                        line(
                            false,
                            "pub/sub topic",
                            &format!("{}: {}", cfg.events.channel, e.message()),
                        );
                    }
                }
            }
            Err(e) => {
                ok = false;
                line(false, "pub/sub endpoint", &e.to_string());
            }
        }
    }
    let whmcs = net::client(cfg.whmcs.timeout, &cfg.proxy).map(|http| {
        WhmcsClient::new(
            http,
            WhmcsConfig {
                api_url: cfg.whmcs.api_url.clone(),
                identifier: cfg.whmcs.identifier.clone(),
                secret: cfg.whmcs.secret.clone(),
                access_key: cfg.whmcs.access_key.clone(),
                timeout: cfg.whmcs.timeout,
            },
        )
    });
    let whmcs = match whmcs {
        Ok(whmcs) => whmcs,
        Err(e) => {
            line(false, "whmcs", &net::describe(&e));
            return false;
        }
    };
    match whmcs.get_orders("1", 0, 1).await {
        Ok((total, _)) => line(
            true,
            "whmcs",
            &format!("API reachable ({total} orders for client 1)"),
        ),
        Err(e) => {
            ok = false;
            line(false, "whmcs", &e.to_string());
        }
    }
    match whmcs.details().await {
        Ok(v) => {
            let detail = match (honours_quantity(&v), cfg.whmcs.quantity_mode) {
                (Some(true), _) => format!("{v} (order quantities honoured)"),
                (_, QuantityMode::Expand) => format!(
                    "{v} (before 8.12: quantities above 1 are sent as lines of 1, WHMCS_QUANTITY_MODE=expand)"
                ),
                (_, QuantityMode::Reject) => format!(
                    "{v} (before 8.12: Orders with quantities above 1 fail, WHMCS_QUANTITY_MODE=reject)"
                ),
            };
            line(true, "whmcs version", &detail);
        }
        Err(e) => println!(
            "[warn] whmcs version: {e} (quantities above 1 are handled as for WHMCS before 8.12)"
        ),
    }
    if let Some(list) = products {
        ok &= check_products(&whmcs, rest.as_ref().ok().map(|(_, r)| r), list).await;
    }
    ok
}

/// Checks that WHMCS has every product id in `list` (comma-separated), or, when `list` is
/// empty, every id mapped on a Salesforce Product.
async fn check_products(whmcs: &WhmcsClient, rest: Option<&RestClient>, list: &str) -> bool {
    let (ids, source) = if list.trim().is_empty() {
        let Some(rest) = rest else {
            line(
                false,
                "whmcs products",
                "not checked: Salesforce is not reachable",
            );
            return false;
        };
        match rest.mapped_product_ids().await {
            Ok(ids) => (ids, "mapped on Salesforce Products"),
            Err(e) => {
                line(false, "whmcs products", &format!("listing Product2: {e}"));
                return false;
            }
        }
    } else {
        let ids = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        (ids, "given")
    };
    if ids.is_empty() {
        line(true, "whmcs products", &format!("no product ids {source}"));
        return true;
    }
    match whmcs.missing_products(&ids).await {
        Ok(missing) if missing.is_empty() => {
            line(
                true,
                "whmcs products",
                &format!("all {} {source} exist ({})", ids.len(), ids.join(", ")),
            );
            true
        }
        Ok(missing) => {
            line(
                false,
                "whmcs products",
                &format!(
                    "{} of {} {source} not in WHMCS: {}",
                    missing.len(),
                    ids.len(),
                    missing.join(", ")
                ),
            );
            false
        }
        Err(e) => {
            line(false, "whmcs products", &e.to_string());
            false
        }
    }
}

/// The `sslmode` a PostgreSQL URL asks for: its `sslmode` parameter, else `PGSSLMODE`, else
/// `prefer` (the driver's rules).
fn postgres_sslmode(database_url: &str) -> String {
    url::Url::parse(database_url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "sslmode")
                .map(|(_, v)| v.into_owned())
        })
        .or_else(|| std::env::var("PGSSLMODE").ok().filter(|m| !m.is_empty()))
        .unwrap_or_else(|| "prefer".to_owned())
}
