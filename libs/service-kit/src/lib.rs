//! Process lifecycle shared by the five services (and nats-apply), and nothing about the
//! domain:
//! - `settings.rs`: read env vars into typed values, collecting every bad variable so
//!   start-up fails once with a message naming each;
//! - `telemetry.rs`: tracing init (text or JSON) with a writer tests can silence;
//! - `shutdown.rs`: the one shutdown mechanism (a cancellation token from SIGINT/SIGTERM,
//!   a task tracker for what must finish);
//! - `http.rs`: the contract's error body and the `/health` response shape;
//! - `server.rs`: the HTTP server with connection limits and timeouts, used by all;
//! - `metrics.rs`: the Prometheus recorder, `GET /metrics` and the HTTP figures;
//! - `retry.rs`: the one backoff policy and retry loop for reaching a dependency.

#![warn(missing_docs)]

pub mod http;
pub mod metrics;
pub mod retry;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::Env;

pub use shutdown::{CancellationToken, TaskTracker};
