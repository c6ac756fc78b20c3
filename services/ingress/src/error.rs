//! The one place that knows the contract's error codes: every failure of a route is an
//! [`ApiError`], mapped to status + code here. Internal causes are logged, never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::FieldError;
use service_kit::http::{Detail, ErrorResponse};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `validation_failed`: the body or a parameter is wrong; `details` lists each field.
    #[error("{message}")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    /// 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
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
    /// 503 `unavailable`: the broker cannot accept the invoice now (or a read cannot be
    /// answered); nothing was accepted.
    #[error("the invoice cannot be accepted right now; retry later")]
    Unavailable(String),
    /// 503 `unavailable` with `"outcome": "unknown"`: the submission reached the broker
    /// but its ack did not come back; a retry with the same key converges on one invoice.
    #[error("the invoice may or may not have been accepted; retry with the same idempotency key")]
    Unconfirmed(String),
}

impl ApiError {
    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = match details.len() {
            1 => format!("{} {}", details[0].path, details[0].message),
            n => format!("{n} fields are invalid"),
        };
        ApiError::Validation { message, details }
    }

    pub fn field(path: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(path, message)])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let response = match self {
            ApiError::Validation { details, .. } => {
                let mut r =
                    ErrorResponse::new(StatusCode::BAD_REQUEST, "validation_failed", message);
                r.details = Some(
                    details
                        .into_iter()
                        .map(|d| Detail {
                            path: d.path,
                            message: d.message,
                        })
                        .collect(),
                );
                r
            }
            ApiError::Unauthorized(m) => {
                ErrorResponse::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
            }
            ApiError::NotFound => ErrorResponse::new(StatusCode::NOT_FOUND, "not_found", message),
            ApiError::TooLarge(_) => {
                ErrorResponse::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            ApiError::UnsupportedMediaType => ErrorResponse::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            ApiError::KeyReused => ErrorResponse::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                message,
            ),
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "answering 503");
                let mut r =
                    ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
                r.retry_after_secs = Some(2);
                r
            }
            ApiError::Unconfirmed(cause) => {
                tracing::warn!(%cause, "answering 503, outcome unknown");
                let mut r =
                    ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
                r.retry_after_secs = Some(1);
                r.outcome = Some("unknown");
                r
            }
        };
        response.into_response()
    }
}

impl From<auth::AuthError> for ApiError {
    fn from(e: auth::AuthError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}
