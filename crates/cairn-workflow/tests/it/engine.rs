//! The workflow engine on both backends: order, retries with backoff, permanent
//! failures, compensation, durable timers, atomic starts, crashes mid-step, and two
//! engines sharing one database.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_dispatch::{EventStore, Registry};
use cairn_log::{EventFilter, Migration};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{CorrelationId, WorkflowId};
use cairn_workflow::{
    Clock, Decision, Engine, EngineConfig, History, RetryPolicy, RunStatus, Start, StepCall,
    StepContext, StepError, StepRecord, StepStatus, SystemClock, Workflow,
};
use serde_json::{Value, json};

use crate::support::{lease_expiry, manual_clock, run_events, run_state};

const MIGRATIONS: &[&[Migration]] = &[cairn_dispatch::MIGRATIONS, cairn_workflow::MIGRATIONS];

async fn store(t: &TestDb) -> anyhow::Result<EventStore> {
    t.migrate_sets(MIGRATIONS).await?;
    let registry = cairn_workflow::routes(Registry::builder().admin_routes()).build()?;
    Ok(EventStore::new(t.db().clone(), registry))
}

/// Waits until `runs` runs have completed, for a minute at most.
async fn wait_completed(store: &EventStore, runs: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut reader = store.db().reader().await?;
        let filter = cairn_workflow::RunFilter {
            status: Some(RunStatus::Completed),
            limit: Some(1_000),
            ..Default::default()
        };
        let done = cairn_workflow::state::list(&mut reader.conn(), &filter)
            .await?
            .len();
        if done == runs {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {done} of {runs} runs completed in time"
        );
        drop(reader);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::from_secs(1),
        factor: 2.0,
        max: Duration::from_secs(60),
        ..RetryPolicy::default()
    }
}

/// A scripted workflow: runs the steps named in its input, in order. A step called
/// "flaky" fails (retryably) until its attempt number reaches `succeed_on`; "doomed"
/// fails permanently; "sleep" sleeps `sleep_seconds`; "slow" takes a while and is
/// external; "gated" is external and waits until the test opens `gate`. Every perform
/// and compensation is logged.
#[derive(Default)]
struct Scripted {
    log: Mutex<Vec<String>>,
    flaky_calls: AtomicU32,
    doubts: Mutex<Vec<(String, u32, bool)>>,
    hang_first_attempt: bool,
    /// The step whose compensation always fails.
    compensation_fails: Option<&'static str>,
    /// Holds every attempt of "gated" until it is true.
    gate: tokio::sync::watch::Sender<bool>,
}

impl Scripted {
    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

#[async_trait]
impl Workflow for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        let steps = input["steps"]
            .as_array()
            .ok_or("input.steps must be an array")?;
        if history.failure().is_some() {
            return Ok(Decision::Fail(format!(
                "step {} failed",
                history.failure().map(|s| s.name.as_str()).unwrap_or("")
            )));
        }
        let mut total = 0;
        for step in steps {
            let name = step.as_str().ok_or("a step name must be a string")?;
            if name == "sleep" {
                let until = history
                    .get("started")
                    .and_then(|s| s.finished_at)
                    .ok_or("the first step must be `started`")?
                    + chrono::Duration::seconds(input["sleep_seconds"].as_i64().unwrap_or(0));
                if history.fired("sleep").is_none() {
                    return Ok(Decision::Sleep {
                        timer: "sleep".into(),
                        until,
                    });
                }
                continue;
            }
            match history.result(name) {
                Some(result) => total += result.as_i64().unwrap_or(0),
                None => {
                    let mut call = StepCall::new(name)
                        .args(json!({"so_far": total}))
                        .compensable();
                    if name == "flaky" {
                        call = call.retry(quick_retry(
                            input["max_attempts"].as_u64().unwrap_or(5) as u32
                        ));
                    }
                    if name == "slow" || name == "gated" {
                        call = call.external();
                    }
                    return Ok(Decision::Run(call));
                }
            }
        }
        Ok(Decision::Complete(json!({ "total": total })))
    }

    async fn perform(
        &self,
        input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        self.log
            .lock()
            .expect("log")
            .push(format!("perform {}", call.name));
        self.doubts.lock().expect("doubts").push((
            call.name.clone(),
            ctx.attempt(),
            ctx.in_doubt(),
        ));
        match call.name.as_str() {
            "flaky" => {
                self.flaky_calls.fetch_add(1, Ordering::SeqCst);
                let succeed_on = input["succeed_on"].as_u64().unwrap_or(1) as u32;
                if ctx.attempt() < succeed_on {
                    return Err(StepError::retryable(format!(
                        "flaky attempt {} failed",
                        ctx.attempt()
                    )));
                }
                Ok(json!(10))
            }
            "doomed" => Err(StepError::permanent(
                "550 5.7.1 sender domain is not verified",
            )),
            "sleepy" => {
                let ms = input["sleep_ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!(1))
            }
            "gated" => {
                let mut open = self.gate.subscribe();
                open.wait_for(|open| *open)
                    .await
                    .map_err(|_| StepError::retryable("the gate is gone"))?;
                Ok(json!(1))
            }
            "slow" => {
                if self.hang_first_attempt && ctx.attempt() == 1 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(json!(100))
            }
            _ => Ok(json!(1)),
        }
    }

    async fn compensate(
        &self,
        _input: &Value,
        step: &StepRecord,
        _ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        self.log
            .lock()
            .expect("log")
            .push(format!("compensate {}", step.name));
        if self.compensation_fails == Some(step.name.as_str()) {
            return Err(StepError::retryable(
                "the compensation target is unreachable",
            ));
        }
        Ok(Value::Null)
    }
}

fn engine(store: &EventStore, workflow: Arc<Scripted>, clock: Arc<dyn Clock>) -> Engine {
    Engine::new(
        store.clone(),
        vec![workflow],
        clock,
        EngineConfig::default(),
    )
}

async fn start(engine: &Engine, input: Value) -> anyhow::Result<(WorkflowId, CorrelationId)> {
    let correlation_id = CorrelationId::new_v7();
    let mut tx = engine.store().db().begin().await?;
    let id = engine
        .start_in(
            &mut tx,
            Start {
                id: WorkflowId::new_v7(),
                kind: "scripted".into(),
                input,
                correlation_id,
                org_id: None,
                actor: None,
                parent: None,
            },
        )
        .await?;
    tx.commit().await?;
    Ok((id, correlation_id))
}

backend_test!(
    steps_run_in_order_and_their_results_are_recorded,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Scripted::default());
        let engine = engine(&store, workflow.clone(), Arc::new(SystemClock));
        let (id, correlation_id) =
            start(&engine, json!({"steps": ["started", "second", "third"]})).await?;
        engine.run_until_idle().await?;

        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Completed);
        assert_eq!(state.run.output, Some(json!({"total": 3})));
        let names: Vec<&str> = state.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["started", "second", "third"]);
        assert!(
            state
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Completed && s.attempts == 1)
        );
        assert_eq!(
            workflow.log(),
            ["perform started", "perform second", "perform third"]
        );

        let filter = EventFilter {
            correlation_id: Some(correlation_id),
            ..EventFilter::default()
        };
        let events = store
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&filter)
            .await?;
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "workflow.started",
                "workflow.step_completed",
                "workflow.step_completed",
                "workflow.step_completed",
                "workflow.completed"
            ]
        );
        assert!(events.iter().all(|e| e.processing_error.is_none()));

        // Running again does nothing: no completed step is performed twice.
        assert_eq!(engine.run_until_idle().await?.runs_driven, 0);
        assert_eq!(workflow.log().len(), 3);
        Ok(())
    }
);

backend_test!(
    retries_back_off_exponentially_then_succeed,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Scripted::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let (id, _) = start(
            &engine,
            json!({"steps": ["started", "flaky"], "succeed_on": 3}),
        )
        .await?;

        engine.run_until_idle().await?;
        let step = run_state(&engine, id).await?.steps[1].clone();
        assert_eq!((step.status, step.attempts), (StepStatus::Retrying, 1));
        assert_eq!(step.last_error.as_deref(), Some("flaky attempt 1 failed"));
        let first_wait = step
            .wake_at
            .zip(step.finished_at)
            .map(|(wake, done)| wake - done);
        assert_eq!(first_wait, Some(chrono::Duration::seconds(1)));

        engine.run_until_idle().await?;
        assert_eq!(
            workflow.flaky_calls.load(Ordering::SeqCst),
            1,
            "not due yet: nothing runs"
        );

        clock.advance(chrono::Duration::seconds(1));
        engine.run_until_idle().await?;
        let step = run_state(&engine, id).await?.steps[1].clone();
        assert_eq!((step.status, step.attempts), (StepStatus::Retrying, 2));
        let second_wait = step
            .wake_at
            .zip(step.finished_at)
            .map(|(wake, done)| wake - done);
        assert_eq!(
            second_wait,
            Some(chrono::Duration::seconds(2)),
            "the wait doubles"
        );

        clock.advance(chrono::Duration::seconds(2));
        engine.run_until_idle().await?;
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Completed);
        assert_eq!(
            (state.steps[1].status, state.steps[1].attempts),
            (StepStatus::Completed, 3)
        );
        assert_eq!(workflow.flaky_calls.load(Ordering::SeqCst), 3);
        Ok(())
    }
);

backend_test!(
    a_permanent_failure_compensates_completed_steps_newest_first,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Scripted::default());
        let engine = engine(&store, workflow.clone(), Arc::new(SystemClock));
        let (id, _) = start(
            &engine,
            json!({"steps": ["started", "alpha", "beta", "doomed", "never"]}),
        )
        .await?;
        engine.run_until_idle().await?;

        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Failed);
        assert_eq!(state.run.failure.as_deref(), Some("step doomed failed"));
        let doomed = state
            .steps
            .iter()
            .find(|s| s.name == "doomed")
            .expect("recorded");
        assert_eq!(
            (doomed.status, doomed.attempts),
            (StepStatus::Failed, 1),
            "a permanent error is not retried"
        );
        assert_eq!(
            workflow.log(),
            [
                "perform started",
                "perform alpha",
                "perform beta",
                "perform doomed",
                "compensate beta",
                "compensate alpha",
                "compensate started",
            ]
        );
        assert!(
            state
                .steps
                .iter()
                .any(|s| s.name == "compensate:alpha" && s.status == StepStatus::Completed)
        );
        Ok(())
    }
);

backend_test!(
    running_out_of_attempts_fails_the_step,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Scripted::default());
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let (id, _) = start(
            &engine,
            json!({"steps": ["started", "flaky"], "succeed_on": 99, "max_attempts": 3}),
        )
        .await?;
        for _ in 0..5 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(10));
        }
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Failed);
        let flaky = &state.steps[1];
        assert_eq!((flaky.status, flaky.attempts), (StepStatus::Failed, 3));
        assert_eq!(workflow.flaky_calls.load(Ordering::SeqCst), 3);
        Ok(())
    }
);

backend_test!(
    a_compensation_that_keeps_failing_stops_for_an_operator_after_the_others_ran,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Scripted {
            compensation_fails: Some("second"),
            ..Scripted::default()
        });
        let clock = manual_clock();
        let engine = engine(&store, workflow.clone(), clock.clone());
        let (id, _) = start(
            &engine,
            json!({"steps": ["started", "second", "third", "doomed"]}),
        )
        .await?;
        for _ in 0..12 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::minutes(10));
        }
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::CompensationFailed);
        let log = workflow.log();
        let attempts = log.iter().filter(|l| *l == "compensate second").count();
        assert_eq!(
            attempts, 10,
            "compensations are retried by the compensation policy"
        );
        // Newest first, and the one that failed for good did not stop the older one.
        let order: Vec<&str> = log
            .iter()
            .filter(|l| l.starts_with("compensate"))
            .map(String::as_str)
            .collect::<Vec<_>>()
            .into_iter()
            .fold(Vec::new(), |mut seen, l| {
                if seen.last() != Some(&l) {
                    seen.push(l);
                }
                seen
            });
        assert_eq!(
            order,
            [
                "compensate third",
                "compensate second",
                "compensate started"
            ]
        );
        let failure = state.run.failure.as_deref().unwrap_or_default();
        assert!(
            failure.contains("undoing second") && failure.contains("unreachable"),
            "{failure}"
        );
        Ok(())
    }
);

backend_test!(timers_are_durable_across_engines, |t: TestDb| async move {
    let store = store(&t).await?;
    let clock = manual_clock();
    let first = engine(&store, Arc::new(Scripted::default()), clock.clone());
    let (id, _) = start(
        &first,
        json!({"steps": ["started", "sleep", "after"], "sleep_seconds": 7 * 24 * 3600}),
    )
    .await?;
    first.run_until_idle().await?;
    let state = run_state(&first, id).await?;
    assert_eq!(state.run.status, RunStatus::Running);
    let timer = state
        .steps
        .iter()
        .find(|s| s.name == "sleep")
        .expect("a timer");
    assert_eq!(timer.status, StepStatus::Waiting);
    drop(first);

    // A new engine (a restarted process) picks the timer up from the database.
    let workflow = Arc::new(Scripted::default());
    let second = engine(&store, workflow.clone(), clock.clone());
    clock.advance(chrono::Duration::days(6));
    second.run_until_idle().await?;
    assert!(workflow.log().is_empty(), "six days in, nothing is due");
    clock.advance(chrono::Duration::days(1));
    second.run_until_idle().await?;
    let state = run_state(&second, id).await?;
    assert_eq!(state.run.status, RunStatus::Completed);
    assert_eq!(workflow.log(), ["perform after"]);
    Ok(())
});

backend_test!(
    starting_a_run_is_atomic_with_the_command,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let engine = engine(&store, Arc::new(Scripted::default()), Arc::new(SystemClock));
        let mut tx = store.db().begin().await?;
        let id = engine
            .start_in(
                &mut tx,
                Start {
                    id: WorkflowId::new_v7(),
                    kind: "scripted".into(),
                    input: json!({"steps": ["started"]}),
                    correlation_id: CorrelationId::new_v7(),
                    org_id: None,
                    actor: None,
                    parent: None,
                },
            )
            .await?;
        tx.rollback().await?;
        let mut reader = store.db().reader().await?;
        assert!(
            cairn_workflow::state::load(&mut reader.conn(), id)
                .await?
                .is_none(),
            "a rolled-back command starts nothing"
        );
        drop(reader);
        assert_eq!(engine.run_until_idle().await?.runs_driven, 0);
        Ok(())
    }
);

backend_test!(
    an_external_step_interrupted_mid_attempt_is_retried_in_doubt,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let config = EngineConfig {
            lease: Duration::from_secs(5),
            ..EngineConfig::default()
        };
        let hanging = Arc::new(Scripted {
            hang_first_attempt: true,
            ..Scripted::default()
        });
        let first = Engine::new(
            store.clone(),
            vec![hanging.clone()],
            clock.clone(),
            config.clone(),
        );
        let (id, _) = start(&first, json!({"steps": ["started", "slow"]})).await?;
        let crashed = tokio::spawn({
            let first = first.clone();
            async move { first.run_until_idle().await }
        });
        // Wait until the external step's start is recorded, then "kill" the engine.
        cairn_testkit::eventually(
            "the external step's start is recorded",
            Duration::from_secs(20),
            || async {
                let state = run_state(&first, id).await?;
                Ok(state.steps.iter().any(|s| s.name == "slow"))
            },
        )
        .await?;
        crashed.abort();
        let state = run_state(&first, id).await?;
        let slow = state
            .steps
            .iter()
            .find(|s| s.name == "slow")
            .expect("recorded");
        assert_eq!((slow.status, slow.attempts), (StepStatus::Running, 1));

        let resumed = Arc::new(Scripted::default());
        let second = Engine::new(store.clone(), vec![resumed.clone()], clock.clone(), config);
        assert_eq!(
            second.run_until_idle().await?.runs_driven,
            0,
            "the first engine's lease still holds"
        );
        clock.advance(chrono::Duration::seconds(6));
        second.run_until_idle().await?;
        assert_eq!(
            run_state(&second, id).await?.run.status,
            RunStatus::Completed
        );
        let doubts = resumed.doubts.lock().expect("doubts").clone();
        assert_eq!(
            doubts,
            [("slow".to_owned(), 2, true)],
            "attempt 2 knows attempt 1 may have acted"
        );
        Ok(())
    }
);

/// An engine configuration naming its worker, with a lease of 30 s.
fn worker(name: &str) -> EngineConfig {
    EngineConfig {
        worker_id: name.to_owned(),
        lease: Duration::from_secs(30),
        ..EngineConfig::default()
    }
}

/// The workers named on the run's events, in order.
async fn recorded_by(engine: &Engine, id: WorkflowId) -> anyhow::Result<Vec<(String, String)>> {
    let events = run_events(engine, id).await?;
    Ok(events
        .into_iter()
        .map(|event| {
            let worker = event.metadata.extra.get("worker").and_then(Value::as_str);
            (
                event.event_type.as_str().to_owned(),
                worker.unwrap_or("").to_owned(),
            )
        })
        .collect())
}

backend_test!(
    a_one_shot_engine_keeps_its_lease_through_a_slow_step,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let slow = Arc::new(Scripted::default());
        let first = Engine::new(
            store.clone(),
            vec![slow.clone()],
            clock.clone(),
            worker("one-shot"),
        );
        let (id, _) = start(&first, json!({"steps": ["gated"]})).await?;
        let one_shot = tokio::spawn({
            let first = first.clone();
            async move { first.run_until_idle().await }
        });
        cairn_testkit::eventually("the step starts", Duration::from_secs(20), || async {
            anyhow::ensure!(!one_shot.is_finished(), "the one-shot engine stopped early");
            Ok(!slow.log().is_empty())
        })
        .await?;
        // The step outlasts its lease on the engines' clock; each time a third of it
        // passes the heartbeat renews it, and another engine finds nothing to take.
        let eager = Arc::new(Scripted::default());
        let second = Engine::new(
            store.clone(),
            vec![eager.clone()],
            clock.clone(),
            worker("eager"),
        );
        for _ in 0..4 {
            clock.advance(chrono::Duration::seconds(11));
            let renewed_until = clock.now() + chrono::Duration::seconds(30);
            cairn_testkit::eventually(
                "the heartbeat renews the lease",
                Duration::from_secs(20),
                || async { Ok(lease_expiry(&first, id).await? == Some(renewed_until)) },
            )
            .await?;
            assert_eq!(
                second.run_until_idle().await?.runs_driven,
                0,
                "the run's lease still holds"
            );
        }
        slow.gate.send_replace(true);
        one_shot.await??;
        assert_eq!(
            run_state(&first, id).await?.run.status,
            RunStatus::Completed
        );
        assert_eq!(slow.log(), ["perform gated"]);
        assert!(eager.log().is_empty(), "{:?}", eager.log());
        let recorded = recorded_by(&first, id).await?;
        let engines: Vec<&str> = recorded
            .iter()
            .filter(|(kind, _)| kind != "workflow.started")
            .map(|(_, worker)| worker.as_str())
            .collect();
        assert!(
            !engines.is_empty() && engines.iter().all(|worker| *worker == "one-shot"),
            "every step record is the one-shot engine's: {recorded:?}"
        );
        Ok(())
    }
);

backend_test!(
    an_engine_whose_lease_was_taken_mid_step_hears_so_and_the_run_goes_on,
    |t: TestDb| async move {
        let store = store(&t).await?;
        // Each engine its own clock: the first one's stands still, so its heartbeat
        // never renews; the second one's has gone past the lease.
        let (stalled, later) = (manual_clock(), manual_clock());
        later.advance(chrono::Duration::seconds(31));
        let workflow = Arc::new(Scripted::default());
        let first = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            stalled,
            worker("first"),
        );
        let (id, _) = start(&first, json!({"steps": ["gated"]})).await?;
        let losing = tokio::spawn({
            let first = first.clone();
            async move { first.run_until_idle().await }
        });
        let performed = |n: usize| {
            let workflow = workflow.clone();
            move || {
                let workflow = workflow.clone();
                async move { Ok(workflow.log().len() == n) }
            }
        };
        cairn_testkit::eventually(
            "the first attempt starts",
            Duration::from_secs(20),
            performed(1),
        )
        .await?;
        let second = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            later,
            worker("second"),
        );
        let taking = tokio::spawn({
            let second = second.clone();
            async move { second.run_until_idle().await }
        });
        // The second engine took the run and recorded its own attempt's start before
        // either attempt ends.
        cairn_testkit::eventually(
            "the second attempt starts",
            Duration::from_secs(20),
            performed(2),
        )
        .await?;
        workflow.gate.send_replace(true);
        // The first engine's outcome is refused for the lease it lost, which is no
        // error of its run: it lets go of the run.
        losing.await??;
        taking.await??;
        let done = run_state(&second, id).await?;
        assert_eq!(done.run.status, RunStatus::Completed);
        assert_eq!(
            workflow.doubts.lock().expect("doubts").clone(),
            [
                ("gated".to_owned(), 1, false),
                ("gated".to_owned(), 2, true)
            ],
            "the second attempt knew the first may have acted"
        );
        let recorded = recorded_by(&second, id).await?;
        let completed: Vec<&str> = recorded
            .iter()
            .filter(|(kind, _)| kind == "workflow.step_completed")
            .map(|(_, worker)| worker.as_str())
            .collect();
        assert_eq!(
            completed,
            ["second"],
            "one outcome, the lease holder's: {recorded:?}"
        );
        Ok(())
    }
);

backend_test!(
    two_engines_share_the_work_and_no_step_runs_twice,
    |t: TestDb| async move {
        const RUNS: usize = 24;
        let store_a = store(&t).await?;
        let registry = cairn_workflow::routes(Registry::builder().admin_routes()).build()?;
        let store_b = EventStore::new(t.connect_again().await?, registry);
        let executions: Arc<Mutex<Vec<(WorkflowId, String, String)>>> = Arc::default();

        struct Recording {
            engine: &'static str,
            executions: Arc<Mutex<Vec<(WorkflowId, String, String)>>>,
        }
        #[async_trait]
        impl Workflow for Recording {
            fn kind(&self) -> &'static str {
                "recording"
            }
            fn decide(&self, _input: &Value, history: &History) -> Result<Decision, String> {
                for name in ["one", "two", "three"] {
                    if !history.completed(name) {
                        let call = StepCall::new(name);
                        return Ok(Decision::Run(if name == "two" {
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
                call: &StepCall,
                ctx: &mut StepContext<'_>,
            ) -> Result<Value, StepError> {
                self.executions.lock().expect("executions").push((
                    ctx.run().id,
                    call.name.clone(),
                    self.engine.to_owned(),
                ));
                tokio::time::sleep(Duration::from_millis(3)).await;
                Ok(Value::Null)
            }
        }

        let config = |name: &str| EngineConfig {
            worker_id: name.to_owned(),
            poll_interval: Duration::from_millis(20),
            concurrency: 2,
            ..EngineConfig::default()
        };
        let engine_a = Engine::new(
            store_a.clone(),
            vec![Arc::new(Recording {
                engine: "a",
                executions: executions.clone(),
            })],
            Arc::new(SystemClock),
            config("a"),
        );
        let engine_b = Engine::new(
            store_b,
            vec![Arc::new(Recording {
                engine: "b",
                executions: executions.clone(),
            })],
            Arc::new(SystemClock),
            config("b"),
        );
        let mut ids = Vec::new();
        for _ in 0..RUNS {
            let mut tx = store_a.db().begin().await?;
            let start = Start {
                id: WorkflowId::new_v7(),
                kind: "recording".into(),
                input: Value::Null,
                correlation_id: CorrelationId::new_v7(),
                org_id: None,
                actor: None,
                parent: None,
            };
            ids.push(engine_a.start_in(&mut tx, start).await?);
            tx.commit().await?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        let a = tokio::spawn({
            let engine = engine_a.clone();
            let stop = stopped(stop_rx.clone());
            async move { engine.run(stop).await }
        });
        let b = tokio::spawn({
            let engine = engine_b.clone();
            let stop = stopped(stop_rx.clone());
            async move { engine.run(stop).await }
        });
        wait_completed(&store_a, RUNS).await?;
        let _ = stop_tx.send(true);
        a.await?;
        b.await?;

        let executions = executions.lock().expect("executions").clone();
        // No step is performed by both engines: a claim excludes the other engine. (A
        // step that works only in the database is performed inside its unit of work,
        // which the log writer may run again when a batch must run again, its work
        // undone: the same engine may then perform it once more. Steps that act
        // outside the database record their start first and are never repeated so.)
        let mut performers: std::collections::BTreeMap<_, std::collections::BTreeSet<&str>> =
            std::collections::BTreeMap::new();
        for (run, step, engine) in &executions {
            performers
                .entry((*run, step.clone()))
                .or_default()
                .insert(engine);
        }
        assert_eq!(performers.len(), RUNS * 3, "every step was performed");
        for ((run, step), engines) in &performers {
            assert_eq!(
                engines.len(),
                1,
                "step {step} of run {run} was performed by engines {engines:?}"
            );
        }
        // And each step's outcome is recorded once.
        let mut reader = store_a.db().reader().await?;
        let completed = reader
            .conn()
            .fetch_one(
                "SELECT COUNT(*) AS n FROM domain_events WHERE event_type = 'workflow.step_completed'",
                cairn_log::args![],
            )
            .await?
            .get::<i64>("n")?;
        assert_eq!(completed, (RUNS * 3) as i64, "every step recorded once");
        drop(reader);
        let by_a = executions
            .iter()
            .filter(|(_, _, engine)| engine == "a")
            .count();
        let by_b = executions.len() - by_a;
        assert!(
            by_a > 0 && by_b > 0,
            "both engines took work (a: {by_a}, b: {by_b})"
        );
        for id in ids {
            assert_eq!(
                run_state(&engine_a, id).await?.run.status,
                RunStatus::Completed
            );
        }
        Ok(())
    }
);

backend_test!(
    workflow_state_survives_replay_and_verifies,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let engine = engine(&store, Arc::new(Scripted::default()), clock.clone());
        start(
            &engine,
            json!({"steps": ["started", "flaky", "doomed"], "succeed_on": 2}),
        )
        .await?;
        start(
            &engine,
            json!({"steps": ["started", "sleep", "x"], "sleep_seconds": 60}),
        )
        .await?;
        for _ in 0..3 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(5));
        }
        let twice = cairn_dispatch::VerifyOptions {
            dispatch_twice: true,
        };
        let report = store.verify_projections(twice, &mut |_, _| {}).await?;
        assert!(report.is_clean(), "{:#?}", report.drift);
        assert!(
            report.outcome_changes.is_empty(),
            "{:#?}",
            report.outcome_changes
        );
        Ok(())
    }
);

/// An external step acted (its email went out); then the record of its outcome met a
/// conflicting write, twice (the writer's own second try included). The engine writes
/// the outcome again instead of letting the run go, which would have had the next
/// claim perform the step again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_record_that_meets_a_conflict_is_written_again_not_performed_again()
-> cairn_testkit::TestResult {
    cairn_testkit::run(
        cairn_testkit::Backend::Postgres,
        "engine::an_outcome_record_that_meets_a_conflict",
        |t: TestDb| async move {
            let store = store(&t).await?;
            let outcome_writes = t
                .conflict_on(
                    "workflow_steps",
                    "INSERT OR UPDATE",
                    "NEW.name = 'slow' AND NEW.status = 'completed'",
                    2,
                )
                .await?;
            let workflow = Arc::new(Scripted::default());
            let engine = engine(&store, workflow.clone(), Arc::new(SystemClock));
            let (id, _) = start(&engine, json!({"steps": ["started", "slow"]})).await?;

            engine.run_until_idle().await?;
            let state = run_state(&engine, id).await?;
            assert_eq!(state.run.status, RunStatus::Completed);
            assert_eq!(
                workflow.log(),
                vec!["perform started", "perform slow"],
                "the external step acted once"
            );
            let written = t
                .db()
                .reader()
                .await?
                .conn()
                .fetch_one(
                    cairn_log::Sql::built(format!("SELECT last_value FROM {outcome_writes}")),
                    cairn_log::args![],
                )
                .await?;
            // Counted once per write that reached the trigger (an upsert may count
            // twice): the first two were refused.
            assert!(
                written.get::<i64>("last_value")? >= 3,
                "the outcome was refused twice, then written"
            );
            assert_eq!(state.steps[1].attempts, 1, "one attempt of the step");
            Ok(())
        },
    )
    .await
}

// Issue 20, point 5: each run sending when its process was killed left one email in
// doubt, so a kill amid 32 runs could send 32 emails again. The engine holds at most
// `effects_in_doubt` steps between acting and their recorded outcome.
backend_test!(
    no_more_steps_act_at_once_than_may_be_left_in_doubt,
    |t: TestDb| async move {
        const RUNS: usize = 12;
        const IN_DOUBT: usize = 3;
        let store = store(&t).await?;

        #[derive(Default)]
        struct Acting {
            now: std::sync::atomic::AtomicUsize,
            most: std::sync::atomic::AtomicUsize,
        }
        struct Sending(Arc<Acting>);
        #[async_trait]
        impl Workflow for Sending {
            fn kind(&self) -> &'static str {
                "sending"
            }
            fn decide(&self, _input: &Value, history: &History) -> Result<Decision, String> {
                Ok(if history.completed("send") {
                    Decision::Complete(Value::Null)
                } else {
                    Decision::Run(StepCall::new("send").external())
                })
            }
            async fn perform(
                &self,
                _input: &Value,
                _call: &StepCall,
                _ctx: &mut StepContext<'_>,
            ) -> Result<Value, StepError> {
                let now = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.0.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.0.now.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        }

        let acting = Arc::new(Acting::default());
        let engine = Engine::new(
            store.clone(),
            vec![Arc::new(Sending(acting.clone()))],
            Arc::new(SystemClock),
            EngineConfig {
                poll_interval: Duration::from_millis(20),
                concurrency: 16,
                effects_in_doubt: IN_DOUBT,
                ..EngineConfig::default()
            },
        );
        for _ in 0..RUNS {
            let mut tx = store.db().begin().await?;
            let start = Start {
                id: WorkflowId::new_v7(),
                kind: "sending".into(),
                input: Value::Null,
                correlation_id: CorrelationId::new_v7(),
                org_id: None,
                actor: None,
                parent: None,
            };
            engine.start_in(&mut tx, start).await?;
            tx.commit().await?;
        }
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn({
            let engine = engine.clone();
            async move {
                engine
                    .run(async move {
                        let _ = stop_rx.changed().await;
                    })
                    .await
            }
        });
        wait_completed(&store, RUNS).await?;
        let _ = stop_tx.send(true);
        running.await?;
        assert_eq!(
            acting.most.load(Ordering::SeqCst),
            IN_DOUBT,
            "at most {IN_DOUBT} sends at once, and the engine used them all"
        );
        Ok(())
    }
);
