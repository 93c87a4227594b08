//! Backend-neutral SQL: one query text, bound and read the same way on both backends.
//!
//! Queries use `$1, $2, …` placeholders, which SQLite and PostgreSQL both accept.
//! Arguments are [`Arg`] values, bound with each backend's own type for the value (a
//! UUID is text on SQLite and `uuid` on PostgreSQL, JSON is text and `jsonb`), so the
//! same statement works against either. Rows come back as [`Row`], read by column name
//! into any type both backends can decode ([`DbValue`]).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::types::Json;
use sqlx::{Decode, Postgres, Row as _, SqlSafeStr, Sqlite, Type};
use uuid::Uuid;

use cairn_types::{
    CausationId, CorrelationId, ErrorCode, EventId, EventType, InvitationId, OrgId, Position,
    StreamId, StreamType, StreamVersion, UserId, WorkflowId,
};

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

/// A type both backends can decode from a column.
pub trait DbValue:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> DbValue for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// One result row from either backend.
#[derive(Debug)]
pub enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    /// Reads a column by name.
    pub fn get<T: DbValue>(&self, column: &str) -> Result<T, sqlx::Error> {
        match self {
            Row::Sqlite(row) => row.try_get(column),
            Row::Postgres(row) => row.try_get(column),
        }
    }

    /// Reads a JSON column (text on SQLite, `jsonb` on PostgreSQL).
    pub fn get_json(&self, column: &str) -> Result<Value, sqlx::Error> {
        self.get::<Json<Value>>(column).map(|json| json.0)
    }

    /// Reads a nullable JSON column.
    pub fn get_json_opt(&self, column: &str) -> Result<Option<Value>, sqlx::Error> {
        self.get::<Option<Json<Value>>>(column)
            .map(|json| json.map(|json| json.0))
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<String> {
        use sqlx::Column as _;
        match self {
            Row::Sqlite(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
            Row::Postgres(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
        }
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_sqlite(sql: impl SqlSafeStr, args: Vec<Arg>) -> SqliteQuery<'static> {
    let mut query = sqlx::query::<Sqlite>(sql);
    for arg in args {
        query = match arg {
            Arg::Bool(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Float(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Uuid(v) => query.bind(v.map(|uuid| uuid.hyphenated().to_string())),
            Arg::Json(v) => query.bind(v.map(Json)),
            Arg::Time(v) => query.bind(v),
        };
    }
    query
}

fn bind_postgres(sql: impl SqlSafeStr, args: Vec<Arg>) -> PgQuery<'static> {
    let mut query = sqlx::query::<Postgres>(sql);
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

/// A borrowed connection of either backend: the one thing queries run on.
#[derive(Debug)]
pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Conn<'_> {
    /// A shorter-lived borrow of the same connection.
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlite(conn) => Conn::Sqlite(conn),
            Conn::Postgres(conn) => Conn::Postgres(conn),
        }
    }

    /// The backend this connection talks to.
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs a statement; returns the number of rows it changed.
    pub async fn execute(
        &mut self,
        sql: impl SqlSafeStr,
        args: Vec<Arg>,
    ) -> Result<u64, sqlx::Error> {
        match self {
            Conn::Sqlite(conn) => Ok(bind_sqlite(sql, args)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
            Conn::Postgres(conn) => Ok(bind_postgres(sql, args)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
        }
    }

    /// Runs a statement that takes no arguments, possibly several separated by `;`.
    pub async fn execute_script(&mut self, sql: impl SqlSafeStr) -> Result<(), sqlx::Error> {
        let script = sqlx::raw_sql(sql);
        match self {
            Conn::Sqlite(conn) => script.execute(&mut **conn).await.map(drop),
            Conn::Postgres(conn) => script.execute(&mut **conn).await.map(drop),
        }
    }

    /// Runs a query and returns every row.
    pub async fn fetch_all(
        &mut self,
        sql: impl SqlSafeStr,
        args: Vec<Arg>,
    ) -> Result<Vec<Row>, sqlx::Error> {
        match self {
            Conn::Sqlite(conn) => Ok(bind_sqlite(sql, args)
                .fetch_all(&mut **conn)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect()),
            Conn::Postgres(conn) => Ok(bind_postgres(sql, args)
                .fetch_all(&mut **conn)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect()),
        }
    }

    /// Runs a query and returns its first row, if any.
    pub async fn fetch_optional(
        &mut self,
        sql: impl SqlSafeStr,
        args: Vec<Arg>,
    ) -> Result<Option<Row>, sqlx::Error> {
        match self {
            Conn::Sqlite(conn) => Ok(bind_sqlite(sql, args)
                .fetch_optional(&mut **conn)
                .await?
                .map(Row::Sqlite)),
            Conn::Postgres(conn) => Ok(bind_postgres(sql, args)
                .fetch_optional(&mut **conn)
                .await?
                .map(Row::Postgres)),
        }
    }

    /// Runs a query that must return exactly one row.
    pub async fn fetch_one(
        &mut self,
        sql: impl SqlSafeStr,
        args: Vec<Arg>,
    ) -> Result<Row, sqlx::Error> {
        match self {
            Conn::Sqlite(conn) => Ok(Row::Sqlite(
                bind_sqlite(sql, args).fetch_one(&mut **conn).await?,
            )),
            Conn::Postgres(conn) => Ok(Row::Postgres(
                bind_postgres(sql, args).fetch_one(&mut **conn).await?,
            )),
        }
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
