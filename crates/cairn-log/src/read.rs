//! Reading the log: by position, by stream, by correlation id, failed events.

use chrono::{DateTime, Utc};

use cairn_types::{
    CorrelationId, ErrorCode, EventId, EventType, Metadata, OrgId, Position, StreamId, StreamType,
    StreamVersion,
};

use crate::args;
use crate::backend::{Conn, Row};
use crate::error::DbError;
use crate::event::{ProcessingError, RecordedEvent};
use crate::value::{Arg, IntoArg, Sql};

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("database error while reading the log")]
    Database(#[from] DbError),
    #[error("the event at position {position} cannot be read: {reason}")]
    Corrupt { position: i64, reason: String },
}

/// The columns of `domain_events`, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "position, event_id, stream_type, stream_id, stream_version, \
     event_type, event_version, event_data, event_metadata, created_at, processed_at, \
     processing_error_code, processing_error_message, held_behind, hash";

pub(crate) fn event_from_row(row: &Row) -> Result<RecordedEvent, ReadError> {
    let position: i64 = row.get("position")?;
    let corrupt = |reason: String| ReadError::Corrupt { position, reason };
    let stream_type: String = row.get("stream_type")?;
    let event_type: String = row.get("event_type")?;
    let metadata = row.get_json("event_metadata")?;
    let event_version = u32::try_from(row.get::<i64>("event_version")?)
        .map_err(|_| corrupt("event_version: not a version".to_owned()))?;
    let code: Option<String> = row.get("processing_error_code")?;
    let message: Option<String> = row.get("processing_error_message")?;
    let processing_error = match (code, message) {
        (Some(code), Some(message)) => Some(ProcessingError {
            code: code
                .parse::<ErrorCode>()
                .map_err(|e| corrupt(e.to_string()))?,
            message,
        }),
        _ => None,
    };
    Ok(RecordedEvent {
        position: Position::new(position),
        event_id: row.get::<EventId>("event_id")?,
        stream_type: StreamType::parse(&stream_type).map_err(|e| corrupt(e.to_string()))?,
        stream_id: row.get::<StreamId>("stream_id")?,
        stream_version: StreamVersion::new(row.get::<i64>("stream_version")?),
        event_type: EventType::parse(&event_type).map_err(|e| corrupt(e.to_string()))?,
        event_version,
        stored_version: event_version,
        data: row.get_json("event_data")?,
        metadata: serde_json::from_value::<Metadata>(metadata)
            .map_err(|e| corrupt(format!("event_metadata: {e}")))?,
        created_at: row.get::<DateTime<Utc>>("created_at")?,
        processed_at: row.get::<Option<DateTime<Utc>>>("processed_at")?,
        processing_error,
        held_behind: row.get::<Option<i64>>("held_behind")?.map(Position::new),
        hash: row.get("hash")?,
    })
}

/// Which events to read. Every condition narrows the result; the default reads from
/// the start of the log.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events after this position.
    pub after: Position,
    /// At most this many events; `None` for [`EventFilter::DEFAULT_LIMIT`].
    pub limit: Option<u32>,
    pub stream_id: Option<StreamId>,
    pub stream_type: Option<StreamType>,
    pub event_type: Option<EventType>,
    pub correlation_id: Option<CorrelationId>,
    pub org_id: Option<OrgId>,
    /// Leave out the events of this organization (the probe's, in cross-tenant reads).
    pub exclude_org: Option<OrgId>,
    /// Only events whose last processing failed.
    pub failed: bool,
    /// Only failed events with this code (implies `failed`).
    pub error_code: Option<ErrorCode>,
    /// Only events before this position.
    pub before: Option<Position>,
    /// The newest events first (the last `limit` of the matching ones), instead of the
    /// oldest.
    pub newest_first: bool,
}

impl EventFilter {
    /// The page size when none is given.
    pub const DEFAULT_LIMIT: u32 = 1_000;

    /// Every event after `position`.
    pub fn after(position: Position) -> Self {
        Self {
            after: position,
            ..Self::default()
        }
    }

    fn to_sql(&self) -> (String, Vec<Arg>) {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM domain_events WHERE position > $1");
        let mut args: Vec<Arg> = args![self.after];
        let mut condition = |column: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        };
        if let Some(stream_id) = self.stream_id {
            condition("stream_id", stream_id.into_arg());
        }
        if let Some(stream_type) = &self.stream_type {
            condition("stream_type", stream_type.into_arg());
        }
        if let Some(event_type) = &self.event_type {
            condition("event_type", event_type.into_arg());
        }
        if let Some(correlation_id) = self.correlation_id {
            condition("correlation_id", correlation_id.into_arg());
        }
        if let Some(org_id) = self.org_id {
            condition("org_id", org_id.into_arg());
        }
        if let Some(code) = self.error_code {
            condition("processing_error_code", code.into_arg());
        }
        if let Some(excluded) = self.exclude_org {
            args.push(excluded.into_arg());
            sql.push_str(&format!(
                " AND (org_id IS NULL OR org_id <> ${})",
                args.len()
            ));
        }
        if let Some(before) = self.before {
            args.push(before.into_arg());
            sql.push_str(&format!(" AND position < ${}", args.len()));
        }
        if self.failed && self.error_code.is_none() {
            // Through the partial index of failed events: as a plain condition, the
            // planner walks the whole log in position order looking for the few.
            sql.push_str(
                " AND position IN (SELECT position FROM domain_events \
                 WHERE processing_error_code IS NOT NULL)",
            );
        } else if self.failed {
            sql.push_str(" AND processing_error_code IS NOT NULL");
        }
        args.push(i64::from(self.limit.unwrap_or(Self::DEFAULT_LIMIT)).into_arg());
        let order = if self.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY position {order} LIMIT ${}", args.len()));
        (sql, args)
    }
}

/// How many events failed with one code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    pub code: String,
    pub count: i64,
    /// The newest failed event's position.
    pub newest: Position,
}

/// The head of the log: its last position and hash, and how many events are failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub last_position: Position,
    pub last_hash: String,
    pub failed_events: i64,
    /// The hash of the newest event that paused or resumed a handler route (empty
    /// before the first): whoever caches the paused routes reads them again when it
    /// changes.
    pub controls: String,
    /// How many people were ever erased: a process that caches data keys trusts them
    /// only while it has learnt of as many erasures as this.
    pub erasures: i64,
}

pub(crate) fn head_from_row(row: &Row) -> Result<Head, DbError> {
    Ok(Head {
        last_position: Position::new(row.get("last_position")?),
        last_hash: row.get("last_hash")?,
        failed_events: row.get("failed_events")?,
        controls: row.get("controls")?,
        erasures: row.get("erasures")?,
    })
}

impl Conn<'_> {
    /// Events matching a filter, in position order.
    pub async fn read_events(
        &mut self,
        filter: &EventFilter,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let (sql, args) = filter.to_sql();
        // The statement text is built only from fixed fragments; values are bound.
        let rows = self.fetch_all(Sql::built(sql), args).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The event with this id.
    pub async fn event_by_id(
        &mut self,
        event_id: EventId,
    ) -> Result<Option<RecordedEvent>, ReadError> {
        let sql = Sql::built(format!(
            "SELECT {EVENT_COLUMNS} FROM domain_events WHERE event_id = $1"
        ));
        let row = self.fetch_optional(sql, args![event_id]).await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// The event at this position.
    pub async fn event_at(
        &mut self,
        position: Position,
    ) -> Result<Option<RecordedEvent>, ReadError> {
        let sql = Sql::built(format!(
            "SELECT {EVENT_COLUMNS} FROM domain_events WHERE position = $1"
        ));
        let row = self.fetch_optional(sql, args![position]).await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// The first position stored at or after `at`: every event before it is older.
    /// An event's time is taken as it is stored, in log order, so times follow
    /// positions, and a binary search finds it in about log2(head) reads of the primary
    /// key, never a scan. Past the newest event, it is the head's next position.
    pub async fn first_position_since(&mut self, at: DateTime<Utc>) -> Result<Position, DbError> {
        let head = self.head().await?.last_position.get();
        let (mut low, mut high) = (1_i64, head + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            let row = self
                .fetch_optional(
                    "SELECT position, created_at FROM domain_events WHERE position >= $1 \
                     ORDER BY position LIMIT 1",
                    args![Position::new(middle)],
                )
                .await?;
            match row {
                None => high = middle,
                Some(row) => {
                    let position: i64 = row.get("position")?;
                    if row.get::<DateTime<Utc>>("created_at")? >= at {
                        high = middle;
                    } else {
                        low = position + 1;
                    }
                }
            }
        }
        Ok(Position::new(low))
    }

    /// How many of the events up to `position` stand failed now.
    pub async fn failed_through(&mut self, position: Position) -> Result<i64, DbError> {
        self.fetch_one(
            "SELECT COUNT(*) AS n FROM domain_events \
             WHERE processing_error_code IS NOT NULL AND position <= $1",
            args![position],
        )
        .await?
        .get("n")
    }

    /// The head of the log.
    pub async fn head(&mut self) -> Result<Head, DbError> {
        let row = self
            .fetch_one(
                "SELECT last_position, last_hash, failed_events, controls, erasures FROM log_head WHERE id = 1",
                args![],
            )
            .await?;
        head_from_row(&row)
    }

    /// Whether anything (an event or a span) carries `correlation_id` outside `org_id`:
    /// for another tenant, or for none when `org_id` is given; for any tenant when
    /// `org_id` is `None`. Read without tenancy: it answers yes or no and nothing else.
    pub async fn correlation_used_elsewhere(
        &mut self,
        correlation_id: CorrelationId,
        org_id: Option<OrgId>,
    ) -> Result<bool, DbError> {
        let row = match org_id {
            Some(org_id) => {
                self.fetch_one(
                    "SELECT (EXISTS (SELECT 1 FROM domain_events WHERE correlation_id = $1 \
                     AND (org_id IS NULL OR org_id <> $2)) OR EXISTS (SELECT 1 FROM trace_spans \
                     WHERE correlation_id = $1 AND (org_id IS NULL OR org_id <> $2))) AS used",
                    args![correlation_id, org_id],
                )
                .await?
            }
            None => {
                self.fetch_one(
                    "SELECT (EXISTS (SELECT 1 FROM domain_events WHERE correlation_id = $1) \
                     OR EXISTS (SELECT 1 FROM trace_spans WHERE correlation_id = $1)) AS used",
                    args![correlation_id],
                )
                .await?
            }
        };
        row.get::<bool>("used")
    }

    /// How many failed events there are for each error code, among the events of
    /// `org_id` (all when `None`) except those of `exclude_org`; with the newest failed
    /// position of each code.
    pub async fn failures_by_code(
        &mut self,
        org_id: Option<OrgId>,
        exclude_org: Option<OrgId>,
    ) -> Result<Vec<FailureCount>, DbError> {
        let mut sql = String::from(
            "SELECT processing_error_code AS code, COUNT(*) AS n, MAX(position) AS newest \
             FROM domain_events WHERE processing_error_code IS NOT NULL",
        );
        let mut args: Vec<Arg> = args![];
        if let Some(org_id) = org_id {
            args.push(org_id.into_arg());
            sql.push_str(&format!(" AND org_id = ${}", args.len()));
        }
        if let Some(excluded) = exclude_org {
            args.push(excluded.into_arg());
            sql.push_str(&format!(
                " AND (org_id IS NULL OR org_id <> ${})",
                args.len()
            ));
        }
        sql.push_str(" GROUP BY processing_error_code ORDER BY 1");
        // The statement text is built only from fixed fragments; values are bound.
        let rows = self.fetch_all(Sql::built(sql), args).await?;
        rows.iter()
            .map(|row| {
                Ok(FailureCount {
                    code: row.get("code")?,
                    count: row.get("n")?,
                    newest: Position::new(row.get("newest")?),
                })
            })
            .collect()
    }

    /// How many failed events there are for each error code.
    pub async fn failed_by_code(&mut self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = self
            .fetch_all(
                "SELECT processing_error_code AS code, COUNT(*) AS n FROM domain_events \
                 WHERE processing_error_code IS NOT NULL GROUP BY processing_error_code ORDER BY 1",
                args![],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.get("code")?, row.get("n")?)))
            .collect()
    }
}
