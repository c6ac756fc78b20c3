//! The publish path against a real JetStream: message ids make retries harmless.

use crate::support::{stack::infra_settings, unique, Infra};
use domain::{Invoice, InvoiceId, TenantId, Timestamp};
use messaging::{Bus, Envelope, NatsSettings, Topology};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_submission_or_event_twice_stores_it_once() {
    let infra = Infra::from_env();
    let settings = infra_settings(&infra, &unique("m"), "unused");
    let bus = Bus::connect(
        NatsSettings {
            url: settings.nats_url,
            client_name: "test".into(),
            ack_timeout: Duration::from_secs(2),
            publish_tries: 1,
            auth: settings.nats_auth.clone(),
        },
        Topology::new(&settings.namespace),
    )
    .await
    .unwrap();
    bus.ensure_topology().await.unwrap();
    let draft = crate::support::sample_draft(Some("key-1"));
    let tenant = TenantId::parse(unique("shop")).unwrap();
    let first = Envelope {
        invoice: Invoice::queued(
            InvoiceId::generate(),
            tenant.clone(),
            draft.clone(),
            Timestamp::now(),
        ),
        fingerprint: "a".into(),
    };
    // A second request with the same key (another invoice id) within the window.
    let second = Envelope {
        invoice: Invoice::queued(InvoiceId::generate(), tenant, draft, Timestamp::now()),
        fingerprint: "a".into(),
    };

    let a = bus
        .publish_submission(&first.encoded(), Some("corr-1"))
        .await
        .unwrap();
    assert!(!a.duplicate);
    // Refused either way, by the server's order of checks: nats-server 2.15 checks the
    // key subject's expected last sequence first (SubjectTaken), 2.9 the dedupe window
    // first (a duplicate naming the original's sequence). Ingress treats both alike.
    match bus.publish_submission(&second.encoded(), None).await {
        Err(messaging::BusError::SubjectTaken) => {}
        Ok(b) => assert!(
            b.duplicate && a.sequence == b.sequence,
            "same tenant + key within the dedupe window: {b:?}"
        ),
        Err(e) => panic!("a second submission of a key: {e}"),
    }
    let key = first.invoice.idempotency_key.as_ref().unwrap();
    assert_eq!(
        bus.submission_of_key(&first.invoice.tenant_id, key)
            .await
            .unwrap()
            .unwrap()
            .invoice
            .id,
        first.invoice.id,
        "the key's subject holds the first submission"
    );

    let e1 = bus.publish_event(&first.encoded(), None).await.unwrap();
    let e2 = bus.publish_event(&first.encoded(), None).await.unwrap();
    assert!(
        e2.duplicate && e1.sequence == e2.sequence,
        "a re-emitted state change is stored once"
    );
}
