//! The contract's HTTP shapes shared by ingress and fanout: the error body and
//! `/health`.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// `{ "error": { "code", "message", "details"? } }` with its status and optional
/// `Retry-After`.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Vec<Detail>>,
    pub retry_after_secs: Option<u64>,
    /// `"unknown"` when a 503 cannot say whether the request took effect (contract §
    /// Idempotency under failure); written beside `error` and inside it.
    pub outcome: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Detail {
    pub path: String,
    pub message: String,
}

impl ErrorResponse {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
            outcome: None,
        }
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            outcome: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a [Detail]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            outcome: Option<&'a str>,
        }
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: self.details.as_deref(),
                outcome: self.outcome,
            },
            outcome: self.outcome,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The `/health` answer: `ok` (200) when every check passes, else `degraded` (503).
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub service: &'static str,
    pub checks: std::collections::BTreeMap<&'static str, &'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<serde_json::Value>,
}

impl Health {
    pub fn new(
        service: &'static str,
        checks: impl IntoIterator<Item = (&'static str, bool)>,
    ) -> Self {
        let checks: std::collections::BTreeMap<_, _> = checks
            .into_iter()
            .map(|(name, ok)| (name, if ok { "ok" } else { "down" }))
            .collect();
        let status = if checks.values().all(|v| *v == "ok") {
            "ok"
        } else {
            "degraded"
        };
        Self {
            status,
            service,
            checks,
            queue: None,
        }
    }
}

impl IntoResponse for Health {
    fn into_response(self) -> Response {
        let status = if self.status == "ok" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(self)).into_response()
    }
}

/// Serves `router` on `addr` until `shutdown` resolves; returns the bound port. Workers
/// use it for `/health`.
pub async fn serve(
    addr: std::net::SocketAddr,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "health server failed");
        }
    });
    Ok(port)
}

/// Serves `GET /health` answered by `check` on `addr` (`None`: not served) until `stop`
/// is triggered; returns the bound port. The queue workers' health endpoint.
pub async fn serve_health<F, Fut>(
    addr: Option<std::net::SocketAddr>,
    stop: crate::Shutdown,
    check: F,
) -> std::io::Result<Option<u16>>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Health> + Send + 'static,
{
    let Some(addr) = addr else { return Ok(None) };
    let router = axum::Router::new().route("/health", axum::routing::get(check));
    serve(addr, router, async move { stop.wait().await })
        .await
        .map(Some)
}
