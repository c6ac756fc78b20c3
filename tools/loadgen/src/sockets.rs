//! `loadgen sockets`: many concurrent WebSocket connections on one fanout instance.
//!
//! 1. Mint one terminal JWT per tenant (tenant names carry a run id).
//! 2. Read the fanout's RSS (`/proc/PID/status`, when `--fanout-pid` is given), then open
//!    `--sockets` sockets spread round-robin over the tenants, at most
//!    `--connect-concurrency` handshakes at a time; failures are counted, not retried.
//! 3. RSS again, then post `--invoices` invoices at `--rate` per second (round-robin over
//!    the tenants).
//! 4. Every socket has its own reader that keeps, per `invoice.state` frame, the delay
//!    `now − frame.at` (same machine clock) in its own Vec, and the distinct COMPLETED
//!    invoice ids it saw. Wait until every open socket saw the COMPLETED frame of every
//!    accepted invoice of its tenant, or `--wait`; RSS a third time; report.

use crate::{
    cli::SocketsArgs,
    feed::socket_url,
    invoice::{self, Rng},
    stats::{round2, table, Samples},
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    sync::{watch, Semaphore},
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The fields of an `invoice.state` frame this mode needs.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "invoiceId", default)]
    invoice_id: Option<String>,
    #[serde(default)]
    state: Option<&'a str>,
    #[serde(default)]
    at: Option<&'a str>,
}

/// What one socket's reader collected.
#[derive(Default)]
struct Seen {
    delays: Samples,
    frames: u64,
    completed: HashSet<String>,
    closed: Option<String>,
}

#[derive(Default)]
struct Shared {
    /// Distinct (socket, invoice) COMPLETED pairs seen so far, over all sockets.
    completed: AtomicU64,
    frames: AtomicU64,
    closed_early: AtomicU64,
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Soft limit on open files of this process (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn read_socket(
    url: String,
    permits: Arc<Semaphore>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let connected = {
        let _permit = permits.acquire().await;
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url)).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out after 10 s".to_owned()),
        }
    };
    let mut socket = match connected {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return seen;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = socket.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                seen.closed = Some(c.map_or("close".into(), |c| format!("close {}", c.code)));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                seen.closed = Some(e.to_string());
                break;
            }
            None => {
                seen.closed = Some("eof".into());
                break;
            }
        };
        let now = chrono::Utc::now();
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        if frame.kind != "invoice.state" {
            continue;
        }
        seen.frames += 1;
        shared.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = frame
            .at
            .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
        {
            let delay = (now - at.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default();
            seen.delays.record(delay);
        }
        if frame.state == Some("COMPLETED") {
            if let Some(id) = frame.invoice_id {
                if seen.completed.insert(id) {
                    shared.completed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if seen.closed.is_some() && !*stop.borrow() {
        shared.closed_early.fetch_add(1, Ordering::Relaxed);
    }
    seen
}

pub async fn run(args: SocketsArgs) -> Result<(), String> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let exp = chrono::Utc::now().timestamp() + 3600;
    let tenants: Vec<(String, String)> = (0..args.tenants)
        .map(|i| {
            let name = format!("sockets-{run_id}-{i}");
            let token = crate::pipeline::terminal_token(&args.secret, &name, exp);
            (name, token)
        })
        .collect();
    let nofile = open_files_limit();
    if let Some(n) = nofile {
        if n < args.sockets as u64 + 64 {
            eprintln!(
                "loadgen: warning: open-files limit {n} is below {} sockets + headroom; raise it with `ulimit -n`",
                args.sockets
            );
        }
    }

    // 1. sockets
    let rss_before = args.fanout_pid.and_then(rss_kib);
    eprintln!(
        "loadgen: run {run_id}: opening {} sockets over {} tenants on {} ({} handshakes at a time); fanout RSS {} KiB",
        args.sockets,
        args.tenants,
        args.fanout,
        args.connect_concurrency,
        rss_before.map_or("n/a".into(), |r| r.to_string())
    );
    let shared = Arc::new(Shared::default());
    let permits = Arc::new(Semaphore::new(args.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::with_capacity(args.sockets);
    let mut readies = Vec::with_capacity(args.sockets);
    let open_start = Instant::now();
    for i in 0..args.sockets {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        readies.push(ready_rx);
        let url = socket_url(&args.fanout, &tenants[i % args.tenants].1, None);
        readers.push(tokio::spawn(read_socket(
            url,
            permits.clone(),
            ready_tx,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    // open[i]: socket i is up
    let mut open = vec![false; args.sockets];
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for (i, r) in readies.into_iter().enumerate() {
        match r.await {
            Ok(Ok(())) => open[i] = true,
            Ok(Err(e)) => *errors.entry(e).or_default() += 1,
            Err(_) => *errors.entry("task ended".into()).or_default() += 1,
        }
    }
    let open_s = open_start.elapsed().as_secs_f64();
    let opened = open.iter().filter(|o| **o).count();
    let failed = args.sockets - opened;
    // let the server settle its per-connection state before measuring
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = args.fanout_pid.and_then(rss_kib);
    eprintln!(
        "loadgen: {opened} sockets open, {failed} failed in {open_s:.1} s; fanout RSS {} KiB",
        rss_open.map_or("n/a".into(), |r| r.to_string())
    );

    // 2. invoices, round-robin over tenants, at a modest rate
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let accepted: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.tenants).map(|_| AtomicU64::new(0)).collect());
    let post_errors = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut rng = Rng::new(u64::from_str_radix(&run_id, 16).unwrap_or(1));
    let mut posts = tokio::task::JoinSet::new();
    let post_start = Instant::now();
    for n in 0..args.invoices {
        tokio::time::sleep_until(post_start + period * n as u32).await;
        let tenant = n % args.tenants;
        let key = format!("T1-{run_id}-{n}");
        let body = invoice::generate(&mut rng, "T1", &key, false);
        let req = client
            .post(format!("{}/invoices", args.ingress))
            .header("Authorization", format!("Bearer {}", tenants[tenant].1))
            .header("Content-Type", "application/json")
            .body(body);
        let (accepted, post_errors) = (accepted.clone(), post_errors.clone());
        posts.spawn(async move {
            match req.send().await {
                Ok(r) if r.status().as_u16() == 202 || r.status().as_u16() == 200 => {
                    accepted[tenant].fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => {
                    post_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("loadgen: POST /invoices answered {}", r.status());
                }
                Err(e) => {
                    post_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("loadgen: POST /invoices: {e}");
                }
            }
        });
    }
    while posts.join_next().await.is_some() {}
    let posted_s = post_start.elapsed().as_secs_f64();

    // 3. expected COMPLETED frames: every accepted invoice on every open socket of its tenant
    let expected: u64 = open
        .iter()
        .enumerate()
        .filter(|(_, o)| **o)
        .map(|(i, _)| accepted[i % args.tenants].load(Ordering::Relaxed))
        .sum();
    let wait_deadline = Instant::now() + args.wait;
    let mut last_print = Instant::now();
    while shared.completed.load(Ordering::Relaxed) < expected && Instant::now() < wait_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "loadgen: {} of {expected} COMPLETED frames",
                shared.completed.load(Ordering::Relaxed)
            );
        }
    }
    let all_in_s = post_start.elapsed().as_secs_f64();
    let rss_after = args.fanout_pid.and_then(rss_kib);
    let _ = stop_tx.send(true);
    let mut delays = Samples::default();
    let mut frames = 0;
    let mut completed = 0u64;
    let mut closes: std::collections::BTreeMap<String, u64> = Default::default();
    for r in readers {
        if let Ok(mut seen) = r.await {
            delays.append(&mut seen.delays);
            frames += seen.frames;
            completed += seen.completed.len() as u64;
            if let Some(c) = seen.closed {
                *closes.entry(c).or_default() += 1;
            }
        }
    }
    let missing = expected.saturating_sub(completed);
    let latency = delays.summary();
    let accepted_total: u64 = accepted.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    let per_socket = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) if opened > 0 => Some(round2((a as f64 - b as f64) / opened as f64)),
        _ => None,
    };
    let kib_per_socket_open = per_socket(rss_open);
    let kib_per_socket_after = per_socket(rss_after);

    let result = json!({
        "run_id": run_id,
        "mode": "sockets",
        "sockets": args.sockets,
        "tenants": args.tenants,
        "sockets_open": opened,
        "sockets_failed": failed,
        "connect_errors": errors,
        "open_s": round2(open_s),
        "open_files_limit": nofile,
        "invoices": args.invoices,
        "invoices_accepted": accepted_total,
        "post_errors": post_errors.load(Ordering::Relaxed),
        "rate": args.rate,
        "frames": frames,
        "completed_frames": completed,
        "expected_completed_frames": expected,
        "missing": missing,
        "closed_early": shared.closed_early.load(Ordering::Relaxed),
        "all_in_s": round2(all_in_s),
        "delivery_ms": latency.to_json(),
        "fanout_rss_kib": { "before": rss_before, "open": rss_open, "after": rss_after },
        "kib_per_socket": kib_per_socket_open,
        "kib_per_socket_after_invoices": kib_per_socket_after,
    });
    let kib = |v: Option<u64>| v.map_or("n/a".into(), |v| format!("{v} KiB"));
    let rows = vec![
        ("sockets".to_owned(), format!("{opened} open, {failed} failed of {} over {} tenants, opened in {open_s:.1} s (open-files limit {})", args.sockets, args.tenants, nofile.map_or("?".into(), |n| n.to_string()))),
        ("connect errors".to_owned(), if errors.is_empty() { "none".into() } else { format!("{errors:?}") }),
        ("invoices".to_owned(), format!("{accepted_total} accepted of {} posted at {}/s in {posted_s:.1} s; {} errors", args.invoices, args.rate, post_errors.load(Ordering::Relaxed))),
        ("frames".to_owned(), format!("{frames} invoice.state frames; COMPLETED {completed} of {expected} expected, {missing} missing; all in {all_in_s:.1} s after the first POST")),
        ("delivery latency".to_owned(), latency.line()),
        ("closed early".to_owned(), format!("{} sockets (closes at the end: {closes:?})", shared.closed_early.load(Ordering::Relaxed))),
        ("fanout RSS".to_owned(), format!("before {}, all open {}, after invoices {}", kib(rss_before), kib(rss_open), kib(rss_after))),
        ("memory per socket".to_owned(), match (kib_per_socket_open, kib_per_socket_after) {
            (Some(a), Some(b)) => format!("{a:.2} KiB (all open), {b:.2} KiB (after invoices)"),
            _ => "n/a (no --fanout-pid)".into(),
        }),
    ];
    let text = table("loadgen sockets", &rows);
    if args.json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    println!("{result}");
    Ok(())
}
