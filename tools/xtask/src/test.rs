//! `./x test`: the whole suite against real servers — a private stack (NATS JetStream,
//! Redis, a MongoDB replica set) on free loopback ports in a fresh temp dir, torn down
//! afterwards, also on failure and Ctrl-C (on failure the tail of each server's log is
//! printed first). Arguments go to `cargo test`; with none, the terminal soak (8 000
//! invoices through faults) runs after the rest, alone: beside the others its load on a
//! 2-core machine starves their timing.
//!
//! The tests get the stack's variables (`NATS_URL`, `REDIS_URL`, `MONGODB_URI`,
//! `NATS_PASSWORD_<USER>`, the server binaries for private servers, `POS_CHROMIUM_BIN`)
//! and `SCHEMATHESIS` (PyPI, pinned, in a venv of its own in the cache). URLs from the
//! caller's environment are ignored: the suite never runs against a developer's stack.
//! `POS_KEEP_STACK=1` keeps the temp dir (data and logs).

use crate::install::cache_dir;
use crate::stack::{Ports, Stack, Sync};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tokio::process::Command;

const SCHEMATHESIS_SPEC: &str = "schemathesis==4.32.5";

fn schemathesis() -> Result<PathBuf> {
    let spec = std::env::var("POS_SCHEMATHESIS_SPEC").unwrap_or_else(|_| SCHEMATHESIS_SPEC.into());
    let version = spec.rsplit("==").next().unwrap_or("latest");
    let venv = cache_dir().join(format!("schemathesis-{version}"));
    let bin = venv.join("bin/schemathesis");
    let works = |b: &Path| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works(&bin) {
        eprintln!("test: installing {spec} into {}", venv.display());
        let _ = std::fs::remove_dir_all(&venv);
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = std::process::Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success()
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", &spec])
                .status()?
                .success();
        anyhow::ensure!(ok && works(&bin), "installing {spec} failed");
    }
    Ok(bin)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.kill_on_drop(true);
    c
}

/// Runs `cmd` to its end, or until Ctrl-C / SIGTERM (then `Err`).
async fn run(mut cmd: Command, env: &[(String, String)]) -> Result<bool> {
    for var in ["NATS_URL", "REDIS_URL", "MONGODB_URI"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().cloned());
    let mut child = cmd.spawn().context("starting cargo")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        status = child.wait() => Ok(status?.success()),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    }
}

pub async fn run_suite(args: Vec<String>) -> Result<bool> {
    crate::install::install(true)?;
    let schemathesis = schemathesis()?;
    let tmp = std::env::temp_dir().join(format!(
        "pos-test.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let stack = Stack::up(&tmp, 1, Sync::Interval, Ports::Free).await;
    let result = match stack {
        Ok(stack) => {
            let mut env = stack.env_file_vars()?;
            env.push(("SCHEMATHESIS".into(), schemathesis.display().to_string()));
            suite(&args, &env).await
        }
        Err(e) => Err(e),
    };
    let ok = matches!(result, Ok(true));
    if !ok {
        match &result {
            Err(e) => eprintln!("test: {e:#}"),
            Ok(_) => eprintln!(
                "test: FAILED; tails of the stack's logs in {}:",
                tmp.display()
            ),
        }
        if let Ok(dir) = std::fs::read_dir(&tmp) {
            for entry in dir.flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    eprintln!("----- {}\n{}", p.display(), crate::up::tail(&p, 25));
                }
            }
            eprintln!("-----");
        }
    }
    let keep = std::env::var("POS_KEEP_STACK").is_ok_and(|v| v == "1");
    Stack::down(&tmp, !keep).await?;
    if keep {
        eprintln!("test: kept {}", tmp.display());
    }
    Ok(ok)
}

async fn suite(args: &[String], env: &[(String, String)]) -> Result<bool> {
    let mut build = cargo();
    build.args(["build", "--workspace", "--all-targets"]);
    if !run(build, env).await? {
        return Ok(false);
    }
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .args(args);
    let mut ok = run(test, env).await?;
    if args.is_empty() {
        let mut soak = cargo();
        soak.args([
            "test",
            "-p",
            "integration-tests",
            "--test",
            "integration",
            "--",
            "--ignored",
            "soak",
        ]);
        ok &= run(soak, env).await?;
    }
    Ok(ok)
}
