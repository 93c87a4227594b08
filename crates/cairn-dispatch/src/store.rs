//! The event store: the log and the dispatcher, one transaction at a time.

use serde::Serialize;

use cairn_log::{
    AppendError, AppendRequest, Db, EventFilter, Outcome, Prepared, ReadError, RecordedEvent,
    SpanKind, SpanRecord, Tx,
};
use cairn_types::{ErrorCode, EventId, Position, StreamType};

use crate::dispatcher::Dispatcher;
use crate::registry::Registry;

/// One stored event and what the dispatcher did with it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Dispatched {
    #[serde(flatten)]
    pub event: RecordedEvent,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Appended {
    /// The events, in position order.
    pub events: Vec<Dispatched>,
    /// True when the idempotency key had been used before with the same request: these
    /// are the events that request wrote, and nothing was written now.
    pub repeated: bool,
}

/// Why a retry did not run.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("there is no event {event_id}")]
    NotFound { event_id: EventId },
    #[error("event {event_id} (position {position}) is not failed; only failed events are retried")]
    NotFailed {
        event_id: EventId,
        position: Position,
    },
    #[error("database error while retrying")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Which failed events to retry.
#[derive(Debug, Clone, Default)]
pub struct RetrySelection {
    /// Only events failed with this code.
    pub code: Option<ErrorCode>,
    /// Only events of this stream type.
    pub stream_type: Option<StreamType>,
}

/// What a bulk retry did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RetryReport {
    /// Events retried.
    pub n_retried: u64,
    /// Of those, how many are now processed.
    pub n_fixed: u64,
    /// The events that failed again, with their new outcomes.
    pub still_failed: Vec<Dispatched>,
}

/// The log and the dispatcher together: every append dispatches its events in the
/// append's own transaction, so when `append` returns, the projections reflect it.
#[derive(Debug, Clone)]
pub struct EventStore {
    db: Db,
    dispatcher: Dispatcher,
}

impl EventStore {
    /// An event store over a database and a routing table.
    pub fn new(db: Db, registry: Registry) -> Self {
        Self {
            db,
            dispatcher: Dispatcher::new(registry),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Appends events to one stream and dispatches them, in one transaction.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        let mut tx = self.db.begin().await?;
        let appended = self.append_in(&mut tx, request).await?;
        tx.commit().await?;
        Ok(appended)
    }

    /// Appends and dispatches inside a transaction the caller owns, so that other work
    /// (starting a workflow, say) commits or rolls back with the events.
    pub async fn append_in(
        &self,
        tx: &mut Tx,
        request: AppendRequest,
    ) -> Result<Appended, AppendError> {
        self.check_payloads(&request)?;
        let mut pending = match tx.prepare_append(request).await? {
            Prepared::Repeat(events) => {
                let events = events
                    .into_iter()
                    .map(|event| Dispatched {
                        outcome: event.last_outcome().unwrap_or(Outcome::Applied),
                        event,
                    })
                    .collect();
                return Ok(Appended {
                    events,
                    repeated: true,
                });
            }
            Prepared::New(pending) => pending,
        };
        let events = pending.events().to_vec();
        let mut outcomes = Vec::with_capacity(events.len());
        let processed_at = cairn_types::now_micros();
        let metrics = cairn_observe::metrics();
        let dispatch_started = std::time::Instant::now();
        for (index, event) in events.iter().enumerate() {
            let started_at = chrono::Utc::now();
            let clock = std::time::Instant::now();
            let span = tracing::info_span!(
                "cairn.handle",
                event_type = %event.event_type,
                position = event.position.get(),
                correlation_id = %event.metadata.correlation_id,
                outcome = tracing::field::Empty,
            );
            if tracing::Span::current().is_none() {
                // Not inside a request or a step (an append from the command line):
                // the handler starts its event's trace itself.
                cairn_observe::otel::join_trace(
                    &span,
                    event.metadata.correlation_id.as_uuid(),
                    None,
                );
            }
            let outcome = {
                use tracing::Instrument as _;
                self.dispatcher
                    .dispatch(&mut tx.conn(), event)
                    .instrument(span.clone())
                    .await?
            };
            let took = clock.elapsed();
            span.record("outcome", outcome_name(&outcome));
            self.record_handled(event, &outcome, started_at, took);
            metrics
                .handler_seconds
                .get_or_create(&cairn_observe::EventLabels {
                    event_type: event.event_type.to_string(),
                })
                .observe(took.as_secs_f64());
            pending.record(index, &outcome, processed_at);
            outcomes.push(outcome);
        }
        metrics
            .dispatch_seconds
            .observe(dispatch_started.elapsed().as_secs_f64());
        let stored = tx.write_append(pending).await?;
        Ok(Appended {
            events: stored
                .into_iter()
                .zip(outcomes)
                .map(|(event, outcome)| Dispatched { event, outcome })
                .collect(),
            repeated: false,
        })
    }

    /// Records how one event's dispatch went: a span for the request's timeline, and
    /// the failure counter. The span is written even if the caller's transaction
    /// later rolls back, so a command that failed shows the handler that failed it.
    fn record_handled(
        &self,
        event: &RecordedEvent,
        outcome: &Outcome,
        started_at: chrono::DateTime<chrono::Utc>,
        took: std::time::Duration,
    ) {
        if let Outcome::Failed(error) = outcome {
            cairn_observe::metrics()
                .events_failed
                .get_or_create(&cairn_observe::FailedLabels {
                    event_type: event.event_type.to_string(),
                    code: error.code.to_string(),
                })
                .inc();
        }
        let mut span = SpanRecord::ending_now(
            event.metadata.correlation_id,
            SpanKind::Handler,
            event.event_type.to_string(),
            started_at,
        )
        .org(event.metadata.org_id)
        .attribute("position", event.position.get())
        .attribute("stream_type", event.stream_type.as_str())
        .attribute("outcome", outcome_name(outcome))
        .error(
            outcome
                .error()
                .map(|error| format!("{}: {}", error.code, error.message)),
        );
        span.duration = took;
        self.db.record_span(span);
    }

    /// Refuses events whose payload does not fit the registered payload type, or whose
    /// event type belongs to another stream type.
    fn check_payloads(&self, request: &AppendRequest) -> Result<(), AppendError> {
        for (index, event) in request.events.iter().enumerate() {
            let Some(spec) = self.dispatcher.registry().spec(&event.event_type) else {
                continue;
            };
            let invalid = |reason: String| AppendError::InvalidData {
                index,
                event_type: event.event_type.clone(),
                reason,
            };
            if spec.stream_type != request.stream_type {
                return Err(invalid(format!(
                    "this event type belongs to stream type {:?}, not {:?}",
                    spec.stream_type.as_str(),
                    request.stream_type.as_str()
                )));
            }
            spec.validate(&event.data).map_err(invalid)?;
        }
        Ok(())
    }

    /// Re-dispatches one failed event and records its new outcome.
    pub async fn retry(&self, event_id: EventId) -> Result<Dispatched, RetryError> {
        let mut tx = self.db.begin().await?;
        tx.lock_head().await?;
        let event = tx
            .event_for_update(event_id)
            .await?
            .ok_or(RetryError::NotFound { event_id })?;
        if !event.is_failed() {
            return Err(RetryError::NotFailed {
                event_id,
                position: event.position,
            });
        }
        let outcome = self.dispatcher.dispatch(&mut tx.conn(), &event).await?;
        let event = tx
            .record_outcome(&event, &outcome, cairn_types::now_micros())
            .await?;
        tx.commit().await?;
        Ok(Dispatched { event, outcome })
    }

    /// Retries every failed event the selection matches, oldest first, each in its own
    /// transaction. `progress` is called with (done, total).
    pub async fn retry_failed(
        &self,
        selection: &RetrySelection,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RetryReport, RetryError> {
        let mut failed = Vec::new();
        let mut filter = EventFilter {
            failed: true,
            error_code: selection.code,
            stream_type: selection.stream_type.clone(),
            ..EventFilter::default()
        };
        loop {
            let page = self.db.reader().await?.conn().read_events(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = last.position;
            failed.extend(page.into_iter().map(|event| event.event_id));
        }
        let total = failed.len() as u64;
        let mut report = RetryReport::default();
        for event_id in failed {
            match self.retry(event_id).await {
                Ok(dispatched) => {
                    report.n_retried += 1;
                    if dispatched.event.is_failed() {
                        report.still_failed.push(dispatched);
                    } else {
                        report.n_fixed += 1;
                    }
                }
                // Another process retried it in the meantime.
                Err(RetryError::NotFailed { .. }) => {}
                Err(error) => return Err(error),
            }
            progress(report.n_retried, total);
        }
        Ok(report)
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Skipped => "skipped",
        Outcome::Failed(_) => "failed",
    }
}
