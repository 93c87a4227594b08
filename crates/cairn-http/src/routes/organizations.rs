//! Organizations: their bootstrap, their direct-care settings and their users.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use cairn_domain::model::DirectCareSettings;
use cairn_domain::reads::{self, Organization, Page as QueryPage, User};
use cairn_domain::{BootstrapAccepted, BootstrapRequest};
use cairn_policy::Action;
use cairn_types::{OrgId, UserId};

use super::{Page, PageQuery, allow, command_problem, limit, not_found, page, read_problem};
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::Problem;

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

/// The organizations and their users.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(POST "/v1/organizations", "bootstrapOrganization", "organizations", ACCEPTED, public: false, command: true,
            "Bootstrap an organization",
            "Records the request and starts the bootstrap workflow in one transaction, then answers at once. Follow the workflow at /v1/workflows/{workflow_id}.",
            links: BOOTSTRAP_LINKS),
        bootstrap_organization,
    )
    .op(
        op!(GET "/v1/organizations", "listOrganizations", "organizations", OK, public: false, command: false,
            "List organizations", "The organizations the caller may see, oldest first."),
        list_organizations,
    )
    .op(
        op!(GET "/v1/organizations/{org_id}", "getOrganization", "organizations", OK, public: false, command: false,
            "Read an organization", "One organization, with its status and direct-care settings."),
        get_organization,
    )
    .op(
        op!(PUT "/v1/organizations/{org_id}/direct-care-settings", "updateDirectCareSettings", "organizations", OK, public: false, command: true,
            "Change direct-care settings", "Records organization.direct_care_settings_updated and answers the settings as stored."),
        update_direct_care_settings,
    )
    .op(
        op!(GET "/v1/organizations/{org_id}/users", "listUsers", "organizations", OK, public: false, command: false,
            "List an organization's users", "Active and invited users with their roles, oldest first."),
        list_users,
    )
    .op(
        op!(GET "/v1/organizations/{org_id}/users/{user_id}", "getUser", "organizations", OK, public: false, command: false,
            "Read a user", "One user of the organization, with their roles."),
        get_user,
    )
}

/// `POST /v1/organizations`: records a bootstrap and starts its workflow.
async fn bootstrap_organization(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    body: BootstrapRequest,
) -> Result<Reply<BootstrapAccepted>, Problem> {
    let accepted: BootstrapAccepted = state
        .domain()
        .bootstrap(&ctx.command(), &body)
        .await
        .map_err(command_problem)?;
    Ok(Reply::accepted(accepted))
}

/// `GET /v1/organizations`: a page of the organizations the caller may see.
async fn list_organizations(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    query: PageQuery<OrgId>,
    _: Empty,
) -> Result<Reply<Page<Organization>>, Problem> {
    let grant = allow(&ctx, Action::ListOrganizations)?;
    let limit = limit(query.limit)?;
    let items: Vec<Organization> = reads::organizations(
        state.db(),
        &grant,
        QueryPage {
            after: query.after,
            limit,
        },
    )
    .await
    .map_err(read_problem)?;
    Ok(Reply::ok(page(items, limit, |o| o.id.to_string())))
}

/// `GET /v1/organizations/{org_id}`: one organization.
async fn get_organization(
    state: AppState,
    ctx: Ctx,
    path: OrgPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<Organization>, Problem> {
    let grant = allow(&ctx, Action::ReadOrganization(path.org_id))?;
    let org = reads::organization(state.db(), &grant, path.org_id)
        .await
        .map_err(read_problem)?;
    org.map(Reply::ok)
        .ok_or_else(|| not_found("organization", &path.org_id))
}

/// `PUT /v1/organizations/{org_id}/direct-care-settings`: records new settings.
async fn update_direct_care_settings(
    state: AppState,
    ctx: Ctx,
    path: OrgPath,
    _: Empty,
    body: DirectCareSettings,
) -> Result<Reply<DirectCareSettings>, Problem> {
    state
        .domain()
        .update_direct_care_settings(&ctx.command(), path.org_id, &body)
        .await
        .map_err(command_problem)?;
    Ok(Reply::ok(body))
}

/// `GET /v1/organizations/{org_id}/users`: a page of an organization's users.
async fn list_users(
    state: AppState,
    ctx: Ctx,
    path: OrgPath,
    query: PageQuery<UserId>,
    _: Empty,
) -> Result<Reply<Page<User>>, Problem> {
    let grant = allow(&ctx, Action::ReadUsers(path.org_id))?;
    let limit = limit(query.limit)?;
    let items: Vec<User> = reads::users(
        state.db(),
        &grant,
        path.org_id,
        QueryPage {
            after: query.after,
            limit,
        },
    )
    .await
    .map_err(read_problem)?;
    crate::access::record_api(
        &state,
        &ctx,
        format!("organization {} users", path.org_id),
        Some(path.org_id),
        crate::access::of_list(&items, |u| u.id),
    )
    .await;
    Ok(Reply::ok(page(items, limit, |u| u.id.to_string())))
}

/// `GET /v1/organizations/{org_id}/users/{user_id}`: one user of an organization.
async fn get_user(
    state: AppState,
    ctx: Ctx,
    path: OrgUserPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<User>, Problem> {
    let grant = allow(&ctx, Action::ReadUsers(path.org_id))?;
    let user = reads::user(state.db(), &grant, path.org_id, path.user_id)
        .await
        .map_err(read_problem)?;
    if user.is_some() {
        crate::access::record_api(
            &state,
            &ctx,
            format!("user {}", path.user_id),
            Some(path.org_id),
            Some(vec![path.user_id]),
        )
        .await;
    }
    user.map(Reply::ok)
        .ok_or_else(|| not_found("user", &path.user_id))
}
