//! Whole-stack tests against real NATS JetStream, Redis and MongoDB (started by
//! `./x test` (xtask), which exports their URLs), in one binary for link time.
//!
//! Every test gets its own namespace (streams, subjects, Redis keys) and database from
//! [`support::TestStack`] / [`support::ProcessStack`], so tests run in parallel and never
//! see each other's data.

mod support;

mod cache;
mod catalog;
mod config;
mod console;
mod failure;
mod fanout;
mod flaky;
mod hostile;
mod http_contract;
mod idempotency;
mod ledger;
mod messaging;
mod observability;
mod operability;
mod pipeline;
mod resilience;
mod retention;
mod router;
mod scale;
mod schema;
mod store;
mod terminal;
