//! `loadgen`: load generator for the POS backend, measuring the pipeline only through
//! its public API (contract: REST on ingress, WebSocket on fanout), plus the raw
//! ceilings of the infrastructure underneath, on the same machine with the same tool.
//!
//! Data flow of `loadgen pipeline`:
//!
//! ```text
//!  workers ──POST /invoices──▶ ingress ─▶ JetStream ─▶ processor ─▶ events ─▶ fanout
//!     │  202 {id}  (accept latency)                                              │
//!     ▼                                                                          ▼
//!  Tracker: id → send time  ◀───────── COMPLETED frame {invoiceId} ◀── one socket per
//!           (end-to-end latency = frame arrival − send)             tenant per fanout
//! ```
//!
//! Sockets are opened before the first POST; a frame that beats its POST answer is
//! held until the answer names the id. A share of requests resend an earlier body with
//! its key and must come back `200` with the same id (`Idempotent-Replayed`).
//!
//! `loadgen sockets` holds many sockets on one fanout instance and reports its memory
//! per socket and the delivery latency of `invoice.state` frames (`sockets`).
//!
//! `loadgen ceilings` measures JetStream acked publishes (pipelined and synchronous)
//! and MongoDB `w: majority` inserts (single and batches of 100) into temporary
//! resources that it removes afterwards, one fiscal series numbered alone, and the floor:
//! one broker message, insert and key lookup at a fixed rate, with the servers' CPU per
//! operation.
//!
//! Both print a table and one JSON line on stdout (`--json`: only the JSON line; the
//! table goes to stderr), progress on stderr.
//!
//! Layout:
//! - `cli`: the command line (clap);
//! - `invoice`: realistic request bodies and the PRNG behind them;
//! - `pipeline`: the load (closed or open loop), the counters and the report;
//! - `feed`: the WebSocket readers and the [`feed::Tracker`] pairing frames with POSTs;
//! - `ceilings`: the raw JetStream and MongoDB rates, and the floor at a fixed rate;
//! - `stats`: latency histograms (hdrhistogram) and the table printer.

mod ceilings;
mod cli;
mod feed;
mod invoice;
mod pipeline;
mod sockets;
mod stats;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Bad options exit 2 with clap's message naming the option; --help exits 0.
    let cli = <cli::Cli as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Pipeline(args) => pipeline::run(args).await,
            cli::Command::Ceilings(args) => ceilings::run(args).await,
            cli::Command::Sockets(args) => sockets::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
