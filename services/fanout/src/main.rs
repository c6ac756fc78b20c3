//! The fanout binary: the WebSocket gateway that pushes each invoice state change of a
//! tenant to that tenant's terminals (hub: one ordered consumer per tenant → broadcast
//! ring → one writer per socket; see the library's crate docs for the data flow).
//!
//! Layout: settings → telemetry → `App::build` → run until SIGINT/SIGTERM.

/// mimalloc instead of glibc's malloc: a profile of the benchmark put ~7 % of all CPU
/// in glibc's allocator (many small short-lived buffers per message). Declared per
/// binary, so the libraries, tests and tools keep the system allocator.
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
