//! People as data subjects: where one stands, and their erasure at their request.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use cairn_domain::{Disclosure, ErasureReceipt, RestrictionReceipt, SubjectStatus};
use cairn_types::UserId;

use super::command_problem;
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::{FieldProblem, Location, Problem, ProblemCode};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectPath {
    /// The person's user id.
    pub subject_id: UserId,
}

/// Why a person is erased.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// 1 to 500 characters, not only spaces, no control characters but tabs and
    /// newlines. Kept with the erasure: it must not carry the person's own data.
    #[schemars(
        length(min = 1, max = 500),
        pattern(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
}

/// Why a person is restricted, and when they are erased.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestrictionRequest {
    /// 1 to 500 characters, not only spaces, no control characters but tabs and
    /// newlines. Kept with the restriction: it must not carry the person's own data.
    #[schemars(
        length(min = 1, max = 500),
        pattern(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
    /// How many days from now the retention period ends and the person is erased: 1 to
    /// 10,957 (30 years). The receipt says when, as `erase_at`.
    #[schemars(range(min = 1, max = 10_957))]
    #[serde(deserialize_with = "cairn_domain::model::whole_number")]
    pub retain_days: u32,
}

/// Why a person's data is disclosed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DisclosureRequest {
    /// The legal claim it is for: 1 to 500 characters, not only spaces, no control
    /// characters but tabs and newlines. Kept in the access log with the disclosure: it
    /// must not carry the person's own data.
    #[schemars(
        length(min = 1, max = 500),
        pattern(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
}

/// Where a person stands, and their erasure.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/subjects/{subject_id}", "getSubject", "subjects", OK, public: false, command: false,
            "Where a person stands",
            "Active; restricted until an erasure, with the restriction's receipt; or erased, with the erasure's receipt (and the restriction's, when one came first). A person of another organization, or nobody, is 404."),
        get_subject,
    )
    .op(
        op!(POST "/v1/subjects/{subject_id}/restriction", "restrictSubject", "subjects", OK, public: false, command: true,
            "Restrict a person now and erase them when a retention period ends",
            "For a person who asked to be erased while the organization must keep their records for a while longer (GDPR art. 17(3)(b), art. 18). One unit of work withholds every name and address of theirs from every read (they stay sealed in the log, under their key), empties their rows, refuses any new personal data about them, records user.restricted with no personal data, and starts a run that sleeps on a durable timer for retain_days and then erases them as POST /v1/subjects/{subject_id}/erasure does (the receipt's erase_at says when). Erasing them sooner is allowed. The person's organization admin or a platform administrator may. Restricting again returns the first receipt, with repeated: true; an erased person is 409."),
        restrict_subject,
    )
    .op(
        Op {
            // Its answer holds personal data: never stored under a key to be repeated.
            idempotency_key: false,
            ..op!(POST "/v1/subjects/{subject_id}/disclosure", "discloseSubject", "subjects", OK, public: false, command: true,
            "Disclose what the log holds about a person, for a legal claim",
            "Every personal field of the person the log holds (names, addresses), with the event that recorded each, opened from their seals even while they are restricted: GDPR art. 18(2) lets restricted data be used to establish, exercise or defend legal claims. Their data stays withheld from every other read. The disclosure is put on record in the access log with its reason before it is returned (a disclosure that cannot be recorded is refused). The person's organization admin or a platform administrator may. An erased person has nothing left to disclose: 409.")
        },
        disclose_subject,
    )
    .op(
        op!(POST "/v1/subjects/{subject_id}/erasure", "eraseSubject", "subjects", OK, public: false, command: true,
            "Erase a person at their request",
            "One unit of work destroys the person's data key (every name and address sealed under it can never be read again), records user.erased with no personal data, and empties their rows; the outbox's copies of their invitations are removed after it. The person's organization admin or a platform administrator may. Erasing again returns the first receipt, with repeated: true."),
        erase_subject,
    )
}

/// `GET /v1/subjects/{subject_id}`: where a person stands.
async fn get_subject(
    state: AppState,
    ctx: Ctx,
    path: SubjectPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<SubjectStatus>, Problem> {
    let status = state
        .domain()
        .subject_status(&ctx.command(), path.subject_id)
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(status))
}

/// `POST /v1/subjects/{subject_id}/restriction`: restricts a person until their
/// erasure.
async fn restrict_subject(
    state: AppState,
    ctx: Ctx,
    path: SubjectPath,
    _: Empty,
    body: RestrictionRequest,
) -> Result<Reply<RestrictionReceipt>, Problem> {
    if !(1..=10_957).contains(&body.retain_days) {
        return Err(Problem::field(
            ProblemCode::InvalidField,
            FieldProblem {
                field: "retain_days".into(),
                location: Location::Body,
                expected_location: None,
                message: format!("give 1 to 10957 days (30 years), not {}", body.retain_days),
            },
        ));
    }
    let receipt = state
        .domain()
        .restrict_subject_for(
            &ctx.command(),
            path.subject_id,
            &body.reason,
            chrono::Duration::days(i64::from(body.retain_days)),
        )
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(receipt))
}

/// `POST /v1/subjects/{subject_id}/erasure`: erases a person.
async fn erase_subject(
    state: AppState,
    ctx: Ctx,
    path: SubjectPath,
    _: Empty,
    body: ErasureRequest,
) -> Result<Reply<ErasureReceipt>, Problem> {
    let receipt = state
        .domain()
        .erase_subject(&ctx.command(), path.subject_id, &body.reason)
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(receipt))
}

/// `POST /v1/subjects/{subject_id}/disclosure`: discloses what the log holds about a
/// person, for a legal claim.
async fn disclose_subject(
    state: AppState,
    ctx: Ctx,
    path: SubjectPath,
    _: Empty,
    body: DisclosureRequest,
) -> Result<Reply<Disclosure>, Problem> {
    let disclosure = state
        .domain()
        .disclose_subject(
            &ctx.command(),
            path.subject_id,
            &body.reason,
            cairn_log::AccessVia::Api,
        )
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(disclosure))
}
