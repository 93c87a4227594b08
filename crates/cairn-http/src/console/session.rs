//! Signing in and out, and the session every console page runs in.
//!
//! The session is the bearer token itself (from `cairn token` or an identity
//! provider), kept in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` over https) and
//! verified on every request exactly as the API verifies an `Authorization` header. An
//! expired or invalid token ends the session with a message on the sign-in page.

use askama::Template;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use cairn_policy::{Principal, TokenError};

use super::{CookieNames, Csrf, Form, Https, Layout, cookie, render, set_cookie};
use crate::AppState;
use crate::context::{Caller, Correlation, Ctx};

/// A signed-in person's request: their verified principal, the request's context for
/// commands, and the CSRF token for the page's forms.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub principal: Principal,
    pub ctx: Ctx,
    pub csrf: String,
    /// The name of the organization a member of one belongs to, for the header.
    pub org_name: Option<String>,
}

impl Session {
    /// The context of a command that carries an idempotency key.
    pub fn command_with_key(&self, key: Option<String>) -> cairn_domain::CommandContext {
        let mut ctx = self.ctx.clone();
        ctx.idempotency_key = key;
        ctx.command()
    }
}

/// The header a live page's script sends when it fetches the page again.
const REFRESH_HEADER: &str = "x-cairn-refresh";

/// Why there is no session: where to send the person instead.
fn to_sign_in(parts: &Parts, reason: Option<&str>, clear: bool, secure: bool) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| parts.method == axum::http::Method::GET && safe_next(p))
        .unwrap_or("/console");
    let mut target = format!("/console/sign-in?next={}", super::query_value(next));
    if let Some(reason) = reason {
        target.push_str("&reason=");
        target.push_str(reason);
    }
    let mut response = Redirect::to(&target).into_response();
    // A page's own requests in the background (its feed, its refreshes) leave the
    // cookie be: the person's next navigation is told why the session ended.
    let background =
        parts.uri.path() == "/console/live" || parts.headers.contains_key(REFRESH_HEADER);
    if clear
        && !background
        && let Ok(value) = HeaderValue::from_str(&set_cookie(
            CookieNames::new(secure).session,
            "",
            secure,
            Some(0),
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Whether `next` stays inside the console (no open redirect).
fn safe_next(next: &str) -> bool {
    next.starts_with("/console")
        // Nothing a `Location` header cannot carry: no control character, space or
        // anything beyond ASCII (a `next` of `/console%0A` arrives decoded).
        && next.bytes().all(|b| b.is_ascii_graphic())
        && next.parse::<axum::http::uri::PathAndQuery>().is_ok()
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.starts_with("/console/sign-")
        && !next.starts_with("/console/live")
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let secure = secure(parts, state);
        let names = CookieNames::new(secure);
        let Some(token) = cookie(&parts.headers, names.session).filter(|t| !t.is_empty()) else {
            return Err(to_sign_in(parts, None, false, secure));
        };
        let verified = match state.auth().verify(token.trim()) {
            Ok(verified) => verified,
            Err(TokenError::Expired) => {
                return Err(to_sign_in(parts, Some("expired"), true, secure));
            }
            Err(_) => return Err(to_sign_in(parts, Some("invalid"), true, secure)),
        };
        let mut verified = verified;
        verified.principal = match crate::standing::honoured(state, verified.principal).await {
            Ok(principal) => principal,
            Err(problem) if problem.status == 401 => {
                return Err(to_sign_in(parts, Some("withdrawn"), true, secure));
            }
            Err(problem) => return Err(problem.into_response()),
        };
        let correlation = parts.extensions.get::<Correlation>().cloned();
        let (correlation_id, first_run) =
            Correlation::settled(correlation, state, &verified.principal).await;
        if let Some(caller) = parts.extensions.get::<Caller>() {
            caller.note(&verified.principal);
        }
        let csrf = parts
            .extensions
            .get::<Csrf>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let org_name = match verified.principal.org_id() {
            Some(org) => own_organization(state, &verified.principal, org).await,
            None => None,
        };
        Ok(Session {
            org_name,
            principal: verified.principal.clone(),
            ctx: Ctx {
                correlation_id,
                principal: verified.principal,
                expires_at: Some(verified.expires_at),
                idempotency_key: None,
                first_run,
            },
            csrf,
        })
    }
}

/// Whether cookies must be `Secure`: the request came over https, or the server's
/// public address is https.
fn secure(parts: &Parts, state: &AppState) -> bool {
    parts.extensions.get::<Https>().is_some_and(|h| h.0) || state.options().secure_cookies
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    layout: Layout,
    next: String,
    notice: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignInQuery {
    next: Option<String>,
    reason: Option<String>,
}

fn notice_for(reason: Option<&str>) -> Option<String> {
    match reason {
        Some("expired") => Some(
            "Your session ended because its token expired. Sign in with a new token.".to_owned(),
        ),
        Some("invalid") => Some(
            "Your session ended because its token is no longer accepted. Sign in again.".to_owned(),
        ),
        Some("withdrawn") => Some(
            "Your session ended: your access was withdrawn (you were deactivated). Ask an admin of your organization."
                .to_owned(),
        ),
        Some("signed-out") => Some("You are signed out.".to_owned()),
        _ => None,
    }
}

/// `GET /console/sign-in`.
pub(crate) async fn sign_in_page(request: Request) -> Response {
    let csrf = request
        .extensions()
        .get::<Csrf>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let query: SignInQuery =
        Query::try_from_uri(request.uri())
            .map(|q| q.0)
            .unwrap_or(SignInQuery {
                next: None,
                reason: None,
            });
    let next = query
        .next
        .filter(|n| safe_next(n))
        .unwrap_or_else(|| "/console".to_owned());
    render(
        StatusCode::OK,
        &SignInPage {
            layout: Layout::anonymous("Sign in", csrf),
            next,
            notice: notice_for(query.reason.as_deref()),
            error: None,
        },
    )
}

/// `POST /console/sign-in`: checks the pasted token and keeps it in the session cookie.
pub(crate) async fn sign_in(State(state): State<AppState>, request: Request) -> Response {
    let https = request.extensions().get::<Https>().is_some_and(|h| h.0);
    let secure = https || state.options().secure_cookies;
    let csrf = request
        .extensions()
        .get::<Csrf>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let next = form
        .get("next")
        .filter(|n| safe_next(n))
        .unwrap_or("/console")
        .to_owned();
    let token = form.text("token");
    let token = token.trim();
    let error = if token.is_empty() {
        Some("Paste a token: `cairn token --platform-admin NAME` prints one.".to_owned())
    } else {
        match state.auth().verify(token) {
            Ok(verified) if matches!(verified.principal, Principal::Anonymous) => {
                Some("This token names nobody.".to_owned())
            }
            Ok(verified) => match crate::standing::honoured(&state, verified.principal).await {
                Err(problem) => Some(format!("This token is not accepted: {}.", problem.detail)),
                Ok(_) => {
                    // A cookie for the browser's session, not the token's lifetime: when the
                    // token expires, the next page says so instead of forgetting silently.
                    let mut response = Redirect::to(&next).into_response();
                    if let Ok(value) = HeaderValue::from_str(&set_cookie(
                        CookieNames::new(secure).session,
                        token,
                        secure,
                        None,
                    )) {
                        response.headers_mut().append(header::SET_COOKIE, value);
                    }
                    return response;
                }
            },
            Err(TokenError::Expired) => Some("This token has expired.".to_owned()),
            Err(error) => Some(format!("This token is not accepted: {error}.")),
        }
    };
    render(
        StatusCode::UNAUTHORIZED,
        &SignInPage {
            layout: Layout::anonymous("Sign in", csrf),
            next,
            notice: None,
            error,
        },
    )
}

/// `POST /console/sign-out`: forgets the session (and its CSRF token).
pub(crate) async fn sign_out(State(state): State<AppState>, request: Request) -> Response {
    let secure =
        request.extensions().get::<Https>().is_some_and(|h| h.0) || state.options().secure_cookies;
    if let Err(refused) = Form::read(request).await {
        return refused;
    }
    let mut response = Redirect::to("/console/sign-in?reason=signed-out").into_response();
    let names = CookieNames::new(secure);
    for name in [names.session, names.csrf] {
        if let Ok(value) = HeaderValue::from_str(&set_cookie(name, "", secure, Some(0))) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The name of a member's own organization, read as they may read it.
async fn own_organization(
    state: &AppState,
    principal: &Principal,
    org: cairn_types::OrgId,
) -> Option<String> {
    let grant =
        cairn_policy::authorize(principal, &cairn_policy::Action::ReadOrganization(org)).ok()?;
    match cairn_domain::reads::organization(state.db(), &grant, org).await {
        Ok(found) => found.map(|o| o.name),
        Err(error) => {
            tracing::warn!(%error, "cannot read the name of the session's organization");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_stays_in_the_console() {
        assert!(super::safe_next("/console/events?failed=1"));
        for bad in [
            "//evil.example/console",
            "https://evil.example/",
            "/console/sign-in",
            "/consoleevil\\x",
            "/v1/events",
            "/console\n",
            "/console\r\nSet-Cookie: x=1",
            "/console/events?q=a b",
            "/console/événements",
            "/console\u{7f}",
        ] {
            assert!(!super::safe_next(bad), "{bad}");
        }
    }
}
