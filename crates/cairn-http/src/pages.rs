//! The one page people reach from an email: accepting an invitation.
//!
//! The invitation link (`{public_url}/invitations/accept?token=…`) opens a page with a
//! button; only pressing it accepts. Following the link changes nothing, so a mail
//! scanner or a browser that prefetches links cannot spend the single-use token. The
//! button posts a plain HTML form (no script needed) to the same path, which runs the
//! same domain command as `POST /v1/invitations/accept`, through the same policy, and
//! answers with a page saying what happened: accepted, or why not, with the request's
//! correlation id. It is rendered from `templates/invitation.html`, which escapes every
//! value.

use askama::Template;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::AppState;
use crate::context::Ctx;
use crate::problem::Problem;

/// The largest form body the page accepts: a token is 64 characters.
const FORM_LIMIT: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
struct TokenForm {
    token: Option<String>,
}

/// What the page shows.
enum State {
    /// The button that accepts, with the token it sends.
    Offer(String),
    /// What happened, or why nothing can.
    Said(String),
}

#[derive(Template)]
#[template(path = "invitation.html")]
struct InvitationPage {
    title: &'static str,
    state: State,
    correlation_id: String,
}

/// `GET /invitations/accept?token=…`: the page with the button.
pub async fn accept_page(ctx: Ctx, request: Request) -> Response {
    let token = request
        .uri()
        .query()
        .and_then(|query| serde_urlencoded::from_str::<TokenForm>(query).ok())
        .and_then(|form| form.token)
        .unwrap_or_default();
    if token.trim().is_empty() {
        return page(
            StatusCode::BAD_REQUEST,
            "This link is incomplete",
            State::Said(
                "The invitation link has no token. Open the link from your invitation email \
                 as it is, or ask for the invitation to be sent again."
                    .to_owned(),
            ),
            &ctx,
        );
    }
    page(
        StatusCode::OK,
        "Accept your invitation",
        State::Offer(token.trim().to_owned()),
        &ctx,
    )
}

/// `POST /invitations/accept` with the form: accepts, and says what happened.
pub async fn accept_form(
    axum::extract::State(state): axum::extract::State<AppState>,
    ctx: Ctx,
    request: Request,
) -> Response {
    let form = match axum::body::to_bytes(request.into_body(), FORM_LIMIT).await {
        Ok(bytes) => serde_urlencoded::from_bytes::<TokenForm>(&bytes).ok(),
        Err(_) => None,
    };
    let Some(token) = form.and_then(|form| form.token) else {
        return page(
            StatusCode::BAD_REQUEST,
            "This form is incomplete",
            State::Said(
                "The form did not carry an invitation token. Open the link from your \
                 invitation email again."
                    .to_owned(),
            ),
            &ctx,
        );
    };
    match state
        .domain()
        .accept_invitation(&ctx.command(), &token)
        .await
    {
        Ok(_) => page(
            StatusCode::OK,
            "Welcome aboard",
            State::Said(
                "Your invitation is accepted and your account is active. You can close this \
                 page."
                    .to_owned(),
            ),
            &ctx,
        ),
        Err(error) => {
            let problem: Problem = crate::routes::command_problem(error);
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            page(
                status,
                "The invitation could not be accepted",
                State::Said(problem.detail),
                &ctx,
            )
        }
    }
}

/// A complete page, with the correlation id that `cairn trace` takes.
fn page(status: StatusCode, title: &'static str, state: State, ctx: &Ctx) -> Response {
    let rendered = InvitationPage {
        title,
        state,
        correlation_id: ctx.correlation_id.to_string(),
    }
    .render();
    let html = match rendered {
        Ok(html) => html,
        Err(error) => {
            tracing::error!(error = %error, "the invitation page could not be rendered");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response();
        }
    };
    let mut response = (status, Body::from(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page carries a single-use token: no caching, no referrer, no framing.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}
