//! The operations of the API, each registered with its types in [`api`].
//!
//! Every handler asks the policy first ([`allow`]); reads go through
//! `cairn_domain::reads` with the grant, commands through the domain, which asks the
//! policy again for the exact tenant.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use cairn_dispatch::{Dispatched, RetryError, RetryReport, RetrySelection};
use cairn_domain::model::DirectCareSettings;
use cairn_domain::reads::{self, Invitation, Organization, Page as QueryPage, ReadsError, User};
use cairn_domain::{
    BootstrapAccepted, BootstrapRequest, CommandError, InvitationAcceptance, InvitationStarted,
    InviteeRequest,
};
use cairn_log::{EventFilter, RecordedEvent};
use cairn_policy::{Action, Denial, Grant, authorize};
use cairn_types::{
    CorrelationId, ErrorCode, EventId, EventType, InvitationId, OrgId, Position, StreamId,
    StreamType, UserId, WorkflowId,
};
use cairn_workflow::{Run, RunFilter, RunStatus, RunWithSteps};

use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::{FieldProblem, Location, Problem, ProblemCode};

/// Asks the policy; a refusal becomes a 401 or a 403.
pub fn allow(ctx: &Ctx, action: Action) -> Result<Grant, Problem> {
    allow_principal(&ctx.principal, action)
}

/// Asks the policy about a principal; a refusal becomes a 401 or a 403.
pub fn allow_principal(
    principal: &cairn_policy::Principal,
    action: Action,
) -> Result<Grant, Problem> {
    authorize(principal, &action).map_err(denied)
}

pub(crate) fn denied(denial: Denial) -> Problem {
    match denial {
        Denial::Unauthenticated { .. } => {
            Problem::new(ProblemCode::Unauthenticated, denial.to_string())
        }
        Denial::Forbidden { .. } => Problem::new(ProblemCode::Forbidden, denial.to_string()),
    }
}

/// What a caller is told of a database error: by its kind, never its driver's detail.
fn database(error: &cairn_log::DbError) -> Problem {
    use cairn_log::DbErrorKind as Kind;
    match error.kind() {
        Kind::Overloaded => Problem::new(ProblemCode::Overloaded, error.to_string()),
        Kind::Unavailable => {
            tracing::error!(error = %cairn_types::error_chain(error), "database unavailable");
            Problem::new(
                ProblemCode::Unavailable,
                "the database cannot be reached; try again",
            )
        }
        Kind::Conflict => Problem::new(
            ProblemCode::Conflict,
            "another request changed the same data at the same time; nothing was done, try again",
        ),
        Kind::Failed => Problem::internal(error),
    }
}

fn read_problem(error: ReadsError) -> Problem {
    match &error {
        ReadsError::Database(e) => database(e),
        ReadsError::Log(cairn_log::ReadError::Database(e)) => database(e),
        _ => Problem::internal(&error),
    }
}

/// Maps a command's refusal to a problem.
pub fn command_problem(error: CommandError) -> Problem {
    match error {
        CommandError::Invalid(fields) => Problem::fields(
            fields
                .into_iter()
                .map(|f| FieldProblem {
                    field: f.field,
                    location: Location::Body,
                    expected_location: None,
                    message: f.message,
                })
                .collect(),
        ),
        CommandError::NotFound { .. } => Problem::new(ProblemCode::NotFound, error.to_string()),
        CommandError::Conflict(field) => {
            let mut problem = Problem::new(ProblemCode::Conflict, field.to_string());
            problem.errors.push(FieldProblem {
                field: field.field,
                location: Location::Body,
                expected_location: None,
                message: field.message,
            });
            problem
        }
        CommandError::InvalidState { message } => Problem::new(ProblemCode::Conflict, message),
        CommandError::KeyReused { .. } => {
            Problem::new(ProblemCode::IdempotencyKeyReused, error.to_string())
        }
        CommandError::Denied(denial) => denied(denial),
        CommandError::Database(e) => database(&e),
        CommandError::Append(cairn_log::AppendError::InvalidData { reason, .. }) => Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "body".into(),
                location: Location::Body,
                expected_location: None,
                message: reason,
            },
        ),
        CommandError::Append(cairn_log::AppendError::Conflict { .. }) => Problem::new(
            ProblemCode::Conflict,
            "another request changed this resource at the same time; try again",
        ),
        CommandError::Append(cairn_log::AppendError::Database(e)) => database(&e),
        CommandError::NotApplied { .. } => Problem::new(ProblemCode::Internal, error.to_string()),
        CommandError::Append(e) => Problem::internal(&e),
    }
}

/// A page of a list.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn page<T>(items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = (items.len() as u32 == limit)
        .then(|| items.last().map(cursor))
        .flatten();
    Page { items, next_cursor }
}

/// A cursor and a page size.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery<Id> {
    /// Return items after this one (the `next_cursor` of the previous page).
    pub after: Option<Id>,
    /// How many items, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

fn limit(limit: Option<u32>) -> Result<u32, Problem> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(n) => Err(Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "limit".into(),
                location: Location::Query,
                expected_location: None,
                message: format!("must be 1 to 200, not {n}"),
            },
        )),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgPath {
    pub org_id: OrgId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgUserPath {
    pub org_id: OrgId,
    pub user_id: UserId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationPath {
    pub invitation_id: InvitationId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPath {
    pub workflow_id: WorkflowId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPath {
    pub event_id: EventId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracePath {
    /// The request's correlation id: the `x-correlation-id` of its response, or the
    /// `correlation_id` of its problem document.
    pub correlation_id: CorrelationId,
}

/// Why an invitation is withdrawn.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// 1 to 500 characters, not only spaces, no control characters but tabs and newlines.
    #[schemars(
        length(min = 1, max = 500),
        pattern(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
}

/// An invitation's token, from the link in its email.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// 64 hexadecimal characters.
    #[schemars(pattern(r"^[0-9a-fA-F]{64}$"))]
    pub token: String,
}

/// The invitation after a revoke.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Revoked {
    pub invitation_id: InvitationId,
    pub status: String,
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
pub struct EventsQuery {
    /// Return events after this position (the `next_cursor` of the previous page).
    #[schemars(range(min = 0, max = 9_223_372_036_854_775_807_i64))]
    pub after: Option<i64>,
    /// How many events, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
    pub stream_id: Option<StreamId>,
    pub stream_type: Option<StreamType>,
    pub event_type: Option<EventType>,
    pub correlation_id: Option<CorrelationId>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailedEventsQuery {
    /// Return events after this position.
    #[schemars(range(min = 0, max = 9_223_372_036_854_775_807_i64))]
    pub after: Option<i64>,
    /// How many events, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
    /// Only events failed with this code.
    pub code: Option<ErrorCode>,
    pub stream_type: Option<StreamType>,
}

/// Which failed events to retry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFailedRequest {
    /// Only events failed with this code.
    pub code: Option<ErrorCode>,
    /// Only events of this stream type.
    pub stream_type: Option<StreamType>,
}

/// Whether the process is up, or ready to serve.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    pub status: String,
}

fn event_page(items: Vec<RecordedEvent>, limit: u32) -> Page<RecordedEvent> {
    page(items, limit, |e| e.position.to_string())
}

fn not_found(what: &str, id: &dyn std::fmt::Display) -> Problem {
    Problem::new(ProblemCode::NotFound, format!("there is no {what} {id}"))
}

fn negative_after(after: Option<i64>) -> Result<Position, Problem> {
    match after {
        Some(n) if n < 0 => Err(Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "after".into(),
                location: Location::Query,
                expected_location: None,
                message: format!("must be 0 or more, not {n}"),
            },
        )),
        other => Ok(Position::new(other.unwrap_or(0))),
    }
}

macro_rules! op {
    ($method:ident $path:literal, $id:literal, $tag:literal, $success:ident, public: $public:literal, command: $command:literal, $summary:literal, $description:literal $(, links: $links:expr)?) => {
        Op {
            method: Method::$method,
            path: $path,
            id: $id,
            tag: $tag,
            summary: $summary,
            description: $description,
            success: StatusCode::$success,
            public: $public,
            command: $command,
            idempotency_key: $command,
            unhealthy_503: false,
            links: op!(@links $($links)?),
        }
    };
    (@links) => { &[] };
    (@links $links:expr) => { $links };
}

/// What a bootstrap's answer leads to.
const BOOTSTRAP_LINKS: &[(&str, &str, &str)] = &[
    ("getOrganization", "org_id", "$response.body#/org_id"),
    ("listUsers", "org_id", "$response.body#/org_id"),
    ("listInvitations", "org_id", "$response.body#/org_id"),
    ("invite", "org_id", "$response.body#/org_id"),
    (
        "updateDirectCareSettings",
        "org_id",
        "$response.body#/org_id",
    ),
    ("getWorkflow", "workflow_id", "$response.body#/workflow_id"),
];

/// What an invitation's answer leads to.
const INVITATION_LINKS: &[(&str, &str, &str)] = &[
    (
        "getInvitation",
        "invitation_id",
        "$response.body#/invitation_id",
    ),
    (
        "resendInvitation",
        "invitation_id",
        "$response.body#/invitation_id",
    ),
    (
        "revokeInvitation",
        "invitation_id",
        "$response.body#/invitation_id",
    ),
    ("getWorkflow", "workflow_id", "$response.body#/workflow_id"),
];

/// Every operation of the API.
pub fn api() -> Api {
    Api::new()
        .op(
            op!(GET "/health/live", "live", "health", OK, public: true, command: false,
                "Is the process up", "Answers 200 as long as the process runs."),
            |_state: AppState, ctx: Ctx, _: Empty, _: Empty, _: Empty| async move {
                allow(&ctx, Action::ReadPublic)?;
                Ok(Reply::ok(Health { status: "live".into() }))
            },
        )
        .op(
            op!(GET "/health/ready", "ready", "health", OK, public: true, command: false,
                "Is the process ready", "Answers 200 when the database answers, 503 otherwise."),
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, _: Empty| async move {
                allow(&ctx, Action::ReadPublic)?;
                state.database_ready().await.map_err(|e| database(&e))?;
                Ok(Reply::ok(Health { status: "ready".into() }))
            },
        )
        .op(
            Op {
                unhealthy_503: true,
                ..op!(GET "/health/integration", "integrationHealth", "health", OK, public: true, command: false,
                    "Is the whole chain working",
                    "Runs the integration probe (or answers with a result at most a few seconds old): an HTTP command on the probe's reserved tenant, its event, its projection row, its delivery to an internal subscriber, a workflow step, each timed; plus the alerts (a failing probe, unprocessed events, failed events, stuck workflows). 200 when the probe passed (`status` ok, or degraded when an alert is active), 503 naming the hop that broke.")
            },
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, _: Empty| async move {
                allow(&ctx, Action::ReadPublic)?;
                let health = integration_health(&state).await?;
                let status = if health.status == crate::probe::HealthStatus::Failing {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                Ok(Reply { status, body: health })
            },
        )
        .raw::<Empty, String, _, _>(
            op!(GET "/metrics", "metrics", "health", OK, public: true, command: false,
                "Metrics for Prometheus",
                "Events appended and failed by type, unprocessed and failed events now, dispatch and handler latency, workflows by status, step retries, realtime subscribers and delivery latency, HTTP requests by route and status, the probe's hops, and the alerts."),
            crate::api::Produces::OpenMetrics,
            |state: AppState, ctx: Ctx, _: Empty, _parts: axum::http::request::Parts| async move {
                let grant = allow(&ctx, Action::ReadPublic)?;
                let system = reads::system_health(state.db(), &grant, state.options().thresholds)
                    .await
                    .map_err(read_problem)?;
                let alerts = match state.probe_state().last() {
                    Some((_, report)) => crate::probe::alerts(&system, &report),
                    None => crate::probe::alerts(&system, &crate::probe::ProbeReport {
                        ok: true,
                        at: chrono::Utc::now(),
                        correlation_id: CorrelationId::new_v7(),
                        broken: None,
                        hops: Vec::new(),
                        total_ms: 0.0,
                    }),
                };
                crate::probe::set_gauges(&system, &alerts);
                Ok(axum::response::IntoResponse::into_response((
                    [(axum::http::header::CONTENT_TYPE, cairn_observe::CONTENT_TYPE)],
                    cairn_observe::metrics().render(),
                )))
            },
        )
        .op(
            op!(GET "/v1/openapi.json", "openapi", "contracts", OK, public: true, command: false,
                "This API's OpenAPI 3.1 document", "Generated from the route table that serves the API."),
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, _: Empty| async move {
                allow(&ctx, Action::ReadPublic)?;
                Ok(Reply::ok(state.openapi().clone()))
            },
        )
        .op(
            op!(GET "/v1/asyncapi.json", "asyncapi", "contracts", OK, public: true, command: false,
                "The event contracts, as AsyncAPI 3.0", "Every stream type and event type with its payload schema and the metadata envelope, generated from the event registry."),
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, _: Empty| async move {
                allow(&ctx, Action::ReadPublic)?;
                Ok(Reply::ok(state.asyncapi().clone()))
            },
        )
        .op(
            op!(POST "/v1/organizations", "bootstrapOrganization", "organizations", ACCEPTED, public: false, command: true,
                "Bootstrap an organization",
                "Records the request and starts the bootstrap workflow in one transaction, then answers at once. Follow the workflow at /v1/workflows/{workflow_id}.",
                links: BOOTSTRAP_LINKS),
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, body: BootstrapRequest| async move {
                let accepted: BootstrapAccepted = state.domain().bootstrap(&ctx.command(), &body).await.map_err(command_problem)?;
                Ok(Reply::accepted(accepted))
            },
        )
        .op(
            op!(GET "/v1/organizations", "listOrganizations", "organizations", OK, public: false, command: false,
                "List organizations", "The organizations the caller may see, oldest first."),
            |state: AppState, ctx: Ctx, _: Empty, query: PageQuery<OrgId>, _: Empty| async move {
                let grant = allow(&ctx, Action::ListOrganizations)?;
                let limit = limit(query.limit)?;
                let items: Vec<Organization> = reads::organizations(state.db(), &grant, QueryPage { after: query.after, limit })
                    .await
                    .map_err(read_problem)?;
                Ok(Reply::ok(page(items, limit, |o| o.id.to_string())))
            },
        )
        .op(
            op!(GET "/v1/organizations/{org_id}", "getOrganization", "organizations", OK, public: false, command: false,
                "Read an organization", "One organization, with its status and direct-care settings."),
            |state: AppState, ctx: Ctx, path: OrgPath, _: Empty, _: Empty| async move {
                let grant = allow(&ctx, Action::ReadOrganization(path.org_id))?;
                let org = reads::organization(state.db(), &grant, path.org_id).await.map_err(read_problem)?;
                org.map(Reply::ok).ok_or_else(|| not_found("organization", &path.org_id))
            },
        )
        .op(
            op!(PUT "/v1/organizations/{org_id}/direct-care-settings", "updateDirectCareSettings", "organizations", OK, public: false, command: true,
                "Change direct-care settings", "Records organization.direct_care_settings_updated and answers the settings as stored."),
            |state: AppState, ctx: Ctx, path: OrgPath, _: Empty, body: DirectCareSettings| async move {
                state
                    .domain()
                    .update_direct_care_settings(&ctx.command(), path.org_id, &body)
                    .await
                    .map_err(command_problem)?;
                Ok(Reply::ok(body))
            },
        )
        .op(
            op!(GET "/v1/organizations/{org_id}/users", "listUsers", "organizations", OK, public: false, command: false,
                "List an organization's users", "Active and invited users with their roles, oldest first."),
            |state: AppState, ctx: Ctx, path: OrgPath, query: PageQuery<UserId>, _: Empty| async move {
                let grant = allow(&ctx, Action::ReadUsers(path.org_id))?;
                let limit = limit(query.limit)?;
                let items: Vec<User> = reads::users(state.db(), &grant, path.org_id, QueryPage { after: query.after, limit })
                    .await
                    .map_err(read_problem)?;
                Ok(Reply::ok(page(items, limit, |u| u.id.to_string())))
            },
        )
        .op(
            op!(GET "/v1/organizations/{org_id}/users/{user_id}", "getUser", "organizations", OK, public: false, command: false,
                "Read a user", "One user of the organization, with their roles."),
            |state: AppState, ctx: Ctx, path: OrgUserPath, _: Empty, _: Empty| async move {
                let grant = allow(&ctx, Action::ReadUsers(path.org_id))?;
                let user = reads::user(state.db(), &grant, path.org_id, path.user_id).await.map_err(read_problem)?;
                user.map(Reply::ok).ok_or_else(|| not_found("user", &path.user_id))
            },
        )
        .op(
            op!(GET "/v1/organizations/{org_id}/invitations", "listInvitations", "invitations", OK, public: false, command: false,
                "List an organization's invitations", "Every invitation with its status, oldest first."),
            |state: AppState, ctx: Ctx, path: OrgPath, query: PageQuery<InvitationId>, _: Empty| async move {
                let grant = allow(&ctx, Action::ReadInvitations(path.org_id))?;
                let limit = limit(query.limit)?;
                let items: Vec<Invitation> =
                    reads::invitations(state.db(), &grant, path.org_id, QueryPage { after: query.after, limit })
                        .await
                        .map_err(read_problem)?;
                Ok(Reply::ok(page(items, limit, |i| i.id.to_string())))
            },
        )
        .op(
            op!(POST "/v1/organizations/{org_id}/invitations", "invite", "invitations", ACCEPTED, public: false, command: true,
                "Invite someone",
                "Records user.invited and starts the workflow that mails the invitation, in one transaction.",
                links: INVITATION_LINKS),
            |state: AppState, ctx: Ctx, path: OrgPath, _: Empty, body: InviteeRequest| async move {
                let started: InvitationStarted =
                    state.domain().invite(&ctx.command(), path.org_id, &body).await.map_err(command_problem)?;
                Ok(Reply::accepted(started))
            },
        )
        .op(
            op!(GET "/v1/invitations/{invitation_id}", "getInvitation", "invitations", OK, public: false, command: false,
                "Read an invitation", "One invitation with its status; its token is never shown."),
            |state: AppState, ctx: Ctx, path: InvitationPath, _: Empty, _: Empty| async move {
                let grant = allow(&ctx, Action::FindInvitation)?;
                let found = reads::invitation(state.db(), &grant, path.invitation_id).await.map_err(read_problem)?;
                found.map(Reply::ok).ok_or_else(|| not_found("invitation", &path.invitation_id))
            },
        )
        .op(
            op!(POST "/v1/invitations/{invitation_id}/resend", "resendInvitation", "invitations", ACCEPTED, public: false, command: true,
                "Send an invitation again", "A pending or expired invitation is mailed again with a new token (the old link stops working) and a new expiry.",
                links: INVITATION_LINKS),
            |state: AppState, ctx: Ctx, path: InvitationPath, _: Empty, _: Empty| async move {
                let started: InvitationStarted = state
                    .domain()
                    .resend_invitation(&ctx.command(), path.invitation_id)
                    .await
                    .map_err(command_problem)?;
                Ok(Reply::accepted(started))
            },
        )
        .op(
            op!(POST "/v1/invitations/{invitation_id}/revoke", "revokeInvitation", "invitations", OK, public: false, command: true,
                "Withdraw an invitation", "A pending invitation is revoked; its link stops working."),
            |state: AppState, ctx: Ctx, path: InvitationPath, _: Empty, body: RevokeRequest| async move {
                state
                    .domain()
                    .revoke_invitation(&ctx.command(), path.invitation_id, &body.reason)
                    .await
                    .map_err(command_problem)?;
                Ok(Reply::ok(Revoked {
                    invitation_id: path.invitation_id,
                    status: "revoked".into(),
                }))
            },
        )
        .op(
            op!(POST "/v1/invitations/accept", "acceptInvitation", "invitations", OK, public: true, command: true,
                "Accept an invitation", "The token from the invitation link is the credential. It works once."),
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, body: AcceptRequest| async move {
                let accepted: InvitationAcceptance =
                    state.domain().accept_invitation(&ctx.command(), &body.token).await.map_err(command_problem)?;
                Ok(Reply::ok(accepted))
            },
        )
        .op(
            op!(GET "/v1/workflows", "listWorkflows", "workflows", OK, public: false, command: false,
                "List workflow runs", "The runs the caller may see, oldest first, with their status and current step."),
            |state: AppState, ctx: Ctx, _: Empty, query: WorkflowsQuery, _: Empty| async move {
                let grant = allow(&ctx, Action::ListWorkflows)?;
                let limit = limit(query.limit)?;
                if let Some(kind) = &query.kind
                    && (kind.is_empty()
                        || kind.len() > 128
                        || !kind.starts_with(|c: char| c.is_ascii_lowercase())
                        || !kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
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
                let items: Vec<Run> = reads::workflows(state.db(), &grant, filter).await.map_err(read_problem)?;
                Ok(Reply::ok(page(items, limit, |r| r.id.to_string())))
            },
        )
        .op(
            op!(GET "/v1/workflows/{workflow_id}", "getWorkflow", "workflows", OK, public: false, command: false,
                "Read a workflow run", "Its status, current step, failure, and every step with its attempts, times and last error."),
            |state: AppState, ctx: Ctx, path: WorkflowPath, _: Empty, _: Empty| async move {
                let grant = allow(&ctx, Action::ListWorkflows)?;
                let run: Option<RunWithSteps> = reads::workflow(state.db(), &grant, path.workflow_id).await.map_err(read_problem)?;
                run.map(Reply::ok).ok_or_else(|| not_found("workflow run", &path.workflow_id))
            },
        )
        .op(
            op!(GET "/v1/events", "listEvents", "events", OK, public: false, command: false,
                "List events", "Events the caller may see, in position order."),
            |state: AppState, ctx: Ctx, _: Empty, query: EventsQuery, _: Empty| async move {
                let grant = allow(&ctx, Action::ListEvents)?;
                let limit = limit(query.limit)?;
                let filter = EventFilter {
                    after: negative_after(query.after)?,
                    limit: Some(limit),
                    stream_id: query.stream_id,
                    stream_type: query.stream_type,
                    event_type: query.event_type,
                    correlation_id: query.correlation_id,
                    ..EventFilter::default()
                };
                let items = reads::events(state.db(), &grant, filter).await.map_err(read_problem)?;
                Ok(Reply::ok(event_page(items, limit)))
            },
        )
        .op(
            op!(POST "/v1/probe/pings", "probePing", "health", ACCEPTED, public: false, command: true,
                "The integration probe's synthetic command",
                "Appends a `probe.pinged` event on the probe's reserved tenant and starts the one-step probe workflow, and answers with the event's processing outcome (it does not fail on it, so that the probe can tell a broken projection from a broken request). Scope `health:probe`; the probe signs its own requests."),
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, _: Empty| async move {
                allow(&ctx, Action::RunProbe)?;
                let ping = state.domain().ping(&ctx.command()).await.map_err(command_problem)?;
                Ok(Reply::accepted(ping))
            },
        )
        .op(
            op!(GET "/v1/traces/{correlation_id}", "getTrace", "traces", OK, public: false, command: false,
                "A request's timeline",
                "Every hop one request caused, in order, with the time each took and any error: the HTTP request, each event appended and its handler, each workflow step and attempt, each email, each realtime delivery. Confined to the caller's tenancy."),
            |state: AppState, ctx: Ctx, path: TracePath, _: Empty, _: Empty| async move {
                let grant = allow(&ctx, Action::ReadTrace)?;
                // Spans are written in the background: let the queue drain first.
                state.db().flush_spans().await;
                let timeline = cairn_trace::timeline(state.db(), &grant, path.correlation_id)
                    .await
                    .map_err(|error| match error {
                        cairn_trace::TraceError::Database(e) => database(&e),
                        other => Problem::internal(&other),
                    })?;
                timeline
                    .map(Reply::ok)
                    .ok_or_else(|| not_found("trace with correlation id", &path.correlation_id))
            },
        )
        .raw::<crate::stream::StreamQuery, cairn_realtime::Message, _, _>(
            op!(GET "/v1/events/stream", "streamEvents", "events", OK, public: false, command: false,
                "Follow events live (Server-Sent Events)",
                "Events the caller may receive, as they are committed, each with the views of its stream: catch-up from the log after `Last-Event-ID` (or `after`), then live, with no gap and no duplicate. The policy decides at subscribe time (scope `events:subscribe`, or an organization admin for their own organization) and again for every event. Heartbeats keep the connection alive; a token that expires ends the stream with an `end` message saying where to resume."),
            crate::api::Produces::EventStream,
            crate::stream::sse,
        )
        .raw::<crate::stream::StreamQuery, cairn_realtime::Message, _, _>(
            op!(GET "/v1/events/ws", "socketEvents", "events", OK, public: false, command: false,
                "Follow events live (WebSocket)",
                "The feed of /v1/events/stream over a WebSocket: one JSON message per text frame, `after` to resume. The server pings every heartbeat and closes a connection that stops answering; close code 4001 means the token expired."),
            crate::api::Produces::WebSocket,
            crate::stream::websocket,
        )
        .op(
            op!(GET "/v1/events/failed", "listFailedEvents", "events", OK, public: false, command: false,
                "List failed events", "Events whose processing failed, with their codes and messages."),
            |state: AppState, ctx: Ctx, _: Empty, query: FailedEventsQuery, _: Empty| async move {
                let grant = allow(&ctx, Action::ListEvents)?;
                let limit = limit(query.limit)?;
                let filter = EventFilter {
                    after: negative_after(query.after)?,
                    limit: Some(limit),
                    stream_type: query.stream_type,
                    failed: true,
                    error_code: query.code,
                    ..EventFilter::default()
                };
                let items = reads::events(state.db(), &grant, filter).await.map_err(read_problem)?;
                Ok(Reply::ok(event_page(items, limit)))
            },
        )
        .op(
            op!(GET "/v1/events/{event_id}", "getEvent", "events", OK, public: false, command: false,
                "Read an event", "One event with its processing status."),
            |state: AppState, ctx: Ctx, path: EventPath, _: Empty, _: Empty| async move {
                let grant = allow(&ctx, Action::ListEvents)?;
                let event = reads::event(state.db(), &grant, path.event_id).await.map_err(read_problem)?;
                event.map(Reply::ok).ok_or_else(|| not_found("event", &path.event_id))
            },
        )
        .op(
            Op {
                idempotency_key: false,
                ..op!(POST "/v1/events/{event_id}/retry", "retryEvent", "events", OK, public: false, command: true,
                    "Retry a failed event", "Dispatches the event again and records the new outcome. A repeat after a success answers 409: the event is no longer failed.")
            },
            |state: AppState, ctx: Ctx, path: EventPath, _: Empty, _: Empty| async move {
                allow(&ctx, Action::RetryEvents)?;
                let retried: Dispatched = state.domain().store().retry(path.event_id).await.map_err(|error| match error {
                    RetryError::NotFound { .. } => Problem::new(ProblemCode::NotFound, error.to_string()),
                    RetryError::NotFailed { .. } => Problem::new(ProblemCode::Conflict, error.to_string()),
                    RetryError::Database(e) => database(&e),
                    RetryError::Read(e) => Problem::internal(&e),
                })?;
                Ok(Reply::ok(retried))
            },
        )
        .op(
            Op {
                idempotency_key: false,
                ..op!(POST "/v1/events/retry-failed", "retryFailedEvents", "events", OK, public: false, command: true,
                    "Retry every failed event", "Retries the failed events the filters match, oldest first, each in its own transaction. Safe to repeat: a repeat retries what is still failed.")
            },
            |state: AppState, ctx: Ctx, _: Empty, _: Empty, body: RetryFailedRequest| async move {
                allow(&ctx, Action::RetryEvents)?;
                let selection = RetrySelection {
                    code: body.code,
                    stream_type: body.stream_type,
                };
                let report: RetryReport = state
                    .domain()
                    .store()
                    .retry_failed(&selection, &mut |_, _| {})
                    .await
                    .map_err(|error| match error {
                        RetryError::Database(e) => database(&e),
                        other => Problem::internal(&other),
                    })?;
                Ok(Reply::ok(report))
            },
        )
}

/// The value type of a served contract document.
pub type Document = Value;

/// The chain's health: a probe result and the alerts.
async fn integration_health(state: &AppState) -> Result<crate::probe::IntegrationHealth, Problem> {
    let grant = allow_principal(&cairn_policy::Principal::Anonymous, Action::ReadPublic)?;
    let (age, probe) = crate::probe::probe(state, state.options().probe_max_age).await;
    let system = reads::system_health(state.db(), &grant, state.options().thresholds)
        .await
        .map_err(read_problem)?;
    let alerts = crate::probe::alerts(&system, &probe);
    crate::probe::set_gauges(&system, &alerts);
    let status = if !probe.ok {
        crate::probe::HealthStatus::Failing
    } else if alerts.iter().any(|alert| alert.active) {
        crate::probe::HealthStatus::Degraded
    } else {
        crate::probe::HealthStatus::Ok
    };
    Ok(crate::probe::IntegrationHealth {
        status,
        probe,
        probe_age_ms: age.as_secs_f64() * 1_000.0,
        alerts,
        system,
    })
}
