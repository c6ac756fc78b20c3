//! `POST /invoices/{id}/credit-notes`, `GET /ledger/verify`, `GET /ledger/export`
//! (contract § Fiscal record and ledger); all need a manager.
//!
//! A credit request: the original invoice is read (freshest state), `store` reserves
//! what the request takes from it (refused past what is left, also under concurrent
//! requests), and the credit note — a new invoice of kind `credit_note` — is accepted like
//! any submission ([`crate::acceptance`]): it goes through the same lifecycle and is
//! numbered in the same series when it completes. Verify walks the series in MongoDB;
//! export streams it as NDJSON straight from a cursor.

use crate::{
    error::ApiError,
    extract::{DecimalText, JsonBody, Params, QueryParams},
    AppState,
};
use auth::{Authorized, Manager};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use domain::credit::{CreditError, CreditItem};
use domain::draft::MAX_SKU_LEN;
use domain::{FieldError, IdempotencyKey, Invoice, InvoiceId, TenantId};
use futures_util::StreamExt;
use messaging::Envelope;
use serde::{Deserialize, Serialize};
use service_kit::http::ErrorBody;
use std::collections::BTreeMap;
use store::CreditRefused;

/// Longest credit reason.
const MAX_REASON: usize = 500;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditNoteRequest {
    #[schema(required = true, nullable = false, min_length = 1, max_length = 500)]
    reason: Option<String>,
    #[schema(nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    idempotency_key: Option<String>,
    /// Absent: the whole invoice.
    #[schema(nullable = false, min_items = 1, max_items = 500)]
    items: Option<Vec<CreditItemRequest>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditItemRequest {
    #[schema(required = true, nullable = false, min_length = 1, max_length = 64)]
    sku: Option<String>,
    #[schema(required = true, nullable = false)]
    quantity: Option<DecimalText>,
}

/// The request's parts, every failing field named.
struct CreditRequest {
    reason: String,
    key: Option<IdempotencyKey>,
    items: Option<Vec<CreditItem>>,
}

impl CreditNoteRequest {
    fn parse(self, header_key: Option<String>) -> Result<CreditRequest, ApiError> {
        let mut details = Vec::new();
        let reason = match self.reason {
            Some(r) if !r.trim().is_empty() && r.chars().count() <= MAX_REASON => r,
            _ => {
                details.push(FieldError::new(
                    "reason",
                    format!("must be 1–{MAX_REASON} characters"),
                ));
                String::new()
            }
        };
        let key = match (self.idempotency_key, header_key) {
            (Some(b), Some(h)) if b != h => {
                details.push(FieldError::new(
                    "idempotencyKey",
                    "differs from the Idempotency-Key header",
                ));
                None
            }
            (b, h) => b.or(h).and_then(|k| match IdempotencyKey::parse(k) {
                Ok(k) => Some(k),
                Err(e) => {
                    details.push(FieldError::new("idempotencyKey", e.0));
                    None
                }
            }),
        };
        let items = match self.items {
            None => None,
            Some(items) if items.is_empty() || items.len() > domain::draft::MAX_LINES => {
                details.push(FieldError::new(
                    "items",
                    format!(
                        "must hold 1–{} lines (or be left out: the whole invoice)",
                        domain::draft::MAX_LINES
                    ),
                ));
                None
            }
            Some(items) => {
                let mut parsed = Vec::with_capacity(items.len());
                for (n, item) in items.into_iter().enumerate() {
                    let sku = match item.sku {
                        Some(s) if !s.is_empty() && s.chars().count() <= MAX_SKU_LEN => Some(s),
                        _ => {
                            details.push(FieldError::new(
                                format!("items[{n}].sku"),
                                format!("must be 1–{MAX_SKU_LEN} characters"),
                            ));
                            None
                        }
                    };
                    let quantity = match item
                        .quantity
                        .map(|q| domain::money::parse_decimal(&q.text()))
                    {
                        Some(Ok(q)) if q > rust_decimal::Decimal::ZERO => Some(q),
                        Some(Ok(_)) => {
                            details.push(FieldError::new(
                                format!("items[{n}].quantity"),
                                "must be > 0",
                            ));
                            None
                        }
                        Some(Err(e)) => {
                            details.push(FieldError::new(
                                format!("items[{n}].quantity"),
                                e.to_string(),
                            ));
                            None
                        }
                        None => {
                            details.push(FieldError::new(
                                format!("items[{n}].quantity"),
                                "is required",
                            ));
                            None
                        }
                    };
                    if let (Some(sku), Some(quantity)) = (sku, quantity) {
                        parsed.push(CreditItem { sku, quantity });
                    }
                }
                Some(parsed)
            }
        };
        if details.is_empty() {
            Ok(CreditRequest { reason, key, items })
        } else {
            Err(ApiError::validation(details))
        }
    }
}

fn refused(e: CreditRefused, items: Option<&[CreditItem]>) -> ApiError {
    match e {
        CreditRefused::Rule(rule @ CreditError::Exceeds { .. }) => {
            ApiError::CreditExceeds(rule.to_string())
        }
        CreditRefused::Rule(CreditError::UnknownSku(sku)) => {
            let n = items
                .and_then(|items| items.iter().position(|i| i.sku == sku))
                .unwrap_or(0);
            ApiError::field(
                &format!("items[{n}].sku"),
                format!("`{sku}` is not a line of the invoice"),
            )
        }
        CreditRefused::Rule(rule) => ApiError::NotCreditable(rule.to_string()),
        CreditRefused::KeyReused => ApiError::KeyReused,
        CreditRefused::Store(e) => ApiError::Unavailable(e.to_string()),
    }
}

/// POST /invoices/{id}/credit-notes
///
/// A credit note for the whole invoice (no `items`) or for quantities of its skus; never
/// more than what earlier credit notes left. Idempotent by key like `POST /invoices`.
#[utoipa::path(post, path = "/invoices/{id}/credit-notes", tag = "fiscal",
    params(("id" = String, Path, description = "the invoice to credit"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = CreditNoteRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "accepted; the credit note is QUEUED", body = Invoice),
        (status = 200, description = "a replay of the key's credit note", body = Invoice),
        (status = 400, description = "validation_failed", body = ErrorBody),
        (status = 403, description = "forbidden: managers and admins only", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 422, description = "credit_exceeds_invoice, not_creditable or idempotency_key_reused", body = ErrorBody),
        crate::openapi::Guarded,
        crate::openapi::WithBody,
    ))]
pub async fn credit(
    State(state): State<AppState>,
    caller: Authorized<Manager>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreditNoteRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let id = InvoiceId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let header_key = super::invoices::header_key(&headers)?;
    let request = request.parse(header_key)?;
    let original = state
        .reader
        .current(&tenant, id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or(ApiError::NotFound)?
        .invoice;
    let fingerprint = domain::credit::fingerprint(id, request.items.as_deref(), &request.reason);
    // A key another request holds is refused before anything is reserved under it (the
    // reservation would otherwise keep quantities for a note that is never accepted).
    if let Some(key) = &request.key {
        match state.bus.submission_of_key(&tenant, key).await {
            Ok(Some(holder)) if holder.fingerprint != fingerprint => {
                return Err(ApiError::KeyReused)
            }
            Ok(_) => {}
            Err(e) => return Err(ApiError::Unavailable(e.to_string())),
        }
    }
    let reserved = state
        .store
        .reserve_credit(
            &original,
            request.key.as_ref(),
            &fingerprint,
            request.items.as_deref(),
        )
        .await
        .map_err(|e| refused(e, request.items.as_deref()))?;
    let note = Invoice::credit_note(
        reserved.note_id,
        &original,
        reserved.lines,
        request.reason,
        request.key,
        reserved.issued_at,
    );
    let envelope = Envelope {
        invoice: note,
        fingerprint,
    };
    super::invoices::submit(&state, envelope, &headers).await
}

/// The series a ledger request names, if it names one.
fn series_param(q: &mut Params) -> Option<String> {
    q.parsed("series", |s| {
        if domain::catalog::is_series(s) {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "must be 1–{} of A-Z a-z 0-9 _ -",
                domain::catalog::MAX_SERIES_LEN
            ))
        }
    })
}

async fn settings(state: &AppState, tenant: &TenantId) -> Result<domain::TenantSettings, ApiError> {
    state
        .catalog
        .settings(tenant)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// The answer of `GET /ledger/verify`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    series: String,
    /// Records that hold, from number 1 (up to the first broken one).
    count: u64,
    ok: bool,
    last_number: u64,
    last_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_broken: Option<BrokenRecord>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BrokenRecord {
    number: u64,
    reason: String,
}

/// GET /ledger/verify?series=
///
/// Walks the series from number 1: each record's hash against its fields, its link to
/// the record before, and the stored invoice against its record.
#[utoipa::path(get, path = "/ledger/verify", tag = "fiscal",
    params(("series" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,16}$",
        description = "default: the tenant's current series")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the verdict", body = VerifyReport),
        (status = 400, description = "validation_failed", body = ErrorBody),
        (status = 403, description = "forbidden: managers and admins only", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Authorized<Manager>,
    QueryParams(params): QueryParams<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let mut q = Params::new(params);
    let series = series_param(&mut q);
    q.finish(&["series"])?;
    let series = match series {
        Some(s) => s,
        None => settings(&state, &tenant).await?.series,
    };
    let v = state
        .store
        .verify(&tenant, &series)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(VerifyReport {
        series,
        count: v.count,
        ok: v.first_broken.is_none(),
        last_number: v.last_number,
        last_hash: v.last_hash,
        first_broken: v.first_broken.map(|b| BrokenRecord {
            number: b.number,
            reason: b.reason,
        }),
    })
    .into_response())
}

/// One line of the export: the record, and the issuer as the tenant's settings name it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportLine<'a> {
    #[serde(flatten)]
    record: &'a domain::LedgerRecord,
    issuer_tax_id: Option<&'a str>,
}

/// GET /ledger/export?series=&from=
///
/// `application/x-ndjson`: one record per line in number order, each with every field of
/// the hash text and the invoice's `taxBreakdown`, streamed from the database.
#[utoipa::path(get, path = "/ledger/export", tag = "fiscal",
    params(("series" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,16}$",
        description = "default: the tenant's current series"),
        ("from" = Option<u64>, Query, minimum = 1, description = "the first number (default 1)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "NDJSON, one record per line", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "validation_failed", body = ErrorBody),
        (status = 403, description = "forbidden: managers and admins only", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn export(
    State(state): State<AppState>,
    caller: Authorized<Manager>,
    QueryParams(params): QueryParams<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let mut q = Params::new(params);
    let series = series_param(&mut q);
    let from = q.number("from", 1, 1, i64::MAX as u64);
    q.finish(&["series", "from"])?;
    // One read of the settings: the default series and the issuer shown on every line.
    let settings = settings(&state, &tenant).await?;
    let series = series.unwrap_or(settings.series);
    let issuer = settings.issuer_tax_id;
    let records = state
        .store
        .records(&tenant, &series, from)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    // A database failure half-way ends the body early (the client sees a truncated
    // stream, never a silently short "complete" one: the last line is not a record).
    let lines = records.map(move |r| {
        r.map(|record| {
            let mut line = serde_json::to_vec(&ExportLine {
                record: &record,
                issuer_tax_id: issuer.as_deref(),
            })
            .unwrap_or_default();
            line.push(b'\n');
            bytes::Bytes::from(line)
        })
        .map_err(std::io::Error::other)
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
