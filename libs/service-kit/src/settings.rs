//! Env-var settings. Each service declares what it reads; every problem is collected and
//! reported together, naming the variable and what is expected.

use std::{fmt::Display, str::FromStr, time::Duration};

/// Reads env vars and collects every problem, for [`Env::finish`] to report at once.
#[derive(Debug, Default)]
pub struct Env {
    problems: Vec<String>,
    /// `None`: the process environment; `Some`: these variables only (tests).
    vars: Option<std::collections::HashMap<String, String>>,
}

/// Every problem with the configuration, one line each: the service refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct SettingsError(pub Vec<String>);

impl Env {
    /// A reader with no problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of `vars` instead of the process environment: the same rules, no
    /// global state to set.
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            problems: Vec::new(),
            vars: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The variable's value; blank counts as unset.
    fn raw(&self, name: &str) -> Option<String> {
        match &self.vars {
            None => std::env::var(name).ok(),
            Some(vars) => vars.get(name).cloned(),
        }
        .filter(|v| !v.trim().is_empty())
    }

    /// A required string, e.g. `NATS_URL`.
    pub fn required(&mut self, name: &str, expected: &str) -> String {
        self.raw(name).unwrap_or_else(|| {
            self.problems
                .push(format!("{name} is not set (expected {expected})"));
            String::new()
        })
    }

    /// An optional string, or `default` when unset or blank.
    pub fn string(&mut self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse<T: FromStr>(&mut self, name: &str, default: T, expected: &str) -> T
    where
        T::Err: Display,
    {
        match self.raw(name) {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|e| {
                self.problems.push(format!(
                    "{name}={v:?} is invalid: {e} (expected {expected})"
                ));
                default
            }),
        }
    }

    /// A duration in milliseconds (`RETRY_BASE_MS=1000`).
    pub fn millis(&mut self, name: &str, default: Duration) -> Duration {
        Duration::from_millis(self.parse(
            name,
            default.as_millis() as u64,
            "a whole number of milliseconds",
        ))
    }

    /// `JWT_SECRET`: required, at least 16 bytes (shared by ingress and fanout).
    pub fn jwt_secret(&mut self) -> Secret {
        let secret = self.required(
            "JWT_SECRET",
            "the HS256 secret terminals' tokens are signed with",
        );
        if !secret.is_empty() && secret.len() < 16 {
            self.problem("JWT_SECRET is too short (expected at least 16 bytes)");
        }
        Secret::new(secret)
    }

    /// Records a problem found by a cross-field check.
    pub fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    /// Every problem found, if any; call it once all settings are read.
    pub fn finish(self) -> Result<(), SettingsError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError(self.problems))
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The secret itself, for the one call that needs it; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How a service proves who it is to NATS (`nats/nats-server.conf` gives each service
/// user only the subjects it needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials: a server without authorization (a private test server).
    Anonymous,
    /// `NATS_USER` + `NATS_PASSWORD`. (A `.creds` file, NATS's decentralized JWT auth,
    /// would need async-nats' `nkeys` feature and an operator/account setup; not built.)
    UserPassword {
        /// The service's NATS user (`nats/nats-server.conf`).
        user: String,
        /// Its password.
        password: Secret,
    },
}

impl NatsAuth {
    /// The credentials of NATS user `user` (test harnesses build them directly).
    pub fn user_password(user: &str, password: &str) -> Self {
        NatsAuth::UserPassword {
            user: user.to_owned(),
            password: Secret::new(password.to_owned()),
        }
    }

    /// `NATS_USER` and `NATS_PASSWORD`; one without the other is a problem.
    fn from_env(env: &mut Env) -> Self {
        let user = env.raw("NATS_USER");
        let password = env.raw("NATS_PASSWORD");
        match (user, password) {
            (None, None) => NatsAuth::Anonymous,
            (Some(user), Some(password)) => NatsAuth::UserPassword {
                user,
                password: Secret::new(password),
            },
            _ => {
                env.problem("NATS_USER and NATS_PASSWORD must be set together");
                NatsAuth::Anonymous
            }
        }
    }
}

/// The settings every service shares: where the infrastructure is.
#[derive(Debug, Clone)]
pub struct Infra {
    /// `NATS_URL`: one server, or comma-separated seeds of one cluster.
    pub nats_url: String,
    /// `NATS_USER` + `NATS_PASSWORD`.
    pub nats_auth: NatsAuth,
    /// `REDIS_URL`: the job-state cache.
    pub redis_url: String,
    /// `MONGODB_URI`: the system of record; a replica set (transactions need one).
    pub mongodb_uri: String,
    /// `MONGODB_DB` (default `pos`): the database name.
    pub mongodb_db: String,
    /// `MONGODB_TIMEOUT_MS`: longest one MongoDB operation may take before it counts as an
    /// outage (a stalled mongod answers nothing). Default 2 s on the request paths, 10 s
    /// for the persister's batch writes.
    pub mongodb_timeout: Duration,
    /// `SUBMIT_DEDUPE_WINDOW_MS`: JetStream's dedupe window on submissions (default
    /// 2 min: it only absorbs transport retries of one publish; keys are judged by their
    /// subject).
    pub submit_dedupe_window: Duration,
    /// `INVOICES_MAX_MSGS` / `EVENTS_MAX_MSGS`: how many submissions and events the
    /// broker keeps, where set (else the counts in `nats/streams/*.json`, 1 000 000 and
    /// 2 000 000). What nats-server holds in memory grows with what the streams keep
    /// (an index entry per subject: per key and per invoice), so these bound its memory
    /// as well as its disk; topology settings, like `ACK_WAIT_MS`.
    pub stream_max_msgs: StreamMaxMsgs,
    /// `ACK_WAIT_MS`: the lease of the processor's and the persister's durable consumers
    /// on a delivered message (default 30 s).
    ///
    /// Both are topology settings: every service reads them, since whichever starts
    /// first creates the streams and consumers (an existing one is never changed at
    /// start: `./x nats-apply` does that).
    pub ack_wait: Duration,
    /// `BACKLOG_POLL_MS` (default 1000): how often a service reads the consumers'
    /// backlog from the broker (metrics, the persister's lag health, ingress's
    /// back-pressure).
    pub backlog_poll: Duration,
    /// `NATS_REPLICAS` (default 1; 3 on a 3-node cluster, `./x up --cluster`): copies of
    /// each stream JetStream keeps, on different servers. A topology setting, like
    /// `ACK_WAIT_MS`.
    pub stream_replicas: usize,
    /// Prefix of every stream, subject and Redis key (`pos`); tests use a random one.
    pub namespace: String,
    /// This process's name in NATS connection lists and the services API.
    pub instance: String,
}

impl Infra {
    /// Reads the shared settings for `service`. The URLs named in `needs` are required;
    /// the others are empty when unset.
    pub fn from_env(env: &mut Env, service: &str, needs: &[&str]) -> Self {
        let mut take = |name: &str, expected: &str| {
            if needs.contains(&name) {
                env.required(name, expected)
            } else {
                env.raw(name).unwrap_or_default()
            }
        };
        let nats_url = take("NATS_URL", "a NATS URL such as nats://127.0.0.1:4222");
        let redis_url = take("REDIS_URL", "a Redis URL such as redis://127.0.0.1:6379");
        let mongodb_uri = take(
            "MONGODB_URI",
            "a MongoDB URI such as mongodb://127.0.0.1:27017/?replicaSet=rs0",
        );
        let nats_auth = NatsAuth::from_env(env);
        let mongodb_db = env.string("MONGODB_DB", "pos");
        let mongodb_timeout = env.millis(
            "MONGODB_TIMEOUT_MS",
            Duration::from_secs(if service == "persister" { 10 } else { 2 }),
        );
        let submit_dedupe_window = env.millis("SUBMIT_DEDUPE_WINDOW_MS", Duration::from_secs(120));
        if submit_dedupe_window < Duration::from_millis(100) {
            env.problem("SUBMIT_DEDUPE_WINDOW_MS must be at least 100");
        }
        let stream_max_msgs = StreamMaxMsgs {
            invoices: max_msgs(env, "INVOICES_MAX_MSGS"),
            events: max_msgs(env, "EVENTS_MAX_MSGS"),
        };
        let ack_wait = env.millis("ACK_WAIT_MS", Duration::from_secs(30));
        let backlog_poll = env
            .millis("BACKLOG_POLL_MS", Duration::from_secs(1))
            .max(Duration::from_millis(50));
        let stream_replicas = env.parse("NATS_REPLICAS", 1usize, "1, 3 or 5");
        if ![1, 3, 5].contains(&stream_replicas) {
            env.problem(format!(
                "NATS_REPLICAS={stream_replicas} is invalid (expected 1, 3 or 5: an odd number of servers keeps a quorum)"
            ));
        }
        let namespace = env.string("POS_NAMESPACE", "pos");
        if namespace.is_empty()
            || !namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            || !namespace.starts_with(|c: char| c.is_ascii_lowercase())
        {
            env.problem(format!("POS_NAMESPACE={namespace:?} is invalid (expected lower-case letters and digits, starting with a letter)"));
        }
        let instance = env.string(
            "INSTANCE_NAME",
            &format!("{service}-{}", std::process::id()),
        );
        Self {
            nats_url,
            nats_auth,
            redis_url,
            mongodb_uri,
            mongodb_db,
            mongodb_timeout,
            submit_dedupe_window,
            stream_max_msgs,
            ack_wait,
            backlog_poll,
            stream_replicas,
            namespace,
            instance,
        }
    }
}

/// How many messages the submissions and events streams keep, where a deployment
/// overrides the stream files (`None`: the file's count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamMaxMsgs {
    /// `INVOICES_MAX_MSGS`.
    pub invoices: Option<u32>,
    /// `EVENTS_MAX_MSGS`.
    pub events: Option<u32>,
}

/// The smallest count a stream may be set to keep. Ingress refuses new work at half of
/// it, and the other half is the margin for what every ingress instance accepts between
/// two backlog reads (three events per invoice, `BACKLOG_POLL_MS`): 5 000 events cover
/// ~1 600 invoices a second at the default 1 s poll.
const MIN_MAX_MSGS: u32 = 10_000;

/// An optional stream count: unset or 0 keeps the file's.
fn max_msgs(env: &mut Env, name: &str) -> Option<u32> {
    let n = env.parse(
        name,
        0u32,
        "a number of messages, 10000 to 4294967295 (0: the stream file's)",
    );
    if n != 0 && n < MIN_MAX_MSGS {
        env.problem(format!(
            "{name}={n} is too small (expected at least {MIN_MAX_MSGS}, or 0 for the stream file's count)"
        ));
    }
    (n != 0).then_some(n)
}

/// Settings every queue worker (processor, persister) shares.
#[derive(Debug, Clone)]
pub struct Worker {
    /// `HEALTH_ADDR`: where `/health` is served (`off` disables it; port 0 picks one).
    pub health_addr: Option<std::net::SocketAddr>,
    /// `CONCURRENCY`: messages handled at once by this instance.
    pub concurrency: usize,
    /// `SHUTDOWN_GRACE_MS`: how long SIGTERM waits for in-flight messages.
    pub shutdown_grace: Duration,
}

impl Worker {
    /// Reads the worker settings, with this service's default health port and concurrency.
    pub fn from_env(env: &mut Env, default_health_port: u16, default_concurrency: usize) -> Self {
        let health = env.string("HEALTH_ADDR", &format!("0.0.0.0:{default_health_port}"));
        let health_addr = if health == "off" {
            None
        } else {
            match health.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    env.problem(format!(
                        "HEALTH_ADDR={health:?} is invalid (expected host:port or `off`)"
                    ));
                    None
                }
            }
        };
        let concurrency = env.parse("CONCURRENCY", default_concurrency, "a whole number ≥ 1");
        if concurrency == 0 {
            env.problem("CONCURRENCY must be at least 1");
        }
        Self {
            health_addr,
            concurrency: concurrency.max(1),
            shutdown_grace: env.millis("SHUTDOWN_GRACE_MS", Duration::from_secs(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(env: Env) -> Vec<String> {
        env.finish().err().map(|e| e.0).unwrap_or_default()
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_variable() {
        let mut env = Env::from_vars([
            ("NATS_URL", "nats://127.0.0.1:4222"),
            ("MONGODB_TIMEOUT_MS", "soon"),
            ("NATS_REPLICAS", "2"),
            ("POS_NAMESPACE", "Pos-1"),
            ("NATS_USER", "ingress"),
            ("JWT_SECRET", "short"),
            ("EVENTS_MAX_MSGS", "500"),
            ("INVOICES_MAX_MSGS", "lots"),
        ]);
        Infra::from_env(
            &mut env,
            "ingress",
            &["NATS_URL", "REDIS_URL", "MONGODB_URI"],
        );
        env.jwt_secret();
        let found = problems(env);
        for variable in [
            "REDIS_URL is not set",
            "MONGODB_URI is not set",
            "MONGODB_TIMEOUT_MS=\"soon\" is invalid",
            "NATS_REPLICAS=2 is invalid",
            "POS_NAMESPACE=\"Pos-1\" is invalid",
            "NATS_USER and NATS_PASSWORD must be set together",
            "JWT_SECRET is too short",
            "EVENTS_MAX_MSGS=500 is too small",
            "INVOICES_MAX_MSGS=\"lots\" is invalid",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(variable)),
                "{variable:?} not in {found:#?}"
            );
        }
        assert_eq!(found.len(), 9, "{found:#?}");
    }

    #[test]
    fn unset_and_blank_take_the_defaults_and_urls_not_needed_may_be_missing() {
        let mut env = Env::from_vars([
            ("NATS_URL", "nats://a:4222"),
            ("MONGODB_DB", "  "),
            ("NATS_USER", "persister"),
            ("NATS_PASSWORD", "pw"),
        ]);
        let infra = Infra::from_env(&mut env, "persister", &["NATS_URL"]);
        assert!(problems(env).is_empty());
        assert_eq!(infra.mongodb_db, "pos", "blank counts as unset");
        assert_eq!(
            infra.stream_max_msgs,
            StreamMaxMsgs::default(),
            "the files' counts"
        );
        assert_eq!(infra.submit_dedupe_window, Duration::from_secs(120));
        assert_eq!(
            infra.mongodb_timeout,
            Duration::from_secs(10),
            "the persister's own"
        );
        assert_eq!(infra.redis_url, "");
        assert_eq!(infra.stream_replicas, 1);
        assert_eq!(infra.nats_auth, NatsAuth::user_password("persister", "pw"));
    }

    #[test]
    fn worker_settings_refuse_a_bad_health_address_and_turn_off() {
        let mut env = Env::from_vars([("HEALTH_ADDR", "off"), ("CONCURRENCY", "64")]);
        let w = Worker::from_env(&mut env, 3002, 256);
        assert!(problems(env).is_empty());
        assert_eq!((w.health_addr, w.concurrency), (None, 64));

        let mut env = Env::from_vars([("HEALTH_ADDR", "localhost")]);
        Worker::from_env(&mut env, 3002, 256);
        let found = problems(env);
        assert!(
            found.iter().any(|p| p.contains("HEALTH_ADDR")),
            "{found:#?}"
        );
    }

    #[test]
    fn stream_counts_override_the_files_and_zero_keeps_them() {
        let mut env = Env::from_vars([("EVENTS_MAX_MSGS", "50000"), ("INVOICES_MAX_MSGS", "0")]);
        let infra = Infra::from_env(&mut env, "processor", &[]);
        assert!(problems(env).is_empty());
        assert_eq!(
            infra.stream_max_msgs,
            StreamMaxMsgs {
                invoices: None,
                events: Some(50_000)
            }
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let mut env = Env::from_vars([("JWT_SECRET", "0123456789abcdef-very-secret")]);
        let secret = env.jwt_secret();
        assert!(problems(env).is_empty());
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "0123456789abcdef-very-secret");
    }
}
