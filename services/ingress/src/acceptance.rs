//! Accepting one submission: the idempotency algorithm of `POST /invoices`, with no HTTP
//! in it (contract § Idempotency under failure).
//!
//! The broker is the record of keys. A keyed first submission is published on its key's
//! own subject with `Nats-Expected-Last-Subject-Sequence: 0`, so JetStream stores it only
//! if that key has no submission yet: claiming the key and storing the invoice are one
//! atomic step. There is no "being accepted" state anywhere that a dead request could
//! leave behind, so no fault can block a key; and a key's owner is known as long as the
//! stream keeps it (its newest `INVOICES_MAX_MSGS`, 1 000 000 by default), whatever Redis forgets. MongoDB
//! answers for older keys.
//!
//! In order, for a keyed request:
//! 1. MongoDB's record of the key (batched, bounded by `MONGODB_TIMEOUT_MS`): the stored
//!    invoice → replay (200) or `KeyReused` (422). Unreachable or stalled → go on: the
//!    broker still rules out a second invoice for every key it keeps.
//! 2. Cache the job state in Redis, then publish. Stored → 202. The key's
//!    subject already holds a submission (or the dedupe window says duplicate) → that
//!    submission is the answer: ours from an earlier try (202), another request's with
//!    the same body (200), or with another body (422).
//! 3. Nothing sent (broker disconnected) → `Unavailable`: certainly not accepted. Sent
//!    but never acknowledged → `Unconfirmed`: maybe accepted; a retry with the same key
//!    converges on the one invoice either way.
//!
//! The caller runs [`Acceptor::accept`] in a task of its own, so a client that gives up
//! half-way does not cut the sequence short.

use crate::{lookup::KeyLookup, read::Reader};
use domain::{IdempotencyKey, Invoice, TenantId};
use messaging::{Bus, BusError, Encoded, Envelope, Published};
use tracing::{info, warn};

/// How a submission ended.
#[derive(Debug)]
pub enum Accepted {
    /// A new invoice, durable in the broker (202).
    New(Invoice),
    /// The key's existing invoice, in its freshest known state (200, replayed).
    Replayed(Invoice),
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the idempotency key was already used for a different request body")]
    KeyReused,
    /// Not accepted; nothing is stored.
    #[error("{0}")]
    Unavailable(String),
    /// The outcome is unknown (the broker may have stored it); retry with the same key.
    #[error("{0}")]
    Unconfirmed(String),
}

#[derive(Clone)]
pub struct Acceptor {
    bus: Bus,
    cache: cache::Cache,
    keys: KeyLookup,
    reader: Reader,
}

impl Acceptor {
    pub fn new(bus: Bus, cache: cache::Cache, keys: KeyLookup, reader: Reader) -> Self {
        Self {
            bus,
            cache,
            keys,
            reader,
        }
    }

    pub async fn accept(
        &self,
        envelope: Envelope,
        request_id: Option<&str>,
    ) -> Result<Accepted, AcceptError> {
        let tenant = envelope.invoice.tenant_id().clone();
        if let Some(key) = envelope.invoice.idempotency_key() {
            match self.keys.find(tenant.clone(), key.clone()).await {
                Ok(Some(existing)) => return self.replay(&envelope, existing).await,
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "MongoDB cannot answer for the idempotency key; the broker's record of keys decides");
                }
            }
        }
        self.publish(envelope, request_id).await
    }

    /// Caches the job state, then publishes the submission.
    async fn publish(
        &self,
        envelope: Envelope,
        request_id: Option<&str>,
    ) -> Result<Accepted, AcceptError> {
        let tenant = envelope.invoice.tenant_id().clone();
        let id = envelope.invoice.id();
        // The job state goes to Redis before the publish: the processor reads it on the
        // first delivery, which can come before our ack. Written alongside it (as it
        // was), the delivery sometimes won the race, found no job, and — with MongoDB
        // down — spent its first attempt (seen in
        // `resilience::a_mongodb_outage_alone_holds_…`). Redis is bounded (250 ms), so
        // a stalled Redis delays the accept by at most that.
        let message = envelope.encoded();
        let cached = self.cache.put_job(&message).await;
        let published = self.bus.publish_submission(&message, request_id).await;
        match after_publish(published, envelope.invoice.idempotency_key().is_some()) {
            AfterPublish::Stored(seq) => {
                info!(invoice_id = %id, tenant_id = %tenant, seq, "invoice accepted");
                self.queued(&message, cached.is_ok(), request_id).await;
                Ok(Accepted::New(envelope.invoice))
            }
            AfterPublish::AskTheKey => match envelope.invoice.idempotency_key() {
                Some(key) => {
                    self.taken(&envelope, &tenant, key, &message, request_id)
                        .await
                }
                None => Err(AcceptError::Unconfirmed("a keyless duplicate".into())),
            },
            AfterPublish::Failed(e @ AcceptError::Unavailable(_)) => {
                // Not accepted, and nobody was told the id: leave nothing behind under it.
                let _ = self.cache.forget_job(&tenant, id).await;
                Err(e)
            }
            AfterPublish::Failed(e) => Err(e),
        }
    }

    /// The key's subject holds a submission already: it decides.
    async fn taken(
        &self,
        mine: &Envelope,
        tenant: &TenantId,
        key: &IdempotencyKey,
        message: &Encoded<'_>,
        request_id: Option<&str>,
    ) -> Result<Accepted, AcceptError> {
        let original = self
            .bus
            .submission_of_key(tenant, key)
            .await
            .map_err(|e| AcceptError::Unconfirmed(format!("reading the key's submission: {e}")))?
            .ok_or_else(|| {
                AcceptError::Unconfirmed("the key's submission is not readable yet".into())
            })?;
        match judge(mine, &original) {
            Holder::Mine => {
                // Our own earlier try was stored; its ack was lost.
                self.queued(message, true, request_id).await;
                Ok(Accepted::New(mine.invoice.clone()))
            }
            Holder::SameBody => {
                let _ = self.cache.forget_job(tenant, mine.invoice.id()).await;
                Ok(Accepted::Replayed(self.freshest(original).await))
            }
            Holder::OtherBody => {
                let _ = self.cache.forget_job(tenant, mine.invoice.id()).await;
                Err(AcceptError::KeyReused)
            }
        }
    }

    /// The key belongs to `existing` (MongoDB's record): the same body replays it, another
    /// body is refused.
    async fn replay(&self, mine: &Envelope, existing: Envelope) -> Result<Accepted, AcceptError> {
        match judge(mine, &existing) {
            Holder::OtherBody => Err(AcceptError::KeyReused),
            Holder::Mine | Holder::SameBody => {
                Ok(Accepted::Replayed(self.freshest(existing).await))
            }
        }
    }

    /// `known`, or a later state of it if Redis, MongoDB or the event log has one.
    async fn freshest(&self, known: Envelope) -> Invoice {
        let tenant = known.invoice.tenant_id();
        self.reader
            .current(tenant, known.invoice.id())
            .await
            .ok()
            .flatten()
            .filter(|c| c.invoice.version() > known.invoice.version())
            .unwrap_or(known)
            .invoice
    }

    /// The QUEUED event. It normally does not hold up the 202 (the processor publishes
    /// the same event, same id, before PROCESSING). When Redis did not take the job
    /// state, the event log is the only place a `GET` right after the 202 can find the
    /// invoice, so then the answer waits for it.
    async fn queued(&self, message: &Encoded<'_>, cached: bool, request_id: Option<&str>) {
        if cached {
            self.bus.publish_event_detached(message, request_id);
        } else if let Err(e) = self.bus.publish_event(message, request_id).await {
            warn!(error = %e, "QUEUED event not published; the processor publishes it");
        }
    }
}

/// What the broker's answer to a submission publish means.
#[derive(Debug)]
enum AfterPublish {
    /// Stored now, at this stream sequence: a new invoice.
    Stored(u64),
    /// The key's subject holds a submission already (or the dedupe window saw this id):
    /// that submission decides.
    AskTheKey,
    Failed(AcceptError),
}

fn after_publish(published: Result<Published, BusError>, keyed: bool) -> AfterPublish {
    match published {
        Ok(p) if !p.duplicate => AfterPublish::Stored(p.sequence),
        // A duplicate of a keyless submission can only be our own earlier try (its id
        // is the invoice's).
        Ok(p) if !keyed => AfterPublish::Stored(p.sequence),
        Ok(_) | Err(BusError::SubjectTaken) => AfterPublish::AskTheKey,
        Err(BusError::Unconfirmed(e)) => AfterPublish::Failed(AcceptError::Unconfirmed(e)),
        Err(e) => AfterPublish::Failed(AcceptError::Unavailable(e.to_string())),
    }
}

/// Whose a key is, given the submission that holds it.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// This very request's invoice (an earlier try of ours was stored).
    Mine,
    /// Another request with the same body: a replay.
    SameBody,
    /// Another body: the key is reused.
    OtherBody,
}

fn judge(mine: &Envelope, holder: &Envelope) -> Holder {
    if holder.invoice.id() == mine.invoice.id() {
        Holder::Mine
    } else if holder.fingerprint == mine.fingerprint {
        Holder::SameBody
    } else {
        Holder::OtherBody
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{draft::RawDraft, DraftInvoice, InvoiceId, Timestamp};

    fn submission(quantity: &str) -> Envelope {
        let mut raw = RawDraft {
            idempotency_key: Some("K".into()),
            ..RawDraft::example()
        };
        raw.items[0].quantity = Some(quantity.into());
        let draft = DraftInvoice::parse(raw).unwrap();
        let fingerprint = draft.fingerprint();
        Envelope {
            invoice: Invoice::queued(
                InvoiceId::generate(),
                TenantId::parse("acme").unwrap(),
                draft,
                Timestamp::now(),
            ),
            fingerprint,
        }
    }

    fn ack(duplicate: bool) -> Result<Published, BusError> {
        Ok(Published {
            sequence: 7,
            duplicate,
        })
    }

    #[test]
    fn only_a_fresh_ack_or_a_keyless_duplicate_is_a_new_invoice() {
        assert!(matches!(
            after_publish(ack(false), true),
            AfterPublish::Stored(7)
        ));
        assert!(matches!(
            after_publish(ack(true), false),
            AfterPublish::Stored(7)
        ));
        assert!(matches!(
            after_publish(ack(true), true),
            AfterPublish::AskTheKey
        ));
        assert!(matches!(
            after_publish(Err(BusError::SubjectTaken), true),
            AfterPublish::AskTheKey
        ));
    }

    #[test]
    fn a_publish_that_may_have_been_stored_is_never_called_not_accepted() {
        assert!(matches!(
            after_publish(Err(BusError::Unconfirmed("ack timed out".into())), true),
            AfterPublish::Failed(AcceptError::Unconfirmed(_))
        ));
        assert!(matches!(
            after_publish(Err(BusError::Unavailable("not connected".into())), true),
            AfterPublish::Failed(AcceptError::Unavailable(_))
        ));
    }

    #[test]
    fn the_holder_of_a_key_is_us_a_replay_or_a_reuse() {
        let mine = submission("1");
        assert_eq!(judge(&mine, &mine), Holder::Mine);
        let same_body = submission("1");
        assert_eq!(judge(&mine, &same_body), Holder::SameBody);
        let other_body = submission("2");
        assert_eq!(judge(&mine, &other_body), Holder::OtherBody);
    }
}
