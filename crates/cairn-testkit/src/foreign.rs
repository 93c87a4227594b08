//! A PostgreSQL database of its own holding another system's data: the source of an
//! import, built by a test from SQL scripts.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::{Location, Place, pg_admin_url, sanitize, with_database};

/// An empty PostgreSQL database on the test server, with none of cairn's tables. Like
/// a [`crate::TestDb`], it is removed when the last handle goes, unless the test
/// panicked or [`ForeignPg::keep`] was called.
#[derive(Debug, Clone)]
pub struct ForeignPg {
    place: Arc<Place>,
}

impl ForeignPg {
    /// A fresh database named after the test.
    pub async fn new(test_name: &str) -> ForeignPg {
        use sqlx::Connection as _;
        let admin_url = pg_admin_url();
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let database = format!("f_{}_{}", sanitize(test_name), &suffix[24..]);
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach the test PostgreSQL server at {admin_url}: {e}")
            });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {database}: {e}"));
        let _ = conn.close().await;
        let url = with_database(&admin_url, &database);
        ForeignPg {
            place: Arc::new(Place {
                location: Location::Postgres {
                    admin_url,
                    database,
                },
                url,
                kept: AtomicBool::new(false),
            }),
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.place.url
    }

    /// Runs a script of several statements (functions with `$$` bodies included), as
    /// `psql -f` would, in one transaction.
    pub async fn run_script(&self, script: &str) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.place.url).await?;
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_owned()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        conn.close().await?;
        Ok(())
    }

    /// Keeps the database after the test, saying why and where.
    pub fn keep(&self, why: &str) {
        self.place.keep(why);
    }
}
