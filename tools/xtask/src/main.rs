//! `xtask`: the project's own operations tool, in Rust (invoked by `./x`; bash is left
//! only in `./x`, which bootstraps `just`).
//!
//! - `install` (`install.rs`): nats-server, mongod, redis-server (and chromium) on a fresh
//!   machine, cached;
//! - `stack` / `cluster` (`stack.rs`): the infrastructure, one node of each or a 3-node
//!   cluster, detached, recorded in its dir; `cluster chaos` (`chaos.rs`) the node-loss
//!   drill under load;
//! - `up` (`up.rs` + `services.rs`): the whole system until Ctrl-C;
//! - `test` (`test.rs`): the whole suite against a private stack;
//! - `bench` (`bench.rs`): loadgen against a private stack, CPU and memory of every process;
//! - `jwt`: a dev token signed by `auth`'s own signing (what the services verify).
//!
//! Processes are found again by pid + start time and signalled from Rust (`procs.rs`).

mod bench;
mod chaos;
mod install;
mod procs;
mod services;
mod stack;
mod test;
mod up;

use stack as cluster; // the cluster subcommands act on a 3-node stack

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "POS backend operations: install, stack, up, test, cluster, chaos drill"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 JWT for local development (claims sub, tenant, role, exp).
    Jwt {
        /// The services' secret (default: $JWT_SECRET, else the dev default of ./x up).
        #[arg(long)]
        secret: Option<String>,
        #[arg(long, default_value = "demo")]
        tenant: String,
        /// The caller, e.g. the terminal id.
        #[arg(long, default_value = "T1")]
        sub: String,
        #[arg(long, value_enum, default_value_t = RoleArg::Terminal)]
        role: RoleArg,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 86_400)]
        ttl: i64,
    },
    /// Install nats-server, mongod, redis-server (cached; `--browser`: also chromium).
    Install {
        #[arg(long)]
        browser: bool,
    },
    /// The whole system on localhost until Ctrl-C (`--cluster`: 3 NATS nodes, R3).
    Up {
        #[arg(long)]
        cluster: bool,
        /// Use the binaries in --bin-dir as they are.
        #[arg(long)]
        no_build: bool,
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
    },
    /// The whole test suite against a private stack (arguments go to `cargo test`).
    Test,
    /// Benchmark through the public API on a private stack.
    Bench(bench::Args),
    /// One NATS, one Redis, a one-member MongoDB replica set on loopback.
    Stack {
        #[command(subcommand)]
        action: StackAction,
    },
    /// A 3-node NATS cluster + 3-member MongoDB replica set + Redis on loopback.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Subcommand)]
enum StackAction {
    /// Start the servers (the well-known ports, or --free-ports), wait until ready, write
    /// DIR/env; servers of DIR that stopped are started again with the same ports.
    Up {
        #[arg(long, default_value = ".stack/dev")]
        dir: PathBuf,
        #[arg(long)]
        free_ports: bool,
    },
    /// Stop every server of DIR (SIGTERM, then SIGKILL).
    Down {
        #[arg(long, default_value = ".stack/dev")]
        dir: PathBuf,
        /// Also delete DIR (data and logs).
        #[arg(long)]
        purge: bool,
    },
    /// What runs in DIR.
    Status {
        #[arg(long, default_value = ".stack/dev")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start every server (free ports), wait until healthy, write DIR/env.
    Up {
        #[arg(long, default_value = ".stack/cluster")]
        dir: PathBuf,
        /// JetStream flush policy on every node.
        #[arg(long, value_enum, default_value_t = cluster::Sync::Interval)]
        sync: cluster::Sync,
    },
    /// Stop every server of DIR (SIGTERM, then SIGKILL).
    Down {
        #[arg(long, default_value = ".stack/cluster")]
        dir: PathBuf,
        /// Also delete DIR (data and logs).
        #[arg(long)]
        purge: bool,
    },
    /// What runs in DIR.
    Status {
        #[arg(long, default_value = ".stack/cluster")]
        dir: PathBuf,
    },
    /// kill -9 of NATS node N (0, 1 or 2).
    Kill {
        node: usize,
        #[arg(long, default_value = ".stack/cluster")]
        dir: PathBuf,
    },
    /// SIGTERM NATS node N and wait until it exits.
    Stop {
        node: usize,
        #[arg(long, default_value = ".stack/cluster")]
        dir: PathBuf,
    },
    /// Start NATS node N again (same ports, store, name); wait until healthy.
    Start {
        node: usize,
        #[arg(long, default_value = ".stack/cluster")]
        dir: PathBuf,
    },
    /// The node-loss drill under load: fresh cluster, release services, loadgen at
    /// RATE/s; kill -9 the stream leader, restart it, rolling-restart all three; then
    /// 0 lost, 0 duplicated, 0 stuck, no WebSocket gap — or exit 1.
    Chaos {
        #[arg(long, default_value = ".stack/chaos")]
        dir: PathBuf,
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 90)]
        duration: u64,
        /// Where the release binaries are.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = cluster::Sync::Interval)]
        sync: cluster::Sync,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Terminal,
    Manager,
    Admin,
}

fn node_index(node: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        node < cluster::CLUSTER_NODES,
        "node {node}: expected 0, 1 or 2"
    );
    Ok(node)
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let action = match cli.command {
        Command::Jwt {
            secret,
            tenant,
            sub,
            role,
            ttl,
        } => {
            let role = match role {
                RoleArg::Terminal => auth::Role::Terminal,
                RoleArg::Manager => auth::Role::Manager,
                RoleArg::Admin => auth::Role::Admin,
            };
            let secret = secret
                .or_else(|| std::env::var("JWT_SECRET").ok().filter(|s| !s.is_empty()))
                .unwrap_or_else(|| services::DEV_SECRET.to_owned());
            println!(
                "{}",
                services::dev_token(&secret, &tenant, &sub, role, ttl)?
            );
            return Ok(true);
        }
        Command::Install { browser } => {
            install::install(browser)?;
            return Ok(true);
        }
        Command::Up {
            cluster,
            no_build,
            bin_dir,
        } => {
            return up::run(up::Args {
                cluster,
                build: !no_build,
                bin_dir,
            })
            .await
        }
        Command::Bench(args) => return bench::run(args).await,
        // Parsed by hand in `main`: its arguments go to cargo verbatim.
        Command::Test => unreachable!("handled in main"),
        Command::Stack { action } => {
            match action {
                StackAction::Up { dir, free_ports } => {
                    let ports = if free_ports {
                        stack::Ports::Free
                    } else {
                        stack::Ports::WellKnown
                    };
                    let s = stack::Stack::up(&dir, 1, stack::Sync::Interval, ports).await?;
                    print!("{}", s.status());
                    println!("use it with: source {}/env", s.dir.display());
                }
                StackAction::Down { dir, purge } => stack::Stack::down(&dir, purge).await?,
                StackAction::Status { dir } => match stack::Stack::load(&dir) {
                    Ok(s) => print!("{}", s.status()),
                    Err(_) => println!("no stack recorded in {}", dir.display()),
                },
            }
            return Ok(true);
        }
        Command::Cluster { action } => action,
    };
    match action {
        ClusterAction::Up { dir, sync } => {
            let c = cluster::Stack::up(&dir, cluster::CLUSTER_NODES, sync, cluster::Ports::Free)
                .await?;
            print!("{}", c.status());
            println!("use it with: source {}/env", c.dir.display());
        }
        ClusterAction::Down { dir, purge } => cluster::Stack::down(&dir, purge).await?,
        ClusterAction::Status { dir } => print!("{}", cluster::Stack::load(&dir)?.status()),
        ClusterAction::Kill { node, dir } => {
            cluster::Stack::load(&dir)?
                .kill_nats(node_index(node)?)
                .await?;
        }
        ClusterAction::Stop { node, dir } => {
            cluster::Stack::load(&dir)?
                .stop_nats(node_index(node)?)
                .await?;
        }
        ClusterAction::Start { node, dir } => {
            cluster::Stack::load(&dir)?
                .start_nats(node_index(node)?)
                .await?;
        }
        ClusterAction::Chaos {
            dir,
            rate,
            duration,
            bin_dir,
            sync,
        } => {
            std::fs::create_dir_all(&dir)?;
            return chaos::run(chaos::Args {
                dir: dir.canonicalize()?,
                rate,
                duration: Duration::from_secs(duration),
                bin_dir,
                sync,
            })
            .await;
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let argv: Vec<String> = std::env::args().collect();
    let outcome = if argv.get(1).is_some_and(|a| a == "test") {
        // `./x test -- --nocapture` must reach cargo as it was typed: no clap here.
        runtime.block_on(test::run_suite(argv[2..].to_vec()))
    } else {
        runtime.block_on(run(Cli::parse()))
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
