//! One WebSocket: a writer loop that sends the frames produced for it (`replay.rs`),
//! pings, watches for silence and closes with a code that tells the client what to do.
//!
//! [`serve`] is generic over any `Sink<Message>` + `Stream` pair (axum's split
//! `WebSocket` in production, channels in tests), after axum's
//! `examples/testing-websockets`.
//!
//! Close codes. The reason ends with `reconnect with since=<last seq sent>` (or the
//! client's own `since` if nothing was sent yet; plain `reconnect` without either), so
//! a client resumes without a gap:
//! - `4008` slow consumer: the socket fell `FANOUT_CLIENT_BUFFER` frames behind;
//! - `1013` try again later: the event log could not be read for the replay;
//! - `1001` going away: this instance is shutting down;
//! - `1000` idle timeout: nothing received (not even a pong) for `FANOUT_IDLE_TIMEOUT_MS`;
//! - `1011` the tenant's live feed was lost (should not happen; reconnecting heals it);
//! - `4001` the token's `exp` passed: reconnect with a fresh token.

use crate::{
    hub::Membership,
    metrics::Metrics,
    outbound::{Closing, Outbound},
    replay::{self, EventLog},
    resume::Resume,
};
use axum::{
    body::Bytes,
    extract::ws::{CloseFrame, Message, WebSocket},
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::{future::Future, sync::Arc, time::Duration};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, Instrument};

/// Frames handed from the producer task to the writer. Small on purpose: the real
/// per-socket buffer is the tenant's broadcast ring (`FANOUT_CLIENT_BUFFER`), where a
/// slow client is detected; this only decouples the two tasks.
pub const HANDOFF_CAPACITY: usize = 16;

/// How long a close frame may take to leave before the socket is simply dropped; but see
/// [`close`] for the slow consumer's.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Liveness rules of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPolicy {
    pub ping_interval: Duration,
    /// Silence from the client after which it is closed; also the longest a single
    /// write may take (a client that stopped reading would otherwise hold the socket).
    pub idle_timeout: Duration,
}

/// How a socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it, or the connection broke.
    ByClient,
    /// A write did not complete within the idle timeout or failed.
    WriteFailed,
    /// We closed it.
    Closed(Closing),
}

/// Runs one socket until it ends. `stop` resolves when the socket must close (shutdown,
/// or the producer's verdict): the close then goes out at once, ahead of frames still
/// queued, since its reason names the last seq actually sent and the client resumes
/// from there. `last_sent` starts at the client's `since`, so even a socket that sent
/// nothing yet names a resume point.
pub async fn serve<W, R, E>(
    mut sink: W,
    mut inbound: R,
    mut outbound: mpsc::Receiver<Outbound>,
    policy: SocketPolicy,
    mut last_sent: Option<u64>,
    metrics: &Metrics,
    stop: impl Future<Output = Closing>,
) -> Ended
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut ping =
        tokio::time::interval_at(Instant::now() + policy.ping_interval, policy.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    tokio::pin!(stop);
    loop {
        let idle = tokio::time::sleep_until(last_heard + policy.idle_timeout);
        // Biased, in this order: the rare events first; outbound last, so a steady stream
        // of frames can never starve pings, inbound pongs or the idle check (each of
        // those is ready only now and then, so frames are not starved either).
        let write = tokio::select! {
            biased;
            closing = &mut stop => {
                if closing == Closing::SLOW_CONSUMER {
                    metrics.slow_client();
                }
                return close(&mut sink, closing, last_sent, &policy).await;
            }
            message = inbound.next() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    // Lets the library flush its reply to the client's close frame.
                    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.close()).await;
                    return Ended::ByClient;
                }
                // Pongs, pings and stray text all prove the client is alive; their content
                // is ignored (the contract defines no client messages).
                Some(Ok(_)) => {
                    last_heard = Instant::now();
                    continue;
                }
            },
            () = idle => return close(&mut sink, Closing::IDLE, last_sent, &policy).await,
            _ = ping.tick() => Message::Ping(Bytes::new()),
            next = outbound.recv() => match next {
                Some(Outbound::Event { seq, text }) => {
                    last_sent = Some(seq);
                    Message::Text(text)
                }
                Some(Outbound::Notice(text)) => Message::Text(text),
                // The producer ended without a verdict: it panicked (it returns quietly
                // only once this writer is gone).
                None => return close(&mut sink, Closing::FEED_LOST, last_sent, &policy).await,
            },
        };
        let is_frame = matches!(write, Message::Text(_));
        // A client that stops reading blocks this write once its TCP buffers are full;
        // the verdict (4008) or a shutdown must still get through, so they race it.
        let written = tokio::select! {
            written = tokio::time::timeout(policy.idle_timeout, sink.send(write)) => Ok(written),
            closing = &mut stop => Err(closing),
        };
        match written {
            Ok(Ok(Ok(()))) if is_frame => metrics.frame_sent(),
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(_)) | Err(_)) => return Ended::WriteFailed,
            Err(closing) => {
                if closing == Closing::SLOW_CONSUMER {
                    metrics.slow_client();
                }
                return close(&mut sink, closing, last_sent, &policy).await;
            }
        }
    }
}

/// Sends the close frame. A slow consumer's queues behind everything its TCP buffers
/// hold: it gets as long as any write (the idle timeout), so a terminal that was merely
/// paused still learns where to resume (`since=`) once it reads again. Other closes get
/// [`CLOSE_WRITE_TIMEOUT`]: an idle client is gone, and a shutdown must not wait.
async fn close<W: Sink<Message> + Unpin>(
    sink: &mut W,
    closing: Closing,
    last_sent: Option<u64>,
    policy: &SocketPolicy,
) -> Ended {
    let frame = CloseFrame {
        code: closing.code,
        reason: closing.reason(last_sent).into(),
    };
    let wait = if closing == Closing::SLOW_CONSUMER {
        policy.idle_timeout
    } else {
        CLOSE_WRITE_TIMEOUT
    };
    let _ = tokio::time::timeout(wait, sink.send(Message::Close(Some(frame)))).await;
    Ended::Closed(closing)
}

/// Everything a socket needs besides its own connection.
pub struct Session<L> {
    pub log: L,
    pub member: Membership,
    pub resume: Resume,
    pub policy: SocketPolicy,
    pub metrics: Arc<Metrics>,
    pub shutdown: service_kit::CancellationToken,
    /// The token's `exp` (Unix seconds): the socket is closed with 4001 then.
    pub token_exp: i64,
}

/// Counts a socket as connected for exactly as long as it lives.
struct Connected(Arc<Metrics>);

impl Connected {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.socket_opened();
        Self(metrics)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.socket_closed();
    }
}

/// Time from now until Unix second `at` (zero if past).
fn until_unix(at: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(at)
        .map(Duration::from_secs)
        .unwrap_or_default()
        .saturating_sub(now)
}

/// Serves an upgraded socket: the producer (replay, then live) runs as its own task and
/// feeds the writer; whichever side ends first ends the other.
pub async fn run<L: EventLog>(socket: WebSocket, session: Session<L>) {
    let Session {
        log,
        member,
        resume,
        policy,
        metrics,
        shutdown,
        token_exp,
    } = session;
    let _connected = Connected::new(metrics.clone());
    let span = tracing::info_span!("socket", tenant_id = %member.tenant(), since = resume.since, terminal_id = resume.terminal.as_ref().map(domain::TerminalId::as_str));
    let since = resume.since;
    let (out_tx, out_rx) = mpsc::channel(HANDOFF_CAPACITY);
    let (verdict_tx, verdict_rx) = oneshot::channel();
    let producer = tokio::spawn(
        async move {
            if let Some(closing) = replay::produce(log, member, resume, &out_tx).await {
                let _ = verdict_tx.send(closing);
            }
            // `out_tx` lives until here, so the writer sees the verdict before the end
            // of the frames.
            drop(out_tx);
        }
        .instrument(span.clone()),
    );
    let expires = Instant::now() + until_unix(token_exp);
    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => Closing::SHUTDOWN,
            Ok(closing) = verdict_rx => closing,
            () = tokio::time::sleep_until(expires) => Closing::TOKEN_EXPIRED,
        }
    };
    let (sink, stream) = socket.split();
    let ended = serve(sink, stream, out_rx, policy, since, &metrics, stop)
        .instrument(span.clone())
        .await;
    // Dropping the producer drops the hub membership: the tenant's feed stops with its
    // last socket.
    producer.abort();
    span.in_scope(|| debug!(?ended, "socket ended"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use tokio::sync::mpsc::UnboundedReceiver;

    /// A sink that records what was sent, and an inbound side the test controls.
    fn pipes() -> (
        impl Sink<Message, Error = ()> + Unpin,
        UnboundedReceiver<Message>,
        impl Stream<Item = Result<Message, ()>> + Unpin,
        mpsc::UnboundedSender<Message>,
    ) {
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        let sink = Box::pin(futures_util::sink::unfold(
            sent_tx,
            |tx, m: Message| async move {
                tx.send(m).map_err(|_| ())?;
                Ok::<_, ()>(tx)
            },
        ));
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Message>();
        let inbound = Box::pin(stream::unfold(in_rx, |mut rx| async move {
            rx.recv().await.map(|m| (Ok(m), rx))
        }));
        (sink, sent_rx, inbound, in_tx)
    }

    const POLICY: SocketPolicy = SocketPolicy {
        ping_interval: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(60),
    };

    fn close_of(m: Message) -> (u16, String) {
        match m {
            Message::Close(Some(f)) => (f.code, f.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_consumer_is_closed_at_once_with_4008_naming_the_last_seq_sent() {
        let (sink, mut sent, inbound, _in_tx) = pipes();
        let (out_tx, out_rx) = mpsc::channel(8);
        let (verdict_tx, verdict_rx) = oneshot::channel();
        let socket = tokio::spawn(async move {
            let metrics = Metrics::default();
            let stop = async { verdict_rx.await.unwrap() };
            let ended = serve(sink, inbound, out_rx, POLICY, Some(40), &metrics, stop).await;
            (ended, metrics.snapshot())
        });
        for (seq, text) in [(41, "a"), (42, "b")] {
            out_tx
                .send(Outbound::Event {
                    seq,
                    text: text.into(),
                })
                .await
                .unwrap();
            assert_eq!(sent.recv().await.unwrap(), Message::Text(text.into()));
        }
        // Queued but not yet written when the verdict comes: skipped, the client resumes
        // from 42 and gets it again from the log.
        out_tx
            .send(Outbound::Event {
                seq: 43,
                text: "c".into(),
            })
            .await
            .unwrap();
        verdict_tx.send(Closing::SLOW_CONSUMER).unwrap();
        let (ended, metrics) = socket.await.unwrap();
        assert_eq!(ended, Ended::Closed(Closing::SLOW_CONSUMER));
        assert_eq!(
            close_of(sent.recv().await.unwrap()),
            (4008, "slow consumer; reconnect with since=42".into())
        );
        assert_eq!(
            (metrics.frames_sent, metrics.slow_client_disconnects),
            (2, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed_after_the_idle_timeout() {
        let (sink, mut sent, inbound, _in_tx) = pipes();
        let (_out_tx, out_rx) = mpsc::channel(8);
        let metrics = Metrics::default();
        let ended = serve(
            sink,
            inbound,
            out_rx,
            POLICY,
            Some(7),
            &metrics,
            std::future::pending(),
        )
        .await;
        assert_eq!(ended, Ended::Closed(Closing::IDLE));
        let mut pings = 0;
        let closing = loop {
            match sent.recv().await.unwrap() {
                Message::Ping(_) => pings += 1,
                other => break close_of(other),
            }
        };
        assert_eq!(pings, 2, "pinged at 20 s and 40 s, closed at 60 s");
        assert_eq!(
            closing,
            (1000, "idle timeout; reconnect with since=7".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pongs_keep_a_socket_open() {
        let (sink, mut sent, inbound, in_tx) = pipes();
        let (out_tx, out_rx) = mpsc::channel(8);
        let metrics = Metrics::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let socket = tokio::spawn(async move {
            serve(sink, inbound, out_rx, POLICY, None, &metrics, async {
                let _ = stop_rx.await;
                Closing::SHUTDOWN
            })
            .await
        });
        for _ in 0..5 {
            // Answer each ping: 100 s pass, well over the idle timeout.
            assert!(matches!(sent.recv().await.unwrap(), Message::Ping(_)));
            in_tx.send(Message::Pong(Bytes::new())).unwrap();
        }
        out_tx
            .send(Outbound::Event {
                seq: 3,
                text: "x".into(),
            })
            .await
            .unwrap();
        assert_eq!(sent.recv().await.unwrap(), Message::Text("x".into()));
        stop_tx.send(()).unwrap();
        assert_eq!(socket.await.unwrap(), Ended::Closed(Closing::SHUTDOWN));
        assert_eq!(
            close_of(sent.recv().await.unwrap()),
            (1001, "server shutting down; reconnect with since=3".into())
        );
    }

    #[tokio::test]
    async fn a_client_close_ends_the_socket_and_text_from_the_client_is_ignored() {
        let (sink, mut sent, inbound, in_tx) = pipes();
        let (_out_tx, out_rx) = mpsc::channel(8);
        in_tx.send(Message::Text("hello?".into())).unwrap();
        in_tx.send(Message::Close(None)).unwrap();
        let ended = serve(
            sink,
            inbound,
            out_rx,
            POLICY,
            None,
            &Metrics::default(),
            std::future::pending(),
        )
        .await;
        assert_eq!(ended, Ended::ByClient);
        assert!(
            sent.try_recv().is_err(),
            "nothing was sent in answer to the text"
        );
    }
}
