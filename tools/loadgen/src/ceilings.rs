//! `loadgen ceilings`: what the infrastructure alone manages on this machine, as a
//! yardstick for the pipeline figures.
//!
//! - JetStream: acked publishes of 1 KiB with `Nats-Msg-Id` into a temporary
//!   file-storage stream, pipelined (up to `--in-flight` acks outstanding) and
//!   synchronous (await each ack).
//! - MongoDB: inserts of invoice-sized documents with `w: majority` (as the store
//!   writes) into a temporary database carrying the store's indexes: `insert_one` from
//!   `--concurrency` tasks, and `insert_many` batches of 100 from `--bulk-concurrency`
//!   tasks.
//! - Fiscal numbering: `--ledger-callers` tasks numbering invoices of one tenant through
//!   `store::Numberer` — the code the processor runs, batching per tenant — into a
//!   temporary database with the store's indexes: how fast one series can go, which
//!   numbering serialises.
//!
//! - The floor (`--floor-rate`, 600/s by default), measured first, on servers that have
//!   not yet been saturated by the measurements above: the same servers doing one
//!   operation at a time at a *fixed* rate (open loop, each operation sent on its tick
//!   whatever the earlier ones do) — one JetStream message (acked publish, delivery to a
//!   durable pull consumer, explicit ack), one `w: majority` insert, one indexed lookup of
//!   an absent key (ingress's idempotency lookup) — with the CPU per operation of the
//!   server (its pid given) and of this client, and the servers' idle CPU just before.
//!   It estimates what a design that issues one such operation per invoice costs at that
//!   rate, each operation its own wake-up. It is not a lower bound for the pipeline,
//!   whose several operations per invoice arrive together and share wake-ups.
//!
//! Each measurement runs for `--duration`; the temporary stream and database are
//! removed at the end, also when a measurement failed.

use crate::{
    cli::CeilingsArgs,
    stats::{cpu_seconds, own_cpu_seconds, round2, table, Samples, Summary},
};
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::{stream::FuturesUnordered, StreamExt};
use mongodb::{
    bson::{doc, Document},
    options::{ClientOptions, IndexOptions, WriteConcern},
    IndexModel,
};
use serde_json::{json, Value};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::time::Instant;

/// One measurement: operations (messages or documents) per second and per-call latency.
struct Rate {
    name: &'static str,
    ops: u64,
    secs: f64,
    latency: Summary,
    errors: u64,
    /// CPU milliseconds per operation, per process measured (the floor only).
    cpu: Vec<(&'static str, f64)>,
}

impl Rate {
    fn per_s(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "per_s": round2(self.per_s()),
            "ops": self.ops,
            "secs": round2(self.secs),
            "latency_ms": self.latency.to_json(),
            "errors": self.errors,
            "cpu_ms_per_op": self
                .cpu
                .iter()
                .map(|(name, ms)| ((*name).to_owned(), json!((ms * 1000.0).round() / 1000.0)))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// `   CPU per op nats-server 0.123 · loadgen 0.045 ms`, or nothing.
    fn cpu_line(&self) -> String {
        if self.cpu.is_empty() {
            return String::new();
        }
        format!("   CPU per op {} ms", per_process(&self.cpu, 3))
    }
}

/// `nats-server 0.123 · loadgen 0.045`: figures per process, `decimals` each.
fn per_process(figures: &[(&str, f64)], decimals: usize) -> String {
    let parts: Vec<String> = figures
        .iter()
        .map(|(name, v)| format!("{name} {v:.decimals$}"))
        .collect();
    parts.join(" · ")
}

pub async fn run(args: CeilingsArgs) -> Result<(), String> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut rates = Vec::new();
    let mut problems = Vec::new();

    // What the servers burn with nothing to do (timers, flushes, housekeeping), just
    // before the floor: part of each floor figure is this, spread over its operations.
    let idle = match args.floor_rate {
        0 => Vec::new(),
        _ => idle_cpu(&args).await,
    };
    match nats_ceilings(&args, &tag, &mut problems).await {
        Ok(mut r) => rates.append(&mut r),
        Err(e) => problems.push(format!("jetstream: {e}")),
    }
    match mongo_ceilings(&args, &tag, &mut problems).await {
        Ok(mut r) => rates.append(&mut r),
        Err(e) => problems.push(format!("mongodb: {e}")),
    }
    match ledger_ceiling(&args, &tag).await {
        Ok(r) => rates.push(r),
        Err(e) => problems.push(format!("ledger: {e}")),
    }

    let rows: Vec<(String, String)> = rates
        .iter()
        .map(|r| {
            (
                r.name.to_owned(),
                format!(
                    "{:>9.0}/s   per call {}{}{}",
                    r.per_s(),
                    r.latency.line(),
                    r.cpu_line(),
                    if r.errors > 0 {
                        format!("   errors {}", r.errors)
                    } else {
                        String::new()
                    }
                ),
            )
        })
        .chain((!idle.is_empty()).then(|| {
            (
                "idle (no operations)".to_owned(),
                format!("CPU ms per second {}", per_process(&idle, 1)),
            )
        }))
        .chain(problems.iter().map(|p| ("FAILED".to_owned(), p.clone())))
        .collect();
    let title = format!(
        "loadgen ceilings ({} s each; {} acks in flight, insert_one × {}, insert_many(100) × {}, \
         numbering one series × {}, floor at {}/s)",
        args.duration.as_secs_f64(),
        args.in_flight,
        args.concurrency,
        args.bulk_concurrency,
        args.ledger_callers,
        args.floor_rate
    );
    let text = table(&title, &rows);
    if args.json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    let mut result = serde_json::Map::new();
    result.insert("kind".into(), json!("ceilings"));
    result.insert("duration_s".into(), json!(args.duration.as_secs_f64()));
    result.insert("in_flight".into(), json!(args.in_flight));
    result.insert("replicas".into(), json!(args.replicas));
    result.insert("concurrency".into(), json!(args.concurrency));
    result.insert("bulk_concurrency".into(), json!(args.bulk_concurrency));
    result.insert("ledger_callers".into(), json!(args.ledger_callers));
    result.insert("floor_rate".into(), json!(args.floor_rate));
    for r in &rates {
        result.insert(r.name.into(), r.to_json());
    }
    result.insert(
        "idle_cpu_ms_per_s".into(),
        idle.iter()
            .map(|(name, ms)| ((*name).to_owned(), json!(round2(*ms))))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    result.insert("problems".into(), json!(problems));
    println!("{}", Value::Object(result));
    if rates.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(())
}

// ------------------------------------------------------------------ JetStream

/// The JetStream measurements; a failed floor is added to `problems` and the rest kept.
async fn nats_ceilings(
    args: &CeilingsArgs,
    tag: &str,
    problems: &mut Vec<String>,
) -> Result<Vec<Rate>, String> {
    // async-nats ignores a user and password in the URL: hand them over explicitly.
    let url = reqwest::Url::parse(&args.nats).map_err(|e| format!("bad URL {}: {e}", args.nats))?;
    let options = match url.password() {
        Some(password) => async_nats::ConnectOptions::with_user_and_password(
            url.username().to_owned(),
            password.to_owned(),
        ),
        None => async_nats::ConnectOptions::new(),
    };
    let mut server = url.clone();
    let _ = server.set_username("");
    let _ = server.set_password(None);
    let client = options
        .connect(server.as_str())
        .await
        .map_err(|e| format!("connect {server}: {e}"))?;
    let js = jetstream::new(client.clone());
    let name = format!("LOADGEN_CEILINGS_{tag}");
    let subject = format!("loadgen.ceilings.{tag}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{subject}.>")],
        storage: stream::StorageType::File,
        // a stream left behind by a killed run removes its messages by itself
        max_age: Duration::from_secs(600),
        duplicate_window: Duration::from_secs(120),
        num_replicas: args.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create stream {name}: {e}"))?;
    eprintln!(
        "loadgen: JetStream ceilings on temporary stream {name} (file storage, R{})",
        args.replicas
    );

    let payload: bytes::Bytes = vec![b'x'; 1024].into();
    let floor = match args.floor_rate {
        0 => None,
        _ => Some(message_at_rate(args, &js, &name, &subject, &payload).await),
    };
    let pipelined = publish_pipelined(args, &js, &subject, &payload).await;
    let sync = publish_sync(args, &js, &subject, &payload).await;

    if let Err(e) = js.delete_stream(&name).await {
        eprintln!("loadgen: could not delete stream {name}: {e}");
    }
    let _ = client.flush().await;
    let mut rates = Vec::new();
    match floor {
        Some(Ok(r)) => rates.push(r),
        Some(Err(e)) => problems.push(format!("jetstream floor: {e}")),
        None => {}
    }
    rates.push(pipelined?);
    rates.push(sync?);
    Ok(rates)
}

/// The floor's JetStream message: published at `--floor-rate` (each publish awaits its
/// ack), delivered to a durable pull consumer and acked one by one, as the pipeline's
/// consumers do. Its latency is publish → ack; a message stored but not delivered and
/// acked within the window counts as an error.
async fn message_at_rate(
    args: &CeilingsArgs,
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    payload: &bytes::Bytes,
) -> Result<Rate, String> {
    let subject = format!("{subject}.floor");
    let consumer = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("floor".into()),
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("floor consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("floor consumer's messages: {e}"))?;
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let acked = acked.clone();
        tokio::spawn(async move {
            while let Some(next) = messages.next().await {
                match next {
                    Ok(m) => {
                        if m.ack().await.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A missed heartbeat or the like: the stream goes on.
                    Err(e) => {
                        eprintln!("loadgen: floor consumer: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    };
    let cpu = CpuProbe::start("nats-server", args.nats_pid);
    let (ops, secs, latency, errors) = at_rate(args.floor_rate, args.duration, |n| {
        let (js, subject, message) = (js.clone(), subject.clone(), message(n + (2 << 40), payload));
        async move {
            js.send_publish(subject, message)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    // The window closes once every message stored was delivered and acked (or after 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < ops && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Acks are queued on the client: sent before the window closes.
    let _ = js.client().flush().await;
    let cpu = cpu.per_op(ops);
    reader.abort();
    let unacked = ops.saturating_sub(acked.load(Ordering::Relaxed));
    Ok(Rate {
        name: "jetstream_message_at_rate",
        ops,
        secs,
        latency,
        errors: errors + unacked,
        cpu,
    })
}

fn message(subject_id: u64, payload: &bytes::Bytes) -> PublishMessage {
    PublishMessage::build()
        .payload(payload.clone())
        .message_id(format!("m-{subject_id}"))
}

async fn publish_pipelined(
    args: &CeilingsArgs,
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
) -> Result<Rate, String> {
    let subject = format!("{subject}.pipelined");
    let mut latency = Samples::default();
    let mut pending = FuturesUnordered::new();
    let (mut acked, mut errors, mut n) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + args.duration;
    loop {
        let now = Instant::now();
        if now < end && pending.len() < args.in_flight {
            n += 1;
            match js.send_publish(subject.clone(), message(n, payload)).await {
                Ok(ack) => pending.push(async move { (now, ack.await) }),
                Err(e) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!("loadgen: publish failed: {e}");
                    }
                }
            }
            continue;
        }
        match pending.next().await {
            Some((sent, Ok(_))) => {
                acked += 1;
                latency.record(sent.elapsed());
            }
            Some((_, Err(e))) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen: publish ack failed: {e}");
                }
            }
            None => break,
        }
    }
    Ok(Rate {
        name: "jetstream_publish_pipelined",
        ops: acked,
        secs: start.elapsed().as_secs_f64(),
        latency: latency.summary(),
        errors,
        cpu: Vec::new(),
    })
}

async fn publish_sync(
    args: &CeilingsArgs,
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
) -> Result<Rate, String> {
    let subject = format!("{subject}.sync");
    let mut latency = Samples::default();
    let (mut acked, mut errors, mut n) = (0u64, 0u64, 1u64 << 40);
    let start = Instant::now();
    while start.elapsed() < args.duration {
        n += 1;
        let sent = Instant::now();
        let result = match js.send_publish(subject.clone(), message(n, payload)).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                acked += 1;
                latency.record(sent.elapsed());
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen: sync publish failed: {e}");
                }
            }
        }
    }
    Ok(Rate {
        name: "jetstream_publish_sync",
        ops: acked,
        secs: start.elapsed().as_secs_f64(),
        latency: latency.summary(),
        errors,
        cpu: Vec::new(),
    })
}

// ------------------------------------------------------------------ MongoDB

/// An invoice-shaped document of about 1 KiB, unique per `n`.
fn invoice_doc(tag: &str, n: u64) -> Document {
    let items: Vec<Document> = (0..4)
        .map(|i| {
            doc! {
                "sku": format!("SKU-{i}"), "name": "Coffee large", "quantity": "2",
                "unitPrice": "3.50", "discount": "0.00", "taxRate": "0.10",
                "net": "7.00", "tax": "0.70", "total": "7.70",
            }
        })
        .collect();
    let now = mongodb::bson::DateTime::now();
    doc! {
        "tenantId": format!("ceilings-{tag}"),
        "terminalId": format!("T{}", n % 8),
        "idempotencyKey": format!("k-{n}"),
        "state": "COMPLETED",
        "currency": "EUR",
        "taxInclusive": false,
        "issuedAt": now, "createdAt": now, "updatedAt": now,
        "customer": { "name": "ACME SL", "taxId": "B12345678" },
        "items": items,
        "payments": [ { "method": "card", "amount": "30.80" } ],
        "totals": { "net": "28.00", "tax": "2.80", "total": "30.80", "paid": "30.80", "change": "0.00",
                    "taxBreakdown": [ { "rate": "0.10", "net": "28.00", "tax": "2.80" } ] },
        "attempts": 1, "error": null, "version": 3_i64,
    }
}

/// The MongoDB measurements, the floor first; a failed floor is added to `problems`.
async fn mongo_ceilings(
    args: &CeilingsArgs,
    tag: &str,
    problems: &mut Vec<String>,
) -> Result<Vec<Rate>, String> {
    let mut options = ClientOptions::parse(args.mongo.as_str())
        .await
        .map_err(|e| format!("bad URI {}: {e}", args.mongo))?;
    options.write_concern = Some(WriteConcern::majority());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.app_name = Some("loadgen-ceilings".into());
    options.max_pool_size = Some(u32::try_from(args.concurrency.max(10)).unwrap_or(100));
    let client =
        mongodb::Client::with_options(options).map_err(|e| format!("client options: {e}"))?;
    let db_name = format!("loadgen_ceilings_{tag}");
    let db = client.database(&db_name);
    eprintln!("loadgen: MongoDB ceilings in temporary database {db_name} (w: majority)");

    let result = async {
        let mut rates = Vec::new();
        if args.floor_rate > 0 {
            let floor = db.collection::<Document>("floor");
            match create_indexes(&floor).await {
                Ok(()) => {
                    rates.push(insert_at_rate(args, &floor, tag).await);
                    rates.push(lookup_at_rate(args, &floor, tag).await);
                }
                Err(e) => problems.push(format!("mongodb floor: {e}")),
            }
        }
        let single = db.collection::<Document>("single");
        let bulk = db.collection::<Document>("bulk");
        for c in [&single, &bulk] {
            create_indexes(c).await?;
        }
        rates.push(insert_one_rate(args, &single, tag).await);
        rates.push(insert_many_rate(args, &bulk, tag).await);
        Ok::<_, String>(rates)
    }
    .await;
    if let Err(e) = db.drop().await {
        eprintln!("loadgen: could not drop database {db_name}: {e}");
    }
    result
}

/// The store's indexes (libs/store), so that an insert costs what it costs there.
async fn create_indexes(c: &mongodb::Collection<Document>) -> Result<(), String> {
    let idx = |keys: Document, unique: bool| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().unique(unique).build())
            .build()
    };
    c.create_indexes([
        idx(doc! { "tenantId": 1, "createdAt": -1, "_id": -1 }, false),
        idx(
            doc! { "tenantId": 1, "state": 1, "createdAt": -1, "_id": -1 },
            false,
        ),
        idx(
            doc! { "tenantId": 1, "terminalId": 1, "createdAt": -1, "_id": -1 },
            false,
        ),
        idx(doc! { "tenantId": 1, "idempotencyKey": 1 }, true),
    ])
    .await
    .map(|_| ())
    .map_err(|e| format!("create indexes: {e}"))
}

/// Runs `tasks` copies of `op(n)` until the duration is over; `op` returns how many
/// documents it wrote.
async fn hammer<F, Fut>(duration: Duration, tasks: usize, op: F) -> (u64, f64, Summary, u64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let docs = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Samples::default()));
    let start = Instant::now();
    let end = start + duration;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (op, next, docs, errors, latency) = (
            op.clone(),
            next.clone(),
            docs.clone(),
            errors.clone(),
            latency.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut local = Samples::default();
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match op(n).await {
                    Ok(written) => {
                        local.record(t.elapsed());
                        docs.fetch_add(written, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("loadgen: insert failed: {e}");
                        }
                    }
                }
            }
            if let Ok(mut all) = latency.lock() {
                all.append(&mut local);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let summary = latency.lock().map(|s| s.summary()).unwrap_or_default();
    (
        docs.load(Ordering::Relaxed),
        secs,
        summary,
        errors.load(Ordering::Relaxed),
    )
}

async fn insert_one_rate(
    args: &CeilingsArgs,
    coll: &mongodb::Collection<Document>,
    tag: &str,
) -> Rate {
    let (coll, tag) = (coll.clone(), tag.to_owned());
    let (ops, secs, latency, errors) = hammer(args.duration, args.concurrency, move |n| {
        let (coll, doc) = (coll.clone(), invoice_doc(&tag, n));
        async move {
            coll.insert_one(doc)
                .await
                .map(|_| 1)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    Rate {
        name: "mongo_insert_one",
        ops,
        secs,
        latency,
        errors,
        cpu: Vec::new(),
    }
}

async fn insert_many_rate(
    args: &CeilingsArgs,
    coll: &mongodb::Collection<Document>,
    tag: &str,
) -> Rate {
    const BATCH: u64 = 100;
    let (coll, tag) = (coll.clone(), tag.to_owned());
    let (ops, secs, latency, errors) = hammer(args.duration, args.bulk_concurrency, move |n| {
        let docs: Vec<Document> = (0..BATCH)
            .map(|i| invoice_doc(&tag, n * BATCH + i))
            .collect();
        let coll = coll.clone();
        async move {
            coll.insert_many(docs)
                .await
                .map(|r| r.inserted_ids.len() as u64)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    Rate {
        name: "mongo_insert_many_100",
        ops,
        secs,
        latency,
        errors,
        cpu: Vec::new(),
    }
}

/// The floor's insert: one invoice-sized document at `--floor-rate`, `w: majority`.
async fn insert_at_rate(
    args: &CeilingsArgs,
    coll: &mongodb::Collection<Document>,
    tag: &str,
) -> Rate {
    mongod_at_rate(args, "mongo_insert_at_rate", |n| {
        let (coll, doc) = (coll.clone(), invoice_doc(tag, n));
        async move { coll.insert_one(doc).await.map(|_| ()) }
    })
    .await
}

/// The floor's lookup: a (tenant, key) the collection does not hold — a new invoice's
/// key, as ingress asks for it — at `--floor-rate`, on the store's unique index.
async fn lookup_at_rate(
    args: &CeilingsArgs,
    coll: &mongodb::Collection<Document>,
    tag: &str,
) -> Rate {
    let tenant = format!("ceilings-{tag}");
    mongod_at_rate(args, "mongo_key_lookup_at_rate", |n| {
        let coll = coll.clone();
        let filter = doc! { "tenantId": &tenant, "idempotencyKey": format!("absent-{n}") };
        async move { coll.find_one(filter).await.map(|_| ()) }
    })
    .await
}

/// One MongoDB operation `op(n)` at `--floor-rate`, with mongod's CPU per operation.
async fn mongod_at_rate<F, Fut>(args: &CeilingsArgs, name: &'static str, op: F) -> Rate
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = mongodb::error::Result<()>> + Send + 'static,
{
    let cpu = CpuProbe::start("mongod", args.mongod_pid);
    let (ops, secs, latency, errors) = at_rate(args.floor_rate, args.duration, |n| {
        let call = op(n);
        async move { call.await.map_err(|e| e.to_string()) }
    })
    .await;
    Rate {
        name,
        ops,
        secs,
        latency,
        errors,
        cpu: cpu.per_op(ops),
    }
}

// ------------------------------------------------------------------ the floor's driver

/// Calls `op(n)` `rate` times a second for `duration`, each call in a task of its own
/// (open loop: a slow call does not hold up the next), then waits for the last one.
async fn at_rate<F, Fut>(rate: u32, duration: Duration, op: F) -> (u64, f64, Summary, u64)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    // Ticks missed while the runtime was busy fire at once: the rate holds.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        tick.tick().await;
        n += 1;
        // Timed from when the tick fired, not from when it was due: tokio's timer fires up
        // to ~1 ms late, which would swamp a 0.2 ms round trip (seen: p50 0.23 → 1.38 ms).
        // A call the runtime then starts late still counts as late.
        let sent = Instant::now();
        let call = op(n);
        calls.spawn(async move { call.await.map(|()| sent.elapsed()) });
    }
    let (mut latency, mut ops, mut errors) = (Samples::default(), 0u64, 0u64);
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(Ok(took)) => {
                ops += 1;
                latency.record(took);
            }
            Ok(Err(e)) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen: floor operation failed: {e}");
                }
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen: floor operation panicked: {e}");
                }
            }
        }
    }
    (
        ops,
        start.elapsed().as_secs_f64(),
        latency.summary(),
        errors,
    )
}

/// CPU milliseconds per second each server (its pid given) uses over `--duration` with
/// no operation sent.
async fn idle_cpu(args: &CeilingsArgs) -> Vec<(&'static str, f64)> {
    let servers: Vec<(&'static str, String)> =
        [("nats-server", args.nats_pid), ("mongod", args.mongod_pid)]
            .into_iter()
            .filter_map(|(name, pid)| pid.map(|p| (name, p.to_string())))
            .collect();
    if servers.is_empty() {
        return Vec::new();
    }
    let before: Vec<Option<f64>> = servers.iter().map(|(_, p)| cpu_seconds(p)).collect();
    let start = Instant::now();
    tokio::time::sleep(args.duration).await;
    let secs = start.elapsed().as_secs_f64();
    servers
        .iter()
        .zip(before)
        .filter_map(|((name, pid), b)| Some((*name, (cpu_seconds(pid)? - b?) * 1000.0 / secs)))
        .collect()
}

/// CPU used by the server (when its pid is known) and by this client over a
/// measurement, per operation.
struct CpuProbe {
    server: Option<(&'static str, String)>,
    at_start: (Option<f64>, Option<f64>),
}

impl CpuProbe {
    fn start(server: &'static str, pid: Option<u32>) -> Self {
        let server = pid.map(|p| (server, p.to_string()));
        let at_start = (
            server.as_ref().and_then(|(_, p)| cpu_seconds(p)),
            own_cpu_seconds(),
        );
        Self { server, at_start }
    }

    /// Milliseconds per operation: the server's (if known), then `loadgen`'s.
    fn per_op(&self, ops: u64) -> Vec<(&'static str, f64)> {
        let per_op = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) if ops > 0 => Some((a - b) * 1000.0 / ops as f64),
            _ => None,
        };
        let mut out = Vec::new();
        if let Some((name, pid)) = &self.server {
            if let Some(ms) = per_op(self.at_start.0, cpu_seconds(pid)) {
                out.push((*name, ms));
            }
        }
        if let Some(ms) = per_op(self.at_start.1, own_cpu_seconds()) {
            out.push(("loadgen", ms));
        }
        out
    }
}

// ------------------------------------------------------------------ fiscal numbering

/// Invoices of one tenant numbered per second by `store::Numberer`, and the wait of each.
async fn ledger_ceiling(args: &CeilingsArgs, tag: &str) -> Result<Rate, String> {
    let db_name = format!("loadgen_ledger_{tag}");
    let store = store::Store::connect(&args.mongo, &db_name, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("loadgen: fiscal numbering ceiling in temporary database {db_name}");
    let ready = tokio::time::timeout(Duration::from_secs(30), store.wait_indexed()).await;
    let result = match ready {
        Err(_) => Err("the store's indexes were not created within 30 s".to_owned()),
        Ok(()) => {
            let tenant =
                domain::TenantId::parse(format!("ceilings-{tag}")).map_err(|e| e.to_string())?;
            let numberer = Arc::new(store::Numberer::new(store.clone()));
            let (ops, secs, latency, errors) =
                hammer(args.duration, args.ledger_callers, move |_| {
                    let (numberer, entry) = (numberer.clone(), ledger_entry(&tenant));
                    async move {
                        match numberer.number(entry, 0).await {
                            Ok(store::Numbered::Record(_)) => Ok(1),
                            Ok(store::Numbered::Void) => Err("numbered as void".to_owned()),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                })
                .await;
            Ok(Rate {
                name: "ledger_one_series",
                ops,
                secs,
                latency,
                errors,
                cpu: Vec::new(),
            })
        }
    };
    // The store has (rightly) no way to drop a database: a client of our own does it.
    let dropped = match mongodb::Client::with_uri_str(&args.mongo).await {
        Ok(client) => client.database(&db_name).drop().await,
        Err(e) => Err(e),
    };
    if let Err(e) = dropped {
        eprintln!("loadgen: could not drop database {db_name}: {e}");
    }
    result
}

/// A computed invoice's facts, as the processor hands them to numbering.
fn ledger_entry(tenant: &domain::TenantId) -> domain::fiscal::Entry {
    let cents = |c: i64| rust_decimal::Decimal::new(c, 2);
    domain::fiscal::Entry {
        tenant_id: tenant.clone(),
        kind: domain::InvoiceKind::Invoice,
        invoice_id: domain::InvoiceId::generate(),
        issued_at: domain::IssuedAt::parse("2026-12-02T10:00:00Z").expect("a date-time"),
        currency: domain::Currency::parse("EUR").expect("EUR is a currency"),
        net: cents(2_000),
        tax: cents(380),
        total: cents(2_380),
        tax_breakdown: vec![],
    }
}
