//! Fanout settings, from env. Every problem is reported at once, naming the variable.

use service_kit::settings::{Infra, Secret, SettingsError};
use service_kit::Env;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `NATS_URL` (required), `POS_NAMESPACE`, `INSTANCE_NAME`; the Redis and MongoDB
    /// fields are unused here.
    pub infra: Infra,
    /// `JWT_SECRET` (required, at least 16 bytes).
    pub jwt_secret: Secret,
    /// `FANOUT_ADDR`, default `0.0.0.0:3001`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `FANOUT_MAX_CONNECTIONS_PER_TENANT` (default 1000), per instance. One tenant
    /// cannot take every socket of an instance; an upgrade over the limit gets `503`.
    pub max_connections_per_tenant: usize,
    /// `FANOUT_CLIENT_BUFFER` (default 1024): frames a socket may fall behind its
    /// tenant's live feed before it is closed as a slow client (the capacity of the
    /// tenant's broadcast ring, which tokio rounds up to a power of two).
    pub client_buffer: usize,
    /// `FANOUT_PING_INTERVAL_MS` (default 20 s): how often each socket is pinged.
    pub ping_interval: Duration,
    /// `FANOUT_IDLE_TIMEOUT_MS` (default 60 s): a socket with no inbound frame (pongs
    /// count) for this long is closed; also the longest a single write may stall.
    pub idle_timeout: Duration,
    /// `HTTP_*`: the server's connection limits and timeouts (upgrade requests).
    pub http: service_kit::server::ServerLimits,
}

/// tokio's broadcast channel refuses capacities above `usize::MAX / 2`; a million
/// buffered frames per tenant is already far more memory than any instance should spend.
const MAX_CLIENT_BUFFER: usize = 1 << 20;

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let mut env = Env::new();
        let infra = Infra::from_env(&mut env, "fanout", &["NATS_URL"]);
        let jwt_secret = env.jwt_secret();
        let listen = env.parse(
            "FANOUT_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 3001)),
            "host:port, e.g. 0.0.0.0:3001",
        );
        let settings = Self {
            infra,
            jwt_secret,
            listen,
            max_connections_per_tenant: env.parse(
                "FANOUT_MAX_CONNECTIONS_PER_TENANT",
                1000,
                "a whole number of sockets ≥ 1",
            ),
            client_buffer: env.parse("FANOUT_CLIENT_BUFFER", 1024, "a whole number of frames ≥ 1"),
            ping_interval: env.millis("FANOUT_PING_INTERVAL_MS", Duration::from_secs(20)),
            idle_timeout: env.millis("FANOUT_IDLE_TIMEOUT_MS", Duration::from_secs(60)),
            http: service_kit::server::ServerLimits::from_env(&mut env),
        };
        for problem in settings.problems() {
            env.problem(problem);
        }
        env.finish().map(|_| settings)
    }

    /// Cross-field checks, also applied to settings built in code (tests).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_connections_per_tenant == 0 {
            problems.push("FANOUT_MAX_CONNECTIONS_PER_TENANT must be at least 1".to_owned());
        }
        if self.client_buffer == 0 || self.client_buffer > MAX_CLIENT_BUFFER {
            problems.push(format!(
                "FANOUT_CLIENT_BUFFER must be between 1 and {MAX_CLIENT_BUFFER}"
            ));
        }
        if self.ping_interval.is_zero() {
            problems.push("FANOUT_PING_INTERVAL_MS must be at least 1".to_owned());
        }
        if self.idle_timeout <= self.ping_interval {
            // A client that only answers pings would be closed between two pings.
            problems.push(format!(
                "FANOUT_IDLE_TIMEOUT_MS ({} ms) must be greater than FANOUT_PING_INTERVAL_MS ({} ms)",
                self.idle_timeout.as_millis(),
                self.ping_interval.as_millis()
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The process environment is shared by every test thread; settings tests take turns.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    const VARS: [&str; 8] = [
        "NATS_URL",
        "JWT_SECRET",
        "POS_NAMESPACE",
        "FANOUT_ADDR",
        "FANOUT_MAX_CONNECTIONS_PER_TENANT",
        "FANOUT_CLIENT_BUFFER",
        "FANOUT_PING_INTERVAL_MS",
        "FANOUT_IDLE_TIMEOUT_MS",
    ];

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let _turn = ENV_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in VARS {
            std::env::remove_var(name);
        }
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let result = Settings::from_env();
        for name in VARS {
            std::env::remove_var(name);
        }
        result
    }

    const GOOD: [(&str, &str); 2] = [
        ("NATS_URL", "nats://127.0.0.1:4222"),
        ("JWT_SECRET", "0123456789abcdef"),
    ];

    fn with_good(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        GOOD.iter().chain(extra).copied().collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = load(&GOOD).unwrap();
        assert_eq!(s.listen, SocketAddr::from(([0, 0, 0, 0], 3001)));
        assert_eq!(s.max_connections_per_tenant, 1000);
        assert_eq!(s.client_buffer, 1024);
        assert_eq!(s.ping_interval, Duration::from_secs(20));
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.infra.namespace, "pos");
    }

    #[test]
    fn missing_required_variables_are_all_named_at_once() {
        let message = load(&[]).unwrap_err().to_string();
        assert!(message.contains("NATS_URL is not set"), "{message}");
        assert!(message.contains("JWT_SECRET is not set"), "{message}");
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let message = load(&[("NATS_URL", "nats://x:4222"), ("JWT_SECRET", "short")])
            .unwrap_err()
            .to_string();
        assert!(message.contains("JWT_SECRET is too short"), "{message}");
    }

    #[test]
    fn malformed_numbers_and_addresses_name_their_variable() {
        let message = load(&with_good(&[
            ("FANOUT_ADDR", "nowhere"),
            ("FANOUT_CLIENT_BUFFER", "many"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("FANOUT_ADDR=\"nowhere\" is invalid"),
            "{message}"
        );
        assert!(
            message.contains("FANOUT_CLIENT_BUFFER=\"many\" is invalid"),
            "{message}"
        );
    }

    #[test]
    fn zero_limits_and_an_idle_timeout_below_the_ping_interval_are_refused() {
        let message = load(&with_good(&[
            ("FANOUT_MAX_CONNECTIONS_PER_TENANT", "0"),
            ("FANOUT_CLIENT_BUFFER", "0"),
            ("FANOUT_PING_INTERVAL_MS", "5000"),
            ("FANOUT_IDLE_TIMEOUT_MS", "5000"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("FANOUT_MAX_CONNECTIONS_PER_TENANT must be at least 1"),
            "{message}"
        );
        assert!(
            message.contains("FANOUT_CLIENT_BUFFER must be between 1 and"),
            "{message}"
        );
        assert!(
            message.contains("FANOUT_IDLE_TIMEOUT_MS (5000 ms) must be greater"),
            "{message}"
        );
    }

    #[test]
    fn port_zero_is_allowed() {
        let s = load(&with_good(&[
            ("FANOUT_ADDR", "127.0.0.1:0"),
            ("FANOUT_PING_INTERVAL_MS", "100"),
            ("FANOUT_IDLE_TIMEOUT_MS", "300"),
        ]))
        .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.ping_interval, Duration::from_millis(100));
    }
}
