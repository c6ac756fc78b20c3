//! `POST /invoices`, `GET /invoices`, `GET /invoices/{id}` (contract § REST API).
//!
//! Acceptance (POST), in order:
//! 1. parse: DTO (`validator` for shapes) → [`DraftInvoice`] (domain rules); every failing
//!    field is reported;
//! 2. idempotency, fast path: claim the key in Redis (`SET NX`); a held key answers the
//!    holder's invoice (200 replay), 422 for a different body, or — while the holder's
//!    publish is in flight — waits briefly, then 409;
//! 3. idempotency, truth: MongoDB's unique (tenant, key) record, for keys older than
//!    Redis remembers;
//! 4. publish to JetStream with `Nats-Msg-Id` = tenant + key, and answer 202 only after
//!    the ack. A `duplicate` ack (Redis was down or flushed) is resolved by reading the
//!    original submission back from the stream. The QUEUED event is published after
//!    the answer (the processor publishes it too, before PROCESSING).

use crate::{
    error::ApiError,
    extract::{JsonBody, QueryParams},
    AppState,
};
use auth::Authenticated;
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use cache::{Claim, ClaimResult};
use domain::draft::{RawDraft, RawLine, RawPayment};
use domain::{
    Customer, DraftInvoice, FieldError, IdempotencyKey, Invoice, InvoiceId, InvoiceState, TenantId,
    TerminalId, Timestamp,
};
use messaging::Envelope;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use tracing::{info, warn};
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

/// A decimal as the client wrote it: a JSON string or number literal, kept as text so
/// it can be parsed exactly (no float ever sees it).
#[derive(Debug)]
struct DecimalText(Box<RawValue>);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(DecimalText)
    }
}

impl DecimalText {
    /// The literal's text; `None` (so the domain says "must be a decimal number") for
    /// anything but a string or a number.
    fn text(&self) -> String {
        let raw = self.0.get();
        match serde_json::from_str::<String>(raw) {
            Ok(s) => s,
            Err(_) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => raw.to_owned(),
            Err(_) => format!("<{raw}>"),
        }
    }
}

#[derive(Debug, Deserialize, Validate)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceRequest {
    idempotency_key: Option<String>,
    terminal_id: Option<String>,
    currency: Option<String>,
    issued_at: Option<String>,
    #[serde(default)]
    tax_inclusive: bool,
    customer: Option<Customer>,
    #[serde(default)]
    // Line count is a domain rule (DraftInvoice::parse); here only each line's shape.
    #[validate(nested)]
    items: Vec<ItemRequest>,
    #[serde(default)]
    payments: Vec<PaymentRequest>,
}

#[derive(Debug, Deserialize, Validate)]
#[serde(rename_all = "camelCase")]
struct ItemRequest {
    #[validate(length(min = 1, max = 64, message = "must be 1–64 characters"))]
    sku: Option<String>,
    #[validate(length(min = 1, max = 200, message = "must be 1–200 characters"))]
    name: Option<String>,
    quantity: Option<DecimalText>,
    unit_price: Option<DecimalText>,
    tax_rate: Option<DecimalText>,
    discount: Option<DecimalText>,
}

#[derive(Debug, Deserialize)]
struct PaymentRequest {
    method: Option<String>,
    amount: Option<DecimalText>,
}

fn camel(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Flattens `validator`'s nested errors into contract paths (`items[3].sku`).
fn flatten(prefix: &str, errors: &ValidationErrors, out: &mut Vec<FieldError>) {
    for (field, kind) in errors.errors() {
        let path = if prefix.is_empty() {
            camel(field)
        } else {
            format!("{prefix}.{}", camel(field))
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let message = e
                        .message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| e.code.to_string());
                    out.push(FieldError::new(path.clone(), message));
                }
            }
            ValidationErrorsKind::Struct(inner) => flatten(&path, inner, out),
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    flatten(&format!("{path}[{i}]"), inner, out);
                }
            }
        }
    }
}

impl InvoiceRequest {
    /// DTO → domain draft, with every failing field.
    fn into_draft(self, header_key: Option<String>) -> Result<DraftInvoice, ApiError> {
        let mut details = Vec::new();
        if let Err(e) = self.validate() {
            flatten("", &e, &mut details);
        }
        let idempotency_key = match (self.idempotency_key, header_key) {
            (Some(b), Some(h)) if b != h => {
                details.push(FieldError::new(
                    "idempotencyKey",
                    "differs from the Idempotency-Key header",
                ));
                Some(b)
            }
            (b, h) => b.or(h),
        };
        let raw = RawDraft {
            idempotency_key,
            terminal_id: self.terminal_id,
            currency: self.currency,
            issued_at: self.issued_at,
            tax_inclusive: self.tax_inclusive,
            customer: self.customer,
            items: self
                .items
                .into_iter()
                .map(|i| RawLine {
                    sku: i.sku,
                    name: i.name,
                    quantity: i.quantity.map(|d| d.text()),
                    unit_price: i.unit_price.map(|d| d.text()),
                    tax_rate: i.tax_rate.map(|d| d.text()),
                    discount: i.discount.map(|d| d.text()),
                })
                .collect(),
            payments: self
                .payments
                .into_iter()
                .map(|p| RawPayment {
                    method: p.method,
                    amount: p.amount.map(|d| d.text()),
                })
                .collect(),
        };
        match DraftInvoice::parse(raw) {
            Ok(draft) if details.is_empty() => Ok(draft),
            Ok(_) => Err(ApiError::validation(details)),
            Err(domain_errors) => {
                for e in domain_errors {
                    if !details.iter().any(|d| d.path == e.path) {
                        details.push(e);
                    }
                }
                Err(ApiError::validation(details))
            }
        }
    }
}

fn tenant_of(claims: &auth::Claims) -> Result<TenantId, ApiError> {
    TenantId::parse(claims.tenant.as_str())
        .map_err(|e| ApiError::Unauthorized(format!("tenant claim {e}")))
}

fn accepted(invoice: &Invoice) -> Response {
    let mut r = (StatusCode::ACCEPTED, Json(invoice)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/invoices/{}", invoice.id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

fn replayed(invoice: &Invoice) -> Response {
    let mut r = (StatusCode::OK, Json(invoice)).into_response();
    r.headers_mut()
        .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    if let Ok(loc) = HeaderValue::from_str(&format!("/invoices/{}", invoice.id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

/// POST /invoices
pub async fn create(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    JsonBody(request): JsonBody<InvoiceRequest>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&claims)?;
    let header_key = match headers.get("Idempotency-Key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::field("Idempotency-Key", "must be ASCII"))?
                .to_owned(),
        ),
    };
    let draft = request.into_draft(header_key)?;
    let fingerprint = draft.fingerprint();
    let correlation = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let Some(key) = draft.idempotency_key.clone() else {
        let invoice = Invoice::queued(InvoiceId::generate(), tenant, draft, Timestamp::now());
        return accept(
            &state,
            Envelope {
                invoice,
                fingerprint,
            },
            None,
            correlation.as_deref(),
        )
        .await;
    };

    let invoice = Invoice::queued(
        InvoiceId::generate(),
        tenant.clone(),
        draft,
        Timestamp::now(),
    );
    let mine = Claim {
        invoice_id: invoice.id,
        fingerprint: fingerprint.clone(),
        accepted: false,
    };
    let deadline = tokio::time::Instant::now() + state.settings.claim_wait;
    loop {
        match state.cache.claim(&tenant, &key, &mine).await {
            Ok(ClaimResult::Claimed) => break,
            Ok(ClaimResult::HeldBy(holder)) if holder.fingerprint != fingerprint => {
                return Err(ApiError::KeyReused)
            }
            Ok(ClaimResult::HeldBy(holder)) if holder.accepted => {
                return match current(&state, &tenant, holder.invoice_id).await? {
                    Some(env) => Ok(replayed(&env.invoice)),
                    // Accepted but unreadable (Redis job expired and not persisted yet):
                    // the key stays taken; the client retries the read shortly.
                    None => Err(ApiError::Conflict),
                };
            }
            Ok(ClaimResult::HeldBy(_)) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::Conflict);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => {
                warn!(error = %e, "Redis unavailable for the idempotency claim; relying on MongoDB and JetStream dedupe");
                break;
            }
        }
    }

    // Keys older than Redis remembers (or Redis was flushed): MongoDB is the record.
    match state.keys.find(tenant.clone(), key.clone()).await {
        Ok(Some(existing)) => {
            let _ = state.cache.release(&tenant, &key).await;
            let holder = Claim {
                invoice_id: existing.invoice.id,
                fingerprint: existing.fingerprint.clone(),
                accepted: true,
            };
            if existing.fingerprint != fingerprint {
                return Err(ApiError::KeyReused);
            }
            let _ = state.cache.claim(&tenant, &key, &holder).await;
            let latest = current(&state, &tenant, existing.invoice.id)
                .await
                .ok()
                .flatten()
                .unwrap_or(existing);
            return Ok(replayed(&latest.invoice));
        }
        Ok(None) => {}
        // JetStream's dedupe window still protects a key inside it.
        Err(e) => {
            warn!(error = %e, "MongoDB unavailable for the idempotency lookup; relying on JetStream dedupe")
        }
    }
    accept(
        &state,
        Envelope {
            invoice,
            fingerprint,
        },
        Some(key),
        correlation.as_deref(),
    )
    .await
}

/// Publishes the submission (caching its job state meanwhile); 202 once the broker acked
/// it. The QUEUED event follows in the background.
async fn accept(
    state: &AppState,
    envelope: Envelope,
    key: Option<IdempotencyKey>,
    correlation: Option<&str>,
) -> Result<Response, ApiError> {
    let tenant = envelope.invoice.tenant_id.clone();
    // The job state goes to Redis alongside the publish, not after its ack: the processor
    // reads it on the first delivery (instead of MongoDB), which can come before our ack.
    let message = envelope.encoded();
    let (cached, published) = tokio::join!(
        state.cache.put_job(&message),
        state.bus.publish_submission(&message, correlation)
    );
    if let Err(e) = &cached {
        warn!(error = %e, "could not cache the job state");
    }
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            // Not accepted: nobody was told the id; leave nothing behind under it.
            let _ = state.cache.forget_job(&tenant, envelope.invoice.id).await;
            if let Some(k) = &key {
                let _ = state.cache.release(&tenant, k).await;
            }
            return Err(ApiError::Unavailable(e.to_string()));
        }
    };
    if published.duplicate {
        // Inside the dedupe window, with Redis unable to tell us: the stream has the original.
        let _ = state.cache.forget_job(&tenant, envelope.invoice.id).await;
        let original = state
            .bus
            .submission_at(published.sequence)
            .await
            .map_err(|e| ApiError::Unavailable(format!("reading the original submission: {e}")))?;
        if original.fingerprint != envelope.fingerprint {
            return Err(ApiError::KeyReused);
        }
        if let Some(k) = &key {
            let holder = Claim {
                invoice_id: original.invoice.id,
                fingerprint: original.fingerprint.clone(),
                accepted: true,
            };
            let _ = state.cache.confirm(&tenant, k, &holder).await;
        }
        let latest = current(state, &tenant, original.invoice.id)
            .await
            .ok()
            .flatten()
            .unwrap_or(original);
        return Ok(replayed(&latest.invoice));
    }
    info!(invoice_id = %envelope.invoice.id, tenant_id = %tenant, seq = published.sequence, "invoice accepted");
    if let Some(k) = &key {
        let mine = Claim {
            invoice_id: envelope.invoice.id,
            fingerprint: envelope.fingerprint.clone(),
            accepted: true,
        };
        if let Err(e) = state.cache.confirm(&tenant, k, &mine).await {
            warn!(error = %e, "could not confirm the idempotency claim in Redis");
        }
    }
    // The QUEUED event does not hold up the 202 (one broker round trip less per request):
    // the submission is durable already, and the processor publishes the same event
    // (same message id, so whichever comes second is dropped) before PROCESSING.
    state.bus.publish_event_detached(&message, correlation);
    Ok(accepted(&envelope.invoice))
}

/// The freshest known state of an invoice: the higher version of Redis' job state and
/// MongoDB's record. Unknown to Redis while MongoDB cannot answer is `Unavailable`, not
/// "no such invoice": Redis forgets invoices once MongoDB holds them.
async fn current(
    state: &AppState,
    tenant: &TenantId,
    id: InvoiceId,
) -> Result<Option<Envelope>, ApiError> {
    let (cached, stored) = tokio::join!(state.cache.job(tenant, id), state.store.find(tenant, id));
    let cached = cached.unwrap_or_else(|e| {
        warn!(error = %e, "job state unavailable from Redis");
        None
    });
    let stored = match stored {
        Ok(s) => s,
        Err(e) if cached.is_none() => {
            return Err(ApiError::Unavailable(format!(
                "the invoice cannot be read right now: {e}"
            )))
        }
        Err(e) => {
            warn!(error = %e, "invoice unavailable from MongoDB; answering from Redis");
            None
        }
    };
    Ok(match (cached, stored) {
        (Some(c), Some(s)) => Some(if c.invoice.version() > s.invoice.version() {
            c
        } else {
            s
        }),
        (c, s) => c.or(s),
    })
}

/// GET /invoices/{id}
pub async fn get(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&claims)?;
    let id = InvoiceId::parse(&id).map_err(|_| ApiError::NotFound)?;
    match current(&state, &tenant, id).await? {
        Some(env) => Ok(Json(env.invoice).into_response()),
        None => Err(ApiError::NotFound),
    }
}

/// GET /invoices?page&limit&state&terminalId&from&to
pub async fn list(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    QueryParams(params): QueryParams<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&claims)?;
    let mut details = Vec::new();
    let mut number = |name: &str, default: u64, min: u64, max: u64| match params.get(name) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                details.push(FieldError::new(
                    name,
                    format!("must be a whole number from {min} to {max}"),
                ));
                default
            }
        },
    };
    let page = number("page", 1, 1, 1_000_000);
    let limit = number("limit", 20, 1, 100);
    let state_filter = params.get("state").and_then(|s| {
        InvoiceState::parse(s).or_else(|| {
            details.push(FieldError::new(
                "state",
                "must be one of QUEUED, PROCESSING, COMPLETED, FAILED",
            ));
            None
        })
    });
    let terminal_id = params.get("terminalId").and_then(|t| {
        TerminalId::parse(t.as_str())
            .map_err(|e| details.push(FieldError::new("terminalId", e.0)))
            .ok()
    });
    let mut time = |name: &str| {
        params.get(name).and_then(|t| {
            Timestamp::parse_rfc3339(t)
                .map_err(|_| details.push(FieldError::new(name, "must be an RFC 3339 date-time")))
                .ok()
        })
    };
    let from = time("from");
    let to = time("to");
    for unknown in params
        .keys()
        .filter(|k| !["page", "limit", "state", "terminalId", "from", "to"].contains(&k.as_str()))
    {
        details.push(FieldError::new(unknown.clone(), "is not a known parameter"));
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
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
    Ok(
        Json(serde_json::json!({ "data": data, "page": page, "limit": limit, "total": total }))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_literal_text() {
        let r: InvoiceRequest = crate::extract::decode(
            br#"{"terminalId":"T1","currency":"EUR","items":[{"sku":"A","name":"a","quantity":2,"unitPrice":123456789012.123456789012,"taxRate":"0.10"}]}"#,
        )
        .unwrap();
        let item = &r.items[0];
        assert_eq!(item.quantity.as_ref().unwrap().text(), "2");
        assert_eq!(
            item.unit_price.as_ref().unwrap().text(),
            "123456789012.123456789012"
        );
        assert_eq!(item.tax_rate.as_ref().unwrap().text(), "0.10");
    }

    #[test]
    fn a_wrongly_typed_field_is_named_by_its_path() {
        let err =
            crate::extract::decode::<InvoiceRequest>(br#"{"terminalId":"T1","items":[{"sku":5}]}"#)
                .unwrap_err();
        match err {
            ApiError::Validation { details, .. } => assert_eq!(details[0].path, "items[0].sku"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validator_and_domain_errors_are_merged_by_path() {
        let r: InvoiceRequest = crate::extract::decode(
            br#"{"currency":"EUR","items":[{"sku":"","name":"n","quantity":"0","unitPrice":true,"taxRate":"2"}]}"#,
        )
        .unwrap();
        let ApiError::Validation { details, .. } = r.into_draft(None).unwrap_err() else {
            panic!()
        };
        let paths: Vec<_> = details.iter().map(|d| d.path.as_str()).collect();
        for p in [
            "items[0].sku",
            "terminalId",
            "items[0].quantity",
            "items[0].unitPrice",
            "items[0].taxRate",
        ] {
            assert!(paths.contains(&p), "{p} missing in {paths:?}");
        }
        assert_eq!(paths.iter().filter(|p| **p == "items[0].sku").count(), 1);
    }
}
