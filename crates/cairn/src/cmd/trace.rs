//! `cairn trace CORRELATION_ID`: one request's whole path, as one timeline.

use std::process::ExitCode;
use std::time::Duration;

use console::style;

use cairn_policy::{Action, Principal, authorize};
use cairn_trace::{Hop, Status, Timeline};

use crate::app;
use crate::cli::TraceArgs;
use crate::ui;

fn millis(ms: f64) -> String {
    ui::duration(Duration::from_secs_f64(ms.max(0.0) / 1_000.0))
}

fn hop_name(hop: Hop) -> &'static str {
    match hop {
        Hop::Http => "http",
        Hop::Event => "event",
        Hop::Handler => "handler",
        Hop::Workflow => "workflow",
        Hop::Step => "step",
        Hop::Timer => "timer",
        Hop::Email => "email",
        Hop::Delivery => "delivery",
        Hop::Probe => "probe",
    }
}

/// The timeline for people: one line per hop, offset from the start, time taken,
/// and errors in full under the hop they belong to.
pub fn print(timeline: &Timeline) {
    outln!(
        "{} {}  {} · {} · {}",
        style("trace").bold(),
        timeline.correlation_id,
        ui::plural(timeline.hops as u64, "hop", "hops"),
        millis(timeline.duration_ms),
        if timeline.errors == 0 {
            style("no errors".to_owned()).green().to_string()
        } else {
            style(ui::plural(timeline.errors as u64, "error", "errors"))
                .red()
                .to_string()
        },
    );
    outln!(
        "{}",
        style(format!(
            "  started {}",
            timeline.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        ))
        .dim()
    );
    for entry in &timeline.entries {
        let mark = match entry.status {
            Status::Ok => style("✓").green(),
            Status::Failed => style("✗").red().bold(),
            Status::Retrying => style("↻").yellow(),
            Status::InProgress => style("…").yellow(),
            Status::Waiting => style("◷").cyan(),
        };
        let took = entry.duration_ms.map(millis).unwrap_or_default();
        outln!(
            "  {mark} {:>10}  {:>8}  {:<8}  {}",
            format!("+{}", millis(entry.offset_ms)),
            took,
            style(hop_name(entry.hop)).cyan(),
            entry.name
        );
        if let Some(error) = &entry.error {
            outln!("  {:>32}{}", "", style(error).red());
        }
    }
}

pub async fn run(url: &str, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let db = store.db();
    let operator = Principal::Operator {
        name: "cairn-cli".to_owned(),
    };
    let grant =
        authorize(&operator, &Action::ReadTrace).map_err(|denial| anyhow::anyhow!("{denial}"))?;
    let Some(timeline) = cairn_trace::timeline(
        db,
        store.dispatcher().registry(),
        &grant,
        args.correlation_id,
    )
    .await?
    else {
        anyhow::bail!(
            "nothing in {} carries correlation id {}: no event, no request, no step",
            db.describe(),
            args.correlation_id
        );
    };
    app::record_read(
        db,
        format!("trace {}", args.correlation_id),
        timeline.subjects.clone(),
    )
    .await?;
    if args.json.json {
        ui::print_json(&timeline)?;
    } else {
        print(&timeline);
    }
    Ok(if timeline.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
