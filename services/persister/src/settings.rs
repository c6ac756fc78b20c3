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
}

impl Settings {
    pub fn from_env() -> Result<Self, service_kit::settings::SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(&mut env, "persister", &["NATS_URL", "MONGODB_URI"]);
        let worker = Worker::from_env(&mut env, 3003, 128);
        let retry = crate::unlimited_retries(
            env.millis("RETRY_BASE_MS", Duration::from_millis(500)),
            env.millis("RETRY_MAX_MS", Duration::from_secs(10)),
        );
        env.finish().map(|_| Self {
            infra,
            worker,
            retry,
        })
    }
}
