//! The one database error every layer above the log sees.
//!
//! Whatever the backend or the driver, a storage call that did not complete is a
//! [`DbError`], and its [`DbErrorKind`] says what the caller can do about it: try again
//! later (the writer is overloaded, or the database cannot be reached), try again now
//! (a concurrent write conflicted), or nothing (a fault to report). Drivers' own error
//! types stay inside this crate.

use std::fmt;

/// What a caller can do about a [`DbError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbErrorKind {
    /// The log writer's queue is full: nothing was done; try again shortly.
    Overloaded,
    /// A concurrent write conflicted with this one (a serialization failure, a
    /// deadlock, a busy database): nothing was done; trying again may succeed.
    Conflict,
    /// The database cannot be reached or cannot store anything now (connection lost,
    /// pool exhausted, disk full, shutting down).
    Unavailable,
    /// Anything else: a fault in a statement or in stored data.
    Failed,
}

impl DbErrorKind {
    /// `overloaded`, `conflict`, `unavailable` or `failed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DbErrorKind::Overloaded => "overloaded",
            DbErrorKind::Conflict => "conflict",
            DbErrorKind::Unavailable => "unavailable",
            DbErrorKind::Failed => "failed",
        }
    }
}

impl fmt::Display for DbErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A driver's error, kept opaque: its message is part of a [`DbError`]'s (its own
/// source, if any, is not repeated).
pub struct Cause(Box<dyn std::error::Error + Send + Sync + 'static>);

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {}

/// An error known only by its message.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// A storage call that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The log writer's queue was full; the work was not accepted.
    #[error(
        "the log writer is overloaded ({queued} requests waiting); nothing was done, try again shortly"
    )]
    Overloaded { queued: usize },
    /// The database cannot be reached or cannot store anything now.
    #[error("the database is unavailable: {cause}")]
    Unavailable { cause: Cause },
    /// The log writer stopped (the process is shutting down) before it took the work.
    #[error("the log writer has stopped; nothing was done")]
    WriterStopped,
    /// A concurrent write conflicted with this one.
    #[error("a concurrent write conflicted with this one ({cause}); nothing was done, try again")]
    Conflict { cause: Cause },
    /// A statement failed.
    #[error("database error: {cause}")]
    Failed { cause: Cause },
    /// A stored value could not be read as the type asked for.
    #[error("column {column}: {reason}")]
    Decode { column: String, reason: String },
    /// Work run by the log writer panicked; it was rolled back.
    #[error("the work panicked and was rolled back: {message}")]
    Panicked { message: String },
}

impl DbError {
    /// What the caller can do about it.
    pub fn kind(&self) -> DbErrorKind {
        match self {
            DbError::Overloaded { .. } => DbErrorKind::Overloaded,
            DbError::Unavailable { .. } | DbError::WriterStopped => DbErrorKind::Unavailable,
            DbError::Conflict { .. } => DbErrorKind::Conflict,
            DbError::Failed { .. } | DbError::Decode { .. } | DbError::Panicked { .. } => {
                DbErrorKind::Failed
            }
        }
    }

    /// Whether it came from a conflicting write or a lost connection, not from the work
    /// itself: the same work may succeed when tried again.
    pub fn is_passing(&self) -> bool {
        matches!(
            self.kind(),
            DbErrorKind::Conflict | DbErrorKind::Unavailable
        )
    }

    /// A value that could not be decoded, for readers of rows.
    pub fn decode(column: impl Into<String>, reason: impl fmt::Display) -> DbError {
        DbError::Decode {
            column: column.into(),
            reason: reason.to_string(),
        }
    }

    /// The SQLSTATE (PostgreSQL) or extended result code (SQLite) of a failed
    /// statement, if the database gave one.
    pub fn code(&self) -> Option<String> {
        let cause = match self {
            DbError::Unavailable { cause }
            | DbError::Conflict { cause }
            | DbError::Failed { cause } => cause,
            _ => return None,
        };
        if let Some(error) = cause.0.downcast_ref::<sqlx::Error>() {
            return error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
        }
        if let Some(rusqlite::Error::SqliteFailure(error, _)) =
            cause.0.downcast_ref::<rusqlite::Error>()
        {
            return Some(error.extended_code.to_string());
        }
        None
    }

    /// The same error again, for each of several callers that share it.
    pub(crate) fn duplicate(&self) -> DbError {
        let again = |cause: &Cause| Cause(Box::new(Message(cairn_types::error_chain(cause))));
        match self {
            DbError::Overloaded { queued } => DbError::Overloaded { queued: *queued },
            DbError::Unavailable { cause } => DbError::Unavailable {
                cause: again(cause),
            },
            DbError::WriterStopped => DbError::WriterStopped,
            DbError::Conflict { cause } => DbError::Conflict {
                cause: again(cause),
            },
            DbError::Failed { cause } => DbError::Failed {
                cause: again(cause),
            },
            DbError::Decode { column, reason } => DbError::Decode {
                column: column.clone(),
                reason: reason.clone(),
            },
            DbError::Panicked { message } => DbError::Panicked {
                message: message.clone(),
            },
        }
    }

    pub(crate) fn from_cause(
        kind: DbErrorKind,
        cause: Box<dyn std::error::Error + Send + Sync>,
    ) -> DbError {
        let cause = Cause(cause);
        match kind {
            DbErrorKind::Conflict => DbError::Conflict { cause },
            DbErrorKind::Unavailable => DbError::Unavailable { cause },
            DbErrorKind::Overloaded | DbErrorKind::Failed => DbError::Failed { cause },
        }
    }
}

/// SQLSTATE classes and codes that mean "try again" or "cannot reach the database".
fn postgres_kind(code: &str) -> DbErrorKind {
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

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> DbError {
        use sqlx::Error as E;
        let kind = match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                DbErrorKind::Unavailable
            }
            E::Database(database) => {
                match database.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    Some(pg) => postgres_kind(pg.code()),
                    None => database
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .map_or(DbErrorKind::Failed, |code| sqlite_kind(code & 0xff)),
                }
            }
            E::ColumnDecode { index, source } => {
                return DbError::decode(index.clone(), source);
            }
            _ => DbErrorKind::Failed,
        };
        DbError::from_cause(kind, Box::new(error))
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> DbError {
        let kind = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => sqlite_kind(failure.extended_code & 0xff),
            _ => DbErrorKind::Failed,
        };
        DbError::from_cause(kind, Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_say_what_to_do() {
        assert_eq!(postgres_kind("40001"), DbErrorKind::Conflict);
        assert_eq!(postgres_kind("40P01"), DbErrorKind::Conflict);
        assert_eq!(postgres_kind("08006"), DbErrorKind::Unavailable);
        assert_eq!(postgres_kind("57P01"), DbErrorKind::Unavailable);
        assert_eq!(postgres_kind("23505"), DbErrorKind::Failed);
    }

    #[test]
    fn sqlite_codes_say_what_to_do() {
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

    #[test]
    fn pool_exhaustion_is_unavailability() {
        assert_eq!(
            DbError::from(sqlx::Error::PoolTimedOut).kind(),
            DbErrorKind::Unavailable
        );
        assert_eq!(
            DbError::Overloaded { queued: 3 }.kind(),
            DbErrorKind::Overloaded
        );
    }
}

/// How work the database refused for a passing reason ([`DbError::is_passing`]) is
/// tried again: five tries in all, the second after 20 ms and each next one after a
/// pause four times longer (about 1.7 s in all).
#[derive(Debug)]
pub struct PassingRetry {
    tries: u32,
    pause: std::time::Duration,
}

impl Default for PassingRetry {
    fn default() -> Self {
        Self {
            tries: 1,
            pause: std::time::Duration::from_millis(20),
        }
    }
}

impl PassingRetry {
    /// Tries in all, the first included.
    pub const TRIES: u32 = 5;

    /// Which try failed last (1 for the first).
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// Whether a try is left.
    pub fn remains(&self) -> bool {
        self.tries < Self::TRIES
    }

    /// Pauses before the next try, and counts it.
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause *= 4;
        self.tries += 1;
    }
}
