//! Every status and error code of the contract's error table, produced for real.

use crate::support::{
    invoice_body,
    stack::{token, Options},
    TestStack,
};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_bodies_get_400_listing_every_failing_field() {
    let stack = TestStack::with(Options {
        start_processor: false,
        start_persister: false,
        ..Options::default()
    })
    .await;
    let api = &stack.api;

    let broken = api
        .post_raw("application/json", "{\"terminalId\": ", Some(&api.token))
        .await;
    assert_eq!(broken.status, 400);
    assert_eq!(broken.error_code(), "validation_failed");

    let typed = api
        .post(&json!({ "terminalId": "T1", "currency": "EUR", "items": [{ "sku": 7 }] }))
        .await;
    assert_eq!(typed.status, 400);
    assert_eq!(typed.body["error"]["details"][0]["path"], "items[0].sku");

    let invalid = api
        .post(&json!({
            "idempotencyKey": "has spaces",
            "currency": "XYZ",
            "issuedAt": "yesterday",
            "items": [
                { "sku": "", "name": "n", "quantity": "0", "unitPrice": "-1", "taxRate": "1.5", "discount": "abc" },
                { "sku": "B", "name": "b", "quantity": "1", "unitPrice": "1.00", "taxRate": "0.1", "discount": "2" }
            ],
            "payments": [ { "method": "cheque", "amount": "-3" } ]
        }))
        .await;
    assert_eq!(invalid.status, 400, "{}", invalid.body);
    let paths: Vec<&str> = invalid.body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for expected in [
        "idempotencyKey",
        "terminalId",
        "currency",
        "issuedAt",
        "items[0].sku",
        "items[0].quantity",
        "items[0].unitPrice",
        "items[0].taxRate",
        "items[0].discount",
        "items[1].discount",
        "payments[0].method",
        "payments[0].amount",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    for d in invalid.body["error"]["details"].as_array().unwrap() {
        assert!(!d["message"].as_str().unwrap().is_empty());
    }

    let no_items = api
        .post(&json!({ "terminalId": "T1", "currency": "EUR", "items": [] }))
        .await;
    assert_eq!(no_items.body["error"]["details"][0]["path"], "items");

    let mut mismatch = invoice_body(Some("body-key"), "T1");
    mismatch["terminalId"] = "T1".into();
    let r = api
        .http
        .post(format!("{}/invoices", api.base))
        .bearer_auth(&api.token)
        .header("Idempotency-Key", "header-key")
        .json(&mismatch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let bad_params = api
        .get("/invoices?limit=0&page=x&state=DONE&from=yesterday")
        .await;
    assert_eq!(bad_params.status, 400);
    assert_eq!(
        bad_params.body["error"]["details"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(api.get("/invoices?limit=101").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401() {
    let stack = TestStack::with(Options {
        start_processor: false,
        start_persister: false,
        ..Options::default()
    })
    .await;
    let api = &stack.api;
    let body = serde_json::to_string(&invoice_body(None, "T1")).unwrap();
    let wrong_key = auth::sign(
        "another-secret-0123456789",
        &auth::Claims {
            sub: "T1".into(),
            tenant: domain::TenantId::parse("x").unwrap(),
            role: auth::Role::Terminal,
            exp: chrono::Utc::now().timestamp() + 60,
        },
    );
    for (what, t) in [
        ("none", None),
        ("garbage", Some("abc.def.ghi")),
        ("expired", Some(token("x", -120).as_str())),
        ("badly signed", Some(wrong_key.as_str())),
    ] {
        let a = api.post_raw("application/json", body.clone(), t).await;
        assert_eq!(a.status, 401, "{what}");
        assert_eq!(a.error_code(), "unauthorized", "{what}");
    }
    let r = reqwest::get(format!("{}/invoices", api.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // /health needs no token (it may say degraded for a moment while a freshly started
    // ingress is still connecting to MongoDB in the background).
    let health = format!("{}/health", api.base);
    crate::support::eventually(
        "health 200 without a token",
        Duration::from_secs(30),
        || {
            let url = health.clone();
            async move { (reqwest::get(&url).await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_oversized_and_non_json_bodies_get_their_codes() {
    let stack = TestStack::with(Options {
        start_processor: false,
        start_persister: false,
        ..Options::default()
    })
    .await;
    let api = &stack.api;
    let missing = api.invoice(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(
        (missing.status.as_u16(), missing.error_code()),
        (404, "not_found")
    );
    assert_eq!(api.invoice("not-a-uuid").await.status, 404);

    let huge = format!("{{\"terminalId\":\"{}\"}}", "x".repeat(300 * 1024));
    let big = api
        .post_raw("application/json", huge, Some(&api.token))
        .await;
    assert_eq!(
        (big.status.as_u16(), big.error_code()),
        (413, "payload_too_large")
    );

    let text = api.post_raw("text/plain", "hello", Some(&api.token)).await;
    assert_eq!(
        (text.status.as_u16(), text.error_code()),
        (415, "unsupported_media_type")
    );
}
