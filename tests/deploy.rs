//! Deployment artefacts stay coherent with the code:
//! - `deploy/docker-compose.yml`: Redis persists with AOF, migrations run to completion before
//!   the daemon, the health check is `provisioner healthcheck`, and every variable it sets is a
//!   real setting (an upper-cased key of `config/default.toml`) or part of the contract;
//! - `.env.example`: every variable is documented and real, and together with the compose
//!   environment it is a configuration the daemon accepts;
//! - `Dockerfile`: the container contract (non-root, EXPOSE, HEALTHCHECK, cargo-chef), and a
//!   `.dockerignore` that excludes by default (the image build itself: `tests/image.rs`);
//! - `deploy/prometheus-alerts.yml` and `deploy/grafana-dashboard.json`: every query parses as
//!   PromQL and names only metrics that `Metrics::render` exports; every alert links to a
//!   section of `docs/operations.md`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use promql_parser::{
    parser::{self, Expr},
    util::{ExprVisitor, walk_expr},
};
use provisioner::{
    config::{Config, DEFAULT_TOML},
    metrics::{Metrics, ReasonLabel, StateLabel},
};
use serde_norway::Value as Yaml;

/// Environment variables of the contract that are not keys of `config/default.toml`.
const CONTRACT_ONLY_VARS: &[&str] = &["RUST_LOG", "PROVISIONER_CONFIG"];
/// Metrics an alert may use that other exporters provide.
const EXTERNAL_METRICS: &[&str] = &["up", "probe_success"];

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Upper-cased keys of `config/default.toml`: the environment variables the daemon reads.
fn settings() -> BTreeSet<String> {
    use figment::providers::{Format, Toml};
    let table: BTreeMap<String, figment::value::Value> =
        figment::Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("default.toml parses");
    assert!(table.len() > 40, "default.toml read: {} keys", table.len());
    table.keys().map(|k| k.to_ascii_uppercase()).collect()
}

fn is_real_variable(name: &str, settings: &BTreeSet<String>) -> bool {
    settings.contains(name) || CONTRACT_ONLY_VARS.contains(&name)
}

fn compose() -> Yaml {
    let mut doc: Yaml = serde_norway::from_str(&read("deploy/docker-compose.yml"))
        .expect("deploy/docker-compose.yml is valid YAML");
    doc.apply_merge().expect("YAML merge keys resolve");
    doc
}

fn service<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    doc.get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("service {name} in docker-compose.yml"))
}

fn str_list(v: Option<&Yaml>) -> Vec<String> {
    match v {
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|i| match i {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                Yaml::Bool(b) => b.to_string(),
                other => panic!("expected a scalar, got {other:?}"),
            })
            .collect(),
        Some(Yaml::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        None => Vec::new(),
        Some(other) => panic!("expected a list, got {other:?}"),
    }
}

/// A service's `environment`, as a map (compose accepts a map or a `KEY=value` list).
fn environment(svc: &Yaml) -> BTreeMap<String, String> {
    match svc.get("environment") {
        Some(Yaml::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let k = k.as_str().expect("string key").to_owned();
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Null => String::new(),
                    other => panic!("{k}: unexpected value {other:?}"),
                };
                (k, v)
            })
            .collect(),
        Some(Yaml::Sequence(_)) => str_list(svc.get("environment"))
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        None => BTreeMap::new(),
        Some(other) => panic!("unexpected environment {other:?}"),
    }
}

/// Compose-style interpolation of `${NAME}`, `${NAME:-default}` (unset or empty),
/// `${NAME-default}` (unset only) and `${NAME:?message}`.
fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        let mut empty_is_set = false;
        let (name, default) = match inner.find(":-").or_else(|| inner.find(":?")) {
            Some(i) if inner[i..].starts_with(":-") => (&inner[..i], Some(&inner[i + 2..])),
            Some(i) => (&inner[..i], None),
            None => match inner.find('-') {
                Some(i) => {
                    empty_is_set = true;
                    (&inner[..i], Some(&inner[i + 1..]))
                }
                None => (inner, None),
            },
        };
        match (vars.get(name), default) {
            (Some(v), _) if !v.is_empty() || empty_is_set => out.push_str(v),
            (_, Some(d)) => out.push_str(d),
            _ => panic!("${{{name}}} is not set"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Names of the `${NAME…}` interpolations in a text.
fn interpolated_names(s: &str) -> BTreeSet<String> {
    s.match_indices("${")
        .map(|(i, _)| {
            s[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// One variable of `.env.example`: active (`KEY=value`) or offered commented out (`#KEY=value`).
#[derive(Debug)]
struct EnvLine {
    key: String,
    value: String,
    active: bool,
    documented: bool,
    line: usize,
}

fn env_example() -> Vec<EnvLine> {
    let text = read(".env.example");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let (active, body) = match raw.strip_prefix('#') {
            Some(b) => (false, b),
            None => (true, *raw),
        };
        let Some((key, value)) = body.split_once('=') else {
            continue;
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            assert!(!active, ".env.example:{}: not KEY=value: {raw}", i + 1);
            continue;
        }
        // Documented: the line above is a comment of prose (not another variable).
        let documented = i > 0
            && lines[i - 1].starts_with("# ")
            && !lines[i - 1]
                .trim_start_matches("# ")
                .split_once('=')
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        out.push(EnvLine {
            key: key.to_owned(),
            value: value.to_owned(),
            active,
            documented,
            line: i + 1,
        });
    }
    out
}

#[test]
fn redis_keeps_the_queue_with_aof_on_a_volume() {
    let doc = compose();
    let redis = service(&doc, "redis");
    let cmd = str_list(redis.get("command"));
    let aof = cmd
        .iter()
        .position(|a| a == "--appendonly")
        .and_then(|i| cmd.get(i + 1));
    assert_eq!(
        aof.map(String::as_str),
        Some("yes"),
        "redis command {cmd:?}"
    );
    assert!(
        cmd.windows(2)
            .any(|w| w[0] == "--maxmemory-policy" && w[1] == "noeviction"),
        "a full Redis must refuse writes, not evict jobs: {cmd:?}"
    );
    let volumes = str_list(redis.get("volumes"));
    assert!(
        volumes.iter().any(|v| v.ends_with(":/data")),
        "AOF lives in /data, which must be a volume: {volumes:?}"
    );
    assert!(redis.get("healthcheck").is_some(), "redis healthcheck");
}

#[test]
fn migrations_complete_before_the_daemon_starts() {
    let doc = compose();
    let migrate = service(&doc, "migrate");
    assert_eq!(str_list(migrate.get("command")), ["migrate"]);
    assert_eq!(
        migrate.get("restart").and_then(Yaml::as_str),
        Some("no"),
        "a one-shot job"
    );
    let condition = |svc: &Yaml, dep: &str| {
        svc.get("depends_on")
            .and_then(|d| d.get(dep))
            .and_then(|d| d.get("condition"))
            .and_then(Yaml::as_str)
            .map(str::to_owned)
    };
    assert_eq!(
        condition(migrate, "postgres").as_deref(),
        Some("service_healthy")
    );
    let daemon = service(&doc, "provisioner");
    assert_eq!(
        condition(daemon, "migrate").as_deref(),
        Some("service_completed_successfully")
    );
    assert_eq!(
        condition(daemon, "redis").as_deref(),
        Some("service_healthy")
    );
    assert_eq!(str_list(daemon.get("command")), ["serve"]);
    // The daemon must not race the migrate job (or other replicas) to migrate.
    assert_eq!(
        environment(daemon)
            .get("DATABASE_AUTO_MIGRATE")
            .map(String::as_str),
        Some("false")
    );
    let postgres = service(&doc, "postgres");
    assert!(
        postgres.get("healthcheck").is_some(),
        "postgres healthcheck"
    );
    assert!(
        str_list(postgres.get("volumes"))
            .iter()
            .any(|v| v.ends_with(":/var/lib/postgresql/data")),
        "postgres data on a volume"
    );
    // Several replicas need a shared ledger: PostgreSQL, never SQLite.
    let db = environment(daemon)
        .get("DATABASE_URL")
        .cloned()
        .unwrap_or_default();
    assert!(db.starts_with("postgres://"), "DATABASE_URL {db}");
    assert!(
        daemon.get("container_name").is_none(),
        "a fixed container_name prevents --scale"
    );
}

#[test]
fn health_check_and_restart_policy() {
    let doc = compose();
    let daemon = service(&doc, "provisioner");
    let test = str_list(daemon.get("healthcheck").and_then(|h| h.get("test")));
    assert_eq!(test, ["CMD", "provisioner", "healthcheck"]);
    assert_eq!(
        daemon.get("restart").and_then(Yaml::as_str),
        Some("unless-stopped")
    );
    let docker = read("Dockerfile");
    assert!(
        docker.contains(r#"CMD ["provisioner", "healthcheck"]"#),
        "Dockerfile HEALTHCHECK"
    );
    for needle in [
        "cargo chef cook",
        "EXPOSE 8080",
        "USER 10001",
        "org.opencontainers.image.title",
        "ENTRYPOINT [\"provisioner\"]",
    ] {
        assert!(docker.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The build context lets in only the build's inputs (tests/image.rs checks the result).
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns.first(),
        Some(&"*"),
        ".dockerignore excludes by default"
    );
    for needle in ["**/.env", "**/.env.*", "**/*.pem", "**/*.key"] {
        assert!(patterns.contains(&needle), ".dockerignore lacks {needle}");
    }
}

#[test]
fn compose_sets_only_real_settings() {
    let settings = settings();
    let doc = compose();
    for name in ["provisioner", "migrate"] {
        let env = environment(service(&doc, name));
        assert!(!env.is_empty(), "{name} has an environment");
        for key in env.keys() {
            assert!(
                is_real_variable(key, &settings),
                "{name}: {key} is not a setting of config/default.toml"
            );
        }
        assert_eq!(
            str_list(service(&doc, name).get("env_file")),
            ["../.env"],
            "{name} reads .env (made from .env.example)"
        );
    }
    // Every ${VAR} compose interpolates is offered in .env.example.
    let offered: BTreeSet<String> = env_example().into_iter().map(|l| l.key).collect();
    for name in interpolated_names(&read("deploy/docker-compose.yml")) {
        assert!(
            offered.contains(&name),
            "${{{name}}} is not documented in .env.example"
        );
    }
}

#[test]
fn env_example_documents_each_real_variable() {
    let settings = settings();
    let compose_text = read("deploy/docker-compose.yml");
    let compose_vars = interpolated_names(&compose_text);
    let compose_env = environment(service(&compose(), "provisioner"));
    let lines = env_example();
    let mut seen = BTreeSet::new();
    for l in &lines {
        assert!(
            seen.insert(l.key.clone()),
            ".env.example:{}: {} twice",
            l.line,
            l.key
        );
        assert!(
            is_real_variable(&l.key, &settings) || compose_vars.contains(&l.key),
            ".env.example:{}: {} is neither a setting nor used by docker-compose.yml",
            l.line,
            l.key
        );
        assert!(
            l.documented,
            ".env.example:{}: {} has no comment above it",
            l.line, l.key
        );
        if l.active {
            assert!(
                !compose_env.contains_key(&l.key),
                ".env.example:{}: {} is set by docker-compose.yml, which would silently win",
                l.line,
                l.key
            );
        }
    }
    let active: BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.active)
        .map(|l| l.key.as_str())
        .collect();
    for required in [
        "SF_CLIENT_ID",
        "SF_USERNAME",
        "WHMCS_API_URL",
        "WHMCS_API_IDENTIFIER",
        "WHMCS_API_SECRET",
        "PORTAL_JWT_SECRET",
        "POSTGRES_PASSWORD",
    ] {
        assert!(active.contains(required), ".env.example lacks {required}");
    }
}

#[test]
fn env_example_and_compose_environment_make_a_valid_configuration() {
    let example: BTreeMap<String, String> = env_example()
        .into_iter()
        .filter(|l| l.active)
        .map(|l| (l.key, l.value))
        .collect();
    let doc = compose();
    let mut env = example.clone();
    for (k, v) in environment(service(&doc, "provisioner")) {
        env.insert(k, interpolate(&v, &example));
    }
    // The compose secret is mounted at run time; here, a test key stands in for it.
    assert_eq!(
        env.get("SF_PRIVATE_KEY_PATH").map(String::as_str),
        Some("/run/secrets/sf_private_key")
    );
    env.insert(
        "SF_PRIVATE_KEY_PATH".into(),
        path("tests/fixtures/sf_test_key.pem").display().to_string(),
    );
    // The example's portal secret is a placeholder the daemon refuses until it is replaced.
    let refused = Config::load_from(None, env.clone()).expect_err("placeholder secret");
    assert_eq!(refused.setting, "PORTAL_JWT_SECRET", "{refused}");
    env.insert(
        "PORTAL_JWT_SECRET".into(),
        "k3VbQx0r7mXc2pL9sT4wYz8aN1dF6gH5jE0uR2iO".into(),
    );
    let cfg = Config::load_from(None, env).unwrap_or_else(|e| {
        panic!(".env.example + docker-compose.yml is not a valid configuration: {e}")
    });
    assert_eq!(
        cfg.database.url,
        "postgres://provisioner:change-me-postgres-password@postgres:5432/provisioner"
    );
    assert!(!cfg.database.auto_migrate);
    assert_eq!(cfg.queue.redis_url, "redis://redis:6379");
    // Health, metrics and the dashboard listen on their own port, which is not published.
    let internal = cfg
        .http
        .internal_addr
        .expect("INTERNAL_HTTP_ADDR set by compose");
    let ports = str_list(service(&doc, "provisioner").get("ports"));
    assert!(!ports.is_empty());
    for p in &ports {
        assert!(
            p.ends_with(&format!(":{}", cfg.http.addr.port())),
            "only HTTP_ADDR is published: {p}"
        );
        assert!(!p.ends_with(&format!(":{}", internal.port())), "{p}");
    }
}

/// Metric names the daemon exports, from `Metrics::render` after every labelled family has a
/// child (an empty family renders no sample).
fn exported_metrics() -> BTreeSet<String> {
    let m = Metrics::new();
    m.attempt("provisioned");
    m.whmcs_error("AddOrder", "WHMCS_AUTH");
    m.poison("undecodable");
    m.skip("not_activating");
    m.salesforce_errors
        .get_or_create(&ReasonLabel {
            reason: "UNABLE_TO_LOCK_ROW".into(),
        })
        .inc();
    m.queue_depth
        .get_or_create(&StateLabel {
            state: "pending".into(),
        })
        .set(1);
    m.dependency_gauge("whmcs").set(1);
    let (limit, in_flight) = m.limit_gauges("whmcs");
    limit.set(4);
    in_flight.set(1);
    m.jobs_deferred
        .get_or_create(&ReasonLabel {
            reason: "whmcs_open".into(),
        })
        .inc();
    let text = m.render();
    let mut families = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    for f in &families {
        assert!(
            samples.iter().any(|s| s.starts_with(f.as_str())),
            "family {f} rendered no sample: the test must touch it"
        );
    }
    assert!(samples.contains("provisioner_provisioning_attempts_total"));
    assert!(samples.contains("provisioner_event_lag_seconds_bucket"));
    samples
}

/// Metric names selected by a PromQL expression.
fn selected_metrics(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>, Vec<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            let vs = match e {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            match &vs.name {
                Some(n) => {
                    self.0.insert(n.clone());
                }
                None => self.1.push(format!("{vs}")),
            }
            Ok(true)
        }
    }
    let ast = parser::parse(expr)?;
    let mut names = Names(BTreeSet::new(), Vec::new());
    walk_expr(&mut names, &ast)?;
    if !names.1.is_empty() {
        return Err(format!("selectors without a metric name: {:?}", names.1));
    }
    Ok(names.0)
}

/// GitHub-style anchors of the headings of a Markdown file.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn alert_rules_parse_and_use_only_exported_metrics() {
    let exported = exported_metrics();
    let doc: Yaml = serde_norway::from_str(&read("deploy/prometheus-alerts.yml"))
        .expect("prometheus-alerts.yml is valid YAML");
    let runbook = anchors(&read("docs/operations.md"));
    let groups = doc
        .get("groups")
        .and_then(Yaml::as_sequence)
        .expect("groups");
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in groups {
        let rules = group
            .get("rules")
            .and_then(Yaml::as_sequence)
            .expect("rules");
        assert!(!rules.is_empty());
        for rule in rules {
            let name = rule
                .get("alert")
                .and_then(Yaml::as_str)
                .expect("alert name");
            assert!(alerts.insert(name.to_owned()), "alert {name} twice");
            let expr = rule.get("expr").and_then(Yaml::as_str).expect("expr");
            let names = selected_metrics(expr)
                .unwrap_or_else(|e| panic!("{name}: expr does not parse: {e}\n{expr}"));
            assert!(!names.is_empty(), "{name}: selects no metric");
            for n in &names {
                assert!(
                    exported.contains(n) || EXTERNAL_METRICS.contains(&n.as_str()),
                    "{name}: {n} is not exported by the daemon"
                );
            }
            used.extend(names);
            if let Some(d) = rule.get("for").and_then(Yaml::as_str) {
                promql_parser::util::parse_duration(d)
                    .unwrap_or_else(|e| panic!("{name}: for {d:?}: {e}"));
            }
            let severity = rule
                .get("labels")
                .and_then(|l| l.get("severity"))
                .and_then(Yaml::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{name}: severity {severity:?}"
            );
            let ann = rule.get("annotations").expect("annotations");
            assert!(
                ann.get("summary").and_then(Yaml::as_str).is_some(),
                "{name}: summary"
            );
            let link = ann
                .get("runbook")
                .and_then(Yaml::as_str)
                .unwrap_or_default();
            let anchor = link
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{name}: runbook {link:?}"));
            assert!(
                runbook.contains(anchor),
                "{name}: docs/operations.md has no section #{anchor}"
            );
        }
    }
    // The signals an operator must hear about are all covered.
    for needed in [
        "up",
        "provisioner_provisioning_attempts_total",
        "provisioner_whmcs_errors_total",
        "provisioner_poison_events_total",
        "provisioner_subscription_reconnects_total",
        "provisioner_subscription_cursor_fallbacks_total",
        "provisioner_queue_depth",
        "provisioner_salesforce_api_usage_used",
        "provisioner_salesforce_api_usage_limit",
        "provisioner_event_lag_seconds_bucket",
        "provisioner_dependency_state",
    ] {
        assert!(used.contains(needed), "no alert on {needed}");
    }
}

#[test]
fn dashboard_parses_and_charts_only_exported_metrics() {
    let exported = exported_metrics();
    let dash: serde_json::Value = serde_json::from_str(&read("deploy/grafana-dashboard.json"))
        .expect("grafana-dashboard.json is valid JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "panel {id} gridPos");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let concrete = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            let names = selected_metrics(&concrete)
                .unwrap_or_else(|e| panic!("{title}: query does not parse: {e}\n{expr}"));
            assert!(!names.is_empty(), "{title}: selects no metric");
            for n in &names {
                assert!(
                    exported.contains(n) || EXTERNAL_METRICS.contains(&n.as_str()),
                    "{title}: {n} is not exported by the daemon"
                );
            }
            used.extend(names);
        }
    }
    // The signals the runbook talks about are all charted.
    for needed in [
        "up",
        "provisioner_provisioning_attempts_total",
        "provisioner_provisioning_duration_seconds_bucket",
        "provisioner_whmcs_errors_total",
        "provisioner_salesforce_errors_total",
        "provisioner_events_received_total",
        "provisioner_poison_events_total",
        "provisioner_event_lag_seconds_bucket",
        "provisioner_subscription_reconnects_total",
        "provisioner_subscription_cursor_fallbacks_total",
        "provisioner_subscription_keepalives_total",
        "provisioner_queue_depth",
        "provisioner_salesforce_api_usage_used",
        "provisioner_salesforce_api_usage_limit",
        "provisioner_orders_skipped_total",
    ] {
        assert!(used.contains(needed), "{needed} is not on the dashboard");
    }
}

#[test]
fn links_of_the_operations_docs_resolve() {
    for doc in ["docs/operations.md", "docs/salesforce-setup.md"] {
        let text = read(doc);
        let dir = path(doc).parent().expect("docs dir").to_owned();
        let mut checked = 0;
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file_path = if file.is_empty() {
                path(doc)
            } else {
                dir.join(file)
            };
            assert!(file_path.exists(), "{doc}: link to missing {target}");
            if !anchor.is_empty() {
                let md = std::fs::read_to_string(&file_path).expect("linked markdown");
                assert!(
                    anchors(&md).contains(anchor),
                    "{doc}: link to missing section {target}"
                );
            }
            checked += 1;
        }
        assert!(checked > 0, "{doc} links nothing");
    }
}
