//! `cairn audit verify`

use std::process::ExitCode;

use console::style;

use crate::app;
use crate::cli::JsonFlag;
use crate::ui;

pub async fn verify(url: &str, args: JsonFlag) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let progress = ui::Progress::new("verifying");
    let report = store
        .db()
        .verify_chain(&mut |done, total| progress.update(done, total))
        .await;
    progress.finish();
    let report = report?;
    if args.json {
        ui::print_json(&report)?;
    } else {
        match &report.breach {
            None => println!(
                "{} hash chain intact: {}, head at position {}",
                style("✓").green().bold(),
                ui::plural(report.n_checked, "event", "events"),
                report.head
            ),
            Some(breach) => println!(
                "{} hash chain broken at position {}: {}\n  {} events before it check out",
                style("✗").red().bold(),
                style(breach.position).bold(),
                breach.detail,
                ui::count(report.n_checked)
            ),
        }
    }
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
