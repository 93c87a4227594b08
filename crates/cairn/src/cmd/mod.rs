//! One module per command. Each returns the process exit code: 0 when all is well, 1
//! when a check found a problem; errors (bad input, an unreachable database) become 2
//! in `main`.

mod audit;
mod bench;
mod events;
mod replay;
mod status;

use std::process::ExitCode;

use crate::cli::{AuditCommand, BenchCommand, Cli, Command};

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = cli.database_url;
    match cli.command {
        Command::Events(command) => events::run(&url, command).await,
        Command::Replay(args) => replay::run(&url, args).await,
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(&url, args).await,
        Command::Status(args) => status::run(&url, args).await,
        Command::Bench(BenchCommand::Append(args)) => bench::append(&url, args).await,
    }
}
