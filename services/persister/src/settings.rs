//! Persister settings, from env.

use crate::batch::Coalescing;
use messaging::RetryPolicy;
use service_kit::settings::{Infra, Worker};
use service_kit::Env;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub infra: Infra,
    pub worker: Worker,
    /// Unlimited attempts; `RETRY_BASE_MS` (default 500) doubling up to `RETRY_MAX_MS`
    /// (default 10000).
    pub retry: RetryPolicy,
    /// `WRITE_BATCH` (default 512): most invoices in one `update` command;
    /// `WRITE_LINGER_MS` (default 10): how often due states are sent; `WRITE_HOLD_MS`
    /// (default 250): longest a QUEUED or PROCESSING state waits for its successor, so an
    /// invoice is usually written once, in its final state. Terminals never wait on it
    /// (they are told by the event stream); lists show a state up to that much later.
    pub coalescing: Coalescing,
    /// `MAX_LAG_MS` (default 60 000): `/health` is `degraded` (check `lag`) while the
    /// oldest event not stored yet is older than this — the persister is alive but the
    /// system of record is behind (MongoDB slow or down, too few instances).
    pub max_lag: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, service_kit::settings::SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(
            &mut env,
            "persister",
            &["NATS_URL", "REDIS_URL", "MONGODB_URI"],
        );
        let worker = Worker::from_env(&mut env, 3003, 2048);
        let retry = crate::unlimited_retries(
            env.millis("RETRY_BASE_MS", Duration::from_millis(500)),
            env.millis("RETRY_MAX_MS", Duration::from_secs(10)),
        );
        let coalescing = Coalescing {
            max_batch: env
                .parse("WRITE_BATCH", 512usize, "a whole number ≥ 1")
                .max(1),
            linger: env
                .millis("WRITE_LINGER_MS", Duration::from_millis(10))
                .max(Duration::from_millis(1)),
            hold: env.millis("WRITE_HOLD_MS", Duration::from_millis(250)),
        };
        let max_lag = env.millis("MAX_LAG_MS", Duration::from_secs(60));
        env.finish().map(|_| Self {
            infra,
            worker,
            retry,
            coalescing,
            max_lag,
        })
    }
}
