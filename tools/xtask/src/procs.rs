//! Detached server processes and their record on disk: start one in its own session
//! with its output appended to `DIR/<name>.log`, find it again later (pid plus the
//! process's start time, so a reused pid is never mistaken for it), signal it from Rust
//! (a minimal Debian has no `kill` program), free loopback ports.

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One started server, as `DIR/cluster.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    /// Clock ticks since boot at start (`/proc/<pid>/stat` field 22).
    pub start: u64,
    pub argv: Vec<String>,
}

/// State letter and start time of `pid` (`/proc/<pid>/stat` fields 3 and 22), if it
/// exists (a zombie still does).
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its `)` are plain.
    let mut rest = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

impl Proc {
    /// Starts `argv` detached (own session, stdin from /dev/null), its output appended to
    /// `dir/<name>.log`, with `env` on top of ours.
    pub fn spawn(
        dir: &Path,
        name: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<Self> {
        use std::io::Write;
        let log_path = dir.join(format!("{name}.log"));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "\n===== {}", argv.join(" "))?;
        let child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        let pid = child.id();
        // Not waited for: it outlives this process; init reaps it.
        std::mem::forget(child);
        let start = stat(pid).map_or(0, |(_, start)| start);
        // For scripts that sample the servers (./x bench): DIR/<name>.pid.
        std::fs::write(dir.join(format!("{name}.pid")), format!("{pid}\n"))?;
        Ok(Self {
            name: name.to_owned(),
            pid,
            start,
            argv: argv.to_vec(),
        })
    }

    /// Running: this very process (same start time), not exited and unreaped.
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|(state, start)| start == self.start && state != 'Z')
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        if !self.alive() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {} (pid {})", self.name, self.pid))
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone.
    pub async fn stop(&self, grace: Duration) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while self.alive() {
            if Instant::now() >= deadline {
                eprintln!(
                    "xtask: {} ignored SIGTERM for {grace:?}; SIGKILL",
                    self.name
                );
                self.signal(Signal::SIGKILL)?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_gone(self).await
    }

    /// kill -9, and wait until it is gone.
    pub async fn kill(&self) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        wait_gone(self).await
    }
}

async fn wait_gone(p: &Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.alive() {
        if Instant::now() >= deadline {
            bail!("{} (pid {}) is still alive after SIGKILL", p.name, p.pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `n` distinct free loopback ports (all held until every one is picked).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Polls `check` every 200 ms until it returns true, `proc` dies, or `timeout` passes.
pub async fn wait_until<F, Fut>(
    what: &str,
    proc: Option<&Proc>,
    timeout: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if let Some(p) = proc {
            if !p.alive() {
                bail!("{} exited while waiting for {what}; see its log", p.name);
            }
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
