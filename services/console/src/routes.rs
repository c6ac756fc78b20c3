//! The console's HTTP surface, and the one place its failures become HTTP answers
//! ([`ConsoleError`]):
//! - `GET /`, `GET /console.js`: the page (static; it holds no data, so no token);
//! - `GET /api/overview`: every figure the background readers keep (`lib.rs`);
//! - `GET /api/dlq?from=&limit=&tenantId=`: one page of dead letters, with reasons;
//! - `POST /api/dlq/replay` `{"invoiceId"}` | `{"tenantId"}` | `{"all": true}`: replay,
//!   audited before and after;
//! - `GET /api/audit?limit=`: the newest operator actions;
//! - `GET /health`; `GET /metrics` is the server's.
//!
//! Every `/api/` route needs an operator: an `admin` token of `CONSOLE_OPERATOR_TENANT`.

use crate::{window::TerminalSeen, AppState, Reading};
use auth::{Authorized, Claims};
use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        FromRequest, FromRequestParts, Query, State,
    },
    http::{header, request::Parts, HeaderMap},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use domain::Timestamp;
use messaging::AdminError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use service_kit::http::{ErrorCode, ErrorResponse, Health};

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/console.js");

/// Terminals listed on the overview (newest first).
const LISTED_TERMINALS: usize = 50;
/// Longest admin request other than a replay (a DLQ page).
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest id or tenant a selector may name (ids are UUIDs, tenants far shorter).
const MAX_SELECTOR_LEN: usize = 128;
/// `Retry-After` of a 503: the dependency is usually back within seconds.
const RETRY_AFTER_SECS: u64 = 5;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/console.js", get(script))
        .route("/api/overview", get(overview))
        .route("/api/dlq", get(dlq))
        .route("/api/dlq/replay", post(replay))
        .route("/api/audit", get(audit))
        .route("/health", get(health))
        .fallback(|| async { ConsoleError::NotFound })
        .with_state(state)
}

/// What can go wrong, and its answer.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console is for operators: it needs an admin token of tenant `{0}`")]
    NotOperator(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such resource")]
    NotFound,
    #[error("{0}")]
    Unavailable(String),
    /// The request reached the processor, whose answer never came: it may have acted.
    #[error("{0}")]
    OutcomeUnknown(String),
}

impl From<AdminError> for ConsoleError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Refused(m) => ConsoleError::BadRequest(m),
            failed @ AdminError::Failed(_) => ConsoleError::Unavailable(failed.to_string()),
            AdminError::Unavailable(m) => {
                ConsoleError::Unavailable(format!("no processor answered ({m}); is one running?"))
            }
        }
    }
}

impl From<QueryRejection> for ConsoleError {
    fn from(e: QueryRejection) -> Self {
        ConsoleError::BadRequest(e.body_text())
    }
}

impl From<JsonRejection> for ConsoleError {
    fn from(e: JsonRejection) -> Self {
        ConsoleError::BadRequest(e.body_text())
    }
}

/// A query string, refused with the console's own 400 body.
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(ConsoleError))]
struct ConsoleQuery<T>(T);

/// A JSON body, refused with the console's own 400 body.
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ConsoleError))]
struct ConsoleJson<T>(T);

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let error = match self {
            ConsoleError::NotOperator(_) => ErrorResponse::new(ErrorCode::Forbidden, message),
            ConsoleError::BadRequest(_) => ErrorResponse::new(ErrorCode::ValidationFailed, message),
            ConsoleError::NotFound => ErrorResponse::new(ErrorCode::NotFound, message),
            ConsoleError::Unavailable(_) => {
                ErrorResponse::new(ErrorCode::Unavailable, message).retry_after(RETRY_AFTER_SECS)
            }
            ConsoleError::OutcomeUnknown(_) => {
                let mut e = ErrorResponse::new(ErrorCode::Unavailable, message)
                    .retry_after(RETRY_AFTER_SECS);
                e.outcome = Some("unknown");
                e
            }
        };
        error.into_response()
    }
}

/// An admin of the operators' tenant.
struct Operator(Claims);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let admin = Authorized::<auth::Admin>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let claims = admin.into_claims();
        if claims.tenant.as_str() != &*state.operator_tenant {
            return Err(
                ConsoleError::NotOperator(state.operator_tenant.to_string()).into_response()
            );
        }
        Ok(Operator(claims))
    }
}

fn static_text(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Only our own script; the page writes data as text, never as markup.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; connect-src 'self'; \
                 style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    static_text("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    static_text("text/javascript; charset=utf-8", SCRIPT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Overview {
    at: Timestamp,
    traffic: crate::window::Traffic,
    pipeline: Value,
    states: Reading<std::collections::BTreeMap<String, u64>>,
    streams: Reading<Vec<messaging::StreamSummary>>,
    terminals: Vec<TerminalSeen>,
    terminal_count: usize,
    alerts: Vec<crate::alerts::Alert>,
}

fn backlog_json(b: &messaging::Backlog) -> Value {
    json!({
        "pending": b.pending,
        "ackPending": b.ack_pending,
        "redelivered": b.redelivered,
        "oldestUnackedSecs": b.oldest_unacked.map(|d| d.as_secs_f64()),
    })
}

async fn overview(_: Operator, State(app): State<AppState>) -> Json<Overview> {
    let f = &app.figures;
    let (traffic, terminals, terminal_count) = {
        let w = f
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            w.traffic(crate::now_ms()),
            w.terminals(LISTED_TERMINALS),
            w.terminal_count(),
        )
    };
    let pipeline = match *f.pipeline.borrow() {
        Some(p) => json!({
            "processor": backlog_json(&p.processor),
            "persister": backlog_json(&p.persister),
            "deadLetters": p.dead_letters,
            "unstoredEvents": p.unstored_events(),
            "ageSecs": p.at.elapsed().as_secs_f64(),
        }),
        None => Value::Null,
    };
    Json(Overview {
        at: Timestamp::now(),
        traffic,
        pipeline,
        states: f
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        streams: f
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        terminals,
        terminal_count,
        alerts: f
            .alerts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DlqQuery {
    from: Option<u64>,
    limit: Option<usize>,
    tenant_id: Option<String>,
}

async fn dlq(
    _: Operator,
    State(app): State<AppState>,
    ConsoleQuery(q): ConsoleQuery<DlqQuery>,
) -> Result<Json<Value>, ConsoleError> {
    if let Some(t) = &q.tenant_id {
        check_name("tenantId", t)?;
    }
    let body = json!({ "from": q.from, "limit": q.limit, "tenantId": q.tenant_id });
    let page = app
        .bus
        .admin_request("dlq.list", &strip_nulls(body), LIST_TIMEOUT)
        .await?;
    Ok(Json(page))
}

/// Which dead letters to replay: exactly one of the three.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
}

impl Selector {
    fn check(&self) -> Result<(), ConsoleError> {
        let named = usize::from(self.invoice_id.is_some())
            + usize::from(self.tenant_id.is_some())
            + usize::from(self.all);
        if named != 1 {
            return Err(ConsoleError::BadRequest(
                "name exactly one of: \"invoiceId\", \"tenantId\", or \"all\": true".into(),
            ));
        }
        if let Some(id) = &self.invoice_id {
            check_name("invoiceId", id)?;
        }
        if let Some(t) = &self.tenant_id {
            check_name("tenantId", t)?;
        }
        Ok(())
    }
}

fn check_name(field: &str, value: &str) -> Result<(), ConsoleError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SELECTOR_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConsoleError::BadRequest(format!(
            "{field} must be 1-{MAX_SELECTOR_LEN} letters, digits or -_.:"
        )))
    }
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    v
}

/// Audits the intent, asks the processor, audits the outcome. Runs in a task of its own:
/// an operator who closes the page midway still leaves a complete audit entry.
async fn replay(
    Operator(claims): Operator,
    State(app): State<AppState>,
    headers: HeaderMap,
    ConsoleJson(selector): ConsoleJson<Selector>,
) -> Result<Json<Value>, ConsoleError> {
    selector.check()?;
    let target = serde_json::to_value(&selector).unwrap_or(Value::Null);
    let entry = store::AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        at: Timestamp::now(),
        actor: claims.sub,
        actor_tenant: claims.tenant.into(),
        action: "dlq.replay".into(),
        target: target.clone(),
        request_id: headers
            .get(service_kit::server::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        outcome: None,
        finished_at: None,
    };
    let work = async move {
        app.store.audit_begin(&entry).await.map_err(|e| {
            ConsoleError::Unavailable(format!(
                "the audit log cannot be written, so nothing was replayed: {e}"
            ))
        })?;
        let answer = app
            .bus
            .admin_request("dlq.replay", &target, app.replay_timeout)
            .await;
        let outcome = match &answer {
            Ok(v) => json!({
                "ok": true,
                "replayedCount": v["replayedCount"],
                "skippedCount": v["skippedCount"],
            }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        tracing::info!(audit_id = %entry.id, actor = %entry.actor, target = %target, outcome = %outcome, "operator replay");
        if let Err(e) = app.store.audit_finish(&entry.id, &outcome).await {
            tracing::warn!(audit_id = %entry.id, error = %e, "replay outcome not written to the audit log");
        }
        match answer {
            Ok(mut v) => {
                v["auditId"] = json!(entry.id);
                Ok(Json(v))
            }
            Err(AdminError::Unavailable(m)) => Err(ConsoleError::OutcomeUnknown(format!(
                "no answer from the processor ({m}): the replay may have happened; \
                 the dead-letter list shows what is left, and replaying again is safe"
            ))),
            Err(refused) => Err(refused.into()),
        }
    };
    tokio::spawn(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "replay task failed");
        Err(ConsoleError::OutcomeUnknown(
            "the replay task failed".into(),
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn audit(
    _: Operator,
    State(app): State<AppState>,
    ConsoleQuery(q): ConsoleQuery<AuditQuery>,
) -> Result<Json<Value>, ConsoleError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ConsoleError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let entries = app
        .store
        .audit_log(limit)
        .await
        .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
    Ok(Json(json!({ "entries": entries })))
}

async fn health(State(app): State<AppState>) -> Health {
    let mongo = app.store.ping().await;
    Health::new(
        "console",
        [("nats", app.bus.is_connected()), ("mongo", mongo)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: Value) -> Result<Selector, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn a_selector_names_exactly_one_target() {
        assert!(sel(json!({"all": true})).unwrap().check().is_ok());
        assert!(sel(json!({"invoiceId": "0190f1e2-aaaa"}))
            .unwrap()
            .check()
            .is_ok());
        assert!(sel(json!({})).unwrap().check().is_err());
        assert!(sel(json!({"all": false})).unwrap().check().is_err());
        assert!(sel(json!({"all": true, "tenantId": "acme"}))
            .unwrap()
            .check()
            .is_err());
        assert!(sel(json!({"tenantId": "a b"})).unwrap().check().is_err());
        assert!(sel(json!({"tenantId": "x".repeat(129)}))
            .unwrap()
            .check()
            .is_err());
        assert!(
            sel(json!({"every": true})).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn the_selector_sent_to_the_processor_has_only_what_was_named() {
        let s = sel(json!({"tenantId": "acme"})).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"tenantId": "acme"})
        );
    }
}
