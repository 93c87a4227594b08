//! Appending to the log, in two phases around the dispatcher.
//!
//! [`Tx::prepare_append`] takes the log head lock, checks the idempotency key and the
//! expected version, and assigns positions and hashes. The caller then runs whatever
//! must happen in the same transaction (the dispatcher, updating projections) and
//! records each event's outcome on the [`PendingAppend`]. [`Tx::write_append`] hands
//! the rows, complete with their outcomes, to the transaction's log state, which moves
//! the head in memory and writes the rows with the commit (see [`crate::tx`]).
//!
//! Invariant: the head lock is held from `prepare_append` to commit. Appends are
//! therefore serialized across every process sharing the database, positions are
//! gapless, and they become visible in position order: a reader that has seen position
//! N never later finds a newly committed event below N.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use cairn_types::{EventId, EventType, Position, StreamId, StreamType, StreamVersion};

use crate::args;
use crate::backend::Conn;
use crate::error::DbError;
use crate::event::{
    AppendRequest, Expected, HoldCause, IdempotencyKey, Outcome, RecordedEvent, StreamHold,
};
use crate::hash::{self, HashedColumns};
use crate::read::{EVENT_COLUMNS, EventFilter, Head, ReadError, event_from_row, head_from_row};
use crate::state::{
    HEAD_AND_STREAMS_BOUND, HEAD_AND_STREAMS_SQLITE, KnownStream, PendingKey, PendingRow,
    STREAM_STATE, STREAMS_BOUND, STREAMS_SQLITE, StreamState, known_stream,
};
use crate::tx::Tx;
use crate::value::{Arg, ArgType, IntoArg as _, Sql, dialect};

/// The largest `event_data` accepted, in bytes of canonical JSON.
pub const MAX_EVENT_DATA_BYTES: usize = 1024 * 1024;

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream_id}: expected {expected}, found version {actual}")]
    Conflict {
        stream_id: StreamId,
        expected: Expected,
        actual: StreamVersion,
    },
    #[error(
        "stream {stream_id} is a \"{existing}\" stream; it cannot take events of stream type \"{requested}\""
    )]
    StreamTypeMismatch {
        stream_id: StreamId,
        existing: String,
        requested: StreamType,
    },
    #[error(
        "idempotency key {key:?} was first used for a different request; \
         a key may only be repeated with the same request"
    )]
    KeyReused { key: String },
    #[error("an append needs at least one event")]
    NoEvents,
    #[error("event {index} ({event_type}): {reason}")]
    InvalidData {
        index: usize,
        event_type: EventType,
        reason: String,
    },
    /// The append required every event to be applied, and a handler could not apply
    /// one: nothing of the append is kept.
    #[error("event {event_type} could not be applied ({code}: {message}); nothing was written")]
    NotApplied {
        event_type: EventType,
        code: cairn_types::ErrorCode,
        message: String,
    },
    /// The append required every event to be applied, and one would have been held:
    /// its stream waits behind an earlier event, or its handler route is paused.
    /// Nothing of the append is kept.
    #[error(
        "event {event_type} was not appended: stream {stream_id} is held behind position {behind} ({detail})"
    )]
    Held {
        stream_id: StreamId,
        event_type: EventType,
        behind: Position,
        cause: HoldCause,
        /// Why, for people: the hold, or the route's pause (who, since when, why).
        detail: String,
    },
    /// A personal field could not be sealed: its person was erased, or this process
    /// has no personal-data key (or an outdated one). Nothing was written.
    #[error("event {index} ({event_type}): {error}")]
    Seal {
        index: usize,
        event_type: EventType,
        error: crate::SealError,
    },
    #[error("could not append")]
    Database(#[from] DbError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The result of [`Tx::prepare_append`].
#[derive(Debug)]
pub enum Prepared {
    /// New events to dispatch and write.
    New(PendingAppend),
    /// The idempotency key was seen before with the same request: these are the events
    /// it wrote then. Nothing is written now.
    Repeat(Vec<RecordedEvent>),
}

/// Events that have positions and hashes but are not stored yet.
#[derive(Debug)]
pub struct PendingAppend {
    events: Vec<RecordedEvent>,
    /// The metadata exactly as hashed, to be stored as such.
    metadata_values: Vec<Value>,
    idempotency: Option<(IdempotencyKey, String)>,
}

impl PendingAppend {
    /// The events, as they will be stored.
    pub fn events(&self) -> &[RecordedEvent] {
        &self.events
    }

    /// Records the outcome of dispatching the event at `index`.
    ///
    /// # Panics
    /// If `index` is out of range: the caller iterates over [`PendingAppend::events`].
    pub fn record(&mut self, index: usize, outcome: &Outcome, at: DateTime<Utc>) {
        self.events[index].set_outcome(outcome, at);
    }
}

fn fingerprint(request: &AppendRequest) -> String {
    // The correlation and causation ids are left out: a client that repeats a request
    // after a timeout sends it as a new request, with new ids.
    let events: Vec<Value> = request
        .events
        .iter()
        .map(|event| {
            let mut metadata = serde_json::to_value(&event.metadata).unwrap_or(Value::Null);
            if let Value::Object(object) = &mut metadata {
                object.remove("correlation_id");
                object.remove("causation_id");
            }
            // Version 1 is left out, so keys of earlier releases still match.
            match event.stored_version() {
                1 => serde_json::json!([event.event_type, event.data, metadata]),
                version => serde_json::json!([event.event_type, event.data, metadata, version]),
            }
        })
        .collect();
    let expected = serde_json::to_value(request.expected).unwrap_or(Value::Null);
    let whole = serde_json::json!([request.stream_type, request.stream_id, expected, events]);
    let mut canonical = String::new();
    hash::canonical_json(&whole, &mut canonical);
    hash::hex(&Sha256::digest(canonical.as_bytes()))
}

/// Checks and normalizes an append's payloads; returns the metadata as it will be
/// hashed and stored.
fn normalize(request: &mut AppendRequest) -> Result<Vec<Value>, AppendError> {
    let mut metadata_values = Vec::with_capacity(request.events.len());
    for (index, event) in request.events.iter_mut().enumerate() {
        let invalid = |reason: String| AppendError::InvalidData {
            index,
            event_type: event.event_type.clone(),
            reason,
        };
        hash::normalize_json(&mut event.data, &mut "event_data".to_owned()).map_err(invalid)?;
        let mut canonical = String::new();
        hash::canonical_json(&event.data, &mut canonical);
        if canonical.len() > MAX_EVENT_DATA_BYTES {
            return Err(invalid(format!(
                "event_data is {} bytes; the limit is {MAX_EVENT_DATA_BYTES}",
                canonical.len()
            )));
        }
        let mut metadata = serde_json::to_value(&event.metadata)
            .map_err(|e| invalid(format!("event_metadata: {e}")))?;
        hash::normalize_json(&mut metadata, &mut "event_metadata".to_owned()).map_err(invalid)?;
        metadata_values.push(metadata);
    }
    Ok(metadata_values)
}

impl Tx {
    /// Takes the log head lock and reads the head. Every transaction that appends or
    /// dispatches takes it first, so they run one at a time across all processes. A
    /// transaction that holds it already gets the head as it sees it, its own appends
    /// included.
    pub async fn lock_head(&mut self) -> Result<Head, DbError> {
        if let Some(head) = &self.log.head {
            return Ok(head.clone());
        }
        let head = self.conn().lock_head().await?;
        self.log.head = Some(head.clone());
        Ok(head)
    }

    /// The current type and version of a stream, as this transaction sees it; `None`
    /// if it has no events.
    pub async fn stream_version(
        &mut self,
        stream_id: StreamId,
    ) -> Result<Option<(String, StreamVersion)>, DbError> {
        Ok(self
            .stream_state(stream_id)
            .await?
            .map(|known| (known.stream_type, known.version)))
    }

    /// Whether a stream is held, as this transaction sees it: its later events are
    /// stored but not applied until the event it waits behind is resolved. Known
    /// without asking the database for the streams a unit of work named to the writer.
    pub async fn stream_hold(
        &mut self,
        stream_id: StreamId,
    ) -> Result<Option<StreamHold>, DbError> {
        if let Some(state) = self.log.streams.get(&stream_id) {
            return Ok(state.as_ref().and_then(|known| known.hold));
        }
        Ok(self
            .stream_state(stream_id)
            .await?
            .and_then(|known| known.hold))
    }

    /// The `controls` of the head this transaction holds locked, if it holds it.
    pub fn locked_controls(&self) -> Option<&str> {
        self.log.head.as_ref().map(|head| head.controls.as_str())
    }

    async fn stream_state(&mut self, stream_id: StreamId) -> Result<StreamState, DbError> {
        if let Some(state) = self.log.streams.get(&stream_id) {
            return Ok(state.clone());
        }
        let row = self
            .conn()
            .fetch_optional(STREAM_STATE, args![stream_id])
            .await?;
        let state = match row {
            Some(row) => known_stream(&row)?,
            None => None,
        };
        self.log.learn_stream(stream_id, state.clone());
        Ok(state)
    }

    /// Holds a stream behind `behind`, one of its events: its later events are stored
    /// and not applied until the hold is lifted. Replaces an earlier hold.
    pub async fn hold_stream(
        &mut self,
        behind: &RecordedEvent,
        cause: HoldCause,
    ) -> Result<(), DbError> {
        self.conn().write_hold(behind, Some(cause)).await?;
        let state = self.stream_state(behind.stream_id).await?;
        // A stream whose first events are being appended is known from them.
        let mut known = state.unwrap_or_else(|| KnownStream {
            stream_type: behind.stream_type.as_str().to_owned(),
            version: behind.stream_version,
            hold: None,
        });
        known.hold = Some(StreamHold {
            behind: behind.position,
            cause,
        });
        self.log.learn_stream(behind.stream_id, Some(known));
        Ok(())
    }

    /// Lifts a stream's hold.
    pub async fn release_stream(&mut self, stream: &RecordedEvent) -> Result<(), DbError> {
        self.conn().write_hold(stream, None).await?;
        let mut state = self.stream_state(stream.stream_id).await?;
        if let Some(known) = &mut state {
            known.hold = None;
        }
        self.log.learn_stream(stream.stream_id, state);
        Ok(())
    }

    /// Says that the handler routes' pauses changed with `event` (a route paused or
    /// resumed): the head carries its hash from the commit on, so that every writer
    /// reads the paused routes again.
    pub async fn controls_changed(&mut self, event: &RecordedEvent) -> Result<(), DbError> {
        let mut head = self.lock_head().await?;
        head.controls.clone_from(&event.hash);
        self.log.head = Some(head);
        self.log.head_dirty = true;
        Ok(())
    }

    /// Takes the head lock and learns the versions of several streams, in one
    /// statement, so that appends to them in this transaction need not ask one by one.
    /// Versions read without the head lock could be stale by the time they are used.
    pub(crate) async fn prefetch_streams(
        &mut self,
        stream_ids: &[StreamId],
    ) -> Result<(), DbError> {
        let mut wanted: Vec<StreamId> = stream_ids
            .iter()
            .copied()
            .filter(|id| !self.log.streams.contains_key(id))
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            self.lock_head().await?;
            return Ok(());
        }
        let ids = Arg::Array(
            ArgType::Uuid,
            wanted.iter().map(|id| id.into_arg()).collect(),
        );
        let locked = self.log.head.is_some();
        let mut conn = self.conn();
        if locked {
            let sql = dialect(conn.backend(), STREAMS_SQLITE, STREAMS_BOUND);
            let rows = conn.fetch_all(sql, vec![ids]).await?;
            self.log.learn_streams(&rows, wanted)
        } else {
            // The head row locked, and one index seek per stream however long the
            // streams are, in one round trip.
            let sql = dialect(
                conn.backend(),
                HEAD_AND_STREAMS_SQLITE,
                HEAD_AND_STREAMS_BOUND,
            );
            let rows = conn.fetch_all(sql, vec![ids]).await?;
            self.log.learn_head_and_streams(&rows, wanted)
        }
    }

    /// Phase one of an append: lock, check, assign positions and hashes.
    pub async fn prepare_append(
        &mut self,
        mut request: AppendRequest,
    ) -> Result<Prepared, AppendError> {
        if request.events.is_empty() {
            return Err(AppendError::NoEvents);
        }
        let metadata_values = normalize(&mut request)?;
        let head = self.lock_head().await?;

        let idempotency = request
            .idempotency_key
            .as_ref()
            .map(|key| (key.clone(), fingerprint(&request)));
        if let Some((key, fingerprint)) = &idempotency
            && let Some(repeat) = self.repeated_key(key, fingerprint).await?
        {
            return Ok(Prepared::Repeat(repeat));
        }

        let actual = match self.stream_version(request.stream_id).await? {
            Some((existing, version)) => {
                if existing != request.stream_type.as_str() {
                    return Err(AppendError::StreamTypeMismatch {
                        stream_id: request.stream_id,
                        existing,
                        requested: request.stream_type.clone(),
                    });
                }
                version
            }
            None => StreamVersion::NONE,
        };
        if !request.expected.admits(actual) {
            return Err(AppendError::Conflict {
                stream_id: request.stream_id,
                expected: request.expected,
                actual,
            });
        }

        let created_at = cairn_types::now_micros();
        let mut previous_hash = head.last_hash;
        let mut position = head.last_position;
        let mut version = actual;
        let mut events = Vec::with_capacity(request.events.len());
        for (event, metadata_value) in request.events.into_iter().zip(&metadata_values) {
            position = position.next();
            version = version.next();
            let event_id = EventId::new_v7();
            let event_version = event.stored_version();
            let hash = hash::event_hash(
                &previous_hash,
                &HashedColumns {
                    position,
                    event_id,
                    stream_type: &request.stream_type,
                    stream_id: request.stream_id,
                    stream_version: version,
                    event_type: &event.event_type,
                    event_version,
                    data: &event.data,
                    metadata: metadata_value,
                    created_at,
                },
            );
            previous_hash.clone_from(&hash);
            events.push(RecordedEvent {
                position,
                event_id,
                stream_type: request.stream_type.clone(),
                stream_id: request.stream_id,
                stream_version: version,
                event_type: event.event_type,
                event_version,
                stored_version: event_version,
                data: event.data,
                metadata: event.metadata,
                created_at,
                processed_at: None,
                processing_error: None,
                held_behind: None,
                hash,
            });
        }
        Ok(Prepared::New(PendingAppend {
            events,
            metadata_values,
            idempotency,
        }))
    }

    /// The events an idempotency key wrote before, if it was used before with the
    /// same request; an error if with another.
    async fn repeated_key(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: &str,
    ) -> Result<Option<Vec<RecordedEvent>>, AppendError> {
        let reused = || AppendError::KeyReused {
            key: key.as_str().to_owned(),
        };
        if let Some(pending) = self.log.keys.iter().find(|k| k.key == key.as_str()) {
            if pending.fingerprint != fingerprint {
                return Err(reused());
            }
            let first = pending.first_position;
            let n_events = usize::try_from(pending.n_events).unwrap_or(0);
            let events = self
                .log
                .rows
                .iter()
                .filter(|row| row.event.position >= first)
                .take(n_events)
                .map(|row| row.event.clone())
                .collect();
            return Ok(Some(events));
        }
        let row = self
            .conn()
            .fetch_optional(
                "SELECT fingerprint, first_position, n_events FROM idempotency_keys WHERE key = $1",
                args![key.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored: String = row.get("fingerprint")?;
        if stored != fingerprint {
            return Err(reused());
        }
        let first: i64 = row.get("first_position")?;
        let n_events: i64 = row.get("n_events")?;
        let filter = EventFilter {
            after: Position::new(first - 1),
            limit: Some(u32::try_from(n_events).unwrap_or(u32::MAX)),
            ..EventFilter::default()
        };
        Ok(Some(self.conn().read_events(&filter).await?))
    }

    /// Phase two of an append: hand the events, with their outcomes, to the
    /// transaction, which moves the head and writes them before it commits.
    pub async fn write_append(
        &mut self,
        pending: PendingAppend,
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        let (Some(first), Some(last)) = (pending.events.first(), pending.events.last()) else {
            return Err(AppendError::NoEvents);
        };
        let n_failed = pending
            .events
            .iter()
            .filter(|event| event.processing_error.is_some())
            .count() as i64;
        let mut head = self.lock_head().await?;
        head.last_position = last.position;
        head.last_hash.clone_from(&last.hash);
        head.failed_events += n_failed;
        self.log.head = Some(head);
        self.log.head_dirty = true;
        self.log.failed_unwritten += n_failed;
        // The stream keeps its hold, if it has one (held events were appended).
        let hold = self
            .log
            .streams
            .get(&last.stream_id)
            .and_then(Option::as_ref)
            .and_then(|known| known.hold);
        self.log.learn_stream(
            last.stream_id,
            Some(KnownStream {
                stream_type: last.stream_type.as_str().to_owned(),
                version: last.stream_version,
                hold,
            }),
        );
        if let Some((key, fingerprint)) = &pending.idempotency {
            self.log.keys.push(PendingKey {
                key: key.as_str().to_owned(),
                fingerprint: fingerprint.clone(),
                first_position: first.position,
                n_events: i64::try_from(pending.events.len()).unwrap_or(i64::MAX),
                created_at: first.created_at,
            });
        }
        for (event, metadata) in pending.events.iter().zip(pending.metadata_values) {
            self.log.appended.push((
                event.position,
                event.event_type.to_string(),
                event.processing_error.as_ref().map(|e| e.code),
            ));
            self.log.rows.push(PendingRow {
                event: event.clone(),
                metadata,
            });
        }
        Ok(pending.events)
    }

    /// Events matching a filter, this transaction's own appends included.
    pub async fn read_events(
        &mut self,
        filter: &EventFilter,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        self.flush(false).await?;
        self.conn().read_events(filter).await
    }

    /// The stored event at a position, as this transaction sees it (its own appends
    /// included).
    pub async fn event_at(
        &mut self,
        position: Position,
    ) -> Result<Option<RecordedEvent>, ReadError> {
        self.flush(false).await?;
        self.conn().event_at(position).await
    }

    /// Locks one stored event for reprocessing. Call [`Tx::lock_head`] first.
    pub async fn event_for_update(
        &mut self,
        event_id: EventId,
    ) -> Result<Option<RecordedEvent>, ReadError> {
        self.flush(false).await?;
        let mut conn = self.conn();
        let sql = Sql::built(format!(
            "SELECT {EVENT_COLUMNS} FROM domain_events WHERE event_id = $1{}",
            dialect(conn.backend(), "", " FOR UPDATE")
        ));
        let row = conn.fetch_optional(sql, args![event_id]).await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// Stores the outcome of reprocessing a stored event and keeps the failed-event
    /// count in step. Returns the event as now stored.
    pub async fn record_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
        at: DateTime<Utc>,
    ) -> Result<RecordedEvent, DbError> {
        self.flush(false).await?;
        let (updated, delta) = self.conn().store_outcome(event, outcome, at).await?;
        if delta != 0 {
            match &mut self.log.head {
                // The head is written with the commit, the count with it.
                Some(head) => {
                    head.failed_events += delta;
                    self.log.failed_unwritten += delta;
                    self.log.head_dirty = true;
                }
                None => {
                    self.conn()
                        .execute(
                            "UPDATE log_head SET failed_events = failed_events + $1 WHERE id = 1",
                            args![delta],
                        )
                        .await?;
                }
            }
        }
        Ok(updated)
    }
}

impl Conn<'_> {
    /// Takes the log head lock (on a connection inside a transaction) and reads the head.
    pub async fn lock_head(&mut self) -> Result<Head, DbError> {
        let sql = dialect(
            self.backend(),
            // BEGIN IMMEDIATE already holds SQLite's one write lock.
            "SELECT last_position, last_hash, failed_events, controls, erasures FROM log_head WHERE id = 1",
            "SELECT last_position, last_hash, failed_events, controls, erasures FROM log_head WHERE id = 1 FOR UPDATE",
        );
        let row = self.fetch_one(sql, args![]).await?;
        head_from_row(&row)
    }

    /// Stores the outcome of reprocessing a stored event and keeps the failed-event
    /// counter in step, on a connection outside any [`Tx`] (a replay's session).
    /// Returns the event as now stored.
    pub async fn record_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
        at: DateTime<Utc>,
    ) -> Result<RecordedEvent, DbError> {
        let (updated, delta) = self.store_outcome(event, outcome, at).await?;
        if delta != 0 {
            self.execute(
                "UPDATE log_head SET failed_events = failed_events + $1 WHERE id = 1",
                args![delta],
            )
            .await?;
        }
        Ok(updated)
    }

    /// Writes a stored event's new outcome; returns the event as now stored and how
    /// the count of failed events changes.
    async fn store_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
        at: DateTime<Utc>,
    ) -> Result<(RecordedEvent, i64), DbError> {
        let mut updated = event.clone();
        updated.set_outcome(outcome, at);
        let error = updated.processing_error.as_ref();
        self.execute(
            "UPDATE domain_events SET processed_at = $1, processing_error_code = $2, \
             processing_error_message = $3, held_behind = $4 WHERE position = $5",
            args![
                updated.processed_at,
                error.map(|e| e.code),
                error.map(|e| e.message.clone()),
                updated.held_behind,
                event.position
            ],
        )
        .await?;
        let delta = i64::from(updated.is_failed()) - i64::from(event.is_failed());
        Ok((updated, delta))
    }

    /// Writes a stream's hold: held behind `behind` for `cause`, or (`None`) no longer
    /// held. A hold is derived from the log: replay writes it the same way into its
    /// rebuilt copy.
    pub async fn write_hold(
        &mut self,
        behind: &RecordedEvent,
        cause: Option<HoldCause>,
    ) -> Result<(), DbError> {
        match cause {
            Some(cause) => {
                self.execute(
                    "INSERT INTO stream_holds (stream_id, stream_type, org_id, behind, cause, since) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_id) DO UPDATE SET \
                     behind = excluded.behind, cause = excluded.cause, since = excluded.since",
                    args![
                        behind.stream_id,
                        &behind.stream_type,
                        behind.metadata.org_id,
                        behind.position,
                        cause.as_str(),
                        behind.created_at
                    ],
                )
                .await?
            }
            None => {
                self.execute(
                    "DELETE FROM stream_holds WHERE stream_id = $1",
                    args![behind.stream_id],
                )
                .await?
            }
        };
        Ok(())
    }
}
