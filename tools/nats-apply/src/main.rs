//! `nats-apply` (`./x nats-apply`): the one step that writes the streams and consumers
//! of `nats/` to a running NATS, creating what is missing and updating what differs.
//!
//! Services only create what is missing and report differences (`Bus::ensure_topology`),
//! so an operator's change survives their restarts; this is how `nats/` (and the shared
//! topology settings `SUBMIT_DEDUPE_WINDOW_MS`, `ACK_WAIT_MS`, `POS_NAMESPACE`) is
//! applied on purpose. Flow: settings → connect as `NATS_USER` (the `operator` user:
//! services may not update streams) → report the differences → apply → report again.

use anyhow::Context;
use messaging::{Bus, NatsSettings, Topology};
use service_kit::settings::{Env, Infra};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init(std::io::stderr);
    let mut env = Env::new();
    let infra = Infra::from_env(&mut env, "nats-apply", &["NATS_URL"]);
    env.finish()?;
    let bus = Bus::connect(
        NatsSettings::for_infra(&infra, Duration::from_secs(5), 1),
        Topology::from_infra(&infra),
    )
    .await?;
    let before = bus
        .ensure_topology()
        .await
        .context("reading the running topology")?;
    bus.apply_topology()
        .await
        .context("applying nats/ (needs the operator user: NATS_USER=operator)")?;
    let after = bus.ensure_topology().await?;
    for d in &before {
        println!("changed: {d}");
    }
    for d in &after {
        println!("still different (the server keeps it): {d}");
    }
    println!(
        "nats-apply: {} setting(s) changed, {} still different",
        before.len(),
        after.len()
    );
    Ok(())
}
