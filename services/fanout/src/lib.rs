//! fanout: the WebSocket gateway that pushes invoice state changes to terminals
//! (contract § WebSocket).
//!
//! Data flow, for one tenant on one instance:
//! - `GET /ws` verifies the JWT before the upgrade (401 otherwise) and joins the
//!   tenant's feed in the [`hub::Hub`];
//! - the hub runs ONE NATS ordered consumer per tenant (filter `<ns>.events.<tenant>.*`),
//!   started by the tenant's first socket and stopped after its last, and publishes each
//!   event, serialized once, on a `tokio::sync::broadcast` ring of
//!   `FANOUT_CLIENT_BUFFER` frames;
//! - per socket, a producer task ([`replay::produce`]) first replays the log after
//!   `since` with a private ordered consumer, then forwards the live frames, letting only
//!   increasing `seq` through (no gap, no duplicate at the hand-over);
//! - the socket's writer ([`socket::serve`]) sends them, pings, and closes idle or slow
//!   sockets. A socket that falls a full ring behind is closed with 4008 ("slow consumer;
//!   reconnect with since=<last seq sent>") and never slows anyone else.
//!
//! Choices the contract leaves open:
//! - **Connection limit** (`FANOUT_MAX_CONNECTIONS_PER_TENANT`, per instance): the
//!   upgrade is refused with `503 unavailable` and `Retry-After: 5`, before any socket
//!   exists, so a client sees a plain HTTP status it already knows how to retry.
//! - **`since` no longer covered**: a `{"type":"resync","reason":…,"firstSeq":F}` frame,
//!   then every event still stored. Reasons: `since is older than the retention window`
//!   (events after `since` expired) or `since is ahead of the event log` (the stream was
//!   recreated; the log is then sent from its start, the one case where `seq` restarts
//!   lower, announced by the resync frame).
//! - **`?terminalId=`** narrows a socket to one terminal's invoices.
//! - **Close codes**: 4008 slow consumer, 1013 event log unavailable, 1001 shutting
//!   down, 1000 idle timeout, 1011 live feed lost, 4001 token expired; see `socket.rs`.
//! - **Metrics**: `GET /health` answers the contract's shape plus a `metrics` object
//!   (`connectedSockets`, `tenantFeeds`, `framesSent`, `slowClientDisconnects`,
//!   `refusedConnections`); `GET /metrics` has the same as Prometheus series
//!   (`pos_fanout_*`) beside the HTTP ones every service has.
//!
//! Layout:
//! - `settings.rs`: env → typed settings
//! - `routes.rs`: the upgrade handler (auth, query, limit) and `/health`
//! - `hub.rs`: per-tenant shared live feed and broadcast ring
//! - `resume.rs`: what a `since` asks for: the replay range, a resync, the seq gate (pure)
//! - `replay.rs`: replay from the log → hand-over to live, over the hub
//! - `socket.rs`: the writer loop, pings, idle timeout
//! - `outbound.rs`: what the producer hands the writer, and the close codes
//! - `frame.rs`: the JSON text frames
//! - `metrics.rs`: counters for `/health`

pub mod frame;
pub mod hub;
pub mod metrics;
pub mod outbound;
pub mod replay;
pub mod resume;
mod routes;
mod settings;
pub mod socket;

pub use settings::Settings;

use anyhow::Context;
use axum::extract::FromRef;
use messaging::{Bus, NatsSettings, Topology};
use metrics::Metrics;
use service_kit::server::Listening;
use service_kit::{CancellationToken, TaskTracker};
use std::{sync::Arc, time::Duration};

/// Timeout of JetStream API requests (stream info, consumer creation).
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for open sockets to send their close frames.
const SOCKET_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

// FromRef: the auth extractor takes the verifier out of the state.
#[derive(Clone, FromRef)]
pub struct AppState {
    bus: Bus,
    hub: hub::Hub,
    verifier: auth::Verifier,
    policy: socket::SocketPolicy,
    metrics: Arc<Metrics>,
    /// Cancelled on shutdown: every socket closes with 1001.
    shutdown: CancellationToken,
    /// Every upgraded socket, so shutdown can wait for their close frames (the HTTP
    /// server's own drain does not see them: an upgraded connection is detached).
    sockets: TaskTracker,
}

pub struct App {
    http: Listening,
    state: AppState,
    /// Keeps the services-API registration alive.
    _service: messaging::Service,
}

impl App {
    /// Connects to NATS, applies the broker topology from `nats/` (so the events stream exists
    /// whatever the start order) and binds the listener (port 0 allowed).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let problems = settings.problems();
        anyhow::ensure!(
            problems.is_empty(),
            "invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        let infra = &settings.infra;
        let topology = Topology::from_infra(infra);
        let bus = Bus::connect(
            NatsSettings::for_infra(infra, NATS_REQUEST_TIMEOUT, 1),
            topology,
        )
        .await?;
        bus.ensure_topology()
            .await
            .context("applying the stream definitions from nats/")?;
        let service = bus
            .announce(
                "fanout",
                "WebSocket gateway: invoice state changes to terminals",
            )
            .await?;
        let http = Listening::bind(
            "fanout",
            "FANOUT_ADDR",
            settings.listen,
            settings.http.clone(),
        )
        .await?;
        let metrics = Arc::new(Metrics::default());
        let hub = hub::Hub::new(
            bus.clone(),
            settings.client_buffer,
            settings.max_connections_per_tenant,
            metrics.clone(),
        );
        {
            use futures_util::StreamExt;
            let notices = bus
                .catalog_notices()
                .await
                .context("subscribing to catalog change notices")?;
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut notices = std::pin::pin!(notices);
                while let Some((tenant, version)) = notices.next().await {
                    if let Some(version) = version {
                        hub.catalog_changed(tenant, version);
                    }
                }
            });
        }
        let state = AppState {
            bus,
            hub,
            verifier: auth::Verifier::new(settings.jwt_secret.expose()),
            policy: socket::SocketPolicy {
                ping_interval: settings.ping_interval,
                idle_timeout: settings.idle_timeout,
            },
            metrics,
            // Replaced by `run_until_stopped`'s token; nothing cancels this one.
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
        };
        Ok(Self {
            http,
            state,
            _service: service,
        })
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// This instance's counters (the same figures `/metrics` shows).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `stop` is cancelled, then closes every socket with 1001 and waits
    /// (at most [`SOCKET_DRAIN_TIMEOUT`]) for them to go.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            http,
            state,
            _service,
        } = self;
        let sockets = state.sockets.clone();
        let state = AppState {
            shutdown: stop.clone(),
            ..state
        };
        // Upgraded sockets are detached from the HTTP server: its graceful shutdown does
        // not wait for them, the drain below does.
        http.serve(routes::router(state), stop).await?;
        sockets.close();
        if tokio::time::timeout(SOCKET_DRAIN_TIMEOUT, sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!("sockets still open after {SOCKET_DRAIN_TIMEOUT:?}; exiting anyway");
        }
        Ok(())
    }
}
