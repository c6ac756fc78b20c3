//! The WebSocket side of a pipeline run: one socket per tenant per fanout URL, each
//! reading `invoice.state` frames and handing COMPLETED / FAILED ones to the
//! [`Tracker`], which pairs them with the POST that created the invoice.
//!
//! A socket that closes (slow consumer, restart) reconnects with `since=<last seq>`, as
//! the contract tells terminals to, so a resume gap or a resent frame would show up in
//! the counts (`duplicate_frames`, `seq_violations`).

use crate::stats::Samples;
use futures_util::StreamExt;
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    invoice_id: Option<String>,
    state: Option<String>,
    invoice: Option<FrameInvoice>,
}

#[derive(Deserialize)]
struct FrameInvoice {
    error: Option<FrameError>,
}

#[derive(Deserialize)]
struct FrameError {
    code: String,
}

/// A COMPLETED or FAILED frame that arrived before its POST was answered.
struct Early {
    at: Instant,
    copies: u32,
    failure: Option<String>,
}

/// An accepted invoice still waiting for its final frame.
struct Awaiting {
    sent: Instant,
    measured: bool,
}

#[derive(Default)]
struct Book {
    awaiting: HashMap<String, Awaiting>,
    early: HashMap<String, Early>,
    /// Invoices with a final frame → how many sockets delivered it.
    done: HashMap<String, u32>,
    e2e: Samples,
    /// Measurement window, set when the load starts (after the sockets are up) and
    /// cut short when the load stops early.
    window: Option<(Instant, Instant)>,
    completed_in_window: u64,
    failed: BTreeMap<String, u64>,
}

/// Pairs POST answers with final frames. One mutex: a few thousand operations per
/// second, each a hash-map lookup.
#[derive(Default)]
pub struct Tracker {
    book: Mutex<Book>,
    /// Invoices whose first final frame arrived (any time), for the progress line.
    pub finished: AtomicU64,
    /// Accepted invoices whose COMPLETED frame arrived (any time).
    pub completed: AtomicU64,
    /// A second COMPLETED/FAILED frame for the same invoice on the same socket.
    pub duplicate_frames: AtomicU64,
    /// A frame whose seq was not above the previous one on that socket.
    pub seq_violations: AtomicU64,
    pub frames: AtomicU64,
    pub reconnects: AtomicU64,
    by_state: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
}

/// What the tracker knows at the end of a run.
#[derive(Debug)]
pub struct FeedReport {
    pub e2e: Samples,
    pub completed_in_window: u64,
    pub never_completed: usize,
    pub failed: BTreeMap<String, u64>,
    /// Final frames for invoices no POST was answered for (e.g. the POST timed out).
    pub orphan_frames: usize,
    /// Invoices that reached fewer sockets than there are fanout URLs.
    pub missed_on_some_socket: usize,
    pub by_state: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
}

impl Tracker {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Final frames arriving inside `window` count towards completed/s.
    pub fn set_window(&self, window: (Instant, Instant)) {
        self.book().window = Some(window);
    }

    /// The load stopped at `at` (Ctrl-C): frames after it are drain, not throughput.
    pub fn end_window(&self, at: Instant) {
        if let Some((_, to)) = &mut self.book().window {
            *to = (*to).min(at);
        }
    }

    /// A POST answered 202 for invoice `id`, sent (or scheduled) at `sent`.
    pub fn accepted(&self, id: String, sent: Instant, measured: bool) {
        let mut book = self.book();
        if let Some(early) = book.early.remove(&id) {
            self.settle(&mut book, sent, measured, early.at, early.failure);
            book.done.insert(id, early.copies);
        } else {
            book.awaiting.insert(id, Awaiting { sent, measured });
        }
    }

    fn settle(
        &self,
        book: &mut Book,
        sent: Instant,
        measured: bool,
        at: Instant,
        failure: Option<String>,
    ) {
        match failure {
            None => {
                self.completed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    book.e2e.record(at.saturating_duration_since(sent));
                }
                if book.window.is_some_and(|(from, to)| at >= from && at <= to) {
                    book.completed_in_window += 1;
                }
            }
            Some(code) => *book.failed.entry(code).or_default() += 1,
        }
    }

    /// A final frame (COMPLETED, or FAILED with its error code) for `id` arrived at `at`.
    fn finished_frame(&self, id: &str, at: Instant, failure: Option<String>) {
        let mut book = self.book();
        if let Some(copies) = book.done.get_mut(id) {
            *copies += 1;
            return;
        }
        if let Some(waiting) = book.awaiting.remove(id) {
            self.finished.fetch_add(1, Ordering::Relaxed);
            self.settle(&mut book, waiting.sent, waiting.measured, at, failure);
            book.done.insert(id.to_owned(), 1);
            return;
        }
        match book.early.get_mut(id) {
            Some(early) => early.copies += 1,
            None => {
                self.finished.fetch_add(1, Ordering::Relaxed);
                book.early.insert(
                    id.to_owned(),
                    Early {
                        at,
                        copies: 1,
                        failure,
                    },
                );
            }
        }
    }

    pub fn awaiting(&self) -> usize {
        self.book().awaiting.len()
    }

    pub fn report(&self, sockets_per_tenant: usize) -> FeedReport {
        let mut book = self.book();
        let missed = book
            .done
            .values()
            .filter(|&&c| (c as usize) < sockets_per_tenant)
            .count();
        FeedReport {
            e2e: std::mem::take(&mut book.e2e),
            completed_in_window: book.completed_in_window,
            never_completed: book.awaiting.len(),
            failed: book.failed.clone(),
            orphan_frames: book.early.len(),
            missed_on_some_socket: missed,
            by_state: self.by_state.lock().map(|m| m.clone()).unwrap_or_default(),
            closes: self.closes.lock().map(|m| m.clone()).unwrap_or_default(),
        }
    }

    fn count_close(&self, why: String) {
        if let Ok(mut m) = self.closes.lock() {
            *m.entry(why).or_default() += 1;
        }
    }
}

/// `http://h:3001` (or `ws://h:3001`) → `ws://h:3001/ws?token=…[&since=…]`.
pub fn socket_url(base: &str, token: &str, since: Option<u64>) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        format!("ws://{base}")
    };
    match since {
        Some(seq) => format!("{base}/ws?token={token}&since={seq}"),
        None => format!("{base}/ws?token={token}"),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Result<Socket, String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out after 10 s".into()),
    }
}

/// Opens the socket, reports the first connect through `ready`, then reads frames until
/// `stop` turns true, reconnecting with `since` whenever the server closes it.
pub async fn watch_socket(
    base: String,
    token: String,
    tracker: Arc<Tracker>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let label = socket_url(&base, "…", None);
    let mut socket = match connect(&socket_url(&base, &token, None)).await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{label}: {e}")));
            return;
        }
    };
    let mut last_seq: Option<u64> = None;
    let mut finals: HashSet<String> = HashSet::new();
    let mut local_states: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.changed() => break,
            next = socket.next() => next,
        };
        let why = match next {
            Some(Ok(Message::Text(text))) => {
                let at = Instant::now();
                tracker.frames.fetch_add(1, Ordering::Relaxed);
                let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                    *local_states.entry("unparsable".into()).or_default() += 1;
                    continue;
                };
                if frame.kind != "invoice.state" {
                    *local_states.entry(frame.kind).or_default() += 1;
                    continue;
                }
                if let Some(seq) = frame.seq {
                    if last_seq.is_some_and(|last| seq <= last) {
                        tracker.seq_violations.fetch_add(1, Ordering::Relaxed);
                    }
                    last_seq = Some(last_seq.map_or(seq, |l| l.max(seq)));
                }
                let state = frame.state.unwrap_or_default();
                *local_states.entry(state.clone()).or_default() += 1;
                let failure = match state.as_str() {
                    "COMPLETED" => None,
                    "FAILED" => Some(
                        frame
                            .invoice
                            .and_then(|i| i.error)
                            .map_or_else(|| "unknown".to_owned(), |e| e.code),
                    ),
                    _ => continue,
                };
                let Some(id) = frame.invoice_id else { continue };
                if !finals.insert(id.clone()) {
                    tracker.duplicate_frames.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                tracker.finished_frame(&id, at, failure);
                continue;
            }
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                None => "close without code".into(),
            },
            Some(Ok(_)) => continue, // ping/pong/binary
            Some(Err(e)) => format!("error: {e}"),
            None => "connection ended".into(),
        };
        // keep the close code and its first words; the "since=N" part differs each time
        let short = why.split(';').next().unwrap_or(&why).to_owned();
        tracker.count_close(short);
        eprintln!("loadgen: socket {label} closed ({why}); reconnecting since={last_seq:?}");
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    flush_states(&tracker, &mut local_states);
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            tracker.reconnects.fetch_add(1, Ordering::Relaxed);
            match connect(&socket_url(&base, &token, last_seq)).await {
                Ok(s) => {
                    socket = s;
                    break;
                }
                Err(e) => eprintln!("loadgen: reconnect to {label} failed: {e}"),
            }
        }
    }
    let _ = socket.close(None).await;
    flush_states(&tracker, &mut local_states);
}

fn flush_states(tracker: &Tracker, local: &mut BTreeMap<String, u64>) {
    if let Ok(mut m) = tracker.by_state.lock() {
        for (k, v) in std::mem::take(local) {
            *m.entry(k).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls_from_http_or_ws_bases() {
        assert_eq!(
            socket_url("http://localhost:3001/", "t", None),
            "ws://localhost:3001/ws?token=t"
        );
        assert_eq!(
            socket_url("ws://h:1", "t", Some(42)),
            "ws://h:1/ws?token=t&since=42"
        );
        assert_eq!(socket_url("h:1", "t", None), "ws://h:1/ws?token=t");
    }

    #[test]
    fn a_frame_before_the_post_answer_still_pairs_up() {
        let now = Instant::now();
        let t = Tracker::default();
        t.set_window((now, now + Duration::from_secs(60)));
        t.finished_frame("a", now + Duration::from_millis(30), None);
        t.accepted("a".into(), now, true);
        t.accepted("b".into(), now, true);
        t.finished_frame("b", now + Duration::from_millis(50), None);
        t.finished_frame("b", now + Duration::from_millis(60), None); // second socket
        t.accepted("c".into(), now, true);
        let r = t.report(2);
        assert_eq!(r.never_completed, 1);
        assert_eq!(r.orphan_frames, 0);
        assert_eq!(r.completed_in_window, 2);
        assert_eq!(r.missed_on_some_socket, 1); // "a" reached one of two sockets
        let s = r.e2e.summary();
        assert_eq!(s.count, 2);
        assert!((s.max - 50.0).abs() <= 0.05, "{s:?}");
    }
}
