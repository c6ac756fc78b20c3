//! The fiscal ledger end to end (contract § Fiscal record and ledger): numbering at
//! COMPLETED, the chain re-checked from the export by a verifier written here from the
//! contract's text alone (it shares no code with `domain::fiscal`), tampering named by
//! `/ledger/verify`, credit notes, and numbering that stays 1..N through kill -9 of
//! workers and a NATS restart.

use crate::support::{
    eventually, infra::PrivateServer, invoice_body, unique, ProcessStack, TestStack,
};
use auth::Role;
use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The contract's chain rules, applied to exported lines: numbers 1..N in order, each
/// hash the SHA-256 (uppercase hex) of the `v1|…` text, each `previousHash` the hash of
/// the line before (empty for number 1). Returns the invoice ids in number order.
fn independent_verify(lines: &[Value]) -> Result<Vec<String>, String> {
    let mut previous = String::new();
    let mut ids = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let s = |k: &str| {
            l[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("line {i}: {k} is not text: {l}"))
        };
        let number = l["number"].as_u64().ok_or(format!("line {i}: number"))?;
        if number != i as u64 + 1 {
            return Err(format!("line {i} has number {number}"));
        }
        if s("previousHash")? != previous {
            return Err(format!(
                "number {number}: previousHash is not the hash before"
            ));
        }
        let text = format!(
            "v1|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            s("tenantId")?,
            s("series")?,
            number,
            s("kind")?,
            s("invoiceId")?,
            s("issuedAt")?,
            s("currency")?,
            s("net")?,
            s("tax")?,
            s("total")?,
            previous,
            s("chainedAt")?,
        );
        let hash = hex::encode(Sha256::digest(text.as_bytes())).to_uppercase();
        if s("hash")? != hash {
            return Err(format!("number {number}: hash does not match its text"));
        }
        if !l["taxBreakdown"].is_array() {
            return Err(format!("number {number}: no taxBreakdown"));
        }
        previous = hash;
        ids.push(s("invoiceId")?);
    }
    Ok(ids)
}

async fn export(api: &crate::support::stack::Api, query: &str) -> Vec<Value> {
    let (status, content_type, text) = api
        .as_role(Role::Manager)
        .get_text(&format!("/ledger/export{query}"))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "application/x-ndjson");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn verify(api: &crate::support::stack::Api) -> Value {
    let a = api.as_role(Role::Manager).get("/ledger/verify").await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

fn unpaid_body(key: &str) -> Value {
    let mut body = invoice_body(Some(key), "T1");
    body["payments"] = json!([{ "method": "cash", "amount": "1.00" }]);
    body
}

async fn post_ok(api: &crate::support::stack::Api, body: &Value) -> String {
    let a = api.post(body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_invoices_carry_consecutive_records_that_an_independent_verifier_accepts() {
    use crate::support::stack::{next_frame, Received};
    let stack = TestStack::start().await;
    let api = &stack.api;
    let fanout = stack.start_fanout(&[]).await;
    let mut socket = fanout.connect(&stack.tenant, "").await;
    let queued = api.post(&invoice_body(Some(&unique("k-")), "T1")).await;
    assert_eq!(
        queued.body["fiscal"],
        Value::Null,
        "no record before COMPLETED"
    );
    assert_eq!(queued.body["kind"], "invoice");
    assert_eq!(queued.body["creditFor"], Value::Null);
    let mut ids = vec![queued.body["id"].as_str().unwrap().to_owned()];
    for _ in 0..9 {
        ids.push(post_ok(api, &invoice_body(Some(&unique("k-")), "T1")).await);
    }
    let failed = post_ok(api, &unpaid_body(&unique("k-"))).await;
    let mut numbers = BTreeSet::new();
    for id in &ids {
        let done = api
            .wait_state(id, "COMPLETED", Duration::from_secs(30))
            .await;
        let fiscal = &done["fiscal"];
        assert_eq!(fiscal["series"], "A", "{done}");
        assert_eq!(fiscal["hash"].as_str().unwrap().len(), 64);
        numbers.insert(fiscal["number"].as_u64().unwrap());
    }
    assert_eq!(numbers, (1..=10).collect(), "exactly 1..10");
    // Terminals get the record in the COMPLETED frame (and nothing before it).
    let completed_frame = loop {
        match next_frame(&mut socket, Duration::from_secs(10)).await {
            Some(Received::Frame(f)) if f["invoiceId"] == ids[0] && f["state"] == "COMPLETED" => {
                break f
            }
            Some(Received::Frame(f)) if f["invoiceId"] == ids[0] => {
                assert_eq!(f["invoice"]["fiscal"], Value::Null, "{f}");
            }
            Some(Received::Frame(_)) => continue,
            other => panic!("no COMPLETED frame: {other:?}\n{}", fanout.log()),
        }
    };
    assert_eq!(
        completed_frame["invoice"]["fiscal"],
        api.invoice(&ids[0]).await.body["fiscal"]
    );
    let f = api
        .wait_state(&failed, "FAILED", Duration::from_secs(30))
        .await;
    assert_eq!(f["fiscal"], Value::Null, "a FAILED invoice has no record");

    let lines = export(api, "").await;
    let chained = independent_verify(&lines).expect("the chain holds by the contract's rules");
    assert_eq!(
        chained.iter().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(!chained.contains(&failed));
    // The record on the invoice is the exported one.
    let one = api.invoice(&ids[3]).await.body;
    let line = lines.iter().find(|l| l["invoiceId"] == ids[3]).unwrap();
    assert_eq!(one["fiscal"]["hash"], line["hash"]);
    assert_eq!(one["totals"]["total"], line["total"]);
    assert_eq!(line["taxBreakdown"], one["totals"]["taxBreakdown"]);
    let from_7 = export(api, "?series=A&from=7").await;
    assert_eq!(from_7.len(), 4);
    assert_eq!(from_7[0]["number"], 7);

    let v = verify(api).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["count"], 10);
    assert_eq!(v["lastNumber"], 10);
    assert_eq!(v["lastHash"], lines[9]["hash"]);

    // Terminals may not read the ledger; another tenant's series is its own.
    let denied = api.get("/ledger/verify").await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let other = stack.api_for(&unique("other"));
    assert_eq!(verify(&other).await["count"], 0);
    assert!(export(&other, "").await.is_empty());
    let bad = api
        .as_role(Role::Manager)
        .get("/ledger/verify?series=no%20such")
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_record_whose_invoice_hash_or_existence_was_tampered_with() {
    let stack = TestStack::start().await;
    let invoices = stack.mongo().await;
    let ledger = invoices
        .client()
        .database(&stack.db)
        .collection::<Document>("ledger");
    // One tenant per tampering, each with a clean series of 6.
    let mut cases = Vec::new();
    for _ in 0..3 {
        let api = stack.api_for(&unique("shop"));
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(post_ok(&api, &invoice_body(Some(&unique("k-")), "T1")).await);
        }
        for id in &ids {
            api.wait_state(id, "COMPLETED", Duration::from_secs(30))
                .await;
        }
        eventually(
            "all six stored COMPLETED",
            Duration::from_secs(30),
            || async {
                let n = invoices
                    .count_documents(doc! { "tenantId": &api.tenant, "state": "COMPLETED" })
                    .await
                    .ok()?;
                (n == 6).then_some(())
            },
        )
        .await;
        assert_eq!(verify(&api).await["ok"], true);
        let record = |n: i64| {
            let ledger = ledger.clone();
            let tenant = api.tenant.clone();
            async move {
                ledger
                    .find_one(doc! { "tenantId": tenant, "number": n })
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let (third, fifth) = (record(3).await, record(5).await);
        cases.push((api, third, fifth));
    }

    // A total edited on the stored invoice.
    let (api, third, _) = &cases[0];
    invoices
        .update_one(
            doc! { "_id": third.get_str("invoiceId").unwrap() },
            doc! { "$set": { "totals.total": "0.01" } },
        )
        .await
        .unwrap();
    let v = verify(api).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["firstBroken"]["number"], 3, "{v}");
    assert!(
        v["firstBroken"]["reason"]
            .as_str()
            .unwrap()
            .contains("totals"),
        "{v}"
    );

    // A record's hash replaced.
    let (api, _, fifth) = &cases[1];
    ledger
        .update_one(
            doc! { "_id": fifth.get_str("_id").unwrap() },
            doc! { "$set": { "hash": "0".repeat(64) } },
        )
        .await
        .unwrap();
    let v = verify(api).await;
    assert_eq!(v["firstBroken"]["number"], 5, "{v}");
    assert_eq!(v["count"], 4, "records 1..4 still hold");

    // A record deleted.
    let (api, third, _) = &cases[2];
    ledger
        .delete_one(doc! { "_id": third.get_str("_id").unwrap() })
        .await
        .unwrap();
    let v = verify(api).await;
    assert_eq!(v["firstBroken"]["number"], 3, "{v}");
    assert!(
        v["firstBroken"]["reason"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{v}"
    );
    // The independent verifier sees the same break in the export.
    let err = independent_verify(&export(api, "").await).unwrap_err();
    assert!(err.contains("number 4") || err.contains("line 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_notes_are_numbered_negative_and_never_exceed_the_invoice() {
    let stack = TestStack::start().await;
    let api = stack.api_for(&unique("shop"));
    let manager = api.as_role(Role::Manager);
    let mut body = invoice_body(Some(&unique("k-")), "T1");
    body["items"] = json!([
        { "sku": "COFFEE-L", "name": "Coffee large", "quantity": "4", "unitPrice": "3.50", "taxRate": "0.10" },
        { "sku": "CAKE", "name": "Cake", "quantity": "1", "unitPrice": "4.00", "taxRate": "0.21" }
    ]);
    body["payments"] = json!([{ "method": "card", "amount": "20.24" }]);
    let original = post_ok(&api, &body).await;
    let whole_one = post_ok(&api, &invoice_body(Some(&unique("k-")), "T2")).await;
    api.wait_state(&original, "COMPLETED", Duration::from_secs(30))
        .await;
    api.wait_state(&whole_one, "COMPLETED", Duration::from_secs(30))
        .await;
    let path = |id: &str| format!("/invoices/{id}/credit-notes");

    // Terminals may not credit; a queued invoice or an unknown id cannot be credited.
    let denied = api
        .send("POST", &path(&original), Some(&json!({ "reason": "r" })))
        .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let missing = manager
        .send(
            "POST",
            &path(&domain::InvoiceId::generate().to_string()),
            Some(&json!({ "reason": "r" })),
        )
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    // Another tenant's manager does not see this tenant's invoice, let alone credit it.
    let stranger = stack
        .api_for(&unique("other"))
        .as_role(Role::Manager)
        .send(
            "POST",
            &path(&whole_one),
            Some(&json!({ "reason": "r", "idempotencyKey": unique("c-") })),
        )
        .await;
    assert_eq!(stranger.status, 404, "{}", stranger.body);
    let no_reason = manager
        .send("POST", &path(&original), Some(&json!({})))
        .await;
    assert_eq!(no_reason.status, 400, "{}", no_reason.body);

    // Whole invoice.
    let whole = manager
        .send(
            "POST",
            &path(&whole_one),
            Some(&json!({ "reason": "returned", "idempotencyKey": unique("c-") })),
        )
        .await;
    assert_eq!(whole.status, 202, "{}", whole.body);
    assert_eq!(whole.body["kind"], "credit_note");
    assert_eq!(whole.body["creditFor"], whole_one.as_str());
    assert_eq!(whole.body["items"][0]["quantity"], "-2");
    let note = api
        .wait_state(
            whole.body["id"].as_str().unwrap(),
            "COMPLETED",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(note["totals"]["total"], "-7.70", "{note}");
    assert_eq!(note["totals"]["change"], "0.00");
    assert!(
        note["fiscal"]["number"].as_u64().is_some(),
        "its own record: {note}"
    );
    let again = manager
        .send(
            "POST",
            &path(&whole_one),
            Some(&json!({ "reason": "again" })),
        )
        .await;
    assert_eq!(again.status, 422, "{}", again.body);
    assert_eq!(again.error_code(), "credit_exceeds_invoice");
    // A credit note of a credit note.
    let of_note = manager
        .send(
            "POST",
            &path(note["id"].as_str().unwrap()),
            Some(&json!({ "reason": "r" })),
        )
        .await;
    assert_eq!(of_note.status, 422, "{}", of_note.body);
    assert_eq!(of_note.error_code(), "not_creditable");

    // Partial, idempotent by key: the same key and body answer the same note.
    let key = unique("c-");
    let partial = json!({ "reason": "one broken", "idempotencyKey": key,
                          "items": [{ "sku": "COFFEE-L", "quantity": "1" }] });
    let first = manager.send("POST", &path(&original), Some(&partial)).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let replay = manager.send("POST", &path(&original), Some(&partial)).await;
    assert!(
        replay.status == 200 || replay.status == 202,
        "{}",
        replay.body
    );
    assert_eq!(
        replay.body["id"], first.body["id"],
        "one credit note per key"
    );
    let mut reused = partial.clone();
    reused["items"][0]["quantity"] = json!("2");
    let reused = manager.send("POST", &path(&original), Some(&reused)).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.error_code(), "idempotency_key_reused");
    let unknown_sku = manager
        .send(
            "POST",
            &path(&original),
            Some(&json!({ "reason": "r", "items": [{ "sku": "NOPE", "quantity": "1" }] })),
        )
        .await;
    assert_eq!(unknown_sku.status, 400, "{}", unknown_sku.body);
    assert_eq!(
        unknown_sku.body["error"]["details"][0]["path"],
        "items[0].sku"
    );

    // 3 coffees are left: two concurrent requests for 2 each, one must be refused.
    let two = |k: String| {
        json!({ "reason": "race", "idempotencyKey": k,
                                 "items": [{ "sku": "COFFEE-L", "quantity": "2" }] })
    };
    let (p, b1, b2) = (path(&original), two(unique("c-")), two(unique("c-")));
    let (a, b) = tokio::join!(
        manager.send("POST", &p, Some(&b1)),
        manager.send("POST", &p, Some(&b2)),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [202, 422], "{} / {}", a.body, b.body);
    let won = if a.status == 202 { &a } else { &b };
    let lost = if a.status == 202 { &b } else { &a };
    assert_eq!(lost.error_code(), "credit_exceeds_invoice");
    // What is left: 1 coffee and the cake, exactly.
    let rest = manager
        .send("POST", &path(&original), Some(&json!({ "reason": "rest",
            "items": [{ "sku": "COFFEE-L", "quantity": "1" }, { "sku": "CAKE", "quantity": "1" }] })))
        .await;
    assert_eq!(rest.status, 202, "{}", rest.body);
    let over = manager
        .send(
            "POST",
            &path(&original),
            Some(&json!({ "reason": "over",
            "items": [{ "sku": "CAKE", "quantity": "0.001" }] })),
        )
        .await;
    assert_eq!(over.error_code(), "credit_exceeds_invoice", "{}", over.body);

    let mut credited = rust_decimal::Decimal::ZERO;
    for id in [&first.body["id"], &won.body["id"], &rest.body["id"]] {
        let n = api
            .wait_state(id.as_str().unwrap(), "COMPLETED", Duration::from_secs(30))
            .await;
        credited += n["totals"]["total"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap();
    }
    let was = api.invoice(&original).await.body;
    assert_eq!(
        -credited,
        was["totals"]["total"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        "the credit notes together undo the invoice exactly"
    );
    // Invoices and credit notes share the series; the chain holds.
    let lines = export(&api, "").await;
    assert_eq!(lines.len(), 2 + 4, "2 invoices and 4 credit notes");
    assert_eq!(
        lines.iter().filter(|l| l["kind"] == "credit_note").count(),
        4
    );
    independent_verify(&lines).unwrap();
    assert_eq!(verify(&api).await["ok"], true);
}

/// Posts until the key is answered 202 or 200 (a NATS restart answers 503 meanwhile).
async fn post_until_accepted(api: &crate::support::stack::Api, body: &Value) -> String {
    for _ in 0..600 {
        let r = api
            .http
            .post(format!("{}/invoices", api.base))
            .bearer_auth(&api.token)
            .json(body)
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            if let Ok(v) = r.json::<Value>().await {
                if status == 202 || status == 200 {
                    return v["id"].as_str().unwrap().to_owned();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never accepted: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_invoices_through_kill_9_and_a_nats_restart_number_every_series_1_to_n() {
    let mut nats = PrivateServer::nats().await;
    let mut stack = ProcessStack::new();
    stack.infra.nats_url = nats.url.clone();
    stack.extra_env.insert("ACK_WAIT_MS".into(), "2000".into());
    stack.spawn("ingress").await;
    let processors: Vec<usize> = vec![
        stack.spawn("processor").await,
        stack.spawn("processor").await,
        stack.spawn("processor").await,
    ];
    let persisters = [
        stack.spawn("persister").await,
        stack.spawn("persister").await,
    ];
    let tenants: Vec<String> = (0..3).map(|_| unique("shop")).collect();
    let apis: Vec<_> = tenants.iter().map(|t| stack.api(t, 0)).collect();
    const TOTAL: usize = 5000;
    // Every 25th is underpaid: FAILED, and so never numbered.
    let body = |i: usize| {
        if i % 25 == 7 {
            unpaid_body(&format!("k-{i}"))
        } else {
            invoice_body(Some(&format!("k-{i}")), &format!("T{}", i % 4))
        }
    };
    let post = |i: usize| {
        let api = apis[i % 3].clone();
        let b = body(i);
        async move { (i, post_until_accepted(&api, &b).await) }
    };
    let mut answers: BTreeMap<usize, String> = BTreeMap::new();
    {
        let mut posts = futures_util::stream::iter(0..TOTAL)
            .map(post)
            .buffer_unordered(48);
        let mut killed = false;
        let mut nats_down = false;
        while let Some((i, id)) = posts.next().await {
            answers.insert(i, id);
            if answers.len() == 1500 && !killed {
                stack.kill(processors[0]).await;
                stack.kill(persisters[0]).await;
                killed = true;
            }
            if answers.len() == 3000 && !nats_down {
                nats.kill().await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                nats.start().await;
                nats_down = true;
            }
        }
    }
    assert_eq!(answers.len(), TOTAL);
    let distinct: BTreeSet<&String> = answers.values().collect();
    assert_eq!(distinct.len(), TOTAL, "one invoice per key");

    let client = mongodb::Client::with_uri_str(&stack.infra.mongodb_uri)
        .await
        .unwrap();
    let db = client.database(&stack.namespace);
    let invoices = db.collection::<Document>("invoices");
    let expected_failed = (0..TOTAL).filter(|i| i % 25 == 7).count() as u64;
    eventually(
        "every invoice final and stored",
        Duration::from_secs(240),
        || async {
            let done = invoices
                .count_documents(doc! { "state": { "$in": ["COMPLETED", "FAILED"] } })
                .await
                .ok()?;
            (done == TOTAL as u64).then_some(())
        },
    )
    .await;
    for (t, tenant) in tenants.iter().enumerate() {
        let mut completed = BTreeSet::new();
        let mut cursor = invoices
            .find(doc! { "tenantId": tenant, "state": "COMPLETED" })
            .await
            .unwrap();
        while let Some(d) = futures_util::TryStreamExt::try_next(&mut cursor)
            .await
            .unwrap()
        {
            completed.insert(d.get_str("_id").unwrap().to_owned());
        }
        let failed_with_record = invoices
            .count_documents(
                doc! { "tenantId": tenant, "state": "FAILED", "fiscal": { "$ne": null } },
            )
            .await
            .unwrap();
        assert_eq!(failed_with_record, 0, "a FAILED invoice has no record");
        let failed = invoices
            .count_documents(doc! { "tenantId": tenant, "state": "FAILED" })
            .await
            .unwrap();
        assert_eq!(
            completed.len() as u64 + failed,
            answers.keys().filter(|i| *i % 3 == t).count() as u64
        );
        let lines = export(&apis[t], "").await;
        let chained = independent_verify(&lines)
            .unwrap_or_else(|e| panic!("tenant {tenant}: the chain breaks: {e}"));
        let numbered: BTreeSet<String> = chained.iter().cloned().collect();
        assert_eq!(numbered.len(), chained.len(), "no invoice with two numbers");
        assert_eq!(
            numbered, completed,
            "every COMPLETED invoice has exactly one record, nothing else has one"
        );
        let v = verify(&apis[t]).await;
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["lastNumber"], completed.len() as u64);
    }
    let failed_total = invoices
        .count_documents(doc! { "state": "FAILED" })
        .await
        .unwrap();
    assert_eq!(failed_total, expected_failed);
    println!(
        "ledger chaos: {TOTAL} invoices, 3 tenants, 3 processors + 2 persisters, kill -9 of one each and a NATS restart: \
         every series 1..N with no gap or duplicate, {expected_failed} FAILED without a record"
    );
}
