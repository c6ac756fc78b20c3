//! `xtask`: the project's own operations tool, in Rust (invoked by `./x`).
//!
//! `xtask jwt` prints a dev token signed by `auth`'s own signing (what the services
//! verify). It owns the cluster: `xtask cluster up|down|status|kill|stop|start` runs a
//! 3-node NATS JetStream cluster and a 3-member MongoDB replica set on loopback
//! (`cluster.rs`), and `xtask cluster chaos` is the node-loss drill under load
//! (`chaos.rs`). Processes are started detached and found again by pid + start time
//! (`procs.rs`), signalled from Rust. The single-node dev/test stack is still
//! `scripts/stack.sh` (see README § Scripts).

mod chaos;
mod cluster;
mod procs;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "xtask", about = "POS backend operations: cluster, chaos drill")]
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
    /// A 3-node NATS cluster + 3-member MongoDB replica set + Redis on loopback.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
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
    anyhow::ensure!(node < cluster::NODES, "node {node}: expected 0, 1 or 2");
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
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let claims = auth::Claims {
                sub,
                tenant,
                role: match role {
                    RoleArg::Terminal => auth::Role::Terminal,
                    RoleArg::Manager => auth::Role::Manager,
                    RoleArg::Admin => auth::Role::Admin,
                },
                exp: i64::try_from(now)? + ttl,
            };
            let secret = secret
                .or_else(|| std::env::var("JWT_SECRET").ok().filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "dev-secret-change-me-0123456789abcdef".to_owned());
            println!("{}", auth::sign(&secret, &claims));
            return Ok(true);
        }
        Command::Cluster { action } => action,
    };
    match action {
        ClusterAction::Up { dir, sync } => {
            let c = cluster::Cluster::up(&dir, sync).await?;
            print!("{}", c.status());
            println!("use it with: source {}/env", c.dir.display());
        }
        ClusterAction::Down { dir, purge } => cluster::Cluster::down(&dir, purge).await?,
        ClusterAction::Status { dir } => print!("{}", cluster::Cluster::load(&dir)?.status()),
        ClusterAction::Kill { node, dir } => {
            cluster::Cluster::load(&dir)?
                .kill_nats(node_index(node)?)
                .await?;
        }
        ClusterAction::Stop { node, dir } => {
            cluster::Cluster::load(&dir)?
                .stop_nats(node_index(node)?)
                .await?;
        }
        ClusterAction::Start { node, dir } => {
            cluster::Cluster::load(&dir)?
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
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
