//! Pausing and resuming runs and kinds, a step's attempts that run out pausing its
//! run, and a step whose events would be held waiting without using up attempts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use cairn_dispatch::{
    EventStore, Handler, HandlerError, HandlerRoute, Operator, ProjectionTable, Projections,
    Registry, VerifyOptions,
};
use cairn_log::{AppendRequest, Migration, NewEvent, RecordedEvent, args};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{Actor, CorrelationId, EventType, Reason, StreamId, StreamType, WorkflowId};
use cairn_workflow::{
    Clock, ControlError, Decision, Engine, EngineConfig, Exhaustion, History, PauseScope,
    RetryPolicy, RunStatus, Start, StepCall, StepContext, StepError, Workflow,
};

use crate::support::{manual_clock, run_state};

const WIDGETS: &[Migration] = &[Migration {
    id: "test/0001_widgets",
    sqlite: "CREATE TABLE widgets (id TEXT PRIMARY KEY) STRICT;",
    postgres: "CREATE TABLE widgets (id UUID PRIMARY KEY);",
}];

struct Made;

#[async_trait]
impl Handler for Made {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        p.execute(
            "INSERT INTO widgets (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            args![event.stream_id],
        )
        .await?;
        Ok(())
    }
}

async fn store(t: &TestDb) -> anyhow::Result<EventStore> {
    t.migrate_sets(&[
        cairn_dispatch::MIGRATIONS,
        cairn_workflow::MIGRATIONS,
        WIDGETS,
    ])
    .await?;
    let registry = cairn_workflow::routes(Registry::builder().admin_routes())
        .router("widget", |r| r.on("widget.made", Made))
        .projection(ProjectionTable {
            name: "widgets",
            key: &["id"],
        })
        .build()?;
    Ok(EventStore::new(t.db().clone(), registry))
}

/// Runs the steps its input names, in order: "gated" acts outside the database and
/// waits for the test's gate; "unreliable" fails, retryably, until the test says it is
/// fixed, and pauses its run when its 3 attempts run out; "broken" fails for good
/// until then; "undoable" is compensable; "widget" appends a widget
/// event in its transaction (held while the widget route is paused); any other
/// succeeds.
#[derive(Default)]
struct Paced {
    log: Mutex<Vec<String>>,
    gate: tokio::sync::watch::Sender<bool>,
    fixed: AtomicBool,
}

impl Paced {
    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

#[async_trait]
impl Workflow for Paced {
    fn kind(&self) -> &'static str {
        "paced"
    }

    async fn compensate(
        &self,
        _input: &Value,
        step: &cairn_workflow::StepRecord,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        self.undo(&step.name, ctx.attempt()).await
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        if let Some(failed) = history.failure() {
            return Ok(Decision::Fail(format!("{} failed", failed.name)));
        }
        for step in input["steps"].as_array().ok_or("steps")? {
            let name = step.as_str().ok_or("a step name")?;
            if name == "nap" {
                let until = history
                    .get("first")
                    .and_then(|s| s.finished_at)
                    .ok_or("the first step must be `first`")?
                    + chrono::Duration::seconds(60);
                if history.fired("nap").is_none() {
                    return Ok(Decision::Sleep {
                        timer: "nap".into(),
                        until,
                    });
                }
                continue;
            }
            if history.completed(name) {
                continue;
            }
            let mut call = StepCall::new(name);
            if name == "gated" {
                call = call.external();
            }
            if name == "undoable" {
                call = call.compensable();
            }
            if name == "unreliable" {
                call = call.retry(RetryPolicy {
                    max_attempts: 3,
                    initial: Duration::from_secs(1),
                    factor: 1.0,
                    max: Duration::from_secs(1),
                    on_exhaustion: Exhaustion::Pause,
                });
            }
            return Ok(Decision::Run(call));
        }
        Ok(Decision::Complete(json!("done")))
    }

    async fn perform(
        &self,
        _input: &Value,
        call: &StepCall,
        ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        self.log
            .lock()
            .expect("log")
            .push(format!("{} #{}", call.name, ctx.attempt()));
        match call.name.as_str() {
            "gated" => {
                let mut open = self.gate.subscribe();
                open.wait_for(|open| *open)
                    .await
                    .map_err(|_| StepError::retryable("the gate is gone"))?;
                Ok(json!(1))
            }
            "unreliable" if !self.fixed.load(Ordering::SeqCst) => {
                Err(StepError::retryable("451 4.3.0 try again later"))
            }
            "broken" if !self.fixed.load(Ordering::SeqCst) => {
                Err(StepError::permanent("550 5.1.1 no such mailbox"))
            }
            "widget" => {
                let event = NewEvent::new(
                    EventType::parse("widget.made").expect("valid"),
                    json!({}),
                    ctx.metadata(),
                );
                ctx.append_applied(AppendRequest::new(
                    StreamType::parse("widget").expect("valid"),
                    StreamId::new_v7(),
                    vec![event],
                ))
                .await?;
                Ok(json!(1))
            }
            _ => Ok(json!(1)),
        }
    }
}

impl Paced {
    /// Its compensations, logged as its steps are.
    async fn undo(&self, step: &str, attempt: u32) -> Result<Value, StepError> {
        self.log
            .lock()
            .expect("log")
            .push(format!("compensate:{step} #{attempt}"));
        Ok(json!({ "undone": step }))
    }
}

/// A workflow whose runs must not be paused (as the integration probe's): one step.
struct Vital;

#[async_trait]
impl Workflow for Vital {
    fn kind(&self) -> &'static str {
        "vital"
    }

    fn not_pausable(&self) -> Option<&'static str> {
        Some("it checks the engine itself")
    }

    fn decide(&self, _input: &Value, history: &History) -> Result<Decision, String> {
        Ok(match history.result("only") {
            Some(result) => Decision::Complete(result.clone()),
            None => Decision::Run(StepCall::new("only")),
        })
    }

    async fn perform(
        &self,
        _input: &Value,
        _call: &StepCall,
        _ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        Ok(json!(1))
    }
}

fn operator() -> Operator {
    Operator {
        actor: Actor::Service("test-operator".to_owned()),
        correlation_id: CorrelationId::new_v7(),
    }
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).expect("a valid reason")
}

async fn start(engine: &Engine, steps: &[&str]) -> anyhow::Result<WorkflowId> {
    let mut tx = engine.store().db().begin().await?;
    let id = engine
        .start_in(
            &mut tx,
            Start {
                id: WorkflowId::new_v7(),
                kind: "paced".into(),
                input: json!({ "steps": steps }),
                correlation_id: CorrelationId::new_v7(),
                org_id: None,
                actor: None,
                parent: None,
            },
        )
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// `replay --verify` is clean, every handler applied twice (they must be idempotent).
async fn verify(store: &EventStore) -> anyhow::Result<()> {
    let report = store
        .verify_projections(
            VerifyOptions {
                dispatch_twice: true,
            },
            &mut |_, _| {},
        )
        .await?;
    anyhow::ensure!(
        report.is_clean() && report.outcome_changes.is_empty(),
        "{:#?} {:#?}",
        report.drift,
        report.outcome_changes
    );
    Ok(())
}

backend_test!(
    a_paused_kind_records_starts_runs_none_and_resumes_where_it_stopped,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            clock.clone(),
            EngineConfig::default(),
        );
        let asleep = start(&engine, &["first", "nap", "after"]).await?;
        engine.run_until_idle().await?;
        assert_eq!(workflow.log(), ["first #1"]);

        let pause = engine
            .pause_kind("paced", &operator(), reason("mail provider maintenance"))
            .await?;
        assert_eq!(pause.paused_by, "service:test-operator");
        let waiting = start(&engine, &["first", "second"]).await?;
        clock.advance(chrono::Duration::seconds(120));
        engine.run_until_idle().await?;
        assert_eq!(workflow.log(), ["first #1"], "nothing runs while paused");
        let state = run_state(&engine, waiting).await?;
        assert_eq!(
            state.run.status,
            RunStatus::Running,
            "the start is recorded"
        );
        let paused = state.run.paused.expect("paused by its kind");
        assert_eq!(paused.scope, PauseScope::Kind);
        assert_eq!(paused.reason, "mail provider maintenance");
        // The timer stays due: its run fires it once resumed.
        assert!(
            run_state(&engine, asleep)
                .await?
                .run
                .next_run_at
                .is_some_and(|at| at <= clock.now())
        );
        verify(&store).await?;

        engine
            .resume_kind("paced", &operator(), reason("maintenance over"))
            .await?;
        engine.run_until_idle().await?;
        for id in [asleep, waiting] {
            let state = run_state(&engine, id).await?;
            assert_eq!(state.run.status, RunStatus::Completed, "{id}");
            assert!(state.run.paused.is_none());
        }
        let log = workflow.log();
        assert_eq!(log.iter().filter(|s| *s == "first #1").count(), 2);
        assert!(log.contains(&"after #1".to_owned()) && log.contains(&"second #1".to_owned()));
        verify(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_paused_run_stops_after_the_step_in_flight_and_goes_on_when_resumed,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            manual_clock(),
            EngineConfig::default(),
        );
        let id = start(&engine, &["gated", "second"]).await?;
        let driving = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run_until_idle().await }
        });
        // The gated step is in flight: pause the run, then let the step finish.
        cairn_testkit::eventually("the gated step starts", Duration::from_secs(10), || {
            let workflow = workflow.clone();
            async move { Ok(workflow.log() == ["gated #1"]) }
        })
        .await?;
        let run = engine
            .pause_run(id, &operator(), reason("looking into it"))
            .await?;
        assert_eq!(run.paused.map(|p| p.scope), Some(PauseScope::Run));
        workflow.gate.send_replace(true);
        driving.await??;
        let state = run_state(&engine, id).await?;
        assert_eq!(
            state
                .steps
                .iter()
                .map(|s| (s.name.as_str(), s.status))
                .collect::<Vec<_>>(),
            [("gated", cairn_workflow::StepStatus::Completed)],
            "the step in flight is recorded, and the run stops after it"
        );
        assert_eq!(workflow.log(), ["gated #1"]);

        let resumed = engine
            .resume_run(id, &operator(), reason("all clear"))
            .await?;
        assert!(resumed.paused.is_none());
        engine.run_until_idle().await?;
        assert_eq!(
            run_state(&engine, id).await?.run.status,
            RunStatus::Completed
        );
        assert_eq!(workflow.log(), ["gated #1", "second #1"]);
        verify(&store).await?;
        Ok(())
    }
);

backend_test!(
    pauses_and_resumes_that_make_no_sense_are_refused,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            manual_clock(),
            EngineConfig::default(),
        );
        let head = store.db().reader().await?.conn().head().await?;
        let unknown = WorkflowId::new_v7();
        let error = engine
            .pause_run(unknown, &operator(), reason("x"))
            .await
            .expect_err("no such run");
        assert!(matches!(error, ControlError::NotFound { .. }), "{error:?}");
        let error = engine
            .pause_kind("nothing", &operator(), reason("x"))
            .await
            .expect_err("no such kind");
        assert!(
            matches!(&error, ControlError::UnknownKind { .. })
                && error.to_string().contains("paced"),
            "{error}"
        );
        let error = engine
            .resume_kind("paced", &operator(), reason("x"))
            .await
            .expect_err("not paused");
        assert!(matches!(error, ControlError::NotPaused { .. }), "{error:?}");
        assert_eq!(store.db().reader().await?.conn().head().await?, head);

        let done = start(&engine, &["first"]).await?;
        engine.run_until_idle().await?;
        let error = engine
            .pause_run(done, &operator(), reason("too late"))
            .await
            .expect_err("finished");
        assert!(matches!(error, ControlError::Finished { .. }), "{error:?}");

        let id = start(&engine, &["first"]).await?;
        engine.pause_run(id, &operator(), reason("once")).await?;
        let error = engine
            .pause_run(id, &operator(), reason("twice"))
            .await
            .expect_err("already paused");
        assert!(
            matches!(&error, ControlError::AlreadyPaused { reason, .. } if reason == "once"),
            "{error:?}"
        );
        engine.resume_run(id, &operator(), reason("go")).await?;
        let error = engine
            .resume_run(id, &operator(), reason("again"))
            .await
            .expect_err("not paused");
        assert!(matches!(error, ControlError::NotPaused { .. }), "{error:?}");
        Ok(())
    }
);

backend_test!(
    a_kind_that_must_not_be_paused_refuses_pauses_of_it_and_of_its_runs,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let engine = Engine::new(
            store.clone(),
            vec![Arc::new(Paced::default()), Arc::new(Vital)],
            manual_clock(),
            EngineConfig::default(),
        );
        assert_eq!(engine.not_pausable("paced"), None);
        assert_eq!(
            engine.not_pausable("vital"),
            Some("it checks the engine itself")
        );
        let mut tx = store.db().begin().await?;
        let run = engine
            .start_in(
                &mut tx,
                Start {
                    id: WorkflowId::new_v7(),
                    kind: "vital".into(),
                    input: json!({}),
                    correlation_id: CorrelationId::new_v7(),
                    org_id: None,
                    actor: None,
                    parent: None,
                },
            )
            .await?;
        tx.commit().await?;
        let head = store.db().reader().await?.conn().head().await?;
        let error = engine
            .pause_kind("vital", &operator(), reason("x"))
            .await
            .expect_err("not pausable");
        assert!(
            matches!(&error, ControlError::NotPausable { .. })
                && error.to_string()
                    == "workflow kind vital cannot be paused: it checks the engine itself",
            "{error}"
        );
        let error = engine
            .pause_run(run, &operator(), reason("x"))
            .await
            .expect_err("not pausable");
        assert!(
            matches!(&error, ControlError::NotPausable { .. })
                && error.to_string().contains("a vital run"),
            "{error}"
        );
        assert_eq!(store.db().reader().await?.conn().head().await?, head);
        engine.run_until_idle().await?;
        assert_eq!(
            run_state(&engine, run).await?.run.status,
            RunStatus::Completed
        );
        Ok(())
    }
);

backend_test!(
    attempts_that_run_out_pause_the_run_instead_of_undoing_it,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            clock.clone(),
            EngineConfig::default(),
        );
        let id = start(&engine, &["first", "unreliable", "last"]).await?;
        for _ in 0..5 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(2));
        }
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Running, "not compensated");
        let pause = state.run.paused.expect("paused when the attempts ran out");
        assert_eq!(pause.scope, PauseScope::Run);
        assert_eq!(pause.paused_by, "service:workflow-engine");
        assert!(
            pause.reason.contains("failed 3 times") && pause.reason.contains("451 4.3.0"),
            "{}",
            pause.reason
        );
        assert_eq!(
            workflow.log(),
            [
                "first #1",
                "unreliable #1",
                "unreliable #2",
                "unreliable #3"
            ]
        );
        verify(&store).await?;

        // Resumed while the cause remains: one more attempt, and it pauses again.
        engine
            .resume_run(id, &operator(), reason("try once"))
            .await?;
        engine.run_until_idle().await?;
        assert!(run_state(&engine, id).await?.run.paused.is_some());
        assert_eq!(workflow.log().len(), 5);

        workflow.fixed.store(true, Ordering::SeqCst);
        engine.resume_run(id, &operator(), reason("fixed")).await?;
        engine.run_until_idle().await?;
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Completed);
        assert_eq!(
            workflow.log()[5..],
            ["unreliable #5".to_owned(), "last #1".to_owned()]
        );
        verify(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_step_whose_events_would_be_held_waits_without_using_attempts,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            clock.clone(),
            EngineConfig::default(),
        );
        let route = HandlerRoute::stream_type(StreamType::parse("widget")?);
        store
            .pause_route(
                route.clone(),
                &operator(),
                reason("widget handler being fixed"),
            )
            .await?;
        let id = start(&engine, &["first", "widget", "last"]).await?;
        for _ in 0..3 {
            engine.run_until_idle().await?;
            clock.advance(chrono::Duration::seconds(3));
        }
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Running);
        assert!(
            state.steps.iter().all(|s| s.name != "widget"),
            "no attempt is recorded: {:?}",
            state.steps
        );
        assert!(
            workflow
                .log()
                .iter()
                .filter(|s| s.starts_with("widget"))
                .count()
                >= 2
        );

        store
            .resume_route(route, &operator(), reason("fixed"))
            .await?;
        clock.advance(chrono::Duration::seconds(3));
        engine.run_until_idle().await?;
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Completed);
        let widget = state
            .steps
            .iter()
            .find(|s| s.name == "widget")
            .expect("recorded");
        assert_eq!(widget.attempts, 1, "waiting used up no attempt");
        verify(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_cancelled_run_stops_undoes_what_it_did_and_ends_failed_with_the_reason,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let clock = manual_clock();
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            clock.clone(),
            EngineConfig::default(),
        );
        let id = start(&engine, &["first", "undoable", "nap", "after"]).await?;
        engine.run_until_idle().await?;
        assert_eq!(
            workflow.log(),
            ["first #1", "undoable #1"],
            "asleep on its timer"
        );

        let run = engine
            .cancel_run(id, &operator(), reason("the organization withdrew"))
            .await?;
        assert_eq!(run.status, RunStatus::Compensating);
        engine.run_until_idle().await?;
        let state = run_state(&engine, id).await?;
        assert_eq!(state.run.status, RunStatus::Failed);
        assert_eq!(
            state.run.failure.as_deref(),
            Some("cancelled by service:test-operator: the organization withdrew")
        );
        assert_eq!(
            workflow.log(),
            ["first #1", "undoable #1", "compensate:undoable #1"],
            "what it did is undone, and the rest never runs"
        );
        clock.advance(chrono::Duration::seconds(120));
        engine.run_until_idle().await?;
        assert!(!workflow.log().contains(&"after #1".to_owned()));

        let again = engine
            .cancel_run(id, &operator(), reason("twice"))
            .await
            .expect_err("finished");
        assert!(
            matches!(&again, ControlError::NotCancellable { why, .. } if why == "it is failed"),
            "{again}"
        );
        // The cancel is in the log, under who asked and why.
        let events = crate::support::run_events(&engine, id).await?;
        assert!(
            events.iter().any(
                |e| e.event_type.as_str() == "workflow_control.run_cancelled"
                    && e.data["reason"] == "the organization withdrew"
            ),
            "{events:?}"
        );
        verify(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_failed_run_that_undid_nothing_is_tried_again_from_its_failed_step,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let workflow = Arc::new(Paced::default());
        let engine = Engine::new(
            store.clone(),
            vec![workflow.clone()],
            manual_clock(),
            EngineConfig::default(),
        );
        let id = start(&engine, &["first", "broken", "second"]).await?;
        engine.run_until_idle().await?;
        assert_eq!(run_state(&engine, id).await?.run.status, RunStatus::Failed);
        let refused = engine
            .retry_run(WorkflowId::new_v7(), &operator(), reason("fixed"))
            .await
            .expect_err("no such run");
        assert!(
            matches!(refused, ControlError::NotFound { .. }),
            "{refused}"
        );

        // The cause is fixed: the run goes on from the failed step, with fresh attempts.
        workflow.fixed.store(true, Ordering::SeqCst);
        let run = engine
            .retry_run(id, &operator(), reason("the mailbox exists now"))
            .await?;
        assert_eq!((run.status, run.failure), (RunStatus::Running, None));
        engine.run_until_idle().await?;
        assert_eq!(
            run_state(&engine, id).await?.run.status,
            RunStatus::Completed
        );
        assert_eq!(
            workflow.log(),
            ["first #1", "broken #1", "broken #1", "second #1"],
            "the step that failed, then the rest; the first is not run again"
        );
        let again = engine
            .retry_run(id, &operator(), reason("twice"))
            .await
            .expect_err("completed");
        assert!(
            matches!(&again, ControlError::NotRetriable { why, .. } if why.contains("not failed")),
            "{again}"
        );

        // A run whose compensations ran is undone: it is started again, not retried.
        workflow.fixed.store(false, Ordering::SeqCst);
        let undone = start(&engine, &["undoable", "broken"]).await?;
        engine.run_until_idle().await?;
        assert_eq!(
            run_state(&engine, undone).await?.run.status,
            RunStatus::Failed
        );
        let refused = engine
            .retry_run(undone, &operator(), reason("try again"))
            .await
            .expect_err("undone");
        assert!(
            matches!(&refused, ControlError::NotRetriable { why, .. } if why.contains("compensations ran")),
            "{refused}"
        );
        verify(&store).await?;
        Ok(())
    }
);
