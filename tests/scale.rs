//! Scale-out with real binaries: 2 ingress, 3 processor, 2 persister instances.

use crate::support::{eventually, invoice_body, unique, ProcessStack};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_invoices_through_scaled_out_services_are_each_stored_once_completed() {
    let mut stack = ProcessStack::new();
    for service in [
        "ingress",
        "ingress",
        "processor",
        "processor",
        "processor",
        "persister",
        "persister",
    ] {
        stack.spawn(service).await;
    }
    let tenants: Vec<String> = (0..4).map(|_| unique("shop")).collect();
    let apis: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| stack.api(t, i % 2))
        .collect();
    const TOTAL: usize = 2000;
    let started = Instant::now();
    let posts = futures_util::stream::iter(0..TOTAL)
        .map(|i| {
            let api = apis[i % apis.len()].clone();
            async move {
                let a = api
                    .post(&invoice_body(
                        Some(&format!("k-{i}")),
                        &format!("T{}", i % 3),
                    ))
                    .await;
                (
                    a.status.as_u16(),
                    a.body["id"].as_str().unwrap_or_default().to_owned(),
                )
            }
        })
        .buffer_unordered(64);
    use futures_util::StreamExt;
    let answers: Vec<(u16, String)> = posts.collect().await;
    let accept_secs = started.elapsed().as_secs_f64();
    assert!(
        answers.iter().all(|(s, _)| *s == 202),
        "every invoice accepted once: {:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 202)
            .collect::<Vec<_>>()
    );
    // Distinct ids in the answers: a MongoDB count alone could not see a second
    // acceptance of one key (the unique index would have refused its document).
    let answered: std::collections::BTreeSet<String> =
        answers.into_iter().map(|(_, id)| id).collect();
    assert_eq!(answered.len(), TOTAL, "one id per accepted invoice");

    let coll = stack.invoices().await;
    eventually(
        "all 2000 stored COMPLETED",
        Duration::from_secs(120),
        || {
            let coll = coll.clone();
            async move {
                (coll
                    .count_documents(mongodb::bson::doc! { "state": "COMPLETED" })
                    .await
                    .ok()?
                    == TOTAL as u64)
                    .then_some(())
            }
        },
    )
    .await;
    let total_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        coll.count_documents(mongodb::bson::doc! {}).await.unwrap(),
        TOTAL as u64,
        "each stored exactly once"
    );
    let stored: std::collections::BTreeSet<String> = coll
        .distinct("_id", mongodb::bson::doc! {})
        .await
        .unwrap()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        stored, answered,
        "the stored invoices are exactly the answered ones"
    );
    for (t, tenant) in tenants.iter().enumerate() {
        let n = coll
            .count_documents(mongodb::bson::doc! { "tenantId": tenant })
            .await
            .unwrap();
        assert_eq!(n, (TOTAL / tenants.len()) as u64, "tenant {t}");
    }
    println!(
        "scale-out: {TOTAL} invoices accepted in {accept_secs:.2}s ({:.0}/s), all COMPLETED and stored in {total_secs:.2}s ({:.0}/s end to end)",
        TOTAL as f64 / accept_secs,
        TOTAL as f64 / total_secs
    );
}
