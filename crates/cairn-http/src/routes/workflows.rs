//! Workflow runs and their steps.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use serde::Serialize;

use cairn_domain::reads;
use cairn_policy::{Action, Denial, Principal};
use cairn_types::WorkflowId;
use cairn_workflow::{ControlError, KindPause, Run, RunFilter, RunStatus, RunWithSteps};

use super::{Because, Page, allow, database, denied, limit, not_found, page, read_problem};
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::{FieldProblem, Location, Problem, ProblemCode};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPath {
    pub workflow_id: WorkflowId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowsQuery {
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs of this kind (`organization_bootstrap`, `invitation_delivery`, …).
    #[schemars(length(min = 1, max = 128), pattern(r"^[a-z][a-z0-9_]*$"))]
    pub kind: Option<String>,
    /// Return runs after this one (the `next_cursor` of the previous page).
    pub after: Option<WorkflowId>,
    /// How many runs, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindPath {
    /// A workflow kind (`organization_bootstrap`, `invitation_delivery`, …).
    #[schemars(length(min = 1, max = 128), pattern(r"^[a-z][a-z0-9_]*$"))]
    pub kind: String,
}

/// A workflow kind, and its pause.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowKind {
    pub kind: String,
    /// Why its runs cannot be paused, when they cannot.
    pub not_pausable: Option<String>,
    /// Set while every run of the kind is paused.
    pub paused: Option<KindPause>,
}

/// The workflow runs.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/workflows", "listWorkflows", "workflows", OK, public: false, command: false,
            "List workflow runs", "The runs the caller may see, oldest first, with their status and current step."),
        list_workflows,
    )
    .op(
        op!(GET "/v1/workflows/{workflow_id}", "getWorkflow", "workflows", OK, public: false, command: false,
            "Read a workflow run", "Its status, current step, failure, and every step with its attempts, times and last error."),
        get_workflow,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/workflows/{workflow_id}/pause", "pauseWorkflow", "workflows", OK, public: false, command: true,
                "Pause a workflow run",
                "Appends workflow_control.run_paused: the run stops after the step in flight (which is recorded) and runs nothing until it is resumed; its timers stay due. An organization's admin may pause its own runs; platform administrators and service accounts with `workflows:pause` any run. 404 for a run the caller cannot see, 409 for a finished or already paused run, or one of a kind that cannot be paused (the integration probe's).")
        },
        pause_workflow,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/workflows/{workflow_id}/resume", "resumeWorkflow", "workflows", OK, public: false, command: true,
                "Resume a paused workflow run",
                "Appends workflow_control.run_resumed: the run goes on where it stopped (a step whose attempts ran out is tried again at once). 409 when the run is not paused on its own.")
        },
        resume_workflow,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/workflows/{workflow_id}/cancel", "cancelWorkflow", "workflows", OK, public: false, command: true,
                "Cancel a workflow run",
                "Appends workflow_control.run_cancelled: the run stops after the step in flight, undoes what it did (its compensations, newest first, as after a failure) and ends failed, its failure naming who cancelled it and why. A paused run is cancelled at once. Who may pause a run may cancel it. 409 for a run that is not running (finished, or undoing already).")
        },
        cancel_workflow,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/workflows/{workflow_id}/retry", "retryWorkflow", "workflows", OK, public: false, command: true,
                "Try a failed workflow run again",
                "Appends workflow_control.run_retried: a failed run that undid nothing goes on from the step that failed, with a fresh set of attempts. Who may pause a run may retry it. 409 for a run that is not failed, or whose compensations ran (what it did is undone: start it again, for a bootstrap with the console's \"Bootstrap again\").")
        },
        retry_workflow,
    )
    .op(
        op!(GET "/v1/workflow-kinds", "listWorkflowKinds", "workflows", OK, public: false, command: false,
            "List workflow kinds", "Every kind of workflow this server runs, with its pause if it is paused."),
        list_kinds,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/workflow-kinds/{kind}/pause", "pauseWorkflowKind", "workflows", OK, public: false, command: true,
                "Pause every run of a workflow kind",
                "Appends workflow_control.kind_paused: every run of the kind stops after its step in flight; new runs are recorded (their commands succeed) and wait; timers stay due. For platform administrators and service accounts with `workflows:pause`. 404 for an unknown kind, 409 when it is paused already or cannot be paused (`not_pausable` in the kind list says why).")
        },
        pause_kind,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/workflow-kinds/{kind}/resume", "resumeWorkflowKind", "workflows", OK, public: false, command: true,
                "Resume a paused workflow kind",
                "Appends workflow_control.kind_resumed: its runs go on where they stopped, due timers first. Answers with the pause it ended. 409 when the kind is not paused.")
        },
        resume_kind,
    )
}

/// What a caller is told when a pause or a resume of a workflow is refused.
pub(crate) fn workflow_control_problem(error: ControlError) -> Problem {
    match error {
        ControlError::NotFound { .. } | ControlError::UnknownKind { .. } => {
            Problem::new(ProblemCode::NotFound, error.to_string())
        }
        ControlError::Finished { .. }
        | ControlError::NotPausable { .. }
        | ControlError::AlreadyPaused { .. }
        | ControlError::NotPaused { .. }
        | ControlError::NotCancellable { .. }
        | ControlError::NotRetriable { .. } => {
            Problem::new(ProblemCode::Conflict, error.to_string())
        }
        ControlError::Database(e) | ControlError::Append(cairn_log::AppendError::Database(e)) => {
            database(&e)
        }
        ControlError::Append(e) => Problem::internal(&e),
    }
}

/// Asks the policy whether the caller may pause or resume this run. A run of another
/// tenant is the same 404 as a missing one.
async fn may_pause(state: &AppState, ctx: &Ctx, id: WorkflowId) -> Result<(), Problem> {
    let tenant = reads::run_tenant(state.db(), id)
        .await
        .map_err(read_problem)?
        .ok_or_else(|| not_found("workflow run", &id))?;
    match cairn_policy::authorize(&ctx.principal, &Action::PauseRun(tenant)) {
        Ok(_) => Ok(()),
        Err(Denial::Forbidden { .. }) if matches!(&ctx.principal, Principal::User { org_id, .. } if Some(*org_id) != tenant) => {
            Err(not_found("workflow run", &id))
        }
        Err(denial) => Err(denied(denial)),
    }
}

/// What is decided about one run.
#[derive(Debug, Clone, Copy)]
enum RunControl {
    Pause,
    Resume,
    Cancel,
    Retry,
}

/// Asks the policy, then the engine, to decide `control` about the run in the path.
async fn control_workflow(
    state: &AppState,
    ctx: &Ctx,
    path: &WorkflowPath,
    reason: cairn_types::Reason,
    control: RunControl,
) -> Result<Reply<Run>, Problem> {
    may_pause(state, ctx, path.workflow_id).await?;
    let engine = state.domain().engine();
    let (id, by) = (path.workflow_id, ctx.operator());
    let run = match control {
        RunControl::Pause => engine.pause_run(id, &by, reason).await,
        RunControl::Resume => engine.resume_run(id, &by, reason).await,
        RunControl::Cancel => engine.cancel_run(id, &by, reason).await,
        RunControl::Retry => engine.retry_run(id, &by, reason).await,
    }
    .map_err(workflow_control_problem)?;
    Ok(Reply::ok(run))
}

/// `POST /v1/workflows/{workflow_id}/pause`.
async fn pause_workflow(
    state: AppState,
    ctx: Ctx,
    path: WorkflowPath,
    _: Empty,
    body: Because,
) -> Result<Reply<Run>, Problem> {
    control_workflow(&state, &ctx, &path, body.reason, RunControl::Pause).await
}

/// `POST /v1/workflows/{workflow_id}/resume`.
async fn resume_workflow(
    state: AppState,
    ctx: Ctx,
    path: WorkflowPath,
    _: Empty,
    body: Because,
) -> Result<Reply<Run>, Problem> {
    control_workflow(&state, &ctx, &path, body.reason, RunControl::Resume).await
}

/// `POST /v1/workflows/{workflow_id}/cancel`.
async fn cancel_workflow(
    state: AppState,
    ctx: Ctx,
    path: WorkflowPath,
    _: Empty,
    body: Because,
) -> Result<Reply<Run>, Problem> {
    control_workflow(&state, &ctx, &path, body.reason, RunControl::Cancel).await
}

/// `POST /v1/workflows/{workflow_id}/retry`.
async fn retry_workflow(
    state: AppState,
    ctx: Ctx,
    path: WorkflowPath,
    _: Empty,
    body: Because,
) -> Result<Reply<Run>, Problem> {
    control_workflow(&state, &ctx, &path, body.reason, RunControl::Retry).await
}

/// `GET /v1/workflow-kinds`.
async fn list_kinds(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Vec<WorkflowKind>>, Problem> {
    let grant = allow(&ctx, Action::ListWorkflows)?;
    let paused = reads::paused_kinds(state.db(), &grant)
        .await
        .map_err(read_problem)?;
    let engine = state.domain().engine();
    let kinds = engine
        .kinds()
        .into_iter()
        .map(|kind| WorkflowKind {
            kind: kind.to_owned(),
            not_pausable: engine.not_pausable(kind).map(str::to_owned),
            paused: paused.iter().find(|pause| pause.kind == kind).cloned(),
        })
        .collect();
    Ok(Reply::ok(kinds))
}

/// `POST /v1/workflow-kinds/{kind}/pause`.
async fn pause_kind(
    state: AppState,
    ctx: Ctx,
    path: KindPath,
    _: Empty,
    body: Because,
) -> Result<Reply<KindPause>, Problem> {
    allow(&ctx, Action::PauseWorkflowKinds)?;
    let pause = state
        .domain()
        .engine()
        .pause_kind(&path.kind, &ctx.operator(), body.reason)
        .await
        .map_err(workflow_control_problem)?;
    Ok(Reply::ok(pause))
}

/// `POST /v1/workflow-kinds/{kind}/resume`.
async fn resume_kind(
    state: AppState,
    ctx: Ctx,
    path: KindPath,
    _: Empty,
    body: Because,
) -> Result<Reply<KindPause>, Problem> {
    allow(&ctx, Action::PauseWorkflowKinds)?;
    let pause = state
        .domain()
        .engine()
        .resume_kind(&path.kind, &ctx.operator(), body.reason)
        .await
        .map_err(workflow_control_problem)?;
    Ok(Reply::ok(pause))
}

/// Whether `kind` reads as a workflow kind: lower-case letters, digits and underscores.
pub(crate) fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 128
        && kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `GET /v1/workflows`: a page of the runs the caller may see.
async fn list_workflows(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    query: WorkflowsQuery,
    _: Empty,
) -> Result<Reply<Page<Run>>, Problem> {
    let grant = allow(&ctx, Action::ListWorkflows)?;
    let limit = limit(query.limit)?;
    if let Some(kind) = &query.kind
        && !valid_kind(kind)
    {
        return Err(Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "kind".into(),
                location: Location::Query,
                expected_location: None,
                message: "a workflow kind is lower-case letters, digits and underscores".into(),
            },
        ));
    }
    let filter = RunFilter {
        status: query.status,
        kind: query.kind,
        after: query.after,
        limit: Some(limit),
        ..RunFilter::default()
    };
    let items: Vec<Run> = reads::workflows(state.db(), &grant, filter)
        .await
        .map_err(read_problem)?;
    Ok(Reply::ok(page(items, limit, |r| r.id.to_string())))
}

/// `GET /v1/workflows/{workflow_id}`: one run with its steps.
async fn get_workflow(
    state: AppState,
    ctx: Ctx,
    path: WorkflowPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<RunWithSteps>, Problem> {
    let grant = allow(&ctx, Action::ListWorkflows)?;
    let run = reads::workflow(state.db(), &grant, path.workflow_id)
        .await
        .map_err(read_problem)?;
    run.map(Reply::ok)
        .ok_or_else(|| not_found("workflow run", &path.workflow_id))
}
