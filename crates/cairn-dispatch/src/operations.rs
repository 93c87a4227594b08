//! The operators' decisions about dispatch, recorded as events of the `dispatch` stream
//! type: a failed event retried or skipped, a handler route paused or resumed.
//!
//! They are events like any other (in the hash chain, on the feed, in the timeline),
//! and the dispatcher acts on each where it stands in the log (see [`crate::sequence`]),
//! so that a replay repeats exactly what the live system did. Their handlers keep one
//! projection, `dispatch_paused_routes`; the holds they lift live in `stream_holds`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use cairn_log::{Conn, DbError, RecordedEvent, args};
use cairn_types::{EventId, EventType, Position, Reason, StreamId, StreamType};

use crate::projections::Projections;
use crate::registry::{Handler, HandlerError, ProjectionTable, RegistryBuilder, payload};
use crate::spec::EventPayload;

/// The stream type of the operators' decisions about dispatch.
pub const STREAM_TYPE: &str = "dispatch";

/// A handler route: every event of a stream type, or one event type of it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct HandlerRoute {
    pub stream_type: StreamType,
    /// One event type of the stream type; absent for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
}

impl HandlerRoute {
    /// Every event of a stream type.
    pub fn stream_type(stream_type: StreamType) -> Self {
        Self {
            stream_type,
            event_type: None,
        }
    }

    /// Whether an event goes through this route.
    pub fn covers(&self, event: &RecordedEvent) -> bool {
        self.stream_type == event.stream_type
            && self
                .event_type
                .as_ref()
                .is_none_or(|event_type| *event_type == event.event_type)
    }

    /// The stream of this route's pauses and resumes: one per route, so that its
    /// history reads as one stream.
    pub fn stream_id(&self) -> StreamId {
        StreamId::named("handler-route", self.to_string().as_bytes())
    }

    /// The event type as stored in `dispatch_paused_routes` (`''` for all of them).
    fn event_type_column(&self) -> &str {
        self.event_type.as_ref().map_or("", EventType::as_str)
    }
}

impl std::fmt::Display for HandlerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.event_type {
            None => write!(f, "{}", self.stream_type),
            Some(event_type) => write!(f, "{}/{}", self.stream_type, event_type),
        }
    }
}

/// A failed event was dispatched again at this record's place in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRetried {
    pub event_id: EventId,
    pub position: Position,
}

/// A failed event is not to be applied, for a reason; the events held behind it
/// apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSkipped {
    pub event_id: EventId,
    pub position: Position,
    pub reason: Reason,
}

/// From this record on, the events of a handler route are stored and held, not
/// applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutePaused {
    pub stream_type: StreamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    pub reason: Reason,
}

/// A paused handler route applies again: the events held by its pause apply, in
/// position order, at this record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteResumed {
    pub stream_type: StreamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    pub reason: Reason,
}

impl RoutePaused {
    pub fn route(&self) -> HandlerRoute {
        HandlerRoute {
            stream_type: self.stream_type.clone(),
            event_type: self.event_type.clone(),
        }
    }
}

impl RouteResumed {
    pub fn route(&self) -> HandlerRoute {
        HandlerRoute {
            stream_type: self.stream_type.clone(),
            event_type: self.event_type.clone(),
        }
    }
}

impl EventPayload for EventRetried {
    const EVENT_TYPE: &'static str = "dispatch.event_retried";
    const DESCRIPTION: &'static str = "An operator retried a failed event: it was dispatched again at this record's place in the log.";
}

impl EventPayload for EventSkipped {
    const EVENT_TYPE: &'static str = "dispatch.event_skipped";
    const DESCRIPTION: &'static str = "An operator marked a failed event as not to be applied, with a reason; the events held behind it apply.";
}

impl EventPayload for RoutePaused {
    const EVENT_TYPE: &'static str = "dispatch.route_paused";
    const DESCRIPTION: &'static str = "An operator paused a handler route: its events are stored and held, not applied, until it is resumed.";
}

impl EventPayload for RouteResumed {
    const EVENT_TYPE: &'static str = "dispatch.route_resumed";
    const DESCRIPTION: &'static str =
        "An operator resumed a handler route: the events its pause held apply, in position order.";
}

/// An operator's decision, decoded from a record of the `dispatch` stream type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Retried(EventRetried),
    Skipped(EventSkipped),
    Paused(RoutePaused),
    Resumed(RouteResumed),
}

impl Decision {
    /// The decision a record carries; `None` for an event of another stream type, or
    /// one whose payload does not decode (its handler fails it, and nothing is done).
    pub(crate) fn of(registry: &crate::Registry, event: &RecordedEvent) -> Option<Decision> {
        if event.stream_type.as_str() != STREAM_TYPE {
            return None;
        }
        let data = registry.upcast(event).ok()?.into_owned().data;
        match event.event_type.as_str() {
            EventRetried::EVENT_TYPE => serde_json::from_value(data).ok().map(Decision::Retried),
            EventSkipped::EVENT_TYPE => serde_json::from_value(data).ok().map(Decision::Skipped),
            RoutePaused::EVENT_TYPE => serde_json::from_value(data).ok().map(Decision::Paused),
            RouteResumed::EVENT_TYPE => serde_json::from_value(data).ok().map(Decision::Resumed),
            _ => None,
        }
    }
}

/// One paused handler route: who paused it, why, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RoutePause {
    #[serde(flatten)]
    pub route: HandlerRoute,
    /// The actor of the pause (`user:…` or `service:…`).
    pub paused_by: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    /// The position of the `dispatch.route_paused` event.
    pub position: Position,
}

/// The handler routes paused at one point of the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PausedRoutes {
    by_route: BTreeMap<HandlerRoute, RoutePause>,
}

impl PausedRoutes {
    /// Reads the paused routes from `dispatch_paused_routes` (as the connection sees
    /// it: a replay's rebuilt copy, or the live table).
    pub async fn load(conn: &mut Conn<'_>) -> Result<PausedRoutes, DbError> {
        let rows = conn
            .fetch_all(
                "SELECT stream_type, event_type, paused_by, reason, since, position \
                 FROM dispatch_paused_routes ORDER BY stream_type, event_type",
                args![],
            )
            .await?;
        let mut by_route = BTreeMap::new();
        for row in rows {
            let stream_type: String = row.get("stream_type")?;
            let event_type: String = row.get("event_type")?;
            let bad = |column: &str, error: cairn_types::NameError| {
                DbError::decode(column, format!("dispatch_paused_routes: {error}"))
            };
            let route = HandlerRoute {
                stream_type: StreamType::parse(&stream_type).map_err(|e| bad("stream_type", e))?,
                event_type: match event_type.as_str() {
                    "" => None,
                    name => Some(EventType::parse(name).map_err(|e| bad("event_type", e))?),
                },
            };
            let pause = RoutePause {
                route: route.clone(),
                paused_by: row.get("paused_by")?,
                reason: row.get("reason")?,
                since: row.get("since")?,
                position: Position::new(row.get("position")?),
            };
            by_route.insert(route, pause);
        }
        Ok(PausedRoutes { by_route })
    }

    /// The pause an event meets, if its route is paused: its event type's own pause
    /// before its stream type's.
    pub fn covering(&self, event: &RecordedEvent) -> Option<&RoutePause> {
        let own = HandlerRoute {
            stream_type: event.stream_type.clone(),
            event_type: Some(event.event_type.clone()),
        };
        self.by_route.get(&own).or_else(|| {
            self.by_route
                .get(&HandlerRoute::stream_type(event.stream_type.clone()))
        })
    }

    /// The pause of exactly this route.
    pub fn get(&self, route: &HandlerRoute) -> Option<&RoutePause> {
        self.by_route.get(route)
    }

    /// Every pause, by route.
    pub fn iter(&self) -> impl Iterator<Item = &RoutePause> {
        self.by_route.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_route.is_empty()
    }
}

/// Records a route's pause in `dispatch_paused_routes`.
struct OnRoutePaused;

#[async_trait]
impl Handler for OnRoutePaused {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let paused: RoutePaused = payload(event)?;
        let route = paused.route();
        let by = event
            .metadata
            .actor
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        p.execute(
            "INSERT INTO dispatch_paused_routes (stream_type, event_type, paused_by, reason, since, position)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (stream_type, event_type) DO UPDATE SET paused_by = excluded.paused_by,
                 reason = excluded.reason, since = excluded.since, position = excluded.position",
            args![
                route.stream_type.as_str(),
                route.event_type_column(),
                by,
                paused.reason.as_str(),
                event.created_at,
                event.position
            ],
        )
        .await?;
        Ok(())
    }
}

/// Removes a route's pause from `dispatch_paused_routes`. Idempotent like every
/// handler: the command checked that the route was paused before it recorded this.
struct OnRouteResumed;

#[async_trait]
impl Handler for OnRouteResumed {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let resumed: RouteResumed = payload(event)?;
        let route = resumed.route();
        p.execute(
            "DELETE FROM dispatch_paused_routes WHERE stream_type = $1 AND event_type = $2",
            args![route.stream_type.as_str(), route.event_type_column()],
        )
        .await?;
        Ok(())
    }
}

/// A retry or a skip writes no projection of its own: the dispatcher acts on it (see
/// [`crate::sequence`]). The handler only checks its payload.
struct OnDecision<P>(std::marker::PhantomData<fn() -> P>);

#[async_trait]
impl<P: EventPayload> Handler for OnDecision<P> {
    async fn handle(
        &self,
        event: &RecordedEvent,
        _: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let _: P = payload(event)?;
        Ok(())
    }
}

/// The router of the `dispatch` stream type and the tables its decisions keep: every
/// registry has them.
pub(crate) fn routes(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .router(STREAM_TYPE, |r| {
            r.event::<EventRetried>(OnDecision::<EventRetried>(std::marker::PhantomData))
                .event::<EventSkipped>(OnDecision::<EventSkipped>(std::marker::PhantomData))
                .event::<RoutePaused>(OnRoutePaused)
                .event::<RouteResumed>(OnRouteResumed)
                .not_pausable("the operators' own decisions cannot be paused")
        })
        .projection(ProjectionTable {
            name: "dispatch_paused_routes",
            key: &["stream_type", "event_type"],
        })
        .projection(ProjectionTable {
            name: "stream_holds",
            key: &["stream_id"],
        })
}

/// A stream held behind one of its events: its later events are stored, not applied.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HeldStream {
    pub stream_type: StreamType,
    pub stream_id: StreamId,
    pub org_id: Option<cairn_types::OrgId>,
    pub cause: cairn_log::HoldCause,
    /// The event the stream waits behind: retry or skip it (failed), or resume its
    /// route (paused).
    pub behind: HeldBehind,
    /// Since the event it waits behind was appended.
    pub since: DateTime<Utc>,
    /// How many of its events wait.
    pub n_held: u64,
}

/// The event a held stream waits behind.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HeldBehind {
    pub position: Position,
    pub event_id: EventId,
    pub event_type: EventType,
    /// Why it failed, for a failure.
    pub error: Option<cairn_log::ProcessingError>,
}

/// Held streams, in the order of the events they wait behind, after `after` (that
/// position), at most `limit` (as the connection sees them: a tenant's scoped
/// snapshot shows its own).
pub async fn held_streams(
    conn: &mut Conn<'_>,
    after: Position,
    limit: u32,
) -> Result<Vec<HeldStream>, DbError> {
    let rows = conn
        .fetch_all(
            "SELECT h.stream_id, h.stream_type, h.org_id, h.behind, h.cause, h.since, \
             e.event_id, e.event_type, e.processing_error_code, e.processing_error_message, \
             (SELECT COUNT(*) FROM domain_events x WHERE x.stream_id = h.stream_id \
              AND x.held_behind IS NOT NULL) AS n_held \
             FROM stream_holds h JOIN domain_events e ON e.position = h.behind \
             WHERE h.behind > $1 ORDER BY h.behind LIMIT $2",
            args![after, i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let bad = |column: &str, message: String| DbError::decode(column, message);
            let stream_type: String = row.get("stream_type")?;
            let event_type: String = row.get("event_type")?;
            let cause: String = row.get("cause")?;
            let code: Option<String> = row.get("processing_error_code")?;
            let message: Option<String> = row.get("processing_error_message")?;
            let error = match (code, message) {
                (Some(code), Some(message)) => Some(cairn_log::ProcessingError {
                    code: code
                        .parse()
                        .map_err(|e| bad("processing_error_code", format!("{e}")))?,
                    message,
                }),
                _ => None,
            };
            Ok(HeldStream {
                stream_type: StreamType::parse(&stream_type)
                    .map_err(|e| bad("stream_type", e.to_string()))?,
                stream_id: row.get("stream_id")?,
                org_id: row.get("org_id")?,
                cause: match cause.as_str() {
                    "failed" => cairn_log::HoldCause::Failed,
                    "paused" => cairn_log::HoldCause::Paused,
                    other => return Err(bad("cause", format!("{other:?} is not a hold cause"))),
                },
                behind: HeldBehind {
                    position: Position::new(row.get("behind")?),
                    event_id: row.get("event_id")?,
                    event_type: EventType::parse(&event_type)
                        .map_err(|e| bad("event_type", e.to_string()))?,
                    error,
                },
                since: row.get("since")?,
                n_held: u64::try_from(row.get::<i64>("n_held")?).unwrap_or(0),
            })
        })
        .collect()
}

/// How many streams are held, and how many events wait in them.
pub async fn held_counts(conn: &mut Conn<'_>) -> Result<(u64, u64), DbError> {
    let row = conn
        .fetch_one(
            "SELECT (SELECT COUNT(*) FROM stream_holds) AS streams, \
             (SELECT COUNT(*) FROM domain_events WHERE held_behind IS NOT NULL) AS events",
            args![],
        )
        .await?;
    let count = |column: &str| -> Result<u64, DbError> {
        Ok(u64::try_from(row.get::<i64>(column)?).unwrap_or(0))
    };
    Ok((count("streams")?, count("events")?))
}
