//! The catalog and tenant settings end to end (contract § Catalog and tenant): CRUD and
//! delta sync, roles, invoices priced by sku (and kept at that price), tenant defaults,
//! tenants never mixing.

use crate::support::{unique, TestStack};
use auth::Role;
use serde_json::json;
use std::time::Duration;

fn product(name: &str, price: &str, rate: &str) -> serde_json::Value {
    json!({ "name": name, "unitPrice": price, "taxRate": rate })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_written_by_managers_versioned_and_synced_by_delta() {
    let stack = TestStack::start().await;
    let manager = stack.api.as_role(Role::Manager);
    let terminal = &stack.api;

    let created = manager
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Coffee large", "3.50", "0.10")),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let v1 = created.body["version"].as_u64().unwrap();
    assert_eq!(created.body["unitPrice"], "3.50");
    assert_eq!(created.body["active"], true);
    // The same values again, in another spelling: no new version.
    let same = manager
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Coffee large", "3.5", "0.1")),
        )
        .await;
    assert_eq!(same.status, 200);
    assert_eq!(same.body["version"], v1);
    let changed = manager
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Coffee large", "3.80", "0.10")),
        )
        .await;
    assert_eq!(changed.status, 200);
    let v2 = changed.body["version"].as_u64().unwrap();
    assert!(v2 > v1);
    let tea = manager
        .send(
            "PUT",
            "/products/TEA",
            Some(&product("Tea", "2.00", "0.10")),
        )
        .await;
    assert_eq!(tea.status, 201);

    // A terminal copies the catalog, then asks only for what changed.
    let all = terminal.get("/products?since=0").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let skus: Vec<_> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].clone())
        .collect();
    assert_eq!(
        skus,
        [json!("COFFEE-L"), json!("TEA")],
        "oldest change first"
    );
    let next = all.body["next"].as_u64().unwrap();
    let gone = manager.send("DELETE", "/products/TEA", None).await;
    assert_eq!(gone.status, 200);
    assert_eq!(gone.body["active"], false);
    let delta = terminal.get(&format!("/products?since={next}")).await;
    let data = delta.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "only the deactivation: {}", delta.body);
    assert_eq!(data[0]["sku"], "TEA");
    assert_eq!(data[0]["active"], false);
    let empty = terminal
        .get(&format!("/products?since={}", delta.body["next"]))
        .await;
    assert_eq!(empty.body["data"], json!([]));
    assert_eq!(empty.body["next"], delta.body["next"]);

    assert_eq!(
        terminal.get("/products/TEA").await.body["active"],
        false,
        "kept for history"
    );
    assert_eq!(terminal.get("/products/NOPE").await.status, 404);
    assert_eq!(
        manager.send("DELETE", "/products/NOPE", None).await.status,
        404
    );
    assert_eq!(terminal.get("/products?limit=0").await.status, 400);
    let bad = manager
        .send("PUT", "/products/X", Some(&product("", "-1", "2")))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["details"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_writes_need_a_manager_and_tenant_settings_an_admin() {
    let stack = TestStack::start().await;
    let body = product("Tea", "2.00", "0.10");
    let refused = stack.api.send("PUT", "/products/TEA", Some(&body)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.error_code(), "forbidden");
    assert_eq!(
        stack.api.send("DELETE", "/products/TEA", None).await.status,
        403
    );
    let settings = json!({ "name": "Acme", "defaultCurrency": "EUR" });
    let manager = stack.api.as_role(Role::Manager);
    assert_eq!(
        manager.send("PUT", "/tenant", Some(&settings)).await.status,
        403
    );
    let admin = stack.api.as_role(Role::Admin);
    assert_eq!(
        admin.send("PUT", "/products/TEA", Some(&body)).await.status,
        201,
        "admin includes manager"
    );
    assert_eq!(
        admin.send("PUT", "/tenant", Some(&settings)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_by_sku_is_priced_at_acceptance_and_keeps_that_price() {
    let stack = TestStack::start().await;
    let manager = stack.api.as_role(Role::Manager);
    manager
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Coffee large", "3.50", "0.10")),
        )
        .await;
    let key = unique("k-");
    let body = json!({
        "idempotencyKey": key, "terminalId": "T1", "currency": "EUR",
        "items": [ { "sku": "COFFEE-L", "quantity": "2" },
                   { "sku": "OWN", "name": "Priced by the till", "quantity": "1", "unitPrice": "1.00", "taxRate": "0.21" } ],
        "payments": [ { "method": "cash", "amount": "20.00" } ]
    });
    let first = stack.api.post(&body).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["items"][0]["name"], "Coffee large");
    assert_eq!(first.body["items"][0]["unitPrice"], "3.50");
    assert_eq!(
        first.body["items"][1]["unitPrice"], "1.00",
        "a line with its own values keeps them"
    );
    let id = first.body["id"].as_str().unwrap().to_owned();
    let done = stack
        .api
        .wait_state(&id, "COMPLETED", Duration::from_secs(30))
        .await;
    assert_eq!(
        done["totals"]["total"], "8.91",
        "2 × 3.50 + 10 %, 1.00 + 21 %"
    );

    // The price changes; the same request again is a replay of the invoice as priced.
    manager
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Coffee large", "4.00", "0.10")),
        )
        .await;
    let again = stack.api.post(&body).await;
    assert_eq!(
        again.status, 200,
        "a replay, not a key reused: {}",
        again.body
    );
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.body["items"][0]["unitPrice"], "3.50");
    // A new invoice gets the new price at once (this ingress dropped its cached copy).
    let mut fresh = body.clone();
    fresh["idempotencyKey"] = unique("k-").into();
    let later = stack.api.post(&fresh).await;
    assert_eq!(later.status, 202);
    assert_eq!(later.body["items"][0]["unitPrice"], "4.00");

    // Unknown or inactive sku without values: 400 naming the line.
    manager.send("DELETE", "/products/COFFEE-L", None).await;
    let mut unknown = fresh.clone();
    unknown["idempotencyKey"] = unique("k-").into();
    let refused = stack.api.post(&unknown).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let paths: Vec<_> = refused.body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].clone())
        .collect();
    assert!(paths.contains(&json!("items[0].sku")), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_settings_default_and_supply_the_currency() {
    let stack = TestStack::start().await;
    let defaults = stack.api.get("/tenant").await;
    assert_eq!(defaults.status, 200);
    assert_eq!(
        defaults.body,
        json!({ "id": stack.tenant, "name": stack.tenant, "issuerTaxId": null, "defaultCurrency": null, "series": "A" })
    );
    let mut body = crate::support::invoice_body(None, "T1");
    body.as_object_mut().unwrap().remove("currency");
    let missing = stack.api.post(&body).await;
    assert_eq!(missing.status, 400, "no currency and no default");
    let admin = stack.api.as_role(Role::Admin);
    let set = admin
        .send("PUT", "/tenant", Some(&json!({ "name": "Acme SL", "issuerTaxId": "B12345678", "defaultCurrency": "EUR", "series": "T1" })))
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(stack.api.get("/tenant").await.body["series"], "T1");
    let defaulted = stack.api.post(&body).await;
    assert_eq!(defaulted.status, 202, "{}", defaulted.body);
    assert_eq!(defaulted.body["currency"], "EUR");
    let bad = admin
        .send("PUT", "/tenant", Some(&json!({ "defaultCurrency": "XXX" })))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_catalogs_never_mix() {
    let stack = TestStack::start().await;
    let other = stack.api_for(&unique("shop"));
    stack
        .api
        .as_role(Role::Manager)
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Coffee", "3.50", "0.10")),
        )
        .await;
    other
        .as_role(Role::Manager)
        .send(
            "PUT",
            "/products/COFFEE-L",
            Some(&product("Other coffee", "9.99", "0.21")),
        )
        .await;
    assert_eq!(
        stack.api.get("/products/COFFEE-L").await.body["unitPrice"],
        "3.50"
    );
    assert_eq!(
        other.get("/products/COFFEE-L").await.body["unitPrice"],
        "9.99"
    );
    let only_mine = stack.api.get("/products?since=0").await;
    assert_eq!(only_mine.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(other.get("/products/TEA").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_is_pushed_to_the_tenants_sockets_only() {
    use crate::support::stack::{next_frame, Received};
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    let mut mine = fanout.connect(&stack.tenant, "").await;
    let other_tenant = unique("shop");
    let mut theirs = fanout.connect(&other_tenant, "").await;
    // A socket's subscription is in place once the upgrade answered; give the notice
    // subscriber of the instance a moment to exist too (it starts with the process).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = stack
        .api
        .as_role(Role::Manager)
        .send(
            "PUT",
            "/products/TEA",
            Some(&product("Tea", "2.00", "0.10")),
        )
        .await;
    let version = written.body["version"].as_u64().unwrap();
    let frame = loop {
        match next_frame(&mut mine, Duration::from_secs(10)).await {
            Some(Received::Frame(f)) if f["type"] == "catalog.changed" => break f,
            Some(Received::Frame(_)) => continue,
            other => panic!("no catalog.changed frame: {other:?}\n{}", fanout.log()),
        }
    };
    assert_eq!(
        frame,
        json!({ "type": "catalog.changed", "version": version })
    );
    assert!(
        next_frame(&mut theirs, Duration::from_millis(500))
            .await
            .is_none(),
        "another tenant's socket hears nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_changed_through_one_ingress_is_charged_by_the_other_at_once() {
    // Two ingress processes: each caches the catalog; the notice must reach the other
    // long before the cache's 30 s expiry would.
    let mut stack = crate::support::ProcessStack::new();
    let a = stack.spawn("ingress").await;
    let b = stack.spawn("ingress").await;
    let tenant = unique("shop");
    let (via_a, via_b) = (stack.api(&tenant, a), stack.api(&tenant, b));
    let manager = via_a.as_role(Role::Manager);
    let body = |key: String| {
        json!({ "idempotencyKey": key, "terminalId": "T1", "currency": "EUR",
                "items": [ { "sku": "TEA", "quantity": "1" } ] })
    };
    assert_eq!(
        manager
            .send(
                "PUT",
                "/products/TEA",
                Some(&product("Tea", "2.00", "0.10"))
            )
            .await
            .status,
        201
    );
    // B prices (and caches) the old price.
    let first = via_b.post(&body(unique("k-"))).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["items"][0]["unitPrice"], "2.00");
    manager
        .send(
            "PUT",
            "/products/TEA",
            Some(&product("Tea", "2.40", "0.10")),
        )
        .await;
    let changed_at = std::time::Instant::now();
    let new_price = crate::support::eventually(
        "ingress B to charge the new price",
        Duration::from_secs(10),
        || async {
            let a = via_b.post(&body(unique("k-"))).await;
            (a.body["items"][0]["unitPrice"] == "2.40").then_some(changed_at.elapsed())
        },
    )
    .await;
    println!("ingress B charged the new price {new_price:?} after the PUT through A");
}
