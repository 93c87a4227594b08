//! What the log holds about a person, disclosed for a legal claim from their
//! organization's page: the reason asked for first, then every personal field of
//! theirs, opened even while they are restricted. The domain puts the read on record
//! before the page shows it; the page is served once, to the post, and never cached
//! or linked to.

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use cairn_domain::{Disclosure, reads};
use cairn_policy::Action;

use super::onboarding::{Field, form_again};
use super::people::person_for;
use super::{Form, Layout, Session, Time, problem_page, render, time};
use crate::AppState;
use crate::routes::command_problem;

#[derive(Template)]
#[template(path = "console/disclose.html")]
struct DisclosePage {
    layout: Layout,
    org_id: String,
    user_id: String,
    restricted: bool,
    reason: Field,
    disclosed: Option<Disclosed>,
}

/// A disclosure as the page shows it.
struct Disclosed {
    state: String,
    reason: String,
    correlation_id: String,
    rows: Vec<DisclosedRow>,
}

struct DisclosedRow {
    position: i64,
    event_id: String,
    event_type: String,
    recorded_at: Time,
    field: String,
    value: String,
}

impl From<Disclosure> for Disclosed {
    fn from(disclosure: Disclosure) -> Self {
        Disclosed {
            state: disclosure.state,
            reason: disclosure.reason,
            correlation_id: disclosure.correlation_id.to_string(),
            rows: disclosure
                .fields
                .into_iter()
                .map(|field| DisclosedRow {
                    position: field.position,
                    event_id: field.event_id.to_string(),
                    event_type: field.event_type,
                    recorded_at: time(&field.recorded_at),
                    field: field.field,
                    value: match field.value {
                        serde_json::Value::String(text) => text,
                        other => other.to_string(),
                    },
                })
                .collect(),
        }
    }
}

fn claim() -> Field {
    Field::new("reason", "Which legal claim is it for?", "text").hint(
        "Kept in the access log with the disclosure: write the claim's reference, never their own details.",
    )
}

fn page(
    session: &Session,
    user: &reads::User,
    reason: Field,
    disclosed: Option<Disclosed>,
) -> DisclosePage {
    DisclosePage {
        layout: Layout::new(session, "Disclose a person's data", "/organizations"),
        org_id: user.org_id.to_string(),
        user_id: user.id.to_string(),
        restricted: user.restricted_at.is_some(),
        reason,
        disclosed,
    }
}

/// `GET /console/organizations/{org_id}/people/{user_id}/disclose`: asks for the legal
/// claim. Shows nothing of the person yet.
pub(crate) async fn disclose_form(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Response {
    match person_for(
        &state,
        &session,
        (&org_id, &user_id),
        Action::DiscloseSubject,
    )
    .await
    {
        Ok(user) => render(StatusCode::OK, &page(&session, &user, claim(), None)),
        Err(response) => response,
    }
}

/// `POST /console/organizations/{org_id}/people/{user_id}/disclose`: the disclosure,
/// on record before the page is rendered.
pub(crate) async fn disclose(
    State(state): State<AppState>,
    session: Session,
    Path((org_id, user_id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let user = match person_for(
        &state,
        &session,
        (&org_id, &user_id),
        Action::DiscloseSubject,
    )
    .await
    {
        Ok(user) => user,
        Err(response) => return response,
    };
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    match state
        .domain()
        .disclose_subject(
            &session.ctx.command(),
            user.id,
            &form.text("reason"),
            cairn_log::AccessVia::Console,
        )
        .await
    {
        Ok(disclosure) => render(
            StatusCode::OK,
            &page(&session, &user, claim(), Some(disclosure.into())),
        ),
        Err(error) => {
            let problem = command_problem(error);
            if problem.status >= 500 || problem.errors.is_empty() {
                return problem_page(&session, &problem);
            }
            form_again(&problem, &form, claim(), |field| {
                page(&session, &user, field, None)
            })
        }
    }
}
