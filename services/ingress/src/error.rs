//! Ingress's failures: every failure of a route is an [`ApiError`], mapped here onto the
//! contract's codes (`service_kit::http::ErrorCode`, the one table of codes and statuses).
//! Internal causes are logged, never returned.

use axum::response::{IntoResponse, Response};
use domain::FieldError;
use service_kit::http::{Detail, ErrorCode, ErrorResponse};

/// Contract § Limits: `details` lists at most 100 entries.
pub const MAX_DETAILS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `validation_failed`: the body or a parameter is wrong; `details` lists each field.
    #[error("{message}")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    /// 401 `unauthorized` or 403 `forbidden`.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// 404 `not_found` (also for another tenant's id).
    #[error("invoice not found")]
    NotFound,
    /// 413 `payload_too_large`.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 415 `unsupported_media_type`.
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    /// 422 `idempotency_key_reused`.
    #[error("idempotency key was already used for a different request body")]
    KeyReused,
    /// 422 `credit_exceeds_invoice`: more than what is left of the invoice.
    #[error("{0}")]
    CreditExceeds(String),
    /// 422 `not_creditable`: a credit note, or an invoice not COMPLETED.
    #[error("{0}")]
    NotCreditable(String),
    /// 429 `rate_limited`: the tenant or terminal is over its rate.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 503 `unavailable`: the broker cannot accept the invoice now (or a read cannot be
    /// answered); nothing was accepted.
    #[error("the invoice cannot be accepted right now; retry later")]
    Unavailable(String),
    /// 503 `unavailable`: the events not stored yet, or the submissions not processed
    /// yet, are at their limit (a worker or MongoDB is behind); nothing was accepted.
    #[error(
        "the pipeline is behind ({count} {what}, limit {limit}); nothing was accepted: retry later"
    )]
    Backlogged {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    /// 503 `unavailable` with `"outcome": "unknown"`: the submission reached the broker
    /// but its ack did not come back; a retry with the same key converges on one invoice.
    #[error("the invoice may or may not have been accepted; retry with the same idempotency key")]
    Unconfirmed(String),
}

impl ApiError {
    /// At most [`MAX_DETAILS`] entries are listed; the message gives the total.
    pub fn validation(mut details: Vec<FieldError>) -> Self {
        let message = match details.len() {
            1 => format!("{} {}", details[0].path, details[0].message),
            n if n > MAX_DETAILS => {
                format!("{n} fields are invalid; the first {MAX_DETAILS} are listed")
            }
            n => format!("{n} fields are invalid"),
        };
        details.truncate(MAX_DETAILS);
        ApiError::Validation { message, details }
    }

    pub fn field(path: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(path, message)])
    }
}

impl ApiError {
    /// The contract's code for this failure: the whole mapping.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Validation { .. } => ErrorCode::ValidationFailed,
            ApiError::Auth(e) => e.code(),
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::KeyReused => ErrorCode::IdempotencyKeyReused,
            ApiError::CreditExceeds(_) => ErrorCode::CreditExceedsInvoice,
            ApiError::NotCreditable(_) => ErrorCode::NotCreditable,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable(_) | ApiError::Unconfirmed(_) | ApiError::Backlogged { .. } => {
                ErrorCode::Unavailable
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = ErrorResponse::new(self.code(), self.to_string());
        match self {
            ApiError::Validation { details, .. } => {
                r.details = Some(
                    details
                        .into_iter()
                        .map(|d| Detail {
                            path: d.path,
                            message: d.message,
                        })
                        .collect(),
                );
            }
            ApiError::RateLimited { retry_after_secs } => {
                r.retry_after_secs = Some(retry_after_secs);
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "answering 503");
                r.retry_after_secs = Some(2);
            }
            // Not logged per request: under back-pressure that would be every request;
            // `pos_ingress_backpressure_refusals_total` counts them.
            ApiError::Backlogged { .. } => r.retry_after_secs = Some(5),
            ApiError::Unconfirmed(cause) => {
                tracing::warn!(%cause, "answering 503, outcome unknown");
                r.retry_after_secs = Some(1);
                r.outcome = Some("unknown");
            }
            _ => {}
        }
        r.into_response()
    }
}
