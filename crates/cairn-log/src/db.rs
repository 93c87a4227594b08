//! Connecting to a backend, transactions and read connections.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite};

use cairn_types::Position;

use crate::sql::{Backend, Conn, dialect};

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
        source: sqlx::Error,
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
        source: sqlx::Error,
    },
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// The most connections one process holds (PostgreSQL) or reads with (SQLite).
    pub max_connections: u32,
    /// On PostgreSQL, the schema to work in instead of the user's default; created if
    /// missing. Used to give benchmarks and tests a place of their own.
    pub schema: Option<String>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            schema: None,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Pools {
    Sqlite {
        /// One connection: SQLite has one writer, and queueing writers in-process avoids
        /// lock upgrades that would fail with "database is locked".
        writer: SqlitePool,
        reader: SqlitePool,
        path: PathBuf,
    },
    Postgres {
        pool: PgPool,
        target: String,
    },
}

impl Pools {
    async fn begin(&self) -> Result<TxInner, sqlx::Error> {
        Ok(match self {
            Pools::Sqlite { writer, .. } => {
                TxInner::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?)
            }
            Pools::Postgres { pool, .. } => TxInner::Postgres(pool.begin().await?),
        })
    }

    /// A write transaction that appends no events (spans, coordination).
    pub(crate) async fn begin_plain(&self) -> Result<Tx, sqlx::Error> {
        Ok(Tx::read_only(self.begin().await?))
    }

    async fn head(&self) -> Result<Position, sqlx::Error> {
        let mut reader = match self {
            Pools::Sqlite { reader, .. } => ReaderInner::Sqlite(reader.acquire().await?),
            Pools::Postgres { pool, .. } => ReaderInner::Postgres(pool.acquire().await?),
        };
        let mut conn = match &mut reader {
            ReaderInner::Sqlite(conn) => Conn::Sqlite(conn),
            ReaderInner::Postgres(conn) => Conn::Postgres(conn),
        };
        Ok(conn.head().await?.last_position)
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
/// Cheap to clone; clones share the connection pools.
#[derive(Debug, Clone)]
pub struct Db {
    pools: Arc<Pools>,
    shared: Arc<Shared>,
}

/// What the clones of one `Db` share besides the pools. Background tasks hold it
/// weakly (or, for the span writer, hold only the receiving end of its channel), so
/// they stop when the last clone of the `Db` is dropped.
#[derive(Debug)]
struct Shared {
    head: HeadWatch,
    spans: crate::spans::SpanSink,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            head: HeadWatch::new(),
            spans: crate::spans::SpanSink::default(),
        })
    }
}

/// The newest committed position this process knows of, for waking subscribers. It is
/// only a wake-up: readers always read the log itself, so a missed update delays them
/// and loses nothing.
#[derive(Debug)]
struct HeadWatch {
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

    fn advance(&self, position: Position) {
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
    /// missing. Does not run migrations: see [`Db::migrate`].
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
        let open = |source| ConnectError::Open {
            target: target.clone(),
            source,
        };
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // Every commit reaches the disk: an acknowledged event is never lost.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(open)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(base.read_only(true))
            .await
            .map_err(open)?;
        Ok(Db {
            pools: Arc::new(Pools::Sqlite {
                writer,
                reader,
                path: path.to_owned(),
            }),
            shared: Shared::new(),
        })
    }

    async fn connect_postgres(url: &str, options: &DbOptions) -> Result<Db, ConnectError> {
        let target = redact_url(url);
        let mut connect =
            PgConnectOptions::from_str(url).map_err(|source| ConnectError::BadUrl {
                url: target.clone(),
                source,
            })?;
        connect = connect.application_name("cairn");
        if let Some(schema) = &options.schema {
            // Create the schema with a one-off connection, then point every pooled
            // connection at it.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(connect.clone())
                .await
                .map_err(|source| ConnectError::Open {
                    target: target.clone(),
                    source,
                })?;
            let statement = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .map_err(|source| ConnectError::Open {
                    target: target.clone(),
                    source,
                })?;
            pool.close().await;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .map_err(|source| ConnectError::Open {
                target: target.clone(),
                source,
            })?;
        Ok(Db {
            pools: Arc::new(Pools::Postgres { pool, target }),
            shared: Shared::new(),
        })
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

    /// Begins a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a transaction that reads before it writes never fails to
    /// upgrade.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let inner = self.pools.begin().await?;
        Ok(Tx {
            inner,
            shared: Some(self.shared.clone()),
            appended: Vec::new(),
        })
    }

    /// A connection for reading. On SQLite it is opened read-only.
    pub async fn reader(&self) -> Result<Reader, sqlx::Error> {
        let inner = match &*self.pools {
            Pools::Sqlite { reader, .. } => ReaderInner::Sqlite(reader.acquire().await?),
            Pools::Postgres { pool, .. } => ReaderInner::Postgres(pool.acquire().await?),
        };
        Ok(Reader { inner })
    }

    /// A read-only transaction: every read through it sees one consistent snapshot,
    /// however long it takes, without holding up writers.
    pub async fn snapshot(&self) -> Result<Snapshot, sqlx::Error> {
        let inner = match &*self.pools {
            Pools::Sqlite { reader, .. } => {
                TxInner::Sqlite(reader.begin_with("BEGIN DEFERRED").await?)
            }
            Pools::Postgres { pool, .. } => TxInner::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?,
            ),
        };
        Ok(Snapshot {
            tx: Tx::read_only(inner),
        })
    }

    /// A read-write snapshot on PostgreSQL (a plain snapshot on SQLite), for work that
    /// must create temporary tables before turning the transaction read-only.
    pub async fn shadow_snapshot(&self) -> Result<Snapshot, sqlx::Error> {
        match &*self.pools {
            Pools::Sqlite { .. } => self.snapshot().await,
            Pools::Postgres { pool, .. } => Ok(Snapshot {
                tx: Tx::read_only(TxInner::Postgres(
                    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        .await?,
                )),
            }),
        }
    }

    /// The PostgreSQL pool, for what only PostgreSQL offers (LISTEN/NOTIFY, advisory
    /// locks); `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &*self.pools {
            Pools::Postgres { pool, .. } => Some(pool),
            Pools::Sqlite { .. } => None,
        }
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
    /// fails: spans are written in batches in the background (see [`crate::spans`]).
    pub fn record_span(&self, span: crate::spans::SpanRecord) {
        self.shared.spans.record(&self.pools, span);
    }

    /// Waits until every span recorded so far is written.
    pub async fn flush_spans(&self) {
        self.shared.spans.flush().await;
    }

    /// Drops a PostgreSQL schema and everything in it (a benchmark's or a test's own);
    /// does nothing on SQLite.
    pub async fn drop_schema(&self, schema: &str) -> Result<(), sqlx::Error> {
        if let Pools::Postgres { pool, .. } = &*self.pools {
            let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Closes every connection, after writing the spans recorded so far and stopping
    /// the head watch, which holds a connection. Waits for connections in use to be
    /// given back.
    pub async fn close(&self) {
        self.shared.spans.flush().await;
        self.shared.head.stop.send_replace(true);
        match &*self.pools {
            Pools::Sqlite { writer, reader, .. } => {
                reader.close().await;
                writer.close().await;
            }
            Pools::Postgres { pool, .. } => pool.close().await,
        }
    }
}

/// A connection held across several transactions, for long work that keeps temporary
/// tables between its transactions (replay rebuilding in batches). The connection is
/// closed, never returned to the pool, when the session ends: whatever it created and
/// any transaction it left open die with it.
#[derive(Debug)]
pub struct Session {
    inner: Option<ReaderInner>,
}

impl Db {
    /// A session on a connection that may write (SQLite's one writer: other writers in
    /// this process wait while the session holds it).
    pub async fn writing_session(&self) -> Result<Session, sqlx::Error> {
        let inner = match &*self.pools {
            Pools::Sqlite { writer, .. } => ReaderInner::Sqlite(writer.acquire().await?),
            Pools::Postgres { pool, .. } => ReaderInner::Postgres(pool.acquire().await?),
        };
        Ok(Session { inner: Some(inner) })
    }

    /// A session on a read-only connection (on SQLite; on PostgreSQL the session's
    /// transactions are made read-only by [`Session::begin_read_only`]).
    pub async fn reading_session(&self) -> Result<Session, sqlx::Error> {
        let inner = match &*self.pools {
            Pools::Sqlite { reader, .. } => ReaderInner::Sqlite(reader.acquire().await?),
            Pools::Postgres { pool, .. } => ReaderInner::Postgres(pool.acquire().await?),
        };
        Ok(Session { inner: Some(inner) })
    }
}

impl Session {
    /// The session's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match self
            .inner
            .as_mut()
            .expect("a session holds its connection until dropped")
        {
            ReaderInner::Sqlite(conn) => Conn::Sqlite(conn),
            ReaderInner::Postgres(conn) => Conn::Postgres(conn),
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&mut self) -> Result<(), sqlx::Error> {
        let statement = dialect(self.conn().backend(), "BEGIN IMMEDIATE", "BEGIN");
        self.conn().execute_script(statement).await
    }

    /// Begins a transaction that writes nothing but temporary tables, in one snapshot
    /// (`REPEATABLE READ` on PostgreSQL).
    pub async fn begin_read_only(&mut self) -> Result<(), sqlx::Error> {
        let statement = dialect(
            self.conn().backend(),
            "BEGIN DEFERRED",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        );
        self.conn().execute_script(statement).await
    }

    /// Commits the current transaction.
    pub async fn commit(&mut self) -> Result<(), sqlx::Error> {
        self.conn().execute_script("COMMIT").await
    }

    /// Rolls the current transaction back.
    pub async fn rollback(&mut self) -> Result<(), sqlx::Error> {
        self.conn().execute_script("ROLLBACK").await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the connection (rather than pooling it) drops its temporary tables
        // and rolls back a transaction left open by an error.
        match self.inner.take() {
            Some(ReaderInner::Sqlite(conn)) => drop(conn.detach()),
            Some(ReaderInner::Postgres(conn)) => drop(conn.detach()),
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
    pub async fn scoped(&self, tenancy: &Tenancy) -> Result<Snapshot, sqlx::Error> {
        match &*self.pools {
            Pools::Sqlite { reader, .. } => Ok(Snapshot {
                tx: Tx::read_only(TxInner::Sqlite(reader.begin_with("BEGIN DEFERRED").await?)),
            }),
            Pools::Postgres { pool, .. } => {
                let mut tx = Tx::read_only(TxInner::Postgres(
                    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .await?,
                ));
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

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug)]
enum TxInner {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// A write transaction. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: TxInner,
    /// Told of the new head when a transaction that appended commits.
    shared: Option<Arc<Shared>>,
    /// The events this transaction appended: (position, event type).
    appended: Vec<(Position, String)>,
}

impl Tx {
    fn read_only(inner: TxInner) -> Tx {
        Tx {
            inner,
            shared: None,
            appended: Vec::new(),
        }
    }

    /// Notes events appended in this transaction, for the metrics and the head watch
    /// once it commits.
    pub(crate) fn note_appended(&mut self, events: impl IntoIterator<Item = (Position, String)>) {
        self.appended.extend(events);
    }

    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => Conn::Sqlite(tx),
            TxInner::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    /// The backend the transaction runs on.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Opens a savepoint: work done through it is undone by [`Savepoint::rollback`]
    /// (or by dropping it) while the rest of the transaction stays.
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_>, sqlx::Error> {
        use sqlx::Acquire as _;
        let inner = match &mut self.inner {
            TxInner::Sqlite(tx) => SavepointInner::Sqlite(tx.begin().await?),
            TxInner::Postgres(tx) => SavepointInner::Postgres(tx.begin().await?),
        };
        Ok(Savepoint { inner })
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await?,
            TxInner::Postgres(tx) => tx.commit().await?,
        }
        if let (Some(shared), Some(last)) =
            (&self.shared, self.appended.iter().map(|(p, _)| *p).max())
        {
            let metrics = cairn_observe::metrics();
            for (_, event_type) in &self.appended {
                metrics
                    .events_appended
                    .get_or_create(&cairn_observe::EventLabels {
                        event_type: event_type.clone(),
                    })
                    .inc();
            }
            shared.head.advance(last);
        }
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.rollback().await,
            TxInner::Postgres(tx) => tx.rollback().await,
        }
    }
}

#[derive(Debug)]
enum SavepointInner<'t> {
    Sqlite(sqlx::Transaction<'t, Sqlite>),
    Postgres(sqlx::Transaction<'t, Postgres>),
}

/// A savepoint inside a [`Tx`]. Dropped without [`Savepoint::release`], it rolls back.
#[derive(Debug)]
pub struct Savepoint<'t> {
    inner: SavepointInner<'t>,
}

impl Savepoint<'_> {
    /// The savepoint's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.inner {
            SavepointInner::Sqlite(tx) => Conn::Sqlite(tx),
            SavepointInner::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    /// Keeps the work done inside the savepoint.
    pub async fn release(self) -> Result<(), sqlx::Error> {
        match self.inner {
            SavepointInner::Sqlite(tx) => tx.commit().await,
            SavepointInner::Postgres(tx) => tx.commit().await,
        }
    }

    /// Undoes the work done inside the savepoint.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            SavepointInner::Sqlite(tx) => tx.rollback().await,
            SavepointInner::Postgres(tx) => tx.rollback().await,
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

#[derive(Debug)]
enum ReaderInner {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// A pooled connection for reads outside any transaction.
#[derive(Debug)]
pub struct Reader {
    inner: ReaderInner,
}

impl Reader {
    /// The reader's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.inner {
            ReaderInner::Sqlite(conn) => Conn::Sqlite(conn),
            ReaderInner::Postgres(conn) => Conn::Postgres(conn),
        }
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
