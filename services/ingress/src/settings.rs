//! Ingress settings, from env. Every problem is reported at once, naming the variable.

use service_kit::settings::{Infra, Secret};
use service_kit::Env;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone)]
pub struct Settings {
    pub infra: Infra,
    pub jwt_secret: Secret,
    /// `INGRESS_ADDR`, default `0.0.0.0:3000`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `JOB_TTL_MS`: how long Redis keeps the job state of an invoice the persister has
    /// not settled, counted from acceptance (default 1 h; settled: 5 s).
    pub job_ttl: Duration,
    /// `PUBLISH_TIMEOUT_MS`: wait for one publish ack (default 2 s; 2 tries, then 503).
    pub publish_timeout: Duration,
    /// `HTTP_*`: the server's connection limits and timeouts.
    pub http: service_kit::server::ServerLimits,
    /// `RATE_LIMIT_TENANT` (default `500/1000`) and `RATE_LIMIT_TERMINAL` (default
    /// `50/100`): requests per second / burst, per instance; `0` switches one off.
    pub rate_limits: crate::guard::RateLimits,
    /// `MAX_UNSTORED_EVENTS` (default 1 000 000; `0` = never refuse): lifecycle events
    /// not yet stored in MongoDB at which `POST` answers 503 (see `backpressure.rs`);
    /// never more than half the events stream's `max_msgs`.
    pub max_unstored_events: Option<u64>,
}

impl Settings {
    pub fn from_env() -> Result<Self, service_kit::settings::SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(
            &mut env,
            "ingress",
            &["NATS_URL", "REDIS_URL", "MONGODB_URI"],
        );
        let jwt_secret = env.jwt_secret();
        let listen = env.parse(
            "INGRESS_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 3000)),
            "host:port, e.g. 0.0.0.0:3000",
        );
        let settings = Self {
            infra,
            jwt_secret,
            listen,
            job_ttl: env.millis("JOB_TTL_MS", cache::DEFAULT_JOB_TTL),
            publish_timeout: env.millis("PUBLISH_TIMEOUT_MS", Duration::from_secs(2)),
            http: service_kit::server::ServerLimits::from_env(&mut env),
            max_unstored_events: Some(env.parse(
                "MAX_UNSTORED_EVENTS",
                1_000_000u64,
                "a whole number of events; 0 = no limit",
            ))
            .filter(|n| *n > 0),
            rate_limits: crate::guard::RateLimits {
                tenant: env.parse(
                    "RATE_LIMIT_TENANT",
                    crate::guard::RateLimits::default().tenant,
                    "<requests per second>[/<burst>], e.g. 500/1000; 0 = no limit",
                ),
                terminal: env.parse(
                    "RATE_LIMIT_TERMINAL",
                    crate::guard::RateLimits::default().terminal,
                    "<requests per second>[/<burst>], e.g. 50/100; 0 = no limit",
                ),
            },
        };
        env.finish().map(|_| settings)
    }
}
