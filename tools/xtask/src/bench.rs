//! `./x bench`: the pipeline measured through its public API (`tools/loadgen`), on
//! localhost, with the same supervisor as `./x up` and `./x test`.
//!
//! For each instance count N of `--instances` (default "1"):
//! 1. a fresh stack on free ports in `.stack/bench/n<N>` ([`Stack`]);
//! 2. N instances of ingress, processor, persister and fanout (release build), waited
//!    for on `/health`;
//! 3. `loadgen ceilings` (first N only: the raw JetStream / MongoDB rates of this machine,
//!    and the floor: what the servers cost per operation at a fixed rate, their pids given);
//! 4. `loadgen pipeline` against every ingress and fanout, while the CPU time of every
//!    process (services and servers) is read over the measured window (warmup excluded),
//!    the durable consumers' backlog halfway through it (NATS monitoring), and every
//!    process's RSS every `--rss-every` seconds (first / last / max in the results);
//! 5. everything stopped, the stack's data removed (also on Ctrl-C or failure).
//!
//! With `--sockets N`: one instance of each and `loadgen sockets --sockets N` instead of
//! step 4. Options are parsed with clap ([`Args`]); from the first option bench does not
//! know, the rest goes to loadgen as it is (`--concurrency 100`, `--rate 800`, …).
//! Results: tables on the terminal, one JSON object per run appended to
//! `.stack/bench/results-<UTC time>.jsonl`; service logs stay in `.stack/bench/logs-*`.
//! Environment: `JWT_SECRET`, `RUST_LOG` (default `warn`: `info` writes a line per
//! invoice and service), `POS_BIN_DIR` (default `target/release`).

use crate::procs::free_ports;
use crate::services::{Launch, Services, DEV_SECRET};
use crate::stack::{root, Ports, Stack, Sync};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SERVICES: [&str; 4] = ["ingress", "processor", "persister", "fanout"];
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

/// `./x bench`'s own options; everything from the first option it does not know on goes
/// to loadgen as it is (`--concurrency 100`, `--rate 800`, …: `loadgen pipeline --help`).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Module docs: tools/xtask/src/bench.rs; loadgen's options: \
    target/release/loadgen pipeline --help. Put bench's options first, loadgen's after them."
)]
pub struct Args {
    /// Instance counts to measure in turn, each on a fresh stack: "1 2".
    #[arg(long, default_value = "1", value_parser = instance_counts)]
    instances: InstanceCounts,
    /// Measured time of each run (60, 60s, 2m, 500ms).
    #[arg(long, default_value = "60", value_parser = duration)]
    duration: String,
    /// Load before the measured window, not counted.
    #[arg(long, default_value = "5", value_parser = duration)]
    warmup: String,
    /// closed: N clients each waiting for its answer; open: a fixed rate (`--rate`).
    #[arg(long, default_value = "closed", value_parser = ["closed", "open"])]
    mode: String,
    /// Length of each ceiling measurement (raw JetStream and MongoDB rates).
    #[arg(long, default_value = "10", value_parser = duration)]
    ceilings_duration: String,
    /// Skip the ceilings.
    #[arg(long = "no-ceilings", action = clap::ArgAction::SetFalse)]
    ceilings: bool,
    /// Use the binaries in `POS_BIN_DIR` as they are.
    #[arg(long = "no-build", action = clap::ArgAction::SetFalse)]
    build: bool,
    /// Instead of the pipeline: N WebSocket clients on one instance of each service.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    sockets: Option<u32>,
    /// Seconds between RSS samples of every process.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    rss_every: u64,
    /// Passed to loadgen.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "LOADGEN ARGS"
    )]
    pass: Vec<String>,
}

/// `--instances "1 2"`: one or more counts ≥ 1.
#[derive(Debug, Clone)]
struct InstanceCounts(Vec<u16>);

fn instance_counts(text: &str) -> Result<InstanceCounts, String> {
    let counts = text
        .split_whitespace()
        .map(|n| match n.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("bad instance count {n:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if counts.is_empty() {
        return Err("no instance count".into());
    }
    Ok(InstanceCounts(counts))
}

/// A loadgen duration, checked here so a typo fails before the build.
fn duration(text: &str) -> Result<String, String> {
    secs(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// Seconds in a loadgen duration: `15`, `15s`, `500ms`, `2m`.
fn secs(d: &str) -> Result<f64> {
    let d = d.trim();
    let split = d
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(d.len());
    let (n, unit) = d.split_at(split);
    let n: f64 = n
        .parse()
        .with_context(|| format!("bad duration {d:?} (e.g. 60, 60s, 2m)"))?;
    Ok(n * match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("bad duration {d:?} (e.g. 60, 60s, 2m)"),
    })
}

/// Bench's own option names: after a loadgen option they would reach loadgen instead.
const OWN_OPTIONS: [&str; 9] = [
    "--instances",
    "--duration",
    "--warmup",
    "--mode",
    "--ceilings-duration",
    "--no-ceilings",
    "--no-build",
    "--sockets",
    "--rss-every",
];

impl Args {
    /// Refuses one of bench's own options among loadgen's: clap hands everything after
    /// the first option it does not know to loadgen, which would then get a second
    /// `--duration` (and fail) or an option it does not have.
    fn check_order(&self) -> Result<()> {
        if let Some(own) = self.pass.iter().find(|a| {
            OWN_OPTIONS
                .iter()
                .any(|o| a.as_str() == *o || a.starts_with(&format!("{o}=")))
        }) {
            let first = self.pass.first().map_or("", String::as_str);
            bail!("bench's own options come before loadgen's: put {own} before {first}");
        }
        Ok(())
    }

    /// The instance counts to run; one with `--sockets`.
    fn instances(&self) -> Vec<u16> {
        if self.sockets.is_some() {
            vec![1]
        } else {
            self.instances.0.clone()
        }
    }
}

/// User + system CPU ticks of `pid` so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat[stat.rfind(')')? + 2..].split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

fn git_rev() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()
    };
    let rev = out(&["rev-parse", "--short", "HEAD"])
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        });
    let dirty = out(&["diff", "--quiet", "HEAD"]).is_some_and(|o| !o.status.success());
    if dirty {
        format!("{rev}+dirty")
    } else {
        rev
    }
}

fn machine() -> Value {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(": ").map(|(_, m)| m.to_owned()))
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    json!({ "cpus": cpus, "model": model })
}

/// The last JSON line loadgen printed.
fn loadgen_result(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .and_then(|l| serde_json::from_str(l).ok())
        })
        .unwrap_or_else(|| json!({ "error": "loadgen printed no result" }))
}

struct Bench {
    args: Args,
    bin_dir: PathBuf,
    logs: PathBuf,
    results: PathBuf,
    stamp: String,
    git: String,
    machine: Value,
    secret: String,
}

impl Bench {
    fn record(&self, kind: &str, n: u16, result: Value, extra: Map<String, Value>) -> Result<()> {
        use std::io::Write;
        let mut out = Map::new();
        out.insert("kind".into(), json!(kind));
        out.insert("instances".into(), json!(n));
        out.insert("at".into(), json!(utc("+%FT%TZ")));
        out.insert("bench".into(), json!(self.stamp));
        out.insert("git".into(), json!(self.git));
        out.insert("machine".into(), self.machine.clone());
        if let Value::Object(r) = result {
            out.extend(r);
        }
        out.insert("kind".into(), json!(kind));
        out.extend(extra);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.results)?;
        writeln!(f, "{}", Value::Object(out))?;
        Ok(())
    }

    async fn loadgen(&self, args: &[String], out: &Path) -> Result<bool> {
        let file = std::fs::File::create(out)?;
        let status = tokio::process::Command::new(self.bin_dir.join("loadgen"))
            .args(args)
            .stdout(file)
            .kill_on_drop(true)
            .status()
            .await?;
        if !status.success() {
            eprintln!("bench: loadgen {} exited with {status}", args[0]);
        }
        Ok(status.success())
    }

    async fn round(
        &self,
        n: u16,
        first: bool,
        stack: &Stack,
        services: &mut Services,
    ) -> Result<()> {
        let ports = free_ports(2 * usize::from(n))?;
        let (mut ingress, mut fanout) = (Vec::new(), Vec::new());
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        for svc in SERVICES {
            for i in 0..n {
                let (addr, url) = match svc {
                    "ingress" => {
                        let p = ports[usize::from(i)];
                        (
                            ("INGRESS_ADDR", format!("127.0.0.1:{p}")),
                            Some(format!("http://127.0.0.1:{p}")),
                        )
                    }
                    "fanout" => {
                        let p = ports[usize::from(n + i)];
                        (
                            ("FANOUT_ADDR", format!("127.0.0.1:{p}")),
                            Some(format!("http://127.0.0.1:{p}")),
                        )
                    }
                    _ => (("HEALTH_ADDR", "127.0.0.1:0".to_owned()), None),
                };
                let env = vec![
                    (addr.0.to_owned(), addr.1),
                    ("JWT_SECRET".into(), self.secret.clone()),
                    ("RUST_LOG".into(), rust_log.clone()),
                    ("MONGODB_DB".into(), "pos".into()),
                    // The benchmark measures the pipeline: a shop's rate limit would cap it.
                    ("RATE_LIMIT_TENANT".into(), "0".into()),
                    ("RATE_LIMIT_TERMINAL".into(), "0".into()),
                ];
                let name = format!("{svc}-{i}");
                services.start_with(
                    Launch {
                        log: self.logs.join(format!("n{n}-{name}.log")),
                        name,
                        bin: self.bin_dir.join(svc),
                        service: svc,
                        health: url.as_ref().map(|u| format!("{u}/health")),
                    },
                    stack,
                    &env,
                )?;
                match svc {
                    "ingress" => ingress.extend(url),
                    "fanout" => fanout.extend(url),
                    _ => {}
                }
            }
        }
        services.wait_healthy(Duration::from_secs(60)).await?;
        let (ing, fan) = (ingress.join(","), fanout.join(","));
        let a = &self.args;

        if a.ceilings && first {
            eprintln!(
                "bench: loadgen ceilings ({}s per measurement)",
                a.ceilings_duration
            );
            let nats = stack.nats_url().replacen(
                "nats://",
                &format!("nats://operator:{}@", stack.password("operator")),
                1,
            );
            let out = self.logs.join(format!("n{n}-ceilings.json"));
            // The servers' pids: the floor reports their CPU per operation.
            let (nats_pid, mongod_pid) = (
                stack.nats[0].proc.pid.to_string(),
                stack.mongod[0].1.pid.to_string(),
            );
            let args: Vec<String> = [
                "ceilings",
                "--nats",
                &nats,
                "--mongo",
                &stack.mongodb_uri(),
                "--duration",
                &a.ceilings_duration,
                "--nats-pid",
                &nats_pid,
                "--mongod-pid",
                &mongod_pid,
                "--json",
            ]
            .map(String::from)
            .into();
            self.loadgen(&args, &out).await?;
            self.record("ceilings", n, loadgen_result(&out), Map::new())?;
        }

        if let Some(sockets) = a.sockets {
            let fanout_pid = services
                .pids()
                .into_iter()
                .find(|(name, _)| name == "fanout-0")
                .map_or(0, |(_, p)| p);
            let out = self.logs.join(format!("n{n}-sockets.json"));
            let mut args: Vec<String> = vec![
                "sockets".into(),
                "--ingress".into(),
                ingress[0].clone(),
                "--fanout".into(),
                fanout[0].clone(),
                "--secret".into(),
                self.secret.clone(),
                "--sockets".into(),
                sockets.to_string(),
                "--fanout-pid".into(),
                fanout_pid.to_string(),
                "--json".into(),
            ];
            args.extend(a.pass.iter().cloned());
            eprintln!(
                "bench: loadgen sockets --sockets {sockets} on {}",
                fanout[0]
            );
            self.loadgen(&args, &out).await?;
            return self.record("sockets", n, loadgen_result(&out), Map::new());
        }

        // Every process measured: the services and the servers of this round's stack.
        let mut procs = services.pids();
        procs.push(("nats-0".into(), stack.nats[0].proc.pid));
        procs.push(("redis".into(), stack.redis.1.pid));
        procs.push(("mongod-0".into(), stack.mongod[0].1.pid));

        let warmup = Duration::from_secs_f64(secs(&a.warmup)?);
        let measured = Duration::from_secs_f64(secs(&a.duration)?);
        let monitor = format!(
            "http://127.0.0.1:{}/jsz?consumers=true&config=true",
            stack.nats[0].monitor_port
        );
        let counters = Counters {
            jsz: monitor.clone(),
            // One client for both reads: connecting is not part of what is measured.
            mongo: mongodb::Client::with_uri_str(&stack.mongodb_uri())
                .await
                .ok(),
            redis_port: stack.redis.0,
        };
        let observe = {
            let procs = procs.clone();
            async move {
                tokio::time::sleep(warmup).await;
                let before: Vec<Option<u64>> = procs.iter().map(|(_, p)| cpu_ticks(*p)).collect();
                let start = counters.read().await;
                let t0 = Instant::now();
                tokio::time::sleep(measured / 2).await;
                let consumers = consumers(&monitor).await;
                tokio::time::sleep(measured.saturating_sub(t0.elapsed())).await;
                let wall = t0.elapsed().as_secs_f64();
                let end = counters.read().await;
                let mut cpu = Map::new();
                let mut cpu_secs = Vec::new();
                for ((name, pid), b) in procs.iter().zip(before) {
                    if let (Some(b), Some(a)) = (b, cpu_ticks(*pid)) {
                        let secs = (a - b) as f64 / USER_HZ;
                        let pct = 100.0 * secs / wall;
                        cpu.insert(name.clone(), json!((pct * 10.0).round() / 10.0));
                        cpu_secs.push((name.clone(), secs));
                    }
                }
                let budget = budget(&start, &end, &cpu_secs);
                (Value::Object(cpu), consumers, budget, end.kept)
            }
        };
        let rss_every = Duration::from_secs(a.rss_every);
        let out = self.logs.join(format!("n{n}-pipeline.json"));
        let mut args: Vec<String> = vec![
            "pipeline".into(),
            "--ingress".into(),
            ing,
            "--fanout".into(),
            fan,
            "--secret".into(),
            self.secret.clone(),
            "--mode".into(),
            a.mode.clone(),
            "--duration".into(),
            a.duration.clone(),
            "--warmup".into(),
            a.warmup.clone(),
            "--json".into(),
        ];
        args.extend(a.pass.iter().cloned());
        eprintln!(
            "bench: loadgen pipeline --mode {} --duration {} --warmup {} {}",
            a.mode,
            a.duration,
            a.warmup,
            a.pass.join(" ")
        );
        // RSS is sampled for as long as loadgen runs; the observer ends on its own.
        let rss = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Vec<u64>>::new()));
        let sampler = {
            let rss = rss.clone();
            let procs = procs.clone();
            tokio::spawn(async move {
                loop {
                    for (name, pid) in &procs {
                        if let Some(m) = rss_mib(*pid) {
                            rss.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(name.clone())
                                .or_default()
                                .push(m);
                        }
                    }
                    tokio::time::sleep(rss_every).await;
                }
            })
        };
        let ((cpu, consumers, budget, kept), _) = tokio::join!(observe, self.loadgen(&args, &out));
        sampler.abort();
        let rss: Map<String, Value> = rss
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, v)| {
                let first = v.first().copied().unwrap_or(0);
                let last = v.last().copied().unwrap_or(0);
                let max = v.iter().copied().max().unwrap_or(0);
                (
                    name.clone(),
                    json!({ "first": first, "last": last, "max": max, "samples": v.len(), "series": v }),
                )
            })
            .collect();
        let health: Value = match reqwest::get(format!("{}/health", ingress[0])).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let warnings: Map<String, Value> = services
            .pids()
            .into_iter()
            .map(|(name, _)| {
                let log = std::fs::read_to_string(self.logs.join(format!("n{n}-{name}.log")))
                    .unwrap_or_default();
                let count = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .count();
                (name, json!(count))
            })
            .collect();
        eprintln!("bench: CPU during the run (% of one core): {cpu}");
        eprintln!(
            "bench: RSS in MiB (first / last / max, every {}s): {}",
            a.rss_every,
            Value::Object(rss.clone())
        );
        eprintln!("bench: durable consumers mid-run: {consumers}");
        // What nats-server's memory follows: it indexes every subject the streams keep.
        eprintln!("bench: streams at the end of the window (messages, subjects, MiB kept): {kept}");
        let mut extra = Map::new();
        extra.insert("cpu_pct_of_one_core".into(), cpu);
        extra.insert("health_after".into(), health);
        extra.insert("log_warnings".into(), Value::Object(warnings));
        extra.insert("consumers_mid_run".into(), consumers);
        extra.insert("streams_at_end".into(), kept);
        extra.insert("rss_mib".into(), Value::Object(rss));
        extra.insert("budget_per_invoice".into(), budget);
        self.record("pipeline", n, loadgen_result(&out), extra)
    }
}

/// UTC now in `format` (coreutils' `date`, which every Debian has).
fn utc(format: &str) -> String {
    std::process::Command::new("date")
        .args(["-u", format])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Each durable consumer's backlog, from the NATS monitoring endpoint.
/// Where the per-invoice budget's counters are read: NATS monitoring (`/jsz`), MongoDB's
/// `serverStatus` and Redis' `INFO stats`.
struct Counters {
    jsz: String,
    mongo: Option<mongodb::Client>,
    redis_port: u16,
}

/// The counters at one instant (missing ones stay empty: the budget says n/a).
#[derive(Debug, Default)]
struct Snapshot {
    /// Per stream: messages stored so far (`last_seq`): acked publishes.
    stored: BTreeMap<String, u64>,
    /// Per stream: deliveries to all its consumers (`delivered.consumer_seq`).
    delivered: BTreeMap<String, u64>,
    /// Per stream: acks of its durable consumers (`ack_floor.consumer_seq`).
    acked: BTreeMap<String, u64>,
    /// Per stream: `[messages, subjects, MiB]` it keeps (what nats-server's memory
    /// follows); `Null` when NATS monitoring did not answer.
    kept: Value,
    /// MongoDB `opcounters` (insert, query, update, delete, getmore, command).
    mongo: BTreeMap<String, u64>,
    /// Redis `total_commands_processed`.
    redis: Option<u64>,
}

impl Counters {
    async fn read(&self) -> Snapshot {
        let mut s = Snapshot::default();
        if let Some(streams) = jsz_streams(&self.jsz).await {
            let mut kept = Map::new();
            for stream in &streams {
                let name = stream["name"].as_str().unwrap_or("?").to_owned();
                let state = &stream["state"];
                let seq = state["last_seq"].as_u64().unwrap_or(0);
                let (mut delivered, mut acked) = (0, 0);
                for c in stream["consumer_detail"].as_array().into_iter().flatten() {
                    delivered += c["delivered"]["consumer_seq"].as_u64().unwrap_or(0);
                    if c["config"]["durable_name"].is_string() {
                        acked += c["ack_floor"]["consumer_seq"].as_u64().unwrap_or(0);
                    }
                }
                let mib = state["bytes"].as_f64().map(|b| (b / 1_048_576.0).round());
                kept.insert(
                    name.clone(),
                    json!([state["messages"], state["num_subjects"], mib]),
                );
                s.stored.insert(name.clone(), seq);
                s.delivered.insert(name.clone(), delivered);
                s.acked.insert(name, acked);
            }
            s.kept = Value::Object(kept);
        }
        if let Some(client) = &self.mongo {
            let status = client
                .database("admin")
                .run_command(mongodb::bson::doc! { "serverStatus": 1 })
                .await;
            if let Ok(status) = status {
                if let Ok(ops) = status.get_document("opcounters") {
                    for (k, v) in ops {
                        let n = v.as_i64().or_else(|| v.as_i32().map(i64::from));
                        s.mongo.insert(
                            k.clone(),
                            n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                        );
                    }
                }
            }
        }
        s.redis = redis_commands(self.redis_port).await;
        s
    }
}

/// Redis' `total_commands_processed`, over a plain connection (`INFO stats`).
async fn redis_commands(port: u16) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    c.write_all(b"INFO stats\r\n").await.ok()?;
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    // A bulk reply: read until the counter's line has arrived.
    while !String::from_utf8_lossy(&text).contains("total_commands_processed:")
        || !text.ends_with(b"\r\n")
    {
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What one accepted invoice cost over the measured window: CPU per process (ms), broker
/// operations, MongoDB statements and Redis commands, each divided by the submissions the
/// invoices stream stored in the window (in a steady run, the invoices completed).
fn budget(start: &Snapshot, end: &Snapshot, cpu_secs: &[(String, f64)]) -> Value {
    // A counter read at one end only has no delta (n/a), never "everything so far".
    let delta = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, k: &str| match (
        a.get(k),
        b.get(k),
    ) {
        (Some(a), Some(b)) => Some(b.saturating_sub(*a)),
        _ => None,
    };
    let invoices_stream = end
        .stored
        .keys()
        .find(|k| k.ends_with("INVOICES"))
        .cloned()
        .unwrap_or_default();
    let Some(invoices) = delta(&start.stored, &end.stored, &invoices_stream).filter(|n| *n > 0)
    else {
        return Value::Null;
    };
    let per = |n: u64| ((n as f64 / invoices as f64) * 100.0).round() / 100.0;
    let mut cpu = Map::new();
    let mut total = 0.0;
    for (name, secs) in cpu_secs {
        total += secs;
        cpu.insert(
            name.clone(),
            json!(((secs * 1000.0 / invoices as f64) * 1000.0).round() / 1000.0),
        );
    }
    cpu.insert(
        "total".into(),
        json!(((total * 1000.0 / invoices as f64) * 1000.0).round() / 1000.0),
    );
    let mut broker = Map::new();
    let (mut publishes, mut deliveries, mut acks) = (0, 0, 0);
    for stream in end.stored.keys() {
        let (Some(p), Some(d), Some(a)) = (
            delta(&start.stored, &end.stored, stream),
            delta(&start.delivered, &end.delivered, stream),
            delta(&start.acked, &end.acked, stream),
        ) else {
            continue;
        };
        publishes += p;
        deliveries += d;
        acks += a;
        broker.insert(
            stream.clone(),
            json!({ "publishes": per(p), "deliveries": per(d), "acks": per(a) }),
        );
    }
    broker.insert(
        "total".into(),
        json!({ "publishes": per(publishes), "deliveries": per(deliveries), "acks": per(acks) }),
    );
    let mut mongo = Map::new();
    let mut statements = 0;
    for k in end.mongo.keys() {
        let Some(d) = delta(&start.mongo, &end.mongo, k) else {
            continue;
        };
        if k != "command" {
            statements += d;
        }
        mongo.insert(k.clone(), json!(per(d)));
    }
    if !mongo.is_empty() {
        mongo.insert(
            "statements (all but command)".into(),
            json!(per(statements)),
        );
    }
    let redis = match (start.redis, end.redis) {
        (Some(a), Some(b)) => json!(per(b.saturating_sub(a))),
        _ => Value::Null,
    };
    json!({
        "invoices": invoices,
        "cpu_ms": cpu,
        "broker": broker,
        "mongodb": mongo,
        "redis_commands": redis,
    })
}

/// `nats-server 0.27 · loadgen 0.17` from a JSON object of figures per process (`None`:
/// absent or empty).
fn per_process(figures: &Value) -> Option<String> {
    let m = figures.as_object().filter(|m| !m.is_empty())?;
    let parts: Vec<String> = m.iter().map(|(p, v)| format!("{p} {v}")).collect();
    Some(parts.join(" · "))
}

/// Every stream's detail in NATS monitoring's `/jsz` answer (`None`: no answer).
async fn jsz_streams(url: &str) -> Option<Vec<Value>> {
    let jsz = reqwest::get(url).await.ok()?.json::<Value>().await.ok()?;
    Some(
        jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .collect(),
    )
}

async fn consumers(url: &str) -> Value {
    let Some(streams) = jsz_streams(url).await else {
        return Value::Null;
    };
    let mut out = Map::new();
    for stream in &streams {
        for c in stream["consumer_detail"].as_array().into_iter().flatten() {
            if c["config"]["durable_name"].is_string() {
                out.insert(
                    format!("{}/{}", stream["name"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or("?")),
                    json!({ "pending": c["num_pending"], "ack_pending": c["num_ack_pending"], "redelivered": c["num_redelivered"] }),
                );
            }
        }
    }
    Value::Object(out)
}

/// The per-invoice budget of one pipeline run, as a table (issue 16's step 1).
fn print_budget(r: &Value) {
    let b = &r["budget_per_invoice"];
    println!(
        "\nbudget per invoice (N={}, {} invoices in the measured window):",
        r["instances"], b["invoices"]
    );
    let row = |what: &str, m: &Value| {
        let cells: Vec<String> = m
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("  {what:<18} {}", cells.join(" · "));
    };
    row("CPU ms", &b["cpu_ms"]);
    for (stream, ops) in b["broker"].as_object().into_iter().flatten() {
        row(&format!("broker {stream}"), ops);
    }
    row("MongoDB ops", &b["mongodb"]);
    println!("  {:<18} {}", "Redis commands", b["redis_commands"]);
}

fn summary(results: &Path) {
    let rows: Vec<Value> = std::fs::read_to_string(results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    for r in rows.iter().filter(|r| r["kind"] == "sockets") {
        let d = &r["delivery_ms"];
        println!(
            "\nsockets: {} open / {} failed on one fanout; {} KiB per socket; delivery p50 {} p99 {} ms; {} of {} COMPLETED frames missing",
            r["sockets_open"], r["sockets_failed"], r["kib_per_socket"], d["p50"], d["p99"], r["missing"], r["expected_completed_frames"]
        );
    }
    for r in rows.iter().filter(|r| r["kind"] == "ceilings") {
        println!("\nceilings (this machine, {} cores):", r["machine"]["cpus"]);
        for k in [
            "jetstream_publish_pipelined",
            "jetstream_publish_sync",
            "mongo_insert_one",
            "mongo_insert_many_100",
            "ledger_one_series",
            "jetstream_message_at_rate",
            "mongo_insert_at_rate",
            "mongo_key_lookup_at_rate",
        ] {
            if r[k].is_object() {
                // The floor (at a fixed rate) also names the CPU each operation cost.
                let cpu = per_process(&r[k]["cpu_ms_per_op"]);
                println!(
                    "  {k:<30} {:>10.0}/s   p50 {:.2} ms  p99 {:.2} ms{}",
                    f(&r[k]["per_s"]),
                    f(&r[k]["latency_ms"]["p50"]),
                    f(&r[k]["latency_ms"]["p99"]),
                    cpu.map_or_else(String::new, |c| format!("   CPU ms per op: {c}"))
                );
            }
        }
        if let Some(idle) = per_process(&r["idle_cpu_ms_per_s"]) {
            println!("  idle (no operations)           CPU ms per second: {idle}");
        }
    }
    let pipes: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "pipeline").collect();
    if !pipes.is_empty() {
        println!(
            "\n{:<3} {:<6} {:>10} {:>10} {:>17} {:>17} {:>6} {:>5} {:>4} {:>10}",
            "N",
            "mode",
            "accepted/s",
            "complet/s",
            "accept p50/p99 ms",
            "e2e p50/p99 ms",
            "errors",
            "never",
            "dups",
            "SoR lag s"
        );
        for r in &pipes {
            let (a, e) = (&r["accept_ms"], &r["e2e_ms"]);
            let lag = r["persisted"]["caught_up_s"]
                .as_f64()
                .map_or("n/a".into(), |l| format!("{l:.1}"));
            println!(
                "{:<3} {:<6} {:>10.1} {:>10.1} {:>8.1}/{:<8.1} {:>8.1}/{:<8.1} {:>6} {:>5} {:>4} {:>10}",
                r["instances"], r["mode"].as_str().unwrap_or("?"), f(&r["accepted_per_s"]), f(&r["completed_per_s"]),
                f(&a["p50"]), f(&a["p99"]), f(&e["p50"]), f(&e["p99"]),
                r["errors_total"], r["never_completed"], r["duplicates_seen"], lag
            );
        }
        println!("(SoR lag: seconds after the load stopped until GET /invoices?state=COMPLETED listed every completed invoice)");
        for r in pipes.iter().filter(|r| r["budget_per_invoice"].is_object()) {
            print_budget(r);
        }
    }
    println!();
}

pub async fn run(args: Args) -> Result<bool> {
    args.check_order()?;
    let bin_dir =
        std::env::var("POS_BIN_DIR").map_or_else(|_| root().join("target/release"), PathBuf::from);
    if args.build {
        let mut cmd =
            tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--release", "-p", "loadgen"]);
        for s in SERVICES {
            cmd.args(["-p", s]);
        }
        eprintln!("bench: cargo build --release (services + loadgen)");
        anyhow::ensure!(cmd.status().await?.success(), "cargo build failed");
    }
    for b in SERVICES.iter().chain(&["loadgen"]) {
        anyhow::ensure!(
            bin_dir.join(b).is_file(),
            "missing {} (build failed?)",
            bin_dir.join(b).display()
        );
    }
    crate::install::install(false)?;
    // Many sockets need many descriptors, in fanout and loadgen alike (both inherit it).
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(65_536),
            hard,
        );
    }
    let dir = root().join(".stack/bench");
    let stamp = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let bench = Bench {
        logs: dir.join(format!("logs-{stamp}")),
        results: dir.join(format!("results-{stamp}.jsonl")),
        stamp,
        git: git_rev(),
        machine: machine(),
        secret: std::env::var("JWT_SECRET").unwrap_or_else(|_| DEV_SECRET.into()),
        bin_dir,
        args,
    };
    std::fs::create_dir_all(&bench.logs)?;
    let mut first = true;
    for n in bench.args.instances() {
        eprintln!("bench: ================ {n} instance(s) of each service ================");
        let stack_dir = dir.join(format!("n{n}"));
        Stack::down(&stack_dir, true).await?;
        let stack = Stack::up(&stack_dir, 1, Sync::Interval, Ports::Free).await?;
        let mut services = Services::default();
        let outcome = tokio::select! {
            r = bench.round(n, first, &stack, &mut services) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        services.stop(Duration::from_secs(15)).await;
        for f in ["nats-0", "redis", "mongod-0"] {
            let _ = std::fs::copy(
                stack_dir.join(format!("{f}.log")),
                bench.logs.join(format!("n{n}-{f}.log")),
            );
        }
        Stack::down(&stack_dir, true).await?;
        outcome?;
        first = false;
    }
    summary(&bench.results);
    eprintln!(
        "bench: results {}   logs {}",
        bench.results.display(),
        bench.logs.display()
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn bench_options_then_loadgen_options() {
        let a = parse(&[
            "--instances",
            "1 2",
            "--duration",
            "10",
            "--no-build",
            "--concurrency",
            "50",
            "--rate=800",
        ])
        .unwrap();
        assert_eq!(a.instances(), vec![1, 2]);
        assert_eq!(a.duration, "10");
        assert!(!a.build && a.ceilings);
        assert_eq!(a.pass, ["--concurrency", "50", "--rate=800"]);
    }

    #[test]
    fn a_bench_option_after_a_loadgen_option_is_refused_not_passed_on() {
        let a = parse(&["--rate", "800", "--duration", "30"]).unwrap();
        let e = a.check_order().unwrap_err().to_string();
        assert!(e.contains("put --duration before --rate"), "{e}");
        let a = parse(&["--rate", "800", "--no-build=true"]).unwrap();
        assert!(a.check_order().is_err());
        let a = parse(&["--duration", "30", "--rate", "800"]).unwrap();
        assert!(a.check_order().is_ok());
    }

    #[test]
    fn sockets_runs_one_instance_of_each() {
        let a = parse(&["--instances", "1 3", "--sockets", "5000"]).unwrap();
        assert_eq!(a.instances(), vec![1]);
    }

    #[test]
    fn bad_values_are_refused_before_anything_runs() {
        for argv in [
            &["--instances", "0"][..],
            &["--instances", ""],
            &["--duration", "ten"],
            &["--mode", "half-open"],
            &["--rss-every", "0"],
            &["--sockets", "0"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?} accepted");
        }
    }
}
