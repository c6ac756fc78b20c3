//! The contract between the services: subjects, message shapes, stream and consumer
//! definitions, the publish path and the one consume loop. Only this crate names
//! async-nats, among the libs and services.
//!
//! Data flow:
//! ingress → [`Bus::publish_submission`] (stream `INVOICES`; a keyed first submission is
//! stored only while its key's subject is empty, and retries are deduplicated by message
//! id) → processor via [`consume::run`] → [`Bus::publish_event`] (stream `EVENTS`, the
//! lifecycle log) → persister via [`consume::run`], and fanout (per tenant) and the
//! console (every tenant) via ordered feeds (`feed.rs`). Failed work lands in `DLQ` via
//! [`Bus::publish_dead_letter`].
//!
//! Layout:
//! - `topology.rs`: names (namespace, streams, subjects, consumers) and the
//!   definitions read from `nats/` at compile time
//! - `envelope.rs`: the message shapes
//! - `bus.rs`: connect, apply the topology, publish with ids and awaited acks
//! - `consume.rs`: the pull-consumer loop and its ack / nak / term policy
//! - `worker.rs`: the shell a queue worker runs in (`/health`, bind, consume, drain)
//! - `admin.rs`: the NATS services API, admin endpoints, dead-letter reads
//! - `stats.rs`: queue figures for `/health`
//! - `backlog.rs`: how far behind a consumer is (metrics, health, back-pressure)
//! - `feed.rs`: the event log read in order (fanout per tenant, the console over every
//!   tenant)
//! - `drift.rs`: where the running broker differs from `nats/`
//! - `console.rs`: the operator console's questions (durability settings, admin requests)

#![warn(missing_docs)]

pub mod admin;
pub mod backlog;
pub mod bus;
pub mod console;
pub mod consume;
pub mod drift;
pub mod envelope;
pub mod feed;
pub mod stats;
pub mod topology;
pub mod worker;

pub use async_nats::service::Service;
pub use backlog::{unstored_events, Backlog};
pub use bus::{Bus, BusError, NatsSettings, Published};
pub use console::{AdminError, StreamSummary};
pub use consume::{Delivery, Handler, Outcome, RetryPolicy};
pub use drift::Drift;
pub use envelope::{DeadLetter, Encoded, Envelope};
pub use stats::QueueStats;
pub use topology::Topology;

/// A plain NATS client (re-exported so callers need not name async-nats).
pub type Client = async_nats::Client;
