//! `xtask cluster chaos`: the broker-node-loss drill, end to end, with one command.
//!
//! A fresh 3-node cluster (R3 streams, 3-member replica set) and the release services on
//! it (ingress, two processors, persister, fanout); `loadgen pipeline` posts at a fixed
//! rate and follows every tenant on WebSocket (reconnecting with `since=` as terminals
//! do). Meanwhile: kill -9 of the node that leads the submissions stream, its restart,
//! then a rolling restart (SIGTERM, start, healthy) of all three nodes. Afterwards the
//! verdict, from loadgen's own counts and from MongoDB directly: every accepted invoice
//! stored COMPLETED once (0 lost, 0 duplicated, 0 stuck) and every socket saw every
//! state change in `seq` order without a gap. Exit status 1 if any of that fails.

use crate::procs::free_ports;
use crate::services::{Launch, Services};
use crate::stack::{Ports, Stack, Sync, CLUSTER_NODES};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::Command;

pub struct Args {
    pub dir: PathBuf,
    pub rate: f64,
    pub duration: Duration,
    pub bin_dir: PathBuf,
    pub sync: Sync,
}

use crate::services::DEV_SECRET as SECRET;

/// Starts instance `n` of `name` with the drill's settings, serving on `port` (its API,
/// or a worker's `/health`), through the same launcher as `./x up` and `./x bench`.
fn service(
    services: &mut Services,
    args: &Args,
    cluster: &Stack,
    name: &str,
    n: usize,
    port: u16,
) -> Result<()> {
    let address = format!("127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("JWT_SECRET", SECRET),
        ("MONGODB_DB", "pos"),
        ("POS_NAMESPACE", "pos"),
        ("RUST_LOG", "info"),
        ("RATE_LIMIT_TENANT", "0"),
        ("RATE_LIMIT_TERMINAL", "0"),
        ("INGRESS_ADDR", &address),
        ("FANOUT_ADDR", &address),
        ("HEALTH_ADDR", &address),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    services.start_with(
        Launch {
            name: format!("{name}-{n}"),
            bin: args.bin_dir.join(name),
            service: name,
            log: args.dir.join(format!("{name}-{n}.log")),
            health: Some(format!("http://{address}/health")),
        },
        cluster,
        &env,
    )
}

/// The server name leading `stream`, as the cluster reports it (`pos-n1` → 1).
async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> Result<usize> {
    let mut s = js.get_stream(stream).await.context("stream info")?;
    let info = s.info().await.context("stream info")?;
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("the stream has no leader")?;
    leader
        .strip_prefix("pos-n")
        .and_then(|i| i.parse().ok())
        .with_context(|| format!("unexpected leader name {leader}"))
}

fn log_event(start: Instant, what: &str) {
    eprintln!(
        "xtask chaos: t={:>5.1}s  {what}",
        start.elapsed().as_secs_f64()
    );
}

pub async fn run(args: Args) -> Result<bool> {
    Stack::down(&args.dir, true).await?;
    let mut cluster = Stack::up(&args.dir, CLUSTER_NODES, args.sync, Ports::Free).await?;
    eprintln!(
        "xtask chaos: cluster up (sync {:?})\n{}",
        args.sync,
        cluster.status()
    );

    let ports = free_ports(6)?;
    let (ingress_port, fanout_port) = (ports[0], ports[1]);
    let mut services = Services::default();
    service(&mut services, &args, &cluster, "ingress", 0, ingress_port)?;
    // Created by the first service: let ingress make the streams R3 before the others race.
    services.wait_healthy(Duration::from_secs(60)).await?;
    service(&mut services, &args, &cluster, "processor", 0, ports[2])?;
    service(&mut services, &args, &cluster, "processor", 1, ports[3])?;
    service(&mut services, &args, &cluster, "persister", 0, ports[4])?;
    service(&mut services, &args, &cluster, "fanout", 0, fanout_port)?;
    services.wait_healthy(Duration::from_secs(60)).await?;

    let operator = async_nats::ConnectOptions::with_user_and_password(
        "operator".into(),
        cluster.password("operator"),
    )
    .connect(
        cluster
            .nats
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port).parse())
            .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?
            .as_slice(),
    )
    .await?;
    let js = async_nats::jetstream::new(operator);
    for s in ["POS_INVOICES", "POS_EVENTS", "POS_DLQ"] {
        let mut stream = js.get_stream(s).await?;
        let replicas = stream.info().await?.config.num_replicas;
        if replicas != 3 {
            bail!("{s} has {replicas} replicas, expected 3 (NATS_REPLICAS)");
        }
    }

    let secs = args.duration.as_secs_f64();
    let loadgen = Command::new(args.bin_dir.join("loadgen"))
        .args([
            "pipeline",
            "--ingress",
            &format!("http://127.0.0.1:{ingress_port}"),
            "--fanout",
            &format!("http://127.0.0.1:{fanout_port}"),
            "--secret",
            SECRET,
            "--mode",
            "open",
            "--rate",
            &args.rate.to_string(),
            "--concurrency",
            "400",
            "--duration",
            &format!("{}s", secs as u64),
            "--warmup",
            "0s",
            "--tenants",
            "4",
            "--drain",
            "90s",
            "--persist-wait",
            "120s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(args.dir.join("loadgen.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting loadgen (cargo build --release -p loadgen)")?;
    let start = Instant::now();
    let at = |f: f64| tokio::time::sleep_until((start + Duration::from_secs_f64(secs * f)).into());
    let mut timeline = Vec::new();

    at(0.2).await;
    let leader = leader_of(&js, "POS_INVOICES").await?;
    log_event(
        start,
        &format!("kill -9 nats-{leader} (leader of POS_INVOICES)"),
    );
    cluster.kill_nats(leader).await?;
    timeline.push(format!(
        "{:.1}s kill -9 nats-{leader} (stream leader)",
        start.elapsed().as_secs_f64()
    ));
    let new_leader = loop {
        if let Ok(l) = leader_of(&js, "POS_INVOICES").await {
            if l != leader {
                break l;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    log_event(start, &format!("nats-{new_leader} leads POS_INVOICES"));
    timeline.push(format!(
        "{:.1}s nats-{new_leader} elected",
        start.elapsed().as_secs_f64()
    ));

    at(0.45).await;
    log_event(start, &format!("restart nats-{leader}"));
    cluster.start_nats(leader).await?;
    timeline.push(format!(
        "{:.1}s nats-{leader} back, healthy",
        start.elapsed().as_secs_f64()
    ));

    at(0.55).await;
    for i in 0..CLUSTER_NODES {
        log_event(start, &format!("rolling restart: SIGTERM nats-{i}"));
        cluster.stop_nats(i).await?;
        cluster.start_nats(i).await?;
        log_event(start, &format!("rolling restart: nats-{i} healthy"));
        timeline.push(format!(
            "{:.1}s rolling restart nats-{i} done",
            start.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let out = loadgen.wait_with_output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| {
            format!(
                "no JSON line from loadgen (see {})",
                args.dir.join("loadgen.log").display()
            )
        })?;

    let (stored, completed) = mongo_counts(&cluster.mongodb_uri()).await?;
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    let accepted = n("accepted");
    // A POST whose answer was lost (transport error, 503 `outcome: unknown`) may have
    // been stored: a terminal's retry with the same key would be answered with it.
    let unconfirmed = n("errors_total");
    let failed: u64 = report["failed_invoices"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let verdict: [(&str, u64, bool); 8] = [
        ("accepted (202, each a new id)", accepted, true),
        (
            "stored COMPLETED (accepted + at most the unconfirmed)",
            completed,
            completed >= accepted && completed <= accepted + unconfirmed,
        ),
        (
            "lost: accepted but not stored COMPLETED (≥ 0 means none)",
            accepted.saturating_sub(completed),
            completed >= accepted,
        ),
        (
            "stuck: stored, not final",
            stored - completed.min(stored),
            stored == completed,
        ),
        (
            "stuck: accepted, no final frame on any socket",
            n("never_completed"),
            n("never_completed") == 0,
        ),
        (
            "duplicated: a key answered with a second id, or a repeated final frame",
            n("duplicates_seen"),
            n("duplicates_seen") == 0,
        ),
        (
            "gaps: seq violations + final frames some socket missed",
            n("seq_violations") + n("missed_on_some_socket"),
            n("seq_violations") + n("missed_on_some_socket") == 0,
        ),
        ("failed invoices", failed, failed == 0),
    ];
    let mut ok = true;
    println!(
        "\nchaos run: {} invoices/s for {secs:.0} s, sync {:?}, R3",
        args.rate, args.sync
    );
    for t in &timeline {
        println!("  {t}");
    }
    for (what, got, pass) in verdict {
        ok &= pass;
        println!("  {what:<72} {got:>8} {}", if pass { "ok" } else { "FAIL" });
    }
    println!(
        "  refused while a node was lost (not accepted, retried by terminals): {}",
        report["errors_by_status"]
    );
    println!(
        "  websocket reconnects {} (closes {}); e2e ms {}; accept ms {}",
        report["ws_reconnects"], report["ws_closes"], report["e2e_ms"], report["accept_ms"]
    );
    println!(
        "{}",
        serde_json::json!({ "ok": ok, "timeline": timeline, "stored": stored, "completed": completed, "loadgen": report })
    );
    drop(services);
    Stack::down(&args.dir, false).await?;
    Ok(ok)
}

async fn mongo_counts(uri: &str) -> Result<(u64, u64)> {
    use mongodb::bson::{doc, Document};
    let client = mongodb::Client::with_uri_str(uri).await?;
    let coll = client.database("pos").collection::<Document>("invoices");
    let stored = coll.count_documents(doc! {}).await?;
    let completed = coll.count_documents(doc! { "state": "COMPLETED" }).await?;
    Ok((stored, completed))
}
