//! Persister settings, from env.

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
    /// `WRITE_BATCH` (default 512): most events coalesced into one round of writes.
    pub max_batch: usize,
    /// `WRITE_LINGER_MS` (default 10): longest an event waits for others to share a
    /// round. Long enough that an invoice's QUEUED, PROCESSING and COMPLETED events
    /// usually share one (one write instead of three); terminals never wait on it.
    pub linger: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, service_kit::settings::SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(
            &mut env,
            "persister",
            &["NATS_URL", "REDIS_URL", "MONGODB_URI"],
        );
        let worker = Worker::from_env(&mut env, 3003, 1024);
        let retry = crate::unlimited_retries(
            env.millis("RETRY_BASE_MS", Duration::from_millis(500)),
            env.millis("RETRY_MAX_MS", Duration::from_secs(10)),
        );
        let max_batch = env
            .parse("WRITE_BATCH", 512usize, "a whole number ≥ 1")
            .max(1);
        let linger = env.millis("WRITE_LINGER_MS", Duration::from_millis(10));
        env.finish().map(|_| Self {
            infra,
            worker,
            retry,
            max_batch,
            linger,
        })
    }
}
