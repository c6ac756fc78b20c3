//! `./x up`: the whole system on localhost until Ctrl-C — the stack (one node of each
//! on the well-known ports, data in `.stack/dev`; with `--cluster` 3 NATS nodes with R3
//! streams and a 3-member replica set on free ports in `.stack/cluster`), the release
//! services, a banner with the URLs and dev tokens. A service that exits is a failure:
//! everything stops and the tail of its log is printed. The stack's servers are stopped
//! too; their record and data stay for the next `./x up`.

use crate::services::{dev_token, Services, DEV_SECRET, SERVICES};
use crate::stack::{Ports, Stack, Sync, CLUSTER_NODES};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Args {
    pub cluster: bool,
    pub build: bool,
    pub bin_dir: PathBuf,
}

fn instances(service: &str) -> Result<u16> {
    let var = format!("{}_INSTANCES", service.to_uppercase());
    match std::env::var(&var) {
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => anyhow::bail!("{var}={v:?}: expected a whole number ≥ 1"),
        },
    }
}

/// The last lines of `log`.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn run(args: Args) -> Result<bool> {
    crate::install::install(false)?;
    if args.build {
        let mut cmd =
            tokio::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
        cmd.args(["build", "--release", "-p", "xtask"]);
        for s in SERVICES {
            cmd.args(["-p", s]);
        }
        eprintln!("xtask: cargo build --release ({})", SERVICES.join(" "));
        anyhow::ensure!(cmd.status().await?.success(), "cargo build failed");
    }
    let (dir, nodes, ports) = if args.cluster {
        (".stack/cluster", CLUSTER_NODES, Ports::Free)
    } else {
        (".stack/dev", 1, Ports::WellKnown)
    };
    let dir = crate::stack::root().join(dir);
    let stack = Stack::up(&dir, nodes, Sync::Interval, ports).await?;
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| DEV_SECRET.into());
    let extra = vec![
        ("JWT_SECRET".to_owned(), secret.clone()),
        (
            "MONGODB_DB".to_owned(),
            std::env::var("MONGODB_DB").unwrap_or_else(|_| "pos".into()),
        ),
        (
            "RUST_LOG".to_owned(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ];
    let mut services = Services::default();
    let started = async {
        for s in SERVICES {
            for i in 0..instances(s)? {
                services.start(&args.bin_dir, &stack, s, i, &extra)?;
            }
        }
        services.wait_healthy(Duration::from_secs(60)).await
    }
    .await;
    if let Err(e) = started {
        services.stop(Duration::from_secs(15)).await;
        for inst in std::fs::read_dir(&stack.dir)?.flatten() {
            let p = inst.path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if SERVICES.iter().any(|s| name.starts_with(s)) && name.ends_with(".log") {
                eprintln!("----- last lines of {}\n{}", p.display(), tail(&p, 20));
            }
        }
        stack.stop().await?;
        return Err(e);
    }
    let terminal = dev_token(&secret, "demo", "T1", auth::Role::Terminal, 86_400)?;
    let operator = dev_token(&secret, "ops", "operator", auth::Role::Admin, 43_200)?;
    let names: Vec<&str> = services.instances.iter().map(|i| i.name.as_str()).collect();
    println!(
        r#"
POS backend is up.
  REST       http://localhost:3000
  WebSocket  ws://localhost:3001/ws
  Console    http://localhost:3004/#token={operator}
             (an admin token of the operators' tenant ops, valid 12 h)
  NATS       {nats}  (monitor http://127.0.0.1:{monitor})
  Redis      {redis}
  MongoDB    {mongo}
  Logs       {dir}/*.log
  Instances  {names}

Dev JWT (tenant demo, sub T1, role terminal, valid 24 h; more: ./x jwt --help):
  export TOKEN='{terminal}'

Post an invoice:
  curl -sS -X POST localhost:3000/invoices -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{"idempotencyKey":"T1-0001","terminalId":"T1","currency":"EUR","items":[{{"sku":"COFFEE-L","name":"Coffee large","quantity":"2","unitPrice":"3.50","taxRate":"0.10"}}],"payments":[{{"method":"cash","amount":"10.00"}}]}}'

Press Ctrl-C to stop everything."#,
        nats = stack.nats_url(),
        monitor = stack.nats[0].monitor_port,
        redis = stack.redis_url(),
        mongo = stack.mongodb_uri(),
        dir = stack.dir.display(),
        names = names.join(" "),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ok = tokio::select! {
        _ = tokio::signal::ctrl_c() => { eprintln!("\nxtask: interrupted"); true }
        _ = term.recv() => { eprintln!("xtask: terminated"); true }
        (name, status) = services.any_exit() => {
            eprintln!("xtask: {name} exited unexpectedly ({status})");
            eprintln!("----- last lines of {name}.log\n{}", tail(&stack.dir.join(format!("{name}.log")), 40));
            false
        }
    };
    eprintln!("xtask: stopping the services");
    services.stop(Duration::from_secs(15)).await;
    stack.stop().await?;
    Ok(ok)
}
