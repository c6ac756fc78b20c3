//! The WebSocket gateway end to end (contract § WebSocket): real ingress, processor and
//! persister in-process, fanout as its real binary on the same namespace, real NATS,
//! Redis and MongoDB. Clients are `tokio-tungstenite` sockets.

use crate::support::{
    invoice_body,
    stack::{next_frame, token, Api, Fanout, Received, Ws},
    unique, TestStack,
};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// The longest a single expected frame may take (a whole invoice lifecycle included).
const FRAME_WAIT: Duration = Duration::from_secs(20);
/// How long a socket must stay silent to count as "received nothing more".
const QUIET: Duration = Duration::from_millis(750);
/// Events per successfully processed invoice: QUEUED, PROCESSING, COMPLETED.
const LIFECYCLE: [&str; 3] = ["QUEUED", "PROCESSING", "COMPLETED"];

/// The contract's frame fields, no more, no fewer.
const FRAME_FIELDS: [&str; 8] = [
    "at",
    "invoice",
    "invoiceId",
    "seq",
    "state",
    "tenantId",
    "terminalId",
    "type",
];

fn seq(frame: &Value) -> u64 {
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq is not a whole number: {frame}"))
}

fn invoice_id(frame: &Value) -> String {
    frame["invoiceId"].as_str().unwrap().to_owned()
}

/// Checks one `invoice.state` frame against the contract: exactly its fields, of
/// `tenant` (and of `terminal` if given), consistent with the invoice it carries.
fn check_frame(frame: &Value, tenant: &str, terminal: Option<&str>) {
    let keys: BTreeSet<&str> = frame
        .as_object()
        .unwrap_or_else(|| panic!("a frame that is not an object: {frame}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        FRAME_FIELDS.into_iter().collect(),
        "frame fields: {frame}"
    );
    assert_eq!(frame["type"], "invoice.state", "{frame}");
    seq(frame);
    assert_eq!(frame["tenantId"], tenant, "another tenant's event: {frame}");
    if let Some(t) = terminal {
        assert_eq!(frame["terminalId"], t, "another terminal's event: {frame}");
    }
    let state = frame["state"].as_str().unwrap();
    assert!(
        ["QUEUED", "PROCESSING", "COMPLETED", "FAILED"].contains(&state),
        "{frame}"
    );
    let at = frame["at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("at {at:?}: {e}"));
    let invoice = &frame["invoice"];
    assert_eq!(invoice["id"], frame["invoiceId"], "{frame}");
    assert_eq!(invoice["tenantId"], frame["tenantId"], "{frame}");
    assert_eq!(invoice["terminalId"], frame["terminalId"], "{frame}");
    assert_eq!(invoice["state"], frame["state"], "{frame}");
    assert_eq!(
        invoice["updatedAt"], frame["at"],
        "at is when the state was reached: {frame}"
    );
    if state == "COMPLETED" {
        assert_eq!(invoice["totals"]["total"], "7.70", "{frame}");
    }
}

/// Reads exactly `n` `invoice.state` frames; panics on a close, another kind of frame,
/// or silence longer than [`FRAME_WAIT`].
async fn events(ws: &mut Ws, n: usize, what: &str) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match next_frame(ws, FRAME_WAIT).await {
            Some(Received::Frame(f)) if f["type"] == "invoice.state" => got.push(f),
            Some(other) => panic!(
                "{what}: after {} of {n} events, unexpected {other:?}",
                got.len()
            ),
            None => panic!(
                "{what}: only {} of {n} events within {FRAME_WAIT:?} of the last one; last seq {:?}",
                got.len(),
                got.last().map(seq)
            ),
        }
    }
    got
}

/// Nothing more arrives (the socket stays open and silent for [`QUIET`]).
async fn assert_quiet(ws: &mut Ws, what: &str) {
    if let Some(extra) = next_frame(ws, QUIET).await {
        panic!("{what}: expected nothing more, got {extra:?}");
    }
}

fn assert_seq_strictly_increases(frames: &[Value], what: &str) {
    let seqs: Vec<u64> = frames.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{what}: seq must strictly increase: {seqs:?}"
    );
}

/// Per invoice, `state@seq` in the order received.
fn lifecycles(frames: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut by_invoice: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in frames {
        by_invoice.entry(invoice_id(f)).or_default().push(format!(
            "{}@{}",
            f["state"].as_str().unwrap(),
            seq(f)
        ));
    }
    by_invoice
}

fn states_only(lifecycle: &[String]) -> Vec<&str> {
    lifecycle
        .iter()
        .map(|s| s.split('@').next().unwrap())
        .collect()
}

/// Every one of `ids`, and nothing else, went QUEUED → PROCESSING → COMPLETED, each
/// state once, in this order.
fn assert_lifecycles_in_order(frames: &[Value], ids: &[String], what: &str) {
    let got = lifecycles(frames);
    let wanted: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        wanted,
        "{what}: the invoices whose events arrived"
    );
    let wrong: BTreeMap<&String, &Vec<String>> = got
        .iter()
        .filter(|(_, states)| states_only(states) != LIFECYCLE)
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} invoices did not arrive as QUEUED → PROCESSING → COMPLETED \
         (state@seq in arrival order): {wrong:#?}",
        wrong.len(),
        got.len()
    );
}

/// Every one of `ids`, and nothing else, has its three states, each once (in whatever
/// order: for tests about delivery, not about the pipeline's ordering).
fn assert_all_states_once(frames: &[Value], ids: &[String], what: &str) {
    let got = lifecycles(frames);
    let wanted: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        wanted,
        "{what}: the invoices whose events arrived"
    );
    let wrong: BTreeMap<&String, &Vec<String>> = got
        .iter()
        .filter(|(_, states)| {
            let mut s = states_only(states);
            s.sort_unstable();
            s != ["COMPLETED", "PROCESSING", "QUEUED"]
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: invoices without exactly QUEUED, PROCESSING and COMPLETED once each \
         (state@seq): {wrong:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_socket_with_1001_and_its_resume_point_then_exits_0() {
    let stack = TestStack::start().await;
    let mut fanout = stack.start_fanout(&[]).await;
    let mut all = fanout.connect(&stack.api.tenant, "").await;
    let mut narrowed = fanout.connect(&stack.api.tenant, "terminalId=T0").await;
    let last = warm_up(&stack.api, &mut [&mut all, &mut narrowed]).await;

    let exit = fanout.terminate(Duration::from_secs(15)).await;
    for (ws, what) in [(&mut all, "all terminals"), (&mut narrowed, "terminal T0")] {
        assert_eq!(
            next_frame(ws, FRAME_WAIT).await,
            Some(Received::Closed(Some((
                1001,
                format!("server shutting down; reconnect with since={last}")
            )))),
            "the {what} socket: {}",
            fanout.log()
        );
    }
    let status = exit.expect("fanout exits within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}: {}", fanout.log());
}

/// Posts `n` invoices from `terminal`, four at a time; returns their ids.
async fn post_many(api: &Api, n: usize, terminal: &str) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|_| async move {
            let a = api.post(&invoice_body(Some(&unique("k-")), terminal)).await;
            assert_eq!(a.status, 202, "{}", a.body);
            a.body["id"].as_str().unwrap().to_owned()
        })
        .buffered(4)
        .collect()
        .await
}

/// Posts one invoice and waits until every socket got its COMPLETED event: the
/// tenant's live feed is running on each socket's instance from then on. (A tenant's
/// first socket can miss events stored right after its upgrade; tests about other
/// things start after this, the race has its own test.) Returns the COMPLETED event's
/// seq, the last one each socket got.
async fn warm_up(api: &Api, sockets: &mut [&mut Ws]) -> u64 {
    let id = post_many(api, 1, "T0").await.remove(0);
    let mut completed = 0;
    for ws in sockets.iter_mut() {
        loop {
            match next_frame(ws, FRAME_WAIT).await {
                Some(Received::Frame(f)) if f["invoiceId"] == id.as_str() => {
                    if f["state"] == "COMPLETED" {
                        completed = seq(&f);
                        break;
                    }
                }
                other => panic!("warm-up invoice {id}: unexpected {other:?}"),
            }
        }
    }
    completed
}

async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    // Read until the server's answer (or the end), so the close is complete.
    while let Some(Received::Frame(_)) = next_frame(&mut ws, Duration::from_secs(5)).await {}
}

/// The HTTP status of a refused upgrade (and its body, if any came with it).
async fn refused_upgrade(request: impl IntoClientRequest + Unpin) -> (u16, String) {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the upgrade was accepted; expected an HTTP refusal"),
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

async fn metric(fanout: &Fanout, name: &str) -> u64 {
    let m = fanout.metrics().await;
    m[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in /metrics: {m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_socket_receives_exactly_its_tenants_events_in_lifecycle_order_with_contract_fields() {
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    let a = &stack.api;
    let b = stack.api_for(&unique("shop"));

    // Tenant A: one socket per terminal (narrowed with ?terminalId=) and one for all of
    // them; tenant B: one socket, whose terminal ids overlap A's.
    let mut a_t1 = fanout.connect(&a.tenant, "terminalId=T1").await;
    let mut a_t2 = fanout.connect(&a.tenant, "terminalId=T2").await;
    let mut a_all = fanout.connect(&a.tenant, "").await;
    let mut b_all = fanout.connect(&b.tenant, "").await;
    // (Its terminal, T0, is outside both filters.)
    warm_up(a, &mut [&mut a_all]).await;
    warm_up(&b, &mut [&mut b_all]).await;

    let (a1, a2, b1, b3) = tokio::join!(
        post_many(a, 3, "T1"),
        post_many(a, 3, "T2"),
        post_many(&b, 3, "T1"),
        post_many(&b, 2, "T3"),
    );

    let got_a_t1 = events(&mut a_t1, 9, "tenant A, terminal T1").await;
    let got_a_t2 = events(&mut a_t2, 9, "tenant A, terminal T2").await;
    let got_a_all = events(&mut a_all, 18, "tenant A, all terminals").await;
    let got_b_all = events(&mut b_all, 15, "tenant B").await;

    for (frames, tenant, terminal, ids, what) in [
        (&got_a_t1, &a.tenant, Some("T1"), a1.clone(), "A/T1"),
        (&got_a_t2, &a.tenant, Some("T2"), a2.clone(), "A/T2"),
        (&got_a_all, &a.tenant, None, [a1, a2].concat(), "A/all"),
        (&got_b_all, &b.tenant, None, [b1, b3].concat(), "B/all"),
    ] {
        for f in frames {
            check_frame(f, tenant, terminal);
        }
        assert_seq_strictly_increases(frames, what);
        assert_lifecycles_in_order(frames, &ids, what);
    }
    // The narrowed sockets got exactly their share of the tenant's feed.
    let mut merged: Vec<Value> = [got_a_t1, got_a_t2].concat();
    merged.sort_by_key(seq);
    assert_eq!(merged, got_a_all, "T1 + T2 sockets = the unfiltered socket");

    tokio::join!(
        assert_quiet(&mut a_t1, "A/T1"),
        assert_quiet(&mut a_t2, "A/T2"),
        assert_quiet(&mut a_all, "A/all"),
        assert_quiet(&mut b_all, "B/all"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_reconnecting_with_since_gets_exactly_what_it_missed_then_live_events() {
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    let api = &stack.api;
    let tenant = api.tenant.clone();

    // The watcher stays connected throughout: the reference of what happened.
    let mut watcher = fanout.connect(&tenant, "").await;
    let mut terminal = fanout.connect(&tenant, "").await;
    warm_up(api, &mut [&mut watcher, &mut terminal]).await;
    let first = post_many(api, 5, "T1").await;
    let mut seen_by_watcher = events(&mut watcher, 15, "watcher, before").await;
    let before = events(&mut terminal, 15, "terminal, before").await;
    assert_eq!(before, seen_by_watcher);
    assert_all_states_once(&before, &first, "terminal, before");
    let last_seen = seq(before.last().unwrap());
    close(terminal).await;

    // 50 invoices while the terminal is away.
    let missed = post_many(api, 50, "T1").await;
    seen_by_watcher.extend(events(&mut watcher, 150, "watcher, while away").await);

    // More invoices go on being posted while it reconnects and replays: the hand-over
    // from replay to live happens while events flow.
    let during = tokio::spawn({
        let api = api.clone();
        async move { post_many(&api, 6, "T1").await }
    });
    let mut terminal = fanout.connect(&tenant, &format!("since={last_seen}")).await;
    let after = events(&mut terminal, 150 + 18, "terminal, after reconnecting").await;
    let during = during.await.unwrap();
    seen_by_watcher.extend(events(&mut watcher, 18, "watcher, during reconnect").await);

    // Then live events only.
    let live = post_many(api, 3, "T1").await;
    let after_live = events(&mut terminal, 9, "terminal, live").await;
    seen_by_watcher.extend(events(&mut watcher, 9, "watcher, live").await);

    let resumed: Vec<Value> = [after, after_live].concat();
    for f in &resumed {
        check_frame(f, &tenant, None);
    }
    assert_seq_strictly_increases(&resumed, "terminal, after reconnecting");
    assert!(
        seq(&resumed[0]) > last_seen,
        "nothing at or before since={last_seen} is sent again"
    );
    let expected: Vec<Value> = seen_by_watcher
        .iter()
        .filter(|f| seq(f) > last_seen)
        .cloned()
        .collect();
    let expected_seqs: Vec<u64> = expected.iter().map(seq).collect();
    let resumed_seqs: Vec<u64> = resumed.iter().map(seq).collect();
    assert_eq!(
        resumed_seqs, expected_seqs,
        "exactly the events after since, no gap, no duplicate"
    );
    assert_eq!(resumed, expected, "the same frames the watcher got");
    assert_all_states_once(
        &resumed,
        &[missed, during, live].concat(),
        "terminal, after reconnecting",
    );
    assert_quiet(&mut terminal, "terminal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_a_valid_token_get_401_and_a_tenant_never_receives_anothers_events() {
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    let a = &stack.api;
    let b = stack.api_for(&unique("shop"));

    let forged = auth::sign(
        "another-secret-0123456789abcdef",
        &auth::Claims {
            sub: "T1".into(),
            tenant: domain::TenantId::parse(a.tenant.as_str()).unwrap(),
            role: auth::Role::Terminal,
            exp: chrono::Utc::now().timestamp() + 3600,
        },
    );
    let expired = token(&a.tenant, -3600);
    let cases = [
        ("no token", fanout.bare_ws_url("")),
        ("an empty token", fanout.bare_ws_url("token=")),
        (
            "a malformed token",
            fanout.ws_url_with_token("not-a-jwt", ""),
        ),
        (
            "a token signed with another secret",
            fanout.ws_url_with_token(&forged, ""),
        ),
        ("an expired token", fanout.ws_url_with_token(&expired, "")),
    ];
    for (what, url) in cases {
        let (status, body) = refused_upgrade(url.as_str()).await;
        assert_eq!(status, 401, "{what}: {body}");
        // The same URL as plain HTTP: the contract's error body, read in full.
        let plain = reqwest::get(url.replacen("ws://", "http://", 1))
            .await
            .unwrap();
        assert_eq!(plain.status(), 401, "{what}");
        let error: Value = plain.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unauthorized", "{what}: {error}");
    }
    for (what, bearer) in [("a forged", &forged), ("an expired", &expired)] {
        let mut request = fanout.bare_ws_url("").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        let (status, body) = refused_upgrade(request).await;
        assert_eq!(
            status, 401,
            "{what} token in the Authorization header: {body}"
        );
    }
    assert_eq!(
        metric(&fanout, "connectedSockets").await,
        0,
        "no refused upgrade left a socket"
    );

    // A valid token in the Authorization header is accepted (contract: query or header).
    let mut request = fanout.bare_ws_url("").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", a.token).parse().unwrap(),
    );
    let (mut a_ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("a valid token in the Authorization header is accepted");
    let mut b_ws = fanout.connect(&b.tenant, "").await;
    warm_up(a, &mut [&mut a_ws]).await;
    warm_up(&b, &mut [&mut b_ws]).await;

    // B posts a lot; B's socket proves the events were pushed.
    let b_ids = post_many(&b, 30, "T1").await;
    let got_b = events(&mut b_ws, 90, "tenant B").await;
    for f in &got_b {
        check_frame(f, &b.tenant, None);
    }
    assert_all_states_once(&got_b, &b_ids, "tenant B");

    // A's socket is alive (it gets A's own invoice) and its first frame is A's: any of
    // B's events leaked to it would have come first.
    let a_ids = post_many(a, 1, "T1").await;
    let got_a = events(&mut a_ws, 3, "tenant A").await;
    for f in &got_a {
        check_frame(f, &a.tenant, None);
    }
    assert_all_states_once(&got_a, &a_ids, "tenant A");
    assert_quiet(&mut a_ws, "tenant A").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_while_a_normal_client_keeps_up() {
    let stack = TestStack::start().await;
    // A small ring (64 frames: with 8, a burst from NATS while the instance is busy
    // overflows the ring of a client that reads everything, see the report). The idle
    // timeout is long, so only slowness can end the slow socket within the deadlines.
    let idle_timeout = Duration::from_secs(60);
    let fanout = stack
        .start_fanout(&[
            ("FANOUT_CLIENT_BUFFER", "64"),
            ("FANOUT_PING_INTERVAL_MS", "20000"),
            ("FANOUT_IDLE_TIMEOUT_MS", "60000"),
        ])
        .await;
    let api = &stack.api;
    let tenant = api.tenant.clone();

    // The slow client: a tiny receive buffer and never a read. The server's writes block
    // once the kernel buffers are full (a few MB on loopback: ~3,000 frames).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(([127, 0, 0, 1], fanout.port).into())
        .await
        .unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        fanout.ws_url(&tenant, ""),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("the slow client connects");
    let slow_since = Instant::now();

    // The normal client reads all the time, on its own task, stamping each frame.
    let mut normal = fanout.connect(&tenant, "").await;
    warm_up(api, &mut [&mut normal]).await;
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let received = next_frame(&mut normal, Duration::from_secs(3600)).await;
            let end = !matches!(received, Some(Received::Frame(_)));
            if frames_tx.send((chrono::Utc::now(), received)).is_err() || end {
                return;
            }
        }
    });

    // Post until the slow client is dropped as slow; 2,500 invoices (7,500 frames,
    // about twice what the kernel buffers hold) is far more than enough.
    let mut ids = Vec::new();
    let mut detected = None;
    while slow_since.elapsed() < Duration::from_secs(45) && ids.len() < 2500 {
        ids.extend(post_many(api, 20, "T1").await);
        if metric(&fanout, "slowClientDisconnects").await >= 1 {
            detected = Some((ids.len(), slow_since.elapsed()));
            break;
        }
    }
    let Some((posted_by_then, elapsed)) = detected else {
        let m = fanout.metrics().await;
        panic!(
            "a client that never reads was not disconnected as slow: {} invoices ({} frames) \
             posted in {:?}; metrics: {m} (connectedSockets 2 = the slow socket is still open)",
            ids.len(),
            ids.len() * 3,
            slow_since.elapsed()
        );
    };
    println!(
        "slow client dropped after {posted_by_then} invoices ({} events), {elapsed:?} after it connected",
        posted_by_then * 3
    );
    assert!(
        elapsed < idle_timeout,
        "dropped for slowness, not by the idle timeout"
    );
    // Life goes on for the normal client.
    ids.extend(post_many(api, 5, "T1").await);

    let expected = ids.len() * 3;
    let mut normal_frames = Vec::new();
    let mut max_lag = chrono::Duration::zero();
    while normal_frames.len() < expected {
        let (at, received) = tokio::time::timeout(FRAME_WAIT, frames_rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the normal client got only {} of {expected} events",
                    normal_frames.len()
                )
            })
            .expect("the normal client's reader ended");
        let frame = match received {
            Some(Received::Frame(f)) => f,
            other => panic!(
                "the normal client's socket ended after {} of {expected} events: {other:?}",
                normal_frames.len()
            ),
        };
        check_frame(&frame, &tenant, None);
        let state_at = chrono::DateTime::parse_from_rfc3339(frame["at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        max_lag = max_lag.max(at - state_at);
        normal_frames.push(frame);
    }
    println!(
        "normal client: {} events, at most {} ms after their state change",
        normal_frames.len(),
        max_lag.num_milliseconds()
    );
    assert_seq_strictly_increases(&normal_frames, "normal client");
    assert_all_states_once(&normal_frames, &ids, "normal client");
    assert!(
        max_lag < chrono::Duration::seconds(3),
        "the normal client was slowed down: an event arrived {} ms after its state change",
        max_lag.num_milliseconds()
    );
    assert!(
        tokio::time::timeout(QUIET, frames_rx.recv()).await.is_err(),
        "the normal client's socket stays open and gets nothing more"
    );

    // Read at last, the slow socket gives what its buffers held, in order, then the
    // close: 4008 with the seq to resume after (the server keeps trying to send it for
    // the idle timeout).
    let mut slow_seqs = Vec::new();
    let ending = loop {
        match next_frame(&mut slow, Duration::from_secs(10)).await {
            Some(Received::Frame(f)) => slow_seqs.push(seq(&f)),
            Some(Received::Closed(close)) => break close,
            None => panic!(
                "the slow socket is still open after being counted as disconnected \
                 ({} frames read)",
                slow_seqs.len()
            ),
        }
    };
    println!(
        "slow client: read {} frames afterwards, then {ending:?}",
        slow_seqs.len()
    );
    let (code, reason) = ending.expect("a close frame, not a dropped connection");
    assert_eq!(code, 4008, "{reason}");
    assert!(slow_seqs.windows(2).all(|w| w[0] < w[1]), "{slow_seqs:?}");
    // A frame whose write the verdict interrupted still leaves after the close's reason
    // was written, so the reason may name one seq before the last frame; never one the
    // client did not get (that would be a gap on resume).
    let since: u64 = reason
        .strip_prefix("slow consumer; reconnect with since=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the close names a resume point: {reason}"));
    assert!(
        slow_seqs.contains(&since),
        "the close names seq {since}, which the client never got (it got {} frames, last {:?})",
        slow_seqs.len(),
        slow_seqs.last()
    );
    assert!(
        slow_seqs.len() < expected,
        "the slow client did not get everything"
    );

    let m = fanout.metrics().await;
    assert_eq!(m["slowClientDisconnects"], 1, "{m}");
    assert_eq!(
        m["connectedSockets"], 1,
        "only the normal client is left: {m}"
    );
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_fanout_instances_each_receive_every_event() {
    let stack = TestStack::start().await;
    let (one, two) = tokio::join!(stack.start_fanout(&[]), stack.start_fanout(&[]));
    let a = &stack.api;
    let b = stack.api_for(&unique("shop"));
    let mut on_one = one.connect(&a.tenant, "").await;
    let mut on_two = two.connect(&a.tenant, "").await;
    let mut b_on_two = two.connect(&b.tenant, "").await;
    warm_up(a, &mut [&mut on_one, &mut on_two]).await;
    warm_up(&b, &mut [&mut b_on_two]).await;

    let (a_ids, b_ids) = tokio::join!(post_many(a, 10, "T1"), post_many(&b, 4, "T2"));
    let got_one = events(&mut on_one, 30, "tenant A on instance 1").await;
    let got_two = events(&mut on_two, 30, "tenant A on instance 2").await;
    let got_b = events(&mut b_on_two, 12, "tenant B on instance 2").await;
    for f in got_one.iter().chain(&got_two) {
        check_frame(f, &a.tenant, None);
    }
    for f in &got_b {
        check_frame(f, &b.tenant, None);
    }
    assert_seq_strictly_increases(&got_one, "instance 1");
    assert_all_states_once(&got_one, &a_ids, "instance 1");
    assert_all_states_once(&got_b, &b_ids, "tenant B on instance 2");
    assert_eq!(got_one, got_two, "both instances push the same frames");
    tokio::join!(
        assert_quiet(&mut on_one, "instance 1"),
        assert_quiet(&mut on_two, "instance 2"),
        assert_quiet(&mut b_on_two, "tenant B"),
    );
    for (fanout, n) in [(&one, 1), (&two, 2)] {
        assert_eq!(
            metric(fanout, "connectedSockets").await,
            n,
            "sockets on instance"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_retention_window_gets_a_resync_frame_first() {
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    let api = &stack.api;
    let tenant = api.tenant.clone();

    let mut ws = fanout.connect(&tenant, "").await;
    warm_up(api, &mut [&mut ws]).await;
    let old = post_many(api, 3, "T1").await;
    let seen = events(&mut ws, 9, "before").await;
    assert_all_states_once(&seen, &old, "before");
    let first_seen = seq(&seen[0]);
    let last_seen = seq(seen.last().unwrap());
    close(ws).await;

    // Two more invoices while away, then retention removes everything up to last_seen:
    // events first_seen+1 ..= last_seen are gone for a client that saw only first_seen.
    let newer = post_many(api, 2, "T1").await;
    for id in &newer {
        api.wait_state(id, "COMPLETED", FRAME_WAIT).await;
    }
    let js = async_nats::jetstream::new(stack.nats().await);
    let mut stream = js
        .get_stream(format!("{}_EVENTS", stack.namespace.to_uppercase()))
        .await
        .unwrap();
    stream
        .purge()
        .filter(format!("{}.events.{tenant}.*", stack.namespace))
        .sequence(last_seen + 1)
        .await
        .unwrap();
    let first_stored = stream.info().await.unwrap().state.first_sequence;
    assert_eq!(
        first_stored,
        last_seen + 1,
        "the purge left the newer events"
    );

    let mut ws = fanout
        .connect(&tenant, &format!("since={first_seen}"))
        .await;
    let resync = match next_frame(&mut ws, FRAME_WAIT).await {
        Some(Received::Frame(f)) => f,
        other => panic!("expected a resync frame, got {other:?}"),
    };
    assert_eq!(resync["type"], "resync", "the first frame: {resync}");
    assert_eq!(resync["firstSeq"], first_stored, "{resync}");
    assert_eq!(
        resync["reason"], "since is older than the retention window",
        "{resync}"
    );
    let keys: BTreeSet<&str> = resync
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["type", "reason", "firstSeq"]),
        "{resync}"
    );

    // Then what is still stored, then live events.
    let replayed = events(&mut ws, 6, "replayed after the resync").await;
    let live = post_many(api, 1, "T1").await;
    let live_frames = events(&mut ws, 3, "live after the resync").await;
    let after: Vec<Value> = [replayed, live_frames].concat();
    for f in &after {
        check_frame(f, &tenant, None);
        assert!(seq(f) >= first_stored, "a purged event was sent: {f}");
    }
    assert_seq_strictly_increases(&after, "after the resync");
    assert_all_states_once(&after, &[newer, live].concat(), "after the resync");
    assert_quiet(&mut ws, "after the resync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_first_socket_receives_every_event_stored_after_its_upgrade() {
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    // Many tenants, forty at a time: each connects its first socket and posts an invoice
    // as soon as the upgrade is answered. Every event of that invoice is stored after the
    // upgrade, so the socket must get all three. Whether a broken gateway loses one
    // depends on timing, so this runs a few rounds (a correct one never does).
    for round in 1..=8 {
        let results: Vec<(String, Vec<String>)> = futures_util::stream::iter(0..120)
            .map(|_| first_socket_then_post(&stack, &fanout))
            .buffer_unordered(40)
            .collect()
            .await;
        let incomplete: Vec<&(String, Vec<String>)> = results
            .iter()
            .filter(|(_, got)| {
                let mut states = states_only(got);
                states.sort_unstable();
                states != ["COMPLETED", "PROCESSING", "QUEUED"]
            })
            .collect();
        assert!(
            incomplete.is_empty(),
            "round {round}: {} of {} first sockets missed events of an invoice posted after \
             their upgrade (invoice, state@seq received in order): {incomplete:#?}",
            incomplete.len(),
            results.len()
        );
    }
}

/// A new tenant's first socket; one invoice posted (without an idempotency key: the
/// shortest way to a stored event) right after the upgrade. Returns the invoice id and
/// `state@seq` of what the socket got within 10 s.
async fn first_socket_then_post(stack: &TestStack, fanout: &Fanout) -> (String, Vec<String>) {
    let api = stack.api_for(&unique("shop"));
    let mut ws = fanout.connect(&api.tenant, "").await;
    let posted = api.post(&invoice_body(None, "T1")).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    let id = posted.body["id"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    while got.len() < 3 {
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Some(Received::Frame(f)) => {
                check_frame(&f, &api.tenant, None);
                assert_eq!(f["invoiceId"], id.as_str(), "{f}");
                got.push(format!("{}@{}", f["state"].as_str().unwrap(), seq(&f)));
            }
            other => {
                got.push(format!("then {other:?}"));
                break;
            }
        }
    }
    (id, got)
}
