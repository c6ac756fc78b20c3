//! Metrics and request ids across the four real service binaries: every `/metrics`
//! parses as Prometheus text and its figures move with traffic; one request's
//! `X-Request-Id` shows up in each service's log lines for that invoice.

use crate::support::stack::{next_frame, Received};
use crate::support::{eventually, invoice_body, unique, ProcessStack};
use std::collections::BTreeMap;
use std::time::Duration;

/// One scrape: `name{labels}` (labels as the server wrote them) → value. Panics on any
/// line that is not a comment, a blank or a well-formed sample, and on a sample of a
/// metric without a `# TYPE` line before it.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("a TYPE line names its metric");
            let kind = parts.next().expect("a TYPE line gives a kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| typed.iter().any(|t| t == base))
            .unwrap_or(name);
        assert!(
            typed.iter().any(|t| t == family),
            "sample before its # TYPE line: {line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    parse_prometheus(&r.text().await.unwrap())
}

/// The value of the series `name{…}` whose labels include every `label="value"` of
/// `with`, 0 if there is none (a counter never incremented is not rendered).
fn value(m: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    m.iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && with.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 3\n\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let m = parse_prometheus(ok);
    assert_eq!(value(&m, "a_total", &["k=\"v\""]), 3.0);
    assert_eq!(value(&m, "h_count", &[]), 1.0);
    for bad in [
        "a_total 3\n",                     // no TYPE
        "# TYPE a counter\na three\n",     // not a number
        "# TYPE a counter\n1a 3\n",        // bad name
        "# TYPE a counter\na{k=\"v\" 3\n", // unclosed labels
        "# TYPE a wibble\na 3\n",          // bad kind
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_prometheus_metrics_that_move_with_traffic_and_one_request_id_is_in_every_log(
) {
    let mut stack = ProcessStack::new();
    // Debug lines of the services (one per invoice and stage), warnings of the rest.
    stack.extra_env.insert(
        "RUST_LOG".into(),
        "warn,ingress=debug,processor=debug,persister=debug,fanout=debug".into(),
    );
    stack
        .extra_env
        .insert("BACKLOG_POLL_MS".into(), "200".into());
    let services = ["ingress", "processor", "persister", "fanout"];
    let mut ports = BTreeMap::new();
    for s in services {
        let i = stack.spawn(s).await;
        ports.insert(s, stack.instances[i].port.unwrap());
    }
    // Waited for on /health, never /metrics: the first figures must be counted even
    // if nobody scraped before (a recorder installed by the first scrape lost them).
    for s in ["processor", "persister"] {
        eventually(
            &format!("{s} to answer /health"),
            Duration::from_secs(60),
            || async {
                reqwest::get(format!("http://127.0.0.1:{}/health", ports[s]))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }
    // Fresh processes: every figure starts at zero, so "moved by" is the figure itself.
    let before: BTreeMap<&str, BTreeMap<String, f64>> =
        services.iter().map(|s| (*s, BTreeMap::new())).collect();

    // A socket on fanout, so its frame counter has someone to count for.
    let tenant = unique("m");
    let token = crate::support::stack::token(&tenant, 3600);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/ws?token={token}",
        ports["fanout"]
    ))
    .await
    .unwrap();

    let api = stack.api(&tenant, 0);
    let n = 10;
    let request_id = unique("trace-");
    let mut ids = Vec::new();
    for i in 0..n {
        let mut req = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/invoices", ports["ingress"]))
            .bearer_auth(&token)
            .json(&invoice_body(Some(&unique(&format!("k{i}-"))), "T1"));
        if i == 0 {
            req = req.header("X-Request-Id", &request_id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 202);
        if i == 0 {
            assert_eq!(r.headers()["x-request-id"], request_id.as_str());
        }
        let body: serde_json::Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        api.wait_state(id, "COMPLETED", Duration::from_secs(60))
            .await;
    }
    // Every frame read: 3 per invoice.
    let mut frames = 0;
    while frames < 3 * n {
        match next_frame(&mut ws, Duration::from_secs(30)).await {
            Some(Received::Frame(f)) if f["type"] == "invoice.state" => frames += 1,
            Some(Received::Frame(_)) => {}
            other => panic!("expected a frame, got {other:?} after {frames}"),
        }
    }

    let nf = n as f64;
    let moved = |s: &str, m: &BTreeMap<String, f64>, name: &str, with: &[&str]| {
        value(m, name, with) - value(&before[s], name, with)
    };
    // Counters are read until the persister's acks and the watchers caught up.
    let after = eventually("every figure to move", Duration::from_secs(60), || async {
        let mut a = BTreeMap::new();
        for s in services {
            a.insert(s, scrape(ports[s]).await);
        }
        let ready = moved(
            "persister",
            &a["persister"],
            "pos_deliveries_total",
            &["consumer=\"persister\"", "outcome=\"done\""],
        ) >= 3.0 * nf
            && a["ingress"].get("pos_consumer_pending{consumer=\"persister\"}") == Some(&0.0)
            && a["ingress"].get("pos_consumer_ack_pending{consumer=\"persister\"}") == Some(&0.0)
            && moved("fanout", &a["fanout"], "pos_fanout_frames_sent_total", &[]) >= 3.0 * nf;
        ready.then_some(a)
    })
    .await;

    let ingress = &after["ingress"];
    assert_eq!(
        moved(
            "ingress",
            ingress,
            "pos_http_requests_total",
            &["route=\"/invoices\"", "method=\"POST\"", "status=\"202\""]
        ),
        nf
    );
    assert_eq!(
        moved(
            "ingress",
            ingress,
            "pos_invoices_accepted_total",
            &["answer=\"new\""]
        ),
        nf
    );
    assert!(
        moved(
            "ingress",
            ingress,
            "pos_http_request_duration_seconds_count",
            &["route=\"/invoices\"", "method=\"POST\""]
        ) >= nf
    );
    // GETs are counted by route template, never by raw path (one series per invoice).
    assert!(
        value(
            ingress,
            "pos_http_requests_total",
            &["route=\"/invoices/{id}\"", "method=\"GET\""]
        ) >= nf
    );
    assert!(!ingress
        .keys()
        .any(|k| ids.iter().any(|id| k.contains(id.as_str()))));
    assert!(ingress.contains_key("pos_unstored_events"));
    assert!(ingress.contains_key("pos_dlq_messages"));

    let processor = &after["processor"];
    assert_eq!(
        moved(
            "processor",
            processor,
            "pos_invoices_finished_total",
            &["state=\"COMPLETED\""]
        ),
        nf
    );
    assert_eq!(
        moved(
            "processor",
            processor,
            "pos_deliveries_total",
            &["consumer=\"processor\"", "outcome=\"done\""]
        ),
        nf
    );
    assert_eq!(
        moved("processor", processor, "pos_numbering_seconds_count", &[]),
        nf
    );
    assert_eq!(
        moved(
            "processor",
            processor,
            "pos_final_after_acceptance_seconds_count",
            &["state=\"COMPLETED\""]
        ),
        nf
    );

    let persister = &after["persister"];
    assert!(
        moved(
            "persister",
            persister,
            "pos_persister_batch_size_count",
            &[]
        ) >= 1.0
    );
    assert!(moved("persister", persister, "pos_persister_batch_size_sum", &[]) >= nf);
    assert_eq!(
        moved(
            "persister",
            persister,
            "pos_stored_after_acceptance_seconds_count",
            &[]
        ),
        nf
    );
    assert!(persister.contains_key("pos_consumer_oldest_unacked_seconds{consumer=\"persister\"}"));

    let fanout = &after["fanout"];
    assert_eq!(value(fanout, "pos_fanout_sockets", &[]), 1.0);
    assert_eq!(value(fanout, "pos_fanout_tenant_feeds", &[]), 1.0);
    // Every service counts its own HTTP: the scrapes above, at least. Read again: a
    // scrape renders before its own request is counted, and the loop above may have
    // needed only one.
    for s in services {
        assert!(
            value(
                &scrape(ports[s]).await,
                "pos_http_requests_total",
                &["route=\"/metrics\""]
            ) >= 1.0,
            "{s} counts its /metrics requests"
        );
    }

    // The first invoice's request id, in a line of each service about that invoice.
    drop(ws);
    for (i, s) in services.iter().enumerate() {
        let log = stack.log_of(i);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&request_id)).collect();
        assert!(
            lines.iter().any(|l| l.contains(ids[0].as_str())),
            "{s} logs the request id {request_id} beside invoice {}; its lines with it: {lines:#?}\nwhole log:\n{}",
            ids[0],
            log.lines().take(40).collect::<Vec<_>>().join("\n")
        );
        assert!(!lines.is_empty(), "{s} never logged {request_id}");
        // Only the first invoice's lines carry it.
        assert!(
            !lines
                .iter()
                .any(|l| ids[1..].iter().any(|id| l.contains(id.as_str()))),
            "{s} put {request_id} on another invoice's line: {lines:#?}"
        );
    }
}
