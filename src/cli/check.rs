//! `provisioner check`: validates the configuration and reaches every dependency once, printing
//! a report an operator can act on. Exit code 0 only if everything answered.

use std::process::ExitCode;

use secrecy::ExposeSecret;

use crate::{config::Config, ingest::subscriber::Subscriber, salesforce::pb, state::AppState};

fn line(ok: bool, what: &str, detail: &str) {
    println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
}

/// Runs every check and prints one line per dependency.
pub async fn run(cfg: Config) -> ExitCode {
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
        Ok(()) => line(
            true,
            "database",
            &format!("{:?} reachable", state.ledger.backend()),
        ),
        Err(e) => {
            ok = false;
            line(false, "database", &e.to_string());
        }
    }
    match state.queue.ping().await {
        Ok(()) => {
            line(true, "redis", "reachable");
            match state.queue.durability().await {
                Ok(d) => {
                    if let Some(warning) = crate::daemon::durability_warning(&d) {
                        println!("[warn] redis: {warning}");
                    }
                    let waits = match state.queue.waits_for_replica() {
                        Some(w) => format!("pushes wait up to {} ms for one", w.as_millis()),
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
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
