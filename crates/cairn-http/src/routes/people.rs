//! A person's life in their organization: their roles, and their access withdrawn and
//! given back.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use cairn_domain::{PersonStanding, RolesRequest};
use cairn_types::UserId;

use super::command_problem;
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::Problem;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPath {
    pub user_id: UserId,
}

/// Why a person is deactivated.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivationRequest {
    /// 1 to 500 characters, not only spaces, no control characters but tabs and newlines.
    #[schemars(
        length(min = 1, max = 500),
        pattern(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
    )]
    pub reason: String,
}

/// Roles, deactivation and reactivation.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(PUT "/v1/users/{user_id}/roles", "changeRoles", "users", OK, public: false, command: true,
            "Change a person's roles",
            "Records user.roles_changed with the whole new set, for someone who accepted their invitation (an invited person's roles are their invitation's). Their tokens are honoured only for the roles they still hold: a role taken away stops working at once; a role given works with their next token. Taking away the admin role of the organization's only active admin is 409. The person's organization admin or a platform administrator may."),
        change_roles,
    )
    .op(
        op!(POST "/v1/users/{user_id}/deactivate", "deactivateUser", "users", OK, public: false, command: true,
            "Deactivate a person",
            "Records user.deactivated with the reason: the person's tokens stop working in the API, the live feed and the console (within a second in every process) until they are reactivated. Deactivating the organization's only active admin, or yourself, is 409; deactivating someone deactivated returns where they stand."),
        deactivate_user,
    )
    .op(
        op!(POST "/v1/users/{user_id}/reactivate", "reactivateUser", "users", OK, public: false, command: true,
            "Reactivate a person",
            "Records user.reactivated: the person's tokens work again. Reactivating someone active returns where they stand."),
        reactivate_user,
    )
}

/// `PUT /v1/users/{user_id}/roles`.
async fn change_roles(
    state: AppState,
    ctx: Ctx,
    path: UserPath,
    _: Empty,
    body: RolesRequest,
) -> Result<Reply<PersonStanding>, Problem> {
    let standing = state
        .domain()
        .change_roles(&ctx.command(), path.user_id, &body)
        .await
        .map_err(command_problem)?;
    state.standings().forget(path.user_id);
    Ok(Reply::ok(standing))
}

/// `POST /v1/users/{user_id}/deactivate`.
async fn deactivate_user(
    state: AppState,
    ctx: Ctx,
    path: UserPath,
    _: Empty,
    body: DeactivationRequest,
) -> Result<Reply<PersonStanding>, Problem> {
    let standing = state
        .domain()
        .deactivate_user(&ctx.command(), path.user_id, &body.reason)
        .await
        .map_err(command_problem)?;
    state.standings().forget(path.user_id);
    Ok(Reply::ok(standing))
}

/// `POST /v1/users/{user_id}/reactivate`.
async fn reactivate_user(
    state: AppState,
    ctx: Ctx,
    path: UserPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<PersonStanding>, Problem> {
    let standing = state
        .domain()
        .reactivate_user(&ctx.command(), path.user_id)
        .await
        .map_err(command_problem)?;
    state.standings().forget(path.user_id);
    Ok(Reply::ok(standing))
}
