//! The backends: SQLite ([`sqlite`]) and PostgreSQL ([`postgres`]), the only modules
//! that know a driver, behind one [`Conn`] and one [`Row`] that callers cannot tell
//! apart.
//!
//! A [`Conn`] runs statements on a PostgreSQL connection (through sqlx), or on a
//! SQLite connection that runs each statement in the calling thread with no hand-off
//! at all (the writer's, or a reader's). A [`Transaction`] is one backend's
//! transaction, begun and ended as that backend needs.

pub(crate) mod postgres;
pub(crate) mod sqlite;
mod track;

pub(crate) use track::Track;

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use cairn_types::{
    CausationId, CorrelationId, EventId, InvitationId, OrgId, StreamId, UserId, WorkflowId,
};

use crate::error::DbError;
use crate::value::{Arg, Backend, Columns, Sql};

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
    Postgres(&'c mut postgres::PgConnection),
    Sqlite(&'c mut sqlite::Connection),
}

/// A borrowed connection of either backend: the one thing queries run on.
#[derive(Debug)]
pub struct Conn<'c> {
    pub(crate) inner: ConnInner<'c>,
    track: Option<&'c Track>,
    /// Where writes wait to go out together (an optimistic batch on PostgreSQL).
    pipeline: Option<&'c postgres::Pipeline>,
}

impl<'c> Conn<'c> {
    pub(crate) fn new(inner: ConnInner<'c>, track: Option<&'c Track>) -> Conn<'c> {
        Conn {
            inner,
            track,
            pipeline: None,
        }
    }

    pub(crate) fn with_pipeline(mut self, pipeline: Option<&'c postgres::Pipeline>) -> Conn<'c> {
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
            ConnInner::Sqlite(conn) => ConnInner::Sqlite(conn),
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
            ConnInner::Sqlite(_) => Backend::Sqlite,
            ConnInner::Postgres(_) => Backend::Postgres,
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
            && pipeline.push(&sql, &args, 1)
        {
            // Reported as one row changed; checked when the queue goes out.
            return Ok(1);
        }
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => postgres::execute(conn, &sql, args).await,
            ConnInner::Sqlite(conn) => sqlite::execute(conn, sql.as_str(), args),
        };
        self.after(result)
    }

    /// Runs a write that must change exactly `rows` rows (a write of many rows at
    /// once), and fails when it changes another number. Queued like any write in the
    /// PostgreSQL writer's batch, and checked when the queue goes out.
    pub async fn execute_changing(
        &mut self,
        sql: impl Into<Sql>,
        args: Vec<Arg>,
        rows: u64,
    ) -> Result<(), DbError> {
        let sql = sql.into();
        self.before(&sql);
        if let (Some(pipeline), ConnInner::Postgres(_)) = (self.pipeline, &self.inner)
            && pipeline.push(&sql, &args, rows)
        {
            return Ok(());
        }
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => postgres::execute(conn, &sql, args).await,
            ConnInner::Sqlite(conn) => sqlite::execute(conn, sql.as_str(), args),
        };
        let result = result.and_then(|changed| match changed == rows {
            true => Ok(()),
            false => Err(DbError::decode(
                "(write)",
                format!("the write changed {changed} rows, not {rows}"),
            )),
        });
        self.after(result)
    }

    /// Runs statements that take no arguments, possibly several separated by `;`.
    pub async fn execute_script(&mut self, sql: impl Into<Sql>) -> Result<(), DbError> {
        let sql = sql.into();
        self.before(&sql);
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => postgres::execute_script(conn, &sql).await,
            ConnInner::Sqlite(conn) => sqlite::execute_script(conn, sql.as_str()),
        };
        self.after(result)
    }

    /// Writes rows of several tables and runs `then` (a statement that changes one row,
    /// such as the log's head), and on PostgreSQL notifies [`postgres::NOTIFY_CHANNEL`]
    /// of `notify`: in one statement on PostgreSQL, a statement per row on SQLite
    /// (where there is no round trip to save, and no other process to notify).
    pub(crate) async fn write_rows(
        &mut self,
        tables: Vec<Columns>,
        then: Option<(&'static str, Vec<Arg>)>,
        notify: Option<cairn_types::Position>,
    ) -> Result<(), DbError> {
        if tables.is_empty() && then.is_none() && notify.is_none() {
            return Ok(());
        }
        if let ConnInner::Sqlite(_) = self.inner {
            for table in tables {
                let (sql, rows) = table.each();
                let sql = Sql::built(sql);
                for args in rows {
                    self.execute(sql.clone(), args).await?;
                }
            }
            if let Some((sql, args)) = then {
                self.execute(sql, args).await?;
            }
            return Ok(());
        }
        let (sql, args) = postgres::write_rows(tables, then, notify);
        self.execute_unqueued(Sql::built(sql), args).await.map(drop)
    }

    /// Runs a statement now, never queued: after sending what is queued.
    async fn execute_unqueued(&mut self, sql: Sql, args: Vec<Arg>) -> Result<u64, DbError> {
        self.before(&sql);
        self.send_queued().await?;
        let result = match &mut self.inner {
            ConnInner::Postgres(conn) => postgres::execute(conn, &sql, args).await,
            ConnInner::Sqlite(conn) => sqlite::execute(conn, sql.as_str(), args),
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
            ConnInner::Postgres(conn) => postgres::fetch_all(conn, &sql, args).await.map(|rows| {
                rows.into_iter()
                    .map(|row| Row(RowInner::Postgres(row)))
                    .collect()
            }),
            ConnInner::Sqlite(conn) => sqlite::fetch(conn, sql.as_str(), args, None).map(|rows| {
                rows.into_iter()
                    .map(|row| Row(RowInner::Sqlite(row)))
                    .collect()
            }),
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
            ConnInner::Postgres(conn) => postgres::fetch_optional(conn, &sql, args)
                .await
                .map(|row| row.map(|row| Row(RowInner::Postgres(row)))),
            ConnInner::Sqlite(conn) => {
                sqlite::fetch(conn, sql.as_str(), args, Some(1)).map(|rows| {
                    rows.into_iter()
                        .next()
                        .map(|row| Row(RowInner::Sqlite(row)))
                })
            }
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

/// One result row from either backend.
#[derive(Debug)]
pub struct Row(RowInner);

#[derive(Debug)]
enum RowInner {
    Postgres(postgres::PgRow),
    Sqlite(sqlite::SqliteRow),
}

impl Row {
    pub(crate) fn postgres(row: postgres::PgRow) -> Row {
        Row(RowInner::Postgres(row))
    }

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
        match &self.0 {
            RowInner::Postgres(row) => postgres::json_opt(row, column),
            RowInner::Sqlite(row) => sqlite::json_opt(row, column),
        }
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<String> {
        match &self.0 {
            RowInner::Postgres(row) => postgres::columns(row),
            RowInner::Sqlite(row) => row.columns().to_vec(),
        }
    }
}

/// A type that can be read from a column on either backend.
pub trait DbValue: Sized {
    /// Reads the value of `column` from `row`.
    #[doc(hidden)]
    fn read(row: &Row, column: &str) -> Result<Self, DbError>;
}

/// Types read the same way on both backends, as they are stored.
macro_rules! native_value {
    ($($ty:ty),*) => {$(
        impl DbValue for $ty {
            fn read(row: &Row, column: &str) -> Result<Self, DbError> {
                match &row.0 {
                    RowInner::Postgres(row) => postgres::get::<$ty>(row, column),
                    RowInner::Sqlite(row) => sqlite::get::<$ty>(row, column),
                }
            }
        }

        impl DbValue for Option<$ty> {
            fn read(row: &Row, column: &str) -> Result<Self, DbError> {
                match &row.0 {
                    RowInner::Postgres(row) => postgres::get::<Option<$ty>>(row, column),
                    RowInner::Sqlite(row) => sqlite::get_opt::<$ty>(row, column),
                }
            }
        }
    )*};
}

native_value!(i64, i32, f64, bool, String, Uuid);

impl DbValue for DateTime<Utc> {
    fn read(row: &Row, column: &str) -> Result<Self, DbError> {
        Option::<DateTime<Utc>>::read(row, column)?
            .ok_or_else(|| DbError::decode(column, "unexpected NULL"))
    }
}

impl DbValue for Option<DateTime<Utc>> {
    fn read(row: &Row, column: &str) -> Result<Self, DbError> {
        match &row.0 {
            RowInner::Postgres(row) => postgres::time(row, column),
            RowInner::Sqlite(row) => sqlite::get_opt::<DateTime<Utc>>(row, column),
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

/// Opens the SQLite file: the writer's connection first (it creates the file and
/// turns on WAL, which the read-only connections need), then the readers' pool.
pub(crate) fn connect_sqlite(
    path: &std::path::Path,
    max_connections: u32,
) -> Result<(Pools, WriterHome), DbError> {
    let writer = sqlite::open(path)?;
    let readers = std::sync::Arc::new(sqlite::ReadPool::new(path, max_connections));
    Ok((
        Pools::Sqlite {
            readers,
            path: path.to_owned(),
        },
        WriterHome::Sqlite {
            conn: Some(writer),
            path: path.to_owned(),
        },
    ))
}

/// Connects to PostgreSQL: a pool for readers and transactions of their own (in
/// `schema`, created when missing), and the log writer's own connection.
pub(crate) async fn connect_postgres(
    url: &str,
    max_connections: u32,
    schema: Option<&str>,
) -> Result<(Pools, WriterHome), crate::error::ConnectError> {
    let connected = postgres::connect(url, max_connections, schema).await?;
    Ok((
        Pools::Postgres {
            pool: connected.pool,
            target: connected.target,
        },
        WriterHome::Postgres {
            pool: connected.writer,
            prepared: connected.prepared,
        },
    ))
}

/// Connects to another system's PostgreSQL database, read-only (see
/// [`crate::ForeignDb`]).
pub(crate) async fn connect_foreign(
    url: &str,
    max_connections: u32,
) -> Result<Pools, crate::error::ConnectError> {
    let (pool, target) = postgres::connect_foreign(url, max_connections).await?;
    Ok(Pools::Postgres { pool, target })
}

/// One backend's transaction, begun and ended as that backend needs.
pub(crate) enum Transaction {
    /// A read snapshot on one of SQLite's read connections.
    SqliteRead(sqlite::DirectRead),
    /// A transaction on the SQLite writer's connection.
    Sqlite(sqlite::DirectTx),
    /// A transaction on a pooled PostgreSQL connection.
    Postgres(postgres::PoolTx),
    /// The PostgreSQL writer's optimistic batch, begun and committed by hand so that
    /// `BEGIN` and `COMMIT` share round trips with the batch's first and last
    /// statements.
    PgBatch(postgres::PgBatch),
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transaction::SqliteRead(_) => "SqliteRead",
            Transaction::Sqlite(_) => "Sqlite",
            Transaction::Postgres(_) => "Postgres",
            Transaction::PgBatch(_) => "PgBatch",
        })
    }
}

impl Transaction {
    pub(crate) fn conn(&mut self) -> ConnInner<'_> {
        match self {
            Transaction::SqliteRead(tx) => ConnInner::Sqlite(tx.lease.conn()),
            Transaction::Sqlite(tx) => ConnInner::Sqlite(tx.conn()),
            Transaction::Postgres(tx) => ConnInner::Postgres(tx),
            Transaction::PgBatch(tx) => ConnInner::Postgres(tx.conn()),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Transaction::SqliteRead(_) | Transaction::Sqlite(_) => Backend::Sqlite,
            Transaction::Postgres(_) | Transaction::PgBatch(_) => Backend::Postgres,
        }
    }

    /// Ends the transaction with `COMMIT` (or `ROLLBACK`). Hands back the SQLite
    /// writer's own connection, which goes back to the writer whatever the result.
    pub(crate) async fn end(
        self,
        commit: bool,
    ) -> (Result<(), DbError>, Option<sqlite::Connection>) {
        let statement = if commit { "COMMIT" } else { "ROLLBACK" };
        match self {
            Transaction::SqliteRead(mut tx) => {
                (sqlite::execute_script(tx.lease.conn(), statement), None)
            }
            Transaction::Sqlite(tx) => tx.end(statement),
            Transaction::Postgres(tx) => (
                if commit {
                    tx.commit().await.map_err(DbError::from)
                } else {
                    tx.rollback().await.map_err(DbError::from)
                },
                None,
            ),
            Transaction::PgBatch(mut tx) => (tx.end(statement).await, None),
        }
    }
}

/// The connections of one open database, besides the log writer's.
#[derive(Debug)]
pub(crate) enum Pools {
    Sqlite {
        /// Read-only connections; every write goes through the log writer.
        readers: std::sync::Arc<sqlite::ReadPool>,
        path: std::path::PathBuf,
    },
    Postgres {
        pool: postgres::PgPool,
        /// The URL, password hidden.
        target: String,
    },
}

impl Pools {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Where the data lives, for people.
    pub(crate) fn describe(&self) -> String {
        match self {
            Pools::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Pools::Postgres { target, .. } => target.clone(),
        }
    }

    /// A pooled connection for reads outside any transaction.
    pub(crate) async fn reader(&self) -> Result<ReaderConn, DbError> {
        Ok(match self {
            Pools::Sqlite { readers, .. } => ReaderConn::Sqlite(readers.acquire().await?),
            Pools::Postgres { pool, .. } => ReaderConn::Postgres(pool.acquire().await?),
        })
    }

    /// A read-only transaction over one snapshot. With `tenant`, on PostgreSQL it runs
    /// as [`postgres::TENANT_READER_ROLE`] with `cairn.tenant` set to it, so that
    /// row-level security hides every other tenant's rows.
    pub(crate) async fn snapshot(&self, tenant: Option<String>) -> Result<Transaction, DbError> {
        match self {
            Pools::Sqlite { readers, .. } => Ok(Transaction::SqliteRead(
                sqlite::DirectRead::begin(readers.acquire().await?)?,
            )),
            Pools::Postgres { pool, .. } => {
                let mut tx = postgres::begin_pg(pool, Some(postgres::READ_ONLY_SNAPSHOT)).await?;
                if let Some(tenant) = tenant {
                    postgres::scope(&mut tx, tenant).await?;
                }
                Ok(Transaction::Postgres(tx))
            }
        }
    }

    /// A transaction of its own on a pooled connection (PostgreSQL); `None` on SQLite,
    /// where every write transaction is the writer's.
    pub(crate) async fn begin(&self) -> Result<Option<Transaction>, DbError> {
        match self {
            Pools::Sqlite { .. } => Ok(None),
            Pools::Postgres { pool, .. } => Ok(Some(Transaction::Postgres(
                postgres::begin_pg(pool, None).await?,
            ))),
        }
    }

    /// Whether write transactions of one's own borrow the log writer's connection
    /// (SQLite's one writer), rather than a pooled one.
    pub(crate) fn lends_writer(&self) -> bool {
        matches!(self, Pools::Sqlite { .. })
    }

    /// A connection held across transactions: writable, or read-only.
    pub(crate) async fn session(&self, write: bool) -> Result<SessionConn, DbError> {
        Ok(match self {
            Pools::Sqlite { path, .. } => SessionConn::Sqlite(if write {
                sqlite::open(path)?
            } else {
                sqlite::open_read_only(path)?
            }),
            Pools::Postgres { pool, .. } => SessionConn::Postgres(pool.acquire().await?),
        })
    }

    /// Drops a PostgreSQL schema and everything in it; nothing on SQLite.
    pub(crate) async fn drop_schema(&self, schema: &str) -> Result<(), DbError> {
        match self {
            Pools::Sqlite { .. } => Ok(()),
            Pools::Postgres { pool, .. } => postgres::drop_schema(pool, schema).await,
        }
    }

    /// A source of other processes' commits: PostgreSQL's notifications; `None` on
    /// SQLite (or when PostgreSQL cannot listen), where the head is polled.
    pub(crate) async fn listen(&self) -> Option<postgres::Listener> {
        match self {
            Pools::Sqlite { .. } => None,
            Pools::Postgres { pool, .. } => postgres::Listener::start(pool).await,
        }
    }

    /// How often the head is read when nothing is heard.
    pub(crate) fn poll_every(&self) -> std::time::Duration {
        match self {
            Pools::Sqlite { .. } => std::time::Duration::from_millis(100),
            Pools::Postgres { .. } => std::time::Duration::from_secs(1),
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Pools::Sqlite { readers, .. } => readers.close(),
            Pools::Postgres { pool, .. } => pool.close().await,
        }
    }
}

/// A pooled connection for reads.
#[derive(Debug)]
pub(crate) enum ReaderConn {
    Sqlite(sqlite::ReadLease),
    Postgres(postgres::PooledConn),
}

impl ReaderConn {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        let inner = match self {
            ReaderConn::Sqlite(lease) => ConnInner::Sqlite(lease.conn()),
            ReaderConn::Postgres(conn) => ConnInner::Postgres(conn),
        };
        Conn::new(inner, None)
    }
}

/// A connection held across several transactions. Closed, never pooled again, when
/// dropped: whatever it created and any transaction it left open die with it.
#[derive(Debug)]
pub(crate) enum SessionConn {
    Sqlite(sqlite::Connection),
    Postgres(postgres::PooledConn),
}

impl SessionConn {
    pub(crate) fn conn<'c>(&'c mut self, pipeline: Option<&'c postgres::Pipeline>) -> Conn<'c> {
        let inner = match self {
            SessionConn::Sqlite(conn) => ConnInner::Sqlite(conn),
            SessionConn::Postgres(conn) => ConnInner::Postgres(conn),
        };
        Conn::new(inner, None).with_pipeline(pipeline)
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, SessionConn::Postgres(_))
    }

    /// Closes the connection rather than pooling it.
    pub(crate) fn close(self) {
        match self {
            SessionConn::Sqlite(conn) => drop(conn),
            SessionConn::Postgres(conn) => postgres::close(conn),
        }
    }
}

/// Where the log writer's transactions run.
pub(crate) enum WriterHome {
    /// SQLite: the writer's own connection, run in the writer's thread (reopened when
    /// lost).
    Sqlite {
        conn: Option<sqlite::Connection>,
        path: std::path::PathBuf,
    },
    /// PostgreSQL: a pool of one connection, the writer's alone, and the statements
    /// prepared on it for optimistic batches' queued writes.
    Postgres {
        pool: postgres::PgPool,
        prepared: postgres::Prepared,
    },
}

impl WriterHome {
    /// Begins the writer's next transaction: an optimistic batch where the backend
    /// has one (PostgreSQL), with the statements prepared on its connection.
    pub(crate) async fn begin(
        &mut self,
        optimistic: bool,
    ) -> Result<(Transaction, Option<postgres::Prepared>), DbError> {
        match self {
            WriterHome::Sqlite { conn, path } => {
                let connection = match conn.take() {
                    Some(connection) => connection,
                    None => sqlite::open(path)?,
                };
                // A connection that cannot begin is closed, and reopened next time.
                Ok((
                    Transaction::Sqlite(sqlite::DirectTx::begin(connection, None)?),
                    None,
                ))
            }
            WriterHome::Postgres { pool, prepared } => Ok(if optimistic {
                // Begun with the batch's first statement.
                let batch = postgres::PgBatch::new(pool.acquire().await?);
                (Transaction::PgBatch(batch), Some(prepared.clone()))
            } else {
                (
                    Transaction::Postgres(postgres::begin_pg(pool, None).await?),
                    None,
                )
            }),
        }
    }

    /// Takes back the SQLite connection a transaction ended with.
    pub(crate) fn put_back(&mut self, returned: Option<sqlite::Connection>) {
        if let WriterHome::Sqlite { conn, .. } = self {
            *conn = returned;
        }
    }

    /// Forgets the connection (a panic may have left it anywhere).
    pub(crate) fn reset(&mut self) {
        self.put_back(None);
    }

    /// Lends the connection until the borrower's transaction ends (SQLite only).
    pub(crate) async fn lend(&mut self, reply: tokio::sync::oneshot::Sender<sqlite::Lent>) {
        if let WriterHome::Sqlite { conn, path } = self {
            sqlite::lend(conn, path, reply).await;
        }
    }

    pub(crate) fn runs_in_a_thread(&self) -> bool {
        matches!(self, WriterHome::Sqlite { .. })
    }

    pub(crate) async fn close(&mut self) {
        if let WriterHome::Postgres { pool, .. } = self {
            pool.close().await;
        }
    }
}
