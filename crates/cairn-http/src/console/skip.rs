//! Skipping a failed event, and the operators' decisions about an event (its retries
//! and skips) that its page lists.
//!
//! A skip is for an event that will never apply (a mistake, a duplicate, data that no
//! fix can make right): it stays in the log, is never applied (replay skips it too),
//! and the events its stream held behind it apply in order. The page says all of that,
//! and how many wait, before it asks for the reason.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Redirect, Response};

use cairn_dispatch::operations::{EventRetried, EventSkipped, STREAM_TYPE};
use cairn_dispatch::{EventPayload as _, RetryError};
use cairn_domain::reads;
use cairn_log::{EventFilter, RecordedEvent};
use cairn_policy::Action;
use cairn_types::{Position, StreamId, StreamType};

use super::confirm::{ConfirmPage, Fact, ReasonField, reason_of};
use super::operations::visible_event;
use super::{Form, Session, Time, plural, problem_page, time, time_text};
use crate::AppState;
use crate::routes::{allow, read_problem, retry_problem};

/// What the reason field asks for.
const HINT: &str = "Kept in the log with the skip, and shown on the event's page.";

/// The decisions about one event, at most.
const DECISIONS: u32 = 50;

/// An operator's decision about an event: a retry or a skip.
pub(crate) struct DecisionRow {
    pub event_id: String,
    pub at: Time,
    /// `retried` or `skipped`.
    pub what: &'static str,
    pub by: String,
    pub reason: Option<String>,
}

impl DecisionRow {
    fn of(record: &RecordedEvent) -> Option<DecisionRow> {
        let what = match record.event_type.as_str() {
            EventRetried::EVENT_TYPE => "retried",
            EventSkipped::EVENT_TYPE => "skipped",
            _ => return None,
        };
        Some(DecisionRow {
            event_id: record.event_id.to_string(),
            at: time(&record.created_at),
            what,
            by: record
                .metadata
                .actor
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string),
            reason: record
                .data
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_owned),
        })
    }
}

/// The retries and skips of `event`, oldest first: the records of the `dispatch`
/// stream named after it.
pub(crate) async fn decisions(
    state: &AppState,
    session: &Session,
    event: &RecordedEvent,
) -> Vec<DecisionRow> {
    let Ok(grant) = allow(&session.ctx, Action::ListEvents) else {
        return Vec::new();
    };
    let filter = EventFilter {
        stream_type: StreamType::parse(STREAM_TYPE).ok(),
        stream_id: Some(StreamId::from_uuid(event.event_id.as_uuid())),
        limit: Some(DECISIONS),
        ..EventFilter::default()
    };
    match reads::events(state.store(), &grant, filter).await {
        Ok(records) => records.iter().filter_map(DecisionRow::of).collect(),
        Err(error) => {
            tracing::warn!(error = %error, "an event's decisions could not be read");
            Vec::new()
        }
    }
}

/// Why `event` cannot be skipped now, as the store would refuse it: it waits behind
/// another event, or it is not failed.
async fn refusal(state: &AppState, session: &Session, event: &RecordedEvent) -> Option<RetryError> {
    if let Some(behind) = event.held_behind {
        let behind_event = match allow(&session.ctx, Action::ListEvents) {
            Ok(grant) => reads::events(
                state.store(),
                &grant,
                EventFilter {
                    stream_id: Some(event.stream_id),
                    after: Position::new(behind.get() - 1),
                    limit: Some(1),
                    ..EventFilter::default()
                },
            )
            .await
            .ok()
            .and_then(|events| events.into_iter().find(|e| e.position == behind))
            .map(|e| e.event_id),
            Err(_) => None,
        };
        return Some(RetryError::Held {
            event_id: event.event_id,
            position: event.position,
            behind,
            behind_event,
        });
    }
    (!event.is_failed()).then_some(RetryError::NotFailed {
        event_id: event.event_id,
        position: event.position,
    })
}

/// The confirmation page for skipping `event`, with the reason field as given.
async fn skip_page_for(
    state: &AppState,
    session: &Session,
    event: &RecordedEvent,
    reason: ReasonField,
) -> Response {
    let n_waiting = match allow(&session.ctx, Action::ListEvents) {
        Ok(grant) => match super::held::behind(state, &grant, event).await {
            Ok(held) => held.map_or(0, |h| h.n_held),
            Err(error) => return problem_page(session, &read_problem(error)),
        },
        Err(_) => 0,
    };
    let href = format!("/console/events/{}", event.event_id);
    let mut page = ConfirmPage::new(
        session,
        "/failures",
        format!("Skip event {}?", event.position),
        format!("/console/events/{}/skip", event.event_id),
        href.clone(),
    );
    page.lead = "The event stays in the log, but it will never be applied: its handler does \
                 not run for it, now or later, and a replay skips it too. Retry it instead if \
                 its cause can be fixed."
        .to_owned();
    page.explanation.push(if n_waiting == 0 {
        "No event of its stream waits behind it.".to_owned()
    } else {
        format!(
            "{} of its stream {} behind it; skipping it applies them at once, in position \
             order (one that fails holds the rest again).",
            plural(n_waiting, "event", "events"),
            if n_waiting == 1 { "waits" } else { "wait" }
        )
    });
    page.facts = vec![
        Fact::code("Event", format!("{} {}", event.position, event.event_type)).link(href),
        Fact::text(
            "Stream",
            format!("{} {}", event.stream_type, event.stream_id),
        )
        .link(format!("/console/events?stream_id={}", event.stream_id)),
        Fact::text("Recorded", time_text(&event.created_at)),
    ];
    if let Some(error) = &event.processing_error {
        page.facts.push(Fact::text(
            "Failed",
            format!("{}: {}", error.code, error.message),
        ));
    }
    page.reason = reason;
    page.submit = "Skip the event".to_owned();
    page.danger = true;
    page.show()
}

/// `GET /console/events/{event_id}/skip`: what skipping means, and the reason.
pub(crate) async fn skip_page(
    State(state): State<AppState>,
    session: Session,
    Path(event_id): Path<String>,
) -> Response {
    let event = match visible_event(&state, &session, &event_id).await {
        Ok(event) => event,
        Err(response) => return response,
    };
    if let Err(problem) = allow(&session.ctx, Action::SkipEvents) {
        return problem_page(&session, &problem);
    }
    if let Some(refused) = refusal(&state, &session, &event).await {
        return problem_page(&session, &retry_problem(refused));
    }
    skip_page_for(&state, &session, &event, ReasonField::blank(HINT)).await
}

/// `POST /console/events/{event_id}/skip`: skips the event, then shows it.
pub(crate) async fn skip(
    State(state): State<AppState>,
    session: Session,
    Path(event_id): Path<String>,
    request: Request,
) -> Response {
    let event = match visible_event(&state, &session, &event_id).await {
        Ok(event) => event,
        Err(response) => return response,
    };
    if let Err(problem) = allow(&session.ctx, Action::SkipEvents) {
        return problem_page(&session, &problem);
    }
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let reason = match reason_of(&form, HINT) {
        Ok(reason) => reason,
        Err(field) => return skip_page_for(&state, &session, &event, field).await,
    };
    match state
        .domain()
        .store()
        .skip(event.event_id, &session.ctx.operator(), reason)
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "/console/events/{}?notice=skipped",
            event.event_id
        ))
        .into_response(),
        Err(error) => problem_page(&session, &retry_problem(error)),
    }
}
