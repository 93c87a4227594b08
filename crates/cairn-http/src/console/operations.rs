//! Operations: the event log, failures and their retry, workflow runs, a request's
//! timeline, and the live feed the pages follow. The operators' decisions these pages
//! lead to (skips, pauses, resumes) have modules of their own: `skip`, `handlers`,
//! `pauses`.

use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use cairn_dispatch::{Dispatched, RetrySelection};
use cairn_domain::reads;
use cairn_log::{EventFilter, Outcome, RecordedEvent};
use cairn_policy::Action;
use cairn_types::{
    CorrelationId, ErrorCode, EventId, EventType, OrgId, Position, StreamId, WorkflowId,
};
use cairn_workflow::{PauseScope, Run, RunFilter, RunStatus};

use super::held::{self, HeldRow};
use super::pauses::{self, KindRow};
use super::skip::{self, DecisionRow};
use super::{
    Form, Layout, Session, Time, millis, not_found, plural, problem_page, query_value, render,
    time, time_ms,
};
use crate::AppState;
use crate::routes::{allow, read_problem};

/// Events per page of the log.
const PAGE: u32 = 50;

/// A serde enum's name: `completed`, `compensation_failed`.
fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An event in a list.
pub(crate) struct EventRow {
    pub event_id: String,
    pub position: i64,
    pub at: Time,
    pub event_type: String,
    pub stream: String,
    pub stream_id: String,
    /// `applied`, `failed`, `held` or `pending` (and `skipped` on an event's page, which
    /// reads its decisions).
    pub state: &'static str,
    pub error: Option<String>,
    /// For a failed event its stream waits behind: how many of its events wait.
    pub holding: Option<String>,
    /// Its organization's id and name, where a page names them.
    pub org: Option<(String, String)>,
}

fn state_of(event: &RecordedEvent) -> &'static str {
    match event.last_outcome() {
        Some(Outcome::Failed(_)) => "failed",
        Some(Outcome::Held { .. }) => "held",
        Some(_) => "applied",
        None => "pending",
    }
}

impl EventRow {
    fn of(event: &RecordedEvent) -> EventRow {
        EventRow {
            event_id: event.event_id.to_string(),
            position: event.position.get(),
            at: time_ms(&event.created_at),
            event_type: event.event_type.to_string(),
            stream: format!("{} {}", event.stream_type, event.stream_id),
            stream_id: event.stream_id.to_string(),
            state: state_of(event),
            error: event
                .processing_error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message)),
            holding: None,
            org: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsQuery {
    stream_id: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
    failed: Option<String>,
    /// Only failed events with this error code (the failures page's "all of them").
    error_code: Option<String>,
    org_id: Option<String>,
    /// A time range: events stored from this time, and before that one (UTC, as
    /// `2026-12-07T09:30`, a date, or RFC 3339 with an offset).
    from: Option<String>,
    to: Option<String>,
    /// Cursors: older events (before a position), or newer ones (after it).
    before: Option<String>,
    after: Option<String>,
    /// `csv` or `json`: the list as a file (see [`super::export`]).
    format: Option<String>,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    layout: Layout,
    stream_id: String,
    event_type: String,
    correlation_id: String,
    org_id: String,
    from: String,
    to: String,
    failed: bool,
    errors: Vec<String>,
    rows: Vec<EventRow>,
    older: Option<String>,
    newer: Option<String>,
    newest: Option<String>,
    /// This list's address with its filters, ready for `format=…`.
    export: String,
}

/// Parses an optional filter value; an error names the filter.
fn parse<T>(
    value: &Option<String>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    errors: &mut Vec<String>,
) -> Option<T> {
    let text = value.as_deref().map(str::trim).filter(|t| !t.is_empty())?;
    match parse(text) {
        Ok(value) => Some(value),
        Err(message) => {
            errors.push(format!("{name}: {message}"));
            None
        }
    }
}

/// A bound of a time range, in UTC unless it says otherwise: `2026-12-07T09:30`
/// (what a browser's date-time field sends), with seconds, a date alone (its
/// midnight), or RFC 3339 with an offset.
fn time_bound(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{NaiveDate, NaiveDateTime, Utc};
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for layout in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, layout) {
            return Ok(at.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
        .ok_or_else(|| format!("{text:?} is not a time: write it as 2026-12-07T09:30 (UTC)"))
}

/// `GET /console/events`: the log, newest first, filtered; live on its first page.
pub(crate) async fn events(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<EventsQuery>,
) -> Response {
    let grant = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
    };
    let mut errors = Vec::new();
    let stream_id = parse(
        &query.stream_id,
        "stream",
        |t| StreamId::parse(t).map_err(|e| e.to_string()),
        &mut errors,
    );
    let event_type = parse(
        &query.event_type,
        "type",
        |t| EventType::parse(t).map_err(|e| e.to_string()),
        &mut errors,
    );
    let correlation_id = parse(
        &query.correlation_id,
        "correlation id",
        |t| CorrelationId::parse(t).map_err(|e| e.to_string()),
        &mut errors,
    );
    let before = parse(
        &query.before,
        "before",
        |t| {
            t.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Position::new)
                .ok_or_else(|| "must be a log position".to_owned())
        },
        &mut errors,
    );
    let error_code = parse(
        &query.error_code,
        "error code",
        |t| {
            t.parse::<ErrorCode>()
                .map_err(|_| format!("{t:?} is not an error code"))
        },
        &mut errors,
    );
    let org_id = parse(
        &query.org_id,
        "organization",
        |t| OrgId::parse(t).map_err(|e| e.to_string()),
        &mut errors,
    );
    let after = parse(
        &query.after,
        "after",
        |t| {
            t.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Position::new)
                .ok_or_else(|| "must be a log position".to_owned())
        },
        &mut errors,
    );
    let from = parse(&query.from, "from", time_bound, &mut errors);
    let to = parse(&query.to, "to", time_bound, &mut errors);
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        errors.push("to: must be later than from".to_owned());
    }
    // A time range is a range of positions, within which the cursors page.
    let (mut floor, mut ceiling) = (None, None);
    if errors.is_empty() {
        for (bound, slot) in [(from, &mut floor), (to, &mut ceiling)] {
            if let Some(at) = bound {
                match reads::first_position_since(state.db(), &grant, at).await {
                    Ok(position) => *slot = Some(position),
                    Err(error) => return problem_page(&session, &read_problem(error)),
                }
            }
        }
    }
    let failed = query.failed.is_some_and(|f| !f.is_empty()) || error_code.is_some();
    // Newest first; on the way back to newer events (`after`), the nearest ones in
    // ascending order, turned round.
    let filter = EventFilter {
        limit: Some(PAGE),
        stream_id,
        event_type: event_type.clone(),
        correlation_id,
        org_id,
        failed,
        error_code,
        before: match (before, ceiling) {
            (Some(before), Some(ceiling)) => Some(before.min(ceiling)),
            (before, ceiling) => before.or(ceiling),
        },
        after: after
            .max(floor.map(|first| Position::new(first.get() - 1)))
            .unwrap_or_default(),
        newest_first: after.is_none(),
        ..EventFilter::default()
    };
    match super::export::Format::asked(query.format.as_deref()) {
        Ok(Some(format)) if errors.is_empty() => {
            return export_events(&state, &session, &grant, filter, format).await;
        }
        Ok(_) => {}
        Err(error) => errors.push(error),
    }
    let events = if errors.is_empty() {
        match reads::events(state.store(), &grant, filter).await {
            Ok(mut events) => {
                if after.is_some() {
                    events.reverse();
                }
                events
            }
            Err(error) => return problem_page(&session, &read_problem(error)),
        }
    } else {
        Vec::new()
    };
    let mut filters = String::new();
    let mut live = String::from("views=false");
    for (name, value) in [
        ("stream_id", query.stream_id.as_deref()),
        ("event_type", query.event_type.as_deref()),
        ("correlation_id", query.correlation_id.as_deref()),
        ("failed", failed.then_some("1")),
        ("error_code", query.error_code.as_deref()),
        ("org_id", query.org_id.as_deref()),
        ("from", query.from.as_deref()),
        ("to", query.to.as_deref()),
    ] {
        if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
            filters.push_str(&format!("&{name}={}", query_value(value)));
            if name == "stream_id" || name == "event_type" {
                live.push_str(&format!("&{name}={}", query_value(value)));
            }
        }
    }
    let full = events.len() as u32 == PAGE;
    let older = (full || after.is_some())
        .then(|| {
            events
                .last()
                .map(|e| format!("/console/events?before={}{filters}", e.position))
        })
        .flatten();
    let newer = (before.is_some() || (after.is_some() && full))
        .then(|| {
            events
                .first()
                .map(|e| format!("/console/events?after={}{filters}", e.position))
        })
        .flatten();
    let paged = before.is_some() || after.is_some();
    let newest = paged.then(|| format!("/console/events?{}", filters.trim_start_matches('&')));
    let here = format!("/console/events?{}", filters.trim_start_matches('&'));
    let mut layout = Layout::new(&session, "Events", "/events")
        .attention(super::attention::banner(&state, &session).await);
    if !paged && errors.is_empty() {
        layout = layout.live(live, here);
    }
    let names = event_org_names(&state, &session, &events).await;
    let rows = events
        .iter()
        .map(|event| {
            let mut row = EventRow::of(event);
            row.org = event.metadata.org_id.map(|org| {
                let name = names.get(&org).cloned().unwrap_or_else(|| org.to_string());
                (org.to_string(), name)
            });
            row
        })
        .collect();
    render(
        StatusCode::OK,
        &EventsPage {
            layout,
            stream_id: query.stream_id.unwrap_or_default(),
            event_type: query.event_type.unwrap_or_default(),
            correlation_id: query.correlation_id.unwrap_or_default(),
            org_id: query.org_id.unwrap_or_default(),
            from: query.from.unwrap_or_default(),
            to: query.to.unwrap_or_default(),
            failed,
            errors,
            rows,
            older,
            newer,
            newest,
            export: format!("/console/events?{}&", filters.trim_start_matches('&'))
                .replace("?&", "?"),
        },
    )
}

/// The events `filter` selects, up to an export's most, as a file.
async fn export_events(
    state: &AppState,
    session: &Session,
    grant: &cairn_policy::Grant,
    mut filter: EventFilter,
    format: super::export::Format,
) -> Response {
    filter.limit = Some(super::export::MOST_ROWS);
    let mut events = match reads::events(state.store(), grant, filter.clone()).await {
        Ok(events) => events,
        Err(error) => return problem_page(session, &read_problem(error)),
    };
    if !filter.newest_first {
        events.reverse();
    }
    let names = event_org_names(state, session, &events).await;
    let rows = events
        .iter()
        .map(|event| {
            let org = event.metadata.org_id;
            vec![
                event.position.get().to_string(),
                event
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event.event_type.to_string(),
                org.map(|o| o.to_string()).unwrap_or_default(),
                org.and_then(|o| names.get(&o).cloned()).unwrap_or_default(),
                event.stream_type.to_string(),
                event.stream_id.to_string(),
                state_of(event).to_owned(),
                event
                    .processing_error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default(),
                event.event_id.to_string(),
                event.metadata.correlation_id.to_string(),
            ]
        })
        .collect();
    super::export::file(
        format,
        "events",
        &[
            "position",
            "time",
            "type",
            "org_id",
            "organization",
            "stream_type",
            "stream_id",
            "outcome",
            "error",
            "event_id",
            "correlation_id",
        ],
        rows,
    )
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    layout: Layout,
    event: EventRow,
    stream_type: String,
    stream_id: String,
    version: i64,
    payload: String,
    /// Which version of its type the payload is shown at, and how it was stored.
    payload_version: String,
    metadata: String,
    correlation_id: String,
    processed_at: Option<Time>,
    hash: String,
    related: Vec<EventRow>,
    held: Option<Waiting>,
    decisions: Vec<DecisionRow>,
    notice: Option<&'static str>,
    may_retry: bool,
    may_skip: bool,
    may_trace: bool,
}

/// "version 2", "version 2, upcast from version 1 as stored", or, for an event this
/// build cannot read at its current version, what was stored and what it reads.
fn payload_version(state: &AppState, event: &RecordedEvent) -> String {
    let current = state
        .store()
        .dispatcher()
        .registry()
        .spec(&event.event_type)
        .map(|spec| spec.version);
    match current {
        Some(current) if event.event_version != current => format!(
            "version {} as stored; this build reads version {current} and could not bring it there",
            event.stored_version
        ),
        _ if event.stored_version != event.event_version => format!(
            "version {}, upcast from version {} as stored",
            event.event_version, event.stored_version
        ),
        _ => format!("version {}", event.event_version),
    }
}

/// What a held event waits for, for its page.
pub(crate) struct Waiting {
    /// The event it waits behind: itself when its own route is paused.
    pub behind_event_id: Option<String>,
    pub behind_position: i64,
    pub behind_itself: bool,
    /// Why that one does not apply (a clause: `failed with …`, or `its handler route …
    /// is paused …` for itself), and what releases it.
    pub why: String,
    pub releases: String,
    /// The route's resume page, when a pause holds it.
    pub resume_href: Option<String>,
}

/// What `event`, held behind the event at `behind`, waits for: that event's failure or
/// its route's pause, and what releases it.
async fn waiting(
    state: &AppState,
    grant: &cairn_policy::Grant,
    event: &RecordedEvent,
    behind: Position,
) -> Result<Waiting, reads::ReadsError> {
    let first = if behind == event.position {
        Some(event.clone())
    } else {
        let filter = EventFilter {
            stream_id: Some(event.stream_id),
            after: Position::new(behind.get() - 1),
            limit: Some(1),
            ..EventFilter::default()
        };
        reads::events(state.store(), grant, filter)
            .await?
            .into_iter()
            .find(|e| e.position == behind)
    };
    let paused = reads::paused_routes(state.db(), grant).await?;
    let pause = first
        .as_ref()
        .filter(|first| first.is_held())
        .and_then(|first| held::covering(&paused, &first.stream_type, &first.event_type));
    let (why, releases) = match (&first, pause) {
        (Some(first), _) if first.is_failed() => (
            format!(
                "failed with {}",
                first
                    .processing_error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default()
            ),
            "It applies, in position order, once that event is retried (when its cause is \
             fixed) or skipped."
                .to_owned(),
        ),
        (_, Some(pause)) if behind == event.position => (
            format!("its {}", held::pause_text(pause)),
            "It applies, in position order, once the route is resumed.".to_owned(),
        ),
        (_, Some(pause)) => (
            format!("is held because its {}", held::pause_text(pause)),
            "It applies, in position order, once the route is resumed.".to_owned(),
        ),
        _ => (
            "is not applied yet".to_owned(),
            "It applies, in position order, once that event is.".to_owned(),
        ),
    };
    Ok(Waiting {
        behind_event_id: first.as_ref().map(|e| e.event_id.to_string()),
        behind_position: behind.get(),
        behind_itself: behind == event.position,
        why,
        releases,
        resume_href: pause.map(|p| held::resume_href(&p.route)),
    })
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NoticeQuery {
    notice: Option<String>,
}

/// The event `id` if this person sees it.
pub(crate) async fn visible_event(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<RecordedEvent, Response> {
    let Ok(id) = EventId::parse(id) else {
        return Err(not_found(session, "event"));
    };
    let grant = allow(&session.ctx, Action::ListEvents).map_err(|_| not_found(session, "event"))?;
    match reads::event(state.store(), &grant, id).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(not_found(session, "event")),
        Err(error) => Err(problem_page(session, &read_problem(error))),
    }
}

/// `GET /console/events/{event_id}`: the event, what it waits for if it is held, and
/// the operators' decisions about it.
pub(crate) async fn event(
    State(state): State<AppState>,
    session: Session,
    Path(event_id): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let event = match visible_event(&state, &session, &event_id).await {
        Ok(event) => event,
        Err(response) => return response,
    };
    let (related, held) = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => {
            let related = reads::events(
                state.store(),
                &grant,
                EventFilter {
                    correlation_id: Some(event.metadata.correlation_id),
                    limit: Some(200),
                    ..EventFilter::default()
                },
            )
            .await
            .unwrap_or_default();
            let held = match event.held_behind {
                Some(behind) => match waiting(&state, &grant, &event, behind).await {
                    Ok(waiting) => Some(waiting),
                    Err(error) => return problem_page(&session, &read_problem(error)),
                },
                None => None,
            };
            (related, held)
        }
        Err(_) => (Vec::new(), None),
    };
    crate::access::record(
        &state,
        &session.ctx.principal,
        session.ctx.correlation_id,
        cairn_log::AccessVia::Console,
        format!("event {}", event.event_id),
        event.metadata.org_id,
        cairn_log::personal_subjects([&event]),
    )
    .await;
    let decisions = skip::decisions(&state, &session, &event).await;
    let mut row = EventRow::of(&event);
    if row.state == "applied" && decisions.last().is_some_and(|d| d.what == "skipped") {
        row.state = "skipped";
    }
    let decidable = event.is_failed() && !event.is_held();
    let page = EventPage {
        layout: Layout::new(&session, format!("Event {}", event.position), "/events")
            .attention(super::attention::banner(&state, &session).await),
        stream_type: event.stream_type.to_string(),
        stream_id: event.stream_id.to_string(),
        version: event.stream_version.get(),
        payload: serde_json::to_string_pretty(&event.data).unwrap_or_default(),
        payload_version: payload_version(&state, &event),
        metadata: serde_json::to_string_pretty(&event.metadata).unwrap_or_default(),
        correlation_id: event.metadata.correlation_id.to_string(),
        processed_at: event.processed_at.as_ref().map(time),
        hash: event.hash.clone(),
        related: related.iter().map(EventRow::of).collect(),
        held,
        decisions,
        notice: match query.notice.as_deref() {
            Some("skipped") if row.state == "skipped" => Some(
                "The event is skipped: it will never be applied. The events its stream held \
                 behind it, if any, were released in position order.",
            ),
            _ => None,
        },
        may_retry: decidable && session.may(&Action::RetryEvents),
        may_skip: decidable && session.may(&Action::SkipEvents),
        may_trace: session.may(&Action::ReadTrace),
        event: row,
    };
    render(StatusCode::OK, &page)
}

/// What one retried event came to.
pub(crate) struct RetryRow {
    pub event_id: String,
    pub position: i64,
    pub event_type: String,
    pub fixed: bool,
    pub error: Option<String>,
}

impl RetryRow {
    fn of(dispatched: &Dispatched) -> RetryRow {
        let error = match &dispatched.outcome {
            Outcome::Failed(e) => Some(format!("{}: {}", e.code, e.message)),
            _ => None,
        };
        RetryRow {
            event_id: dispatched.event.event_id.to_string(),
            position: dispatched.event.position.get(),
            event_type: dispatched.event.event_type.to_string(),
            fixed: error.is_none(),
            error,
        }
    }
}

#[derive(Template)]
#[template(path = "console/retried.html")]
struct RetriedPage {
    layout: Layout,
    retried: u64,
    fixed: u64,
    rows: Vec<RetryRow>,
    refused: Vec<String>,
    /// Events a bulk retry left as they were (held, or their route paused).
    not_retried: Option<String>,
}

fn retried_page(
    session: &Session,
    retried: u64,
    fixed: u64,
    rows: Vec<RetryRow>,
    refused: Vec<String>,
) -> Response {
    // Nothing was retried, and something was refused: the answer says so.
    let status = if retried == 0 && !refused.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    render(
        status,
        &RetriedPage {
            layout: Layout::new(session, "Retried", "/failures"),
            retried,
            fixed,
            rows,
            refused,
            not_retried: None,
        },
    )
}

/// Retries the events these ids name, one by one; what each came to.
async fn retry_ids(
    state: &AppState,
    session: &Session,
    ids: &[&str],
) -> (Vec<RetryRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut refused = Vec::new();
    for id in ids {
        let event = match visible_event(state, session, id).await {
            Ok(event) => event,
            Err(_) => {
                refused.push(format!("{id}: there is no such event"));
                continue;
            }
        };
        match state
            .domain()
            .store()
            .retry(event.event_id, &session.ctx.operator())
            .await
        {
            Ok(dispatched) => rows.push(RetryRow::of(&dispatched)),
            Err(error) => refused.push(format!("event {}: {error}", event.position)),
        }
    }
    (rows, refused)
}

/// `POST /console/events/{event_id}/retry`.
pub(crate) async fn retry_one(
    State(state): State<AppState>,
    session: Session,
    Path(event_id): Path<String>,
    request: Request,
) -> Response {
    if let Err(problem) = allow(&session.ctx, Action::RetryEvents) {
        return problem_page(&session, &problem);
    }
    if let Err(refused) = Form::read(request).await {
        return refused;
    }
    let (rows, refused) = retry_ids(&state, &session, &[event_id.as_str()]).await;
    let fixed = rows.iter().filter(|r| r.fixed).count() as u64;
    retried_page(&session, rows.len() as u64, fixed, rows, refused)
}

/// A group of failed events with one code.
pub(crate) struct FailureGroup {
    pub code: String,
    pub title: String,
    pub count: i64,
    pub rows: Vec<EventRow>,
}

#[derive(Template)]
#[template(path = "console/failures.html")]
struct FailuresPage {
    layout: Layout,
    held: Vec<HeldRow>,
    groups: Vec<FailureGroup>,
    may_retry: bool,
    may_skip: bool,
    may_pause: bool,
}

/// Failed events shown per code.
const PER_GROUP: u32 = 20;

/// `GET /console/failures`: the held streams first, then failed events grouped by
/// code.
pub(crate) async fn failures(State(state): State<AppState>, session: Session) -> Response {
    let grant = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
    };
    let held = match held::rows(&state, &grant).await {
        Ok(held) => held,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let counts = match reads::failures_by_code(state.db(), &grant).await {
        Ok(counts) => counts,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let mut groups = Vec::new();
    for count in counts {
        let Ok(code) = count.code.parse::<ErrorCode>() else {
            continue;
        };
        let filter = EventFilter {
            failed: true,
            error_code: Some(code),
            limit: Some(PER_GROUP),
            newest_first: true,
            ..EventFilter::default()
        };
        let rows = match reads::events(state.store(), &grant, filter).await {
            Ok(events) => {
                let names = event_org_names(&state, &session, &events).await;
                events
                    .iter()
                    .map(|event| {
                        let mut row = EventRow::of(event);
                        row.org = event.metadata.org_id.and_then(|org| {
                            names.get(&org).map(|name| (org.to_string(), name.clone()))
                        });
                        row.holding = held
                            .iter()
                            .find(|h| h.failed && h.behind_event_id == row.event_id)
                            .map(|h| format!("holds its stream: {} waiting", h.n_held));
                        row
                    })
                    .collect()
            }
            Err(error) => return problem_page(&session, &read_problem(error)),
        };
        groups.push(FailureGroup {
            title: code.title().to_owned(),
            code: count.code,
            count: count.count,
            rows,
        });
    }
    render(
        StatusCode::OK,
        &FailuresPage {
            layout: Layout::new(&session, "Failures", "/failures")
                .live("views=false", "/console/failures")
                .attention(super::attention::banner(&state, &session).await),
            held,
            groups,
            may_retry: session.may(&Action::RetryEvents),
            may_skip: session.may(&Action::SkipEvents),
            may_pause: session.may(&Action::PauseHandlers),
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RetryCodeQuery {
    code: Option<String>,
}

#[derive(Template)]
#[template(path = "console/retry_confirm.html")]
struct RetryConfirmPage {
    layout: Layout,
    code: String,
    title: String,
    count: i64,
    newest: i64,
}

/// `GET /console/failures/retry?code=`: what retrying every event of a code would
/// touch, and the button that does it.
pub(crate) async fn retry_code_page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<RetryCodeQuery>,
) -> Response {
    if let Err(problem) = allow(&session.ctx, Action::RetryEvents) {
        return problem_page(&session, &problem);
    }
    let text = query.code.unwrap_or_default();
    match text.parse::<ErrorCode>() {
        Ok(code) => retry_confirmation(&state, &session, code).await,
        Err(_) => retried_page(
            &session,
            0,
            0,
            Vec::new(),
            vec![format!("{text:?} is not an error code")],
        ),
    }
}

/// The confirmation of a retry of every failed event with `code`: how many, and the
/// newest; nothing to confirm when none fails with it now.
async fn retry_confirmation(state: &AppState, session: &Session, code: ErrorCode) -> Response {
    let grant = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(session, &problem),
    };
    let counts = match reads::failures_by_code(state.db(), &grant).await {
        Ok(counts) => counts,
        Err(error) => return problem_page(session, &read_problem(error)),
    };
    let Some(count) = counts.into_iter().find(|c| c.code == code.as_str()) else {
        return retried_page(
            session,
            0,
            0,
            Vec::new(),
            vec![format!(
                "No event fails with {} now: there is nothing to retry.",
                code.as_str()
            )],
        );
    };
    render(
        StatusCode::OK,
        &RetryConfirmPage {
            layout: Layout::new(
                session,
                format!("Retry every {} failure?", code.as_str()),
                "/failures",
            ),
            code: count.code,
            title: code.title().to_owned(),
            count: count.count,
            newest: count.newest.get(),
        },
    )
}

/// `POST /console/failures`: retries the selected events, or every one with a code.
pub(crate) async fn retry_many(
    State(state): State<AppState>,
    session: Session,
    request: Request,
) -> Response {
    if let Err(problem) = allow(&session.ctx, Action::RetryEvents) {
        return problem_page(&session, &problem);
    }
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    if let Some(code) = form.get("retry_code").filter(|c| !c.is_empty()) {
        let Ok(code) = code.parse::<ErrorCode>() else {
            return retried_page(
                &session,
                0,
                0,
                Vec::new(),
                vec![format!("{code:?} is not an error code")],
            );
        };
        // Every event of a code at once only once the person has seen how many.
        if form.get("confirmed") != Some("1") {
            return retry_confirmation(&state, &session, code).await;
        }
        let selection = RetrySelection {
            code: Some(code),
            stream_type: None,
        };
        return match state
            .domain()
            .store()
            .retry_failed(&selection, &session.ctx.operator(), &mut |_, _| {})
            .await
        {
            Ok(report) => render(
                StatusCode::OK,
                &RetriedPage {
                    layout: Layout::new(&session, "Retried", "/failures"),
                    retried: report.n_retried,
                    fixed: report.n_fixed,
                    rows: report.still_failed.iter().map(RetryRow::of).collect(),
                    refused: Vec::new(),
                    not_retried: (report.n_not_retried > 0).then(|| {
                        format!(
                            "{} not retried: each waits behind an earlier failure of its \
                             stream, or its handler route is paused.",
                            plural(report.n_not_retried, "event", "events"),
                        )
                    }),
                },
            ),
            Err(error) => problem_page(&session, &crate::routes::retry_problem(error)),
        };
    }
    let ids = form.all("event_id");
    if ids.is_empty() {
        return retried_page(
            &session,
            0,
            0,
            Vec::new(),
            vec![
                "No event was selected: tick the events to retry, or retry all of a code."
                    .to_owned(),
            ],
        );
    }
    let (rows, refused) = retry_ids(&state, &session, &ids).await;
    let fixed = rows.iter().filter(|r| r.fixed).count() as u64;
    retried_page(&session, rows.len() as u64, fixed, rows, refused)
}

/// A run in a list.
pub(crate) struct RunRow {
    pub id: String,
    /// The kind, as a person reads it ("Organization bootstrap").
    pub kind: String,
    pub status: String,
    pub step: String,
    pub org: String,
    /// The organization's name, when the viewer may read it.
    pub org_name: String,
    pub created_at: Time,
    pub updated_at: Time,
    /// `paused`, or `paused with its kind`, while it is paused.
    pub paused: Option<&'static str>,
    /// When a running run asleep (on a timer, or waiting to try a step again) wakes.
    pub asleep_until: Option<Time>,
}

impl RunRow {
    fn of(
        run: Run,
        names: &std::collections::HashMap<OrgId, String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> RunRow {
        let asleep_until = (run.status == RunStatus::Running)
            .then_some(run.next_run_at)
            .flatten()
            .filter(|at| *at > now)
            .map(|at| time(&at));
        RunRow {
            id: run.id.to_string(),
            status: run.status.as_str().to_owned(),
            step: run.current_step.unwrap_or_default(),
            org: run.org_id.map(|o| o.to_string()).unwrap_or_default(),
            org_name: run
                .org_id
                .and_then(|o| names.get(&o).cloned())
                .unwrap_or_default(),
            created_at: time(&run.created_at),
            updated_at: time(&run.updated_at),
            paused: run.paused.map(|pause| match pause.scope {
                PauseScope::Run => "paused",
                PauseScope::Kind => "paused with its kind",
            }),
            asleep_until,
            kind: super::kind_label(&run.kind),
        }
    }
}

/// A status (or `asleep`, or `working`) with its count and the list it opens.
pub(crate) struct CountLink {
    pub label: String,
    pub count: i64,
    pub href: String,
    pub current: bool,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WorkflowsQuery {
    status: Option<String>,
    kind: Option<String>,
    paused: Option<String>,
    /// `asleep` (running, on a timer or waiting to try again) or `working` (running
    /// and due).
    state: Option<String>,
    after: Option<String>,
    before: Option<String>,
    notice: Option<String>,
    kind_changed: Option<String>,
    /// `csv` or `json`: the list as a file (see [`super::export`]).
    format: Option<String>,
}

#[derive(Template)]
#[template(path = "console/workflows.html")]
struct WorkflowsPage {
    layout: Layout,
    notice: Option<String>,
    kinds: Vec<KindRow>,
    may_pause_kinds: bool,
    statuses: Vec<(String, bool)>,
    kind: String,
    paused: bool,
    errors: Vec<String>,
    rows: Vec<RunRow>,
    counts: Vec<CountLink>,
    newer: Option<String>,
    older: Option<String>,
    /// This list's address with its filters, ready for `format=…`.
    export: String,
}

/// What the runs page says after a kind was paused or resumed; only for a kind the
/// engine runs, so that a link cannot put words in the console's mouth.
fn kinds_notice(state: &AppState, query: &WorkflowsQuery) -> Option<String> {
    let kind = query.kind_changed.as_deref()?;
    let kind = state
        .domain()
        .engine()
        .kinds()
        .into_iter()
        .find(|k| *k == kind)?;
    match query.notice.as_deref()? {
        "kind-paused" => Some(format!(
            "Every {kind} run is paused: each stops after its step in flight, and new ones wait."
        )),
        "kind-resumed" => Some(format!(
            "The {kind} runs are resumed: they go on where they stopped."
        )),
        _ => None,
    }
}

/// `GET /console/workflows`: the kinds with their state, then runs by status and kind.
pub(crate) async fn workflows(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<WorkflowsQuery>,
) -> Response {
    let grant = match allow(&session.ctx, Action::ListWorkflows) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
    };
    let mut errors = Vec::new();
    let status = parse(&query.status, "status", RunStatus::parse, &mut errors);
    let kind = parse(
        &query.kind,
        "kind",
        |k| {
            if crate::routes::valid_kind(k) {
                Ok(k.to_owned())
            } else {
                Err("a workflow kind is lower-case letters, digits and underscores".to_owned())
            }
        },
        &mut errors,
    );
    let cursor = |text: &Option<String>, name: &str, errors: &mut Vec<String>| {
        parse(
            text,
            name,
            |t| WorkflowId::parse(t).map_err(|e| e.to_string()),
            errors,
        )
    };
    let after = cursor(&query.after, "after", &mut errors);
    let before = cursor(&query.before, "before", &mut errors);
    let asleep = match query.state.as_deref().unwrap_or_default() {
        "" => None,
        "asleep" => Some(true),
        "working" => Some(false),
        other => {
            errors.push(format!("state: {other:?} is neither asleep nor working"));
            None
        }
    };
    let paused = query.paused.as_deref().is_some_and(|p| !p.is_empty());
    let now = state.domain().engine().now();
    let kinds = match pauses::kind_rows(&state, &grant).await {
        Ok(kinds) => kinds,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let export = super::export::Format::asked(query.format.as_deref()).unwrap_or_else(|error| {
        errors.push(error);
        None
    });
    let runs = if errors.is_empty() {
        let mut filter = RunFilter {
            status,
            kind: kind.clone(),
            paused,
            asleep: asleep.map(|asleep| (asleep, now)),
            newest_first: true,
            after,
            before,
            limit: Some(PAGE),
            ..RunFilter::default()
        };
        if let Some(format) = export {
            filter.limit = Some(super::export::MOST_ROWS);
            return export_runs(&state, &session, &grant, filter, format, now).await;
        }
        match reads::workflows(state.db(), &grant, filter).await {
            Ok(runs) => runs,
            Err(error) => return problem_page(&session, &read_problem(error)),
        }
    } else {
        Vec::new()
    };
    let counts = match reads::workflow_counts(state.db(), &grant, now).await {
        Ok(counts) => counts,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let here = workflows_here(status, kind.as_deref(), paused, query.state.as_deref());
    let full = runs.len() as u32 == PAGE;
    let newer = (before.is_some() || (after.is_some() && full))
        .then(|| runs.first().map(|r| format!("{here}after={}", r.id)))
        .flatten();
    let older = (full || after.is_some())
        .then(|| runs.last().map(|r| format!("{here}before={}", r.id)))
        .flatten();
    let names = org_names(&state, &session, &runs).await;
    let rows = runs
        .into_iter()
        .map(|run| RunRow::of(run, &names, now))
        .collect();
    let count_links = count_links(&counts, status, asleep);
    render(
        StatusCode::OK,
        &WorkflowsPage {
            layout: Layout::new(&session, "Workflows", "/workflows")
                .live("views=false&stream_type=workflow", here.clone())
                .attention(super::attention::banner(&state, &session).await),
            notice: kinds_notice(&state, &query),
            kinds,
            may_pause_kinds: session.may(&Action::PauseWorkflowKinds),
            statuses: RunStatus::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), Some(*s) == status))
                .collect(),
            kind: query.kind.unwrap_or_default(),
            paused,
            errors,
            rows,
            counts: count_links,
            newer,
            older,
            export: here.clone(),
        },
    )
}

/// The runs `filter` selects, up to an export's most, as a file.
async fn export_runs(
    state: &AppState,
    session: &Session,
    grant: &cairn_policy::Grant,
    filter: RunFilter,
    format: super::export::Format,
    now: chrono::DateTime<chrono::Utc>,
) -> Response {
    let runs = match reads::workflows(state.db(), grant, filter).await {
        Ok(runs) => runs,
        Err(error) => return problem_page(session, &read_problem(error)),
    };
    let names = org_names(state, session, &runs).await;
    let iso = |at: &chrono::DateTime<chrono::Utc>| {
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let rows = runs
        .iter()
        .map(|run| {
            let asleep_until = (run.status == RunStatus::Running)
                .then_some(run.next_run_at)
                .flatten()
                .filter(|at| *at > now);
            vec![
                run.id.to_string(),
                run.kind.clone(),
                run.org_id.map(|o| o.to_string()).unwrap_or_default(),
                run.org_id
                    .and_then(|o| names.get(&o).cloned())
                    .unwrap_or_default(),
                run.status.as_str().to_owned(),
                asleep_until.as_ref().map(iso).unwrap_or_default(),
                run.current_step.clone().unwrap_or_default(),
                iso(&run.created_at),
                iso(&run.updated_at),
                run.correlation_id.to_string(),
            ]
        })
        .collect();
    super::export::file(
        format,
        "runs",
        &[
            "run_id",
            "kind",
            "org_id",
            "organization",
            "status",
            "asleep_until",
            "step",
            "started",
            "changed",
            "correlation_id",
        ],
        rows,
    )
}

/// Links to the runs of each status (and the running ones asleep or at work), with
/// their counts; the one matching `status` or `asleep` marked current.
pub(crate) fn count_links(
    counts: &cairn_workflow::state::RunCounts,
    status: Option<RunStatus>,
    asleep: Option<bool>,
) -> Vec<CountLink> {
    let link = |label: &str, count: i64, href: String, current: bool| CountLink {
        label: label.to_owned(),
        count,
        href,
        current,
    };
    let mut links = Vec::new();
    for (label, count) in &counts.by_status {
        let current = status.map(RunStatus::as_str) == Some(label.as_str()) && asleep.is_none();
        links.push(link(
            label,
            *count,
            format!("/console/workflows?status={label}"),
            current,
        ));
        if label == RunStatus::Running.as_str() {
            links.push(link(
                "of which asleep",
                counts.asleep,
                "/console/workflows?state=asleep".to_owned(),
                asleep == Some(true),
            ));
            links.push(link(
                "at work",
                count - counts.asleep,
                "/console/workflows?state=working".to_owned(),
                asleep == Some(false),
            ));
        }
    }
    links
}

/// The names of the events' organizations, when the viewer may read organizations.
async fn event_org_names(
    state: &AppState,
    session: &Session,
    events: &[RecordedEvent],
) -> std::collections::HashMap<OrgId, String> {
    let ids: Vec<OrgId> = events.iter().filter_map(|e| e.metadata.org_id).collect();
    names_of(state, session, &ids).await
}

/// The names of organizations `ids`, when the viewer may read organizations.
async fn names_of(
    state: &AppState,
    session: &Session,
    ids: &[OrgId],
) -> std::collections::HashMap<OrgId, String> {
    let Ok(grant) = allow(&session.ctx, Action::ListOrganizations) else {
        return Default::default();
    };
    reads::organization_names(state.db(), &grant, ids)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(error = %error, "cannot read the names of a list's organizations");
            Default::default()
        })
}

/// The names of the runs' organizations, when the viewer may read organizations.
async fn org_names(
    state: &AppState,
    session: &Session,
    runs: &[Run],
) -> std::collections::HashMap<OrgId, String> {
    let ids: Vec<OrgId> = runs.iter().filter_map(|run| run.org_id).collect();
    names_of(state, session, &ids).await
}

/// The runs page with these filters, ready for one more `name=value`.
fn workflows_here(
    status: Option<RunStatus>,
    kind: Option<&str>,
    paused: bool,
    state: Option<&str>,
) -> String {
    let mut url = String::from("/console/workflows?");
    if let Some(status) = status {
        url.push_str(&format!("status={}&", status.as_str()));
    }
    if let Some(kind) = kind {
        url.push_str(&format!("kind={}&", query_value(kind)));
    }
    if paused {
        url.push_str("paused=1&");
    }
    if let Some(state @ ("asleep" | "working")) = state {
        url.push_str(&format!("state={state}&"));
    }
    url
}

/// A step of a run.
pub(crate) struct StepRow {
    pub name: String,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub started_at: Option<Time>,
    pub took: String,
    pub wake_at: Option<Time>,
    pub error: Option<String>,
}

/// Why a run does not move, for its page.
pub(crate) struct RunPause {
    /// Paused with its kind (else on its own).
    pub by_kind: bool,
    /// The engine paused it when a step's attempts ran out.
    pub by_engine: bool,
    pub by: String,
    pub since: Time,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "console/workflow.html")]
struct WorkflowPage {
    layout: Layout,
    notice: Option<&'static str>,
    id: String,
    kind: String,
    /// The kind as a person reads it.
    kind_label: String,
    /// What the run was started with, and what it completed with, as JSON.
    input: String,
    output: Option<String>,
    org_name: Option<String>,
    status: String,
    finished: bool,
    paused: Option<RunPause>,
    may_pause: bool,
    may_resume: bool,
    may_resume_kind: bool,
    may_cancel: bool,
    may_retry: bool,
    /// A failed bootstrap's form, filled in again with what it asked for.
    bootstrap_again: Option<String>,
    step: String,
    failure: Option<String>,
    org: Option<String>,
    correlation_id: String,
    created_at: Time,
    updated_at: Time,
    steps: Vec<StepRow>,
    may_trace: bool,
}

/// `GET /console/workflows/{workflow_id}`: a run, its pause, and its steps; live until
/// it ends.
pub(crate) async fn workflow(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let Ok(id) = WorkflowId::parse(&workflow_id) else {
        return not_found(&session, "workflow run");
    };
    let grant = match allow(&session.ctx, Action::ListWorkflows) {
        Ok(grant) => grant,
        Err(_) => return not_found(&session, "workflow run"),
    };
    let run = match reads::workflow(state.db(), &grant, id).await {
        Ok(Some(run)) => run,
        Ok(None) => return not_found(&session, "workflow run"),
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let finished = run.run.status.is_finished();
    let steps = run
        .steps
        .iter()
        .map(|s| StepRow {
            name: s.name.clone(),
            kind: label(&s.kind),
            status: label(&s.status),
            attempts: s.attempts,
            started_at: s.started_at.as_ref().map(time),
            took: match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => {
                    millis((b - a).num_microseconds().unwrap_or(0) as f64 / 1_000.0)
                }
                _ => String::new(),
            },
            wake_at: s.wake_at.as_ref().map(time),
            error: s.last_error.clone(),
        })
        .collect();
    let kind_label = super::kind_label(&run.run.kind);
    let org_name = org_names(&state, &session, std::slice::from_ref(&run.run))
        .await
        .into_values()
        .next();
    let pretty = |value: &serde_json::Value| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    let mut layout = Layout::new(&session, format!("{kind_label} run"), "/workflows")
        .attention(super::attention::banner(&state, &session).await);
    if !finished {
        // A paused run changes next by a resume, on a stream of its own (or its kind's):
        // it follows every event until then; a running run follows its own stream.
        let feed = if run.run.is_paused() {
            "views=false".to_owned()
        } else {
            format!("views=false&stream_id={}", run.run.id)
        };
        layout = layout.live(feed, format!("/console/workflows/{}", run.run.id));
    }
    let paused = run.run.paused.as_ref().map(|pause| RunPause {
        by_kind: pause.scope == PauseScope::Kind,
        by_engine: pause.paused_by == format!("service:{}", cairn_workflow::ENGINE_ACTOR),
        by: pause.paused_by.clone(),
        since: time(&pause.since),
        reason: pause.reason.clone(),
    });
    let may_control = !finished && session.may(&Action::PauseRun(run.run.org_id));
    let undone = run
        .steps
        .iter()
        .any(|step| step.kind == cairn_workflow::StepKind::Compensation);
    let failed = run.run.status == cairn_workflow::RunStatus::Failed;
    let own_pause = paused.as_ref().is_some_and(|p| !p.by_kind);
    render(
        StatusCode::OK,
        &WorkflowPage {
            layout,
            notice: match query.notice.as_deref() {
                Some("paused") if own_pause => {
                    Some("The run is paused: it stops after the step in flight.")
                }
                Some("resumed") if paused.is_none() => {
                    Some("The run is resumed: it goes on where it stopped.")
                }
                Some("cancelled") => {
                    Some("The run is cancelled: it undoes what it did, then ends failed.")
                }
                Some("retried") => Some("The run is tried again from the step that failed."),
                _ => None,
            },
            id: run.run.id.to_string(),
            kind: run.run.kind.clone(),
            kind_label,
            input: pretty(&run.run.input),
            output: run.run.output.as_ref().map(pretty),
            org_name,
            status: run.run.status.as_str().to_owned(),
            finished,
            may_pause: may_control
                && !own_pause
                && state
                    .domain()
                    .engine()
                    .not_pausable(&run.run.kind)
                    .is_none(),
            may_resume: may_control && own_pause,
            may_resume_kind: paused.as_ref().is_some_and(|p| p.by_kind)
                && session.may(&Action::PauseWorkflowKinds),
            may_cancel: may_control && run.run.status == cairn_workflow::RunStatus::Running,
            may_retry: failed && !undone && session.may(&Action::PauseRun(run.run.org_id)),
            bootstrap_again: (run.run.kind == "organization_bootstrap"
                && run.run.status.is_finished()
                && run.run.status != cairn_workflow::RunStatus::Completed
                && session.may(&Action::BootstrapOrganization))
            .then(|| format!("/console/organizations/new?again={}", run.run.id)),
            paused,
            step: run.run.current_step.clone().unwrap_or_default(),
            failure: run.run.failure.clone(),
            org: run.run.org_id.map(|o| o.to_string()),
            correlation_id: run.run.correlation_id.to_string(),
            created_at: time(&run.run.created_at),
            updated_at: time(&run.run.updated_at),
            steps,
            may_trace: session.may(&Action::ReadTrace),
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FindTrace {
    correlation_id: Option<String>,
}

/// `GET /console/traces?correlation_id=…`: the search box's target.
pub(crate) async fn find_trace(session: Session, Query(query): Query<FindTrace>) -> Response {
    let text = query.correlation_id.unwrap_or_default();
    match CorrelationId::parse(text.trim()) {
        Ok(id) => Redirect::to(&format!("/console/traces/{id}")).into_response(),
        Err(error) => super::problem_page(
            &session,
            &crate::problem::Problem::new(
                crate::problem::ProblemCode::InvalidField,
                format!("correlation id: {error}"),
            ),
        ),
    }
}

/// The console page of a hop's event or run, where its detail names one.
fn hop_page(detail: &serde_json::Value) -> Option<String> {
    let id = |key: &str| detail.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(event) = id("event_id").filter(|e| EventId::parse(e).is_ok()) {
        return Some(format!("/console/events/{event}"));
    }
    id("run_id")
        .filter(|run| WorkflowId::parse(run).is_ok())
        .map(|run| format!("/console/workflows/{run}"))
}

/// One bar of the waterfall.
pub(crate) struct Bar {
    pub index: usize,
    pub name: String,
    pub hop: String,
    pub status: String,
    pub failed: bool,
    pub error: Option<String>,
    pub at: Time,
    pub offset: String,
    pub took: String,
    /// Where the bar starts and how wide it is, in percent of the axis.
    pub x: String,
    pub width: String,
    pub y: usize,
    pub detail: String,
    /// The page of the hop's event or run.
    pub href: Option<String>,
}

/// A tick of the time axis.
pub(crate) struct Tick {
    pub x: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "console/trace.html")]
struct TracePage {
    layout: Layout,
    correlation_id: String,
    duration: String,
    hops: usize,
    errors: usize,
    /// The anchor of the first hop with an error.
    first_error: String,
    bars: Vec<Bar>,
    ticks: Vec<Tick>,
    height: usize,
}

/// Row height of the waterfall, in SVG units.
const ROW: usize = 22;

/// `GET /console/traces/{correlation_id}`: the timeline as a waterfall.
pub(crate) async fn trace(
    State(state): State<AppState>,
    session: Session,
    Path(correlation_id): Path<String>,
) -> Response {
    let Ok(correlation_id) = CorrelationId::parse(&correlation_id) else {
        return not_found(&session, "trace");
    };
    let grant = match allow(&session.ctx, Action::ReadTrace) {
        Ok(grant) => grant,
        Err(_) => return not_found(&session, "trace"),
    };
    state.db().flush_spans().await;
    let timeline = match cairn_trace::timeline(
        state.db(),
        state.store().dispatcher().registry(),
        &grant,
        correlation_id,
    )
    .await
    {
        Ok(Some(timeline)) => timeline,
        Ok(None) => return not_found(&session, "trace"),
        Err(error) => return problem_page(&session, &crate::problem::Problem::internal(&error)),
    };
    let total = timeline.duration_ms.max(0.001);
    let bars = timeline
        .entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let duration = entry.duration_ms.unwrap_or(0.0).max(0.0);
            let x = (entry.offset_ms / total * 100.0).clamp(0.0, 99.7);
            // A hop too short to see still gets a sliver.
            let width = (duration / total * 100.0).max(0.3).min(100.0 - x);
            let failed = matches!(
                entry.status,
                cairn_trace::Status::Failed | cairn_trace::Status::Retrying
            );
            Bar {
                index: index + 1,
                name: entry.name.clone(),
                hop: label(&entry.hop),
                status: label(&entry.status),
                failed,
                error: entry.error.clone(),
                at: time(&entry.at),
                offset: millis(entry.offset_ms),
                took: entry.duration_ms.map(millis).unwrap_or_default(),
                x: format!("{x:.3}"),
                width: format!("{width:.3}"),
                y: index * ROW,
                detail: serde_json::to_string_pretty(&entry.detail).unwrap_or_default(),
                href: hop_page(&entry.detail),
            }
        })
        .collect::<Vec<_>>();
    let ticks = (0..=4)
        .map(|i| {
            let fraction = f64::from(i) / 4.0;
            Tick {
                x: format!("{:.1}", fraction * 100.0),
                label: millis(total * fraction),
            }
        })
        .collect();
    render(
        StatusCode::OK,
        &TracePage {
            layout: Layout::new(&session, "Trace", ""),
            correlation_id: correlation_id.to_string(),
            duration: millis(timeline.duration_ms),
            hops: timeline.hops,
            errors: timeline.errors,
            first_error: bars
                .iter()
                .find(|b| b.failed)
                .map(|b| format!("hop-{}", b.index))
                .unwrap_or_default(),
            height: bars.len().max(1) * ROW,
            bars,
            ticks,
        },
    )
}

/// `GET /console/live`: the event feed for the console's pages, with the session's
/// principal; the same feed, policy and resume rules as `/v1/events/stream`.
pub(crate) async fn live(
    State(state): State<AppState>,
    session: Session,
    request: Request,
) -> Response {
    let query = match request
        .uri()
        .query()
        .map(serde_urlencoded::from_str::<crate::stream::StreamQuery>)
        .transpose()
    {
        Ok(query) => query,
        Err(error) => {
            return crate::problem::Problem::new(
                crate::problem::ProblemCode::InvalidField,
                format!("the feed's query: {error}"),
            )
            .into_response();
        }
    };
    let query = query.unwrap_or(crate::stream::StreamQuery {
        after: None,
        stream_type: None,
        event_type: None,
        stream_id: None,
        org_id: None,
        views: Some(false),
        heartbeat: None,
        access_token: None,
    });
    if query.access_token.is_some() {
        return crate::problem::Problem::new(
            crate::problem::ProblemCode::InvalidField,
            "the console's feed uses the session; it takes no access_token",
        )
        .into_response();
    }
    let (parts, _) = request.into_parts();
    match crate::stream::sse(state, session.ctx, query, parts).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::time_bound;

    #[test]
    fn a_time_bound_reads_as_people_and_browsers_write_it() {
        // (typed, the UTC time it means)
        for (typed, meant) in [
            ("2026-12-07T09:30", "2026-12-07T09:30:00+00:00"),
            ("2026-12-07T09:30:15", "2026-12-07T09:30:15+00:00"),
            ("2026-12-07 09:30", "2026-12-07T09:30:00+00:00"),
            ("2026-12-07", "2026-12-07T00:00:00+00:00"),
            ("2026-12-07T10:30:00+01:00", "2026-12-07T09:30:00+00:00"),
            ("2026-12-07T09:30:00.250Z", "2026-12-07T09:30:00.250+00:00"),
        ] {
            assert_eq!(
                time_bound(typed).map(|at| at.to_rfc3339()),
                Ok(meant.to_owned()),
                "{typed}"
            );
        }
        for typed in ["yesterday", "2026-13-01", "07/12/2026", "2026-12-07T25:00"] {
            let error = time_bound(typed).expect_err(typed);
            assert!(error.contains("is not a time"), "{typed}: {error}");
        }
    }
}
