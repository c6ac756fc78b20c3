//! The publish path of the pipeline's facts (`Bus::publish`): every submission, event and
//! dead letter carries a `Nats-Msg-Id` that names the fact (not the attempt), and a
//! publish is done only when the server's ack arrived. An ack that times out is retried
//! with the same id, and JetStream drops a repeat within the stream's dedupe window
//! (2 min on every stream); a repeated keyed first submission
//! is refused as `SubjectTaken` instead (see [`Bus::publish_submission`]). Beside it: raw
//! dead letters ([`Bus::publish_raw_dead_letter`], one try, id = digest of origin and
//! payload) and catalog notices (core NATS, no id).

use crate::{
    drift::{self, Drift},
    envelope::DeadLetter,
    Encoded, Envelope, Topology,
};
use async_nats::jetstream::{
    self,
    consumer::pull,
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{DirectGetErrorKind, Stream},
};
use async_nats::{HeaderMap, ServerAddr};
use domain::{IdempotencyKey, Invoice, InvoiceId, TenantId};
use std::{str::FromStr, sync::Arc, time::Duration};
use tracing::{info, warn};

/// Header carrying the request id from ingress through every stage, so one invoice's
/// logs can be followed across the four services.
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// Where and how a service connects to NATS, and its publish policy.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `NATS_URL`: one server, or comma-separated seeds of one cluster.
    pub url: String,
    /// Shown by `nats server report connections`: which service and instance this is.
    pub client_name: String,
    /// How long one publish waits for its ack before it is retried.
    pub ack_timeout: Duration,
    /// Publish tries (same message id) before the caller is told the broker is down.
    pub publish_tries: u32,
    /// The service's NATS user (or creds file).
    pub auth: service_kit::settings::NatsAuth,
}

impl NatsSettings {
    /// Where and as whom `infra` says to connect, with this caller's publish policy.
    pub fn for_infra(
        infra: &service_kit::settings::Infra,
        ack_timeout: Duration,
        publish_tries: u32,
    ) -> Self {
        Self {
            url: infra.nats_url.clone(),
            client_name: infra.instance.clone(),
            ack_timeout,
            publish_tries,
            auth: infra.nats_auth.clone(),
        }
    }
}

/// The credentials of `settings`, and an inbox prefix of the user's own: replies to its
/// requests (JetStream API answers, fetched messages) are then readable only by it, since
/// each service user may subscribe to `_INBOX_<user>.>` alone.
fn connect_options(settings: &NatsSettings) -> async_nats::ConnectOptions {
    use service_kit::settings::NatsAuth;
    match &settings.auth {
        NatsAuth::Anonymous => async_nats::ConnectOptions::new(),
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                password.expose().to_owned(),
            )
            .custom_inbox_prefix(format!("_INBOX_{user}"))
        }
    }
}

/// Why a broker operation failed; the variants say whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// `NATS_URL` does not parse: fix the setting, retrying will not help.
    #[error("NATS_URL `{0}` is not a NATS server address (expected e.g. nats://127.0.0.1:4222)")]
    BadUrl(String),
    /// The credentials were refused or could not be read: retrying will not help.
    #[error("NATS refused the credentials (check NATS_USER / NATS_PASSWORD and nats/nats-server.conf): {0}")]
    Credentials(String),
    /// Nothing was handed to the broker: the message is certainly not stored.
    #[error("the broker did not acknowledge the publish: {0}")]
    Unavailable(String),
    /// A publish was sent but its ack never came: it may or may not be stored. Retrying
    /// with the same message id settles it.
    #[error("the broker may have stored the publish but did not confirm it: {0}")]
    Unconfirmed(String),
    /// A keyed first submission found its key's subject taken: the key belongs to the
    /// submission stored there ([`Bus::submission_of_key`]).
    #[error("the idempotency key already has a submission")]
    SubjectTaken,
    /// A JetStream API call (stream or consumer info, create, direct get, request) failed.
    #[error("JetStream request failed: {0}")]
    Request(String),
    /// A stream or consumer definition in `nats/` does not parse.
    #[error(transparent)]
    Definition(#[from] crate::topology::DefinitionError),
    /// A stored message is not a valid [`Envelope`].
    #[error("stored message is not a valid envelope: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What the server said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's sequence in its stream.
    pub sequence: u64,
    /// The id was already in the stream's dedupe window: `sequence` is the original's.
    pub duplicate: bool,
}

/// The connection to NATS and JetStream, with this deployment's [`Topology`]: every
/// publish and read of the pipeline goes through it. Cheap to clone.
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
    ///
    /// `url` may list several seeds of one cluster, comma-separated
    /// (`nats://127.0.0.1:4222,nats://127.0.0.1:4223`): the client tries them in turn at
    /// start and on reconnect, and learns the other members from the server.
    pub async fn connect(settings: NatsSettings, topology: Topology) -> Result<Self, BusError> {
        let seeds = settings
            .url
            .split(',')
            .map(|u| ServerAddr::from_str(u.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| BusError::BadUrl(settings.url.clone()))?;
        let what = format!(
            "NATS unreachable at {} (is nats-server running? check NATS_URL)",
            settings.url
        );
        // A refused login does not heal by waiting: it fails the start at once.
        let client = service_kit::retry::until_ok_or(
            &what,
            || {
                connect_options(&settings)
                    .name(&settings.client_name)
                    .connection_timeout(Duration::from_secs(3))
                    .connect(seeds.as_slice())
            },
            |e| {
                matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication
                )
            },
        )
        .await
        .map_err(|e| BusError::Credentials(e.to_string()))?;
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

    /// The core NATS client (services API, admin requests, plain subscriptions).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Tells every ingress cache and fanout that `tenant`'s catalog is now at `version`
    /// (`None`: its settings changed). Core NATS, at most once: a notice lost to a
    /// disconnect is covered by the caches' expiry, not by a retry.
    pub async fn catalog_changed(&self, tenant: &TenantId, version: Option<u64>) {
        let subject = self.topology.catalog_subject(tenant);
        let body = serde_json::json!({ "tenantId": tenant, "version": version }).to_string();
        if let Err(e) = self.client.publish(subject, body.into()).await {
            warn!(error = %e, %tenant, "catalog change notice not sent");
        }
    }

    /// The catalog change notices of every tenant: (tenant, catalog version, or `None`
    /// for a settings change).
    pub async fn catalog_notices(
        &self,
    ) -> Result<impl futures_util::Stream<Item = (TenantId, Option<u64>)> + Send + 'static, BusError>
    {
        use futures_util::StreamExt;
        let subscriber = self
            .client
            .subscribe(self.topology.catalog_changes())
            .await
            .map_err(|e| BusError::Request(e.to_string()))?;
        Ok(subscriber.filter_map(|m| async move {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            let tenant = TenantId::parse(v["tenantId"].as_str()?).ok()?;
            Some((tenant, v["version"].as_u64()))
        }))
    }

    /// The JetStream context; its requests time out after the publish ack timeout.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The names and definitions of this namespace's streams, subjects and consumers.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// This instance's name (`INSTANCE_NAME`), as NATS connection lists show it.
    pub fn client_name(&self) -> &str {
        &self.settings.client_name
    }

    /// Whether the client is connected right now, for health checks; publishes refuse
    /// to run while it is not.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates every stream and durable consumer of `nats/` that is missing, and reports
    /// (logs, and returns) every setting where an existing one differs from its
    /// definition, without changing it: an operator's change survives a service start,
    /// and no service's environment reverts another's. Safe to run from every instance at
    /// once. [`Bus::apply_topology`] (`./x nats-apply`) is the one step that overwrites.
    pub async fn ensure_topology(&self) -> Result<Vec<Drift>, BusError> {
        let mut drift = Vec::new();
        for (config, named) in self.topology.stream_definitions()? {
            let stream = self
                .js
                .get_or_create_stream(config.clone())
                .await
                .map_err(request_error)?;
            drift.extend(drift::compare(
                &config.name,
                &named,
                &as_json(&config),
                &as_json(&stream.cached_info().config),
            ));
        }
        for (stream, config, named) in self.topology.consumer_definitions()? {
            let name = config.durable_name.clone().unwrap_or_default();
            let consumer = self.durable(&stream, config.clone()).await?;
            drift.extend(drift::compare(
                &format!("{stream}/{name}"),
                &named,
                &as_json(&config),
                &as_json(&consumer.cached_info().config),
            ));
        }
        for d in &drift {
            warn!(
                object = %d.object,
                setting = %d.setting,
                running = %d.running,
                defined = %d.defined,
                "a NATS setting differs from nats/: kept as it runs (`./x nats-apply` applies nats/)"
            );
        }
        Ok(drift)
    }

    /// Creates or updates every stream and durable consumer to its definition in `nats/`
    /// (with this process's overrides): the operator's step, `./x nats-apply`. A setting
    /// the server cannot change in place (storage, a stream's subjects' overlap) fails
    /// the step with the server's reason.
    pub async fn apply_topology(&self) -> Result<(), BusError> {
        for (config, _) in self.topology.stream_definitions()? {
            self.js
                .get_or_create_stream(config.clone())
                .await
                .map_err(request_error)?;
            self.js
                .update_stream(&config)
                .await
                .map_err(request_error)?;
        }
        for (stream, config, _) in self.topology.consumer_definitions()? {
            // create_consumer is create-or-update on the server.
            self.stream(&stream)
                .await?
                .create_consumer(config)
                .await
                .map_err(request_error)?;
        }
        Ok(())
    }

    /// The stream called `name`, with its info as of this call.
    pub async fn stream(&self, name: &str) -> Result<Stream, BusError> {
        self.js.get_stream(name).await.map_err(request_error)
    }

    /// Binds a durable pull consumer, creating it from `config` if it does not exist; an
    /// existing one keeps its settings.
    pub async fn durable(
        &self,
        stream: &str,
        config: pull::Config,
    ) -> Result<jetstream::consumer::PullConsumer, BusError> {
        let name = config
            .durable_name
            .clone()
            .ok_or_else(|| BusError::Request("a durable consumer needs a name".into()))?;
        let stream = self.stream(stream).await?;
        stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(request_error)
    }

    /// [`Bus::durable`], retried with logged backoff while the broker is unreachable:
    /// a worker whose broker blinks during start-up binds once it is back instead of
    /// exiting.
    pub async fn bind_durable(
        &self,
        stream: &str,
        config: pull::Config,
    ) -> jetstream::consumer::PullConsumer {
        let what = format!("cannot bind the durable consumer on {stream}");
        service_kit::retry::until_ok(&what, || self.durable(stream, config.clone())).await
    }

    async fn publish(
        &self,
        subject: String,
        id: String,
        payload: bytes::Bytes,
        request_id: Option<&str>,
        expect_empty_subject: bool,
    ) -> Result<Published, BusError> {
        let mut last_error = String::new();
        // Once one try may have reached the server, a failure no longer means "not
        // stored": the client library sends what it buffered when it reconnects.
        let mut maybe_sent = false;
        for attempt in 1..=self.settings.publish_tries.max(1) {
            if !self.is_connected() {
                // Never hand a publish to a disconnected client: it would be buffered and
                // sent on reconnect, long after we answered "not accepted".
                last_error = "not connected to NATS".into();
                if attempt < self.settings.publish_tries {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
            let mut headers = HeaderMap::new();
            if let Some(c) = request_id {
                headers.insert(REQUEST_ID_HEADER, c);
            }
            // Headers first: `headers()` replaces the map, so calling it after
            // `message_id()` would silently drop the id and with it all deduplication.
            let mut message = PublishMessage::build()
                .payload(payload.clone())
                .headers(headers)
                .message_id(id.as_str());
            if expect_empty_subject {
                message = message.expected_last_subject_sequence(0);
            }
            let result = match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) => {
                    maybe_sent = true;
                    ack.await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) => {
                    return Ok(Published {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    })
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(BusError::SubjectTaken)
                }
                Err(e) => {
                    warn!(%subject, msg_id = %id, attempt, error = %e, "publish not acknowledged; retrying with the same id");
                    last_error = e.to_string();
                }
            }
        }
        Err(if maybe_sent {
            BusError::Unconfirmed(last_error)
        } else {
            BusError::Unavailable(last_error)
        })
    }

    /// Id of a submission: tenant, replay generation, then the idempotency key (or the
    /// invoice id when the client sent none). The two fixed-format fields come first, so
    /// no key can produce another key's id (`K:r1` at generation 0 is not `K` replayed).
    pub fn submission_id(envelope: &Envelope) -> String {
        let inv = &envelope.invoice;
        match &inv.idempotency_key() {
            Some(k) => format!("{}:{}:k:{k}", inv.tenant_id(), inv.replays()),
            None => format!("{}:{}:i:{}", inv.tenant_id(), inv.replays(), inv.id()),
        }
    }

    /// Publishes a submission. A keyed first submission (generation 0) is stored only if
    /// its key's subject is empty, else [`BusError::SubjectTaken`]: the broker decides
    /// once and for all which invoice a key belongs to, whatever Redis or MongoDB know.
    /// A retry of a stored first submission gets `SubjectTaken` too on nats-server 2.15
    /// (it checks the expected sequence before the dedupe window; 2.9 answered
    /// `duplicate`), so a caller must read the key's submission in both cases.
    /// Replays go to the same subject unconditionally (their id names the generation).
    pub async fn publish_submission(
        &self,
        message: &Encoded<'_>,
        request_id: Option<&str>,
    ) -> Result<Published, BusError> {
        let inv = &message.envelope.invoice;
        let key = inv.idempotency_key();
        let subject = self.topology.submit_subject(inv.tenant_id(), key);
        let first_of_key = key.is_some() && inv.replays() == 0;
        self.publish(
            subject,
            Self::submission_id(message.envelope),
            message.bytes.clone(),
            request_id,
            first_of_key,
        )
        .await
    }

    /// The newest submission stored under `key` (the first one, or its latest replay);
    /// `None` if the broker holds none (never used, or older than the stream keeps).
    pub async fn submission_of_key(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Envelope>, BusError> {
        self.last_on(
            &self.topology.invoices_stream(),
            self.topology.submit_subject(tenant, Some(key)),
        )
        .await
    }

    /// The latest lifecycle event of an invoice, i.e. its freshest state, from the event
    /// log (within its retention).
    pub async fn latest_event(
        &self,
        tenant: &TenantId,
        id: InvoiceId,
    ) -> Result<Option<Envelope>, BusError> {
        self.last_on(
            &self.topology.events_stream(),
            self.topology.event_subject(tenant, id),
        )
        .await
    }

    /// Whether the broker holds a later generation (a replay) of `invoice` than its own:
    /// the event log once the replay's QUEUED (or a later state) is in, a keyed invoice's
    /// own subject from the replay's submission on. A keyless replay whose submission
    /// was stored but whose event was not is not seen (keyless submissions share their
    /// tenant's subject); the processor's "already done?" absorbs a repeat of it.
    pub async fn holds_later_generation(&self, invoice: &Invoice) -> Result<bool, BusError> {
        let (tenant, id, generation) = (invoice.tenant_id(), invoice.id(), invoice.replays());
        if let Some(latest) = self.latest_event(tenant, id).await? {
            if latest.invoice.replays() > generation {
                return Ok(true);
            }
        }
        if let Some(key) = invoice.idempotency_key() {
            if let Some(latest) = self.submission_of_key(tenant, key).await? {
                return Ok(latest.invoice.id() == id && latest.invoice.replays() > generation);
            }
        }
        Ok(false)
    }

    /// The last message on `subject`, read with a direct get (no stream-info round trip).
    async fn last_on(&self, stream: &str, subject: String) -> Result<Option<Envelope>, BusError> {
        let stream = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(request_error)?;
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(Envelope::decode(&m.payload)?)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(request_error(e)),
        }
    }

    /// Publishes a lifecycle event. Its id names the state reached (invoice, generation,
    /// state, attempt), so a stage that crashes and redoes its work emits nothing twice.
    pub async fn publish_event(
        &self,
        message: &Encoded<'_>,
        request_id: Option<&str>,
    ) -> Result<Published, BusError> {
        let (subject, id) = self.event_target(message);
        self.publish(subject, id, message.bytes.clone(), request_id, false)
            .await
    }

    /// [`Bus::publish_event`] as a task of its own, for an event the caller's answer does
    /// not depend on; a failure is logged.
    pub fn publish_event_detached(&self, message: &Encoded<'_>, request_id: Option<&str>) {
        let (subject, id) = self.event_target(message);
        let (bus, payload) = (self.clone(), message.bytes.clone());
        let request_id = request_id.map(str::to_owned);
        tokio::spawn(async move {
            if let Err(e) = bus
                .publish(subject, id.clone(), payload, request_id.as_deref(), false)
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
            self.topology.event_subject(inv.tenant_id(), inv.id()),
            format!(
                "{}:{}:{}:{}",
                inv.id(),
                inv.replays(),
                inv.state(),
                inv.attempts()
            ),
        )
    }

    /// Files a submission that failed for good in the dead-letter stream, under
    /// `<ns>.dlq.<tenant>`. Its id names the invoice and replay generation, so a retried
    /// publish is stored once.
    pub async fn publish_dead_letter(&self, letter: &DeadLetter) -> Result<Published, BusError> {
        let inv = &letter.submission.invoice;
        let id = format!("{}:{}", inv.id(), inv.replays());
        self.publish(
            self.topology.dlq_subject(inv.tenant_id()),
            id,
            letter.encode(),
            None,
            false,
        )
        .await
    }
}

impl Bus {
    /// Keeps a message the pipeline cannot use as it is (undecodable, or an event whose
    /// idempotency key another invoice owns): copied as it is into the dead-letter stream
    /// under `<ns>.dlq._undecodable`, origin and reason in headers, id = digest of origin
    /// and payload. One try, without the connected-client check: on failure the caller
    /// NAKs, and the redelivery publishes the same id again.
    pub async fn publish_raw_dead_letter(
        &self,
        payload: &[u8],
        origin: &str,
        reason: &str,
    ) -> Result<Published, BusError> {
        let subject = format!("{}.dlq._undecodable", self.topology.namespace());
        let mut headers = HeaderMap::new();
        // Undecodable, so no invoice id to name the fact by: the digest of where it came
        // from and what it held does, so a retried publish is deduplicated like the rest.
        let fact = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(origin.as_bytes());
            h.update([0]);
            h.update(payload);
            format!("raw:{}", hex::encode(h.finalize()))
        };
        headers.insert("Nats-Msg-Id", fact.as_str());
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

/// A configuration as the JSON the definition files are written in.
fn as_json(config: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{draft::RawDraft, DraftInvoice, Invoice, Timestamp};

    fn submission(key: &str, replays: u32) -> Envelope {
        let draft = DraftInvoice::parse(RawDraft {
            idempotency_key: Some(key.into()),
            ..RawDraft::example()
        })
        .unwrap();
        let fingerprint = draft.fingerprint();
        let mut invoice = Invoice::queued(
            InvoiceId::generate(),
            TenantId::parse("acme").unwrap(),
            draft,
            Timestamp::now(),
        );
        for _ in 0..replays {
            // The one way to a replay: attempted, failed, replayed by an operator.
            let now = Timestamp::now();
            invoice.start_attempt(1, now).unwrap();
            invoice.fail("processing_failed", "test", now).unwrap();
            invoice.replay(now).unwrap();
        }
        Envelope {
            invoice,
            fingerprint,
        }
    }

    #[test]
    fn no_key_can_take_the_message_id_of_another_keys_replay() {
        // Before: `acme:k:K:r1` for both, so JetStream dropped one as a duplicate.
        let replayed = Bus::submission_id(&submission("K", 1));
        let lookalike = Bus::submission_id(&submission("K:r1", 0));
        assert_ne!(replayed, lookalike);
        assert_eq!(replayed, "acme:1:k:K");
        assert_eq!(lookalike, "acme:0:k:K:r1");
    }
}
