//! `loadgen pipeline`: invoices in through ingress, COMPLETED frames out of fanout.
//!
//! 1. Mint one terminal JWT per tenant (tenant names carry a run id, so frames of an
//!    earlier run can never be mistaken for ours).
//! 2. Open every socket first (one per tenant per fanout URL) and wait until all are up.
//! 3. Post invoices, closed loop (C workers: post, await, repeat) or open loop (sends
//!    scheduled at a fixed rate; latency counts from the scheduled instant, so a stalled
//!    server shows as queueing instead of hiding it — no coordinated omission).
//! 4. Stop sending, wait for answers in flight, then up to `--drain` for the frames still
//!    outstanding.
//! 5. Frames come from the event log, ahead of the system of record: poll
//!    `GET /invoices?state=COMPLETED` per tenant until MongoDB lists every completed
//!    invoice (up to `--persist-wait`), so a persister that falls behind shows as a lag
//!    instead of passing unnoticed. Then report.

use crate::{
    cli::{Mode, PipelineArgs},
    feed::{self, Tracker},
    invoice::{self, Rng},
    stats::{round2, table, Samples},
};
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Accepted requests kept as candidates for a duplicate resend.
const REPLAY_POOL: usize = 4096;

struct Tenant {
    name: String,
    bearer: String,
    token: String,
}

/// An accepted request that may be sent again, byte for byte.
#[derive(Clone)]
struct Sent {
    tenant: usize,
    body: Arc<String>,
    id: String,
}

enum Job {
    New { tenant: usize, body: String },
    Replay(Sent),
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    in_flight: AtomicUsize,
    errors: AtomicU64,
    replays_sent: AtomicU64,
    replays_ok: AtomicU64,
    /// A replay answered with another invoice id (or a 202: a second invoice).
    key_id_mismatch: AtomicU64,
}

/// Everything the request tasks share.
struct Run {
    args: PipelineArgs,
    id: String,
    client: reqwest::Client,
    tenants: Vec<Tenant>,
    tracker: Arc<Tracker>,
    counters: Counters,
    /// Keys are `<terminal>-<run>-<n>`: unique per tenant within and across runs.
    next_key: AtomicU64,
    next_ingress: AtomicUsize,
    pool: Mutex<Vec<Sent>>,
    accept: Mutex<Samples>,
    replay: Mutex<Samples>,
    errors_by_status: Mutex<BTreeMap<String, u64>>,
    errors_by_code: Mutex<BTreeMap<String, u64>>,
    accepted_in_window: AtomicU64,
    window: (Instant, Instant),
    stop: AtomicBool,
}

impl Run {
    fn measured(&self, t: Instant) -> bool {
        t >= self.window.0 && t < self.window.1
    }

    fn error(&self, status: impl Into<String>, code: Option<String>) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.errors_by_status.lock() {
            *m.entry(status.into()).or_default() += 1;
        }
        if let Some(code) = code {
            if let Ok(mut m) = self.errors_by_code.lock() {
                *m.entry(code).or_default() += 1;
            }
        }
    }

    fn next_job(&self, rng: &mut Rng) -> Job {
        if rng.chance(self.args.dup_share) {
            let pool = self
                .pool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !pool.is_empty() {
                return Job::Replay(rng.pick(&pool).clone());
            }
        }
        let tenant = rng.below(self.tenants.len() as u64) as usize;
        let terminal = format!("T{}", 1 + rng.below(self.args.terminals as u64));
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        let key = format!("{terminal}-{}-{n}", self.id);
        Job::New {
            tenant,
            body: invoice::generate(rng, &terminal, &key, self.args.sku_lines),
        }
    }

    fn remember(&self, rng: &mut Rng, sent: Sent) {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < REPLAY_POOL {
            pool.push(sent);
        } else {
            let slot = rng.below(REPLAY_POOL as u64) as usize;
            pool[slot] = sent;
        }
    }

    /// Sends one request; latency counts from `scheduled`.
    async fn post(&self, job: Job, scheduled: Instant, rng: &mut Rng) {
        let (tenant, body, replay_of) = match job {
            Job::New { tenant, body } => (tenant, Arc::new(body), None),
            Job::Replay(s) => {
                self.counters.replays_sent.fetch_add(1, Ordering::Relaxed);
                (s.tenant, s.body, Some(s.id))
            }
        };
        let base = &self.args.ingress
            [self.next_ingress.fetch_add(1, Ordering::Relaxed) % self.args.ingress.len()];
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self
            .client
            .post(format!("{base}/invoices"))
            .header("Authorization", &self.tenants[tenant].bearer)
            .header("Content-Type", "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                self.error(kind, None);
                return;
            }
        };
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let text = response.bytes().await;
        let answered = Instant::now();
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        let measured = self.measured(scheduled);
        let Ok(text) = text else {
            self.error("transport", None);
            return;
        };
        let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        let id = value["id"].as_str().map(str::to_owned);
        match (status, id) {
            (202, Some(id)) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                if measured {
                    self.accepted_in_window.fetch_add(1, Ordering::Relaxed);
                    self.accept
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .record(answered - scheduled);
                }
                self.tracker.accepted(id.clone(), scheduled, measured);
                if replay_of.is_some() {
                    // the same key and body made a second invoice
                    self.counters
                        .key_id_mismatch
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    self.remember(rng, Sent { tenant, body, id });
                }
            }
            (200, Some(id)) if replay_of.is_some() => {
                if replay_of.as_deref() == Some(id.as_str()) && replayed {
                    self.counters.replays_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters
                        .key_id_mismatch
                        .fetch_add(1, Ordering::Relaxed);
                }
                if measured {
                    self.replay
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .record(answered - scheduled);
                }
            }
            (status, _) => {
                let code = value["error"]["code"]
                    .as_str()
                    .map(|c| format!("{status} {c}"));
                self.error(status.to_string(), code);
            }
        }
    }
}

/// `tenant` as the id a token carries; loadgen makes its tenant names, so a bad one is
/// a bug here.
fn tenant_id(tenant: &str) -> domain::TenantId {
    domain::TenantId::parse(tenant).unwrap_or_else(|e| panic!("tenant name {tenant:?}: {e}"))
}

/// A terminal's JWT for `tenant`, valid until `exp` (Unix seconds).
pub(crate) fn terminal_token(secret: &str, tenant: &str, exp: i64) -> String {
    auth::sign(
        secret,
        &auth::Claims {
            sub: "loadgen".into(),
            tenant: tenant_id(tenant),
            role: auth::Role::Terminal,
            exp,
        },
    )
}

fn mint_tenants(args: &PipelineArgs, run_id: &str) -> Vec<Tenant> {
    let exp = chrono::Utc::now().timestamp() + 3600;
    (0..args.tenants)
        .map(|i| {
            let name = format!("bench-{run_id}-{i}");
            let token = terminal_token(&args.secret, &name, exp);
            Tenant {
                bearer: format!("Bearer {token}"),
                name,
                token,
            }
        })
        .collect()
}

/// `--sku-lines`: every article into every tenant's catalog, as a manager.
async fn write_catalogs(args: &PipelineArgs, tenants: &[Tenant]) -> Result<(), String> {
    let client = reqwest::Client::new();
    let exp = chrono::Utc::now().timestamp() + 3600;
    let base = args.ingress.first().ok_or("no --ingress URL")?;
    for tenant in tenants {
        let token = auth::sign(
            &args.secret,
            &auth::Claims {
                sub: "loadgen-manager".into(),
                tenant: tenant_id(&tenant.name),
                role: auth::Role::Manager,
                exp,
            },
        );
        for (sku, body) in invoice::catalog() {
            let r = client
                .put(format!("{base}/products/{sku}"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("writing the catalog: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("writing the catalog: {} for {sku}", r.status()));
            }
        }
    }
    Ok(())
}

pub async fn run(args: PipelineArgs) -> Result<(), String> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tenants = mint_tenants(&args, &run_id);
    if args.sku_lines {
        write_catalogs(&args, &tenants).await?;
    }
    let cpu_at_start = crate::stats::own_cpu_seconds();

    // 1. sockets first, so that no frame of our invoices can be missed
    eprintln!(
        "loadgen: run {run_id}: opening {} sockets ({} tenants × {} fanout URLs), tenants {}…",
        tenants.len() * args.fanout.len(),
        tenants.len(),
        args.fanout.len(),
        tenants[0].name
    );
    let tracker = Arc::new(Tracker::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sockets = Vec::new();
    let mut readies = Vec::new();
    for t in &tenants {
        for f in &args.fanout {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            readies.push(ready_rx);
            sockets.push(tokio::spawn(feed::watch_socket(
                f.clone(),
                t.token.clone(),
                tracker.clone(),
                ready_tx,
                stop_rx.clone(),
            )));
        }
    }
    for r in readies {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                return Err(format!("WebSocket connect failed: {e}"));
            }
            Err(_) => return Err("a socket task ended before connecting".into()),
        }
    }

    // 2. load
    let client = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let start = Instant::now();
    let window = (start + args.warmup, start + args.warmup + args.duration);
    tracker.set_window(window);
    let run = Arc::new(Run {
        id: run_id.clone(),
        client,
        tenants,
        tracker: tracker.clone(),
        counters: Counters::default(),
        next_key: AtomicU64::new(0),
        next_ingress: AtomicUsize::new(0),
        pool: Mutex::new(Vec::with_capacity(REPLAY_POOL)),
        accept: Mutex::default(),
        replay: Mutex::default(),
        errors_by_status: Mutex::default(),
        errors_by_code: Mutex::default(),
        accepted_in_window: AtomicU64::new(0),
        window,
        stop: AtomicBool::new(false),
        args,
    });
    {
        let run = run.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nloadgen: interrupted; stopping the load and reporting");
                run.stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let progress = tokio::spawn(progress(run.clone(), start));
    let seed = u64::from_str_radix(&run_id, 16).unwrap_or(1);
    match run.args.mode {
        Mode::Closed => closed_loop(&run, seed).await,
        Mode::Open => open_loop(&run, seed).await,
    }
    let load_end = Instant::now();
    tracker.end_window(load_end);

    // 3. answers in flight, then the frames still outstanding
    let deadline = Instant::now() + HTTP_TIMEOUT + Duration::from_secs(1);
    while run.counters.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // after Ctrl-C: report promptly with what is in
    let interrupted = run.stop.load(Ordering::Relaxed);
    let drain = if interrupted {
        run.args.drain.min(Duration::from_secs(2))
    } else {
        run.args.drain
    };
    let drain_deadline = Instant::now() + drain;
    while tracker.awaiting() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.abort();
    let _ = stop_tx.send(true);
    for s in sockets {
        let _ = s.await;
    }
    let persisted = if interrupted || run.args.persist_wait.is_zero() {
        None
    } else {
        Some(persisted(&run, load_end).await)
    };
    let measured_for = load_end
        .min(window.1)
        .saturating_duration_since(window.0)
        .max(Duration::from_millis(1));
    let cpu = match (cpu_at_start, crate::stats::own_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a, start.elapsed().as_secs_f64())),
        _ => None,
    };
    report(&run, measured_for, cpu, persisted);
    Ok(())
}

/// How far the system of record (read through the list API) is behind the frames.
#[derive(Debug)]
struct Persisted {
    /// Invoices whose COMPLETED frame arrived.
    expected: u64,
    /// Listed as COMPLETED right after the frames were in.
    at_drain: Option<u64>,
    /// Listed as COMPLETED at the end of the wait.
    last: Option<u64>,
    /// Seconds after the load stopped when the listing caught up.
    caught_up_s: Option<f64>,
    error: Option<String>,
}

/// Sum over the tenants of `total` in `GET /invoices?state=COMPLETED&limit=1`.
async fn listed_completed(run: &Run) -> Result<u64, String> {
    let base = &run.args.ingress[0];
    let mut sum = 0;
    for t in &run.tenants {
        let response = run
            .client
            .get(format!("{base}/invoices?state=COMPLETED&limit=1"))
            .header("Authorization", &t.bearer)
            .send()
            .await
            .map_err(|e| format!("GET /invoices: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("GET /invoices: {e}"))?;
        sum += body["total"]
            .as_u64()
            .ok_or_else(|| format!("GET /invoices answered {status} without a total: {body}"))?;
    }
    Ok(sum)
}

async fn persisted(run: &Run, load_end: Instant) -> Persisted {
    let expected = run.tracker.completed.load(Ordering::Relaxed);
    let mut p = Persisted {
        expected,
        at_drain: None,
        last: None,
        caught_up_s: None,
        error: None,
    };
    let deadline = Instant::now() + run.args.persist_wait;
    loop {
        match listed_completed(run).await {
            Ok(n) => {
                p.at_drain.get_or_insert(n);
                p.last = Some(n);
                if n >= expected {
                    p.caught_up_s = Some(load_end.elapsed().as_secs_f64());
                    break;
                }
                if p.at_drain == Some(n) && n < expected {
                    eprintln!(
                        "loadgen: {} of {expected} completed invoices listed; waiting up to {:?} for the system of record",
                        n, run.args.persist_wait
                    );
                }
            }
            Err(e) => {
                p.error = Some(e);
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    p
}

async fn closed_loop(run: &Arc<Run>, seed: u64) {
    let mut workers = Vec::new();
    for w in 0..run.args.concurrency {
        let run = run.clone();
        let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0x9E37_79B9));
        workers.push(tokio::spawn(async move {
            // spread the first requests over 100 ms instead of one burst
            tokio::time::sleep(Duration::from_micros(rng.below(100_000))).await;
            while !run.stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= run.window.1 {
                    break;
                }
                let job = run.next_job(&mut rng);
                run.post(job, now, &mut rng).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

async fn open_loop(run: &Arc<Run>, seed: u64) {
    let period = Duration::from_secs_f64(1.0 / run.args.rate);
    let start = Instant::now();
    let mut rng = Rng::new(seed);
    let mut n: u32 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    // the bound on requests in flight; a send that finds no permit is lost, and counted
    let slots = Arc::new(tokio::sync::Semaphore::new(run.args.concurrency));
    loop {
        let scheduled = start + period * n;
        n = n.wrapping_add(1);
        if scheduled >= run.window.1 || run.stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        while tasks.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            run.error("overflow", None);
            continue;
        };
        let job = run.next_job(&mut rng);
        let run = run.clone();
        let mut task_rng = Rng::new(rng.next_u64());
        tasks.spawn(async move {
            run.post(job, scheduled, &mut task_rng).await;
            drop(slot);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One line per second on stderr.
async fn progress(run: Arc<Run>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_acc, mut last_done) = (0, 0);
    loop {
        let now = tick.tick().await;
        let c = &run.counters;
        let acc = c.accepted.load(Ordering::Relaxed);
        let done = run.tracker.finished.load(Ordering::Relaxed);
        let phase = if now < run.window.0 {
            "warmup"
        } else if now <= run.window.1 {
            "measure"
        } else {
            "drain"
        };
        eprintln!(
            "[{:>4.0}s {phase:<7}] sent {:>8}  accepted/s {:>6}  completed/s {:>6}  in flight {:>5}  awaiting frame {:>6}  errors {}",
            (now - start).as_secs_f64(),
            c.sent.load(Ordering::Relaxed),
            acc - last_acc,
            done - last_done,
            c.in_flight.load(Ordering::Relaxed),
            run.tracker.awaiting(),
            c.errors.load(Ordering::Relaxed),
        );
        (last_acc, last_done) = (acc, done);
    }
}

/// `cpu`: seconds of CPU this process used, and the wall-clock seconds they were spent in.
fn report(
    run: &Run,
    measured_for: Duration,
    cpu: Option<(f64, f64)>,
    persisted: Option<Persisted>,
) {
    let secs = measured_for.as_secs_f64();
    let feed = run.tracker.report(run.args.fanout.len());
    let accept = run.accept.lock().map(|s| s.summary()).unwrap_or_default();
    let replay = run.replay.lock().map(|s| s.summary()).unwrap_or_default();
    let e2e = feed.e2e.summary();
    let c = &run.counters;
    let accepted_in_window = run.accepted_in_window.load(Ordering::Relaxed);
    let duplicate_frames = run.tracker.duplicate_frames.load(Ordering::Relaxed);
    let key_id_mismatch = c.key_id_mismatch.load(Ordering::Relaxed);
    let errors_by_status = run
        .errors_by_status
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let errors_by_code = run
        .errors_by_code
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let a = &run.args;
    let persisted_json = persisted.as_ref().map(|p| {
        json!({
            "expected": p.expected,
            "listed_at_drain": p.at_drain,
            "listed_last": p.last,
            "caught_up_s": p.caught_up_s.map(round2),
            "error": p.error,
        })
    });
    let result = json!({
        "run_id": run.id,
        "mode": match a.mode { Mode::Closed => "closed", Mode::Open => "open" },
        "ingress_urls": a.ingress.len(),
        "fanout_urls": a.fanout.len(),
        "tenants": a.tenants,
        "terminals": a.terminals,
        "concurrency": a.concurrency,
        "rate": if a.mode == Mode::Open { json!(a.rate) } else { Value::Null },
        "duration_s": round2(secs),
        "warmup_s": a.warmup.as_secs_f64(),
        "dup_share": a.dup_share,
        "sent": c.sent.load(Ordering::Relaxed),
        "accepted": c.accepted.load(Ordering::Relaxed),
        "accepted_per_s": round2(accepted_in_window as f64 / secs),
        "accept_ms": accept.to_json(),
        "completed_per_s": round2(feed.completed_in_window as f64 / secs),
        "e2e_ms": e2e.to_json(),
        "replay_ms": replay.to_json(),
        "errors_total": c.errors.load(Ordering::Relaxed),
        "errors_by_status": errors_by_status,
        "errors_by_code": errors_by_code,
        "failed_invoices": feed.failed,
        "never_completed": feed.never_completed,
        "duplicates_seen": duplicate_frames + key_id_mismatch,
        "duplicate_frames": duplicate_frames,
        "key_id_mismatch": key_id_mismatch,
        "replays_sent": c.replays_sent.load(Ordering::Relaxed),
        "replays_ok": c.replays_ok.load(Ordering::Relaxed),
        "orphan_frames": feed.orphan_frames,
        "missed_on_some_socket": feed.missed_on_some_socket,
        "seq_violations": run.tracker.seq_violations.load(Ordering::Relaxed),
        "frames": run.tracker.frames.load(Ordering::Relaxed),
        "frames_by_state": feed.by_state,
        "ws_reconnects": run.tracker.reconnects.load(Ordering::Relaxed),
        "ws_closes": feed.closes,
        "loadgen_cpu_s": cpu.map(|(s, _)| round2(s)),
        "persisted": persisted_json,
    });

    let kv = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mode = match a.mode {
        Mode::Closed => format!("closed loop, {} workers", a.concurrency),
        Mode::Open => format!("open loop, {} req/s, ≤ {} in flight", a.rate, a.concurrency),
    };
    let rows = vec![
        ("load".to_owned(), format!("{mode}; {} tenants × {} terminals; {} ingress, {} fanout", a.tenants, a.terminals, a.ingress.len(), a.fanout.len())),
        ("measured".to_owned(), format!("{secs:.1} s after {:.1} s warmup (run {})", a.warmup.as_secs_f64(), run.id)),
        ("accepted".to_owned(), format!("{:.1}/s  ({} in window, {} in total of {} sent)", accepted_in_window as f64 / secs, accepted_in_window, c.accepted.load(Ordering::Relaxed), c.sent.load(Ordering::Relaxed))),
        ("accept latency".to_owned(), accept.line()),
        ("completed".to_owned(), format!("{:.1}/s", feed.completed_in_window as f64 / secs)),
        ("end-to-end latency".to_owned(), e2e.line()),
        ("replays".to_owned(), format!("{} ok of {} sent; {}", c.replays_ok.load(Ordering::Relaxed), c.replays_sent.load(Ordering::Relaxed), replay.line())),
        ("errors".to_owned(), format!("{}  by status: {}", c.errors.load(Ordering::Relaxed), kv(&errors_by_status))),
        ("error codes".to_owned(), kv(&errors_by_code)),
        ("failed invoices".to_owned(), kv(&result_map(&result, "failed_invoices"))),
        ("never completed".to_owned(), feed.never_completed.to_string()),
        ("duplicates seen".to_owned(), format!("{} ({duplicate_frames} repeated frames, {key_id_mismatch} key→other id)", duplicate_frames + key_id_mismatch)),
        ("websocket".to_owned(), format!("{} frames ({}); {} reconnects; closes: {}; seq violations {}; orphan frames {}; missed on some socket {}", run.tracker.frames.load(Ordering::Relaxed), kv(&result_map(&result, "frames_by_state")), run.tracker.reconnects.load(Ordering::Relaxed), kv(&result_map(&result, "ws_closes")), run.tracker.seq_violations.load(Ordering::Relaxed), feed.orphan_frames, feed.missed_on_some_socket)),
        ("system of record".to_owned(), match &persisted {
            None => "not checked (--persist-wait 0, or interrupted)".to_owned(),
            Some(p) => match (&p.error, p.caught_up_s) {
                (Some(e), _) => format!("could not list: {e}"),
                (None, Some(s)) => format!("{} of {} completed listed right after the frames; all listed {s:.1} s after the load stopped", p.at_drain.unwrap_or(0), p.expected),
                (None, None) => format!("only {} of {} completed invoices listed {:.0} s after the frames (at first {})", p.last.unwrap_or(0), p.expected, run.args.persist_wait.as_secs_f64(), p.at_drain.unwrap_or(0)),
            },
        }),
        ("loadgen CPU".to_owned(), cpu.map_or("n/a".into(), |(s, wall)| format!("{s:.1} s in {wall:.0} s ({:.0} % of one core)", 100.0 * s / wall.max(1e-3)))),
    ];
    let text = table("loadgen pipeline", &rows);
    if a.json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    println!("{result}");
}

fn result_map(v: &Value, key: &str) -> BTreeMap<String, u64> {
    v[key]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}
