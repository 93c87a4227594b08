//! The event log: lists, one event, the live feed, failures and their retry, and a
//! request's timeline.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use cairn_dispatch::{Dispatched, RetryError, RetryReport, RetrySelection};
use cairn_domain::reads;
use cairn_log::{EventFilter, RecordedEvent};
use cairn_policy::Action;
use cairn_types::{CorrelationId, ErrorCode, EventId, EventType, StreamId, StreamType};

use super::{Page, allow, database, event_page, limit, negative_after, not_found, read_problem};
use crate::AppState;
use crate::api::{Api, Op, Produces, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::{Problem, ProblemCode};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPath {
    pub event_id: EventId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracePath {
    /// The request's correlation id: the `x-correlation-id` of its response, or the
    /// `correlation_id` of its problem document.
    pub correlation_id: CorrelationId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events after this position (the `next_cursor` of the previous page).
    #[schemars(range(min = 0, max = 9_223_372_036_854_775_807_i64))]
    pub after: Option<i64>,
    /// How many events, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
    pub stream_id: Option<StreamId>,
    pub stream_type: Option<StreamType>,
    pub event_type: Option<EventType>,
    pub correlation_id: Option<CorrelationId>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailedEventsQuery {
    /// Return events after this position.
    #[schemars(range(min = 0, max = 9_223_372_036_854_775_807_i64))]
    pub after: Option<i64>,
    /// How many events, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
    /// Only events failed with this code.
    pub code: Option<ErrorCode>,
    pub stream_type: Option<StreamType>,
}

/// Which failed events to retry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFailedRequest {
    /// Only events failed with this code.
    pub code: Option<ErrorCode>,
    /// Only events of this stream type.
    pub stream_type: Option<StreamType>,
}

/// `GET /v1/events`.
pub(super) fn list_ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/events", "listEvents", "events", OK, public: false, command: false,
            "List events", "Events the caller may see, in position order."),
        list_events,
    )
}

/// `GET /v1/traces/{correlation_id}`.
pub(super) fn trace_ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/traces/{correlation_id}", "getTrace", "traces", OK, public: false, command: false,
            "A request's timeline",
            "Every hop one request caused, in order, with the time each took and any error: the HTTP request, each event appended and its handler, each workflow step and attempt, each email, each realtime delivery. Confined to the caller's tenancy."),
        get_trace,
    )
}

/// The live feed, one event, and failures with their retry.
pub(super) fn ops(api: Api) -> Api {
    api.raw::<crate::stream::StreamQuery, cairn_realtime::Message, _, _>(
        op!(GET "/v1/events/stream", "streamEvents", "events", OK, public: false, command: false,
            "Follow events live (Server-Sent Events)",
            "Events the caller may receive, as they are committed, each with the views of its stream: catch-up from the log after `Last-Event-ID` (or `after`), then live, with no gap and no duplicate. The policy decides at subscribe time (scope `events:subscribe`, or an organization admin for their own organization) and again for every event. Heartbeats keep the connection alive; a token that expires ends the stream with an `end` message saying where to resume."),
        Produces::EventStream,
        crate::stream::sse,
    )
    .raw::<crate::stream::StreamQuery, cairn_realtime::Message, _, _>(
        op!(GET "/v1/events/ws", "socketEvents", "events", OK, public: false, command: false,
            "Follow events live (WebSocket)",
            "The feed of /v1/events/stream over a WebSocket: one JSON message per text frame, `after` to resume. The server pings every heartbeat and closes a connection that stops answering; close code 4001 means the token expired."),
        Produces::WebSocket,
        crate::stream::websocket,
    )
    .op(
        op!(GET "/v1/events/failed", "listFailedEvents", "events", OK, public: false, command: false,
            "List failed events", "Events whose processing failed, with their codes and messages."),
        list_failed_events,
    )
    .op(
        op!(GET "/v1/events/{event_id}", "getEvent", "events", OK, public: false, command: false,
            "Read an event", "One event with its processing status."),
        get_event,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/events/{event_id}/retry", "retryEvent", "events", OK, public: false, command: true,
                "Retry a failed event", "Appends dispatch.event_retried and dispatches the event again at that record's place in the log (where replay applies it too), recording its new outcome; if it applies, the events of its stream held behind it apply after it. A repeat after a success answers 409: the event is no longer failed. 409 `held` for an event that waits behind another (retry that one), 409 `paused` while its handler route is paused.")
        },
        retry_event,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/events/{event_id}/skip", "skipEvent", "events", OK, public: false, command: true,
                "Skip a failed event",
                "Appends dispatch.event_skipped with the reason: the event is marked not to be applied (replay skips it too), and the events of its stream held behind it apply, in position order. 409 when it is not failed, or waits behind another event (the detail names it).")
        },
        skip_event,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/events/retry-failed", "retryFailedEvents", "events", OK, public: false, command: true,
                "Retry every failed event", "Retries the failed events the filters match, oldest first, each in its own transaction. Safe to repeat: a repeat retries what is still failed.")
        },
        retry_failed_events,
    )
}

/// `GET /v1/events`: a page of the events the caller may see.
async fn list_events(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    query: EventsQuery,
    _: Empty,
) -> Result<Reply<Page<RecordedEvent>>, Problem> {
    let grant = allow(&ctx, Action::ListEvents)?;
    let limit = limit(query.limit)?;
    let filter = EventFilter {
        after: negative_after(query.after)?,
        limit: Some(limit),
        stream_id: query.stream_id,
        stream_type: query.stream_type,
        event_type: query.event_type,
        correlation_id: query.correlation_id,
        ..EventFilter::default()
    };
    let items = reads::events(state.store(), &grant, filter)
        .await
        .map_err(read_problem)?;
    crate::access::record_api(
        &state,
        &ctx,
        "events".to_owned(),
        ctx.principal.org_id(),
        cairn_log::personal_subjects(&items),
    )
    .await;
    Ok(Reply::ok(event_page(items, limit)))
}

/// `GET /v1/traces/{correlation_id}`: every hop one request caused.
async fn get_trace(
    state: AppState,
    ctx: Ctx,
    path: TracePath,
    _: Empty,
    _: Empty,
) -> Result<Reply<cairn_trace::Timeline>, Problem> {
    let grant = allow(&ctx, Action::ReadTrace)?;
    // Spans are written in the background: let the queue drain first.
    state.db().flush_spans().await;
    let timeline = cairn_trace::timeline(
        state.db(),
        state.store().dispatcher().registry(),
        &grant,
        path.correlation_id,
    )
    .await
    .map_err(|error| match error {
        cairn_trace::TraceError::Database(e) => database(&e),
        other => Problem::internal(&other),
    })?;
    if let Some(timeline) = &timeline {
        crate::access::record_api(
            &state,
            &ctx,
            format!("trace {}", path.correlation_id),
            ctx.principal.org_id(),
            timeline.subjects.clone(),
        )
        .await;
    }
    timeline
        .map(Reply::ok)
        .ok_or_else(|| not_found("trace with correlation id", &path.correlation_id))
}

/// `GET /v1/events/failed`: a page of the events whose processing failed.
async fn list_failed_events(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    query: FailedEventsQuery,
    _: Empty,
) -> Result<Reply<Page<RecordedEvent>>, Problem> {
    let grant = allow(&ctx, Action::ListEvents)?;
    let limit = limit(query.limit)?;
    let filter = EventFilter {
        after: negative_after(query.after)?,
        limit: Some(limit),
        stream_type: query.stream_type,
        failed: true,
        error_code: query.code,
        ..EventFilter::default()
    };
    let items = reads::events(state.store(), &grant, filter)
        .await
        .map_err(read_problem)?;
    crate::access::record_api(
        &state,
        &ctx,
        "failed events".to_owned(),
        ctx.principal.org_id(),
        cairn_log::personal_subjects(&items),
    )
    .await;
    Ok(Reply::ok(event_page(items, limit)))
}

/// `GET /v1/events/{event_id}`: one event with its outcome.
async fn get_event(
    state: AppState,
    ctx: Ctx,
    path: EventPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<RecordedEvent>, Problem> {
    let grant = allow(&ctx, Action::ListEvents)?;
    let event = reads::event(state.store(), &grant, path.event_id)
        .await
        .map_err(read_problem)?;
    if let Some(event) = &event {
        crate::access::record_api(
            &state,
            &ctx,
            format!("event {}", event.event_id),
            event.metadata.org_id,
            cairn_log::personal_subjects([event]),
        )
        .await;
    }
    event
        .map(Reply::ok)
        .ok_or_else(|| not_found("event", &path.event_id))
}

/// What a caller is told when a retry is refused.
pub(crate) fn retry_problem(error: RetryError) -> Problem {
    match error {
        RetryError::NotFound { .. } => Problem::new(ProblemCode::NotFound, error.to_string()),
        RetryError::NotFailed { .. } => Problem::new(ProblemCode::Conflict, error.to_string()),
        RetryError::Held { .. } => Problem::new(ProblemCode::Held, error.to_string()),
        RetryError::RoutePaused { .. } => Problem::new(ProblemCode::Paused, error.to_string()),
        RetryError::Database(e) => database(&e),
        RetryError::Record(e) => match *e {
            cairn_log::AppendError::Database(e) => database(&e),
            other => Problem::internal(&other),
        },
        RetryError::Read(e) => Problem::internal(&e),
    }
}

/// `POST /v1/events/{event_id}/retry`: dispatches a failed event again.
async fn retry_event(
    state: AppState,
    ctx: Ctx,
    path: EventPath,
    _: Empty,
    _: Empty,
) -> Result<Reply<Dispatched>, Problem> {
    allow(&ctx, Action::RetryEvents)?;
    let retried = state
        .domain()
        .store()
        .retry(path.event_id, &ctx.operator())
        .await
        .map_err(retry_problem)?;
    Ok(Reply::ok(retried))
}

/// `POST /v1/events/{event_id}/skip`: marks a failed event as not to be applied.
async fn skip_event(
    state: AppState,
    ctx: Ctx,
    path: EventPath,
    _: Empty,
    body: super::Because,
) -> Result<Reply<Dispatched>, Problem> {
    allow(&ctx, Action::SkipEvents)?;
    let skipped = state
        .domain()
        .store()
        .skip(path.event_id, &ctx.operator(), body.reason)
        .await
        .map_err(retry_problem)?;
    Ok(Reply::ok(skipped))
}

/// `POST /v1/events/retry-failed`: retries every failed event the filters match.
async fn retry_failed_events(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    body: RetryFailedRequest,
) -> Result<Reply<RetryReport>, Problem> {
    allow(&ctx, Action::RetryEvents)?;
    let selection = RetrySelection {
        code: body.code,
        stream_type: body.stream_type,
    };
    let report = state
        .domain()
        .store()
        .retry_failed(&selection, &ctx.operator(), &mut |_, _| {})
        .await
        .map_err(retry_problem)?;
    Ok(Reply::ok(report))
}
