//! Numbering invoices in their tenant's fiscal series, batched per tenant.
//!
//! A series is a chain: each record links to the one before, so its records are made one
//! after another. Rather than every caller racing the others for the next number (one
//! MongoDB round trip per invoice, and a lost race for most of them), each tenant has one
//! task here that takes whatever invoices are waiting and numbers them in one batch
//! ([`Store::number`]: one ordered insert). Other processes' tasks race it per batch, not
//! per invoice; the unique indexes settle every race. The task remembers the head it
//! chained to last, so a batch costs one insert while no other writer appends.
//!
//! Callers: the processor (one [`Numberer`] per process, shared by its deliveries) and
//! `loadgen ceilings` (the same code path, measured alone).

use crate::{Chain, Numbered, Store, StoreError, ToNumber};
use domain::{fiscal::Entry, TenantId};
use std::{collections::HashMap, sync::Mutex, time::Instant};
use tokio::sync::{mpsc, oneshot};

/// Most invoices numbered in one insert.
const MAX_BATCH: usize = 256;
/// Invoices waiting per tenant before a caller waits to hand one over.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Numbered, NumberingError>>;

/// Why an invoice was not numbered this time; every case is worth another try.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NumberingError {
    /// MongoDB failed, or the series stayed contended.
    #[error("numbering: {0}")]
    Store(#[from] StoreError),
    /// The tenant's numbering task ended before it answered.
    #[error("the numbering task of the tenant is gone")]
    TaskGone,
}

/// The per-tenant numbering tasks of one process.
pub struct Numberer {
    store: Store,
    tenants: Mutex<HashMap<TenantId, mpsc::Sender<(ToNumber, Reply)>>>,
}

impl Numberer {
    /// Numbering tasks over `store`, started per tenant on first use.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The record of `entry` (new, or the one an earlier try made), or `Void` when the
    /// invoice gave up in `generation`.
    pub async fn number(&self, entry: Entry, generation: u32) -> Result<Numbered, NumberingError> {
        let tenant = entry.tenant_id.clone();
        let queue = {
            let mut tenants = self
                .tenants
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tenants
                .entry(tenant.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(numberer(self.store.clone(), tenant, rx));
                    tx
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send((ToNumber { entry, generation }, reply))
            .await
            .map_err(|_| NumberingError::TaskGone)?;
        answer.await.map_err(|_| NumberingError::TaskGone)?
    }
}

/// One tenant's numbering: batches whatever is waiting, one insert per batch.
async fn numberer(store: Store, tenant: TenantId, mut queue: mpsc::Receiver<(ToNumber, Reply)>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    let mut chain = Chain::default();
    while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (batch, replies): (Vec<ToNumber>, Vec<Reply>) = waiting.drain(..).unzip();
        let started = Instant::now();
        let result = store.number(&tenant, &batch, &mut chain).await;
        tracing::debug!(
            %tenant,
            size = batch.len(),
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "numbering batch"
        );
        match result {
            Ok(numbered) => {
                for (reply, n) in replies.into_iter().zip(numbered) {
                    let _ = reply.send(Ok(n));
                }
            }
            Err(e) => {
                let e = NumberingError::from(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
