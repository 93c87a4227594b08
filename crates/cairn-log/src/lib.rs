//! The append-only event log.
//!
//! One `domain_events` table with the same logical schema on SQLite (the embedded
//! default) and PostgreSQL (several processes sharing one database). An append is atomic
//! and checked against the expected stream version; a conflict writes nothing.
//!
//! Invariants this crate keeps:
//! - Positions are gapless and never go backwards for a reader: once a reader has seen
//!   N, it never finds a newly committed event below N (appends serialize on the log
//!   head lock; see [`Tx::prepare_append`]).
//! - Events are immutable: only `processed_at`, `processing_error` and `held_behind`
//!   change after an append, and the database itself refuses anything else (triggers
//!   on both backends).
//! - Each event's hash chains to the previous one, so an edited, deleted or reordered
//!   event is found by [`Db::verify_chain`].
//! - Every read of people's data is on record in the access log ([`Db::record_access`]):
//!   a hash chain of its own, append-only (triggers on both backends), pruned only from
//!   its oldest end past its retention ([`Db::prune_access`]), checked by
//!   [`Db::verify_access_chain`].
//!
//! This crate knows nothing about handlers, projections, workflows or HTTP: it stores
//! the outcome the dispatcher hands it, and nothing more.
//!
//! Its floors, each of which uses only those below it:
//! 1. values: [`value`](crate::Sql) (statements, arguments), `error`, `hash`, `event`;
//! 2. `backend`: SQLite and PostgreSQL, the only modules that know a driver, behind one
//!    [`Conn`] and one [`Row`];
//! 3. reads (`read`, `spans`) on a [`Conn`];
//! 4. `state`: what a transaction knows of the log before it commits, and how it is
//!    written; `tx`: the transaction; `append`: the append protocol on it;
//! 5. `writer`: group commit; `db`: the ways in (its opening table says which to use);
//!    `audit`, `access`, `backup` and `migrate` on a [`Db`]; `foreign`: another system's database, only
//!    read (an import's source).
//!
//! Everything other crates use is re-exported here; the modules are private.
#![warn(unreachable_pub)]

mod access;
mod append;
mod audit;
mod backend;
mod backup;
mod db;
mod error;
mod event;
mod foreign;
mod hash;
mod migrate;
mod read;
mod seal;
mod spans;
mod state;
mod tx;
mod value;
mod watch;
mod writer;

pub use access::{
    AccessAnchorStatus, AccessAuditReport, AccessBreach, AccessRecord, AccessVia,
    PERSONAL_EVENT_TYPES, StoredAccess, is_personal, personal_subjects,
};
pub use append::{AppendError, MAX_EVENT_DATA_BYTES, PendingAppend, Prepared};
pub use audit::checkpoint::{AccessMark, AuditKey, Checkpoint, CheckpointError, PublicKey};
pub use audit::{Anchor, AnchorStatus, AuditReport, Breach, ChainCheck, Problem};
pub use backend::{Conn, DbValue, Row};
pub use backup::{BackupError, BackupMark};
pub use db::{
    Db, DbOptions, Reader, Session, Snapshot, WriterPause, default_url, quote_ident, redact_url,
};
pub use error::{ConnectError, DbError, DbErrorKind, PassingRetry};
pub use event::{
    AppendRequest, Expected, HoldCause, IdempotencyKey, IdempotencyKeyError, NewEvent, Outcome,
    ProcessingError, RecordedEvent, StreamHold,
};
pub use foreign::ForeignDb;
pub use hash::{GENESIS, HashedColumns, canonical_json, event_hash, hex, normalize_json};
pub use migrate::{MIGRATIONS, MigrateError, Migration};
pub use read::{EventFilter, FailureCount, Head, ReadError};
pub use seal::{
    Erasure, Kek, KekError, KekMismatch, KeySet, Keyring, PersonalField, Restriction, RotateError,
    SealError, SealFault, SealPlace, SealedAhead, SubjectState,
};
pub use spans::{SpanKind, SpanRecord, flush_all_spans};
pub use value::{Arg, Backend, IntoArg, Sql, dialect};
pub use writer::{Admission, Priority, WriteMode, WriteOptions, WriterConfig};

/// A unit of work's future, as [`Db::write`] takes it.
pub use futures::future::BoxFuture;

pub use tx::Tx;
