//! `provisioner check`: reports every configuration problem, then reaches every dependency
//! once, on one screen an operator can act on. Every check runs even when an earlier one
//! failed: the ledger and Redis are checked whenever their own settings are valid; Salesforce
//! and WHMCS need the whole configuration. Exit code 0 only if nothing failed.

use std::process::ExitCode;

use anyhow::Context as _;
use secrecy::ExposeSecret;

use crate::{
    config::{CheckConfig, Config},
    error::chain,
    ingest::subscriber::Subscriber,
    ledger::Ledger,
    net,
    queue::Queue,
    salesforce::{
        auth::{AuthFlow, TokenProvider},
        pb,
    },
    whmcs::{WhmcsClient, WhmcsConfig},
};

fn line(ok: bool, what: &str, detail: &str) {
    println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
}

/// Runs every check and prints one line per problem or dependency.
pub async fn run(check: CheckConfig) -> ExitCode {
    let mut ok = true;
    let cfg = match check.config {
        Ok(cfg) => {
            line(true, "configuration", "valid");
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
            Ledger::connect(db).await?.ping().await?;
            anyhow::Ok(())
        }
        .await
        {
            Ok(()) => line(true, "database", "reachable"),
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
        Some(q) => match Queue::connect(q).await.context("REDIS_URL") {
            Ok(queue) => match queue.ping().await {
                Ok(()) => {
                    line(true, "redis", "reachable");
                    if queue.append_only().await == Some(false) {
                        println!(
                            "[warn] redis: appendonly is off; a Redis restart loses queued jobs \
                             (the stuck-order reconciler re-enqueues Activating orders, but enable AOF in production)"
                        );
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
    ok &= remote_checks(&cfg).await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Salesforce (token, Pub/Sub topic) and WHMCS; true if all answered as expected.
async fn remote_checks(cfg: &Config) -> bool {
    let mut ok = true;
    let session = match net::client(cfg.salesforce.http_timeout)
        .context("building the HTTP client")
        .and_then(|http| {
            TokenProvider::new(http, AuthFlow::from_config(&cfg.salesforce))
                .context("SF_PRIVATE_KEY")
        }) {
        Ok(tokens) => match tokens.session().await {
            Ok(s) => {
                line(
                    true,
                    "salesforce auth",
                    &format!("org {} at {}", s.org_id, s.instance_url),
                );
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
            line(false, "salesforce auth", &chain(&e));
            None
        }
    };
    if let Some(s) = session {
        match Subscriber::channel(&cfg.events.endpoint) {
            Ok(channel) => {
                let mut client = pb::pub_sub_client::PubSubClient::new(channel);
                let mut req = tonic::Request::new(pb::TopicRequest {
                    topic_name: cfg.events.channel.clone(),
                });
                let md = req.metadata_mut();
                if let (Ok(t), Ok(i), Ok(o)) = (
                    s.access_token.expose_secret().parse(),
                    s.instance_url.parse(),
                    s.org_id.parse(),
                ) {
                    md.insert("accesstoken", t);
                    md.insert("instanceurl", i);
                    md.insert("tenantid", o);
                }
                match client.get_topic(req).await {
                    Ok(t) => {
                        let t = t.into_inner();
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
    let whmcs = net::client(cfg.whmcs.timeout).map(|http| {
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
    match whmcs {
        Ok(whmcs) => match whmcs.get_orders("1", 0, 1).await {
            Ok((total, _)) => line(
                true,
                "whmcs",
                &format!("API reachable ({total} orders for client 1)"),
            ),
            Err(e) => {
                ok = false;
                line(false, "whmcs", &e.to_string());
            }
        },
        Err(e) => {
            ok = false;
            line(false, "whmcs", &net::describe(&e));
        }
    }
    ok
}
