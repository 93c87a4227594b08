//! SQLite in the calling thread: the log writer's own connection.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and hands each
//! statement to it and each result back, two thread wake-ups a statement. The log
//! writer runs many small statements per event (the handlers' projection writes), so it
//! opens its connection here instead and runs them where it is: a statement costs what
//! SQLite takes to run it. Readers keep using sqlx's pool.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value as SqliteValue;
use rusqlite::{Connection, OpenFlags};

use crate::error::DbError;
use crate::sql::{Arg, sqlite_time};

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
    // are mapped rather than copied.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -65536;",
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
pub struct DirectRow {
    columns: Arc<[String]>,
    values: Vec<SqliteValue>,
}

impl DirectRow {
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

/// Runs a query and returns its rows, at most `limit` of them.
pub(crate) fn fetch(
    conn: &mut Connection,
    sql: &str,
    args: Vec<Arg>,
    limit: Option<usize>,
) -> Result<Vec<DirectRow>, DbError> {
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
        out.push(DirectRow {
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
