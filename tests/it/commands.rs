//! The operator commands as the real binary runs them: `check` reports every configuration
//! problem at once and still checks what it can reach, `migrate` needs only `DATABASE_URL`, and
//! `sim --env-file` writes the settings that point the daemon at the simulator; a bad
//! `TOKIO_WORKER_THREADS` stops any command with one line naming it.

use std::{collections::BTreeMap, path::PathBuf, process::Output, time::Duration};

use tokio::process::Command;

use crate::helpers::{redis_url, wait_until};

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prov-cmd-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn provisioner(args: &[&str], env: &[(String, String)]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the command returns")
        .expect("run provisioner")
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn check_lists_every_configuration_problem_then_the_reachability_checks() {
    let dir = scratch_dir();
    let db = format!("sqlite://{}/ledger.db", dir.display());
    let redis = redis_url();
    let env = pairs(&[
        ("DATABASE_URL", &db),
        ("REDIS_URL", &redis),
        ("SF_CLIENT_ID", "cid"),
        ("SF_AUTH_FLOW", "client_credentials"),
        ("SF_CLIENT_SECRET", "secret"),
        ("WHMCS_API_IDENTIFIER", "id"),
        ("WHMCS_API_SECRET", "secret"),
        (
            "PORTAL_JWT_SECRET",
            "a-portal-secret-of-forty-bytes-for-tests",
        ),
        // Three problems:
        (
            "WHMCS_API_URL",
            "http://billing.example.com/includes/api.php",
        ),
        ("SF_API_VERSION", "latest"),
        ("LOG_FORMAT", "xml"),
    ]);
    let out = provisioner(&["check"], &env).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let config_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[FAIL] configuration: "))
        .collect();
    assert_eq!(config_lines.len(), 3, "{stdout}");
    for (line, setting) in
        config_lines
            .iter()
            .zip(["SF_API_VERSION", "WHMCS_API_URL", "LOG_FORMAT"])
    {
        assert!(line.contains(setting), "{setting} in {line:?}\n{stdout}");
    }
    // The dependencies whose settings are valid are still checked, on the same screen.
    assert!(stdout.contains("[ ok ] database: reachable"), "{stdout}");
    assert!(stdout.contains("[ ok ] redis: reachable"), "{stdout}");
    assert!(
        stdout.contains("[FAIL] salesforce / whmcs: not checked"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn migrate_runs_with_only_database_url() {
    let dir = scratch_dir();
    let db = format!("sqlite://{}/ledger.db", dir.display());
    let env = pairs(&[("DATABASE_URL", &db)]);
    let out = provisioner(&["migrate"], &env).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("migrations applied"),
        "{out:?}"
    );
    assert!(dir.join("ledger.db").is_file());
    // A bad DATABASE_URL is still refused, naming the setting.
    let out = provisioner(&["migrate"], &pairs(&[("DATABASE_URL", "mysql://x")])).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_runtime_thread_count_is_checked_and_honoured() {
    let dir = scratch_dir();
    let db = format!("sqlite://{}/ledger.db", dir.display());
    // A bad value stops the command before it does anything, with one line naming it.
    for bad in ["0", "many"] {
        let env = pairs(&[("DATABASE_URL", &db), ("TOKIO_WORKER_THREADS", bad)]);
        let out = provisioner(&["migrate"], &env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("provisioner: TOKIO_WORKER_THREADS: "),
            "{stderr}"
        );
        assert!(!dir.join("ledger.db").exists(), "{bad}: nothing ran");
    }
    // One thread (the default) and several both run a command to the end.
    for threads in [None, Some("3")] {
        let mut env = pairs(&[("DATABASE_URL", &db)]);
        if let Some(n) = threads {
            env.push(("TOKIO_WORKER_THREADS".to_owned(), n.to_owned()));
        }
        let out = provisioner(&["migrate"], &env).await;
        assert!(out.status.success(), "{threads:?}: {out:?}");
    }
    assert!(dir.join("ledger.db").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_env_file_points_the_daemon_at_the_simulator() {
    let dir = scratch_dir();
    let env_file = dir.join("sim.env");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args([
            "sim",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--env-file")
        .arg(&env_file)
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the simulator");
    wait_until(Duration::from_secs(30), "the env file to be written", || {
        let path = env_file.clone();
        async move {
            std::fs::read_to_string(&path).is_ok_and(|t| t.contains("WHMCS_API_SECRET="))
        }
    })
    .await;
    let text = std::fs::read_to_string(&env_file).expect("env file");
    let vars: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for key in ["SF_LOGIN_URL", "SF_PUBSUB_ENDPOINT", "WHMCS_API_URL"] {
        let url = url::Url::parse(vars.get(key).unwrap_or_else(|| panic!("{key} in\n{text}")))
            .unwrap_or_else(|e| panic!("{key}: {e}\n{text}"));
        assert_eq!(url.host_str(), Some("127.0.0.1"), "{key}");
        assert!(url.port().is_some_and(|p| p > 0), "{key}: {url}");
    }

    // Those settings, plus a ledger, Redis and the portal secret, are a configuration whose
    // every dependency answers: `check` reaches the simulator's OAuth, Pub/Sub and WHMCS.
    let db = format!("sqlite://{}/ledger.db", dir.display());
    let mut env: Vec<(String, String)> = vars.into_iter().collect();
    env.extend(pairs(&[
        ("DATABASE_URL", &db),
        ("REDIS_URL", &redis_url()),
        (
            "PORTAL_JWT_SECRET",
            "a-portal-secret-of-forty-bytes-for-tests",
        ),
    ]));
    let out = provisioner(&["check"], &env).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "[ ok ] configuration: valid",
        "[ ok ] salesforce auth",
        "[ ok ] pub/sub topic",
        "[ ok ] whmcs",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    assert!(out.status.success(), "{stdout}");
    sim.kill().await.expect("stop the simulator");
    let _ = std::fs::remove_dir_all(&dir);
}
