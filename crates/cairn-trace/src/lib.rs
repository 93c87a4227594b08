//! One timeline per correlation id.
//!
//! Every hop of a request records itself with the request's correlation id: the events
//! it appended (in the log, with each one's processing outcome), each handler's run
//! (a span with its duration, even when the command rolled back), the workflow steps
//! and attempts it caused (in the log, with their start and end), each email (a span),
//! each realtime delivery (a span), and the HTTP request itself (a span). This crate
//! merges them, in the tenancy a grant allows, into one ordered timeline with the time
//! each hop took and any error: the seed's two-hour, five-system hunt as one read.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use cairn_log::{Db, EventFilter, RecordedEvent, SpanKind, SpanRecord};
use cairn_policy::{Action, Grant};
use cairn_types::Tenancy;
use cairn_types::{CorrelationId, StreamId};
use cairn_workflow::events::{
    CompensationFailed, CompensationStarted, StepAttemptFailed, StepCompleted, StepFailed,
    StepStarted, TimerFired, TimerStarted, WorkflowCompleted, WorkflowFailed, WorkflowStarted,
};

/// Why a timeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("database error while reading the timeline")]
    Database(#[from] cairn_log::DbError),
    #[error(transparent)]
    Read(#[from] cairn_log::ReadError),
    /// A grant for another action: a bug in the caller.
    #[error("a grant to {granted} does not cover reading timelines")]
    WrongGrant { granted: String },
}

/// What kind of hop an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// The HTTP request.
    Http,
    /// An event appended to the log, with its handler's outcome and time.
    Event,
    /// A handler that ran for an event that was not committed (its command rolled back).
    Handler,
    /// A workflow run starting, compensating or finishing.
    Workflow,
    /// One attempt of one workflow step.
    Step,
    /// A workflow timer.
    Timer,
    /// An email handed to the mail server or the outbox.
    Email,
    /// An event delivered to a realtime subscriber.
    Delivery,
    /// A hop of the integration probe.
    Probe,
}

/// How a hop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    /// Failed, and will be tried again.
    Retrying,
    /// Started and not finished (a step whose process stopped mid-attempt is in doubt).
    InProgress,
    /// A timer waiting to fire, or an event held behind an earlier one of its stream
    /// (a failure not yet retried or skipped, or a paused handler route).
    Waiting,
}

/// One hop.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// Milliseconds since the timeline's first hop.
    pub offset_ms: f64,
    /// How long the hop took, where that is known.
    pub duration_ms: Option<f64>,
    pub hop: Hop,
    /// What happened, for people.
    pub name: String,
    pub status: Status,
    pub error: Option<String>,
    /// The particulars: positions, ids, attempts, results.
    pub detail: Value,
}

/// Everything one request caused, in order.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Timeline {
    pub correlation_id: CorrelationId,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// From the first hop's start to the last hop's end.
    pub duration_ms: f64,
    pub hops: usize,
    /// Hops that failed, or failed and will be retried.
    pub errors: usize,
    pub entries: Vec<Entry>,
    /// The people whose data the timeline's events carry (see
    /// [`cairn_log::personal_subjects`]), for the access log; `None` when none of its
    /// events is of a personal type. Not part of the timeline's JSON.
    #[serde(skip)]
    #[schemars(skip)]
    pub subjects: Option<Vec<cairn_types::UserId>>,
}

fn millis(duration: chrono::Duration) -> f64 {
    duration.num_microseconds().unwrap_or(i64::MAX) as f64 / 1_000.0
}

struct Draft {
    at: DateTime<Utc>,
    /// Breaks ties between hops at the same instant: the log's order, then spans'.
    order: (i64, usize),
    duration: Option<chrono::Duration>,
    hop: Hop,
    name: String,
    status: Status,
    error: Option<String>,
    detail: Value,
}

/// The timeline of `correlation_id` that `grant` (for [`Action::ReadTrace`]) may see;
/// `None` when it sees nothing of it.
pub async fn timeline(
    db: &Db,
    registry: &cairn_dispatch::Registry,
    grant: &Grant,
    correlation_id: CorrelationId,
) -> Result<Option<Timeline>, TraceError> {
    if grant.action() != Action::ReadTrace {
        return Err(TraceError::WrongGrant {
            granted: grant.action().describe(),
        });
    }
    let tenancy = grant.tenancy();
    if *tenancy == Tenancy::None {
        return Ok(None);
    }
    let (events, spans) = {
        let mut scoped = db.scoped(tenancy).await?;
        let mut conn = scoped.conn();
        let events = conn
            .read_events(&EventFilter {
                correlation_id: Some(correlation_id),
                org_id: tenancy.org(),
                limit: Some(100_000),
                ..EventFilter::default()
            })
            .await?;
        let spans = conn.read_spans(correlation_id, tenancy).await?;
        (events, spans)
    };
    let events: Vec<RecordedEvent> = events
        .into_iter()
        .filter(|event| tenancy.sees(event.metadata.org_id))
        .collect();
    let events = cairn_dispatch::current_events(db, registry, events).await?;
    Ok(
        assemble(correlation_id, &events, &spans).map(|mut timeline| {
            timeline.subjects = cairn_log::personal_subjects(&events);
            timeline
        }),
    )
}

/// Merges a correlation id's events and spans into its timeline.
pub fn assemble(
    correlation_id: CorrelationId,
    events: &[RecordedEvent],
    spans: &[SpanRecord],
) -> Option<Timeline> {
    let mut drafts = Vec::new();
    let handlers: BTreeMap<i64, &SpanRecord> = spans
        .iter()
        .filter(|span| span.kind == SpanKind::Handler)
        .filter_map(|span| span.attributes["position"].as_i64().map(|p| (p, span)))
        .collect();
    let committed: BTreeSet<i64> = events.iter().map(|e| e.position.get()).collect();
    let workflows = workflow_kinds(events);
    let finished_attempts = finished_attempts(events);
    for event in events {
        if event.stream_type.as_str() == cairn_workflow::events::STREAM_TYPE {
            if let Some(draft) = workflow_entry(event, &workflows, &finished_attempts) {
                drafts.push(draft);
            }
            continue;
        }
        drafts.push(event_entry(
            event,
            handlers.get(&event.position.get()).copied(),
        ));
    }
    for (index, span) in spans.iter().enumerate() {
        let hop = match span.kind {
            SpanKind::Handler => {
                let position = span.attributes["position"].as_i64();
                if position.is_some_and(|p| committed.contains(&p)) {
                    continue;
                }
                Hop::Handler
            }
            SpanKind::Http => Hop::Http,
            SpanKind::Email => Hop::Email,
            SpanKind::Delivery => Hop::Delivery,
            SpanKind::Probe => Hop::Probe,
            // Step attempts are in the log itself.
            SpanKind::Step => continue,
        };
        let name = if hop == Hop::Handler {
            format!("{} (not committed: its transaction rolled back)", span.name)
        } else {
            span.name.clone()
        };
        drafts.push(Draft {
            at: span.started_at,
            order: (i64::MAX, index),
            duration: chrono::Duration::from_std(span.duration).ok(),
            hop,
            name,
            status: if span.error.is_some() {
                Status::Failed
            } else {
                Status::Ok
            },
            error: span.error.clone(),
            detail: span.attributes.clone(),
        });
    }
    if drafts.is_empty() {
        return None;
    }
    drafts.sort_by(|a, b| a.at.cmp(&b.at).then(a.order.cmp(&b.order)));
    let started_at = drafts.first().map_or_else(Utc::now, |d| d.at);
    let finished_at = drafts
        .iter()
        .map(|d| d.at + d.duration.unwrap_or_default())
        .max()
        .unwrap_or(started_at);
    let entries: Vec<Entry> = drafts
        .into_iter()
        .map(|draft| Entry {
            at: draft.at,
            offset_ms: millis(draft.at - started_at),
            duration_ms: draft.duration.map(millis),
            hop: draft.hop,
            name: draft.name,
            status: draft.status,
            error: draft.error,
            detail: draft.detail,
        })
        .collect();
    Some(Timeline {
        correlation_id,
        started_at,
        finished_at,
        duration_ms: millis(finished_at - started_at),
        hops: entries.len(),
        errors: entries
            .iter()
            .filter(|e| matches!(e.status, Status::Failed | Status::Retrying))
            .count(),
        entries,
        subjects: None,
    })
}

fn event_entry(event: &RecordedEvent, handler: Option<&SpanRecord>) -> Draft {
    let (status, error) = match (&event.processing_error, event.held_behind) {
        (Some(error), _) => (
            Status::Failed,
            Some(format!("{}: {}", error.code, error.message)),
        ),
        (None, Some(_)) => (Status::Waiting, None),
        (None, None) => (Status::Ok, None),
    };
    let held = event
        .held_behind
        .map(|behind| format!("held behind position {behind}"));
    let outcome = held.as_deref().unwrap_or_else(|| {
        handler
            .and_then(|span| span.attributes["outcome"].as_str())
            .unwrap_or(if event.processed_at.is_some() {
                "applied"
            } else {
                "not processed"
            })
    });
    Draft {
        at: event.created_at,
        order: (event.position.get(), 0),
        duration: handler.and_then(|span| chrono::Duration::from_std(span.duration).ok()),
        hop: Hop::Event,
        name: format!("{} #{}", event.event_type, event.position),
        status,
        error,
        detail: json!({
            "position": event.position,
            "event_id": event.event_id,
            "stream_type": event.stream_type,
            "stream_id": event.stream_id,
            "handler": outcome,
            "processed_at": event.processed_at,
        }),
    }
}

/// Each run's name in the timeline: its workflow kind, from its `workflow.started`,
/// with the end of its id where several runs of one kind take part.
fn workflow_kinds(events: &[RecordedEvent]) -> BTreeMap<StreamId, String> {
    let kinds: BTreeMap<StreamId, String> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "workflow.started")
        .filter_map(|e| {
            serde_json::from_value::<WorkflowStarted>(e.data.clone())
                .ok()
                .map(|started| (e.stream_id, started.kind))
        })
        .collect();
    let mut runs_of: BTreeMap<&str, usize> = BTreeMap::new();
    for kind in kinds.values() {
        *runs_of.entry(kind.as_str()).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(run, kind)| {
            let name = if runs_of.get(kind.as_str()).copied().unwrap_or(0) > 1 {
                let id = run.to_string();
                format!("{kind} …{}", &id[id.len() - 6..])
            } else {
                kind.clone()
            };
            (*run, name)
        })
        .collect()
}

/// The (run, step, attempt) triples that have an outcome in the log.
fn finished_attempts(events: &[RecordedEvent]) -> BTreeSet<(StreamId, String, u32)> {
    let mut done = BTreeSet::new();
    for event in events {
        let (step, attempt) = match event.event_type.as_str() {
            "workflow.step_completed" => {
                match serde_json::from_value::<StepCompleted>(event.data.clone()) {
                    Ok(e) => (e.step, e.attempt),
                    Err(_) => continue,
                }
            }
            "workflow.step_attempt_failed" => {
                match serde_json::from_value::<StepAttemptFailed>(event.data.clone()) {
                    Ok(e) => (e.step, e.attempt),
                    Err(_) => continue,
                }
            }
            "workflow.step_failed" => {
                match serde_json::from_value::<StepFailed>(event.data.clone()) {
                    Ok(e) => (e.step, e.attempt),
                    Err(_) => continue,
                }
            }
            _ => continue,
        };
        done.insert((event.stream_id, step, attempt));
    }
    done
}

fn attempt_suffix(attempt: u32) -> String {
    if attempt > 1 {
        format!(" (attempt {attempt})")
    } else {
        String::new()
    }
}

fn workflow_entry(
    event: &RecordedEvent,
    kinds: &BTreeMap<StreamId, String>,
    finished: &BTreeSet<(StreamId, String, u32)>,
) -> Option<Draft> {
    let kind = kinds
        .get(&event.stream_id)
        .map_or("workflow", String::as_str);
    let run = json!({ "run_id": event.stream_id, "position": event.position });
    let order = (event.position.get(), 0);
    let draft = |at, hop, name: String, status, error: Option<String>, duration, detail| Draft {
        at,
        order,
        duration,
        hop,
        name,
        status,
        error,
        detail,
    };
    let data = event.data.clone();
    Some(match event.event_type.as_str() {
        "workflow.started" => draft(
            event.created_at,
            Hop::Workflow,
            format!("{kind} started"),
            Status::Ok,
            None,
            None,
            run,
        ),
        "workflow.step_started" => {
            let e: StepStarted = serde_json::from_value(data).ok()?;
            if finished.contains(&(event.stream_id, e.step.clone(), e.attempt)) {
                return None;
            }
            draft(
                e.at,
                Hop::Step,
                format!(
                    "{kind} › {}{} in progress",
                    e.step,
                    attempt_suffix(e.attempt)
                ),
                Status::InProgress,
                None,
                None,
                run,
            )
        }
        "workflow.step_completed" => {
            let e: StepCompleted = serde_json::from_value(data).ok()?;
            draft(
                e.started_at,
                Hop::Step,
                format!("{kind} › {}{}", e.step, attempt_suffix(e.attempt)),
                Status::Ok,
                None,
                Some(e.finished_at - e.started_at),
                json!({ "run_id": event.stream_id, "position": event.position, "attempt": e.attempt, "result": e.result }),
            )
        }
        "workflow.step_attempt_failed" => {
            let e: StepAttemptFailed = serde_json::from_value(data).ok()?;
            draft(
                e.started_at,
                Hop::Step,
                format!("{kind} › {}{}", e.step, attempt_suffix(e.attempt)),
                Status::Retrying,
                Some(e.error),
                Some(e.finished_at - e.started_at),
                json!({ "run_id": event.stream_id, "position": event.position, "attempt": e.attempt, "retry_at": e.retry_at }),
            )
        }
        "workflow.step_failed" => {
            let e: StepFailed = serde_json::from_value(data).ok()?;
            draft(
                e.started_at,
                Hop::Step,
                format!("{kind} › {}{}", e.step, attempt_suffix(e.attempt)),
                Status::Failed,
                Some(e.error),
                Some(e.finished_at - e.started_at),
                json!({ "run_id": event.stream_id, "position": event.position, "attempt": e.attempt, "permanent": e.permanent }),
            )
        }
        "workflow.timer_started" => {
            let e: TimerStarted = serde_json::from_value(data).ok()?;
            draft(
                e.at,
                Hop::Timer,
                format!(
                    "{kind} › sleeps on {} until {}",
                    e.timer,
                    e.until.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                Status::Waiting,
                None,
                None,
                run,
            )
        }
        "workflow.timer_fired" => {
            let e: TimerFired = serde_json::from_value(data).ok()?;
            draft(
                e.at,
                Hop::Timer,
                format!("{kind} › timer {} fired", e.timer),
                Status::Ok,
                None,
                None,
                run,
            )
        }
        "workflow.compensation_started" => {
            let e: CompensationStarted = serde_json::from_value(data).ok()?;
            draft(
                e.at,
                Hop::Workflow,
                format!("{kind} compensating"),
                Status::Failed,
                Some(e.reason),
                None,
                run,
            )
        }
        "workflow.completed" => {
            let e: WorkflowCompleted = serde_json::from_value(data).ok()?;
            draft(
                e.at,
                Hop::Workflow,
                format!("{kind} completed"),
                Status::Ok,
                None,
                None,
                run,
            )
        }
        "workflow.failed" => {
            let e: WorkflowFailed = serde_json::from_value(data).ok()?;
            draft(
                e.at,
                Hop::Workflow,
                format!("{kind} failed"),
                Status::Failed,
                Some(e.reason),
                None,
                run,
            )
        }
        "workflow.compensation_failed" => {
            let e: CompensationFailed = serde_json::from_value(data).ok()?;
            draft(
                e.at,
                Hop::Workflow,
                format!("{kind} needs an operator: undoing {} failed", e.step),
                Status::Failed,
                Some(e.error),
                None,
                run,
            )
        }
        _ => event_entry(event, None),
    })
}
