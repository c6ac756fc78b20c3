//! The infrastructure, one supervisor for every use: NATS JetStream, a MongoDB replica
//! set and one Redis on loopback — 1 node of each for `./x up`, `./x test` and `./x
//! bench`, 3 NATS nodes (R3 streams) and a 3-member replica set for `./x up --cluster`
//! and the node-loss drill.
//!
//! `up` picks the ports (the well-known ones for the dev stack, free ones otherwise),
//! starts every server detached (logs and data under DIR), waits until each node reports
//! JetStream healthy and the replica set has a primary, and writes `DIR/stack.json` (what
//! runs, how it was started) and `DIR/env` (the variables the services and tools read:
//! seed lists in `NATS_URL` and `MONGODB_URI`, `NATS_REPLICAS`, the NATS users'
//! passwords, the server binaries for tests that start private ones). `up` on a DIR whose
//! servers stopped starts them again with the same ports, data and passwords.
//! `kill`/`stop`/`start` act on one NATS node by index; `down` stops everything. The
//! binaries are the ones `xtask install` puts in the cache (or `POS_*_BIN`).

use crate::install::{cache_dir, chromium_bin, NATS_VERSION};
use crate::procs::{free_ports, wait_until, Proc};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Nodes of a cluster (`./x up --cluster`, the drill).
pub const CLUSTER_NODES: usize = 3;
const RS: &str = "rs0";
/// The users of `nats/nats-server.conf`, whose passwords the config reads from env.
const NATS_USERS: [&str; 6] = [
    "ingress",
    "processor",
    "persister",
    "fanout",
    "console",
    "operator",
];

/// How JetStream flushes to disk on each node (the durability choice, README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Sync {
    /// The server default: fsync every 2 minutes; a write is durable once a majority of
    /// the 3 nodes holds it in memory (R3 acknowledges after quorum).
    Interval,
    /// `sync_interval: always`: fsync before every acknowledgement.
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub client_port: u16,
    pub monitor_port: u16,
    pub cluster_port: u16,
    pub proc: Proc,
}

/// Which ports a stack takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// NATS 4222 (monitor 8222), Redis 6379, MongoDB 27017: the dev stack, which tools and
    /// the README's examples reach without being told where.
    WellKnown,
    /// Free loopback ports (tests, benchmarks, clusters: never in a developer's way).
    Free,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stack {
    pub dir: PathBuf,
    /// 1, or [`CLUSTER_NODES`].
    pub nodes: usize,
    pub sync: Sync,
    pub nats: Vec<Node>,
    pub mongod: Vec<(u16, Proc)>,
    pub redis: (u16, Proc),
    pub passwords: Vec<(String, String)>,
}

fn binary(var: &str, cached: PathBuf, on_path: &str) -> Result<String> {
    if let Ok(v) = std::env::var(var) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    if cached.is_file() {
        return Ok(cached.display().to_string());
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(on_path);
        if p.is_file() {
            return Ok(p.display().to_string());
        }
    }
    bail!("{on_path} not found (set {var}, or run: ./x stack-install)")
}

/// The repository's root.
pub fn root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The three server binaries: `POS_*_BIN`, else the cached install, else `PATH`.
pub struct Binaries {
    pub nats: String,
    pub mongod: String,
    pub redis: String,
}

impl Binaries {
    pub fn find() -> Result<Self> {
        Ok(Self {
            nats: binary(
                "POS_NATS_SERVER_BIN",
                cache_dir().join(format!("nats-server-{NATS_VERSION}/nats-server")),
                "nats-server",
            )?,
            mongod: binary(
                "POS_MONGOD_BIN",
                cache_dir().join("mongodb-6.0/bin/mongod"),
                "mongod",
            )?,
            redis: binary(
                "POS_REDIS_SERVER_BIN",
                PathBuf::from("/usr/bin/redis-server"),
                "redis-server",
            )?,
        })
    }
}

impl Stack {
    pub fn load(dir: &Path) -> Result<Self> {
        let f = dir.join("stack.json");
        let text = std::fs::read_to_string(&f)
            .with_context(|| format!("no stack recorded in {}", dir.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.dir.join("stack.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, self.dir.join("stack.json"))?;
        Ok(())
    }

    pub async fn up(dir: &Path, nodes: usize, sync: Sync, ports: Ports) -> Result<Self> {
        if let Ok(mut s) = Self::load(dir) {
            anyhow::ensure!(
                s.nodes == nodes,
                "{} holds a stack of {} node(s), not {nodes}: `xtask stack down --dir {0} --purge` first",
                dir.display(),
                s.nodes
            );
            s.restart_stopped().await?;
            return Ok(s);
        }
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let bins = Binaries::find()?;
        let passwords: Vec<(String, String)> = NATS_USERS
            .iter()
            .map(|u| {
                (
                    format!("NATS_PASSWORD_{}", u.to_uppercase()),
                    // a letter first: nats-server parses a leading digit as a number
                    format!("p{}", uuid::Uuid::new_v4().simple()),
                )
            })
            .collect();
        // The shared config, with the chosen flush policy.
        let conf = std::fs::read_to_string(root().join("nats/nats-server.conf"))?;
        let conf = match sync {
            Sync::Interval => conf,
            Sync::Always => conf.replacen("jetstream {", "jetstream {\n  sync_interval: always", 1),
        };
        let conf_path = dir.join("nats-server.conf");
        std::fs::write(&conf_path, conf)?;

        // Per node: client, monitor, route, mongod; then Redis.
        let ports = match ports {
            Ports::Free => free_ports(nodes * 4 + 1)?,
            Ports::WellKnown => {
                anyhow::ensure!(nodes == 1, "the well-known ports fit one node");
                let wanted = vec![4222, 8222, 6222, 27017, 6379];
                for p in &wanted {
                    if std::net::TcpListener::bind(("127.0.0.1", *p)).is_err() {
                        bail!("port {p} is taken: another server runs there (a stack from an earlier ./x up? `./x stack-down`)");
                    }
                }
                wanted
            }
        };
        let redis_port = ports[nodes * 4];
        let mut stack = Stack {
            dir: dir.clone(),
            nodes,
            sync,
            nats: Vec::new(),
            mongod: Vec::new(),
            redis: (
                redis_port,
                Proc::spawn(
                    &dir,
                    "redis",
                    &[
                        bins.redis,
                        "--bind".into(),
                        "127.0.0.1".into(),
                        "--port".into(),
                        redis_port.to_string(),
                        "--save".into(),
                        String::new(),
                        "--appendonly".into(),
                        "no".into(),
                    ],
                    &[],
                )?,
            ),
            passwords,
        };
        let routes: Vec<String> = (0..nodes)
            .map(|i| format!("nats://127.0.0.1:{}", ports[nodes * 2 + i]))
            .collect();
        for i in 0..nodes {
            let (client_port, monitor_port, cluster_port) =
                (ports[i], ports[nodes + i], ports[nodes * 2 + i]);
            let store = dir.join(format!("nats-{i}"));
            std::fs::create_dir_all(&store)?;
            let mut argv = vec![
                bins.nats.clone(),
                "-c".into(),
                conf_path.display().to_string(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client_port.to_string(),
                "-m".into(),
                monitor_port.to_string(),
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
            ];
            if nodes > 1 {
                argv.extend([
                    "-n".into(),
                    format!("pos-n{i}"),
                    "--cluster_name".into(),
                    "pos".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.join(","),
                ]);
            }
            let proc = Proc::spawn(&dir, &format!("nats-{i}"), &argv, &stack.passwords)?;
            stack.nats.push(Node {
                client_port,
                monitor_port,
                cluster_port,
                proc,
            });
        }
        for i in 0..nodes {
            let port = ports[nodes * 3 + i];
            let data = dir.join(format!("mongo-{i}"));
            std::fs::create_dir_all(&data)?;
            let argv = vec![
                bins.mongod.clone(),
                "--replSet".into(),
                RS.into(),
                "--bind_ip".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--dbpath".into(),
                data.display().to_string(),
                "--wiredTigerCacheSizeGB".into(),
                "0.25".into(),
                "--oplogSize".into(),
                "128".into(),
                "--setParameter".into(),
                "diagnosticDataCollectionEnabled=false".into(),
            ];
            stack
                .mongod
                .push((port, Proc::spawn(&dir, &format!("mongod-{i}"), &argv, &[])?));
        }
        stack.save()?;
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Every server healthy, the replica set initiated with a primary, `DIR/env` written.
    async fn wait_ready(&self) -> Result<()> {
        for i in 0..self.nodes {
            self.wait_nats(i).await?;
        }
        let redis = self.redis.0;
        wait_until(
            "redis to answer",
            Some(&self.redis.1),
            Duration::from_secs(30),
            || async move { redis_ping(redis).await },
        )
        .await?;
        self.initiate_replica_set().await?;
        self.write_env()
    }

    /// Starts again, with the recorded ports, data and passwords, whatever stopped.
    async fn restart_stopped(&mut self) -> Result<()> {
        let mut restarted = Vec::new();
        for i in 0..self.nats.len() {
            if !self.nats[i].proc.alive() {
                let argv = self.nats[i].proc.argv.clone();
                self.nats[i].proc =
                    Proc::spawn(&self.dir, &format!("nats-{i}"), &argv, &self.passwords)?;
                restarted.push(format!("nats-{i}"));
            }
        }
        for i in 0..self.mongod.len() {
            if !self.mongod[i].1.alive() {
                let argv = self.mongod[i].1.argv.clone();
                self.mongod[i].1 = Proc::spawn(&self.dir, &format!("mongod-{i}"), &argv, &[])?;
                restarted.push(format!("mongod-{i}"));
            }
        }
        if !self.redis.1.alive() {
            let argv = self.redis.1.argv.clone();
            self.redis.1 = Proc::spawn(&self.dir, "redis", &argv, &[])?;
            restarted.push("redis".into());
        }
        self.save()?;
        if restarted.is_empty() {
            eprintln!(
                "xtask: the stack in {} is running; reusing it",
                self.dir.display()
            );
        } else {
            eprintln!(
                "xtask: restarted {} in {}",
                restarted.join(", "),
                self.dir.display()
            );
        }
        self.wait_ready().await
    }

    /// JetStream on node `i` is healthy: the node is current with the meta group.
    pub async fn wait_nats(&self, i: usize) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.nats[i].monitor_port);
        wait_until(
            &format!("nats-{i} healthy ({url})"),
            Some(&self.nats[i].proc),
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    reqwest::get(&url)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await
    }

    async fn initiate_replica_set(&self) -> Result<()> {
        use mongodb::bson::doc;
        let first = self.mongod[0].0;
        for (i, (port, proc)) in self.mongod.iter().enumerate() {
            let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
            wait_until(
                &format!("mongod-{i} to answer"),
                Some(proc),
                Duration::from_secs(60),
                || {
                    let uri = uri.clone();
                    async move { ping(&uri).await }
                },
            )
            .await?;
        }
        let direct = mongodb::Client::with_uri_str(format!(
            "mongodb://127.0.0.1:{first}/?directConnection=true"
        ))
        .await?;
        let members: Vec<_> = self
            .mongod
            .iter()
            .enumerate()
            .map(|(i, (port, _))| doc! { "_id": i as i32, "host": format!("127.0.0.1:{port}") })
            .collect();
        match direct
            .database("admin")
            .run_command(doc! { "replSetInitiate": { "_id": RS, "members": members } })
            .await
        {
            Ok(_) => eprintln!(
                "xtask: replica set {RS} initiated with {} member(s)",
                self.mongod.len()
            ),
            Err(e) if e.to_string().contains("already initialized") => {}
            Err(e) => return Err(e).context("replSetInitiate"),
        }
        let uri = self.mongodb_uri();
        wait_until(
            "a replica set primary",
            None,
            Duration::from_secs(90),
            || {
                let uri = uri.clone();
                async move { ping(&uri).await }
            },
        )
        .await
    }

    pub fn nats_url(&self) -> String {
        self.nats
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn mongodb_uri(&self) -> String {
        let hosts: Vec<String> = self
            .mongod
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        if self.nodes == 1 {
            // One member: talk to it directly (no topology discovery to wait for).
            format!(
                "mongodb://{}/?replicaSet={RS}&directConnection=true",
                hosts[0]
            )
        } else {
            format!("mongodb://{}/?replicaSet={RS}", hosts.join(","))
        }
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis.0)
    }

    /// What a service needs to reach this stack (without its own NATS user).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL".to_owned(), self.nats_url()),
            ("MONGODB_URI".to_owned(), self.mongodb_uri()),
            ("REDIS_URL".to_owned(), self.redis_url()),
            ("NATS_REPLICAS".to_owned(), self.nodes.to_string()),
        ];
        env.extend(self.passwords.iter().cloned());
        env
    }

    pub fn password(&self, user: &str) -> String {
        let key = format!("NATS_PASSWORD_{}", user.to_uppercase());
        self.passwords
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Everything `DIR/env` exports: [`Stack::env`], the monitor URL, this dir, and the
    /// server binaries (tests start private servers of their own; the browser test).
    pub fn env_file_vars(&self) -> Result<Vec<(String, String)>> {
        let mut vars = self.env();
        let bins = Binaries::find()?;
        vars.extend([
            (
                "POS_NATS_MONITOR_URL".to_owned(),
                format!("http://127.0.0.1:{}", self.nats[0].monitor_port),
            ),
            ("POS_STACK_DIR".to_owned(), self.dir.display().to_string()),
            ("POS_NATS_SERVER_BIN".to_owned(), bins.nats),
            ("POS_REDIS_SERVER_BIN".to_owned(), bins.redis),
            ("POS_MONGOD_BIN".to_owned(), bins.mongod),
            (
                "POS_CHROMIUM_BIN".to_owned(),
                chromium_bin().unwrap_or_default(),
            ),
        ]);
        Ok(vars)
    }

    fn write_env(&self) -> Result<()> {
        let quote = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
        let mut text = format!(
            "# written by xtask stack up --dir {}; source it\n",
            self.dir.display()
        );
        for (k, v) in self.env_file_vars()? {
            text.push_str(&format!("export {k}={}\n", quote(&v)));
        }
        std::fs::write(self.dir.join("env"), text)?;
        Ok(())
    }

    /// kill -9 of NATS node `i`.
    pub async fn kill_nats(&self, i: usize) -> Result<()> {
        self.nats[i].proc.kill().await
    }

    /// SIGTERM (JetStream hands its leaderships over first), SIGKILL after 30 s.
    pub async fn stop_nats(&self, i: usize) -> Result<()> {
        self.nats[i].proc.stop(Duration::from_secs(30)).await
    }

    /// Starts node `i` again with the same ports, store and name; waits until healthy.
    pub async fn start_nats(&mut self, i: usize) -> Result<()> {
        let argv = self.nats[i].proc.argv.clone();
        self.nats[i].proc = Proc::spawn(&self.dir, &format!("nats-{i}"), &argv, &self.passwords)?;
        self.save()?;
        self.wait_nats(i).await
    }

    /// Stops every server, keeping the record: the next `up` on DIR starts them again
    /// with the same ports, data and passwords (a replica set's members are its ports).
    pub async fn stop(&self) -> Result<()> {
        for n in &self.nats {
            n.proc.stop(Duration::from_secs(20)).await?;
        }
        for (_, m) in &self.mongod {
            m.stop(Duration::from_secs(20)).await?;
        }
        self.redis.1.stop(Duration::from_secs(10)).await?;
        eprintln!("xtask: stack in {} stopped", self.dir.display());
        Ok(())
    }

    /// Stops everything DIR records and forgets it; `purge` also deletes DIR.
    pub async fn down(dir: &Path, purge: bool) -> Result<()> {
        match Self::load(dir) {
            Ok(s) => {
                s.stop().await?;
                let _ = std::fs::remove_file(dir.join("stack.json"));
            }
            Err(_) => eprintln!("xtask: no stack recorded in {}", dir.display()),
        }
        if purge && dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    pub fn status(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nats.iter().enumerate() {
            out.push_str(&format!(
                "nats-{i}   {}  client 127.0.0.1:{}  monitor :{}  pid {}\n",
                if n.proc.alive() { "running" } else { "stopped" },
                n.client_port,
                n.monitor_port,
                n.proc.pid
            ));
        }
        for (i, (p, m)) in self.mongod.iter().enumerate() {
            out.push_str(&format!(
                "mongod-{i} {}  127.0.0.1:{p}  pid {}\n",
                if m.alive() { "running" } else { "stopped" },
                m.pid
            ));
        }
        out.push_str(&format!(
            "redis    {}  127.0.0.1:{}\n",
            if self.redis.1.alive() {
                "running"
            } else {
                "stopped"
            },
            self.redis.0
        ));
        out.push_str(&format!(
            "sync: {:?}; env: {}\n",
            self.sync,
            self.dir.join("env").display()
        ));
        out
    }
}

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let mut buf = [0u8; 16];
    c.write_all(b"PING\r\n").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await,
            Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
        )
}

async fn ping(uri: &str) -> bool {
    let Ok(mut opts) = mongodb::options::ClientOptions::parse(uri).await else {
        return false;
    };
    opts.server_selection_timeout = Some(Duration::from_secs(2));
    let Ok(client) = mongodb::Client::with_options(opts) else {
        return false;
    };
    client
        .database("admin")
        .run_command(mongodb::bson::doc! { "ping": 1 })
        .await
        .is_ok()
}
