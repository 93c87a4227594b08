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
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} {}", style("database").dim(), store.db().describe());
    println!(
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
        println!("{} {}", style("failed  ").dim(), style("none").green());
    } else {
        let codes: Vec<String> = failed
            .iter()
            .map(|(code, n)| format!("{code} ×{n}"))
            .collect();
        println!(
            "{} {} ({})  → cairn events list --failed",
            style("failed  ").dim(),
            style(head.failed_events).red().bold(),
            codes.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
