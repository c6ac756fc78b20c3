//! Telemetry initialisation: tracing (`RUST_LOG` filters, default `info`;
//! `LOG_FORMAT=json` gives one JSON object per line for log shippers) and the metrics
//! recorder, installed here so that nothing recorded before the first scrape is lost.

use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// Installs the tracing subscriber, writing to `writer`, and the metrics recorder. Call
/// once at start; a second call keeps the first subscriber.
pub fn init<W>(writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // Until a recorder is installed the `metrics` macros record into nothing.
    let _ = crate::metrics::handle();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
