//! The NATS services API (`$SRV.PING|INFO|STATS`, so `nats micro ls/info/stats` show every
//! instance) and request/reply admin endpoints under `<ns>.admin.`; plus the dead-letter
//! stream's read and delete operations the admin endpoints are built on.

use crate::{Bus, BusError, DeadLetter};
use async_nats::service::{Service, ServiceExt};
use futures_util::StreamExt;
use std::future::Future;
use tracing::{error, warn};

/// Version reported to `nats micro info`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An entry of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    /// The entry's sequence in the dead-letter stream; what a replay deletes by.
    pub sequence: u64,
    /// `None` for a message kept raw because it could not be decoded.
    pub letter: Option<DeadLetter>,
    /// The subject it was stored under: `<ns>.dlq.<tenant>`, or `<ns>.dlq._undecodable`.
    pub subject: String,
}

/// Why an admin endpoint did not carry a request out. The services API hands its code
/// and text to the caller ([`crate::AdminError`] on the console's side), so an operator
/// can tell a request to fix from one to try again.
#[derive(Debug, thiserror::Error)]
pub enum AdminFailure {
    /// The request is wrong (code 400): sent again unchanged, it fails again.
    #[error("{0}")]
    BadRequest(String),
    /// A dependency failed (code 503): the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
}

impl AdminFailure {
    /// The services API error code: 400 or 503.
    pub fn code(&self) -> usize {
        match self {
            AdminFailure::BadRequest(_) => 400,
            AdminFailure::Unavailable(_) => 503,
        }
    }
}

impl From<BusError> for AdminFailure {
    fn from(e: BusError) -> Self {
        AdminFailure::Unavailable(e.to_string())
    }
}

impl Bus {
    /// Registers this process with the services API as `name` (one entry per instance).
    pub async fn register_service(
        &self,
        name: &str,
        description: &str,
    ) -> Result<Service, BusError> {
        self.client()
            .service_builder()
            .description(description)
            .start(name, SERVICE_VERSION)
            .await
            .map_err(|e| BusError::Request(e.to_string()))
    }

    /// Serves `<ns>.admin.<subject>` on `service` with `handler` (request body → reply
    /// body, or an error message), in the background. All instances share a queue group,
    /// so one of them answers each request.
    pub async fn serve_admin<F, Fut>(
        &self,
        service: &Service,
        name: &str,
        subject: &str,
        handler: F,
    ) -> Result<(), BusError>
    where
        F: Fn(bytes::Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, AdminFailure>> + Send,
    {
        let full = format!("{}.{subject}", self.topology().admin_prefix());
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(full.clone())
            .await
            .map_err(|e| BusError::Request(e.to_string()))?;
        tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let answer = match handler(request.message.payload.clone()).await {
                    Ok(v) => Ok(serde_json::to_vec(&v).unwrap_or_default().into()),
                    Err(failure) => {
                        warn!(subject = %full, %failure, "admin request failed");
                        Err(async_nats::service::error::Error {
                            code: failure.code(),
                            status: failure.to_string(),
                        })
                    }
                };
                if let Err(e) = request.respond(answer).await {
                    error!(error = %e, "admin reply not sent");
                }
            }
        });
        Ok(())
    }

    /// Up to `limit` entries of the dead-letter stream from sequence `from` on, oldest
    /// first, and the sequence to continue from (`None`: the end was reached). Memory is
    /// bounded by `limit` whatever the stream holds.
    pub async fn dead_letters_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<StoredDeadLetter>, Option<u64>), BusError> {
        let mut stream = self.stream(&self.topology().dlq_stream()).await?;
        let state = stream
            .info()
            .await
            .map_err(|e| BusError::Request(e.to_string()))?
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok((out, None));
        }
        let mut seq = from.max(state.first_sequence);
        while seq <= state.last_sequence && out.len() < limit {
            // Deleted sequences (replayed letters) answer "no message found": skip them.
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(StoredDeadLetter {
                    sequence: seq,
                    letter: DeadLetter::decode(&m.payload).ok(),
                    subject: m.subject.to_string(),
                });
            }
            seq += 1;
        }
        Ok((out, (seq <= state.last_sequence).then_some(seq)))
    }

    /// Removes a replayed letter from the dead-letter stream.
    pub async fn delete_dead_letter(&self, sequence: u64) -> Result<(), BusError> {
        let stream = self.stream(&self.topology().dlq_stream()).await?;
        stream
            .delete_message(sequence)
            .await
            .map(|_| ())
            .map_err(|e| BusError::Request(e.to_string()))
    }
}

impl Bus {
    /// Registers this instance as `<ns>-<service>` with the services API and serves
    /// `<ns>.admin.<service>.status` (which instance answered, and whether it is
    /// connected). Every service calls this at start-up; keep the returned handle alive.
    pub async fn announce(&self, service: &str, description: &str) -> Result<Service, BusError> {
        let name = format!("{}-{service}", self.topology().namespace());
        let registered = self.register_service(&name, description).await?;

        let (bus, instance, service_name) = (self.clone(), self.client_name().to_owned(), name);
        let status_subject = format!("{service}.status");
        self.serve_admin(&registered, "status", &status_subject, move |_| {
            let (bus, instance, name) = (bus.clone(), instance.clone(), service_name.clone());
            async move { Ok(serde_json::json!({ "service": name, "instance": instance, "nats": bus.is_connected() })) }
        })
        .await?;
        Ok(registered)
    }
}
