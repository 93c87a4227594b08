//! `cairn status`

use std::process::ExitCode;

use console::style;

use crate::app;
use crate::cli::JsonFlag;
use crate::ui;

pub async fn run(url: &str, args: JsonFlag) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let mut reader = store.db().reader().await?;
    let head = reader.conn().head().await?;
    let failed = reader.conn().failed_by_code().await?;
    let (held_streams, held_events) = cairn_dispatch::held_counts(&mut reader.conn()).await?;
    let paused_routes = cairn_dispatch::PausedRoutes::load(&mut reader.conn()).await?;
    let paused_kinds = cairn_workflow::control::kind_pauses(&mut reader.conn()).await?;
    let paused_runs: i64 = reader
        .conn()
        .fetch_one(
            "SELECT COUNT(*) AS n FROM workflow_runs WHERE paused_at IS NOT NULL",
            cairn_log::args![],
        )
        .await?
        .get("n")?;
    let newer =
        cairn_dispatch::newer_events(&mut reader.conn(), store.dispatcher().registry()).await?;
    // A log a newer build wrote into is not one this build should run against.
    let exit = if newer.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.json {
        let by_code: serde_json::Map<String, serde_json::Value> = failed
            .iter()
            .map(|(code, n)| (code.clone(), (*n).into()))
            .collect();
        ui::print_json(&serde_json::json!({
            "database": store.db().describe(),
            "backend": store.db().backend().as_str(),
            "head_position": head.last_position,
            "head_hash": head.last_hash,
            "failed_events": head.failed_events,
            "failed_by_code": by_code,
            "held_streams": held_streams,
            "held_events": held_events,
            "paused_routes": paused_routes.iter().collect::<Vec<_>>(),
            "paused_workflow_kinds": paused_kinds,
            "paused_workflow_runs": paused_runs,
            "newer_events": newer,
        }))?;
        return Ok(exit);
    }
    outln!("{} {}", style("database").dim(), store.db().describe());
    outln!(
        "{} {} (hash {}…)",
        style("head    ").dim(),
        ui::plural(
            u64::try_from(head.last_position.get()).unwrap_or(0),
            "event",
            "events"
        ),
        &head.last_hash[..12]
    );
    if head.failed_events == 0 {
        outln!("{} {}", style("failed  ").dim(), style("none").green());
    } else {
        let codes: Vec<String> = failed
            .iter()
            .map(|(code, n)| format!("{code} ×{n}"))
            .collect();
        outln!(
            "{} {} ({})  → cairn events list --failed",
            style("failed  ").dim(),
            style(head.failed_events).red().bold(),
            codes.join(", ")
        );
    }
    for newer in &newer {
        outln!(
            "{} {}: written by a newer build, never applied by this one (P9006)  → run the newer build",
            style("newer   ").dim(),
            style(newer).red().bold()
        );
    }
    if held_streams > 0 {
        outln!(
            "{} {} ({} waiting)  → cairn streams held",
            style("held    ").dim(),
            style(ui::plural(held_streams, "stream", "streams"))
                .yellow()
                .bold(),
            ui::plural(held_events, "event", "events")
        );
    }
    for pause in paused_routes.iter() {
        outln!(
            "{} handler route {} by {} since {}: {}  → cairn handlers resume",
            style("paused  ").dim(),
            style(&pause.route).yellow().bold(),
            pause.paused_by,
            pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.reason
        );
    }
    for pause in &paused_kinds {
        outln!(
            "{} every {} run, by {} since {}: {}  → cairn workflows resume --kind {}",
            style("paused  ").dim(),
            style(&pause.kind).yellow().bold(),
            pause.paused_by,
            pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.reason,
            pause.kind
        );
    }
    if paused_runs > 0 {
        outln!(
            "{} {}  → cairn workflows list, cairn workflows resume ID",
            style("paused  ").dim(),
            style(ui::plural(
                u64::try_from(paused_runs).unwrap_or(0),
                "workflow run",
                "workflow runs"
            ))
            .yellow()
            .bold()
        );
    }
    Ok(exit)
}
