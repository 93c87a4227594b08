//! SQLite, the embedded default: every statement runs in the calling thread.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and hands each
//! statement to it and each result back, two thread wake-ups a statement. The log
//! writer runs many small statements per event (the handlers' projection writes), so
//! its connection is opened here and runs them where it is: a statement costs what
//! SQLite takes to run it. Readers get read-only connections of the same kind from a
//! small pool of their own ([`ReadPool`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use rusqlite::Connection;
use rusqlite::OpenFlags;
use rusqlite::types::Value as SqliteValue;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{DbError, DbErrorKind};
use crate::value::Arg;

/// Statements kept prepared per connection: every statement text the handlers and the
/// log use, with room to spare.
const STATEMENT_CACHE: usize = 512;

/// Opens the database file for writing, creating it if missing, with the settings every
/// connection to it uses: WAL, every commit synced (`synchronous=FULL`), foreign keys.
pub(crate) fn open(path: &Path) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_handler(Some(wait_for_the_lock))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %mode, "SQLite did not switch to WAL");
    }
    // Every commit reaches the disk: an acknowledged event is never lost. The page
    // cache holds the hot end of the log and the projections (64 MiB); reads past it
    // are mapped rather than copied. What is deleted or overwritten (an erased
    // person's projection rows, a destroyed data key) is zeroed on its page, not left
    // in free space.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -65536; PRAGMA secure_delete = ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Opens the database file for reading only (and for temporary tables, which live
/// apart from it).
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Waits for another process's write lock in short steps, for at most ten seconds.
/// SQLite's own handler sleeps ever longer between tries; a writer that commits batch
/// after batch would then keep a second process out almost for good.
fn wait_for_the_lock(tries: i32) -> bool {
    const STEP: Duration = Duration::from_micros(250);
    const TRIES: i32 = 40_000;
    if tries >= TRIES {
        return false;
    }
    std::thread::sleep(STEP);
    true
}

/// One row read on a direct connection.
#[derive(Debug, Clone)]
pub(crate) struct SqliteRow {
    columns: Arc<[String]>,
    values: Vec<SqliteValue>,
}

impl SqliteRow {
    pub(crate) fn value(&self, column: &str) -> Option<&SqliteValue> {
        let index = self.columns.iter().position(|name| name == column)?;
        self.values.get(index)
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }
}

fn to_sqlite(arg: Arg) -> SqliteValue {
    match arg {
        Arg::Bool(v) => v.map_or(SqliteValue::Null, |v| SqliteValue::Integer(i64::from(v))),
        Arg::Int(v) => v.map_or(SqliteValue::Null, SqliteValue::Integer),
        Arg::Float(v) => v.map_or(SqliteValue::Null, SqliteValue::Real),
        Arg::Text(v) => v.map_or(SqliteValue::Null, SqliteValue::Text),
        Arg::Uuid(v) => v.map_or(SqliteValue::Null, |uuid| {
            SqliteValue::Text(uuid.hyphenated().to_string())
        }),
        Arg::Json(v) => v.map_or(SqliteValue::Null, |json| {
            SqliteValue::Text(json.to_string())
        }),
        Arg::Time(v) => v.map_or(SqliteValue::Null, |at| SqliteValue::Text(sqlite_time(&at))),
        // An array is bound as JSON text, for `json_each`.
        Arg::Array(_, values) => SqliteValue::Text(
            serde_json::Value::Array(values.into_iter().map(json_element).collect()).to_string(),
        ),
    }
}

/// An array's element as JSON.
fn json_element(arg: Arg) -> serde_json::Value {
    use serde_json::Value as J;
    match arg {
        Arg::Bool(v) => v.map_or(J::Null, J::from),
        Arg::Int(v) => v.map_or(J::Null, J::from),
        Arg::Float(v) => v.map_or(J::Null, J::from),
        Arg::Text(v) => v.map_or(J::Null, J::from),
        Arg::Uuid(v) => v.map_or(J::Null, |uuid| J::from(uuid.hyphenated().to_string())),
        Arg::Json(v) => v.unwrap_or(J::Null),
        Arg::Time(v) => v.map_or(J::Null, |at| J::from(sqlite_time(&at))),
        Arg::Array(_, values) => J::Array(values.into_iter().map(json_element).collect()),
    }
}

/// Binds `$N` placeholders by their number, as sqlx does: SQLite numbers named
/// parameters in order of appearance, which need not be the order of `N`.
fn bind(statement: &mut rusqlite::Statement<'_>, sql: &str, args: Vec<Arg>) -> Result<(), DbError> {
    let mut values: Vec<Option<SqliteValue>> =
        args.into_iter().map(|arg| Some(to_sqlite(arg))).collect();
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$').or_else(|| name.strip_prefix('?')))
            .and_then(|digits| digits.parse::<usize>().ok())
            .ok_or_else(|| {
                DbError::decode(
                    format!("parameter {index}"),
                    format!("statement parameters must be written $1, $2, …: {sql}"),
                )
            })?;
        let value = values
            .get_mut(number.wrapping_sub(1))
            .and_then(Option::take)
            .ok_or_else(|| {
                DbError::decode(
                    format!("${number}"),
                    format!("no argument was given for it: {sql}"),
                )
            })?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Runs a statement; returns the rows it changed.
pub(crate) fn execute(conn: &mut Connection, sql: &str, args: Vec<Arg>) -> Result<u64, DbError> {
    let changes = {
        let mut statement = conn.prepare_cached(sql)?;
        bind(&mut statement, sql, args)?;
        let reads_only = statement.readonly();
        let mut rows = statement.raw_query();
        while rows.next()?.is_some() {}
        !reads_only
    };
    Ok(if changes { conn.changes() } else { 0 })
}

/// Runs statements that take no arguments, possibly several separated by `;`.
pub(crate) fn execute_script(conn: &mut Connection, sql: &str) -> Result<(), DbError> {
    Ok(conn.execute_batch(sql)?)
}

/// Runs a query and returns its rows, at most `limit` of them.
pub(crate) fn fetch(
    conn: &mut Connection,
    sql: &str,
    args: Vec<Arg>,
    limit: Option<usize>,
) -> Result<Vec<SqliteRow>, DbError> {
    let mut statement = conn.prepare_cached(sql)?;
    bind(&mut statement, sql, args)?;
    let columns: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let n_columns = columns.len();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(n_columns);
        for index in 0..n_columns {
            values.push(row.get::<_, SqliteValue>(index)?);
        }
        out.push(SqliteRow {
            columns: columns.clone(),
            values,
        });
        if limit.is_some_and(|limit| out.len() >= limit) {
            break;
        }
    }
    Ok(out)
}

/// Read-only connections to the database file, run in the calling thread like the
/// writer's: a read costs what SQLite takes to run it, with no hand-off to another
/// thread and back. A read holds a tokio worker for as long as its statements run,
/// which for the pages cairn reads (a few hundred rows at most) is microseconds.
#[derive(Debug)]
pub(crate) struct ReadPool {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    pub(crate) fn new(path: &Path, max_connections: u32) -> ReadPool {
        ReadPool {
            path: path.to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(max_connections.max(1)).unwrap_or(1),
            )),
        }
    }

    /// A connection, waiting for one when all are in use.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<ReadLease, DbError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DbError::WriterStopped)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = open_read_only(&self.path)?;
                let _ = &conn;
                conn
            }
        };
        Ok(ReadLease {
            conn: Some(std::sync::Mutex::new(conn)),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Closes the idle connections and refuses new leases.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// A read connection, back to its pool when dropped.
#[derive(Debug)]
pub(crate) struct ReadLease {
    /// In a mutex only so that a lease can be shared between threads; it is only
    /// ever reached through `&mut`, which takes no lock.
    conn: Option<std::sync::Mutex<Connection>>,
    pool: Arc<ReadPool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ReadLease {
    pub(crate) fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let conn = conn
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A read transaction left open would pin an old snapshot of the log.
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return;
        }
        self.pool
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}

/// The text form of a time on SQLite: RFC 3339 in UTC, as sqlx writes it too, so that
/// values written by either path compare and sort alike.
pub(crate) fn sqlite_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Reads a SQLite value (as the writer's own connection returns it) as `T`.
pub(crate) trait FromDirect: Sized {
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
    row: &'r SqliteRow,
    column: &str,
) -> Result<&'r rusqlite::types::Value, DbError> {
    row.value(column)
        .ok_or_else(|| DbError::decode(column, "no such column in the result"))
}

/// Reads a column as `T`.
pub(crate) fn get<T: FromDirect>(row: &SqliteRow, column: &str) -> Result<T, DbError> {
    T::from_direct(direct_value(row, column)?).map_err(|reason| DbError::decode(column, reason))
}

/// Reads a nullable column as `T`.
pub(crate) fn get_opt<T: FromDirect>(row: &SqliteRow, column: &str) -> Result<Option<T>, DbError> {
    match direct_value(row, column)? {
        SqliteValue::Null => Ok(None),
        value => T::from_direct(value)
            .map(Some)
            .map_err(|reason| DbError::decode(column, reason)),
    }
}

/// Reads a nullable JSON column (text on SQLite).
pub(crate) fn json_opt(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<serde_json::Value>, DbError> {
    match direct_value(row, column)? {
        SqliteValue::Null => Ok(None),
        SqliteValue::Text(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| DbError::decode(column, format!("not JSON: {e}"))),
        other => Err(DbError::decode(column, wrong_type(other, "JSON text"))),
    }
}

/// A read transaction on one of SQLite's read connections: one snapshot of the file
/// for every statement in it. Ended (rolled back) when the lease goes home.
pub(crate) struct DirectRead {
    pub(crate) lease: ReadLease,
}

impl DirectRead {
    pub(crate) fn begin(mut lease: ReadLease) -> Result<DirectRead, DbError> {
        lease.conn().execute_batch("BEGIN DEFERRED")?;
        Ok(DirectRead { lease })
    }
}

/// A transaction on the SQLite writer's connection, lent by the writer (it goes home
/// when the transaction ends) or run by the writer itself.
pub(crate) struct DirectTx {
    /// In a mutex only so that a transaction can be shared between threads (a step's
    /// context is borrowed across awaits); it is only ever reached through `&mut`, which
    /// takes no lock.
    conn: Option<std::sync::Mutex<rusqlite::Connection>>,
    home: Option<tokio::sync::oneshot::Sender<rusqlite::Connection>>,
    open: bool,
}

impl DirectTx {
    /// Begins a transaction that takes SQLite's write lock at once. If it cannot, the
    /// connection goes home (or, without a home, is closed).
    pub(crate) fn begin(
        conn: rusqlite::Connection,
        home: Option<tokio::sync::oneshot::Sender<rusqlite::Connection>>,
    ) -> Result<DirectTx, DbError> {
        let mut tx = DirectTx {
            conn: Some(std::sync::Mutex::new(conn)),
            home,
            open: false,
        };
        tx.conn().execute_batch("BEGIN IMMEDIATE")?;
        tx.open = true;
        Ok(tx)
    }

    pub(crate) fn conn(&mut self) -> &mut rusqlite::Connection {
        self.conn
            .as_mut()
            .expect("a direct transaction holds its connection until it ends")
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn finish(&mut self, statement: &str) -> Result<(), DbError> {
        self.open = false;
        let result = self.conn().execute_batch(statement).map_err(DbError::from);
        if result.is_err() && !self.conn().is_autocommit() {
            // A COMMIT that failed (the disk is full, say) leaves the transaction open.
            let _ = self.conn().execute_batch("ROLLBACK");
        }
        result
    }

    /// Takes the connection back, rolling back what is still open.
    pub(crate) fn into_connection(mut self) -> rusqlite::Connection {
        if self.open {
            self.open = false;
            let _ = self.conn().execute_batch("ROLLBACK");
        }
        self.home = None;
        self.conn
            .take()
            .expect("a direct transaction holds its connection until it ends")
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DirectTx {
    /// Ends the transaction with `statement`; hands the connection back unless it
    /// was lent (then it goes home).
    pub(crate) fn end(mut self, statement: &str) -> (Result<(), DbError>, Option<Connection>) {
        let result = self.finish(statement);
        if self.home.is_some() {
            return (result, None);
        }
        (result, Some(self.into_connection()))
    }
}

impl Drop for DirectTx {
    fn drop(&mut self) {
        if self.conn.is_some() && self.open {
            let _ = self.conn().execute_batch("ROLLBACK");
        }
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            // The writer waits for its connection; if it is gone, so is the database.
            let _ = home.send(
                conn.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }
}

fn sqlite_kind(primary_code: i32) -> DbErrorKind {
    use rusqlite::ffi;
    match primary_code {
        ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => DbErrorKind::Conflict,
        ffi::SQLITE_FULL
        | ffi::SQLITE_IOERR
        | ffi::SQLITE_CANTOPEN
        | ffi::SQLITE_READONLY
        | ffi::SQLITE_NOMEM => DbErrorKind::Unavailable,
        _ => DbErrorKind::Failed,
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> DbError {
        let (kind, code) = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => (
                sqlite_kind(failure.extended_code & 0xff),
                Some(failure.extended_code.to_string()),
            ),
            _ => (DbErrorKind::Failed, None),
        };
        DbError::from_cause(kind, Box::new(error), code)
    }
}

/// The writer's connection, lent to a caller of `Db::begin` or `Db::pause_writer`, and
/// taken back when the caller is done.
#[derive(Debug)]
pub(crate) struct Lent {
    pub(crate) conn: Connection,
    pub(crate) home: tokio::sync::oneshot::Sender<Connection>,
}

impl Lent {
    /// Begins a transaction on the lent connection; it goes home when that ends.
    pub(crate) fn begin(self) -> Result<DirectTx, DbError> {
        DirectTx::begin(self.conn, Some(self.home))
    }
}

/// Lends the writer's connection (`slot`, reopened from `path` if it was lost) until
/// the borrower sends it back.
pub(crate) async fn lend(
    slot: &mut Option<Connection>,
    path: &Path,
    reply: tokio::sync::oneshot::Sender<Lent>,
) {
    let connection = match slot.take() {
        Some(connection) => connection,
        None => match open(path) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::error!(error = %error, "the SQLite writer cannot reopen its connection");
                return;
            }
        },
    };
    let (home, back) = tokio::sync::oneshot::channel();
    if let Err(Lent {
        conn: connection, ..
    }) = reply.send(Lent {
        conn: connection,
        home,
    }) {
        *slot = Some(connection);
        return;
    }
    // Whoever borrowed it sends it back when done (or drops it if it panicked: it is
    // reopened then).
    *slot = back.await.ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    #[test]
    fn sqlite_times_round_trip_in_both_forms() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T08:45:29.123456Z")
            .expect("a time")
            .with_timezone(&Utc);
        assert_eq!(parse_sqlite_time(&sqlite_time(&at)), Ok(at));
        assert_eq!(parse_sqlite_time("2026-11-30 08:45:29.123456"), Ok(at));
        assert!(parse_sqlite_time("yesterday").is_err());
    }

    #[test]
    fn sqlite_codes_say_what_to_do() {
        use crate::error::DbErrorKind;
        assert_eq!(
            sqlite_kind(rusqlite::ffi::SQLITE_BUSY),
            DbErrorKind::Conflict
        );
        assert_eq!(
            sqlite_kind(rusqlite::ffi::SQLITE_FULL),
            DbErrorKind::Unavailable
        );
        assert_eq!(
            sqlite_kind(rusqlite::ffi::SQLITE_CONSTRAINT),
            DbErrorKind::Failed
        );
    }
}
