//! Retention that cannot drop unstored facts: the streams are bounded by count, never by
//! age, and ingress refuses new invoices (503) before the facts not stored yet could be
//! pushed out of them. Real binaries; the persister is killed for the outage.

use crate::support::{eventually, invoice_body, unique, ProcessStack};
use std::collections::BTreeSet;
use std::time::Duration;

/// The test-sized events stream: 150 messages, 50 invoices' worth. The test submits
/// twice that many while the persister is down; without back-pressure the stream would
/// discard the first invoices' events before anyone stored them.
const EVENTS_MAX_MSGS: i64 = 150;
const SUBMITTED: usize = 100;
/// The submissions stream's count, set the way a deployment sets it (`INVOICES_MAX_MSGS`).
const INVOICES_MAX_MSGS: i64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_down_with_more_work_than_the_log_holds_loses_nothing_because_ingress_refuses_first(
) {
    let mut stack = ProcessStack::new();
    stack
        .extra_env
        .insert("BACKLOG_POLL_MS".into(), "100".into());
    // A deployment's count, applied by whichever service creates the stream.
    stack
        .extra_env
        .insert("INVOICES_MAX_MSGS".into(), INVOICES_MAX_MSGS.to_string());
    let ingress = stack.spawn("ingress").await;

    // No time-based retention on either stream a fact waits in.
    let js = async_nats::jetstream::new(stack.infra.operator_nats().await);
    let topology = messaging::Topology::new(&stack.namespace);
    for name in [topology.invoices_stream(), topology.events_stream()] {
        let config = js
            .get_stream(&name)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        assert_eq!(
            config.max_age,
            Duration::ZERO,
            "{name} keeps by count, not age"
        );
        assert!(config.max_messages > 0, "{name} is bounded");
        if name == topology.invoices_stream() {
            assert_eq!(config.max_messages, INVOICES_MAX_MSGS, "INVOICES_MAX_MSGS");
        }
        assert_eq!(
            config.discard,
            async_nats::jetstream::stream::DiscardPolicy::Old
        );
    }
    // The operator sizes the events stream for this test (ingress reads it live).
    let mut events = js
        .get_stream(topology.events_stream())
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    events.max_messages = EVENTS_MAX_MSGS;
    js.update_stream(&events).await.unwrap();

    stack.spawn("processor").await;
    let persister = stack.spawn("persister").await;
    let stream = js.get_stream(topology.events_stream()).await.unwrap();
    eventually(
        "the persister's consumer",
        Duration::from_secs(60),
        || async {
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("persister")
                .await
                .ok()
        },
    )
    .await;
    stack.kill(persister).await;

    let tenant = unique("r");
    let api = stack.api(&tenant, ingress);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..SUBMITTED {
        let a = api.post(&invoice_body(Some(&format!("k-{i}")), "T1")).await;
        match a.status.as_u16() {
            202 => accepted.push(a.body["id"].as_str().unwrap().to_owned()),
            503 => {
                assert_eq!(a.error_code(), "unavailable", "{}", a.body);
                assert!(a.header("retry-after").is_some(), "503 carries Retry-After");
                assert!(
                    a.body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("events wait to be stored")),
                    "the refusal says why: {}",
                    a.body
                );
                refused += 1;
            }
            other => panic!("POST answered {other}: {}", a.body),
        }
        // Paced like a shop, so the broker-side figures keep up with the acceptances.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 0, "ingress refused once the log was half full");
    assert!(
        accepted.len() * 3 <= EVENTS_MAX_MSGS as usize,
        "{} invoices accepted: their {} events exceed what the log holds",
        accepted.len(),
        accepted.len() * 3
    );
    assert!(accepted.len() >= 10, "only {} accepted", accepted.len());
    for id in &accepted {
        api.wait_state(id, "COMPLETED", Duration::from_secs(60))
            .await;
    }

    // The outage lasts; the log still starts at its first event: nothing was discarded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stream = js.get_stream(topology.events_stream()).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.first_sequence, 1, "no event was discarded: {state:?}");
    assert_eq!(state.messages, state.last_sequence);

    stack.restart(persister).await;
    let coll = stack.invoices().await;
    let want: BTreeSet<String> = accepted.iter().cloned().collect();
    let stored = eventually(
        "every accepted invoice stored COMPLETED",
        Duration::from_secs(60),
        || {
            let coll = coll.clone();
            let want = want.clone();
            async move {
                let stored: BTreeSet<String> = coll
                    .distinct("_id", mongodb::bson::doc! { "state": "COMPLETED" })
                    .await
                    .ok()?
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                (stored == want).then_some(stored)
            }
        },
    )
    .await;
    assert_eq!(stored.len(), accepted.len());

    // Caught up: new invoices are accepted again.
    eventually(
        "ingress to accept again",
        Duration::from_secs(30),
        || async {
            let a = api.post(&invoice_body(Some(&unique("after-")), "T1")).await;
            (a.status == 202).then_some(())
        },
    )
    .await;
}
