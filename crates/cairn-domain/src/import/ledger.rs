//! The import's own record in the target database: where it stands in the source
//! (`import_cursor`) and what it left out (`import_unmapped`).
//!
//! A [`Unit`] appends a page of mapped events, records the page's unmapped ones and
//! moves the cursor past the page, in one unit of work: a process killed at any point
//! leaves either all of it or none, so a resumed import starts where the last commit
//! left it and never imports an event twice. The cursor moves only from where the
//! unit expected it, so two imports into one database cannot both take a page.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use cairn_dispatch::EventStore;
use cairn_log::{
    AppendError, AppendRequest, Db, DbError, Expected, NewEvent, Tx, WriteOptions, args,
};
use cairn_types::{
    Actor, CorrelationId, EventType, Metadata, OrgId, Position, StreamId, StreamType,
};

use super::map::{IMPORT_ACTOR, Mapper, Mapping, SeedEvent, Streams, UnmappedKind};
use super::source::{Cursor, Order};

/// Why a unit of the import was not written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cairn refused the import's events")]
    Append(#[from] AppendError),
    #[error("database error while importing")]
    Database(#[from] DbError),
    #[error(
        "the import's cursor is not where this process left it (expected {expected:?}): another \
         import is writing to this database"
    )]
    CursorMoved { expected: String },
}

/// Where an import stands, as `import_cursor` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The source's URL, password hidden.
    pub source: String,
    pub source_database: String,
    /// The source's first event: the same id means the same seed log.
    pub source_first_id: Uuid,
    pub order: Order,
    /// The source has been read up to here.
    pub read_through: String,
    /// Where the source was read up to when `import.completed` was last appended.
    pub completed_through: Option<String>,
    /// The stream of `import.started` and `import.completed`.
    pub stream_id: StreamId,
    /// The position of `import.started`.
    pub started_position: Position,
    /// The last position a checkpoint was signed at.
    pub signed_position: Option<Position>,
    pub n_read: i64,
    pub n_imported: i64,
    pub n_unmapped: i64,
    pub started_at: DateTime<Utc>,
}

/// The import's standing, if one has started in this database.
pub async fn standing(db: &Db) -> Result<Option<Standing>, DbError> {
    let mut reader = db.reader().await?;
    let Some(row) = reader
        .conn()
        .fetch_optional(
            "SELECT source, source_database, source_first_id, source_order, read_through,
                    completed_through, stream_id, started_position, signed_position, n_read, n_imported,
                    n_unmapped, started_at
             FROM import_cursor WHERE id = 1",
            args![],
        )
        .await?
    else {
        return Ok(None);
    };
    let order = match row.get::<String>("source_order")?.as_str() {
        "position" => Order::Position,
        _ => Order::CreatedAt,
    };
    Ok(Some(Standing {
        source: row.get("source")?,
        source_database: row.get("source_database")?,
        source_first_id: row.get("source_first_id")?,
        order,
        read_through: row.get("read_through")?,
        completed_through: row.get("completed_through")?,
        stream_id: row.get("stream_id")?,
        started_position: Position::new(row.get("started_position")?),
        signed_position: row
            .get::<Option<i64>>("signed_position")?
            .map(Position::new),
        n_read: row.get("n_read")?,
        n_imported: row.get("n_imported")?,
        n_unmapped: row.get("n_unmapped")?,
        started_at: row.get("started_at")?,
    }))
}

/// What an import starts from.
#[derive(Debug, Clone)]
pub struct Start {
    pub source: String,
    pub source_database: String,
    pub source_first_id: Uuid,
    pub order: Order,
    /// The source's size when the import started, for the record.
    pub n_source_events: i64,
    pub source_last_position: Option<i64>,
}

fn admin_stream() -> StreamType {
    StreamType::parse("platform_admin").expect("a valid stream type")
}

fn import_metadata(correlation_id: CorrelationId) -> Metadata {
    Metadata {
        correlation_id,
        causation_id: None,
        actor: Some(Actor::Service(IMPORT_ACTOR.to_owned())),
        org_id: None,
        extra: serde_json::Map::new(),
    }
}

/// Starts an import in a database whose log is empty: appends `import.started` to a
/// `platform_admin` stream of its own (the source, its size then) and records the
/// cursor at the source's start, together. Returns where the import stands.
pub async fn start(store: &EventStore, start: Start) -> Result<Standing, ImportError> {
    let stream_id = StreamId::new_v7();
    let correlation_id = CorrelationId::new_v7();
    let store_for_unit = store.clone();
    let started_at = cairn_types::now_micros();
    let unit_start = start.clone();
    let started_position = store
        .db()
        .write_to(WriteOptions::default(), &[stream_id], move |tx| {
            let store = store_for_unit.clone();
            let start = unit_start.clone();
            Box::pin(async move {
                let event = NewEvent::new(
                    EventType::parse("import.started").expect("a valid event type"),
                    json!({
                        "source": start.source,
                        "source_database": start.source_database,
                        "source_first_id": start.source_first_id,
                        "source_order": start.order.as_str(),
                        "n_source_events": start.n_source_events,
                        "source_last_position": start.source_last_position,
                    }),
                    import_metadata(correlation_id),
                );
                let request = AppendRequest::new(admin_stream(), stream_id, vec![event])
                    .expect(Expected::NoStream);
                let appended = store.append_in(tx, request).await?;
                let position = appended.events[0].event.position;
                tx.conn()
                    .execute(
                        "INSERT INTO import_cursor (id, source, source_database, source_first_id,
                             source_order, read_through, stream_id, started_position,
                             signed_position, n_read, n_imported, n_unmapped, started_at,
                             updated_at)
                         VALUES (1, $1, $2, $3, $4, '', $5, $6, NULL, 0, 0, 0, $7, $7)",
                        args![
                            start.source.as_str(),
                            start.source_database.as_str(),
                            start.source_first_id,
                            start.order.as_str(),
                            stream_id,
                            position,
                            started_at,
                        ],
                    )
                    .await?;
                Ok::<_, ImportError>(position)
            })
        })
        .await?;
    Ok(Standing {
        source: start.source,
        source_database: start.source_database,
        source_first_id: start.source_first_id,
        order: start.order,
        read_through: String::new(),
        completed_through: None,
        stream_id,
        started_position,
        signed_position: None,
        n_read: 0,
        n_imported: 0,
        n_unmapped: 0,
        started_at,
    })
}

/// Records that a checkpoint was signed at `position`.
pub async fn signed(db: &Db, position: Position) -> Result<(), DbError> {
    db.write(WriteOptions::default(), move |tx| {
        Box::pin(async move {
            tx.conn()
                .execute(
                    "UPDATE import_cursor SET signed_position = $1 WHERE id = 1",
                    args![position],
                )
                .await
                .map(drop)
        })
    })
    .await
}

/// Appends `import.completed` (the source was read to its end, with these totals)
/// and records where, together. Returns its position.
pub async fn complete(store: &EventStore, standing: &Standing) -> Result<Position, ImportError> {
    let standing = standing.clone();
    let store_for_unit = store.clone();
    let correlation_id = CorrelationId::new_v7();
    store
        .db()
        .write_to(WriteOptions::default(), &[standing.stream_id], move |tx| {
            let store = store_for_unit.clone();
            let standing = standing.clone();
            Box::pin(async move {
                let event = NewEvent::new(
                    EventType::parse("import.completed").expect("a valid event type"),
                    json!({
                        "read_through": standing.read_through,
                        "n_read": standing.n_read,
                        "n_imported": standing.n_imported,
                        "n_unmapped": standing.n_unmapped,
                    }),
                    import_metadata(correlation_id),
                );
                let request = AppendRequest::new(admin_stream(), standing.stream_id, vec![event]);
                let appended = store.append_in(tx, request).await?;
                tx.conn()
                    .execute(
                        "UPDATE import_cursor SET completed_through = read_through WHERE id = 1",
                        args![],
                    )
                    .await?;
                Ok::<_, ImportError>(appended.events[0].event.position)
            })
        })
        .await
}

/// What the import knows of the target's streams when it resumes: every stream of
/// the log with its type and organization, and the streams whose creating event it
/// left out.
pub async fn streams(db: &Db) -> Result<Streams, DbError> {
    let mut streams = Streams::default();
    let mut reader = db.reader().await?;
    let rows = reader
        .conn()
        .fetch_all(
            "SELECT stream_id, stream_type, org_id FROM domain_events
             GROUP BY stream_id, stream_type, org_id",
            args![],
        )
        .await?;
    for row in rows {
        let stream_type: String = row.get("stream_type")?;
        let stream_type = StreamType::parse(&stream_type)
            .map_err(|e| DbError::decode("stream_type", e.to_string()))?;
        streams.know(
            row.get::<StreamId>("stream_id")?,
            stream_type,
            row.get::<Option<OrgId>>("org_id")?,
        );
    }
    let rows = reader
        .conn()
        .fetch_all(
            "SELECT cairn_stream_id, source_position, source_id FROM import_unmapped
             WHERE cairn_stream_id IS NOT NULL ORDER BY read_number",
            args![],
        )
        .await?;
    for row in rows {
        let place = match row.get::<Option<i64>>("source_position")? {
            Some(position) => format!("seed position {position}"),
            None => format!("seed event {}", row.get::<Uuid>("source_id")?),
        };
        streams.leave_out(row.get::<StreamId>("cairn_stream_id")?, place);
    }
    Ok(streams)
}

/// A seed event left out, as `import_unmapped` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    pub source_id: Uuid,
    /// Its place in the order the import read the source, from 1.
    pub read_number: i64,
    pub source_position: Option<i64>,
    pub source_created_at: DateTime<Utc>,
    pub stream_type: String,
    pub stream_id: Uuid,
    pub event_type: String,
    pub cairn_stream_id: Option<StreamId>,
    pub kind: UnmappedKind,
    pub reason: String,
}

/// One page of the source, decided: what to append, what was left out, and the
/// cursor's move.
#[derive(Debug, Clone)]
pub struct Unit {
    /// One request per run of consecutive events of one stream, in the source's order.
    pub requests: Vec<AppendRequest>,
    pub left_out: Vec<LeftOut>,
    pub from: Cursor,
    pub to: Cursor,
    pub n_read: i64,
    pub n_imported: i64,
}

impl Unit {
    /// Decides a page read after `from` whose first event is the `read_number`th the
    /// import has read, recording each decision in `streams`.
    pub fn plan(
        mapper: &Mapper<'_>,
        streams: &mut Streams,
        order: Order,
        from: Cursor,
        read_number: i64,
        page: &[SeedEvent],
    ) -> Unit {
        let mut requests: Vec<AppendRequest> = Vec::new();
        let mut left_out = Vec::new();
        let mut n_imported = 0;
        for (index, event) in page.iter().enumerate() {
            let mapping = mapper.map(event, streams);
            streams.record(event, &mapping);
            match mapping {
                Mapping::Import(mapped) => {
                    n_imported += 1;
                    match requests.last_mut() {
                        Some(last) if last.stream_id == mapped.stream_id => {
                            last.events.push(mapped.event);
                        }
                        _ => requests.push(
                            AppendRequest::new(
                                mapped.stream_type,
                                mapped.stream_id,
                                vec![mapped.event],
                            )
                            .importing(),
                        ),
                    }
                }
                Mapping::Unmapped(unmapped) => left_out.push(LeftOut {
                    source_id: event.id,
                    read_number: read_number + index as i64,
                    source_position: event.position,
                    source_created_at: event.created_at,
                    stream_type: event.stream_type.clone(),
                    stream_id: event.stream_id,
                    event_type: event.event_type.clone(),
                    cairn_stream_id: unmapped.stream_id,
                    kind: unmapped.kind,
                    reason: unmapped.reason,
                }),
            }
        }
        let to = page
            .last()
            .map_or_else(|| from.clone(), |last| Cursor::after(order, last));
        Unit {
            requests,
            left_out,
            from,
            to,
            n_read: page.len() as i64,
            n_imported,
        }
    }

    /// The streams it appends to.
    pub fn streams(&self) -> Vec<StreamId> {
        let mut streams: Vec<StreamId> = self.requests.iter().map(|r| r.stream_id).collect();
        streams.sort();
        streams.dedup();
        streams
    }

    /// Writes the unit: its events, its left-out rows and the cursor's move, in one unit
    /// of work.
    pub async fn write(self, store: &EventStore) -> Result<(), ImportError> {
        let streams = self.streams();
        let store_for_unit = store.clone();
        store
            .db()
            .write_to(WriteOptions::default(), &streams, move |tx| {
                let store = store_for_unit.clone();
                let unit = self.clone();
                Box::pin(async move { unit.write_in(&store, tx).await })
            })
            .await
    }

    async fn write_in(self, store: &EventStore, tx: &mut Tx) -> Result<(), ImportError> {
        let from = self.from.to_text();
        let moved = tx
            .conn()
            .execute(
                "UPDATE import_cursor SET read_through = $1, n_read = n_read + $2,
                     n_imported = n_imported + $3, n_unmapped = n_unmapped + $4,
                     updated_at = $5
                 WHERE id = 1 AND read_through = $6",
                args![
                    self.to.to_text(),
                    self.n_read,
                    self.n_imported,
                    self.left_out.len() as i64,
                    cairn_types::now_micros(),
                    from.as_str(),
                ],
            )
            .await?;
        if moved != 1 {
            return Err(ImportError::CursorMoved { expected: from });
        }
        for request in self.requests {
            store.append_in(tx, request).await?;
        }
        for row in self.left_out {
            tx.conn()
                .execute(
                    "INSERT INTO import_unmapped (source_id, read_number, source_position,
                         source_created_at, stream_type, stream_id, event_type,
                         cairn_stream_id, kind, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    args![
                        row.source_id,
                        row.read_number,
                        row.source_position,
                        row.source_created_at,
                        row.stream_type,
                        row.stream_id,
                        row.event_type,
                        row.cairn_stream_id,
                        row.kind.as_str(),
                        row.reason,
                    ],
                )
                .await?;
        }
        Ok(())
    }
}

/// Every seed event the import left out, in the order it read them.
pub async fn left_out(db: &Db) -> Result<Vec<LeftOut>, DbError> {
    let mut reader = db.reader().await?;
    let rows = reader
        .conn()
        .fetch_all(
            "SELECT source_id, read_number, source_position, source_created_at, stream_type,
                    stream_id, event_type, cairn_stream_id, kind, reason
             FROM import_unmapped ORDER BY read_number",
            args![],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.get("kind")?;
            Ok(LeftOut {
                source_id: row.get("source_id")?,
                read_number: row.get("read_number")?,
                source_position: row.get("source_position")?,
                source_created_at: row.get("source_created_at")?,
                stream_type: row.get("stream_type")?,
                stream_id: row.get("stream_id")?,
                event_type: row.get("event_type")?,
                cairn_stream_id: row.get("cairn_stream_id")?,
                kind: UnmappedKind::parse(&kind)
                    .ok_or_else(|| DbError::decode("kind", format!("unknown kind {kind:?}")))?,
                reason: row.get("reason")?,
            })
        })
        .collect()
}

/// How the imported events fared in cairn: by event type, how many were imported, and
/// how many of them failed or wait behind a failure now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    pub by_type: Vec<(String, i64)>,
    pub n_failed: i64,
    pub n_held: i64,
}

/// The imported events after `started`, by type and by outcome.
pub async fn imported(db: &Db, standing: &Standing) -> Result<Imported, DbError> {
    let mut reader = db.reader().await?;
    let mut conn = reader.conn();
    let after = standing.started_position;
    let by_type = conn
        .fetch_all(
            "SELECT event_type, count(*) AS n FROM domain_events
             WHERE position > $1 AND stream_id <> $2
             GROUP BY event_type ORDER BY event_type",
            args![after, standing.stream_id],
        )
        .await?
        .iter()
        .map(|row| Ok((row.get("event_type")?, row.get("n")?)))
        .collect::<Result<_, DbError>>()?;
    let row = conn
        .fetch_one(
            "SELECT
                 (SELECT count(*) FROM domain_events
                   WHERE position > $1 AND processing_error_code IS NOT NULL) AS n_failed,
                 (SELECT count(*) FROM domain_events
                   WHERE position > $1 AND held_behind IS NOT NULL) AS n_held",
            args![after],
        )
        .await?;
    Ok(Imported {
        by_type,
        n_failed: row.get("n_failed")?,
        n_held: row.get("n_held")?,
    })
}
