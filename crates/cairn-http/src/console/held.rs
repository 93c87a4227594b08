//! Held streams as the console shows them: the failures page lists them first, the
//! handlers page lists them under the routes, and an event's page says what it waits
//! behind.
//!
//! A stream is held behind one of its events: one that failed on a route that holds
//! (retry it once it can apply, or skip it), or one whose handler route is paused
//! (resume the route). Each row says which, with the failure's code and message or the
//! pause's who, why and since when.

use cairn_dispatch::{HeldStream, RoutePause};
use cairn_domain::reads::{self, ReadsError};
use cairn_log::{HoldCause, RecordedEvent};
use cairn_policy::Grant;
use cairn_types::{EventType, Position, StreamType};

use super::{Time, plural, query_value, time};
use crate::AppState;

/// Held streams a page lists, at most.
pub(crate) const LIST: u32 = 100;

/// One held stream.
pub(crate) struct HeldRow {
    pub stream_type: String,
    pub stream_id: String,
    pub behind_event_id: String,
    pub behind_position: i64,
    pub behind_type: String,
    /// Held behind a failure (else behind a paused route).
    pub failed: bool,
    /// The failure's code and message, or the route's pause: who, since when, why.
    pub why: String,
    /// For a paused route: its resume page.
    pub resume_href: Option<String>,
    /// `3 events`.
    pub n_held: String,
    pub since: Time,
}

impl HeldRow {
    fn of(held: &HeldStream, paused: &[RoutePause]) -> HeldRow {
        let failed = held.cause == HoldCause::Failed;
        let pause = (!failed)
            .then(|| covering(paused, &held.stream_type, &held.behind.event_type))
            .flatten();
        let why = match (&held.behind.error, pause) {
            (Some(error), _) if failed => format!("{}: {}", error.code, error.message),
            (_, Some(pause)) => pause_text(pause),
            _ if failed => "it failed".to_owned(),
            _ => "its handler route is paused".to_owned(),
        };
        HeldRow {
            stream_type: held.stream_type.to_string(),
            stream_id: held.stream_id.to_string(),
            behind_event_id: held.behind.event_id.to_string(),
            behind_position: held.behind.position.get(),
            behind_type: held.behind.event_type.to_string(),
            failed,
            why,
            resume_href: pause.map(|p| resume_href(&p.route)),
            n_held: plural(held.n_held, "event", "events"),
            since: time(&held.since),
        }
    }
}

/// The pause an event of this type meets: its event type's own before its stream
/// type's, as the dispatcher decides.
pub(crate) fn covering<'p>(
    paused: &'p [RoutePause],
    stream_type: &StreamType,
    event_type: &EventType,
) -> Option<&'p RoutePause> {
    paused
        .iter()
        .find(|p| {
            p.route.stream_type == *stream_type && p.route.event_type.as_ref() == Some(event_type)
        })
        .or_else(|| {
            paused
                .iter()
                .find(|p| p.route.stream_type == *stream_type && p.route.event_type.is_none())
        })
}

/// `handler route user is paused by … since …: why`.
pub(crate) fn pause_text(pause: &RoutePause) -> String {
    format!(
        "handler route {} is paused by {} since {}: {}",
        pause.route,
        pause.paused_by,
        super::time_text(&pause.since),
        pause.reason
    )
}

/// The resume page of a route.
pub(crate) fn resume_href(route: &cairn_dispatch::HandlerRoute) -> String {
    let mut href = format!(
        "/console/handlers/resume?stream_type={}",
        query_value(route.stream_type.as_str())
    );
    if let Some(event_type) = &route.event_type {
        href.push_str(&format!("&event_type={}", query_value(event_type.as_str())));
    }
    href
}

/// The held streams this grant (to list events) sees, oldest hold first, with the
/// pauses that explain the paused ones.
pub(crate) async fn rows(state: &AppState, grant: &Grant) -> Result<Vec<HeldRow>, ReadsError> {
    let held = reads::held_streams(state.db(), grant, Position::START, LIST).await?;
    let paused = if held.iter().any(|h| h.cause == HoldCause::Paused) {
        reads::paused_routes(state.db(), grant).await?
    } else {
        Vec::new()
    };
    Ok(held.iter().map(|h| HeldRow::of(h, &paused)).collect())
}

/// The stream held behind `event`, if its stream waits behind it.
pub(crate) async fn behind(
    state: &AppState,
    grant: &Grant,
    event: &RecordedEvent,
) -> Result<Option<HeldStream>, ReadsError> {
    // Held streams come in the order of the events they wait behind, one per stream:
    // the first after the position before this event's is the one held behind it, if
    // any is.
    let after = Position::new(event.position.get() - 1);
    let first = reads::held_streams(state.db(), grant, after, 1).await?;
    Ok(first
        .into_iter()
        .find(|held| held.behind.position == event.position))
}
