//! `cairn bench workflow`: bootstrap workflows per second (with an instant mailer), the
//! engine's own cost per step, and how soon a paused kind's run takes its first step
//! once the kind is resumed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use console::style;
use serde::Serialize;
use serde_json::{Value, json};

use cairn_dispatch::EventStore;
use cairn_domain::{BootstrapRequest, CommandContext, Domain, DomainConfig};
use cairn_log::args;
use cairn_mail::{Delivery, MailError, Mailer, OutboundMessage};
use cairn_policy::Principal;
use cairn_types::{CorrelationId, WorkflowId};
use cairn_workflow::{
    Decision, Engine, EngineConfig, History, RunFilter, RunStatus, Start, StepCall, StepContext,
    StepError, SystemClock, Workflow,
};

use crate::app;
use crate::cli::BenchAppendArgs;
use crate::ui;

/// Accepts every message at once: the benchmark measures cairn, not a mail server.
struct InstantMailer;

#[async_trait]
impl Mailer for InstantMailer {
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, MailError> {
        Ok(Delivery {
            message_id: message.message_id.clone(),
            transport: "instant",
            detail: "accepted".to_owned(),
        })
    }

    fn describe(&self) -> String {
        "instant (benchmark)".to_owned()
    }
}

/// A workflow of steps that do nothing: what is left is the engine's own work.
struct Noop {
    kind: &'static str,
    steps: usize,
    external: bool,
}

#[async_trait]
impl Workflow for Noop {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn decide(&self, _input: &Value, history: &History) -> Result<Decision, String> {
        for index in 0..self.steps {
            let name = format!("step:{index}");
            if !history.completed(&name) {
                let call = StepCall::new(name);
                return Ok(Decision::Run(if self.external {
                    call.external()
                } else {
                    call
                }));
            }
        }
        Ok(Decision::Complete(Value::Null))
    }

    async fn perform(
        &self,
        _input: &Value,
        _call: &StepCall,
        _ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        Ok(Value::Null)
    }
}

#[derive(Debug, Serialize)]
struct Scenario {
    name: String,
    runs: u64,
    steps: u64,
    seconds: f64,
    runs_per_second: f64,
    steps_per_second: f64,
    /// Wall time per step with the engine driving runs one after another.
    ms_per_step: f64,
    /// For the resume scenario: from the resume's record to the run's first step
    /// record, in milliseconds (p50, p99, worst).
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_ms: Option<[f64; 3]>,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    place: String,
    scenarios: Vec<Scenario>,
}

fn request(n: u64) -> anyhow::Result<BootstrapRequest> {
    Ok(serde_json::from_value(json!({
        "organization": {"name": format!("Bench Care {n}"), "slug": format!("bench-care-{n}"),
                         "sender_domain": "mail.bench.example.co.uk"},
        "admin": {"email": "admin@example.com", "name": "Admin"},
        "invitees": [
            {"email": "one@example.com", "name": "One", "roles": ["clinician"]},
            {"email": "two@example.com", "name": "Two", "roles": ["viewer"]}
        ]
    }))?)
}

async fn count(store: &EventStore, kind: &str, status: RunStatus) -> anyhow::Result<u64> {
    let mut reader = store.db().reader().await?;
    let row = reader
        .conn()
        .fetch_one(
            "SELECT COUNT(*) AS n FROM workflow_runs WHERE kind = $1 AND status = $2",
            args![kind, status.as_str()],
        )
        .await?;
    Ok(u64::try_from(row.get::<i64>("n")?).unwrap_or(0))
}

async fn steps_of(store: &EventStore, kind: &str) -> anyhow::Result<u64> {
    let mut reader = store.db().reader().await?;
    let row = reader
        .conn()
        .fetch_one(
            "SELECT COUNT(*) AS n FROM workflow_steps s JOIN workflow_runs r ON r.id = s.run_id WHERE r.kind = $1",
            args![kind],
        )
        .await?;
    Ok(u64::try_from(row.get::<i64>("n")?).unwrap_or(0))
}

async fn bootstraps(
    store: &EventStore,
    duration: Duration,
    progress: &ui::Progress,
) -> anyhow::Result<Scenario> {
    const IN_FLIGHT: u64 = 64;
    let config = EngineConfig::default();
    let workers = config.concurrency;
    let domain = Domain::open(
        store.clone(),
        Arc::new(InstantMailer),
        Arc::new(SystemClock),
        DomainConfig::default(),
        config,
    )
    .await?;
    let engine = domain.engine().clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move {
        engine
            .run(async move {
                let _ = stop_rx.changed().await;
            })
            .await;
    });
    let kind = cairn_domain::bootstrap::KIND;
    let started = Instant::now();
    let deadline = started + duration;
    let mut issued = 0_u64;
    let result = async {
        loop {
            let done = count(store, kind, RunStatus::Completed).await?
                + count(store, kind, RunStatus::Failed).await?;
            progress.update(
                started.elapsed().as_millis() as u64,
                duration.as_millis() as u64,
            );
            if Instant::now() >= deadline {
                if done == issued {
                    anyhow::ensure!(
                        count(store, kind, RunStatus::Failed).await? == 0,
                        "a benchmark bootstrap failed"
                    );
                    return Ok(done);
                }
            } else if issued - done < IN_FLIGHT {
                let ctx = CommandContext::new(Principal::Operator {
                    name: "cairn-bench".to_owned(),
                });
                domain.bootstrap(&ctx, &request(issued)?).await?;
                issued += 1;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    .await;
    let _ = stop_tx.send(true);
    worker.await?;
    let runs = result?;
    let seconds = started.elapsed().as_secs_f64();
    let steps = steps_of(store, kind).await?;
    Ok(Scenario {
        name: format!("bootstrap (3 emails), {workers} workers"),
        runs,
        steps,
        seconds,
        runs_per_second: runs as f64 / seconds,
        steps_per_second: steps as f64 / seconds,
        ms_per_step: seconds * 1e3 * workers as f64 / steps.max(1) as f64,
        resume_ms: None,
    })
}

async fn noop(
    store: &EventStore,
    external: bool,
    duration: Duration,
    progress: &ui::Progress,
) -> anyhow::Result<Scenario> {
    const STEPS: usize = 20;
    let kind = if external {
        "bench_noop_external"
    } else {
        "bench_noop"
    };
    let engine = Engine::new(
        store.clone(),
        vec![Arc::new(Noop {
            kind,
            steps: STEPS,
            external,
        })],
        Arc::new(SystemClock),
        EngineConfig::default(),
    );
    let started = Instant::now();
    let mut runs = 0_u64;
    while started.elapsed() < duration {
        let mut tx = store.db().begin().await?;
        let start = Start {
            id: WorkflowId::new_v7(),
            kind: kind.to_owned(),
            input: Value::Null,
            correlation_id: CorrelationId::new_v7(),
            org_id: None,
            actor: None,
            parent: None,
        };
        engine.start_in(&mut tx, start).await?;
        tx.commit().await?;
        engine.run_until_idle().await?;
        runs += 1;
        progress.update(
            started.elapsed().as_millis() as u64,
            duration.as_millis() as u64,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let steps = runs * STEPS as u64;
    let mut reader = store.db().reader().await?;
    let filter = RunFilter {
        kind: Some(kind.to_owned()),
        status: Some(RunStatus::Completed),
        limit: Some(1_000_000),
        ..RunFilter::default()
    };
    let completed = cairn_workflow::state::list(&mut reader.conn(), &filter)
        .await?
        .len() as u64;
    anyhow::ensure!(
        completed == runs,
        "{completed} of {runs} benchmark runs completed"
    );
    Ok(Scenario {
        name: if external {
            "20 no-op external steps, 1 worker".to_owned()
        } else {
            "20 no-op steps, 1 worker".to_owned()
        },
        runs,
        steps,
        seconds,
        runs_per_second: runs as f64 / seconds,
        steps_per_second: steps as f64 / seconds,
        ms_per_step: seconds * 1e3 / steps.max(1) as f64,
        resume_ms: None,
    })
}

/// When the first event of `event_type` on `stream` was recorded, if it was.
async fn recorded_at(
    store: &EventStore,
    correlation_id: CorrelationId,
    event_type: &str,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let mut reader = store.db().reader().await?;
    let events = reader
        .conn()
        .read_events(&cairn_log::EventFilter {
            correlation_id: Some(correlation_id),
            event_type: Some(cairn_types::EventType::parse(event_type)?),
            limit: Some(1),
            ..cairn_log::EventFilter::default()
        })
        .await?;
    Ok(events.first().map(|event| event.created_at))
}

/// A paused kind, a run started while it is paused, the kind resumed: the time from
/// the resume's record to the run's first step record, with the engine running as a
/// server runs it (woken by the resume's commit).
async fn resume(
    store: &EventStore,
    duration: Duration,
    progress: &ui::Progress,
) -> anyhow::Result<Scenario> {
    let kind = "bench_resume";
    let engine = Engine::new(
        store.clone(),
        vec![Arc::new(Noop {
            kind,
            steps: 1,
            external: false,
        })],
        Arc::new(SystemClock),
        EngineConfig::default(),
    );
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .run(async move {
                    let _ = stop_rx.changed().await;
                })
                .await;
        }
    });
    let reason = cairn_types::Reason::parse("benchmark")?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let result = async {
        while started.elapsed() < duration {
            let operator = cairn_dispatch::Operator {
                actor: cairn_types::Actor::Service("cairn-bench".to_owned()),
                correlation_id: CorrelationId::new_v7(),
            };
            engine.pause_kind(kind, &operator, reason.clone()).await?;
            let correlation_id = CorrelationId::new_v7();
            let mut tx = store.db().begin().await?;
            let start = Start {
                id: WorkflowId::new_v7(),
                kind: kind.to_owned(),
                input: Value::Null,
                correlation_id,
                org_id: None,
                actor: None,
                parent: None,
            };
            engine.start_in(&mut tx, start).await?;
            tx.commit().await?;
            engine.resume_kind(kind, &operator, reason.clone()).await?;
            let resumed = recorded_at(
                store,
                operator.correlation_id,
                "workflow_control.kind_resumed",
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("the resume is not in the log"))?;
            let waited = Instant::now();
            let first_step = loop {
                if let Some(at) =
                    recorded_at(store, correlation_id, "workflow.step_completed").await?
                {
                    break at;
                }
                anyhow::ensure!(
                    waited.elapsed() < Duration::from_secs(30),
                    "a resumed run took no step within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let latency = (first_step - resumed).to_std().unwrap_or_default();
            latencies.push(latency.as_secs_f64() * 1e3);
            progress.update(
                started.elapsed().as_millis() as u64,
                duration.as_millis() as u64,
            );
        }
        anyhow::Ok(())
    }
    .await;
    let _ = stop_tx.send(true);
    worker.await?;
    result?;
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let runs = latencies.len() as u64;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Scenario {
        name: "resume a paused kind: to its run's first step".to_owned(),
        runs,
        steps: runs,
        seconds,
        runs_per_second: runs as f64 / seconds,
        steps_per_second: runs as f64 / seconds,
        ms_per_step: seconds * 1e3 / runs.max(1) as f64,
        resume_ms: Some([at(0.5), at(0.99), at(1.0)]),
    })
}

pub async fn workflow(url: &str, args: BenchAppendArgs) -> anyhow::Result<ExitCode> {
    let duration = super::scenario_duration(&args)?;
    let (place, db, described) = super::Place::open(url, None).await?;
    let backend = db.backend();
    let store = EventStore::new(db.clone(), app::registry());
    super::announce("workflow", &described, duration, args.json.json);
    let result = async {
        let progress = ui::Progress::new("bootstraps");
        let first = bootstraps(&store, duration, &progress).await;
        progress.finish();
        let progress = ui::Progress::new("steps");
        let second = noop(&store, false, duration, &progress).await;
        progress.finish();
        let progress = ui::Progress::new("external");
        let third = noop(&store, true, duration, &progress).await;
        progress.finish();
        let progress = ui::Progress::new("resume");
        let fourth = resume(&store, duration, &progress).await;
        progress.finish();
        anyhow::Ok(vec![first?, second?, third?, fourth?])
    }
    .await;
    db.close().await;
    place.remove().await?;
    let report = Report {
        backend: backend.as_str(),
        place: described,
        scenarios: result?,
    };
    if args.json.json {
        ui::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&["SCENARIO", "RUNS", "STEPS", "RUNS/S", "STEPS/S", "PER STEP"]);
    for s in &report.scenarios {
        table.add_row(vec![
            s.name.to_owned(),
            ui::count(s.runs),
            ui::count(s.steps),
            format!("{:.1}", s.runs_per_second),
            ui::count(s.steps_per_second.round() as u64),
            ui::duration(Duration::from_secs_f64(s.ms_per_step / 1e3)),
        ]);
    }
    outln!("{table}");
    for s in &report.scenarios {
        if let Some([p50, p99, worst]) = s.resume_ms {
            outln!(
                "resume to first step: p50 {p50:.1} ms, p99 {p99:.1} ms, worst {worst:.1} ms ({} resumes)",
                s.runs
            );
        }
    }
    outln!(
        "{}",
        style("per step: wall time one worker spends on a step, recording it included; a bootstrap has 10 steps").dim()
    );
    Ok(ExitCode::SUCCESS)
}
