//! The seed's event store, read: its schema checked first, then its events in order, a
//! page at a time, over a read-only connection.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use cairn_log::{ConnectError, DbError, ForeignDb, Row, Sql, args};

use super::map::SeedEvent;

/// The columns of the seed's `domain_events` an import reads.
pub const REQUIRED_COLUMNS: [&str; 10] = [
    "id",
    "stream_id",
    "stream_type",
    "stream_version",
    "event_type",
    "event_data",
    "event_metadata",
    "created_at",
    "processed_at",
    "processing_error",
];

/// Why the source cannot be read as the seed's event store.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the source {source_url} is not a PostgreSQL database: the seed's event store is a postgres:// URL"
    )]
    NotPostgres { source_url: String },
    #[error("cannot open the source")]
    Connect(#[from] ConnectError),
    #[error("the source {source_url} has no domain_events table: it is not the seed's event store")]
    NoTable { source_url: String },
    #[error(
        "the source's domain_events has no column {}: it is not the seed's event store",
        missing.join(", ")
    )]
    MissingColumns { missing: Vec<String> },
    #[error("reading the source")]
    Database(#[from] DbError),
    #[error("the source's read position {text:?} cannot be read")]
    BadCursor { text: String },
}

/// The order the source's events are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By `position`, the seed's identity column.
    Position,
    /// By `(created_at, id)`, for a table without a position.
    CreatedAt,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Position => "position",
            Order::CreatedAt => "created_at",
        }
    }
}

/// Where a read of the source stands: after this event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Start,
    Position(i64),
    CreatedAt { at: DateTime<Utc>, id: Uuid },
}

impl Cursor {
    /// The cursor just past `event`, in `order`.
    pub fn after(order: Order, event: &SeedEvent) -> Cursor {
        match (order, event.position) {
            (Order::Position, Some(position)) => Cursor::Position(position),
            _ => Cursor::CreatedAt {
                at: event.created_at,
                id: event.id,
            },
        }
    }

    /// The cursor as stored: empty at the start, `position:N`, or `created_at:TIME/ID`.
    pub fn to_text(&self) -> String {
        match self {
            Cursor::Start => String::new(),
            Cursor::Position(position) => format!("position:{position}"),
            Cursor::CreatedAt { at, id } => format!(
                "created_at:{}/{id}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
        }
    }

    /// Reads a stored cursor.
    pub fn parse(text: &str) -> Result<Cursor, SourceError> {
        let bad = || SourceError::BadCursor {
            text: text.to_owned(),
        };
        if text.is_empty() {
            return Ok(Cursor::Start);
        }
        if let Some(position) = text.strip_prefix("position:") {
            return position.parse().map(Cursor::Position).map_err(|_| bad());
        }
        let (at, id) = text
            .strip_prefix("created_at:")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(bad)?;
        Ok(Cursor::CreatedAt {
            at: DateTime::parse_from_rfc3339(at)
                .map_err(|_| bad())?
                .with_timezone(&Utc),
            id: Uuid::parse_str(id).map_err(|_| bad())?,
        })
    }
}

/// The seed's event store, open for reading.
#[derive(Debug)]
pub struct Source {
    db: ForeignDb,
    order: Order,
    database: String,
}

impl Source {
    /// Opens the source and checks it is the seed's event store: a `domain_events`
    /// table (found on the connection's search path) with every column an import
    /// reads. Reads by `position` when the table has one.
    pub async fn open(url: &str) -> Result<Source, SourceError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(SourceError::NotPostgres {
                source_url: cairn_log::redact_url(url),
            });
        }
        let db = ForeignDb::connect(url, 2).await?;
        let mut reader = db.reader().await?;
        let mut conn = reader.conn();
        let database: String = conn
            .fetch_one("SELECT current_database() AS name", args![])
            .await?
            .get("name")?;
        let columns: Vec<String> = conn
            .fetch_all(
                "SELECT a.attname::text AS name FROM pg_attribute a
                 WHERE a.attrelid = to_regclass('domain_events') AND a.attnum > 0
                   AND NOT a.attisdropped",
                args![],
            )
            .await?
            .iter()
            .map(|row| row.get::<String>("name"))
            .collect::<Result<_, _>>()?;
        drop(reader);
        if columns.is_empty() {
            let source_url = db.describe();
            db.close().await;
            return Err(SourceError::NoTable { source_url });
        }
        let missing: Vec<String> = REQUIRED_COLUMNS
            .iter()
            .filter(|column| !columns.iter().any(|c| c == *column))
            .map(|column| (*column).to_owned())
            .collect();
        if !missing.is_empty() {
            db.close().await;
            return Err(SourceError::MissingColumns { missing });
        }
        let order = if columns.iter().any(|c| c == "position") {
            Order::Position
        } else {
            Order::CreatedAt
        };
        Ok(Source {
            db,
            order,
            database,
        })
    }

    /// The source's URL, its password hidden.
    pub fn describe(&self) -> String {
        self.db.describe()
    }

    /// The source database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The order its events are read in.
    pub fn order(&self) -> Order {
        self.order
    }

    fn order_by(&self) -> &'static str {
        match self.order {
            Order::Position => "position",
            Order::CreatedAt => "created_at, id",
        }
    }

    /// The id of its first event, which tells one seed log from another; `None` while
    /// it has none.
    pub async fn first_id(&self) -> Result<Option<Uuid>, SourceError> {
        let sql = format!(
            "SELECT id FROM domain_events ORDER BY {} LIMIT 1",
            self.order_by()
        );
        let mut reader = self.db.reader().await?;
        let row = reader
            .conn()
            .fetch_optional(Sql::built(sql), args![])
            .await?;
        Ok(row.map(|row| row.get::<Uuid>("id")).transpose()?)
    }

    /// How many events it holds now, and its last position (when it has positions).
    pub async fn totals(&self) -> Result<(i64, Option<i64>), SourceError> {
        let last = match self.order {
            Order::Position => "max(position)",
            Order::CreatedAt => "NULL::bigint",
        };
        let sql = format!("SELECT count(*) AS n, {last} AS last FROM domain_events");
        let mut reader = self.db.reader().await?;
        let row = reader.conn().fetch_one(Sql::built(sql), args![]).await?;
        Ok((row.get("n")?, row.get("last")?))
    }

    /// How many of its events are at or before `cursor`: once an import has read to
    /// there, the number it has read, unless events were added behind it.
    pub async fn count_through(&self, cursor: &Cursor) -> Result<i64, SourceError> {
        let (condition, args) = match cursor {
            Cursor::Start => return Ok(0),
            Cursor::Position(position) => ("position <= $1", args![*position]),
            Cursor::CreatedAt { at, id } => ("(created_at, id) <= ($1, $2)", args![*at, *id]),
        };
        let sql = format!("SELECT count(*) AS n FROM domain_events WHERE {condition}");
        let mut reader = self.db.reader().await?;
        let row = reader.conn().fetch_one(Sql::built(sql), args).await?;
        Ok(row.get("n")?)
    }

    /// Up to `limit` events after `cursor`, in order.
    pub async fn read_after(
        &self,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<Vec<SeedEvent>, SourceError> {
        let position = match self.order {
            Order::Position => "position",
            Order::CreatedAt => "NULL::bigint",
        };
        let (condition, mut args) = match cursor {
            Cursor::Start => ("TRUE", args![]),
            Cursor::Position(after) => ("position > $1", args![*after]),
            Cursor::CreatedAt { at, id } => ("(created_at, id) > ($1, $2)", args![*at, *id]),
        };
        args.push(cairn_log::IntoArg::into_arg(i64::from(limit)));
        let sql = format!(
            "SELECT {position} AS position, id, stream_id, stream_type,
                    stream_version::bigint AS stream_version, event_type, event_data,
                    event_metadata, created_at, processed_at, processing_error
             FROM domain_events WHERE {condition} ORDER BY {} LIMIT ${}",
            self.order_by(),
            args.len()
        );
        let mut reader = self.db.reader().await?;
        let rows = reader.conn().fetch_all(Sql::built(sql), args).await?;
        Ok(rows.iter().map(seed_event).collect::<Result<_, _>>()?)
    }

    /// Closes its connections.
    pub async fn close(&self) {
        self.db.close().await;
    }
}

fn seed_event(row: &Row) -> Result<SeedEvent, DbError> {
    Ok(SeedEvent {
        id: row.get("id")?,
        position: row.get("position")?,
        stream_id: row.get("stream_id")?,
        stream_type: row.get("stream_type")?,
        stream_version: row.get("stream_version")?,
        event_type: row.get("event_type")?,
        data: row.get_json("event_data")?,
        metadata: row.get_json("event_metadata")?,
        created_at: row.get("created_at")?,
        processed_at: row.get("processed_at")?,
        processing_error: row.get("processing_error")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_as_written() {
        let at = DateTime::parse_from_rfc3339("2026-02-07T01:36:04.123456Z")
            .expect("a time")
            .with_timezone(&Utc);
        for cursor in [
            Cursor::Start,
            Cursor::Position(42),
            Cursor::CreatedAt {
                at,
                id: Uuid::from_u128(7),
            },
        ] {
            assert_eq!(Cursor::parse(&cursor.to_text()).ok(), Some(cursor));
        }
        assert!(Cursor::parse("sideways:3").is_err());
    }
}
