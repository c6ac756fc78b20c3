//! The freshest known state of one invoice, from every place that may hold it (contract:
//! "readable at once, whatever its state", also with Redis down or flushed).
//!
//! Redis' job state and MongoDB's record are asked at once and the higher version wins.
//! COMPLETED there is the answer. Otherwise the event log is asked too (the last
//! event on the invoice's own subject), and the highest version of the three wins: Redis
//! holds only ingress's QUEUED, and MongoDB lags the log by the persister's hold and
//! backlog, so PROCESSING, and COMPLETED before the persister stored it, are in the log
//! alone. The log holds every invoice of the newest 2 000 000 events, including one whose
//! job state Redis lost and that MongoDB has not stored yet. "No such invoice" is said
//! only when MongoDB answered and the event log found nothing; any source that could not
//! answer makes it `Unavailable` instead of a false 404 — unless another source knew the
//! invoice, whose state (possibly behind) is then the answer.

use domain::{InvoiceId, InvoiceState, TenantId};
use messaging::{Bus, Envelope};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
#[error("the invoice cannot be read right now: {0}")]
pub struct Unreadable(pub String);

#[derive(Clone)]
pub struct Reader {
    bus: Bus,
    cache: cache::Cache,
    store: store::Store,
}

impl Reader {
    pub fn new(bus: Bus, cache: cache::Cache, store: store::Store) -> Self {
        Self { bus, cache, store }
    }

    pub async fn current(
        &self,
        tenant: &TenantId,
        id: InvoiceId,
    ) -> Result<Option<Envelope>, Unreadable> {
        let (cached, stored) =
            tokio::join!(self.cache.job(tenant, id), self.store.find(tenant, id));
        let cached = cached.unwrap_or_else(|e| {
            warn!(error = %e, "job state unavailable from Redis");
            None
        });
        let (stored, mongo_error) = match stored {
            Ok(s) => (s, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let newest = newer(cached, stored);
        // COMPLETED is for good; FAILED is not (an operator's replay starts a new
        // generation, which the log has first).
        if newest
            .as_ref()
            .is_some_and(|e| e.invoice.state() == InvoiceState::Completed)
        {
            return Ok(newest);
        }
        match self.bus.latest_event(tenant, id).await {
            Ok(Some(event)) => Ok(newer(newest, Some(event))),
            Ok(None) if newest.is_some() => Ok(newest),
            Ok(None) => match mongo_error {
                None => Ok(None),
                // Older than the event log keeps, and MongoDB cannot say.
                Some(e) => Err(Unreadable(e)),
            },
            Err(e) if newest.is_some() => {
                warn!(error = %e, "event log unreadable; answering the state Redis or MongoDB holds");
                Ok(newest)
            }
            Err(e) => Err(Unreadable(format!(
                "{}; event log: {e}",
                mongo_error.unwrap_or_else(|| "not in Redis or MongoDB".into())
            ))),
        }
    }
}

/// The later of two states of one invoice (by version; `b` on a tie); either may be
/// missing.
fn newer(a: Option<Envelope>, b: Option<Envelope>) -> Option<Envelope> {
    // `max_by_key` keeps the last of equal maxima: `b`.
    a.into_iter().chain(b).max_by_key(|e| e.invoice.version())
}
