//! One module per command. Each returns the process exit code: 0 when all is well, 1
//! when a check found a problem; errors (bad input, an unreachable database) become 2
//! in `main`.

mod audit;
mod backup;
mod bench;
mod contracts;
mod demo;
mod events;
mod handlers;
mod health;
mod import;
mod org;
mod replay;
mod serve;
mod status;
mod subjects;
mod trace;
mod users;
mod workflows;

use std::process::ExitCode;

use crate::cli::{BenchCommand, Cli, Command, ContractsCommand, InvitationsCommand, OrgCommand};

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::app::set_pii_key_file(cli.pii_key);
    let url = cli.database_url;
    let runtime = cli.runtime;
    match cli.command {
        Command::Events(command) => events::run(&url, command).await,
        Command::Replay(args) => replay::run(&url, args).await,
        Command::Audit(command) => audit::run(&url, command).await,
        Command::Status(args) => status::run(&url, args).await,
        Command::Bench(BenchCommand::Append(args)) => bench::append(&url, args).await,
        Command::Bench(BenchCommand::Workflow(args)) => bench::workflow(&url, args).await,
        Command::Bench(BenchCommand::Realtime(args)) => bench::realtime(&url, args).await,
        Command::Bench(BenchCommand::Http(args)) => bench::http(&url, args).await,
        Command::Bench(BenchCommand::Import(args)) => bench::import(&url, args).await,
        Command::Bench(BenchCommand::Erase(args)) => bench::erase(&url, args).await,
        Command::Demo(args) => demo::run(&url, &runtime, args).await,
        Command::Workflows(command) => workflows::run(&url, &runtime, command).await,
        Command::Handlers(command) => handlers::run(&url, command).await,
        Command::Streams(command) => handlers::streams(&url, command).await,
        Command::Org(OrgCommand::Bootstrap(args)) => org::bootstrap(&url, &runtime, args).await,
        Command::Invitations(InvitationsCommand::Accept(args)) => {
            org::accept(&url, &runtime, args).await
        }
        Command::Invitations(InvitationsCommand::Address(args)) => {
            users::address(&url, &runtime, args).await
        }
        Command::Users(command) => users::run(&url, &runtime, command).await,
        Command::Subjects(command) => subjects::run(&url, &runtime, command).await,
        Command::Keys(command) => subjects::keys(&url, command).await,
        Command::Serve(args) => serve::serve(&url, &runtime, *args).await,
        Command::Token(args) => serve::token(&url, args).await,
        Command::Contracts(ContractsCommand::Export(args)) => contracts::export(args).await,
        Command::Contracts(ContractsCommand::CheckLog(args)) => {
            contracts::check_log(&url, args).await
        }
        Command::Trace(args) => trace::run(&url, args).await,
        Command::Health(args) => health::run(args).await,
        Command::Import(args) => import::run(&url, args).await,
        Command::Backup(args) => backup::backup(&url, args).await,
        Command::Restore(args) => backup::restore(&url, args).await,
    }
}
