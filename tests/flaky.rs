//! Faults from the terminal's side and stalled dependencies (contract § Idempotency under
//! failure): each test is a case that was tried against the release build and failed —
//! a key blocked for 24 h, a second invoice for one key, a POST hung on a stalled
//! mongod, a 503 that was in fact stored, a false 404, a processor that would not start.

use crate::support::{
    eventually, infra::PrivateServer, invoice_body, stack::Answer, stack::Options, unique,
    ProcessStack, TestStack,
};
use reqwest::StatusCode;
use std::time::Duration;

/// The contract's bound: a key whose first request died is accepted or replayed within it.
const KEY_FREED_WITHIN: Duration = Duration::from_secs(30);

/// POSTs `body` as a terminal with its own short timeout would: `None` if it gave up.
async fn post_with_timeout(
    api: &crate::support::stack::Api,
    body: &serde_json::Value,
    timeout: Duration,
) -> Option<StatusCode> {
    api.http
        .post(format!("{}/invoices", api.base))
        .bearer_auth(&api.token)
        .json(body)
        .timeout(timeout)
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// Retries `body` until it is accepted or replayed (a terminal's sync loop); panics after
/// [`KEY_FREED_WITHIN`]. Returns the successful answer.
async fn retry_until_accepted(
    api: &crate::support::stack::Api,
    body: &serde_json::Value,
) -> Answer {
    eventually(
        "the retried key to be accepted or replayed",
        KEY_FREED_WITHIN,
        || async {
            let a = api.post(body).await;
            assert!(
                [200, 202, 503].contains(&a.status.as_u16()),
                "a retry of a key is accepted, replayed or (briefly) unavailable, got {}: {}",
                a.status,
                a.body
            );
            a.status.is_success().then_some(a)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_that_gives_up_while_mongodb_stalls_can_retry_its_key_at_once() {
    let mongo = PrivateServer::mongod().await;
    let stack = TestStack::with(Options {
        mongodb_uri: Some(mongo.url.clone()),
        ..Options::default()
    })
    .await;
    // Answered once before the stall, so the driver has discovered the server (see the
    // next test).
    let warm = stack
        .api
        .post(&invoice_body(Some(&unique("k-")), "T1"))
        .await;
    assert_eq!(warm.status, 202, "{}", warm.body);
    let body = invoice_body(Some(&unique("k-")), "T1");
    mongo.stall();
    // The terminal's own 1 s timeout runs out while ingress waits on the stalled mongod.
    let first = post_with_timeout(&stack.api, &body, Duration::from_secs(1)).await;
    assert_eq!(first, None, "the terminal gave up before any answer");
    mongo.resume();
    let retried = retry_until_accepted(&stack.api, &body).await;
    let id = retried.body["id"].as_str().unwrap().to_owned();
    // Every later retry names the same invoice, and it completes.
    let again = stack.api.post(&body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["id"], id.as_str());
    stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_ingress_died_mid_request_is_accepted_by_the_next_ingress() {
    let mongo = PrivateServer::mongod().await;
    let mut stack = ProcessStack::new();
    stack
        .extra_env
        .insert("MONGODB_URI".into(), mongo.url.clone());
    // Long enough that ingress's key lookup cannot give up on the stalled mongod (and
    // answer) before the kill below, however slow a loaded machine makes the test.
    stack
        .extra_env
        .insert("MONGODB_TIMEOUT_MS".into(), "60000".into());
    let ingress = stack.spawn("ingress").await;
    stack.spawn("processor").await;
    let tenant = unique("shop");
    let api = stack.api(&tenant, ingress);
    // One request answered first: ingress's MongoDB client has discovered the server and
    // holds a connection. In CI the first request was once answered 202 before the kill,
    // the mongod stalled right after ingress started: most likely the driver's monitor,
    // still mid-discovery, timed out and interrupted the lookup (the SDAM spec's
    // `interruptInUseConnections`). Should it recur, the assertion prints ingress's log.
    let warm = api.post(&invoice_body(Some(&unique("k-")), "T1")).await;
    assert_eq!(warm.status, 202, "{}", warm.body);
    // The request must be inside ingress (waiting on the stalled mongod) when it dies.
    // Twice in about ten full runs (CI once, locally once) ingress answered 202 within
    // 500 ms of the stall, without a warning in its log. The likely cause, since fixed in
    // `PrivateServer::launch`: our mongod had lost its port to a parallel test's server
    // and exited, so the stall hit nothing and ingress talked to the other server. Should
    // an early answer still happen, that run proves nothing about a death mid-request:
    // the case is set up again with a new key (at most three times).
    let mut tries = 0;
    let body = loop {
        tries += 1;
        let body = invoice_body(Some(&unique("k-")), "T1");
        mongo.stall();
        let pending = tokio::spawn({
            let (api, body) = (api.clone(), body.clone());
            async move { post_with_timeout(&api, &body, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !pending.is_finished() {
            stack.kill(ingress).await;
            assert_eq!(
                pending.await.unwrap(),
                None,
                "the request died with ingress; its log:\n{}",
                stack.log_of(ingress)
            );
            break body;
        }
        mongo.resume();
        let early = pending.await.unwrap();
        println!("try {tries}: answered {early:?} within 500 ms of the stall; setting it up again");
        assert!(
            tries < 3,
            "three times ingress answered while MongoDB was stalled; its log:\n{}",
            stack.log_of(ingress)
        );
    };
    mongo.resume();
    let next = stack.spawn("ingress").await;
    let api = stack.api(&tenant, next);
    let accepted = retry_until_accepted(&api, &body).await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    api.wait_state(&id, "COMPLETED", Duration::from_secs(30))
        .await;
    assert_eq!(api.post(&body).await.body["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_gets_no_second_invoice_when_redis_lost_it_before_mongodb_stored_it() {
    let stack = TestStack::with(Options {
        start_persister: false,
        dedupe_window: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let body = invoice_body(Some(&unique("k-")), "T1");
    let first = stack.api.post(&body).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(20))
        .await;
    // Redis loses its data, MongoDB never stored the invoice, JetStream's dedupe window
    // has passed: only the broker's record of the key is left.
    stack.flush_redis().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = stack.api.post(&body).await;
    assert_eq!(again.status, 200, "never a second 202: {}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], id.as_str());
    let mut changed = body.clone();
    changed["currency"] = "USD".into();
    let reused = stack.api.post(&changed).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_mongodb_does_not_hang_posts_or_reads() {
    let mongo = PrivateServer::mongod().await;
    let stack = TestStack::with(Options {
        mongodb_uri: Some(mongo.url.clone()),
        start_persister: false,
        ..Options::default()
    })
    .await;
    mongo.stall();
    let started = std::time::Instant::now();
    let body = invoice_body(Some(&unique("k-")), "T1");
    // A terminal that waits 8 s gets its answer: MongoDB calls are bounded (2 s here),
    // and the broker alone decides whether a key is new.
    let answered = post_with_timeout(&stack.api, &body, Duration::from_secs(8)).await;
    assert_eq!(answered, Some(StatusCode::ACCEPTED));
    let replay = stack.api.post(&body).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    let id = replay.body["id"].as_str().unwrap().to_owned();
    // Reads are answered from Redis without waiting for MongoDB forever. The invoice is
    // computed but waits at PROCESSING: its fiscal number needs MongoDB.
    stack
        .api
        .wait_state(&id, "PROCESSING", Duration::from_secs(30))
        .await;
    let list = stack.api.get("/invoices").await;
    assert_eq!(list.status, 503, "{}", list.body);
    assert_eq!(list.error_code(), "unavailable");
    eprintln!(
        "stalled mongod: POST, GET and list answered in {:?}",
        started.elapsed()
    );
    mongo.resume();
    let done = stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(60))
        .await;
    assert_eq!(
        done["attempts"], 1,
        "the stall held the attempt, it did not fail it"
    );
    assert_eq!(done["fiscal"]["number"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_without_outcome_unknown_was_not_accepted() {
    let mut nats = PrivateServer::nats().await;
    let stack = TestStack::with(Options {
        nats_url: Some(nats.url.clone()),
        ..Options::default()
    })
    .await;
    let health = format!("{}/health", stack.api.base);
    let nats_is = |wanted: &'static str| {
        let url = health.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            (v["checks"]["nats"] == wanted).then_some(())
        }
    };
    eventually("ingress connected", Duration::from_secs(10), || {
        nats_is("ok")
    })
    .await;
    nats.kill().await;
    eventually("ingress to see NATS down", Duration::from_secs(10), || {
        nats_is("down")
    })
    .await;
    let body = invoice_body(Some(&unique("k-")), "T1");
    let refused = stack.api.post(&body).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.error_code(), "unavailable");
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.body.get("outcome").is_none(),
        "nothing was sent, so the outcome is known: {}",
        refused.body
    );
    nats.start().await;
    eventually("ingress reconnected", Duration::from_secs(30), || {
        nats_is("ok")
    })
    .await;
    // Had the refused publish been buffered and sent on reconnect, this would be a 200
    // replay of it.
    let accepted = eventually(
        "the retry to be accepted",
        Duration::from_secs(30),
        || async {
            let a = stack.api.post(&body).await;
            a.status.is_success().then_some(a)
        },
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_an_accepted_invoice_is_readable_at_once() {
    let mut redis = PrivateServer::redis().await;
    let stack = TestStack::with(Options {
        redis_url: Some(redis.url.clone()),
        start_processor: false,
        start_persister: false,
        ..Options::default()
    })
    .await;
    redis.kill().await;
    for _ in 0..5 {
        let a = stack
            .api
            .post(&invoice_body(Some(&unique("k-")), "T1"))
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
        let id = a.body["id"].as_str().unwrap();
        // Neither Redis nor MongoDB has it; the event log does.
        let read = stack.api.invoice(id).await;
        assert_eq!(
            read.status, 200,
            "read-your-writes without Redis: {}",
            read.body
        );
        assert_eq!(read.body["id"], id);
        assert_eq!(read.body["state"], "QUEUED");
    }
    // An id that was never accepted is still a 404 (MongoDB answered, the log has nothing).
    let missing = stack.api.invoice(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_restarted_during_a_mongodb_outage_start_and_complete_invoices() {
    let mut mongo = PrivateServer::mongod().await;
    mongo.kill().await;
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        TestStack::with(Options {
            mongodb_uri: Some(mongo.url.clone()),
            // The persister's only job is MongoDB: it waits for it; the others serve.
            start_persister: false,
            ..Options::default()
        }),
    )
    .await;
    let stack = started.expect("ingress and processor start while MongoDB is down");
    let a = stack
        .api
        .post(&invoice_body(Some(&unique("k-")), "T1"))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    // Computed, and held at PROCESSING until MongoDB can number it.
    stack
        .api
        .wait_state(&id, "PROCESSING", Duration::from_secs(30))
        .await;
    mongo.start().await;
    let done = stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(60))
        .await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["fiscal"]["number"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_slows_requests_but_fails_none() {
    let redis = PrivateServer::redis().await;
    let stack = TestStack::with(Options {
        redis_url: Some(redis.url.clone()),
        ..Options::default()
    })
    .await;
    // Warm the connection first, so the stall hits an open one (as in production).
    let warm = stack
        .api
        .post(&invoice_body(Some(&unique("k-")), "T1"))
        .await;
    assert_eq!(warm.status, 202, "{}", warm.body);
    redis.stall();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let body = invoice_body(Some(&unique("k-")), "T1");
        let a = stack.api.post(&body).await;
        assert_eq!(a.status, 202, "{}", a.body);
        let id = a.body["id"].as_str().unwrap().to_owned();
        let read = stack.api.invoice(&id).await;
        assert_eq!(read.status, 200, "readable at once: {}", read.body);
        let replay = stack.api.post(&body).await;
        assert_eq!(replay.status, 200, "{}", replay.body);
        assert_eq!(replay.body["id"], id.as_str());
        ids.push(id);
    }
    for id in &ids {
        stack
            .api
            .wait_state(id, "COMPLETED", Duration::from_secs(30))
            .await;
    }
    redis.resume();
}
