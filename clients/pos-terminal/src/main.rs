//! `pos-terminal`: parse the command line, start logging, run the command, exit with
//! its code. Everything else lives in the library (`pos_terminal::cli`).

use clap::Parser;
use pos_terminal::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let command_line = Cli::parse();
    cli::init_telemetry();
    cli::run(command_line).into()
}
