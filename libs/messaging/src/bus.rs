//! The one publish path: every message carries a `Nats-Msg-Id` that names the fact (not
//! the attempt), and a publish is done only when the server's ack arrived. An ack that
//! times out is retried with the same id: JetStream answers `duplicate` if the first
//! try was stored after all (jetstream.md §0.5), so a retry can never double a message.

use crate::{envelope::DeadLetter, Encoded, Envelope, Topology};
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage, stream::Stream};
use async_nats::{HeaderMap, ServerAddr};
use std::{str::FromStr, sync::Arc, time::Duration};
use tracing::{info, warn};

/// Header carrying the request id from ingress through every stage, so one invoice's
/// logs can be followed across the four services.
pub const CORRELATION_HEADER: &str = "Pos-Correlation-Id";

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    /// Shown by `nats server report connections`: which service and instance this is.
    pub client_name: String,
    /// How long one publish waits for its ack before it is retried.
    pub ack_timeout: Duration,
    /// Publish tries (same message id) before the caller is told the broker is down.
    pub publish_tries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("NATS_URL `{0}` is not a NATS server address (expected e.g. nats://127.0.0.1:4222)")]
    BadUrl(String),
    #[error("the broker did not acknowledge the publish: {0}")]
    Unavailable(String),
    #[error("JetStream request failed: {0}")]
    Request(String),
    #[error(transparent)]
    Definition(#[from] crate::topology::DefinitionError),
    #[error("stored message is not a valid envelope: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What the server said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    /// The id was already in the stream's dedupe window: `sequence` is the original's.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    topology: Arc<Topology>,
    settings: Arc<NatsSettings>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("namespace", &self.topology.namespace())
            .finish()
    }
}

fn request_error(e: impl std::fmt::Display) -> BusError {
    BusError::Request(e.to_string())
}

impl Bus {
    /// Connects, retrying with backoff while the server is unreachable (logged at each
    /// try) so a service started before NATS comes up waits instead of crash-looping. A
    /// malformed URL fails at once.
    pub async fn connect(settings: NatsSettings, topology: Topology) -> Result<Self, BusError> {
        ServerAddr::from_str(&settings.url).map_err(|_| BusError::BadUrl(settings.url.clone()))?;
        let mut delay = Duration::from_millis(250);
        let client = loop {
            let attempt = async_nats::ConnectOptions::new()
                .name(&settings.client_name)
                .connection_timeout(Duration::from_secs(3))
                .connect(settings.url.as_str())
                .await;
            match attempt {
                Ok(client) => break client,
                Err(e) => {
                    warn!(url = %settings.url, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "NATS unreachable; retrying (is nats-server running? check NATS_URL)");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        info!(url = %settings.url, "connected to NATS");
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.ack_timeout)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            topology: Arc::new(topology),
            settings: Arc::new(settings),
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// This instance's name (`INSTANCE_NAME`), as NATS connection lists show it.
    pub fn client_name(&self) -> &str {
        &self.settings.client_name
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates or updates every stream and durable consumer from the definitions in
    /// `nats/`. Safe to run from every instance at once; every service runs it, so the
    /// topology exists whichever service starts first.
    pub async fn ensure_topology(&self) -> Result<(), BusError> {
        for config in self.topology.stream_configs()? {
            let name = config.name.clone();
            self.js
                .get_or_create_stream(config.clone())
                .await
                .map_err(request_error)?;
            if let Err(e) = self.js.update_stream(&config).await {
                warn!(stream = %name, error = %e, "stream exists with a configuration that cannot be updated in place");
            }
        }
        self.durable(
            &self.topology.invoices_stream(),
            self.topology.processor_consumer()?,
        )
        .await?;
        self.durable(
            &self.topology.events_stream(),
            self.topology.persister_consumer()?,
        )
        .await?;
        Ok(())
    }

    pub async fn stream(&self, name: &str) -> Result<Stream, BusError> {
        self.js.get_stream(name).await.map_err(request_error)
    }

    /// Creates (or, on 2.9, silently reconfigures) a durable pull consumer.
    pub async fn durable(
        &self,
        stream: &str,
        config: pull::Config,
    ) -> Result<jetstream::consumer::PullConsumer, BusError> {
        let stream = self.stream(stream).await?;
        stream.create_consumer(config).await.map_err(request_error)
    }

    /// [`Bus::durable`], retried with logged backoff while the broker is unreachable:
    /// a worker whose broker blinks during start-up binds once it is back instead of
    /// exiting.
    pub async fn bind_durable(
        &self,
        stream: &str,
        config: pull::Config,
    ) -> jetstream::consumer::PullConsumer {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.durable(stream, config.clone()).await {
                Ok(consumer) => return consumer,
                Err(e) => {
                    warn!(%stream, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot bind the durable consumer; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn publish(
        &self,
        subject: String,
        id: String,
        payload: bytes::Bytes,
        correlation: Option<&str>,
    ) -> Result<Published, BusError> {
        let mut last_error = String::new();
        for attempt in 1..=self.settings.publish_tries.max(1) {
            let mut headers = HeaderMap::new();
            if let Some(c) = correlation {
                headers.insert(CORRELATION_HEADER, c);
            }
            // Headers first: `headers()` replaces the map, so calling it after
            // `message_id()` would silently drop the id and with it all deduplication.
            let message = PublishMessage::build()
                .payload(payload.clone())
                .headers(headers)
                .message_id(id.as_str());
            let result = match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(ack) => {
                    return Ok(Published {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    })
                }
                Err(e) => {
                    warn!(%subject, msg_id = %id, attempt, error = %e, "publish not acknowledged; retrying with the same id");
                    last_error = e;
                }
            }
        }
        Err(BusError::Unavailable(last_error))
    }

    /// Id of a submission: the tenant's idempotency key (or the invoice id when the client
    /// sent none), plus the replay generation so an operator's replay is a new message.
    pub fn submission_id(envelope: &Envelope) -> String {
        let inv = &envelope.invoice;
        let base = match &inv.idempotency_key {
            Some(k) => format!("{}:k:{k}", inv.tenant_id),
            None => format!("{}:i:{}", inv.tenant_id, inv.id),
        };
        if inv.replays == 0 {
            base
        } else {
            format!("{base}:r{}", inv.replays)
        }
    }

    pub async fn publish_submission(
        &self,
        message: &Encoded<'_>,
        correlation: Option<&str>,
    ) -> Result<Published, BusError> {
        let envelope = message.envelope;
        let subject = self.topology.submit_subject(&envelope.invoice.tenant_id);
        self.publish(
            subject,
            Self::submission_id(envelope),
            message.bytes.clone(),
            correlation,
        )
        .await
    }

    /// Publishes a lifecycle event. Its id names the state reached (invoice, generation,
    /// state, attempt), so a stage that crashes and redoes its work emits nothing twice.
    pub async fn publish_event(
        &self,
        message: &Encoded<'_>,
        correlation: Option<&str>,
    ) -> Result<Published, BusError> {
        let (subject, id) = self.event_target(message);
        self.publish(subject, id, message.bytes.clone(), correlation)
            .await
    }

    /// [`Bus::publish_event`] as a task of its own, for an event the caller's answer does
    /// not depend on; a failure is logged.
    pub fn publish_event_detached(&self, message: &Encoded<'_>, correlation: Option<&str>) {
        let (subject, id) = self.event_target(message);
        let (bus, payload) = (self.clone(), message.bytes.clone());
        let correlation = correlation.map(str::to_owned);
        tokio::spawn(async move {
            if let Err(e) = bus
                .publish(subject, id.clone(), payload, correlation.as_deref())
                .await
            {
                warn!(error = %e, event = %id, "event not published");
            }
        });
    }

    /// The subject and message id of an event.
    fn event_target(&self, message: &Encoded<'_>) -> (String, String) {
        let inv = &message.envelope.invoice;
        (
            self.topology.event_subject(&inv.tenant_id),
            format!("{}:{}:{}:{}", inv.id, inv.replays, inv.state, inv.attempts),
        )
    }

    pub async fn publish_dead_letter(&self, letter: &DeadLetter) -> Result<Published, BusError> {
        let inv = &letter.submission.invoice;
        let id = format!("{}:{}", inv.id, inv.replays);
        self.publish(
            self.topology.dlq_subject(&inv.tenant_id),
            id,
            letter.encode(),
            None,
        )
        .await
    }

    /// The submission stored at `sequence` (used to answer a duplicate publish with the
    /// original invoice).
    pub async fn submission_at(&self, sequence: u64) -> Result<Envelope, BusError> {
        let stream = self.stream(&self.topology.invoices_stream()).await?;
        let message = stream
            .get_raw_message(sequence)
            .await
            .map_err(request_error)?;
        Ok(Envelope::decode(&message.payload)?)
    }
}

impl Bus {
    /// Keeps a message that cannot even be decoded: copied as it is into the dead-letter
    /// stream under `<ns>.dlq._undecodable`, with its origin and the reason in headers.
    pub async fn publish_raw_dead_letter(
        &self,
        payload: &[u8],
        origin: &str,
        reason: &str,
    ) -> Result<Published, BusError> {
        let subject = format!("{}.dlq._undecodable", self.topology.namespace());
        let mut headers = HeaderMap::new();
        headers.insert("Pos-Origin-Subject", origin);
        headers.insert("Pos-Reason", reason.replace(['\r', '\n'], " ").as_str());
        let message = PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(payload))
            .headers(headers);
        let ack = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(request_error)?;
        let ack = ack
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
