//! The processor binary: settings → telemetry → build → run until SIGINT/SIGTERM.

/// mimalloc instead of glibc's malloc: a profile of the benchmark put ~7 % of all CPU
/// in glibc's allocator (many small short-lived buffers per message). Declared per
/// binary, so the libraries, tests and tools keep the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init(std::io::stdout);
    let settings = processor::Settings::from_env()?;
    let app = processor::build(settings).await?;
    app.run_until_stopped(service_kit::shutdown::on_signal())
        .await?;
    Ok(())
}
