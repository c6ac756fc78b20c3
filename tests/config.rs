//! Start-up: a bad setting fails fast naming the variable; an unreachable dependency
//! is retried with clear logs, not a crash loop.

use crate::support::{
    infra::{free_port, PrivateServer},
    process::bin_dir,
    stack::SECRET,
    Infra,
};
use std::time::Duration;

async fn run(service: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(bin_dir().join(service))
            .env_clear()
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("a bad setting must not hang the process")
    .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn a_port_already_taken_stops_the_service_with_a_message_naming_its_variable() {
    let infra = Infra::from_env();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let namespace = crate::support::unique("taken");
    let mut env: Vec<(String, String)> = vec![
        ("NATS_URL".into(), infra.nats_url.clone()),
        ("JWT_SECRET".into(), SECRET.into()),
        ("POS_NAMESPACE".into(), namespace),
        ("FANOUT_ADDR".into(), addr.clone()),
    ];
    env.extend(infra.nats_env("fanout"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out) = run("fanout", &env).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("binding FANOUT_ADDR {addr}")) && out.contains("another process"),
        "the variable, the address and a hint: {out}"
    );
    drop(taken);
}

#[tokio::test]
async fn a_bad_or_missing_setting_stops_the_service_with_a_message_naming_it() {
    let infra = Infra::from_env();
    let (code, out) = run(
        "ingress",
        &[
            ("NATS_URL", "nats://bad host:42"),
            ("REDIS_URL", &infra.redis_url),
            ("MONGODB_URI", &infra.mongodb_uri),
            ("JWT_SECRET", SECRET),
        ],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(out.contains("NATS_URL"), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "one clear line: {out}");

    let (code, out) = run("ingress", &[("NATS_URL", &infra.nats_url)]).await;
    assert_ne!(code, Some(0));
    for var in ["REDIS_URL", "MONGODB_URI", "JWT_SECRET"] {
        assert!(out.contains(var), "{var} not named in: {out}");
    }

    let (code, out) = run(
        "processor",
        &[
            ("NATS_URL", &infra.nats_url),
            ("REDIS_URL", &infra.redis_url),
            ("MONGODB_URI", &infra.mongodb_uri),
            ("MAX_ATTEMPTS", "many"),
        ],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(out.contains("MAX_ATTEMPTS"), "{out}");

    let (code, out) = run(
        "persister",
        &[
            ("NATS_URL", &infra.nats_url),
            ("MONGODB_URI", &infra.mongodb_uri),
            ("HEALTH_ADDR", "nowhere"),
        ],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(out.contains("HEALTH_ADDR"), "{out}");
}

#[tokio::test]
async fn a_service_started_before_nats_waits_for_it_and_then_serves() {
    let infra = Infra::from_env();
    let mut nats = PrivateServer::nats().await;
    nats.kill().await;
    let port = free_port();
    let log = crate::support::infra::tempdir("late").join("ingress.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(bin_dir().join("ingress"))
        .env_clear()
        .envs([
            ("NATS_URL", nats.url.as_str()),
            ("REDIS_URL", &infra.redis_url),
            ("MONGODB_URI", &infra.mongodb_uri),
            ("MONGODB_DB", "late_start"),
            ("JWT_SECRET", SECRET),
            ("INGRESS_ADDR", &format!("127.0.0.1:{port}")),
        ])
        .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::support::eventually("a logged retry", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("NATS unreachable at") && l.contains("retrying"))
            .then_some(())
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running, not crash-looping"
    );
    nats.start().await;
    let url = format!("http://127.0.0.1:{port}/health");
    crate::support::eventually(
        "ingress to serve once NATS is up",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            }
        },
    )
    .await;
}
