//! The contract's HTTP shapes every service shares: the error codes (the one table of
//! them), the error body and `/health`.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// Every error code the services answer with, and its status: the one table of them
/// (contract § Errors and § Limits). Services map their own failures onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the body or a parameter is wrong; `details` names each field.
    ValidationFailed,
    /// 401: no, bad or expired token.
    Unauthorized,
    /// 403: a valid token whose role may not do this.
    Forbidden,
    /// 404: unknown id or path (also another tenant's id).
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 408: the request was not answered within the server's request timeout.
    RequestTimeout,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 415: a body that is not JSON.
    UnsupportedMediaType,
    /// 422: the idempotency key was used with another body.
    IdempotencyKeyReused,
    /// 422: a credit note for more than what is left of the invoice.
    CreditExceedsInvoice,
    /// 422: the invoice cannot be credited (a credit note, or not COMPLETED).
    NotCreditable,
    /// 429: the tenant or terminal is over its rate; carries `Retry-After`.
    RateLimited,
    /// 503: a dependency cannot serve the request now; carries `Retry-After`.
    Unavailable,
    /// 500: a bug; the cause is logged, never sent.
    Internal,
}

impl ErrorCode {
    /// Every code, in the table's order; [`ErrorCode::for_status`] searches it.
    pub const ALL: [ErrorCode; 14] = [
        Self::ValidationFailed,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::IdempotencyKeyReused,
        Self::CreditExceedsInvoice,
        Self::NotCreditable,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The HTTP status the code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationFailed => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused | Self::CreditExceedsInvoice | Self::NotCreditable => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's code text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationFailed => "validation_failed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::CreditExceedsInvoice => "credit_exceeds_invoice",
            Self::NotCreditable => "not_creditable",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The code an error status without a body stands for (layers' answers: axum's 404
    /// and 405, the timeout's 408, a body limit's 413).
    pub fn for_status(status: StatusCode) -> Self {
        Self::ALL
            .into_iter()
            .find(|c| c.status() == status)
            .unwrap_or(if status.is_client_error() {
                Self::ValidationFailed
            } else {
                Self::Internal
            })
    }
}

/// `{ "error": { "code", "message", "details"? } }` with its status and optional
/// `Retry-After`.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    /// What went wrong; also sets the status.
    pub code: ErrorCode,
    /// For a human; never a stack trace or an internal cause.
    pub message: String,
    /// The failing fields of a `validation_failed` answer.
    pub details: Option<Vec<Detail>>,
    /// The `Retry-After` header, in seconds (429, 503).
    pub retry_after_secs: Option<u64>,
    /// `"unknown"` when a 503 cannot say whether the request took effect (contract §
    /// Idempotency under failure); written beside `error` and inside it.
    pub outcome: Option<&'static str>,
}

/// One failing field of a `validation_failed` answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Detail {
    /// The field's JSON path, e.g. `items[0].quantity`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl ErrorResponse {
    /// An error answer with no details and no `Retry-After`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
            outcome: None,
        }
    }

    /// Adds `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
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
                code: self.code.as_str(),
                message: &self.message,
                details: self.details.as_deref(),
                outcome: self.outcome,
            },
            outcome: self.outcome,
        };
        let mut response = (self.code.status(), Json(body)).into_response();
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// The answering service: `ingress`, `fanout`, `processor`, …
    pub service: &'static str,
    /// Each dependency (`nats`, `redis`, `mongo`, …) with `ok` or `down`.
    pub checks: std::collections::BTreeMap<&'static str, &'static str>,
    /// The contract's `queue` figures, from services that read them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub queue: Option<serde_json::Value>,
}

impl Health {
    /// The answer of `service` for `checks` (name, passed): `degraded` if any failed.
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

/// Serves `router` on `addr` until `stop` is cancelled; returns the bound port. Workers
/// use it for `/health`.
pub async fn serve(
    addr: std::net::SocketAddr,
    router: axum::Router,
    stop: crate::CancellationToken,
) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        if let Err(e) = crate::server::serve(
            listener,
            router,
            crate::server::ServerLimits::default(),
            stop,
        )
        .await
        {
            tracing::error!(error = %e, "health server failed");
        }
    });
    Ok(port)
}

/// Serves `GET /health` answered by `check` on `addr` (`None`: not served) until `stop`
/// is cancelled; returns the bound port. The queue workers' health endpoint.
pub async fn serve_health<F, Fut>(
    addr: Option<std::net::SocketAddr>,
    stop: crate::CancellationToken,
    check: F,
) -> std::io::Result<Option<u16>>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Health> + Send + 'static,
{
    let Some(addr) = addr else { return Ok(None) };
    let router = axum::Router::new().route("/health", axum::routing::get(check));
    serve(addr, router, stop).await.map(Some)
}

/// The error body's schema, its `code` enumerating [`ErrorCode::ALL`]: the document
/// cannot name a code the services do not have, nor miss one.
#[cfg(feature = "openapi")]
pub struct ErrorBody;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ErrorBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let outcome = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["unknown"]))
                .description(Some(
                    "only on a 503 whose outcome is unknown: retry with the same idempotency key",
                ))
        };
        let inner = ObjectBuilder::new()
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes)),
            )
            .required("code")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .property(
                "details",
                ArrayBuilder::new()
                    .items(<Detail as utoipa::PartialSchema>::schema())
                    .max_items(Some(100)),
            )
            .property("outcome", outcome());
        ObjectBuilder::new()
            .property("error", inner)
            .required("error")
            .property("outcome", outcome())
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ErrorBody {}
