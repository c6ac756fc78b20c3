//! Operators' view over NATS: the services API lists every running instance.

use crate::support::ProcessStack;
use futures_util::StreamExt;
use std::time::Duration;

/// Every answer to a services-API request within `window`.
async fn gather(
    nats: &async_nats::Client,
    subject: &str,
    window: Duration,
) -> Vec<serde_json::Value> {
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(m) = replies.next() => out.push(serde_json::from_slice(&m.payload).unwrap()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_api_lists_every_instance_with_its_endpoints_and_stats() {
    let mut stack = ProcessStack::new();
    for s in ["ingress", "processor", "processor", "persister", "fanout"] {
        stack.spawn(s).await;
    }
    let nats = stack.infra.operator_nats().await;
    let ns = stack.namespace.clone();
    let ping = crate::support::eventually(
        "every instance to answer $SRV.PING",
        Duration::from_secs(20),
        || {
            let (nats, ns) = (nats.clone(), ns.clone());
            async move {
                let mine: Vec<_> = gather(&nats, "$SRV.PING", Duration::from_millis(500))
                    .await
                    .into_iter()
                    .filter(|r| {
                        r["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(&format!("{ns}-")))
                    })
                    .collect();
                (mine.len() == 5).then_some(mine)
            }
        },
    )
    .await;
    let count = |name: &str| {
        ping.iter()
            .filter(|r| r["name"] == format!("{ns}-{name}"))
            .count()
    };
    assert_eq!(
        (
            count("ingress"),
            count("processor"),
            count("persister"),
            count("fanout")
        ),
        (1, 2, 1, 1)
    );
    assert!(ping
        .iter()
        .all(|r| r["type"] == "io.nats.micro.v1.ping_response" && r["version"].is_string()));

    let info = gather(
        &nats,
        &format!("$SRV.INFO.{ns}-processor"),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(info.len(), 2);
    let endpoints: Vec<_> = info[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    for subject in ["dlq.list", "dlq.replay", "stats", "processor.status"] {
        assert!(
            endpoints.contains(&format!("{ns}.admin.{subject}")),
            "{subject} in {endpoints:?}"
        );
    }

    let stats_reply = nats
        .request(format!("{ns}.admin.stats"), "".into())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats_reply.payload).unwrap();
    assert!(
        stats["pending"].is_u64() && stats["failed"].is_u64(),
        "{stats}"
    );
    let stats = gather(
        &nats,
        &format!("$SRV.STATS.{ns}-processor"),
        Duration::from_millis(500),
    )
    .await;
    let served: u64 = stats
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
        .filter(|e| e["name"] == "stats")
        .map(|e| e["num_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 1, "endpoint statistics count the admin request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_request_to_fix_is_answered_400_with_what_is_wrong() {
    let mut stack = ProcessStack::new();
    stack.spawn("processor").await;
    let nats = stack.infra.operator_nats().await;
    let ns = stack.namespace.clone();
    let subject = format!("{ns}.admin.dlq.replay");
    // The processor registers its endpoints once it is connected.
    let first = crate::support::eventually(
        "the processor's dlq.replay endpoint to answer",
        Duration::from_secs(30),
        || {
            let (nats, subject) = (nats.clone(), subject.clone());
            async move { nats.request(subject, "{}".into()).await.ok() }
        },
    )
    .await;
    let second = nats.request(subject, "not json".into()).await.unwrap();
    for (reply, says) in [
        (first, "name an invoiceId, a tenantId"),
        (second, "bad request body"),
    ] {
        let headers = reply.headers.expect("an error is reported in headers");
        let code = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE);
        let text = headers.get(async_nats::service::NATS_SERVICE_ERROR);
        assert_eq!(
            code.map(async_nats::HeaderValue::as_str),
            Some("400"),
            "{text:?}"
        );
        assert!(text.is_some_and(|t| t.as_str().contains(says)), "{text:?}");
    }
}
