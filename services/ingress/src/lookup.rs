//! The idempotency-key lookup in MongoDB, batched across concurrent requests.
//!
//! Every keyed POST asks MongoDB whether the key is already taken (the broker judges the
//! keys it still keeps; MongoDB answers for older ones). One query per request made the
//! lookup MongoDB's most frequent operation; here requests that arrive while earlier
//! lookups are in flight share one query per tenant (`$in`, answered by the unique index).
//! Nothing waits for company: a lone request is sent at once, so batching costs no
//! latency at low load and happens by itself at high load.

use domain::{IdempotencyKey, TenantId};
use messaging::Envelope;
use std::{collections::HashMap, sync::Arc};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Lookups in flight at once; requests arriving meanwhile queue for the next batch.
const MAX_IN_FLIGHT: usize = 4;
/// Most keys sent in one batch (over all tenants).
const MAX_KEYS: usize = 256;

type Reply = oneshot::Sender<Result<Option<Envelope>, String>>;

#[derive(Clone)]
pub struct KeyLookup {
    tx: mpsc::Sender<(TenantId, IdempotencyKey, Reply)>,
}

impl KeyLookup {
    pub fn start(store: store::Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<(TenantId, IdempotencyKey, Reply)>(MAX_KEYS * 4);
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Waiting for a free slot is what lets a batch form.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_KEYS {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                tokio::spawn(async move {
                    answer(&store, batch).await;
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    /// The invoice holding `key` in MongoDB, if any.
    pub async fn find(
        &self,
        tenant: TenantId,
        key: IdempotencyKey,
    ) -> Result<Option<Envelope>, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((tenant, key, reply))
            .await
            .map_err(|_| "the key lookup stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the key lookup dropped the request".to_owned())?
    }
}

async fn answer(store: &store::Store, batch: Vec<(TenantId, IdempotencyKey, Reply)>) {
    let mut by_tenant: HashMap<TenantId, Vec<(IdempotencyKey, Reply)>> = HashMap::new();
    for (tenant, key, reply) in batch {
        by_tenant.entry(tenant).or_default().push((key, reply));
    }
    let queries = by_tenant.into_iter().map(|(tenant, waiting)| async move {
        let keys: Vec<&IdempotencyKey> = waiting.iter().map(|(k, _)| k).collect();
        match store.find_by_keys(&tenant, &keys).await {
            Ok(found) => {
                let found: HashMap<&str, &Envelope> = found
                    .iter()
                    .filter_map(|e| {
                        e.invoice
                            .idempotency_key()
                            .as_ref()
                            .map(|k| (k.as_str(), e))
                    })
                    .collect();
                for (key, reply) in waiting {
                    let _ = reply.send(Ok(found.get(key.as_str()).map(|e| (*e).clone())));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for (_, reply) in waiting {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    });
    futures_util::future::join_all(queries).await;
}
