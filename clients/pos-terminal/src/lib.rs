//! `pos_terminal`: the reference PoS terminal client, and the proof of the offline
//! story: an invoice acknowledged to the cashier survives power loss and reaches the
//! server exactly once.
//!
//! Data flow:
//!
//! ```text
//!  cashier ─enqueue─▶ outbox (SQLite, fsync'd) ─sync─▶ POST /invoices ─▶ ingress
//!                       ▲   │  same key + same body on every retry      │ 202 / 200
//!                       │   └──────── acknowledged / pending / rejected ◀┘
//!                       └── watch: invoice.state frames (fanout) and GET /invoices/{id}
//! ```
//!
//! The key is made at enqueue, inside the transaction that stores the body, so every
//! attempt of an entry (after a timeout, a crash, a kill -9) carries the same key and
//! byte-identical body, and the server answers a repeat with the invoice it already has.
//!
//! Layout:
//! - `config`: environment → [`Config`];
//! - `body`: checks a cashier's body and seals it with its key (no I/O);
//! - `policy`: answer classification, backoff and jitter, `Retry-After`, keys (no I/O);
//! - `state`: server states and the forward-only rule (no I/O);
//! - `outbox`: the SQLite file, and [`SharedOutbox`] for async tasks (no network);
//! - `client`: HTTP to the ingress;
//! - `sync`: one delivery run, with the watcher in the background;
//! - `watch`: the WebSocket watcher;
//! - `refresh`: `GET /invoices/{id}` for states the socket did not deliver;
//! - `catalog`: the offline catalog copy (`catalog sync`) and selling from it (`sell`);
//! - `cli`: the `pos-terminal` commands and exit codes.

pub mod body;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod outbox;
pub mod policy;
pub mod refresh;
pub mod state;
pub mod sync;
pub mod watch;

#[cfg(test)]
mod test_support;

pub use client::Client;
pub use config::{Config, Token};
pub use outbox::{Outbox, OutboxError, SharedOutbox, Status};
pub use sync::{sync, SyncError, SyncOptions, SyncReport};
pub use watch::{WatchError, Watcher};

/// A jitter seed that differs between processes and runs, so terminals that lost the
/// link together do not retry together.
pub(crate) fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Folding the high half in keeps the seconds' contribution.
    (nanos as u64) ^ ((nanos >> 64) as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
