//! `cairn workflows …`

use std::process::ExitCode;

use anyhow::Context as _;
use console::style;

use cairn_workflow::{RunFilter, RunStatus, RunWithSteps, StepKind, StepRecord, StepStatus};

use crate::app;
use crate::cli::{
    Runtime, WorkflowListArgs, WorkflowPauseArgs, WorkflowRunArgs, WorkflowShowArgs,
    WorkflowsCommand,
};
use crate::ui;

pub async fn run(
    url: &str,
    runtime: &Runtime,
    command: WorkflowsCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        WorkflowsCommand::List(args) => list(url, args).await,
        WorkflowsCommand::Show(args) => show(url, args).await,
        WorkflowsCommand::Run(args) => run_engine(url, runtime, args).await,
        WorkflowsCommand::Pause(args) => pause(url, runtime, args, true).await,
        WorkflowsCommand::Resume(args) => pause(url, runtime, args, false).await,
        WorkflowsCommand::Cancel(args) => control(url, runtime, args, true).await,
        WorkflowsCommand::Retry(args) => control(url, runtime, args, false).await,
        WorkflowsCommand::Kinds(args) => kinds(url, runtime, args).await,
        WorkflowsCommand::Check(args) => check(url, runtime, args).await,
    }
}

/// `cairn workflows cancel` and `cairn workflows retry`.
async fn control(
    url: &str,
    runtime: &Runtime,
    args: crate::cli::WorkflowControlArgs,
    cancelling: bool,
) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let engine = domain.engine();
    let by = app::cli_operator();
    let run = if cancelling {
        engine.cancel_run(args.id, &by, args.reason).await?
    } else {
        engine.retry_run(args.id, &by, args.reason).await?
    };
    if args.json.json {
        ui::print_json(&run)?;
    } else if cancelling {
        outln!(
            "{} workflow run {} ({}) is cancelled: it undoes what it did, then ends failed",
            style("✓").green().bold(),
            run.id,
            run.kind
        );
    } else {
        outln!(
            "{} workflow run {} ({}) goes on from the step that failed; `cairn workflows run` drives it if no server is running",
            style("✓").green().bold(),
            run.id,
            run.kind
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn workflows check`: exit 1 when a run no longer fits its definition.
async fn check(
    url: &str,
    runtime: &Runtime,
    args: crate::cli::JsonFlag,
) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let report = domain.engine().check_runs().await?;
    let code = if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if args.json {
        ui::print_json(&report)?;
        return Ok(code);
    }
    let checked = ui::plural(report.checked, "unfinished run", "unfinished runs");
    if report.is_clean() {
        outln!(
            "{} {checked} checked: each fits its definition",
            style("✓").green().bold()
        );
        return Ok(code);
    }
    let mut table = ui::table(&["RUN", "KIND", "VERSION", "STATUS", "MISFIT"]);
    for check in &report.misfits {
        table.add_row(vec![
            check.run_id.to_string(),
            check.kind.clone(),
            format!("v{}", check.version),
            check.status.to_string(),
            check.misfit.to_string(),
        ]);
    }
    outln!("{table}");
    outln!(
        "{} {} of {checked} no longer {}",
        style("✗").red().bold(),
        report.misfits.len(),
        if report.misfits.len() == 1 {
            "fits its definition"
        } else {
            "fit their definitions"
        },
    );
    Ok(code)
}

/// `cairn workflows pause|resume`: one run, or with --kind every run of a kind.
async fn pause(
    url: &str,
    runtime: &Runtime,
    args: WorkflowPauseArgs,
    pausing: bool,
) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let engine = domain.engine();
    let by = app::cli_operator();
    let reason = args.reason.clone();
    let verb = if pausing { "paused" } else { "resumed" };
    match (args.id, &args.kind) {
        (Some(id), _) => {
            let run = if pausing {
                engine.pause_run(id, &by, reason).await?
            } else {
                engine.resume_run(id, &by, reason).await?
            };
            if args.json.json {
                ui::print_json(&run)?;
            } else {
                outln!(
                    "{} workflow run {id} ({}) is {verb}",
                    mark(pausing),
                    run.kind
                );
                if let Some(pause) = &run.paused
                    && !pausing
                {
                    outln!(
                        "  its kind {} is still paused ({}): cairn workflows resume --kind {}",
                        run.kind,
                        pause.reason,
                        run.kind
                    );
                }
            }
        }
        (None, Some(kind)) => {
            let pause = if pausing {
                engine.pause_kind(kind, &by, reason).await?
            } else {
                engine.resume_kind(kind, &by, reason).await?
            };
            if args.json.json {
                ui::print_json(&pause)?;
            } else if pausing {
                outln!(
                    "{} every {kind} run is paused: new runs are recorded and wait; `cairn workflows resume --kind {kind}` lets them go on",
                    mark(true)
                );
            } else {
                outln!("{} every {kind} run goes on where it stopped", mark(false));
            }
        }
        (None, None) => anyhow::bail!("name a run, or a kind with --kind"),
    }
    Ok(ExitCode::SUCCESS)
}

fn mark(pausing: bool) -> console::StyledObject<&'static str> {
    if pausing {
        style("⏸").yellow().bold()
    } else {
        style("▶").green().bold()
    }
}

/// `cairn workflows kinds`.
async fn kinds(
    url: &str,
    runtime: &Runtime,
    args: crate::cli::JsonFlag,
) -> anyhow::Result<ExitCode> {
    let domain = app::open_domain(url, runtime).await?;
    let mut reader = domain.store().db().reader().await?;
    let paused = cairn_workflow::control::kind_pauses(&mut reader.conn()).await?;
    let kinds: Vec<serde_json::Value> = domain
        .engine()
        .kinds()
        .into_iter()
        .map(|kind| {
            serde_json::json!({
                "kind": kind,
                "versions": domain.engine().versions(kind),
                "not_pausable": domain.engine().not_pausable(kind),
                "paused": paused.iter().find(|p| p.kind == kind),
            })
        })
        .collect();
    if args.json {
        ui::print_json(&kinds)?;
        return Ok(ExitCode::SUCCESS);
    }
    for kind in domain.engine().kinds() {
        match paused.iter().find(|p| p.kind == kind) {
            Some(pause) => outln!(
                "{} {kind:<24} paused by {} since {}: {}",
                mark(true),
                pause.paused_by,
                pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
                pause.reason
            ),
            None => match domain.engine().not_pausable(kind) {
                Some(why) => outln!(
                    "{} {kind:<24} running (cannot be paused: {why})",
                    style("•").green()
                ),
                None => outln!("{} {kind:<24} running", style("•").green()),
            },
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A status with its mark, for people.
pub fn status_mark(status: RunStatus) -> String {
    match status {
        RunStatus::Completed => style("✓ completed").green().to_string(),
        RunStatus::Running => style("… running").cyan().to_string(),
        RunStatus::Compensating => style("↺ compensating").yellow().to_string(),
        RunStatus::Failed => style("✗ failed").red().to_string(),
        RunStatus::CompensationFailed => style("✗ compensation failed").red().bold().to_string(),
    }
}

/// How long a step took, if it finished.
pub fn step_duration(step: &StepRecord) -> Option<std::time::Duration> {
    let (start, end) = (step.started_at?, step.finished_at?);
    (end - start).to_std().ok()
}

/// One line for a step.
pub fn step_line(step: &StepRecord) -> String {
    let mark = match step.status {
        StepStatus::Completed | StepStatus::Fired => style("✓").green(),
        StepStatus::Running => style("…").cyan(),
        StepStatus::Retrying | StepStatus::Waiting => style("⏳").yellow(),
        StepStatus::Failed => style("✗").red(),
    };
    let name = match step.kind {
        StepKind::Timer => format!("{} (timer)", step.name),
        StepKind::Action | StepKind::Compensation => step.name.clone(),
    };
    let mut line = format!("{mark} {name:<44}");
    match step.kind {
        StepKind::Timer => {
            if let Some(wake) = step.wake_at {
                line.push_str(&format!(" until {}", wake.format("%Y-%m-%d %H:%M:%S UTC")));
            }
        }
        StepKind::Action | StepKind::Compensation => {
            line.push_str(&format!(
                " {:>10}",
                ui::plural(u64::from(step.attempts), "attempt", "attempts")
            ));
            if let Some(duration) = step_duration(step) {
                line.push_str(&format!(" {:>9}", ui::duration(duration)));
            }
            if step.status == StepStatus::Retrying
                && let Some(wake) = step.wake_at
            {
                line.push_str(&format!("  next attempt {}", wake.format("%H:%M:%S")));
            }
        }
    }
    if let Some(error) = &step.last_error
        && step.status != StepStatus::Completed
    {
        line.push_str(&format!("\n      {}", style(error).red()));
    }
    line
}

async fn list(url: &str, args: WorkflowListArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let filter = RunFilter {
        status: args.status,
        kind: args.kind,
        limit: Some(args.limit),
        ..RunFilter::default()
    };
    let mut reader = store.db().reader().await?;
    let runs = cairn_workflow::state::list(&mut reader.conn(), &filter).await?;
    if args.json.json {
        ui::print_json(&runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        outln!("{}", style("no workflow runs match").dim());
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&["ID", "KIND", "STATUS", "CURRENT STEP", "CREATED (UTC)"]);
    for run in &runs {
        table.add_row(vec![
            run.id.to_string(),
            run.kind.clone(),
            if run.is_paused() && !run.status.is_finished() {
                format!("{} (paused)", run.status)
            } else {
                run.status.to_string()
            },
            run.current_step.clone().unwrap_or_default(),
            run.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
    }
    outln!("{table}");
    outln!("{}", ui::plural(runs.len() as u64, "run", "runs"));
    Ok(ExitCode::SUCCESS)
}

/// Prints a run with its steps.
pub fn print_run(run: &RunWithSteps) {
    let r = &run.run;
    outln!(
        "{} {} {}  {}",
        style("workflow").bold(),
        style(r.id).bold(),
        r.kind,
        status_mark(r.status)
    );
    let label = |text: &str| style(format!("  {text:<13}")).dim().to_string();
    outln!("{}{}", label("correlation"), r.correlation_id);
    if let Some(org) = r.org_id {
        outln!("{}{}", label("organization"), org);
    }
    if let Some(parent) = r.parent_id {
        outln!("{}{}", label("parent"), parent);
    }
    outln!(
        "{}{}  (updated {})",
        label("created"),
        r.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        r.updated_at.format("%H:%M:%S%.3f")
    );
    if let Some(next) = r.next_run_at
        && !r.status.is_finished()
    {
        outln!(
            "{}{}",
            label("next run"),
            next.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    if let Some(failure) = &r.failure {
        outln!("{}{}", label("failure"), style(failure).red());
    }
    if let Some(pause) = &r.paused {
        let what = match pause.scope {
            cairn_workflow::PauseScope::Run => "paused",
            cairn_workflow::PauseScope::Kind => "paused with its kind",
        };
        outln!(
            "{}{} by {} since {}: {}",
            label("state"),
            style(what).yellow().bold(),
            pause.paused_by,
            pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.reason
        );
    }
    outln!("{}", label("steps"));
    for step in &run.steps {
        outln!("    {}", step_line(step));
    }
    if let Some(output) = &r.output {
        outln!("{}{}", label("output"), output);
    }
}

async fn show(url: &str, args: WorkflowShowArgs) -> anyhow::Result<ExitCode> {
    let store = app::open(url).await?;
    let mut reader = store.db().reader().await?;
    let run = cairn_workflow::state::load(&mut reader.conn(), args.id)
        .await?
        .with_context(|| format!("there is no workflow run {}", args.id))?;
    if args.json.json {
        ui::print_json(&run)?;
    } else {
        print_run(&run);
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_engine(
    url: &str,
    runtime: &Runtime,
    args: WorkflowRunArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let domain = app::open_domain_driving(url, runtime, args.concurrency).await?;
    let engine = domain.engine().clone();
    engine.check_definitions().await?;
    if args.until_idle {
        let report = engine.run_until_idle().await?;
        eprintln!(
            "{} drove {} ({} written); nothing more is runnable now",
            style("✓").green().bold(),
            ui::plural(report.runs_driven, "run", "runs"),
            ui::plural(report.records, "record", "records"),
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "workflow engine running on {} (mail: {}); Ctrl-C to stop",
        domain.store().db().describe(),
        runtime.mail_display()
    );
    engine
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    eprintln!("workflow engine stopped");
    Ok(ExitCode::SUCCESS)
}
