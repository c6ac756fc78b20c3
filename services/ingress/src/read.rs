//! The freshest known state of one invoice, from every place that may hold it (contract:
//! "readable at once, whatever its state", also with Redis down or flushed).
//!
//! Redis' job state and MongoDB's record are asked at once and the higher version wins.
//! When neither has the invoice, the event log is asked (the last event on the invoice's
//! own subject): it holds every invoice of the newest 2 000 000 events, including one whose
//! job state Redis lost and that MongoDB has not stored yet. "No such invoice" is said
//! only when MongoDB answered and the event log found nothing; any source that could not
//! answer makes it `Unavailable` instead of a false 404.

use domain::{InvoiceId, TenantId};
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
        let newest = match (cached, stored) {
            (Some(c), Some(s)) => Some(if c.invoice.version() > s.invoice.version() {
                c
            } else {
                s
            }),
            (c, s) => c.or(s),
        };
        if newest.is_some() {
            return Ok(newest);
        }
        match self.bus.latest_event(tenant, id).await {
            Ok(Some(event)) => Ok(Some(event)),
            Ok(None) => match mongo_error {
                None => Ok(None),
                // Older than the event log keeps, and MongoDB cannot say.
                Some(e) => Err(Unreadable(e)),
            },
            Err(e) => Err(Unreadable(format!(
                "{}; event log: {e}",
                mongo_error.unwrap_or_else(|| "not in Redis or MongoDB".into())
            ))),
        }
    }
}
