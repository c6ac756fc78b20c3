//! One delivery of a submission: `handle` is callable without a broker loop, and holds
//! every decision the processor makes about an invoice.

use domain::{compute, Invoice, InvoiceError, InvoiceState, Timestamp};
use messaging::{consume::Delivery, Bus, DeadLetter, Encoded, Envelope, Handler, Outcome};
use tracing::{info, warn};

pub struct Processor {
    bus: Bus,
    store: store::Store,
    cache: cache::Cache,
    max_attempts: u32,
}

impl Processor {
    pub fn new(bus: Bus, store: store::Store, cache: cache::Cache, max_attempts: u32) -> Self {
        Self {
            bus,
            store,
            cache,
            max_attempts,
        }
    }

    /// Publishes a state change (the durable fact), then caches it (best effort).
    async fn emit(&self, envelope: &Envelope, correlation: Option<&str>) -> Result<(), String> {
        let message = envelope.encoded();
        self.bus
            .publish_event(&message, correlation)
            .await
            .map_err(|e| format!("publishing {}: {e}", envelope.invoice.state))?;
        if let Err(e) = self.cache.put_job(&message).await {
            warn!(error = %e, "job state not cached");
        }
        Ok(())
    }

    /// The final state this generation of the invoice already reached, if any: then a
    /// redelivery after a crash, or a submission of a finished generation, is done.
    ///
    /// A first delivery asks Redis first: ingress cached the job as QUEUED a moment ago,
    /// and a cached state is never ahead of the truth (it is written after the event is
    /// published), so a non-final one means there is work to do. A redelivery, or a job
    /// Redis does not know (expired, flushed, Redis down), asks MongoDB, the system of
    /// record. One Redis read instead of one MongoDB read per invoice on the hot path.
    async fn already_done(
        &self,
        invoice: &Invoice,
        attempt: u32,
    ) -> Result<Option<InvoiceState>, String> {
        let done = |latest: &Invoice| {
            (latest.replays > invoice.replays
                || (latest.replays == invoice.replays && latest.state.is_final()))
            .then_some(latest.state)
        };
        if attempt <= 1 {
            if let Ok(Some(cached)) = self.cache.job(&invoice.tenant_id, invoice.id).await {
                return Ok(done(&cached.invoice));
            }
        }
        match self.store.find(&invoice.tenant_id, invoice.id).await {
            Err(e) => Err(e.to_string()),
            Ok(stored) => Ok(stored.and_then(|s| done(&s.invoice))),
        }
    }

    async fn dead_letter(&self, submission: Envelope, failed: &Invoice) -> Result<(), String> {
        let last_error = failed.error.clone().unwrap_or(InvoiceError {
            code: "unknown".into(),
            message: String::new(),
        });
        let letter = DeadLetter {
            submission,
            attempts: failed.attempts,
            last_error,
            dead_at: Timestamp::now(),
        };
        self.bus
            .publish_dead_letter(&letter)
            .await
            .map(|_| ())
            .map_err(|e| format!("dead-lettering: {e}"))
    }

    /// FAILED event, then the dead letter. Both are idempotent by message id, so a retry
    /// of this after a crash emits nothing twice.
    async fn fail(
        &self,
        submission: Envelope,
        mut invoice: Invoice,
        code: &str,
        message: &str,
        correlation: Option<&str>,
    ) -> Result<(), String> {
        invoice
            .fail(code, message, Timestamp::now())
            .map_err(|e| e.to_string())?;
        let failed = Envelope {
            invoice,
            fingerprint: submission.fingerprint.clone(),
        };
        self.emit(&failed, correlation).await?;
        self.dead_letter(submission, &failed.invoice).await?;
        warn!(invoice_id = %failed.invoice.id, code, message, "invoice FAILED and dead-lettered");
        Ok(())
    }
}

impl Handler for Processor {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let submission = match Envelope::decode(delivery.payload()) {
            Ok(e) => e,
            Err(e) => return Outcome::Poison(e.to_string()),
        };
        let correlation = delivery.correlation();
        let mut invoice = submission.invoice.clone();

        match self.already_done(&invoice, delivery.attempt).await {
            Err(e) => return Outcome::Retry(e),
            Ok(Some(state)) => {
                info!(invoice_id = %invoice.id, %state, "already final; nothing to do");
                return Outcome::Done;
            }
            Ok(None) => {}
        }

        // The QUEUED event first, under the id ingress gave it (JetStream drops whichever
        // copy comes second): ingress publishes it only after the submission's ack, so
        // without this PROCESSING could precede QUEUED in the log.
        let queued = Encoded {
            envelope: &submission,
            // The submission's payload is the QUEUED envelope already.
            bytes: delivery.payload_bytes(),
        };
        if let Err(e) = self.bus.publish_event(&queued, correlation).await {
            return Outcome::Retry(format!("publishing QUEUED: {e}"));
        }
        if let Err(e) = invoice.start_attempt(delivery.attempt, Timestamp::now()) {
            return Outcome::Poison(e.to_string());
        }
        let processing = Envelope {
            invoice: invoice.clone(),
            fingerprint: submission.fingerprint.clone(),
        };
        if let Err(e) = self.emit(&processing, correlation).await {
            return Outcome::Retry(e);
        }

        match compute(&invoice) {
            Ok(computed) => {
                if let Err(e) = invoice.complete(computed, Timestamp::now()) {
                    return Outcome::Poison(e.to_string());
                }
                let completed = Envelope {
                    invoice,
                    fingerprint: submission.fingerprint,
                };
                match self.emit(&completed, correlation).await {
                    Ok(()) => Outcome::Done,
                    Err(e) => Outcome::Retry(e),
                }
            }
            // Permanent: FAILED at once, no retries.
            Err(fault) => match self
                .fail(
                    submission,
                    invoice,
                    fault.code(),
                    &fault.to_string(),
                    correlation,
                )
                .await
            {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Retry(e),
            },
        }
    }

    async fn exhausted(&self, delivery: &Delivery, last_error: String) -> Result<(), String> {
        let submission = Envelope::decode(delivery.payload()).map_err(|e| e.to_string())?;
        let mut invoice = submission.invoice.clone();
        let attempts = delivery.attempt.min(self.max_attempts);
        invoice
            .start_attempt(attempts, Timestamp::now())
            .map_err(|e| e.to_string())?;
        let message = format!("gave up after {attempts} attempts: {last_error}");
        self.fail(
            submission,
            invoice,
            "retries_exhausted",
            &message,
            delivery.correlation(),
        )
        .await
    }
}
