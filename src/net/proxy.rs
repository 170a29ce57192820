//! The outbound HTTP proxy: which proxy, if any, each outbound connection goes through.
//!
//! The settings are read once into the configuration (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`;
//! lower-case spellings are accepted, upper-case wins). Nothing else reads the proxy
//! environment: the HTTP clients are built with exactly these proxies, so what
//! `provisioner check` reports is what the daemon does.
//!
//! - HTTP clients (Salesforce OAuth and REST, WHMCS, the alert webhook) get explicit reqwest
//!   proxies: `https://` targets are tunnelled with `CONNECT`, `http://` targets are sent to the
//!   proxy in absolute form.
//! - The Pub/Sub gRPC channel always goes through a `CONNECT` tunnel ([`ProxyConfig::tunnel`]),
//!   also for a plaintext `http://` endpoint (HTTP/2 cannot be forwarded in absolute form). TLS
//!   for an `https://` endpoint runs inside the tunnel, end to end with the server.
//! - `HTTPS_PROXY` applies to `https://` targets, `HTTP_PROXY` to `http://` targets.
//! - `NO_PROXY` has one meaning for both paths (curl's rules, evaluated by hyper-util's
//!   matcher, which reqwest uses too): comma-separated host or domain names (a leading dot is
//!   optional; a domain also matches its subdomains), IP addresses, CIDR ranges, or `*`.
//!
//! Invariants: only `http://` proxies are accepted (the hop to the proxy is plain HTTP, the
//! tunnelled traffic keeps its own TLS). Proxy credentials (`user:pass@`) are secrets: `Debug`,
//! `Display`, routes and validation errors show the proxy without them.

use std::{fmt, time::Duration};

use hyper::Uri;
use hyper_util::client::{
    legacy::connect::{HttpConnector, proxy::Tunnel},
    proxy::matcher::Matcher,
};
use tower::util::MapRequest;

use super::CONNECT_TIMEOUT;

/// An `http://` proxy, credentials included. Shown (`Debug`, `Display`) without credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(url::Url);

impl ProxyUrl {
    /// Parses a proxy setting: `http://[user:pass@]host[:port]`, or `host:port` (`http://` is
    /// assumed, as curl does). `Ok(None)` for an empty value. The error never repeats the value
    /// (it may hold a password).
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        let v = value.trim();
        if v.is_empty() {
            return Ok(None);
        }
        let with_scheme = if v.contains("://") {
            v.to_owned()
        } else {
            format!("http://{v}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("is not a proxy URL like http://proxy.example.com:3128 ({e})"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "only http:// proxies are supported, got {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no proxy host".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("must be scheme://host:port only, without a path".into());
        }
        Ok(Some(Self(url)))
    }

    /// `http://host:port`, without credentials.
    pub fn redacted(&self) -> String {
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port_or_known_default() {
            Some(port) => format!("{}://{host}:{port}", self.0.scheme()),
            None => format!("{}://{host}", self.0.scheme()),
        }
    }

    /// Whether the URL carries a user name or password.
    pub fn has_credentials(&self) -> bool {
        !self.0.username().is_empty() || self.0.password().is_some()
    }

    /// The full URL, credentials included: only for handing to the HTTP stack.
    fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())?;
        if self.has_credentials() {
            f.write_str(" (with credentials)")?;
        }
        Ok(())
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The proxy settings of the process.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Proxy for `https://` targets (`HTTPS_PROXY`).
    pub https: Option<ProxyUrl>,
    /// Proxy for `http://` targets (`HTTP_PROXY`).
    pub http: Option<ProxyUrl>,
    /// Targets that bypass the proxy (`NO_PROXY`), as written.
    pub no_proxy: String,
}

/// How connections to one target are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No proxy is configured for the target's scheme.
    Direct,
    /// A proxy is configured, but `NO_PROXY` exempts the target.
    Bypassed,
    /// Through this proxy.
    Via(ProxyUrl),
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct => f.write_str("direct"),
            Self::Bypassed => f.write_str("direct (NO_PROXY)"),
            Self::Via(p) => write!(f, "via proxy {p}"),
        }
    }
}

/// The connector of a gRPC channel through a proxy: TCP to the proxy, then `CONNECT
/// host:port` (the target's port made explicit), answered 200, then the target's bytes.
pub type TunnelConnector = MapRequest<Tunnel<HttpConnector>, fn(Uri) -> Uri>;

impl ProxyConfig {
    /// Validated settings; the error names the setting (lower-case, as `default.toml` does).
    pub fn parse(
        https_proxy: &str,
        http_proxy: &str,
        no_proxy: &str,
    ) -> Result<Self, (&'static str, String)> {
        Ok(Self {
            https: ProxyUrl::parse(https_proxy).map_err(|m| ("https_proxy", m))?,
            http: ProxyUrl::parse(http_proxy).map_err(|m| ("http_proxy", m))?,
            no_proxy: no_proxy.trim().to_owned(),
        })
    }

    fn matcher(&self) -> Matcher {
        let mut b = Matcher::builder().no(self.no_proxy.as_str());
        if let Some(p) = &self.https {
            b = b.https(p.expose());
        }
        if let Some(p) = &self.http {
            b = b.http(p.expose());
        }
        b.build()
    }

    /// The proxy configured for the target's scheme, ignoring `NO_PROXY`.
    fn for_scheme(&self, target: &Uri) -> Option<&ProxyUrl> {
        match target.scheme_str() {
            Some("https") => self.https.as_ref(),
            Some("http") => self.http.as_ref(),
            _ => None,
        }
    }

    /// How connections to `target` (a URL) are made.
    pub fn route(&self, target: &str) -> Route {
        let Ok(uri) = target.parse::<Uri>() else {
            return Route::Direct;
        };
        match self.for_scheme(&uri) {
            None => Route::Direct,
            Some(p) if self.matcher().intercept(&uri).is_some() => Route::Via(p.clone()),
            Some(_) => Route::Bypassed,
        }
    }

    /// Applies these settings to an HTTP client: exactly these proxies, never the
    /// environment's.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> reqwest::Result<reqwest::ClientBuilder> {
        let mut builder = builder.no_proxy();
        let no_proxy = || reqwest::NoProxy::from_string(&self.no_proxy);
        if let Some(p) = &self.https {
            builder = builder.proxy(reqwest::Proxy::https(p.expose())?.no_proxy(no_proxy()));
        }
        if let Some(p) = &self.http {
            builder = builder.proxy(reqwest::Proxy::http(p.expose())?.no_proxy(no_proxy()));
        }
        Ok(builder)
    }

    /// The tunnelling connector for a gRPC channel to `target`, or `None` when the channel
    /// connects directly (no proxy for the scheme, or `NO_PROXY`).
    pub fn tunnel(&self, target: &Uri) -> Option<TunnelConnector> {
        let intercept = self.matcher().intercept(target)?;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_keepalive(Some(Duration::from_secs(30)));
        let mut tunnel = Tunnel::new(intercept.uri().clone(), tcp);
        if let Some(auth) = intercept.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        Some(MapRequest::new(
            tunnel,
            with_explicit_port as fn(Uri) -> Uri,
        ))
    }
}

/// `CONNECT` needs `host:port`; a target without a port gets its scheme's default.
fn with_explicit_port(uri: Uri) -> Uri {
    if uri.port().is_some() {
        return uri;
    }
    let port = if uri.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let Some(host) = uri.host() else {
        return uri;
    };
    let mut parts = uri.clone().into_parts();
    match format!("{host}:{port}").parse() {
        Ok(authority) => {
            parts.authority = Some(authority);
            Uri::from_parts(parts).unwrap_or(uri)
        }
        Err(_) => uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(https: &str, http: &str, no: &str) -> ProxyConfig {
        ProxyConfig::parse(https, http, no).expect("valid proxy settings")
    }

    #[test]
    fn proxy_urls_are_validated_without_echoing_them() {
        assert_eq!(ProxyUrl::parse(" ").expect("empty"), None);
        let p = ProxyUrl::parse("proxy.corp:3128")
            .expect("ok")
            .expect("set");
        assert_eq!(p.redacted(), "http://proxy.corp:3128");
        let p = ProxyUrl::parse("http://proxy.corp")
            .expect("ok")
            .expect("set");
        assert_eq!(p.redacted(), "http://proxy.corp:80");
        for bad in [
            "https://u:hunter2@proxy.corp:3128",
            "socks5://u:hunter2@proxy.corp:1080",
            "http://u:hunter2@proxy.corp:3128/path",
            "http://u:hunter2@:3128",
        ] {
            let e = ProxyUrl::parse(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn credentials_never_show() {
        let c = cfg("http://alice:hunter2@proxy.corp:3128", "", "");
        let shown = format!(
            "{c:?} {} {}",
            c.route("https://login.salesforce.com"),
            c.https.as_ref().expect("set")
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("alice"),
            "{shown}"
        );
        assert!(shown.contains("http://proxy.corp:3128"), "{shown}");
        assert!(shown.contains("with credentials"), "{shown}");
    }

    #[test]
    fn routes_follow_scheme_and_no_proxy() {
        let c = cfg(
            "http://sproxy:3128",
            "http://hproxy:8080",
            "internal.corp, .billing.example, 10.0.0.0/8, 192.168.1.7",
        );
        let via = |s: &str| Route::Via(ProxyUrl::parse(s).expect("ok").expect("set"));
        assert_eq!(
            c.route("https://login.salesforce.com"),
            via("http://sproxy:3128")
        );
        assert_eq!(c.route("http://sim.local:9000"), via("http://hproxy:8080"));
        for bypassed in [
            "https://internal.corp/x",
            "https://api.internal.corp",
            "https://billing.example/includes/api.php",
            "https://www.billing.example",
            "http://10.1.2.3:8080",
            "https://192.168.1.7",
        ] {
            assert_eq!(c.route(bypassed), Route::Bypassed, "{bypassed}");
        }
        // Suffix match only at a label boundary.
        assert_eq!(
            c.route("https://notinternal.corp"),
            via("http://sproxy:3128")
        );
        assert_eq!(c.route("https://192.168.1.8"), via("http://sproxy:3128"));
        let star = cfg("http://sproxy:3128", "", "*");
        assert_eq!(star.route("https://anything.example"), Route::Bypassed);
        let only_https = cfg("http://sproxy:3128", "", "");
        assert_eq!(only_https.route("http://plain.example"), Route::Direct);
        assert_eq!(
            ProxyConfig::default().route("https://x.example"),
            Route::Direct
        );
        assert_eq!(Route::Bypassed.to_string(), "direct (NO_PROXY)");
        assert_eq!(
            via("http://u:p@sproxy:3128").to_string(),
            "via proxy http://sproxy:3128"
        );
    }

    #[test]
    fn tunnel_only_when_routed_through_a_proxy() {
        let c = cfg("http://sproxy:3128", "http://hproxy:8080", "127.0.0.1");
        let uri = |s: &str| s.parse::<Uri>().expect("uri");
        assert!(
            c.tunnel(&uri("https://api.pubsub.salesforce.com:7443"))
                .is_some()
        );
        assert!(c.tunnel(&uri("http://sim.local:9000")).is_some());
        assert!(c.tunnel(&uri("http://127.0.0.1:9000")).is_none());
        assert!(
            ProxyConfig::default()
                .tunnel(&uri("https://x.example"))
                .is_none()
        );
        assert_eq!(
            with_explicit_port(uri("https://api.pubsub.salesforce.com")).to_string(),
            "https://api.pubsub.salesforce.com:443/"
        );
        assert_eq!(
            with_explicit_port(uri("http://sim.local")).to_string(),
            "http://sim.local:80/"
        );
        assert_eq!(
            with_explicit_port(uri("http://sim.local:9000")).to_string(),
            "http://sim.local:9000/"
        );
    }

    /// The HTTP client sends through the configured proxy (absolute form for `http://`), and
    /// not when `NO_PROXY` exempts the target.
    #[tokio::test]
    async fn clients_use_the_configured_proxy_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let proxy = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        // A stand-in proxy answering 204 to every request, recording each request head.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                record
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let via =
            super::super::client(Duration::from_secs(5), &cfg("", &proxy, "")).expect("client");
        let resp = via
            .get("http://upstream.invalid/hook?x=1")
            .send()
            .await
            .expect("through the proxy");
        assert_eq!(resp.status().as_u16(), 204);
        let request = seen.lock().expect("lock")[0].clone();
        assert!(
            request.starts_with("GET http://upstream.invalid/hook?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        // Exempted: the client resolves upstream.invalid itself, which fails.
        let direct =
            super::super::client(Duration::from_secs(5), &cfg("", &proxy, "upstream.invalid"))
                .expect("client");
        let err = direct
            .get("http://upstream.invalid/hook")
            .send()
            .await
            .expect_err("no such host");
        assert!(err.is_connect(), "{err:?}");
        assert_eq!(
            seen.lock().expect("lock").len(),
            1,
            "the proxy saw the exempted request"
        );
    }
}
