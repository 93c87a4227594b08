//! The web console: onboarding and operations in the browser, served by `cairn serve`
//! under `/console`.
//!
//! Pages are rendered on the server from askama templates (`templates/console/`), which
//! escape every value. A few lines of plain JavaScript (`assets/console.js`, no inline
//! script anywhere) add the live parts: a page that shows something still changing
//! follows the event feed (`/console/live`, the same Server-Sent Events feed as
//! `/v1/events/stream`) and refreshes its live region when an event arrives.
//!
//! The console acts as the API does: every page asks the one policy
//! (`cairn_policy::authorize`) with the signed-in principal, reads through
//! `cairn_domain::reads` with the grant, and changes things only through the domain's
//! commands. Its session is the bearer token itself, kept in an `HttpOnly`,
//! `SameSite=Strict` cookie and verified on every request; every form carries a CSRF
//! token that must match a cookie of its own.

mod activity;
mod assets;
mod attention;
mod confirm;
mod handlers;
mod held;
mod onboarding;
mod operations;
mod pauses;
mod session;
mod skip;

use std::time::Instant;

use askama::Template;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use cairn_policy::{Action, Principal, authorize};

use crate::AppState;
use crate::problem::Problem;

pub use activity::{Activity, run_sampler};
pub(crate) use session::Session;

/// The session cookie: the bearer token the person signed in with.
const SESSION_COOKIE: &str = "cairn_session";
/// The CSRF cookie: a random value every form repeats in a hidden field.
const CSRF_COOKIE: &str = "cairn_csrf";
/// The largest form the console accepts.
const FORM_LIMIT: usize = 64 * 1024;

/// Every page of the console, and `/` leading to it.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(home))
        .route("/console/", get(home))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route(
            "/console/organizations",
            get(onboarding::organizations).post(onboarding::bootstrap),
        )
        .route(
            "/console/organizations/new",
            get(onboarding::new_organization),
        )
        .route(
            "/console/organizations/{org_id}",
            get(onboarding::organization),
        )
        .route(
            "/console/organizations/{org_id}/settings",
            post(onboarding::update_settings),
        )
        .route(
            "/console/organizations/{org_id}/invitations",
            post(onboarding::invite),
        )
        .route(
            "/console/invitations/{invitation_id}/resend",
            post(onboarding::resend),
        )
        .route(
            "/console/invitations/{invitation_id}/revoke",
            get(onboarding::revoke_page).post(onboarding::revoke),
        )
        .route("/console/events", get(operations::events))
        .route("/console/events/{event_id}", get(operations::event))
        .route(
            "/console/events/{event_id}/retry",
            post(operations::retry_one),
        )
        .route(
            "/console/events/{event_id}/skip",
            get(skip::skip_page).post(skip::skip),
        )
        .route(
            "/console/failures",
            get(operations::failures).post(operations::retry_many),
        )
        .route("/console/handlers", get(handlers::handlers))
        .route(
            "/console/handlers/pause",
            get(handlers::pause_page).post(handlers::pause),
        )
        .route(
            "/console/handlers/resume",
            get(handlers::resume_page).post(handlers::resume),
        )
        .route("/console/workflows", get(operations::workflows))
        .route(
            "/console/workflows/{workflow_id}",
            get(operations::workflow),
        )
        .route(
            "/console/workflows/{workflow_id}/pause",
            get(pauses::run_pause_page).post(pauses::run_pause),
        )
        .route(
            "/console/workflows/{workflow_id}/resume",
            get(pauses::run_resume_page).post(pauses::run_resume),
        )
        .route(
            "/console/workflow-kinds/{kind}/pause",
            get(pauses::kind_pause_page).post(pauses::kind_pause),
        )
        .route(
            "/console/workflow-kinds/{kind}/resume",
            get(pauses::kind_resume_page).post(pauses::kind_resume),
        )
        .route("/console/traces", get(operations::find_trace))
        .route("/console/traces/{correlation_id}", get(operations::trace))
        .route("/console/health", get(activity::health))
        .route("/console/live", get(operations::live))
        .route("/console/assets/{name}", get(assets::asset))
        .fallback(not_found_page)
        .layer(axum::middleware::from_fn(guard))
}

/// `GET /console`: the first page a person may see.
async fn home(session: Session) -> Response {
    let target = if session.may(&Action::ListOrganizations) {
        "/console/organizations"
    } else {
        "/console/events"
    };
    Redirect::to(target).into_response()
}

/// The CSRF token of this request: from its cookie, or new (and then set by
/// [`guard`] on the response).
#[derive(Debug, Clone)]
pub(crate) struct Csrf(pub String);

/// Whether this request came over https (directly or through a proxy that says so).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Https(pub bool);

/// Middleware for every console response: a CSRF cookie, cross-site posts refused,
/// security headers, no caching, and the server's time in `Server-Timing`.
async fn guard(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let existing = cookie(request.headers(), CSRF_COOKIE).filter(|t| valid_token(t));
    let csrf = existing.clone().unwrap_or_else(new_token);
    let https = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
        || request.uri().scheme_str() == Some("https");
    request.extensions_mut().insert(Csrf(csrf.clone()));
    request.extensions_mut().insert(Https(https));
    let cross_site = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    let mut response = if request.method() != axum::http::Method::GET
        && request.method() != axum::http::Method::HEAD
        && cross_site
    {
        message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form was sent from another site. Open the console and try again from there.",
        )
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if existing.is_none()
        && let Ok(value) = HeaderValue::from_str(&set_cookie(CSRF_COOKIE, &csrf, https, None))
    {
        headers.append(header::SET_COOKIE, value);
    }
    security_headers(headers);
    let took = started.elapsed().as_secs_f64() * 1_000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("total;dur={took:.2}")) {
        headers.insert("server-timing", value);
    }
    response
}

/// The headers every console page carries.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// A cookie's value from the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value for the console: `HttpOnly`, `SameSite=Strict`, on every path,
/// `Secure` over https. `max_age` zero removes it.
fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<i64>) -> String {
    let mut built = cookie::Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure);
    if let Some(seconds) = max_age {
        built = built.max_age(cookie::time::Duration::seconds(seconds));
    }
    built.build().to_string()
}

/// 32 random bytes, hex.
fn new_token() -> String {
    let mut bytes = [0_u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness no form can be trusted: a value no form will match.
        return "0".repeat(64);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A submitted form: its fields in order, CSRF-checked.
#[derive(Debug)]
pub(crate) struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    /// Reads a form body and checks its `csrf` field against the cookie.
    async fn read(request: Request) -> Result<Form, Response> {
        let csrf = request
            .extensions()
            .get::<Csrf>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let bytes = match axum::body::to_bytes(request.into_body(), FORM_LIMIT).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return Err(message_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "This form is too large",
                    &format!("A form may hold at most {} KiB.", FORM_LIMIT / 1024),
                ));
            }
        };
        let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        let sent = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        if sent.is_empty() || !same_secret(sent, &csrf) {
            return Err(message_page(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form did not carry this session's security token, so nothing was done. \
                 Reload the page and send it again.",
            ));
        }
        Ok(Form { fields })
    }

    /// The first value of a field, trimmed of nothing.
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value, or empty.
    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_owned()
    }

    /// Every value of a field (checkboxes).
    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a checkbox was ticked.
    fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// One entry of the navigation.
#[derive(Debug, Clone)]
pub(crate) struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What every page's frame shows: who is signed in, what they may open, and the CSRF
/// token the page's forms carry.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub title: String,
    pub who: String,
    pub signed_in: bool,
    pub nav: Vec<NavItem>,
    pub csrf: String,
    pub correlation_id: String,
    /// The query for `/console/live` when the page follows the feed.
    pub live: Option<String>,
    /// Where the page's live regions are fetched again from (its own GET address,
    /// also when it was rendered as the answer to a form).
    pub live_url: String,
    /// What is paused or held, on the operations pages (`None` elsewhere: the page
    /// has no banner, not even an empty one to refresh).
    pub attention: Option<attention::Attention>,
}

impl Layout {
    /// The frame of a page for a signed-in person; `section` is the nav entry to mark.
    fn new(session: &Session, title: impl Into<String>, section: &str) -> Layout {
        let entries: [(&'static str, &'static str, Action); 6] = [
            (
                "/console/organizations",
                "Organizations",
                Action::ListOrganizations,
            ),
            ("/console/events", "Events", Action::ListEvents),
            ("/console/failures", "Failures", Action::ListEvents),
            ("/console/handlers", "Handlers", Action::ListEvents),
            ("/console/workflows", "Workflows", Action::ListWorkflows),
            ("/console/health", "Health", Action::ReadPublic),
        ];
        let nav = entries
            .into_iter()
            .filter(|(_, _, action)| session.may(action))
            .map(|(href, label, _)| NavItem {
                href,
                label,
                current: !section.is_empty() && href.ends_with(section),
            })
            .collect();
        Layout {
            title: title.into(),
            who: who(&session.principal),
            signed_in: true,
            nav,
            csrf: session.csrf.clone(),
            correlation_id: session.ctx.correlation_id.to_string(),
            live: None,
            live_url: String::new(),
            attention: None,
        }
    }

    /// The frame of a page for someone not signed in.
    fn anonymous(title: impl Into<String>, csrf: String) -> Layout {
        Layout {
            title: title.into(),
            who: String::new(),
            signed_in: false,
            nav: Vec::new(),
            csrf,
            correlation_id: String::new(),
            live: None,
            live_url: String::new(),
            attention: None,
        }
    }

    /// Makes the page follow the live feed with this `/console/live` query, fetching
    /// its live regions again from `url`.
    fn live(mut self, query: impl Into<String>, url: impl Into<String>) -> Layout {
        self.live = Some(query.into());
        self.live_url = url.into();
        self
    }

    /// Shows the attention banner at the top of the page.
    fn attention(mut self, attention: attention::Attention) -> Layout {
        self.attention = Some(attention);
        self
    }
}

/// A principal, for the page's header.
fn who(principal: &Principal) -> String {
    match principal {
        Principal::User { org_id, roles, .. } => {
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            format!("{} of {org_id}", roles.join(", "))
        }
        Principal::Service { name, .. } => format!("service {name}"),
        Principal::PlatformAdmin { name } => format!("{name} (platform administrator)"),
        Principal::Operator { name } => format!("{name} (operator)"),
        Principal::Anonymous => "nobody".to_owned(),
    }
}

/// Renders a page.
fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(error = %error, "a console page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A page that only says something.
#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage {
    layout: Layout,
    heading: String,
    message: String,
    detail: Option<String>,
}

/// A page that says what happened, outside any session.
fn message_page(status: StatusCode, heading: &str, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            layout: Layout::anonymous(heading, String::new()),
            heading: heading.to_owned(),
            message: message.to_owned(),
            detail: None,
        },
    )
}

/// The page for a problem the API would have answered, inside the session's frame.
fn problem_page(session: &Session, problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let heading = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::CONFLICT => "Not done",
        StatusCode::SERVICE_UNAVAILABLE => "Busy",
        s if s.is_server_error() => "Something went wrong",
        _ => "Not done",
    };
    let detail = problem
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    render(
        status,
        &MessagePage {
            layout: Layout::new(session, heading, ""),
            heading: heading.to_owned(),
            message: problem.detail.clone(),
            detail: (!detail.is_empty()).then_some(detail),
        },
    )
}

/// The console's 404: the same page whether the thing does not exist or belongs to
/// another tenant.
fn not_found(session: &Session, what: &str) -> Response {
    render(
        StatusCode::NOT_FOUND,
        &MessagePage {
            layout: Layout::new(session, "Not found", ""),
            heading: "Not found".to_owned(),
            message: format!("There is no {what} here, or it is not yours to see."),
            detail: None,
        },
    )
}

async fn not_found_page(uri: axum::http::Uri) -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("The console has no page at {}.", uri.path()),
    )
}

/// A time for people, in UTC to the second.
fn time(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A count with its noun: `1 event`, `3 events`.
fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Milliseconds for people: 0.42 ms, 12 ms, 1.4 s.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1_000.0)
    }
}

impl Session {
    /// Whether the policy lets this person do `action`.
    fn may(&self, action: &Action) -> bool {
        authorize(&self.principal, action).is_ok()
    }
}

/// Percent-encodes a value for a URL query.
fn query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_whole() {
        assert!(super::same_secret("abc", "abc"));
        assert!(!super::same_secret("abc", "abd"));
        assert!(!super::same_secret("abc", "abcd"));
        assert!(!super::same_secret("", "a"));
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let value = super::set_cookie("cairn_session", "t", true, None);
        assert!(value.contains("HttpOnly"), "{value}");
        assert!(value.contains("SameSite=Strict"), "{value}");
        assert!(value.contains("Secure"), "{value}");
        assert!(value.contains("Path=/"), "{value}");
        let plain = super::set_cookie("cairn_session", "t", false, Some(0));
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(plain.contains("Max-Age=0"), "{plain}");
    }
}
