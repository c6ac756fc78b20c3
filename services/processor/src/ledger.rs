//! Numbering computed invoices in their tenant's fiscal series.
//!
//! A series is a chain: each record links to the one before, so its records are made one
//! after another. Rather than every delivery racing the others for the next number (one
//! MongoDB round trip per invoice, and a lost race for most of them), each tenant has one
//! task here that takes whatever invoices are waiting and numbers them in one batch
//! ([`store::Store::number`]: one ordered insert). Other instances' tasks race it per
//! batch, not per invoice; the unique indexes settle every race. The task remembers the
//! head it chained to last, so a batch costs one insert while no other writer appends.

use domain::{fiscal::Entry, TenantId};
use std::{collections::HashMap, sync::Mutex};
use store::{Chain, Numbered, Store, ToNumber};
use tokio::sync::{mpsc, oneshot};

/// Most invoices numbered in one insert.
const MAX_BATCH: usize = 256;
/// Invoices waiting per tenant before a caller waits to hand one over.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Numbered, String>>;

pub struct Ledger {
    store: Store,
    tenants: Mutex<HashMap<TenantId, mpsc::Sender<(ToNumber, Reply)>>>,
}

impl Ledger {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The record of `entry` (new, or the one an earlier try made), or `Void` when the
    /// invoice gave up in `generation`.
    pub async fn number(&self, entry: Entry, generation: u32) -> Result<Numbered, String> {
        let tenant = entry.tenant_id.clone();
        let queue = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
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
            .map_err(|_| "the numbering task is gone".to_owned())?;
        answer
            .await
            .map_err(|_| "the numbering task dropped the request".to_owned())?
    }
}

/// One tenant's numbering: batches whatever is waiting, one insert per batch.
async fn numberer(store: Store, tenant: TenantId, mut queue: mpsc::Receiver<(ToNumber, Reply)>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    let mut chain = Chain::default();
    while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (batch, replies): (Vec<ToNumber>, Vec<Reply>) = waiting.drain(..).unzip();
        match store.number(&tenant, &batch, &mut chain).await {
            Ok(numbered) => {
                for (reply, n) in replies.into_iter().zip(numbered) {
                    let _ = reply.send(Ok(n));
                }
            }
            Err(e) => {
                let e = format!("numbering: {e}");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
