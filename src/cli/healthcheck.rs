//! `provisioner healthcheck`: exits 0 when the local daemon answers `/health/ready`, 1 otherwise
//! (for container health checks). It reads no configuration file: only `HTTP_ADDR` and
//! `INTERNAL_HTTP_ADDR` from the environment, or `--url`; never through a proxy.

use std::{process::ExitCode, time::Duration};

/// Probes `/health/ready`; returns the process exit code.
pub async fn run(url: Option<String>) -> ExitCode {
    let base = url.unwrap_or_else(|| {
        local_base(
            std::env::var("INTERNAL_HTTP_ADDR").ok().as_deref(),
            std::env::var("HTTP_ADDR").ok().as_deref(),
        )
    });
    // The daemon is local: never through a proxy from the environment.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(_) => return ExitCode::FAILURE,
    };
    match client
        .get(format!("{}/health/ready", base.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where `healthcheck` finds `/health/ready` on this host: the internal listener when one is
/// configured (health is served only there then), else `HTTP_ADDR`; a wildcard address is
/// reached over loopback.
fn local_base(internal: Option<&str>, public: Option<&str>) -> String {
    let addr = internal
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .or(public.map(str::trim).filter(|a| !a.is_empty()))
        .unwrap_or("0.0.0.0:8080");
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
        Ok(a) => format!("http://{a}"),
        Err(_) => {
            let port = addr.rsplit(':').next().unwrap_or("8080");
            format!("http://127.0.0.1:{port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local_base;

    #[test]
    fn healthcheck_probes_the_internal_listener_when_there_is_one() {
        assert_eq!(local_base(None, None), "http://127.0.0.1:8080");
        assert_eq!(
            local_base(None, Some("0.0.0.0:8081")),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            local_base(Some(""), Some("0.0.0.0:8081")),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            local_base(Some("0.0.0.0:9090"), Some("0.0.0.0:8081")),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            local_base(Some("10.0.0.5:9090"), Some("0.0.0.0:8081")),
            "http://10.0.0.5:9090"
        );
        assert_eq!(local_base(Some("[::]:9090"), None), "http://127.0.0.1:9090");
    }
}
