//! One sync run: deliver the pending entries, then settle their states.
//!
//! Data flow:
//! 1. the watcher (if given) starts in the background and gets a short head start
//!    ([`WATCH_HEAD_START`]), so frames for the invoices being sent are already followed;
//! 2. send phase: every pending entry due now is `POST`ed, oldest first, at most
//!    [`MAX_IN_FLIGHT`] at once. Each answer goes through [`policy::decide`] and is
//!    recorded before the entry's slot frees up; an entry waiting out its own backoff
//!    never holds back the ones behind it. The phase sleeps until the earliest
//!    `next_attempt_at` when nothing is due, and ends when nothing is pending or the
//!    timeout passed. A refused token (401/403) ends the run at once;
//! 3. settle phase: up to `settle` (within the timeout) waiting for the watcher to
//!    bring every acknowledged invoice to COMPLETED or FAILED, then one round of
//!    `GET /invoices/{id}` for the rest;
//! 4. the watcher stops, and the outbox's counts are the report.
//!
//! Killing the process at any point is harmless: an entry stays pending until its
//! answer is recorded, and its retry sends the same key and body, which the server
//! answers with the existing invoice (200) instead of a second one.

use crate::{
    client::{error_chain, Client, Reply},
    outbox::{Accepted, Counts, OutboxError, PendingEntry, SharedOutbox},
    policy::{self, Answer, Decision, Jitter},
    refresh,
    watch::Watcher,
};
use chrono::Utc;
use std::{collections::HashSet, time::Duration};
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tracing::{info, warn};

/// Requests in flight at once: enough to drain a day offline in a minute, few enough
/// that a terminal never looks like a flood to the ingress's rate limit.
pub const MAX_IN_FLIGHT: usize = 8;
/// How often the settle phase re-reads the outbox, for states written by another
/// process's watcher (a `watch` running beside `sync`).
pub const SETTLE_POLL: Duration = Duration::from_millis(500);
/// Longest wait for the watcher's first connection before the first POST. Connecting
/// takes milliseconds on a healthy link; a refused one ends the wait at once.
pub const WATCH_HEAD_START: Duration = Duration::from_secs(2);
/// The GET refresh after the settle phase may run this long even when the timeout is
/// used up, so a run that delivered everything also reports fresh states.
pub const REFRESH_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOptions {
    /// Length of the send phase plus the settle wait.
    pub timeout: Duration,
    /// Longest wait for the watcher to bring acknowledged invoices to a final state.
    pub settle: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            settle: Duration::from_secs(10),
        }
    }
}

/// What a run left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub counts: Counts,
    /// `POST`s answered (or failed) during this run.
    pub attempts: usize,
}

impl SyncReport {
    /// Nothing is waiting to reach the server.
    pub fn is_delivered(&self) -> bool {
        self.counts.pending == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the server refused POS_TOKEN (HTTP {status}); set a valid terminal JWT in POS_TOKEN and run sync again ({pending} invoices still pending)")]
    AuthFailed { status: u16, pending: usize },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Runs one sync (see the module docs).
pub async fn sync(
    client: &Client,
    outbox: &SharedOutbox,
    watcher: Option<Watcher>,
    options: SyncOptions,
) -> Result<SyncReport, SyncError> {
    let deadline = Instant::now() + options.timeout;
    let changes = watcher.as_ref().map(Watcher::subscribe);
    let first_attempt_done = watcher.as_ref().map(Watcher::first_attempt_done);
    let _watching = watcher.map(|watcher| {
        AbortOnDrop(tokio::spawn(async move {
            let Err(error) = watcher.run().await;
            warn!(%error, "the WebSocket watcher stopped; states will come from GET");
        }))
    });
    if let Some(mut done) = first_attempt_done {
        let head_start = WATCH_HEAD_START.min(options.timeout);
        // Timing out or a vanished watcher both just mean: start sending.
        let _ = tokio::time::timeout(head_start, done.wait_for(|done| *done)).await;
    }
    let attempts = send_pending(client, outbox, deadline).await?;
    settle(client, outbox, changes, deadline, options.settle).await?;
    let counts = outbox.call(|o| Ok(o.status()?.counts())).await?;
    Ok(SyncReport { counts, attempts })
}

/// The send phase; returns how many attempts were answered or failed.
async fn send_pending(
    client: &Client,
    outbox: &SharedOutbox,
    deadline: Instant,
) -> Result<usize, SyncError> {
    let seed = crate::jitter_seed();
    let mut in_flight: JoinSet<(i64, Result<Attempted, OutboxError>)> = JoinSet::new();
    let mut busy: HashSet<i64> = HashSet::new();
    let mut attempts = 0;
    loop {
        if Instant::now() >= deadline {
            // Aborted requests leave their entries pending: the next run resends them.
            in_flight.abort_all();
            return Ok(attempts);
        }
        let now_ms = Utc::now().timestamp_millis();
        let free = MAX_IN_FLIGHT - in_flight.len();
        if free > 0 {
            // Entries in flight are still due; ask for enough to fill the free slots.
            let limit = free + busy.len();
            let due = outbox.call(move |o| o.due(now_ms, limit)).await?;
            let fresh: Vec<PendingEntry> = due
                .into_iter()
                .filter(|e| !busy.contains(&e.seq))
                .take(free)
                .collect();
            for entry in fresh {
                busy.insert(entry.seq);
                let (client, outbox) = (client.clone(), outbox.clone());
                in_flight.spawn(async move {
                    let seq = entry.seq;
                    (seq, attempt(&client, &outbox, entry, seed).await)
                });
            }
        }
        let wake_ms = if in_flight.len() < MAX_IN_FLIGHT {
            outbox.call(move |o| o.next_due_after(now_ms)).await?
        } else {
            None
        };
        if in_flight.is_empty() && wake_ms.is_none() {
            if outbox.call(|o| o.pending_count()).await? == 0 {
                return Ok(attempts);
            }
            // Another process enqueued an entry that was already due when asked for
            // the next wake-up: the next round's `due` picks it up.
            continue;
        }
        let wake = wake_ms.map(|at| instant_at(at, now_ms));
        tokio::select! {
            Some(joined) = in_flight.join_next() => {
                attempts += 1;
                match joined {
                    Ok((seq, outcome)) => {
                        busy.remove(&seq);
                        if let Attempted::TokenRefused { status } = outcome? {
                            // The others would be refused too; nothing of theirs is lost.
                            in_flight.abort_all();
                            let pending = outbox.call(|o| o.pending_count()).await?;
                            return Err(SyncError::AuthFailed { status, pending });
                        }
                    }
                    Err(join_error) => return Err(OutboxError::Worker(join_error.to_string()).into()),
                }
            }
            () = sleep_until_some(wake) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempted {
    /// The answer (or its absence) is recorded in the outbox.
    Recorded,
    /// 401/403: nothing was recorded, the entry stays exactly as it was.
    TokenRefused { status: u16 },
}

/// One `POST` of one entry, and the recording of its answer.
async fn attempt(
    client: &Client,
    outbox: &SharedOutbox,
    entry: PendingEntry,
    seed: u64,
) -> Result<Attempted, OutboxError> {
    let PendingEntry {
        seq,
        key,
        body,
        attempts,
    } = entry;
    let reply = client.post_invoice(&body).await;
    let received = Utc::now();
    let received_ms = received.timestamp_millis();
    let attempt = attempts.saturating_add(1);
    let mut jitter = Jitter::new(
        seed ^ u64::from(attempt) ^ (seq.unsigned_abs().wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let answer = match &reply {
        Ok(r) => Answer::Reply {
            status: r.status,
            retry_after: r
                .retry_after
                .as_deref()
                .and_then(|v| policy::parse_retry_after(v, received)),
            body: &r.body,
        },
        Err(_) => Answer::Unreachable,
    };
    let decision = policy::decide(&answer, attempt, &mut jitter);
    let (status, answer_body, offset) = match &reply {
        Ok(Reply {
            status, body, date, ..
        }) => (
            Some(*status),
            body.clone(),
            policy::clock_offset_ms(date.as_deref(), received_ms),
        ),
        Err(error) => {
            info!(%key, attempt, error = %error_chain(error), "no answer");
            (None, String::new(), None)
        }
    };
    match decision {
        Decision::AuthFailed => {
            return Ok(Attempted::TokenRefused {
                status: status.unwrap_or_default(),
            })
        }
        Decision::Ack => {
            let accepted = Accepted::from_body(&answer_body);
            let status = status.unwrap_or_default();
            info!(%key, attempt, status, invoice_id = ?accepted.invoice_id, "acknowledged");
            outbox
                .call(move |o| {
                    record_offset(o, offset)?;
                    o.acknowledge(seq, &accepted, status)
                })
                .await?;
        }
        Decision::Retry { after } => {
            info!(%key, attempt, ?status, retry_in_ms = after.as_millis(), "will retry");
            let next =
                received_ms.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
            outbox
                .call(move |o| {
                    record_offset(o, offset)?;
                    o.defer(seq, next, status)
                })
                .await?;
        }
        Decision::Reject => {
            let status = status.unwrap_or_default();
            warn!(%key, status, body = %answer_body, "rejected by the server; kept in the outbox");
            let record = policy::rejection_record(status, &answer_body);
            outbox
                .call(move |o| {
                    record_offset(o, offset)?;
                    o.reject(seq, status, &record)
                })
                .await?;
        }
    }
    Ok(Attempted::Recorded)
}

fn record_offset(
    outbox: &mut crate::outbox::Outbox,
    offset: Option<i64>,
) -> Result<(), OutboxError> {
    match offset {
        Some(offset) => outbox.record_clock_offset(offset),
        None => Ok(()),
    }
}

/// The settle phase (step 3 of the module docs).
async fn settle(
    client: &Client,
    outbox: &SharedOutbox,
    mut changes: Option<watch::Receiver<u64>>,
    deadline: Instant,
    settle: Duration,
) -> Result<(), OutboxError> {
    let settle_deadline = deadline.min(Instant::now() + settle);
    loop {
        if outbox.call(|o| o.unsettled()).await?.is_empty() {
            return Ok(());
        }
        if Instant::now() >= settle_deadline {
            break;
        }
        let changed = async {
            match changes.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            still_watching = changed => {
                if !still_watching {
                    changes = None;
                }
            }
            () = tokio::time::sleep(SETTLE_POLL) => {}
            () = tokio::time::sleep_until(settle_deadline) => {}
        }
    }
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .max(REFRESH_GRACE);
    match tokio::time::timeout(budget, refresh::refresh_unsettled(client, outbox)).await {
        Ok(refreshed) => {
            let refreshed = refreshed?;
            info!(
                asked = refreshed.asked,
                updated = refreshed.updated,
                "states refreshed over HTTP"
            );
        }
        Err(_) => warn!("state refresh ran out of time"),
    }
    Ok(())
}

/// The tokio instant of `at_ms` (ms since the epoch), given that it is `now_ms` now.
fn instant_at(at_ms: i64, now_ms: i64) -> Instant {
    let wait = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Instant::now() + Duration::from_millis(wait)
}

async fn sleep_until_some(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stops the background watcher however the run ends, an early `?` included.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
