//! How far behind a durable consumer is, read from the broker (consumer info, and the
//! oldest unacknowledged message's timestamp), for metrics, `/health` and ingress's
//! back-pressure.
//!
//! [`Bus::backlog`] asks about one consumer; [`Bus::watch_pipeline`] asks about the whole
//! pipeline every interval, sets the `pos_consumer_*`, `pos_dlq_messages` and
//! `pos_unstored_events` gauges and hands the latest [`Pipeline`] to whoever holds the
//! receiver (ingress's back-pressure, the persister's health, the console's figures);
//! [`unstored_events`] is the one rule for how many lifecycle events exist, or will, that
//! are not stored yet.

use crate::{Bus, BusError};
use async_nats::jetstream::stream::Stream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One durable consumer's position, as the broker reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Messages not delivered yet.
    pub pending: u64,
    /// Delivered, not acknowledged yet.
    pub ack_pending: u64,
    /// Deliveries that were redeliveries (messages delivered more than once).
    pub redelivered: u64,
    /// Age of the oldest message not acknowledged yet (`None`: nothing outstanding).
    pub oldest_unacked: Option<Duration>,
    /// Messages in the stream from the oldest one not acknowledged yet to the newest
    /// (0: nothing outstanding). What a count-bounded stream discards is decided by this
    /// distance, not by how many are outstanding: one message retried for minutes while
    /// the rest flow past stays one outstanding message as the stream turns over.
    pub span: u64,
}

impl Backlog {
    /// Messages the consumer has not finished with.
    pub fn outstanding(&self) -> u64 {
        self.pending + self.ack_pending
    }

    /// Sets this consumer's gauges (`consumer` label: its durable name).
    pub fn record(&self, consumer: &'static str) {
        metrics::gauge!("pos_consumer_pending", "consumer" => consumer).set(self.pending as f64);
        metrics::gauge!("pos_consumer_ack_pending", "consumer" => consumer)
            .set(self.ack_pending as f64);
        metrics::gauge!("pos_consumer_redelivered", "consumer" => consumer)
            .set(self.redelivered as f64);
        metrics::gauge!("pos_consumer_oldest_unacked_seconds", "consumer" => consumer)
            .set(self.oldest_unacked.unwrap_or_default().as_secs_f64());
    }
}

/// Lifecycle events that exist, or will, and are not stored in MongoDB yet: the
/// persister's outstanding events, plus the PROCESSING and COMPLETED (or FAILED) events
/// every submission the processor has not finished will still produce. This is what the
/// events stream must keep for nothing unstored to be lost.
pub fn unstored_events(processor: &Backlog, persister: &Backlog) -> u64 {
    persister.outstanding() + 2 * processor.outstanding()
}

/// The whole pipeline's position, read at `at`.
#[derive(Debug, Clone, Copy)]
pub struct Pipeline {
    /// The processor's consumer on the invoices stream.
    pub processor: Backlog,
    /// The persister's consumer on the events stream.
    pub persister: Backlog,
    /// Messages in the dead-letter stream.
    pub dead_letters: u64,
    /// The events stream's `max_msgs` (`None`: unlimited): what bounds the unstored events.
    pub events_max_msgs: Option<u64>,
    /// The invoices stream's `max_msgs`: what bounds the unprocessed submissions.
    pub invoices_max_msgs: Option<u64>,
    /// When the figures were read.
    pub at: std::time::Instant,
}

impl Pipeline {
    /// [`unstored_events`] of this reading.
    pub fn unstored_events(&self) -> u64 {
        unstored_events(&self.processor, &self.persister)
    }
}

impl Bus {
    /// Reads the pipeline's position every `every` until every receiver is dropped. A
    /// failed read (broker down) keeps the last figures and is retried next interval.
    pub fn watch_pipeline(
        &self,
        every: Duration,
    ) -> tokio::sync::watch::Receiver<Option<Pipeline>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let bus = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                match bus.pipeline().await {
                    Ok(p) => {
                        failing = false;
                        p.processor.record("processor");
                        p.persister.record("persister");
                        metrics::gauge!("pos_dlq_messages").set(p.dead_letters as f64);
                        metrics::gauge!("pos_unstored_events").set(p.unstored_events() as f64);
                        tx.send_replace(Some(p));
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read the consumers' backlog; keeping the last figures");
                    }
                    Err(_) => {}
                }
            }
        });
        rx
    }

    async fn pipeline(&self) -> Result<Pipeline, BusError> {
        let t = self.topology();
        // Each stream's info is read once: `get_stream` fetches it, and both the
        // consumer's backlog and the stream's limit come from that one answer.
        let (invoices, events) = (t.invoices_stream(), t.events_stream());
        let (invoices, events) = tokio::join!(self.stream(&invoices), self.stream(&events));
        let (invoices, events) = (invoices?, events?);
        let (processor, persister, dead_letters) = tokio::join!(
            self.backlog(&invoices, "processor"),
            self.backlog(&events, "persister"),
            self.dead_letters(),
        );
        let max_msgs = |s: &Stream| {
            u64::try_from(s.cached_info().config.max_messages)
                .ok()
                .filter(|m| *m > 0)
        };
        Ok(Pipeline {
            processor: processor?,
            persister: persister?,
            dead_letters: dead_letters?,
            events_max_msgs: max_msgs(&events),
            invoices_max_msgs: max_msgs(&invoices),
            at: std::time::Instant::now(),
        })
    }

    /// Where the durable `consumer` of `stream` stands.
    pub async fn backlog(&self, stream: &Stream, consumer: &str) -> Result<Backlog, BusError> {
        let err = |e: &dyn std::fmt::Display| BusError::Request(e.to_string());
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(consumer).await.map_err(|e| err(&e))?;
        let info = c.info().await.map_err(|e| err(&e))?;
        let mut backlog = Backlog {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            oldest_unacked: None,
            span: 0,
        };
        if backlog.outstanding() > 0 {
            backlog.span = stream
                .cached_info()
                .state
                .last_sequence
                .saturating_sub(info.ack_floor.stream_sequence);
            // The first message past the ack floor is the oldest one not acknowledged
            // (acks above the floor only make it younger, never older).
            let filter = match info.config.filter_subject.as_str() {
                "" => ">".to_owned(),
                f => f.to_owned(),
            };
            let first = info.ack_floor.stream_sequence + 1;
            if let Ok(m) = stream
                .direct_get_next_for_subject(filter, Some(first))
                .await
            {
                backlog.oldest_unacked = Some(age(m.time.unix_timestamp_nanos()));
            }
        }
        Ok(backlog)
    }

    /// Messages in the dead-letter stream.
    pub async fn dead_letters(&self) -> Result<u64, BusError> {
        let dlq = self.stream(&self.topology().dlq_stream()).await?;
        Ok(dlq.cached_info().state.messages)
    }
}

/// Time since `unix_nanos` (zero if the broker's clock is ahead of ours).
fn age(unix_nanos: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos(u64::try_from(now - unix_nanos).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(pending: u64, ack_pending: u64) -> Backlog {
        Backlog {
            pending,
            ack_pending,
            ..Backlog::default()
        }
    }

    #[test]
    fn each_unfinished_submission_still_owes_two_events() {
        assert_eq!(unstored_events(&backlog(0, 0), &backlog(0, 0)), 0);
        assert_eq!(unstored_events(&backlog(0, 0), &backlog(7, 3)), 10);
        assert_eq!(unstored_events(&backlog(4, 1), &backlog(7, 3)), 20);
    }

    #[test]
    fn an_age_in_the_future_is_zero() {
        let future = (SystemTime::now() + Duration::from_secs(60))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert_eq!(age(future), Duration::ZERO);
        let past = future - 120_000_000_000;
        assert!(age(past) >= Duration::from_secs(59));
    }
}
