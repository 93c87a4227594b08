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
use sqlx::types::Json;
use uuid::Uuid;

use cairn_types::{EventId, EventType, Position, StreamId, StreamType, StreamVersion};

use crate::args;
use crate::error::DbError;
use crate::event::{
    AppendRequest, Expected, HoldCause, IdempotencyKey, Outcome, RecordedEvent, StreamHold,
};
use crate::hash::{self, HashedColumns};
use crate::read::{EVENT_COLUMNS, EventFilter, Head, ReadError, event_from_row, head_from_row};
use crate::spans::SpanRecord;
use crate::sql::{Backend, Conn, Row, Sql, dialect};
use crate::tx::{KnownStream, LogState, PendingKey, PendingRow, StreamState, Tx};

/// One stream's type, version and hold.
const STREAM_STATE: &str = "SELECT d.stream_type, d.stream_version, h.behind AS held_behind, \
     h.cause AS hold_cause FROM (SELECT stream_type, stream_version FROM domain_events \
     WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1) AS d \
     LEFT JOIN stream_holds h ON h.stream_id = $1";

/// PostgreSQL: the head locked, and the type, version and hold of each stream in `$1`
/// (a row with the head alone when none has events).
pub(crate) const HEAD_AND_STREAMS_BOUND: &str = "WITH head AS (SELECT last_position, last_hash, \
     failed_events, controls FROM log_head WHERE id = 1 FOR UPDATE) \
     SELECT head.last_position, head.last_hash, head.failed_events, head.controls, \
     s.id AS stream_id, d.stream_type, d.stream_version, h.behind AS held_behind, \
     h.cause AS hold_cause FROM head \
     LEFT JOIN (UNNEST($1::uuid[]) AS s(id) CROSS JOIN LATERAL \
     (SELECT stream_type, stream_version FROM domain_events \
     WHERE stream_id = s.id ORDER BY stream_version DESC LIMIT 1) AS d \
     LEFT JOIN stream_holds h ON h.stream_id = s.id) ON true";

/// PostgreSQL: the type, version and hold of each stream in `$1` that has events.
const STREAMS_BOUND: &str = "SELECT s.id AS stream_id, d.stream_type, d.stream_version, \
     h.behind AS held_behind, h.cause AS hold_cause FROM UNNEST($1::uuid[]) AS s(id) \
     CROSS JOIN LATERAL (SELECT stream_type, stream_version FROM domain_events \
     WHERE stream_id = s.id ORDER BY stream_version DESC LIMIT 1) AS d \
     LEFT JOIN stream_holds h ON h.stream_id = s.id";

/// A stream as a row of [`STREAM_STATE`] (or its batch forms) describes it; `None`
/// when the row names no stream with events.
pub(crate) fn known_stream(row: &Row) -> Result<StreamState, DbError> {
    let (Some(stream_type), Some(version)) = (
        row.get::<Option<String>>("stream_type")?,
        row.get::<Option<i64>>("stream_version")?,
    ) else {
        return Ok(None);
    };
    let hold = match (
        row.get::<Option<i64>>("held_behind")?,
        row.get::<Option<String>>("hold_cause")?,
    ) {
        (Some(behind), Some(cause)) => Some(StreamHold {
            behind: Position::new(behind),
            cause: HoldCause::parse(&cause).ok_or_else(|| {
                DbError::decode(
                    "stream_holds.cause",
                    format!("{cause:?} is not a hold cause"),
                )
            })?,
        }),
        _ => None,
    };
    Ok(Some(KnownStream {
        stream_type,
        version: StreamVersion::new(version),
        hold,
    }))
}

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
            serde_json::json!([event.event_type, event.data, metadata])
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
    pub async fn prefetch_streams(&mut self, stream_ids: &[StreamId]) -> Result<(), DbError> {
        let mut wanted: Vec<StreamId> = stream_ids
            .iter()
            .copied()
            .filter(|id| !self.log.streams.contains_key(id))
            .collect();
        wanted.sort();
        wanted.dedup();
        let locked = self.log.head.is_some();
        if wanted.is_empty() {
            self.lock_head().await?;
            return Ok(());
        }
        let mut found = std::collections::HashMap::new();
        let mut conn = self.conn();
        conn.send_queued().await?;
        if !locked && let Some(pg) = conn.postgres() {
            // The head row locked, and one index seek per stream however long the
            // streams are, in one round trip.
            let ids: Vec<Uuid> = wanted.iter().map(StreamId::as_uuid).collect();
            let rows = sqlx::query(HEAD_AND_STREAMS_BOUND)
                .bind(ids)
                .fetch_all(pg)
                .await?;
            let rows: Vec<Row> = rows.into_iter().map(Row::Postgres).collect();
            let Some(first) = rows.first() else {
                return Err(DbError::decode("log_head", "the log's head row is missing"));
            };
            let head = head_from_row(first)?;
            for row in &rows {
                if let Some(id) = row.get::<Option<StreamId>>("stream_id")? {
                    found.insert(id, known_stream(row)?);
                }
            }
            self.log.head = Some(head);
        } else {
            self.lock_head().await?;
            let mut conn = self.conn();
            if let Some(pg) = conn.postgres() {
                let ids: Vec<Uuid> = wanted.iter().map(StreamId::as_uuid).collect();
                let rows = sqlx::query(STREAMS_BOUND).bind(ids).fetch_all(pg).await?;
                for row in rows.into_iter().map(Row::Postgres) {
                    found.insert(row.get::<StreamId>("stream_id")?, known_stream(&row)?);
                }
            } else {
                // SQLite runs in this thread: a statement per stream costs no round trip.
                for id in &wanted {
                    if let Some(row) = conn.fetch_optional(STREAM_STATE, args![*id]).await? {
                        found.insert(*id, known_stream(&row)?);
                    }
                }
            }
        }
        for id in wanted {
            let state = found.remove(&id).flatten();
            self.log.learn_stream(id, state);
        }
        Ok(())
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
            let hash = hash::event_hash(
                &previous_hash,
                &HashedColumns {
                    position,
                    event_id,
                    stream_type: &request.stream_type,
                    stream_id: request.stream_id,
                    stream_version: version,
                    event_type: &event.event_type,
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
        let backend = self.backend();
        let mut conn = self.conn();
        let sql = Sql::built(format!(
            "SELECT {EVENT_COLUMNS} FROM domain_events WHERE event_id = $1{}",
            if backend == Backend::Postgres {
                " FOR UPDATE"
            } else {
                ""
            }
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
            "SELECT last_position, last_hash, failed_events, controls FROM log_head WHERE id = 1",
            "SELECT last_position, last_hash, failed_events, controls FROM log_head WHERE id = 1 FOR UPDATE",
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

/// Writes what a transaction's log state holds and the spans recorded in it.
/// `committing` says the transaction commits next: the one moment to notify other
/// processes of the new head.
pub(crate) async fn flush(
    conn: &mut Conn<'_>,
    log: &mut LogState,
    spans: &mut Vec<SpanRecord>,
    committing: bool,
) -> Result<(), DbError> {
    let notify = committing && !log.appended.is_empty();
    let head = log
        .head_dirty
        .then(|| log.head.clone())
        .flatten()
        .map(|head| (head, log.failed_unwritten));
    if conn.backend() == Backend::Postgres {
        flush_postgres(conn, log, spans, head.as_ref(), notify).await?;
    } else {
        flush_sqlite(conn, log, spans, head.as_ref()).await?;
    }
    log.flushed = log.rows.len();
    log.keys_flushed = log.keys.len();
    log.head_dirty = false;
    log.failed_unwritten = 0;
    spans.clear();
    Ok(())
}

const INSERT_EVENT: &str = "INSERT INTO domain_events (position, event_id, stream_type, stream_id, \
     stream_version, event_type, event_data, event_metadata, correlation_id, org_id, \
     created_at, processed_at, processing_error_code, processing_error_message, hash, \
     held_behind) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

const INSERT_KEY: &str = "INSERT INTO idempotency_keys (key, fingerprint, first_position, n_events, created_at) \
     VALUES ($1, $2, $3, $4, $5)";

const INSERT_SPAN: &str = "INSERT INTO trace_spans (correlation_id, kind, name, org_id, started_at, \
     duration_us, error, attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

fn duration_us(span: &SpanRecord) -> i64 {
    i64::try_from(span.duration.as_micros()).unwrap_or(i64::MAX)
}

/// SQLite: one prepared statement per row, run in the writer's thread.
async fn flush_sqlite(
    conn: &mut Conn<'_>,
    log: &LogState,
    spans: &[SpanRecord],
    head: Option<&(Head, i64)>,
) -> Result<(), DbError> {
    for row in &log.rows[log.flushed..] {
        let event = &row.event;
        let error = event.processing_error.as_ref();
        conn.execute(
            INSERT_EVENT,
            args![
                event.position,
                event.event_id,
                &event.stream_type,
                event.stream_id,
                event.stream_version,
                &event.event_type,
                event.data.clone(),
                row.metadata.clone(),
                event.metadata.correlation_id,
                event.metadata.org_id,
                event.created_at,
                event.processed_at,
                error.map(|e| e.code),
                error.map(|e| e.message.clone()),
                event.hash.clone(),
                event.held_behind,
            ],
        )
        .await?;
    }
    for key in &log.keys[log.keys_flushed..] {
        conn.execute(
            INSERT_KEY,
            args![
                key.key.as_str(),
                key.fingerprint.as_str(),
                key.first_position,
                key.n_events,
                key.created_at
            ],
        )
        .await?;
    }
    for span in spans {
        conn.execute(
            INSERT_SPAN,
            args![
                span.correlation_id,
                span.kind.as_str(),
                span.name.as_str(),
                span.org_id,
                span.started_at,
                duration_us(span),
                span.error.as_deref(),
                span.attributes.clone()
            ],
        )
        .await?;
    }
    if let Some((head, failed)) = head {
        conn.execute(
            "UPDATE log_head SET last_position = $1, last_hash = $2, \
             failed_events = failed_events + $3, controls = $4 WHERE id = 1",
            args![
                head.last_position,
                head.last_hash.as_str(),
                *failed,
                head.controls.as_str()
            ],
        )
        .await?;
    }
    Ok(())
}

/// PostgreSQL: one statement for everything, each kind of row bound as arrays and
/// unnested; the head update and the notification ride along.
async fn flush_postgres(
    conn: &mut Conn<'_>,
    log: &LogState,
    spans: &[SpanRecord],
    head: Option<&(Head, i64)>,
    notify: bool,
) -> Result<(), DbError> {
    let rows = &log.rows[log.flushed..];
    let keys = &log.keys[log.keys_flushed..];
    let mut parts: Vec<String> = Vec::new();
    let mut next = 1;
    let mut placeholders = |n: usize| {
        let list: Vec<String> = (next..next + n).map(|i| format!("${i}")).collect();
        next += n;
        list
    };
    if !rows.is_empty() {
        let p = placeholders(16);
        parts.push(format!(
            "e AS (INSERT INTO domain_events (position, event_id, stream_type, stream_id, \
             stream_version, event_type, event_data, event_metadata, correlation_id, org_id, \
             created_at, processed_at, processing_error_code, processing_error_message, hash, \
             held_behind) \
             SELECT * FROM UNNEST({}::bigint[], {}::uuid[], {}::text[], {}::uuid[], {}::bigint[], \
             {}::text[], {}::jsonb[], {}::jsonb[], {}::uuid[], {}::uuid[], {}::timestamptz[], \
             {}::timestamptz[], {}::text[], {}::text[], {}::text[], {}::bigint[]))",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
            p[7],
            p[8],
            p[9],
            p[10],
            p[11],
            p[12],
            p[13],
            p[14],
            p[15]
        ));
    }
    if !keys.is_empty() {
        let p = placeholders(5);
        parts.push(format!(
            "k AS (INSERT INTO idempotency_keys (key, fingerprint, first_position, n_events, created_at) \
             SELECT * FROM UNNEST({}::text[], {}::text[], {}::bigint[], {}::bigint[], {}::timestamptz[]))",
            p[0], p[1], p[2], p[3], p[4]
        ));
    }
    if !spans.is_empty() {
        let p = placeholders(8);
        parts.push(format!(
            "s AS (INSERT INTO trace_spans (correlation_id, kind, name, org_id, started_at, \
             duration_us, error, attributes) SELECT * FROM UNNEST({}::uuid[], {}::text[], \
             {}::text[], {}::uuid[], {}::timestamptz[], {}::bigint[], {}::text[], {}::jsonb[]))",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
        ));
    }
    if head.is_some() {
        let p = placeholders(4);
        parts.push(format!(
            "h AS (UPDATE log_head SET last_position = {}, last_hash = {}, \
             failed_events = failed_events + {}, controls = {} WHERE id = 1)",
            p[0], p[1], p[2], p[3]
        ));
    }
    let tail = match (notify, head) {
        (true, Some(_)) | (true, None) => {
            let p = placeholders(1);
            format!("SELECT pg_notify('cairn_events', {})", p[0])
        }
        (false, _) => "SELECT 1".to_owned(),
    };
    if parts.is_empty() && !notify {
        return Ok(());
    }
    let sql = if parts.is_empty() {
        tail
    } else {
        format!("WITH {} {tail}", parts.join(", "))
    };
    let Some(pg) = conn.postgres() else {
        return Ok(());
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    if !rows.is_empty() {
        let events = rows.iter().map(|row| &row.event);
        query = query
            .bind(
                events
                    .clone()
                    .map(|e| e.position.get())
                    .collect::<Vec<i64>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.event_id.as_uuid())
                    .collect::<Vec<Uuid>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.stream_type.as_str().to_owned())
                    .collect::<Vec<String>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.stream_id.as_uuid())
                    .collect::<Vec<Uuid>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.stream_version.get())
                    .collect::<Vec<i64>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.event_type.as_str().to_owned())
                    .collect::<Vec<String>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| Json(&e.data))
                    .collect::<Vec<Json<&Value>>>(),
            )
            .bind(
                rows.iter()
                    .map(|row| Json(&row.metadata))
                    .collect::<Vec<Json<&Value>>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.metadata.correlation_id.as_uuid())
                    .collect::<Vec<Uuid>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.metadata.org_id.map(|org| org.as_uuid()))
                    .collect::<Vec<Option<Uuid>>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.created_at)
                    .collect::<Vec<DateTime<Utc>>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.processed_at)
                    .collect::<Vec<Option<DateTime<Utc>>>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| {
                        e.processing_error
                            .as_ref()
                            .map(|p| p.code.as_str().to_owned())
                    })
                    .collect::<Vec<Option<String>>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.processing_error.as_ref().map(|p| p.message.clone()))
                    .collect::<Vec<Option<String>>>(),
            )
            .bind(
                events
                    .clone()
                    .map(|e| e.hash.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(
                events
                    .map(|e| e.held_behind.map(|p| p.get()))
                    .collect::<Vec<Option<i64>>>(),
            );
    }
    if !keys.is_empty() {
        query = query
            .bind(keys.iter().map(|k| k.key.clone()).collect::<Vec<String>>())
            .bind(
                keys.iter()
                    .map(|k| k.fingerprint.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(
                keys.iter()
                    .map(|k| k.first_position.get())
                    .collect::<Vec<i64>>(),
            )
            .bind(keys.iter().map(|k| k.n_events).collect::<Vec<i64>>())
            .bind(
                keys.iter()
                    .map(|k| k.created_at)
                    .collect::<Vec<DateTime<Utc>>>(),
            );
    }
    if !spans.is_empty() {
        query = query
            .bind(
                spans
                    .iter()
                    .map(|s| s.correlation_id.as_uuid())
                    .collect::<Vec<Uuid>>(),
            )
            .bind(
                spans
                    .iter()
                    .map(|s| s.kind.as_str().to_owned())
                    .collect::<Vec<String>>(),
            )
            .bind(
                spans
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(
                spans
                    .iter()
                    .map(|s| s.org_id.map(|org| org.as_uuid()))
                    .collect::<Vec<Option<Uuid>>>(),
            )
            .bind(
                spans
                    .iter()
                    .map(|s| s.started_at)
                    .collect::<Vec<DateTime<Utc>>>(),
            )
            .bind(spans.iter().map(duration_us).collect::<Vec<i64>>())
            .bind(
                spans
                    .iter()
                    .map(|s| s.error.clone())
                    .collect::<Vec<Option<String>>>(),
            )
            .bind(
                spans
                    .iter()
                    .map(|s| Json(&s.attributes))
                    .collect::<Vec<Json<&Value>>>(),
            );
    }
    if let Some((head, failed)) = head {
        query = query
            .bind(head.last_position.get())
            .bind(head.last_hash.clone())
            .bind(*failed)
            .bind(head.controls.clone());
    }
    if notify {
        let position = head
            .map(|(head, _)| head.last_position)
            .or_else(|| log.head.as_ref().map(|head| head.last_position))
            .unwrap_or_default();
        query = query.bind(position.get().to_string());
    }
    query.execute(pg).await?;
    Ok(())
}

/// The PostgreSQL writer's final statement of an optimistic batch: its rows of the
/// log, keys and spans (each kind as one JSON array), the head, and the notification.
const FINAL_ROWS: &str = "WITH e AS (INSERT INTO domain_events (position, event_id, stream_type, \
     stream_id, stream_version, event_type, event_data, event_metadata, correlation_id, org_id, \
     created_at, processed_at, processing_error_code, processing_error_message, hash, held_behind) \
     SELECT position, event_id, stream_type, stream_id, stream_version, event_type, event_data, \
     event_metadata, correlation_id, org_id, created_at, processed_at, processing_error_code, \
     processing_error_message, hash, held_behind FROM jsonb_to_recordset($1) AS r(position bigint, \
     event_id uuid, stream_type text, stream_id uuid, stream_version bigint, event_type text, \
     event_data jsonb, event_metadata jsonb, correlation_id uuid, org_id uuid, \
     created_at timestamptz, processed_at timestamptz, processing_error_code text, \
     processing_error_message text, hash text, held_behind bigint)), \
     k AS (INSERT INTO idempotency_keys (key, fingerprint, first_position, n_events, created_at) \
     SELECT key, fingerprint, first_position, n_events, created_at FROM jsonb_to_recordset($2) \
     AS r(key text, fingerprint text, first_position bigint, n_events bigint, created_at timestamptz)), \
     s AS (INSERT INTO trace_spans (correlation_id, kind, name, org_id, started_at, duration_us, \
     error, attributes) SELECT correlation_id, kind, name, org_id, started_at, duration_us, error, \
     attributes FROM jsonb_to_recordset($3) AS r(correlation_id uuid, kind text, name text, \
     org_id uuid, started_at timestamptz, duration_us bigint, error text, attributes jsonb)), \
     h AS (UPDATE log_head SET last_position = $4, last_hash = $5, \
     failed_events = failed_events + $6, controls = COALESCE($8, controls) \
     WHERE id = 1 AND $4 IS NOT NULL) \
     SELECT pg_notify('cairn_events', $7) WHERE $7 IS NOT NULL";

fn json_time(at: &DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Queues what the log state holds, and the spans, as the batch's final statement.
pub(crate) fn queue_final_rows(
    pipeline: Option<&crate::pipeline::Pipeline>,
    log: &mut LogState,
    spans: &mut Vec<SpanRecord>,
) {
    let Some(pipeline) = pipeline else {
        return;
    };
    let rows: Vec<Value> = log.rows[log.flushed..]
        .iter()
        .map(|row| {
            let event = &row.event;
            let error = event.processing_error.as_ref();
            let mut row = serde_json::json!({
                "position": event.position.get(),
                "event_id": event.event_id,
                "stream_type": event.stream_type.as_str(),
                "stream_id": event.stream_id,
                "stream_version": event.stream_version.get(),
                "event_type": event.event_type.as_str(),
                "event_data": event.data,
                "event_metadata": row.metadata,
                "correlation_id": event.metadata.correlation_id,
                "org_id": event.metadata.org_id,
                "created_at": json_time(&event.created_at),
                "processed_at": event.processed_at.as_ref().map(json_time),
                "processing_error_code": error.map(|e| e.code.as_str()),
                "processing_error_message": error.map(|e| e.message.as_str()),
                "hash": event.hash,
            });
            // Absent reads as NULL; most events are not held.
            if let (Some(behind), Value::Object(fields)) = (event.held_behind, &mut row) {
                fields.insert("held_behind".to_owned(), Value::from(behind.get()));
            }
            row
        })
        .collect();
    let keys: Vec<Value> = log.keys[log.keys_flushed..]
        .iter()
        .map(|key| {
            serde_json::json!({
                "key": key.key,
                "fingerprint": key.fingerprint,
                "first_position": key.first_position.get(),
                "n_events": key.n_events,
                "created_at": json_time(&key.created_at),
            })
        })
        .collect();
    let span_rows: Vec<Value> = spans
        .drain(..)
        .map(|span| {
            serde_json::json!({
                "correlation_id": span.correlation_id,
                "kind": span.kind.as_str(),
                "name": span.name,
                "org_id": span.org_id,
                "started_at": json_time(&span.started_at),
                "duration_us": duration_us(&span),
                "error": span.error,
                "attributes": span.attributes,
            })
        })
        .collect();
    let head = log.head_dirty.then(|| log.head.clone()).flatten();
    let notify = (!log.appended.is_empty())
        .then(|| {
            log.head
                .as_ref()
                .map(|head| head.last_position.get().to_string())
        })
        .flatten();
    pipeline.push_final(
        FINAL_ROWS,
        args![
            Value::Array(rows),
            Value::Array(keys),
            Value::Array(span_rows),
            head.as_ref().map(|head| head.last_position),
            head.as_ref().map(|head| head.last_hash.clone()),
            log.failed_unwritten,
            notify,
            head.as_ref().map(|head| head.controls.clone())
        ],
    );
    log.flushed = log.rows.len();
    log.keys_flushed = log.keys.len();
    log.head_dirty = false;
    log.failed_unwritten = 0;
}
