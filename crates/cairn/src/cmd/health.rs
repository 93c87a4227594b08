//! `cairn health --url URL`: asks a running server whether its whole chain works.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use console::style;
use serde_json::Value;

use crate::cli::HealthArgs;
use crate::ui;

fn ms(value: &Value) -> String {
    value
        .as_f64()
        .map(|ms| ui::duration(Duration::from_secs_f64(ms.max(0.0) / 1_000.0)))
        .unwrap_or_else(|| "—".to_owned())
}

fn print(url: &str, health: &Value) {
    let status = health["status"].as_str().unwrap_or("unknown");
    let styled = match status {
        "ok" => style(status).green().bold(),
        "degraded" => style(status).yellow().bold(),
        _ => style(status).red().bold(),
    };
    outln!(
        "{} {url} · {styled} (probe {}, {} old)",
        style("cairn health").bold(),
        ms(&health["probe"]["total_ms"]),
        ms(&health["probe_age_ms"]),
    );
    for hop in health["probe"]["hops"].as_array().into_iter().flatten() {
        let ok = hop["ok"] == true;
        let mark = if ok {
            style("✓").green()
        } else {
            style("✗").red().bold()
        };
        outln!(
            "  {mark} {:<11} {:>9}  {}",
            hop["hop"].as_str().unwrap_or_default(),
            if ok {
                ms(&hop["latency_ms"])
            } else {
                String::new()
            },
            hop["error"]
                .as_str()
                .map(|e| style(e).red().to_string())
                .unwrap_or_default(),
        );
    }
    outln!("  {}", style("alerts").bold());
    for alert in health["alerts"].as_array().into_iter().flatten() {
        let active = alert["active"] == true;
        let mark = if active {
            style("✗").red().bold()
        } else {
            style("✓").green()
        };
        outln!(
            "  {mark} {:<19} {}",
            alert["alert"].as_str().unwrap_or_default(),
            alert["message"].as_str().unwrap_or_default()
        );
    }
    if let Some(id) = health["probe"]["correlation_id"].as_str()
        && health["probe"]["ok"] != true
    {
        outln!("\n  the probe's whole path: cairn trace {id}");
    }
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let base = args.url.trim_end_matches('/');
    let url = format!("{base}/health/integration");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}: is cairn serve running there?"))?;
    let status = response.status();
    let body = response.text().await.context("reading the answer")?;
    let health: Value = serde_json::from_str(&body).with_context(|| {
        format!("{url} answered {status} with something that is not a health report: {body}")
    })?;
    anyhow::ensure!(
        health.get("status").is_some(),
        "{url} answered {status}: {body}"
    );
    if args.json.json {
        ui::print_json(&health)?;
    } else {
        print(base, &health);
    }
    Ok(if health["status"] == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
