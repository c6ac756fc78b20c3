//! Console settings, from env. Every problem is reported at once, naming the variable.

use crate::alerts::Thresholds;
use service_kit::settings::{Infra, Secret, SettingsError};
use service_kit::Env;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `NATS_URL`, `MONGODB_URI` (both required), `NATS_USER`/`NATS_PASSWORD` (the
    /// `console` user of `nats/nats-server.conf`), `POS_NAMESPACE`, `BACKLOG_POLL_MS`.
    pub infra: Infra,
    /// `JWT_SECRET` (required): the console needs an `admin` token ...
    pub jwt_secret: Secret,
    /// ... of this tenant, `CONSOLE_OPERATOR_TENANT` (default `ops`): the console shows
    /// every tenant's dead letters and terminals, so a shop's own admin may not use it.
    pub operator_tenant: String,
    /// `CONSOLE_ADDR`, default `0.0.0.0:3004` (contract § Operations).
    pub listen: SocketAddr,
    /// `CONSOLE_BACKFILL_EVENTS` (default 20 000): how many of the newest events the console
    /// reads at start, so "last seen" and the latency window are filled at once.
    pub backfill_events: u64,
    /// `CONSOLE_STATES_EVERY_MS` (default 10 s): how often invoices are counted by state
    /// in MongoDB (a scan of the collection, so not per page refresh).
    pub states_every: Duration,
    /// `CONSOLE_REPLAY_TIMEOUT_MS` (default 20 s, below `HTTP_REQUEST_TIMEOUT_MS`): the
    /// longest a replay waits for the processor's answer. Past it the answer is 503 with
    /// `"outcome": "unknown"` (the processor goes on; replaying again is safe).
    pub replay_timeout: Duration,
    /// `ALERT_*`: when the alerts fire (see [`Thresholds`]).
    pub thresholds: Thresholds,
    /// `HTTP_*`: the server's connection limits and timeouts.
    pub http: service_kit::server::ServerLimits,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(&mut env, "console", &["NATS_URL", "MONGODB_URI"]);
        let jwt_secret = env.jwt_secret();
        let operator_tenant = env.string("CONSOLE_OPERATOR_TENANT", "ops");
        let listen = env.parse(
            "CONSOLE_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 3004)),
            "host:port, e.g. 0.0.0.0:3004",
        );
        let backfill_events = env.parse("CONSOLE_BACKFILL_EVENTS", 20_000u64, "a whole number");
        let states_every = env.millis("CONSOLE_STATES_EVERY_MS", Duration::from_secs(10));
        let replay_timeout = env.millis("CONSOLE_REPLAY_TIMEOUT_MS", Duration::from_secs(20));
        let d = Thresholds::default();
        let thresholds = Thresholds {
            backlog: env.parse("ALERT_BACKLOG", d.backlog, "a whole number of messages"),
            oldest_unacked: env.millis("ALERT_OLDEST_UNACKED_MS", d.oldest_unacked),
            failure_rate: env.parse(
                "ALERT_FAILURE_RATE",
                d.failure_rate,
                "a fraction, e.g. 0.05",
            ),
            min_finished: env.parse("ALERT_MIN_FINISHED", d.min_finished, "a whole number"),
            dead_letters: env.parse("ALERT_DEAD_LETTERS", d.dead_letters, "a whole number"),
        };
        if !(0.0..=1.0).contains(&thresholds.failure_rate) {
            env.problem("ALERT_FAILURE_RATE must be between 0 and 1");
        }
        if states_every < Duration::from_millis(500) {
            env.problem("CONSOLE_STATES_EVERY_MS must be at least 500");
        }
        let http = service_kit::server::ServerLimits::from_env(&mut env);
        if replay_timeout >= http.request_timeout {
            env.problem(format!(
                "CONSOLE_REPLAY_TIMEOUT_MS ({} ms) must be below HTTP_REQUEST_TIMEOUT_MS ({} ms)",
                replay_timeout.as_millis(),
                http.request_timeout.as_millis()
            ));
        }
        env.finish().map(|()| Self {
            infra,
            jwt_secret,
            operator_tenant,
            listen,
            backfill_events,
            states_every,
            replay_timeout,
            thresholds,
            http,
        })
    }
}
