//! console: the operator's web page and its JSON API (contract § Operations: `:3004`,
//! `CONSOLE_ADDR`, an `admin` token) — what Bull Board gives BullMQ users, plus alerts.
//!
//! Where each figure comes from, all gathered in the background so a page refresh costs
//! no broker or database round trip but the DLQ's and the audit log's:
//! - **throughput, latency, per-terminal last seen**: the event log itself, read in order
//!   by one ordered consumer over every tenant (`Bus::all_events_feed`), starting
//!   `CONSOLE_BACKFILL_EVENTS` before the end, folded into a [`window::Window`];
//! - **consumer lag, oldest unacked age, dead letters, unstored events**: the broker's
//!   consumer info every `BACKLOG_POLL_MS` (`Bus::watch_pipeline`, the same reading the
//!   services' metrics and ingress's back-pressure use);
//! - **durability settings**: each stream's config and replica health
//!   (`Bus::stream_summaries`), every 5 s;
//! - **invoices by state**: MongoDB, one aggregation every `CONSOLE_STATES_EVERY_MS`;
//! - **alerts**: [`alerts::evaluate`] over the above, every second, also set as the
//!   `pos_console_alert_firing{alert}` gauge;
//! - **DLQ list and replay**: the processor's admin endpoints over NATS; every replay is
//!   written to the audit log (MongoDB `audit`) before it is sent, and its outcome after.
//!
//! A dependency that is down or stalled never blocks the page: each figure carries the
//! time it was read (or the error of its last read), and the `stale_figures` alert fires
//! when the broker stops answering.
//!
//! Layout: `settings.rs` (env), `window.rs` and `alerts.rs` (pure), `routes.rs` (HTTP,
//! errors), `page/` (the page, served as static text), this file (wiring, background
//! readers).

pub mod alerts;
mod routes;
mod settings;
pub mod window;

pub use settings::Settings;

use axum::extract::FromRef;
use domain::Timestamp;
use futures_util::{FutureExt, StreamExt};
use messaging::{feed::FeedStart, Bus, NatsSettings, StreamSummary, Topology};
use serde::Serialize;
use service_kit::server::Listening;
use service_kit::{CancellationToken, TaskTracker};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Timeout of JetStream API requests (stream and consumer info).
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the streams' settings are read.
const STREAMS_EVERY: Duration = Duration::from_secs(5);
/// Terminals remembered for "last seen" (least recently seen forgotten first).
const MAX_TERMINALS: usize = 10_000;

/// A figure read in the background: its value and when, or why the last read failed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading<T> {
    pub value: Option<T>,
    pub as_of: Option<Timestamp>,
    pub error: Option<String>,
}

impl<T> Default for Reading<T> {
    fn default() -> Self {
        Self {
            value: None,
            as_of: None,
            error: None,
        }
    }
}

impl<T> Reading<T> {
    /// Keeps the last good value when a read fails, so a blip does not blank the page.
    fn update<E: std::fmt::Display>(&mut self, result: Result<T, E>) {
        match result {
            Ok(v) => {
                self.value = Some(v);
                self.as_of = Some(Timestamp::now());
                self.error = None;
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }
}

/// Everything the background readers keep for the routes.
pub(crate) struct Figures {
    window: Mutex<window::Window>,
    streams: Mutex<Reading<Vec<StreamSummary>>>,
    states: Mutex<Reading<BTreeMap<String, u64>>>,
    alerts: Mutex<Vec<alerts::Alert>>,
    pipeline: tokio::sync::watch::Receiver<Option<messaging::backlog::Pipeline>>,
}

// FromRef: the auth extractor takes the verifier out of the state.
#[derive(Clone, FromRef)]
pub(crate) struct AppState {
    bus: Bus,
    store: store::Store,
    verifier: auth::Verifier,
    operator_tenant: Arc<str>,
    replay_timeout: Duration,
    figures: Arc<Figures>,
}

pub struct App {
    http: Listening,
    state: AppState,
    /// Stops the background readers once the server has drained.
    readers: CancellationToken,
    reader_tasks: TaskTracker,
}

impl App {
    /// Connects to NATS and MongoDB, starts the background readers and binds the
    /// listener (port 0 allowed). The console creates no stream: it reads what the
    /// services made, and says so on the page while they are missing.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let infra = &settings.infra;
        let bus = Bus::connect(
            NatsSettings::for_infra(infra, NATS_REQUEST_TIMEOUT, 1),
            Topology::from_infra(infra),
        )
        .await?;
        let store =
            store::Store::connect(&infra.mongodb_uri, &infra.mongodb_db, infra.mongodb_timeout)
                .await?;
        let http = Listening::bind(
            "console",
            "CONSOLE_ADDR",
            settings.listen,
            settings.http.clone(),
        )
        .await?;
        let figures = Arc::new(Figures {
            window: Mutex::new(window::Window::new(MAX_TERMINALS)),
            streams: Mutex::default(),
            states: Mutex::default(),
            alerts: Mutex::new(Vec::new()),
            pipeline: bus.watch_pipeline(infra.backlog_poll),
        });
        let readers = CancellationToken::new();
        let reader_tasks = TaskTracker::new();
        for task in [
            read_events(bus.clone(), figures.clone(), settings.backfill_events).boxed(),
            read_streams(bus.clone(), figures.clone()).boxed(),
            read_states(store.clone(), figures.clone(), settings.states_every).boxed(),
            judge(figures.clone(), settings.thresholds).boxed(),
        ] {
            reader_tasks.spawn(readers.clone().run_until_cancelled_owned(task));
        }
        let state = AppState {
            bus,
            store,
            verifier: auth::Verifier::new(settings.jwt_secret.expose()),
            operator_tenant: settings.operator_tenant.as_str().into(),
            replay_timeout: settings.replay_timeout,
            figures,
        };
        Ok(Self {
            http,
            state,
            readers,
            reader_tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// Serves until `stop` is cancelled; the background readers stop after the server.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        self.http.serve(routes::router(self.state), stop).await?;
        self.readers.cancel();
        self.reader_tasks.close();
        self.reader_tasks.wait().await;
        Ok(())
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_datetime().timestamp_millis()
}

/// Folds every event of the log into the window, from `backfill` events before the end.
/// The feed heals by itself once open; opening is retried while the stream is missing.
async fn read_events(bus: Bus, figures: Arc<Figures>, backfill: u64) {
    let mut feed = service_kit::retry::until_ok("cannot read the event log yet", || async {
        let bounds = bus.event_log_bounds().await?;
        let start = bounds
            .last_seq
            .saturating_sub(backfill)
            .max(bounds.first_seq);
        bus.all_events_feed(FeedStart::At(start)).await
    })
    .await;
    while let Some(event) = feed.next().await {
        let invoice = &event.envelope.invoice;
        let observed = window::Observed {
            state: invoice.state(),
            tenant: invoice.tenant_id().to_string(),
            terminal: invoice.terminal_id().to_string(),
            at_ms: event.at.as_datetime().timestamp_millis(),
            accepted_ms: invoice.created_at().as_datetime().timestamp_millis(),
        };
        let mut w = figures
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.record(&observed, now_ms());
    }
}

async fn read_streams(bus: Bus, figures: Arc<Figures>) {
    let mut tick = tokio::time::interval(STREAMS_EVERY);
    loop {
        tick.tick().await;
        let read = bus.stream_summaries().await;
        figures
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update(read);
    }
}

async fn read_states(store: store::Store, figures: Arc<Figures>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let read = store
            .count_by_state(every.min(Duration::from_secs(30)))
            .await;
        figures
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update(read);
    }
}

/// Evaluates the alerts every second and publishes them as gauges.
async fn judge(figures: Arc<Figures>, thresholds: alerts::Thresholds) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let inputs = inputs(&figures);
        let evaluated = alerts::evaluate(&thresholds, &inputs);
        for a in &evaluated {
            metrics::gauge!("pos_console_alert_firing", "alert" => a.name).set(if a.firing {
                1.0
            } else {
                0.0
            });
        }
        *figures
            .alerts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = evaluated;
    }
}

fn inputs(figures: &Figures) -> alerts::Inputs {
    let traffic = figures
        .window
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .traffic(now_ms());
    let pipeline = *figures.pipeline.borrow();
    alerts::Inputs {
        backlog: pipeline.map(|p| p.processor.outstanding() + p.persister.outstanding()),
        oldest_unacked: pipeline
            .and_then(|p| p.processor.oldest_unacked.max(p.persister.oldest_unacked)),
        dead_letters: pipeline.map(|p| p.dead_letters),
        completed_last_minute: traffic.completed_last_minute,
        failed_last_minute: traffic.failed_last_minute,
        figures_age: pipeline.map(|p| p.at.elapsed()),
    }
}
