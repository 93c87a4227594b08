//! The operations of the API, each registered with its types in [`api`].
//!
//! Every handler asks the policy first ([`allow`]); reads go through
//! `cairn_domain::reads` with the grant, commands through the domain, which asks the
//! policy again for the exact tenant.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_domain::CommandError;
use cairn_domain::reads::ReadsError;
use cairn_log::RecordedEvent;
use cairn_policy::{Action, Denial, Grant, authorize};
use cairn_types::Position;

use crate::api::Api;
use crate::context::Ctx;
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
pub(crate) fn database(error: &cairn_log::DbError) -> Problem {
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

pub(crate) fn read_problem(error: ReadsError) -> Problem {
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

// The resource modules use `op!`, so they are declared after it.
mod documents;
mod events;
mod health;
mod invitations;
mod organizations;
mod workflows;

pub use documents::Document;
pub(crate) use events::retry_problem;
pub use events::{EventPath, EventsQuery, FailedEventsQuery, RetryFailedRequest, TracePath};
pub use health::Health;
pub(crate) use health::integration_health;
pub use invitations::{AcceptRequest, InvitationPath, RevokeRequest, Revoked};
pub use organizations::{OrgPath, OrgUserPath};
pub(crate) use workflows::valid_kind;
pub use workflows::{WorkflowPath, WorkflowsQuery};

/// Every operation of the API.
pub fn api() -> Api {
    // The order is part of the contract: it is the order of the route table, and
    // schemas that share a name (`Page`, `PageQuery`) are numbered in it.
    let api = health::ops(Api::new());
    let api = documents::ops(api);
    let api = organizations::ops(api);
    let api = invitations::ops(api);
    let api = workflows::ops(api);
    let api = events::list_ops(api);
    let api = health::probe_ops(api);
    let api = events::trace_ops(api);
    events::ops(api)
}
