//! The one consume loop shared by every durable consumer, and its policy:
//! - `Done` → ack;
//! - `Retry` before the last attempt → NAK with an exponential delay (no consumer
//!   `backoff`: 2.9.10 mistimed delayed NAKs with it (jetstream.md §0.2); not re-checked
//!   on 2.15.1, and the loop's own delays make it unnecessary);
//! - `Retry` on the last attempt (or a redelivery past it, after a crash) → the handler's
//!   `exhausted` (the processor's: FAILED + dead letter, or COMPLETED if the invoice was
//!   numbered already), then TERM; if that fails, NAK again, so a message never leaves
//!   without being dead-lettered (the persister's always fails: its events are kept);
//! - `Poison` (undecodable) → copied raw into the dead-letter stream, then TERM.
//!
//! Messages are handled on spawned tasks, at most `concurrency` at once; shutdown (the
//! token cancelled) stops pulling and waits for the in-flight ones, which a task tracker
//! counts.

use crate::Bus;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures_util::StreamExt;
use service_kit::{CancellationToken, TaskTracker};
use std::{future::Future, sync::Arc, time::Duration};
use tokio::sync::Semaphore;
use tracing::{error, warn, Instrument};

/// Attempt budget and retry delays. Attempt `n` (1-based) that fails transiently is
/// retried after `base × 2^(n−1)`, capped at `max_delay`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; a transient failure of the last one
    /// dead-letters the message.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base_delay: Duration,
    /// Longest delay between retries.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The NAK delay after attempt `attempt` (1-based) failed: `base × 2^(attempt−1)`,
    /// at most `max_delay`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        (self.base_delay * factor).min(self.max_delay)
    }
}

/// The result of handling one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: acknowledge.
    Done,
    /// A transient fault (database or broker unreachable, timeout): try again later.
    Retry(String),
    /// The message can never be handled (it does not decode).
    Poison(String),
}

/// One delivered message with what the handler needs to know about it.
pub struct Delivery {
    message: jetstream::Message,
    /// 1 for the first delivery; JetStream's own count, so it survives crashes.
    pub attempt: u32,
    /// The message's sequence in its stream.
    pub stream_sequence: u64,
}

impl Delivery {
    /// The message body.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// The payload as shared bytes (no copy), to pass on unchanged.
    pub fn payload_bytes(&self) -> bytes::Bytes {
        self.message.payload.clone()
    }

    /// The subject the message was published on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// The `X-Request-Id` the publisher carried along, for logs.
    pub fn request_id(&self) -> Option<&str> {
        self.message
            .headers
            .as_ref()?
            .get(crate::bus::REQUEST_ID_HEADER)
            .map(async_nats::HeaderValue::as_str)
    }

    /// Extends the lease (restarts ack_wait) for long work.
    pub async fn in_progress(&self) {
        if let Err(e) = self.message.ack_with(AckKind::Progress).await {
            warn!(error = %e, "in-progress ack failed");
        }
    }
}

/// What a durable consumer does with each delivery; [`run`] applies the ack policy to
/// the [`Outcome`].
pub trait Handler: Send + Sync + 'static {
    /// Why [`Handler::exhausted`] could not record the failure (the message is kept).
    type Error: std::fmt::Display + Send;

    /// Handles one delivery. It may be a redelivery, so handling must be idempotent.
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Outcome> + Send;

    /// Called when the last attempt failed: record the failure and dead-letter the
    /// message. An error here keeps the message on the consumer to try again.
    fn exhausted(
        &self,
        delivery: &Delivery,
        last_error: String,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Runs `handler` over `consumer` until `stop` is cancelled, then waits for in-flight
/// messages to finish (bounded by the caller's deadline).
pub async fn run<H: Handler>(
    bus: Bus,
    consumer: PullConsumer,
    handler: Arc<H>,
    policy: RetryPolicy,
    concurrency: usize,
    stop: CancellationToken,
) -> Result<(), crate::BusError> {
    // Prefetch no more than we can work on: buffered messages age against ack_wait.
    let batch = concurrency.clamp(1, 256);
    let open = || async {
        consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| crate::BusError::Request(e.to_string()))
    };
    let opened = tokio::select! {
        m = service_kit::retry::until_ok("cannot open the consumer stream", open) => m,
        () = stop.cancelled() => return Ok(()),
    };
    let mut messages = opened;
    let permits = Arc::new(Semaphore::new(concurrency));
    let in_flight = TaskTracker::new();
    let meters = Arc::new(Meters::new(&consumer.cached_info().name));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Heartbeat misses and reconnects surface here; the stream resumes by itself.
                warn!(error = %e, "consumer stream error; continuing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => break,
        };
        let (attempt, stream_sequence) = match message.info() {
            Ok(i) => (
                u32::try_from(i.delivered).unwrap_or(u32::MAX),
                i.stream_sequence,
            ),
            Err(e) => {
                error!(error = %e, "delivery without JetStream metadata; ignoring");
                continue;
            }
        };
        let delivery = Delivery {
            message,
            attempt,
            stream_sequence,
        };
        let (bus, handler, meters) = (bus.clone(), handler.clone(), meters.clone());
        // ERROR level: present under any filter (see service-kit's request span).
        let span = tracing::error_span!(
            "delivery",
            seq = stream_sequence,
            attempt,
            request_id = delivery.request_id().unwrap_or("")
        );
        in_flight.spawn(
            async move {
                settle(&bus, &*handler, policy, delivery, &meters).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Drain: every in-flight message settled.
    in_flight.close();
    in_flight.wait().await;
    Ok(())
}

/// How a settled delivery ended: the `outcome` label of `pos_deliveries_total`.
#[derive(Debug, Clone, Copy)]
enum Settled {
    Done,
    Retry,
    DeadLettered,
    Poison,
    /// Could not be dead-lettered: nak'd again and kept.
    Kept,
}

impl Settled {
    const ALL: [Settled; 5] = [
        Self::Done,
        Self::Retry,
        Self::DeadLettered,
        Self::Poison,
        Self::Kept,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry => "retry",
            Self::DeadLettered => "dead_lettered",
            Self::Poison => "poison",
            Self::Kept => "kept",
        }
    }
}

/// One consumer's delivery series (`consumer` label: its durable name), registered
/// once per consume loop so the hot path only bumps them.
struct Meters {
    duration: metrics::Histogram,
    by_outcome: [metrics::Counter; Settled::ALL.len()],
}

impl Meters {
    fn new(consumer: &str) -> Self {
        let consumer = consumer.to_owned();
        Self {
            duration: metrics::histogram!("pos_delivery_duration_seconds", "consumer" => consumer.clone()),
            by_outcome: Settled::ALL.map(|outcome| {
                metrics::counter!("pos_deliveries_total", "consumer" => consumer.clone(), "outcome" => outcome.label())
            }),
        }
    }

    fn settled(&self, outcome: Settled, took: Duration) {
        self.duration.record(took.as_secs_f64());
        self.by_outcome[outcome as usize].increment(1);
    }
}

async fn settle<H: Handler>(
    bus: &Bus,
    handler: &H,
    policy: RetryPolicy,
    delivery: Delivery,
    meters: &Meters,
) {
    let started = std::time::Instant::now();
    let outcome = if delivery.attempt > policy.max_attempts {
        // A crash during the last attempt: the budget is spent, go straight to dead-letter.
        Outcome::Retry("processing was interrupted on the last attempt".to_owned())
    } else {
        handler.handle(&delivery).await
    };
    let (ack, settled) = match outcome {
        Outcome::Done => (AckKind::Ack, Settled::Done),
        Outcome::Retry(e) if delivery.attempt < policy.max_attempts => {
            warn!(error = %e, "transient failure; will retry");
            (
                AckKind::Nak(Some(policy.delay(delivery.attempt))),
                Settled::Retry,
            )
        }
        Outcome::Retry(e) => match handler.exhausted(&delivery, e).await {
            Ok(()) => (AckKind::Term, Settled::DeadLettered),
            Err(e) => {
                error!(error = %e, "could not dead-letter an exhausted message; keeping it");
                (AckKind::Nak(Some(policy.max_delay)), Settled::Kept)
            }
        },
        Outcome::Poison(e) => {
            error!(error = %e, subject = delivery.subject(), "undecodable message");
            match bus
                .publish_raw_dead_letter(delivery.payload(), delivery.subject(), &e)
                .await
            {
                Ok(_) => (AckKind::Term, Settled::Poison),
                Err(e) => {
                    error!(error = %e, "could not dead-letter an undecodable message; keeping it");
                    (AckKind::Nak(Some(policy.max_delay)), Settled::Kept)
                }
            }
        }
    };
    meters.settled(settled, started.elapsed());
    if let Err(e) = delivery.message.ack_with(ack).await {
        // The message will be redelivered after ack_wait; handlers are idempotent.
        warn!(error = %e, "ack failed");
    }
}

/// [`run`] for a service's lifetime: consumes until `stop` is cancelled, then gives
/// in-flight messages `grace` to finish. Whatever is still unacked after that is
/// redelivered to another instance once its ack wait expires.
pub async fn run_until_stopped<H: Handler>(
    bus: Bus,
    consumer: PullConsumer,
    handler: Arc<H>,
    policy: RetryPolicy,
    concurrency: usize,
    grace: Duration,
    stop: CancellationToken,
) -> Result<(), crate::BusError> {
    let run = run(bus, consumer, handler, policy, concurrency, stop.clone());
    tokio::select! {
        r = run => r,
        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("shutdown grace period over with messages in flight; they will be redelivered");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_indexes_its_own_counter() {
        for (i, outcome) in Settled::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{}", outcome.label());
        }
    }

    #[test]
    fn retry_delays_double_and_are_capped() {
        let p = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
        };
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(2));
        assert_eq!(p.delay(3), Duration::from_secs(4));
        assert_eq!(p.delay(4), Duration::from_secs(5));
        assert_eq!(p.delay(100), Duration::from_secs(5));
    }
}
