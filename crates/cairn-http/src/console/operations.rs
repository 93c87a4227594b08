//! Operations: the event log, failures and their retry, workflow runs, a request's
//! timeline, and the live feed the pages follow.

use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use cairn_dispatch::{Dispatched, RetrySelection};
use cairn_domain::reads;
use cairn_log::{EventFilter, Outcome, RecordedEvent};
use cairn_policy::Action;
use cairn_types::{CorrelationId, ErrorCode, EventId, EventType, Position, StreamId, WorkflowId};
use cairn_workflow::{RunFilter, RunStatus};

use super::{Form, Layout, Session, millis, not_found, problem_page, query_value, render, time};
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
    pub at: String,
    pub event_type: String,
    pub stream: String,
    /// `applied`, `failed`, `skipped` or `pending`.
    pub state: &'static str,
    pub error: Option<String>,
}

fn state_of(event: &RecordedEvent) -> &'static str {
    match event.last_outcome() {
        Some(Outcome::Failed(_)) => "failed",
        Some(_) => "applied",
        None => "pending",
    }
}

impl EventRow {
    fn of(event: &RecordedEvent) -> EventRow {
        EventRow {
            event_id: event.event_id.to_string(),
            position: event.position.get(),
            at: time(&event.created_at),
            event_type: event.event_type.to_string(),
            stream: format!("{} {}", event.stream_type, event.stream_id),
            state: state_of(event),
            error: event
                .processing_error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsQuery {
    stream_id: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
    failed: Option<String>,
    before: Option<String>,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    layout: Layout,
    stream_id: String,
    event_type: String,
    correlation_id: String,
    failed: bool,
    errors: Vec<String>,
    rows: Vec<EventRow>,
    older: Option<String>,
    newest: Option<String>,
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
    let failed = query.failed.is_some_and(|f| !f.is_empty());
    let filter = EventFilter {
        limit: Some(PAGE),
        stream_id,
        event_type: event_type.clone(),
        correlation_id,
        failed,
        before,
        newest_first: true,
        ..EventFilter::default()
    };
    let events = if errors.is_empty() {
        match reads::events(state.db(), &grant, filter).await {
            Ok(events) => events,
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
    ] {
        if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
            filters.push_str(&format!("&{name}={}", query_value(value)));
            if name == "stream_id" || name == "event_type" {
                live.push_str(&format!("&{name}={}", query_value(value)));
            }
        }
    }
    let older = (events.len() as u32 == PAGE)
        .then(|| {
            events
                .last()
                .map(|e| format!("/console/events?before={}{filters}", e.position))
        })
        .flatten();
    let newest = before.map(|_| format!("/console/events?{}", filters.trim_start_matches('&')));
    let here = format!("/console/events?{}", filters.trim_start_matches('&'));
    let mut layout = Layout::new(&session, "Events", "/events");
    if before.is_none() && errors.is_empty() {
        layout = layout.live(live, here);
    }
    render(
        StatusCode::OK,
        &EventsPage {
            layout,
            stream_id: query.stream_id.unwrap_or_default(),
            event_type: query.event_type.unwrap_or_default(),
            correlation_id: query.correlation_id.unwrap_or_default(),
            failed,
            errors,
            rows: events.iter().map(EventRow::of).collect(),
            older,
            newest,
        },
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
    metadata: String,
    correlation_id: String,
    processed_at: Option<String>,
    hash: String,
    related: Vec<EventRow>,
    may_retry: bool,
    may_trace: bool,
}

/// The event `id` if this person sees it.
async fn visible_event(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<RecordedEvent, Response> {
    let Ok(id) = EventId::parse(id) else {
        return Err(not_found(session, "event"));
    };
    let grant = allow(&session.ctx, Action::ListEvents).map_err(|_| not_found(session, "event"))?;
    match reads::event(state.db(), &grant, id).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(not_found(session, "event")),
        Err(error) => Err(problem_page(session, &read_problem(error))),
    }
}

/// `GET /console/events/{event_id}`.
pub(crate) async fn event(
    State(state): State<AppState>,
    session: Session,
    Path(event_id): Path<String>,
) -> Response {
    let event = match visible_event(&state, &session, &event_id).await {
        Ok(event) => event,
        Err(response) => return response,
    };
    let related = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => reads::events(
            state.db(),
            &grant,
            EventFilter {
                correlation_id: Some(event.metadata.correlation_id),
                limit: Some(200),
                ..EventFilter::default()
            },
        )
        .await
        .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let page = EventPage {
        layout: Layout::new(&session, format!("Event {}", event.position), "/events"),
        stream_type: event.stream_type.to_string(),
        stream_id: event.stream_id.to_string(),
        version: event.stream_version.get(),
        payload: serde_json::to_string_pretty(&event.data).unwrap_or_default(),
        metadata: serde_json::to_string_pretty(&event.metadata).unwrap_or_default(),
        correlation_id: event.metadata.correlation_id.to_string(),
        processed_at: event.processed_at.as_ref().map(time),
        hash: event.hash.clone(),
        related: related.iter().map(EventRow::of).collect(),
        may_retry: event.is_failed() && session.may(&Action::RetryEvents),
        may_trace: session.may(&Action::ReadTrace),
        event: EventRow::of(&event),
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
}

fn retried_page(
    session: &Session,
    retried: u64,
    fixed: u64,
    rows: Vec<RetryRow>,
    refused: Vec<String>,
) -> Response {
    render(
        StatusCode::OK,
        &RetriedPage {
            layout: Layout::new(session, "Retried", "/failures"),
            retried,
            fixed,
            rows,
            refused,
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
    groups: Vec<FailureGroup>,
    may_retry: bool,
}

/// Failed events shown per code.
const PER_GROUP: u32 = 20;

/// `GET /console/failures`: failed events grouped by code.
pub(crate) async fn failures(State(state): State<AppState>, session: Session) -> Response {
    let grant = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
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
        let rows = match reads::events(state.db(), &grant, filter).await {
            Ok(events) => events.iter().map(EventRow::of).collect(),
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
                .live("views=false", "/console/failures"),
            groups,
            may_retry: session.may(&Action::RetryEvents),
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
            Ok(report) => {
                let rows = report.still_failed.iter().map(RetryRow::of).collect();
                retried_page(&session, report.n_retried, report.n_fixed, rows, Vec::new())
            }
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
    pub kind: String,
    pub status: String,
    pub step: String,
    pub org: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WorkflowsQuery {
    status: Option<String>,
    kind: Option<String>,
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "console/workflows.html")]
struct WorkflowsPage {
    layout: Layout,
    statuses: Vec<(String, bool)>,
    kind: String,
    errors: Vec<String>,
    rows: Vec<RunRow>,
    next: Option<String>,
}

/// `GET /console/workflows`: runs by status and kind.
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
    let after = parse(
        &query.after,
        "after",
        |t| WorkflowId::parse(t).map_err(|e| e.to_string()),
        &mut errors,
    );
    let runs = if errors.is_empty() {
        let filter = RunFilter {
            status,
            kind: kind.clone(),
            after,
            limit: Some(PAGE),
            ..RunFilter::default()
        };
        match reads::workflows(state.db(), &grant, filter).await {
            Ok(runs) => runs,
            Err(error) => return problem_page(&session, &read_problem(error)),
        }
    } else {
        Vec::new()
    };
    let next = (runs.len() as u32 == PAGE)
        .then(|| {
            runs.last().map(|r| {
                let mut url = format!("/console/workflows?after={}", r.id);
                if let Some(status) = status {
                    url.push_str(&format!("&status={}", status.as_str()));
                }
                if let Some(kind) = &kind {
                    url.push_str(&format!("&kind={}", query_value(kind)));
                }
                url
            })
        })
        .flatten();
    let rows = runs
        .into_iter()
        .map(|r| RunRow {
            id: r.id.to_string(),
            kind: r.kind,
            status: r.status.as_str().to_owned(),
            step: r.current_step.unwrap_or_default(),
            org: r.org_id.map(|o| o.to_string()).unwrap_or_default(),
            created_at: time(&r.created_at),
            updated_at: time(&r.updated_at),
        })
        .collect();
    render(
        StatusCode::OK,
        &WorkflowsPage {
            layout: Layout::new(&session, "Workflows", "/workflows").live(
                "views=false&stream_type=workflow",
                workflows_here(status, kind.as_deref()),
            ),
            statuses: RunStatus::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), Some(*s) == status))
                .collect(),
            kind: query.kind.unwrap_or_default(),
            errors,
            rows,
            next,
        },
    )
}

/// The address of the runs page with these filters.
fn workflows_here(status: Option<RunStatus>, kind: Option<&str>) -> String {
    let mut url = String::from("/console/workflows?");
    if let Some(status) = status {
        url.push_str(&format!("status={}&", status.as_str()));
    }
    if let Some(kind) = kind {
        url.push_str(&format!("kind={}", query_value(kind)));
    }
    url
}

/// A step of a run.
pub(crate) struct StepRow {
    pub name: String,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub started_at: String,
    pub took: String,
    pub wake_at: Option<String>,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/workflow.html")]
struct WorkflowPage {
    layout: Layout,
    id: String,
    kind: String,
    status: String,
    finished: bool,
    step: String,
    failure: Option<String>,
    org: Option<String>,
    correlation_id: String,
    created_at: String,
    updated_at: String,
    steps: Vec<StepRow>,
    may_trace: bool,
}

/// `GET /console/workflows/{workflow_id}`: a run and its steps; live until it ends.
pub(crate) async fn workflow(
    State(state): State<AppState>,
    session: Session,
    Path(workflow_id): Path<String>,
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
    let finished = matches!(
        run.run.status,
        RunStatus::Completed | RunStatus::Failed | RunStatus::CompensationFailed
    );
    let steps = run
        .steps
        .iter()
        .map(|s| StepRow {
            name: s.name.clone(),
            kind: label(&s.kind),
            status: label(&s.status),
            attempts: s.attempts,
            started_at: s.started_at.as_ref().map(time).unwrap_or_default(),
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
    let mut layout = Layout::new(&session, format!("Run {}", run.run.kind), "/workflows");
    if !finished {
        layout = layout.live(
            format!("views=false&stream_id={}", run.run.id),
            format!("/console/workflows/{}", run.run.id),
        );
    }
    render(
        StatusCode::OK,
        &WorkflowPage {
            layout,
            id: run.run.id.to_string(),
            kind: run.run.kind.clone(),
            status: run.run.status.as_str().to_owned(),
            finished,
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

/// One bar of the waterfall.
pub(crate) struct Bar {
    pub index: usize,
    pub name: String,
    pub hop: String,
    pub status: String,
    pub failed: bool,
    pub error: Option<String>,
    pub at: String,
    pub offset: String,
    pub took: String,
    /// Where the bar starts and how wide it is, in percent of the axis.
    pub x: String,
    pub width: String,
    pub y: usize,
    pub detail: String,
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
    let timeline = match cairn_trace::timeline(state.db(), &grant, correlation_id).await {
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
