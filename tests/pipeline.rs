//! The happy path end to end: 202 → readable at once → COMPLETED with exact totals,
//! stored once; lists are tenant-scoped.

use crate::support::{invoice_body, unique, TestStack};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_invoice_is_readable_at_once_and_completes_with_exact_totals() {
    let stack = TestStack::start().await;
    let api = &stack.api;
    let posted = api.post(&invoice_body(Some(&unique("k-")), "T7")).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    assert_eq!(posted.body["state"], "QUEUED");
    assert!(posted.body["totals"].is_null());
    let id = posted.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        posted.header("location"),
        Some(format!("/invoices/{id}").as_str())
    );
    assert_eq!(
        uuid::Uuid::parse_str(&id).unwrap().get_version_num(),
        7,
        "ids are UUIDv7"
    );

    // Read-your-writes: whatever the state, the invoice is there right after the 202.
    let read = api.invoice(&id).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["id"], id);

    let done = api
        .wait_state(&id, "COMPLETED", Duration::from_secs(20))
        .await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["error"], serde_json::Value::Null);
    assert_eq!(
        done["totals"],
        json!({ "net": "7.00", "tax": "0.70", "total": "7.70", "paid": "10.00", "change": "2.30",
                "taxBreakdown": [ { "rate": "0.10", "net": "7.00", "tax": "0.70" } ] })
    );
    assert_eq!(done["items"][0]["net"], "7.00");
    assert_eq!(done["items"][0]["tax"], "0.70");
    assert_eq!(done["items"][0]["total"], "7.70");
    assert_eq!(
        done["issuedAt"], "2026-11-25T10:00:00Z",
        "the terminal's clock is kept as given"
    );

    // The system of record holds it once, completed.
    crate::support::eventually(
        "the invoice to be stored COMPLETED",
        Duration::from_secs(20),
        || async {
            let doc = stack
                .mongo()
                .await
                .find_one(mongodb::bson::doc! { "_id": &id })
                .await
                .unwrap()?;
            (doc.get_str("state").ok()? == "COMPLETED").then_some(())
        },
    )
    .await;
    assert_eq!(stack.stored_count(&api.tenant).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_literals_and_tax_inclusive_prices_are_computed_exactly() {
    let stack = TestStack::start().await;
    let body = json!({
        "terminalId": "T1", "currency": "JPY", "taxInclusive": true,
        "items": [
            { "sku": "A", "name": "a", "quantity": 3, "unitPrice": 110, "taxRate": 0.1 },
            { "sku": "B", "name": "b", "quantity": "1", "unitPrice": "1080", "taxRate": "0.08" }
        ]
    });
    let posted = stack.api.post(&body).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    let done = stack
        .api
        .wait_state(
            posted.body["id"].as_str().unwrap(),
            "COMPLETED",
            Duration::from_secs(20),
        )
        .await;
    // 330 incl. 10 % → tax 30; 1080 incl. 8 % → tax 80.
    assert_eq!(done["totals"]["tax"], "110");
    assert_eq!(done["totals"]["net"], "1300");
    assert_eq!(done["totals"]["total"], "1410");
    assert_eq!(done["totals"]["change"], "0");
    assert_eq!(done["items"][0]["quantity"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_below_the_total_fail_at_once_without_retries() {
    let stack = TestStack::start().await;
    let mut body = invoice_body(None, "T1");
    body["payments"] = json!([{ "method": "card", "amount": "5.00" }]);
    let posted = stack.api.post(&body).await;
    assert_eq!(posted.status, 202);
    let failed = stack
        .api
        .wait_state(
            posted.body["id"].as_str().unwrap(),
            "FAILED",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(failed["error"]["code"], "insufficient_payment");
    assert_eq!(failed["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_newest_first_filtered_paged_and_tenant_scoped() {
    let stack = TestStack::start().await;
    let api = &stack.api;
    let mut ids = Vec::new();
    for i in 0..5 {
        let terminal = if i % 2 == 0 { "T1" } else { "T2" };
        let a = api.post(&invoice_body(None, terminal)).await;
        assert_eq!(a.status, 202);
        ids.push(a.body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        api.wait_state(id, "COMPLETED", Duration::from_secs(20))
            .await;
    }
    let other = stack.api_for(&unique("other"));
    let theirs = other.post(&invoice_body(None, "T1")).await;
    assert_eq!(theirs.status, 202);

    let all = crate::support::eventually(
        "all five listed as COMPLETED",
        Duration::from_secs(20),
        || async {
            let a = api.get("/invoices?state=COMPLETED&limit=100").await;
            (a.body["total"] == 5).then_some(a.body)
        },
    )
    .await;
    let listed: Vec<_> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);

    let page2 = api.get("/invoices?page=2&limit=2").await;
    assert_eq!(page2.status, 200);
    assert_eq!(page2.body["page"], 2);
    assert_eq!(page2.body["limit"], 2);
    assert_eq!(page2.body["total"], 5);
    assert_eq!(page2.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(page2.body["data"][0]["id"], newest_first[2]);

    let t2 = api.get("/invoices?terminalId=T2").await;
    assert_eq!(t2.body["total"], 2);
    let future = api.get("/invoices?from=2999-01-01T00:00:00Z").await;
    assert_eq!(future.body["total"], 0);

    // Another tenant's invoice: absent from the list and 404 by id.
    assert!(!all["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == theirs.body["id"]));
    let cross = api.invoice(theirs.body["id"].as_str().unwrap()).await;
    assert_eq!(cross.status, 404);
    assert_eq!(cross.error_code(), "not_found");
}
