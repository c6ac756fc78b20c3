//! The publish path against a real JetStream: message ids make retries harmless.

use crate::support::{unique, Infra};
use domain::{Invoice, InvoiceId, TenantId, Timestamp};
use messaging::{Bus, Envelope, NatsSettings, Topology};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_submission_or_event_twice_stores_it_once() {
    let bus = fresh_bus().await;
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
    let key = first.invoice.idempotency_key().unwrap();
    assert_eq!(
        bus.submission_of_key(first.invoice.tenant_id(), key)
            .await
            .unwrap()
            .unwrap()
            .invoice
            .id(),
        first.invoice.id(),
        "the key's subject holds the first submission"
    );

    let e1 = bus.publish_event(&first.encoded(), None).await.unwrap();
    let e2 = bus.publish_event(&first.encoded(), None).await.unwrap();
    assert!(
        e2.duplicate && e1.sequence == e2.sequence,
        "a re-emitted state change is stored once"
    );
}

/// A dead letter's replay is seen in the broker before MongoDB stores it — in the
/// event log once its QUEUED is in, and, for a keyed invoice, on the key's own subject
/// from its submission on — so the processor does not replay it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_knows_a_replay_by_its_keys_subject_or_its_event_log() {
    let bus = fresh_bus().await;
    let tenant = TenantId::parse(unique("shop")).unwrap();
    let now = Timestamp::now();
    let queued = |key: Option<&str>| {
        Invoice::queued(
            InvoiceId::generate(),
            tenant.clone(),
            crate::support::sample_draft(key),
            now,
        )
    };
    let replay_of = |invoice: &Invoice| {
        let mut next = invoice.clone();
        next.start_attempt(4, now).unwrap();
        next.fail("retries_exhausted", "MongoDB unreachable", now)
            .unwrap();
        next.replay(now).unwrap();
        Envelope {
            invoice: next,
            fingerprint: "f".into(),
        }
    };
    let later = |invoice: &Invoice| {
        let bus = &bus;
        let invoice = invoice.clone();
        async move { bus.holds_later_generation(&invoice).await.unwrap() }
    };

    // Keyed: only the replay's submission is stored (its QUEUED event is not).
    let key = unique("k-");
    let first = queued(Some(&key));
    assert!(!later(&first).await, "nothing stored yet");
    let submitted = Envelope {
        invoice: first.clone(),
        fingerprint: "f".into(),
    };
    bus.publish_submission(&submitted.encoded(), None)
        .await
        .unwrap();
    assert!(!later(&first).await, "the same generation is not a replay");
    let replay = replay_of(&first);
    bus.publish_submission(&replay.encoded(), None)
        .await
        .unwrap();
    assert!(
        later(&first).await,
        "the key's subject holds generation 1 of this invoice"
    );
    assert!(
        !later(&replay.invoice).await,
        "nothing later than the replay itself"
    );
    let same_key_other_invoice = queued(Some(&key));
    assert!(
        !later(&same_key_other_invoice).await,
        "the key's subject holds another invoice"
    );

    // Keyless: the event log shows the replay once its QUEUED is in.
    let keyless = queued(None);
    let replay = replay_of(&keyless);
    bus.publish_submission(&replay.encoded(), None)
        .await
        .unwrap();
    assert!(
        !later(&keyless).await,
        "a keyless replay's submission alone is not seen (documented limit)"
    );
    bus.publish_event(&replay.encoded(), None).await.unwrap();
    assert!(later(&keyless).await, "the event log holds generation 1");
}

/// A bus on a namespace of its own, logged in as the operator, its streams created.
async fn fresh_bus() -> Bus {
    let bus = bus_as(&Infra::from_env(), &unique("m"), "operator").await;
    bus.ensure_topology().await.unwrap();
    bus
}

/// A bus for namespace `ns`, logged in as `user`, as a service builds it.
pub async fn bus_as(infra: &Infra, ns: &str, user: &str) -> Bus {
    let settings = crate::support::stack::infra_settings_for(infra, ns, "unused", user);
    Bus::connect(
        NatsSettings::for_infra(&settings, Duration::from_secs(2), 1),
        Topology::from_infra(&settings),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_change_survives_a_service_start_is_reported_and_nats_apply_restores_nats_dir()
{
    let infra = Infra::from_env();
    let ns = unique("own");
    // A service creates what is missing, and a fresh topology is exactly nats/.
    let processor = bus_as(&infra, &ns, "processor").await;
    assert_eq!(processor.ensure_topology().await.unwrap(), vec![]);

    // The operator (nats CLI) raises the events' retention and halves the processor's cap.
    let js = async_nats::jetstream::new(infra.operator_nats().await);
    let topology = Topology::new(&ns);
    let events = topology.events_stream();
    let mut config = stream_config(&js, &events).await;
    config.max_age = Duration::from_secs(7 * 86_400);
    js.update_stream(&config).await.unwrap();
    let mut consumer = topology.processor_consumer().unwrap();
    consumer.max_ack_pending = 512;
    js.get_stream(topology.invoices_stream())
        .await
        .unwrap()
        .create_consumer(consumer)
        .await
        .unwrap();

    // Every service's start (ensure_topology, then binding its consumer) keeps both, and
    // names each difference.
    for user in ["ingress", "processor", "persister", "fanout"] {
        let bus = bus_as(&infra, &ns, user).await;
        let drift = bus.ensure_topology().await.unwrap();
        let named: Vec<(String, String)> = drift
            .iter()
            .map(|d| (d.object.clone(), d.setting.clone()))
            .collect();
        assert_eq!(
            named,
            vec![
                (events.clone(), "max_age".to_owned()),
                (
                    format!("{}/processor", topology.invoices_stream()),
                    "max_ack_pending".to_owned()
                ),
            ],
            "{user} reports exactly the operator's two changes"
        );
        assert_eq!(
            drift[0].running,
            serde_json::json!(7u64 * 86_400 * 1_000_000_000)
        );
    }
    let bound = processor
        .durable(
            &topology.invoices_stream(),
            topology.processor_consumer().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        bound.cached_info().config.max_ack_pending,
        512,
        "binding does not edit"
    );
    let running = stream_config(&js, &events).await;
    assert_eq!(
        running.max_age,
        Duration::from_secs(7 * 86_400),
        "still the operator's"
    );

    // A service may not change a stream even if it tried: only the operator can.
    let service_js = async_nats::jetstream::new(infra.nats_as("processor", &infra.nats_url).await);
    assert!(
        service_js.update_stream(&running).await.is_err(),
        "the processor's NATS user cannot update streams"
    );

    // nats-apply's step, as the operator: nats/ again, nothing left to report.
    let operator = bus_as(&infra, &ns, "operator").await;
    operator.apply_topology().await.unwrap();
    assert_eq!(operator.ensure_topology().await.unwrap(), vec![]);
}

async fn stream_config(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Config {
    js.get_stream(name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_list_whose_first_node_is_down_connects_through_the_next_and_replicas_follow_the_setting(
) {
    let infra = Infra::from_env();
    let ns = unique("seed");
    let mut settings = crate::support::stack::infra_settings_for(&infra, &ns, "unused", "ingress");
    // Nothing listens on the first seed (a lost node of a cluster).
    let dead = crate::support::infra::free_port();
    settings.nats_url = format!("nats://127.0.0.1:{dead}, {}", infra.nats_url);
    let bus = tokio::time::timeout(
        Duration::from_secs(30),
        Bus::connect(
            NatsSettings::for_infra(&settings, Duration::from_secs(2), 1),
            Topology::from_infra(&settings),
        ),
    )
    .await
    .expect("connects within 30 s")
    .expect("connects through the second seed");
    assert!(bus.is_connected());
    bus.ensure_topology().await.unwrap();
    // One node here: R1 is what NATS_REPLICAS=1 asks for, and every stream has it.
    let js = async_nats::jetstream::new(infra.operator_nats().await);
    for s in [
        bus.topology().invoices_stream(),
        bus.topology().events_stream(),
        bus.topology().dlq_stream(),
    ] {
        assert_eq!(stream_config(&js, &s).await.num_replicas, 1, "{s}");
    }
    // The setting reaches every stream definition (R3 on a cluster).
    let mut three = Topology::from_infra(&settings);
    three.replicas = Some(3);
    assert!(three
        .stream_configs()
        .unwrap()
        .iter()
        .all(|c| c.num_replicas == 3));
}
