//! What the operator console asks the broker: each stream's durability settings and
//! replica health ([`Bus::stream_summaries`]), and the processor's admin endpoints
//! ([`Bus::admin_request`]: dead-letter list and replay), so the console never names
//! async-nats itself.

use crate::{Bus, BusError};
use serde::Serialize;
use std::time::Duration;

/// One stream's durability settings and state, as the broker reports them.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSummary {
    /// The stream's name, e.g. `POS_INVOICES`.
    pub name: String,
    /// Copies kept, on different servers (1: a lost disk loses acknowledged messages).
    pub replicas: usize,
    /// `file` or `memory`.
    pub storage: String,
    /// Count limit (`None`: unlimited) and age limit in seconds (`None`: none).
    pub max_msgs: Option<u64>,
    /// Age limit, in seconds (`None`: none).
    pub max_age_secs: Option<u64>,
    /// What happens at the limit: `old` (the oldest go) or `new` (publishes refused).
    pub discard: String,
    /// How long a message id is remembered for deduplication, in seconds.
    pub duplicate_window_secs: u64,
    /// Messages stored now.
    pub messages: u64,
    /// Bytes stored now.
    pub bytes: u64,
    /// Sequence of the oldest message kept.
    pub first_seq: u64,
    /// Sequence of the newest message.
    pub last_seq: u64,
    /// The RAFT leader's server name (`None` on a single server).
    pub leader: Option<String>,
    /// The followers: name, caught up or not, operations behind.
    pub peers: Vec<PeerSummary>,
}

/// One follower of a replicated stream, as the RAFT leader sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerSummary {
    /// The server's name.
    pub name: String,
    /// Whether it is caught up with the leader.
    pub current: bool,
    /// Whether the leader has lost contact with it.
    pub offline: bool,
    /// Operations it is behind the leader, if reported.
    pub lag: Option<u64>,
}

/// Why an admin request got no answer it can use.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The endpoint refused the request (code 400, a bad selector): the caller's fault.
    #[error("{0}")]
    Refused(String),
    /// The endpoint answered that a dependency of its own failed (code 503): try again
    /// later.
    #[error("the processor could not do it now: {0}")]
    Failed(String),
    /// No instance answered in time, or NATS is unreachable: try again later.
    #[error("no answer from the processor: {0}")]
    Unavailable(String),
}

impl Bus {
    /// The invoices, events and dead-letter streams, in that order.
    pub async fn stream_summaries(&self) -> Result<Vec<StreamSummary>, BusError> {
        let t = self.topology();
        let mut out = Vec::with_capacity(3);
        for name in [t.invoices_stream(), t.events_stream(), t.dlq_stream()] {
            let stream = self.stream(&name).await?;
            out.push(summary(stream.cached_info()));
        }
        Ok(out)
    }

    /// Sends `body` to `<ns>.admin.<subject>` and waits up to `timeout` for the one
    /// instance of the queue group that answers.
    pub async fn admin_request(
        &self,
        subject: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, AdminError> {
        let full = format!("{}.{subject}", self.topology().admin_prefix());
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let reply = self
            .client()
            .send_request(full, request)
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        // The services API reports a handler's error in headers, with an empty body.
        if let Some(headers) = reply.headers.as_ref() {
            if let Some(error) = headers.get(async_nats::service::NATS_SERVICE_ERROR) {
                let text = error.as_str().to_owned();
                // 503 (a dependency of the processor failed) is worth retrying; 400 is not.
                let code = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE);
                return Err(match code.map(async_nats::HeaderValue::as_str) {
                    Some("503") => AdminError::Failed(text),
                    _ => AdminError::Refused(text),
                });
            }
        }
        serde_json::from_slice(&reply.payload)
            .map_err(|e| AdminError::Unavailable(format!("unreadable answer: {e}")))
    }
}

fn summary(info: &async_nats::jetstream::stream::Info) -> StreamSummary {
    use async_nats::jetstream::stream::{DiscardPolicy, StorageType};
    let c = &info.config;
    let cluster = info.cluster.as_ref();
    StreamSummary {
        name: c.name.clone(),
        replicas: c.num_replicas.max(1),
        storage: match c.storage {
            StorageType::File => "file",
            StorageType::Memory => "memory",
        }
        .to_owned(),
        max_msgs: u64::try_from(c.max_messages).ok().filter(|m| *m > 0),
        max_age_secs: (!c.max_age.is_zero()).then_some(c.max_age.as_secs()),
        discard: match c.discard {
            DiscardPolicy::Old => "old",
            DiscardPolicy::New => "new",
        }
        .to_owned(),
        duplicate_window_secs: c.duplicate_window.as_secs(),
        messages: info.state.messages,
        bytes: info.state.bytes,
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
        leader: cluster.and_then(|c| c.leader.clone()),
        peers: cluster
            .map(|c| {
                c.replicas
                    .iter()
                    .map(|p| PeerSummary {
                        name: p.name.clone(),
                        current: p.current,
                        offline: p.offline,
                        lag: p.lag,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}
