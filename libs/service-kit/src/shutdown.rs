//! Shutdown, one mechanism for every service: a [`CancellationToken`] made by `main`
//! ([`on_signal`]: cancelled by SIGINT or SIGTERM; a test makes its own) and passed down
//! to whatever must stop — the HTTP server's accept loop and connections, a consume loop,
//! a socket, a background reader. Work that must end before the process does is spawned
//! on a [`TaskTracker`] and awaited after the cancel (connections, in-flight deliveries,
//! open sockets), each with its own deadline.

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown signal received");
}

/// A token cancelled when SIGINT or SIGTERM arrives: what a service's `main` hands to
/// its `run_until_stopped`.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}
