//! The fanout binary: the WebSocket gateway that pushes each invoice state change of a
//! tenant to that tenant's terminals (hub: one ordered consumer per tenant → broadcast
//! ring → one writer per socket; see the library's crate docs for the data flow).
//!
//! Layout: settings → telemetry → `App::build` → run until SIGINT/SIGTERM.

/// mimalloc, declared per binary (why: ARCHITECTURE.md § Allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use fanout::{App, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init(std::io::stdout);
    let settings = Settings::from_env()?;
    let app = App::build(settings).await?;
    app.run_until_stopped(service_kit::shutdown::on_signal())
        .await
}
