//! Appending to the log, in two phases around the dispatcher.
//!
//! [`Tx::prepare_append`] takes the log head lock, checks the idempotency key and the
//! expected version, and assigns positions and hashes. The caller then runs whatever
//! must happen in the same transaction (the dispatcher, updating projections) and
//! records each event's outcome on the [`PendingAppend`]. [`Tx::write_append`] stores the
//! rows, complete with their outcomes, and moves the head.
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
use crate::db::Tx;
use crate::event::{AppendRequest, Expected, IdempotencyKey, Outcome, RecordedEvent};
use crate::hash::{self, HashedColumns};
use crate::read::{EventFilter, Head, ReadError, head_from_row};
use crate::sql::{Backend, Conn, dialect};

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
    #[error("database error while appending")]
    Database(#[from] sqlx::Error),
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
        let event = &mut self.events[index];
        event.processed_at = Some(at);
        event.processing_error = outcome.error().cloned();
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

impl Tx {
    /// Takes the log head lock and reads the head. Every transaction that appends or
    /// dispatches takes it first, so they run one at a time across all processes.
    pub async fn lock_head(&mut self) -> Result<Head, sqlx::Error> {
        self.conn().lock_head().await
    }

    /// The current version of a stream and its stream type; `None` if it has no events.
    pub async fn stream_version(
        &mut self,
        stream_id: StreamId,
    ) -> Result<Option<(String, StreamVersion)>, sqlx::Error> {
        let row = self
            .conn()
            .fetch_optional(
                "SELECT stream_type, stream_version FROM domain_events WHERE stream_id = $1 \
                 ORDER BY stream_version DESC LIMIT 1",
                args![stream_id],
            )
            .await?;
        row.map(|row| {
            Ok((
                row.get("stream_type")?,
                StreamVersion::new(row.get("stream_version")?),
            ))
        })
        .transpose()
    }

    /// Phase one of an append: lock, check, assign positions and hashes.
    pub async fn prepare_append(
        &mut self,
        mut request: AppendRequest,
    ) -> Result<Prepared, AppendError> {
        if request.events.is_empty() {
            return Err(AppendError::NoEvents);
        }
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
            hash::normalize_json(&mut metadata, &mut "event_metadata".to_owned())
                .map_err(invalid)?;
            metadata_values.push(metadata);
        }

        let head = self.lock_head().await?;

        let idempotency = request
            .idempotency_key
            .as_ref()
            .map(|key| (key.clone(), fingerprint(&request)));
        if let Some((key, fingerprint)) = &idempotency {
            let row = self
                .conn()
                .fetch_optional(
                    "SELECT fingerprint, first_position, n_events FROM idempotency_keys WHERE key = $1",
                    args![key.as_str()],
                )
                .await?;
            if let Some(row) = row {
                let stored: String = row.get("fingerprint")?;
                if &stored != fingerprint {
                    return Err(AppendError::KeyReused {
                        key: key.as_str().to_owned(),
                    });
                }
                let first: i64 = row.get("first_position")?;
                let n_events: i64 = row.get("n_events")?;
                let filter = EventFilter {
                    after: Position::new(first - 1),
                    limit: Some(u32::try_from(n_events).unwrap_or(u32::MAX)),
                    ..EventFilter::default()
                };
                let events = self.conn().read_events(&filter).await?;
                return Ok(Prepared::Repeat(events));
            }
        }

        let current = self.stream_version(request.stream_id).await?;
        let actual = match &current {
            Some((existing, version)) => {
                if existing != request.stream_type.as_str() {
                    return Err(AppendError::StreamTypeMismatch {
                        stream_id: request.stream_id,
                        existing: existing.clone(),
                        requested: request.stream_type.clone(),
                    });
                }
                *version
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
                hash,
            });
        }
        Ok(Prepared::New(PendingAppend {
            events,
            metadata_values,
            idempotency,
        }))
    }

    /// Phase two of an append: store the events with their outcomes and move the head.
    pub async fn write_append(
        &mut self,
        pending: PendingAppend,
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        let mut conn = self.conn();
        let mut n_failed = 0_i64;
        for (event, metadata) in pending.events.iter().zip(&pending.metadata_values) {
            let error = event.processing_error.as_ref();
            n_failed += i64::from(error.is_some());
            conn.execute(
                "INSERT INTO domain_events (position, event_id, stream_type, stream_id, \
                 stream_version, event_type, event_data, event_metadata, correlation_id, org_id, \
                 created_at, processed_at, processing_error_code, processing_error_message, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                args![
                    event.position,
                    event.event_id,
                    &event.stream_type,
                    event.stream_id,
                    event.stream_version,
                    &event.event_type,
                    event.data.clone(),
                    metadata.clone(),
                    event.metadata.correlation_id,
                    event.metadata.org_id,
                    event.created_at,
                    event.processed_at,
                    error.map(|e| e.code),
                    error.map(|e| e.message.clone()),
                    event.hash.clone(),
                ],
            )
            .await?;
        }
        let (Some(first), Some(last)) = (pending.events.first(), pending.events.last()) else {
            return Err(AppendError::NoEvents);
        };
        conn.execute(
            "UPDATE log_head SET last_position = $1, last_hash = $2, \
             failed_events = failed_events + $3 WHERE id = 1",
            args![last.position, last.hash.clone(), n_failed],
        )
        .await?;
        if conn.backend() == Backend::Postgres {
            // Transactional: the notification goes out when, and only if, this commits.
            conn.execute(
                "SELECT pg_notify('cairn_events', $1)",
                args![last.position.get().to_string()],
            )
            .await?;
        }
        if let Some((key, fingerprint)) = &pending.idempotency {
            conn.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, first_position, n_events, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                args![
                    key.as_str(),
                    fingerprint.clone(),
                    first.position,
                    i64::try_from(pending.events.len()).unwrap_or(i64::MAX),
                    first.created_at,
                ],
            )
            .await?;
        }
        self.note_appended(
            pending
                .events
                .iter()
                .map(|event| (event.position, event.event_type.to_string())),
        );
        Ok(pending.events)
    }

    /// Locks one stored event for reprocessing. Call [`Tx::lock_head`] first.
    pub async fn event_for_update(
        &mut self,
        event_id: cairn_types::EventId,
    ) -> Result<Option<RecordedEvent>, ReadError> {
        let backend = self.backend();
        let mut conn = self.conn();
        let event = conn.event_by_id(event_id).await?;
        if backend == Backend::Postgres && event.is_some() {
            conn.execute(
                "SELECT 1 FROM domain_events WHERE event_id = $1 FOR UPDATE",
                args![event_id],
            )
            .await?;
        }
        Ok(event)
    }

    /// Stores the outcome of reprocessing a stored event and keeps the failed-event
    /// counter in step. Returns the event as now stored.
    pub async fn record_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
        at: DateTime<Utc>,
    ) -> Result<RecordedEvent, sqlx::Error> {
        self.conn().record_outcome(event, outcome, at).await
    }
}

impl Conn<'_> {
    /// Takes the log head lock (on a connection inside a transaction) and reads the head.
    pub async fn lock_head(&mut self) -> Result<Head, sqlx::Error> {
        let sql = dialect(
            self.backend(),
            // BEGIN IMMEDIATE already holds SQLite's one write lock.
            "SELECT last_position, last_hash, failed_events FROM log_head WHERE id = 1",
            "SELECT last_position, last_hash, failed_events FROM log_head WHERE id = 1 FOR UPDATE",
        );
        let row = self.fetch_one(sql, args![]).await?;
        head_from_row(&row)
    }

    /// Stores the outcome of reprocessing a stored event and keeps the failed-event
    /// counter in step. Returns the event as now stored.
    pub async fn record_outcome(
        &mut self,
        event: &RecordedEvent,
        outcome: &Outcome,
        at: DateTime<Utc>,
    ) -> Result<RecordedEvent, sqlx::Error> {
        let error = outcome.error();
        self.execute(
            "UPDATE domain_events SET processed_at = $1, processing_error_code = $2, \
             processing_error_message = $3 WHERE position = $4",
            args![
                at,
                error.map(|e| e.code),
                error.map(|e| e.message.clone()),
                event.position
            ],
        )
        .await?;
        let delta = i64::from(error.is_some()) - i64::from(event.is_failed());
        if delta != 0 {
            self.execute(
                "UPDATE log_head SET failed_events = failed_events + $1 WHERE id = 1",
                args![delta],
            )
            .await?;
        }
        let mut updated = event.clone();
        updated.processed_at = Some(at);
        updated.processing_error = error.cloned();
        Ok(updated)
    }
}
