//! `cairn subjects` and `cairn keys`: people's personal data, its erasure and its key.

use std::process::ExitCode;

use console::style;

use cairn_domain::CommandContext;
use cairn_log::Kek;
use cairn_policy::Principal;

use crate::app;
use crate::cli::{
    DiscloseArgs, EraseArgs, KeysCommand, RestrictArgs, RotateArgs, Runtime, SubjectArgs,
    SubjectsCommand,
};
use crate::cmd::org::explain;
use crate::ui;

fn operator() -> CommandContext {
    CommandContext::new(Principal::Operator {
        name: "cairn-cli".to_owned(),
    })
}

pub async fn run(
    url: &str,
    runtime: &Runtime,
    command: SubjectsCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        SubjectsCommand::Erase(args) => erase(url, runtime, args).await,
        SubjectsCommand::Restrict(args) => restrict(url, runtime, args).await,
        SubjectsCommand::Show(args) => show(url, runtime, args).await,
        SubjectsCommand::Disclose(args) => disclose(url, runtime, args).await,
    }
}

async fn erase(url: &str, runtime: &Runtime, args: EraseArgs) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let receipt = domain
        .erase_subject(&operator(), args.id, &args.reason)
        .await
        .map_err(explain)?;
    if args.json.json {
        ui::print_json(&receipt)?;
    } else {
        let when = receipt.erased_at.format("%Y-%m-%d %H:%M:%S UTC");
        match receipt.repeated {
            true => outln!(
                "{} person {} was erased before, at {when} by {}: nothing changed",
                style("=").yellow().bold(),
                receipt.subject_id,
                receipt.erased_by
            ),
            false => outln!(
                "{} person {} erased at {when}: their data key is destroyed and their rows keep no name or address",
                style("✓").green().bold(),
                receipt.subject_id
            ),
        }
        outln!("  reason: {}", receipt.reason);
        outln!("  request: {}", receipt.correlation_id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn restrict(url: &str, runtime: &Runtime, args: RestrictArgs) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let receipt = domain
        .restrict_subject(&operator(), args.id, &args.reason, args.erase_at)
        .await
        .map_err(explain)?;
    if args.json.json {
        ui::print_json(&receipt)?;
    } else {
        let when = receipt.restricted_at.format("%Y-%m-%d %H:%M:%S UTC");
        let erase_at = receipt.erase_at.format("%Y-%m-%d %H:%M:%S UTC");
        match receipt.repeated {
            true => outln!(
                "{} person {} was restricted before, at {when} by {}: nothing changed",
                style("=").yellow().bold(),
                receipt.subject_id,
                receipt.restricted_by
            ),
            false => outln!(
                "{} person {} restricted at {when}: their name and address are shown to no one, and nothing new about them is recorded",
                style("✓").green().bold(),
                receipt.subject_id
            ),
        }
        outln!("  erased at: {erase_at} (run {})", receipt.workflow_id);
        outln!("  reason: {}", receipt.reason);
        outln!("  request: {}", receipt.correlation_id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(url: &str, runtime: &Runtime, args: SubjectArgs) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let status = domain
        .subject_status(&operator(), args.id)
        .await
        .map_err(explain)?;
    if args.json.json {
        ui::print_json(&status)?;
    } else {
        outln!(
            "person {} of organization {}: {}",
            status.subject_id,
            status.org_id,
            style(&status.state).bold()
        );
        if let Some(restriction) = &status.restriction {
            outln!(
                "  restricted at {} by {} until {}: {}",
                restriction.restricted_at.format("%Y-%m-%d %H:%M:%S UTC"),
                restriction.restricted_by,
                restriction.erase_at.format("%Y-%m-%d %H:%M:%S UTC"),
                restriction.reason
            );
        }
        if let Some(erasure) = &status.erasure {
            outln!(
                "  erased at {} by {}: {}",
                erasure.erased_at.format("%Y-%m-%d %H:%M:%S UTC"),
                erasure.erased_by,
                erasure.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn disclose(url: &str, runtime: &Runtime, args: DiscloseArgs) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    // The access log names the person at the terminal.
    let reader = CommandContext::new(Principal::Operator {
        name: app::cli_login(),
    });
    let disclosure = domain
        .disclose_subject(&reader, args.id, &args.reason, cairn_log::AccessVia::Cli)
        .await
        .map_err(explain)?;
    if args.json.json {
        ui::print_json(&disclosure)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} person {} of organization {} ({}): {} personal fields, disclosed to {} for: {}",
        style("!").yellow().bold(),
        disclosure.subject_id,
        disclosure.org_id,
        disclosure.state,
        disclosure.fields.len(),
        disclosure.disclosed_to,
        disclosure.reason
    );
    outln!(
        "  on record in the access log (request {})",
        disclosure.correlation_id
    );
    let width = |text: fn(&cairn_dispatch::DisclosedField) -> usize| {
        disclosure.fields.iter().map(text).max().unwrap_or(0)
    };
    let (type_width, field_width) = (width(|f| f.event_type.len()), width(|f| f.field.len()));
    for field in &disclosure.fields {
        let value = match &field.value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        outln!(
            "  {:>8}  {}  {:type_width$}  {}  {}",
            format!("#{}", field.position),
            field.recorded_at.format("%Y-%m-%d %H:%M:%S UTC"),
            field.event_type,
            style(format!("{:field_width$}", field.field)).dim(),
            value
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keys(url: &str, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Rotate(args) => rotate(url, args).await,
    }
}

async fn rotate(url: &str, args: RotateArgs) -> anyhow::Result<ExitCode> {
    let db = app::open_db(url, &cairn_log::DbOptions::default()).await?;
    let old = app::current_kek(&db)?;
    let new = if args.to.exists() {
        Kek::load(&args.to)?
    } else {
        let kek = Kek::generate()?;
        kek.write_new(&args.to)?;
        kek
    };
    let n = db.rotate_kek(&old, &new).await?;
    outln!(
        "{} {n} data keys re-wrapped under key {} ({}); key {} is retired. Restart every process with --pii-key {}",
        style("✓").green().bold(),
        new.id(),
        args.to.display(),
        old.id(),
        args.to.display()
    );
    Ok(ExitCode::SUCCESS)
}
