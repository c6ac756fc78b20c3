//! Is this generation of an invoice finished already? The processor's first question on
//! every delivery, answered by asking up to three places in an order that depends on the
//! delivery, over [`JobSources`] so that the decision runs without a broker (unit tests
//! below; `Processor` implements the sources over Redis, the event log and MongoDB).
//!
//! A first delivery asks Redis first: ingress cached the job as QUEUED just before
//! publishing the submission, and nothing else writes job states (since performance
//! round 2 the processor does not: the event log already says what it would), so a
//! cached job means the invoice is in flight. One Redis read instead of a broker or
//! MongoDB read per invoice on the hot path. What this cannot see: a first delivery of a
//! submission that finished already while Redis still holds its QUEUED job (only a
//! consumer that an operator recreated delivers such a one, and the job outlives the
//! persister's 5 s settle only when that settle failed) is processed again. Its ledger
//! record is the one it had (found by `_id`), but its PROCESSING and COMPLETED reach the
//! terminals a second time unless the first run's events, with the same ids (attempt 1),
//! are still inside the events' 2-minute dedupe window.
//!
//! A redelivery, or a job Redis does not know (expired, flushed, Redis down), asks the
//! event log first: COMPLETED is there as soon as it is published, while MongoDB has it
//! only once the persister caught up — seconds to minutes behind after a broker
//! failover, exactly when acks get lost and submissions come back. Asking MongoDB alone
//! then recomputed finished invoices and pushed their PROCESSING and COMPLETED to the
//! terminals twice (seen in the node-loss drill: 18 of 15 707). A non-final event in the
//! log is the invoice's newest state: there is work to do, whatever MongoDB says
//! (without this, an attempt that failed for any reason during a MongoDB outage left its
//! invoice stuck until MongoDB came back). With no event in the log (QUEUED not
//! published yet, or — after `EVENTS_MAX_MSGS` later events, 2 000 000 by default — trimmed), a redelivery takes
//! Redis' word that the job is in flight; in the trimmed case, with a job whose settle
//! failed, that word is stale and a finished invoice is processed again as above (a
//! redelivery that late needs a processor stalled past its ack wait for as long as the log
//! takes to turn over: half an hour at full load with the default count).
//! MongoDB answers when neither can, and an unreachable MongoDB then means "retry later".

use domain::{Invoice, InvoiceState};

/// The places that know an invoice's latest state.
pub(crate) trait JobSources {
    /// Redis' cached job state; `None` if it has none or cannot answer.
    async fn cached(&self, invoice: &Invoice) -> Option<Invoice>;
    /// The invoice's latest event in the log; `Err` if the log cannot be read.
    async fn logged(&self, invoice: &Invoice) -> Result<Option<Invoice>, String>;
    /// The invoice as MongoDB stores it; `Err` if MongoDB cannot answer.
    async fn stored(&self, invoice: &Invoice) -> Result<Option<Invoice>, String>;
}

/// The final state this generation of `invoice` already reached, if any (then the
/// delivery is done); `Err` when nobody who was asked could rule it out.
pub(crate) async fn already_done(
    sources: &impl JobSources,
    invoice: &Invoice,
    attempt: u32,
) -> Result<Option<InvoiceState>, String> {
    let first_delivery = attempt <= 1;
    if first_delivery {
        if let Some(cached) = sources.cached(invoice).await {
            return Ok(finished(invoice, &cached));
        }
    }
    let log_read = match sources.logged(invoice).await {
        Ok(Some(latest)) => return Ok(finished(invoice, &latest)),
        Ok(None) => true,
        Err(e) => {
            tracing::debug!(invoice_id = %invoice.id(), error = %e, "event log unreadable; asking MongoDB");
            false
        }
    };
    if log_read && !first_delivery {
        if let Some(cached) = sources.cached(invoice).await {
            return Ok(finished(invoice, &cached));
        }
    }
    Ok(sources
        .stored(invoice)
        .await?
        .and_then(|stored| finished(invoice, &stored)))
}

/// `latest`'s state if it ends `invoice`'s generation: final in it, or a later
/// generation exists (a replay started after it).
pub(crate) fn finished(invoice: &Invoice, latest: &Invoice) -> Option<InvoiceState> {
    (latest.replays() > invoice.replays()
        || (latest.replays() == invoice.replays() && latest.state().is_final()))
    .then_some(latest.state())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn invoice(state: InvoiceState, replays: u32) -> Invoice {
        serde_json::from_value(serde_json::json!({
            "id": "0193a1b2-0000-7000-8000-000000000001", "tenantId": "acme", "terminalId": "T1",
            "idempotencyKey": null, "state": state, "currency": "EUR", "taxInclusive": false,
            "issuedAt": "2026-11-25T10:00:00Z", "createdAt": "2026-11-25T10:00:00.000Z",
            "updatedAt": "2026-11-25T10:00:00.123Z", "customer": null,
            "items": [{ "sku": "A", "name": "a", "quantity": "1", "unitPrice": "2.00",
                        "discount": "0.00", "taxRate": "0.21", "net": null, "tax": null, "total": null }],
            "payments": [], "totals": null, "attempts": 0, "error": null, "replays": replays
        }))
        .unwrap()
    }

    /// What each place answers, and which were asked, in order.
    struct Places {
        cached: Option<Invoice>,
        logged: Result<Option<Invoice>, String>,
        stored: Result<Option<Invoice>, String>,
        asked: Mutex<Vec<&'static str>>,
    }

    impl Places {
        fn new(
            cached: Option<Invoice>,
            logged: Result<Option<Invoice>, String>,
            stored: Result<Option<Invoice>, String>,
        ) -> Self {
            Self {
                cached,
                logged,
                stored,
                asked: Mutex::new(Vec::new()),
            }
        }

        fn asked(&self) -> Vec<&'static str> {
            self.asked.lock().unwrap().clone()
        }
    }

    impl JobSources for Places {
        async fn cached(&self, _: &Invoice) -> Option<Invoice> {
            self.asked.lock().unwrap().push("redis");
            self.cached.clone()
        }
        async fn logged(&self, _: &Invoice) -> Result<Option<Invoice>, String> {
            self.asked.lock().unwrap().push("log");
            self.logged.clone()
        }
        async fn stored(&self, _: &Invoice) -> Result<Option<Invoice>, String> {
            self.asked.lock().unwrap().push("mongodb");
            self.stored.clone()
        }
    }

    fn queued() -> Invoice {
        invoice(InvoiceState::Queued, 0)
    }

    #[tokio::test]
    async fn a_first_delivery_takes_redis_word_alone() {
        let places = Places::new(Some(queued()), Ok(None), Ok(None));
        assert_eq!(already_done(&places, &queued(), 1).await, Ok(None));
        assert_eq!(
            places.asked(),
            ["redis"],
            "no broker or MongoDB read on the hot path"
        );

        let done = Places::new(
            Some(invoice(InvoiceState::Completed, 0)),
            Ok(None),
            Ok(None),
        );
        assert_eq!(
            already_done(&done, &queued(), 1).await,
            Ok(Some(InvoiceState::Completed))
        );
        assert_eq!(done.asked(), ["redis"]);
    }

    #[tokio::test]
    async fn a_first_delivery_redis_does_not_know_asks_the_log_then_mongodb() {
        let places = Places::new(None, Ok(None), Ok(None));
        assert_eq!(already_done(&places, &queued(), 1).await, Ok(None));
        assert_eq!(places.asked(), ["redis", "log", "mongodb"]);
    }

    #[tokio::test]
    async fn a_redelivery_trusts_a_final_state_in_the_log_over_a_lagging_mongodb() {
        // The node-loss drill's case: COMPLETED published, MongoDB not caught up, Redis
        // still saying PROCESSING.
        let places = Places::new(
            Some(invoice(InvoiceState::Processing, 0)),
            Ok(Some(invoice(InvoiceState::Completed, 0))),
            Ok(Some(queued())),
        );
        assert_eq!(
            already_done(&places, &queued(), 2).await,
            Ok(Some(InvoiceState::Completed))
        );
        assert_eq!(places.asked(), ["log"]);
    }

    #[tokio::test]
    async fn a_redelivery_with_a_non_final_state_in_the_log_goes_on_without_mongodb() {
        // MongoDB down: the log's newest event is enough to go on working.
        let places = Places::new(
            Some(queued()),
            Ok(Some(invoice(InvoiceState::Processing, 0))),
            Err("MongoDB unreachable".into()),
        );
        assert_eq!(already_done(&places, &queued(), 3).await, Ok(None));
        assert_eq!(places.asked(), ["log"]);
    }

    #[tokio::test]
    async fn a_redelivery_the_log_does_not_know_takes_redis_word_before_mongodb() {
        // QUEUED not in the log yet (or older than it keeps), MongoDB down: Redis' job
        // says the invoice is in flight.
        let places = Places::new(Some(queued()), Ok(None), Err("MongoDB unreachable".into()));
        assert_eq!(already_done(&places, &queued(), 2).await, Ok(None));
        assert_eq!(places.asked(), ["log", "redis"]);
    }

    #[tokio::test]
    async fn an_unreadable_log_skips_redis_on_a_redelivery_and_mongodb_decides() {
        let places = Places::new(
            Some(invoice(InvoiceState::Processing, 0)),
            Err("no responders".into()),
            Ok(Some(invoice(InvoiceState::Completed, 0))),
        );
        assert_eq!(
            already_done(&places, &queued(), 2).await,
            Ok(Some(InvoiceState::Completed))
        );
        assert_eq!(places.asked(), ["log", "mongodb"]);
    }

    #[tokio::test]
    async fn nobody_able_to_rule_it_out_means_retry_later() {
        let places = Places::new(None, Err("no responders".into()), Err("timed out".into()));
        assert_eq!(
            already_done(&places, &queued(), 2).await,
            Err("timed out".into())
        );
    }

    #[test]
    fn a_generation_ends_with_its_final_state_or_a_later_replay() {
        let mine = invoice(InvoiceState::Queued, 1);
        assert_eq!(finished(&mine, &invoice(InvoiceState::Processing, 1)), None);
        assert_eq!(
            finished(&mine, &invoice(InvoiceState::Failed, 1)),
            Some(InvoiceState::Failed)
        );
        // A replay started after this generation: whatever its state, ours is over.
        assert_eq!(
            finished(&mine, &invoice(InvoiceState::Processing, 2)),
            Some(InvoiceState::Processing)
        );
        // An older generation's final state says nothing about this one.
        assert_eq!(finished(&mine, &invoice(InvoiceState::Failed, 0)), None);
    }
}
