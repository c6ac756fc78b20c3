//! The persister binary: settings → telemetry → build → run until SIGINT/SIGTERM.

/// mimalloc, declared per binary (why: ARCHITECTURE.md § Allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init(std::io::stdout);
    let settings = persister::Settings::from_env()?;
    let app = persister::build(settings).await?;
    app.run_until_stopped(service_kit::shutdown::on_signal())
        .await?;
    Ok(())
}
