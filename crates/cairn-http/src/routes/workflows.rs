//! Workflow runs and their steps.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use cairn_domain::reads;
use cairn_policy::Action;
use cairn_types::WorkflowId;
use cairn_workflow::{Run, RunFilter, RunStatus, RunWithSteps};

use super::{Page, allow, limit, not_found, page, read_problem};
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
