//! Processor settings, from env.

use messaging::RetryPolicy;
use service_kit::settings::{Infra, Worker};
use service_kit::Env;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub infra: Infra,
    pub worker: Worker,
    /// `MAX_ATTEMPTS` (default 4: the first try and 3 retries), `RETRY_BASE_MS` (default
    /// 1000: delays 1 s, 2 s, 4 s), `RETRY_MAX_MS` (default 30000).
    pub retry: RetryPolicy,
    /// `LEDGER_WAIT_MS` (default 60000): how long one attempt waits for MongoDB to number
    /// a computed invoice before it counts as a failed attempt. A COMPLETED invoice
    /// needs its fiscal record, so a MongoDB outage holds invoices at PROCESSING for
    /// this long instead of spending their retries in seconds.
    pub ledger_wait: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, service_kit::settings::SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(
            &mut env,
            "processor",
            &["NATS_URL", "REDIS_URL", "MONGODB_URI"],
        );
        // Deliveries spend most of their time waiting (acked publishes, the numbering batch),
        // and a permit is held meanwhile: at 64, permits set the pace of the whole pipeline
        // with the ledger on (measured: 587 completed/s at 64, 879–934 at 256 with 4 tenants;
        // ARCHITECTURE.md § Fiscal numbering).
        let worker = Worker::from_env(&mut env, 3002, 256);
        let max_attempts = env.parse("MAX_ATTEMPTS", 4u32, "a whole number ≥ 1");
        if max_attempts == 0 {
            env.problem("MAX_ATTEMPTS must be at least 1");
        }
        let retry = RetryPolicy {
            max_attempts: max_attempts.max(1),
            base_delay: env.millis("RETRY_BASE_MS", Duration::from_secs(1)),
            max_delay: env.millis("RETRY_MAX_MS", Duration::from_secs(30)),
        };
        let ledger_wait = env.millis("LEDGER_WAIT_MS", Duration::from_secs(60));
        env.finish().map(|_| Self {
            infra,
            worker,
            retry,
            ledger_wait,
        })
    }
}
