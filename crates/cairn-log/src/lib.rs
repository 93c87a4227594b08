//! The append-only event log.
//!
//! One `domain_events` table with the same logical schema on SQLite (the embedded
//! default) and PostgreSQL (several processes sharing one database). An append is atomic
//! and checked against the expected stream version; a conflict writes nothing.
//!
//! Invariants this crate keeps:
//! - Positions are gapless and never go backwards for a reader: once a reader has seen
//!   N, it never finds a newly committed event below N (appends serialize on the log
//!   head lock; see [`append`]).
//! - Events are immutable: only `processed_at` and `processing_error` change after an
//!   append, and the database itself refuses anything else (triggers on both backends).
//! - Each event's hash chains to the previous one, so an edited, deleted or reordered
//!   event is found by [`Db::verify_chain`].
//!
//! This crate knows nothing about handlers, projections, workflows or HTTP: it stores
//! the outcome the dispatcher hands it, and nothing more.

pub mod append;
pub mod audit;
pub mod db;
mod direct;
pub mod error;
pub mod event;
pub mod hash;
pub mod migrate;
mod pipeline;
pub mod read;
pub mod spans;
pub mod sql;
pub mod tx;
pub mod writer;

pub use append::{AppendError, PendingAppend, Prepared};
pub use audit::{AuditReport, Breach, Problem};
pub use db::{
    ConnectError, Db, DbOptions, NOTIFY_CHANNEL, Reader, Session, Snapshot, TENANT_READER_ROLE,
    Tenancy, WriterPause,
};
pub use error::{DbError, DbErrorKind, PassingRetry};
pub use event::{
    AppendRequest, Expected, HoldCause, IdempotencyKey, IdempotencyKeyError, NewEvent, Outcome,
    ProcessingError, RecordedEvent, StreamHold,
};
pub use migrate::{MigrateError, Migration};
pub use read::{EventFilter, FailureCount, Head, ReadError};
pub use spans::{SpanKind, SpanRecord, flush_all_spans};
pub use sql::{Arg, Backend, Conn, DbValue, IntoArg, Row, Sql};
pub use tx::{Savepoint, Tx};
pub use writer::{Admission, Priority, WriteMode, WriteOptions, WriterConfig};

/// A unit of work's future, as [`Db::write`] takes it.
pub use futures::future::BoxFuture;
