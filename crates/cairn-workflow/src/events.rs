//! The workflow.* events: a run's history, in the log. Their handlers maintain the
//! `workflow_runs` and `workflow_steps` projections, so a run's state can be replayed
//! and verified like any other projection.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cairn_dispatch::{
    EventPayload, Handler, HandlerError, ProjectionTable, Projections, ReadFuture, RegistryBuilder,
    TypedView, Upcaster, payload,
};
use cairn_log::{RecordedEvent, args};
use cairn_types::WorkflowId;

/// The stream type of workflow runs; the stream id is the run's id.
pub const STREAM_TYPE: &str = "workflow";

/// A run began. Appended by the command that starts it, in the command's transaction.
///
/// Payload version 2: the version of the kind's definition (`version`). Version 1
/// events, written before definitions had versions, are upcast to definition
/// version 1, the only one there was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStarted {
    pub kind: String,
    /// The version of the kind's definition the run started on, and finishes on.
    pub version: u32,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<WorkflowId>,
    pub at: DateTime<Utc>,
}

/// `workflow.started` as payload version 1 wrote it, before definitions had versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStartedV1 {
    pub kind: String,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<WorkflowId>,
    pub at: DateTime<Utc>,
}

/// `workflow.started` v1 → v2: every run started before definitions had versions
/// started on version 1.
pub fn workflow_started_v1_to_v2(data: &mut Map<String, Value>) -> Result<(), String> {
    if data.contains_key("version") {
        return Err("event_data.version is already there at version 1".to_owned());
    }
    data.insert("version".to_owned(), Value::from(1));
    Ok(())
}

/// An attempt of a step that acts outside the database began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepStarted {
    pub step: String,
    pub attempt: u32,
    pub compensation: bool,
    pub at: DateTime<Utc>,
}

/// A step succeeded; its result is what later decisions read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepCompleted {
    pub step: String,
    pub attempt: u32,
    pub result: Value,
    pub compensable: bool,
    pub compensation: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// A step attempt failed; another is due at `retry_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepAttemptFailed {
    pub step: String,
    pub attempt: u32,
    pub error: String,
    pub compensation: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub retry_at: DateTime<Utc>,
}

/// A step failed for good: its error is not retryable, or its attempts ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepFailed {
    pub step: String,
    pub attempt: u32,
    pub error: String,
    /// True when the error itself said retrying cannot help.
    pub permanent: bool,
    pub compensation: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// The run sleeps until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerStarted {
    pub timer: String,
    pub until: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A timer went off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerFired {
    pub timer: String,
    pub at: DateTime<Utc>,
}

/// The run gave up; its completed compensable steps are undone next, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationStarted {
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// The run finished successfully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowCompleted {
    pub output: Value,
    pub at: DateTime<Utc>,
}

/// The run failed and every compensation ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFailed {
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A compensation failed for good: the run needs an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationFailed {
    pub step: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

macro_rules! payload {
    ($ty:ident, $event_type:literal, $description:literal) => {
        impl EventPayload for $ty {
            const EVENT_TYPE: &'static str = $event_type;
            const DESCRIPTION: &'static str = $description;
        }
    };
}

impl EventPayload for WorkflowStarted {
    const EVENT_TYPE: &'static str = "workflow.started";
    const DESCRIPTION: &'static str =
        "A workflow run began, atomically with the command that asked for it.";
    const VERSION: u32 = 2;

    fn upcasters() -> Vec<Upcaster> {
        vec![Upcaster::new::<WorkflowStartedV1>(
            1,
            workflow_started_v1_to_v2,
        )]
    }
}
payload!(
    StepStarted,
    "workflow.step_started",
    "An attempt of a step that acts outside the database began."
);
payload!(
    StepCompleted,
    "workflow.step_completed",
    "A workflow step succeeded; its result is recorded."
);
payload!(
    StepAttemptFailed,
    "workflow.step_attempt_failed",
    "A workflow step attempt failed and will be retried."
);
payload!(
    StepFailed,
    "workflow.step_failed",
    "A workflow step failed for good."
);
payload!(
    TimerStarted,
    "workflow.timer_started",
    "A workflow run sleeps until a time."
);
payload!(
    TimerFired,
    "workflow.timer_fired",
    "A workflow timer went off."
);
payload!(
    CompensationStarted,
    "workflow.compensation_started",
    "A workflow run gave up and compensates its completed steps."
);
payload!(
    WorkflowCompleted,
    "workflow.completed",
    "A workflow run finished successfully."
);
payload!(
    WorkflowFailed,
    "workflow.failed",
    "A workflow run failed; its compensations ran."
);
payload!(
    CompensationFailed,
    "workflow.compensation_failed",
    "A compensation failed for good; the run needs an operator."
);

fn step_kind(compensation: bool) -> &'static str {
    if compensation {
        "compensation"
    } else {
        "action"
    }
}

/// Writes one step row, keeping its place (`seq`) from when it first appeared.
#[allow(clippy::too_many_arguments)]
async fn upsert_step(
    p: &mut Projections<'_>,
    run_id: cairn_types::StreamId,
    name: &str,
    kind: &str,
    status: &str,
    attempts: u32,
    result: Option<Value>,
    last_error: Option<String>,
    compensable: bool,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    wake_at: Option<DateTime<Utc>>,
) -> Result<(), HandlerError> {
    p.execute(
        "INSERT INTO workflow_steps (run_id, name, seq, kind, status, attempts, result, last_error,
             compensable, started_at, finished_at, wake_at)
         VALUES ($1, $2, (SELECT COUNT(*) FROM workflow_steps WHERE run_id = $1), $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (run_id, name) DO UPDATE SET kind = excluded.kind, status = excluded.status,
             attempts = excluded.attempts, result = excluded.result, last_error = excluded.last_error,
             compensable = excluded.compensable, started_at = excluded.started_at,
             finished_at = excluded.finished_at, wake_at = excluded.wake_at",
        args![run_id, name, kind, status, attempts, result, last_error, compensable, started_at, finished_at, wake_at],
    )
    .await?;
    Ok(())
}

/// Moves the run: its version, when it may run next, what it is doing.
async fn touch_run(
    p: &mut Projections<'_>,
    event: &RecordedEvent,
    next_run_at: Option<DateTime<Utc>>,
    current_step: Option<&str>,
) -> Result<(), HandlerError> {
    let changed = p
        .execute(
            "UPDATE workflow_runs SET version = $2, next_run_at = $3, current_step = $4, updated_at = $5 WHERE id = $1",
            args![event.stream_id, event.stream_version, next_run_at, current_step, event.created_at],
        )
        .await?;
    if changed == 0 {
        return Err(HandlerError::failed(format!(
            "workflow run {} has no workflow.started event",
            event.stream_id
        )));
    }
    Ok(())
}

struct OnStarted;
#[async_trait]
impl Handler for OnStarted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let started: WorkflowStarted = payload(event)?;
        let metadata = &event.metadata;
        p.execute(
            "INSERT INTO workflow_runs (id, kind, definition_version, status, input, correlation_id, org_id,
                 actor, parent_id, version, next_run_at, created_at, updated_at)
             VALUES ($1, $2, $11, 'running', $3, $4, $5, $6, $7, $8, $9, $10, $10)
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                 definition_version = excluded.definition_version, status = excluded.status,
                 input = excluded.input, correlation_id = excluded.correlation_id, org_id = excluded.org_id,
                 actor = excluded.actor, parent_id = excluded.parent_id, version = excluded.version,
                 next_run_at = excluded.next_run_at, created_at = excluded.created_at,
                 updated_at = excluded.updated_at",
            args![
                event.stream_id,
                started.kind,
                started.input,
                metadata.correlation_id,
                metadata.org_id,
                metadata.actor.as_ref().map(ToString::to_string),
                started.parent,
                event.stream_version,
                started.at,
                event.created_at,
                started.version,
            ],
        )
        .await?;
        Ok(())
    }
}

struct OnStepStarted;
#[async_trait]
impl Handler for OnStepStarted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: StepStarted = payload(event)?;
        upsert_step(
            p,
            event.stream_id,
            &e.step,
            step_kind(e.compensation),
            "running",
            e.attempt,
            None,
            None,
            false,
            Some(e.at),
            None,
            None,
        )
        .await?;
        touch_run(p, event, Some(e.at), Some(&e.step)).await
    }
}

struct OnStepCompleted;
#[async_trait]
impl Handler for OnStepCompleted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: StepCompleted = payload(event)?;
        upsert_step(
            p,
            event.stream_id,
            &e.step,
            step_kind(e.compensation),
            "completed",
            e.attempt,
            Some(e.result),
            None,
            e.compensable,
            Some(e.started_at),
            Some(e.finished_at),
            None,
        )
        .await?;
        touch_run(p, event, Some(e.finished_at), None).await
    }
}

struct OnStepAttemptFailed;
#[async_trait]
impl Handler for OnStepAttemptFailed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: StepAttemptFailed = payload(event)?;
        upsert_step(
            p,
            event.stream_id,
            &e.step,
            step_kind(e.compensation),
            "retrying",
            e.attempt,
            None,
            Some(e.error),
            false,
            Some(e.started_at),
            Some(e.finished_at),
            Some(e.retry_at),
        )
        .await?;
        touch_run(p, event, Some(e.retry_at), Some(&e.step)).await
    }
}

struct OnStepFailed;
#[async_trait]
impl Handler for OnStepFailed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: StepFailed = payload(event)?;
        upsert_step(
            p,
            event.stream_id,
            &e.step,
            step_kind(e.compensation),
            "failed",
            e.attempt,
            None,
            Some(e.error),
            false,
            Some(e.started_at),
            Some(e.finished_at),
            None,
        )
        .await?;
        touch_run(p, event, Some(e.finished_at), None).await
    }
}

struct OnTimerStarted;
#[async_trait]
impl Handler for OnTimerStarted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: TimerStarted = payload(event)?;
        upsert_step(
            p,
            event.stream_id,
            &e.timer,
            "timer",
            "waiting",
            0,
            None,
            None,
            false,
            Some(e.at),
            None,
            Some(e.until),
        )
        .await?;
        touch_run(p, event, Some(e.until), Some(&e.timer)).await
    }
}

struct OnTimerFired;
#[async_trait]
impl Handler for OnTimerFired {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: TimerFired = payload(event)?;
        let changed = p
            .execute(
                "UPDATE workflow_steps SET status = 'fired', finished_at = $3 WHERE run_id = $1 AND name = $2",
                args![event.stream_id, e.timer.as_str(), e.at],
            )
            .await?;
        if changed == 0 {
            return Err(HandlerError::failed(format!(
                "timer {} was never started",
                e.timer
            )));
        }
        touch_run(p, event, Some(e.at), None).await
    }
}

/// Sets a run's status and failure; `next_run_at` None for a finished run.
async fn set_status(
    p: &mut Projections<'_>,
    event: &RecordedEvent,
    status: &str,
    output: Option<Value>,
    failure: Option<String>,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<(), HandlerError> {
    p.execute(
        "UPDATE workflow_runs SET status = $2, output = COALESCE($3, output), failure = COALESCE($4, failure) WHERE id = $1",
        args![event.stream_id, status, output, failure],
    )
    .await?;
    touch_run(p, event, next_run_at, None).await
}

struct OnCompensationStarted;
#[async_trait]
impl Handler for OnCompensationStarted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: CompensationStarted = payload(event)?;
        set_status(p, event, "compensating", None, Some(e.reason), Some(e.at)).await
    }
}

struct OnCompleted;
#[async_trait]
impl Handler for OnCompleted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: WorkflowCompleted = payload(event)?;
        set_status(p, event, "completed", Some(e.output), None, None).await
    }
}

struct OnFailed;
#[async_trait]
impl Handler for OnFailed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: WorkflowFailed = payload(event)?;
        set_status(p, event, "failed", None, Some(e.reason), None).await
    }
}

struct OnCompensationFailed;
#[async_trait]
impl Handler for OnCompensationFailed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let e: CompensationFailed = payload(event)?;
        let failure = format!("compensation {} failed: {}", e.step, e.error);
        set_status(p, event, "compensation_failed", None, Some(failure), None).await
    }
}

/// Registers the workflow router, the router of pauses, and their projection tables.
pub fn routes(builder: RegistryBuilder) -> RegistryBuilder {
    crate::control::routes(builder)
        .router(STREAM_TYPE, |r| {
            r.event::<WorkflowStarted>(OnStarted)
                .event::<StepStarted>(OnStepStarted)
                .event::<StepCompleted>(OnStepCompleted)
                .event::<StepAttemptFailed>(OnStepAttemptFailed)
                .event::<StepFailed>(OnStepFailed)
                .event::<TimerStarted>(OnTimerStarted)
                .event::<TimerFired>(OnTimerFired)
                .event::<CompensationStarted>(OnCompensationStarted)
                .event::<WorkflowCompleted>(OnCompleted)
                .event::<WorkflowFailed>(OnFailed)
                .event::<CompensationFailed>(OnCompensationFailed)
                .not_pausable(
                    "the engine records every step here; pause a workflow kind or run instead",
                )
        })
        .projection(ProjectionTable {
            name: "workflow_runs",
            key: &["id"],
        })
        .projection(ProjectionTable {
            name: "workflow_steps",
            key: &["run_id", "name"],
        })
        .view(STREAM_TYPE, TypedView::new("workflow_run", run_view))
}

fn run_view<'a>(
    conn: &'a mut cairn_log::Conn<'_>,
    id: cairn_types::StreamId,
) -> ReadFuture<'a, crate::state::RunWithSteps> {
    Box::pin(crate::state::load(
        conn,
        cairn_types::WorkflowId::from_uuid(id.as_uuid()),
    ))
}
