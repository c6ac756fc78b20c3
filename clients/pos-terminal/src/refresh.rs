//! The fallback for states the WebSocket did not deliver: `GET /invoices/{id}` for
//! every acknowledged entry whose invoice is not final yet, a few at a time.
//!
//! Used by `sync`'s settle phase and by the watcher after a `resync` frame (events
//! expired before this terminal saw them). Every answer goes through the same
//! forward-only rule as the socket's frames (`state::advance`), so a refresh racing a
//! frame can never move a state back.

use crate::{
    client::{error_chain, Client, Reply},
    outbox::{OutboxError, SharedOutbox},
    policy,
    state::Observed,
};
use futures_util::StreamExt;
use tracing::{debug, warn};

/// GETs in flight at once: enough to refresh a day of invoices in seconds without
/// opening more connections than a terminal's uplink copes with.
pub const MAX_REFRESH_IN_FLIGHT: usize = 8;

/// What a refresh round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Entries asked about.
    pub asked: usize,
    /// Entries whose stored state changed.
    pub updated: usize,
}

/// One round of GETs over the unsettled entries that know their invoice id.
pub async fn refresh_unsettled(
    client: &Client,
    outbox: &SharedOutbox,
) -> Result<Refreshed, OutboxError> {
    let ids: Vec<String> = outbox
        .call(|o| o.unsettled())
        .await?
        .into_iter()
        .filter_map(|u| u.invoice_id)
        .collect();
    let asked = ids.len();
    let answers = futures_util::stream::iter(ids)
        .map(|id| async move {
            let reply = client.get_invoice(&id).await;
            (id, reply, chrono::Utc::now().timestamp_millis())
        })
        .buffer_unordered(MAX_REFRESH_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut updated = 0;
    for (id, reply, received_at) in answers {
        match reply {
            Ok(reply) => {
                if let Some(offset) = policy::clock_offset_ms(reply.date.as_deref(), received_at) {
                    outbox.call(move |o| o.record_clock_offset(offset)).await?;
                }
                if let Some(news) = observed_in(&id, &reply) {
                    let changed = outbox.call(move |o| o.record_state(&id, news)).await?;
                    updated += usize::from(changed);
                }
            }
            Err(error) => {
                debug!(invoice_id = %id, error = %error_chain(&error), "state refresh got no answer");
            }
        }
    }
    Ok(Refreshed { asked, updated })
}

fn observed_in(id: &str, reply: &Reply) -> Option<Observed> {
    if reply.status != 200 {
        warn!(invoice_id = %id, status = reply.status, body = %reply.body, "state refresh refused");
        return None;
    }
    let invoice: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    Observed::from_invoice(&invoice)
}
