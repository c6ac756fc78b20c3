//! Prometheus metrics: one recorder per process, rendered at `GET /metrics` on every
//! service's HTTP port (contract § Operations), and the HTTP figures every router gets.
//!
//! Code anywhere records with the `metrics` macros (`metrics::counter!("pos_…")`); the
//! first [`handle`] installs the global Prometheus recorder (`telemetry::init` calls it
//! at start: anything recorded before would be dropped), and [`crate::server`] adds
//! the `/metrics` route and [`track_http`] to every router it serves, so no service can
//! forget either. Histograms are rendered with fixed buckets (Prometheus histograms, not
//! summaries) so that several instances' figures can be added up by the scraper.

use axum::{extract::MatchedPath, extract::Request, http::header, response::IntoResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Seconds: 1 ms … 30 s, the range from a cached read to a request timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Messages per batch: 1 … the persister's largest fetch.
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. In a process that hosts several
/// services (the in-process test stacks) they share it, as they share the process.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &SIZE_BUCKETS))
            .expect("bucket lists are non-empty constants")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a test harness's): keep rendering ours,
        // which then stays empty — never a panic at start-up over metrics.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        describe();
        // Histogram samples are folded in at upkeep; between scrapes that bounds memory.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let h = handle.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
        }
        handle
    })
}

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
pub async fn render() -> impl IntoResponse {
    let text = handle().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Counts and times every HTTP request by route template (never the raw path: ids
/// would make one series per invoice), method and status.
pub async fn track_http(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("pos_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("pos_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// Help texts of the metrics every service shares; service-specific ones are described
/// where they are recorded.
fn describe() {
    metrics::describe_counter!(
        "pos_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    metrics::describe_histogram!(
        "pos_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, from the router to the response head"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_figures_render_as_prometheus_text_with_buckets() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = rt.block_on(async {
            let h = handle();
            metrics::counter!("pos_test_things_total", "kind" => "a").increment(3);
            metrics::histogram!("pos_test_wait_seconds").record(0.003);
            metrics::histogram!("pos_test_batch_size").record(7.0);
            h.render()
        });
        assert!(
            text.contains("pos_test_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pos_test_wait_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pos_test_wait_seconds_bucket{le=\"0.002\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pos_test_batch_size_bucket{le=\"10\"} 1"),
            "{text}"
        );
    }
}
