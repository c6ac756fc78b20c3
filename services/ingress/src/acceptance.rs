//! Accepting one submission: the idempotency algorithm of `POST /invoices`, with no HTTP
//! in it (contract § Idempotency under failure).
//!
//! The broker is the record of keys. A keyed first submission is published on its key's
//! own subject with `Nats-Expected-Last-Subject-Sequence: 0`, so JetStream stores it only
//! if that key has no submission yet: claiming the key and storing the invoice are one
//! atomic step. There is no "being accepted" state anywhere that a dead request could
//! leave behind, so no fault can block a key; and a key's owner is known as long as the
//! stream keeps it (7 days), whatever Redis forgets. MongoDB answers for older keys.
//!
//! In order, for a keyed request:
//! 1. MongoDB's record of the key (batched, bounded by `MONGODB_TIMEOUT_MS`): the stored
//!    invoice → replay (200) or `KeyReused` (422). Unreachable or stalled → go on: the
//!    broker still rules out a second invoice for every key it keeps.
//! 2. Publish (and cache the job state in Redis alongside). Stored → 202. The key's
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
use messaging::{Bus, BusError, Encoded, Envelope};
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
        correlation: Option<&str>,
    ) -> Result<Accepted, AcceptError> {
        let tenant = envelope.invoice.tenant_id.clone();
        if let Some(key) = envelope.invoice.idempotency_key.clone() {
            match self.keys.find(tenant.clone(), key.clone()).await {
                Ok(Some(existing)) => return self.replay(&envelope, existing).await,
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "MongoDB cannot answer for the idempotency key; the broker's record of keys decides")
                }
            }
        }
        self.publish(envelope, correlation).await
    }

    /// Publishes the submission, caching its job state meanwhile.
    async fn publish(
        &self,
        envelope: Envelope,
        correlation: Option<&str>,
    ) -> Result<Accepted, AcceptError> {
        let tenant = envelope.invoice.tenant_id.clone();
        let id = envelope.invoice.id;
        // The job state goes to Redis alongside the publish, not after its ack: the
        // processor reads it on the first delivery, which can come before our ack.
        let message = envelope.encoded();
        let (cached, published) = tokio::join!(
            self.cache.put_job(&message),
            self.bus.publish_submission(&message, correlation)
        );
        match (published, envelope.invoice.idempotency_key.clone()) {
            (Ok(p), _) if !p.duplicate => {
                info!(invoice_id = %id, tenant_id = %tenant, seq = p.sequence, "invoice accepted");
                self.queued(&message, cached.is_ok(), correlation).await;
                Ok(Accepted::New(envelope.invoice))
            }
            // A duplicate of an unkeyed submission can only be our own earlier try.
            (Ok(_), None) => {
                self.queued(&message, cached.is_ok(), correlation).await;
                Ok(Accepted::New(envelope.invoice))
            }
            (Ok(_) | Err(BusError::SubjectTaken), Some(key)) => {
                self.taken(&envelope, &tenant, &key, &message, correlation)
                    .await
            }
            (Err(BusError::Unconfirmed(e)), _) => Err(AcceptError::Unconfirmed(e)),
            (Err(e), _) => {
                // Not accepted, and nobody was told the id: leave nothing behind under it.
                let _ = self.cache.forget_job(&tenant, id).await;
                Err(AcceptError::Unavailable(e.to_string()))
            }
        }
    }

    /// The key's subject holds a submission already: it decides.
    async fn taken(
        &self,
        mine: &Envelope,
        tenant: &TenantId,
        key: &IdempotencyKey,
        message: &Encoded<'_>,
        correlation: Option<&str>,
    ) -> Result<Accepted, AcceptError> {
        let original = self
            .bus
            .submission_of_key(tenant, key)
            .await
            .map_err(|e| AcceptError::Unconfirmed(format!("reading the key's submission: {e}")))?
            .ok_or_else(|| {
                AcceptError::Unconfirmed("the key's submission is not readable yet".into())
            })?;
        if original.invoice.id == mine.invoice.id {
            // Our own earlier try was stored; its ack was lost.
            self.queued(message, true, correlation).await;
            return Ok(Accepted::New(mine.invoice.clone()));
        }
        let _ = self.cache.forget_job(tenant, mine.invoice.id).await;
        self.replay(mine, original).await
    }

    /// The key belongs to `existing`: the same body replays it, another body is refused.
    async fn replay(&self, mine: &Envelope, existing: Envelope) -> Result<Accepted, AcceptError> {
        if existing.fingerprint != mine.fingerprint {
            return Err(AcceptError::KeyReused);
        }
        let tenant = &existing.invoice.tenant_id;
        let latest = self
            .reader
            .current(tenant, existing.invoice.id)
            .await
            .ok()
            .flatten()
            .filter(|c| c.invoice.version() > existing.invoice.version())
            .unwrap_or(existing);
        Ok(Accepted::Replayed(latest.invoice))
    }

    /// The QUEUED event. It normally does not hold up the 202 (the processor publishes
    /// the same event, same id, before PROCESSING). When Redis did not take the job
    /// state, the event log is the only place a `GET` right after the 202 can find the
    /// invoice, so then the answer waits for it.
    async fn queued(&self, message: &Encoded<'_>, cached: bool, correlation: Option<&str>) {
        if cached {
            self.bus.publish_event_detached(message, correlation);
        } else if let Err(e) = self.bus.publish_event(message, correlation).await {
            warn!(error = %e, "QUEUED event not published; the processor publishes it");
        }
    }
}
