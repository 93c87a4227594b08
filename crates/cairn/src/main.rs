//! `cairn`: an event-sourced, multi-tenant backend in one binary.
//!
//! This is the only crate that reads the environment, parses the command line and
//! chooses the database. Everything below it is handed what it needs.

/// Prints a line to standard output like `println!`, but a reader that has gone away
/// (`cairn status | head -2`) ends the command quietly instead of with a panic.
macro_rules! outln {
    () => {
        $crate::ui::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::ui::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod app;
mod cli;
mod cmd;
mod telemetry;
mod ui;

use std::process::ExitCode;

use clap::Parser as _;

// Replay, the HTTP API and the log writer allocate many small JSON values on one
// thread and free them on another; glibc's allocator spent close to half of a SQLite
// replay in malloc and free. mimalloc: replay 2.1-2.5x, HTTP reads 1.1-1.2x.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let telemetry = match telemetry::init(cli.verbose, cli.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            ui::print_error(&error);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            ui::print_error(&anyhow::Error::new(error).context("starting the async runtime"));
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(async {
        let result = cmd::run(cli).await;
        // The last spans of a timeline are still queued: write them before the
        // runtime ends (a database that is gone gets a bounded wait).
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            cairn_log::flush_all_spans(),
        )
        .await;
        result
    }) {
        Ok(code) => code,
        Err(error) => {
            ui::print_error(&error);
            ExitCode::from(2)
        }
    };
    drop(runtime);
    telemetry.shutdown();
    code
}
