//! ingress: the HTTP edge for terminals (contract § REST API).
//!
//! A request is authenticated (JWT → tenant), parsed into a valid domain draft, published
//! to JetStream under its idempotency key's own subject (the broker is the record of
//! keys) and answered 202 once the broker acknowledged it. Reads come from Redis job
//! state, MongoDB and, for what neither has, the event log.
//!
//! Layout:
//! - `settings.rs`: env → typed settings
//! - `error.rs`: ingress's failures mapped onto the contract's codes (`ErrorCode`)
//! - `extract.rs`: JSON body and query extractors with contract-shaped rejections
//! - `guard.rs`: token check and rate limits in front of every authenticated route
//! - `backpressure.rs`: 503 while too many events wait to be stored
//! - `acceptance.rs`: the idempotency algorithm of POST, without HTTP
//! - `catalog.rs`: the tenants' catalogs and settings, cached, invalidated by notices
//! - `lookup.rs`: the idempotency-key lookup in MongoDB, batched across requests
//! - `read.rs`: the freshest state of one invoice (Redis, MongoDB, event log)
//! - `routes.rs`: the router and its OpenAPI document, from the same declarations
//! - `routes/invoices.rs`: POST / GET / list; `routes/health.rs`: `/health`
//! - `routes/catalog.rs`: products and tenant settings; `routes/fiscal.rs`: credit notes,
//!   `/ledger/verify`, `/ledger/export`
//! - `openapi.rs`: the OpenAPI document, generated from the handlers and types

mod acceptance;
mod backpressure;
mod catalog;
mod error;
mod extract;
pub mod guard;
mod lookup;
pub mod openapi;
mod read;
mod routes;
mod settings;

pub use settings::Settings;

use anyhow::Context;
use axum::extract::FromRef;
use messaging::{Bus, NatsSettings, Topology};
use service_kit::server::Listening;
use service_kit::CancellationToken;

// FromRef: the auth extractor takes the verifier out of the state.
#[derive(Clone, FromRef)]
pub struct AppState {
    bus: Bus,
    store: store::Store,
    cache: cache::Cache,
    acceptor: acceptance::Acceptor,
    reader: read::Reader,
    verifier: auth::Verifier,
    guard: guard::Guard,
    catalog: catalog::Catalog,
    backpressure: backpressure::Backpressure,
}

pub struct App {
    http: Listening,
    state: AppState,
    /// Keeps the services-API registration alive.
    _service: messaging::Service,
}

impl App {
    /// Connects to NATS, MongoDB and Redis, applies the stream definitions and binds the
    /// listener (port 0 allowed).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let infra = &settings.infra;
        let topology = Topology::from_infra(infra);
        let bus = Bus::connect(
            NatsSettings::for_infra(infra, settings.publish_timeout, 2),
            topology,
        )
        .await?;
        bus.ensure_topology()
            .await
            .context("applying the stream definitions from nats/")?;
        let service = bus.announce("ingress", "REST API for terminals").await?;
        let cache = cache::Cache::connect(&infra.redis_url, &infra.namespace, settings.job_ttl)?;
        let store =
            store::Store::connect(&infra.mongodb_uri, &infra.mongodb_db, infra.mongodb_timeout)
                .await?;
        let http = Listening::bind(
            "ingress",
            "INGRESS_ADDR",
            settings.listen,
            settings.http.clone(),
        )
        .await?;
        let verifier = auth::Verifier::new(settings.jwt_secret.expose());
        let reader = read::Reader::new(bus.clone(), cache.clone(), store.clone());
        let catalog = catalog::Catalog::new(store.clone());
        catalog
            .follow(&bus)
            .await
            .context("subscribing to catalog change notices")?;
        let pipeline = bus.watch_pipeline(infra.backlog_poll);
        let acceptor = acceptance::Acceptor::new(
            bus.clone(),
            cache.clone(),
            lookup::KeyLookup::start(store.clone()),
            reader.clone(),
        );
        Ok(Self {
            http,
            state: AppState {
                bus,
                store,
                cache,
                acceptor,
                reader,
                verifier,
                guard: guard::Guard::new(settings.rate_limits),
                catalog,
                backpressure: backpressure::Backpressure::new(
                    settings.max_unstored_events,
                    pipeline,
                ),
            },
            _service: service,
        })
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// The routes alone, without the HTTP server's layers (limits, timeouts, request id,
    /// metrics): for tests that call a handler with `tower::ServiceExt::oneshot`.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Serves until `stop` is cancelled, then lets open requests finish.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        self.http.serve(routes::router(self.state), stop).await?;
        Ok(())
    }
}
