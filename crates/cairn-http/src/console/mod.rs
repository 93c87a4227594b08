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
//! `SameSite=Strict` cookie (named `__Host-…` over https) and verified on every
//! request. Every form carries a CSRF token derived from that session, so a token
//! from one browser or person is worth nothing in another's; and a form is refused
//! unless the browser says it was sent from the console's own origin.

mod activity;
mod assets;
mod attention;
mod confirm;
mod disclose;
mod export;
mod handlers;
mod held;
mod onboarding;
mod operations;
mod pauses;
mod people;
mod search;
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

/// The names of the console's cookies: the session (the bearer token the person signed
/// in with) and, before signing in, a random value the sign-in form repeats.
///
/// Over https they carry the `__Host-` prefix: a browser then accepts them only from
/// this origin, `Secure`, on `/` and without a `Domain`, so neither a sibling subdomain
/// nor a plain-http page on another port of the host can plant one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CookieNames {
    session: &'static str,
    csrf: &'static str,
}

impl CookieNames {
    fn new(secure: bool) -> CookieNames {
        if secure {
            CookieNames {
                session: "__Host-cairn_session",
                csrf: "__Host-cairn_csrf",
            }
        } else {
            CookieNames {
                session: "cairn_session",
                csrf: "cairn_csrf",
            }
        }
    }
}
/// The largest form the console accepts.
const FORM_LIMIT: usize = 64 * 1024;

/// Every page of the console, and `/` leading to it.
pub fn router(state: &AppState) -> Router<AppState> {
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
        .route(
            "/console/invitations/{invitation_id}/email",
            get(onboarding::email),
        )
        .route(
            "/console/invitations/{invitation_id}/address",
            get(onboarding::address_page).post(onboarding::correct_address),
        )
        .route(
            "/console/organizations/{org_id}/people/{user_id}/roles",
            get(people::roles_form).post(people::change_roles),
        )
        .route(
            "/console/organizations/{org_id}/people/{user_id}/deactivate",
            get(people::deactivate_form).post(people::deactivate),
        )
        .route(
            "/console/organizations/{org_id}/people/{user_id}/reactivate",
            post(people::reactivate),
        )
        .route(
            "/console/organizations/{org_id}/people/{user_id}/erase",
            get(onboarding::erase_page).post(onboarding::erase),
        )
        .route(
            "/console/organizations/{org_id}/people/{user_id}/disclose",
            get(disclose::disclose_form).post(disclose::disclose),
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
            "/console/workflows/{workflow_id}/cancel",
            get(pauses::run_cancel_page).post(pauses::run_cancel),
        )
        .route(
            "/console/workflows/{workflow_id}/retry",
            get(pauses::run_retry_page).post(pauses::run_retry),
        )
        .route(
            "/console/workflow-kinds/{kind}/pause",
            get(pauses::kind_pause_page).post(pauses::kind_pause),
        )
        .route(
            "/console/workflow-kinds/{kind}/resume",
            get(pauses::kind_resume_page).post(pauses::kind_resume),
        )
        .route("/console/search", get(search::search))
        .route("/console/failures/retry", get(operations::retry_code_page))
        .route("/console/traces", get(operations::find_trace))
        .route("/console/traces/{correlation_id}", get(operations::trace))
        .route("/console/health", get(activity::health))
        .route("/console/live", get(operations::live))
        .route("/console/assets/{name}", get(assets::asset))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
}

/// `GET /console`: the first page a person may see.
async fn home(session: Session) -> Response {
    // A member of an organization lands on it, not on a list of one.
    let target = match session.principal.org_id() {
        Some(org) if session.may(&Action::ReadOrganization(org)) => {
            format!("/console/organizations/{org}")
        }
        _ if session.may(&Action::ListOrganizations) => "/console/organizations".to_owned(),
        _ => "/console/events".to_owned(),
    };
    Redirect::to(&target).into_response()
}

/// The CSRF token this request's forms carry and must send back: derived from the
/// session when there is one; before signing in, the random value of its own cookie
/// (new, and then set by [`guard`] on the response, when the browser has none).
#[derive(Debug, Clone)]
pub(crate) struct Csrf(pub String);

/// Whether this request came over https (directly or through a proxy that says so).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Https(pub bool);

/// Middleware for every console response: the form token, forms from anywhere but the
/// console's own pages refused, security headers, no caching, and the server's time in
/// `Server-Timing`.
async fn guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let https = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
        || request.uri().scheme_str() == Some("https");
    let secure = https || state.options().secure_cookies;
    let names = CookieNames::new(secure);
    let session = cookie(request.headers(), names.session).filter(|t| !t.is_empty());
    let anonymous = cookie(request.headers(), names.csrf).filter(|t| valid_token(t));
    let csrf = match (&session, &anonymous) {
        (Some(session), _) => session_csrf(session),
        (None, Some(anonymous)) => anonymous.clone(),
        (None, None) => new_token(),
    };
    let set_anonymous = session.is_none() && anonymous.is_none();
    request.extensions_mut().insert(Csrf(csrf.clone()));
    request.extensions_mut().insert(Https(https));
    let changes_state =
        request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD;
    let refused = changes_state
        .then(|| from_own_pages(request.headers(), state.options().public_origin.as_deref()).err())
        .flatten();
    let mut response = match refused {
        Some(why) => {
            tracing::warn!(reason = why, path = %request.uri().path(), "a console form from elsewhere was refused");
            message_page(
                StatusCode::FORBIDDEN,
                "Refused",
                "This form was not sent from the console's own pages, so nothing was done. \
                 Open the console and try again from there.",
            )
        }
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    if set_anonymous
        && let Ok(value) = HeaderValue::from_str(&set_cookie(names.csrf, &csrf, secure, None))
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

/// The CSRF token of a session: a one-way digest of its token, so it proves the form
/// came from a page of this very session, needs no storage shared between processes,
/// and reveals nothing of the token it is derived from.
fn session_csrf(session: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"cairn console form\0")
        .chain_update(session.as_bytes())
        .finalize();
    hex(&digest)
}

/// Why a state-changing request did not come from the console's own pages, if it did
/// not. A browser says where a request came from in `Sec-Fetch-Site` and `Origin`:
/// the first must be `same-origin` (or `none`, the person's own action), and the
/// second, when sent, must be this server as the request addressed it, or the public
/// URL it is configured with. A client that sends neither (not a browser, or a very
/// old one) is left to the form token, which binds the form to the session anyway.
fn from_own_pages(headers: &HeaderMap, public_origin: Option<&str>) -> Result<(), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
        && site.as_bytes() != b"none"
    {
        return Err("Sec-Fetch-Site is not same-origin");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let Ok(origin) = origin.to_str() else {
        return Err("Origin is not text");
    };
    let origin = origin.trim().to_ascii_lowercase();
    if public_origin.is_some_and(|public| public.eq_ignore_ascii_case(&origin)) {
        return Ok(());
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err("Origin is not a scheme and host");
    };
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return Err("Origin is not http or https"),
    };
    let origin_authority = authority.strip_suffix(default_port).unwrap_or(authority);
    let same = |host: &str| {
        let host = host.trim().to_ascii_lowercase();
        let host = host
            .strip_suffix(default_port)
            .map(str::to_owned)
            .unwrap_or(host);
        host == origin_authority
    };
    let addressed = [text("x-forwarded-host"), text(header::HOST.as_str())];
    if addressed.into_iter().flatten().any(same) {
        Ok(())
    } else {
        Err("Origin is another site")
    }
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
    hex(&bytes)
}

/// Bytes as lowercase hex, the form of every console token.
fn hex(bytes: &[u8]) -> String {
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
    /// A form filled in by the server (a failed bootstrap's details, again).
    fn filled(fields: Vec<(String, String)>) -> Form {
        Form { fields }
    }

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
    /// Whether the header offers the search box, and what it holds.
    pub may_search: bool,
    pub search: String,
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
            who: who(&session.principal, session.org_name.as_deref()),
            signed_in: true,
            nav,
            csrf: session.csrf.clone(),
            correlation_id: session.ctx.correlation_id.to_string(),
            live: None,
            live_url: String::new(),
            attention: None,
            may_search: session.may(&Action::Search),
            search: String::new(),
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
            may_search: false,
            search: String::new(),
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

/// A workflow kind as a person reads it: `organization_bootstrap` is "Organization
/// bootstrap".
pub(crate) fn kind_label(kind: &str) -> String {
    let words = kind.replace('_', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A principal, for the page's header.
fn who(principal: &Principal, org_name: Option<&str>) -> String {
    match principal {
        Principal::User { org_id, roles, .. } => {
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            match org_name {
                Some(name) => format!("{} of {name}", roles.join(", ")),
                None => format!("{} of {org_id}", roles.join(", ")),
            }
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

/// Whether a path is the console's: its pages answer for it, not the API.
pub(crate) fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// The console's page for an address it has no page at, with the headers of every
/// console page.
pub(crate) fn not_found_page(path: &str) -> Response {
    let mut response = message_page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("The console has no page at {path}."),
    );
    security_headers(response.headers_mut());
    response
}

/// The console's page for a method an address does not take (a form posted to a page
/// that only shows), with the headers of every console page.
pub(crate) fn wrong_method_page(method: &axum::http::Method, path: &str) -> Response {
    let mut response = message_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Not possible here",
        &format!(
            "The console page at {path} does not take {method}. Go back and try again from the page itself."
        ),
    );
    security_headers(response.headers_mut());
    response
}

/// A time for people, in UTC to the second.
fn time(at: &chrono::DateTime<chrono::Utc>) -> Time {
    Time {
        at: *at,
        millis: false,
    }
}

/// [`time`] to the millisecond, where many things share a second (the event log).
fn time_ms(at: &chrono::DateTime<chrono::Utc>) -> Time {
    Time {
        at: *at,
        millis: true,
    }
}

/// A time as plain text, for an attribute or a sentence built in code.
fn time_text(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time on a page: a `<time>` element with its instant, showing it in UTC; the
/// script adds how long ago (or how soon) and the browser's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Time {
    at: chrono::DateTime<chrono::Utc>,
    millis: bool,
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Digits, dashes, colons, a dot, `T`, `Z` and `UTC`: nothing to escape.
        let iso = self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let text = if self.millis {
            self.at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        } else {
            self.at.format("%Y-%m-%d %H:%M:%S UTC")
        };
        write!(f, "<time datetime=\"{iso}\">{text}</time>")
    }
}

impl askama::filters::HtmlSafe for Time {}

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
    fn a_form_is_the_consoles_own_only_when_the_browser_says_so() {
        use axum::http::{HeaderMap, HeaderName, HeaderValue};
        let public = Some("https://console.example.com");
        /// Sec-Fetch-Site, Origin, Host, X-Forwarded-Host, and whether it is accepted.
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            bool,
        );
        let cases: &[Case<'_>] = &[
            (
                Some("same-origin"),
                Some("http://127.0.0.1:8080"),
                "127.0.0.1:8080",
                None,
                true,
            ),
            (Some("none"), None, "127.0.0.1:8080", None, true),
            (None, None, "127.0.0.1:8080", None, true),
            (
                None,
                Some("http://127.0.0.1:8080"),
                "127.0.0.1:8080",
                None,
                true,
            ),
            (
                None,
                Some("HTTP://LOCALHOST:8080"),
                "localhost:8080",
                None,
                true,
            ),
            (
                None,
                Some("https://example.com"),
                "example.com:443",
                None,
                true,
            ),
            (None, Some("http://example.com"), "example.com", None, true),
            (
                None,
                Some("https://console.example.com"),
                "10.0.0.5:8080",
                None,
                true,
            ),
            (
                None,
                Some("https://a.example.com"),
                "10.0.0.5:8080",
                Some("a.example.com"),
                true,
            ),
            (
                Some("same-site"),
                Some("http://127.0.0.1:8080"),
                "127.0.0.1:8080",
                None,
                false,
            ),
            (Some("cross-site"), None, "127.0.0.1:8080", None, false),
            (
                Some("same-origin"),
                Some("http://127.0.0.1:9090"),
                "127.0.0.1:8080",
                None,
                false,
            ),
            (
                None,
                Some("http://127.0.0.1:9090"),
                "127.0.0.1:8080",
                None,
                false,
            ),
            (
                None,
                Some("https://evil.example.com"),
                "example.com",
                None,
                false,
            ),
            (None, Some("null"), "127.0.0.1:8080", None, false),
            (
                None,
                Some("ftp://127.0.0.1:8080"),
                "127.0.0.1:8080",
                None,
                false,
            ),
            (
                None,
                Some("http://example.com:443"),
                "example.com",
                None,
                false,
            ),
        ];
        for &(site, origin, host, forwarded, accepted) in cases {
            let mut headers = HeaderMap::new();
            let mut put = |name: &'static str, value: Option<&str>| {
                if let Some(value) = value {
                    headers.insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_str(value).expect("a header value"),
                    );
                }
            };
            put("sec-fetch-site", site);
            put("origin", origin);
            put("host", Some(host));
            put("x-forwarded-host", forwarded);
            assert_eq!(
                super::from_own_pages(&headers, public).is_ok(),
                accepted,
                "{site:?} {origin:?} {host} {forwarded:?}"
            );
        }
    }

    #[test]
    fn a_sessions_form_token_is_its_own() {
        let a = super::session_csrf("token-a");
        assert_eq!(a, super::session_csrf("token-a"));
        assert_ne!(a, super::session_csrf("token-b"));
        assert!(super::valid_token(&a), "{a}");
        assert!(!a.contains("token"), "{a}");
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
