//! The durable outbox: one SQLite file (`POS_TERMINAL_DB`) holding every invoice the
//! cashier was told is saved, from enqueue until the server's answer, and after.
//!
//! Data flow:
//! - [`Outbox::enqueue`] checks the body, allocates the next local sequence, builds the
//!   key, seals the body and inserts it as `pending`, all in ONE transaction committed
//!   with `synchronous=FULL` before the caller prints the key;
//! - `sync` reads [`Outbox::due`] entries and records each answer with exactly one of
//!   [`Outbox::acknowledge`], [`Outbox::defer`] or [`Outbox::reject`]; an entry leaves
//!   `pending` only through the first or the last, so a process killed mid-request
//!   leaves it pending, and the retry (same key, same body) is replayed by the server;
//! - the watcher feeds WebSocket frames to [`Outbox::apply_frames`], which moves states
//!   forward and stores the frame's seq in the same transaction;
//! - `status` reads [`Outbox::status`].
//!
//! Nothing is ever deleted and a stored key or body never changes: triggers refuse both,
//! so not even a bug in this crate can break the server's fingerprint of a body.
//!
//! WAL mode lets `sync` and `watch` share the file; every write transaction is
//! `BEGIN IMMEDIATE`, because a read transaction upgraded to a write one fails with
//! `SQLITE_BUSY` at once in WAL mode instead of waiting out `busy_timeout`.

use crate::{
    body::{self, BodyError, Draft},
    policy::IdempotencyKey,
    state::{self, Known, Observed, ServerState},
};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Version of the schema below, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// How long a write waits for the other process (`sync` vs `watch`) to finish its own.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    outbox_id       TEXT    NOT NULL,
    next_seq        INTEGER NOT NULL,
    last_ws_seq     INTEGER,
    clock_offset_ms INTEGER,
    created_at      TEXT    NOT NULL
);
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    key             TEXT    NOT NULL UNIQUE,
    body            TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    sync            TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (sync IN ('pending', 'acknowledged', 'rejected')),
    invoice_id      TEXT,
    state           TEXT    CHECK (state IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED')),
    replays         INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER
);
CREATE INDEX outbox_by_sync ON outbox (sync, next_attempt_at);
CREATE INDEX outbox_by_invoice_id ON outbox (invoice_id);
CREATE TRIGGER outbox_key_and_body_never_change BEFORE UPDATE OF seq, key, body ON outbox
BEGIN SELECT RAISE(ABORT, 'an outbox entry''s key and body never change'); END;
CREATE TRIGGER outbox_keeps_every_entry BEFORE DELETE ON outbox
BEGIN SELECT RAISE(ABORT, 'outbox entries are never deleted'); END;
CREATE TRIGGER outbox_settled_entries_stay_settled BEFORE UPDATE OF sync ON outbox
WHEN OLD.sync <> 'pending' AND NEW.sync <> OLD.sync
BEGIN SELECT RAISE(ABORT, 'only a pending entry changes its sync status'); END;
";

/// Why the outbox could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the outbox at {path} ({source}); check POS_TERMINAL_DB")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the outbox at {path} has schema version {found}, newer than this pos-terminal ({supported}); use a newer pos-terminal")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(transparent)]
    InvalidBody(#[from] BodyError),
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the outbox holds a value this version does not understand: {0}")]
    Corrupt(String),
    #[error("the outbox worker thread failed: {0}")]
    Worker(String),
}

/// Where an entry is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncStatus {
    /// Not known to have reached the server; will be sent (again).
    Pending,
    /// The server answered 202 or 200 for it.
    Acknowledged,
    /// The server refused it with a 4xx; kept with the error.
    Rejected,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Acknowledged => "acknowledged",
            Self::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Result<Self, OutboxError> {
        match text {
            "pending" => Ok(Self::Pending),
            "acknowledged" => Ok(Self::Acknowledged),
            "rejected" => Ok(Self::Rejected),
            other => Err(OutboxError::Corrupt(format!("sync status {other:?}"))),
        }
    }
}

/// What enqueue stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub seq: i64,
    pub key: IdempotencyKey,
}

/// An entry waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub seq: i64,
    pub key: String,
    pub body: String,
    /// Attempts already answered (or failed), not counting the one about to start.
    pub attempts: u32,
}

/// What a 202/200 told about the invoice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub invoice_id: Option<String>,
    pub observed: Option<Observed>,
}

impl Accepted {
    /// Reads the invoice representation of a 202/200 body; a body that is not one still
    /// acknowledges the entry (the server said it holds the invoice), and the watcher
    /// fills in the id by key later.
    pub fn from_body(body: &str) -> Self {
        let Ok(invoice) = serde_json::from_str::<serde_json::Value>(body) else {
            return Self::default();
        };
        Self {
            invoice_id: invoice
                .get("id")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            observed: Observed::from_invoice(&invoice),
        }
    }
}

/// An `invoice.state` frame, as far as the outbox cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEvent {
    pub seq: u64,
    pub invoice_id: String,
    /// `invoice.idempotencyKey`: how the frame is matched to a local entry.
    pub key: Option<String>,
    pub observed: Option<Observed>,
}

/// One WebSocket frame, decoded (see `watch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    State(StateEvent),
    /// The stored seq is older than the log: continue from `first_seq`.
    Resync {
        reason: String,
        first_seq: u64,
    },
}

/// What a batch of frames did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FramesApplied {
    /// Frames that changed a local entry.
    pub updated: usize,
    /// A resync frame was among them: some events were never seen.
    pub resynced: bool,
}

/// An acknowledged entry whose invoice has not reached a final state yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub seq: i64,
    pub invoice_id: Option<String>,
}

/// Every column of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub key: String,
    pub body: String,
    pub created_at: String,
    pub sync: SyncStatus,
    pub invoice_id: Option<String>,
    pub state: Option<ServerState>,
    pub replays: u32,
    /// The server's error body (JSON text) for a rejected entry.
    pub error: Option<String>,
    pub attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub next_attempt_at: i64,
    pub last_status: Option<u16>,
}

/// `pos-terminal status --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub pending: usize,
    pub acknowledged: usize,
    pub rejected: usize,
    pub invoices: Vec<InvoiceStatus>,
    pub last_seq: Option<u64>,
    pub clock_offset_ms: Option<i64>,
}

/// One entry in `status --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceStatus {
    pub key: String,
    pub sync: SyncStatus,
    /// The server state; `"pending"` for a pending entry with no known state,
    /// `"rejected"` for a rejected one, `null` for an acknowledged one whose answer
    /// named none (not seen with this server).
    pub state: Option<String>,
    pub invoice_id: Option<String>,
    /// The `error` member of the server's answer, for rejected entries.
    pub error: Option<serde_json::Value>,
}

impl InvoiceStatus {
    fn of(entry: &Entry) -> Self {
        let state = match entry.sync {
            SyncStatus::Pending => Some(
                entry
                    .state
                    .map_or("pending", ServerState::as_str)
                    .to_owned(),
            ),
            SyncStatus::Acknowledged => entry.state.map(|s| s.as_str().to_owned()),
            SyncStatus::Rejected => Some("rejected".to_owned()),
        };
        let error = match entry.sync {
            SyncStatus::Rejected => entry.error.as_deref().map(|text| {
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(mut body) => match body.get_mut("error") {
                        Some(error) => error.take(),
                        None => body,
                    },
                    Err(_) => serde_json::Value::from(text),
                }
            }),
            _ => None,
        };
        Self {
            key: entry.key.clone(),
            sync: entry.sync,
            state,
            invoice_id: entry.invoice_id.clone(),
            error,
        }
    }
}

/// Entries by sync status, and the acknowledged ones by server state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: usize,
    pub acknowledged: usize,
    pub rejected: usize,
    /// Acknowledged and COMPLETED.
    pub completed: usize,
    /// Acknowledged and FAILED.
    pub failed: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let not_final = self.acknowledged - self.completed - self.failed;
        write!(
            f,
            "{} pending, {} acknowledged ({} COMPLETED, {} FAILED, {} not final yet), {} rejected",
            self.pending, self.acknowledged, self.completed, self.failed, not_final, self.rejected
        )
    }
}

impl Status {
    pub fn counts(&self) -> Counts {
        let acknowledged_in = |state: ServerState| {
            self.invoices
                .iter()
                .filter(|i| {
                    i.sync == SyncStatus::Acknowledged && i.state.as_deref() == Some(state.as_str())
                })
                .count()
        };
        Counts {
            pending: self.pending,
            acknowledged: self.acknowledged,
            rejected: self.rejected,
            completed: acknowledged_in(ServerState::Completed),
            failed: acknowledged_in(ServerState::Failed),
        }
    }
}

/// The open outbox file. One connection; share it between tasks with [`SharedOutbox`].
#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
}

impl Outbox {
    /// Opens (creating if missing) the outbox file and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        let path = path.as_ref();
        let open_error = |source| OutboxError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OutboxError::Corrupt(format!(
                "journal_mode is {mode}, WAL could not be enabled"
            )));
        }
        // FULL: a commit is on disk (WAL fsync'd) before enqueue prints the key.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        let mut outbox = Self { conn };
        outbox.migrate(path).map_err(|e| match e {
            OutboxError::Sqlite(source) => open_error(source),
            other => other,
        })?;
        Ok(outbox)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), OutboxError> {
        if self.user_version()? == SCHEMA_VERSION {
            return Ok(());
        }
        // Two processes may create the file at once: decide under the write lock.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        match found {
            0 => {
                tx.execute_batch(SCHEMA)?;
                tx.execute(
                    "INSERT INTO meta (id, outbox_id, next_seq, created_at) VALUES (1, ?1, 1, ?2)",
                    params![new_outbox_id(), body::issued_at(Utc::now())],
                )?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            found => {
                return Err(OutboxError::NewerSchema {
                    path: path.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn user_version(&self) -> Result<i64, OutboxError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }

    fn write(&mut self) -> Result<Transaction<'_>, OutboxError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// The random id made with the file (8 hex chars), part of every key.
    pub fn outbox_id(&self) -> Result<String, OutboxError> {
        Ok(self
            .conn
            .query_row("SELECT outbox_id FROM meta WHERE id = 1", [], |row| {
                row.get(0)
            })?)
    }

    /// Stores one invoice body (see the module docs); `now` is the terminal's clock.
    pub fn enqueue(&mut self, raw_body: &str, now: DateTime<Utc>) -> Result<Enqueued, OutboxError> {
        let draft = Draft::parse(raw_body)?;
        let tx = self.write()?;
        let (outbox_id, seq): (String, i64) = tx.query_row(
            "UPDATE meta SET next_seq = next_seq + 1 WHERE id = 1 RETURNING outbox_id, next_seq - 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let local_seq =
            u64::try_from(seq).map_err(|_| OutboxError::Corrupt(format!("next sequence {seq}")))?;
        let key = IdempotencyKey::for_entry(draft.terminal_id(), &outbox_id, local_seq);
        let sealed = draft.seal(&key, now);
        tx.execute(
            "INSERT INTO outbox (seq, key, body, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq, key.as_str(), sealed, body::issued_at(now), now.timestamp_millis()],
        )?;
        tx.commit()?;
        Ok(Enqueued { seq, key })
    }

    /// Pending entries due at `now_ms`, oldest first, at most `limit`.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<PendingEntry>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = self.conn.prepare(
            "SELECT seq, key, body, attempts FROM outbox
             WHERE sync = 'pending' AND next_attempt_at <= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![now_ms, limit], |row| {
            Ok(PendingEntry {
                seq: row.get(0)?,
                key: row.get(1)?,
                body: row.get(2)?,
                attempts: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the earliest pending entry due strictly after `now_ms` becomes due.
    pub fn next_due_after(&self, now_ms: i64) -> Result<Option<i64>, OutboxError> {
        Ok(self.conn.query_row(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE sync = 'pending' AND next_attempt_at > ?1",
            [now_ms],
            |row| row.get(0),
        )?)
    }

    pub fn pending_count(&self) -> Result<usize, OutboxError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE sync = 'pending'",
            [],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The one way an entry becomes acknowledged: the server answered 202 or 200.
    /// Returns false when it was no longer pending (another process got there first).
    pub fn acknowledge(
        &mut self,
        seq: i64,
        accepted: &Accepted,
        status: u16,
    ) -> Result<bool, OutboxError> {
        let tx = self.write()?;
        let flipped = tx.execute(
            "UPDATE outbox SET sync = 'acknowledged', invoice_id = COALESCE(?2, invoice_id),
                 attempts = attempts + 1, last_status = ?3
             WHERE seq = ?1 AND sync = 'pending'",
            params![seq, accepted.invoice_id, status],
        )? == 1;
        if let Some(news) = accepted.observed {
            apply_observed(&tx, seq, news)?;
        }
        tx.commit()?;
        Ok(flipped)
    }

    /// The answer was transient: try again at `next_attempt_at` (ms since the epoch).
    /// `status` is `None` when there was no HTTP answer at all.
    pub fn defer(
        &mut self,
        seq: i64,
        next_attempt_at: i64,
        status: Option<u16>,
    ) -> Result<bool, OutboxError> {
        let tx = self.write()?;
        let changed = tx.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_status = ?3
             WHERE seq = ?1 AND sync = 'pending'",
            params![seq, next_attempt_at, status],
        )? == 1;
        tx.commit()?;
        Ok(changed)
    }

    /// The server refused the invoice for good; `error` is the JSON text to keep.
    pub fn reject(&mut self, seq: i64, status: u16, error: &str) -> Result<bool, OutboxError> {
        let tx = self.write()?;
        let changed = tx.execute(
            "UPDATE outbox SET sync = 'rejected', error = ?2, attempts = attempts + 1, last_status = ?3
             WHERE seq = ?1 AND sync = 'pending'",
            params![seq, error, status],
        )? == 1;
        tx.commit()?;
        Ok(changed)
    }

    /// Server time − local time, from the last answer's `Date` header; for support.
    pub fn record_clock_offset(&mut self, offset_ms: i64) -> Result<(), OutboxError> {
        let tx = self.write()?;
        tx.execute(
            "UPDATE meta SET clock_offset_ms = ?1 WHERE id = 1",
            [offset_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Applies WebSocket frames in order, in one transaction that also stores the last
    /// seq, so a crash either keeps both the state and the seq or neither.
    pub fn apply_frames(&mut self, frames: &[Frame]) -> Result<FramesApplied, OutboxError> {
        let tx = self.write()?;
        let mut applied = FramesApplied::default();
        for frame in frames {
            match frame {
                Frame::State(event) => {
                    if apply_event(&tx, event)? {
                        applied.updated += 1;
                    }
                    // Never moves back: a second watcher (the `watch` command beside
                    // `sync`'s) that is behind must not make the first replay old events.
                    tx.execute(
                        "UPDATE meta SET last_ws_seq = MAX(COALESCE(last_ws_seq, ?1), ?1) WHERE id = 1",
                        [seq_to_sql(event.seq)],
                    )?;
                }
                Frame::Resync { first_seq, .. } => {
                    // Set outright, also downwards: after a recreated event log the
                    // seqs restart, and the resync frame is what announces it.
                    tx.execute(
                        "UPDATE meta SET last_ws_seq = ?1 WHERE id = 1",
                        [seq_to_sql(first_seq.saturating_sub(1))],
                    )?;
                    applied.resynced = true;
                }
            }
        }
        tx.commit()?;
        Ok(applied)
    }

    /// Stores a state read with `GET /invoices/{id}`; returns whether anything changed.
    pub fn record_state(&mut self, invoice_id: &str, news: Observed) -> Result<bool, OutboxError> {
        let tx = self.write()?;
        let seqs: Vec<i64> = {
            let mut statement = tx.prepare("SELECT seq FROM outbox WHERE invoice_id = ?1")?;
            let rows = statement.query_map([invoice_id], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut changed = false;
        for seq in seqs {
            changed |= apply_observed(&tx, seq, news)?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The WebSocket seq to resume from.
    pub fn last_seq(&self) -> Result<Option<u64>, OutboxError> {
        let seq: Option<i64> =
            self.conn
                .query_row("SELECT last_ws_seq FROM meta WHERE id = 1", [], |row| {
                    row.get(0)
                })?;
        Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
    }

    pub fn clock_offset_ms(&self) -> Result<Option<i64>, OutboxError> {
        Ok(self
            .conn
            .query_row("SELECT clock_offset_ms FROM meta WHERE id = 1", [], |row| {
                row.get(0)
            })?)
    }

    /// Acknowledged entries whose invoice is not COMPLETED or FAILED (as far as known).
    pub fn unsettled(&self) -> Result<Vec<Unsettled>, OutboxError> {
        let mut statement = self.conn.prepare(
            "SELECT seq, invoice_id FROM outbox
             WHERE sync = 'acknowledged' AND (state IS NULL OR state NOT IN ('COMPLETED', 'FAILED'))
             ORDER BY seq",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(Unsettled {
                seq: row.get(0)?,
                invoice_id: row.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every entry, in creation order.
    pub fn entries(&self) -> Result<Vec<Entry>, OutboxError> {
        let mut statement = self.conn.prepare(
            "SELECT seq, key, body, created_at, sync, invoice_id, state, replays, error, attempts,
                    next_attempt_at, last_status
             FROM outbox ORDER BY seq",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                Entry {
                    seq: row.get(0)?,
                    key: row.get(1)?,
                    body: row.get(2)?,
                    created_at: row.get(3)?,
                    sync: SyncStatus::Pending,
                    invoice_id: row.get(5)?,
                    state: None,
                    replays: row.get(7)?,
                    error: row.get(8)?,
                    attempts: row.get(9)?,
                    next_attempt_at: row.get(10)?,
                    last_status: row.get(11)?,
                },
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?;
        rows.map(|row| {
            let (mut entry, sync, state) = row?;
            entry.sync = SyncStatus::parse(&sync)?;
            entry.state = state.as_deref().map(parse_state).transpose()?;
            Ok(entry)
        })
        .collect()
    }

    pub fn status(&self) -> Result<Status, OutboxError> {
        let entries = self.entries()?;
        let count = |sync| entries.iter().filter(|e| e.sync == sync).count();
        Ok(Status {
            pending: count(SyncStatus::Pending),
            acknowledged: count(SyncStatus::Acknowledged),
            rejected: count(SyncStatus::Rejected),
            invoices: entries.iter().map(InvoiceStatus::of).collect(),
            last_seq: self.last_seq()?,
            clock_offset_ms: self.clock_offset_ms()?,
        })
    }
}

/// Matches an event to a local entry (by key, else by invoice id) and updates it.
fn apply_event(tx: &Transaction<'_>, event: &StateEvent) -> Result<bool, OutboxError> {
    let by_key = match &event.key {
        Some(key) => tx
            .query_row("SELECT seq FROM outbox WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?,
        None => None,
    };
    let seq: Option<i64> = match by_key {
        Some(seq) => Some(seq),
        None => tx
            .query_row(
                "SELECT seq FROM outbox WHERE invoice_id = ?1 ORDER BY seq LIMIT 1",
                [&event.invoice_id],
                |row| row.get(0),
            )
            .optional()?,
    };
    let Some(seq) = seq else {
        return Ok(false);
    };
    // The 202 may have been lost: the frame is then how the entry learns its id.
    let mut changed = tx.execute(
        "UPDATE outbox SET invoice_id = ?2 WHERE seq = ?1 AND invoice_id IS NULL",
        params![seq, event.invoice_id],
    )? == 1;
    if let Some(news) = event.observed {
        changed |= apply_observed(tx, seq, news)?;
    }
    Ok(changed)
}

/// Offers `news` to the entry's known state (see `state::advance`).
fn apply_observed(tx: &Transaction<'_>, seq: i64, news: Observed) -> Result<bool, OutboxError> {
    let (state, replays): (Option<String>, u32) = tx.query_row(
        "SELECT state, replays FROM outbox WHERE seq = ?1",
        [seq],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let known = state
        .as_deref()
        .map(parse_state)
        .transpose()?
        .map(|state| Known { state, replays });
    let Some(next) = state::advance(known, news) else {
        return Ok(false);
    };
    tx.execute(
        "UPDATE outbox SET state = ?2, replays = ?3 WHERE seq = ?1",
        params![seq, next.state.as_str(), next.replays],
    )?;
    Ok(true)
}

fn parse_state(text: &str) -> Result<ServerState, OutboxError> {
    ServerState::parse(text).ok_or_else(|| OutboxError::Corrupt(format!("invoice state {text:?}")))
}

fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// 8 random hex chars, made once per file.
fn new_outbox_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The outbox shared by the tasks of one process. Every call runs on tokio's blocking
/// pool: a commit fsyncs, and a write may wait up to [`BUSY_TIMEOUT`] for the other
/// process, neither of which may stall the tasks reading the network.
#[derive(Debug, Clone)]
pub struct SharedOutbox {
    inner: Arc<Mutex<Outbox>>,
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> Self {
        Self {
            inner: Arc::new(Mutex::new(outbox)),
        }
    }

    /// Runs `f` with the outbox. A caller that is cancelled does not cancel `f`:
    /// its transaction still commits or rolls back as a whole.
    pub async fn call<R, F>(&self, f: F) -> Result<R, OutboxError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Outbox) -> Result<R, OutboxError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut outbox = inner
                .lock()
                .map_err(|_| OutboxError::Worker("a previous outbox call panicked".to_owned()))?;
            f(&mut outbox)
        })
        .await
        .map_err(|e| OutboxError::Worker(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerState::*;
    use crate::test_support::TempDb;

    const BODY: &str = r#"{"terminalId":"T7","currency":"EUR","items":[{"sku":"A","name":"a","quantity":"1","unitPrice":"1.00","taxRate":"0.10"}]}"#;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn accepted(id: &str, state: ServerState) -> Accepted {
        Accepted {
            invoice_id: Some(id.to_owned()),
            observed: Some(Observed {
                state,
                replays: None,
            }),
        }
    }

    fn event(
        seq: u64,
        id: &str,
        key: Option<&str>,
        state: ServerState,
        replays: Option<u32>,
    ) -> Frame {
        Frame::State(StateEvent {
            seq,
            invoice_id: id.to_owned(),
            key: key.map(str::to_owned),
            observed: Some(Observed { state, replays }),
        })
    }

    #[test]
    fn enqueue_assigns_increasing_keys_from_one_outbox_id() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let id = outbox.outbox_id().unwrap();
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let keys: Vec<String> = (0..3)
            .map(|_| outbox.enqueue(BODY, now()).unwrap().key.to_string())
            .collect();
        assert_eq!(
            keys,
            (1..=3)
                .map(|n| format!("T7.{id}.{n:010}"))
                .collect::<Vec<_>>()
        );
        let seqs: Vec<i64> = outbox.entries().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn a_failed_enqueue_allocates_no_sequence() {
        let db = TempDb::new();
        let mut outbox = db.open();
        outbox.enqueue(BODY, now()).unwrap();
        // The insert fails inside the transaction (a key that already exists is the
        // easiest way to make it fail), so the sequence bump must roll back with it.
        outbox
            .conn
            .execute("UPDATE meta SET next_seq = 1", [])
            .unwrap();
        assert!(matches!(
            outbox.enqueue(BODY, now()),
            Err(OutboxError::Sqlite(_))
        ));
        let next: i64 = outbox
            .conn
            .query_row("SELECT next_seq FROM meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(next, 1, "the failed enqueue's sequence bump rolled back");
        assert_eq!(outbox.entries().unwrap().len(), 1);
    }

    #[test]
    fn reopening_the_file_keeps_everything() {
        let db = TempDb::new();
        let (id, key) = {
            let mut outbox = db.open();
            let key = outbox.enqueue(BODY, now()).unwrap().key;
            outbox
                .acknowledge(1, &accepted("inv-1", Queued), 202)
                .unwrap();
            outbox.enqueue(BODY, now()).unwrap();
            outbox
                .apply_frames(&[event(41, "other", None, Queued, None)])
                .unwrap();
            outbox.record_clock_offset(-1500).unwrap();
            (outbox.outbox_id().unwrap(), key)
        };
        let mut outbox = db.open();
        assert_eq!(
            outbox.outbox_id().unwrap(),
            id,
            "the outbox id is made once"
        );
        let entries = outbox.entries().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].key, key.as_str());
        assert_eq!(entries[0].sync, SyncStatus::Acknowledged);
        assert_eq!(entries[0].invoice_id.as_deref(), Some("inv-1"));
        assert_eq!(entries[1].sync, SyncStatus::Pending);
        assert_eq!(outbox.last_seq().unwrap(), Some(41));
        assert_eq!(outbox.clock_offset_ms().unwrap(), Some(-1500));
        // and the sequence continues where it was
        assert_eq!(outbox.enqueue(BODY, now()).unwrap().seq, 3);
    }

    #[test]
    fn two_files_get_different_outbox_ids() {
        let (a, b) = (TempDb::new(), TempDb::new());
        assert_ne!(a.open().outbox_id().unwrap(), b.open().outbox_id().unwrap());
    }

    #[test]
    fn the_stored_body_carries_the_key_and_never_changes() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let key = outbox.enqueue(BODY, now()).unwrap().key;
        let stored = outbox.entries().unwrap()[0].body.clone();
        let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(value["idempotencyKey"], key.as_str());
        assert_eq!(value["issuedAt"], "2026-11-25T10:00:00.123Z");
        assert_eq!(value["terminalId"], "T7");

        outbox.defer(1, 0, Some(503)).unwrap();
        outbox
            .acknowledge(1, &accepted("inv-1", Completed), 200)
            .unwrap();
        assert_eq!(outbox.entries().unwrap()[0].body, stored);
        assert_eq!(outbox.due(i64::MAX, 10).unwrap().len(), 0);

        let edit = outbox
            .conn
            .execute("UPDATE outbox SET body = '{}' WHERE seq = 1", []);
        assert!(edit.is_err(), "the schema refuses to change a body");
        let edit = outbox
            .conn
            .execute("UPDATE outbox SET key = 'x' WHERE seq = 1", []);
        assert!(edit.is_err(), "the schema refuses to change a key");
        assert!(outbox.conn.execute("DELETE FROM outbox", []).is_err());
        assert_eq!(outbox.entries().unwrap()[0].body, stored);
    }

    #[test]
    fn a_body_with_an_idempotency_key_is_refused_and_stores_nothing() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let keyed = r#"{"terminalId":"T7","idempotencyKey":"mine"}"#;
        assert!(matches!(
            outbox.enqueue(keyed, now()),
            Err(OutboxError::InvalidBody(BodyError::AlreadyKeyed))
        ));
        assert!(matches!(
            outbox.enqueue("[]", now()),
            Err(OutboxError::InvalidBody(BodyError::NotAnObject))
        ));
        assert!(outbox.entries().unwrap().is_empty());
        assert_eq!(outbox.enqueue(BODY, now()).unwrap().seq, 1);
    }

    #[test]
    fn an_entry_is_acknowledged_only_through_the_ack_path() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let key = outbox.enqueue(BODY, now()).unwrap().key;
        outbox.defer(1, 0, None).unwrap();
        outbox.defer(1, 0, Some(503)).unwrap();
        // A frame naming the entry's key gives it an id and a state, not an ack: only
        // the server's answer to this terminal's POST proves the request got through.
        outbox
            .apply_frames(&[event(7, "inv-1", Some(key.as_str()), Completed, None)])
            .unwrap();
        outbox
            .record_state(
                "inv-1",
                Observed {
                    state: Completed,
                    replays: None,
                },
            )
            .unwrap();
        let entry = &outbox.entries().unwrap()[0];
        assert_eq!(entry.sync, SyncStatus::Pending);
        assert_eq!(entry.invoice_id.as_deref(), Some("inv-1"));
        assert_eq!(entry.state, Some(Completed));
        assert_eq!(entry.attempts, 2);
        assert_eq!(outbox.due(i64::MAX, 10).unwrap().len(), 1);

        assert!(outbox
            .acknowledge(1, &accepted("inv-1", Completed), 200)
            .unwrap());
        let entry = &outbox.entries().unwrap()[0];
        assert_eq!(entry.sync, SyncStatus::Acknowledged);
        assert_eq!(entry.attempts, 3);
        assert_eq!(entry.last_status, Some(200));
        assert!(outbox.due(i64::MAX, 10).unwrap().is_empty());
        assert_eq!(outbox.pending_count().unwrap(), 0);
    }

    #[test]
    fn a_settled_entry_is_not_moved_by_a_late_answer() {
        let db = TempDb::new();
        let mut outbox = db.open();
        outbox.enqueue(BODY, now()).unwrap();
        assert!(outbox
            .acknowledge(1, &accepted("inv-1", Queued), 202)
            .unwrap());
        assert!(!outbox.reject(1, 422, "{}").unwrap());
        assert!(!outbox.defer(1, 0, Some(503)).unwrap());
        assert!(!outbox
            .acknowledge(1, &accepted("inv-1", Queued), 200)
            .unwrap());
        let entry = &outbox.entries().unwrap()[0];
        assert_eq!(entry.sync, SyncStatus::Acknowledged);
        assert_eq!(entry.attempts, 1);
        let flip = outbox
            .conn
            .execute("UPDATE outbox SET sync = 'pending'", []);
        assert!(flip.is_err(), "the schema refuses to unsettle an entry");
    }

    #[test]
    fn rejected_entries_are_kept_with_the_servers_error() {
        let db = TempDb::new();
        let mut outbox = db.open();
        outbox.enqueue(BODY, now()).unwrap();
        outbox.enqueue(BODY, now()).unwrap();
        let error = r#"{"error":{"code":"validation_failed","message":"bad","details":[{"path":"items","message":"x"}]}}"#;
        assert!(outbox.reject(1, 400, error).unwrap());
        let reopened = db.open();
        let entries = reopened.entries().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].sync, SyncStatus::Rejected);
        assert_eq!(entries[0].error.as_deref(), Some(error));
        assert_eq!(entries[0].last_status, Some(400));

        let status = reopened.status().unwrap();
        assert_eq!(
            (status.pending, status.acknowledged, status.rejected),
            (1, 0, 1)
        );
        assert_eq!(status.invoices[0].state.as_deref(), Some("rejected"));
        assert_eq!(
            status.invoices[0].error.as_ref().unwrap()["code"],
            "validation_failed"
        );
        assert_eq!(status.invoices[1].state.as_deref(), Some("pending"));
        assert_eq!(status.invoices[1].error, None);
    }

    #[test]
    fn due_skips_entries_waiting_out_their_backoff() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let t0 = now().timestamp_millis();
        for _ in 0..3 {
            outbox.enqueue(BODY, now()).unwrap();
        }
        outbox.defer(1, t0 + 5_000, Some(503)).unwrap();
        let due: Vec<i64> = outbox.due(t0, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(due, [2, 3], "a slow entry never blocks the ones behind it");
        assert_eq!(outbox.due(t0, 1).unwrap()[0].seq, 2);
        assert_eq!(outbox.next_due_after(t0).unwrap(), Some(t0 + 5_000));
        assert_eq!(outbox.due(t0 + 5_000, 10).unwrap()[0].attempts, 1);
    }

    #[test]
    fn state_updates_only_move_forward_and_a_replay_reopens_a_failure() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let key = outbox.enqueue(BODY, now()).unwrap().key;
        let key = Some(key.as_str());
        outbox
            .acknowledge(1, &accepted("inv-1", Queued), 202)
            .unwrap();
        let state = |o: &Outbox| o.entries().unwrap()[0].state;

        outbox
            .apply_frames(&[event(1, "inv-1", key, Processing, Some(0))])
            .unwrap();
        assert_eq!(state(&outbox), Some(Processing));
        outbox
            .apply_frames(&[event(2, "inv-1", key, Queued, Some(0))])
            .unwrap();
        assert_eq!(state(&outbox), Some(Processing), "never backwards");
        outbox
            .apply_frames(&[event(3, "inv-1", key, Failed, Some(0))])
            .unwrap();
        assert_eq!(state(&outbox), Some(Failed));
        outbox
            .apply_frames(&[event(4, "inv-1", key, Completed, Some(0))])
            .unwrap();
        assert_eq!(
            state(&outbox),
            Some(Failed),
            "one final state never replaces another"
        );
        assert!(outbox.unsettled().unwrap().is_empty());

        outbox
            .apply_frames(&[event(5, "inv-1", key, Queued, Some(1))])
            .unwrap();
        assert_eq!(
            state(&outbox),
            Some(Queued),
            "an operator replay: FAILED → QUEUED"
        );
        assert_eq!(outbox.unsettled().unwrap().len(), 1);
        outbox
            .record_state(
                "inv-1",
                Observed {
                    state: Completed,
                    replays: Some(1),
                },
            )
            .unwrap();
        assert_eq!(state(&outbox), Some(Completed));
        assert_eq!(outbox.last_seq().unwrap(), Some(5));
    }

    #[test]
    fn a_failed_entry_reopens_on_queued_without_a_replay_count() {
        let db = TempDb::new();
        let mut outbox = db.open();
        outbox.enqueue(BODY, now()).unwrap();
        outbox
            .acknowledge(1, &accepted("inv-1", Failed), 202)
            .unwrap();
        outbox
            .apply_frames(&[event(9, "inv-1", None, Queued, None)])
            .unwrap();
        assert_eq!(outbox.entries().unwrap()[0].state, Some(Queued));
    }

    #[test]
    fn a_late_post_answer_never_undoes_what_the_socket_said() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let key = outbox.enqueue(BODY, now()).unwrap().key;
        outbox
            .apply_frames(&[event(3, "inv-1", Some(key.as_str()), Completed, Some(0))])
            .unwrap();
        let late = Accepted {
            invoice_id: Some("inv-1".to_owned()),
            observed: Some(Observed {
                state: Queued,
                replays: Some(0),
            }),
        };
        outbox.acknowledge(1, &late, 202).unwrap();
        let entry = &outbox.entries().unwrap()[0];
        assert_eq!(
            (entry.sync, entry.state),
            (SyncStatus::Acknowledged, Some(Completed))
        );
    }

    #[test]
    fn frames_for_other_keys_only_advance_the_seq() {
        let db = TempDb::new();
        let mut outbox = db.open();
        outbox.enqueue(BODY, now()).unwrap();
        outbox
            .acknowledge(1, &accepted("inv-1", Queued), 202)
            .unwrap();
        let applied = outbox
            .apply_frames(&[
                event(10, "inv-9", Some("T8.00000000.0000000001"), Completed, None),
                event(11, "inv-1", Some("not-ours"), Processing, None),
            ])
            .unwrap();
        assert_eq!(applied.updated, 1, "the second matched by invoice id");
        assert_eq!(outbox.entries().unwrap()[0].state, Some(Processing));
        assert_eq!(outbox.last_seq().unwrap(), Some(11));
        outbox
            .apply_frames(&[event(4, "inv-9", None, Completed, None)])
            .unwrap();
        assert_eq!(
            outbox.last_seq().unwrap(),
            Some(11),
            "the stored seq never moves back"
        );
    }

    #[test]
    fn a_resync_stores_the_seq_before_the_first_kept_event() {
        let db = TempDb::new();
        let mut outbox = db.open();
        assert_eq!(outbox.last_seq().unwrap(), None);
        outbox
            .apply_frames(&[event(500, "x", None, Queued, None)])
            .unwrap();
        let applied = outbox
            .apply_frames(&[Frame::Resync {
                reason: "since is ahead of the event log".to_owned(),
                first_seq: 20,
            }])
            .unwrap();
        assert!(applied.resynced);
        assert_eq!(outbox.last_seq().unwrap(), Some(19));
    }

    #[test]
    fn status_shows_acknowledged_entries_with_their_server_state() {
        let db = TempDb::new();
        let mut outbox = db.open();
        let key = outbox.enqueue(BODY, now()).unwrap().key;
        outbox
            .acknowledge(1, &accepted("inv-1", Queued), 202)
            .unwrap();
        let status = outbox.status().unwrap();
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pending": 0, "acknowledged": 1, "rejected": 0,
                "invoices": [ { "key": key.as_str(), "sync": "acknowledged", "state": "QUEUED", "invoiceId": "inv-1", "error": null } ],
                "lastSeq": null, "clockOffsetMs": null
            })
        );
    }

    #[test]
    fn an_ack_body_that_is_not_an_invoice_still_acknowledges() {
        assert_eq!(Accepted::from_body("<html>"), Accepted::default());
        let accepted = Accepted::from_body(r#"{"id":"inv-1","state":"QUEUED","replays":0}"#);
        assert_eq!(accepted.invoice_id.as_deref(), Some("inv-1"));
        assert_eq!(
            accepted.observed,
            Some(Observed {
                state: Queued,
                replays: Some(0)
            })
        );
    }

    #[test]
    fn a_file_from_a_newer_version_is_refused() {
        let db = TempDb::new();
        db.open()
            .conn
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Outbox::open(&db.0),
            Err(OutboxError::NewerSchema { found: 99, .. })
        ));
    }

    #[test]
    fn the_file_runs_in_wal_mode_with_full_sync() {
        let db = TempDb::new();
        let outbox = db.open();
        let mode: String = outbox
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = outbox
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "FULL");
    }

    #[test]
    fn two_connections_enqueue_into_one_file() {
        let db = TempDb::new();
        let mut a = db.open();
        let mut b = db.open();
        let keys = [
            a.enqueue(BODY, now()).unwrap().seq,
            b.enqueue(BODY, now()).unwrap().seq,
            a.enqueue(BODY, now()).unwrap().seq,
        ];
        assert_eq!(keys, [1, 2, 3]);
    }

    #[tokio::test]
    async fn the_shared_outbox_runs_calls_off_the_async_threads() {
        let db = TempDb::new();
        let shared = SharedOutbox::new(db.open());
        let seq = shared
            .call(|o| Ok(o.enqueue(BODY, Utc::now())?.seq))
            .await
            .unwrap();
        assert_eq!(seq, 1);
        assert_eq!(shared.call(|o| o.pending_count()).await.unwrap(), 1);
    }
}
