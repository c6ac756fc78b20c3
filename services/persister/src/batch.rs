//! Write coalescing: events arriving together are written together, and only the
//! newest event of each invoice is written at all.
//!
//! An invoice's QUEUED, PROCESSING and COMPLETED events reach the persister within a few
//! milliseconds of each other, and every write is a majority-acknowledged MongoDB round
//! trip. The handler hands each event to [`Batcher::write`]; one task collects what
//! arrives within `linger` (or `max_batch` events), keeps the highest version per
//! invoice, writes those in one `update` command ([`Store::apply_many`]), and answers
//! every waiter with the outcome of its invoice's write. A superseded event is done once its successor is stored: the stored
//! version is then higher than its own, exactly what a separate write would have found.

use cache::Cache;
use messaging::Envelope;
use std::collections::HashMap;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::time::Duration;
use store::{Store, Written};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{info, warn};

/// Write rounds in flight at once (each one `update` command of up to `max_batch`
/// statements): while one waits for the journal, the next fills.
const MAX_ROUNDS_IN_FLIGHT: usize = 8;

type Reply = oneshot::Sender<Result<Written, String>>;

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Envelope, Reply)>,
}

impl Batcher {
    /// `max_batch` bounds one round of writes; `linger` is the longest an event waits for
    /// company (it adds at most that to the persist latency when traffic is light).
    pub fn start(store: Store, cache: Cache, max_batch: usize, linger: Duration) -> Self {
        // Bounded: handlers wait here when MongoDB is slower than the consumer.
        let (tx, mut rx) = mpsc::channel::<(Envelope, Reply)>(max_batch * 2);
        // Rounds in flight at once: while one waits for MongoDB the next one fills, so a
        // slow write never stalls collection.
        let rounds = Arc::new(Semaphore::new(MAX_ROUNDS_IN_FLIGHT));
        let redis_ok = Arc::new(AtomicBool::new(true));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::sleep(linger);
                tokio::pin!(deadline);
                while batch.len() < max_batch {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(item) => batch.push(item),
                            None => break,
                        },
                        () = &mut deadline => break,
                    }
                }
                let Ok(permit) = rounds.clone().acquire_owned().await else {
                    break;
                };
                let (store, cache, redis_ok) = (store.clone(), cache.clone(), redis_ok.clone());
                tokio::spawn(async move {
                    write_batch(&store, &cache, &redis_ok, batch).await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    pub async fn write(&self, envelope: Envelope) -> Result<Written, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((envelope, reply))
            .await
            .map_err(|_| "the batch writer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the batch writer dropped the write".to_owned())?
    }
}

async fn write_batch(
    store: &Store,
    cache: &Cache,
    redis_ok: &AtomicBool,
    batch: Vec<(Envelope, Reply)>,
) {
    // Per invoice: the newest envelope, and everyone waiting on that invoice.
    let mut groups: HashMap<domain::InvoiceId, (Envelope, Vec<Reply>)> = HashMap::new();
    for (envelope, reply) in batch {
        match groups.get_mut(&envelope.invoice.id) {
            Some((newest, waiters)) => {
                if envelope.invoice.version() > newest.invoice.version() {
                    *newest = envelope;
                }
                waiters.push(reply);
            }
            None => {
                groups.insert(envelope.invoice.id, (envelope, vec![reply]));
            }
        }
    }
    let (newest, waiters): (Vec<Envelope>, Vec<Vec<Reply>>) = groups.into_values().unzip();
    let outcomes = store.apply_many(&newest).await;
    let mut settled = Vec::with_capacity(newest.len());
    for ((envelope, outcome), waiters) in newest.iter().zip(outcomes).zip(waiters) {
        if let Ok(Written::Applied | Written::Stale) = outcome {
            // MongoDB holds this version (or a later one).
            settled.push(cache::Stored {
                tenant: &envelope.invoice.tenant_id,
                id: envelope.invoice.id,
                key: envelope.invoice.idempotency_key.as_ref(),
                is_final: envelope.invoice.state.is_final(),
            });
        }
        let outcome = outcome.map_err(|e| e.to_string());
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
    // After the acks: Redis only loses what MongoDB now answers for. Best effort: if it
    // fails, the keys expire by their own (longer) TTLs.
    if settled.is_empty() {
        return;
    }
    match cache.settle(&settled).await {
        Ok(()) => {
            if !redis_ok.swap(true, Ordering::Relaxed) {
                info!("settling Redis keys again");
            }
        }
        Err(e) => {
            if redis_ok.swap(false, Ordering::Relaxed) {
                warn!(error = %e, "cannot settle Redis keys; they expire by their own TTLs");
            }
        }
    }
}
