//! The event store: the log and the dispatcher, in the log writer's transactions.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;

use futures::StreamExt as _;

use cairn_log::{
    AppendError, AppendRequest, Db, DbError, EventFilter, HoldCause, NewEvent, Outcome,
    PersonalField, Prepared, ReadError, RecordedEvent, SealError, SealPlace, SealedAhead, SpanKind,
    SpanRecord, StreamHold, Tx, WriteOptions, args,
};
use cairn_types::{
    Actor, CorrelationId, ErrorCode, EventId, EventType, Metadata, Position, Reason, StreamId,
    StreamType,
};

use crate::dispatcher::Dispatcher;
use crate::operations::{
    EventRetried, EventSkipped, HandlerRoute, PausedRoutes, RoutePause, RoutePaused, RouteResumed,
};
use crate::registry::Registry;
use crate::sequence::Ledger;
use crate::spec::EventPayload as _;

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
    #[error(
        "event {event_id} (position {position}) is not failed; only failed events are retried or skipped"
    )]
    NotFailed {
        event_id: EventId,
        position: Position,
    },
    #[error(
        "event {event_id} (position {position}) is held behind position {behind}{}: retry or skip that one, and this one applies after it",
        behind_event.map(|id| format!(" (event {id})")).unwrap_or_default()
    )]
    Held {
        event_id: EventId,
        position: Position,
        behind: Position,
        behind_event: Option<EventId>,
    },
    #[error(
        "event {event_id} (position {position}) is not retried: its handler route {route} is {detail}; resume the route first"
    )]
    RoutePaused {
        event_id: EventId,
        position: Position,
        route: String,
        detail: String,
    },
    #[error("the decision could not be recorded")]
    Record(#[source] Box<AppendError>),
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
    /// Events left as they were: their route is paused, or they wait behind an
    /// earlier failure of their stream (which the retry retries first).
    pub n_not_retried: u64,
}

/// The log and the dispatcher together: every append dispatches its events in the
/// append's own transaction, so when `append` returns, the projections reflect it.
#[derive(Debug, Clone)]
pub struct EventStore {
    db: Db,
    dispatcher: Dispatcher,
    /// The paused handler routes last read, keyed by the head's `controls` then.
    paused: Arc<Mutex<Option<PausedAt>>>,
}

/// Paused routes as read when the head's `controls` was the first.
type PausedAt = (String, Arc<PausedRoutes>);

impl EventStore {
    /// An event store over a database and a routing table.
    pub fn new(db: Db, registry: Registry) -> Self {
        Self {
            dispatcher: Dispatcher::new(registry, db.keyring().clone()),
            db,
            paused: Arc::new(Mutex::new(None)),
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
        // Checked, and sealed where this process holds the keys, on the caller's task:
        // the writer, which runs one unit at a time, only confirms the keys.
        let mut request = request;
        self.check_payloads(&mut request)?;
        let ahead: Arc<[Option<SealedAhead>]> = self.seal_ahead(&request)?.into();
        let store = self.clone();
        let streams = [request.stream_id];
        self.db
            .write_to(options, &streams, move |tx| {
                let store = store.clone();
                let request = request.clone();
                let ahead = ahead.clone();
                Box::pin(async move { store.append_checked(tx, request, &ahead, false).await })
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
        let mut request = request;
        self.check_payloads(&mut request)?;
        self.append_checked(tx, request, &[], require_applied).await
    }

    /// [`EventStore::append_dispatched`] of a request whose payloads were checked, with
    /// the personal fields sealed `ahead` of the transaction, if any.
    async fn append_checked(
        &self,
        tx: &mut Tx,
        mut request: AppendRequest,
        ahead: &[Option<SealedAhead>],
        require_applied: bool,
    ) -> Result<Appended, AppendError> {
        let plain = self.seal(tx, &mut request, ahead).await?;
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
        // Handlers see personal fields as given; only the stored copy (in `pending`)
        // is sealed.
        let mut events = pending.events().to_vec();
        for (event, given) in events.iter_mut().zip(plain) {
            if let Some(given) = given {
                event.data = given;
            }
        }
        let mut outcomes = Vec::with_capacity(events.len());
        let processed_at = cairn_types::now_micros();
        let dispatch_started = std::time::Instant::now();
        for (index, event) in events.iter().enumerate() {
            let outcome = {
                let mut ledger = LiveLedger {
                    store: self,
                    tx: &mut *tx,
                    appending: event.position,
                    required: require_applied,
                };
                crate::sequence::process(&self.dispatcher, &mut ledger, event)
                    .await
                    .map_err(append_error)?
            };
            if require_applied && !outcome.is_applied() {
                return Err(self.refusal(tx, event, &outcome).await);
            }
            pending.record(index, &outcome, processed_at);
            outcomes.push(outcome);
        }
        cairn_observe::metrics()
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

    /// Why an append that required every event applied is refused: `outcome` is the
    /// outcome one of its events would have had.
    async fn refusal(&self, tx: &mut Tx, event: &RecordedEvent, outcome: &Outcome) -> AppendError {
        match outcome {
            Outcome::Failed(error) => {
                tracing::error!(
                    event_type = %event.event_type,
                    code = %error.code,
                    message = %error.message,
                    correlation_id = %event.metadata.correlation_id,
                    "an event could not be applied; its append is refused"
                );
                AppendError::NotApplied {
                    event_type: event.event_type.clone(),
                    code: error.code,
                    message: error.message.clone(),
                }
            }
            Outcome::Held { behind } => {
                let paused = match self.paused_routes_in(tx).await {
                    Ok(paused) => paused,
                    Err(error) => return AppendError::Database(error),
                };
                let (cause, detail) = match paused.covering(event) {
                    Some(pause) if *behind == event.position => (
                        HoldCause::Paused,
                        format!(
                            "its handler route {} is paused by {} since {}: {}; try again once it is resumed",
                            pause.route,
                            pause.paused_by,
                            pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
                            pause.reason
                        ),
                    ),
                    _ => match tx.stream_hold(event.stream_id).await {
                        Ok(hold) => {
                            let cause = hold.map_or(HoldCause::Failed, |hold| hold.cause);
                            (
                                cause,
                                format!(
                                    "stream {} is held behind position {behind}: {}",
                                    event.stream_id,
                                    held_detail(cause, *behind)
                                ),
                            )
                        }
                        Err(error) => return AppendError::Database(error),
                    },
                };
                AppendError::Held {
                    stream_id: event.stream_id,
                    event_type: event.event_type.clone(),
                    behind: *behind,
                    cause,
                    detail,
                }
            }
            Outcome::Applied | Outcome::Skipped => AppendError::NotApplied {
                event_type: event.event_type.clone(),
                code: cairn_types::ErrorCode::HandlerFailed,
                message: "the event was not applied".to_owned(),
            },
        }
    }

    /// The paused handler routes as `tx` sees them: read again only when the head says
    /// a route was paused or resumed since they were last read.
    pub(crate) async fn paused_routes_in(&self, tx: &mut Tx) -> Result<Arc<PausedRoutes>, DbError> {
        if tx.locked_controls().is_none() {
            tx.lock_head().await?;
        }
        let controls = tx.locked_controls().unwrap_or_default();
        if let Some((key, paused)) = &*self.paused.lock().unwrap_or_else(PoisonError::into_inner)
            && key == controls
        {
            return Ok(paused.clone());
        }
        let controls = controls.to_owned();
        let paused = Arc::new(PausedRoutes::load(&mut tx.conn()).await?);
        // Keyed by the hash of the event that last changed them: a transaction that
        // paused a route and then rolled back leaves a key no committed head has.
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((controls, paused.clone()));
        Ok(paused)
    }

    /// Seals the personal fields of each event in place, under their people's data
    /// keys (made in this transaction for people who have none). Returns each event's
    /// payload as given, for the handlers, where anything was sealed.
    /// `ahead` holds what [`EventStore::seal_ahead`] sealed of them, if anything.
    async fn seal(
        &self,
        tx: &mut Tx,
        request: &mut AppendRequest,
        ahead: &[Option<SealedAhead>],
    ) -> Result<Vec<Option<Value>>, AppendError> {
        let mut plain = Vec::new();
        for (index, event) in request.events.iter_mut().enumerate() {
            let Some(fields) = self.personal_fields(index, request.stream_id, event)? else {
                plain.push(None);
                continue;
            };
            let given = event.data.clone();
            let place = SealPlace {
                event_type: event.event_type.as_str(),
                stream_id: request.stream_id,
            };
            let ahead = ahead.get(index).and_then(Option::as_ref);
            self.db
                .keyring()
                .seal_in(tx, place, &mut event.data, &fields, ahead)
                .await
                .map_err(|error| match error {
                    SealError::Database(error) => AppendError::Database(error),
                    error => AppendError::Seal {
                        index,
                        event_type: event.event_type.clone(),
                        error,
                    },
                })?;
            plain.push(Some(given));
        }
        Ok(plain)
    }

    /// Seals the personal fields of each event of a checked request with the keys this
    /// process holds, outside any transaction (`None` for an event it cannot seal so).
    fn seal_ahead(&self, request: &AppendRequest) -> Result<Vec<Option<SealedAhead>>, AppendError> {
        let mut ahead = Vec::with_capacity(request.events.len());
        for (index, event) in request.events.iter().enumerate() {
            let sealed = self
                .personal_fields(index, request.stream_id, event)?
                .and_then(|fields| {
                    let place = SealPlace {
                        event_type: event.event_type.as_str(),
                        stream_id: request.stream_id,
                    };
                    self.db.keyring().seal_ahead(place, &event.data, &fields)
                });
            ahead.push(sealed);
        }
        Ok(ahead)
    }

    /// The personal fields of a checked event, if its payload type has any and it
    /// names them.
    fn personal_fields(
        &self,
        index: usize,
        stream_id: StreamId,
        event: &NewEvent,
    ) -> Result<Option<Vec<PersonalField>>, AppendError> {
        let Some(spec) = self.dispatcher.registry().spec(&event.event_type) else {
            return Ok(None);
        };
        if spec.personal.is_empty() || event.version != Some(spec.version) {
            return Ok(None);
        }
        let fields = crate::spec::personal_fields(spec.personal, stream_id, &event.data).map_err(
            |reason| AppendError::InvalidData {
                index,
                event_type: event.event_type.clone(),
                reason,
            },
        )?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// Refuses events whose payload does not fit the registered payload type at the
    /// version it declares, whose event type belongs to another stream type, or that
    /// declare an older version outside an import; sets the current version on those
    /// that declare none.
    fn check_payloads(&self, request: &mut AppendRequest) -> Result<(), AppendError> {
        let importing = request.importing;
        let stream_type = request.stream_type.clone();
        for (index, event) in request.events.iter_mut().enumerate() {
            let Some(spec) = self.dispatcher.registry().spec(&event.event_type) else {
                continue;
            };
            let invalid = |reason: String| AppendError::InvalidData {
                index,
                event_type: event.event_type.clone(),
                reason,
            };
            if spec.stream_type != stream_type {
                return Err(invalid(format!(
                    "this event type belongs to stream type {:?}, not {:?}",
                    spec.stream_type.as_str(),
                    stream_type.as_str()
                )));
            }
            let version = *event.version.get_or_insert(spec.version);
            if version > spec.version {
                return Err(invalid(format!(
                    "payload version {version} is newer than this build's, {}",
                    spec.version
                )));
            }
            if version < spec.version && !importing {
                return Err(invalid(format!(
                    "payload version {version} is older than the current one, {}: only an \
                     import may write older versions",
                    spec.version
                )));
            }
            spec.validate_at(version, &event.data).map_err(invalid)?;
            if version < spec.version {
                // An import must write only what this build can read.
                let mut data = event.data.clone();
                spec.upcast(version, &mut data)
                    .map_err(|error| invalid(error.to_string()))?;
                spec.validate(&data).map_err(|reason| {
                    invalid(format!(
                        "upcast to version {}, the payload does not fit: {reason}",
                        spec.version
                    ))
                })?;
                // Personal data is never stored in the clear: an imported event of a
                // type with personal fields is stored at the current version, sealed.
                if !spec.personal.is_empty() {
                    event.data = data;
                    event.version = Some(spec.version);
                }
            }
        }
        Ok(())
    }

    /// Dispatches a failed event again, in the log writer's next batch: appends a
    /// `dispatch.event_retried` record, at whose place in the log the event is applied
    /// (and replay applies it there too). If the event applies and its stream was held
    /// behind it, the held events apply after it, in position order.
    pub async fn retry(&self, event_id: EventId, by: &Operator) -> Result<Dispatched, RetryError> {
        self.retry_with(WriteOptions::default(), event_id, by).await
    }

    /// [`EventStore::retry`], submitted to the writer as `options` say.
    pub async fn retry_with(
        &self,
        options: WriteOptions,
        event_id: EventId,
        by: &Operator,
    ) -> Result<Dispatched, RetryError> {
        let store = self.clone();
        let by = by.clone();
        self.db
            .write(options, move |tx| {
                let store = store.clone();
                let by = by.clone();
                Box::pin(async move { store.retry_in(tx, event_id, &by).await })
            })
            .await
    }

    /// [`EventStore::retry`] inside the caller's transaction.
    pub async fn retry_in(
        &self,
        tx: &mut Tx,
        event_id: EventId,
        by: &Operator,
    ) -> Result<Dispatched, RetryError> {
        let target = self.decidable(tx, event_id).await?;
        if let Some(pause) = self.paused_routes_in(tx).await?.covering(&target) {
            return Err(RetryError::RoutePaused {
                event_id,
                position: target.position,
                route: pause.route.to_string(),
                detail: format!(
                    "paused by {} since {}: {}",
                    pause.paused_by,
                    pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
                    pause.reason
                ),
            });
        }
        let record = EventRetried {
            event_id,
            position: target.position,
        };
        self.decide(tx, &target, record.to_event(by.metadata_for(&target)))
            .await
    }

    /// Marks a failed event as not to be applied, with a reason, in the log writer's
    /// next batch: appends a `dispatch.event_skipped` record. Replay skips it too. If
    /// its stream was held behind it, the held events apply, in position order.
    pub async fn skip(
        &self,
        event_id: EventId,
        by: &Operator,
        reason: Reason,
    ) -> Result<Dispatched, RetryError> {
        let store = self.clone();
        let by = by.clone();
        self.db
            .write(WriteOptions::default(), move |tx| {
                let store = store.clone();
                let by = by.clone();
                let reason = reason.clone();
                Box::pin(async move {
                    let target = store.decidable(tx, event_id).await?;
                    let record = EventSkipped {
                        event_id,
                        position: target.position,
                        reason,
                    };
                    store
                        .decide(tx, &target, record.to_event(by.metadata_for(&target)))
                        .await
                })
            })
            .await
    }

    /// The failed event a retry or a skip may name, locked; refuses anything else.
    async fn decidable(&self, tx: &mut Tx, event_id: EventId) -> Result<RecordedEvent, RetryError> {
        tx.lock_head().await?;
        let target = tx
            .event_for_update(event_id)
            .await?
            .ok_or(RetryError::NotFound { event_id })?;
        if let Some(behind) = target.held_behind {
            let waits_for = tx.event_at(behind).await?;
            return Err(RetryError::Held {
                event_id,
                position: target.position,
                behind,
                behind_event: waits_for.map(|event| event.event_id),
            });
        }
        if !target.is_failed() {
            return Err(RetryError::NotFailed {
                event_id,
                position: target.position,
            });
        }
        Ok(target)
    }

    /// Appends an operator's record about `target` and returns the target as it then
    /// stands.
    async fn decide(
        &self,
        tx: &mut Tx,
        target: &RecordedEvent,
        record: NewEvent,
    ) -> Result<Dispatched, RetryError> {
        let request = AppendRequest::new(
            operations_stream(),
            StreamId::from_uuid(target.event_id.as_uuid()),
            vec![record],
        );
        let appended = self
            .append_in(tx, request)
            .await
            .map_err(|error| match error {
                AppendError::Database(error) => RetryError::Database(error),
                AppendError::Read(error) => RetryError::Read(error),
                other => RetryError::Record(Box::new(other)),
            })?;
        if let Some(Outcome::Failed(error)) = appended.events.first().map(|d| &d.outcome) {
            return Err(RetryError::Record(Box::new(AppendError::NotApplied {
                event_type: target.event_type.clone(),
                code: error.code,
                message: error.message.clone(),
            })));
        }
        let event = tx
            .event_at(target.position)
            .await?
            .ok_or(RetryError::NotFound {
                event_id: target.event_id,
            })?;
        Ok(Dispatched {
            outcome: event.last_outcome().unwrap_or(Outcome::Applied),
            event,
        })
    }

    /// Retries every failed event the selection matches, oldest first. Each retry is
    /// its own unit of work; they are handed to the log writer together, in order, so
    /// they share its commits. `progress` is called with (done, total).
    pub async fn retry_failed(
        &self,
        selection: &RetrySelection,
        by: &Operator,
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
                .map(|event_id| async move { (event_id, self.retry(event_id, by).await) })
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
                match self.retry(event_id, by).await {
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

    /// Pauses a handler route: from the `dispatch.route_paused` record on, its events
    /// are stored and held, not applied, until it is resumed.
    pub async fn pause_route(
        &self,
        route: HandlerRoute,
        by: &Operator,
        reason: Reason,
    ) -> Result<RoutePause, ControlError> {
        self.dispatcher.registry().check_pausable(&route)?;
        let store = self.clone();
        let by = by.clone();
        self.db
            .write(WriteOptions::default(), move |tx| {
                let store = store.clone();
                let by = by.clone();
                let route = route.clone();
                let reason = reason.clone();
                Box::pin(async move {
                    if let Some(pause) = store.paused_routes_in(tx).await?.get(&route) {
                        return Err(ControlError::AlreadyPaused(Box::new(pause.clone())));
                    }
                    let record = RoutePaused {
                        stream_type: route.stream_type.clone(),
                        event_type: route.event_type.clone(),
                        reason,
                    };
                    store
                        .control(tx, &route, record.to_event(by.metadata()))
                        .await?;
                    store
                        .paused_routes_in(tx)
                        .await?
                        .get(&route)
                        .cloned()
                        .ok_or(ControlError::NotPaused { route })
                })
            })
            .await
    }

    /// Resumes a paused handler route: at the `dispatch.route_resumed` record, the
    /// events its pause held apply, in position order, in this one unit of work.
    pub async fn resume_route(
        &self,
        route: HandlerRoute,
        by: &Operator,
        reason: Reason,
    ) -> Result<Resumed, ControlError> {
        let store = self.clone();
        let by = by.clone();
        self.db
            .write(WriteOptions::default(), move |tx| {
                let store = store.clone();
                let by = by.clone();
                let route = route.clone();
                let reason = reason.clone();
                Box::pin(async move {
                    if store.paused_routes_in(tx).await?.get(&route).is_none() {
                        return Err(ControlError::NotPaused { route });
                    }
                    let before = held_by_route(tx, &route).await?;
                    let record = RouteResumed {
                        stream_type: route.stream_type.clone(),
                        event_type: route.event_type.clone(),
                        reason,
                    };
                    store
                        .control(tx, &route, record.to_event(by.metadata()))
                        .await?;
                    let still_held = held_by_route(tx, &route).await?;
                    Ok(Resumed {
                        route,
                        n_streams_released: before.saturating_sub(still_held),
                        n_streams_still_held: still_held,
                    })
                })
            })
            .await
    }

    /// Appends a route's pause or resume.
    async fn control(
        &self,
        tx: &mut Tx,
        route: &HandlerRoute,
        record: NewEvent,
    ) -> Result<(), ControlError> {
        let request = AppendRequest::new(operations_stream(), route.stream_id(), vec![record]);
        self.append_applied_in(tx, request).await?;
        Ok(())
    }

    /// The handler routes paused now.
    pub async fn paused_routes(&self) -> Result<PausedRoutes, DbError> {
        let mut reader = self.db.reader().await?;
        PausedRoutes::load(&mut reader.conn()).await
    }
}

/// The stream type of the operators' decisions.
fn operations_stream() -> StreamType {
    StreamType::parse(crate::operations::STREAM_TYPE).expect("a valid stream type")
}

/// How many streams a pause of `route` holds.
async fn held_by_route(tx: &mut Tx, route: &HandlerRoute) -> Result<u64, DbError> {
    let row = tx
        .settled_conn()
        .await?
        .fetch_one(
            "SELECT COUNT(*) AS n FROM stream_holds h JOIN domain_events e ON e.position = h.behind \
             WHERE h.cause = 'paused' AND e.stream_type = $1 AND ($2 = '' OR e.event_type = $2)",
            args![
                route.stream_type.as_str(),
                route.event_type.as_ref().map_or("", EventType::as_str)
            ],
        )
        .await?;
    Ok(u64::try_from(row.get::<i64>("n")?).unwrap_or(0))
}

/// What resuming a route did.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Resumed {
    #[serde(flatten)]
    pub route: HandlerRoute,
    /// Streams whose held events applied.
    pub n_streams_released: u64,
    /// Streams still held: an event that failed as it was released, or met another
    /// pause, holds the rest of its stream again.
    pub n_streams_still_held: u64,
}

/// Who made an operator's decision, and in which request.
#[derive(Debug, Clone)]
pub struct Operator {
    pub actor: Actor,
    /// The request the decision was made in.
    pub correlation_id: CorrelationId,
}

impl Operator {
    /// The metadata of a record about the whole platform (a route's pause).
    fn metadata(&self) -> Metadata {
        Metadata::with_correlation(self.correlation_id).actor(self.actor.clone())
    }

    /// The metadata of a record about one event: in its request's timeline and tenant,
    /// caused by it, naming the request the decision was made in.
    fn metadata_for(&self, target: &RecordedEvent) -> Metadata {
        let mut metadata =
            Metadata::with_correlation(target.metadata.correlation_id).actor(self.actor.clone());
        metadata.org_id = target.metadata.org_id;
        metadata.causation_id = Some(cairn_types::CausationId::from_uuid(
            target.event_id.as_uuid(),
        ));
        metadata.extra.insert(
            "decided_in".to_owned(),
            serde_json::Value::String(self.correlation_id.to_string()),
        );
        metadata
    }
}

/// Why a pause or a resume of a handler route was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// There is no handler for the route: no router for the stream type, or no
    /// handler for the event type.
    #[error("{0}")]
    UnknownRoute(String),
    /// The route exists but cannot be paused: it has no handlers, or its router says
    /// it must not be.
    #[error("{0}")]
    NotPausable(String),
    #[error("handler route {} is already paused (by {}, since {}: {})", .0.route, .0.paused_by, .0.since.format("%Y-%m-%d %H:%M:%S UTC"), .0.reason)]
    AlreadyPaused(Box<RoutePause>),
    #[error("handler route {route} is not paused")]
    NotPaused { route: HandlerRoute },
    #[error("could not record the decision")]
    Append(#[from] AppendError),
    #[error("database error")]
    Database(#[from] DbError),
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
            // Its route is paused, or it waits behind an earlier failure of its
            // stream: it stays as it is, and is counted as not retried.
            Err(RetryError::RoutePaused { .. } | RetryError::Held { .. }) => {
                self.n_not_retried += 1;
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// What a caller is told of a held event's stream.
fn held_detail(cause: HoldCause, behind: Position) -> String {
    match cause {
        HoldCause::Failed => {
            format!("the event at position {behind} failed and holds its stream: retry or skip it")
        }
        HoldCause::Paused => {
            format!("the handler route of the event at position {behind} is paused: resume it")
        }
    }
}

/// An append's error from the sequence's.
fn append_error(error: ReadError) -> AppendError {
    match error {
        ReadError::Database(error) => AppendError::Database(error),
        other => AppendError::Read(other),
    }
}

/// The live transaction as the sequence's ledger: what it reads and writes is the
/// database, through the transaction.
struct LiveLedger<'a> {
    store: &'a EventStore,
    tx: &'a mut Tx,
    /// The position of the event being appended.
    appending: Position,
    /// Whether it must be applied (its failure fails the unit).
    required: bool,
}

impl Ledger for LiveLedger<'_> {
    async fn dispatch(
        &mut self,
        dispatcher: &Dispatcher,
        event: &RecordedEvent,
    ) -> Result<Outcome, ReadError> {
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
            // Not inside a request or a step (an append from the command line): the
            // handler starts its event's trace itself.
            cairn_observe::otel::join_trace(&span, event.metadata.correlation_id.as_uuid(), None);
        }
        // An event whose failure fails the caller's unit needs no isolation of its own
        // where the unit has it; the events its processing resolves (a retried event,
        // a released stream's) record their failures, so they need it.
        let fails_unit = self.fails_unit(event);
        let outcome = {
            use tracing::Instrument as _;
            self.tx
                .isolated(fails_unit, async |conn| {
                    let outcome = dispatcher.dispatch(conn, event, false).await?;
                    let keep = outcome.error().is_none();
                    Ok((outcome, keep))
                })
                .instrument(span.clone())
                .await?
        };
        let took = clock.elapsed();
        span.record("outcome", outcome_name(&outcome));
        if worth_a_span(&outcome, took) {
            self.tx
                .record_span(handled_span(event, &outcome, started_at, took));
        }
        cairn_observe::metrics()
            .handler_seconds
            .get_or_create(&cairn_observe::EventLabels {
                event_type: event.event_type.to_string(),
            })
            .observe(took.as_secs_f64());
        Ok(outcome)
    }

    fn fails_unit(&self, event: &RecordedEvent) -> bool {
        self.required && event.position == self.appending
    }

    async fn hold(&mut self, stream_id: StreamId) -> Result<Option<StreamHold>, ReadError> {
        Ok(self.tx.stream_hold(stream_id).await?)
    }

    async fn set_hold(
        &mut self,
        behind: &RecordedEvent,
        cause: HoldCause,
    ) -> Result<(), ReadError> {
        Ok(self.tx.hold_stream(behind, cause).await?)
    }

    async fn lift_hold(&mut self, event: &RecordedEvent) -> Result<(), ReadError> {
        Ok(self.tx.release_stream(event).await?)
    }

    async fn paused_routes(&mut self) -> Result<Arc<PausedRoutes>, ReadError> {
        Ok(self.store.paused_routes_in(self.tx).await?)
    }

    async fn routes_changed(&mut self, record: &RecordedEvent) -> Result<(), ReadError> {
        Ok(self.tx.controls_changed(record).await?)
    }

    async fn stored(&mut self, position: Position) -> Result<Option<RecordedEvent>, ReadError> {
        self.tx.event_at(position).await
    }

    async fn stream_events(
        &mut self,
        stream_id: StreamId,
        after: Position,
        before: Position,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = Vec::new();
        let mut filter = EventFilter {
            after,
            before: Some(before),
            stream_id: Some(stream_id),
            ..EventFilter::default()
        };
        loop {
            let page = self.tx.read_events(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = last.position;
            events.extend(page);
        }
        Ok(events)
    }

    async fn set_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
    ) -> Result<(), ReadError> {
        self.tx
            .record_outcome(event, outcome, cairn_types::now_micros())
            .await?;
        Ok(())
    }

    async fn held_by_pause(&mut self, route: &HandlerRoute) -> Result<Vec<Position>, ReadError> {
        Ok(held_by_pause(&mut self.tx.settled_conn().await?, route).await?)
    }
}

/// The positions that streams held by a pause wait behind, for events of `route`, as
/// the connection sees `stream_holds`.
pub(crate) async fn held_by_pause(
    conn: &mut cairn_log::Conn<'_>,
    route: &HandlerRoute,
) -> Result<Vec<Position>, DbError> {
    let rows = conn
        .fetch_all(
            "SELECT h.behind FROM stream_holds h JOIN domain_events e ON e.position = h.behind \
             WHERE h.cause = 'paused' AND e.stream_type = $1 AND ($2 = '' OR e.event_type = $2) \
             ORDER BY h.behind",
            args![
                route.stream_type.as_str(),
                route.event_type.as_ref().map_or("", EventType::as_str)
            ],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(Position::new(row.get("behind")?)))
        .collect()
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
        Outcome::Held { .. } => "held",
    }
}
