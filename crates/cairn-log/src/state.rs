//! What a transaction knows of the log before it commits, and how that is written.
//!
//! A [`Tx`](crate::Tx) keeps the log's head in memory once it has locked it, and the
//! events appended through it until they are written: at commit, or before the
//! transaction reads the log itself. A batch of the log writer appends many events to
//! many streams in one transaction; they reach the database in a few statements (one
//! per kind of row, bound column by column: [`Columns`]) instead of one per event,
//! and the head row is written once.
//!
//! Invariant: what a transaction reads through its own log calls (the head, a stream's
//! version, an idempotency key) includes what it appended, written or not, and a
//! savepoint rolled back forgets both the rows and the memory of them ([`Mark`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use cairn_types::{ErrorCode, Position, StreamId, StreamVersion};

use crate::args;
use crate::backend::postgres::Pipeline;
use crate::backend::{Conn, Row};
use crate::error::DbError;
use crate::event::{HoldCause, RecordedEvent, StreamHold};
use crate::read::Head;
use crate::spans::SpanRecord;
use crate::value::{Arg, ArgType, Columns};

/// An event appended in this transaction, with its metadata exactly as hashed.
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    pub(crate) event: RecordedEvent,
    pub(crate) metadata: Value,
}

/// An idempotency key used in this transaction.
#[derive(Debug, Clone)]
pub(crate) struct PendingKey {
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    pub(crate) first_position: Position,
    pub(crate) n_events: i64,
    pub(crate) created_at: DateTime<Utc>,
}

/// A stream with events, as this transaction knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KnownStream {
    pub(crate) stream_type: String,
    pub(crate) version: StreamVersion,
    pub(crate) hold: Option<crate::event::StreamHold>,
}

/// A stream as this transaction knows it, or `None` when it has no events.
pub(crate) type StreamState = Option<KnownStream>;

/// What a transaction knows of the log beyond what it has written.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// The head including this transaction's appends; `None` until locked.
    pub(crate) head: Option<Head>,
    /// Whether `log_head` in the database lags `head`.
    pub(crate) head_dirty: bool,
    /// Failed events appended but not yet counted in `log_head`.
    pub(crate) failed_unwritten: i64,
    /// Every event appended; `rows[..flushed]` are in the database.
    pub(crate) rows: Vec<PendingRow>,
    pub(crate) flushed: usize,
    /// Streams read or appended to in this transaction.
    pub(crate) streams: HashMap<StreamId, StreamState>,
    /// How to forget stream states learned after a mark.
    undo: Vec<(StreamId, Option<StreamState>)>,
    /// Idempotency keys used; `keys[..keys_flushed]` are in the database.
    pub(crate) keys: Vec<PendingKey>,
    pub(crate) keys_flushed: usize,
    /// Events appended, for the metrics and the head watch once committed.
    pub(crate) appended: Vec<(Position, String, Option<ErrorCode>)>,
    /// Data keys sealed with (made or read here), and people erased or restricted here, in
    /// order: what the keyring learns once committed.
    pub(crate) sealed_keys: Vec<(cairn_types::UserId, crate::seal::KeyState)>,
}

/// What the PostgreSQL writer knows of the log as its last batch left it: the head,
/// and the state of the streams it read or appended to. While the head is unchanged,
/// no other transaction has appended, so these still hold: the next batch starts from
/// them and checks the head in the same round trip as its writes
/// ([`HEAD_IS`]), instead of reading them first.
#[derive(Debug, Clone)]
pub(crate) struct KnownLog {
    pub(crate) head: Head,
    pub(crate) streams: HashMap<StreamId, StreamState>,
}

impl KnownLog {
    /// The most streams kept; past it, only the last batch's.
    const MAX_STREAMS: usize = 4096;

    /// What a committed batch leaves known: its head and streams, with those known
    /// before when the batch started from them (nothing else committed in between).
    pub(crate) fn after(
        before: Option<KnownLog>,
        head: Head,
        streams: HashMap<StreamId, StreamState>,
    ) -> KnownLog {
        let mut known = match before {
            Some(before) if before.streams.len() + streams.len() <= Self::MAX_STREAMS => {
                before.streams
            }
            _ => HashMap::new(),
        };
        known.extend(streams);
        KnownLog {
            head,
            streams: known,
        }
    }

    /// Whether every one of `streams` is known.
    pub(crate) fn covers(&self, streams: &[StreamId]) -> bool {
        streams.iter().all(|id| self.streams.contains_key(id))
    }

    /// The arguments of [`HEAD_IS`].
    pub(crate) fn head_args(&self) -> Vec<Arg> {
        args![
            self.head.last_position,
            self.head.last_hash.as_str(),
            self.head.failed_events,
            self.head.controls.as_str(),
            self.head.erasures
        ]
    }
}

/// PostgreSQL: the head row locked, if it is still as the writer left it; a failure
/// otherwise (which rolls back the batch, and the writer runs it again, reading the
/// head).
pub(crate) const HEAD_IS: &str = "SELECT 1 / (count(*) = 1)::int AS one FROM (SELECT 1 \
     FROM log_head WHERE id = 1 AND last_position = $1 AND last_hash = $2 \
     AND failed_events = $3 AND controls = $4 AND erasures = $5 FOR UPDATE) AS head";

/// A point to roll the log state back to.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    head: Option<Head>,
    head_dirty: bool,
    failed_unwritten: i64,
    rows: usize,
    flushed: usize,
    undo: usize,
    keys: usize,
    keys_flushed: usize,
    appended: usize,
    sealed_keys: usize,
}

impl LogState {
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            head: self.head.clone(),
            head_dirty: self.head_dirty,
            failed_unwritten: self.failed_unwritten,
            rows: self.rows.len(),
            flushed: self.flushed,
            undo: self.undo.len(),
            keys: self.keys.len(),
            keys_flushed: self.keys_flushed,
            appended: self.appended.len(),
            sealed_keys: self.sealed_keys.len(),
        }
    }

    /// Forgets everything after `mark`. `database_rolled_back` says whether the database
    /// was rolled back to the same point (a savepoint), or still holds what was
    /// written since (only memory is rolled back).
    pub(crate) fn restore(&mut self, mark: &Mark, database_rolled_back: bool) {
        if database_rolled_back {
            // Rows written inside the savepoint are gone from the database, those of
            // earlier work included: they are written again.
            self.flushed = self.flushed.min(mark.flushed);
            self.keys_flushed = self.keys_flushed.min(mark.keys_flushed);
            self.head_dirty = mark.head_dirty || self.head_dirty;
        }
        self.head.clone_from(&mark.head);
        self.failed_unwritten = mark.failed_unwritten;
        self.rows.truncate(mark.rows);
        self.keys.truncate(mark.keys);
        self.appended.truncate(mark.appended);
        self.sealed_keys.truncate(mark.sealed_keys);
        while self.undo.len() > mark.undo {
            if let Some((stream_id, previous)) = self.undo.pop() {
                match previous {
                    Some(state) => self.streams.insert(stream_id, state),
                    None => self.streams.remove(&stream_id),
                };
            }
        }
        if database_rolled_back {
            // A head written inside the savepoint is undone too; write it again.
            self.head_dirty = true;
        }
    }

    /// Learns a stream's state, remembering how to forget it.
    pub(crate) fn learn_stream(&mut self, stream_id: StreamId, state: StreamState) {
        let previous = self.streams.insert(stream_id, state);
        self.undo.push((stream_id, previous));
    }

    /// Learns the head (locked) and the states of `wanted` from the rows of
    /// [`HEAD_AND_STREAMS_BOUND`] (or its SQLite form): one row per stream with
    /// events, or one with the head alone.
    pub(crate) fn learn_head_and_streams(
        &mut self,
        rows: &[Row],
        wanted: Vec<StreamId>,
    ) -> Result<(), DbError> {
        let Some(first) = rows.first() else {
            return Err(DbError::decode("log_head", "the log's head row is missing"));
        };
        self.head = Some(crate::read::head_from_row(first)?);
        self.learn_streams(rows, wanted)
    }

    /// Learns the states of `wanted` from rows naming streams with events; the others
    /// have none.
    pub(crate) fn learn_streams(
        &mut self,
        rows: &[Row],
        wanted: Vec<StreamId>,
    ) -> Result<(), DbError> {
        let mut found = HashMap::new();
        for row in rows {
            if let Some(id) = row.get::<Option<StreamId>>("stream_id")? {
                found.insert(id, known_stream(row)?);
            }
        }
        for id in wanted {
            let state = found.remove(&id).flatten();
            self.learn_stream(id, state);
        }
        Ok(())
    }

    /// Whether there is anything to write before commit.
    pub(crate) fn unwritten(&self) -> bool {
        self.flushed < self.rows.len()
            || self.keys_flushed < self.keys.len()
            || self.head_dirty
            || self.failed_unwritten != 0
    }
}

/// One stream's type, version and hold.
pub(crate) const STREAM_STATE: &str = "SELECT d.stream_type, d.stream_version, h.behind AS held_behind, \
     h.cause AS hold_cause FROM (SELECT stream_type, stream_version FROM domain_events \
     WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1) AS d \
     LEFT JOIN stream_holds h ON h.stream_id = $1";

/// PostgreSQL: the head locked, and the type, version and hold of each stream in `$1`
/// (a row with the head alone when none has events).
pub(crate) const HEAD_AND_STREAMS_BOUND: &str = "WITH head AS (SELECT last_position, last_hash, \
     failed_events, controls, erasures FROM log_head WHERE id = 1 FOR UPDATE) \
     SELECT head.last_position, head.last_hash, head.failed_events, head.controls, \
     head.erasures, \
     s.id AS stream_id, d.stream_type, d.stream_version, h.behind AS held_behind, \
     h.cause AS hold_cause FROM head \
     LEFT JOIN (UNNEST($1::uuid[]) AS s(id) CROSS JOIN LATERAL \
     (SELECT stream_type, stream_version FROM domain_events \
     WHERE stream_id = s.id ORDER BY stream_version DESC LIMIT 1) AS d \
     LEFT JOIN stream_holds h ON h.stream_id = s.id) ON true";

/// SQLite: the head, and the type, version and hold of each stream in `$1` (a JSON
/// array), as [`HEAD_AND_STREAMS_BOUND`] reads them on PostgreSQL.
pub(crate) const HEAD_AND_STREAMS_SQLITE: &str = "SELECT head.last_position, head.last_hash, \
     head.failed_events, head.controls, head.erasures, s.stream_id, s.stream_type, s.stream_version, \
     s.held_behind, s.hold_cause FROM log_head AS head LEFT JOIN (SELECT j.value AS stream_id, \
     d.stream_type, d.stream_version, h.behind AS held_behind, h.cause AS hold_cause \
     FROM json_each($1) AS j JOIN domain_events d ON d.stream_id = j.value \
     AND d.stream_version = (SELECT MAX(e.stream_version) FROM domain_events e \
     WHERE e.stream_id = j.value) LEFT JOIN stream_holds h ON h.stream_id = j.value) AS s \
     ON 1 WHERE head.id = 1";

/// SQLite: the type, version and hold of each stream in `$1` (a JSON array) that has
/// events.
pub(crate) const STREAMS_SQLITE: &str = "SELECT j.value AS stream_id, d.stream_type, \
     d.stream_version, h.behind AS held_behind, h.cause AS hold_cause FROM json_each($1) AS j \
     JOIN domain_events d ON d.stream_id = j.value AND d.stream_version = \
     (SELECT MAX(e.stream_version) FROM domain_events e WHERE e.stream_id = j.value) \
     LEFT JOIN stream_holds h ON h.stream_id = j.value";

/// PostgreSQL: the type, version and hold of each stream in `$1` that has events.
pub(crate) const STREAMS_BOUND: &str = "SELECT s.id AS stream_id, d.stream_type, d.stream_version, \
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

/// Writes what a transaction's log state holds and the spans recorded in it.
/// `committing` says the transaction commits next: the one moment to notify other
/// processes of the new head.
pub(crate) async fn flush(
    conn: &mut Conn<'_>,
    log: &mut LogState,
    spans: &mut Vec<SpanRecord>,
    committing: bool,
) -> Result<(), DbError> {
    let notify = (committing && !log.appended.is_empty())
        .then(|| log.head.as_ref().map(|head| head.last_position))
        .flatten();
    let mut tables = Vec::with_capacity(3);
    let rows = &log.rows[log.flushed..];
    if !rows.is_empty() {
        let mut events = Columns::new("domain_events", EVENT_ROW);
        for row in rows {
            events.row(event_args(row));
        }
        tables.push(events);
    }
    let keys = &log.keys[log.keys_flushed..];
    if !keys.is_empty() {
        let mut columns = Columns::new("idempotency_keys", KEY_ROW);
        for key in keys {
            columns.row(args![
                key.key.as_str(),
                key.fingerprint.as_str(),
                key.first_position,
                key.n_events,
                key.created_at
            ]);
        }
        tables.push(columns);
    }
    if !spans.is_empty() {
        let mut columns = Columns::new("trace_spans", SPAN_ROW);
        for span in spans.iter() {
            columns.row(span_args(span));
        }
        tables.push(columns);
    }
    let head = log
        .head_dirty
        .then_some(log.head.as_ref())
        .flatten()
        .map(|head| {
            args![
                head.last_position,
                head.last_hash.as_str(),
                log.failed_unwritten,
                head.controls.as_str()
            ]
        });
    conn.write_rows(tables, head.map(|args| (UPDATE_HEAD, args)), notify)
        .await?;
    log.flushed = log.rows.len();
    log.keys_flushed = log.keys.len();
    log.head_dirty = false;
    log.failed_unwritten = 0;
    spans.clear();
    Ok(())
}

/// The columns of a stored event, in the order of [`event_args`].
const EVENT_ROW: &[(&str, ArgType)] = &[
    ("position", ArgType::Int),
    ("event_id", ArgType::Uuid),
    ("stream_type", ArgType::Text),
    ("stream_id", ArgType::Uuid),
    ("stream_version", ArgType::Int),
    ("event_type", ArgType::Text),
    ("event_version", ArgType::Int),
    ("event_data", ArgType::Json),
    ("event_metadata", ArgType::Json),
    ("correlation_id", ArgType::Uuid),
    ("org_id", ArgType::Uuid),
    ("created_at", ArgType::Time),
    ("processed_at", ArgType::Time),
    ("processing_error_code", ArgType::Text),
    ("processing_error_message", ArgType::Text),
    ("hash", ArgType::Text),
    ("held_behind", ArgType::Int),
];

const KEY_ROW: &[(&str, ArgType)] = &[
    ("key", ArgType::Text),
    ("fingerprint", ArgType::Text),
    ("first_position", ArgType::Int),
    ("n_events", ArgType::Int),
    ("created_at", ArgType::Time),
];

const SPAN_ROW: &[(&str, ArgType)] = &[
    ("correlation_id", ArgType::Uuid),
    ("kind", ArgType::Text),
    ("name", ArgType::Text),
    ("org_id", ArgType::Uuid),
    ("started_at", ArgType::Time),
    ("duration_us", ArgType::Int),
    ("error", ArgType::Text),
    ("attributes", ArgType::Json),
];

const UPDATE_HEAD: &str = "UPDATE log_head SET last_position = $1, last_hash = $2, \
     failed_events = failed_events + $3, controls = $4 WHERE id = 1";

fn event_args(row: &PendingRow) -> Vec<Arg> {
    let event = &row.event;
    let error = event.processing_error.as_ref();
    args![
        event.position,
        event.event_id,
        &event.stream_type,
        event.stream_id,
        event.stream_version,
        &event.event_type,
        i64::from(event.stored_version),
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
    ]
}

fn span_args(span: &SpanRecord) -> Vec<Arg> {
    args![
        span.correlation_id,
        span.kind.as_str(),
        span.name.as_str(),
        span.org_id,
        span.started_at,
        duration_us(span),
        span.error.as_deref(),
        span.attributes.clone()
    ]
}

fn duration_us(span: &SpanRecord) -> i64 {
    i64::try_from(span.duration.as_micros()).unwrap_or(i64::MAX)
}

/// The PostgreSQL writer's final statement of an optimistic batch: its rows of the
/// log, keys and spans (each kind as one JSON array), the head, and the notification.
const FINAL_ROWS: &str = "WITH e AS (INSERT INTO domain_events (position, event_id, stream_type, \
     stream_id, stream_version, event_type, event_data, event_metadata, correlation_id, org_id, \
     created_at, processed_at, processing_error_code, processing_error_message, hash, held_behind, \
     event_version) \
     SELECT position, event_id, stream_type, stream_id, stream_version, event_type, event_data, \
     event_metadata, correlation_id, org_id, created_at, processed_at, processing_error_code, \
     processing_error_message, hash, held_behind, COALESCE(event_version, 1) \
     FROM jsonb_to_recordset($1) AS r(position bigint, \
     event_id uuid, stream_type text, stream_id uuid, stream_version bigint, event_type text, \
     event_data jsonb, event_metadata jsonb, correlation_id uuid, org_id uuid, \
     created_at timestamptz, processed_at timestamptz, processing_error_code text, \
     processing_error_message text, hash text, held_behind bigint, event_version bigint)), \
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
    pipeline: Option<&Pipeline>,
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
            // Absent reads as 1; most events are at version 1.
            if let (version, Value::Object(fields)) = (event.stored_version, &mut row)
                && version != 1
            {
                fields.insert("event_version".to_owned(), Value::from(version));
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
