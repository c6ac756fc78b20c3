//! `POST /invoices`, `GET /invoices`, `GET /invoices/{id}` (contract § REST API).
//!
//! POST: the body is parsed (`request.rs`: DTO → [`domain::DraftInvoice`], every failing
//! field reported, the catalog filling sku-only lines) and handed to
//! [`crate::acceptance`], which owns idempotency and the publish; this file only maps its
//! outcome to HTTP. GET reads through [`crate::read`].

mod request;

pub use request::InvoiceRequest;
use request::Supplied;

use crate::acceptance::{AcceptError, Accepted};
use crate::{
    error::ApiError,
    extract::{JsonBody, Params, QueryParams},
    AppState,
};
use auth::Authenticated;
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use domain::{Invoice, InvoiceId, InvoiceState, TerminalId, Timestamp};
use messaging::Envelope;
use service_kit::http::ErrorBody;
use std::collections::BTreeMap;

fn accepted(invoice: &Invoice) -> Response {
    let mut r = (StatusCode::ACCEPTED, Json(invoice)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/invoices/{}", invoice.id())) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

fn replayed(invoice: &Invoice) -> Response {
    let mut r = (StatusCode::OK, Json(invoice)).into_response();
    r.headers_mut()
        .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    if let Ok(loc) = HeaderValue::from_str(&format!("/invoices/{}", invoice.id())) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

/// One page of `GET /invoices`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InvoicePage {
    data: Vec<Invoice>,
    page: u64,
    limit: u64,
    total: u64,
}

/// POST /invoices
///
/// Idempotency: a key belongs to the first submission the broker stored for it; the
/// same key and body replay it (200), another body is 422. No fault blocks a key (409 is
/// never produced). A 503 without `outcome` was not accepted; with `"outcome":
/// "unknown"` it may have been: retry with the same key.
#[utoipa::path(post, path = "/invoices", tag = "invoices",
    request_body(content = InvoiceRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[A-Za-z0-9._:-]{1,128}$",
        description = "the idempotency key (or `idempotencyKey` in the body; both must agree)")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "accepted; the invoice is QUEUED", body = Invoice,
            headers(("Location" = String, description = "/invoices/{id}"))),
        (status = 200, description = "a replay of the key's invoice", body = Invoice,
            headers(("Idempotent-Replayed" = String, description = "true"),
                    ("Location" = String, description = "/invoices/{id}"))),
        (status = 400, description = "validation_failed", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 408, description = "request_timeout: the outcome is unknown", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody,
            headers(("Retry-After" = u64))),
        (status = 503, description = "unavailable (see outcome)", body = ErrorBody,
            headers(("Retry-After" = u64))),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    JsonBody(request): JsonBody<InvoiceRequest>,
) -> Result<Response, ApiError> {
    let claims = caller.into_claims();
    let tenant = claims.tenant.clone();
    let header_key = header_key(&headers)?;
    // Counts first (constant time), then what the catalog and settings supply.
    request.check_counts()?;
    let mut supplied = Supplied::default();
    let skus = request.catalog_skus();
    if !skus.is_empty() {
        supplied.products = state
            .catalog
            .products(&tenant, &skus)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    if !request.names_currency() {
        supplied.default_currency = state
            .catalog
            .settings(&tenant)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .default_currency;
    }
    let draft = request.into_draft_with(header_key, &supplied)?;
    let fingerprint = draft.fingerprint();
    let envelope = Envelope {
        invoice: Invoice::queued(InvoiceId::generate(), tenant, draft, Timestamp::now()),
        fingerprint,
    };
    submit(&state, envelope, &headers).await
}

/// Accepts a submission (an invoice or a credit note) and answers 202, or 200 for a
/// replay of its key.
pub(crate) async fn submit(
    state: &AppState,
    envelope: Envelope,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    state.backpressure.check()?;
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A task of its own: a client that gives up (its future is dropped) must not cut the
    // acceptance short between the job state, the broker's ack and the QUEUED event (or
    // the clean-up of a refused key), nor leave work undone.
    let acceptor = state.acceptor.clone();
    let outcome = tokio::spawn(tracing::Instrument::in_current_span(async move {
        acceptor.accept(envelope, request_id.as_deref()).await
    }))
    .await
    .map_err(|e| ApiError::Unconfirmed(format!("acceptance task failed: {e}")))?;
    match outcome {
        Ok(Accepted::New(invoice)) => {
            state.backpressure.accepted();
            metrics::counter!("pos_invoices_accepted_total", "answer" => "new").increment(1);
            Ok(accepted(&invoice))
        }
        Ok(Accepted::Replayed(invoice)) => {
            metrics::counter!("pos_invoices_accepted_total", "answer" => "replay").increment(1);
            Ok(replayed(&invoice))
        }
        Err(AcceptError::KeyReused) => Err(ApiError::KeyReused),
        Err(AcceptError::Unavailable(e)) => Err(ApiError::Unavailable(e)),
        Err(AcceptError::Unconfirmed(e)) => Err(ApiError::Unconfirmed(e)),
    }
}

/// The `Idempotency-Key` header, if sent.
pub(crate) fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("Idempotency-Key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::field("Idempotency-Key", "must be ASCII"))
        })
        .transpose()
}

/// GET /invoices/{id}
#[utoipa::path(get, path = "/invoices/{id}", tag = "invoices",
    params(("id" = String, Path, description = "the invoice id (another tenant's answers 404)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the freshest state", body = Invoice),
        (status = 404, description = "not_found", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = caller.into_claims();
    let tenant = claims.tenant.clone();
    let id = InvoiceId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let found = state
        .reader
        .current(&tenant, id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    match found {
        Some(env) => Ok(Json(env.invoice).into_response()),
        None => Err(ApiError::NotFound),
    }
}

/// GET /invoices?page&limit&state&terminalId&from&to
#[utoipa::path(get, path = "/invoices", tag = "invoices",
    params(
        ("page" = Option<u64>, Query, minimum = 1, maximum = 1000000),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100),
        ("state" = Option<InvoiceState>, Query),
        ("terminalId" = Option<String>, Query, min_length = 1, max_length = 64),
        ("from" = Option<String>, Query, format = DateTime),
        ("to" = Option<String>, Query, format = DateTime),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "newest first", body = InvoicePage),
        (status = 400, description = "validation_failed", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
    QueryParams(params): QueryParams<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let claims = caller.into_claims();
    let tenant = claims.tenant.clone();
    let mut q = Params::new(params);
    let page = q.number("page", 1, 1, 1_000_000);
    let limit = q.number("limit", 20, 1, 100);
    let state_filter = q.parsed("state", |s| {
        InvoiceState::parse(s)
            .ok_or_else(|| "must be one of QUEUED, PROCESSING, COMPLETED, FAILED".to_owned())
    });
    let terminal_id = q.parsed("terminalId", |t| TerminalId::parse(t).map_err(|e| e.0));
    let time = |t: &str| {
        Timestamp::parse_rfc3339(t).map_err(|_| "must be an RFC 3339 date-time".to_owned())
    };
    let from = q.parsed("from", time);
    let to = q.parsed("to", time);
    q.finish(&["page", "limit", "state", "terminalId", "from", "to"])?;
    let query = store::ListQuery {
        state: state_filter,
        terminal_id,
        from,
        to,
        page,
        limit,
    };
    let (data, total) = state
        .store
        .list(&tenant, &query)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(InvoicePage {
        data,
        page,
        limit,
        total,
    })
    .into_response())
}
