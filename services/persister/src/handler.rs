//! One lifecycle event → the batch writer (`batch.rs`) → acked once MongoDB holds it.

use messaging::{consume::Delivery, Bus, Envelope, Handler, Outcome};
use store::Written;
use tracing::{debug, error, warn};

pub struct Persister {
    bus: Bus,
    writer: crate::batch::Batcher,
}

impl Persister {
    pub fn new(bus: Bus, writer: crate::batch::Batcher) -> Self {
        Self { bus, writer }
    }
}

/// An event is a fact: the persister keeps it however often it failed.
#[derive(Debug, thiserror::Error)]
#[error("persister never gives up on an event: {0}")]
pub struct NeverGivesUp(String);

impl Handler for Persister {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let envelope = match Envelope::decode(delivery.payload()) {
            Ok(e) => e,
            Err(e) => return Outcome::Poison(e.to_string()),
        };
        let invoice_id = envelope.invoice.id();
        let (state, created_at) = (envelope.invoice.state(), envelope.invoice.created_at());
        match self.writer.write(envelope).await {
            Ok(Written::Applied | Written::Stale) => {
                debug!(%invoice_id, %state, "event stored");
                if state.is_final() {
                    // Accepted → in the system of record, the pipeline's whole latency.
                    metrics::histogram!("pos_stored_after_acceptance_seconds")
                        .record(created_at.elapsed().as_secs_f64());
                }
                Outcome::Done
            }
            Ok(Written::KeyTaken) => {
                // Two invoices under one key got past ingress: the stream had already
                // discarded the key's first submission and MongoDB could not be asked when
                // the key was retried (ARCHITECTURE.md § Invariants). The first stored wins;
                // the second one's events are copied raw to the dead-letter stream instead
                // of being stored.
                error!(%invoice_id, "idempotency key already owned by another invoice; not stored");
                match self
                    .bus
                    .publish_raw_dead_letter(
                        delivery.payload(),
                        delivery.subject(),
                        "duplicate idempotency key",
                    )
                    .await
                {
                    Ok(_) => Outcome::Done,
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
            Err(e) => {
                warn!(error = %e, %invoice_id, "write failed; will retry");
                Outcome::Retry(e.clone())
            }
        }
    }

    type Error = NeverGivesUp;

    async fn exhausted(&self, _delivery: &Delivery, last_error: String) -> Result<(), Self::Error> {
        // Unreachable with unlimited attempts; keep the message rather than lose it.
        Err(NeverGivesUp(last_error))
    }
}
