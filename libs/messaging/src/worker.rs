//! The shell of a queue worker (processor, persister): its `/health` server, its
//! services-API registration, and the run — bind the durable consumer (retrying while
//! the broker cannot), consume with the shared loop ([`crate::consume`]) until the
//! shutdown token is cancelled, drain within the grace period, then stop `/health`.
//!
//! A service builds its handler and its health check, and hands both here; what differs
//! between workers is only what they do with a message and what their health checks.

use crate::{consume::Handler, Bus, BusError, RetryPolicy};
use async_nats::jetstream::consumer::pull;
use service_kit::{http::Health, settings::Worker as WorkerSettings, CancellationToken};
use std::{future::Future, sync::Arc};

/// What a worker consumes and how.
pub struct Spec<H> {
    /// The service's name, in logs.
    pub name: &'static str,
    /// The connected bus.
    pub bus: Bus,
    /// What to do with each message.
    pub handler: Arc<H>,
    /// The stream the durable consumer reads.
    pub stream: String,
    /// The durable consumer's definition (from `nats/consumers/`).
    pub consumer: pull::Config,
    /// Attempts and delays of transient failures.
    pub retry: RetryPolicy,
    /// `HEALTH_ADDR`, `CONCURRENCY`, `SHUTDOWN_GRACE_MS`.
    pub settings: WorkerSettings,
    /// The services-API registration, kept alive as long as the worker.
    pub service: crate::Service,
}

/// A worker with its `/health` served, ready to run.
pub struct Worker<H> {
    spec: Spec<H>,
    health_port: Option<u16>,
    stop_health: CancellationToken,
}

impl<H: Handler> Worker<H> {
    /// Serves `/health` (answered by `check`) on the spec's `HEALTH_ADDR`.
    pub async fn start<F, Fut>(spec: Spec<H>, check: F) -> std::io::Result<Self>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Health> + Send + 'static,
    {
        let stop_health = CancellationToken::new();
        let health_port =
            service_kit::http::serve_health(spec.settings.health_addr, stop_health.clone(), check)
                .await?;
        Ok(Self {
            spec,
            health_port,
            stop_health,
        })
    }

    /// The port `/health` is served on (`None` when `HEALTH_ADDR=off`).
    pub fn health_port(&self) -> Option<u16> {
        self.health_port
    }

    /// Consumes until `stop` is cancelled, then drains in-flight messages within the
    /// grace period; `/health` stops last.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), BusError> {
        let Spec {
            name,
            bus,
            handler,
            stream,
            consumer,
            retry,
            settings,
            service: _service,
        } = self.spec;
        // Binding retries while the broker cannot; a shutdown meanwhile ends the worker
        // (the signal handlers are installed by now, so nothing else would).
        let consumer = tokio::select! {
            c = bus.bind_durable(&stream, consumer) => c,
            () = stop.cancelled() => {
                self.stop_health.cancel();
                return Ok(());
            }
        };
        tracing::info!(concurrency = settings.concurrency, "{name} consuming");
        let result = crate::consume::run_until_stopped(
            bus,
            consumer,
            handler,
            retry,
            settings.concurrency,
            settings.shutdown_grace,
            stop,
        )
        .await;
        self.stop_health.cancel();
        result
    }
}
