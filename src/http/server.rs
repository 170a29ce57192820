//! The HTTP server: accept loop, per-connection protocol choice (HTTP/1.1, or HTTP/2 with prior
//! knowledge), header-read timeout and graceful shutdown.
//!
//! Hand-written rather than hyper-util's auto builder, which has no timeout while it sniffs the
//! protocol (hyperium/hyper#3962), so a silent client could hold a connection forever.
//!
//! Invariants:
//! - A client has `http_header_read_timeout_secs` to send a request's complete headers — from
//!   its first byte, and again for every later request on a kept-alive connection; a slower
//!   ("slowloris") or silent client is disconnected. The protocol sniff at the start of a
//!   connection (at most 24 bytes) has a deadline of the same length.
//! - Request heads are bounded (64 KiB, 100 headers → 431), bodies by the layers around the
//!   router (64 KiB → 413).
//! - At most `http_max_connections` connections are open: at the cap the loop stops accepting,
//!   so further clients wait in the kernel's listen backlog until a connection closes.
//! - A connection with no request in flight (a response whose body is still streaming, e.g.
//!   SSE, counts as in flight) for `http_idle_timeout_secs` is shut down gracefully: HTTP/1.1
//!   keep-alive connections close, HTTP/2 ones get GOAWAY. HTTP/2 pings do not count as use.
//! - On shutdown the listener closes at once, in-flight requests finish, SSE streams end (the
//!   router watches the same token), idle connections close; the function returns when every
//!   connection is gone.
//! - Each request carries its peer address as `ConnectInfo<SocketAddr>`.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::ConnectInfo,
};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::state::AppState;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest request head (request line + headers) accepted over HTTP/1.1.
const MAX_HEAD: usize = 64 * 1024;

/// Serves the public HTTP API on `listener` until `shutdown` is cancelled and every connection
/// is done.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_surface(listener, state, super::Surface::Public, shutdown).await
}

/// Serves `surface` on `listener` until `shutdown` is cancelled and every connection is done.
pub async fn serve_surface(
    listener: TcpListener,
    state: AppState,
    surface: super::Surface,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = Limits {
        header_read: state.cfg.http.header_read_timeout,
        idle: state.cfg.http.idle_timeout,
    };
    let slots = Arc::new(Semaphore::new(state.cfg.http.max_connections));
    let app = super::layered(super::surface_router(state, surface, shutdown.clone()));
    let connections = TaskTracker::new();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                debug!("at the HTTP connection cap; waiting for a connection to close");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error.message = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = connection(stream, peer, app.clone(), limits, shutdown.clone());
        connections.spawn(async move {
            conn.await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    if !connections.is_empty() {
        info!(
            connections = connections.len(),
            "waiting for HTTP connections to finish"
        );
    }
    connections.wait().await;
    Ok(())
}

/// Reads until the first bytes tell HTTP/2 prior knowledge (`true`) from HTTP/1 (`false`).
async fn sniff(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 24];
    loop {
        if buf.len() >= H2_PREFACE.len() {
            return Ok(buf[..H2_PREFACE.len()] == *H2_PREFACE);
        }
        if !H2_PREFACE.starts_with(buf) {
            return Ok(false);
        }
        let n = stream
            .read(&mut chunk[..H2_PREFACE.len() - buf.len()])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Per-connection timeouts.
#[derive(Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
}

/// The requests in flight on one connection, and when it last had none. Updated with two
/// atomic operations per request and read only by the connection's idle timer, so a request
/// wakes nobody and arms no timer.
struct InFlight {
    count: AtomicUsize,
    /// When the connection started.
    since: tokio::time::Instant,
    /// When the last request ended, in milliseconds after `since` (0: none yet).
    idle_at_ms: AtomicU64,
}

/// One request in flight; dropping it ends it.
struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            since: tokio::time::Instant::now(),
            idle_at_ms: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Since when the connection has had no request in flight; `None` while one is.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.count.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.since + Duration::from_millis(self.idle_at_ms.load(Ordering::Acquire)))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let f = &self.0;
        // The end time first: whoever then sees the count at zero sees this time or a later one.
        let ms = u64::try_from(f.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        f.idle_at_ms.fetch_max(ms, Ordering::AcqRel);
        f.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the connection has had no request in flight for `timeout`. One timer, re-armed
/// when it fires early (a request came or is still running), not one per request.
async fn idle_for(in_flight: Arc<InFlight>, timeout: Duration) {
    let mut deadline = in_flight.since + timeout;
    loop {
        tokio::time::sleep_until(deadline).await;
        let now = tokio::time::Instant::now();
        match in_flight.idle_since() {
            Some(idle) if idle + timeout <= now => return,
            Some(idle) => deadline = idle + timeout,
            None => deadline = now + timeout,
        }
    }
}

/// A response body that ends its request's [`InFlightGuard`] when finished or dropped.
struct Tracked<B> {
    inner: B,
    guard: Option<InFlightGuard>,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes, Error = axum::Error> + Unpin,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn connection<S, B>(
    mut stream: TcpStream,
    peer: SocketAddr,
    app: S,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: tower::Service<
            axum::http::Request<Incoming>,
            Response = axum::http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    B: http_body::Body<Data = Bytes, Error = axum::Error> + Send + Unpin + 'static,
{
    let header_timeout = limits.header_read;
    let mut prefix = Vec::with_capacity(H2_PREFACE.len());
    let h2 = match tokio::time::timeout(header_timeout, sniff(&mut stream, &mut prefix)).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => {
            debug!(peer = %peer, error.message = %e, "HTTP connection closed before a request");
            return;
        }
        Err(_) => {
            debug!(peer = %peer, "HTTP client sent no request in time; closing");
            return;
        }
    };
    let io = TokioIo::new(Rewind {
        prefix,
        pos: 0,
        inner: stream,
    });
    let in_flight = InFlight::new();
    let idle = idle_for(in_flight.clone(), limits.idle);
    let service = TowerToHyperService::new(tower::service_fn(
        move |mut req: axum::http::Request<Incoming>| {
            let guard = in_flight.begin();
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let Ok(resp) = app.oneshot(req).await;
                Ok::<_, Infallible>(resp.map(|inner| {
                    Body::new(Tracked {
                        inner,
                        guard: Some(guard),
                    })
                }))
            }
        },
    ));
    tokio::pin!(idle);
    let result = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_header_list_size(MAX_HEAD as u32)
            .max_concurrent_streams(100);
        let conn = b.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = &mut idle => {
                debug!(peer = %peer, "closing an idle HTTP connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(MAX_HEAD)
            .max_headers(100);
        let conn = b.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = &mut idle => {
                debug!(peer = %peer, "closing an idle HTTP connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        debug!(peer = %peer, error.message = %e, "HTTP connection ended with an error");
    }
}

/// A stream that first replays the bytes the protocol sniff consumed.
struct Rewind {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
