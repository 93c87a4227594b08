//! The event store: the log and the dispatcher, in the log writer's transactions.

use serde::Serialize;

use futures::StreamExt as _;

use cairn_log::{
    AppendError, AppendRequest, Db, DbError, EventFilter, Outcome, Prepared, ReadError,
    RecordedEvent, SpanKind, SpanRecord, Tx, WriteOptions,
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
    Database(#[from] DbError),
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

    /// Appends events to one stream and dispatches them, in the log writer's next
    /// batch. A handler that cannot apply an event does not stop the append: the event
    /// is stored with its failure, which the result reports.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.append_with(WriteOptions::default(), request).await
    }

    /// [`EventStore::append`], submitted to the writer as `options` say.
    pub async fn append_with(
        &self,
        options: WriteOptions,
        request: AppendRequest,
    ) -> Result<Appended, AppendError> {
        let store = self.clone();
        let streams = [request.stream_id];
        self.db
            .write_to(options, &streams, move |tx| {
                let store = store.clone();
                let request = request.clone();
                Box::pin(async move { store.append_in(tx, request).await })
            })
            .await
    }

    /// Appends and dispatches inside a transaction the caller owns, so that other work
    /// (starting a workflow, say) commits or rolls back with the events. A handler that
    /// cannot apply an event does not stop the append: the event is stored with its
    /// failure.
    pub async fn append_in(
        &self,
        tx: &mut Tx,
        request: AppendRequest,
    ) -> Result<Appended, AppendError> {
        self.append_dispatched(tx, request, false).await
    }

    /// Appends and dispatches inside the caller's transaction, and requires every event
    /// to be applied: if a handler cannot apply one, the append fails with
    /// [`AppendError::NotApplied`] and the caller's unit of work must fail with it (its
    /// transaction refuses to commit until it does, or rolls back to a savepoint opened
    /// before). What commands and workflow steps use: they never answer success over a
    /// projection that did not take their events.
    pub async fn append_applied_in(
        &self,
        tx: &mut Tx,
        request: AppendRequest,
    ) -> Result<Appended, AppendError> {
        self.append_dispatched(tx, request, true).await
    }

    async fn append_dispatched(
        &self,
        tx: &mut Tx,
        request: AppendRequest,
        require_applied: bool,
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
        let isolate = tx.handler_needs_savepoint(require_applied);
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
                    .dispatch(&mut tx.conn(), event, isolate)
                    .instrument(span.clone())
                    .await?
            };
            let took = clock.elapsed();
            span.record("outcome", outcome_name(&outcome));
            if worth_a_span(&outcome, took) {
                tx.record_span(handled_span(event, &outcome, started_at, took));
            }
            metrics
                .handler_seconds
                .get_or_create(&cairn_observe::EventLabels {
                    event_type: event.event_type.to_string(),
                })
                .observe(took.as_secs_f64());
            if let Outcome::Failed(error) = &outcome {
                if !isolate {
                    // The handler's writes are still in the transaction.
                    tx.poison();
                }
                if require_applied {
                    tracing::error!(
                        event_type = %event.event_type,
                        code = %error.code,
                        message = %error.message,
                        correlation_id = %event.metadata.correlation_id,
                        "an event could not be applied; its append is refused"
                    );
                    return Err(AppendError::NotApplied {
                        event_type: event.event_type.clone(),
                        code: error.code,
                        message: error.message.clone(),
                    });
                }
            }
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

    /// Re-dispatches one failed event and records its new outcome, in the log writer's
    /// next batch.
    pub async fn retry(&self, event_id: EventId) -> Result<Dispatched, RetryError> {
        self.retry_with(WriteOptions::default(), event_id).await
    }

    /// [`EventStore::retry`], submitted to the writer as `options` say.
    pub async fn retry_with(
        &self,
        options: WriteOptions,
        event_id: EventId,
    ) -> Result<Dispatched, RetryError> {
        let store = self.clone();
        self.db
            .write(options, move |tx| {
                let store = store.clone();
                Box::pin(async move { store.retry_in(tx, event_id).await })
            })
            .await
    }

    /// Re-dispatches one failed event inside the caller's transaction.
    pub async fn retry_in(&self, tx: &mut Tx, event_id: EventId) -> Result<Dispatched, RetryError> {
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
        let isolate = tx.handler_needs_savepoint(false);
        let started_at = chrono::Utc::now();
        let clock = std::time::Instant::now();
        let outcome = self
            .dispatcher
            .dispatch(&mut tx.conn(), &event, isolate)
            .await?;
        if outcome.error().is_some() && !isolate {
            tx.poison();
        }
        tx.record_span(handled_span(&event, &outcome, started_at, clock.elapsed()));
        let event = tx
            .record_outcome(&event, &outcome, cairn_types::now_micros())
            .await?;
        Ok(Dispatched { event, outcome })
    }

    /// Retries every failed event the selection matches, oldest first. Each retry is
    /// its own unit of work; they are handed to the log writer together, in order, so
    /// they share its commits. `progress` is called with (done, total).
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
        // Retries that met a conflicting write or a lost connection: tried again, one
        // at a time, once the others are done.
        let mut again = Vec::new();
        {
            let mut retries = futures::stream::iter(failed)
                .map(|event_id| async move { (event_id, self.retry(event_id).await) })
                .buffered(64);
            while let Some((event_id, result)) = retries.next().await {
                match result {
                    Err(RetryError::Database(error)) if error.is_passing() => {
                        again.push(event_id);
                        continue;
                    }
                    result => report.count(result)?,
                }
                progress(report.n_retried, total);
            }
        }
        for event_id in again {
            let mut retry = cairn_log::PassingRetry::default();
            let result = loop {
                match self.retry(event_id).await {
                    Err(RetryError::Database(error)) if error.is_passing() && retry.remains() => {
                        retry.pause().await;
                    }
                    result => break result,
                }
            };
            report.count(result)?;
            progress(report.n_retried, total);
        }
        Ok(report)
    }
}

impl RetryReport {
    /// Counts one retry's result; an error other than "not failed any more" is the
    /// bulk retry's.
    fn count(&mut self, result: Result<Dispatched, RetryError>) -> Result<(), RetryError> {
        match result {
            Ok(dispatched) => {
                self.n_retried += 1;
                if dispatched.event.is_failed() {
                    self.still_failed.push(dispatched);
                } else {
                    self.n_fixed += 1;
                }
                Ok(())
            }
            // Another process retried it in the meantime.
            Err(RetryError::NotFailed { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Handlers that take longer than this leave a span with their duration.
const SLOW_HANDLER: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether a handler's run is worth a row of its own in the timeline: one that failed
/// (its event may not even be committed) or took long. An event applied quickly says
/// all there is in its own row (its outcome, and when it was processed); a span per
/// event would double what the log writes.
fn worth_a_span(outcome: &Outcome, took: std::time::Duration) -> bool {
    outcome.error().is_some() || took >= SLOW_HANDLER
}

/// A span for the timeline of how one event's dispatch went. It is recorded on the
/// transaction, and written even if the transaction's work is rolled back, so a
/// command that failed shows the handler that failed it.
fn handled_span(
    event: &RecordedEvent,
    outcome: &Outcome,
    started_at: chrono::DateTime<chrono::Utc>,
    took: std::time::Duration,
) -> SpanRecord {
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
    span
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Skipped => "skipped",
        Outcome::Failed(_) => "failed",
    }
}
