//! Back-pressure: no new invoice is accepted while the events stream could drop one that
//! is not stored yet.
//!
//! The events stream keeps events by count, not by age (`nats/streams/events.json`:
//! `max_msgs`, discard old, no `max_age`), so a persister or MongoDB outage of any length
//! loses nothing as long as the events not yet stored stay below that count. Ingress
//! holds them there: the pipeline watcher ([`messaging::Bus::watch_pipeline`]) reads the
//! broker's figures every `BACKLOG_POLL_MS`, this instance adds the three events each of
//! its own acceptances since then will produce, and `POST` answers 503 `unavailable`
//! (Retry-After) once that reaches the limit: `MAX_UNSTORED_EVENTS`, and never more than
//! half the stream's `max_msgs` (an operator who shrinks the stream shrinks the limit).
//! The invoices stream is bounded the same way: it is the processor's work queue and the
//! record of every key MongoDB does not hold yet, so the submissions not processed and
//! the invoices not stored are held below half of its `max_msgs` (while both consumers
//! drain in order, the oldest submission still needed is at most that many back). Both
//! bounds count distance as well as work: a stream discards by position, and one message
//! retried for minutes while the rest flow past is one outstanding message but sits
//! ever further back (`Backlog::span`). The other half is the margin for what other
//! ingress instances accept between two reads. Reads and `/health` keep
//! working: only new work waits.

use crate::error::ApiError;
use messaging::backlog::Pipeline;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::watch;

/// Events one accepted submission produces: QUEUED, PROCESSING, COMPLETED (or FAILED).
const EVENTS_PER_SUBMISSION: u64 = 3;

#[derive(Clone)]
pub struct Backpressure {
    limit: Option<u64>,
    pipeline: watch::Receiver<Option<Pipeline>>,
    /// Acceptances of this instance since the watcher's last read.
    since_read: Arc<AtomicU64>,
    /// When the figures in `pipeline` were read, to reset `since_read`.
    read_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Backpressure {
    /// `limit` `None`: never refuse (`MAX_UNSTORED_EVENTS=0`).
    pub fn new(limit: Option<u64>, pipeline: watch::Receiver<Option<Pipeline>>) -> Self {
        Self {
            limit,
            pipeline,
            since_read: Arc::new(AtomicU64::new(0)),
            read_at: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// `Err(503)` while the unstored events are at the limit.
    pub fn check(&self) -> Result<(), ApiError> {
        let Some(p) = *self.pipeline.borrow() else {
            // No figures yet (just started, or the broker is down: then the publish
            // fails on its own).
            return Ok(());
        };
        {
            let mut read_at = self
                .read_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *read_at != Some(p.at) {
                *read_at = Some(p.at);
                self.since_read.store(0, Relaxed);
            }
        }
        let local = self.since_read.load(Relaxed);
        // By count (how much work waits) and by distance (how far back the oldest
        // unfinished message sits, which is what a count-bounded stream discards by).
        decide(
            p.unstored_events().max(p.persister.span) + local * EVENTS_PER_SUBMISSION,
            p.processor
                .outstanding()
                .max(p.processor.span)
                .max(p.persister.outstanding())
                + local,
            self.limit,
            &p,
        )
    }

    /// One more submission accepted by this instance.
    pub fn accepted(&self) {
        self.since_read.fetch_add(1, Relaxed);
    }
}

/// The rule, without clocks or a broker: refuse while the events not stored yet reach
/// `limit` or half the events stream, or the submissions the invoices stream must keep
/// (not processed, or their invoice not stored, so MongoDB cannot judge their key yet)
/// reach half of it. Each stream discards its oldest messages beyond its `max_msgs`;
/// held below half, what it discards is always finished with.
fn decide(unstored: u64, must_keep: u64, limit: Option<u64>, p: &Pipeline) -> Result<(), ApiError> {
    let Some(limit) = limit else { return Ok(()) };
    let events_limit = p.events_max_msgs.map_or(limit, |max| limit.min(max / 2));
    let refused = if unstored >= events_limit {
        ApiError::Backlogged {
            what: "events wait to be stored",
            count: unstored,
            limit: events_limit,
        }
    } else if let Some(max) = p.invoices_max_msgs.filter(|max| must_keep >= max / 2) {
        ApiError::Backlogged {
            what: "submissions wait to be processed or stored",
            count: must_keep,
            limit: max / 2,
        }
    } else {
        return Ok(());
    };
    metrics::counter!("pos_ingress_backpressure_refusals_total").increment(1);
    Err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(events_max: Option<u64>, invoices_max: Option<u64>) -> Pipeline {
        Pipeline {
            processor: Default::default(),
            persister: Default::default(),
            dead_letters: 0,
            events_max_msgs: events_max,
            invoices_max_msgs: invoices_max,
            at: std::time::Instant::now(),
        }
    }

    /// What an instance that accepted nothing since the last read answers, seeing `p`.
    fn refused_seeing(p: Pipeline) -> Option<(&'static str, u64)> {
        refused_at(Backpressure::new(Some(1_000_000), watch::channel(Some(p)).1).check())
    }

    fn refused_at(r: Result<(), ApiError>) -> Option<(&'static str, u64)> {
        match r {
            Ok(()) => None,
            Err(ApiError::Backlogged { what, limit, .. }) => Some((what, limit)),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn refuses_at_the_limit_of_unstored_events() {
        let p = pipeline(None, None);
        assert_eq!(refused_at(decide(99, 0, Some(100), &p)), None);
        assert_eq!(
            refused_at(decide(100, 0, Some(100), &p)),
            Some(("events wait to be stored", 100))
        );
        assert_eq!(refused_at(decide(u64::MAX, u64::MAX, None, &p)), None);
    }

    #[test]
    fn keeps_the_key_of_every_invoice_not_stored_yet() {
        // The persister is down: 600 events wait, the processor is idle. Each could be
        // an invoice whose key only the invoices stream (1 000 kept) can judge.
        let mut p = pipeline(Some(2_000_000), Some(1_000));
        p.persister = messaging::backlog::Backlog {
            pending: 600,
            ..Default::default()
        };
        assert_eq!(
            refused_seeing(p),
            Some(("submissions wait to be processed or stored", 500))
        );
    }

    #[test]
    fn one_message_retried_while_the_stream_turns_over_is_not_discarded() {
        // One submission and one event are retried while 600 later messages have
        // passed them: one outstanding each, but a stream of 1 000 would discard them
        // after 1 000 more.
        let mut p = pipeline(Some(1_000), Some(1_000));
        let stuck = messaging::backlog::Backlog {
            ack_pending: 1,
            span: 600,
            ..Default::default()
        };
        p.persister = stuck;
        assert_eq!(refused_seeing(p), Some(("events wait to be stored", 500)));
        p.persister = Default::default();
        p.processor = stuck;
        assert_eq!(
            refused_seeing(p),
            Some(("submissions wait to be processed or stored", 500))
        );
    }

    #[test]
    fn never_lets_either_stream_fill_past_half() {
        // The events stream keeps 150: the limit becomes 75 whatever the setting says.
        let p = pipeline(Some(150), Some(40));
        assert_eq!(refused_at(decide(74, 0, Some(1_000), &p)), None);
        assert_eq!(
            refused_at(decide(75, 0, Some(1_000), &p)),
            Some(("events wait to be stored", 75))
        );
        assert_eq!(refused_at(decide(0, 19, Some(1_000), &p)), None);
        assert_eq!(
            refused_at(decide(0, 20, Some(1_000), &p)),
            Some(("submissions wait to be processed or stored", 20))
        );
    }
}
