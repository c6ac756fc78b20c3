//! persister: projects the lifecycle event log into MongoDB, the system of record.
//!
//! One durable pull consumer (`persister`) on the events stream, shared by every
//! instance. Events go to the batch writer (`batch.rs`): only the newest state of each
//! invoice is written, many invoices per `update` command ([`store::Store::apply_many`]),
//! each a conditional replace-or-insert guarded by its version, so redelivered, replayed
//! or reordered events never create a second document or move an invoice backwards; a
//! superseded event is acked once its successor is stored. MongoDB outages are retried
//! without limit (capped backoff): an event is a fact and must reach the record; the lag
//! shows in the consumer gauges (`pos_consumer_*{consumer="persister"}`) and in
//! `/health` (`lag` is `down` while the oldest unstored event is older than `MAX_LAG_MS`).
//! Nothing unstored ages out of the events stream: it is bounded by count, and ingress
//! stops accepting before that count is reached (ingress `backpressure.rs`).
//!
//! Once MongoDB holds an invoice's final state, its Redis job state is settled to a
//! short TTL: Redis then holds only what is in flight.
//!
//! Layout: `settings.rs` (env), `handler.rs` (per-event logic), `batch.rs` (write
//! coalescing: an invoice's newest state only, many invoices per `update` command), this
//! file (wiring).

mod batch;
mod handler;
mod settings;

pub use batch::Coalescing;
pub use handler::Persister;
pub use settings::Settings;

use anyhow::Context;
use messaging::{
    worker::{Spec, Worker},
    Bus, NatsSettings, RetryPolicy, Topology,
};
use service_kit::http::Health;
use std::{sync::Arc, time::Duration};

/// A running persister: the worker shell around [`Persister`].
pub type App = Worker<Persister>;

/// Connects to NATS and MongoDB, waits for the unique indexes and serves `/health`;
/// [`Worker::run_until_stopped`] then consumes.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let infra = &settings.infra;
    let topology = Topology::from_infra(infra);
    let nats = NatsSettings::for_infra(infra, Duration::from_secs(5), 3);
    let bus = Bus::connect(nats, topology).await?;
    bus.ensure_topology()
        .await
        .context("applying the stream definitions from nats/")?;
    let store = store::Store::connect(
        &infra.mongodb_uri,
        &infra.mongodb_db,
        settings.infra.mongodb_timeout,
    )
    .await?;
    // The persister's one job is writing MongoDB, and it must not write before the
    // unique key index exists: it waits (logging retries) where the others serve.
    store.wait_indexed().await;
    let service = bus
        .announce(
            "persister",
            "Projects invoice lifecycle events into MongoDB",
        )
        .await?;
    // Only to shorten the TTLs of what MongoDB now holds: the persister works without it.
    let cache = cache::Cache::connect(&infra.redis_url, &infra.namespace, cache::DEFAULT_JOB_TTL)?;
    let writer = batch::Batcher::start(store.clone(), cache, settings.coalescing);
    let spec = Spec {
        name: "persister",
        stream: bus.topology().events_stream(),
        consumer: bus.topology().persister_consumer()?,
        bus: bus.clone(),
        handler: Arc::new(Persister::new(bus.clone(), writer)),
        retry: settings.retry,
        settings: settings.worker,
        service,
    };
    let pipeline = bus.watch_pipeline(infra.backlog_poll);
    let max_lag = settings.max_lag;
    Worker::start(spec, move || {
        let (bus, store, pipeline) = (bus.clone(), store.clone(), pipeline.clone());
        async move {
            let lag = *pipeline.borrow();
            let behind = lag
                .and_then(|p| p.persister.oldest_unacked)
                .is_some_and(|age| age > max_lag);
            Health::new(
                "persister",
                [
                    ("nats", bus.is_connected()),
                    ("mongo", store.ping().await),
                    ("lag", !behind),
                ],
            )
        }
    })
    .await
    .context("binding HEALTH_ADDR")
}

/// Never gives up on a well-formed event; backs off up to `max` while MongoDB is down.
pub fn unlimited_retries(base: Duration, max: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: base,
        max_delay: max,
    }
}
