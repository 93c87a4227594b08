//! Write transactions, and what a transaction keeps of the log before it commits.
//!
//! A [`Tx`] holds the log's head in memory once it has locked it, and the events
//! appended through it until they are written: at commit, or before the transaction
//! reads the log itself. A batch of the log writer appends many events to many streams
//! in one transaction; they reach the database in a few multi-row statements instead
//! of one statement each, and the head row is written once.
//!
//! Invariant: what a transaction reads through its own log calls (the head, a stream's
//! version, an idempotency key) includes what it appended, written or not, and a
//! savepoint rolled back forgets both the rows and the memory of them.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Postgres;

use cairn_types::{ErrorCode, Position, StreamId, StreamVersion};

use crate::db::Shared;
use crate::error::DbError;
use crate::event::RecordedEvent;
use crate::read::Head;
use crate::spans::SpanRecord;
use crate::sql::{Backend, Conn, ConnInner, Track};

/// How a transaction isolates the handlers that run in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// A transaction of its own ([`crate::Db::begin`]): a handler that may fail runs in
    /// a savepoint, so its failure is undone and the rest stays.
    Standalone,
    /// One unit of work in a writer batch, inside a savepoint of its own: a handler
    /// whose failure fails the unit needs no savepoint of its own.
    Unit,
    /// A writer batch run without savepoints: a failure that needs undoing asks the
    /// writer to run the batch again, carefully.
    Optimistic,
}

pub(crate) enum TxInner {
    /// A read snapshot on one of SQLite's read connections.
    DirectRead(DirectRead),
    Postgres(sqlx::Transaction<'static, Postgres>),
    /// The PostgreSQL writer's optimistic batch, begun and committed by hand so that
    /// `BEGIN` and `COMMIT` share round trips with the batch's first and last
    /// statements.
    PgBatch(PgBatch),
    Direct(DirectTx),
}

/// A read transaction on one of SQLite's read connections: one snapshot of the file
/// for every statement in it. Ended (rolled back) when the lease goes home.
pub(crate) struct DirectRead {
    lease: crate::direct::ReadLease,
}

impl DirectRead {
    pub(crate) fn begin(mut lease: crate::direct::ReadLease) -> Result<DirectRead, DbError> {
        lease.conn().execute_batch("BEGIN DEFERRED")?;
        Ok(DirectRead { lease })
    }
}

/// A transaction on the PostgreSQL writer's connection, begun and ended by hand.
pub(crate) struct PgBatch {
    conn: Option<sqlx::pool::PoolConnection<Postgres>>,
    open: bool,
}

impl PgBatch {
    pub(crate) fn new(conn: sqlx::pool::PoolConnection<Postgres>) -> PgBatch {
        PgBatch {
            conn: Some(conn),
            open: false,
        }
    }

    fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.conn
            .as_mut()
            .expect("a batch holds its connection until it ends")
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

impl std::fmt::Debug for TxInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxInner::DirectRead(_) => "DirectRead",
            TxInner::Postgres(_) => "Postgres",
            TxInner::PgBatch(_) => "PgBatch",
            TxInner::Direct(_) => "Direct",
        })
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

    fn conn(&mut self) -> &mut rusqlite::Connection {
        self.conn
            .as_mut()
            .expect("a direct transaction holds its connection until it ends")
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn finish(&mut self, statement: &str) -> Result<(), DbError> {
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

/// An event appended in this transaction, with its metadata exactly as hashed.
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    pub(crate) event: RecordedEvent,
    pub(crate) metadata: Value,
}

/// An idempotency key used in this transaction.
#[derive(Debug, Clone)]
pub(crate) struct PendingKey {
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    pub(crate) first_position: Position,
    pub(crate) n_events: i64,
    pub(crate) created_at: DateTime<Utc>,
}

/// A stream with events, as this transaction knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KnownStream {
    pub(crate) stream_type: String,
    pub(crate) version: StreamVersion,
    pub(crate) hold: Option<crate::event::StreamHold>,
}

/// A stream as this transaction knows it, or `None` when it has no events.
pub(crate) type StreamState = Option<KnownStream>;

/// What a transaction knows of the log beyond what it has written.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// The head including this transaction's appends; `None` until locked.
    pub(crate) head: Option<Head>,
    /// Whether `log_head` in the database lags `head`.
    pub(crate) head_dirty: bool,
    /// Failed events appended but not yet counted in `log_head`.
    pub(crate) failed_unwritten: i64,
    /// Every event appended; `rows[..flushed]` are in the database.
    pub(crate) rows: Vec<PendingRow>,
    pub(crate) flushed: usize,
    /// Streams read or appended to in this transaction.
    pub(crate) streams: HashMap<StreamId, StreamState>,
    /// How to forget stream states learned after a mark.
    undo: Vec<(StreamId, Option<StreamState>)>,
    /// Idempotency keys used; `keys[..keys_flushed]` are in the database.
    pub(crate) keys: Vec<PendingKey>,
    pub(crate) keys_flushed: usize,
    /// Events appended, for the metrics and the head watch once committed.
    pub(crate) appended: Vec<(Position, String, Option<ErrorCode>)>,
}

/// A point to roll the log state back to.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    head: Option<Head>,
    head_dirty: bool,
    failed_unwritten: i64,
    rows: usize,
    flushed: usize,
    undo: usize,
    keys: usize,
    keys_flushed: usize,
    appended: usize,
}

impl LogState {
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            head: self.head.clone(),
            head_dirty: self.head_dirty,
            failed_unwritten: self.failed_unwritten,
            rows: self.rows.len(),
            flushed: self.flushed,
            undo: self.undo.len(),
            keys: self.keys.len(),
            keys_flushed: self.keys_flushed,
            appended: self.appended.len(),
        }
    }

    /// Forgets everything after `mark`. `database_rolled_back` says whether the database
    /// was rolled back to the same point (a savepoint), or still holds what was
    /// written since (only memory is rolled back).
    pub(crate) fn restore(&mut self, mark: &Mark, database_rolled_back: bool) {
        if database_rolled_back {
            // Rows written inside the savepoint are gone from the database, those of
            // earlier work included: they are written again.
            self.flushed = self.flushed.min(mark.flushed);
            self.keys_flushed = self.keys_flushed.min(mark.keys_flushed);
            self.head_dirty = mark.head_dirty || self.head_dirty;
        }
        self.head.clone_from(&mark.head);
        self.failed_unwritten = mark.failed_unwritten;
        self.rows.truncate(mark.rows);
        self.keys.truncate(mark.keys);
        self.appended.truncate(mark.appended);
        while self.undo.len() > mark.undo {
            if let Some((stream_id, previous)) = self.undo.pop() {
                match previous {
                    Some(state) => self.streams.insert(stream_id, state),
                    None => self.streams.remove(&stream_id),
                };
            }
        }
        if database_rolled_back {
            // A head written inside the savepoint is undone too; write it again.
            self.head_dirty = true;
        }
    }

    /// Learns a stream's state, remembering how to forget it.
    pub(crate) fn learn_stream(&mut self, stream_id: StreamId, state: StreamState) {
        let previous = self.streams.insert(stream_id, state);
        self.undo.push((stream_id, previous));
    }

    /// Whether there is anything to write before commit.
    pub(crate) fn unwritten(&self) -> bool {
        self.flushed < self.rows.len()
            || self.keys_flushed < self.keys.len()
            || self.head_dirty
            || self.failed_unwritten != 0
    }
}

/// A write transaction. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    pub(crate) inner: TxInner,
    /// Told of the new head when a transaction that appended commits.
    pub(crate) shared: Option<Arc<Shared>>,
    pub(crate) track: Track,
    pub(crate) log: LogState,
    pub(crate) spans: SpanBuffer,
    pub(crate) isolation: Isolation,
    savepoints: u32,
    /// Writes waiting to go out together (an optimistic batch on PostgreSQL).
    pipeline: Option<crate::pipeline::Pipeline>,
}

impl Tx {
    pub(crate) fn new(inner: TxInner, shared: Option<Arc<Shared>>, isolation: Isolation) -> Tx {
        let spans_shared = shared.clone();
        Tx {
            inner,
            shared,
            track: Track::default(),
            log: LogState::default(),
            spans: SpanBuffer {
                spans: Vec::new(),
                shared: spans_shared,
            },
            isolation,
            savepoints: 0,
            pipeline: None,
        }
    }

    pub(crate) fn is_pg_batch(&self) -> bool {
        matches!(self.inner, TxInner::PgBatch(_))
    }

    /// Begins the PostgreSQL writer's optimistic batch: `BEGIN`, the head lock and the
    /// versions of `streams`, in one round trip.
    pub(crate) async fn open_pg_batch(
        &mut self,
        streams: &[cairn_types::StreamId],
    ) -> Result<(), DbError> {
        let TxInner::PgBatch(batch) = &mut self.inner else {
            return Ok(());
        };
        let mut wanted: Vec<cairn_types::StreamId> = streams.to_vec();
        wanted.sort();
        wanted.dedup();
        // UUIDs are written as their hyphenated hex digits: nothing to escape.
        let ids: Vec<String> = wanted
            .iter()
            .map(|id| id.as_uuid().hyphenated().to_string())
            .collect();
        // A prepared statement, so that its plan is kept: planned anew for every batch,
        // the head-and-streams query costs more than it takes to run. Prepared on the
        // connection with the batch's first use of it, in the same round trip.
        const NAME: &str = "cairn_open_batch";
        let prepared = self
            .pipeline
            .as_ref()
            .is_some_and(|pipeline| pipeline.is_prepared(NAME));
        let prepare = if prepared {
            String::new()
        } else {
            format!(
                "PREPARE {NAME} (uuid[]) AS {};",
                crate::append::HEAD_AND_STREAMS_BOUND
            )
        };
        let script = format!("BEGIN; {prepare} EXECUTE {NAME}('{{{}}}')", ids.join(","));
        batch.open = true;
        // The statements answer in order: BEGIN, then the PREPARE (remembered as soon
        // as it is answered, so that a failure after it never prepares it twice), then
        // the rows.
        let mut rows = Vec::new();
        let mut answered = 0;
        {
            use futures::TryStreamExt as _;
            let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).fetch_many(batch.conn());
            while let Some(result) = results.try_next().await? {
                match result {
                    sqlx::Either::Left(_) => {
                        answered += 1;
                        if answered == 2
                            && !prepared
                            && let Some(pipeline) = &self.pipeline
                        {
                            pipeline.mark_prepared(NAME);
                        }
                    }
                    sqlx::Either::Right(row) => rows.push(row),
                }
            }
        }
        let mut found = std::collections::HashMap::new();
        let mut head = None;
        for row in rows.into_iter().map(crate::sql::Row::Postgres) {
            if head.is_none() {
                head = Some(crate::read::head_from_row(&row)?);
            }
            let stream: Option<cairn_types::StreamId> = row.get("stream_id")?;
            if let Some(stream) = stream {
                found.insert(stream, crate::append::known_stream(&row)?);
            }
        }
        let Some(head) = head else {
            return Err(DbError::decode("log_head", "the log's head row is missing"));
        };
        self.log.head = Some(head);
        for id in wanted {
            let state = found.remove(&id).flatten();
            self.log.learn_stream(id, state);
        }
        Ok(())
    }

    /// Commits the PostgreSQL writer's optimistic batch: its queued writes, its rows
    /// of the log, the head and the notification, and `COMMIT`, in one round trip.
    /// `Err((error, committed_maybe))`: whether the commit may have happened anyway
    /// (the connection failed), or surely did not (PostgreSQL refused a statement).
    pub(crate) async fn commit_pg_batch(mut self) -> Result<(), (DbError, bool)> {
        if self.is_poisoned() {
            return Err((
                DbError::decode("(batch)", "a statement failed and was not undone"),
                false,
            ));
        }
        crate::append::queue_final_rows(
            self.pipeline.as_ref(),
            &mut self.log,
            &mut self.spans.spans,
        );
        let sent = {
            let TxInner::PgBatch(batch) = &mut self.inner else {
                return Err((DbError::decode("(batch)", "not a PostgreSQL batch"), false));
            };
            match &self.pipeline {
                Some(pipeline) => pipeline.send(batch.conn(), Some(&self.track), true).await,
                None => Err(DbError::decode("(batch)", "a batch without its queue")),
            }
        };
        match sent {
            Ok(()) => {
                if let TxInner::PgBatch(batch) = &mut self.inner {
                    batch.open = false;
                }
                let Tx { shared, log, .. } = self;
                after_commit(shared.as_deref(), &log.appended);
                Ok(())
            }
            Err(error) => {
                let in_doubt = error.kind() == crate::error::DbErrorKind::Unavailable;
                if !in_doubt && let TxInner::PgBatch(batch) = &mut self.inner {
                    // PostgreSQL stopped the script at the refusal: roll back and keep
                    // the connection (and the statements prepared on it).
                    if sqlx::raw_sql("ROLLBACK")
                        .execute(batch.conn())
                        .await
                        .is_ok()
                    {
                        batch.open = false;
                    }
                }
                Err((error, in_doubt))
            }
        }
    }

    /// Queues this transaction's writes to go out together (see [`crate::pipeline`]).
    pub(crate) fn pipelined(mut self, prepared: crate::pipeline::Prepared) -> Tx {
        self.pipeline = Some(crate::pipeline::Pipeline::new(prepared));
        self
    }

    /// Rolls back the PostgreSQL writer's batch, keeping its connection when it can.
    pub(crate) async fn rollback_pg_batch(mut self) {
        if let TxInner::PgBatch(batch) = &mut self.inner
            && batch.open
            && sqlx::raw_sql("ROLLBACK")
                .execute(batch.conn())
                .await
                .is_ok()
        {
            batch.open = false;
        }
    }

    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        let inner = match &mut self.inner {
            TxInner::DirectRead(tx) => ConnInner::Direct(tx.lease.conn()),
            TxInner::Postgres(tx) => ConnInner::Postgres(tx),
            TxInner::PgBatch(tx) => ConnInner::Postgres(tx.conn()),
            TxInner::Direct(tx) => ConnInner::Direct(tx.conn()),
        };
        Conn::new(inner, Some(&self.track)).with_pipeline(self.pipeline.as_ref())
    }

    /// The backend the transaction runs on.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            TxInner::DirectRead(_) | TxInner::Direct(_) => Backend::Sqlite,
            TxInner::Postgres(_) | TxInner::PgBatch(_) => Backend::Postgres,
        }
    }

    /// Whether a statement failed in this transaction and was not undone by rolling
    /// back to a savepoint. PostgreSQL refuses every statement after such a failure,
    /// and commits such a transaction as a rollback.
    pub fn is_poisoned(&self) -> bool {
        self.track.poisoned()
    }

    /// Whether a handler that may fail must run in a savepoint of its own: `fails_unit`
    /// says whether its failure fails the whole unit of work anyway.
    pub fn handler_needs_savepoint(&self, fails_unit: bool) -> bool {
        match self.isolation {
            Isolation::Standalone => true,
            Isolation::Unit => !fails_unit,
            Isolation::Optimistic => false,
        }
    }

    /// Says that something failed in this transaction that only rolling back can undo
    /// (a handler that ran without a savepoint of its own failed after writing). The
    /// transaction then refuses to commit, and a unit of work that reports success
    /// anyway fails, unless the failure is undone by rolling back to a savepoint opened
    /// before it. In an optimistic batch it makes the writer run the batch again, with
    /// a savepoint around each unit.
    pub fn poison(&mut self) {
        self.track
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a span of a hop that ran in this transaction; it is written when the
    /// transaction commits, or on its own if the transaction rolls back.
    pub fn record_span(&mut self, span: SpanRecord) {
        self.spans.spans.push(span);
    }

    /// Opens a savepoint: work done through it is undone by [`Savepoint::rollback`]
    /// (or by dropping it unreleased, at the next statement) while the rest of the
    /// transaction stays.
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_>, DbError> {
        self.savepoints += 1;
        let name = format!("cairn_sp_{}", self.savepoints);
        self.conn()
            .execute_script(crate::sql::Sql::built(format!("SAVEPOINT {name}")))
            .await?;
        let mark = self.log.mark();
        let healthy = !self.is_poisoned();
        Ok(Savepoint {
            tx: self,
            name,
            mark,
            healthy,
        })
    }

    /// Writes the events appended so far now, rather than with the commit, so that a
    /// failure to store them surfaces here: inside a savepoint the caller can roll
    /// back (the safety net's fallback), rather than at commit, where it fails the
    /// whole transaction.
    pub async fn write_pending(&mut self) -> Result<(), DbError> {
        self.flush(false).await
    }

    pub(crate) fn mark(&self) -> Mark {
        self.log.mark()
    }

    /// Writes what the log state holds: the pending events, idempotency keys and
    /// spans, and the head.
    pub(crate) async fn flush(&mut self, committing: bool) -> Result<(), DbError> {
        if !self.log.unwritten()
            && self.spans.spans.is_empty()
            && self.pipeline.as_ref().is_none_or(|p| p.is_empty())
        {
            return Ok(());
        }
        let inner = match &mut self.inner {
            TxInner::DirectRead(tx) => ConnInner::Direct(tx.lease.conn()),
            TxInner::Postgres(tx) => ConnInner::Postgres(tx),
            TxInner::PgBatch(tx) => ConnInner::Postgres(tx.conn()),
            TxInner::Direct(tx) => ConnInner::Direct(tx.conn()),
        };
        let mut conn = Conn::new(inner, Some(&self.track)).with_pipeline(self.pipeline.as_ref());
        conn.send_queued().await?;
        crate::append::flush(&mut conn, &mut self.log, &mut self.spans.spans, committing).await
    }

    /// Commits: writes what is pending, then commits, then tells the head watch.
    pub async fn commit(mut self) -> Result<(), DbError> {
        if self.is_poisoned() {
            return Err(DbError::decode(
                "(transaction)",
                "a statement failed in this transaction and was not undone; it was rolled back",
            ));
        }
        self.flush(true).await?;
        let Tx {
            inner, shared, log, ..
        } = self;
        match inner {
            TxInner::DirectRead(mut tx) => tx.lease.conn().execute_batch("COMMIT")?,
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::PgBatch(mut tx) => {
                sqlx::raw_sql("COMMIT").execute(tx.conn()).await?;
                tx.open = false;
            }
            TxInner::Direct(mut tx) => tx.finish("COMMIT")?,
        }
        after_commit(shared.as_deref(), &log.appended);
        Ok(())
    }

    /// Commits the writer's own transaction on its direct connection and hands the
    /// connection back.
    pub(crate) async fn commit_direct(
        mut self,
    ) -> (Result<(), DbError>, Option<rusqlite::Connection>) {
        let result = if self.is_poisoned() {
            Err(DbError::decode(
                "(transaction)",
                "a statement failed in this transaction and was not undone; it was rolled back",
            ))
        } else {
            self.flush(true).await
        };
        let Tx {
            inner, shared, log, ..
        } = self;
        let TxInner::Direct(mut tx) = inner else {
            return (result, None);
        };
        let result = match result {
            Ok(()) => tx.finish("COMMIT"),
            Err(error) => Err(error),
        };
        if result.is_ok() {
            after_commit(shared.as_deref(), &log.appended);
        }
        (result, Some(tx.into_connection()))
    }

    /// Rolls back. Spans recorded in the transaction are still written, on their own:
    /// they describe hops that ran.
    pub async fn rollback(self) -> Result<(), DbError> {
        let Tx { inner, .. } = self;
        match inner {
            TxInner::DirectRead(mut tx) => tx.lease.conn().execute_batch("ROLLBACK")?,
            TxInner::Postgres(tx) => tx.rollback().await?,
            TxInner::PgBatch(mut tx) => {
                sqlx::raw_sql("ROLLBACK").execute(tx.conn()).await?;
                tx.open = false;
            }
            TxInner::Direct(mut tx) => tx.finish("ROLLBACK")?,
        }
        Ok(())
    }

    /// Rolls back the writer's own transaction and hands the connection back; spans
    /// recorded in it are dropped when `keep_spans` is false (a batch about to run
    /// again records them again).
    pub(crate) fn rollback_direct(mut self, keep_spans: bool) -> Option<rusqlite::Connection> {
        if !keep_spans {
            self.spans.spans.clear();
        }
        let Tx { inner, .. } = self;
        match inner {
            TxInner::Direct(tx) => Some(tx.into_connection()),
            _ => None,
        }
    }

    /// Drops the spans recorded so far (an optimistic batch about to run again).
    pub(crate) fn discard_spans(&mut self) {
        self.spans.spans.clear();
    }

    /// How many spans were recorded so far.
    pub(crate) fn span_count(&self) -> usize {
        self.spans.spans.len()
    }

    /// Hands the spans recorded since `from` to the background span writer: a unit
    /// that refused will not run again, and its spans describe hops that ran.
    pub(crate) fn release_spans_since(&mut self, from: usize) {
        if let Some(shared) = &self.spans.shared {
            for span in self.spans.spans.drain(from.min(self.spans.spans.len())..) {
                shared.spans.record(span);
            }
        }
    }

    pub(crate) fn failures(&self) -> u64 {
        self.track.failures()
    }

    pub(crate) fn writes(&self) -> u64 {
        self.track.writes()
    }

    /// Opens the savepoint a writer batch runs one unit of work in.
    pub(crate) async fn open_unit(&mut self) -> Result<(), DbError> {
        self.conn().execute_script("SAVEPOINT cairn_unit").await
    }

    /// Keeps the unit's work.
    pub(crate) async fn release_unit(&mut self) -> Result<(), DbError> {
        self.conn()
            .execute_script("RELEASE SAVEPOINT cairn_unit")
            .await
    }

    /// Undoes the unit's work, in the database and in the log state.
    pub(crate) async fn undo_unit(&mut self, mark: &Mark) -> Result<(), DbError> {
        self.conn()
            .execute_script("ROLLBACK TO SAVEPOINT cairn_unit; RELEASE SAVEPOINT cairn_unit")
            .await?;
        self.track.clear();
        self.log.restore(mark, true);
        Ok(())
    }

    /// Forgets the log state after `mark` when the unit wrote nothing to the database.
    pub(crate) fn forget_since(&mut self, mark: &Mark) {
        self.log.restore(mark, false);
    }
}

/// The spans recorded in a transaction. Those it does not commit (it rolled back, or
/// was dropped) go to the background span writer when it ends: they describe hops that
/// ran, whether or not their work was kept.
#[derive(Debug)]
pub(crate) struct SpanBuffer {
    pub(crate) spans: Vec<SpanRecord>,
    shared: Option<Arc<Shared>>,
}

impl Drop for SpanBuffer {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            for span in self.spans.drain(..) {
                shared.spans.record(span);
            }
        }
    }
}

fn after_commit(shared: Option<&Shared>, appended: &[(Position, String, Option<ErrorCode>)]) {
    let (Some(shared), Some(last)) = (shared, appended.iter().map(|(p, _, _)| *p).max()) else {
        return;
    };
    let metrics = cairn_observe::metrics();
    for (_, event_type, failed) in appended {
        metrics
            .events_appended
            .get_or_create(&cairn_observe::EventLabels {
                event_type: event_type.clone(),
            })
            .inc();
        if let Some(code) = failed {
            metrics
                .events_failed
                .get_or_create(&cairn_observe::FailedLabels {
                    event_type: event_type.clone(),
                    code: code.to_string(),
                })
                .inc();
        }
    }
    shared.head.advance(last);
}

/// A savepoint inside a [`Tx`]. Dropped without [`Savepoint::release`] or
/// [`Savepoint::rollback`], it stays open and its work part of the transaction.
#[derive(Debug)]
pub struct Savepoint<'t> {
    tx: &'t mut Tx,
    name: String,
    mark: Mark,
    /// Whether no failure was pending when it opened: rolling back then undoes every
    /// failure since.
    healthy: bool,
}

impl Savepoint<'_> {
    /// The transaction, for work inside the savepoint.
    pub fn tx(&mut self) -> &mut Tx {
        self.tx
    }

    /// The savepoint's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        self.tx.conn()
    }

    /// Keeps the work done inside the savepoint.
    pub async fn release(self) -> Result<(), DbError> {
        let statement = format!("RELEASE SAVEPOINT {}", self.name);
        self.tx
            .conn()
            .execute_script(crate::sql::Sql::built(statement))
            .await
    }

    /// Undoes the work done inside the savepoint, a failed statement included.
    pub async fn rollback(self) -> Result<(), DbError> {
        let statement = format!(
            "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}",
            name = self.name
        );
        self.tx
            .conn()
            .execute_script(crate::sql::Sql::built(statement))
            .await?;
        if self.healthy {
            self.tx.track.clear();
        }
        self.tx.log.restore(&self.mark, true);
        Ok(())
    }
}
