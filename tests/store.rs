//! The system of record under concurrency: redelivered, reordered and racing writes of
//! one invoice's events leave exactly one document in its highest state.

use crate::support::{stack::infra_settings, unique, Infra};
use domain::{Invoice, InvoiceId, TenantId, Timestamp};
use messaging::Envelope;
use store::{Store, Written};

/// One invoice's QUEUED, PROCESSING and COMPLETED events (also used by `cache.rs`).
pub(crate) fn lifecycle(tenant: &TenantId) -> Vec<Envelope> {
    lifecycle_keyed(tenant, None)
}

fn lifecycle_keyed(tenant: &TenantId, key: Option<&str>) -> Vec<Envelope> {
    let draft = crate::support::sample_draft(key);
    let queued = Invoice::queued(
        InvoiceId::generate(),
        tenant.clone(),
        draft,
        Timestamp::now(),
    );
    let mut processing = queued.clone();
    processing.start_attempt(1, Timestamp::now()).unwrap();
    let mut completed = processing.clone();
    let computed = domain::compute(&completed).unwrap();
    let fiscal = domain::fiscal::Head::empty()
        .chain(&completed.entry(&computed), "A", Timestamp::now())
        .fiscal();
    completed
        .complete(computed, fiscal, Timestamp::now())
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
    let store = Store::connect(
        &settings.mongodb_uri,
        &settings.mongodb_db,
        settings.mongodb_timeout,
    )
    .await
    .unwrap();
    // Writers wait for the unique key index (the persister does too).
    store.wait_indexed().await;
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
            .find(&tenant, events[0].invoice.id())
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(stored.invoice.state(), domain::InvoiceState::Completed);
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
    let keys =
        ["absent-1", "absent-2", "absent-3"].map(|k| domain::IdempotencyKey::parse(k).unwrap());
    let plan = store
        .explain_key_lookup(&tenant, &keys.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let stats = plan.get_document("executionStats").unwrap();
    let examined = |field: &str| {
        stats
            .get_i32(field)
            .map(i64::from)
            .or_else(|_| stats.get_i64(field))
            .unwrap()
    };
    assert_eq!(examined("totalDocsExamined"), 0, "{plan}");
    assert!(examined("totalKeysExamined") <= 4, "{plan}");
    assert!(
        plan.to_string().contains("tenant_idempotency_key"),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batched_write_reports_each_invoice_outcome() {
    let (store, tenant) = fresh_store().await;
    let stored = lifecycle_keyed(&tenant, Some("k-1"));
    let fresh = lifecycle_keyed(&tenant, Some("k-2"));
    // Another invoice under k-1: a duplicate that got past every earlier guard.
    let thief = lifecycle_keyed(&tenant, Some("k-1"));
    assert_eq!(store.apply(&stored[1]).await.unwrap(), Written::Applied);

    let batch = vec![
        stored[0].clone(), // older than what is stored
        stored[2].clone(), // newer
        fresh[0].clone(),  // absent
        thief[0].clone(),  // key owned by `stored`
        fresh[2].clone(),  // the same invoice again in the batch, newer
        fresh[1].clone(),  // ... and an older one after it
    ];
    let outcomes: Vec<_> = store
        .apply_many(&batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes,
        [
            Written::Stale,
            Written::Applied,
            Written::Applied,
            Written::KeyTaken,
            Written::Applied,
            Written::Stale,
        ]
    );
    let state = |id| {
        let store = store.clone();
        let tenant = tenant.clone();
        async move {
            store
                .find(&tenant, id)
                .await
                .unwrap()
                .map(|e| e.invoice.state())
        }
    };
    use domain::InvoiceState::Completed;
    assert_eq!(state(stored[0].invoice.id()).await, Some(Completed));
    assert_eq!(state(fresh[0].invoice.id()).await, Some(Completed));
    assert_eq!(state(thief[0].invoice.id()).await, None);
    assert_eq!(store.count(&tenant, None).await.unwrap(), 2);

    // One query answers many keys, absent ones included.
    let keys = ["k-1", "k-2", "k-3"].map(|k| domain::IdempotencyKey::parse(k).unwrap());
    let mut found: Vec<_> = store
        .find_by_keys(&tenant, &keys.iter().collect::<Vec<_>>())
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.invoice.idempotency_key().unwrap().to_string(),
                e.invoice.id(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("k-1".to_owned(), stored[0].invoice.id()),
            ("k-2".to_owned(), fresh[0].invoice.id())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_replaces_the_document_so_no_field_of_the_failed_generation_survives() {
    let (store, tenant) = fresh_store().await;
    let mut failed = lifecycle(&tenant)[1].clone();
    failed
        .invoice
        .fail("retries_exhausted", "gave up", Timestamp::now())
        .unwrap();
    assert_eq!(store.apply(&failed).await.unwrap(), Written::Applied);
    let mut replayed = failed.clone();
    replayed.invoice.replay(Timestamp::now()).unwrap();
    assert_eq!(store.apply(&replayed).await.unwrap(), Written::Applied);
    let now = store
        .find(&tenant, failed.invoice.id())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(now.invoice.state(), domain::InvoiceState::Queued);
    assert_eq!(now.invoice.replays(), 1);
    assert!(now.invoice.error().is_none(), "{:?}", now.invoice.error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_naming_another_tenants_invoice_id_never_replaces_that_invoice() {
    let (store, victim) = fresh_store().await;
    let events = lifecycle(&victim);
    assert_eq!(store.apply(&events[0]).await.unwrap(), Written::Applied);
    // The same id with a higher version, under another tenant: a forged or buggy event.
    // Built as one arrives, off the wire: the domain type has no way to move an invoice
    // to another tenant.
    let mut wire = serde_json::to_value(&events[2]).unwrap();
    wire["invoice"]["tenantId"] = unique("attacker").into();
    let forged: Envelope = serde_json::from_value(wire).unwrap();
    for write in [
        store.apply(&forged).await,
        store
            .apply_many(std::slice::from_ref(&forged))
            .await
            .remove(0),
    ] {
        assert!(
            matches!(write, Ok(Written::Stale)),
            "refused as stale, not applied: {write:?}"
        );
    }
    let stored = store
        .find(&victim, events[0].invoice.id())
        .await
        .unwrap()
        .expect("the victim's invoice is still there");
    assert_eq!(stored.invoice.state(), domain::InvoiceState::Queued);
    assert_eq!(stored.invoice.tenant_id(), &victim);
}
