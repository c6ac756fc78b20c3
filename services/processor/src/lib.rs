//! processor: computes submitted invoices (contract § Money, § Lifecycle).
//!
//! One durable pull consumer (`processor`) on the submissions stream, shared by every
//! instance. For each delivery, [`handler::Processor`] checks whether the invoice is
//! already final in this generation (a first delivery: Redis' job state; a redelivery, or
//! a job Redis cannot answer: the event log's last event of the invoice, then — a
//! redelivery with a readable log — Redis, then MongoDB; a final one is never
//! recomputed), publishes the QUEUED event under ingress's id, emits PROCESSING, computes
//! the money, numbers it in the tenant's fiscal series (`store::Numberer`, batched per
//! tenant) and emits COMPLETED with its record — or FAILED plus a dead letter for a
//! permanent fault. Transient faults go back to JetStream with a delayed NAK; the shared
//! consume loop in `messaging` owns that policy. After the last attempt, `exhausted`
//! voids the ledger entry and emits FAILED + dead letter (COMPLETED if an earlier attempt
//! numbered it).
//!
//! Layout: `settings.rs` (env), `handler.rs` (the per-message logic), `done.rs` (whether
//! a delivery is finished already: pure decision, unit-tested), `admin.rs` (the
//! operator endpoints: dead-letter list and replay, stats), this file (wiring).

mod admin;
mod done;
mod handler;
mod settings;

pub use handler::Processor;
pub use settings::Settings;

use anyhow::Context;
use messaging::{Bus, NatsSettings, Topology};
use service_kit::{http::Health, Shutdown};
use std::{future::Future, sync::Arc};

pub struct App {
    bus: Bus,
    handler: Arc<Processor>,
    settings: Settings,
    health_port: Option<u16>,
    stop_health: Shutdown,
    /// Keeps the services-API registration (and the admin endpoints) alive.
    _service: messaging::Service,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let infra = &settings.infra;
        let topology = Topology::from_infra(infra);
        let bus = Bus::connect(
            NatsSettings::for_infra(infra, std::time::Duration::from_secs(5), 3),
            topology,
        )
        .await?;
        bus.ensure_topology()
            .await
            .context("applying the stream definitions from nats/")?;
        let cache = cache::Cache::connect(&infra.redis_url, &infra.namespace, settings.job_ttl)?;
        // Returns at once: a processor restarted during a MongoDB outage still computes
        // what Redis can vouch for (see handler.rs).
        let store = store::Store::connect(
            &infra.mongodb_uri,
            &infra.mongodb_db,
            settings.infra.mongodb_timeout,
        )
        .await?;
        let service = admin::register(&bus, &store)
            .await
            .context("registering with the NATS services API")?;
        let handler = Arc::new(Processor::new(
            bus.clone(),
            store.clone(),
            cache.clone(),
            settings.retry.max_attempts,
            settings.ledger_wait,
        ));
        let stop_health = Shutdown::new();
        let (b, st, c) = (bus.clone(), store.clone(), cache.clone());
        let health_port = service_kit::http::serve_health(
            settings.worker.health_addr,
            stop_health.clone(),
            move || {
                let (bus, store, cache) = (b.clone(), st.clone(), c.clone());
                async move {
                    let (mongo, redis, queue) =
                        tokio::join!(store.ping(), cache.ping(), bus.queue_stats());
                    let mut h = Health::new(
                        "processor",
                        [
                            ("nats", bus.is_connected()),
                            ("mongo", mongo),
                            ("redis", redis),
                        ],
                    );
                    h.queue = queue.ok().and_then(|q| serde_json::to_value(q).ok());
                    h
                }
            },
        )
        .await
        .context("binding HEALTH_ADDR")?;
        Ok(Self {
            bus,
            handler,
            settings,
            health_port,
            stop_health,
            _service: service,
        })
    }

    pub fn health_port(&self) -> Option<u16> {
        self.health_port
    }

    /// Consumes until `shutdown`, then drains in-flight messages within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let consumer = self
            .bus
            .bind_durable(
                &self.bus.topology().invoices_stream(),
                self.bus.topology().processor_consumer()?,
            )
            .await;
        tracing::info!(
            concurrency = self.settings.worker.concurrency,
            "processor consuming"
        );
        let result = messaging::consume::run_until_stopped(
            self.bus.clone(),
            consumer,
            self.handler,
            self.settings.retry,
            self.settings.worker.concurrency,
            self.settings.worker.shutdown_grace,
            shutdown,
        )
        .await;
        self.stop_health.trigger();
        result.map_err(Into::into)
    }
}
