//! A loopback forward HTTP proxy standing in for a corporate proxy: it tunnels `CONNECT
//! host:port` requests and forwards absolute-form requests (`GET http://host/path`), and records
//! each one (`"CONNECT host:port"`, `"POST http://host:port/path"`) in order. With credentials
//! it answers 407 to requests without the matching `Proxy-Authorization` (recorded as
//! `"DENIED ..."`).

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use axum::body::Body;
use base64::Engine as _;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle};

pub struct ForwardProxy {
    /// `http://127.0.0.1:port`, without credentials.
    pub url: String,
    /// `http://user:pass@127.0.0.1:port` when credentials are required, else `url`.
    pub url_with_credentials: String,
    log: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

struct Shared {
    log: Arc<Mutex<Vec<String>>>,
    /// Expected `Proxy-Authorization` value.
    auth: Option<String>,
    upstream: reqwest::Client,
}

impl ForwardProxy {
    /// Starts the proxy; with `credentials`, requests must carry them (Basic).
    pub async fn start(credentials: Option<(&str, &str)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let url_with_credentials = match credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{port}"),
            None => url.clone(),
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            log: log.clone(),
            auth: credentials.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }),
            upstream: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("upstream client"),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            url,
            url_with_credentials,
            log,
            task,
        }
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.log.lock().expect("proxy log").clone()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let target = if req.method() == Method::CONNECT {
        req.uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default()
    } else {
        req.uri().to_string()
    };
    let entry = format!("{} {target}", req.method());
    if let Some(expected) = &shared.auth {
        let given = req
            .headers()
            .get(hyper::header::PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            shared
                .log
                .lock()
                .expect("proxy log")
                .push(format!("DENIED {entry}"));
            let mut r = plain(StatusCode::PROXY_AUTHENTICATION_REQUIRED);
            r.headers_mut().insert(
                hyper::header::PROXY_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"test\""),
            );
            return Ok(r);
        }
    }
    shared.log.lock().expect("proxy log").push(entry);
    if req.method() == Method::CONNECT {
        let Ok(upstream) = TcpStream::connect(&target).await else {
            return Ok(plain(StatusCode::BAD_GATEWAY));
        };
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
        return Ok(plain(StatusCode::OK));
    }
    if req.uri().scheme().is_none() || req.uri().authority().is_none() {
        return Ok(plain(StatusCode::BAD_REQUEST));
    }
    Ok(forward(&shared.upstream, req)
        .await
        .unwrap_or_else(|| plain(StatusCode::BAD_GATEWAY)))
}

/// Headers that concern only one hop, or that the forwarding client sets itself.
fn hop_by_hop(name: &hyper::header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "transfer-encoding"
            | "content-length"
            | "te"
            | "upgrade"
    )
}

async fn forward(upstream: &reqwest::Client, req: Request<Incoming>) -> Option<Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(Body::new(body), 64 * 1024 * 1024)
        .await
        .ok()?;
    let mut out = upstream.request(parts.method, parts.uri.to_string());
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    let resp = out.body(body).send().await.ok()?;
    let mut back = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !hop_by_hop(name) {
            back = back.header(name, value);
        }
    }
    let bytes = resp.bytes().await.ok()?;
    back.body(Body::from(bytes)).ok()
}
