//! An open database, and every way into it.
//!
//! | Way in | For | Runs |
//! |---|---|---|
//! | [`Db::write`] | any write: a command, a step's record, a retry | in the log writer's next batch, with whatever else waits; answered after its commit |
//! | [`Db::write_to`] | a write that appends to streams it knows | as `write`, the streams' versions read for the whole batch in one statement |
//! | [`Db::begin`] | a write transaction of one's own that cannot be a closure | outside the batches: SQLite lends the writer's connection (hold it briefly), PostgreSQL a pooled one |
//! | [`Db::reader`] | a read of a few statements, no consistency between them needed | a pooled read connection (read-only on SQLite) |
//! | [`Db::snapshot`] | reads that must agree with each other (the head, then the events below it) | one read-only snapshot |
//! | [`Db::scoped`] | a tenant's reads | as `snapshot`, and on PostgreSQL row-level security confines it to the tenant |
//! | [`Db::reading_session`] | long reads that keep temporary tables between transactions (replay's comparison) | a connection of its own, closed at the end |
//! | [`Db::writing_session`] | long writes in transactions of their own (replay's rebuild) | as `reading_session`; on SQLite hold [`Db::pause_writer`] around its write transaction |
//! | [`Db::pause_writer`] | holding the writer still (replay's final swap on SQLite) | until the pause is dropped; nothing on PostgreSQL |
//!
//! Every write that appends goes through a [`Tx`]: the writer's batches hand one to each
//! unit of work, and [`Db::begin`] returns one.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use chrono::{DateTime, Utc};

use cairn_types::{Position, Tenancy};

use crate::args;
use crate::backend::postgres::{Pipeline, Prepared};
use crate::backend::{Conn, Pools, ReaderConn, SessionConn, Transaction};
use crate::error::{ConnectError, DbError};
use crate::spans::{SpanRecord, SpanSink};
use crate::tx::{AfterCommit, Isolation, Tx};
use crate::value::{Backend, dialect};
use crate::watch::HeadWatch;
use crate::writer::{self, WriteOptions, WriterConfig, WriterHandle};

/// Where the embedded default keeps its data, relative to the working directory.
pub(crate) const DEFAULT_DATA_DIR: &str = "cairn-data";

/// The embedded default database URL.
pub fn default_url() -> String {
    format!("sqlite://{DEFAULT_DATA_DIR}/cairn.db")
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// The most connections one process reads with (and, on PostgreSQL, runs
    /// transactions of its own on); the log writer has one more of its own.
    pub max_connections: u32,
    /// On PostgreSQL, the schema to work in instead of the user's default; created if
    /// missing. Used to give benchmarks and tests a place of their own.
    pub schema: Option<String>,
    /// The log writer's queue, batches and isolation; `None` for the backend's
    /// defaults ([`WriterConfig::for_backend`]).
    pub writer: Option<WriterConfig>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            schema: None,
            writer: None,
        }
    }
}

/// Hides the password of a URL for display.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Quotes an identifier (the same on SQLite and PostgreSQL).
pub fn quote_ident(name: &str) -> String {
    crate::backend::postgres::quote_ident(name)
}

/// An open database: the embedded SQLite file or a PostgreSQL server.
///
/// Cheap to clone; clones share the connection pools and the log writer.
#[derive(Debug, Clone)]
pub struct Db {
    pools: Arc<Pools>,
    shared: Arc<Shared>,
}

/// What the clones of one `Db` share besides the pools. Background tasks hold it
/// weakly (or hold only what they need of it), so they stop when the last clone of the
/// `Db` is dropped.
#[derive(Debug)]
struct Shared {
    after: Arc<AfterCommit>,
    writer: WriterHandle,
    writer_config: WriterConfig,
    keyring: Arc<crate::seal::Keyring>,
}

impl Db {
    /// Opens the database a URL names, creating the SQLite file and its directory when
    /// missing, and starts its log writer. Does not run migrations: see
    /// [`Db::migrate`].
    pub async fn connect(url: &str, options: &DbOptions) -> Result<Db, ConnectError> {
        let (pools, home) = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            open_sqlite(Path::new(path), options)?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::backend::connect_postgres(
                url,
                options.max_connections,
                options.schema.as_deref(),
            )
            .await?
        } else {
            return Err(ConnectError::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        let config = options
            .writer
            .unwrap_or_else(|| WriterConfig::for_backend(pools.backend()));
        let (handle, queue) = writer::queue(&config);
        let keyring: Arc<crate::seal::Keyring> = Arc::default();
        let after = Arc::new(AfterCommit {
            head: HeadWatch::new(),
            spans: SpanSink::default(),
            keyring: keyring.clone(),
            access: crate::access::AccessSink::default(),
        });
        after.spans.connect(handle.span_writer());
        after.access.connect(handle.access_writer());
        writer::start(queue, home, Arc::downgrade(&after), config).map_err(ConnectError::Writer)?;
        Ok(Db {
            pools: Arc::new(pools),
            shared: Arc::new(Shared {
                after,
                writer: handle,
                writer_config: config,
                keyring,
            }),
        })
    }

    pub(crate) fn keyring_ref(&self) -> &Arc<crate::seal::Keyring> {
        &self.shared.keyring
    }

    pub(crate) fn pools_ref(&self) -> &Arc<Pools> {
        &self.pools
    }

    pub(crate) fn after_ref(&self) -> &Arc<AfterCommit> {
        &self.shared.after
    }

    /// The backend this database runs on.
    pub fn backend(&self) -> Backend {
        self.pools.backend()
    }

    /// Where the data lives, for people: the SQLite file or the PostgreSQL URL with its
    /// password hidden.
    pub fn describe(&self) -> String {
        self.pools.describe()
    }

    /// How the log writer runs.
    pub fn writer_config(&self) -> WriterConfig {
        self.shared.writer_config
    }

    /// Units of work waiting for the log writer.
    pub fn writer_queued(&self) -> usize {
        self.shared.writer.queued()
    }

    /// Runs `work` in the log writer's next batch, in one transaction with whatever
    /// else is waiting, and returns its result once that transaction has committed.
    ///
    /// `work` may run more than once (a batch that must be run again runs every unit
    /// again), so it clones what it needs rather than moving it out. If it returns an
    /// error or panics, nothing it did is kept, and its neighbours in the batch are
    /// not affected.
    ///
    /// ```no_run
    /// # async fn example(db: cairn_log::Db) -> Result<(), cairn_log::DbError> {
    /// use cairn_log::{WriteOptions, args};
    /// let changed = db
    ///     .write(WriteOptions::default(), |tx| {
    ///         Box::pin(async move {
    ///             tx.conn()
    ///                 .execute("UPDATE log_head SET failed_events = failed_events WHERE id = $1", args![1_i64])
    ///                 .await
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = changed;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write<T, E, F>(&self, options: WriteOptions, work: F) -> Result<T, E>
    where
        F: for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.shared.writer.write(options, &[], work).await
    }

    /// [`Db::write`] for work that appends to `streams`: the batch reads their versions
    /// together, in one statement, instead of each unit asking for its own.
    pub async fn write_to<T, E, F>(
        &self,
        options: WriteOptions,
        streams: &[cairn_types::StreamId],
        work: F,
    ) -> Result<T, E>
    where
        F: for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.shared.writer.write(options, streams, work).await
    }

    /// Begins a write transaction of the caller's own, outside the writer's batches.
    /// On SQLite it borrows the writer's connection, in turn with the queued work, until
    /// the transaction ends: hold it briefly, and never wait on the writer while holding
    /// it. On PostgreSQL it is a pooled connection; appends in it take the head lock.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let inner = match self.pools.begin().await? {
            Some(transaction) => transaction,
            None => Transaction::Sqlite(self.shared.writer.lend().await?.begin()?),
        };
        Ok(Tx::new(
            inner,
            Some(self.shared.after.clone()),
            Isolation::Standalone,
        ))
    }

    /// A connection for reading. On SQLite it is opened read-only.
    pub async fn reader(&self) -> Result<Reader, DbError> {
        Ok(Reader {
            inner: self.pools.reader().await?,
        })
    }

    /// A read-only transaction: every read through it sees one consistent snapshot,
    /// however long it takes, without holding up writers.
    pub async fn snapshot(&self) -> Result<Snapshot, DbError> {
        let inner = self.pools.snapshot(None).await?;
        Ok(Snapshot {
            tx: Tx::new(inner, None, Isolation::Standalone),
        })
    }

    /// A read-only transaction confined to `tenancy`, reading one consistent snapshot
    /// (like [`Db::snapshot`]: a reader that reads the head and then the events below
    /// it sees all of them). On PostgreSQL it runs as the
    /// `cairn_tenant_reader` role with `cairn.tenant` set, so row-level security hides
    /// every other tenant's rows even from a query that forgot to filter: the second
    /// wall behind the policy's own filters.
    pub async fn scoped(&self, tenancy: &Tenancy) -> Result<Snapshot, DbError> {
        // The value of the `cairn.tenant` setting PostgreSQL's row-level security reads.
        let tenant = match tenancy {
            Tenancy::All => "all".to_owned(),
            Tenancy::Org(org) => org.to_string(),
            Tenancy::None => String::new(),
        };
        let inner = self.pools.snapshot(Some(tenant)).await?;
        Ok(Snapshot {
            tx: Tx::new(inner, None, Isolation::Standalone),
        })
    }

    /// A session that only reads (and writes temporary tables).
    pub async fn reading_session(&self) -> Result<Session, DbError> {
        Ok(Session::new(self.pools.session(false).await?))
    }

    /// A session that may write. On SQLite, call [`Db::pause_writer`] before a write
    /// transaction that must not wait on the writer.
    pub async fn writing_session(&self) -> Result<Session, DbError> {
        Ok(Session::new(self.pools.session(true).await?))
    }

    /// Holds the log writer still until the pause is dropped: for work on a connection
    /// of its own that must write without the writer in between (replay's final swap
    /// on SQLite). Does nothing on PostgreSQL, where the head lock orders writers.
    pub async fn pause_writer(&self) -> Result<WriterPause, DbError> {
        let lent = match self.pools.lends_writer() {
            true => Some(self.shared.writer.lend().await?),
            false => None,
        };
        Ok(WriterPause { _lent: lent })
    }

    /// Whether the database answers: one statement on a read connection.
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut reader = self.reader().await?;
        reader.conn().fetch_one("SELECT 1 AS one", args![]).await?;
        Ok(())
    }

    /// A receiver that changes whenever this process learns of a newer committed
    /// position: at once for its own commits; from other processes through PostgreSQL's
    /// NOTIFY, or by polling the log's head (every 100 ms on SQLite, every second on
    /// PostgreSQL as a backstop for a lost notification).
    pub fn head_watch(&self) -> tokio::sync::watch::Receiver<Position> {
        use std::sync::atomic::Ordering;
        let head = &self.shared.after.head;
        if !head.listening.swap(true, Ordering::SeqCst) {
            tokio::spawn(follow_head(
                self.pools.clone(),
                Arc::downgrade(&self.shared.after),
            ));
        }
        head.sender.subscribe()
    }

    /// Records one hop of a request's path for its timeline. Never waits and never
    /// fails: spans are written in batches through the log writer (see
    /// [`crate::spans`]).
    pub fn record_span(&self, span: SpanRecord) {
        self.shared.after.spans.record(span);
    }

    /// Waits until every span recorded so far is written.
    pub async fn flush_spans(&self) {
        self.shared.after.spans.flush().await;
    }

    /// Puts a read of people's data on record in the access log. Waits only for room
    /// in the access log's queue, never for a commit: records are written in batches
    /// through the log writer, and one that cannot be written after every retry is
    /// counted and logged as an error (see [`crate::access`]).
    pub async fn record_access(&self, record: crate::access::AccessRecord) {
        self.shared.after.access.record(record).await;
    }

    /// Waits until every access record queued so far is written (or reported lost).
    pub async fn flush_access(&self) {
        self.shared.after.access.flush().await;
    }

    /// Deletes the spans that started before `cutoff`, oldest first, a batch per
    /// transaction; how many were deleted.
    pub async fn prune_spans(&self, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
        let mut deleted = 0;
        loop {
            let batch: u64 = self
                .write(WriteOptions::default(), move |tx| {
                    Box::pin(async move {
                        tx.conn()
                            .execute(
                                "DELETE FROM trace_spans WHERE id IN (SELECT id FROM trace_spans \
                                 WHERE started_at < $1 ORDER BY id LIMIT $2)",
                                args![cutoff, PRUNE_BATCH],
                            )
                            .await
                    })
                })
                .await?;
            deleted += batch;
            if batch < PRUNE_BATCH as u64 {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Drops a PostgreSQL schema and everything in it (a benchmark's or a test's own);
    /// does nothing on SQLite.
    pub async fn drop_schema(&self, schema: &str) -> Result<(), DbError> {
        self.pools.drop_schema(schema).await
    }

    /// Closes every connection: writes the spans and access records recorded so far, lets the log writer
    /// finish every unit it has taken, stops the head watch (which holds a connection),
    /// then waits for connections in use to be given back.
    pub async fn close(&self) {
        let after = &self.shared.after;
        after.spans.flush().await;
        after.spans.disconnect();
        after.access.disconnect().await;
        self.shared.writer.close().await;
        after.head.stop.send_replace(true);
        self.pools.close().await;
    }
}

/// How many spans one pruning transaction deletes, so that pruning never holds the
/// writer for long.
const PRUNE_BATCH: i64 = 2_000;

fn open_sqlite(
    path: &Path,
    options: &DbOptions,
) -> Result<(Pools, crate::backend::WriterHome), ConnectError> {
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return Err(ConnectError::UnsupportedUrl {
            url: format!("sqlite://{}", path.display()),
        });
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ConnectError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    crate::backend::connect_sqlite(path, options.max_connections).map_err(|source| {
        ConnectError::Open {
            target: format!("sqlite://{}", path.display()),
            source,
        }
    })
}

/// Keeps a `Db`'s head watch current until the last clone of the `Db` is dropped.
async fn follow_head(pools: Arc<Pools>, after: std::sync::Weak<AfterCommit>) {
    // `Db::close` stops the watch at once, so that the LISTEN connection does not keep
    // the pool from closing while clones of the `Db` are still around.
    let Some(mut stop) = after.upgrade().map(|a| a.head.stop.subscribe()) else {
        return;
    };
    let mut listener = pools.listen().await;
    let every = pools.poll_every();
    let advance = |position: Position| match after.upgrade() {
        Some(after) => {
            after.head.advance(position);
            true
        }
        None => false,
    };
    loop {
        if after.strong_count() == 0 || *stop.borrow() {
            return;
        }
        let wait = async {
            match listener.as_mut() {
                Some(listener) => listener.next(every).await,
                None => {
                    tokio::time::sleep(every).await;
                    None
                }
            }
        };
        let heard = tokio::select! {
            heard = wait => heard,
            _ = stop.changed() => return,
        };
        let position = match heard {
            Some(position) => Some(Position::new(position)),
            None => match pools.reader().await {
                Ok(mut reader) => reader
                    .conn()
                    .head()
                    .await
                    .ok()
                    .map(|head| head.last_position),
                Err(_) => None,
            },
        };
        if let Some(position) = position
            && !advance(position)
        {
            return;
        }
    }
}

/// The log writer held still (see [`Db::pause_writer`]): the writer's connection, lent
/// until the pause is dropped.
#[derive(Debug)]
pub struct WriterPause {
    _lent: Option<crate::backend::sqlite::Lent>,
}

/// A connection held across several transactions, for long work that keeps temporary
/// tables between its transactions (replay rebuilding in batches). The connection is
/// closed, never returned to a pool, when the session ends: whatever it created and
/// any transaction it left open die with it.
///
/// On SQLite it is a connection of its own, which runs its statements in the calling
/// thread like the log writer's.
#[derive(Debug)]
pub struct Session {
    inner: Option<SessionConn>,
    /// Writes queued to go out together (PostgreSQL), while turned on.
    pipeline: Option<Pipeline>,
    prepared: Prepared,
}

impl Session {
    fn new(inner: SessionConn) -> Session {
        Session {
            inner: Some(inner),
            pipeline: None,
            prepared: Prepared::default(),
        }
    }

    /// Queues writes to go out together, on PostgreSQL, until turned off (see
    /// [`crate::backend::postgres`]): each is reported as changing one row and checked
    /// when the queue goes out, at the next read or at commit, where a write that
    /// changed another number of rows fails the transaction. For work that can run
    /// again without the queue when that happens (replay's batches).
    pub fn queue_writes(&mut self, on: bool) {
        let postgres = self.inner.as_ref().is_some_and(SessionConn::is_postgres);
        self.pipeline = (on && postgres).then(|| Pipeline::new(self.prepared.clone()));
    }

    /// The session's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        self.inner
            .as_mut()
            .expect("a session holds its connection until dropped")
            .conn(self.pipeline.as_ref())
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&mut self) -> Result<(), DbError> {
        let statement = dialect(self.conn().backend(), "BEGIN IMMEDIATE", "BEGIN");
        self.conn().execute_script(statement).await
    }

    /// Begins a transaction that writes nothing but temporary tables, in one snapshot
    /// (`REPEATABLE READ` on PostgreSQL).
    pub async fn begin_read_only(&mut self) -> Result<(), DbError> {
        let statement = dialect(
            self.conn().backend(),
            "BEGIN DEFERRED",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        );
        self.conn().execute_script(statement).await
    }

    /// Commits the current transaction.
    pub async fn commit(&mut self) -> Result<(), DbError> {
        self.conn().execute_script("COMMIT").await
    }

    /// Rolls the current transaction back.
    pub async fn rollback(&mut self) -> Result<(), DbError> {
        self.conn().execute_script("ROLLBACK").await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the connection (rather than pooling it) drops its temporary tables
        // and rolls back a transaction left open by an error.
        if let Some(conn) = self.inner.take() {
            conn.close();
        }
    }
}

/// A read-only transaction over one consistent snapshot. Dropping it ends it.
#[derive(Debug)]
pub struct Snapshot {
    tx: Tx,
}

impl Snapshot {
    /// The snapshot's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        self.tx.conn()
    }
}

/// A pooled connection for reads outside any transaction.
#[derive(Debug)]
pub struct Reader {
    inner: ReaderConn,
}

impl Reader {
    pub(crate) fn new(inner: ReaderConn) -> Reader {
        Reader { inner }
    }

    /// The reader's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        self.inner.conn()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://cairn:secret@db.internal:5432/cairn"),
            "postgres://cairn:***@db.internal:5432/cairn"
        );
        assert_eq!(
            redact_url("postgres://cairn@db/cairn"),
            "postgres://cairn@db/cairn"
        );
        assert_eq!(
            redact_url("sqlite://cairn-data/cairn.db"),
            "sqlite://cairn-data/cairn.db"
        );
    }
}
