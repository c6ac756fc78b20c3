//! processor: computes submitted invoices (contract § Money, § Lifecycle).
//!
//! One durable pull consumer (`processor`) on the submissions stream, shared by every
//! instance. For each delivery, [`handler::Processor`] checks whether the invoice is
//! already final in this generation (a first delivery: the job state ingress cached in
//! Redis; a redelivery, or a job Redis cannot answer: the event log's last event of the
//! invoice, which decides if there is one; if the log has none, Redis for a redelivery,
//! then MongoDB; a final one is never recomputed), publishes the QUEUED event under
//! ingress's id, emits PROCESSING and meanwhile computes the money and numbers it in the
//! tenant's fiscal series (`store::Numberer`, batched per tenant), then emits COMPLETED
//! with its record — or FAILED plus a dead letter for a
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
use messaging::{
    worker::{Spec, Worker},
    Bus, NatsSettings, Topology,
};
use service_kit::http::Health;
use std::sync::Arc;

/// A running processor: the worker shell around [`Processor`].
pub type App = Worker<Processor>;

/// Connects to NATS, Redis and MongoDB, registers the admin endpoints and serves
/// `/health`; [`Worker::run_until_stopped`] then consumes.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
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
    // Read only (the job states ingress wrote), so the TTL it would give is unused.
    let cache = cache::Cache::connect(&infra.redis_url, &infra.namespace, cache::DEFAULT_JOB_TTL)?;
    // Returns at once: a processor restarted during a MongoDB outage still computes
    // what the event log or Redis can vouch for (see done.rs).
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
    let spec = Spec {
        name: "processor",
        stream: bus.topology().invoices_stream(),
        consumer: bus.topology().processor_consumer()?,
        bus: bus.clone(),
        handler,
        retry: settings.retry,
        settings: settings.worker,
        service,
    };
    Worker::start(spec, move || {
        let (bus, store, cache) = (bus.clone(), store.clone(), cache.clone());
        async move {
            let (mongo, redis, queue) = tokio::join!(store.ping(), cache.ping(), bus.queue_stats());
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
    })
    .await
    .context("binding HEALTH_ADDR")
}
