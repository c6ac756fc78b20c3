//! The operator console binary: settings → telemetry → build → serve until SIGINT/SIGTERM.

/// mimalloc, declared per binary (why: ARCHITECTURE.md § Allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init(std::io::stdout);
    let settings = console::Settings::from_env()?;
    let app = console::App::build(settings).await?;
    app.run_until_stopped(service_kit::shutdown::on_signal())
        .await
}
