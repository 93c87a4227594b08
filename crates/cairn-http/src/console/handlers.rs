//! Handler routes: each stream type's handlers, whether a failure holds its stream,
//! their pauses, and the streams held; pausing and resuming a route (a whole stream
//! type, or one event type of it) with a reason.
//!
//! A paused route's events are stored and held, not applied, and the commands that
//! would append them are refused with 409 `paused` until it is resumed; resuming
//! applies the held events in position order. The pages say so before they ask.

use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use cairn_dispatch::{ControlError, HandlerRoute, HeldStream, Route, RoutePause, Router};
use cairn_domain::reads;
use cairn_log::HoldCause;
use cairn_policy::Action;
use cairn_types::{EventType, Position, StreamType};

use super::confirm::{Choice, ChoiceOption, ConfirmPage, Fact, ReasonField, reason_of};
use super::held::{self, HeldRow};
use super::{
    Form, Layout, Session, Time, not_found, plural, problem_page, query_value, render, time,
    time_text,
};
use crate::AppState;
use crate::routes::{allow, read_problem};

/// What the reason field asks for.
const HINT: &str = "Kept in the log with the decision, and shown wherever the pause is.";

/// One pause of a route.
pub(crate) struct PauseRow {
    /// `every event type`, or the one event type.
    pub scope: String,
    pub event_type: Option<String>,
    pub by: String,
    pub since: Time,
    pub reason: String,
    pub resume_href: String,
}

/// One stream type's handlers.
pub(crate) struct RouteRow {
    pub stream_type: String,
    pub event_types: Vec<String>,
    pub n_event_types: String,
    pub holds: bool,
    pub not_pausable: Option<&'static str>,
    pub pauses: Vec<PauseRow>,
    /// Whether every event type of it is paused (no further pause to make).
    pub all_paused: bool,
    pub pause_href: String,
}

impl RouteRow {
    fn of(stream_type: &StreamType, router: &Router, paused: &[RoutePause]) -> RouteRow {
        let pauses: Vec<PauseRow> = paused
            .iter()
            .filter(|p| p.route.stream_type == *stream_type)
            .map(|p| PauseRow {
                scope: p
                    .route
                    .event_type
                    .as_ref()
                    .map_or_else(|| "every event type".to_owned(), ToString::to_string),
                event_type: p.route.event_type.as_ref().map(ToString::to_string),
                by: p.paused_by.clone(),
                since: time(&p.since),
                reason: p.reason.clone(),
                resume_href: held::resume_href(&p.route),
            })
            .collect();
        let mut event_types: Vec<String> = router.event_types().map(ToString::to_string).collect();
        event_types.sort();
        RouteRow {
            stream_type: stream_type.to_string(),
            n_event_types: plural(event_types.len() as u64, "event type", "event types"),
            event_types,
            holds: router.holds(),
            not_pausable: router.not_pausable(),
            all_paused: pauses.iter().any(|p| p.event_type.is_none()),
            pauses,
            pause_href: format!(
                "/console/handlers/pause?stream_type={}",
                query_value(stream_type.as_str())
            ),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HandlersQuery {
    notice: Option<String>,
    route: Option<String>,
    released: Option<u64>,
    held: Option<u64>,
}

#[derive(Template)]
#[template(path = "console/handlers.html")]
struct HandlersPage {
    layout: Layout,
    notice: Option<String>,
    routes: Vec<RouteRow>,
    held: Vec<HeldRow>,
    may_pause: bool,
    may_retry: bool,
    may_skip: bool,
}

/// What the page says after a pause or a resume. The route is named only if it reads
/// as one, so that a link cannot put words in the console's mouth.
fn notice_text(query: &HandlersQuery) -> Option<String> {
    let route = query.route.as_deref().and_then(|r| {
        let (stream_type, event_type) = r.split_once('/').map_or((r, None), |(s, e)| (s, Some(e)));
        StreamType::parse(stream_type).ok()?;
        if let Some(event_type) = event_type {
            EventType::parse(event_type).ok()?;
        }
        Some(r.to_owned())
    })?;
    match query.notice.as_deref()? {
        "paused" => Some(format!(
            "Handler route {route} is paused: its events are stored and held until it is resumed."
        )),
        "resumed" => Some(format!(
            "Handler route {route} is resumed: {} released, {} still held.",
            plural(query.released.unwrap_or(0), "stream", "streams"),
            query.held.unwrap_or(0)
        )),
        _ => None,
    }
}

/// `GET /console/handlers`: every handler route with its state, and the held streams.
pub(crate) async fn handlers(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<HandlersQuery>,
) -> Response {
    let grant = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => grant,
        Err(problem) => return problem_page(&session, &problem),
    };
    let paused = match reads::paused_routes(state.db(), &grant).await {
        Ok(paused) => paused,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let held = match held::rows(&state, &grant).await {
        Ok(held) => held,
        Err(error) => return problem_page(&session, &read_problem(error)),
    };
    let registry = state.domain().store().dispatcher().registry();
    let routes = registry
        .routes()
        .filter_map(|(stream_type, route)| match route {
            Route::NoOp { .. } => None,
            Route::Router(router) => Some(RouteRow::of(stream_type, router, &paused)),
        })
        .collect();
    let attention = super::attention::banner(&state, &session).await;
    render(
        StatusCode::OK,
        &HandlersPage {
            layout: Layout::new(&session, "Handlers", "/handlers")
                .live("views=false", "/console/handlers")
                .attention(attention),
            notice: notice_text(&query),
            routes,
            held,
            may_pause: session.may(&Action::PauseHandlers),
            may_retry: session.may(&Action::RetryEvents),
            may_skip: session.may(&Action::SkipEvents),
        },
    )
}

/// A route named by a query or a form: a stream type with handlers, and optionally one
/// of its event types (empty for all of them).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RouteQuery {
    stream_type: Option<String>,
    event_type: Option<String>,
}

/// The route these names make, with its router; `None` for a stream type without
/// handlers or an event type it does not handle.
fn route_named<'r>(
    state: &'r AppState,
    stream_type: &str,
    event_type: &str,
) -> Option<(HandlerRoute, &'r Router)> {
    let stream_type = StreamType::parse(stream_type.trim()).ok()?;
    let router = state
        .domain()
        .store()
        .dispatcher()
        .registry()
        .routes()
        .find_map(|(s, route)| match route {
            Route::Router(router) if *s == stream_type => Some(router),
            _ => None,
        })?;
    let event_type = match event_type.trim() {
        "" => None,
        name => {
            let event_type = EventType::parse(name).ok()?;
            router
                .event_types()
                .any(|e| *e == event_type)
                .then_some(())?;
            Some(event_type)
        }
    };
    Some((
        HandlerRoute {
            stream_type,
            event_type,
        },
        router,
    ))
}

/// The paused routes now, or the page that says why they could not be read.
async fn paused_now(state: &AppState, session: &Session) -> Result<Vec<RoutePause>, Response> {
    let grant = allow(&session.ctx, Action::ListEvents).map_err(|p| problem_page(session, &p))?;
    reads::paused_routes(state.db(), &grant)
        .await
        .map_err(|error| problem_page(session, &read_problem(error)))
}

/// The confirmation page for pausing a route of `router`'s stream type, with `route`'s
/// event type (or every one) chosen.
fn pause_page_for(
    session: &Session,
    route: &HandlerRoute,
    router: &Router,
    paused: &[RoutePause],
    reason: ReasonField,
) -> Response {
    let stream_type = route.stream_type.as_str();
    let is_paused = |event_type: Option<&EventType>| {
        paused.iter().find(|p| {
            p.route.stream_type == route.stream_type && p.route.event_type.as_ref() == event_type
        })
    };
    let mut page = ConfirmPage::new(
        session,
        "/handlers",
        format!("Pause the handlers of {stream_type}?"),
        "/console/handlers/pause",
        "/console/handlers",
    );
    page.lead = "While a route is paused, its events are still stored in the log, but they \
                 are held, not applied: their streams wait behind them and nothing is \
                 projected from them."
        .to_owned();
    page.explanation = vec![
        "Commands that would append them are refused with 409 (paused) until the route is \
         resumed, so people using the API or the console see the pause at once."
            .to_owned(),
        "Resuming applies the held events in position order.".to_owned(),
    ];
    let mut event_types: Vec<&EventType> = router.event_types().collect();
    event_types.sort();
    let mut options = vec![ChoiceOption {
        value: String::new(),
        label: format!("Every event type of {stream_type}"),
        code: false,
        checked: route.event_type.is_none(),
        disabled: is_paused(None).is_some(),
        note: is_paused(None).map(|_| "paused".to_owned()),
    }];
    options.extend(event_types.into_iter().map(|event_type| {
        let pause = is_paused(Some(event_type));
        ChoiceOption {
            value: event_type.to_string(),
            label: event_type.to_string(),
            code: true,
            checked: route.event_type.as_ref() == Some(event_type),
            disabled: pause.is_some(),
            note: pause.map(|_| "paused".to_owned()),
        }
    }));
    page.choice = Some(Choice {
        legend: "What to pause".to_owned(),
        name: "event_type",
        options,
    });
    page.hidden = vec![("stream_type", stream_type.to_owned())];
    page.reason = reason;
    page.submit = "Pause".to_owned();
    page.danger = true;
    page.show()
}

/// `GET /console/handlers/pause?stream_type=…`: what a pause does, which event types,
/// and the reason.
pub(crate) async fn pause_page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<RouteQuery>,
) -> Response {
    let Some((route, router)) = route_named(
        &state,
        query.stream_type.as_deref().unwrap_or_default(),
        query.event_type.as_deref().unwrap_or_default(),
    ) else {
        return not_found(&session, "handler route");
    };
    if let Err(problem) = allow(&session.ctx, Action::PauseHandlers) {
        return problem_page(&session, &problem);
    }
    if let Some(why) = router.not_pausable() {
        return problem_page(
            &session,
            &crate::routes::route_control_problem(ControlError::NotPausable(why.to_owned())),
        );
    }
    let paused = match paused_now(&state, &session).await {
        Ok(paused) => paused,
        Err(response) => return response,
    };
    pause_page_for(&session, &route, router, &paused, ReasonField::blank(HINT))
}

/// `POST /console/handlers/pause`: pauses the chosen route.
pub(crate) async fn pause(
    State(state): State<AppState>,
    session: Session,
    request: Request,
) -> Response {
    if let Err(problem) = allow(&session.ctx, Action::PauseHandlers) {
        return problem_page(&session, &problem);
    }
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let Some((route, router)) =
        route_named(&state, &form.text("stream_type"), &form.text("event_type"))
    else {
        return not_found(&session, "handler route");
    };
    let reason = match reason_of(&form, HINT) {
        Ok(reason) => reason,
        Err(field) => {
            let paused = match paused_now(&state, &session).await {
                Ok(paused) => paused,
                Err(response) => return response,
            };
            return pause_page_for(&session, &route, router, &paused, field);
        }
    };
    match state
        .domain()
        .store()
        .pause_route(route.clone(), &session.ctx.operator(), reason)
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "/console/handlers?notice=paused&route={}",
            query_value(&route.to_string())
        ))
        .into_response(),
        Err(error) => problem_page(&session, &crate::routes::route_control_problem(error)),
    }
}

/// The streams a pause of `route` holds: those held behind an event of the route
/// because it is paused.
fn held_by(route: &HandlerRoute, held: &[HeldStream]) -> u64 {
    held.iter()
        .filter(|h| {
            h.cause == HoldCause::Paused
                && h.stream_type == route.stream_type
                && route
                    .event_type
                    .as_ref()
                    .is_none_or(|e| *e == h.behind.event_type)
        })
        .count() as u64
}

/// The confirmation page for resuming `pause`.
fn resume_page_for(
    session: &Session,
    pause: &RoutePause,
    n_held: u64,
    reason: ReasonField,
) -> Response {
    let route = &pause.route;
    let mut page = ConfirmPage::new(
        session,
        "/handlers",
        format!("Resume handler route {route}?"),
        "/console/handlers/resume",
        "/console/handlers",
    );
    page.lead = "Its handlers apply its events again, and commands that append them are \
                 accepted again."
        .to_owned();
    page.explanation = vec![if n_held == 0 {
        "No stream waits behind its pause.".to_owned()
    } else {
        format!(
            "{} {} behind its pause: their held events apply at once, in position order. \
             One that fails (on a route that holds) holds the rest of its stream again.",
            plural(n_held, "stream", "streams"),
            if n_held == 1 { "waits" } else { "wait" }
        )
    }];
    page.facts = vec![
        Fact::code("Route", route.to_string()),
        Fact::text("Paused by", pause.paused_by.clone()),
        Fact::text("Since", time_text(&pause.since)),
        Fact::text("Why", pause.reason.clone()),
    ];
    page.hidden = vec![("stream_type", route.stream_type.to_string())];
    if let Some(event_type) = &route.event_type {
        page.hidden.push(("event_type", event_type.to_string()));
    }
    page.reason = reason;
    page.submit = "Resume".to_owned();
    page.show()
}

/// The pause of `route` and how many streams it holds; a 409 page when it is not
/// paused.
async fn pause_of(
    state: &AppState,
    session: &Session,
    route: &HandlerRoute,
) -> Result<(RoutePause, u64), Response> {
    let paused = paused_now(state, session).await?;
    let Some(pause) = paused.into_iter().find(|p| p.route == *route) else {
        return Err(problem_page(
            session,
            &crate::routes::route_control_problem(ControlError::NotPaused {
                route: route.clone(),
            }),
        ));
    };
    let grant = allow(&session.ctx, Action::ListEvents).map_err(|p| problem_page(session, &p))?;
    let held = reads::held_streams(state.db(), &grant, Position::START, held::LIST)
        .await
        .map_err(|error| problem_page(session, &read_problem(error)))?;
    Ok((pause, held_by(route, &held)))
}

/// `GET /console/handlers/resume?stream_type=…&event_type=…`: the pause, what resuming
/// does, and the reason.
pub(crate) async fn resume_page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<RouteQuery>,
) -> Response {
    let Some((route, _)) = route_named(
        &state,
        query.stream_type.as_deref().unwrap_or_default(),
        query.event_type.as_deref().unwrap_or_default(),
    ) else {
        return not_found(&session, "handler route");
    };
    if let Err(problem) = allow(&session.ctx, Action::PauseHandlers) {
        return problem_page(&session, &problem);
    }
    match pause_of(&state, &session, &route).await {
        Ok((pause, n_held)) => resume_page_for(&session, &pause, n_held, ReasonField::blank(HINT)),
        Err(response) => response,
    }
}

/// `POST /console/handlers/resume`: resumes the route; its held events apply.
pub(crate) async fn resume(
    State(state): State<AppState>,
    session: Session,
    request: Request,
) -> Response {
    if let Err(problem) = allow(&session.ctx, Action::PauseHandlers) {
        return problem_page(&session, &problem);
    }
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let Some((route, _)) = route_named(&state, &form.text("stream_type"), &form.text("event_type"))
    else {
        return not_found(&session, "handler route");
    };
    let reason = match reason_of(&form, HINT) {
        Ok(reason) => reason,
        Err(field) => {
            return match pause_of(&state, &session, &route).await {
                Ok((pause, n_held)) => resume_page_for(&session, &pause, n_held, field),
                Err(response) => response,
            };
        }
    };
    match state
        .domain()
        .store()
        .resume_route(route.clone(), &session.ctx.operator(), reason)
        .await
    {
        Ok(resumed) => {
            // Runs whose steps waited on the route go on at once.
            state.domain().engine().wake();
            Redirect::to(&format!(
                "/console/handlers?notice=resumed&route={}&released={}&held={}",
                query_value(&route.to_string()),
                resumed.n_streams_released,
                resumed.n_streams_still_held
            ))
            .into_response()
        }
        Err(error) => problem_page(&session, &crate::routes::route_control_problem(error)),
    }
}
