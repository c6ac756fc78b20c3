//! What one socket is sent: with `since=S`, every stored event of the tenant after `S`
//! (read with a private ordered consumer), then the tenant's live feed, with no gap and
//! no duplicate at the hand-over (contract § WebSocket).
//!
//! The hand-over works because of the order of three steps:
//! 1. the socket subscribes to the hub's broadcast first ([`crate::hub::Hub::join`]);
//! 2. then it reads the log's bounds and the live feed's first sequence `H`;
//! 3. then it replays from `S + 1` through `max(last_seq, H − 1)`.
//!
//! An event stored before step 2 is at or below `last_seq`: it is replayed. An event
//! stored after step 2 is above `last_seq` and at or above `H`, so the hub broadcasts it
//! after step 1: the subscription has it. Events in both (stored between 1 and 2) are
//! dropped the second time by [`crate::resume::SeqGate`], which lets only increasing sequences through.
//! Replay stops early when the consumer reports nothing pending: everything stored later
//! is above `last_seq` and therefore live.
//!
//! Live frames pile up in the subscription while the replay is written. If the replay
//! takes longer than the buffer lasts, the subscription lags; that is not the client's
//! fault, so the socket re-subscribes and replays again from its last sequence (up to
//! [`MAX_CATCH_UP_ROUNDS`] times). A lag once live means a slow client: close 4008.

use crate::{
    frame::{self, EventFrame},
    hub::{Membership, Next},
    outbound::{Closing, Outbound},
    resume::{replay_done, Resume, ResumePlan, SeqGate},
};
use domain::TenantId;
use futures_util::{Stream, StreamExt};
use messaging::{
    feed::{EventFeed, FeedStart, LogBounds, LoggedEvent},
    Bus, BusError,
};
use std::{future::Future, time::Duration};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tracing::{debug, info, warn};

/// Replay rounds a socket may need before it keeps up with its tenant's live feed. A
/// terminal that falls a whole buffer behind three replays in a row is a slow client.
pub const MAX_CATCH_UP_ROUNDS: u32 = 3;

/// The longest wait for the next replayed event that the log said was there. Past it
/// the socket is closed (1013, reconnect with `since`) rather than risk a gap.
pub const REPLAY_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a replay reads from: the events stream in production, a list in tests.
pub trait EventLog: Send + Sync + 'static {
    type Feed: Stream<Item = LoggedEvent> + Unpin + Send;

    fn bounds(&self) -> impl Future<Output = Result<LogBounds, BusError>> + Send;

    /// `tenant`'s events from `from` on, and how many were stored when it was opened.
    fn read_from(
        &self,
        tenant: &TenantId,
        from: u64,
    ) -> impl Future<Output = Result<(Self::Feed, u64), BusError>> + Send;
}

impl EventLog for Bus {
    type Feed = EventFeed;

    fn bounds(&self) -> impl Future<Output = Result<LogBounds, BusError>> + Send {
        self.event_log_bounds()
    }

    async fn read_from(&self, tenant: &TenantId, from: u64) -> Result<(EventFeed, u64), BusError> {
        let feed = self.event_feed(tenant, FeedStart::At(from)).await?;
        let pending = feed.initial_pending();
        Ok((feed, pending))
    }
}

enum RoundEnd {
    /// The writer is gone (socket closed): stop quietly.
    ClientGone,
    /// The log could not be read completely: close and let the client resume.
    LogUnavailable(String),
}

/// Produces a socket's frames onto `out` (replay, then live) until a close is due, and
/// returns it; `None` when the writer is gone (the socket already ended).
pub async fn produce<L: EventLog>(
    log: L,
    mut member: Membership,
    resume: Resume,
    out: &mpsc::Sender<Outbound>,
) -> Option<Closing> {
    let mut gate = SeqGate::after(resume.since);
    // Some(seq): a replay round from seq + 1 is due before reading live frames.
    let mut replay_after = resume.since;
    let mut rounds = 0;
    // From the end of a replay round until the first live frame: a lag here happened
    // while the replay was being written.
    let mut handing_over = false;
    loop {
        if let Some(after) = replay_after.take() {
            rounds += 1;
            match replay_round(&log, &mut member, after, &mut gate, &resume, out).await {
                Ok(()) => handing_over = true,
                Err(RoundEnd::ClientGone) => return None,
                Err(RoundEnd::LogUnavailable(why)) => {
                    warn!(tenant_id = %member.tenant(), error = %why, "replay failed; closing the socket");
                    return Some(Closing::LOG_UNAVAILABLE);
                }
            }
        }
        let received = match member.next().await {
            Next::Live(received) => received,
            Next::Catalog(version) => {
                // A notice, not an event: no seq, and one missed is healed by the
                // terminal's next catalog sync, so it never waits for a slow writer.
                let _ = out.try_send(Outbound::Notice(crate::frame::catalog_changed(version)));
                continue;
            }
        };
        let live = match received {
            Ok(live) => live,
            Err(RecvError::Lagged(missed)) if handing_over && rounds < MAX_CATCH_UP_ROUNDS => {
                debug!(
                    missed,
                    rounds, "live frames overflowed during the replay; catching up from the log"
                );
                member.resubscribe();
                replay_after = gate.last();
                continue;
            }
            Err(RecvError::Lagged(missed)) => {
                info!(tenant_id = %member.tenant(), missed, "slow client; closing with 4008");
                return Some(Closing::SLOW_CONSUMER);
            }
            Err(RecvError::Closed) => return Some(Closing::FEED_LOST),
        };
        handing_over = false;
        if !(gate.admit(live.seq) && resume.wants(&live.terminal_id)) {
            continue;
        }
        let event = Outbound::Event {
            seq: live.seq,
            text: live.text.clone(),
        };
        match out.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return None,
            // The writer is behind (the client reads slowly): wait for it, but only until
            // the socket has fallen a whole ring behind, which is the slow-client verdict.
            Err(mpsc::error::TrySendError::Full(event)) => tokio::select! {
                sent = out.send(event) => if sent.is_err() { return None },
                () = member.overflowed() => {
                    info!(tenant_id = %member.tenant(), "slow client; closing with 4008");
                    return Some(Closing::SLOW_CONSUMER);
                }
            },
        }
    }
}

async fn replay_round<L: EventLog>(
    log: &L,
    member: &mut Membership,
    after: u64,
    gate: &mut SeqGate,
    resume: &Resume,
    out: &mpsc::Sender<Outbound>,
) -> Result<(), RoundEnd> {
    let bounds = log
        .bounds()
        .await
        .map_err(|e| RoundEnd::LogUnavailable(e.to_string()))?;
    let live_start = member
        .live_start()
        .await
        .ok_or_else(|| RoundEnd::LogUnavailable("the tenant's live feed stopped".into()))?;
    let plan = ResumePlan::new(after, bounds, live_start);
    if let Some(resync) = plan.resync {
        info!(tenant_id = %member.tenant(), since = after, first_seq = resync.first_seq(), reason = resync.reason(), "resync");
        gate.restart_after(plan.floor);
        let notice = Outbound::Notice(frame::resync(resync.reason(), resync.first_seq()));
        out.send(notice).await.map_err(|_| RoundEnd::ClientGone)?;
    }
    let Some((from, through)) = plan.replay else {
        return Ok(());
    };
    let (mut events, pending) = log
        .read_from(member.tenant(), from)
        .await
        .map_err(|e| RoundEnd::LogUnavailable(e.to_string()))?;
    if pending == 0 {
        return Ok(());
    }
    debug!(from, through, pending, "replaying");
    loop {
        let event = match tokio::time::timeout(REPLAY_STALL_TIMEOUT, events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => return Err(RoundEnd::LogUnavailable("the replay ended early".into())),
            Err(_) => {
                return Err(RoundEnd::LogUnavailable(format!(
                    "no replayed event for {REPLAY_STALL_TIMEOUT:?}"
                )))
            }
        };
        if gate.admit(event.seq) && resume.wants(event.envelope.invoice.terminal_id()) {
            let frame = EventFrame::from_event(&event);
            out.send(Outbound::Event {
                seq: frame.seq,
                text: frame.text,
            })
            .await
            .map_err(|_| RoundEnd::ClientGone)?;
        }
        if replay_done(event.seq, event.pending, through) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{frame::tests::invoice, hub::tests::fake_hub, resume::tests::bounds};
    use domain::{InvoiceState, TerminalId};
    use futures_util::stream::{self, BoxStream};
    use messaging::Envelope;
    use std::sync::{Arc, Mutex};

    // ---- the hand-over, end to end over a fake log and a fake hub ----

    fn event(seq: u64, terminal: &str, pending: u64) -> LoggedEvent {
        let invoice = invoice("acme", terminal, InvoiceState::Queued);
        LoggedEvent {
            seq,
            pending,
            at: invoice.updated_at(),
            envelope: Envelope {
                invoice,
                fingerprint: "f".into(),
            },
            request_id: None,
        }
    }

    /// A tenant log held in memory; `read_from` never ends, like the real feed.
    #[derive(Clone)]
    struct MemoryLog {
        bounds: LogBounds,
        events: Arc<Mutex<Vec<LoggedEvent>>>,
    }

    impl EventLog for MemoryLog {
        type Feed = BoxStream<'static, LoggedEvent>;

        async fn bounds(&self) -> Result<LogBounds, BusError> {
            Ok(self.bounds)
        }

        async fn read_from(
            &self,
            _tenant: &TenantId,
            from: u64,
        ) -> Result<(Self::Feed, u64), BusError> {
            let events: Vec<_> = self
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.seq >= from)
                .cloned()
                .collect();
            let pending = events.len() as u64;
            Ok((
                stream::iter(events).chain(stream::pending()).boxed(),
                pending,
            ))
        }
    }

    /// Runs `produce` with its own sender, as the socket does.
    async fn produce_owned<L: EventLog>(
        log: L,
        member: Membership,
        resume: Resume,
        out: mpsc::Sender<Outbound>,
    ) -> Option<Closing> {
        produce(log, member, resume, &out).await
    }

    async fn collect_seqs(out: &mut mpsc::Receiver<Outbound>, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            match out.recv().await.unwrap() {
                Outbound::Event { seq, .. } => seqs.push(seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        seqs
    }

    #[tokio::test]
    async fn replayed_and_live_events_join_without_gap_or_duplicate() {
        let (hub, fakes) = fake_hub(64, 10);
        let member = hub.join(&TenantId::parse("acme").unwrap()).unwrap();
        let (live_tx, start_tx) = {
            let s = fakes.senders.lock().unwrap();
            (s[0].1.clone(), s[0].2.clone())
        };
        start_tx.send_replace(Some(6));
        // The log holds 3..=8; events 6, 7 and 8 were also broadcast after the subscription.
        let log = MemoryLog {
            bounds: bounds(1, 8),
            events: Arc::new(Mutex::new(vec![
                event(3, "T1", 3),
                event(5, "T1", 2),
                event(6, "T1", 1),
                event(8, "T1", 0),
            ])),
        };
        for e in [
            event(6, "T1", 0),
            event(8, "T1", 0),
            event(9, "T1", 0),
            event(12, "T1", 0),
        ] {
            live_tx.send(Arc::new(EventFrame::from_event(&e))).unwrap();
        }
        let (out_tx, mut out) = mpsc::channel(64);
        let task = tokio::spawn(produce_owned(
            log,
            member,
            Resume {
                since: Some(4),
                terminal: None,
            },
            out_tx,
        ));
        assert_eq!(collect_seqs(&mut out, 4).await, vec![5, 6, 8, 9]);
        live_tx
            .send(Arc::new(EventFrame::from_event(&event(13, "T1", 0))))
            .unwrap();
        assert_eq!(collect_seqs(&mut out, 2).await, vec![12, 13]);
        task.abort();
    }

    #[tokio::test]
    async fn a_terminal_filter_sends_only_that_terminals_events() {
        let (hub, fakes) = fake_hub(64, 10);
        let member = hub.join(&TenantId::parse("acme").unwrap()).unwrap();
        let (live_tx, start_tx) = {
            let s = fakes.senders.lock().unwrap();
            (s[0].1.clone(), s[0].2.clone())
        };
        start_tx.send_replace(Some(4));
        let log = MemoryLog {
            bounds: bounds(1, 3),
            events: Arc::new(Mutex::new(vec![
                event(1, "T1", 2),
                event(2, "T2", 1),
                event(3, "T1", 0),
            ])),
        };
        live_tx
            .send(Arc::new(EventFrame::from_event(&event(4, "T2", 0))))
            .unwrap();
        live_tx
            .send(Arc::new(EventFrame::from_event(&event(5, "T1", 0))))
            .unwrap();
        let (out_tx, mut out) = mpsc::channel(64);
        let resume = Resume {
            since: Some(0),
            terminal: Some(TerminalId::parse("T1").unwrap()),
        };
        let task = tokio::spawn(produce_owned(log, member, resume, out_tx));
        assert_eq!(collect_seqs(&mut out, 3).await, vec![1, 3, 5]);
        task.abort();
    }

    #[tokio::test]
    async fn an_expired_since_gets_a_resync_frame_first() {
        let (hub, fakes) = fake_hub(64, 10);
        let member = hub.join(&TenantId::parse("acme").unwrap()).unwrap();
        fakes.senders.lock().unwrap()[0].2.send_replace(Some(12));
        let log = MemoryLog {
            bounds: bounds(10, 11),
            events: Arc::new(Mutex::new(vec![event(10, "T1", 1), event(11, "T1", 0)])),
        };
        let (out_tx, mut out) = mpsc::channel(64);
        let task = tokio::spawn(produce_owned(
            log,
            member,
            Resume {
                since: Some(2),
                terminal: None,
            },
            out_tx,
        ));
        match out.recv().await.unwrap() {
            Outbound::Notice(text) => assert_eq!(
                text.as_str(),
                r#"{"type":"resync","reason":"since is older than the retention window","firstSeq":10}"#
            ),
            other => panic!("expected the resync frame, got {other:?}"),
        }
        assert_eq!(collect_seqs(&mut out, 2).await, vec![10, 11]);
        task.abort();
    }

    #[tokio::test]
    async fn a_live_subscription_that_lags_closes_the_socket_as_a_slow_client() {
        let (hub, fakes) = fake_hub(2, 10);
        let member = hub.join(&TenantId::parse("acme").unwrap()).unwrap();
        let live_tx = fakes.senders.lock().unwrap()[0].1.clone();
        for seq in 1..=5 {
            live_tx
                .send(Arc::new(EventFrame::from_event(&event(seq, "T1", 0))))
                .unwrap();
        }
        let (out_tx, mut out) = mpsc::channel(64);
        let task = tokio::spawn(produce_owned(
            MemoryLog {
                bounds: bounds(1, 5),
                events: Arc::default(),
            },
            member,
            Resume {
                since: None,
                terminal: None,
            },
            out_tx,
        ));
        assert_eq!(task.await.unwrap(), Some(Closing::SLOW_CONSUMER));
        assert!(out.recv().await.is_none(), "nothing was forwarded");
    }

    #[tokio::test]
    async fn a_lag_while_the_replay_is_written_is_caught_up_from_the_log() {
        let (hub, fakes) = fake_hub(2, 10);
        let member = hub.join(&TenantId::parse("acme").unwrap()).unwrap();
        let (live_tx, start_tx) = {
            let s = fakes.senders.lock().unwrap();
            (s[0].1.clone(), s[0].2.clone())
        };
        start_tx.send_replace(Some(1));
        let all: Vec<_> = (1..=6).map(|seq| event(seq, "T1", 6 - seq)).collect();
        let log = MemoryLog {
            bounds: bounds(1, 6),
            events: Arc::new(Mutex::new(all.clone())),
        };
        // Six live frames into a ring of two while the replay is being written: the
        // subscription lags through no fault of the client.
        for e in &all {
            live_tx.send(Arc::new(EventFrame::from_event(e))).unwrap();
        }
        let (out_tx, mut out) = mpsc::channel(64);
        let task = tokio::spawn(produce_owned(
            log,
            member,
            Resume {
                since: Some(0),
                terminal: None,
            },
            out_tx,
        ));
        assert_eq!(collect_seqs(&mut out, 6).await, vec![1, 2, 3, 4, 5, 6]);
        live_tx
            .send(Arc::new(EventFrame::from_event(&event(7, "T1", 0))))
            .unwrap();
        assert_eq!(collect_seqs(&mut out, 1).await, vec![7]);
        task.abort();
    }
}
