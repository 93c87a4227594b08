//! Write transactions: a backend's transaction, what it knows of the log before it
//! commits ([`crate::state`]), the spans recorded in it, and what runs once it has
//! committed (the head watch, the span sink): never the writer that runs it.
//!
//! How a unit of work is kept apart from its neighbours in a writer batch is the
//! transaction's own business: work that may fail runs through [`Tx::isolated`] or
//! [`Tx::attempt`], which take a savepoint or mark the transaction as it must.

use std::sync::Arc;

use cairn_types::{ErrorCode, Position, StreamId};

use crate::backend::postgres::{Pipeline, Prepared};
use crate::backend::{Conn, Track, Transaction};
use crate::error::DbError;
use crate::spans::{SpanRecord, SpanSink};
use crate::state::{KnownLog, LogState, Mark};
use crate::value::{Backend, Sql};
use crate::watch::HeadWatch;

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

/// What runs after a transaction ends: the head watch, told of the new head when it
/// commits; the span sink, which takes the spans of a transaction that did not.
#[derive(Debug)]
pub(crate) struct AfterCommit {
    pub(crate) head: HeadWatch,
    pub(crate) spans: SpanSink,
    /// Keeps the data keys a committed transaction sealed with.
    pub(crate) keyring: Arc<crate::seal::Keyring>,
    /// Where access records queue for the log writer.
    pub(crate) access: crate::access::AccessSink,
}

/// A write transaction. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: Transaction,
    after: Option<Arc<AfterCommit>>,
    pub(crate) track: Track,
    pub(crate) log: LogState,
    pub(crate) spans: SpanBuffer,
    isolation: Isolation,
    savepoints: u32,
    /// Writes waiting to go out together (an optimistic batch on PostgreSQL).
    pipeline: Option<Pipeline>,
    /// The optimistic batch started from what the writer knew of the log, and checks
    /// the head with its first statement.
    from_known: bool,
}

impl Tx {
    pub(crate) fn new(
        inner: Transaction,
        after: Option<Arc<AfterCommit>>,
        isolation: Isolation,
    ) -> Tx {
        Tx {
            inner,
            spans: SpanBuffer {
                spans: Vec::new(),
                after: after.clone(),
            },
            after,
            track: Track::default(),
            log: LogState::default(),
            isolation,
            savepoints: 0,
            pipeline: None,
            from_known: false,
        }
    }

    /// Queues this transaction's writes to go out together (see
    /// [`crate::backend::postgres`]).
    pub(crate) fn pipelined(mut self, prepared: Option<Prepared>) -> Tx {
        self.pipeline = prepared.map(Pipeline::new);
        self
    }

    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        Conn::new(self.inner.conn(), Some(&self.track)).with_pipeline(self.pipeline.as_ref())
    }

    /// The transaction's connection once every event appended so far is written: for
    /// a statement that reads the log's own tables (a join with `domain_events` or
    /// `stream_holds`) and must see this transaction's appends.
    pub async fn settled_conn(&mut self) -> Result<Conn<'_>, DbError> {
        self.flush(false).await?;
        Ok(self.conn())
    }

    /// The backend the transaction runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend()
    }

    /// Runs `work` (a handler's writes, say) so that its failure is undone without
    /// undoing the rest of the transaction. `work` returns its value and whether to
    /// keep what it wrote. What it wrote is undone when it says not to keep it: by
    /// rolling back to a savepoint taken before it, where the transaction needs one,
    /// or else by marking the transaction, so that the log writer undoes the unit of
    /// work (it fails, or an optimistic batch runs again with savepoints).
    /// `fails_unit` says whether such a failure fails the caller's whole unit of work
    /// anyway: then a unit with a savepoint of its own needs none here.
    ///
    /// An `Err` from `work` (a conflicting write, a lost connection) is undone the same
    /// way where there is a savepoint, and handed back.
    pub async fn isolated<T>(
        &mut self,
        fails_unit: bool,
        work: impl AsyncFnOnce(&mut Conn<'_>) -> Result<(T, bool), DbError>,
    ) -> Result<T, DbError> {
        let savepoint = match self.isolation {
            Isolation::Standalone => true,
            Isolation::Unit => !fails_unit,
            Isolation::Optimistic => false,
        };
        let mut conn = self.conn();
        if !savepoint {
            let (value, keep) = work(&mut conn).await?;
            if !keep {
                // Its writes are still in the transaction.
                self.poison();
            }
            return Ok(value);
        }
        let mark = conn.savepoint("cairn_isolated").await?;
        match work(&mut conn).await {
            Ok((value, true)) => {
                conn.release_savepoint("cairn_isolated", mark).await?;
                Ok(value)
            }
            Ok((value, false)) => {
                conn.rollback_to_savepoint("cairn_isolated", mark).await?;
                Ok(value)
            }
            Err(error) => {
                conn.rollback_to_savepoint("cairn_isolated", mark).await?;
                Err(error)
            }
        }
    }

    /// Runs `work` in a savepoint, with the events it appends written before the
    /// savepoint is released, so that a failure to store them is its own: an `Err`
    /// undoes everything it did (in the database and in what the transaction knows of
    /// the log) and is handed back; the transaction goes on. The outer `Err` is a
    /// failure of the savepoint itself.
    pub async fn attempt<T, E: From<DbError>>(
        &mut self,
        work: impl AsyncFnOnce(&mut Tx) -> Result<T, E>,
    ) -> Result<Result<T, E>, DbError> {
        let mut savepoint = self.savepoint().await?;
        let done = match work(savepoint.tx()).await {
            Ok(value) => savepoint
                .tx()
                .flush(false)
                .await
                .map(|()| value)
                .map_err(E::from),
            Err(error) => Err(error),
        };
        match done {
            Ok(value) => {
                savepoint.release().await?;
                Ok(Ok(value))
            }
            Err(error) => {
                savepoint.rollback().await?;
                Ok(Err(error))
            }
        }
    }

    /// Whether a statement failed in this transaction and was not undone by rolling
    /// back to a savepoint. PostgreSQL refuses every statement after such a failure,
    /// and commits such a transaction as a rollback.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.track.poisoned()
    }

    /// Says that something failed in this transaction that only rolling back can undo.
    /// The transaction then refuses to commit, and a unit of work that reports success
    /// anyway fails, unless the failure is undone by rolling back to a savepoint opened
    /// before it. In an optimistic batch it makes the writer run the batch again, with
    /// a savepoint around each unit.
    fn poison(&mut self) {
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
    /// while the rest of the transaction stays.
    pub(crate) async fn savepoint(&mut self) -> Result<Savepoint<'_>, DbError> {
        self.savepoints += 1;
        let name = format!("cairn_sp_{}", self.savepoints);
        self.conn()
            .execute_script(Sql::built(format!("SAVEPOINT {name}")))
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
        let mut conn =
            Conn::new(self.inner.conn(), Some(&self.track)).with_pipeline(self.pipeline.as_ref());
        conn.send_queued().await?;
        crate::state::flush(&mut conn, &mut self.log, &mut self.spans.spans, committing).await
    }

    /// Commits: writes what is pending, then commits, then tells the head watch.
    pub async fn commit(self) -> Result<(), DbError> {
        self.commit_returning().await.0.map_err(|(error, _)| error)
    }

    /// Commits; hands back the SQLite writer's own connection, whatever the result.
    /// `Err((error, before_commit))` says whether it failed before the commit
    /// statement was sent (nothing happened, and the transaction was rolled back) or
    /// at it.
    pub(crate) async fn commit_returning(
        mut self,
    ) -> (
        Result<(), (DbError, bool)>,
        Option<crate::backend::sqlite::Connection>,
    ) {
        let written = if self.is_poisoned() {
            Err(DbError::decode(
                "(transaction)",
                "a statement failed in this transaction and was not undone; it was rolled back",
            ))
        } else {
            self.flush(true).await
        };
        let Tx {
            inner, after, log, ..
        } = self;
        if let Err(error) = written {
            let (_, conn) = inner.end(false).await;
            return (Err((error, true)), conn);
        }
        let (result, conn) = inner.end(true).await;
        if result.is_ok() {
            after_commit(after.as_deref(), &log.appended);
            remember_keys(after.as_deref(), &log.sealed_keys);
        }
        (result.map_err(|error| (error, false)), conn)
    }

    /// Rolls back. Spans recorded in the transaction are still written, on their own:
    /// they describe hops that ran.
    pub async fn rollback(self) -> Result<(), DbError> {
        self.rollback_returning(true).await.0
    }

    /// Rolls back and hands back the SQLite writer's own connection; spans recorded in
    /// it are dropped when `keep_spans` is false (a batch about to run again records
    /// them again).
    pub(crate) async fn rollback_returning(
        mut self,
        keep_spans: bool,
    ) -> (
        Result<(), DbError>,
        Option<crate::backend::sqlite::Connection>,
    ) {
        if !keep_spans {
            self.spans.spans.clear();
        }
        let Tx { inner, .. } = self;
        inner.end(false).await
    }

    /// Whether this is the PostgreSQL writer's optimistic batch.
    pub(crate) fn is_batch(&self) -> bool {
        matches!(self.inner, Transaction::PgBatch(_))
    }

    /// Begins the PostgreSQL writer's optimistic batch. When the writer knows the
    /// head and every one of `streams` from its last batch (`known`), nothing is read:
    /// `BEGIN` and the check that the head is unchanged go out with the batch's first
    /// script, often its only one. Otherwise `BEGIN`, the head lock and the states of
    /// `streams`, in one round trip. Nothing to do on other transactions.
    pub(crate) async fn open_batch(
        &mut self,
        streams: &[StreamId],
        known: Option<&KnownLog>,
    ) -> Result<bool, DbError> {
        let (Transaction::PgBatch(batch), Some(pipeline)) = (&mut self.inner, &self.pipeline)
        else {
            return Ok(false);
        };
        let mut wanted: Vec<StreamId> = streams.to_vec();
        wanted.sort();
        wanted.dedup();
        if let Some(known) = known.filter(|known| known.covers(&wanted)) {
            batch.begin_lazily();
            pipeline.begin_with(crate::state::HEAD_IS, known.head_args());
            self.log.head = Some(known.head.clone());
            for id in wanted {
                let state = known.streams.get(&id).cloned().flatten();
                self.log.learn_stream(id, state);
            }
            self.from_known = true;
            return Ok(true);
        }
        let ids: Vec<uuid::Uuid> = wanted.iter().map(StreamId::as_uuid).collect();
        // A prepared statement, so that its plan is kept: planned anew for every batch,
        // the head-and-streams query costs more than it takes to run.
        let rows = batch
            .open(
                "cairn_open_batch",
                crate::state::HEAD_AND_STREAMS_BOUND,
                &ids,
                pipeline,
            )
            .await?;
        let rows: Vec<crate::backend::Row> = rows
            .into_iter()
            .map(crate::backend::Row::postgres)
            .collect();
        self.log.learn_head_and_streams(&rows, wanted)?;
        Ok(true)
    }

    /// Whether the batch started from what the writer knew.
    pub(crate) fn started_from_known(&self) -> bool {
        self.from_known
    }

    /// Commits the PostgreSQL writer's optimistic batch: its queued writes, its rows
    /// of the log, the head and the notification, and `COMMIT`, in one round trip.
    /// `Err((error, committed_maybe))`: whether the commit may have happened anyway
    /// (the connection failed), or surely did not (PostgreSQL refused a statement).
    pub(crate) async fn commit_batch(
        mut self,
        known: Option<KnownLog>,
    ) -> Result<Option<KnownLog>, (DbError, bool)> {
        if self.is_poisoned() {
            return Err((
                DbError::decode("(batch)", "a statement failed and was not undone"),
                false,
            ));
        }
        let (Transaction::PgBatch(batch), Some(pipeline)) = (&mut self.inner, &self.pipeline)
        else {
            return Err((DbError::decode("(batch)", "not a PostgreSQL batch"), false));
        };
        crate::state::queue_final_rows(Some(pipeline), &mut self.log, &mut self.spans.spans);
        batch.commit(pipeline, &self.track).await?;
        let from_known = self.from_known;
        let Tx { after, log, .. } = self;
        after_commit(after.as_deref(), &log.appended);
        remember_keys(after.as_deref(), &log.sealed_keys);
        // What this batch leaves known; what was known before it still holds when the
        // batch started from it (the head was unchanged, so nothing else committed).
        let LogState { head, streams, .. } = log;
        Ok(head.map(|head| KnownLog::after(known.filter(|_| from_known), head, streams)))
    }

    /// How many spans were recorded so far.
    pub(crate) fn span_count(&self) -> usize {
        self.spans.spans.len()
    }

    /// Hands the spans recorded since `from` to the background span writer: a unit
    /// that refused will not run again, and its spans describe hops that ran.
    pub(crate) fn release_spans_since(&mut self, from: usize) {
        if let Some(after) = &self.after {
            for span in self.spans.spans.drain(from.min(self.spans.spans.len())..) {
                after.spans.record(span);
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
    after: Option<Arc<AfterCommit>>,
}

impl Drop for SpanBuffer {
    fn drop(&mut self) {
        if let Some(after) = &self.after {
            for span in self.spans.drain(..) {
                after.spans.record(span);
            }
        }
    }
}

/// Keys sealed with in a committed transaction are committed: the keyring keeps them.
fn remember_keys(
    after: Option<&AfterCommit>,
    keys: &[(cairn_types::UserId, crate::seal::KeyState)],
) {
    if let Some(after) = after
        && !keys.is_empty()
    {
        after.keyring.remember(keys);
    }
}

fn after_commit(after: Option<&AfterCommit>, appended: &[(Position, String, Option<ErrorCode>)]) {
    let (Some(after), Some(last)) = (after, appended.iter().map(|(p, _, _)| *p).max()) else {
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
    after.head.advance(last);
}

/// A savepoint inside a [`Tx`]. Dropped without [`Savepoint::release`] or
/// [`Savepoint::rollback`], it stays open and its work part of the transaction.
#[derive(Debug)]
pub(crate) struct Savepoint<'t> {
    tx: &'t mut Tx,
    name: String,
    mark: Mark,
    /// Whether no failure was pending when it opened: rolling back then undoes every
    /// failure since.
    healthy: bool,
}

impl Savepoint<'_> {
    /// The transaction, for work inside the savepoint.
    pub(crate) fn tx(&mut self) -> &mut Tx {
        self.tx
    }

    /// Keeps the work done inside the savepoint.
    pub(crate) async fn release(self) -> Result<(), DbError> {
        let statement = format!("RELEASE SAVEPOINT {}", self.name);
        self.tx.conn().execute_script(Sql::built(statement)).await
    }

    /// Undoes the work done inside the savepoint, a failed statement included.
    pub(crate) async fn rollback(self) -> Result<(), DbError> {
        let statement = format!(
            "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}",
            name = self.name
        );
        self.tx.conn().execute_script(Sql::built(statement)).await?;
        if self.healthy {
            self.tx.track.clear();
        }
        self.tx.log.restore(&self.mark, true);
        Ok(())
    }
}
