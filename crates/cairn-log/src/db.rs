//! Connecting to a backend, the log writer, transactions and read connections.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use cairn_types::Position;

use crate::error::{DbError, DbErrorKind};
use crate::sql::{Backend, Conn, ConnInner, dialect};
use crate::tx::{DirectTx, Isolation, Tx, TxInner};
use crate::writer::{self, Home, WriteOptions, WriterConfig, WriterHandle};

/// Where the embedded default keeps its data, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "cairn-data";

/// The embedded default database URL.
pub fn default_url() -> String {
    format!("sqlite://{DEFAULT_DATA_DIR}/cairn.db")
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

#[derive(Debug)]
pub(crate) enum Pools {
    Sqlite {
        /// Read-only connections; every write goes through the log writer.
        readers: Arc<crate::direct::ReadPool>,
        path: PathBuf,
    },
    Postgres {
        pool: PgPool,
        target: String,
    },
}

impl Pools {
    async fn head(&self) -> Result<Position, DbError> {
        let mut reader = Reader::acquire(self).await?;
        Ok(reader.conn().head().await?.last_position)
    }
}

/// Keeps a `Db`'s head watch current until the last clone of the `Db` is dropped.
async fn follow_head(pools: Arc<Pools>, shared: std::sync::Weak<Shared>) {
    // `Db::close` stops the watch at once, so that the LISTEN connection does not keep
    // the pool from closing while clones of the `Db` are still around.
    let Some(mut stop) = shared.upgrade().map(|s| s.head.stop.subscribe()) else {
        return;
    };
    let mut listener = match &*pools {
        Pools::Postgres { pool, .. } => {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listening.await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot LISTEN; polling the log head instead");
                    None
                }
            }
        }
        Pools::Sqlite { .. } => None,
    };
    let every = match &*pools {
        Pools::Sqlite { .. } => Duration::from_millis(100),
        Pools::Postgres { .. } => Duration::from_secs(1),
    };
    let advance = |position: Position| match shared.upgrade() {
        Some(shared) => {
            shared.head.advance(position);
            true
        }
        None => false,
    };
    loop {
        if shared.strong_count() == 0 || *stop.borrow() {
            return;
        }
        let wait = async {
            match listener.as_mut() {
                Some(listener) => match tokio::time::timeout(every, listener.try_recv()).await {
                    Ok(Ok(Some(notification))) => notification.payload().parse::<i64>().ok(),
                    // Quiet for a while, or the connection dropped (its notifications
                    // are lost): read the head itself.
                    Ok(Ok(None) | Err(_)) | Err(_) => None,
                },
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
            None => pools.head().await.ok(),
        };
        if let Some(position) = position
            && !advance(position)
        {
            return;
        }
    }
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
pub(crate) struct Shared {
    pub(crate) head: HeadWatch,
    pub(crate) spans: crate::spans::SpanSink,
    pub(crate) writer: WriterHandle,
    pub(crate) writer_config: WriterConfig,
}

/// The newest committed position this process knows of, for waking subscribers. It is
/// only a wake-up: readers always read the log itself, so a missed update delays them
/// and loses nothing.
#[derive(Debug)]
pub(crate) struct HeadWatch {
    sender: tokio::sync::watch::Sender<Position>,
    listening: std::sync::atomic::AtomicBool,
    /// Set by `Db::close`: the follower stops and gives its connection back.
    stop: tokio::sync::watch::Sender<bool>,
}

impl HeadWatch {
    fn new() -> HeadWatch {
        HeadWatch {
            sender: tokio::sync::watch::channel(Position::START).0,
            listening: std::sync::atomic::AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
        }
    }

    pub(crate) fn advance(&self, position: Position) {
        self.sender.send_if_modified(|known| {
            if position > *known {
                *known = position;
                true
            } else {
                false
            }
        });
    }
}

/// The PostgreSQL channel every commit that appended events notifies.
pub const NOTIFY_CHANNEL: &str = "cairn_events";

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

impl Db {
    /// Opens the database a URL names, creating the SQLite file and its directory when
    /// missing, and starts its log writer. Does not run migrations: see
    /// [`Db::migrate`].
    pub async fn connect(url: &str, options: &DbOptions) -> Result<Db, ConnectError> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Self::connect_sqlite(Path::new(path), options).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, options).await
        } else {
            Err(ConnectError::UnsupportedUrl {
                url: redact_url(url),
            })
        }
    }

    fn assemble(pools: Pools, home: Home, config: WriterConfig) -> Result<Db, ConnectError> {
        let (handle, queue) = writer::queue(&config);
        let shared = Arc::new(Shared {
            head: HeadWatch::new(),
            spans: crate::spans::SpanSink::default(),
            writer: handle,
            writer_config: config,
        });
        shared.spans.connect(shared.writer.clone());
        writer::start(queue, home, Arc::downgrade(&shared), config)
            .map_err(ConnectError::Writer)?;
        Ok(Db {
            pools: Arc::new(pools),
            shared,
        })
    }

    async fn connect_sqlite(path: &Path, options: &DbOptions) -> Result<Db, ConnectError> {
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
        let target = format!("sqlite://{}", path.display());
        let open = |source: DbError| ConnectError::Open {
            target: target.clone(),
            source,
        };
        // The writer's connection first: it creates the file and turns on WAL, which
        // the read-only connections need.
        let writer_conn = crate::direct::open(path).map_err(open)?;
        let readers = Arc::new(crate::direct::ReadPool::new(path, options.max_connections));
        let config = options
            .writer
            .unwrap_or_else(|| WriterConfig::for_backend(Backend::Sqlite));
        Self::assemble(
            Pools::Sqlite {
                readers,
                path: path.to_owned(),
            },
            Home::Direct {
                conn: Some(writer_conn),
                path: path.to_owned(),
            },
            config,
        )
    }

    async fn connect_postgres(url: &str, options: &DbOptions) -> Result<Db, ConnectError> {
        let target = redact_url(url);
        let mut connect =
            PgConnectOptions::from_str(url).map_err(|source| ConnectError::BadUrl {
                url: target.clone(),
                source: source.into(),
            })?;
        connect = connect.application_name("cairn");
        let open = |source: sqlx::Error| ConnectError::Open {
            target: target.clone(),
            source: source.into(),
        };
        if let Some(schema) = &options.schema {
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
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await
            .map_err(open)?;
        // The writer's own connection: it never waits behind readers for one. Its
        // queued writes are written as literals, which needs standard strings (a
        // backslash is an ordinary character); a new connection has none of the
        // statements prepared on the one before.
        let prepared = crate::pipeline::Prepared::default();
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
        let config = options
            .writer
            .unwrap_or_else(|| WriterConfig::for_backend(Backend::Postgres));
        Self::assemble(
            Pools::Postgres { pool, target },
            Home::Postgres {
                pool: writer_pool,
                prepared,
            },
            config,
        )
    }

    /// The backend this database runs on.
    pub fn backend(&self) -> Backend {
        match &*self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Where the data lives, for people: the SQLite file or the PostgreSQL URL with its
    /// password hidden.
    pub fn describe(&self) -> String {
        match &*self.pools {
            Pools::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Pools::Postgres { target, .. } => target.clone(),
        }
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
        let inner = match &*self.pools {
            Pools::Sqlite { .. } => {
                let lent = self.shared.writer.lend().await?;
                TxInner::Direct(DirectTx::begin(lent.conn, Some(lent.home))?)
            }
            Pools::Postgres { pool, .. } => TxInner::Postgres(begin_pg(pool, None).await?),
        };
        Ok(Tx::new(
            inner,
            Some(self.shared.clone()),
            Isolation::Standalone,
        ))
    }

    /// Holds the log writer still until the pause is dropped: for work on a connection
    /// of its own that must write without the writer in between (replay's final swap
    /// on SQLite). Does nothing on PostgreSQL, where the head lock orders writers.
    pub async fn pause_writer(&self) -> Result<WriterPause, DbError> {
        match &*self.pools {
            Pools::Sqlite { .. } => {
                let lent = self.shared.writer.lend().await?;
                Ok(WriterPause {
                    lent: Some((lent.conn, lent.home)),
                })
            }
            Pools::Postgres { .. } => Ok(WriterPause { lent: None }),
        }
    }

    /// A connection for reading. On SQLite it is opened read-only.
    pub async fn reader(&self) -> Result<Reader, DbError> {
        Reader::acquire(&self.pools).await
    }

    /// A read-only transaction: every read through it sees one consistent snapshot,
    /// however long it takes, without holding up writers.
    pub async fn snapshot(&self) -> Result<Snapshot, DbError> {
        let inner = match &*self.pools {
            Pools::Sqlite { readers, .. } => {
                TxInner::DirectRead(crate::tx::DirectRead::begin(readers.acquire().await?)?)
            }
            Pools::Postgres { pool, .. } => {
                TxInner::Postgres(begin_pg(pool, Some(READ_ONLY_SNAPSHOT)).await?)
            }
        };
        Ok(Snapshot {
            tx: Tx::new(inner, None, Isolation::Standalone),
        })
    }

    /// A receiver that changes whenever this process learns of a newer committed
    /// position: at once for its own commits; from other processes through PostgreSQL's
    /// NOTIFY, or by polling the log's head (every 100 ms on SQLite, every second on
    /// PostgreSQL as a backstop for a lost notification).
    pub fn head_watch(&self) -> tokio::sync::watch::Receiver<Position> {
        use std::sync::atomic::Ordering;
        if !self.shared.head.listening.swap(true, Ordering::SeqCst) {
            let pools = self.pools.clone();
            let shared = Arc::downgrade(&self.shared);
            tokio::spawn(follow_head(pools, shared));
        }
        self.shared.head.sender.subscribe()
    }

    /// Records one hop of a request's path for its timeline. Never waits and never
    /// fails: spans are written in batches through the log writer (see
    /// [`crate::spans`]).
    pub fn record_span(&self, span: crate::spans::SpanRecord) {
        self.shared.spans.record(span);
    }

    /// Waits until every span recorded so far is written.
    pub async fn flush_spans(&self) {
        self.shared.spans.flush().await;
    }

    /// Drops a PostgreSQL schema and everything in it (a benchmark's or a test's own);
    /// does nothing on SQLite.
    pub async fn drop_schema(&self, schema: &str) -> Result<(), DbError> {
        if let Pools::Postgres { pool, .. } = &*self.pools {
            let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Closes every connection: writes the spans recorded so far, lets the log writer
    /// finish every unit it has taken, stops the head watch (which holds a connection),
    /// then waits for connections in use to be given back.
    pub async fn close(&self) {
        self.shared.spans.flush().await;
        self.shared.spans.disconnect();
        self.shared.writer.close().await;
        self.shared.head.stop.send_replace(true);
        match &*self.pools {
            Pools::Sqlite { readers, .. } => readers.close(),
            Pools::Postgres { pool, .. } => pool.close().await,
        }
    }
}

/// The log writer held still (see [`Db::pause_writer`]).
#[derive(Debug)]
pub struct WriterPause {
    lent: Option<(
        rusqlite::Connection,
        tokio::sync::oneshot::Sender<rusqlite::Connection>,
    )>,
}

impl Drop for WriterPause {
    fn drop(&mut self) {
        if let Some((conn, home)) = self.lent.take() {
            let _ = home.send(conn);
        }
    }
}

#[derive(Debug)]
enum SessionInner {
    Direct(rusqlite::Connection),
    Postgres(PoolConnection<Postgres>),
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
    inner: Option<SessionInner>,
    /// Writes queued to go out together (PostgreSQL), while turned on.
    pipeline: Option<crate::pipeline::Pipeline>,
    prepared: crate::pipeline::Prepared,
}

impl Db {
    /// A session that may write. On SQLite, call [`Db::pause_writer`] before a write
    /// transaction that must not wait on the writer.
    pub async fn writing_session(&self) -> Result<Session, DbError> {
        let inner = match &*self.pools {
            Pools::Sqlite { path, .. } => SessionInner::Direct(crate::direct::open(path)?),
            Pools::Postgres { pool, .. } => SessionInner::Postgres(pool.acquire().await?),
        };
        Ok(Session::new(inner))
    }

    /// A session that only reads (and writes temporary tables).
    pub async fn reading_session(&self) -> Result<Session, DbError> {
        let inner = match &*self.pools {
            Pools::Sqlite { path, .. } => {
                SessionInner::Direct(crate::direct::open_read_only(path)?)
            }
            Pools::Postgres { pool, .. } => SessionInner::Postgres(pool.acquire().await?),
        };
        Ok(Session::new(inner))
    }
}

impl Session {
    fn new(inner: SessionInner) -> Session {
        Session {
            inner: Some(inner),
            pipeline: None,
            prepared: crate::pipeline::Prepared::default(),
        }
    }

    /// Queues writes to go out together, on PostgreSQL, until turned off (see
    /// [`crate::pipeline`]): each is reported as changing one row and checked when
    /// the queue goes out, at the next read or at commit, where a write that changed
    /// another number of rows fails the transaction. For work that can run again
    /// without the queue when that happens (replay's batches).
    pub fn queue_writes(&mut self, on: bool) {
        let postgres = matches!(self.inner, Some(SessionInner::Postgres(_)));
        self.pipeline =
            (on && postgres).then(|| crate::pipeline::Pipeline::new(self.prepared.clone()));
    }

    /// The session's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        let inner = match self
            .inner
            .as_mut()
            .expect("a session holds its connection until dropped")
        {
            SessionInner::Direct(conn) => ConnInner::Direct(conn),
            SessionInner::Postgres(conn) => ConnInner::Postgres(conn),
        };
        Conn::new(inner, None).with_pipeline(self.pipeline.as_ref())
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
        match self.inner.take() {
            Some(SessionInner::Direct(conn)) => drop(conn),
            Some(SessionInner::Postgres(conn)) => drop(conn.detach()),
            None => {}
        }
    }
}

/// Which tenants a read may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenancy {
    /// Every tenant: platform administrators, operators, service accounts with a scope.
    All,
    /// One organization.
    Org(cairn_types::OrgId),
    /// No tenant: anonymous callers, who read no tenant data.
    None,
}

impl Tenancy {
    /// The one organization, if the tenancy is confined to one.
    pub fn org(&self) -> Option<cairn_types::OrgId> {
        match self {
            Tenancy::Org(org) => Some(*org),
            Tenancy::All | Tenancy::None => None,
        }
    }

    /// Whether a row of `org` (or of no tenant) is visible.
    pub fn sees(&self, org: Option<cairn_types::OrgId>) -> bool {
        match self {
            Tenancy::All => true,
            Tenancy::Org(mine) => org == Some(*mine),
            Tenancy::None => false,
        }
    }

    /// The value of the `cairn.tenant` setting PostgreSQL's row-level security reads.
    fn setting(&self) -> String {
        match self {
            Tenancy::All => "all".to_owned(),
            Tenancy::Org(org) => org.to_string(),
            Tenancy::None => String::new(),
        }
    }
}

/// The PostgreSQL role tenant-scoped reads run as, subject to row-level security.
pub const TENANT_READER_ROLE: &str = "cairn_tenant_reader";

impl Db {
    /// A read-only transaction confined to `tenancy`, reading one consistent snapshot
    /// (like [`Db::snapshot`]: a reader that reads the head and then the events below
    /// it sees all of them). On PostgreSQL it runs as the
    /// `cairn_tenant_reader` role with `cairn.tenant` set, so row-level security hides
    /// every other tenant's rows even from a query that forgot to filter: the second
    /// wall behind the policy's own filters.
    pub async fn scoped(&self, tenancy: &Tenancy) -> Result<Snapshot, DbError> {
        match &*self.pools {
            Pools::Sqlite { readers, .. } => Ok(Snapshot {
                tx: Tx::new(
                    TxInner::DirectRead(crate::tx::DirectRead::begin(readers.acquire().await?)?),
                    None,
                    Isolation::Standalone,
                ),
            }),
            Pools::Postgres { pool, .. } => {
                let mut tx = Tx::new(
                    TxInner::Postgres(begin_pg(pool, Some(READ_ONLY_SNAPSHOT)).await?),
                    None,
                    Isolation::Standalone,
                );
                let mut conn = tx.conn();
                conn.execute_script("SET LOCAL ROLE cairn_tenant_reader")
                    .await?;
                conn.execute(
                    "SELECT set_config('cairn.tenant', $1, true)",
                    crate::args![tenancy.setting()],
                )
                .await?;
                Ok(Snapshot { tx })
            }
        }
    }
}

/// How a PostgreSQL snapshot begins.
const READ_ONLY_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

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
                )
            } else {
                DbError::Panicked {
                    message: format!("beginning a PostgreSQL transaction: {error}"),
                }
            }
        })?;
    Ok(begun?)
}

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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

#[derive(Debug)]
enum ReaderInner {
    Sqlite(crate::direct::ReadLease),
    Postgres(PoolConnection<Postgres>),
}

/// A pooled connection for reads outside any transaction.
#[derive(Debug)]
pub struct Reader {
    inner: ReaderInner,
}

impl Reader {
    async fn acquire(pools: &Pools) -> Result<Reader, DbError> {
        let inner = match pools {
            Pools::Sqlite { readers, .. } => ReaderInner::Sqlite(readers.acquire().await?),
            Pools::Postgres { pool, .. } => ReaderInner::Postgres(pool.acquire().await?),
        };
        Ok(Reader { inner })
    }

    /// The reader's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        let inner = match &mut self.inner {
            ReaderInner::Sqlite(lease) => ConnInner::Direct(lease.conn()),
            ReaderInner::Postgres(conn) => ConnInner::Postgres(conn),
        };
        Conn::new(inner, None)
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
