//! `provisioner check`: validates the configuration and reaches every dependency once, printing
//! a report an operator can act on. Exit code 0 only if everything answered.

use std::process::ExitCode;

use secrecy::ExposeSecret;

use crate::{
    config::{Config, QuantityMode},
    ingest::subscriber::Subscriber,
    salesforce::pb,
    state::AppState,
    whmcs::honours_quantity,
};

fn line(ok: bool, what: &str, detail: &str) {
    println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
}

/// Runs every check and prints one line per dependency. `products`: check these WHMCS product
/// ids (comma-separated), or with `Some("")` the ids mapped on Salesforce Products.
pub async fn run(cfg: Config, products: Option<String>) -> ExitCode {
    line(true, "configuration", "valid");
    let state = match AppState::build(cfg).await {
        Ok(s) => s,
        Err(e) => {
            line(false, "database / redis", &format!("{e:#}"));
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    match state.ledger.ping().await {
        Ok(()) => match state.ledger.tls_in_use().await {
            Ok(None) => line(
                true,
                "database",
                &format!("{:?} reachable", state.ledger.backend()),
            ),
            Ok(Some(tls)) => {
                let mode = postgres_sslmode(&state.cfg.database.url);
                let transport = if tls { "TLS" } else { "no TLS" };
                line(
                    true,
                    "database",
                    &format!("Postgres reachable ({transport}, sslmode={mode})"),
                );
            }
            Err(e) => {
                ok = false;
                line(false, "database", &e.to_string());
            }
        },
        Err(e) => {
            ok = false;
            line(false, "database", &e.to_string());
        }
    }
    match state.queue.ping().await {
        Ok(()) => {
            let tls = state.cfg.queue.redis_url.starts_with("rediss://");
            line(
                true,
                "redis",
                if tls { "reachable (TLS)" } else { "reachable" },
            );
            if state.queue.append_only().await == Some(false) {
                println!(
                    "[warn] redis: appendonly is off; a Redis restart loses queued jobs \
                     (the stuck-order reconciler re-enqueues Activating orders, but enable AOF in production)"
                );
            }
        }
        Err(e) => {
            ok = false;
            line(false, "redis", &e.to_string());
        }
    }
    let session = match state.tokens.session().await {
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
    };
    if let Some(s) = session {
        match Subscriber::channel(&state.cfg.events.endpoint) {
            Ok(channel) => {
                let mut client = pb::pub_sub_client::PubSubClient::new(channel);
                let mut req = tonic::Request::new(pb::TopicRequest {
                    topic_name: state.cfg.events.channel.clone(),
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
                            &format!("{}: {}", state.cfg.events.channel, e.message()),
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
    match state.whmcs.get_orders("1", 0, 1).await {
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
    match state.whmcs.details().await {
        Ok(v) => {
            let detail = match (honours_quantity(&v), state.cfg.whmcs.quantity_mode) {
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
        ok &= check_products(&state, &list).await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Checks that WHMCS has every product id in `list` (comma-separated), or, when `list` is
/// empty, every id mapped on a Salesforce Product.
async fn check_products(state: &AppState, list: &str) -> bool {
    let (ids, source) = if list.trim().is_empty() {
        match state.rest.mapped_product_ids().await {
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
    match state.whmcs.missing_products(&ids).await {
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
