//! The WebSocket watcher: follows `GET {POS_WS}?token=…&since=…` (contract § WebSocket)
//! and brings the outbox's invoice states up to date.
//!
//! Data flow, per connection:
//! - `since` is read from the outbox (omitted before the first frame ever seen);
//! - each text frame is decoded by [`parse_frame`]: an `invoice.state` frame becomes a
//!   [`StateEvent`] matched to a local entry by `invoice.idempotencyKey` (else by
//!   invoice id), a `resync` frame moves the stored seq to `firstSeq − 1`;
//! - frames already waiting in the socket are taken together and applied in ONE
//!   transaction with the seq ([`Outbox::apply_frames`]): a crash keeps both or
//!   neither, and a busy tenant costs one fsync per batch, not per frame, so the
//!   terminal does not become the slow consumer fanout closes with 4008;
//! - after a resync, the GET refresh ([`refresh::refresh_unsettled`]) asks for the
//!   states whose events expired;
//! - every change bumps a counter that `sync`'s settle phase waits on.
//!
//! Any close or error ends the connection; the next one starts from the stored seq
//! after [`policy::reconnect_delay`]. A refused token (401/403 on the upgrade) ends the
//! watcher, because retrying cannot heal it.
//!
//! [`Outbox::apply_frames`]: crate::outbox::Outbox::apply_frames

use crate::{
    client::{encode_component, error_chain, Client},
    config::Token,
    outbox::{Frame, OutboxError, SharedOutbox, StateEvent},
    policy::{self, Jitter},
    refresh,
    state::{Observed, ServerState},
};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use std::{convert::Infallible, time::Duration};
use tokio::{sync::watch, time::Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info, warn};

/// Time allowed for TCP connect plus the upgrade handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which the link is presumed dead: three of fanout's default 20 s pings.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames applied in one transaction at most, so one commit stays short.
pub const MAX_BATCH: usize = 256;
/// A connection that lived this long (or delivered a frame) was healthy: the next
/// reconnect starts again from the shortest delay.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Fanout's close code for a socket that fell a whole buffer behind.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "the WebSocket refused POS_TOKEN (HTTP {status}); set a valid terminal JWT in POS_TOKEN"
    )]
    Unauthorized { status: u16 },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The watcher of one outbox. Run it with [`Watcher::run`]; stop it by dropping or
/// aborting that future (every outbox write is one transaction, so stopping anywhere
/// is safe).
#[derive(Debug)]
pub struct Watcher {
    ws: String,
    token: Token,
    outbox: SharedOutbox,
    /// For the GET refresh after a resync; `None` skips it.
    client: Option<Client>,
    /// Counts the frames that changed a local entry, for whoever waits on states.
    changes: watch::Sender<u64>,
    /// Turns true once the first connection attempt is over (connected or failed).
    first_attempt_done: watch::Sender<bool>,
}

impl Watcher {
    pub fn new(ws: &str, token: Token, outbox: SharedOutbox, client: Option<Client>) -> Self {
        Self {
            ws: ws.to_owned(),
            token,
            outbox,
            client,
            changes: watch::Sender::new(0),
            first_attempt_done: watch::Sender::new(false),
        }
    }

    /// Turns true once the first connection attempt is over, connected or not: before
    /// any seq is stored the socket carries only live events, so `sync` gives it this
    /// head start before the first POST.
    pub fn first_attempt_done(&self) -> watch::Receiver<bool> {
        self.first_attempt_done.subscribe()
    }

    /// Notified whenever a frame (or a refresh after a resync) changed a local entry.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Follows the socket forever, reconnecting as needed; returns only on a refused
    /// token or an outbox failure.
    pub async fn run(self) -> Result<Infallible, WatchError> {
        let mut jitter = Jitter::new(crate::jitter_seed());
        let mut failures = 0u32;
        loop {
            let since = self.outbox.call(|o| o.last_seq()).await?;
            let started = Instant::now();
            let ended = self.session(since).await?;
            if ended.frames > 0 || started.elapsed() >= HEALTHY_AFTER {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = policy::reconnect_delay(failures, &mut jitter);
            if ended.close_code == Some(CLOSE_SLOW_CONSUMER) {
                info!(
                    delay_ms = delay.as_millis(),
                    "fanout found this terminal slow; resuming from the stored seq"
                );
            } else {
                info!(reason = %ended.reason, frames = ended.frames, delay_ms = delay.as_millis(), "WebSocket ended; reconnecting");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection, from connect to its end.
    async fn session(&self, since: Option<u64>) -> Result<Ended, WatchError> {
        let url = ws_url(&self.ws, &self.token, since);
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await;
        self.first_attempt_done.send_replace(true);
        let mut socket = match connected {
            Err(_) => return Ok(Ended::before_connecting("connect timed out")),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    return Err(WatchError::Unauthorized { status });
                }
                return Ok(Ended::before_connecting(format!(
                    "upgrade refused with HTTP {status}"
                )));
            }
            Ok(Err(error)) => return Ok(Ended::before_connecting(error_chain(&error))),
            Ok(Ok((socket, _))) => socket,
        };
        info!(since, "WebSocket connected");
        let mut ended = Ended::default();
        loop {
            let Ok(first) = tokio::time::timeout(IDLE_TIMEOUT, socket.next()).await else {
                ended.reason = format!("nothing received for {} s", IDLE_TIMEOUT.as_secs());
                return Ok(ended);
            };
            let mut batch = Vec::new();
            let mut end = read(first, &mut batch, &mut ended);
            // Whatever already arrived joins this transaction; `next()` is cancel-safe,
            // so a frame not ready yet is simply read by the next round.
            while end.is_none() && batch.len() < MAX_BATCH {
                match socket.next().now_or_never() {
                    Some(next) => end = read(next, &mut batch, &mut ended),
                    None => break,
                }
            }
            if !batch.is_empty() {
                ended.frames += batch.len();
                self.apply(batch).await?;
            }
            if let Some(reason) = end {
                ended.reason = reason;
                return Ok(ended);
            }
        }
    }

    async fn apply(&self, batch: Vec<Frame>) -> Result<(), WatchError> {
        let applied = self.outbox.call(move |o| o.apply_frames(&batch)).await?;
        if applied.updated > 0 {
            self.changes.send_modify(|n| *n += 1);
        }
        if applied.resynced {
            if let Some(client) = self.client.clone() {
                let outbox = self.outbox.clone();
                let changes = self.changes.clone();
                // Off the read loop: GETs may take seconds, the socket must keep up.
                tokio::spawn(async move {
                    match refresh::refresh_unsettled(&client, &outbox).await {
                        Ok(done) if done.updated > 0 => changes.send_modify(|n| *n += 1),
                        Ok(_) => {}
                        Err(error) => warn!(%error, "state refresh after resync failed"),
                    }
                });
            }
        }
        Ok(())
    }
}

/// How a connection ended.
#[derive(Debug, Default)]
struct Ended {
    frames: usize,
    close_code: Option<u16>,
    reason: String,
}

impl Ended {
    fn before_connecting(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            ..Self::default()
        }
    }
}

/// Adds a received message to the batch; returns why the connection ends, if it does.
fn read(
    next: Option<Result<Message, tungstenite::Error>>,
    batch: &mut Vec<Frame>,
    ended: &mut Ended,
) -> Option<String> {
    match next {
        None => Some("connection closed".to_owned()),
        Some(Err(error)) => Some(error_chain(&error)),
        Some(Ok(Message::Close(frame))) => {
            let (code, reason) = frame.map_or((None, String::new()), |f| {
                (Some(u16::from(f.code)), f.reason.to_string())
            });
            ended.close_code = code;
            Some(format!("closed by the server (code {code:?}: {reason})"))
        }
        Some(Ok(Message::Text(text))) => {
            match parse_frame(text.as_str()) {
                Ok(Some(frame)) => {
                    if let Frame::Resync { reason, first_seq } = &frame {
                        warn!(%reason, first_seq, "events were missed; refreshing states over HTTP");
                    }
                    batch.push(frame);
                }
                Ok(None) => debug!(frame = %text.as_str(), "frame type not followed"),
                Err(error) => warn!(%error, frame = %text.as_str(), "undecodable frame skipped"),
            }
            None
        }
        // Pings are answered by tungstenite on the next read; the rest carries nothing.
        Some(Ok(_)) => None,
    }
}

/// `{POS_WS}?token=…[&since=…]` (`&` when `POS_WS` already has a query).
pub fn ws_url(base: &str, token: &Token, since: Option<u64>) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{base}{separator}token={}",
        encode_component(token.expose())
    );
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    url
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFrame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    invoice_id: Option<String>,
    state: Option<String>,
    invoice: Option<Value>,
    reason: Option<String>,
    first_seq: Option<u64>,
}

/// Why a text frame could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("not a JSON frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{kind} frame without {field}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
}

/// Decodes one text frame; `Ok(None)` for frame types the terminal does not follow.
pub fn parse_frame(text: &str) -> Result<Option<Frame>, FrameError> {
    let wire: WireFrame = serde_json::from_str(text)?;
    let missing = |kind, field| FrameError::Missing { kind, field };
    match wire.kind.as_str() {
        "invoice.state" => {
            let seq = wire.seq.ok_or(missing("invoice.state", "seq"))?;
            let invoice = wire.invoice.unwrap_or(Value::Null);
            let text_of = |field: &str| {
                invoice
                    .get(field)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let invoice_id = wire
                .invoice_id
                .or_else(|| text_of("id"))
                .ok_or(missing("invoice.state", "invoiceId"))?;
            let observed = match wire.state.as_deref().and_then(ServerState::parse) {
                Some(state) => Some(Observed {
                    state,
                    replays: Observed::from_invoice(&invoice).and_then(|o| o.replays),
                }),
                None => Observed::from_invoice(&invoice),
            };
            Ok(Some(Frame::State(StateEvent {
                seq,
                invoice_id,
                key: text_of("idempotencyKey"),
                observed,
            })))
        }
        "resync" => Ok(Some(Frame::Resync {
            reason: wire.reason.unwrap_or_default(),
            first_seq: wire.first_seq.ok_or(missing("resync", "firstSeq"))?,
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{outbox::Accepted, test_support::TempDb};
    use futures_util::SinkExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};

    #[test]
    fn a_state_frame_names_its_key_state_and_replays() {
        let text = r#"{"type":"invoice.state","seq":4711,"tenantId":"acme","invoiceId":"inv-1","terminalId":"T7",
            "state":"COMPLETED","at":"2026-11-25T10:00:00.123Z",
            "invoice":{"id":"inv-1","idempotencyKey":"T7.0a1b2c3d.0000000001","state":"COMPLETED","replays":1}}"#;
        let Some(Frame::State(event)) = parse_frame(text).unwrap() else {
            panic!("a state frame");
        };
        assert_eq!(event.seq, 4711);
        assert_eq!(event.invoice_id, "inv-1");
        assert_eq!(event.key.as_deref(), Some("T7.0a1b2c3d.0000000001"));
        assert_eq!(
            event.observed,
            Some(Observed {
                state: ServerState::Completed,
                replays: Some(1)
            })
        );
    }

    #[test]
    fn a_resync_frame_names_the_first_kept_seq() {
        let text = r#"{"type":"resync","reason":"since is older than the retention window","firstSeq":42}"#;
        assert_eq!(
            parse_frame(text).unwrap(),
            Some(Frame::Resync {
                reason: "since is older than the retention window".to_owned(),
                first_seq: 42
            })
        );
    }

    #[test]
    fn unknown_frame_types_are_ignored_and_broken_ones_refused() {
        assert_eq!(parse_frame(r#"{"type":"hello"}"#).unwrap(), None);
        assert!(parse_frame(r#"{"type":"invoice.state","invoiceId":"x"}"#).is_err());
        assert!(parse_frame("nope").is_err());
    }

    #[test]
    fn the_url_carries_the_token_and_since_only_when_known() {
        let token = Token::new("a.b-c_d");
        assert_eq!(
            ws_url("ws://h:3001/ws", &token, None),
            "ws://h:3001/ws?token=a.b-c_d"
        );
        assert_eq!(
            ws_url("ws://h:3001/ws", &token, Some(41)),
            "ws://h:3001/ws?token=a.b-c_d&since=41"
        );
        assert_eq!(
            ws_url("ws://h/ws?terminalId=T7", &token, Some(0)),
            "ws://h/ws?terminalId=T7&token=a.b-c_d&since=0"
        );
    }

    const BODY: &str = r#"{"terminalId":"T7","currency":"EUR","items":[]}"#;

    fn state_frame(seq: u64, id: &str, key: &str, state: &str) -> Message {
        let frame = serde_json::json!({
            "type": "invoice.state", "seq": seq, "tenantId": "acme", "invoiceId": id, "terminalId": "T7",
            "state": state, "at": "2026-11-25T10:00:00.123Z",
            "invoice": { "id": id, "idempotencyKey": key, "state": state, "replays": 0 }
        });
        Message::text(frame.to_string())
    }

    /// Polls the outbox until `done` holds, for at most 10 s.
    async fn until(
        outbox: &SharedOutbox,
        done: impl Fn(&crate::outbox::Outbox) -> bool + Send + Sync + Clone + 'static,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let check = done.clone();
            if outbox.call(move |o| Ok(check(o))).await.unwrap() {
                return;
            }
            assert!(Instant::now() < deadline, "the watcher never got there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    #[allow(
        clippy::result_large_err,
        reason = "the shape of tungstenite's handshake callback"
    )]
    async fn the_watcher_follows_frames_resumes_with_since_and_survives_4008_and_resync() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let key = outbox
            .enqueue(BODY, chrono::Utc::now())
            .unwrap()
            .key
            .to_string();
        // acknowledged without an id: the frame supplies it
        outbox.acknowledge(1, &Accepted::default(), 202).unwrap();
        let outbox = SharedOutbox::new(outbox);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (uris_tx, mut uris) = tokio::sync::mpsc::unbounded_channel::<String>();
        let server_key = key.clone();
        tokio::spawn(async move {
            for connection in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                let uris_tx = uris_tx.clone();
                let mut socket = tokio_tungstenite::accept_hdr_async(
                    stream,
                    move |request: &tungstenite::handshake::server::Request, response| {
                        uris_tx.send(request.uri().to_string()).unwrap();
                        Ok(response)
                    },
                )
                .await
                .unwrap();
                if connection == 0 {
                    socket
                        .send(state_frame(5, "inv-1", &server_key, "PROCESSING"))
                        .await
                        .unwrap();
                    socket
                        .send(state_frame(
                            6,
                            "inv-9",
                            "T8.00000000.0000000001",
                            "COMPLETED",
                        ))
                        .await
                        .unwrap();
                    let close = CloseFrame {
                        code: CloseCode::from(4008),
                        reason: "slow consumer; reconnect with since=6".into(),
                    };
                    socket.send(Message::Close(Some(close))).await.unwrap();
                    while socket.next().await.is_some() {}
                } else {
                    let resync = r#"{"type":"resync","reason":"since is older than the retention window","firstSeq":10}"#;
                    socket.send(Message::text(resync)).await.unwrap();
                    socket
                        .send(state_frame(10, "inv-1", &server_key, "COMPLETED"))
                        .await
                        .unwrap();
                    while socket.next().await.is_some() {}
                }
            }
        });

        let watcher = Watcher::new(&url, Token::new("jwt"), outbox.clone(), None);
        let mut changes = watcher.subscribe();
        let running = tokio::spawn(watcher.run());

        assert_eq!(
            uris.recv().await.unwrap(),
            "/ws?token=jwt",
            "no since before any frame"
        );
        until(&outbox, |o| {
            o.entries().unwrap()[0].state == Some(ServerState::Processing)
        })
        .await;
        assert!(changes.has_changed().unwrap() || changes.changed().await.is_ok());
        assert_eq!(
            uris.recv().await.unwrap(),
            "/ws?token=jwt&since=6",
            "resumes after a 4008"
        );
        until(&outbox, |o| {
            o.entries().unwrap()[0].state == Some(ServerState::Completed)
        })
        .await;
        until(&outbox, |o| o.last_seq().unwrap() == Some(10)).await;
        let entry = &outbox.call(|o| o.entries()).await.unwrap()[0];
        assert_eq!(
            entry.invoice_id.as_deref(),
            Some("inv-1"),
            "the frame supplied the id"
        );
        assert_eq!(entry.sync, crate::outbox::SyncStatus::Acknowledged);
        running.abort();
    }

    #[tokio::test]
    async fn a_refused_token_ends_the_watcher() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
            let body = r#"{"error":{"code":"unauthorized","message":"expired"}}"#;
            let answer = format!("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes())
                .await
                .unwrap();
        });
        let db = TempDb::new();
        let watcher = Watcher::new(
            &url,
            Token::new("expired"),
            SharedOutbox::new(db.open()),
            None,
        );
        let ended = tokio::time::timeout(Duration::from_secs(10), watcher.run())
            .await
            .unwrap();
        assert!(matches!(
            ended,
            Err(WatchError::Unauthorized { status: 401 })
        ));
    }
}
