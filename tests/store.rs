//! The system of record under concurrency: redelivered, reordered and racing writes of
//! one invoice's events leave exactly one document in its highest state.

use crate::support::{stack::infra_settings, unique, Infra};
use domain::{Invoice, InvoiceId, TenantId, Timestamp};
use messaging::Envelope;
use store::{Store, Written};

fn lifecycle(tenant: &TenantId) -> Vec<Envelope> {
    let draft = crate::support::sample_draft(None);
    let queued = Invoice::queued(
        InvoiceId::generate(),
        tenant.clone(),
        draft,
        Timestamp::now(),
    );
    let mut processing = queued.clone();
    processing.start_attempt(1, Timestamp::now()).unwrap();
    let mut completed = processing.clone();
    completed
        .complete(domain::compute(&completed).unwrap(), Timestamp::now())
        .unwrap();
    [queued, processing, completed]
        .into_iter()
        .map(|invoice| Envelope {
            invoice,
            fingerprint: "f".into(),
        })
        .collect()
}

/// A store on a database of its own, and a tenant nobody else uses.
async fn fresh_store() -> (Store, TenantId) {
    let infra = Infra::from_env();
    let settings = infra_settings(&infra, &unique("s"), &unique("s"));
    let store = Store::connect(&settings.mongodb_uri, &settings.mongodb_db)
        .await
        .unwrap();
    (store, TenantId::parse(unique("shop")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_and_reordered_event_writes_keep_one_document_in_its_latest_state() {
    let (store, tenant) = fresh_store().await;
    let invoices: Vec<_> = (0..50).map(|_| lifecycle(&tenant)).collect();
    // Every event of every invoice three times (redeliveries), all at once, newest first.
    let writes = invoices
        .iter()
        .flat_map(|events| events.iter().rev().cycle().take(9))
        .map(|e| store.apply(e));
    let results = futures_util::future::join_all(writes).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Written::Applied | Written::Stale))),
        "{results:?}"
    );
    for events in &invoices {
        let stored = store
            .find(&tenant, events[0].invoice.id)
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(stored.invoice.state, domain::InvoiceState::Completed);
    }
    assert_eq!(store.count(&tenant, None).await.unwrap(), 50);
    // A late QUEUED redelivery cannot move a COMPLETED invoice back.
    assert_eq!(store.apply(&invoices[0][0]).await.unwrap(), Written::Stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_lookup_uses_the_unique_index_not_a_scan_of_the_tenant() {
    let (store, tenant) = fresh_store().await;
    for _ in 0..30 {
        store.apply(&lifecycle(&tenant)[0]).await.unwrap();
    }
    let key = domain::IdempotencyKey::parse("absent-key").unwrap();
    let plan = store.explain_key_lookup(&tenant, &key).await.unwrap();
    let stats = plan.get_document("executionStats").unwrap();
    let examined = |field: &str| {
        stats
            .get_i32(field)
            .map(i64::from)
            .or_else(|_| stats.get_i64(field))
            .unwrap()
    };
    assert_eq!(examined("totalDocsExamined"), 0, "{plan}");
    assert!(examined("totalKeysExamined") <= 1, "{plan}");
    assert!(
        plan.to_string().contains("tenant_idempotency_key"),
        "{plan}"
    );
}
