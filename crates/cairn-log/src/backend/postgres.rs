//! PostgreSQL, shared by several processes: statements through sqlx, and writes sent
//! together.
//!
//! Writes sent together (an optimistic batch of the log writer) go out in as few round
//! trips as the batch has reads, plus one. A handler's write waits for PostgreSQL's answer before the next one goes out, and
//! on a busy log those round trips, not the work, are what a batch spends its time
//! on. In an optimistic batch (see the log writer) a write is therefore queued
//! instead of sent, and reported as having changed one row, which is what a handler's
//! write to its own projection row does. The queue goes out as one simple-protocol
//! script when the transaction next needs an answer (a read), or at the end of the
//! batch together with the rows of the log and the commit itself. Each statement is
//! prepared once per connection with its parameters' types (as sqlx binds them), and
//! run with its arguments written as literals.
//!
//! The report is checked by PostgreSQL itself: a queued write runs as
//! `WITH w AS (<write> RETURNING 1) SELECT 1 / (count(*) = 1)::int FROM w`, which
//! fails when it changed other than one row. A failure stops the script before its
//! commit; the transaction is rolled back and the writer runs the batch again with
//! savepoints and nothing queued, where every statement is answered as it runs.
//!
//! Literals: every value is a quoted string (`'…'`, quotes doubled), cast by the
//! prepared statement to its parameter's type, or `NULL`. The connection runs with
//! `standard_conforming_strings` on, so a backslash is an ordinary character; a value
//! holding a NUL (which PostgreSQL's text cannot) is never queued.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
pub(crate) use sqlx::postgres::PgPool;
pub(crate) use sqlx::postgres::{PgConnection, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, Row as _};

use super::track::Track;
use crate::error::{DbError, DbErrorKind};
use crate::value::{Arg, ArgType, Sql, SqlText};

/// The statements prepared on the writer's connection, by name. Cleared whenever the
/// pool opens a new connection.
pub(crate) type Prepared = Arc<Mutex<HashSet<String>>>;

/// One statement waiting to go out: the text to prepare (a write wrapped in its
/// check, or the batch's own final statement) and its arguments.
#[derive(Debug)]
struct Queued {
    text: String,
    args: Vec<Arg>,
}

/// Writes queued in one transaction.
#[derive(Debug)]
pub(crate) struct Pipeline {
    queued: Mutex<Vec<Queued>>,
    prepared: Prepared,
    /// The transaction begins with the next script (`BEGIN` goes out with it).
    begin: std::sync::atomic::AtomicBool,
}

/// The write wrapped so that PostgreSQL refuses it unless it changed exactly `rows`
/// rows; `None` for a statement that cannot be wrapped (not a plain write, or one that
/// already returns rows).
fn checked(sql: &str, rows: u64) -> Option<String> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    let head: String = text
        .chars()
        .take(6)
        .collect::<String>()
        .to_ascii_uppercase();
    let writes = ["INSERT", "UPDATE", "DELETE"].contains(&head.as_str());
    let upper = text.to_ascii_uppercase();
    if !writes || upper.contains("RETURNING") || text.contains(';') || text.contains("--") {
        return None;
    }
    Some(format!(
        "WITH w AS ({text} RETURNING 1) SELECT 1 / (count(*) = {rows})::int AS one FROM w"
    ))
}

impl Pipeline {
    pub(crate) fn new(prepared: Prepared) -> Pipeline {
        Pipeline {
            queued: Mutex::new(Vec::new()),
            prepared,
            begin: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a write, if it can be checked by PostgreSQL and written as literals.
    pub(crate) fn push(&self, sql: &Sql, args: &[Arg], rows: u64) -> bool {
        // JSON is written with control characters escaped; only text can hold one.
        // Arrays are bound, never written as literals.
        let has_nul = args.iter().any(|arg| {
            matches!(arg, Arg::Text(Some(text)) if text.contains('\0'))
                || matches!(arg, Arg::Array(..))
        });
        if has_nul || sql.as_str().contains('\0') {
            return false;
        }
        let Some(text) = checked(sql.as_str(), rows) else {
            return false;
        };
        self.queue().push(Queued {
            text,
            args: args.to_vec(),
        });
        true
    }

    /// Begins the transaction with the next script, `statement` first in it (the
    /// batch's check that the log's head is as the writer left it), unchecked.
    pub(crate) fn begin_with(&self, statement: &'static str, args: Vec<Arg>) {
        self.begin.store(true, std::sync::atomic::Ordering::Relaxed);
        self.queue().insert(
            0,
            Queued {
                text: statement.to_owned(),
                args,
            },
        );
    }

    /// Queues the batch's own final statement (its rows of the log), unchecked.
    pub(crate) fn push_final(&self, text: &'static str, args: Vec<Arg>) {
        self.queue().push(Queued {
            text: text.to_owned(),
            args,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Whether a statement of this name is prepared on the connection.
    pub(crate) fn is_prepared(&self, name: &str) -> bool {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    /// Remembers that a statement of this name is prepared on the connection.
    pub(crate) fn mark_prepared(&self, name: &str) {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
    }

    /// Sends what is queued, in one round trip (two when a statement is new to the
    /// connection), followed by `COMMIT` if `commit`. Any
    /// failure (a write that changed other than one row among them) stops the script
    /// before the commit, poisons the transaction and comes back as the error.
    pub(crate) async fn send(
        &self,
        conn: &mut PgConnection,
        track: Option<&Track>,
        commit: bool,
    ) -> Result<(), DbError> {
        let queued = std::mem::take(&mut *self.queue());
        if queued.is_empty() && !commit {
            return Ok(());
        }
        // Statements not yet prepared on the connection are prepared first, in a script
        // of their own: PostgreSQL keeps the whole text a PREPARE arrived in as the
        // statement's source and copies it on every EXECUTE, so a PREPARE sent inside a
        // script of a thousand writes would make each later run copy all of them.
        let names: Vec<String> = queued
            .iter()
            .map(|item| statement_name(&item.text, &item.args))
            .collect();
        let mut preparing: Vec<&str> = Vec::new();
        {
            let prepared = self
                .prepared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in &names {
                if !prepared.contains(name) && !preparing.contains(&name.as_str()) {
                    preparing.push(name);
                }
            }
        }
        // A transaction still to begin begins with the first script sent, so that a
        // PREPARE that fails leaves it aborted, never leaves later statements to run
        // outside it.
        let begin = self.begin.swap(false, std::sync::atomic::Ordering::Relaxed);
        let mut prepare = String::new();
        let mut script = String::new();
        if begin {
            if preparing.is_empty() {
                script.push_str("BEGIN;\n");
            } else {
                prepare.push_str("BEGIN;\n");
            }
        }
        // What each statement of the PREPARE script prepares, in the order they answer.
        let mut answers: Vec<Option<&str>> = Vec::new();
        if !prepare.is_empty() {
            answers.push(None);
        }
        for name in &preparing {
            if let Some(item) = queued
                .iter()
                .zip(&names)
                .find_map(|(item, n)| (n == name).then_some(item))
            {
                // A statement without parameters is prepared and run without
                // parentheses: `PREPARE name () AS …` does not parse.
                let types: Vec<&str> = item.args.iter().map(type_of).collect();
                let types = if types.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", types.join(", "))
                };
                let _ = writeln!(prepare, "PREPARE {name}{types} AS {};", item.text);
                answers.push(Some(name));
            }
        }
        for (item, name) in queued.iter().zip(&names) {
            let _ = write!(script, "EXECUTE {name}");
            for (index, arg) in item.args.iter().enumerate() {
                script.push_str(if index == 0 { "(" } else { ", " });
                literal(arg, &mut script);
            }
            script.push_str(if item.args.is_empty() { ";\n" } else { ");\n" });
        }
        if commit {
            script.push_str("COMMIT;");
        }
        let failed = |error: sqlx::Error| {
            if let Some(track) = track {
                track
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            DbError::from(error)
        };
        if !preparing.is_empty() {
            // Each PREPARE is remembered as soon as it is answered, so that a failure
            // after it never prepares it twice.
            let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute_many(&mut *conn);
            let mut answered = answers.into_iter();
            while results.try_next().await.map_err(failed)?.is_some() {
                if let Some(Some(name)) = answered.next() {
                    self.mark_prepared(name);
                }
            }
        }
        let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).execute_many(conn);
        while results.try_next().await.map_err(failed)?.is_some() {}
        Ok(())
    }
}

/// A prepared statement's name: its text and its parameters' types, hashed.
fn statement_name(sql: &str, args: &[Arg]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(sql.as_bytes());
    for arg in args {
        hasher.update(type_of(arg).as_bytes());
        hasher.update(b",");
    }
    let digest = hasher.finalize();
    format!("cairn_w_{}", crate::hash::hex(&digest[..10]))
}

/// The PostgreSQL type sqlx binds a value of this kind as.
fn type_of(arg: &Arg) -> &'static str {
    arg.arg_type().postgres()
}

fn quoted(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('\'');
    for (index, part) in text.split('\'').enumerate() {
        if index > 0 {
            out.push_str("''");
        }
        out.push_str(part);
    }
    out.push('\'');
}

/// Writes a value as a literal for an EXECUTE argument.
fn literal(arg: &Arg, out: &mut String) {
    match arg {
        Arg::Bool(Some(value)) => out.push_str(if *value { "true" } else { "false" }),
        Arg::Int(Some(value)) => quoted(&value.to_string(), out),
        Arg::Float(Some(value)) => {
            let text = if value.is_nan() {
                "NaN".to_owned()
            } else if value.is_infinite() {
                if *value > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                }
                .to_owned()
            } else {
                format!("{value:?}")
            };
            quoted(&text, out);
        }
        Arg::Text(Some(value)) => quoted(value, out),
        Arg::Uuid(Some(value)) => quoted(&value.hyphenated().to_string(), out),
        Arg::Json(Some(value)) => quoted(&value.to_string(), out),
        Arg::Time(Some(value)) => quoted(
            &value.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            out,
        ),
        // Never queued (see `Pipeline::push`).
        Arg::Array(..) => out.push_str("NULL"),
        Arg::Bool(None)
        | Arg::Int(None)
        | Arg::Float(None)
        | Arg::Text(None)
        | Arg::Uuid(None)
        | Arg::Json(None)
        | Arg::Time(None) => out.push_str("NULL"),
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

pub(crate) fn bind(sql: &Sql, args: Vec<Arg>) -> PgQuery<'static> {
    let mut query = match sql.text() {
        SqlText::Literal(text) => sqlx::query::<Postgres>(text),
        SqlText::Built(text) => sqlx::query::<Postgres>(AssertSqlSafe(text)),
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
            Arg::Array(of, values) => bind_array(query, of, values),
        };
    }
    query
}

/// Binds a column's values as one array of their type.
fn bind_array(query: PgQuery<'static>, of: ArgType, values: Vec<Arg>) -> PgQuery<'static> {
    macro_rules! column {
        ($variant:ident) => {
            values
                .into_iter()
                .map(|value| match value {
                    Arg::$variant(v) => v,
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
    }
    match of {
        ArgType::Bool => query.bind(column!(Bool)),
        ArgType::Int => query.bind(column!(Int)),
        ArgType::Float => query.bind(column!(Float)),
        ArgType::Text => query.bind(column!(Text)),
        ArgType::Uuid => query.bind(column!(Uuid)),
        ArgType::Json => query.bind(
            column!(Json)
                .into_iter()
                .map(|v| v.map(Json))
                .collect::<Vec<_>>(),
        ),
        ArgType::Time => query.bind(column!(Time)),
    }
}

/// Reads a column as `T`.
pub(crate) fn get<T>(row: &PgRow, column: &str) -> Result<T, DbError>
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    Ok(row.try_get::<T, _>(column)?)
}

/// Reads a nullable JSON column.
pub(crate) fn json_opt(row: &PgRow, column: &str) -> Result<Option<Value>, DbError> {
    Ok(row
        .try_get::<Option<Json<Value>>, _>(column)?
        .map(|json| json.0))
}

/// The column names, in order.
pub(crate) fn columns(row: &PgRow) -> Vec<String> {
    use sqlx::Column as _;
    row.columns().iter().map(|c| c.name().to_owned()).collect()
}

/// Runs a statement; returns the rows it changed.
pub(crate) async fn execute(
    conn: &mut PgConnection,
    sql: &Sql,
    args: Vec<Arg>,
) -> Result<u64, DbError> {
    Ok(bind(sql, args).execute(conn).await?.rows_affected())
}

/// Runs statements that take no arguments.
pub(crate) async fn execute_script(conn: &mut PgConnection, sql: &Sql) -> Result<(), DbError> {
    match sql.text() {
        SqlText::Literal(text) => sqlx::raw_sql(text).execute(conn).await,
        SqlText::Built(text) => sqlx::raw_sql(AssertSqlSafe(text)).execute(conn).await,
    }?;
    Ok(())
}

/// Runs a query and returns every row.
pub(crate) async fn fetch_all(
    conn: &mut PgConnection,
    sql: &Sql,
    args: Vec<Arg>,
) -> Result<Vec<PgRow>, DbError> {
    Ok(bind(sql, args).fetch_all(conn).await?)
}

/// Runs a query and returns its first row, if any.
pub(crate) async fn fetch_optional(
    conn: &mut PgConnection,
    sql: &Sql,
    args: Vec<Arg>,
) -> Result<Option<PgRow>, DbError> {
    Ok(bind(sql, args).fetch_optional(conn).await?)
}
/// A `timestamptz` read with checked arithmetic: the driver adds the stored
/// microseconds to PostgreSQL's epoch unchecked, and panics on `infinity` or on a time
/// past chrono's range, which only a hand-edited row holds. Such a row is an error
/// that names the column instead.
pub(crate) fn time(row: &PgRow, column: &str) -> Result<Option<DateTime<Utc>>, DbError> {
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

/// A transaction on the PostgreSQL writer's connection, begun and ended by hand.
pub(crate) struct PgBatch {
    conn: Option<sqlx::pool::PoolConnection<Postgres>>,
    pub(crate) open: bool,
}

impl PgBatch {
    pub(crate) fn new(conn: sqlx::pool::PoolConnection<Postgres>) -> PgBatch {
        PgBatch {
            conn: Some(conn),
            open: false,
        }
    }

    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.conn
            .as_mut()
            .expect("a batch holds its connection until it ends")
    }
}

impl PgBatch {
    /// Begins the batch with the first script its pipeline sends (see
    /// [`Pipeline::begin_with`]).
    pub(crate) fn begin_lazily(&mut self) {
        self.open = true;
    }

    /// Begins the batch: `BEGIN` and `statement` (prepared as `name` with one `uuid[]`
    /// parameter, once per connection, in a round trip of its own) run with `ids`, in
    /// one round trip. Returns the statement's rows.
    pub(crate) async fn open(
        &mut self,
        name: &str,
        statement: &str,
        ids: &[uuid::Uuid],
        pipeline: &Pipeline,
    ) -> Result<Vec<PgRow>, DbError> {
        if !pipeline.is_prepared(name) {
            // In a script of its own: PostgreSQL copies the text a PREPARE arrived in on
            // every EXECUTE of it (see [`Pipeline::send`]).
            sqlx::raw_sql(AssertSqlSafe(format!(
                "PREPARE {name} (uuid[]) AS {statement}"
            )))
            .execute(self.conn())
            .await?;
            pipeline.mark_prepared(name);
        }
        // UUIDs are written as their hyphenated hex digits: nothing to escape.
        let ids: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
        let script = format!("BEGIN; EXECUTE {name}('{{{}}}')", ids.join(","));
        self.open = true;
        let mut rows = Vec::new();
        let mut results = sqlx::raw_sql(AssertSqlSafe(script)).fetch_many(self.conn());
        while let Some(result) = results.try_next().await? {
            if let sqlx::Either::Right(row) = result {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Sends what `pipeline` holds and `COMMIT`, in one round trip.
    /// `Err((error, committed_maybe))`: whether the commit may have happened anyway
    /// (the connection failed), or surely did not (PostgreSQL refused a statement;
    /// the batch is then rolled back, keeping the connection and what is prepared on
    /// it).
    pub(crate) async fn commit(
        &mut self,
        pipeline: &Pipeline,
        track: &Track,
    ) -> Result<(), (DbError, bool)> {
        match pipeline.send(self.conn(), Some(track), true).await {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(error) => {
                let in_doubt = error.kind() == DbErrorKind::Unavailable;
                if !in_doubt {
                    let _ = self.end("ROLLBACK").await;
                }
                Err((error, in_doubt))
            }
        }
    }

    /// Ends the batch with `statement` (`COMMIT` or `ROLLBACK`), keeping the
    /// connection when it can.
    pub(crate) async fn end(&mut self, statement: &'static str) -> Result<(), DbError> {
        if !self.open {
            return Ok(());
        }
        sqlx::raw_sql(statement).execute(self.conn()).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for PgBatch {
    fn drop(&mut self) {
        // A connection left inside a transaction must never serve another batch: it is
        // closed, and the pool opens a fresh one.
        if self.open
            && let Some(conn) = self.conn.take()
        {
            drop(conn.detach());
        }
    }
}

/// How a PostgreSQL snapshot begins.
pub(crate) const READ_ONLY_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Begins a transaction on a pooled PostgreSQL connection; the `BEGIN` runs in a task
/// of its own.
///
/// sqlx (0.9) counts a transaction as begun only once PostgreSQL has answered its
/// `BEGIN`. A caller that goes away while that answer is on its way (a client that
/// hung up, a timeout) would leave the connection inside a transaction that nothing
/// ends, and the pool would hand it to the next reader, who would then read that
/// transaction's old snapshot: a workflow engine that reads its run from before its own
/// last step runs the step again. Waiting for a connection may be given up safely, so
/// it happens here; the `BEGIN` is always seen through by its task, and if the caller
/// is gone by then, the transaction is dropped there, which rolls it back.
pub(crate) async fn begin_pg(
    pool: &PgPool,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, Postgres>, DbError> {
    use tracing::Instrument as _;
    let conn = pool.acquire().await?;
    let statement = statement.map(sqlx::SqlSafeStr::into_sql_str);
    // What `Pool::begin_with` does once it has a connection.
    let begun = tokio::spawn(sqlx::Transaction::begin(conn, statement).in_current_span())
        .await
        .map_err(|error| {
            if error.is_cancelled() {
                DbError::from_cause(
                    DbErrorKind::Unavailable,
                    "the process is shutting down: a transaction could not begin".into(),
                    None,
                )
            } else {
                DbError::Panicked {
                    message: format!("beginning a PostgreSQL transaction: {error}"),
                }
            }
        })?;
    Ok(begun?)
}

/// SQLSTATE classes and codes that mean "try again" or "cannot reach the database".
pub(crate) fn postgres_kind(code: &str) -> DbErrorKind {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => DbErrorKind::Conflict,
        // too_many_connections, admin_shutdown, crash_shutdown, cannot_connect_now,
        // disk_full, out_of_memory, read_only_sql_transaction (a standby)
        "53300" | "57P01" | "57P02" | "57P03" | "53100" | "53200" | "25006" => {
            DbErrorKind::Unavailable
        }
        _ if code.starts_with("08") => DbErrorKind::Unavailable,
        _ => DbErrorKind::Failed,
    }
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> DbError {
        use sqlx::Error as E;
        let kind = match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                DbErrorKind::Unavailable
            }
            E::Database(database) => database
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .map_or(DbErrorKind::Failed, |pg| postgres_kind(pg.code())),
            E::ColumnDecode { index, source } => {
                return DbError::decode(index.clone(), source);
            }
            _ => DbErrorKind::Failed,
        };
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        DbError::from_cause(kind, Box::new(error), code)
    }
}

/// Rows of several tables, a statement that changes one row, and a notification, as
/// one statement: each table's rows bound column by column and unnested.
pub(crate) fn write_rows(
    tables: Vec<crate::value::Columns>,
    then: Option<(&'static str, Vec<Arg>)>,
    notify: Option<cairn_types::Position>,
) -> (String, Vec<Arg>) {
    let mut parts = Vec::new();
    let mut args = Vec::new();
    let mut next = 1;
    for (index, table) in tables.into_iter().enumerate() {
        let (sql, mut table_args) = table.unnest(&mut next);
        parts.push(format!("t{index} AS ({sql})"));
        args.append(&mut table_args);
    }
    if let Some((sql, mut then_args)) = then {
        // Its placeholders are its own: number them after the tables'.
        let text = renumber(sql, next - 1);
        next += then_args.len();
        parts.push(format!("h AS ({text})"));
        args.append(&mut then_args);
    }
    let tail = match notify {
        Some(position) => {
            args.push(Arg::Text(Some(position.get().to_string())));
            format!("SELECT pg_notify('{}', ${next})", NOTIFY_CHANNEL)
        }
        None => "SELECT 1".to_owned(),
    };
    let sql = if parts.is_empty() {
        tail
    } else {
        format!("WITH {} {tail}", parts.join(", "))
    };
    (sql, args)
}

/// `sql` with each placeholder `$n` written `$(n + by)`.
fn renumber(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => {
                let _ = write!(out, "{}", n + by);
            }
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

/// The channel every commit that appended events notifies.
pub(crate) const NOTIFY_CHANNEL: &str = "cairn_events";

/// The role tenant-scoped reads run as, subject to row-level security (created by the
/// migration `log/0002_tenant_reads`).
pub(crate) const TENANT_READER_ROLE: &str = "cairn_tenant_reader";

/// A transaction on a pooled connection.
pub(crate) type PoolTx = sqlx::Transaction<'static, Postgres>;

/// A connection out of a pool.
pub(crate) type PooledConn = sqlx::pool::PoolConnection<Postgres>;

/// Closes a pooled connection instead of giving it back (it may hold temporary tables
/// or a transaction left open).
pub(crate) fn close(conn: PooledConn) {
    drop(conn.detach());
}

/// Confines a read transaction to a tenant: PostgreSQL's row-level security, as the
/// tenant reader role.
pub(crate) async fn scope(tx: &mut PoolTx, tenant: String) -> Result<(), DbError> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET LOCAL ROLE {TENANT_READER_ROLE}"
    )))
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT set_config('cairn.tenant', $1, true)")
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Quotes an identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops a schema and everything in it.
pub(crate) async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), DbError> {
    let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(pool)
        .await?;
    Ok(())
}

/// Notifications of other processes' commits.
pub(crate) struct Listener(sqlx::postgres::PgListener);

impl Listener {
    pub(crate) async fn start(pool: &PgPool) -> Option<Listener> {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => Some(Listener(listener)),
            Err(error) => {
                tracing::warn!(error = %error, "cannot LISTEN; polling the log head instead");
                None
            }
        }
    }

    /// The next position announced within `every`; `None` when quiet for that long or
    /// when the connection dropped (its notifications are lost: read the head).
    pub(crate) async fn next(&mut self, every: std::time::Duration) -> Option<i64> {
        match tokio::time::timeout(every, self.0.try_recv()).await {
            Ok(Ok(Some(notification))) => notification.payload().parse::<i64>().ok(),
            Ok(Ok(None) | Err(_)) | Err(_) => None,
        }
    }
}

/// A connected database: the pool, the URL for people, and the writer's own pool of one
/// with what is prepared on it.
pub(crate) struct Connected {
    pub(crate) pool: PgPool,
    pub(crate) target: String,
    pub(crate) writer: PgPool,
    pub(crate) prepared: Prepared,
}

/// Connects: a pool for readers and transactions of their own (in `schema`, created
/// when missing), and the log writer's own connection.
pub(crate) async fn connect(
    url: &str,
    max_connections: u32,
    schema: Option<&str>,
) -> Result<Connected, crate::error::ConnectError> {
    use crate::error::ConnectError;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr as _;
    use std::time::Duration;
    let target = crate::redact_url(url);
    let mut connect = PgConnectOptions::from_str(url).map_err(|source| ConnectError::BadUrl {
        url: target.clone(),
        source: source.into(),
    })?;
    connect = connect.application_name("cairn");
    let open = |source: sqlx::Error| ConnectError::Open {
        target: target.clone(),
        source: source.into(),
    };
    if let Some(schema) = schema {
        // Create the schema with a one-off connection, then point every pooled
        // connection at it.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone())
            .await
            .map_err(open)?;
        let statement = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .map_err(open)?;
        pool.close().await;
        connect = connect.options([("search_path", schema)]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(connect.clone())
        .await
        .map_err(open)?;
    // The writer's own connection: it never waits behind readers for one. Its
    // queued writes are written as literals, which needs standard strings (a
    // backslash is an ordinary character); a new connection has none of the
    // statements prepared on the one before.
    let prepared = Prepared::default();
    let forget = prepared.clone();
    let writer_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        // A broken connection fails the batch, which the writer answers and
        // retries on a fresh one: no ping before every batch.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |_, _| {
            let forget = forget.clone();
            Box::pin(async move {
                forget
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                Ok(())
            })
        })
        .connect_lazy_with(
            connect
                .clone()
                .application_name("cairn-log-writer")
                .options([("standard_conforming_strings", "on")]),
        );
    Ok(Connected {
        pool,
        target,
        writer: writer_pool,
        prepared,
    })
}

/// Connects to another system's database, to read it and never write: every
/// transaction on the pool is read-only (`default_transaction_read_only`), so a
/// statement that would write there fails instead.
pub(crate) async fn connect_foreign(
    url: &str,
    max_connections: u32,
) -> Result<(PgPool, String), crate::error::ConnectError> {
    use crate::error::ConnectError;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr as _;
    use std::time::Duration;
    let target = crate::redact_url(url);
    let connect = PgConnectOptions::from_str(url)
        .map_err(|source| ConnectError::BadUrl {
            url: target.clone(),
            source: source.into(),
        })?
        .application_name("cairn-import")
        .options([("default_transaction_read_only", "on")]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(connect)
        .await
        .map_err(|source| ConnectError::Open {
            target: target.clone(),
            source: source.into(),
        })?;
    Ok((pool, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check(arg: Arg, expect: &str) {
        let mut out = String::new();
        literal(&arg, &mut out);
        assert_eq!(out, expect);
    }

    #[test]
    fn literals_quote_every_value_and_double_quotes() {
        check(Arg::Text(Some("it's".into())), "'it''s'");
        check(Arg::Text(Some("back\\slash".into())), "'back\\slash'");
        check(Arg::Text(Some(String::new())), "''");
        check(Arg::Text(Some("'".into())), "''''");
        check(Arg::Text(Some("''a'".into())), "'''''a'''");
        check(
            Arg::Text(Some("'); DROP TABLE x; --".into())),
            "'''); DROP TABLE x; --'",
        );
        check(
            Arg::Int(Some(-9_223_372_036_854_775_808)),
            "'-9223372036854775808'",
        );
        check(Arg::Float(Some(f64::NAN)), "'NaN'");
        check(Arg::Float(Some(f64::NEG_INFINITY)), "'-Infinity'");
        check(Arg::Float(Some(0.1)), "'0.1'");
        check(Arg::Bool(Some(true)), "true");
        check(Arg::Json(Some(json!({"a": "b'c"}))), "'{\"a\":\"b''c\"}'");
        check(Arg::Uuid(None), "NULL");
    }

    #[test]
    fn only_plain_writes_are_queued_and_each_is_checked() {
        assert_eq!(
            checked("UPDATE t SET x = $1 WHERE id = $2", 1).as_deref(),
            Some(
                "WITH w AS (UPDATE t SET x = $1 WHERE id = $2 RETURNING 1) SELECT 1 / (count(*) = 1)::int AS one FROM w"
            )
        );
        assert!(checked("  insert into t values ($1);", 1).is_some());
        assert_eq!(
            checked("INSERT INTO t SELECT * FROM u", 3).as_deref(),
            Some(
                "WITH w AS (INSERT INTO t SELECT * FROM u RETURNING 1) SELECT 1 / (count(*) = 3)::int AS one FROM w"
            )
        );
        assert!(checked("SELECT 1", 1).is_none());
        assert!(checked("INSERT INTO t VALUES ($1) RETURNING id", 1).is_none());
        assert!(checked("DELETE FROM t; DELETE FROM u", 1).is_none());
        assert!(checked("UPDATE t SET x = 1 -- a comment", 1).is_none());
        assert!(checked("WITH x AS (DELETE FROM t RETURNING *) SELECT 1", 1).is_none());
    }

    #[test]
    fn values_holding_nul_are_not_queued() {
        let pipeline = Pipeline::new(Prepared::default());
        let sql = Sql::from("UPDATE t SET x = $1");
        assert!(!pipeline.push(&sql, &[Arg::Text(Some("a\0b".into()))], 1));
        assert!(pipeline.is_empty());
        assert!(pipeline.push(&sql, &[Arg::Text(Some("ab".into()))], 1));
        assert!(!pipeline.is_empty());
    }

    #[test]
    fn placeholders_are_renumbered_whole() {
        assert_eq!(
            renumber("SET a = $1, b = $2 WHERE c = $12", 16),
            "SET a = $17, b = $18 WHERE c = $28"
        );
        assert_eq!(renumber("SELECT 1", 3), "SELECT 1");
    }

    #[test]
    fn postgres_codes_say_what_to_do() {
        assert_eq!(postgres_kind("40001"), DbErrorKind::Conflict);
        assert_eq!(postgres_kind("40P01"), DbErrorKind::Conflict);
        assert_eq!(postgres_kind("08006"), DbErrorKind::Unavailable);
        assert_eq!(postgres_kind("57P01"), DbErrorKind::Unavailable);
        assert_eq!(postgres_kind("23505"), DbErrorKind::Failed);
    }

    #[test]
    fn pool_exhaustion_is_unavailability() {
        assert_eq!(
            DbError::from(sqlx::Error::PoolTimedOut).kind(),
            DbErrorKind::Unavailable
        );
    }

    #[test]
    fn names_depend_on_text_and_types() {
        let text = "UPDATE t SET x = $1";
        assert_eq!(
            statement_name(text, &[Arg::Int(Some(1))]),
            statement_name(text, &[Arg::Int(None)])
        );
        assert_ne!(
            statement_name(text, &[Arg::Int(Some(1))]),
            statement_name(text, &[Arg::Text(Some("1".into()))])
        );
    }
}
