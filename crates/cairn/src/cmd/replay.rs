//! `cairn replay [--verify]`

use std::process::ExitCode;
use std::time::Instant;

use console::style;

use cairn_dispatch::{DriftKind, OutcomeChange, VerifyOptions};

use crate::app;
use crate::cli::ReplayArgs;
use crate::ui;

fn print_changes(changes: &[OutcomeChange]) {
    for change in changes {
        let now = match &change.now {
            cairn_log::Outcome::Failed(error) => {
                style(format!("failed {}: {}", error.code, error.message))
                    .red()
                    .to_string()
            }
            _ => style("applied").green().to_string(),
        };
        outln!(
            "  event {} ({}): now {now}",
            change.position,
            change.event_type
        );
    }
}

pub async fn run(url: &str, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let started = Instant::now();
    if !args.verify {
        let progress = ui::Progress::new("replaying");
        let report = store
            .replay(
                cairn_dispatch::ReplayOptions {
                    discard_safety_net: args.discard_safety_net,
                },
                &mut |done, total| progress.update(done, total),
            )
            .await;
        progress.finish();
        let report = report?;
        if args.json.json {
            ui::print_json(&report)?;
            return Ok(ExitCode::SUCCESS);
        }
        let elapsed = started.elapsed();
        outln!(
            "{} rebuilt {} from {} in {} ({} events/s): {} applied, {} skipped, {} failed",
            style("✓").green().bold(),
            ui::plural(
                store.dispatcher().registry().projections().len() as u64,
                "projection table",
                "projection tables"
            ),
            ui::plural(report.n_events, "event", "events"),
            ui::duration(elapsed),
            ui::count((report.n_events as f64 / elapsed.as_secs_f64().max(1e-9)) as u64),
            ui::count(report.n_applied),
            ui::count(report.n_skipped),
            ui::count(report.n_failed),
        );
        if !report.changed.is_empty() {
            outln!(
                "{} outcome changed and recorded:",
                ui::plural(report.changed.len() as u64, "event's", "events'")
            );
            print_changes(&report.changed);
        }
        return Ok(ExitCode::SUCCESS);
    }

    let progress = ui::Progress::new("verifying");
    let report = store
        .verify_projections(VerifyOptions::default(), &mut |done, total| {
            progress.update(done, total)
        })
        .await;
    progress.finish();
    let report = report?;
    if args.json.json {
        ui::print_json(&report)?;
    } else {
        outln!(
            "rebuilt {} from {} into a shadow copy and compared it with the live tables:",
            ui::plural(
                report.tables.len() as u64,
                "projection table",
                "projection tables"
            ),
            ui::plural(report.n_events, "event", "events"),
        );
        for table in &report.tables {
            let n_drift = report
                .drift
                .iter()
                .filter(|d| d.table == table.table)
                .count() as u64;
            let mark = if n_drift == 0 {
                style("✓").green()
            } else {
                style("✗").red()
            };
            outln!(
                "  {mark} {:<24} {:>8} live  {:>8} rebuilt  {}",
                table.table,
                ui::count(table.live_rows),
                ui::count(table.rebuilt_rows),
                if n_drift == 0 {
                    String::new()
                } else {
                    style(ui::plural(n_drift, "row differs", "rows differ"))
                        .red()
                        .to_string()
                }
            );
        }
        for drift in &report.drift {
            let key = drift.key.to_string();
            match &drift.kind {
                DriftKind::Differs { columns } => {
                    for column in columns {
                        outln!(
                            "    {} {key}: {} is {} live, {} from the log",
                            drift.table,
                            column.column,
                            column.live,
                            column.rebuilt
                        );
                    }
                }
                DriftKind::OnlyLive { live } => {
                    outln!(
                        "    {} {key}: only in the live table, no event produced it: {live}",
                        drift.table
                    );
                }
                DriftKind::OnlyRebuilt { rebuilt } => {
                    outln!(
                        "    {} {key}: missing from the live table; the log produces {rebuilt}",
                        drift.table
                    );
                }
            }
        }
        if !report.outcome_changes.is_empty() {
            outln!(
                "{} would have a different outcome now (`cairn replay` records it):",
                ui::plural(report.outcome_changes.len() as u64, "event", "events")
            );
            print_changes(&report.outcome_changes);
        }
        if report.is_clean() {
            outln!(
                "{} the projections are exactly what the log produces",
                style("✓").green().bold()
            );
        } else {
            outln!(
                "{} {}: projections were changed without an event",
                style("✗").red().bold(),
                ui::plural(report.drift.len() as u64, "row differs", "rows differ")
            );
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
