//! `cairn org bootstrap` and `cairn invitations accept`.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use console::style;

use cairn_domain::{BootstrapRequest, CommandContext, CommandError};
use cairn_policy::Principal;

use crate::app;
use crate::cli::{AcceptArgs, BootstrapArgs, Runtime};
use crate::ui;

fn read_request(value: &str) -> anyhow::Result<String> {
    if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading --request from standard input")?;
        Ok(text)
    } else if let Some(path) = value.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading --request from {path}"))
    } else {
        Ok(value.to_owned())
    }
}

/// Turns a command error into one line that names every field at fault.
pub fn explain(error: CommandError) -> anyhow::Error {
    match error {
        CommandError::Invalid(fields) => {
            let lines: Vec<String> = fields
                .iter()
                .map(|f| format!("\n  {}: {}", f.field, f.message))
                .collect();
            anyhow::anyhow!("the request is not valid:{}", lines.concat())
        }
        other => anyhow::Error::new(other),
    }
}

pub async fn bootstrap(
    url: &str,
    runtime: &Runtime,
    args: BootstrapArgs,
) -> anyhow::Result<ExitCode> {
    let text = read_request(&args.request)?;
    let request: BootstrapRequest =
        serde_json::from_str(&text).context("--request is not a valid bootstrap request")?;
    let domain = app::open_domain(url, runtime).await?;
    if args.wait {
        // Before the bootstrap is recorded: a build that would strand runs starts none.
        domain.engine().check_definitions().await?;
    }
    let mut ctx = CommandContext::new(Principal::Operator {
        name: "cairn-cli".to_owned(),
    });
    ctx.idempotency_key = args.idempotency_key;
    let accepted = domain.bootstrap(&ctx, &request).await.map_err(explain)?;
    if args.wait {
        domain.engine().run_until_idle().await?;
    }
    if args.json.json {
        ui::print_json(&accepted)?;
    } else {
        outln!(
            "{} bootstrap of {} accepted\n  organization  {}\n  workflow      {}\n  correlation   {}",
            style("✓").green().bold(),
            style(&request.organization.name).bold(),
            accepted.org_id,
            accepted.workflow_id,
            accepted.correlation_id
        );
        if !args.wait {
            outln!(
                "  a workflow engine runs it: `cairn workflows run`, then `cairn workflows show {}`",
                accepted.workflow_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn accept(url: &str, runtime: &Runtime, args: AcceptArgs) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let ctx = CommandContext::new(Principal::Operator {
        name: "cairn-cli".to_owned(),
    });
    let acceptance = domain
        .accept_invitation(&ctx, &args.token)
        .await
        .map_err(explain)?;
    if args.json.json {
        ui::print_json(&acceptance)?;
    } else {
        outln!(
            "{} invitation {} accepted: user {} is active in organization {}",
            style("✓").green().bold(),
            acceptance.invitation_id,
            acceptance.user_id,
            acceptance.org_id
        );
    }
    Ok(ExitCode::SUCCESS)
}
