//! What the chaos, bench and floor runs share: finding the daemon binary, free loopback ports,
//! a fresh PostgreSQL schema per run (so runs never see each other's ledgers), and a process's
//! CPU time and context switches read from `/proc`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

/// The `provisioner` binary to run: `explicit` if given, else `$PROVISIONER_BIN`, else the one
/// built beside this program (`target/<profile>/provisioner`; from a test binary in
/// `target/<profile>/deps/`, one directory up).
pub fn daemon_exe(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("PROVISIONER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating this program")?;
    let dir = me.parent().context("this program has no directory")?;
    [dir.join("provisioner"), dir.join("../provisioner")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no provisioner binary beside {}: build it (cargo build -p provisioner) or pass --daemon",
                me.display()
            )
        })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Creates a fresh schema `<prefix>_<uuid>` in the PostgreSQL at `base` and returns a URL whose
/// connections use it, and the schema's name.
pub async fn create_schema(base: &str, prefix: &str) -> anyhow::Result<(String, String)> {
    if !base.starts_with("postgres://") && !base.starts_with("postgresql://") {
        anyhow::bail!("{base:?} is not a postgres:// URL");
    }
    sqlx::any::install_default_drivers();
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        <sqlx::AnyConnection as sqlx::Connection>::connect(base),
    )
    .await
    .context("connecting to PostgreSQL: timed out (scripts/services.sh starts it)")?
    .context("connecting to PostgreSQL (scripts/services.sh starts it)")?;
    sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str())
        .await
        .context("creating the run's schema")?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok((
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    ))
}

/// Drops a schema made by [`create_schema`].
pub async fn drop_schema(base: &str, schema: &str) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        <sqlx::AnyConnection as sqlx::Connection>::connect(base),
    )
    .await
    .context("connecting to PostgreSQL: timed out")??;
    sqlx::Executor::execute(
        &mut conn,
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str(),
    )
    .await?;
    Ok(())
}

/// A process's user + system CPU time in seconds, from `<proc>/stat` (`/proc/<pid>` or
/// `/proc/self`); `ticks` is the kernel's clock ticks per second ([`clock_ticks`]).
pub fn cpu_secs(proc: &str, ticks: f64) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("{proc}/stat"))?;
    let rest = s
        .rfind(')')
        .and_then(|i| s.get(i + 2..))
        .with_context(|| format!("unexpected {proc}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let field = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i)
            .with_context(|| format!("short {proc}/stat"))?
            .parse::<f64>()?)
    };
    Ok((field(11)? + field(12)?) / ticks)
}

/// Context switches (voluntary + involuntary) of all of a process's threads so far, from
/// `<proc>/task/*/status`; 0 if they cannot be read.
pub fn ctx_switches(proc: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("{proc}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 if it cannot be read).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}
