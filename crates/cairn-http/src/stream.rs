//! The live event feed over HTTP: Server-Sent Events at `GET /v1/events/stream` and a
//! WebSocket at `GET /v1/events/ws`. Both carry the same messages
//! ([`cairn_realtime::Message`]); both resume from a position (`Last-Event-ID`, which
//! browsers send by themselves when an `EventSource` reconnects, or `?after=`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use cairn_realtime::{
    Encoded, EndReason, Selector, SubscribeError, SubscribeRequest, Subscription,
};
use cairn_types::{EventType, OrgId, Position, StreamId, StreamType};

use crate::AppState;
use crate::context::{Ctx, token_problem};
use crate::problem::{FieldProblem, Location, Problem, ProblemCode};

/// What to subscribe to, and from where.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Deliver the events after this log position. A `Last-Event-ID` header, which an
    /// `EventSource` sends when it reconnects, takes its place. Without either, the
    /// feed starts at the log's head: only events from now on.
    #[schemars(range(min = 0, max = 9_223_372_036_854_775_807_i64))]
    pub after: Option<i64>,
    /// Only events of this stream type.
    pub stream_type: Option<StreamType>,
    /// Only events of this type.
    pub event_type: Option<EventType>,
    /// Only events of this stream.
    pub stream_id: Option<StreamId>,
    /// Only events of this organization (a user may name only their own).
    pub org_id: Option<OrgId>,
    /// Send each event with the current views of its stream (`organization`, `user`,
    /// `invitation`, `workflow_run`); true by default.
    pub views: Option<bool>,
    /// Seconds of silence before a heartbeat, 1 to 300 (15 by default).
    #[schemars(range(min = 1, max = 300))]
    pub heartbeat: Option<u32>,
    /// The bearer token, for clients that cannot send an `Authorization` header (a
    /// browser's `EventSource` or `WebSocket`). Prefer the header where you can: URLs
    /// end up in logs.
    #[schemars(length(min = 1, max = 8192))]
    pub access_token: Option<String>,
}

fn query_problem(field: &str, location: Location, message: String) -> Problem {
    Problem::field(
        ProblemCode::InvalidField,
        FieldProblem {
            field: field.to_owned(),
            location,
            expected_location: None,
            message,
        },
    )
}

/// The subscription the request asks for, authenticated, checked and authorized.
async fn prepare(
    state: &AppState,
    ctx: Ctx,
    query: StreamQuery,
    parts: &Parts,
    transport: &'static str,
) -> Result<SubscribeRequest, Problem> {
    let (principal, expires_at) = match (
        &query.access_token,
        parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION),
    ) {
        (Some(_), true) => {
            return Err(query_problem(
                "access_token",
                Location::Query,
                "send the bearer token once: in the Authorization header or as access_token, not both".to_owned(),
            ));
        }
        (Some(token), false) => {
            let verified = state.auth().verify(token.trim()).map_err(token_problem)?;
            let principal = crate::standing::honoured(state, verified.principal).await?;
            (principal, Some(verified.expires_at))
        }
        (None, _) => (ctx.principal.clone(), ctx.expires_at),
    };
    let last_event_id = match parts.headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or_default().trim();
            match text.parse::<i64>() {
                Ok(position) if position >= 0 => Some(position),
                _ => {
                    return Err(query_problem(
                        "Last-Event-ID",
                        Location::Header,
                        format!("must be a log position (0 or more), not {text:?}"),
                    ));
                }
            }
        }
    };
    if let Some(after) = query.after
        && after < 0
    {
        return Err(query_problem(
            "after",
            Location::Query,
            format!("must be 0 or more, not {after}"),
        ));
    }
    let heartbeat = match query.heartbeat {
        None => Duration::from_secs(15),
        Some(seconds @ 1..=300) => Duration::from_secs(u64::from(seconds)),
        Some(seconds) => {
            return Err(query_problem(
                "heartbeat",
                Location::Query,
                format!("must be 1 to 300 seconds, not {seconds}"),
            ));
        }
    };
    let after = last_event_id.or(query.after).map(Position::new);
    if let Some(after) = after {
        beyond_head(state, after, last_event_id.is_some()).await?;
    }
    crate::routes::allow_principal(&principal, cairn_policy::Action::Subscribe)?;
    if let Some(org) = query.org_id {
        crate::routes::allow_principal(&principal, cairn_policy::Action::ReceiveEvent(Some(org)))?;
    }
    Ok(SubscribeRequest {
        principal,
        expires_at,
        ends_on: &[
            "user.deactivated",
            "user.restricted",
            "user.erased",
            "user.roles_changed",
        ],
        selector: Selector {
            stream_type: query.stream_type,
            event_type: query.event_type,
            stream_id: query.stream_id,
            org_id: query.org_id,
            views: query.views.unwrap_or(true),
        },
        after,
        heartbeat,
        correlation_id: ctx.correlation_id,
        transport,
    })
}

/// Refuses to resume after a position the log has not reached: such a feed would
/// wait, silently, for events that may never come (a client that kept its position
/// across a restore of the database from a backup).
async fn beyond_head(state: &AppState, after: Position, from_header: bool) -> Result<(), Problem> {
    if after <= *state.db().head_watch().borrow() {
        return Ok(());
    }
    // Another process may have appended since this one last heard: ask the database.
    let head = cairn_domain::reads::log_head(state.db())
        .await
        .map_err(crate::routes::read_problem)?;
    if after <= head {
        return Ok(());
    }
    let (field, location) = if from_header {
        ("Last-Event-ID", Location::Header)
    } else {
        ("after", Location::Query)
    };
    Err(query_problem(
        field,
        location,
        format!(
            "position {} is beyond the end of the log (position {}): nothing there can be \
             resumed; resume from {} or earlier (was the database restored from a backup?)",
            after.get(),
            head.get(),
            head.get()
        ),
    ))
}

/// A live subscription counted against its principal's allowance, until it ends.
pub struct Slot {
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(n) = counts.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The subscriptions each principal has open, and the most it may.
#[derive(Debug, Default)]
pub struct Subscriptions {
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Subscriptions {
    /// Takes a slot for `principal`, or says why there is none.
    fn take(&self, principal: &cairn_policy::Principal, max: usize) -> Result<Slot, Problem> {
        let key = principal.state_key();
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = counts.entry(key.clone()).or_insert(0);
        if *open >= max {
            return Err(Problem::new(
                ProblemCode::TooManySubscriptions,
                format!(
                    "{} already has {max} live subscriptions open, the most one principal may \
                     have; close one, or follow several streams with one subscription",
                    principal.describe()
                ),
            ));
        }
        *open += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            key,
        })
    }
}

/// Opens the subscription.
async fn subscribe(state: &AppState, request: SubscribeRequest) -> Result<Subscription, Problem> {
    state
        .feed()
        .subscribe(request)
        .await
        .map_err(|error| match error {
            SubscribeError::Denied(denial) => crate::routes::denied(denial),
            SubscribeError::Database(e) => Problem::internal(&e),
        })
}

fn sse_event(message: &Encoded) -> SseEvent {
    let mut event = SseEvent::default().event(message.kind);
    if let Some(position) = message.position {
        event = event.id(position.get().to_string());
    }
    if message.kind == "subscribed" {
        event = event.retry(Duration::from_secs(1));
    }
    event.data(&*message.json)
}

/// `GET /v1/events/stream`.
pub async fn sse(
    state: AppState,
    ctx: Ctx,
    query: StreamQuery,
    parts: Parts,
) -> Result<Response, Problem> {
    let request = prepare(&state, ctx, query, &parts, "sse").await?;
    let slot = state
        .subscriptions()
        .take(&request.principal, state.options().max_subscriptions)?;
    let seat = state
        .capacity()
        .seat(&request.principal, state.options().subscription_bounds)?;
    let slot = (slot, seat);
    let subscription = subscribe(&state, request).await?;
    let messages = futures::stream::unfold(
        (subscription, slot),
        |(mut subscription, slot)| async move {
            let message = subscription.next_encoded().await?;
            Some((
                Ok::<_, Infallible>(sse_event(&message)),
                (subscription, slot),
            ))
        },
    );
    let mut response = Sse::new(messages).into_response();
    // Proxies must pass each event on at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// `GET /v1/events/ws`.
pub async fn websocket(
    state: AppState,
    ctx: Ctx,
    query: StreamQuery,
    mut parts: Parts,
) -> Result<Response, Problem> {
    let request = prepare(&state, ctx, query, &parts, "websocket").await?;
    let slot = state
        .subscriptions()
        .take(&request.principal, state.options().max_subscriptions)?;
    let seat = state
        .capacity()
        .seat(&request.principal, state.options().subscription_bounds)?;
    let slot = (slot, seat);
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
        .await
        .map_err(|rejection| {
            Problem::new(
                ProblemCode::UpgradeRequired,
                format!(
                    "{} is a WebSocket: connect with a WebSocket client ({}); /v1/events/stream serves the same feed as Server-Sent Events",
                    parts.uri.path(),
                    rejection.body_text()
                ),
            )
        })?;
    let subscription = subscribe(&state, request).await?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        run_socket(socket, subscription).await;
        drop(slot);
    }))
}

/// Sends the subscription's messages as text frames, pings the client, and closes a
/// connection that stops answering.
async fn run_socket(mut socket: WebSocket, mut subscription: Subscription) {
    let heartbeat = subscription.heartbeat();
    let mut pings = tokio::time::interval(heartbeat);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            message = subscription.next_encoded() => {
                let Some(message) = message else { break };
                if socket.send(Frame::Text(message.json.to_string().into())).await.is_err() {
                    return;
                }
                if let Some(end) = &message.end {
                    let code = match end.reason {
                        EndReason::TokenExpired => 4001,
                        EndReason::AccessChanged => 4003,
                        EndReason::ServerShutdown => 1001,
                        EndReason::Unavailable => 1011,
                    };
                    let _ = socket
                        .send(Frame::Close(Some(CloseFrame {
                            code,
                            reason: format!("{:?}", end.reason).to_lowercase().into(),
                        })))
                        .await;
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
            },
            _ = pings.tick() => {
                if last_heard.elapsed() > heartbeat * 3 {
                    tracing::info!(subscription = subscription.id(), "websocket client stopped answering pings; closing");
                    let _ = socket
                        .send(Frame::Close(Some(CloseFrame {
                            code: 1001,
                            reason: "no answer to pings".into(),
                        })))
                        .await;
                    return;
                }
                if socket.send(Frame::Ping(b"cairn".to_vec().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}
