//! Reading the event log in order, for fanout (one tenant's lifecycle events) and the
//! operator console (every tenant's), from a chosen stream sequence on, as client-side
//! ordered consumers (ephemeral, memory, no acks), plus the log's bounds (which sequences
//! are still stored).
//!
//! The stream sequence of an event is the contract's `seq`, so a reader here never
//! invents positions: it reports the server's.

use crate::{Bus, BusError, Envelope};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use domain::{TenantId, Timestamp};
use futures_util::{Stream, StreamExt};
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tracing::{debug, warn};

/// Which sequences of the events stream are still stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest stored sequence. Everything below it is gone (the stream's limits).
    /// When the stream is empty this is `last_seq + 1` (or 0 if it never held anything).
    pub first_seq: u64,
    /// The newest sequence ever stored, in any tenant's subject.
    pub last_seq: u64,
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// At this stream sequence (the first event delivered has `seq >= n`).
    At(u64),
    /// After the last event stored right now. Resolved to `At(last_seq + 1)` rather than
    /// JetStream's `DeliverPolicy::New`, so the caller learns the exact first sequence it
    /// can receive (fanout's hand-over from replay to live needs it).
    New,
}

/// One lifecycle event read from the log.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// The stream sequence: the contract's `seq`.
    pub seq: u64,
    /// Events matching the feed's filter stored after this one when it was delivered;
    /// 0 means the reader had caught up with the log at that moment.
    pub pending: u64,
    /// When the state change happened: the invoice's `updatedAt`, stamped by the stage
    /// that moved it (the stream's own receive time would shift with broker retries).
    pub at: Timestamp,
    /// The invoice as the event left it.
    pub envelope: Envelope,
    /// The `X-Request-Id` of the request that led to this event, for logs.
    pub request_id: Option<String>,
}

/// A tenant's events in stream order, each delivered at most once, never below the start.
///
/// It never ends and never yields errors: a broken or deleted consumer is recreated after
/// the last delivered sequence, and undecodable messages are logged and skipped.
pub struct EventFeed {
    start_seq: u64,
    initial_pending: u64,
    events: Pin<Box<dyn Stream<Item = LoggedEvent> + Send>>,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed")
            .field("start_seq", &self.start_seq)
            .field("initial_pending", &self.initial_pending)
            .finish_non_exhaustive()
    }
}

impl EventFeed {
    /// The lowest sequence this feed can deliver.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// How many matching events were stored at or after `start_seq` when the feed was
    /// opened (0: nothing to read yet).
    pub fn initial_pending(&self) -> u64 {
        self.initial_pending
    }
}

impl Stream for EventFeed {
    type Item = LoggedEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LoggedEvent>> {
        self.events.as_mut().poll_next(cx)
    }
}

/// What the reading loop keeps between two events.
struct Reader {
    stream: async_nats::jetstream::stream::Stream,
    filter: String,
    /// The last sequence handed out (or `start - 1`). Anything at or below it is a
    /// repeat and is dropped.
    floor: u64,
    messages: Option<pull::Ordered>,
    /// Pauses after a consumer error before reading or recreating again, so a broker
    /// outage costs a few requests a second rather than a busy loop.
    delays: service_kit::retry::Delays,
}

impl Bus {
    /// The events stream's stored range, for deciding whether a `since` is still covered.
    pub async fn event_log_bounds(&self) -> Result<LogBounds, BusError> {
        let stream = self.stream(&self.topology().events_stream()).await?;
        let state = &stream.cached_info().state;
        Ok(LogBounds {
            first_seq: state.first_sequence,
            last_seq: state.last_sequence,
        })
    }

    /// Opens an ordered consumer on the events stream filtered to `tenant`'s subject.
    /// Fails only if the first consumer cannot be created; afterwards the feed heals by
    /// itself (see [`EventFeed`]).
    pub async fn event_feed(
        &self,
        tenant: &TenantId,
        start: FeedStart,
    ) -> Result<EventFeed, BusError> {
        self.feed_of(self.topology().tenant_events(tenant), start)
            .await
    }

    /// Every tenant's events in stream order (the operator console's view of the
    /// pipeline); otherwise as [`Bus::event_feed`].
    pub async fn all_events_feed(&self, start: FeedStart) -> Result<EventFeed, BusError> {
        self.feed_of(self.topology().all_events(), start).await
    }

    async fn feed_of(&self, filter: String, start: FeedStart) -> Result<EventFeed, BusError> {
        let stream = self.stream(&self.topology().events_stream()).await?;
        let start_seq = match start {
            FeedStart::At(seq) => seq.max(1),
            FeedStart::New => stream.cached_info().state.last_sequence + 1,
        };
        let (messages, initial_pending) = open(&stream, &filter, start_seq).await?;
        let reader = Reader {
            stream,
            filter,
            floor: start_seq - 1,
            messages: Some(messages),
            delays: service_kit::retry::delays(),
        };
        Ok(EventFeed {
            start_seq,
            initial_pending,
            events: Box::pin(futures_util::stream::unfold(reader, next_event)),
        })
    }
}

async fn open(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    start_seq: u64,
) -> Result<(pull::Ordered, u64), BusError> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start_seq,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::Request(e.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::Request(e.to_string()))?;
    Ok((messages, pending))
}

async fn next_event(mut reader: Reader) -> Option<(LoggedEvent, Reader)> {
    loop {
        let Some(messages) = reader.messages.as_mut() else {
            match open(&reader.stream, &reader.filter, reader.floor + 1).await {
                Ok((messages, _)) => {
                    reader.messages = Some(messages);
                    reader.delays = service_kit::retry::delays();
                }
                Err(e) => {
                    warn!(filter = %reader.filter, error = %e, "cannot reopen the event feed; retrying");
                    reader.backoff().await;
                }
            }
            continue;
        };
        let message = match messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // What async-nats surfaces instead of healing by itself, e.g. "consumer
                // not found" after a server restart (an ordered consumer lives in memory
                // only): reopen just after the last delivered event. Never stop the feed.
                warn!(filter = %reader.filter, floor = reader.floor, error = %e, "event feed error; reopening");
                reader.messages = None;
                reader.backoff().await;
                continue;
            }
            None => {
                reader.messages = None;
                continue;
            }
        };
        reader.delays = service_kit::retry::delays();
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => {
                warn!(error = %e, "event without JetStream metadata; skipped");
                continue;
            }
        };
        if seq <= reader.floor {
            // async-nats recreates an ordered consumer that has delivered nothing yet with
            // `DeliverPolicy::All`, i.e. from the start of the log. Start over, ourselves,
            // just after what was already handed out.
            debug!(filter = %reader.filter, seq, floor = reader.floor, "event feed went backwards; reopening");
            reader.messages = None;
            continue;
        }
        reader.floor = seq;
        match Envelope::decode(&message.payload) {
            Ok(envelope) => {
                let at = envelope.invoice.updated_at();
                let request_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(crate::bus::REQUEST_ID_HEADER))
                    .map(|v| v.as_str().to_owned());
                return Some((
                    LoggedEvent {
                        seq,
                        pending,
                        at,
                        envelope,
                        request_id,
                    },
                    reader,
                ));
            }
            Err(e) => {
                warn!(seq, subject = %message.subject, error = %e, "undecodable event; skipped");
            }
        }
    }
}

impl Reader {
    async fn backoff(&mut self) {
        // The policy never runs out; 5 s is its ceiling should it ever.
        let delay = self.delays.next().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(delay).await;
    }
}
