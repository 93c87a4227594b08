//! Every request's context: its correlation id (from a W3C `traceparent` or an
//! `x-correlation-id` header, else a new one), its principal (from a bearer token), and
//! its idempotency key.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use cairn_policy::{Principal, TokenError};
use cairn_types::CorrelationId;

use crate::AppState;
use crate::problem::{FieldProblem, Location, Problem, ProblemCode};

/// The header that carries a correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// The header that makes a command safe to repeat.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// What the middleware learned about a request before any handler ran: its
/// correlation id. An id the caller chose is honoured only within the caller's own
/// tenant: once the caller is known ([`Correlation::settle`]), an id that already
/// belongs to another tenant is replaced by a fresh one, and the response says which
/// id was used.
#[derive(Debug, Clone)]
pub struct Correlation {
    chosen_by_caller: bool,
    settled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    id: std::sync::Arc<std::sync::Mutex<CorrelationId>>,
    /// Set when the request's command was a repeat: the first request's id.
    first_run: cairn_domain::FirstRun,
}

impl Correlation {
    fn new(correlation_id: CorrelationId, chosen_by_caller: bool) -> Correlation {
        Correlation {
            chosen_by_caller,
            settled: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(!chosen_by_caller)),
            id: std::sync::Arc::new(std::sync::Mutex::new(correlation_id)),
            first_run: cairn_domain::FirstRun::default(),
        }
    }

    /// The id the request carries now; for a command answered from its idempotency
    /// key, the id of the request that first ran it.
    pub fn current(&self) -> CorrelationId {
        if let Some(first) = self.first_run.correlation_id() {
            return first;
        }
        self.id
            .lock()
            .map_or_else(|_| CorrelationId::new_v7(), |id| *id)
    }

    /// The settled id of a request's correlation (a fresh one if it has none), and
    /// where the domain says that its command was a repeat.
    pub async fn settled(
        correlation: Option<Correlation>,
        state: &AppState,
        principal: &Principal,
    ) -> (CorrelationId, cairn_domain::FirstRun) {
        match correlation {
            Some(correlation) => (
                correlation.settle(state, principal).await,
                correlation.first_run.clone(),
            ),
            None => (CorrelationId::new_v7(), cairn_domain::FirstRun::default()),
        }
    }

    /// The id the request carries once its caller is known: a caller-chosen id that
    /// is already used outside the caller's tenant (or, for an anonymous caller, used
    /// at all) is replaced by a fresh one. Platform administrators, operators and
    /// services see every tenant, and keep theirs.
    pub async fn settle(&self, state: &AppState, principal: &Principal) -> CorrelationId {
        use std::sync::atomic::Ordering;
        if !self.chosen_by_caller || self.settled.swap(true, Ordering::AcqRel) {
            return self.current();
        }
        let scope = match principal {
            Principal::User { org_id, .. } => Some(Some(*org_id)),
            Principal::Anonymous => Some(None),
            Principal::Service { .. }
            | Principal::PlatformAdmin { .. }
            | Principal::Operator { .. } => None,
        };
        let Some(org) = scope else {
            return self.current();
        };
        let current = self.current();
        let foreign = cairn_domain::reads::correlation_used_elsewhere(state.db(), current, org)
            .await
            // When it cannot be checked, a fresh id is the safe answer.
            .unwrap_or(true);
        if !foreign {
            return current;
        }
        let fresh = CorrelationId::new_v7();
        if let Ok(mut id) = self.id.lock() {
            *id = fresh;
        }
        tracing::info!(chosen = %current, used = %fresh, "a caller's correlation id belongs to another tenant; a fresh one is used");
        fresh
    }
}

pub(crate) fn header_problem(name: &str, message: String) -> Problem {
    Problem::field(
        ProblemCode::InvalidField,
        FieldProblem {
            field: name.to_owned(),
            location: Location::Header,
            expected_location: None,
            message,
        },
    )
}

/// The correlation id a request carries. A malformed `traceparent` is ignored (the W3C
/// rule); a malformed `x-correlation-id` is refused.
fn correlation_from(headers: &HeaderMap) -> Result<CorrelationId, Problem> {
    if let Some(value) = headers.get(CORRELATION_HEADER) {
        let text = value.to_str().unwrap_or_default();
        return CorrelationId::parse(text)
            .map_err(|e| header_problem(CORRELATION_HEADER, e.to_string()));
    }
    if let Some(trace_id) = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(trace_id_of)
    {
        return Ok(CorrelationId::from_uuid(trace_id));
    }
    Ok(CorrelationId::new_v7())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), as a UUID.
pub fn trace_id_of(traceparent: &str) -> Option<uuid::Uuid> {
    parse_traceparent(traceparent).map(|(trace, _)| trace)
}

/// The caller's span in a `traceparent` of the trace `correlation_id`, which the
/// request's span is made a child of.
fn parent_span_of(headers: &HeaderMap, correlation_id: CorrelationId) -> Option<[u8; 8]> {
    let (trace, parent) = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_traceparent)?;
    (trace == correlation_id.as_uuid()).then_some(parent)
}

/// A `traceparent`'s trace id and parent span id.
fn parse_traceparent(traceparent: &str) -> Option<(uuid::Uuid, [u8; 8])> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex(version, 2) || *version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let trace = uuid::Uuid::parse_str(trace).ok()?;
    let parent = u64::from_str_radix(parent, 16).ok()?.to_be_bytes();
    Some((trace, parent))
}

/// Who a request turned out to be from, noted by the [`Ctx`] extractor for the
/// request's span.
#[derive(Debug, Clone, Default)]
pub struct Caller(std::sync::Arc<std::sync::Mutex<Option<CallerNote>>>);

/// Who called (for people), and their organization, if any.
type CallerNote = (String, Option<cairn_types::OrgId>);

impl Caller {
    pub(crate) fn note(&self, principal: &Principal) {
        if matches!(principal, Principal::Anonymous) {
            return;
        }
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((principal.describe(), principal.org_id()));
        }
    }

    /// Whether the request named a principal (other than anonymous).
    fn identified(&self) -> bool {
        self.get().is_some()
    }

    fn get(&self) -> Option<CallerNote> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

/// Middleware: gives every request a correlation id, returns it on every response
/// (`x-correlation-id`, and a `traceparent` with the same trace id), and writes it
/// into every problem document. Records the request as the first hop of its timeline
/// (a span), in the HTTP metrics, and as a `tracing` span.
pub async fn correlate(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started_at = chrono::Utc::now();
    let clock = std::time::Instant::now();
    let chosen_by_caller = request.headers().contains_key(CORRELATION_HEADER)
        || request.headers().contains_key("traceparent");
    let (correlation_id, mut refused) = match correlation_from(request.headers()) {
        Ok(id) => (id, None),
        Err(problem) => (CorrelationId::new_v7(), Some(problem)),
    };
    let correlation = Correlation::new(correlation_id, chosen_by_caller && refused.is_none());
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > crate::server::MAX_HEADER_BYTES {
        refused = Some(Problem::new(
            ProblemCode::HeadersTooLarge,
            format!(
                "the request's headers take {header_bytes} bytes; at most {} are read",
                crate::server::MAX_HEADER_BYTES
            ),
        ));
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "(no route)".to_owned(), |path| path.as_str().to_owned());
    let caller = Caller::default();
    request.extensions_mut().insert(correlation.clone());
    request.extensions_mut().insert(caller.clone());
    let span = tracing::info_span!(
        "http.request",
        http.method = %method,
        http.route = %route,
        correlation_id = %correlation_id,
        http.status = tracing::field::Empty,
    );
    let span_id = cairn_observe::otel::join_trace(
        &span,
        correlation_id.as_uuid(),
        parent_span_of(request.headers(), correlation_id),
    );
    let mut response = match refused {
        Some(problem) => problem.into_response(),
        None => {
            use tracing::Instrument as _;
            next.run(request).instrument(span.clone()).await
        }
    };
    let status = response.status().as_u16();
    span.record("http.status", status);
    // The trace the request's span joined; the id the request ends with may differ (a
    // caller's id replaced, or a repeat that names the request that first ran).
    let span_trace = correlation_id;
    let correlation_id = correlation.current();
    record_request(
        &state,
        correlation_id,
        &method,
        &route,
        status,
        &caller,
        started_at,
        clock.elapsed(),
    );
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        response = with_correlation(response, correlation_id).await;
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&correlation_id.to_string()) {
        headers.insert(HeaderName::from_static(CORRELATION_HEADER), value);
    }
    // The request's own span when spans are exported and it is in this trace, so that
    // a caller can hang its next hop under it; else any span id (the trace id is what
    // identifies).
    let span_id = span_id
        .filter(|_| span_trace == correlation_id)
        .map_or_else(
            || CorrelationId::new_v7().as_uuid().simple().to_string()[16..].to_owned(),
            |id| format!("{:016x}", u64::from_be_bytes(id)),
        );
    let traceparent = format!("00-{}-{span_id}-01", correlation_id.as_uuid().simple());
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(HeaderName::from_static("traceparent"), value);
    }
    response
}

/// The request's span, for its timeline, and its metrics.
#[allow(clippy::too_many_arguments)]
fn record_request(
    state: &AppState,
    correlation_id: CorrelationId,
    method: &axum::http::Method,
    route: &str,
    status: u16,
    caller: &Caller,
    started_at: chrono::DateTime<chrono::Utc>,
    took: std::time::Duration,
) {
    let metrics = cairn_observe::metrics();
    let method = method_label(method);
    metrics
        .http_requests
        .get_or_create(&cairn_observe::HttpLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status: status.to_string(),
        })
        .inc();
    metrics
        .http_request_seconds
        .get_or_create(&cairn_observe::RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
        })
        .observe(took.as_secs_f64());
    // A request no route took, or that was refused before anyone was identified,
    // is not a hop of anything worth keeping: anyone could write such rows forever.
    let anonymous = !caller.identified();
    if route == "(no route)"
        || status == 405
        || status == 431
        || (anonymous && (400..500).contains(&status))
    {
        return;
    }
    // The feed's long-lived requests and the scrapers' are not hops of anything.
    if route == "/metrics"
        || route.starts_with("/health")
        || route.starts_with("/v1/events/stream")
        || route.starts_with("/v1/events/ws")
        || route == "/console/live"
        || route.starts_with("/console/assets")
    {
        return;
    }
    let (who, org) = caller
        .get()
        .unwrap_or_else(|| ("an unidentified caller".to_owned(), None));
    let mut span = cairn_log::SpanRecord::ending_now(
        correlation_id,
        cairn_log::SpanKind::Http,
        format!("{method} {route} → {status}"),
        started_at,
    )
    .org(org)
    .attribute("status", status)
    .attribute("caller", who)
    .error((status >= 500).then(|| format!("answered {status}")));
    span.duration = took;
    state.db().record_span(span);
}

/// The method as a metric label: the standard ones by name, anything else `other`
/// (any token is a valid method, and labels must stay few).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Writes the correlation id into a problem document that lacks one.
async fn with_correlation(response: Response, correlation_id: CorrelationId) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "correlation_id".to_owned(),
            serde_json::json!(correlation_id),
        );
    }
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The context a handler runs in.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub correlation_id: CorrelationId,
    pub principal: Principal,
    /// When the bearer token expires, if one was sent.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub idempotency_key: Option<String>,
    /// Told by the domain when the command was a repeat; read back by the request's
    /// correlation.
    pub first_run: cairn_domain::FirstRun,
}

/// The problem for a token that did not verify.
pub fn token_problem(error: TokenError) -> Problem {
    match error {
        TokenError::Expired => Problem::new(ProblemCode::TokenExpired, error.to_string()),
        TokenError::Invalid { .. } | TokenError::Config { .. } => {
            Problem::new(ProblemCode::InvalidToken, error.to_string())
        }
    }
}

impl Ctx {
    /// Who makes an operator's decision in this request, for the record.
    pub fn operator(&self) -> cairn_dispatch::Operator {
        cairn_dispatch::Operator {
            actor: self.principal.actor(),
            correlation_id: self.correlation_id,
        }
    }

    /// The domain's command context for this request.
    pub fn command(&self) -> cairn_domain::CommandContext {
        cairn_domain::CommandContext {
            principal: self.principal.clone(),
            correlation_id: self.correlation_id,
            idempotency_key: self.idempotency_key.clone(),
            first_run: self.first_run.clone(),
            // A client is better told to try again than kept waiting.
            admission: cairn_log::Admission::Refuse,
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let correlation = parts.extensions.get::<Correlation>().cloned();
        let (principal, expires_at) = match parts.headers.get(header::AUTHORIZATION) {
            None => (Principal::Anonymous, None),
            Some(value) => {
                let text = value.to_str().unwrap_or_default();
                let Some(token) = text
                    .strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
                else {
                    return Err(Problem::new(
                        ProblemCode::InvalidToken,
                        "the Authorization header must be `Bearer <token>`",
                    ));
                };
                let verified = state.auth().verify(token.trim()).map_err(token_problem)?;
                let principal = crate::standing::honoured(state, verified.principal).await?;
                (principal, Some(verified.expires_at))
            }
        };
        let idempotency_key = match parts.headers.get(IDEMPOTENCY_HEADER) {
            None => None,
            Some(value) => {
                let key = value.to_str().unwrap_or_default();
                let valid =
                    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
                if !valid {
                    return Err(header_problem(
                        "Idempotency-Key",
                        "use 1 to 255 printable ASCII characters".to_owned(),
                    ));
                }
                Some(key.to_owned())
            }
        };
        if let Some(caller) = parts.extensions.get::<Caller>() {
            caller.note(&principal);
        }
        let (correlation_id, first_run) =
            Correlation::settled(correlation, state, &principal).await;
        Ok(Ctx {
            correlation_id,
            principal,
            expires_at,
            idempotency_key,
            first_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn traceparent_trace_ids() {
        let id = trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(id.simple().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }
}
