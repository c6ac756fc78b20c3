//! Idempotency that outlives the broker's dedupe window and Redis (contract § POST).

use crate::support::{invoice_body, stack::Options, unique, TestStack};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_body_replays_the_invoice_before_and_after_completion() {
    let stack = TestStack::start().await;
    let key = unique("k-");
    let body = invoice_body(Some(&key), "T1");
    let first = stack.api.post(&body).await;
    assert_eq!(first.status, 202);
    let id = first.body["id"].as_str().unwrap();

    let again = stack.api.post(&body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], id);

    stack
        .api
        .wait_state(id, "COMPLETED", Duration::from_secs(20))
        .await;
    // Key order and number spelling do not change the fingerprint.
    let mut respelled = body.clone();
    respelled["items"][0]["quantity"] = serde_json::json!(2.0);
    respelled["items"][0]["unitPrice"] = serde_json::json!(3.5);
    let late = stack.api.post(&respelled).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.body["id"], id);
    assert_eq!(
        late.body["state"], "COMPLETED",
        "the replay shows the current state"
    );

    let mut changed = body.clone();
    changed["items"][0]["quantity"] = "3".into();
    let reused = stack.api.post(&changed).await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.error_code(), "idempotency_key_reused");
    assert_eq!(stack.submissions(&stack.api.tenant).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_the_dedupe_window_and_a_redis_flush_still_finds_the_invoice() {
    let stack = TestStack::with(Options {
        dedupe_window: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let key = unique("k-");
    let body = invoice_body(Some(&key), "T1");
    let first = stack.api.post(&body).await;
    assert_eq!(first.status, 202);
    let id = first.body["id"].as_str().unwrap();
    stack
        .api
        .wait_state(id, "COMPLETED", Duration::from_secs(20))
        .await;
    crate::support::eventually(
        "the invoice to be stored",
        Duration::from_secs(20),
        || async { (stack.stored_count(&stack.api.tenant).await == 1).then_some(()) },
    )
    .await;

    // Past JetStream's window (300 ms) and without Redis' memory, only MongoDB knows.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stack.flush_redis().await;
    let replay = stack.api.post(&body).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["id"], id);
    assert_eq!(replay.body["state"], "COMPLETED");

    stack.flush_redis().await;
    let mut changed = body.clone();
    changed["currency"] = "USD".into();
    assert_eq!(stack.api.post(&changed).await.status, 422);

    assert_eq!(
        stack.submissions(&stack.api.tenant).await,
        1,
        "never a second submission, even past the dedupe window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_with_one_key_make_one_invoice() {
    let stack = TestStack::start().await;
    let body = invoice_body(Some(&unique("k-")), "T1");
    let answers = futures_util::future::join_all((0..50).map(|_| stack.api.post(&body))).await;
    let accepted = answers.iter().filter(|a| a.status == 202).count();
    assert_eq!(accepted, 1, "exactly one request creates the invoice");
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .filter(|a| a.status.is_success())
        .map(|a| a.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "every success names the same invoice");
    // The broker decides at once which request owns the key: the others are replays of
    // it, never a 409 to retry.
    for a in &answers {
        assert!(
            a.status == 202 || a.status == 200,
            "unexpected {}: {}",
            a.status,
            a.body
        );
    }
    let id = ids.into_iter().next().unwrap();
    stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(20))
        .await;
    assert_eq!(
        stack.submissions(&stack.api.tenant).await,
        1,
        "one submission reached the broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_per_tenant_and_header_keys_count_too() {
    let stack = TestStack::start().await;
    let key = unique("k-");
    let body = invoice_body(Some(&key), "T1");
    let mine = stack.api.post(&body).await;
    let theirs = stack.api_for(&unique("other")).post(&body).await;
    assert_eq!(mine.status, 202);
    assert_eq!(
        theirs.status, 202,
        "the same key in another tenant is another invoice"
    );
    assert_ne!(mine.body["id"], theirs.body["id"]);

    // The header form of the key replays the body form.
    let without_key = invoice_body(None, "T1");
    let r = stack
        .api
        .http
        .post(format!("{}/invoices", stack.api.base))
        .bearer_auth(&stack.api.token)
        .header("Idempotency-Key", &key)
        .json(&without_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["id"], mine.body["id"]);
}

async fn pttl(stack: &TestStack, key: &str) -> i64 {
    crate::support::pttl(&stack.infra, key).await
}

/// Redis holds what is in flight, not the day's volume: once MongoDB stores an invoice's
/// final state, its job state keeps at most `cache::SETTLED_TTL`; until then it keeps its
/// long TTL. (Redis holds no idempotency keys at all any more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_forgets_an_invoice_soon_after_mongodb_stored_it_and_not_before() {
    let settled = cache::SETTLED_TTL.as_millis() as i64;
    let unsettled = TestStack::with(Options {
        start_persister: false,
        ..Options::default()
    })
    .await;
    let key = unique("k-");
    let first = unsettled.api.post(&invoice_body(Some(&key), "T1")).await;
    assert_eq!(first.status, 202);
    let id = first.body["id"].as_str().unwrap();
    unsettled
        .api
        .wait_state(id, "COMPLETED", Duration::from_secs(20))
        .await;
    let (ns, tenant) = (&unsettled.namespace, &unsettled.api.tenant);
    for k in [format!("{ns}:job:{tenant}:{id}")] {
        let ttl = pttl(&unsettled, &k).await;
        assert!(
            ttl > settled,
            "{k}: PTTL {ttl} ms while MongoDB has nothing"
        );
    }

    let stack = TestStack::start().await;
    let key = unique("k-");
    let first = stack.api.post(&invoice_body(Some(&key), "T1")).await;
    assert_eq!(first.status, 202);
    let id = first.body["id"].as_str().unwrap().to_owned();
    let (ns, tenant) = (&stack.namespace, &stack.api.tenant);
    let keys = [format!("{ns}:job:{tenant}:{id}")];
    crate::support::eventually("job state settled", Duration::from_secs(20), || {
        let stack = &stack;
        let keys = &keys;
        async move {
            for k in keys {
                let ttl = pttl(stack, k).await;
                // -2: already gone.
                if !(ttl == -2 || (0..=settled).contains(&ttl)) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let doc = stack
        .mongo()
        .await
        .find_one(mongodb::bson::doc! { "_id": &id })
        .await
        .unwrap()
        .expect("stored before Redis let go");
    assert_eq!(doc.get_str("state").unwrap(), "COMPLETED");
    // MongoDB answers the key from now on.
    let again = stack.api.post(&invoice_body(Some(&key), "T1")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], id.as_str());
}
