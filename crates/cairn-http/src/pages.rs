//! The one page people reach from an email: accepting an invitation.
//!
//! The invitation link (`{public_url}/invitations/accept?token=…`) opens a page with a
//! button; only pressing it accepts. Following the link changes nothing, so a mail
//! scanner or a browser that prefetches links cannot spend the single-use token. The
//! button posts a plain HTML form (no script needed) to the same path, which runs the
//! same domain command as `POST /v1/invitations/accept`, through the same policy, and
//! answers with a page saying what happened: accepted, or why not, with the request's
//! correlation id.

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
            "<p>The invitation link has no token. Open the link from your invitation email \
             as it is, or ask for the invitation to be sent again.</p>",
            &ctx,
        );
    }
    let body = format!(
        "<p>You have been invited to join an organization on cairn.</p>\
         <form method=\"post\" action=\"accept\">\
         <input type=\"hidden\" name=\"token\" value=\"{}\">\
         <button type=\"submit\">Accept the invitation</button>\
         </form>\
         <p class=\"quiet\">The link works once. Nothing happens until you press the button.</p>",
        escape(token.trim())
    );
    page(StatusCode::OK, "Accept your invitation", &body, &ctx)
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
            "<p>The form did not carry an invitation token. Open the link from your \
             invitation email again.</p>",
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
            "<p>Your invitation is accepted and your account is active. You can close this \
             page.</p>",
            &ctx,
        ),
        Err(error) => {
            let problem: Problem = crate::routes::command_problem(error);
            let detail = escape(&problem.detail);
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            page(
                status,
                "The invitation could not be accepted",
                &format!("<p>{detail}</p>"),
                &ctx,
            )
        }
    }
}

/// A complete page, with the correlation id that `cairn trace` takes.
fn page(status: StatusCode, title: &str, body: &str, ctx: &Ctx) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · cairn</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;\
         line-height:1.5;color:#1f2328}}\
         h1{{font-size:1.5rem}}\
         button{{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:.4rem;\
         background:#1f6feb;color:#fff;cursor:pointer}}\
         .quiet{{color:#59636e;font-size:.875rem}}\
         </style></head><body><h1>{title}</h1>{body}\
         <p class=\"quiet\">Reference: <code>{correlation}</code></p></body></html>\n",
        title = escape(title),
        correlation = ctx.correlation_id,
    );
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
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            super::escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
