//! Test databases on both backends, and the [`backend_test!`] macro that runs one test
//! body on each.
//!
//! SQLite tests get a file in a fresh temporary directory. PostgreSQL tests get a fresh
//! database on the server named by `CAIRN_TEST_PG_URL`, which `scripts/test` starts for
//! the whole run. A test that fails keeps its database and prints where it is, so it
//! can be inspected; a test that passes removes it. Upgrade tests restore, unmigrated,
//! a database an earlier release wrote instead ([`TestDb::restore`]).

mod foreign;
mod pg_proxy;
mod smtp;
mod stall;
mod tamper;

pub use foreign::ForeignPg;
pub use pg_proxy::HoldingProxy;
pub use smtp::{Received, SinkOptions, SmtpSink, decoded_headers, parse as smtp_parse};
pub use stall::{Stall, StallingSmtp};
pub use tamper::{tamper, tamper_access};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use cairn_log::Backend;
use cairn_log::{Db, DbOptions, Migration};

/// The environment variable naming the PostgreSQL server for tests: a URL to its
/// `postgres` database, as an administrator.
pub const PG_URL_VAR: &str = "CAIRN_TEST_PG_URL";

/// What a test body returns.
pub type TestResult = anyhow::Result<()>;

/// Runs a test body once on SQLite and once on PostgreSQL, each with its own fresh,
/// migrated database.
///
/// ```text
/// backend_test!(conflict_writes_nothing, |db: TestDb| async move {
///     // …
///     Ok(())
/// });
/// ```
///
/// With `unmigrated`, the body gets no database: it is given the backend and the test's
/// name, and makes its own, such as [`TestDb::restore`] of a database an earlier
/// release wrote.
///
/// ```text
/// backend_test!(old_databases_open, unmigrated, |backend: Backend, name: &'static str| async move {
///     let t = TestDb::restore(backend, name, &source).await?;
///     // …
///     Ok(())
/// });
/// ```
#[macro_export]
macro_rules! backend_test {
    ($name:ident, unmigrated, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> $crate::TestResult {
                ($body)(
                    $crate::Backend::Sqlite,
                    concat!(module_path!(), "::", stringify!($name)),
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> $crate::TestResult {
                ($body)(
                    $crate::Backend::Postgres,
                    concat!(module_path!(), "::", stringify!($name)),
                )
                .await
            }
        }
    };
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> $crate::TestResult {
                $crate::run(
                    $crate::Backend::Sqlite,
                    concat!(module_path!(), "::", stringify!($name)),
                    $body,
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> $crate::TestResult {
                $crate::run(
                    $crate::Backend::Postgres,
                    concat!(module_path!(), "::", stringify!($name)),
                    $body,
                )
                .await
            }
        }
    };
}

/// Runs one test body on a fresh database; keeps the database if the body fails.
#[doc(hidden)]
pub async fn run<F, Fut>(backend: Backend, test_name: &str, body: F) -> TestResult
where
    F: FnOnce(TestDb) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let db = TestDb::new(backend, test_name).await;
    let keep = db.place.clone();
    let result = body(db).await;
    if let Err(error) = &result {
        keep.keep(&format!("{error:#}"));
    }
    result
}

#[derive(Debug)]
enum Location {
    Sqlite { dir: PathBuf },
    Postgres { admin_url: String, database: String },
}

/// Where a test database lives; removes it when the last handle goes, unless kept.
#[derive(Debug)]
struct Place {
    location: Location,
    url: String,
    kept: AtomicBool,
}

impl Place {
    /// A fresh, empty database on `backend`, named after the test: a temporary
    /// directory for a SQLite file, or a database on the test server.
    async fn fresh(backend: Backend, test_name: &str) -> Place {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("cairn-{}-", sanitize(test_name)))
                    .tempdir()
                    .expect("a temporary directory can be created")
                    .keep();
                let url = format!("sqlite://{}", dir.join("cairn.db").display());
                Place {
                    location: Location::Sqlite { dir },
                    url,
                    kept: AtomicBool::new(false),
                }
            }
            Backend::Postgres => {
                let admin_url = pg_admin_url();
                let suffix = uuid::Uuid::now_v7().simple().to_string();
                // The end of a version 7 UUID is random.
                let database = format!("t_{}_{}", sanitize(test_name), &suffix[24..]);
                let statement = format!("CREATE DATABASE \"{database}\"");
                {
                    use sqlx::Connection as _;
                    let mut conn = sqlx::PgConnection::connect(&admin_url)
                        .await
                        .unwrap_or_else(|e| {
                            panic!("cannot reach the test PostgreSQL server at {admin_url}: {e}")
                        });
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                        .execute(&mut conn)
                        .await
                        .unwrap_or_else(|e| panic!("cannot create test database {database}: {e}"));
                    let _ = conn.close().await;
                }
                let url = with_database(&admin_url, &database);
                Place {
                    location: Location::Postgres {
                        admin_url,
                        database,
                    },
                    url,
                    kept: AtomicBool::new(false),
                }
            }
        }
    }

    fn keep(&self, why: &str) {
        if !self.kept.swap(true, Ordering::SeqCst) {
            let where_ = match &self.location {
                Location::Sqlite { dir } => format!("{}", dir.display()),
                Location::Postgres { database, .. } => format!("database {database}"),
            };
            eprintln!(
                "test failed ({why}); its database is kept for inspection: {where_} ({})",
                self.url
            );
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep("panicked");
        }
        if self.kept.load(Ordering::SeqCst) {
            return;
        }
        match &self.location {
            Location::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Location::Postgres {
                admin_url,
                database,
            } => {
                let admin_url = admin_url.clone();
                let statement = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                // Drop cannot await; a short-lived runtime on its own thread can.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async move {
                        use sqlx::Connection as _;
                        let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                            .execute(&mut conn)
                            .await
                            .ok()?;
                        conn.close().await.ok()
                    })
                });
                let _ = dropped.join();
            }
        }
    }
}

/// Waits, in real time, until `check` holds; fails naming `what` if it does not within
/// `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The personal-data key every test database is given: the same in every process of a
/// test, as a deployment gives all its processes one key.
pub fn test_kek() -> cairn_log::Kek {
    cairn_log::Kek::parse(TEST_PII_KEY, "the test key").expect("the test key is 32 bytes of base64")
}

/// [`test_kek`] as text, for a `cairn` process a test starts (`CAIRN_PII_KEY`).
pub const TEST_PII_KEY: &str = "Y2Fpcm4tdGVzdC1rZXktZW5jcnlwdGlvbi1rZXkhISE";

/// Writes `request`'s events as an earlier release wrote them, at the versions they
/// declare, below the dispatcher (no upcast, no seal), each stored as failed
/// (`P9003`): retrying it applies it through this build's decoding path, as an
/// upgraded database's retry would. The stored events.
pub async fn written_by_a_release(
    db: &Db,
    request: cairn_log::AppendRequest,
) -> anyhow::Result<Vec<cairn_log::RecordedEvent>> {
    let mut tx = db.begin().await?;
    let stored = match tx.prepare_append(request).await? {
        cairn_log::Prepared::New(mut pending) => {
            let failed = cairn_log::Outcome::Failed(cairn_log::ProcessingError {
                code: cairn_types::ErrorCode::HandlerFailed,
                message: "written by an earlier release; retry it to apply it".to_owned(),
            });
            for index in 0..pending.events().len() {
                pending.record(index, &failed, chrono::Utc::now());
            }
            let events = pending.events().to_vec();
            tx.write_append(pending).await?;
            events
        }
        cairn_log::Prepared::Repeat(events) => events,
    };
    tx.commit().await?;
    Ok(stored)
}

/// Opens a test database, without migrating it.
async fn connect(url: &str) -> Db {
    let options = DbOptions {
        max_connections: 5,
        ..DbOptions::default()
    };
    Db::connect(url, &options)
        .await
        .unwrap_or_else(|e| panic!("cannot open test database {url}: {e:#?}"))
}

/// PostgreSQL's client, `psql`: on the `PATH`, or in `PG_BIN` (the directory
/// `scripts/test` starts the server from, by default PostgreSQL 15's).
fn psql() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("psql"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        PathBuf::from(
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned()),
        )
        .join("psql")
    })
}

/// A database for one test: a fresh one with the event log's migrations applied
/// ([`TestDb::new`]), or one an earlier release wrote, as it was ([`TestDb::restore`]).
#[derive(Debug, Clone)]
pub struct TestDb {
    db: Db,
    place: Arc<Place>,
}

fn sanitize(test_name: &str) -> String {
    let mut name: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // PostgreSQL identifiers are at most 63 bytes; keep the end, which names the test.
    if name.len() > 40 {
        name = name[name.len() - 40..].to_owned();
    }
    name
}

/// The PostgreSQL server URL for tests, or a panic that says how to get one.
#[track_caller]
pub fn pg_admin_url() -> String {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{PG_URL_VAR} is not set: the PostgreSQL half of the test suite needs a server. \
             Run ./scripts/test, which starts one for the run, or point {PG_URL_VAR} at a \
             postgres:// URL of a server where you may create databases."
        ),
    }
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

impl TestDb {
    /// A fresh, migrated database on `backend`, named after the test.
    pub async fn new(backend: Backend, test_name: &str) -> TestDb {
        let place = Place::fresh(backend, test_name).await;
        let db = connect(&place.url).await;
        db.migrate(&[cairn_log::MIGRATIONS])
            .await
            .unwrap_or_else(|e| panic!("cannot migrate test database {}: {e:#?}", place.url));
        db.install_kek(test_kek())
            .await
            .unwrap_or_else(|e| panic!("cannot give test database {} its key: {e:#?}", place.url));
        TestDb {
            db,
            place: Arc::new(place),
        }
    }

    /// A fresh database on `backend` with no tables at all, named after the test: what
    /// a restore goes into.
    pub async fn empty(backend: Backend, test_name: &str) -> TestDb {
        let place = Place::fresh(backend, test_name).await;
        let db = connect(&place.url).await;
        TestDb {
            db,
            place: Arc::new(place),
        }
    }

    /// A database restored from a copy an earlier release wrote, and not migrated:
    /// `source` is a SQLite database file, copied into a fresh temporary directory, or
    /// a plain-text `pg_dump` of a PostgreSQL database, run with `psql` in a fresh
    /// database after the role its row-level security names (`cairn_tenant_reader`,
    /// which the log's migrations create) is made, if the server has none yet.
    pub async fn restore(
        backend: Backend,
        test_name: &str,
        source: &std::path::Path,
    ) -> anyhow::Result<TestDb> {
        use anyhow::Context as _;
        let place = Place::fresh(backend, test_name).await;
        match &place.location {
            Location::Sqlite { dir } => {
                std::fs::copy(source, dir.join("cairn.db")).with_context(|| {
                    format!("copying {} into {}", source.display(), dir.display())
                })?;
            }
            Location::Postgres { admin_url, .. } => {
                use sqlx::Connection as _;
                let mut admin = sqlx::PgConnection::connect(admin_url).await?;
                sqlx::raw_sql(
                    "DO $$
                     BEGIN
                         CREATE ROLE cairn_tenant_reader NOLOGIN;
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN
                         NULL;
                     END
                     $$",
                )
                .execute(&mut admin)
                .await
                .context("creating the role cairn_tenant_reader")?;
                let _ = admin.close().await;
                let psql = psql();
                let output = tokio::process::Command::new(&psql)
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"])
                    .arg("-d")
                    .arg(&place.url)
                    .arg("-f")
                    .arg(source)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .await
                    .with_context(|| {
                        format!(
                            "running {} (PostgreSQL's client; set PG_BIN to the directory \
                             that holds it)",
                            psql.display()
                        )
                    })?;
                if !output.status.success() {
                    place.keep("the restore failed");
                    anyhow::bail!(
                        "psql -f {} into {}: {}\n{}",
                        source.display(),
                        place.url,
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                // Tenant-scoped reads switch to the role, so the user the tests connect
                // as must be a member, as the migration that made the role arranged
                // (a superuser needs no membership).
                let mut conn = sqlx::PgConnection::connect(&place.url).await?;
                sqlx::raw_sql(
                    "DO $$
                     BEGIN
                         EXECUTE format('GRANT cairn_tenant_reader TO %I', current_user);
                     EXCEPTION WHEN others THEN
                         NULL;
                     END
                     $$",
                )
                .execute(&mut conn)
                .await?;
                let _ = conn.close().await;
            }
        }
        let db = connect(&place.url).await;
        Ok(TestDb {
            db,
            place: Arc::new(place),
        })
    }

    /// Keeps the database for inspection, saying why, as a failed test does.
    pub fn keep(&self, why: &str) {
        self.place.keep(why);
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// The database URL, for starting a `cairn` process or a second connection.
    pub fn url(&self) -> &str {
        &self.place.url
    }

    /// Makes PostgreSQL refuse the first `times` writes (`operations`: `INSERT`,
    /// `INSERT OR UPDATE`, …) to `table` that match `condition` (over `NEW`) with
    /// SQLSTATE 40001, a serialization failure: the error a conflicting transaction
    /// causes. Returns the sequence that counts the matching writes (a refused
    /// statement's count stays counted).
    pub async fn conflict_on(
        &self,
        table: &str,
        operations: &str,
        condition: &str,
        times: u32,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.backend() == Backend::Postgres,
            "conflicts are raised by a PostgreSQL trigger"
        );
        let name = format!("{table}_conflicts");
        let script = format!(
            "CREATE SEQUENCE {name};
             CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('{name}') <= {times} THEN
                     RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER {name} BEFORE {operations} ON {table} FOR EACH ROW
                 WHEN ({condition}) EXECUTE FUNCTION {name}();"
        );
        let mut tx = self.db.begin().await?;
        tx.conn()
            .execute_script(cairn_log::Sql::built(script))
            .await?;
        tx.commit().await?;
        Ok(name)
    }

    /// Applies more migrations (the log's own are applied already).
    pub async fn migrate(&self, migrations: &[Migration]) -> anyhow::Result<()> {
        self.migrate_sets(&[migrations]).await
    }

    /// Applies several sets of migrations, in order, after the log's own.
    pub async fn migrate_sets(&self, sets: &[&[Migration]]) -> anyhow::Result<()> {
        let mut all: Vec<&[Migration]> = vec![cairn_log::MIGRATIONS];
        all.extend_from_slice(sets);
        self.db.migrate(&all).await?;
        Ok(())
    }

    /// Opens a second, independent connection pool to the same database, as another
    /// process would, with its own log writer set up as `writer` says.
    pub async fn connect_with(&self, writer: cairn_log::WriterConfig) -> anyhow::Result<Db> {
        let db = Db::connect(
            &self.place.url,
            &DbOptions {
                max_connections: 5,
                writer: Some(writer),
                ..DbOptions::default()
            },
        )
        .await?;
        db.install_kek(test_kek()).await?;
        Ok(db)
    }

    /// Opens a second, independent connection pool to the same database, as another
    /// process would.
    pub async fn connect_again(&self) -> anyhow::Result<Db> {
        let db = Db::connect(
            &self.place.url,
            &DbOptions {
                max_connections: 5,
                ..DbOptions::default()
            },
        )
        .await?;
        db.install_kek(test_kek()).await?;
        Ok(db)
    }
}

#[cfg(test)]
mod tests {
    use super::{sanitize, with_database};

    #[test]
    fn database_names_are_safe_identifiers() {
        assert_eq!(sanitize("log::tests::Append-One"), "log__tests__append_one");
        assert!(sanitize(&"x".repeat(100)).len() <= 40);
    }

    #[test]
    fn urls_get_the_database_swapped() {
        assert_eq!(
            with_database(
                "postgres://postgres@localhost:5433/postgres?host=/tmp/pg",
                "t_1"
            ),
            "postgres://postgres@localhost:5433/t_1?host=/tmp/pg"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres", "t_2"),
            "postgres://u@h/t_2"
        );
        assert_eq!(with_database("postgres://u@h", "t_3"), "postgres://u@h/t_3");
    }
}
