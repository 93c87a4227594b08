//! A person's roles changed, and their access withdrawn and given back, from their
//! organization's page: each a domain command, refused or done as the API does it.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use cairn_domain::RolesRequest;
use cairn_domain::reads;
use cairn_policy::Action;
use cairn_types::{OrgId, UserId};

use super::onboarding::{Field, RoleChoice, field_errors, form_again};
use super::{Form, Layout, Session, not_found, problem_page, render};
use crate::AppState;
use crate::routes::{allow, command_problem, read_problem};

/// A person of an organization whose people the session may read and on whom it may
/// do `action`; anything else is the same 404 as a missing person, and a refused
/// action is the policy's page.
pub(crate) async fn person_for(
    state: &AppState,
    session: &Session,
    (org_id, user_id): (&str, &str),
    action: fn(OrgId) -> Action,
) -> Result<reads::User, Response> {
    let (Ok(org_id), Ok(user_id)) = (OrgId::parse(org_id), UserId::parse(user_id)) else {
        return Err(not_found(session, "person"));
    };
    let grant =
        allow(&session.ctx, Action::ReadUsers(org_id)).map_err(|_| not_found(session, "person"))?;
    let user = match reads::user(state.db(), &grant, org_id, user_id).await {
        Ok(Some(user)) => user,
        Ok(None) => return Err(not_found(session, "person")),
        Err(error) => return Err(problem_page(session, &read_problem(error))),
    };
    if let Err(problem) = allow(&session.ctx, action(org_id)) {
        return Err(problem_page(session, &problem));
    }
    Ok(user)
}

/// A person whose roles and access the session may change (see [`person_for`]).
async fn manageable_person(
    state: &AppState,
    session: &Session,
    org_id: &str,
    user_id: &str,
) -> Result<reads::User, Response> {
    person_for(state, session, (org_id, user_id), Action::ManagePeople).await
}

/// Records that the page showed the person's name: a read of their data.
async fn record_read(state: &AppState, session: &Session, user: &reads::User, what: &str) {
    crate::access::record(
        state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("person {} ({what})", user.id),
        Some(user.org_id),
        Some(vec![user.id]),
    )
    .await;
}

fn back_with(user: &reads::User, notice: &str) -> Response {
    Redirect::to(&format!(
        "/console/organizations/{}?notice={notice}#person-{}",
        user.org_id, user.id
    ))
    .into_response()
}

#[derive(Template)]
#[template(path = "console/roles.html")]
struct RolesPage {
    layout: Layout,
    org_id: String,
    user_id: String,
    name: String,
    roles: RoleChoice,
    error: Option<String>,
}

fn roles_page(
    session: &Session,
    user: &reads::User,
    roles: RoleChoice,
    error: Option<String>,
) -> RolesPage {
    RolesPage {
        layout: Layout::new(session, "Change roles", "/organizations"),
        org_id: user.org_id.to_string(),
        user_id: user.id.to_string(),
        name: user.name.clone(),
        roles,
        error,
    }
}

/// `GET /console/organizations/{org_id}/people/{user_id}/roles`: the person's roles,
/// to change.
pub(crate) async fn roles_form(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Response {
    let user = match manageable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    record_read(&state, &session, &user, "roles").await;
    let mut roles = RoleChoice::new("roles", None, &BTreeMap::new());
    for (role, on) in &mut roles.options {
        *on = user.roles.iter().any(|held| held.as_str() == role);
    }
    render(StatusCode::OK, &roles_page(&session, &user, roles, None))
}

/// `POST /console/organizations/{org_id}/people/{user_id}/roles`.
pub(crate) async fn change_roles(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let user = match manageable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let request = RolesRequest {
        roles: form.all("roles").into_iter().map(str::to_owned).collect(),
    };
    match state
        .domain()
        .change_roles(&session.ctx.command(), user.id, &request)
        .await
    {
        Ok(_) => {
            state.standings().forget(user.id);
            back_with(&user, "roles")
        }
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 {
                return problem_page(&session, &problem);
            }
            let errors = field_errors(&problem);
            let roles = RoleChoice::new("roles", Some(&form), &errors);
            let error = roles.error.is_none().then(|| problem.detail.clone());
            render(
                StatusCode::UNPROCESSABLE_ENTITY,
                &roles_page(&session, &user, roles, error),
            )
        }
    }
}

#[derive(Template)]
#[template(path = "console/deactivate.html")]
struct DeactivatePage {
    layout: Layout,
    org_id: String,
    user_id: String,
    name: String,
    reason: Field,
}

fn deactivation_reason() -> Field {
    Field::new("reason", "Why are they deactivated?", "text")
        .hint("Kept with the deactivation, and shown to the organization's admins.")
}

fn deactivate_page(session: &Session, user: &reads::User, reason: Field) -> DeactivatePage {
    DeactivatePage {
        layout: Layout::new(session, "Deactivate a person", "/organizations"),
        org_id: user.org_id.to_string(),
        user_id: user.id.to_string(),
        name: user.name.clone(),
        reason,
    }
}

/// `GET /console/organizations/{org_id}/people/{user_id}/deactivate`: asks why, and
/// for a confirmation.
pub(crate) async fn deactivate_form(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Response {
    let user = match manageable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    record_read(&state, &session, &user, "deactivation").await;
    render(
        StatusCode::OK,
        &deactivate_page(&session, &user, deactivation_reason()),
    )
}

/// `POST /console/organizations/{org_id}/people/{user_id}/deactivate`.
pub(crate) async fn deactivate(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let user = match manageable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    match state
        .domain()
        .deactivate_user(&session.ctx.command(), user.id, &form.text("reason"))
        .await
    {
        Ok(_) => {
            state.standings().forget(user.id);
            back_with(&user, "deactivated")
        }
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 {
                return problem_page(&session, &problem);
            }
            form_again(&problem, &form, deactivation_reason(), |field| {
                deactivate_page(&session, &user, field)
            })
        }
    }
}

/// `POST /console/organizations/{org_id}/people/{user_id}/reactivate`.
pub(crate) async fn reactivate(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let user = match manageable_person(&state, &session, &org_id, &user_id).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    if let Err(refused) = Form::read(request).await {
        return refused;
    }
    match state
        .domain()
        .reactivate_user(&session.ctx.command(), user.id)
        .await
    {
        Ok(_) => {
            state.standings().forget(user.id);
            back_with(&user, "reactivated")
        }
        Err(error) => problem_page(&session, &command_problem(error)),
    }
}
