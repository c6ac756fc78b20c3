//! Test harness: an in-process stack ([`TestStack`]) for most stories and a stack of real
//! service binaries ([`ProcessStack`]) for kill -9 and scale-out; typed HTTP helpers; a
//! polling wait with a deadline (never a fixed sleep where a condition can be awaited).

#![allow(dead_code)]

pub mod browser;
pub mod infra;
pub mod process;
pub mod proxy;
pub mod stack;

pub use infra::Infra;
pub use nix::sys::signal::Signal;
pub use process::ProcessStack;
pub use stack::TestStack;

use std::time::Duration;

/// Sends `signal` to a child process. From Rust, not by running `kill`: a minimal Debian
/// has no procps, and a missing `kill` program would fail silently.
pub fn signal(pid: u32, signal: Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    nix::sys::signal::kill(pid, signal)
        .unwrap_or_else(|e| panic!("sending {signal} to {pid}: {e}"));
}

/// What the broker says of durable consumer `consumer` on `stream` (`None` while it
/// cannot say).
pub async fn consumer_info(
    nats: &async_nats::Client,
    stream: &str,
    consumer: &str,
) -> Option<async_nats::jetstream::consumer::Info> {
    let js = async_nats::jetstream::new(nats.clone());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .ok()?
        .get_consumer(consumer)
        .await
        .ok()?;
    consumer.info().await.ok().cloned()
}

/// Deliveries the processor's durable consumer in `namespace` has made so far (`None`
/// while the broker cannot say).
pub async fn processor_deliveries(nats: &async_nats::Client, namespace: &str) -> Option<u64> {
    let stream = messaging::Topology::new(namespace).invoices_stream();
    let info = consumer_info(nats, &stream, "processor").await?;
    Some(info.delivered.consumer_sequence)
}

/// Deliveries a durable consumer has made (`consumer_sequence`, redeliveries included)
/// and the messages its stream holds: more deliveries than messages proves some message
/// was delivered again, e.g. the in-flight work of a killed instance.
pub async fn deliveries_and_messages(
    nats: &async_nats::Client,
    stream: &str,
    consumer: &str,
) -> (u64, u64) {
    let js = async_nats::jetstream::new(nats.clone());
    let messages = js
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let info = consumer_info(nats, stream, consumer)
        .await
        .unwrap_or_else(|| panic!("the broker knows consumer {consumer} on {stream}"));
    (info.delivered.consumer_sequence, messages)
}

/// Waits until `tenant`'s invoices in `invoices` (the MongoDB collection) are all
/// COMPLETED, then checks they are exactly `answered`, the ids the 202s named, and are
/// numbered 1..=n, each number once. A count of documents could not see a duplicate:
/// the unique key index refuses a second document for a key, so a second acceptance
/// shows only as an answered id that was never stored, and a second computation as a
/// second fiscal number (a gap).
pub async fn assert_completed_once(
    invoices: &mongodb::Collection<mongodb::bson::Document>,
    tenant: &str,
    answered: &std::collections::BTreeSet<String>,
) {
    use futures_util::TryStreamExt;
    let n = answered.len() as u64;
    eventually(
        &format!("all {n} of {tenant} stored COMPLETED"),
        Duration::from_secs(120),
        || async move {
            let done = invoices
                .count_documents(mongodb::bson::doc! { "tenantId": tenant, "state": "COMPLETED" })
                .await
                .ok()?;
            (done == n).then_some(())
        },
    )
    .await;
    let docs: Vec<mongodb::bson::Document> = invoices
        .find(mongodb::bson::doc! { "tenantId": tenant })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let stored: std::collections::BTreeSet<String> = docs
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_owned())
        .collect();
    assert_eq!(
        &stored, answered,
        "the stored invoices are exactly the answered ones"
    );
    let mut numbers: Vec<i64> = docs
        .iter()
        .map(|d| {
            let number = d.get_document("fiscal").unwrap().get("number").unwrap();
            number
                .as_i64()
                .or_else(|| number.as_i32().map(i64::from))
                .unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=i64::try_from(n).unwrap()).collect::<Vec<_>>(),
        "fiscal numbers 1..={n}, each once"
    );
}

/// Polls `check` until it yields `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A realistic invoice body: `lines` lines, the contract example's first line.
pub fn invoice_body(key: Option<&str>, terminal: &str) -> serde_json::Value {
    let mut body = serde_json::json!({
        "terminalId": terminal,
        "currency": "EUR",
        "issuedAt": "2026-11-25T10:00:00Z",
        "taxInclusive": false,
        "customer": { "name": "ACME SL", "taxId": "B12345678" },
        "items": [
            { "sku": "COFFEE-L", "name": "Coffee large", "quantity": "2", "unitPrice": "3.50", "taxRate": "0.10", "discount": "0.00" }
        ],
        "payments": [ { "method": "cash", "amount": "10.00" } ]
    });
    if let Some(k) = key {
        body["idempotencyKey"] = k.into();
    }
    body
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A valid one-line draft (for tests below the HTTP layer): `RawDraft::example` at
/// 2.00 with 21 % tax.
pub fn sample_draft(key: Option<&str>) -> domain::DraftInvoice {
    let mut raw = domain::draft::RawDraft {
        idempotency_key: key.map(str::to_owned),
        ..domain::draft::RawDraft::example()
    };
    raw.items[0].unit_price = Some("2.00".into());
    raw.items[0].tax_rate = Some("0.21".into());
    domain::DraftInvoice::parse(raw).expect("a valid sample draft")
}

/// The remaining time to live of a Redis key in milliseconds (`PTTL`).
pub async fn pttl(infra: &Infra, key: &str) -> i64 {
    let mut c = redis::Client::open(infra.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}
