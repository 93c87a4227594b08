//! Handler routes and held streams: pausing and resuming a route, and the streams
//! that wait behind a failed event or a paused route.

use axum::http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_dispatch::{ControlError, HandlerRoute, HeldStream, Resumed, Route, RoutePause};
use cairn_domain::reads;
use cairn_policy::Action;
use cairn_types::{EventType, Position, Reason, StreamType};

use super::{Page, allow, database, limit, negative_after, page, read_problem};
use crate::AppState;
use crate::api::{Api, Op, Reply};
use crate::context::Ctx;
use crate::input::Empty;
use crate::problem::{Problem, ProblemCode};

/// A handler route to pause or resume, and why.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteDecision {
    /// The stream type whose handlers to pause or resume (`organization`, `user`,
    /// `invitation`, …).
    pub stream_type: StreamType,
    /// Only this event type of it; absent for every event type of the stream type.
    pub event_type: Option<EventType>,
    pub reason: Reason,
}

/// A page of held streams.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldQuery {
    /// Streams held behind a position after this one (the `next_cursor` of the
    /// previous page).
    #[schemars(range(min = 0, max = 9_223_372_036_854_775_807_i64))]
    pub after: Option<i64>,
    /// How many streams, 1 to 200 (50 by default).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

/// One stream type's handlers: what they handle, whether a failure holds its stream,
/// and what is paused.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HandlerRouteInfo {
    pub stream_type: StreamType,
    /// The event types it has handlers for.
    pub event_types: Vec<EventType>,
    /// Whether a failed event holds its stream (its later events wait for it).
    pub holds_streams: bool,
    /// Why its handlers cannot be paused, when they cannot.
    pub not_pausable: Option<String>,
    /// Its pauses: of the whole stream type, or of one event type.
    pub paused: Vec<RoutePause>,
}

/// Handler routes and held streams.
pub(super) fn ops(api: Api) -> Api {
    api.op(
        op!(GET "/v1/handlers", "listHandlerRoutes", "handlers", OK, public: false, command: false,
            "List handler routes",
            "Every stream type with handlers: its event types, whether a failed event holds its stream, and its pauses (who, why, since when)."),
        list_routes,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/handlers/pause", "pauseHandlerRoute", "handlers", OK, public: false, command: true,
                "Pause a handler route",
                "Appends dispatch.route_paused: from it on, events of the route (a stream type, or one event type of it) are stored and held, not applied, and their streams wait behind them; commands that append them are refused with 409 `paused`. For platform administrators and service accounts with `handlers:pause`. 404 when there is no handler for the route; 409 when it is paused already or cannot be paused (`not_pausable` in the route list says why).")
        },
        pause_route,
    )
    .op(
        Op {
            idempotency_key: false,
            ..op!(POST "/v1/handlers/resume", "resumeHandlerRoute", "handlers", OK, public: false, command: true,
                "Resume a paused handler route",
                "Appends dispatch.route_resumed: the events its pause held apply, in position order, in one unit of work (one that fails, on a route that holds, holds the rest of its stream again). 409 when the route is not paused.")
        },
        resume_route,
    )
    .op(
        op!(GET "/v1/streams/held", "listHeldStreams", "handlers", OK, public: false, command: false,
            "List held streams",
            "Streams whose events wait, stored but not applied, behind an event that failed (on a route that holds) or whose route is paused: the event they wait behind, why, since when, and how many wait. Retry or skip the failed event, or resume the route, and they apply in order."),
        list_held,
    )
}

/// `GET /v1/handlers`.
async fn list_routes(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    _: Empty,
) -> Result<Reply<Vec<HandlerRouteInfo>>, Problem> {
    let grant = allow(&ctx, Action::ListEvents)?;
    let paused = reads::paused_routes(state.db(), &grant)
        .await
        .map_err(read_problem)?;
    let registry = state.domain().store().dispatcher().registry();
    let routes = registry
        .routes()
        .filter_map(|(stream_type, route)| match route {
            Route::NoOp { .. } => None,
            Route::Router(router) => Some(HandlerRouteInfo {
                stream_type: stream_type.clone(),
                event_types: router.event_types().cloned().collect(),
                holds_streams: router.holds(),
                not_pausable: router.not_pausable().map(str::to_owned),
                paused: paused
                    .iter()
                    .filter(|pause| pause.route.stream_type == *stream_type)
                    .cloned()
                    .collect(),
            }),
        })
        .collect();
    Ok(Reply::ok(routes))
}

/// What a caller is told when a pause or a resume of a handler route is refused.
pub(crate) fn route_control_problem(error: ControlError) -> Problem {
    match error {
        ControlError::UnknownRoute(message) => Problem::new(ProblemCode::NotFound, message),
        ControlError::NotPausable(_)
        | ControlError::AlreadyPaused(_)
        | ControlError::NotPaused { .. } => Problem::new(ProblemCode::Conflict, error.to_string()),
        ControlError::Database(e) | ControlError::Append(cairn_log::AppendError::Database(e)) => {
            database(&e)
        }
        ControlError::Append(e) => Problem::internal(&e),
    }
}

fn route_of(decision: &RouteDecision) -> HandlerRoute {
    HandlerRoute {
        stream_type: decision.stream_type.clone(),
        event_type: decision.event_type.clone(),
    }
}

/// `POST /v1/handlers/pause`.
async fn pause_route(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    body: RouteDecision,
) -> Result<Reply<RoutePause>, Problem> {
    allow(&ctx, Action::PauseHandlers)?;
    let pause = state
        .domain()
        .store()
        .pause_route(route_of(&body), &ctx.operator(), body.reason)
        .await
        .map_err(route_control_problem)?;
    Ok(Reply::ok(pause))
}

/// `POST /v1/handlers/resume`.
async fn resume_route(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    _: Empty,
    body: RouteDecision,
) -> Result<Reply<Resumed>, Problem> {
    allow(&ctx, Action::PauseHandlers)?;
    let resumed = state
        .domain()
        .store()
        .resume_route(route_of(&body), &ctx.operator(), body.reason)
        .await
        .map_err(route_control_problem)?;
    // Runs whose steps waited on the route go on at once.
    state.domain().engine().wake();
    Ok(Reply::ok(resumed))
}

/// `GET /v1/streams/held`.
async fn list_held(
    state: AppState,
    ctx: Ctx,
    _: Empty,
    query: HeldQuery,
    _: Empty,
) -> Result<Reply<Page<HeldStream>>, Problem> {
    let grant = allow(&ctx, Action::ListEvents)?;
    let limit = limit(query.limit)?;
    let after: Position = negative_after(query.after)?;
    let items = reads::held_streams(state.db(), &grant, after, limit)
        .await
        .map_err(read_problem)?;
    Ok(Reply::ok(page(items, limit, |held| {
        held.behind.position.to_string()
    })))
}
