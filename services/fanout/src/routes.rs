//! HTTP routes: `GET /ws` (the upgrade), `GET /health`, and a JSON 404 (`GET /metrics`
//! is the server's, `service_kit::metrics`)
//! for everything else.

use crate::{
    metrics::MetricsSnapshot,
    resume::Resume,
    socket::{self, Session},
    AppState,
};
use auth::Authenticated;
use axum::{
    extract::{
        rejection::QueryRejection,
        ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade},
        Query, State,
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use domain::TerminalId;
use serde::{Deserialize, Serialize};
use service_kit::http::{Detail, ErrorCode, ErrorResponse, Health};

/// Terminals send nothing but control frames; anything bigger than this from a client
/// is not a PoS terminal and ends the socket.
const MAX_INBOUND_BYTES: usize = 4 * 1024;

/// Per-socket read buffer (see the upgrade below).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Longest an upgrade waits for its tenant's live feed to exist.
const LIVE_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `Retry-After` of a refused upgrade: long enough for a reconnect storm to spread out,
/// short enough that a terminal is back within seconds once a slot frees up.
const RETRY_AFTER_FULL_SECS: u64 = 5;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WsQuery {
    since: Option<String>,
    terminal_id: Option<String>,
    // `token` is read by the verifier; other keys are ignored.
}

/// contract § WebSocket: `GET /ws?token=<JWT>[&since=<seq>][&terminalId=<id>]`.
///
/// Everything is checked before the upgrade, so a refused client gets an HTTP status and
/// the contract's error body, never a socket: the token (401 `unauthorized`), the query
/// (400 `validation_failed`), the upgrade headers (400) and the tenant's connection limit
/// on this instance (503 `unavailable` with `Retry-After`). The socket subscribes to its
/// tenant's live feed here too, before the upgrade, which is what makes the replay
/// hand-over gap-free (`replay.rs`).
async fn upgrade(
    State(app): State<AppState>,
    caller: Authenticated,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let claims = caller.into_claims();
    let tenant = claims.tenant;
    let resume = match query.map_err(|e| {
        vec![Detail {
            path: "query".into(),
            message: e.body_text(),
        }]
    }) {
        Ok(Query(query)) => parse_resume(query),
        Err(details) => Err(details),
    };
    let resume = match resume {
        Ok(resume) => resume,
        Err(details) => {
            let mut error =
                ErrorResponse::new(ErrorCode::ValidationFailed, "invalid query parameters");
            error.details = Some(details);
            return error.into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let message = format!(
                "expected a WebSocket upgrade request: {}",
                rejection.body_text()
            );
            return ErrorResponse::new(ErrorCode::ValidationFailed, message).into_response();
        }
    };
    let mut member = match app.hub.join(&tenant) {
        Ok(member) => member,
        Err(full) => {
            app.metrics.refused();
            let mut error = ErrorResponse::new(ErrorCode::Unavailable, full.to_string());
            error.retry_after_secs = Some(RETRY_AFTER_FULL_SECS);
            return error.into_response();
        }
    };
    // The tenant's live reader must exist before the 101: otherwise an event stored
    // between the upgrade and the reader's start would reach no socket of this tenant.
    if !matches!(
        tokio::time::timeout(LIVE_START_TIMEOUT, member.live_start()).await,
        Ok(Some(_))
    ) {
        let mut error = ErrorResponse::new(
            ErrorCode::Unavailable,
            "the event log is unreachable right now",
        );
        error.retry_after_secs = Some(RETRY_AFTER_FULL_SECS);
        return error.into_response();
    }
    let session = Session {
        log: app.bus.clone(),
        member,
        resume,
        policy: app.policy,
        metrics: app.metrics.clone(),
        shutdown: app.shutdown.clone(),
        token_exp: claims.exp,
    };
    // Counted from here, before the upgrade completes, so a shutdown that starts in
    // between still waits for this socket.
    let tracked = app.sockets.token();
    upgrade
        // tungstenite preallocates its read buffer (128 KiB by default) per socket;
        // clients send nothing but pongs and closes, so a small one is plenty.
        // Measured with 5 000 sockets: 144 KiB of RSS per socket with the default.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(MAX_INBOUND_BYTES)
        .max_frame_size(MAX_INBOUND_BYTES)
        .on_upgrade(move |ws| async move {
            socket::run(ws, session).await;
            drop(tracked);
        })
}

fn parse_resume(query: WsQuery) -> Result<Resume, Vec<Detail>> {
    let mut details = Vec::new();
    let since = query.since.and_then(|s| match s.trim().parse::<u64>() {
        Ok(seq) => Some(seq),
        Err(_) => {
            details.push(Detail {
                path: "since".into(),
                message: "must be a whole number ≥ 0 (the last seq received)".into(),
            });
            None
        }
    });
    let terminal = query.terminal_id.and_then(|t| match TerminalId::parse(t) {
        Ok(terminal) => Some(terminal),
        Err(e) => {
            details.push(Detail {
                path: "terminalId".into(),
                message: e.to_string(),
            });
            None
        }
    });
    if details.is_empty() {
        Ok(Resume { since, terminal })
    } else {
        Err(details)
    }
}

/// contract § `GET /health`, plus this instance's socket figures under `metrics`.
async fn health(State(app): State<AppState>) -> Response {
    #[derive(Serialize)]
    struct FanoutHealth {
        #[serde(flatten)]
        health: Health,
        metrics: MetricsSnapshot,
    }
    let health = Health::new("fanout", [("nats", app.bus.is_connected())]);
    let status = if health.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(FanoutHealth {
            health,
            metrics: app.metrics.snapshot(),
        }),
    )
        .into_response()
}

/// Any other path: the contract's JSON 404.
async fn not_found() -> ErrorResponse {
    ErrorResponse::new(ErrorCode::NotFound, "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(since: Option<&str>, terminal: Option<&str>) -> WsQuery {
        WsQuery {
            since: since.map(Into::into),
            terminal_id: terminal.map(Into::into),
        }
    }

    #[test]
    fn since_and_terminal_are_optional_and_parsed() {
        assert_eq!(
            parse_resume(query(None, None)).unwrap(),
            Resume {
                since: None,
                terminal: None
            }
        );
        let r = parse_resume(query(Some("4711"), Some("T7"))).unwrap();
        assert_eq!(r.since, Some(4711));
        assert_eq!(r.terminal.unwrap().as_str(), "T7");
    }

    #[test]
    fn a_bad_since_and_a_bad_terminal_are_both_reported() {
        let details = parse_resume(query(Some("-1"), Some(""))).unwrap_err();
        let paths: Vec<_> = details.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["since", "terminalId"]);
    }
}
