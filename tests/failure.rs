//! Dependencies going down: health says so, POST answers 503, nothing half-written.

use crate::support::{eventually, infra::PrivateServer, invoice_body, stack::Options, TestStack};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_then_degraded_naming_mongo_when_mongod_dies() {
    let mut mongo = PrivateServer::mongod().await;
    let stack = TestStack::with(Options {
        mongodb_uri: Some(mongo.url.clone()),
        start_processor: false,
        start_persister: false,
        ..Options::default()
    })
    .await;
    let health = format!("{}/health", stack.api.base);
    let ok = eventually("health ok", Duration::from_secs(10), || {
        let url = health.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json::<serde_json::Value>().await.ok()
        }
    })
    .await;
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["service"], "ingress");
    for check in ["nats", "redis", "mongo"] {
        assert_eq!(ok["checks"][check], "ok");
    }
    for figure in [
        "pending",
        "ackPending",
        "redelivered",
        "failed",
        "completed",
    ] {
        assert!(ok["queue"][figure].is_u64(), "queue.{figure} in {ok}");
    }

    mongo.kill().await;
    let degraded = eventually("health degraded", Duration::from_secs(10), || {
        let url = health.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 503).then_some(())?;
            r.json::<serde_json::Value>().await.ok()
        }
    })
    .await;
    assert_eq!(degraded["status"], "degraded");
    assert_eq!(degraded["checks"]["mongo"], "down");
    assert_eq!(degraded["checks"]["nats"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_a_post_gets_503_with_retry_after_and_nothing_is_created() {
    let mut nats = PrivateServer::nats().await;
    let stack = TestStack::with(Options {
        nats_url: Some(nats.url.clone()),
        ..Options::default()
    })
    .await;
    let body = invoice_body(Some(&crate::support::unique("k-")), "T1");
    nats.kill().await;
    let a = stack.api.post(&body).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.error_code(), "unavailable");
    assert!(a.header("retry-after").is_some());
    assert_eq!(
        a.body["outcome"],
        serde_json::Value::Null,
        "a plain 503: the invoice was not accepted"
    );

    // Once the broker is back, the retry is a *new* acceptance (202, never a 200 replay):
    // the 503 left nothing behind, not even a publish buffered for the reconnect.
    nats.start().await;
    let accepted = eventually(
        "the retried POST to be accepted",
        Duration::from_secs(60),
        || async {
            let a = stack.api.post(&body).await;
            assert_ne!(a.status, 200, "the refused POST had been stored after all");
            (a.status == 202).then_some(a.body)
        },
    )
    .await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(30))
        .await;
    let again = stack.api.post(&body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], id.as_str());
    eventually(
        "the invoice stored once",
        Duration::from_secs(30),
        || async { (stack.stored_count(&stack.api.tenant).await == 1).then_some(()) },
    )
    .await;
}
