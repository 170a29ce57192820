//! Outbound HTTP plumbing shared by the Salesforce and WHMCS clients: the one process-wide
//! [`reqwest::Client`] (connection pool with keep-alive) and how transport failures are described.
//!
//! Invariants: every client built here has a connect timeout; every request the clients send
//! also carries its own total timeout (set per call by each client), so no outbound call can
//! hang. No client follows a redirect: a 3xx is the answer (a redirect would re-send the
//! request, credentials included, to a host nobody configured). Plain `http://` is accepted
//! only towards loopback hosts ([`is_loopback_url`]). Every client uses exactly the configured
//! proxies ([`proxy`]), never the environment's. Error descriptions never include URLs or
//! bodies (a body may hold credentials).

use std::{fmt::Write as _, time::Duration};

pub mod proxy;

use proxy::ProxyConfig;

/// Connect timeout of the shared client (TCP + TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds an outbound HTTP client: rustls, keep-alive pool, connect timeout, TCP keep-alive,
/// `timeout` as the default total timeout of each request, and the configured proxies. Build
/// one per dependency at start-up and clone it into every user (clones share the pool).
pub fn client(timeout: Duration, proxies: &ProxyConfig) -> reqwest::Result<reqwest::Client> {
    proxies
        .apply(reqwest::Client::builder())?
        .timeout(timeout)
        .user_agent(concat!("provisioner/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Whether the URL's host is a loopback address (127.0.0.0/8, ::1) or `localhost`: the only
/// hosts a plain `http://` endpoint may point at (the simulator, a local sidecar).
pub fn is_loopback_url(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether the URL may carry credentials: `https://`, or `http://` to a loopback host.
pub fn is_secure_or_loopback(u: &url::Url) -> bool {
    match u.scheme() {
        "https" => true,
        "http" => is_loopback_url(u),
        _ => false,
    }
}

/// How a failed send relates to the remote side's processing of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// The connection could not be established (includes connect timeouts): the request was
    /// never sent.
    Connect,
    /// The total request timeout elapsed after the connection was made: the request may have
    /// been processed.
    Timeout,
    /// The connection broke after it was established (reset, closed mid-response, body read
    /// failure): the request may have been processed.
    Lost,
}

impl TransportFailure {
    pub fn of(e: &reqwest::Error) -> Self {
        if e.is_connect() {
            Self::Connect
        } else if e.is_timeout() {
            Self::Timeout
        } else {
            Self::Lost
        }
    }
}

/// `"<what failed>: <cause>: <cause>"`, without the URL (kept short; no query strings in logs).
pub fn describe(e: &reqwest::Error) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(kind_of(e));
    let mut cause = std::error::Error::source(e);
    while let Some(err) = cause {
        let _ = write!(out, ": {err}");
        cause = err.source();
    }
    out
}

fn kind_of(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else if e.is_request() {
        "sending the request failed"
    } else {
        "HTTP client error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_may_use_plain_http() {
        for ok in [
            "https://login.salesforce.com",
            "http://127.0.0.1:8080/x",
            "http://127.5.0.1",
            "http://[::1]:9/",
            "http://localhost:1",
            "http://LOCALHOST.",
        ] {
            let u = url::Url::parse(ok).expect("url");
            assert!(is_secure_or_loopback(&u), "{ok}");
        }
        for bad in [
            "http://login.salesforce.com",
            "http://10.0.0.1",
            "http://[::2]",
            "http://localhost.example.com",
            "http://128.0.0.1",
            "ftp://127.0.0.1",
        ] {
            let u = url::Url::parse(bad).expect("url");
            assert!(!is_secure_or_loopback(&u), "{bad}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_connect_and_described_without_url() {
        let http = client(Duration::from_secs(5), &ProxyConfig::default()).expect("client");
        // A port that was free a moment ago: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let err = http
            .get(format!("http://127.0.0.1:{port}/secret-path?q=x"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect_err("nothing listens on port 9");
        assert_eq!(TransportFailure::of(&err), TransportFailure::Connect);
        let text = describe(&err);
        assert!(text.starts_with("connection failed"), "{text}");
        assert!(!text.contains("secret-path"), "{text}");
    }
}
