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
        };
        env.finish().map(|_| settings)
    }
}
