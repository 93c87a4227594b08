//! Workflow code that panics, on both backends: a step's panic (outside the database
//! or inside its transaction) is a failed attempt carrying the panic's message,
//! retried with backoff and compensated like any other error; a compensation that
//! panics is retried by the compensation policy; a `decide` that panics fails the run;
//! a step's heartbeat follows the engine's clock and ends with the step; and a running
//! engine outlives any number of panics and says whether it is alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_dispatch::{EventStore, Registry};
use cairn_log::{Migration, args};
use cairn_testkit::{TestDb, backend_test, eventually};
use cairn_types::{CorrelationId, WorkflowId};
use cairn_workflow::{
    Clock, Decision, Engine, EngineConfig, History, RetryPolicy, RunStatus, Start, StepCall,
    StepContext, StepError, StepRecord, StepStatus, SystemClock, Workflow,
};
use serde_json::{Value, json};

use crate::support::{lease_expiry, manual_clock, run_events, run_state};

/// A table a transactional step writes to, to show what its unit kept.
const MARKS: &[Migration] = &[Migration {
    id: "test/0001_panic_marks",
    sqlite: "CREATE TABLE panic_marks (step TEXT NOT NULL, attempt INTEGER NOT NULL);",
    postgres: "CREATE TABLE panic_marks (step TEXT NOT NULL, attempt BIGINT NOT NULL);",
}];

async fn store(t: &TestDb) -> anyhow::Result<EventStore> {
    t.migrate_sets(&[
        cairn_dispatch::MIGRATIONS,
        cairn_workflow::MIGRATIONS,
        MARKS,
    ])
    .await?;
    let registry = cairn_workflow::routes(Registry::builder().admin_routes()).build()?;
    Ok(EventStore::new(t.db().clone(), registry))
}

/// Runs the steps named in `input.steps`, in order, each compensable and retried up to
/// `input.max_attempts` times from `input.initial_ms` (1 s unless given).
///
/// - `outside` acts outside the database and panics while its attempt is at most
///   `input.panic_until`;
/// - `inside` writes a row in its transaction, then panics the same way;
/// - `doomed` fails for good;
/// - `hold` acts outside the database and never returns from its first attempt;
/// - any other step succeeds.
///
/// With `input.decide_panics`, `decide` panics once `first` has completed; with
/// `input.undo_panics`, every compensation panics.
#[derive(Default)]
struct Panicky {
    log: Mutex<Vec<String>>,
    holding: AtomicBool,
    doubts: Mutex<Vec<(String, u32, bool)>>,
}

impl Panicky {
    fn log(&self) -> Vec<String> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    fn note(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
    }
}

fn number(input: &Value, field: &str, default: u64) -> u64 {
    input[field].as_u64().unwrap_or(default)
}

#[async_trait]
impl Workflow for Panicky {
    fn kind(&self) -> &'static str {
        "panicky"
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        if input["decide_panics"] == json!(true) && history.completed("first") {
            panic!("decide blew up");
        }
        if let Some(failed) = history.failure() {
            return Ok(Decision::Fail(format!("step {} failed", failed.name)));
        }
        let steps = input["steps"].as_array().ok_or("input.steps is a list")?;
        for step in steps {
            let name = step.as_str().ok_or("a step is a name")?;
            if history.completed(name) {
                continue;
            }
            let attempts = u32::try_from(number(input, "max_attempts", 5)).unwrap_or(5);
            let mut call = StepCall::new(name).compensable().retry(RetryPolicy {
                max_attempts: attempts,
                initial: Duration::from_millis(number(input, "initial_ms", 1_000)),
                factor: 2.0,
                max: Duration::from_secs(60),
                ..RetryPolicy::default()
            });
            if name == "outside" || name == "hold" {
                call = call.external();
            }
            return Ok(Decision::Run(call));
        }
        Ok(Decision::Complete(json!("done")))
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        let attempt = ctx.attempt();
        self.note(format!("perform {} #{attempt}", call.name));
        if let Ok(mut doubts) = self.doubts.lock() {
            doubts.push((call.name.clone(), attempt, ctx.in_doubt()));
        }
        let panics = u64::from(attempt) <= number(input, "panic_until", 0);
        match call.name.as_str() {
            "outside" => {
                tokio::task::yield_now().await;
                if panics {
                    panic!("boom in outside, attempt {attempt}");
                }
                Ok(json!(attempt))
            }
            "inside" => {
                ctx.tx()?
                    .conn()
                    .execute(
                        "INSERT INTO panic_marks (step, attempt) VALUES ($1, $2)",
                        args!["inside", i64::from(attempt)],
                    )
                    .await?;
                if panics {
                    panic!("boom in inside, attempt {attempt}");
                }
                Ok(json!(attempt))
            }
            "doomed" => Err(StepError::permanent("doomed, as planned")),
            "hold" if attempt == 1 => {
                self.holding.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(Value::Null)
            }
            _ => Ok(json!(1)),
        }
    }

    async fn compensate(
        &self,
        input: &Value,
        step: &StepRecord,
        _ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        self.note(format!("undo {}", step.name));
        if input["undo_panics"] == json!(true) {
            panic!("undo blew up for {}", step.name);
        }
        Ok(Value::Null)
    }

    fn compensation_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 2,
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(60),
            ..RetryPolicy::default()
        }
    }
}

fn engine(store: &EventStore, workflow: Arc<Panicky>, clock: Arc<dyn Clock>) -> Engine {
    Engine::new(
        store.clone(),
        vec![workflow],
        clock,
        EngineConfig::default(),
    )
}

async fn start(engine: &Engine, input: Value) -> anyhow::Result<WorkflowId> {
    let mut tx = engine.store().db().begin().await?;
    let id = engine
        .start_in(
            &mut tx,
            Start {
                id: WorkflowId::new_v7(),
                kind: "panicky".into(),
                input,
                correlation_id: CorrelationId::new_v7(),
                org_id: None,
                actor: None,
                parent: None,
            },
        )
        .await?;
    tx.commit().await?;
    engine.wake();
    Ok(id)
}

async fn step(engine: &Engine, id: WorkflowId, name: &str) -> anyhow::Result<StepRecord> {
    run_state(engine, id)
        .await?
        .steps
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow::anyhow!("no step {name} in run {id}"))
}

async fn event_types(engine: &Engine, id: WorkflowId) -> anyhow::Result<Vec<String>> {
    Ok(run_events(engine, id)
        .await?
        .into_iter()
        .map(|e| e.event_type.as_str().to_owned())
        .collect())
}

backend_test!(
    a_step_that_panics_outside_the_database_is_a_failed_attempt_retried_with_backoff,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Panicky::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let id = start(
            &engine,
            json!({"steps": ["first", "outside"], "panic_until": 2}),
        )
        .await?;

        engine.run_until_idle().await?;
        let outside = step(&engine, id, "outside").await?;
        assert_eq!(
            (outside.status, outside.attempts),
            (StepStatus::Retrying, 1)
        );
        let error = outside.last_error.clone().unwrap_or_default();
        assert!(
            error.contains("the step panicked") && error.contains("boom in outside, attempt 1"),
            "{error}"
        );
        assert_eq!(
            outside.wake_at.zip(outside.finished_at).map(|(w, f)| w - f),
            Some(chrono::Duration::seconds(1)),
            "a panic backs off like any retryable error"
        );
        assert_eq!(
            lease_expiry(&engine, id).await?,
            None,
            "the run is not held by the attempt that panicked"
        );

        clock.advance(chrono::Duration::seconds(1));
        engine.run_until_idle().await?;
        let outside = step(&engine, id, "outside").await?;
        assert_eq!(
            (outside.status, outside.attempts),
            (StepStatus::Retrying, 2)
        );
        assert_eq!(
            outside.wake_at.zip(outside.finished_at).map(|(w, f)| w - f),
            Some(chrono::Duration::seconds(2))
        );

        clock.advance(chrono::Duration::seconds(2));
        engine.run_until_idle().await?;
        let done = run_state(&engine, id).await?;
        assert_eq!(done.run.status, RunStatus::Completed);
        let outside = step(&engine, id, "outside").await?;
        assert_eq!(
            (outside.status, outside.attempts),
            (StepStatus::Completed, 3)
        );
        assert_eq!(outside.result, Some(json!(3)));
        let types = event_types(&engine, id).await?;
        assert_eq!(
            types
                .iter()
                .filter(|t| *t == "workflow.step_attempt_failed")
                .count(),
            2,
            "{types:?}"
        );
        Ok(())
    }
);

backend_test!(
    a_step_that_always_panics_fails_and_the_completed_steps_are_compensated,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Panicky::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let id = start(
            &engine,
            json!({"steps": ["first", "outside", "never"], "panic_until": 99, "max_attempts": 3}),
        )
        .await?;
        for _ in 0..6 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(10));
        }
        let done = run_state(&engine, id).await?;
        assert_eq!(done.run.status, RunStatus::Failed);
        assert_eq!(done.run.failure.as_deref(), Some("step outside failed"));
        let outside = step(&engine, id, "outside").await?;
        assert_eq!((outside.status, outside.attempts), (StepStatus::Failed, 3));
        let error = outside.last_error.unwrap_or_default();
        assert!(error.contains("boom in outside, attempt 3"), "{error}");
        assert_eq!(
            workflow.log(),
            [
                "perform first #1",
                "perform outside #1",
                "perform outside #2",
                "perform outside #3",
                "undo first",
            ]
        );
        Ok(())
    }
);

backend_test!(
    a_transactional_step_that_panics_keeps_none_of_its_writes_and_is_retried,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Panicky::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let id = start(&engine, json!({"steps": ["inside"], "panic_until": 1})).await?;

        engine.run_until_idle().await?;
        let inside = step(&engine, id, "inside").await?;
        assert_eq!((inside.status, inside.attempts), (StepStatus::Retrying, 1));
        let error = inside.last_error.unwrap_or_default();
        assert!(
            error.contains("the step panicked") && error.contains("boom in inside, attempt 1"),
            "{error}"
        );
        assert_eq!(lease_expiry(&engine, id).await?, None);

        clock.advance(chrono::Duration::seconds(1));
        engine.run_until_idle().await?;
        assert_eq!(
            run_state(&engine, id).await?.run.status,
            RunStatus::Completed
        );
        let mut reader = store.db().reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT step, attempt FROM panic_marks ORDER BY attempt",
                args![],
            )
            .await?;
        let kept = rows
            .iter()
            .map(|row| Ok((row.get::<String>("step")?, row.get::<i64>("attempt")?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        assert_eq!(
            kept,
            [("inside".to_owned(), 2)],
            "the attempt that panicked wrote nothing"
        );
        Ok(())
    }
);

backend_test!(
    a_compensation_that_panics_is_retried_then_stops_for_an_operator,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Panicky::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let id = start(
            &engine,
            json!({"steps": ["first", "doomed"], "undo_panics": true}),
        )
        .await?;
        for _ in 0..5 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(10));
        }
        let done = run_state(&engine, id).await?;
        assert_eq!(done.run.status, RunStatus::CompensationFailed);
        let failure = done.run.failure.unwrap_or_default();
        assert!(
            failure.contains("undoing first") && failure.contains("undo blew up for first"),
            "{failure}"
        );
        assert_eq!(
            workflow.log(),
            [
                "perform first #1",
                "perform doomed #1",
                "undo first",
                "undo first"
            ],
            "the compensation policy's two attempts"
        );
        Ok(())
    }
);

backend_test!(
    a_decide_that_panics_fails_the_run_and_compensates,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Panicky::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let id = start(
            &engine,
            json!({"steps": ["first", "second"], "decide_panics": true}),
        )
        .await?;
        for _ in 0..3 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(10));
        }
        let done = run_state(&engine, id).await?;
        assert_eq!(done.run.status, RunStatus::Failed);
        let failure = done.run.failure.unwrap_or_default();
        assert!(
            failure.contains("panicked") && failure.contains("decide blew up"),
            "{failure}"
        );
        assert_eq!(workflow.log(), ["perform first #1", "undo first"]);
        assert_eq!(lease_expiry(&engine, id).await?, None);
        Ok(())
    }
);

backend_test!(
    a_steps_heartbeat_follows_the_engine_clock_and_ends_with_the_step,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let config = |worker: &str| EngineConfig {
            worker_id: worker.to_owned(),
            lease: Duration::from_secs(30),
            ..EngineConfig::default()
        };
        let holding = Arc::new(Panicky::default());
        let first = Engine::new(
            store.clone(),
            vec![holding.clone()],
            clock.clone(),
            config("first"),
        );
        let id = start(&first, json!({"steps": ["hold"]})).await?;
        let worker = tokio::spawn({
            let first = first.clone();
            async move { first.run_until_idle().await }
        });
        eventually("the step starts", Duration::from_secs(20), || async {
            anyhow::ensure!(!worker.is_finished(), "the engine stopped early");
            Ok(holding.holding.load(Ordering::SeqCst))
        })
        .await?;
        let claimed = lease_expiry(&first, id).await?;

        // A third of the lease passes on the engine's clock: the heartbeat renews it at
        // once, without waiting for the same time to pass on the wall.
        clock.advance(chrono::Duration::seconds(11));
        let renewed_until = clock.now() + chrono::Duration::seconds(30);
        eventually(
            "the heartbeat renews the lease",
            Duration::from_secs(5),
            || async { Ok(lease_expiry(&first, id).await? == Some(renewed_until)) },
        )
        .await?;
        assert!(claimed < Some(renewed_until));

        // The step's task ends without finishing the attempt: its heartbeat ends too.
        worker.abort();
        let _ = worker.await;
        for _ in 0..3 {
            clock.advance(chrono::Duration::seconds(11));
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                lease_expiry(&first, id).await?,
                Some(renewed_until),
                "nothing renews the lease of a step that is gone"
            );
        }

        let resumed = Arc::new(Panicky::default());
        let second = Engine::new(
            store.clone(),
            vec![resumed.clone()],
            clock.clone(),
            config("second"),
        );
        assert_eq!(second.run_until_idle().await?.runs_driven, 1);
        assert_eq!(
            run_state(&second, id).await?.run.status,
            RunStatus::Completed
        );
        let doubts = resumed.doubts.lock().map(|d| d.clone()).unwrap_or_default();
        assert_eq!(doubts, [("hold".to_owned(), 2, true)]);
        Ok(())
    }
);

backend_test!(
    a_running_engine_outlives_panicking_steps,
    |t: TestDb| async move {
        const PANICKING: usize = 6;
        let store = store(&t).await?;
        let workflow = Arc::new(Panicky::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            Arc::new(SystemClock),
            EngineConfig {
                poll_interval: Duration::from_millis(20),
                concurrency: 2,
                ..EngineConfig::default()
            },
        );
        let before = engine.health();
        assert!(
            !before.started && before.workers == 0 && before.ready(),
            "{before:?}"
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
        let mut doomed = Vec::new();
        for _ in 0..PANICKING {
            doomed.push(
                start(
                    &engine,
                    json!({"steps": ["outside"], "panic_until": 99, "max_attempts": 2, "initial_ms": 10}),
                )
                .await?,
            );
        }
        eventually(
            "every panicking run fails",
            Duration::from_secs(60),
            || async {
                for id in &doomed {
                    if run_state(&engine, *id).await?.run.status != RunStatus::Failed {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .await?;
        let panics = workflow
            .log()
            .iter()
            .filter(|l| l.starts_with("perform outside"))
            .count();
        assert_eq!(panics, PANICKING * 2);

        // Every one of those panics is behind it, and the engine still takes new work.
        let fine = start(&engine, json!({"steps": ["first", "second"]})).await?;
        eventually("a new run completes", Duration::from_secs(30), || async {
            Ok(run_state(&engine, fine).await?.run.status == RunStatus::Completed)
        })
        .await?;
        anyhow::ensure!(!worker.is_finished(), "the engine's loop ended");
        let health = engine.health();
        assert!(
            health.workers == 1 && health.alive() && health.ready(),
            "{health:?}"
        );
        assert_eq!(health.panics, u64::try_from(PANICKING * 2)?);

        let _ = stop_tx.send(true);
        worker.await?;
        let after = engine.health();
        assert!(
            after.started && after.workers == 0 && !after.alive() && !after.ready(),
            "a stopped engine is not ready: {after:?}"
        );
        Ok(())
    }
);

backend_test!(
    readiness_says_when_the_engine_loop_is_gone,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let engine = engine(&store, Arc::new(Panicky::default()), Arc::new(SystemClock));
        assert!(
            engine.health().ready(),
            "no loop started here: nothing to watch"
        );
        let worker = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run(std::future::pending()).await }
        });
        eventually("the loop runs", Duration::from_secs(10), || async {
            Ok(engine.alive())
        })
        .await?;
        assert_eq!(engine.health().workers, 1);

        // The loop's task ends the hard way (as a panic in it would end it).
        worker.abort();
        let _ = worker.await;
        let health = engine.health();
        assert!(
            health.workers == 0 && !health.alive() && !health.ready(),
            "{health:?}"
        );
        Ok(())
    }
);
