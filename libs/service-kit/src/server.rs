//! The HTTP server every service runs: axum's router on hyper's HTTP/1 connection
//! builder, configured with the limits an open port on a shop's network needs (contract §
//! Limits, abuse and roles). `axum::serve` exposes none of them.
//!
//! Accept → (a connection permit, or wait: the kernel backlog absorbs the rest) → hyper
//! HTTP/1 with a header-read deadline that also closes idle keep-alive connections, a
//! 16 KiB header cap (431) → the router under a whole-request timeout (408) and the
//! JSON error body for every error that a layer, not a handler, produced (404, 405, 408,
//! 413 …), and a bounded `X-Request-Id` echoed on every answer. On shutdown (the token
//! cancelled): stop accepting, let each connection finish its request (a task tracker
//! counts them), then return.

use crate::http::{ErrorCode, ErrorResponse};
use crate::shutdown::{CancellationToken, TaskTracker};
use axum::{
    body::Body,
    extract::Request,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Contract: request headers over 16 KiB → 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Connection-level limits, from env (the same names on every service).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// `HTTP_HEADER_TIMEOUT_MS` (default 10 s, the contract's): a connection that has not
    /// sent a complete request head by then is closed — a new one as well as a kept-alive
    /// one waiting for its next request, so it is also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT_MS` (default 30 s): a request not answered by then gets 408.
    /// It must exceed the longest bounded wait of a handler (publish tries, MongoDB).
    pub request_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS` (default 10 000): open HTTP connections at once; above it
    /// the server stops accepting until one closes. Upgraded WebSockets are not counted
    /// here (fanout caps them itself).
    pub max_connections: usize,
}

impl ServerLimits {
    /// Reads the limits from env; a bad or zero value is a problem reported with the rest.
    pub fn from_env(env: &mut crate::Env) -> Self {
        let limits = Self {
            header_read_timeout: env.millis("HTTP_HEADER_TIMEOUT_MS", Duration::from_secs(10)),
            request_timeout: env.millis("HTTP_REQUEST_TIMEOUT_MS", Duration::from_secs(30)),
            max_connections: env.parse("HTTP_MAX_CONNECTIONS", 10_000, "a positive integer"),
        };
        if limits.max_connections == 0 {
            env.problem("HTTP_MAX_CONNECTIONS must be at least 1");
        }
        if limits.header_read_timeout.is_zero() || limits.request_timeout.is_zero() {
            env.problem("HTTP_HEADER_TIMEOUT_MS and HTTP_REQUEST_TIMEOUT_MS must be > 0");
        }
        limits
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// Adds `GET /metrics`, the whole-request timeout, the JSON error bodies, the request id
/// and the HTTP metrics to `router`.
fn harden(router: Router, limits: &ServerLimits) -> Router {
    router
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(json_error_body))
        .layer(axum::middleware::from_fn(request_id))
        // Outermost: it sees the status the client gets (a 408 of the timeout too).
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
}

/// Contract: `X-Request-Id` of at most 128 visible ASCII characters, else a new id.
pub const MAX_REQUEST_ID: usize = 128;

/// The request id a handler sees is always a valid one (the caller's, or a new UUID in
/// its place), the response echoes it, and every log line written while the request is
/// handled carries it (`request_id`), as the pipeline's lines do after it (NATS header
/// [`REQUEST_ID`]).
async fn request_id(mut request: Request, next: axum::middleware::Next) -> Response {
    let valid = request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .cloned();
    let id = match valid {
        Some(v) => v,
        None => header::HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
            .unwrap_or(header::HeaderValue::from_static("invalid")),
    };
    request.headers_mut().insert(REQUEST_ID, id.clone());
    // At ERROR level so that no filter (`RUST_LOG=warn`) leaves a warning without it;
    // a span's level only decides when it exists, its lines keep their own levels.
    let span = tracing::error_span!("request", request_id = id.to_str().unwrap_or(""));
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The request id's header, in HTTP and (the same name) in NATS message headers.
pub const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// 1–128 visible ASCII characters (`!` to `~`).
pub fn is_valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// An error response without a body (axum's 404/405 fallbacks, the timeout's 408, a body
/// limit's 413) gets the contract's JSON error body; handlers' own errors have one.
async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let code = ErrorCode::for_status(status);
    let message = match code {
        ErrorCode::NotFound => "no such resource",
        ErrorCode::MethodNotAllowed => "this method is not allowed on this path",
        ErrorCode::RequestTimeout => {
            "the request was not answered in time; a POST may or may not have taken \
             effect: retry it with the same idempotency key"
        }
        ErrorCode::PayloadTooLarge => "request body is larger than the limit",
        _ => status.canonical_reason().unwrap_or("request failed"),
    };
    let mut out = ErrorResponse::new(code, message).into_response();
    // Keep what a layer set (Allow on a 405, for one).
    for (name, value) in response.headers() {
        if name != header::CONTENT_LENGTH {
            out.headers_mut()
                .entry(name.clone())
                .or_insert(value.clone());
        }
    }
    out
}

/// A service's bound port and the limits it will be served with. `build` binds early,
/// so a taken port fails start-up with a message naming the variable; `run` serves.
pub struct Listening {
    name: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
}

/// The port a service was told to use cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {variable} {addr}: {source} (is another process on that port?)")]
pub struct BindError {
    variable: &'static str,
    addr: std::net::SocketAddr,
    source: std::io::Error,
}

impl Listening {
    /// Binds `addr` (port 0: any free port), which the setting `variable` named.
    pub async fn bind(
        name: &'static str,
        variable: &'static str,
        addr: std::net::SocketAddr,
        limits: ServerLimits,
    ) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| BindError {
            variable,
            addr,
            source,
        })?;
        Ok(Self {
            name,
            listener,
            limits,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// [`serve`]s `router` here until `stop` is cancelled.
    pub async fn serve(self, router: Router, stop: CancellationToken) -> std::io::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "{} listening", self.name);
        serve(self.listener, router, self.limits, stop).await
    }
}

/// Serves `router` with the layers of [`harden`] on `listener` until `stop` is
/// cancelled, then waits for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = harden(router, &limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
        );
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}
