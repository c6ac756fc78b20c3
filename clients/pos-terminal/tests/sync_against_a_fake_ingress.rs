//! `sync` end to end, in process, against a fake ingress: a tokio `TcpListener` that
//! answers each request from a script chosen by the body's `terminalId` and records
//! what it saw. Most tests leave the watcher out (states then come from the GET
//! refresh); the last one adds a fake fanout that pushes a frame for every accepted
//! invoice.

use pos_terminal::{
    cli::{sync_exit, Exit},
    outbox::SyncStatus,
    Client, Outbox, SharedOutbox, SyncError, SyncOptions, Token,
};
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A fresh outbox file in the temp dir, removed (with its WAL) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        let name = format!("pos-terminal-e2e-{}.db", uuid::Uuid::new_v4().simple());
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One request as the fake ingress saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
    at: Instant,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// Status, extra headers and body of one canned answer.
type Canned = (u16, Vec<(&'static str, String)>, String);

/// What the fake answers to a request seen `earlier` times before; `None` drops the
/// connection without a word (a lost answer).
type Script = Arc<dyn Fn(&Seen, usize) -> Option<Canned> + Send + Sync>;

struct FakeIngress {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeIngress {
    async fn start(
        script: impl Fn(&Seen, usize) -> Option<Canned> + Send + Sync + 'static,
    ) -> Self {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = Arc::clone(&log);
                tokio::spawn(serve(stream, log, Arc::clone(&script)));
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn posts_for(&self, terminal: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST" && s.json()["terminalId"] == terminal)
            .collect()
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Seen>>>, script: Script) {
    let mut buffer = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let (method, path) = (
        request_line.next().unwrap().to_owned(),
        request_line.next().unwrap().to_owned(),
    );
    let header = |name: &str| {
        head.split("\r\n")
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_owned())
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        buffer.extend_from_slice(&chunk[..n]);
    }
    let seen = Seen {
        method,
        path,
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: String::from_utf8(buffer[head_end..head_end + length].to_vec()).unwrap(),
        at: Instant::now(),
    };
    let earlier = {
        let mut log = log.lock().unwrap();
        let earlier = log
            .iter()
            .filter(|s| s.method == seen.method && s.path == seen.path && s.body == seen.body)
            .count();
        log.push(seen.clone());
        earlier
    };
    let Some((status, headers, body)) = script(&seen, earlier) else {
        return; // the connection closes with no answer
    };
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    let mut response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nDate: {date}\r\n",
        body.len()
    );
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn invoice(id: &str, key: &str, state: &str) -> String {
    serde_json::json!({ "id": id, "idempotencyKey": key, "state": state, "replays": 0 }).to_string()
}

fn body(terminal: &str) -> String {
    serde_json::json!({
        "terminalId": terminal, "currency": "EUR",
        "items": [ { "sku": "COFFEE-L", "name": "Coffee large", "quantity": "2", "unitPrice": "3.50", "taxRate": "0.10" } ]
    })
    .to_string()
}

/// `T-BAD`: 400. `T-RETRY`: 503 with `Retry-After: 1`, then 202. `T-LOST`: the first
/// answer is lost, then 200 replayed. Everyone else: 202. `GET` of a known id: COMPLETED.
fn the_shop_script(seen: &Seen, earlier: usize) -> Option<Canned> {
    if seen.method == "GET" {
        let id = seen.path.trim_start_matches("/invoices/");
        return Some((200, vec![], invoice(id, "", "COMPLETED")));
    }
    let request = seen.json();
    let key = request["idempotencyKey"].as_str().unwrap();
    let id = format!("inv-{key}");
    match (request["terminalId"].as_str().unwrap(), earlier) {
        ("T-BAD", _) => Some((
            400,
            vec![],
            r#"{"error":{"code":"validation_failed","message":"items[0].quantity must be > 0","details":[]}}"#.to_owned(),
        )),
        ("T-RETRY", 0) => Some((
            503,
            vec![("Retry-After", "1".to_owned())],
            r#"{"error":{"code":"unavailable","message":"broker down"}}"#.to_owned(),
        )),
        ("T-LOST", 0) => None,
        ("T-LOST", _) => Some((200, vec![("Idempotent-Replayed", "true".to_owned())], invoice(&id, key, "PROCESSING"))),
        _ => Some((202, vec![("Location", format!("/invoices/{id}"))], invoice(&id, key, "QUEUED"))),
    }
}

fn outbox_with(db: &TempDb, terminals: &[&str]) -> (SharedOutbox, Vec<String>) {
    let mut outbox = Outbox::open(&db.0).unwrap();
    let keys = terminals
        .iter()
        .map(|t| {
            outbox
                .enqueue(&body(t), chrono::Utc::now())
                .unwrap()
                .key
                .to_string()
        })
        .collect();
    (SharedOutbox::new(outbox), keys)
}

#[tokio::test]
async fn sync_delivers_everything_once_honours_retry_after_and_keeps_the_rejected() {
    let ingress = FakeIngress::start(the_shop_script).await;
    let db = TempDb::new();
    let (outbox, keys) = outbox_with(&db, &["T-BAD", "T-RETRY", "T-OK", "T-LOST"]);
    let client = Client::new(&ingress.url, Token::new("test-token")).unwrap();
    let options = SyncOptions {
        timeout: Duration::from_secs(20),
        settle: Duration::ZERO,
    };

    let started = Instant::now();
    let report = pos_terminal::sync(&client, &outbox, None, options)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // exit status logic: nothing pending → 0, even with a rejected entry
    assert_eq!(report.counts.pending, 0);
    assert_eq!(report.counts.acknowledged, 3);
    assert_eq!(report.counts.rejected, 1);
    assert_eq!(sync_exit(&report), Exit::Ok);

    // Retry-After honoured, with the same key and byte-identical body
    let retry = ingress.posts_for("T-RETRY");
    assert_eq!(retry.len(), 2);
    assert!(
        retry[1].at - retry[0].at >= Duration::from_secs(1),
        "retried after {:?}",
        retry[1].at - retry[0].at
    );
    assert_eq!(retry[0].body, retry[1].body);
    assert_eq!(retry[0].json()["idempotencyKey"], keys[1].as_str());

    // neither the rejected entry nor the one waiting out Retry-After held the others up
    let ok = ingress.posts_for("T-OK");
    assert_eq!(ok.len(), 1);
    assert!(ok[0].at < retry[1].at);
    assert_eq!(
        ingress.posts_for("T-BAD").len(),
        1,
        "a rejected entry is never resent"
    );

    // a lost answer is retried with the same body and the replay acknowledges it
    let lost = ingress.posts_for("T-LOST");
    assert_eq!(lost.len(), 2);
    assert_eq!(lost[0].body, lost[1].body);

    for post in ingress.seen() {
        assert_eq!(post.authorization.as_deref(), Some("Bearer test-token"));
        if post.method == "POST" {
            assert_eq!(post.path, "/invoices");
            assert_eq!(post.content_type.as_deref(), Some("application/json"));
        }
    }

    let status = outbox.call(|o| o.status()).await.unwrap();
    let by_key = |key: &str| {
        status
            .invoices
            .iter()
            .find(|i| i.key == key)
            .unwrap()
            .clone()
    };
    let bad = by_key(&keys[0]);
    assert_eq!(
        (bad.sync, bad.state.as_deref()),
        (SyncStatus::Rejected, Some("rejected"))
    );
    assert_eq!(bad.error.as_ref().unwrap()["code"], "validation_failed");
    assert_eq!(bad.invoice_id, None);
    for key in &keys[1..] {
        let entry = by_key(key);
        assert_eq!(entry.sync, SyncStatus::Acknowledged, "{key}");
        assert_eq!(entry.invoice_id, Some(format!("inv-{key}")));
        // the settle phase found them unsettled and asked GET /invoices/{id}
        assert_eq!(entry.state.as_deref(), Some("COMPLETED"), "{key}");
    }
    assert_eq!(report.counts.completed, 3);
    assert!(
        status.clock_offset_ms.is_some(),
        "the Date header was recorded"
    );

    // a second run has nothing left to send
    let again = pos_terminal::sync(&client, &outbox, None, options)
        .await
        .unwrap();
    assert_eq!(again.attempts, 0);
    assert_eq!(
        ingress.seen().iter().filter(|s| s.method == "POST").count(),
        6
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_run_and_keeps_everything_pending() {
    let ingress = FakeIngress::start(|_, _| {
        Some((
            401,
            vec![],
            r#"{"error":{"code":"unauthorized","message":"expired"}}"#.to_owned(),
        ))
    })
    .await;
    let db = TempDb::new();
    let (outbox, _) = outbox_with(&db, &["T7", "T7"]);
    let client = Client::new(&ingress.url, Token::new("expired")).unwrap();

    let outcome = pos_terminal::sync(&client, &outbox, None, SyncOptions::default()).await;
    assert!(
        matches!(
            outcome,
            Err(SyncError::AuthFailed {
                status: 401,
                pending: 2
            })
        ),
        "{outcome:?}"
    );
    let entries = outbox.call(|o| o.entries()).await.unwrap();
    assert!(entries
        .iter()
        .all(|e| e.sync == SyncStatus::Pending && e.attempts == 0));
}

#[tokio::test]
async fn an_unreachable_ingress_leaves_the_entry_pending_without_busy_looping() {
    let ingress = FakeIngress::start(|_, _| {
        Some((
            503,
            vec![],
            r#"{"error":{"code":"unavailable","message":"x"},"outcome":"unknown"}"#.to_owned(),
        ))
    })
    .await;
    let db = TempDb::new();
    let (outbox, _) = outbox_with(&db, &["T7"]);
    let client = Client::new(&ingress.url, Token::new("t")).unwrap();
    let options = SyncOptions {
        timeout: Duration::from_millis(1500),
        settle: Duration::from_secs(10),
    };

    let started = Instant::now();
    let report = pos_terminal::sync(&client, &outbox, None, options)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(report.counts.pending, 1);
    assert_eq!(sync_exit(&report), Exit::Pending);
    // backoff 0.5 s, 1 s, 2 s … with jitter: a handful of attempts, never a storm
    let posts = ingress.seen().len();
    assert!((1..=8).contains(&posts), "{posts} attempts in 1.5 s");
    let entry = &outbox.call(|o| o.entries()).await.unwrap()[0];
    assert_eq!(entry.last_status, Some(503));
    let offset = outbox.call(|o| o.clock_offset_ms()).await.unwrap();
    assert!(
        offset.is_some(),
        "the Date header of a POST answer was recorded"
    );
    assert_eq!(usize::try_from(entry.attempts).unwrap(), report.attempts);
}

#[tokio::test]
async fn with_the_watcher_the_states_arrive_over_the_socket_before_sync_ends() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    // Every 202 is announced to the fake fanout, which pushes QUEUED then COMPLETED.
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let ingress = FakeIngress::start(move |seen, _| {
        if seen.method == "GET" {
            // The settle phase must not need this: answer something unusable.
            return Some((
                500,
                vec![],
                r#"{"error":{"code":"internal","message":"x"}}"#.to_owned(),
            ));
        }
        let key = seen.json()["idempotencyKey"].as_str().unwrap().to_owned();
        let id = format!("inv-{key}");
        accepted_tx.send((key.clone(), id.clone())).unwrap();
        Some((202, vec![], invoice(&id, &key, "QUEUED")))
    })
    .await;

    let fanout = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}/ws", fanout.local_addr().unwrap());
    let connected_at = Arc::new(Mutex::new(None::<Instant>));
    let connected = Arc::clone(&connected_at);
    tokio::spawn(async move {
        let (stream, _) = fanout.accept().await.unwrap();
        // A slow handshake: sync must wait for it before its first POST.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        *connected.lock().unwrap() = Some(Instant::now());
        let mut seq = 100;
        while let Some((key, id)) = accepted.recv().await {
            for state in ["QUEUED", "COMPLETED"] {
                if state == "COMPLETED" {
                    // Processing takes a while: the settle phase must wait for it.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                seq += 1;
                let frame = serde_json::json!({
                    "type": "invoice.state", "seq": seq, "invoiceId": id, "state": state,
                    "invoice": { "id": id, "idempotencyKey": key, "state": state, "replays": 0 }
                });
                socket.send(Message::text(frame.to_string())).await.unwrap();
            }
        }
        while socket.next().await.is_some() {}
    });

    let db = TempDb::new();
    let (outbox, keys) = outbox_with(&db, &["T1", "T1", "T1"]);
    let client = Client::new(&ingress.url, Token::new("t")).unwrap();
    let watcher = pos_terminal::Watcher::new(&ws_url, Token::new("t"), outbox.clone(), None);
    let options = SyncOptions {
        timeout: Duration::from_secs(20),
        settle: Duration::from_secs(10),
    };
    let started = Instant::now();
    let report = pos_terminal::sync(&client, &outbox, Some(watcher), options)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.counts.completed, 3, "{:?}", report.counts);

    let first_post = ingress.seen().iter().map(|s| s.at).min().unwrap();
    let connected = connected_at.lock().unwrap().expect("the watcher connected");
    assert!(connected < first_post, "the watcher had its head start");
    assert!(
        ingress.seen().iter().all(|s| s.method == "POST"),
        "no GET was needed"
    );
    let status = outbox.call(|o| o.status()).await.unwrap();
    assert_eq!(status.last_seq, Some(106));
    for (local, key) in status.invoices.iter().zip(&keys) {
        assert_eq!(local.state.as_deref(), Some("COMPLETED"));
        assert_eq!(local.invoice_id, Some(format!("inv-{key}")));
    }
}
