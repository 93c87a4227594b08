//! The log writer: group commit.
//!
//! One writer per [`Db`](crate::Db) takes units of work (appends, commands, workflow
//! step records, retries, span batches) from a bounded queue and runs as many as are
//! waiting in one transaction: one head lock, one commit, one disk flush for all of
//! them. While a batch commits, the next one gathers, so the busier the log, the larger
//! the batches and the cheaper each write.
//!
//! Each unit runs in isolation from its neighbours: a unit that fails (its own error,
//! a failed statement, a panic) changes nothing and delays the others by no more than
//! its own running time. Two ways to get there:
//! - [`WriteMode::Savepoints`]: each unit runs inside a savepoint, rolled back if it
//!   fails.
//! - [`WriteMode::Optimistic`]: units run without savepoints. A unit that fails
//!   without having written anything is simply forgotten; one that refused after
//!   writing keeps its refusal (once its queued writes are confirmed to have done what
//!   they were reported to do) and the batch runs again without it; anything else (a
//!   failure to undo, a handler to roll back, a queued write that changed other than
//!   one row) makes the writer roll the batch back and run it again with savepoints.
//!   Units are closures the writer may call more than once.
//!
//! On PostgreSQL an optimistic batch starts from the head and the stream versions the
//! writer's last batch left, and sends `BEGIN`, a check that the head is unchanged
//! (which locks it), the units' writes, the log's rows and `COMMIT` as one script: one
//! round trip for a batch whose units read nothing. If another process moved the head
//! meanwhile, the check fails, nothing is kept, and the batch runs again reading the
//! head first, as batches then do for a while (other processes are writing).
//!
//! Invariants:
//! - Nothing accepted is lost: a unit taken into the queue is run, and its caller
//!   answered, even when the database is shutting down ([`Db::close`](crate::Db::close)
//!   drains the queue first).
//! - A caller hears of success only after the commit that made its work durable.
//! - The queue is bounded: past its capacity a caller waits for room or is refused with
//!   [`DbError::Overloaded`], as it asked ([`Admission`]). Urgent units (the record of
//!   an email already sent) are never refused and go first, in a batch of their own.
//!   A batch of normal work in progress when one arrives stops taking units: it
//!   commits what it ran and puts the rest back at the head of the queue (the
//!   unit-by-unit run after a failed batch stops likewise). An urgent unit so waits for
//!   at most one normal unit's running time and one commit before its own batch,
//!   however long the queue; more only when that batch meets a failure and runs again.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::{Notify, oneshot};

use cairn_types::StreamId;

use crate::backend::WriterHome;
use crate::backend::sqlite::Lent;
use crate::error::DbError;
use crate::spans::{SpanRecord, WriteSpans};
use crate::state::KnownLog;
use crate::tx::{AfterCommit, Isolation, Tx};

/// How the writer keeps one failing unit from affecting its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// A savepoint around every unit.
    Savepoints,
    /// No savepoints; a batch with a failure to undo runs again with savepoints.
    Optimistic,
}

impl WriteMode {
    /// `savepoints` or `optimistic`.
    pub const fn as_str(self) -> &'static str {
        match self {
            WriteMode::Savepoints => "savepoints",
            WriteMode::Optimistic => "optimistic",
        }
    }
}

impl std::str::FromStr for WriteMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "savepoints" => Ok(WriteMode::Savepoints),
            "optimistic" => Ok(WriteMode::Optimistic),
            other => Err(format!(
                "{other:?} is not a write mode: use savepoints or optimistic"
            )),
        }
    }
}

/// Where a unit goes in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Normal,
    /// Ahead of all normal work, in batches without normal work, and never refused:
    /// the record of something that already happened outside the database.
    Urgent,
}

/// What to do when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Admission {
    /// Wait for room: back-pressure for callers that can wait (the command line, the
    /// workflow engine).
    #[default]
    Wait,
    /// Refuse at once with [`DbError::Overloaded`]: for callers that answer someone who
    /// should try again later (an HTTP request).
    Refuse,
}

/// How a unit is submitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    pub priority: Priority,
    pub admission: Admission,
}

impl WriteOptions {
    /// Ahead of the queue.
    pub fn urgent() -> Self {
        Self {
            priority: Priority::Urgent,
            admission: Admission::Wait,
        }
    }
}

/// How the writer is set up.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Units waiting at most (urgent ones excepted).
    pub capacity: usize,
    /// Units per batch at most.
    pub max_batch: usize,
    pub mode: WriteMode,
}

impl WriterConfig {
    /// The defaults for a backend: savepoints cost nothing in SQLite's own thread and
    /// two round trips each on PostgreSQL.
    pub fn for_backend(backend: crate::Backend) -> Self {
        Self {
            capacity: 4096,
            max_batch: 256,
            mode: match backend {
                crate::Backend::Sqlite => WriteMode::Savepoints,
                crate::Backend::Postgres => WriteMode::Optimistic,
            },
        }
    }
}

/// How a unit's run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    /// It returned its result.
    Done,
    /// It returned an error (or panicked): whatever it did must be undone.
    Refused,
}

/// A unit of work, its result kept until the batch's fate is known.
pub(crate) trait Job: Send {
    /// Runs the work in the batch's transaction. May be called again if the batch runs
    /// again.
    fn run<'t>(&'t mut self, tx: &'t mut Tx) -> BoxFuture<'t, Ran>;
    /// The work said it succeeded, but a statement in it failed and was not undone:
    /// it is rolled back and its caller told so.
    fn poisoned(&mut self);
    /// Answers the caller: `Ok` once the batch committed, or the batch's error.
    fn answer(self: Box<Self>, fate: Result<(), &DbError>);
    /// Streams the work will append to, if it knows: the batch reads their versions
    /// in one statement.
    fn streams(&self) -> &[StreamId];
}

struct Work<F, T, E> {
    work: F,
    streams: Vec<StreamId>,
    /// The caller's tracing span: the work runs in it, as if the caller ran it.
    span: tracing::Span,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

impl<F, T, E> Job for Work<F, T, E>
where
    F: for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send,
    T: Send,
    E: From<DbError> + Send,
{
    fn run<'t>(&'t mut self, tx: &'t mut Tx) -> BoxFuture<'t, Ran> {
        Box::pin(async move {
            use tracing::Instrument as _;
            let future = (self.work)(tx).instrument(self.span.clone());
            let result = match AssertUnwindSafe(future).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(panic = %message, "a unit of work panicked in the log writer; it was rolled back");
                    Err(E::from(DbError::Panicked { message }))
                }
            };
            let ran = if result.is_ok() {
                Ran::Done
            } else {
                Ran::Refused
            };
            self.result = Some(result);
            ran
        })
    }

    fn poisoned(&mut self) {
        self.result = Some(Err(E::from(DbError::decode(
            "(unit of work)",
            "a statement failed inside this work, which went on as if it had not; it was rolled back",
        ))));
    }

    fn answer(self: Box<Self>, fate: Result<(), &DbError>) {
        let Work { result, reply, .. } = *self;
        let answer = match (fate, result) {
            // A refusal stands whatever became of the batch.
            (_, Some(Err(refusal))) => Err(refusal),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(error), _) => Err(E::from(error.duplicate())),
            (Ok(()), None) => Err(E::from(DbError::decode(
                "(unit of work)",
                "the batch committed without running this work",
            ))),
        };
        // The caller may have stopped waiting; its work is committed regardless.
        let _ = reply.send(answer);
    }

    fn streams(&self) -> &[StreamId] {
        &self.streams
    }
}

enum Item {
    Work(Box<dyn Job>),
    Lend(oneshot::Sender<Lent>),
}

#[derive(Default)]
struct QueueState {
    urgent: VecDeque<Item>,
    normal: VecDeque<Item>,
    closed: bool,
}

impl QueueState {
    fn len(&self) -> usize {
        self.urgent.len() + self.normal.len()
    }
}

/// The queue between callers and the writer.
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer when work arrives or the queue closes.
    work: Notify,
    /// Wakes callers waiting for room.
    room: Notify,
    capacity: usize,
    /// Handles alive; the queue closes when the last one goes.
    handles: AtomicUsize,
}

enum Batch {
    /// Units to run together; `urgent` when they are urgent units (which no urgent
    /// arrival cuts short).
    Work {
        jobs: Vec<Box<dyn Job>>,
        urgent: bool,
    },
    Lend(oneshot::Sender<Lent>),
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent: every
        // critical section is a push, a pop or a flag.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn push(&self, item: Item, options: WriteOptions) -> Result<(), DbError> {
        let mut item = Some(item);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(DbError::WriterStopped);
                }
                let queued = state.len();
                if options.priority == Priority::Urgent || queued < self.capacity {
                    let item = item.take().expect("pushed once");
                    match options.priority {
                        Priority::Urgent => state.urgent.push_back(item),
                        Priority::Normal => state.normal.push_back(item),
                    }
                    drop(state);
                    self.work.notify_one();
                    return Ok(());
                }
                if options.admission == Admission::Refuse {
                    cairn_observe::metrics().writer_refused.inc();
                    return Err(DbError::Overloaded { queued });
                }
            }
            room.await;
        }
    }

    /// The next batch: waiting units up to `max`, urgent ones first; or a loan, alone.
    /// `None` once the queue is closed and empty.
    async fn next(&self, max: usize) -> Option<Batch> {
        loop {
            let work = self.work.notified();
            tokio::pin!(work);
            work.as_mut().enable();
            {
                let mut state = self.lock();
                let mut jobs: Vec<Box<dyn Job>> = Vec::new();
                // A batch that starts with urgent units holds only urgent units: their
                // commit does not wait for normal work to run first.
                let urgent_only = !state.urgent.is_empty();
                while jobs.len() < max {
                    let lane = if urgent_only || !state.urgent.is_empty() {
                        &mut state.urgent
                    } else {
                        &mut state.normal
                    };
                    match lane.front() {
                        None => break,
                        Some(Item::Lend(_)) if !jobs.is_empty() => break,
                        Some(_) => {}
                    }
                    match lane.pop_front() {
                        Some(Item::Work(job)) => jobs.push(job),
                        Some(Item::Lend(reply)) => {
                            drop(state);
                            self.room.notify_waiters();
                            return Some(Batch::Lend(reply));
                        }
                        None => break,
                    }
                }
                let closed = state.closed;
                let queued = state.len();
                drop(state);
                cairn_observe::metrics().writer_queued.set(queued as i64);
                if !jobs.is_empty() {
                    self.room.notify_waiters();
                    return Some(Batch::Work {
                        jobs,
                        urgent: urgent_only,
                    });
                }
                if closed {
                    return None;
                }
            }
            work.await;
        }
    }

    /// Lets callers that the last commit answered queue their next unit before the
    /// next batch forms: with `last_batch` writers in a closed loop, a batch taken at
    /// once would hold only the first few of them, and the rest would wait a whole
    /// commit. Two yields at most, and none when the writer works alone.
    async fn linger(&self, last_batch: usize) {
        if last_batch < 2 {
            return;
        }
        for _ in 0..2 {
            if self.lock().len() >= last_batch {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Whether urgent units are waiting: a normal batch in progress stops for them.
    fn urgent_waiting(&self) -> bool {
        !self.lock().urgent.is_empty()
    }

    /// Puts units a batch did not run back at the head of the normal lane, in their
    /// order. They were admitted once: capacity does not apply.
    fn put_back(&self, jobs: Vec<Box<dyn Job>>) {
        let mut state = self.lock();
        for job in jobs.into_iter().rev() {
            state.normal.push_front(Item::Work(job));
        }
        drop(state);
        self.work.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
        self.room.notify_waiters();
    }
}

/// A handle on the writer: submits units; the writer stops once every handle is gone
/// (or [`WriterHandle::close`] is called) and the queue is empty.
pub(crate) struct WriterHandle {
    queue: Arc<Queue>,
    /// Resolves when the writer has stopped.
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("capacity", &self.queue.capacity)
            .finish()
    }
}

impl Clone for WriterHandle {
    fn clone(&self) -> Self {
        self.queue.handles.fetch_add(1, Ordering::SeqCst);
        Self {
            queue: self.queue.clone(),
            stopped: self.stopped.clone(),
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        if self.queue.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.queue.close();
        }
    }
}

impl WriterHandle {
    /// Runs `work` in one of the writer's batches and returns its result once the batch
    /// has committed.
    pub(crate) async fn write<T, E, F>(
        &self,
        options: WriteOptions,
        streams: &[StreamId],
        work: F,
    ) -> Result<T, E>
    where
        F: for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Work {
            work,
            streams: streams.to_vec(),
            span: tracing::Span::current(),
            result: None,
            reply,
        };
        self.queue
            .push(Item::Work(Box::new(job)), options)
            .await
            .map_err(E::from)?;
        answer.await.unwrap_or_else(|_| {
            Err(E::from(DbError::Panicked {
                message: "the log writer failed while running this work".to_owned(),
            }))
        })
    }

    /// Hands span batches to this writer, each as a unit of work of its own.
    pub(crate) fn span_writer(&self) -> WriteSpans {
        let writer = self.clone();
        Arc::new(move |spans: Arc<Vec<SpanRecord>>| {
            let writer = writer.clone();
            Box::pin(async move {
                writer
                    .write(WriteOptions::default(), &[], move |tx| {
                        let spans = spans.clone();
                        Box::pin(async move {
                            for span in spans.iter() {
                                tx.record_span(span.clone());
                            }
                            Ok::<_, DbError>(())
                        })
                    })
                    .await
            })
        })
    }

    /// Hands access record batches to this writer, each as a unit of work of its own.
    pub(crate) fn access_writer(&self) -> crate::access::WriteAccess {
        let writer = self.clone();
        Arc::new(move |records: Arc<Vec<crate::access::AccessRecord>>| {
            let writer = writer.clone();
            Box::pin(async move {
                writer
                    .write(WriteOptions::default(), &[], move |tx| {
                        let records = records.clone();
                        Box::pin(async move { crate::access::append(tx, &records).await })
                    })
                    .await
            })
        })
    }

    /// Borrows the SQLite writer's connection, in turn with the queued work.
    pub(crate) async fn lend(&self) -> Result<Lent, DbError> {
        let (reply, lent) = oneshot::channel();
        self.queue
            .push(Item::Lend(reply), WriteOptions::default())
            .await?;
        lent.await.map_err(|_| DbError::WriterStopped)
    }

    /// Stops taking work, and waits until what was taken is done.
    pub(crate) async fn close(&self) {
        self.queue.close();
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Units waiting.
    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().len()
    }
}

/// Where the writer's transactions run, how they end, and what the writer knows of the
/// log from its last batch (PostgreSQL's optimistic batches start from it).
struct Home(WriterHome, Option<KnownLog>, Known);

/// Whether batches start from what the writer knows. A batch that did, and found that
/// another process had moved the head, ran every unit for nothing: while other
/// processes write too, batches read the head first again, for a while.
#[derive(Debug, Default)]
struct Known {
    /// Batches read the head first until then.
    not_before: Option<std::time::Instant>,
}

impl Known {
    /// How long batches read the head first after one found it moved.
    const BACK_OFF: std::time::Duration = std::time::Duration::from_secs(2);

    fn usable(&self) -> bool {
        self.not_before
            .is_none_or(|until| std::time::Instant::now() >= until)
    }

    fn stale(&mut self) {
        self.not_before = Some(std::time::Instant::now() + Self::BACK_OFF);
    }
}

impl Home {
    async fn begin(
        &mut self,
        after: Option<Arc<AfterCommit>>,
        isolation: Isolation,
    ) -> Result<Tx, DbError> {
        let (transaction, prepared) = self.0.begin(isolation == Isolation::Optimistic).await?;
        Ok(Tx::new(transaction, after, isolation).pipelined(prepared))
    }

    /// Commits; `Err((error, before_commit))` says whether it failed before the commit
    /// statement was sent (nothing happened) or at it.
    async fn commit(&mut self, tx: Tx) -> Result<(), (DbError, bool)> {
        self.1 = None;
        let (result, conn) = tx.commit_returning().await;
        self.0.put_back(conn);
        result
    }

    /// Rolls back, keeping the connection.
    async fn abandon(&mut self, tx: Tx, keep_spans: bool) {
        let (_, conn) = tx.rollback_returning(keep_spans).await;
        self.0.put_back(conn);
    }
}

/// What one attempt at a batch came to.
enum Attempt {
    Committed,
    /// An optimistic run met a failure that only a rerun can undo. `refused` names the
    /// unit that refused after writing: the rerun leaves it out, its refusal stands.
    /// Without one, a unit needs savepoints to be isolated.
    Rerun {
        refused: Option<usize>,
    },
    Failed {
        error: DbError,
        before_commit: bool,
    },
    /// An optimistic batch that started from what the writer knew of the log failed,
    /// perhaps only because another process moved the head meanwhile: it runs again
    /// as it was, reading the head, before anything is blamed on a unit.
    Stale,
}

/// The error a unit would hear if a stale batch were its end.
fn stale() -> DbError {
    DbError::decode(
        "(batch)",
        "the log moved while the batch ran; nothing was written, try again",
    )
}

impl Attempt {
    /// Every unit runs again: as it was if the batch started from what the writer
    /// knew (`stale`), else with savepoints.
    fn rerun_all(stale: bool) -> Attempt {
        if stale {
            Attempt::Stale
        } else {
            Attempt::Rerun { refused: None }
        }
    }
}

/// How many times an optimistic batch is run again without a refused unit before the
/// writer falls back to savepoints for the whole batch.
const OPTIMISTIC_RERUNS: usize = 3;

/// The writer's loop: batches from the queue until it closes and empties.
async fn run(queue: WriterQueue, mut home: Home, shared: Weak<AfterCommit>, config: WriterConfig) {
    let WriterQueue { queue, stopped } = queue;
    let mut last_batch = 0;
    loop {
        queue.linger(last_batch).await;
        let Some(batch) = queue.next(config.max_batch).await else {
            break;
        };
        match batch {
            Batch::Lend(reply) => {
                last_batch = 0;
                home.0.lend(reply).await;
            }
            Batch::Work { jobs, urgent } => {
                last_batch = jobs.len();
                // Urgent batches are not cut short by urgent arrivals.
                let yield_to = (!urgent).then_some(&*queue);
                let done = AssertUnwindSafe(commit_batch(
                    &mut home,
                    jobs,
                    config.mode,
                    &shared,
                    yield_to,
                ))
                .catch_unwind()
                .await;
                if let Err(panic) = done {
                    // The batch's callers hear that the writer failed (their answers
                    // were dropped); the writer goes on with a fresh connection.
                    tracing::error!(panic = %panic_message(panic.as_ref()), "the log writer panicked in a batch");
                    home.0.reset();
                }
            }
        }
    }
    let mut home = home;
    home.0.close().await;
    let _ = stopped.send(true);
}

/// Runs and commits a batch. With `yield_to`, the batch stops taking units when
/// urgent work is waiting there, commits the ones it ran, and puts the rest back.
async fn commit_batch(
    home: &mut Home,
    mut jobs: Vec<Box<dyn Job>>,
    mode: WriteMode,
    shared: &Weak<AfterCommit>,
    yield_to: Option<&Queue>,
) {
    let metrics = cairn_observe::metrics();
    metrics.writer_batch_units.observe(jobs.len() as f64);
    let started = std::time::Instant::now();
    let mut skip = vec![false; jobs.len()];
    let mut isolation = match mode {
        WriteMode::Savepoints => Isolation::Unit,
        WriteMode::Optimistic => Isolation::Optimistic,
    };
    let mut reruns = 0;
    // How many of the units run: only ever lowered, so that a rerun runs no unit the
    // attempt before it left out.
    let mut limit = jobs.len();
    let outcome = loop {
        let mut run = Run {
            skip: &skip,
            limit: &mut limit,
            yield_to,
        };
        match attempt(home, &mut jobs, isolation, shared, &mut run).await {
            Attempt::Stale => {
                metrics.writer_reruns.inc();
                metrics.writer_stale_batches.inc();
                home.1 = None;
                home.2.stale();
            }
            Attempt::Rerun { refused } => {
                metrics.writer_reruns.inc();
                reruns += 1;
                match refused {
                    // A unit that refused keeps its refusal: it would refuse again
                    // over the same state, which the units before it recreate.
                    Some(index) if reruns <= OPTIMISTIC_RERUNS => skip[index] = true,
                    Some(index) => {
                        skip[index] = true;
                        isolation = Isolation::Unit;
                    }
                    None => isolation = Isolation::Unit,
                }
            }
            other => break other,
        }
    };
    if limit < jobs.len() {
        metrics.writer_cut.inc();
        skip.truncate(limit);
        if let Some(queue) = yield_to {
            queue.put_back(jobs.split_off(limit));
        }
    }
    metrics
        .writer_batch_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        units = jobs.len(),
        reruns,
        seconds = started.elapsed().as_secs_f64(),
        "a log writer batch ended"
    );
    match outcome {
        Attempt::Committed | Attempt::Rerun { .. } => {
            for job in jobs {
                job.answer(Ok(()));
            }
        }
        Attempt::Failed {
            before_commit: true,
            ..
        } if jobs.len() > 1 => {
            // Nothing was written: run each unit alone, so that the one at fault
            // fails by itself.
            metrics.writer_reruns.inc();
            let mut units = jobs.into_iter().zip(skip).enumerate();
            while let Some((index, (job, skipped))) = units.next() {
                // This too stops for urgent work, one unit at least done.
                if index > 0
                    && let Some(queue) = yield_to.filter(|queue| queue.urgent_waiting())
                {
                    metrics.writer_cut.inc();
                    let mut rest = vec![job];
                    rest.extend(units.map(|(_, (job, _))| job));
                    queue.put_back(rest);
                    break;
                }
                let mut one = vec![job];
                let fate = if skipped {
                    Attempt::Committed
                } else {
                    let mut alone = 1;
                    let mut run = Run {
                        skip: &[false],
                        limit: &mut alone,
                        yield_to: None,
                    };
                    attempt(home, &mut one, Isolation::Unit, shared, &mut run).await
                };
                for job in one {
                    match &fate {
                        Attempt::Failed { error, .. } => job.answer(Err(error)),
                        // Not an optimistic batch: never stale; said so, were it ever.
                        Attempt::Stale => job.answer(Err(&stale())),
                        Attempt::Committed | Attempt::Rerun { .. } => job.answer(Ok(())),
                    }
                }
            }
        }
        // Run again inside the loop above; never its outcome.
        Attempt::Stale => {
            let error = stale();
            for job in jobs {
                job.answer(Err(&error));
            }
        }
        Attempt::Failed { error, .. } => {
            tracing::error!(error = %cairn_types::error_chain(&error), units = jobs.len(), "a log writer batch failed");
            for job in jobs {
                job.answer(Err(&error));
            }
        }
    }
}

/// Which of a batch's units an attempt runs.
struct Run<'a> {
    /// Units left out (they refused in an earlier attempt).
    skip: &'a [bool],
    /// Units past this one are not run; the attempt lowers it when it stops early.
    limit: &'a mut usize,
    /// Where urgent work may be waiting, for a batch that stops for it.
    yield_to: Option<&'a Queue>,
}

async fn attempt(
    home: &mut Home,
    jobs: &mut [Box<dyn Job>],
    isolation: Isolation,
    shared: &Weak<AfterCommit>,
    run: &mut Run<'_>,
) -> Attempt {
    let skip = run.skip;
    let mut tx = match home.begin(shared.upgrade(), isolation).await {
        Ok(tx) => tx,
        Err(error) => {
            return Attempt::Failed {
                error,
                before_commit: true,
            };
        }
    };
    let streams: Vec<StreamId> = jobs
        .iter()
        .zip(skip)
        .take(*run.limit)
        .filter(|(_, skipped)| !**skipped)
        .flat_map(|(job, _)| job.streams().iter().copied())
        .collect();
    // On PostgreSQL every writer transaction takes the log head lock before anything
    // else, so that writers of several processes only ever wait on each other for the
    // head: a batch that claimed a lease row and then waited for the head, while
    // another held the head and waited for that row, would be a deadlock.
    let known = home.1.as_ref().filter(|_| home.2.usable());
    let opened = match tx.open_batch(&streams, known).await {
        Ok(true) => Ok(()),
        // SQLite's write lock is taken with BEGIN: no need to read the head before work
        // that names no stream.
        Ok(false) if streams.is_empty() && tx.backend() == crate::Backend::Sqlite => Ok(()),
        Ok(false) => tx.prefetch_streams(&streams).await,
        Err(error) => Err(error),
    };
    if let Err(error) = opened {
        home.abandon(tx, true).await;
        return Attempt::Failed {
            error,
            before_commit: true,
        };
    }
    for (index, job) in jobs.iter_mut().enumerate() {
        if index >= *run.limit {
            break;
        }
        // One unit at least, so that the batch makes progress; then none once urgent
        // work waits.
        if index > 0 && run.yield_to.is_some_and(Queue::urgent_waiting) {
            *run.limit = index;
            break;
        }
        if skip.get(index).copied().unwrap_or(false) {
            continue;
        }
        let mark = tx.mark();
        let writes = tx.writes();
        let failures = tx.failures();
        let spans = tx.span_count();
        if isolation == Isolation::Unit
            && let Err(error) = tx.open_unit().await
        {
            home.abandon(tx, true).await;
            return Attempt::Failed {
                error,
                before_commit: true,
            };
        }
        let ran = job.run(&mut tx).await;
        match isolation {
            Isolation::Unit => {
                let kept = if ran == Ran::Done && tx.is_poisoned() {
                    job.poisoned();
                    false
                } else {
                    ran == Ran::Done
                };
                let step = if kept {
                    tx.release_unit().await
                } else {
                    tx.undo_unit(&mark).await
                };
                if let Err(error) = step {
                    home.abandon(tx, true).await;
                    return Attempt::Failed {
                        error,
                        before_commit: true,
                    };
                }
            }
            Isolation::Optimistic | Isolation::Standalone => {
                // A failure to undo (a failed statement, a handler that failed
                // without a savepoint) may itself be why the unit refused: it runs
                // again, with savepoints. A unit that refused on its own after
                // writing keeps its refusal, and the batch runs again without it.
                if tx.failures() > failures {
                    let stale = tx.started_from_known();
                    home.abandon(tx, false).await;
                    return Attempt::rerun_all(stale);
                }
                if ran == Ran::Refused && tx.writes() > writes {
                    // The refusal may rest on what those writes changed, and a queued
                    // write was only reported to have changed one row (a lease fence
                    // that held, say). It stands once PostgreSQL has confirmed every
                    // report; otherwise the batch runs again with savepoints, where
                    // the unit sees what its writes really did.
                    if tx.conn().send_queued().await.is_err() {
                        let stale = tx.started_from_known();
                        home.abandon(tx, false).await;
                        return Attempt::rerun_all(stale);
                    }
                    tx.release_spans_since(spans);
                    home.abandon(tx, false).await;
                    return Attempt::Rerun {
                        refused: Some(index),
                    };
                }
                if ran == Ran::Refused {
                    tx.forget_since(&mark);
                }
            }
        }
    }
    if tx.is_batch() {
        // The queued writes, the log's rows and the commit go out together; a refusal
        // among them (a write that changed other than one row) stops the script
        // before the commit, and the batch runs again with savepoints.
        let stale = tx.started_from_known();
        return match tx.commit_batch(home.1.take()).await {
            Ok(known) => {
                home.1 = known;
                Attempt::Committed
            }
            Err((error, true)) => Attempt::Failed {
                error,
                before_commit: false,
            },
            Err((_, false)) => Attempt::rerun_all(stale),
        };
    }
    match home.commit(tx).await {
        Ok(()) => Attempt::Committed,
        Err((error, before_commit)) => Attempt::Failed {
            error,
            before_commit,
        },
    }
}

/// The writer's end of the queue.
pub(crate) struct WriterQueue {
    queue: Arc<Queue>,
    stopped: tokio::sync::watch::Sender<bool>,
}

/// A new queue: the handle callers submit through, and the end the writer reads.
pub(crate) fn queue(config: &WriterConfig) -> (WriterHandle, WriterQueue) {
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState::default()),
        work: Notify::new(),
        room: Notify::new(),
        capacity: config.capacity.max(1),
        handles: AtomicUsize::new(1),
    });
    let (stopped, stopped_rx) = tokio::sync::watch::channel(false);
    (
        WriterHandle {
            queue: queue.clone(),
            stopped: stopped_rx,
        },
        WriterQueue { queue, stopped },
    )
}

/// Starts the writer: a thread of its own for SQLite (its statements run there, and so
/// does its disk flush), a task for PostgreSQL.
pub(crate) fn start(
    queue: WriterQueue,
    home: WriterHome,
    shared: Weak<AfterCommit>,
    config: WriterConfig,
) -> std::io::Result<()> {
    let threaded = home.runs_in_a_thread();
    let home = Home(home, None, Known::default());
    match threaded {
        true => {
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("cairn-log-writer".to_owned())
                .spawn(move || runtime.block_on(run(queue, home, shared, config)))
                .map(drop)
        }
        false => {
            tokio::spawn(run(queue, home, shared, config));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit that does nothing.
    struct Nothing;

    impl Job for Nothing {
        fn run<'t>(&'t mut self, _tx: &'t mut Tx) -> BoxFuture<'t, Ran> {
            Box::pin(async { Ran::Done })
        }
        fn poisoned(&mut self) {}
        fn answer(self: Box<Self>, _fate: Result<(), &DbError>) {}
        fn streams(&self) -> &[StreamId] {
            &[]
        }
    }

    async fn sizes(queue: &Queue, max: usize) -> Vec<usize> {
        queue.close();
        let mut sizes = Vec::new();
        while let Some(batch) = queue.next(max).await {
            match batch {
                Batch::Work { jobs, .. } => sizes.push(jobs.len()),
                Batch::Lend(_) => sizes.push(0),
            }
        }
        sizes
    }

    #[tokio::test]
    async fn urgent_units_commit_in_a_batch_of_their_own() {
        let config = WriterConfig {
            capacity: 16,
            max_batch: 256,
            mode: WriteMode::Savepoints,
        };
        let (handle, _writer) = queue(&config);
        let queue = handle.queue.clone();
        let push = |priority| {
            let queue = queue.clone();
            async move {
                let options = WriteOptions {
                    priority,
                    admission: Admission::Refuse,
                };
                queue.push(Item::Work(Box::new(Nothing)), options).await
            }
        };
        for _ in 0..3 {
            push(Priority::Normal).await.expect("room");
        }
        push(Priority::Urgent).await.expect("room");
        push(Priority::Normal).await.expect("room");
        push(Priority::Urgent).await.expect("room");
        // The two urgent units first, alone; then the normal ones, in one batch.
        assert_eq!(sizes(&queue, config.max_batch).await, vec![2, 4]);

        // Past the queue's capacity an urgent unit is still taken.
        let (handle, _writer) = super::queue(&WriterConfig {
            capacity: 1,
            ..config
        });
        let small = handle.queue.clone();
        let options = |priority| WriteOptions {
            priority,
            admission: Admission::Refuse,
        };
        small
            .push(Item::Work(Box::new(Nothing)), options(Priority::Normal))
            .await
            .expect("room");
        assert!(matches!(
            small
                .push(Item::Work(Box::new(Nothing)), options(Priority::Normal))
                .await,
            Err(DbError::Overloaded { queued: 1 })
        ));
        small
            .push(Item::Work(Box::new(Nothing)), options(Priority::Urgent))
            .await
            .expect("never refused");
        assert_eq!(sizes(&small, 256).await, vec![1, 1]);
    }
}
