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
        CommandError::Append(
            error @ cairn_log::AppendError::Seal {
                error: cairn_log::SealError::Erased { .. } | cairn_log::SealError::Restricted { .. },
                ..
            },
        ) => Problem::new(ProblemCode::Conflict, error.to_string()),
        CommandError::Append(error @ cairn_log::AppendError::Held { cause, .. }) => Problem::new(
            match cause {
                cairn_log::HoldCause::Failed => ProblemCode::Held,
                cairn_log::HoldCause::Paused => ProblemCode::Paused,
            },
            error.to_string(),
        ),
        CommandError::NotApplied { .. } => Problem::new(ProblemCode::Internal, error.to_string()),
        CommandError::Append(e) => Problem::internal(&e),
    }
}

/// Why: the body of a pause, a resume or a skip.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Because {
    pub reason: cairn_types::Reason,
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
mod handlers;
mod health;
mod invitations;
mod organizations;
mod people;
mod subjects;
mod workflows;

pub use documents::Document;
pub(crate) use events::retry_problem;
pub use events::{EventPath, EventsQuery, FailedEventsQuery, RetryFailedRequest, TracePath};
pub(crate) use handlers::route_control_problem;
pub use handlers::{HandlerRouteInfo, HeldQuery, RouteDecision};
pub use health::Health;
pub(crate) use health::integration_health;
pub use invitations::{AcceptRequest, InvitationPath, RevokeRequest, Revoked};
pub use organizations::{OrgPath, OrgUserPath};
pub use subjects::{ErasureRequest, SubjectPath};
pub use workflows::{KindPath, WorkflowKind, WorkflowPath, WorkflowsQuery};
pub(crate) use workflows::{valid_kind, workflow_control_problem};

/// Every operation of the API.
pub fn api() -> Api {
    // The order is part of the contract: it is the order of the route table, and
    // schemas that share a name (`Page`, `PageQuery`) are numbered in it.
    let api = health::ops(Api::new());
    let api = documents::ops(api);
    let api = organizations::ops(api);
    let api = invitations::ops(api);
    let api = subjects::ops(api);
    let api = people::ops(api);
    let api = workflows::ops(api);
    let api = events::list_ops(api);
    let api = health::probe_ops(api);
    let api = events::trace_ops(api);
    let api = events::ops(api);
    handlers::ops(api)
}

/// Properties of the cursors of the list operations: whatever `after` and `limit` a
/// caller sends, the answer is a page (a size of 1 to 200 and a position of 0 or
/// more) or a problem naming the field at fault. To run them at volume:
/// `PROPTEST_CASES=100000 cargo test -p cairn-http --lib cursor_properties`.
#[cfg(test)]
mod cursor_properties {
    use axum::http::Request;
    use proptest::prelude::*;

    use super::{EventsQuery, FailedEventsQuery, PageQuery, limit, negative_after, page};
    use crate::input::{self, Empty, Fields};
    use crate::problem::{Location, Problem, ProblemCode};
    use cairn_types::{OrgId, Position};

    fn config() -> ProptestConfig {
        // PROPTEST_CASES in the environment overrides the default count.
        ProptestConfig {
            cases: ProptestConfig::default().cases.max(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn encode(pairs: &[(&str, &str)]) -> String {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (name, value) in pairs {
            serializer.append_pair(name, value);
        }
        serializer.finish()
    }

    /// The page `GET /v1/events` would read for this query string, as its handler
    /// reads it.
    fn events_page(raw: &str) -> Result<(u32, Position), Problem> {
        let parts = Request::builder()
            .uri(format!("/v1/events?{raw}"))
            .body(())
            .expect("an encoded query is a URI")
            .into_parts()
            .0;
        let query =
            input::query::<EventsQuery>(&parts, &Fields::of::<Empty, EventsQuery, Empty>())?;
        let limit = limit(query.limit)?;
        Ok((limit, negative_after(query.after)?))
    }

    fn failed_page(raw: &str) -> Result<(u32, Position), Problem> {
        let parts = Request::builder()
            .uri(format!("/v1/events/failed?{raw}"))
            .body(())
            .expect("an encoded query is a URI")
            .into_parts()
            .0;
        let query = input::query::<FailedEventsQuery>(
            &parts,
            &Fields::of::<Empty, FailedEventsQuery, Empty>(),
        )?;
        let limit = limit(query.limit)?;
        Ok((limit, negative_after(query.after)?))
    }

    fn org_page(raw: &str) -> Result<(u32, Option<OrgId>), Problem> {
        let parts = Request::builder()
            .uri(format!("/v1/organizations?{raw}"))
            .body(())
            .expect("an encoded query is a URI")
            .into_parts()
            .0;
        let query = input::query::<PageQuery<OrgId>>(
            &parts,
            &Fields::of::<Empty, PageQuery<OrgId>, Empty>(),
        )?;
        Ok((limit(query.limit)?, query.after))
    }

    /// The one field a problem names, in the query string.
    fn named_field(problem: &Problem) -> Option<&str> {
        match (problem.code, problem.errors.as_slice()) {
            (ProblemCode::InvalidField, [error]) if error.location == Location::Query => {
                Some(error.field.as_str())
            }
            _ => None,
        }
    }

    fn number_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-3_i64..260).prop_map(|n| n.to_string()),
            any::<u128>().prop_map(|n| n.to_string()),
            "[0-9]{0,3}(\\.[0-9])?",
            "( |\\+|-|0x)?[0-9]{1,3}( )?",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn whole_numbers_give_a_page_or_name_the_field(
            after in prop::option::of(any::<i64>()),
            size in prop::option::of(prop_oneof![any::<u64>(), 0_u64..260]),
        ) {
            let after_text = after.map(|n| n.to_string());
            let size_text = size.map(|n| n.to_string());
            let mut pairs = Vec::new();
            if let Some(text) = &after_text {
                pairs.push(("after", text.as_str()));
            }
            if let Some(text) = &size_text {
                pairs.push(("limit", text.as_str()));
            }
            let raw = encode(&pairs);
            let size_ok = size.is_none_or(|n| (1..=200).contains(&n));
            let after_ok = after.is_none_or(|n| n >= 0);
            for result in [events_page(&raw), failed_page(&raw)] {
                match result {
                    Ok((got_limit, got_after)) => {
                        prop_assert!(size_ok && after_ok, "{raw} gave a page");
                        prop_assert_eq!(u64::from(got_limit), size.unwrap_or(50));
                        prop_assert_eq!(got_after.get(), after.unwrap_or(0));
                    }
                    Err(problem) => {
                        let field = named_field(&problem);
                        prop_assert!(
                            (field == Some("limit") && !size_ok)
                                || (field == Some("after") && !after_ok),
                            "{raw}: {problem:?}"
                        );
                        prop_assert_eq!(problem.status, 400);
                    }
                }
            }
        }

        #[test]
        fn any_text_gives_a_page_or_names_the_field(
            after in prop::option::of(number_text()),
            size in prop::option::of(number_text()),
        ) {
            let mut pairs = Vec::new();
            if let Some(text) = &after {
                pairs.push(("after", text.as_str()));
            }
            if let Some(text) = &size {
                pairs.push(("limit", text.as_str()));
            }
            let raw = encode(&pairs);
            match events_page(&raw) {
                Ok((got_limit, got_after)) => {
                    prop_assert!((1..=200).contains(&got_limit));
                    prop_assert!(got_after.get() >= 0);
                }
                Err(problem) => {
                    let field = named_field(&problem);
                    prop_assert!(
                        (field == Some("limit") && size.is_some())
                            || (field == Some("after") && after.is_some()),
                        "{raw}: {problem:?}"
                    );
                }
            }
            match org_page(&raw) {
                Ok((got_limit, got_after)) => {
                    prop_assert!((1..=200).contains(&got_limit));
                    prop_assert_eq!(got_after.is_some(), after.is_some());
                }
                Err(problem) => {
                    let field = named_field(&problem);
                    prop_assert!(
                        (field == Some("limit") && size.is_some())
                            || (field == Some("after") && after.is_some()),
                        "{raw}: {problem:?}"
                    );
                }
            }
        }

        #[test]
        fn a_full_page_points_past_its_last_item(
            items in prop::collection::vec(any::<i64>(), 0..20),
            size in 1_u32..20,
        ) {
            let given = items.clone();
            let page = page(items, size, |item| item.to_string());
            let full = given.len() == size as usize;
            prop_assert_eq!(page.next_cursor.is_some(), full && !given.is_empty());
            if let Some(cursor) = page.next_cursor {
                prop_assert_eq!(Some(cursor), given.last().map(i64::to_string));
            }
            prop_assert_eq!(page.items, given);
        }
    }
}
