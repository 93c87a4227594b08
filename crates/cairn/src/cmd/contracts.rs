//! `cairn contracts export` and `cairn contracts check-log`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use console::style;

use cairn_dispatch::CheckLogReport;

use crate::app;
use crate::cli::{CheckLogArgs, ExportArgs};
use crate::ui;

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let registry = app::registry();
    let (_, documented) = cairn_http::routes::api().finish();
    let openapi = cairn_http::api::openapi(&documented);
    let asyncapi = cairn_http::contracts::asyncapi(&registry);
    let written = cairn_http::contracts::export(&args.out, &openapi, &asyncapi, &registry)
        .with_context(|| format!("writing the contracts to {}", args.out.display()))?;
    outln!(
        "{} wrote {} to {}",
        style("✓").green().bold(),
        ui::plural(written.len() as u64, "file", "files"),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn check_log(url: &str, args: CheckLogArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let started = Instant::now();
    let progress = ui::Progress::new("checking");
    let report = store
        .check_log(&mut |done, total| progress.update(done, total))
        .await;
    progress.finish();
    let report = report?;
    let elapsed = started.elapsed();
    if args.json.json {
        ui::print_json(&report)?;
    } else {
        print_report(&report, elapsed);
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &CheckLogReport, elapsed: std::time::Duration) {
    outln!(
        "read {} through their upcaster chains in {} ({} events/s)",
        ui::plural(report.n_events, "event", "events"),
        ui::duration(elapsed),
        ui::count((report.n_events as f64 / elapsed.as_secs_f64().max(1e-9)) as u64),
    );
    for count in &report.versions {
        let (mark, how) = match count.current_version {
            None => (
                style("·").dim(),
                style("no contract in this build").dim().to_string(),
            ),
            Some(current) if current == count.stored_version => {
                (style("✓").green(), format!("v{current}"))
            }
            Some(current) if current > count.stored_version => (
                style("✓").green(),
                format!("v{} → v{current}", count.stored_version),
            ),
            Some(current) => (
                style("✗").red(),
                style(format!(
                    "v{}, newer than this build's v{current}",
                    count.stored_version
                ))
                .red()
                .to_string(),
            ),
        };
        outln!(
            "  {mark} {:<44} {:>10}  {how}",
            count.event_type,
            ui::count(count.n_events)
        );
    }
    if report.is_clean() {
        outln!(
            "{} every event reads as the current version of its type",
            style("✓").green().bold()
        );
        return;
    }
    outln!(
        "{} {} read as the current version of {}:",
        style("✗").red().bold(),
        ui::plural(report.n_failed, "event does not", "events do not"),
        if report.n_failed == 1 {
            "its type"
        } else {
            "their types"
        }
    );
    for failure in &report.failures {
        outln!(
            "  position {}  {}  stored v{}, current v{}: {}",
            failure.position,
            failure.event_type,
            failure.stored_version,
            failure.current_version,
            style(&failure.message).red()
        );
    }
    if report.n_failed > report.failures.len() as u64 {
        outln!(
            "  … and {} more",
            ui::count(report.n_failed - report.failures.len() as u64)
        );
    }
}
