//! The `pos-terminal` command line: argument parsing (clap), the four commands and
//! their exit codes. The interface is fixed, because outside checks drive the binary:
//!
//! - `enqueue [--file F]`: one invoice body from F (or stdin) into the outbox; prints
//!   the key. Never touches the network.
//! - `sync [--timeout S] [--settle S]`: one sync run (`sync.rs`) with the watcher.
//! - `status [--json]`: what the outbox holds.
//! - `watch`: the WebSocket watcher until SIGINT/SIGTERM.
//! - `catalog sync`: bring the offline catalog copy up to date (`catalog.rs`).
//! - `sell --sku S --qty Q … [--pay METHOD:AMOUNT] [--currency C] --terminal T`: price
//!   the lines from the copy and enqueue the invoice; prints the key. Works offline.
//!
//! Exit codes ([`Exit`]): 0 ok, 1 other failure, 2 usage or configuration (clap's own
//! usage errors are 2 too), 3 something is still pending. Every failure prints one
//! line on stderr saying what to do; logs (`RUST_LOG`, default `warn`) go to stderr
//! too, so stdout carries only the key or the status.

use crate::{
    client::Client,
    config::{Config, ConfigError},
    outbox::{Outbox, OutboxError, SharedOutbox, Status, SyncStatus},
    sync::{self, SyncError, SyncOptions, SyncReport},
    watch::{WatchError, Watcher},
};
use clap::{Parser, Subcommand};
use std::{
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    time::Duration,
};

/// Reference PoS terminal: a durable outbox that delivers every invoice exactly once.
///
/// Configuration from the environment: POS_TERMINAL_DB (outbox file, required),
/// POS_API (default http://127.0.0.1:3000), POS_WS (default ws://127.0.0.1:3001/ws),
/// POS_TOKEN (the terminal's JWT; required by sync and watch), RUST_LOG (default warn).
#[derive(Debug, Parser)]
#[command(name = "pos-terminal", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store one invoice body (JSON for POST /invoices, without idempotencyKey) and
    /// print its idempotency key. Works offline.
    Enqueue {
        /// Read the body from this file instead of stdin ("-" is stdin).
        #[arg(long, value_name = "F")]
        file: Option<PathBuf>,
    },
    /// Send every pending invoice, then wait for their final states. Exit 0 when nothing
    /// is pending afterwards, 3 when something is.
    Sync {
        /// Stop sending after this many seconds.
        #[arg(long, value_name = "S", default_value = "60", value_parser = seconds)]
        timeout: Duration,
        /// Wait at most this many seconds (within the timeout) for final states.
        #[arg(long, value_name = "S", default_value = "10", value_parser = seconds)]
        settle: Duration,
    },
    /// Show what the outbox holds.
    Status {
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Follow invoice states over the WebSocket until SIGINT or SIGTERM.
    Watch,
    /// The offline copy of the tenant's catalog.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Price lines from the catalog copy and enqueue the invoice; prints its key.
    Sell {
        /// A product's sku; one per line, paired in order with --qty.
        #[arg(long = "sku", value_name = "S", required = true)]
        skus: Vec<String>,
        /// The quantity of the --sku at the same position.
        #[arg(long = "qty", value_name = "Q", required = true)]
        quantities: Vec<String>,
        /// A payment, `METHOD:AMOUNT` (e.g. cash:10.00); repeatable.
        #[arg(long = "pay", value_name = "METHOD:AMOUNT")]
        payments: Vec<String>,
        /// ISO 4217 code; omit to use the tenant's default currency.
        #[arg(long)]
        currency: Option<String>,
        /// This terminal's id.
        #[arg(long, value_name = "T")]
        terminal: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogAction {
    /// Ask for every change since the copy's version; exit 0 when up to date.
    Sync,
}

/// The process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Pending = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}

/// A command's failure: the exit code and the one line to print.
#[derive(Debug)]
struct Failed {
    exit: Exit,
    message: String,
}

impl Failed {
    fn new(exit: Exit, message: impl std::fmt::Display) -> Self {
        Self {
            exit,
            message: message.to_string(),
        }
    }
}

impl From<ConfigError> for Failed {
    fn from(error: ConfigError) -> Self {
        Self::new(Exit::Usage, error)
    }
}

impl From<OutboxError> for Failed {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::InvalidBody(reason) => {
                Self::new(Exit::Usage, format!("the invoice was not stored: {reason}"))
            }
            other => Self::new(Exit::Failure, other),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_telemetry() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs one parsed command line against the environment's configuration.
pub fn run(cli: Cli) -> Exit {
    let outcome = Config::from_env()
        .map_err(Failed::from)
        .and_then(|config| match cli.command {
            Command::Enqueue { file } => enqueue(&config, file),
            Command::Status { json } => status(&config, json),
            Command::Sync { timeout, settle } => {
                block_on(run_sync(&config, SyncOptions { timeout, settle }))
            }
            Command::Watch => block_on(watch(&config)),
            Command::Catalog {
                action: CatalogAction::Sync,
            } => block_on(catalog_sync(&config)),
            Command::Sell {
                skus,
                quantities,
                payments,
                currency,
                terminal,
            } => sell(
                &config,
                &skus,
                &quantities,
                &payments,
                currency.as_deref(),
                &terminal,
            ),
        });
    match outcome {
        Ok(exit) => exit,
        Err(failed) => {
            eprintln!("pos-terminal: {}", failed.message);
            failed.exit
        }
    }
}

fn block_on<F: std::future::Future<Output = Result<Exit, Failed>>>(
    future: F,
) -> Result<Exit, Failed> {
    // One thread is plenty for eight requests and a socket; outbox writes run on the
    // blocking pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failed::new(
                Exit::Failure,
                format!("cannot start the async runtime: {e}"),
            )
        })?
        .block_on(future)
}

fn enqueue(config: &Config, file: Option<PathBuf>) -> Result<Exit, Failed> {
    let body = match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => std::fs::read_to_string(&path).map_err(|e| {
            Failed::new(Exit::Usage, format!("cannot read {}: {e}", path.display()))
        })?,
        None => {
            let mut body = String::new();
            std::io::stdin().read_to_string(&mut body).map_err(|e| {
                Failed::new(
                    Exit::Usage,
                    format!("cannot read the invoice from stdin: {e}"),
                )
            })?;
            body
        }
    };
    let mut outbox = Outbox::open(&config.db)?;
    // `enqueue` returns after the commit, so the key printed is already on disk.
    let stored = outbox.enqueue(&body, chrono::Utc::now())?;
    print_stdout(&format!("{}\n", stored.key))?;
    Ok(Exit::Ok)
}

impl From<crate::catalog::CatalogError> for Failed {
    fn from(error: crate::catalog::CatalogError) -> Self {
        match error {
            crate::catalog::CatalogError::Sell(_) => Self::new(Exit::Usage, error),
            other => Self::new(Exit::Failure, other),
        }
    }
}

async fn catalog_sync(config: &Config) -> Result<Exit, Failed> {
    let client = Client::new(&config.api, config.token()?.clone())
        .map_err(|e| Failed::new(Exit::Failure, e))?;
    let mut copy = crate::catalog::LocalCatalog::open(crate::catalog::path_for(&config.db))?;
    let (received, version) = crate::catalog::sync(&client, &mut copy).await?;
    print_stdout(&format!(
        "catalog version {version} ({received} changes received)\n"
    ))?;
    Ok(Exit::Ok)
}

fn sell(
    config: &Config,
    skus: &[String],
    quantities: &[String],
    payments: &[String],
    currency: Option<&str>,
    terminal: &str,
) -> Result<Exit, Failed> {
    if skus.len() != quantities.len() {
        return Err(Failed::new(
            Exit::Usage,
            "give one --qty for each --sku, in the same order",
        ));
    }
    let payments = payments
        .iter()
        .map(|p| {
            p.split_once(':')
                .map(|(m, a)| (m.to_owned(), a.to_owned()))
                .ok_or_else(|| {
                    Failed::new(Exit::Usage, format!("--pay {p}: expected METHOD:AMOUNT"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let lines: Vec<(String, String)> = skus
        .iter()
        .cloned()
        .zip(quantities.iter().cloned())
        .collect();
    let copy = crate::catalog::LocalCatalog::open(crate::catalog::path_for(&config.db))?;
    let body = copy.sell_body(terminal, currency, &lines, &payments)?;
    let mut outbox = Outbox::open(&config.db)?;
    let stored = outbox.enqueue(&body, chrono::Utc::now())?;
    print_stdout(&format!("{}\n", stored.key))?;
    Ok(Exit::Ok)
}

fn status(config: &Config, json: bool) -> Result<Exit, Failed> {
    let status = Outbox::open(&config.db)?.status()?;
    let text = if json {
        let mut text = serde_json::to_string(&status)
            .map_err(|e| Failed::new(Exit::Failure, format!("cannot encode the status: {e}")))?;
        text.push('\n');
        text
    } else {
        human_status(&status)
    };
    print_stdout(&text)?;
    Ok(Exit::Ok)
}

/// Entries listed by name in the human summary, per kind; the counts cover the rest.
const LISTED_PER_KIND: usize = 20;

fn human_status(status: &Status) -> String {
    let mut text = format!("outbox: {}\n", status.counts());
    let seq = status
        .last_seq
        .map_or("none yet".to_owned(), |s| s.to_string());
    let offset = status
        .clock_offset_ms
        .map_or("not measured yet".to_owned(), |ms| {
            format!("{ms:+} ms (server − terminal)")
        });
    text.push_str(&format!(
        "last WebSocket seq: {seq}; clock offset: {offset}\n"
    ));
    for kind in [SyncStatus::Rejected, SyncStatus::Pending] {
        let entries: Vec<_> = status.invoices.iter().filter(|i| i.sync == kind).collect();
        for invoice in entries.iter().take(LISTED_PER_KIND) {
            let detail = match &invoice.error {
                Some(error) => {
                    let code = error.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                    let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    format!("  {code}: {message}")
                }
                None => String::new(),
            };
            text.push_str(&format!("{:<9} {}{detail}\n", kind.as_str(), invoice.key));
        }
        if entries.len() > LISTED_PER_KIND {
            text.push_str(&format!(
                "… and {} more {}\n",
                entries.len() - LISTED_PER_KIND,
                kind.as_str()
            ));
        }
    }
    text
}

async fn run_sync(config: &Config, options: SyncOptions) -> Result<Exit, Failed> {
    let token = config.token()?.clone();
    let outbox = SharedOutbox::new(Outbox::open(&config.db)?);
    let client =
        Client::new(&config.api, token.clone()).map_err(|e| Failed::new(Exit::Failure, e))?;
    let watcher = Watcher::new(&config.ws, token, outbox.clone(), Some(client.clone()));
    match sync::sync(&client, &outbox, Some(watcher), options).await {
        Ok(report) => {
            eprintln!("pos-terminal sync: {}", report.counts);
            Ok(sync_exit(&report))
        }
        Err(error @ SyncError::AuthFailed { .. }) => Err(Failed::new(Exit::Pending, error)),
        Err(SyncError::Outbox(error)) => Err(error.into()),
    }
}

/// 0 when nothing is waiting to reach the server, 3 when something is.
pub fn sync_exit(report: &SyncReport) -> Exit {
    if report.is_delivered() {
        Exit::Ok
    } else {
        Exit::Pending
    }
}

async fn watch(config: &Config) -> Result<Exit, Failed> {
    let token = config.token()?.clone();
    let outbox = SharedOutbox::new(Outbox::open(&config.db)?);
    let client =
        Client::new(&config.api, token.clone()).map_err(|e| Failed::new(Exit::Failure, e))?;
    let watcher = Watcher::new(&config.ws, token, outbox, Some(client));
    tokio::select! {
        ended = watcher.run() => match ended {
            Err(error @ WatchError::Unauthorized { .. }) => Err(Failed::new(Exit::Failure, error)),
            Err(WatchError::Outbox(error)) => Err(error.into()),
        },
        () = shutdown_signal() => Ok(Exit::Ok),
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not worth a failure exit.
fn print_stdout(text: &str) -> Result<(), Failed> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failed::new(
            Exit::Failure,
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

/// `--timeout` / `--settle`: non-negative seconds, fractions allowed.
fn seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} must be a non-negative number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sync_defaults_to_sixty_seconds_and_ten_to_settle() {
        let cli = Cli::try_parse_from(["pos-terminal", "sync"]).unwrap();
        let Command::Sync { timeout, settle } = cli.command else {
            panic!("sync");
        };
        assert_eq!(
            (timeout, settle),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
        let cli =
            Cli::try_parse_from(["pos-terminal", "sync", "--timeout", "2.5", "--settle", "0"])
                .unwrap();
        let Command::Sync { timeout, settle } = cli.command else {
            panic!("sync");
        };
        assert_eq!(
            (timeout, settle),
            (Duration::from_millis(2500), Duration::ZERO)
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in ["--timeout=-1", "--timeout=soon", "--settle=NaN"] {
            let error = Cli::try_parse_from(["pos-terminal", "sync", bad]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad}");
            assert!(error.to_string().contains("seconds"), "{bad}: {error}");
        }
        let error = Cli::try_parse_from(["pos-terminal", "frobnicate"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn exit_codes_are_the_contracted_numbers() {
        assert_eq!(
            [Exit::Ok, Exit::Failure, Exit::Usage, Exit::Pending].map(|e| e as u8),
            [0, 1, 2, 3]
        );
    }
}
