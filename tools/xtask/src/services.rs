//! The services as child processes of xtask, for `./x up`, `./x bench` and the chaos
//! drill: each instance started with the stack's variables, its own NATS user and
//! address, its output appended to `DIR/<instance>.log`; waited for until healthy; stopped with SIGTERM (their graceful
//! drain), SIGKILL after a grace period.
//!
//! Addresses (instance i, 0-based): ingress `0.0.0.0:3000+10i`, fanout `0.0.0.0:3001+10i`,
//! console `0.0.0.0:3004+10i`; the first processor / persister serve health on
//! `127.0.0.1:3002` / `:3003`, the others on a free port.

use crate::stack::Stack;
use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub const SERVICES: [&str; 5] = ["ingress", "processor", "persister", "fanout", "console"];

/// The JWT secret `./x up` starts the services with unless `JWT_SECRET` is set.
pub const DEV_SECRET: &str = "dev-secret-change-me-0123456789abcdef";

/// A dev token signed by `auth`'s own code (what the services verify), valid `ttl` s;
/// refused if `tenant` is not a valid tenant id (the services would refuse the token).
pub fn dev_token(
    secret: &str,
    tenant: &str,
    sub: &str,
    role: auth::Role,
    ttl: i64,
) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let tenant = domain::TenantId::parse(tenant).with_context(|| format!("tenant {tenant:?}"))?;
    Ok(auth::sign(
        secret,
        &auth::Claims {
            sub: sub.into(),
            tenant,
            role,
            exp: now.saturating_add(ttl),
        },
    ))
}

/// How to start one instance.
pub struct Launch<'a> {
    pub name: String,
    pub bin: std::path::PathBuf,
    /// Its NATS user.
    pub service: &'a str,
    pub log: std::path::PathBuf,
    pub health: Option<String>,
}

pub struct Instance {
    pub name: String,
    child: Child,
    /// `/health` to wait for.
    pub health: Option<String>,
}

/// Running instances, stopped by [`Services::stop`] (or killed if dropped).
#[derive(Default)]
pub struct Services {
    pub instances: Vec<Instance>,
}

fn address(service: &str, i: u16) -> (Vec<(String, String)>, Option<u16>) {
    let (var, addr, port) = match (service, i) {
        ("ingress", _) => ("INGRESS_ADDR", "0.0.0.0", 3000 + 10 * i),
        ("fanout", _) => ("FANOUT_ADDR", "0.0.0.0", 3001 + 10 * i),
        ("console", _) => ("CONSOLE_ADDR", "0.0.0.0", 3004 + 10 * i),
        ("processor", 0) => ("HEALTH_ADDR", "127.0.0.1", 3002),
        ("persister", 0) => ("HEALTH_ADDR", "127.0.0.1", 3003),
        _ => ("HEALTH_ADDR", "127.0.0.1", 0),
    };
    let env = vec![(var.to_owned(), format!("{addr}:{port}"))];
    (env, (port != 0).then_some(port))
}

impl Services {
    /// Starts instance `i` of `service` from `bin_dir` at its `./x up` address, its log
    /// in the stack's dir.
    pub fn start(
        &mut self,
        bin_dir: &Path,
        stack: &Stack,
        service: &str,
        i: u16,
        extra: &[(String, String)],
    ) -> Result<()> {
        let name = if i == 0 {
            service.to_owned()
        } else {
            format!("{service}-{i}")
        };
        let (addr, port) = address(service, i);
        if let Some(p) = port {
            if std::net::TcpListener::bind(("0.0.0.0", p)).is_err() {
                anyhow::bail!(
                    "port {p} (for {name}) is already in use; is another ./x up running?"
                );
            }
        }
        let mut env = extra.to_vec();
        env.extend(addr);
        let log = stack.dir.join(format!("{name}.log"));
        self.start_with(
            Launch {
                name,
                bin: bin_dir.join(service),
                service,
                log,
                health: port.map(|p| format!("http://127.0.0.1:{p}/health")),
            },
            stack,
            &env,
        )
    }

    /// Starts one instance as `launch` says, with the stack's variables, the service's
    /// own NATS user and `env` on top.
    pub fn start_with(
        &mut self,
        launch: Launch<'_>,
        stack: &Stack,
        env: &[(String, String)],
    ) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)?;
        let child = Command::new(&launch.bin)
            .envs(stack.env())
            .env("NATS_USER", launch.service)
            .env("NATS_PASSWORD", stack.password(launch.service))
            .env("INSTANCE_NAME", &launch.name)
            .envs(env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (built?)", launch.bin.display()))?;
        eprintln!(
            "xtask: started {} (pid {}, log {})",
            launch.name,
            child.id().unwrap_or(0),
            launch.log.display()
        );
        self.instances.push(Instance {
            name: launch.name,
            child,
            health: launch.health,
        });
        Ok(())
    }

    /// Pids of the running instances, by name (CPU and memory sampling).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.instances
            .iter()
            .filter_map(|i| Some((i.name.clone(), i.child.id()?)))
            .collect()
    }

    /// Waits until every instance with a health URL answers 200 (or one exits).
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for inst in &mut self.instances {
            let Some(url) = inst.health.clone() else {
                continue;
            };
            loop {
                if reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    eprintln!("xtask: {} healthy ({url})", inst.name);
                    break;
                }
                if let Some(status) = inst.child.try_wait()? {
                    anyhow::bail!(
                        "{} exited ({status}) before {url} answered; see its log",
                        inst.name
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{}: {url} did not answer within {timeout:?}; see its log",
                    inst.name
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Ok(())
    }

    /// Resolves when any instance exits; returns its name and status.
    pub async fn any_exit(&mut self) -> (String, String) {
        loop {
            for inst in &mut self.instances {
                if let Ok(Some(status)) = inst.child.try_wait() {
                    return (inst.name.clone(), status.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to all, then SIGKILL to whoever is left after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        for inst in &self.instances {
            if let Some(pid) = inst.child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for inst in &mut self.instances {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, inst.child.wait()).await.is_err() {
                eprintln!(
                    "xtask: {} ignored SIGTERM for {grace:?}; SIGKILL",
                    inst.name
                );
                let _ = inst.child.kill().await;
            }
        }
        self.instances.clear();
    }
}
