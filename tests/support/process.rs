//! [`ProcessStack`]: the real service binaries (from `target/<profile>/`), any number of
//! instances each, for scale-out and kill -9 tests. Children die with the stack.

use super::infra::{free_port, tempdir};
use super::stack::{Api, SECRET};
use super::{eventually, unique, Infra};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct Instance {
    pub service: &'static str,
    pub child: Child,
    pub port: Option<u16>,
    pub log: std::path::PathBuf,
}

pub struct ProcessStack {
    pub infra: Infra,
    pub namespace: String,
    pub instances: Vec<Instance>,
    pub logs: std::path::PathBuf,
    pub extra_env: HashMap<String, String>,
}

/// `target/<profile>/`: the test binary lives in `target/<profile>/deps/`.
pub fn bin_dir() -> std::path::PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p
}

impl ProcessStack {
    pub fn new() -> Self {
        Self {
            infra: Infra::from_env(),
            namespace: unique("p"),
            instances: Vec::new(),
            logs: tempdir("logs"),
            extra_env: HashMap::new(),
        }
    }

    pub fn env(&self, service: &str, port: Option<u16>) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL".into(), self.infra.nats_url.clone()),
            ("REDIS_URL".into(), self.infra.redis_url.clone()),
            ("MONGODB_URI".into(), self.infra.mongodb_uri.clone()),
            ("MONGODB_DB".into(), self.namespace.clone()),
            ("POS_NAMESPACE".into(), self.namespace.clone()),
            ("JWT_SECRET".into(), SECRET.into()),
            ("RUST_LOG".into(), "warn".into()),
            ("HEALTH_ADDR".into(), "off".into()),
            ("INSTANCE_NAME".into(), unique(&format!("{service}-"))),
            // Load tests drive one tenant far past a shop's rate; a test of the limits
            // sets its own.
            ("RATE_LIMIT_TENANT".into(), "0".into()),
            ("RATE_LIMIT_TERMINAL".into(), "0".into()),
        ];
        env.extend(self.infra.nats_env(service));
        if let Some(p) = port {
            env.push(("INGRESS_ADDR".into(), format!("127.0.0.1:{p}")));
            env.push(("FANOUT_ADDR".into(), format!("127.0.0.1:{p}")));
            // The workers' HTTP port: `/health` and `/metrics`.
            env.push(("HEALTH_ADDR".into(), format!("127.0.0.1:{p}")));
        }
        env.extend(self.extra_env.clone());
        env
    }

    /// Starts one instance of `service` on a port of its own (the workers' is their
    /// `/health` and `/metrics`); ingress and fanout are waited for. Workers are not:
    /// a test may start one while a dependency it waits for is down.
    pub async fn spawn(&mut self, service: &'static str) -> usize {
        let port = Some(free_port());
        let instance = self.start(service, port, self.instances.len()).await;
        self.instances.push(instance);
        self.instances.len() - 1
    }

    /// Starts `instance` again (after a kill) on the same port, so clients and proxies
    /// pointed at it reach the new process.
    pub async fn restart(&mut self, instance: usize) {
        let (service, port) = (
            self.instances[instance].service,
            self.instances[instance].port,
        );
        self.instances[instance] = self.start(service, port, instance).await;
    }

    async fn start(&self, service: &'static str, port: Option<u16>, n: usize) -> Instance {
        let log = self.logs.join(format!("{service}-{n}-{}.log", unique("")));
        let file = std::fs::File::create(&log).unwrap();
        let bin = bin_dir().join(service);
        let child = Command::new(&bin)
            .envs(self.env(service, port))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} (run `cargo build --workspace` first): {e}",
                    bin.display()
                )
            });
        if let Some(p) = port.filter(|_| service == "ingress" || service == "fanout") {
            let url = format!("http://127.0.0.1:{p}/health");
            eventually(
                &format!("{service} on port {p} to answer"),
                Duration::from_secs(60),
                || {
                    let url = url.clone();
                    async move { reqwest::get(&url).await.ok().map(|_| ()) }
                },
            )
            .await;
        }
        Instance {
            service,
            child,
            port,
            log,
        }
    }

    pub fn api(&self, tenant: &str, instance: usize) -> Api {
        let port = self.instances[instance].port.expect("an HTTP service");
        Api::new(format!("http://127.0.0.1:{port}"), tenant)
    }

    /// kill -9 of one instance.
    pub async fn kill(&mut self, instance: usize) {
        let _ = self.instances[instance].child.kill().await;
    }

    /// SIGTERM, then the exit status (or None if it did not exit within `timeout`).
    pub async fn terminate(
        &mut self,
        instance: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = &mut self.instances[instance].child;
        super::signal(child.id().expect("running"), super::Signal::SIGTERM);
        tokio::time::timeout(timeout, child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// This stack's `invoices` collection in MongoDB, read directly.
    pub async fn invoices(&self) -> mongodb::Collection<mongodb::bson::Document> {
        mongodb::Client::with_uri_str(&self.infra.mongodb_uri)
            .await
            .unwrap()
            .database(&self.namespace)
            .collection("invoices")
    }

    pub fn log_of(&self, instance: usize) -> String {
        std::fs::read_to_string(&self.instances[instance].log).unwrap_or_default()
    }
}
