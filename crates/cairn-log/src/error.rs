//! The one database error every layer above the log sees.
//!
//! Whatever the backend or the driver, a storage call that did not complete is a
//! [`DbError`], and its [`DbErrorKind`] says what the caller can do about it: try again
//! later (the writer is overloaded, or the database cannot be reached), try again now
//! (a concurrent write conflicted), or nothing (a fault to report). Drivers' own error
//! types stay inside this crate.

use std::fmt;
use std::path::PathBuf;

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
pub struct Cause {
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// The SQLSTATE (PostgreSQL) or extended result code (SQLite), if the database gave
    /// one.
    code: Option<String>,
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
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
        cause.code.clone()
    }

    /// The same error again, for each of several callers that share it.
    pub(crate) fn duplicate(&self) -> DbError {
        let again = |cause: &Cause| Cause {
            error: Box::new(Message(cairn_types::error_chain(cause))),
            code: cause.code.clone(),
        };
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

    /// A driver's error as `kind`, with the database's code for it, if any.
    pub(crate) fn from_cause(
        kind: DbErrorKind,
        error: Box<dyn std::error::Error + Send + Sync>,
        code: Option<String>,
    ) -> DbError {
        let cause = Cause { error, code };
        match kind {
            DbErrorKind::Conflict => DbError::Conflict { cause },
            DbErrorKind::Unavailable => DbError::Unavailable { cause },
            DbErrorKind::Overloaded | DbErrorKind::Failed => DbError::Failed { cause },
        }
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "database URL {url:?} is not supported: use sqlite://PATH (the embedded default) \
         or postgres://USER@HOST/DATABASE"
    )]
    UnsupportedUrl { url: String },
    #[error("database URL {url:?} is not valid")]
    BadUrl {
        url: String,
        #[source]
        source: DbError,
    },
    #[error("cannot create the data directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {target}")]
    Open {
        target: String,
        #[source]
        source: DbError,
    },
    #[error("cannot start the log writer")]
    Writer(#[source] std::io::Error),
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
