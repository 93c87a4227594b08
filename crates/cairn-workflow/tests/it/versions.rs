//! Versioned definitions, on both backends: a run finishes on the version it started
//! on while new runs start on the latest; an engine leaves alone, and refuses to start
//! over, runs of a version it does not have; `check_runs` replays each unfinished
//! run's history through its definition; a `workflow.started` stored before versions
//! existed is version 1, live and in replay.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_dispatch::{EventStore, Registry, VerifyOptions};
use cairn_log::{AppendRequest, EventFilter, Expected, Migration, NewEvent};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{CorrelationId, EventType, Metadata, StreamId, StreamType, WorkflowId};
use cairn_workflow::fit::Misfit;
use cairn_workflow::{
    Decision, Engine, EngineConfig, EngineError, History, RunStatus, Start, StepCall, StepContext,
    StepError, SystemClock, Workflow,
};
use serde_json::{Value, json};

use crate::support::run_state;

const MIGRATIONS: &[&[Migration]] = &[cairn_dispatch::MIGRATIONS, cairn_workflow::MIGRATIONS];
const KIND: &str = "versioned";

async fn store(t: &TestDb) -> anyhow::Result<EventStore> {
    t.migrate_sets(MIGRATIONS).await?;
    let registry = cairn_workflow::routes(Registry::builder().admin_routes()).build()?;
    Ok(EventStore::new(t.db().clone(), registry))
}

/// One version of the kind `versioned`: runs `first`, then waits on the timer `nap`
/// if its input asks to, then runs `second`, and completes with its version.
struct Versioned {
    version: u32,
    first: &'static str,
    second: &'static str,
}

fn v1() -> Arc<dyn Workflow> {
    Arc::new(Versioned {
        version: 1,
        first: "a",
        second: "b",
    })
}

fn v2() -> Arc<dyn Workflow> {
    Arc::new(Versioned {
        version: 2,
        first: "a2",
        second: "b2",
    })
}

#[async_trait]
impl Workflow for Versioned {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn decide(&self, input: &Value, history: &History) -> Result<Decision, String> {
        if !history.completed(self.first) {
            return Ok(Decision::Run(StepCall::new(self.first)));
        }
        if input["nap"] == json!(true) && history.fired("nap").is_none() {
            let until = chrono::Utc::now() + chrono::Duration::days(1);
            return Ok(Decision::Sleep {
                timer: "nap".to_owned(),
                until,
            });
        }
        if !history.completed(self.second) {
            return Ok(Decision::Run(StepCall::new(self.second)));
        }
        Ok(Decision::Complete(json!({ "version": self.version })))
    }

    async fn perform(
        &self,
        _input: &Value,
        _call: &StepCall,
        _ctx: &mut StepContext<'_>,
    ) -> Result<Value, StepError> {
        Ok(json!(self.version))
    }
}

/// The same kind with nothing in common with it.
struct Other;

#[async_trait]
impl Workflow for Other {
    fn kind(&self) -> &'static str {
        "other"
    }

    fn decide(&self, _input: &Value, _history: &History) -> Result<Decision, String> {
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

fn engine(store: &EventStore, workflows: Vec<Arc<dyn Workflow>>) -> Engine {
    Engine::new(
        store.clone(),
        workflows,
        Arc::new(SystemClock),
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
                kind: KIND.into(),
                input,
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

fn step_names(state: &cairn_workflow::RunWithSteps) -> Vec<&str> {
    state.steps.iter().map(|step| step.name.as_str()).collect()
}

backend_test!(
    a_run_finishes_on_its_version_while_new_runs_start_on_the_latest,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let old = engine(&store, vec![v1()]);
        let in_flight = start(&old, json!({})).await?;
        assert_eq!(run_state(&old, in_flight).await?.run.definition_version, 1);

        // The next build has both versions, in either order.
        let both = engine(&store, vec![v2(), v1()]);
        let new = start(&both, json!({})).await?;
        assert_eq!(run_state(&both, new).await?.run.definition_version, 2);
        both.check_definitions().await?;
        both.run_until_idle().await?;

        let old_run = run_state(&both, in_flight).await?;
        assert_eq!(old_run.run.status, RunStatus::Completed);
        assert_eq!(step_names(&old_run), ["a", "b"]);
        assert_eq!(old_run.run.output, Some(json!({"version": 1})));
        let new_run = run_state(&both, new).await?;
        assert_eq!(new_run.run.status, RunStatus::Completed);
        assert_eq!(step_names(&new_run), ["a2", "b2"]);
        assert_eq!(new_run.run.output, Some(json!({"version": 2})));

        // The started event carries the version, always.
        let mut reader = store.db().reader().await?;
        let filter = EventFilter {
            stream_id: Some(StreamId::from_uuid(new.as_uuid())),
            ..EventFilter::default()
        };
        let started = reader.conn().read_events(&filter).await?;
        assert_eq!(started[0].event_type.as_str(), "workflow.started");
        assert_eq!(started[0].data["version"], json!(2));
        Ok(())
    }
);

backend_test!(
    engine_missing_a_runs_version_refuses_to_start,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let old = engine(&store, vec![v1()]);
        let stranded = start(&old, json!({})).await?;
        let also = start(&old, json!({})).await?;
        old.check_definitions().await?;

        // A build with only the new version: it would strand both runs.
        let new_only = engine(&store, vec![v2()]);
        let error = new_only
            .check_definitions()
            .await
            .expect_err("runs of v1 are in flight");
        match &error {
            EngineError::MissingDefinition {
                run_id,
                kind,
                version,
                have,
                n_runs,
            } => {
                assert_eq!(*run_id, stranded.min(also));
                assert_eq!((kind.as_str(), *version), (KIND, 1));
                assert_eq!(have, &[2]);
                assert_eq!(*n_runs, 2);
            }
            other => panic!("not a missing definition: {other:?}"),
        }
        assert_eq!(
            error.to_string(),
            format!(
                "run {} is versioned v1, which this build does not have (it has v2), nor 1 other \
                 unfinished runs of that version; finish them with a build that has versioned v1",
                stranded.min(also)
            )
        );
        // It claims none of them meanwhile.
        assert_eq!(new_only.run_until_idle().await?.runs_driven, 0);
        assert!(step_names(&run_state(&new_only, stranded).await?).is_empty());

        // A build without the kind at all refuses too.
        let unrelated = engine(&store, vec![Arc::new(Other)]);
        let error = unrelated
            .check_definitions()
            .await
            .expect_err("runs of versioned are in flight");
        assert!(
            error
                .to_string()
                .contains("which this build does not have (it has no versioned)"),
            "{error}"
        );

        // Once they finished on a build that has v1, the new build starts.
        old.run_until_idle().await?;
        new_only.check_definitions().await?;
        unrelated.check_definitions().await?;
        Ok(())
    }
);

backend_test!(
    check_runs_reports_histories_that_no_longer_fit,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let old = engine(&store, vec![v1()]);
        // Both wait on their timer, `a` done: in flight.
        let first = start(&old, json!({"nap": true})).await?;
        let second = start(&old, json!({"nap": true})).await?;
        old.run_until_idle().await?;
        assert_eq!(step_names(&run_state(&old, first).await?), ["a", "nap"]);

        let report = old.check_runs().await?;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.checked, 2);

        // Version 1 changed in place, its first step renamed: the runs no longer fit.
        let edited = engine(
            &store,
            vec![Arc::new(Versioned {
                version: 1,
                first: "a-renamed",
                second: "b",
            })],
        );
        let report = edited.check_runs().await?;
        assert_eq!(report.checked, 2);
        let misfits: Vec<(WorkflowId, String)> = report
            .misfits
            .iter()
            .map(|check| (check.run_id, check.misfit.to_string()))
            .collect();
        let diverges =
            "after 0 steps the definition asks for step a-renamed, but the run recorded step a";
        assert_eq!(
            misfits,
            [(first, diverges.to_owned()), (second, diverges.to_owned())]
        );
        assert_eq!(report.misfits[0].kind, KIND);
        assert_eq!(report.misfits[0].version, 1);

        // A build without v1: every run lacks its definition.
        let report = engine(&store, vec![v2()]).check_runs().await?;
        assert_eq!(report.misfits.len(), 2);
        assert_eq!(
            report.misfits[0].misfit,
            Misfit::MissingDefinition {
                kind: KIND.to_owned(),
                version: 1,
                have: vec![2],
            }
        );
        Ok(())
    }
);

backend_test!(
    a_started_event_stored_without_a_version_is_version_1,
    |t: TestDb| async move {
        let store = store(&t).await?;
        // As the release before versions wrote it: payload version 1, no `version`.
        let id = WorkflowId::new_v7();
        let data = json!({"kind": KIND, "input": {}, "at": "2026-12-01T10:00:00Z"});
        let request = AppendRequest::new(
            StreamType::parse("workflow")?,
            StreamId::from_uuid(id.as_uuid()),
            vec![
                NewEvent::new(
                    EventType::parse("workflow.started")?,
                    data.clone(),
                    Metadata::with_correlation(CorrelationId::new_v7()),
                )
                .at_version(1),
            ],
        )
        .expect(Expected::NoStream)
        .importing();
        let appended = store.append(request).await?;
        assert!(appended.events[0].outcome.error().is_none());
        assert_eq!(appended.events[0].event.stored_version, 1);
        // Written as today's version, the same payload is refused: `version` is
        // required at version 2.
        let today = AppendRequest::new(
            StreamType::parse("workflow")?,
            StreamId::new_v7(),
            vec![NewEvent::new(
                EventType::parse("workflow.started")?,
                data,
                Metadata::with_correlation(CorrelationId::new_v7()),
            )],
        );
        let refused = store.append(today).await.expect_err("v2 needs a version");
        assert!(refused.to_string().contains("version"), "{refused}");
        let both = engine(&store, vec![v1(), v2()]);
        assert_eq!(run_state(&both, id).await?.run.definition_version, 1);
        both.run_until_idle().await?;
        let run = run_state(&both, id).await?;
        assert_eq!(step_names(&run), ["a", "b"]);
        assert_eq!(run.run.status, RunStatus::Completed);

        // Replay rebuilds the same version.
        let report = store
            .verify_projections(
                VerifyOptions {
                    dispatch_twice: true,
                },
                &mut |_, _| {},
            )
            .await?;
        assert!(report.is_clean(), "drift: {:#?}", report.drift);
        Ok(())
    }
);
