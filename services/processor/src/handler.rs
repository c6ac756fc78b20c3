//! One delivery of a submission: `handle` is callable without a broker loop, and holds
//! every decision the processor makes about an invoice.

use crate::done::{already_done, JobSources};
use domain::{compute, FiscalRecord, Invoice, InvoiceError, InvoiceState, Timestamp};
use messaging::{consume::Delivery, Bus, DeadLetter, Encoded, Envelope, Handler, Outcome};
use std::time::{Duration, Instant};
use store::{Numbered, Voided};
use tracing::{debug, info, warn};

pub struct Processor {
    bus: Bus,
    store: store::Store,
    cache: cache::Cache,
    ledger: store::Numberer,
    max_attempts: u32,
    ledger_wait: Duration,
}

/// Why a step of handling a submission failed. Each is transient (the delivery is
/// retried) except where the handler maps it to `Poison`.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The submission's payload is not an envelope.
    #[error("the submission does not decode: {0}")]
    Undecodable(#[from] serde_json::Error),
    /// A lifecycle event was not acknowledged by the broker.
    #[error("publishing {state}: {source}")]
    Publish {
        /// The state whose event was being published.
        state: InvoiceState,
        /// The broker's answer.
        source: messaging::BusError,
    },
    /// The dead letter was not acknowledged by the broker.
    #[error("dead-lettering: {0}")]
    DeadLetter(#[source] messaging::BusError),
    /// MongoDB could not void (or read) the invoice's ledger entry.
    #[error("voiding the ledger entry: {0}")]
    Void(#[source] store::StoreError),
    /// The stored state does not allow this step (a bug, or a message from the future).
    #[error(transparent)]
    Transition(#[from] domain::invoice::IllegalTransition),
    /// The invoice cannot be computed (only on the exhausted path, where it once was).
    #[error(transparent)]
    Fault(#[from] domain::Fault),
}

/// Why an attempt ends without its own COMPLETED.
enum NotNumbered {
    /// MongoDB did not number it within the wait: the attempt failed.
    Retry(store::NumberingError),
    /// This generation gave up already (its ledger entry is void): it ends FAILED.
    Void,
}

impl Processor {
    pub fn new(
        bus: Bus,
        store: store::Store,
        cache: cache::Cache,
        max_attempts: u32,
        ledger_wait: Duration,
    ) -> Self {
        Self {
            ledger: store::Numberer::new(store.clone()),
            bus,
            store,
            cache,
            max_attempts,
            ledger_wait,
        }
    }

    /// The fiscal record of the computed `invoice`: waits out a MongoDB outage for up to
    /// `ledger_wait`, telling JetStream the delivery is in progress meanwhile, so the
    /// outage holds invoices at PROCESSING instead of spending their attempts.
    async fn record(
        &self,
        invoice: &Invoice,
        computed: &domain::invoice::Computed,
        delivery: &Delivery,
    ) -> Result<FiscalRecord, NotNumbered> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .ledger
                .number(invoice.entry(computed), invoice.replays())
                .await
            {
                Ok(Numbered::Record(r)) => {
                    metrics::histogram!("pos_numbering_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(r.fiscal());
                }
                Ok(Numbered::Void) => return Err(NotNumbered::Void),
                Err(e) if started.elapsed() + delay < self.ledger_wait => {
                    warn!(error = %e, invoice_id = %invoice.id(), "not numbered yet; waiting for MongoDB");
                    tokio::time::sleep(delay).await;
                    delivery.in_progress().await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(NotNumbered::Retry(e)),
            }
        }
    }

    /// Publishes a state change (the durable fact). Not cached in Redis: a GET that finds
    /// a non-final state asks the event log, which has this one as soon as it is acked.
    async fn emit(
        &self,
        envelope: &Envelope,
        request_id: Option<&str>,
    ) -> Result<(), ProcessError> {
        let message = envelope.encoded();
        self.bus
            .publish_event(&message, request_id)
            .await
            .map_err(|source| ProcessError::Publish {
                state: envelope.invoice.state(),
                source,
            })?;
        let state = envelope.invoice.state();
        debug!(invoice_id = %envelope.invoice.id(), %state, "event published");
        if state.is_final() {
            metrics::counter!("pos_invoices_finished_total", "state" => state.as_str())
                .increment(1);
            metrics::histogram!("pos_final_after_acceptance_seconds", "state" => state.as_str())
                .record(envelope.invoice.created_at().elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        submission: Envelope,
        failed: &Invoice,
    ) -> Result<(), ProcessError> {
        let last_error = failed.error().cloned().unwrap_or(InvoiceError {
            code: "unknown".into(),
            message: String::new(),
        });
        let letter = DeadLetter {
            submission,
            attempts: failed.attempts(),
            last_error,
            dead_at: Timestamp::now(),
        };
        self.bus
            .publish_dead_letter(&letter)
            .await
            .map(|_| ())
            .map_err(ProcessError::DeadLetter)
    }

    /// FAILED event, then the dead letter. Both are idempotent by message id, so a retry
    /// of this after a crash emits nothing twice.
    async fn fail(
        &self,
        submission: Envelope,
        mut invoice: Invoice,
        code: &str,
        message: &str,
        request_id: Option<&str>,
    ) -> Result<(), ProcessError> {
        invoice.fail(code, message, Timestamp::now())?;
        let failed = Envelope {
            invoice,
            fingerprint: submission.fingerprint.clone(),
        };
        self.emit(&failed, request_id).await?;
        self.dead_letter(submission, &failed.invoice).await?;
        warn!(invoice_id = %failed.invoice.id(), code, message, "invoice FAILED and dead-lettered");
        Ok(())
    }
}

impl JobSources for Processor {
    async fn cached(&self, invoice: &Invoice) -> Option<Invoice> {
        let cached = self.cache.job(invoice.tenant_id(), invoice.id()).await;
        cached.ok().flatten().map(|c| c.invoice)
    }

    async fn logged(&self, invoice: &Invoice) -> Result<Option<Invoice>, String> {
        let latest = self
            .bus
            .latest_event(invoice.tenant_id(), invoice.id())
            .await;
        latest
            .map(|l| l.map(|e| e.invoice))
            .map_err(|e| e.to_string())
    }

    async fn stored(&self, invoice: &Invoice) -> Result<Option<Invoice>, String> {
        let stored = self.store.find(invoice.tenant_id(), invoice.id()).await;
        stored
            .map(|s| s.map(|e| e.invoice))
            .map_err(|e| e.to_string())
    }
}

impl Handler for Processor {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let submission = match Envelope::decode(delivery.payload()) {
            Ok(e) => e,
            Err(e) => return Outcome::Poison(e.to_string()),
        };
        let request_id = delivery.request_id();
        let mut invoice = submission.invoice.clone();

        match already_done(self, &invoice, delivery.attempt).await {
            Err(e) => return Outcome::Retry(e),
            Ok(Some(state)) => {
                info!(invoice_id = %invoice.id(), %state, "already final; nothing to do");
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
        if let Err(e) = self.bus.publish_event(&queued, request_id).await {
            return Outcome::Retry(format!("publishing QUEUED: {e}"));
        }
        if let Err(e) = invoice.start_attempt(delivery.attempt, Timestamp::now()) {
            return Outcome::Poison(e.to_string());
        }
        let processing = Envelope {
            invoice: invoice.clone(),
            fingerprint: submission.fingerprint.clone(),
        };
        // PROCESSING's ack and the numbering's MongoDB round trip overlap: the next
        // event (COMPLETED or FAILED) is sent only once PROCESSING is acked, so the
        // log's order holds. A record made for an invoice whose PROCESSING then failed
        // is found by `_id` on the redelivery (ARCHITECTURE.md § Fiscal numbering).
        // A failed PROCESSING ends the attempt at once: `try_join!` drops the numbering
        // (which could otherwise wait out `ledger_wait` for an attempt already lost).
        let emitting = async {
            self.emit(&processing, request_id)
                .await
                .map_err(|e| Outcome::Retry(e.to_string()))
        };
        let computing = async {
            Ok::<_, Outcome>(match compute(&invoice) {
                Ok(computed) => {
                    let fiscal = self.record(&invoice, &computed, delivery).await;
                    Ok((computed, fiscal))
                }
                Err(fault) => Err(fault),
            })
        };
        let computed = match tokio::try_join!(emitting, computing) {
            Ok(((), computed)) => computed,
            Err(outcome) => return outcome,
        };

        match computed {
            Ok((computed, fiscal)) => {
                let fiscal = match fiscal {
                    Ok(f) => f,
                    Err(NotNumbered::Retry(e)) => return Outcome::Retry(e.to_string()),
                    // Another delivery of this generation gave up and voided its entry;
                    // if it died before FAILED was emitted, this delivery's own last
                    // attempt emits it (`exhausted` finds the void in place).
                    Err(NotNumbered::Void) => {
                        return Outcome::Retry("this generation gave up already".into())
                    }
                };
                if let Err(e) = invoice.complete(computed, fiscal, Timestamp::now()) {
                    return Outcome::Poison(e.to_string());
                }
                let completed = Envelope {
                    invoice,
                    fingerprint: submission.fingerprint,
                };
                match self.emit(&completed, request_id).await {
                    Ok(()) => Outcome::Done,
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
            // Permanent: FAILED at once, no retries.
            Err(fault) => match self
                .fail(
                    submission,
                    invoice,
                    fault.code(),
                    &fault.to_string(),
                    request_id,
                )
                .await
            {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Retry(e.to_string()),
            },
        }
    }

    type Error = ProcessError;

    async fn exhausted(&self, delivery: &Delivery, last_error: String) -> Result<(), ProcessError> {
        let submission = Envelope::decode(delivery.payload())?;
        let mut invoice = submission.invoice.clone();
        let attempts = delivery.attempt.min(self.max_attempts);
        invoice.start_attempt(attempts, Timestamp::now())?;
        // A FAILED invoice never has a fiscal record: void its ledger entry first, so no
        // attempt still running elsewhere can number it later. If an attempt numbered it
        // already, it completes with that record instead.
        let voided = self
            .store
            .void(invoice.tenant_id(), invoice.id(), invoice.replays())
            .await
            .map_err(ProcessError::Void)?;
        if let Voided::HasRecord(record) = voided {
            let computed = compute(&invoice)?;
            invoice.complete(computed, record.fiscal(), Timestamp::now())?;
            let completed = Envelope {
                invoice,
                fingerprint: submission.fingerprint,
            };
            info!(invoice_id = %completed.invoice.id(), "numbered by an earlier attempt; COMPLETED instead of FAILED");
            return self.emit(&completed, delivery.request_id()).await;
        }
        let message = format!("gave up after {attempts} attempts: {last_error}");
        self.fail(
            submission,
            invoice,
            "retries_exhausted",
            &message,
            delivery.request_id(),
        )
        .await
    }
}
