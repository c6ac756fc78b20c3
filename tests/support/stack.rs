//! [`TestStack`]: ingress, processor and persister running in-process on this test's
//! runtime, in a namespace and database of their own.

use super::{eventually, unique, Infra};
use reqwest::StatusCode;
use serde_json::Value;
use service_kit::settings::{Infra as InfraSettings, Secret, Worker};
use std::time::Duration;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Knobs a test may turn before starting the stack.
#[derive(Debug, Clone)]
pub struct Options {
    pub dedupe_window: Duration,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub ack_wait: Duration,
    pub start_processor: bool,
    pub start_persister: bool,
    /// Overrides of the URLs (tests that bring their own server to kill).
    pub nats_url: Option<String>,
    pub mongodb_uri: Option<String>,
    pub redis_url: Option<String>,
    /// The ingress HTTP server's connection limits.
    pub http: service_kit::server::ServerLimits,
    /// Ingress rate limits (default: none, so that load tests measure the pipeline).
    pub rate_limits: ingress::guard::RateLimits,
    /// How long an attempt waits for MongoDB to number an invoice (processor).
    pub ledger_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dedupe_window: Duration::from_secs(120),
            retry_base: Duration::from_millis(100),
            max_attempts: 4,
            ack_wait: Duration::from_secs(30),
            start_processor: true,
            start_persister: true,
            nats_url: None,
            mongodb_uri: None,
            redis_url: None,
            http: service_kit::server::ServerLimits::default(),
            rate_limits: ingress::guard::RateLimits::UNLIMITED,
            ledger_wait: Duration::from_secs(60),
        }
    }
}

pub struct TestStack {
    pub infra: Infra,
    pub namespace: String,
    pub db: String,
    pub api: Api,
    /// The in-process ingress's routes, for `oneshot` calls that skip TCP and HTTP.
    pub ingress_router: axum::Router,
    pub options: Options,
    pub tenant: String,
}

impl TestStack {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            service_kit::telemetry::init(std::io::stderr);
        }
        let mut infra = Infra::from_env();
        if let Some(u) = &options.nats_url {
            infra.nats_url = u.clone();
        }
        if let Some(u) = &options.mongodb_uri {
            infra.mongodb_uri = u.clone();
        }
        if let Some(u) = &options.redis_url {
            infra.redis_url = u.clone();
        }
        let namespace = unique("t");
        let db = namespace.clone();
        let settings_of = |service: &str| {
            let mut s = infra_settings_for(&infra, &namespace, &db, service);
            s.submit_dedupe_window = options.dedupe_window;
            s.ack_wait = options.ack_wait;
            s
        };

        let ingress = ingress::App::build(ingress::Settings {
            infra: settings_of("ingress"),
            jwt_secret: Secret::new(SECRET.into()),
            listen: "127.0.0.1:0".parse().unwrap(),
            job_ttl: Duration::from_secs(3600),
            publish_timeout: Duration::from_secs(1),
            http: options.http.clone(),
            rate_limits: options.rate_limits,
            max_unstored_events: Some(1_000_000),
        })
        .await
        .expect("ingress builds");
        let port = ingress.port();
        let ingress_router = ingress.router();
        tokio::spawn(ingress.run_until_stopped(service_kit::CancellationToken::new()));

        let worker = Worker {
            health_addr: None,
            concurrency: 32,
            shutdown_grace: Duration::from_secs(5),
        };
        if options.start_processor {
            let processor = processor::build(processor::Settings {
                infra: settings_of("processor"),
                worker: worker.clone(),
                retry: messaging::RetryPolicy {
                    max_attempts: options.max_attempts,
                    base_delay: options.retry_base,
                    max_delay: options.retry_base * 8,
                },
                ledger_wait: options.ledger_wait,
            })
            .await
            .expect("processor builds");
            tokio::spawn(processor.run_until_stopped(service_kit::CancellationToken::new()));
        }
        if options.start_persister {
            let persister = persister::build(persister::Settings {
                infra: settings_of("persister"),
                worker,
                retry: persister::unlimited_retries(
                    Duration::from_millis(100),
                    Duration::from_millis(500),
                ),
                coalescing: persister::Coalescing {
                    max_batch: 256,
                    linger: Duration::from_millis(2),
                    hold: Duration::from_millis(50),
                },
                max_lag: Duration::from_secs(60),
            })
            .await
            .expect("persister builds");
            tokio::spawn(persister.run_until_stopped(service_kit::CancellationToken::new()));
        }
        let tenant = unique("shop");
        let api = Api::new(format!("http://127.0.0.1:{port}"), &tenant);
        Self {
            infra,
            namespace,
            db,
            api,
            ingress_router,
            options,
            tenant,
        }
    }

    /// An API client of another tenant on the same ingress.
    pub fn api_for(&self, tenant: &str) -> Api {
        Api::new(self.api.base.clone(), tenant)
    }

    pub async fn mongo(&self) -> mongodb::Collection<mongodb::bson::Document> {
        let client = mongodb::Client::with_uri_str(&self.infra.mongodb_uri)
            .await
            .unwrap();
        client.database(&self.db).collection("invoices")
    }

    /// Documents stored for `tenant`.
    pub async fn stored_count(&self, tenant: &str) -> u64 {
        self.mongo()
            .await
            .count_documents(mongodb::bson::doc! { "tenantId": tenant })
            .await
            .unwrap()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.infra.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Deletes every Redis key of this test's namespace: a FLUSHALL that cannot disturb
    /// the tests running beside this one.
    pub async fn flush_redis(&self) {
        let mut c = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.namespace))
            .query_async(&mut c)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }

    /// Submissions the broker holds for `tenant` (every key subject and the keyless one):
    /// what a second acceptance of one key would show, where a MongoDB count could not
    /// (its unique index keeps one document per key whatever happened upstream).
    pub async fn submissions(&self, tenant: &str) -> u64 {
        let js = async_nats::jetstream::new(self.nats().await);
        let stream = js
            .get_stream(format!("{}_INVOICES", self.namespace.to_uppercase()))
            .await
            .unwrap();
        let ns = &self.namespace;
        let mut total = 0;
        for filter in [
            format!("{ns}.submit.{tenant}"),
            format!("{ns}.submit.{tenant}.>"),
        ] {
            use futures_util::StreamExt;
            let mut subjects = stream.info_with_subjects(filter).await.unwrap();
            while let Some(entry) = subjects.next().await {
                total += entry.unwrap().1 as u64;
            }
        }
        total
    }

    /// A client with the operator's rights on this stack's NATS.
    pub async fn nats(&self) -> async_nats::Client {
        self.infra.nats_as("operator", &self.infra.nats_url).await
    }
}

/// Settings of a service logged in to NATS as the operator (library-level tests); the
/// stack's services use [`infra_settings_for`].
pub fn infra_settings(infra: &Infra, namespace: &str, db: &str) -> InfraSettings {
    infra_settings_for(infra, namespace, db, "operator")
}

/// Settings of `service`, logged in to NATS as its own user.
pub fn infra_settings_for(
    infra: &Infra,
    namespace: &str,
    db: &str,
    service: &str,
) -> InfraSettings {
    InfraSettings {
        nats_url: infra.nats_url.clone(),
        nats_auth: infra.nats_auth(service),
        redis_url: infra.redis_url.clone(),
        mongodb_uri: infra.mongodb_uri.clone(),
        mongodb_db: db.to_owned(),
        mongodb_timeout: Duration::from_secs(2),
        submit_dedupe_window: Duration::from_secs(120),
        stream_max_msgs: service_kit::settings::StreamMaxMsgs::default(),
        ack_wait: Duration::from_secs(30),
        // Every in-process stack lives until the test binary ends: poll the broker gently.
        backlog_poll: Duration::from_secs(5),
        stream_replicas: 1,
        namespace: namespace.to_owned(),
        instance: unique("test-"),
    }
}

pub fn token(tenant: &str, exp_in: i64) -> String {
    signed(tenant, "T1", auth::Role::Terminal, exp_in)
}

/// A token of the test secret: every helper's one signing place.
pub fn signed(tenant: &str, sub: &str, role: auth::Role, exp_in: i64) -> String {
    auth::sign(
        SECRET,
        &auth::Claims {
            sub: sub.into(),
            tenant: domain::TenantId::parse(tenant).unwrap(),
            role,
            exp: chrono::Utc::now().timestamp() + exp_in,
        },
    )
}

/// A typed client of the REST API, authenticated as one tenant.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub tenant: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
}

impl Api {
    pub fn new(base: String, tenant: &str) -> Self {
        Self {
            base,
            // A hung server fails the test instead of hanging the suite.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            token: token(tenant, 3600),
            tenant: tenant.to_owned(),
        }
    }

    async fn answer(r: reqwest::Response) -> Answer {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text:?}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, body: &Value) -> Answer {
        let r = self
            .http
            .post(format!("{}/invoices", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = self
            .http
            .post(format!("{}/invoices", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    pub async fn invoice(&self, id: &str) -> Answer {
        self.get(&format!("/invoices/{id}")).await
    }

    /// Waits until invoice `id` is in `state`; returns it.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        eventually(
            &format!("invoice {id} to reach {state}"),
            timeout,
            || async move {
                let a = self.invoice(id).await;
                (a.status == StatusCode::OK && a.body["state"] == state).then_some(a.body)
            },
        )
        .await
    }
}

// ---- fanout: WebSocket helpers ----
//
// The tests crate does not depend on the `fanout` library crate, so fanout runs as its
// real binary (`target/<profile>/fanout`, built by `cargo build --workspace`), started
// on this stack's namespace; its figures come from the `metrics` object of its `/health`.

/// A client socket as `tokio_tungstenite::connect_async` returns it.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One fanout process serving a [`TestStack`]'s namespace; killed when dropped.
pub struct Fanout {
    procs: super::ProcessStack,
    pub port: u16,
}

impl TestStack {
    /// Starts a fanout instance (the real binary) on this stack's namespace, with `env`
    /// on top of the usual settings (e.g. `FANOUT_CLIENT_BUFFER`). Each call is one
    /// more instance.
    pub async fn start_fanout(&self, env: &[(&str, &str)]) -> Fanout {
        let mut procs = super::ProcessStack::new();
        procs.infra = self.infra.clone();
        procs.namespace = self.namespace.clone();
        for (k, v) in env {
            procs.extra_env.insert((*k).into(), (*v).into());
        }
        let i = procs.spawn("fanout").await;
        let port = procs.instances[i].port.expect("fanout listens");
        Fanout { procs, port }
    }
}

impl Fanout {
    /// `ws://…/ws?token=<a valid token of tenant>` plus `query` (`since=7&terminalId=T1`,
    /// or empty).
    pub fn ws_url(&self, tenant: &str, query: &str) -> String {
        self.ws_url_with_token(&token(tenant, 3600), query)
    }

    pub fn ws_url_with_token(&self, token: &str, query: &str) -> String {
        let mut url = format!("ws://127.0.0.1:{}/ws?token={token}", self.port);
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        url
    }

    /// `ws://…/ws` without any token, plus `query`.
    pub fn bare_ws_url(&self, query: &str) -> String {
        let mut url = format!("ws://127.0.0.1:{}/ws", self.port);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// Connects as `tenant`; panics unless the upgrade succeeds.
    pub async fn connect(&self, tenant: &str, query: &str) -> Ws {
        let url = self.ws_url(tenant, query);
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(e) => panic!("WebSocket upgrade to {url} failed: {e}"),
        }
    }

    /// The `metrics` object of this instance's `GET /health`.
    pub async fn metrics(&self) -> Value {
        let health: Value = reqwest::get(format!("http://127.0.0.1:{}/health", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["metrics"].clone()
    }

    /// What the instance logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.procs.log_of(0)
    }

    /// SIGTERM, then the exit status (`None` if it did not exit within `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.procs.terminate(0, timeout).await
    }
}

/// What a client socket yields, pings and pongs aside.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A text frame, parsed.
    Frame(Value),
    /// A close frame (code, reason), or `None` for a connection that ended without one.
    Closed(Option<(u16, String)>),
}

/// The next text frame or the end of the socket, or `None` if nothing came within
/// `timeout`. Pings are answered by the library while reading.
pub async fn next_frame(ws: &mut Ws, timeout: Duration) -> Option<Received> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        return Some(match message {
            Some(Ok(Message::Text(text))) => Received::Frame(
                serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("a text frame that is not JSON ({e}): {text}")),
            ),
            Some(Ok(Message::Close(frame))) => {
                Received::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Some(Ok(Message::Binary(b))) => panic!("unexpected binary frame: {b:?}"),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => Received::Closed(None),
        });
    }
}

/// A token of `tenant` with `role`.
pub fn token_as(tenant: &str, role: auth::Role) -> String {
    signed(tenant, &format!("{}-user", role.as_str()), role, 3600)
}

impl Api {
    /// The same client with a token of `role`.
    pub fn as_role(&self, role: auth::Role) -> Api {
        Api {
            token: token_as(&self.tenant, role),
            ..self.clone()
        }
    }

    /// A GET answered as text (NDJSON exports), with its status and content type.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, r.text().await.unwrap())
    }

    /// A request with this client's token and a JSON body, answered as [`Answer`].
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        Self::answer(req.send().await.unwrap()).await
    }
}
