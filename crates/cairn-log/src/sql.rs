//! Backend-neutral SQL: one query text, bound and read the same way on both backends.
//!
//! Queries use `$1, $2, …` placeholders, which SQLite and PostgreSQL both accept.
//! Arguments are [`Arg`] values, bound with each backend's own type for the value (a
//! UUID is text on SQLite and `uuid` on PostgreSQL, JSON is text and `jsonb`), so the
//! same statement works against either. Rows come back as [`Row`], read by column name
//! into any [`DbValue`].
//!
//! A [`Conn`] runs statements on a PostgreSQL connection (through sqlx), or on a SQLite
//! connection that runs each statement in the calling thread with no hand-off at all
//! (the writer's, or a reader's; see [`crate::direct`]). Callers cannot tell them apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, Row as _};
use uuid::Uuid;

use cairn_types::{
    CausationId, CorrelationId, ErrorCode, EventId, EventType, InvitationId, OrgId, Position,
    StreamId, StreamType, StreamVersion, UserId, WorkflowId,
};

use crate::direct::{self, DirectRow};
use crate::error::DbError;

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The embedded default: one file, one writer.
    Sqlite,
    /// The production backend, shared by several processes.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text of a statement: a literal, or text built from fixed fragments whose values
/// are all bound as arguments.
#[derive(Debug, Clone)]
pub struct Sql(SqlText);

#[derive(Debug, Clone)]
enum SqlText {
    Literal(&'static str),
    Built(Arc<str>),
}

impl Sql {
    /// A statement assembled at run time. Only fixed fragments and placeholders may go
    /// into the text; every value is bound as an argument.
    pub fn built(text: impl Into<String>) -> Sql {
        Sql(SqlText::Built(Arc::from(text.into())))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            SqlText::Literal(text) => text,
            SqlText::Built(text) => text,
        }
    }

    fn for_sqlx(&self) -> SqlxText {
        match &self.0 {
            SqlText::Literal(text) => SqlxText::Literal(text),
            SqlText::Built(text) => SqlxText::Built(AssertSqlSafe(text.clone())),
        }
    }

    /// Whether the statement only reads (so a unit of work that ran only such
    /// statements has nothing to undo).
    fn reads_only(&self) -> bool {
        let text = self.as_str().trim_start();
        let head = text.get(..6).unwrap_or(text);
        head.eq_ignore_ascii_case("SELECT")
    }
}

impl From<&'static str> for Sql {
    fn from(text: &'static str) -> Sql {
        Sql(SqlText::Literal(text))
    }
}

enum SqlxText {
    Literal(&'static str),
    Built(AssertSqlSafe<Arc<str>>),
}

/// One bound argument. Each variant carries an `Option` so that a NULL still has the
/// type PostgreSQL needs to accept it.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Bool(Option<bool>),
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Uuid(Option<Uuid>),
    Json(Option<Value>),
    Time(Option<DateTime<Utc>>),
}

/// A value that can be bound as an [`Arg`].
pub trait IntoArg {
    /// The value as an argument.
    fn into_arg(self) -> Arg;
    /// A NULL of this value's type.
    fn null() -> Arg;
}

impl<T: IntoArg> IntoArg for Option<T> {
    fn into_arg(self) -> Arg {
        match self {
            Some(value) => value.into_arg(),
            None => T::null(),
        }
    }
    fn null() -> Arg {
        T::null()
    }
}

impl<T: IntoArg + Clone> IntoArg for &T {
    fn into_arg(self) -> Arg {
        self.clone().into_arg()
    }
    fn null() -> Arg {
        T::null()
    }
}

macro_rules! into_arg {
    ($ty:ty, $variant:ident, |$v:ident| $convert:expr) => {
        impl IntoArg for $ty {
            fn into_arg(self) -> Arg {
                let $v = self;
                Arg::$variant(Some($convert))
            }
            fn null() -> Arg {
                Arg::$variant(None)
            }
        }
    };
}

into_arg!(bool, Bool, |v| v);
into_arg!(i64, Int, |v| v);
into_arg!(i32, Int, |v| i64::from(v));
into_arg!(u32, Int, |v| i64::from(v));
into_arg!(f64, Float, |v| v);
into_arg!(String, Text, |v| v);
into_arg!(&str, Text, |v| v.to_owned());
into_arg!(Uuid, Uuid, |v| v);
into_arg!(Value, Json, |v| v);
into_arg!(DateTime<Utc>, Time, |v| v);
into_arg!(Position, Int, |v| v.get());
into_arg!(StreamVersion, Int, |v| v.get());
into_arg!(EventType, Text, |v| v.as_str().to_owned());
into_arg!(StreamType, Text, |v| v.as_str().to_owned());
into_arg!(ErrorCode, Text, |v| v.as_str().to_owned());
into_arg!(EventId, Uuid, |v| v.as_uuid());
into_arg!(StreamId, Uuid, |v| v.as_uuid());
into_arg!(CorrelationId, Uuid, |v| v.as_uuid());
into_arg!(CausationId, Uuid, |v| v.as_uuid());
into_arg!(OrgId, Uuid, |v| v.as_uuid());
into_arg!(UserId, Uuid, |v| v.as_uuid());
into_arg!(WorkflowId, Uuid, |v| v.as_uuid());
into_arg!(InvitationId, Uuid, |v| v.as_uuid());

/// Builds a `Vec<Arg>` from values of any [`IntoArg`] type.
///
/// ```
/// let args = cairn_log::args![7_i64, "seven", None::<String>];
/// assert_eq!(args.len(), 3);
/// ```
#[macro_export]
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::sql::IntoArg::into_arg($value)),*]
    };
}

/// The text form of a time on SQLite: RFC 3339 in UTC, as sqlx writes it too, so that
/// values written by either path compare and sort alike.
pub(crate) fn sqlite_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// A type that can be read from a column on either backend.
pub trait DbValue: Sized {
    /// Reads the value of `column` from `row`.
    #[doc(hidden)]
    fn read(row: &Row, column: &str) -> Result<Self, DbError>;
}

/// Reads a SQLite value (as the writer's own connection returns it) as `T`.
trait FromDirect: Sized {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String>;
}

fn wrong_type(value: &rusqlite::types::Value, wanted: &str) -> String {
    format!("expected {wanted}, found {:?}", value.data_type())
}

impl FromDirect for i64 {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Integer(v) => Ok(*v),
            other => Err(wrong_type(other, "an integer")),
        }
    }
}

impl FromDirect for i32 {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        let wide = i64::from_direct(value)?;
        i32::try_from(wide).map_err(|e| e.to_string())
    }
}

impl FromDirect for f64 {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Real(v) => Ok(*v),
            rusqlite::types::Value::Integer(v) => Ok(*v as f64),
            other => Err(wrong_type(other, "a number")),
        }
    }
}

impl FromDirect for bool {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        i64::from_direct(value).map(|v| v != 0)
    }
}

impl FromDirect for String {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Text(v) => Ok(v.clone()),
            other => Err(wrong_type(other, "text")),
        }
    }
}

impl FromDirect for DateTime<Utc> {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        let text = String::from_direct(value)?;
        parse_sqlite_time(&text)
    }
}

impl FromDirect for Uuid {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        let text = String::from_direct(value)?;
        Uuid::parse_str(&text).map_err(|e| format!("{text:?} is not a UUID: {e}"))
    }
}

/// Parses a time as SQLite stores it: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.fff]` in UTC.
fn parse_sqlite_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|naive| naive.and_utc())
        .map_err(|e| format!("{text:?} is not a time: {e}"))
}

fn direct_value<'r>(
    row: &'r DirectRow,
    column: &str,
) -> Result<&'r rusqlite::types::Value, DbError> {
    row.value(column)
        .ok_or_else(|| DbError::decode(column, "no such column in the result"))
}

/// Types sqlx decodes on both backends as they are stored.
macro_rules! native_value {
    ($($ty:ty),*) => {$(
        impl DbValue for $ty {
            fn read(row: &Row, column: &str) -> Result<Self, DbError> {
                match row {
                    Row::Postgres(row) => Ok(row.try_get::<$ty, _>(column)?),
                    Row::Direct(row) => <$ty as FromDirect>::from_direct(direct_value(row, column)?)
                        .map_err(|reason| DbError::decode(column, reason)),
                }
            }
        }

        impl DbValue for Option<$ty> {
            fn read(row: &Row, column: &str) -> Result<Self, DbError> {
                match row {
                    Row::Postgres(row) => Ok(row.try_get::<Option<$ty>, _>(column)?),
                    Row::Direct(row) => match direct_value(row, column)? {
                        rusqlite::types::Value::Null => Ok(None),
                        value => <$ty as FromDirect>::from_direct(value)
                            .map(Some)
                            .map_err(|reason| DbError::decode(column, reason)),
                    },
                }
            }
        }
    )*};
}

native_value!(i64, i32, f64, bool, String);

impl DbValue for DateTime<Utc> {
    fn read(row: &Row, column: &str) -> Result<Self, DbError> {
        Option::<DateTime<Utc>>::read(row, column)?
            .ok_or_else(|| DbError::decode(column, "unexpected NULL"))
    }
}

impl DbValue for Option<DateTime<Utc>> {
    fn read(row: &Row, column: &str) -> Result<Self, DbError> {
        match row {
            Row::Postgres(row) => pg_time(row, column),
            Row::Direct(row) => match direct_value(row, column)? {
                rusqlite::types::Value::Null => Ok(None),
                value => DateTime::<Utc>::from_direct(value)
                    .map(Some)
                    .map_err(|reason| DbError::decode(column, reason)),
            },
        }
    }
}

/// A `timestamptz` read with checked arithmetic: the driver adds the stored
/// microseconds to PostgreSQL's epoch unchecked, and panics on `infinity` or on a time
/// past chrono's range, which only a hand-edited row holds. Such a row is an error
/// that names the column instead.
fn pg_time(row: &PgRow, column: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    use sqlx::postgres::PgValueFormat;
    use sqlx::{Row as _, TypeInfo as _, ValueRef as _};
    let raw = row.try_get_raw(column)?;
    if raw.is_null() {
        return Ok(None);
    }
    // Anything but a binary timestamptz goes through the driver, which checks the type.
    if raw.format() != PgValueFormat::Binary || raw.type_info().name() != "TIMESTAMPTZ" {
        return Ok(row.try_get::<Option<DateTime<Utc>>, _>(column)?);
    }
    let bytes = raw
        .as_bytes()
        .map_err(|e| DbError::decode(column, e.to_string()))?;
    let micros = <[u8; 8]>::try_from(bytes)
        .map(i64::from_be_bytes)
        .map_err(|_| DbError::decode(column, "a timestamptz is 8 bytes"))?;
    let epoch = DateTime::<Utc>::from_timestamp(946_684_800, 0)
        .ok_or_else(|| DbError::decode(column, "PostgreSQL's epoch"))?;
    epoch
        .checked_add_signed(chrono::TimeDelta::microseconds(micros))
        .map(Some)
        .ok_or_else(|| {
            let what = match micros {
                i64::MAX => "infinity".to_owned(),
                i64::MIN => "-infinity".to_owned(),
                _ => format!("{micros} µs from 2000-01-01"),
            };
            DbError::decode(column, format!("{what} is not a time cairn can read"))
        })
}

impl DbValue for Uuid {
    fn read(row: &Row, column: &str) -> Result<Self, DbError> {
        Option::<Uuid>::read(row, column)?.ok_or_else(|| DbError::decode(column, "unexpected NULL"))
    }
}

impl DbValue for Option<Uuid> {
    fn read(row: &Row, column: &str) -> Result<Self, DbError> {
        match row {
            // UUIDs are hyphenated text on SQLite.
            Row::Postgres(row) => Ok(row.try_get::<Option<Uuid>, _>(column)?),
            Row::Direct(row) => match direct_value(row, column)? {
                rusqlite::types::Value::Null => Ok(None),
                value => Uuid::from_direct(value)
                    .map(Some)
                    .map_err(|reason| DbError::decode(column, reason)),
            },
        }
    }
}

macro_rules! id_value {
    ($($ty:ty),*) => {$(
        impl DbValue for $ty {
            fn read(row: &Row, column: &str) -> Result<Self, DbError> {
                Uuid::read(row, column).map(<$ty>::from_uuid)
            }
        }

        impl DbValue for Option<$ty> {
            fn read(row: &Row, column: &str) -> Result<Self, DbError> {
                Option::<Uuid>::read(row, column).map(|uuid| uuid.map(<$ty>::from_uuid))
            }
        }
    )*};
}

id_value!(
    EventId,
    StreamId,
    CorrelationId,
    CausationId,
    OrgId,
    UserId,
    WorkflowId,
    InvitationId
);

/// One result row from either backend.
#[derive(Debug)]
pub enum Row {
    #[doc(hidden)]
    Postgres(PgRow),
    #[doc(hidden)]
    Direct(DirectRow),
}

impl Row {
    /// Reads a column by name.
    pub fn get<T: DbValue>(&self, column: &str) -> Result<T, DbError> {
        T::read(self, column)
    }

    /// Reads a JSON column (text on SQLite, `jsonb` on PostgreSQL).
    pub fn get_json(&self, column: &str) -> Result<Value, DbError> {
        self.get_json_opt(column)?
            .ok_or_else(|| DbError::decode(column, "unexpected NULL"))
    }

    /// Reads a nullable JSON column.
    pub fn get_json_opt(&self, column: &str) -> Result<Option<Value>, DbError> {
        match self {
            Row::Postgres(row) => Ok(row
                .try_get::<Option<Json<Value>>, _>(column)?
                .map(|json| json.0)),
            Row::Direct(row) => match direct_value(row, column)? {
                rusqlite::types::Value::Null => Ok(None),
                rusqlite::types::Value::Text(text) => serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| DbError::decode(column, format!("not JSON: {e}"))),
                other => Err(DbError::decode(column, wrong_type(other, "JSON text"))),
            },
        }
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<String> {
        use sqlx::Column as _;
        match self {
            Row::Postgres(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
            Row::Direct(row) => row.columns().to_vec(),
        }
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_postgres(sql: &Sql, args: Vec<Arg>) -> PgQuery<'static> {
    let mut query = match sql.for_sqlx() {
        SqlxText::Literal(text) => sqlx::query::<Postgres>(text),
        SqlxText::Built(text) => sqlx::query::<Postgres>(text),
    };
    for arg in args {
        query = match arg {
            Arg::Bool(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Float(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Uuid(v) => query.bind(v),
            Arg::Json(v) => query.bind(v.map(Json)),
            Arg::Time(v) => query.bind(v),
        };
    }
    query
}

/// What a transaction's statements did, for the log writer: whether a unit of work
/// wrote anything (or only read), and whether any statement failed.
#[derive(Debug, Default)]
pub(crate) struct Track {
    pub(crate) writes: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Failures undone by rolling back to a savepoint opened before them.
    pub(crate) cleared: AtomicU64,
}

impl Track {
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn poisoned(&self) -> bool {
        self.failures() > self.cleared.load(Ordering::Relaxed)
    }

    /// Every failure so far is undone.
    pub(crate) fn clear(&self) {
        self.cleared.store(self.failures(), Ordering::Relaxed);
    }
}

/// A savepoint opened on a [`Conn`], to roll back to.
#[derive(Debug, Clone, Copy)]
#[must_use = "a savepoint is released or rolled back"]
pub struct SavepointMark {
    /// Whether no failure was pending when it opened: rolling back then undoes every
    /// failure since.
    healthy: bool,
}

#[derive(Debug)]
pub(crate) enum ConnInner<'c> {
    Postgres(&'c mut PgConnection),
    Direct(&'c mut rusqlite::Connection),
}

/// A borrowed connection of either backend: the one thing queries run on.
#[derive(Debug)]
pub struct Conn<'c> {
    pub(crate) inner: ConnInner<'c>,
    track: Option<&'c Track>,
    /// Where writes wait to go out together (an optimistic batch on PostgreSQL).
    pipeline: Option<&'c crate::pipeline::Pipeline>,
}

impl<'c> Conn<'c> {
    pub(crate) fn new(inner: ConnInner<'c>, track: Option<&'c Track>) -> Conn<'c> {
        Conn {
            inner,
            track,
            pipeline: None,
        }
    }

    pub(crate) fn with_pipeline(
        mut self,
        pipeline: Option<&'c crate::pipeline::Pipeline>,
    ) -> Conn<'c> {
        self.pipeline = pipeline;
        self
    }

    /// Sends the writes waiting to go out together, and checks their answers.
    pub(crate) async fn send_queued(&mut self) -> Result<(), DbError> {
        if let (Some(pipeline), ConnInner::Postgres(conn)) = (self.pipeline, &mut self.inner)
            && !pipeline.is_empty()
        {
            return pipeline.send(conn, self.track, false).await;
        }
        Ok(())
    }

    /// A shorter-lived borrow of the same connection.
    pub fn reborrow(&mut self) -> Conn<'_> {
        let inner = match &mut self.inner {
            ConnInner::Postgres(conn) => ConnInner::Postgres(conn),
            ConnInner::Direct(conn) => ConnInner::Direct(conn),
        };
        Conn {
            inner,
            track: self.track,
            pipeline: self.pipeline,
        }
    }

    /// The backend this connection talks to.
    pub fn backend(&self) -> Backend {
        match self.inner {
            ConnInner::Direct(_) => Backend::Sqlite,
            ConnInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The PostgreSQL connection, for the log's own statements that bind arrays. Send
    /// what is queued first ([`Conn::send_queued`]).
    pub(crate) fn postgres(&mut self) -> Option<&mut PgConnection> {
        match &mut self.inner {
            ConnInner::Postgres(conn) => Some(conn),
            _ => None,
        }
    }

    fn before(&self, sql: &Sql) {
        if let Some(track) = self.track
            && !sql.reads_only()
        {
            track.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn after<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        if result.is_err()
            && let Some(track) = self.track
        {
            track.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Opens a savepoint named `name` (one of cairn's own, never input).
    pub async fn savepoint(&mut self, name: &'static str) -> Result<SavepointMark, DbError> {
        let healthy = self.track.is_none_or(|track| !track.poisoned());
        self.execute_script(Sql::built(format!("SAVEPOINT {name}")))
            .await?;
        Ok(SavepointMark { healthy })
    }

    /// Keeps what was done since the savepoint.
    pub async fn release_savepoint(
        &mut self,
        name: &'static str,
        _mark: SavepointMark,
    ) -> Result<(), DbError> {
        self.execute_script(Sql::built(format!("RELEASE SAVEPOINT {name}")))
            .await
    }

    /// Undoes what was done since the savepoint, a failed statement included.
    pub async fn rollback_to_savepoint(
        &mut self,
        name: &'static str,
        mark: SavepointMark,
    ) -> Result<(), DbError> {
        self.execute_script(Sql::built(format!(
            "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
        )))
        .await?;
        if mark.healthy
            && let Some(track) = self.track
        {
            track.clear();
        }
        Ok(())
    }

    /// Runs a statement; returns the number of rows it changed.
    pub async fn execute(&mut self, sql: impl Into<Sql>, args: Vec<Arg>) -> Result<u64, DbError> {
        let sql = sql.into();
        self.before(&sql);
        if let (Some(pipeline), ConnInner::Postgres(_)) = (self.pipeline, &self.inner)
            && pipeline.push(&sql, &args)
        {
            // Reported as one row changed; checked when the queue goes out.
            return Ok(1);
        }
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => bind_postgres(&sql, args)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected())
                .map_err(DbError::from),
            ConnInner::Direct(conn) => direct::execute(conn, sql.as_str(), args),
        };
        self.after(result)
    }

    /// Runs statements that take no arguments, possibly several separated by `;`.
    pub async fn execute_script(&mut self, sql: impl Into<Sql>) -> Result<(), DbError> {
        let sql = sql.into();
        self.before(&sql);
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => match sql.for_sqlx() {
                SqlxText::Literal(text) => sqlx::raw_sql(text).execute(&mut **conn).await,
                SqlxText::Built(text) => sqlx::raw_sql(text).execute(&mut **conn).await,
            }
            .map(drop)
            .map_err(DbError::from),
            ConnInner::Direct(conn) => conn.execute_batch(sql.as_str()).map_err(DbError::from),
        };
        self.after(result)
    }

    /// Runs a query and returns every row.
    pub async fn fetch_all(
        &mut self,
        sql: impl Into<Sql>,
        args: Vec<Arg>,
    ) -> Result<Vec<Row>, DbError> {
        let sql = sql.into();
        self.before(&sql);
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => bind_postgres(&sql, args)
                .fetch_all(&mut **conn)
                .await
                .map(|rows| rows.into_iter().map(Row::Postgres).collect())
                .map_err(DbError::from),
            ConnInner::Direct(conn) => direct::fetch(conn, sql.as_str(), args, None)
                .map(|rows| rows.into_iter().map(Row::Direct).collect()),
        };
        self.after(result)
    }

    /// Runs a query and returns its first row, if any.
    pub async fn fetch_optional(
        &mut self,
        sql: impl Into<Sql>,
        args: Vec<Arg>,
    ) -> Result<Option<Row>, DbError> {
        let sql = sql.into();
        self.before(&sql);
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => bind_postgres(&sql, args)
                .fetch_optional(&mut **conn)
                .await
                .map(|row| row.map(Row::Postgres))
                .map_err(DbError::from),
            ConnInner::Direct(conn) => direct::fetch(conn, sql.as_str(), args, Some(1))
                .map(|rows| rows.into_iter().next().map(Row::Direct)),
        };
        self.after(result)
    }

    /// Runs a query that must return exactly one row.
    pub async fn fetch_one(&mut self, sql: impl Into<Sql>, args: Vec<Arg>) -> Result<Row, DbError> {
        let sql = sql.into();
        let text = sql.as_str().to_owned();
        self.fetch_optional(sql, args)
            .await?
            .ok_or_else(|| DbError::decode("(row)", format!("the query returned no row: {text}")))
    }
}

/// Picks the statement text for the backend at hand, where the dialects differ.
pub const fn dialect(
    backend: Backend,
    sqlite: &'static str,
    postgres: &'static str,
) -> &'static str {
    match backend {
        Backend::Sqlite => sqlite,
        Backend::Postgres => postgres,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_count_as_reads() {
        assert!(Sql::from("SELECT 1").reads_only());
        assert!(Sql::from("  select x FROM t").reads_only());
        assert!(!Sql::from("INSERT INTO t VALUES (1)").reads_only());
        assert!(!Sql::from("WITH x AS (DELETE FROM t RETURNING *) SELECT 1").reads_only());
        assert!(!Sql::from("SEL").reads_only());
    }

    #[test]
    fn sqlite_times_round_trip_in_both_forms() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T08:45:29.123456Z")
            .expect("a time")
            .with_timezone(&Utc);
        assert_eq!(parse_sqlite_time(&sqlite_time(&at)), Ok(at));
        assert_eq!(parse_sqlite_time("2026-11-30 08:45:29.123456"), Ok(at));
        assert!(parse_sqlite_time("yesterday").is_err());
    }
}
