//! Failure semantics with real faults (contract § Lifecycle): outages inside and past the
//! retry window, dead letters and their replay, kill -9 and SIGTERM of workers under load.
//!
//! The processor asks Redis (then MongoDB) whether an invoice is already done, and
//! MongoDB for its fiscal number. A MongoDB outage alone holds computed invoices at
//! PROCESSING (the attempt waits, `LEDGER_WAIT_MS`) and the persister retries without
//! limit; MongoDB and Redis down together leave the processor unable to tell whether an
//! invoice is done, and it retries: the outages below take both down.

use crate::support::{
    assert_completed_once, consumer_info, deliveries_and_messages, eventually,
    infra::PrivateServer, invoice_body, processor_deliveries, stack::Options, unique, ProcessStack,
    TestStack,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::{collections::BTreeSet, time::Duration};

/// A NATS request to an admin endpoint of this test's namespace.
pub async fn admin(
    stack_nats: &async_nats::Client,
    namespace: &str,
    subject: &str,
    body: Value,
) -> Value {
    let reply = stack_nats
        .request(
            format!("{namespace}.admin.{subject}"),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap_or_else(|_| panic!("{subject}: {reply:?}"))
}

/// Posts `n` invoices at once (while MongoDB is down each POST waits for its idempotency
/// lookup to time out, so posting them one by one would stretch the outage).
async fn post_many(stack: &TestStack, n: usize) -> Vec<String> {
    let bodies: Vec<Value> = (0..n)
        .map(|_| invoice_body(Some(&unique("k-")), "T1"))
        .collect();
    let answers = futures_util::future::join_all(bodies.iter().map(|b| stack.api.post(b))).await;
    answers
        .into_iter()
        .map(|a| {
            assert_eq!(a.status, 202, "{}", a.body);
            a.body["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// MongoDB and Redis of the test's own, and a processor whose attempts fail when the
/// ledger cannot number within 200 ms instead of holding the invoice at PROCESSING for
/// the default minute: the event log tells the processor that a QUEUED invoice has work
/// to do whatever MongoDB and Redis say, so numbering is where an outage of both makes
/// attempts fail, and these tests are about what the retries then do.
async fn private_stores(retry_base: Duration) -> (PrivateServer, PrivateServer, TestStack) {
    let mongo = PrivateServer::mongod().await;
    let redis = PrivateServer::redis().await;
    let stack = TestStack::with(Options {
        mongodb_uri: Some(mongo.url.clone()),
        redis_url: Some(redis.url.clone()),
        retry_base,
        ledger_wait: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    (mongo, redis, stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_alone_holds_invoices_at_processing_and_numbers_them_when_it_is_back() {
    let mut mongo = PrivateServer::mongod().await;
    let stack = TestStack::with(Options {
        mongodb_uri: Some(mongo.url.clone()),
        ..Options::default()
    })
    .await;
    let before = post_many(&stack, 10).await;
    for id in &before {
        stack
            .api
            .wait_state(id, "COMPLETED", Duration::from_secs(30))
            .await;
    }
    mongo.kill().await;
    let during = post_many(&stack, 10).await;
    // Computed, but a COMPLETED invoice needs its fiscal number, which needs the system
    // of record: they wait at PROCESSING, read from Redis' job state meanwhile.
    let held = futures_util::future::join_all(during.iter().map(|id| {
        stack
            .api
            .wait_state(id, "PROCESSING", Duration::from_secs(60))
    }))
    .await;
    for invoice in held {
        assert_eq!(invoice["fiscal"], Value::Null, "{invoice}");
    }
    // An invoice Redis does not hold cannot be read now: 503, not 404.
    let unknown = stack
        .api
        .invoice(&domain::InvoiceId::generate().to_string())
        .await;
    assert_eq!(unknown.status, 503, "{}", unknown.body);
    assert_eq!(unknown.error_code(), "unavailable");
    mongo.start().await;
    let mut numbers = std::collections::BTreeSet::new();
    for id in before.iter().chain(&during) {
        let done = stack
            .api
            .wait_state(id, "COMPLETED", Duration::from_secs(60))
            .await;
        assert_eq!(
            done["attempts"], 1,
            "the outage held the attempt, it did not fail it: {done}"
        );
        numbers.insert(done["fiscal"]["number"].as_u64().unwrap());
    }
    assert_eq!(numbers, (1..=20).collect(), "numbered 1..20, no gap");
    eventually("all 20 stored", Duration::from_secs(60), || async {
        let n = stack
            .mongo()
            .await
            .count_documents(mongodb::bson::doc! { "state": "COMPLETED" })
            .await
            .ok()?;
        (n == 20).then_some(())
    })
    .await;
    assert_eq!(stack.stored_count(&stack.api.tenant).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_and_redis_outage_inside_the_retry_window_ends_with_every_invoice_completed_once()
{
    let (mut mongo, mut redis, stack) = private_stores(Duration::from_millis(1000)).await;
    let mut ids = post_many(&stack, 10).await;
    mongo.kill().await;
    redis.kill().await;
    ids.extend(post_many(&stack, 10).await);
    // Longer than the driver's 3 s server selection, so attempts really fail.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    mongo.start().await;
    redis.start().await;

    let mut retried = 0;
    for id in &ids {
        let done = stack
            .api
            .wait_state(id, "COMPLETED", Duration::from_secs(60))
            .await;
        let attempts = done["attempts"].as_u64().unwrap();
        assert!((1..=4).contains(&attempts));
        retried += usize::from(attempts > 1);
    }
    assert!(
        retried > 0,
        "invoices processed during the outage were retried"
    );
    let ids: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(ids.len(), 20, "one id per key");
    assert_completed_once(&stack.mongo().await, &stack.api.tenant, &ids).await;
    println!("mongod + redis outage of ~7 s: 20 invoices, 0 lost, 0 duplicated, {retried} completed after a retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_last_retry_dead_letters_and_a_replay_completes_them_once() {
    let (mut mongo, mut redis, stack) = private_stores(Duration::from_millis(50)).await;
    let nats = stack.nats().await;
    mongo.kill().await;
    redis.kill().await;
    let ids = post_many(&stack, 5).await;
    // Their attempts are spent while MongoDB cannot number them. A FAILED
    // invoice must never hold a fiscal record, so they are failed only once MongoDB can
    // void their ledger entries: until then they stay on the consumer.
    // Every submission delivered past its last attempt (4 tries, then `exhausted` at
    // least once): the processor consumer has made 5 deliveries of each.
    eventually("every attempt spent", Duration::from_secs(90), || async {
        (processor_deliveries(&nats, &stack.namespace).await? >= 25).then_some(())
    })
    .await;
    assert_eq!(
        admin(&nats, &stack.namespace, "dlq.list", json!({})).await["count"],
        0,
        "nothing is dead-lettered before the ledger entry is voided"
    );
    mongo.start().await;
    // Nothing can be read over HTTP while Redis is down too; the DLQ is on NATS.
    let listed = eventually("5 dead letters", Duration::from_secs(90), || async {
        let listed = admin(&nats, &stack.namespace, "dlq.list", json!({})).await;
        (listed["count"] == 5).then_some(listed)
    })
    .await;
    assert_eq!(
        listed["deadLetters"][0]["lastError"]["code"],
        "retries_exhausted"
    );
    assert_eq!(listed["next"], json!(null), "one page holds all five");
    // Paged: 2 + 2 + 1, each page naming where the next starts, no letter twice.
    let mut seen = Vec::new();
    let mut from = json!(0);
    for expected in [2, 2, 1] {
        let page = admin(
            &nats,
            &stack.namespace,
            "dlq.list",
            json!({ "limit": 2, "from": from }),
        )
        .await;
        assert_eq!(page["count"], expected, "{page}");
        seen.extend(
            page["deadLetters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["seq"].clone()),
        );
        from = page["next"].clone();
    }
    assert_eq!(from, json!(null), "the last page says it is the last");
    seen.dedup();
    assert_eq!(seen.len(), 5);
    redis.start().await;
    for id in &ids {
        let failed = stack
            .api
            .wait_state(id, "FAILED", Duration::from_secs(60))
            .await;
        assert_eq!(failed["error"]["code"], "retries_exhausted");
        assert_eq!(failed["attempts"], 4, "1 try + 3 retries");
    }

    // The cause is fixed (both came back above); the persister catches up with the
    // failures first.
    eventually(
        "the failures to reach the system of record",
        Duration::from_secs(60),
        || async {
            let n = stack
                .mongo()
                .await
                .count_documents(mongodb::bson::doc! { "state": "FAILED" })
                .await
                .ok()?;
            (n == 5).then_some(())
        },
    )
    .await;
    let replayed = admin(
        &nats,
        &stack.namespace,
        "dlq.replay",
        json!({ "tenantId": stack.api.tenant }),
    )
    .await;
    assert_eq!(
        replayed["replayed"].as_array().map(Vec::len),
        Some(5),
        "{replayed}"
    );
    for id in &ids {
        let done = stack
            .api
            .wait_state(id, "COMPLETED", Duration::from_secs(30))
            .await;
        assert_eq!(done["replays"], 1, "the invoice records its replay");
        assert_eq!(done["totals"]["total"], "7.70");
    }
    // A second replay finds nothing; nothing was duplicated.
    let again = admin(
        &nats,
        &stack.namespace,
        "dlq.replay",
        json!({ "all": true }),
    )
    .await;
    assert_eq!(again["replayed"], json!([]));
    assert_eq!(
        admin(&nats, &stack.namespace, "dlq.list", json!({})).await["count"],
        0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.stored_count(&stack.api.tenant).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_replay_the_log_already_holds_is_not_replayed_again() {
    // A replay whose last steps failed (its event, or deleting its letter) leaves the
    // letter behind. Asked again minutes later, past the submissions' 2-minute dedupe
    // window, with MongoDB not holding the replay yet (no persister here), only the
    // broker can say the invoice was replayed already.
    let stack = TestStack::with(Options {
        start_persister: false,
        ..Options::default()
    })
    .await;
    let nats = stack.nats().await;
    let bus = crate::messaging::bus_as(&stack.infra, &stack.namespace, "processor").await;
    let now = domain::Timestamp::now();
    let tenant = domain::TenantId::parse(stack.api.tenant.clone()).unwrap();
    let key = unique("k-");
    // The letter carries the submission as the processor consumed it.
    let submitted = domain::Invoice::queued(
        domain::InvoiceId::generate(),
        tenant,
        crate::support::sample_draft(Some(&key)),
        now,
    );
    let mut failed = submitted.clone();
    failed.start_attempt(4, now).unwrap();
    failed
        .fail("retries_exhausted", "MongoDB unreachable", now)
        .unwrap();
    let letter = messaging::DeadLetter {
        submission: messaging::Envelope {
            invoice: submitted,
            fingerprint: "f".into(),
        },
        attempts: 4,
        last_error: domain::InvoiceError {
            code: "retries_exhausted".into(),
            message: "MongoDB unreachable".into(),
        },
        dead_at: now,
    };
    bus.publish_dead_letter(&letter).await.unwrap();
    // The earlier replay got as far as its QUEUED event.
    let mut replayed = failed;
    replayed.replay(now).unwrap();
    let replayed = messaging::Envelope {
        invoice: replayed,
        fingerprint: "f".into(),
    };
    bus.publish_event(&replayed.encoded(), None).await.unwrap();

    let answer = admin(
        &nats,
        &stack.namespace,
        "dlq.replay",
        json!({ "all": true }),
    )
    .await;
    assert_eq!(answer["replayedCount"], 0, "{answer}");
    assert_eq!(
        answer["skipped"][0]["reason"], "already replayed",
        "{answer}"
    );
    assert_eq!(
        admin(&nats, &stack.namespace, "dlq.list", json!({})).await["count"],
        0,
        "the letter is cleared"
    );
    let key = domain::IdempotencyKey::parse(key).unwrap();
    assert_eq!(
        bus.submission_of_key(replayed.invoice.tenant_id(), &key)
            .await
            .unwrap()
            .map(|s| s.invoice.replays()),
        None,
        "no second replay was submitted"
    );
}

/// Lifecycle events stored for one invoice.
async fn events_of(stack: &TestStack, nats: &async_nats::Client, id: &str) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    let stream = js
        .get_stream(messaging::Topology::new(&stack.namespace).events_stream())
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{}.events.{}.{id}", stack.namespace, stack.api.tenant),
            ..Default::default()
        })
        .await
        .unwrap();
    consumer.cached_info().num_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_delivered_again_after_its_completed_event_is_not_computed_twice_while_mongodb_lags(
) {
    // After a broker failover a processor's acks can be lost while its COMPLETED is in
    // the log, and the persister may be minutes behind. Here it never stores anything,
    // Redis forgets the job and MongoDB is down when the submission comes back: only
    // the event log knows the invoice is done.
    let mut mongo = PrivateServer::mongod().await;
    let stack = TestStack::with(Options {
        mongodb_uri: Some(mongo.url.clone()),
        start_persister: false,
        max_attempts: 20,
        ..Options::default()
    })
    .await;
    let nats = stack.nats().await;
    let id = post_many(&stack, 1).await.remove(0);
    stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(30))
        .await;
    assert_eq!(
        events_of(&stack, &nats, &id).await,
        3,
        "QUEUED, PROCESSING, COMPLETED"
    );
    stack.flush_redis().await;
    mongo.kill().await;

    // The same submission again, as a lost ack brings it back (a new message here: the
    // first one was acked). Its first attempt cannot ask MongoDB; a recomputation would
    // happen on a later attempt, whose events carry new ids the broker cannot drop.
    let js = async_nats::jetstream::new(nats.clone());
    let invoices = messaging::Topology::new(&stack.namespace).invoices_stream();
    let first = js
        .get_stream(&invoices)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", unique("again-").as_str());
    js.publish_with_headers(first.subject.to_string(), headers, first.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer = || consumer_info(&nats, &invoices, "processor");
    eventually(
        "the second delivery finished, or retried for want of MongoDB",
        Duration::from_secs(30),
        || async {
            let info = consumer().await?;
            (info.ack_floor.stream_sequence >= 2 || info.num_redelivered >= 1).then_some(())
        },
    )
    .await;
    mongo.start().await;
    eventually(
        "the second delivery finished",
        Duration::from_secs(60),
        || async { (consumer().await?.ack_floor.stream_sequence >= 2).then_some(()) },
    )
    .await;
    assert_eq!(
        events_of(&stack, &nats, &id).await,
        3,
        "nothing recomputed: no second PROCESSING or COMPLETED for the terminals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_fault_is_dead_lettered_after_one_attempt() {
    let stack = TestStack::start().await;
    let mut body = invoice_body(None, "T1");
    body["payments"] = json!([{ "method": "cash", "amount": "1.00" }]);
    let id = stack.api.post(&body).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = stack
        .api
        .wait_state(&id, "FAILED", Duration::from_secs(20))
        .await;
    assert_eq!(failed["attempts"], 1);
    let nats = stack.nats().await;
    let listed = eventually("the dead letter", Duration::from_secs(10), || {
        let nats = nats.clone();
        let ns = stack.namespace.clone();
        async move {
            let l = admin(&nats, &ns, "dlq.list", json!({})).await;
            (l["count"] == 1).then_some(l)
        }
    })
    .await;
    assert_eq!(listed["deadLetters"][0]["invoiceId"], id);
    assert_eq!(
        listed["deadLetters"][0]["lastError"]["code"],
        "insufficient_payment"
    );
    assert_eq!(listed["deadLetters"][0]["attempts"], 1);
}

/// Bytes no stage can decode, on the submissions stream and on the event log, are copied
/// raw to the dead-letter stream (listed as undecodable) and taken off their consumers,
/// which go on with the next invoice: neither lost nor blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_raw_and_block_no_consumer() {
    let stack = TestStack::start().await;
    let nats = stack.nats().await;
    let js = async_nats::jetstream::new(nats.clone());
    let (ns, tenant) = (&stack.namespace, &stack.api.tenant);
    let topology = messaging::Topology::new(ns);
    let garbage = [
        format!("{ns}.submit.{tenant}.garbage"),
        format!("{ns}.events.{tenant}.garbage"),
    ];
    for subject in &garbage {
        js.publish(subject.clone(), "not an invoice".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let id = stack.api.post(&invoice_body(None, "T1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(20))
        .await;
    let listed = eventually("both raw copies", Duration::from_secs(10), || {
        let nats = nats.clone();
        async move {
            let l = admin(&nats, ns, "dlq.list", json!({})).await;
            // Fanout's feed skips an undecodable event without copying it (yet).
            (l["count"].as_u64()? >= 2).then_some(l)
        }
    })
    .await;
    for letter in listed["deadLetters"].as_array().unwrap() {
        assert_eq!(letter["undecodable"], true, "{listed}");
        assert_eq!(
            letter["subject"],
            format!("{ns}.dlq._undecodable"),
            "{listed}"
        );
    }
    for (stream, consumer) in [
        (topology.invoices_stream(), "processor"),
        (topology.events_stream(), "persister"),
    ] {
        eventually(
            "the consumer holds nothing back",
            Duration::from_secs(10),
            || async {
                let info = consumer_info(&nats, &stream, consumer).await?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            },
        )
        .await;
    }
}

/// Posts `n` invoices through `stack`'s first ingress; runs `mid` when half are posted.
/// Returns the ids the 202s named (any other answer fails the test).
async fn post_through(
    stack: &mut ProcessStack,
    tenant: &str,
    n: usize,
    mid: impl AsyncFnOnce(&mut ProcessStack),
) -> BTreeSet<String> {
    let api = stack.api(tenant, 0);
    let post = |i: usize| {
        let api = api.clone();
        async move {
            let a = api.post(&invoice_body(Some(&format!("k-{i}")), "T1")).await;
            assert_eq!(a.status, 202, "k-{i}: {}", a.body);
            a.body["id"].as_str().unwrap().to_owned()
        }
    };
    let mut ids: BTreeSet<String> = futures_util::stream::iter(0..n / 2)
        .map(post)
        .buffer_unordered(32)
        .collect()
        .await;
    mid(stack).await;
    let second: Vec<String> = futures_util::stream::iter(n / 2..n)
        .map(post)
        .buffer_unordered(32)
        .collect()
        .await;
    ids.extend(second);
    assert_eq!(ids.len(), n, "one id per key");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_processor_and_a_persister_mid_load_loses_and_duplicates_nothing() {
    let mut stack = ProcessStack::new();
    // A short lease so the killed instances' unacked messages come back quickly.
    stack.extra_env.insert("ACK_WAIT_MS".into(), "2000".into());
    stack.spawn("ingress").await;
    let processors = [
        stack.spawn("processor").await,
        stack.spawn("processor").await,
    ];
    let persisters = [
        stack.spawn("persister").await,
        stack.spawn("persister").await,
    ];
    let tenant = unique("shop");
    let accepted = post_through(&mut stack, &tenant, 2000, async |s: &mut ProcessStack| {
        s.kill(processors[0]).await;
        s.kill(persisters[0]).await;
    })
    .await;
    assert_completed_once(&stack.invoices().await, &tenant, &accepted).await;
    // The kills hit work in flight: both consumers delivered messages again (a kill
    // between two messages would leave nothing unacked to redeliver).
    let nats = stack.infra.operator_nats().await;
    let topology = messaging::Topology::new(&stack.namespace);
    let mut redelivered = Vec::new();
    for (stream, consumer) in [
        (topology.invoices_stream(), "processor"),
        (topology.events_stream(), "persister"),
    ] {
        let (delivered, messages) = deliveries_and_messages(&nats, &stream, consumer).await;
        assert!(
            delivered > messages,
            "the killed {consumer} held no unacked message: {delivered} deliveries of {messages}"
        );
        redelivered.push(delivered - messages);
    }
    println!(
        "kill -9 of 1/2 processors and 1/2 persisters mid-load: 2000 accepted, 2000 COMPLETED, \
         0 lost, 0 duplicated; redelivered: {} submissions, {} events",
        redelivered[0], redelivered[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_exits_0_and_loses_nothing() {
    let mut stack = ProcessStack::new();
    stack.extra_env.insert("ACK_WAIT_MS".into(), "2000".into());
    stack.spawn("ingress").await;
    let doomed = stack.spawn("processor").await;
    stack.spawn("processor").await;
    stack.spawn("persister").await;
    let tenant = unique("shop");
    let mut exit = None;
    let accepted = post_through(&mut stack, &tenant, 600, async |s: &mut ProcessStack| {
        exit = s.terminate(doomed, Duration::from_secs(15)).await;
    })
    .await;
    let status = exit.expect("the processor exits within its deadline");
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        stack.log_of(doomed)
    );
    assert_completed_once(&stack.invoices().await, &tenant, &accepted).await;
}
