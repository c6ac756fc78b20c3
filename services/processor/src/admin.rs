//! Operator endpoints (NATS request/reply, on every processor instance; one answers):
//! - `<ns>.admin.dlq.list`   `{"tenantId"?, "from"?, "limit"?}` → one page of dead letters
//!   (at most 500, default 100) and `next`, the `from` of the next page (`null` at the end)
//! - `<ns>.admin.dlq.replay` `{"invoiceId"? , "tenantId"?, "all"?}` → how many were
//!   replayed (the first 100 ids listed); reads the stream a page at a time
//! - `<ns>.admin.stats`      → the queue figures of `/health`
//!
//! A replay is the one way back in the lifecycle (FAILED → QUEUED): it starts a new
//! generation of the invoice (same id, same idempotency key), publishes it again as a
//! submission and a QUEUED event, and removes the letter. The system of record decides
//! what may be replayed, so a letter replayed twice is replayed once.

use domain::{invoice::IllegalTransition, InvoiceId, InvoiceState, TenantId, Timestamp};
use messaging::{
    admin::{AdminFailure, StoredDeadLetter},
    Bus, BusError, Envelope,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    invoice_id: Option<String>,
    tenant_id: Option<String>,
    #[serde(default)]
    all: bool,
    /// `dlq.list` only: the first stream sequence to look at.
    from: Option<u64>,
    /// `dlq.list` only: page size.
    limit: Option<usize>,
}

/// Largest `dlq.list` page, and the page `dlq.replay` works through the stream with.
const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 100;
/// Ids listed in a replay's answer (the counts are always complete).
const LISTED_IDS: usize = 100;

impl Selector {
    fn parse(body: &[u8]) -> Result<Self, AdminFailure> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(body)
            .map_err(|e| AdminFailure::BadRequest(format!("bad request body: {e}")))
    }

    fn matches(&self, letter: &StoredDeadLetter) -> bool {
        let Some(l) = &letter.letter else {
            return false;
        };
        let inv = &l.submission.invoice;
        self.invoice_id
            .as_deref()
            .is_none_or(|id| inv.id().to_string() == id)
            && self
                .tenant_id
                .as_deref()
                .is_none_or(|t| inv.tenant_id().as_str() == t)
    }
}

pub async fn register(
    bus: &Bus,
    store: &store::Store,
) -> Result<messaging::Service, messaging::BusError> {
    let service = bus
        .announce(
            "processor",
            "Computes invoices; operator endpoints for the dead-letter stream",
        )
        .await?;
    let b = bus.clone();
    bus.serve_admin(&service, "dlq-list", "dlq.list", move |body| {
        let bus = b.clone();
        async move { list(&bus, &Selector::parse(&body)?).await }
    })
    .await?;
    let (b, s) = (bus.clone(), store.clone());
    bus.serve_admin(&service, "dlq-replay", "dlq.replay", move |body| {
        let (bus, store) = (b.clone(), s.clone());
        async move { replay(&bus, &store, &Selector::parse(&body)?).await }
    })
    .await?;
    let b = bus.clone();
    bus.serve_admin(&service, "stats", "stats", move |_| {
        let bus = b.clone();
        async move { Ok(json!(bus.queue_stats().await?)) }
    })
    .await?;
    Ok(service)
}

async fn list(bus: &Bus, selector: &Selector) -> Result<Value, AdminFailure> {
    let limit = selector.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    // Scans at most a few pages' worth of sequences for a filtered list, so one
    // request stays bounded; `next` lets the operator go on.
    let mut from = selector.from.unwrap_or(0);
    let mut entries = Vec::new();
    let mut next = None;
    'pages: for _ in 0..4 {
        let (letters, after) = bus.dead_letters_page(from, limit).await?;
        for l in letters {
            if l.letter.is_some() && !selector.matches(&l) {
                continue;
            }
            entries.push(match &l.letter {
                Some(d) => json!({
                    "seq": l.sequence, "subject": l.subject,
                    "invoiceId": d.submission.invoice.id(), "tenantId": d.submission.invoice.tenant_id(),
                    "attempts": d.attempts, "lastError": d.last_error, "deadAt": d.dead_at,
                }),
                None => json!({ "seq": l.sequence, "subject": l.subject, "undecodable": true }),
            });
            if entries.len() == limit {
                next = Some(l.sequence + 1);
                break 'pages;
            }
        }
        next = after;
        match after {
            Some(seq) => from = seq,
            None => break,
        }
    }
    Ok(json!({ "count": entries.len(), "deadLetters": entries, "next": next }))
}

async fn replay(
    bus: &Bus,
    store: &store::Store,
    selector: &Selector,
) -> Result<Value, AdminFailure> {
    if selector.invoice_id.is_none() && selector.tenant_id.is_none() && !selector.all {
        return Err(AdminFailure::BadRequest(
            "name an invoiceId, a tenantId, or set \"all\": true".into(),
        ));
    }
    let (mut replayed, mut skipped) = (Vec::new(), Vec::new());
    let (mut replayed_count, mut skipped_count) = (0usize, 0usize);
    let mut from = Some(0);
    while let Some(start) = from {
        let (letters, after) = bus.dead_letters_page(start, DEFAULT_PAGE).await?;
        from = after;
        for stored in letters.into_iter().filter(|l| selector.matches(l)) {
            let Some(letter) = stored.letter else {
                continue;
            };
            let id = letter.submission.invoice.id();
            match replay_one(bus, store, stored.sequence, letter).await {
                Ok(None) => {
                    replayed_count += 1;
                    if replayed.len() < LISTED_IDS {
                        replayed.push(json!(id));
                    }
                }
                Ok(Some(reason)) => {
                    skipped_count += 1;
                    if skipped.len() < LISTED_IDS {
                        skipped.push(json!({ "invoiceId": id, "reason": reason }));
                    }
                }
                Err(e) => {
                    let text = format!("replaying {id}: {e} (replayed so far: {replayed_count})");
                    return Err(match e {
                        // The letter and the system of record disagree: trying again
                        // changes nothing.
                        ReplayError::Transition(_) => AdminFailure::BadRequest(text),
                        ReplayError::Store(_) | ReplayError::Bus(_) => {
                            AdminFailure::Unavailable(text)
                        }
                    });
                }
            }
        }
    }
    Ok(json!({
        "replayed": replayed, "skipped": skipped,
        "replayedCount": replayed_count, "skippedCount": skipped_count,
    }))
}

/// Why one letter could not be replayed.
#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("the system of record: {0}")]
    Store(#[from] store::StoreError),
    #[error("the broker: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Transition(#[from] IllegalTransition),
}

/// `Ok(None)` when replayed, `Ok(Some(reason))` when there was nothing to replay.
async fn replay_one(
    bus: &Bus,
    store: &store::Store,
    seq: u64,
    letter: messaging::DeadLetter,
) -> Result<Option<String>, ReplayError> {
    let submission = letter.submission;
    let (tenant, id): (TenantId, InvoiceId) = (
        submission.invoice.tenant_id().clone(),
        submission.invoice.id(),
    );
    // A later generation in the broker or in MongoDB: this letter was replayed already
    // (a replay whose event or letter deletion failed leaves the letter behind). The
    // broker is asked first — it holds the replay before MongoDB does, and the
    // submissions' 2-minute dedupe window does not stop a second replay asked later —
    // and MongoDB only if it says no.
    let generation = submission.invoice.replays();
    let in_broker = bus.holds_later_generation(&submission.invoice).await?;
    let stored = if in_broker {
        None
    } else {
        store.find(&tenant, id).await?
    };
    if in_broker
        || stored
            .as_ref()
            .is_some_and(|s| s.invoice.replays() > generation)
    {
        bus.delete_dead_letter(seq).await?;
        return Ok(Some("already replayed".into()));
    }
    let mut invoice = match stored {
        Some(s) if s.invoice.state() == InvoiceState::Failed => s.invoice,
        Some(s) if s.invoice.replays() == generation => {
            return Ok(Some(format!(
                "invoice is {} in the system of record; not replayed yet (persister lagging?)",
                s.invoice.state()
            )));
        }
        // Not in the system of record (yet): rebuild the failure from the letter.
        _ => {
            let mut inv = submission.invoice.clone();
            inv.start_attempt(letter.attempts.max(1), Timestamp::now())?;
            inv.fail(
                &letter.last_error.code,
                &letter.last_error.message,
                Timestamp::now(),
            )?;
            inv
        }
    };
    invoice.replay(Timestamp::now())?;
    let envelope = Envelope {
        invoice,
        fingerprint: submission.fingerprint,
    };
    let message = envelope.encoded();
    bus.publish_submission(&message, None).await?;
    bus.publish_event(&message, None).await?;
    bus.delete_dead_letter(seq).await?;
    tracing::info!(invoice_id = %id, replays = envelope.invoice.replays(), "dead letter replayed");
    Ok(None)
}
