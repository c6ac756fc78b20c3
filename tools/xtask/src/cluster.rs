//! `xtask cluster`: a 3-node NATS JetStream cluster, a 3-member MongoDB replica set and
//! one Redis on loopback, for R3 streams and node-loss drills.
//!
//! `up` picks free ports, starts every server detached (logs and data under DIR),
//! waits until each node reports JetStream healthy and the replica set has a primary,
//! and writes `DIR/cluster.json` (what runs, how it was started) and `DIR/env` (the
//! variables the services and tools read: seed lists in `NATS_URL` and `MONGODB_URI`,
//! `NATS_REPLICAS=3`, the NATS users' passwords). `kill`/`stop`/`start` act on one node
//! by index; `down` stops everything. The binaries are the ones `scripts/stack.sh
//! install` puts in the cache (or `POS_*_BIN`).

use crate::procs::{free_ports, wait_until, Proc};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const NODES: usize = 3;
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    pub dir: PathBuf,
    pub sync: Sync,
    pub nats: Vec<Node>,
    pub mongod: Vec<(u16, Proc)>,
    pub redis: (u16, Proc),
    pub passwords: Vec<(String, String)>,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("POS_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/pos-backend")
        })
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
    bail!("{on_path} not found (set {var}, or run scripts/stack.sh install)")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Cluster {
    pub fn load(dir: &Path) -> Result<Self> {
        let f = dir.join("cluster.json");
        let text = std::fs::read_to_string(&f).with_context(|| {
            format!(
                "no cluster in {} (run: xtask cluster up --dir {})",
                dir.display(),
                dir.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, self.dir.join("cluster.json"))?;
        Ok(())
    }

    pub async fn up(dir: &Path, sync: Sync) -> Result<Self> {
        if let Ok(c) = Self::load(dir) {
            if c.nats.iter().all(|n| n.proc.alive()) && c.mongod.iter().all(|m| m.1.alive()) {
                eprintln!("xtask: cluster in {} is running; reusing it", dir.display());
                return Ok(c);
            }
            bail!("a stopped cluster is recorded in {}: run `xtask cluster down --dir {0} --purge` first", dir.display());
        }
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let nats_bin = binary(
            "POS_NATS_SERVER_BIN",
            cache_dir().join("nats-server-2.15.1/nats-server"),
            "nats-server",
        )?;
        let mongod_bin = binary(
            "POS_MONGOD_BIN",
            cache_dir().join("mongodb-6.0/bin/mongod"),
            "mongod",
        )?;
        let redis_bin = binary(
            "POS_REDIS_SERVER_BIN",
            PathBuf::from("/usr/bin/redis-server"),
            "redis-server",
        )?;
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

        let ports = free_ports(NODES * 4 + 1)?;
        let mut cluster = Cluster {
            dir: dir.clone(),
            sync,
            nats: Vec::new(),
            mongod: Vec::new(),
            redis: (
                ports[NODES * 4],
                Proc::spawn(
                    &dir,
                    "redis",
                    &[
                        redis_bin,
                        "--bind".into(),
                        "127.0.0.1".into(),
                        "--port".into(),
                        ports[NODES * 4].to_string(),
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
        let routes: Vec<String> = (0..NODES)
            .map(|i| format!("nats://127.0.0.1:{}", ports[NODES * 2 + i]))
            .collect();
        for i in 0..NODES {
            let (client_port, monitor_port, cluster_port) =
                (ports[i], ports[NODES + i], ports[NODES * 2 + i]);
            let store = dir.join(format!("nats-{i}"));
            std::fs::create_dir_all(&store)?;
            let argv = vec![
                nats_bin.clone(),
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
                "-n".into(),
                format!("pos-n{i}"),
                "--cluster_name".into(),
                "pos".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster_port}"),
                "--routes".into(),
                routes.join(","),
            ];
            let proc = Proc::spawn(&dir, &format!("nats-{i}"), &argv, &cluster.passwords)?;
            cluster.nats.push(Node {
                client_port,
                monitor_port,
                cluster_port,
                proc,
            });
        }
        for i in 0..NODES {
            let port = ports[NODES * 3 + i];
            let data = dir.join(format!("mongo-{i}"));
            std::fs::create_dir_all(&data)?;
            let argv = vec![
                mongod_bin.clone(),
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
            cluster
                .mongod
                .push((port, Proc::spawn(&dir, &format!("mongod-{i}"), &argv, &[])?));
        }
        cluster.save()?;
        for i in 0..NODES {
            cluster.wait_nats(i).await?;
        }
        cluster.initiate_replica_set().await?;
        cluster.write_env()?;
        Ok(cluster)
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
            Ok(_) => eprintln!("xtask: replica set {RS} initiated with {NODES} members"),
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
        format!("mongodb://{}/?replicaSet={RS}", hosts.join(","))
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis.0)
    }

    /// What a service needs to reach this cluster (without its own NATS user).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL".to_owned(), self.nats_url()),
            ("MONGODB_URI".to_owned(), self.mongodb_uri()),
            ("REDIS_URL".to_owned(), self.redis_url()),
            ("NATS_REPLICAS".to_owned(), NODES.to_string()),
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

    fn write_env(&self) -> Result<()> {
        let quote = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
        let mut text = format!(
            "# written by xtask cluster up --dir {}; source it\n",
            self.dir.display()
        );
        for (k, v) in self.env() {
            text.push_str(&format!("export {k}={}\n", quote(&v)));
        }
        text.push_str(&format!(
            "export POS_NATS_MONITOR_URL={}\nexport POS_STACK_DIR={}\n",
            quote(&format!("http://127.0.0.1:{}", self.nats[0].monitor_port)),
            quote(&self.dir.display().to_string())
        ));
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

    pub async fn down(dir: &Path, purge: bool) -> Result<()> {
        match Self::load(dir) {
            Ok(c) => {
                for n in &c.nats {
                    n.proc.stop(Duration::from_secs(20)).await?;
                }
                for (_, m) in &c.mongod {
                    m.stop(Duration::from_secs(20)).await?;
                }
                c.redis.1.stop(Duration::from_secs(10)).await?;
                let _ = std::fs::remove_file(dir.join("cluster.json"));
                eprintln!("xtask: cluster in {} stopped", dir.display());
            }
            Err(_) => eprintln!("xtask: no cluster recorded in {}", dir.display()),
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
