//! What the chaos and bench runs share: finding the daemon binary, free loopback ports and a
//! fresh PostgreSQL schema per run (so runs never see each other's ledgers).

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
