//! The processor binary: settings → telemetry → build → run until SIGINT/SIGTERM.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init(std::io::stdout);
    let settings = processor::Settings::from_env()?;
    let app = processor::App::build(settings).await?;
    app.run_until_stopped(service_kit::shutdown_signal()).await
}
