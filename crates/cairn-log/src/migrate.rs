//! Schema migrations, run at start-up for every backend.
//!
//! Each crate that owns tables exports its migrations as a `&[Migration]`; the binary
//! hands all of them, in layer order, to [`Db::migrate`]. A migration is applied once,
//! inside a transaction, and remembered with a checksum: a migration whose text changed
//! after it was applied, or one the database has applied but this build does not know,
//! stops start-up with an error instead of running against a schema it does not expect.
//! On PostgreSQL an advisory lock lets several processes start at once.

use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::value::{Backend, dialect};
use crate::{args, hash};

/// One schema change, written once for each backend.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// A stable, unique id: `<crate>/<number>_<what>`.
    pub id: &'static str,
    /// The statements for SQLite.
    pub sqlite: &'static str,
    /// The statements for PostgreSQL.
    pub postgres: &'static str,
}

impl Migration {
    fn sql(&self, backend: Backend) -> &'static str {
        dialect(backend, self.sqlite, self.postgres)
    }

    fn checksum(&self, backend: Backend) -> String {
        hash::hex(&Sha256::digest(self.sql(backend).as_bytes()))
    }
}

/// The event log's own tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "log/0001_domain_events",
        sqlite: include_str!("schema/sqlite/0001_log.sql"),
        postgres: include_str!("schema/postgres/0001_log.sql"),
    },
    Migration {
        id: "log/0002_tenant_reads",
        sqlite: include_str!("schema/sqlite/0002_tenant_reads.sql"),
        postgres: include_str!("schema/postgres/0002_tenant_reads.sql"),
    },
    Migration {
        id: "log/0003_trace_spans",
        sqlite: include_str!("schema/sqlite/0003_trace_spans.sql"),
        postgres: include_str!("schema/postgres/0003_trace_spans.sql"),
    },
    Migration {
        id: "log/0004_unprocessed",
        sqlite: include_str!("schema/sqlite/0004_unprocessed.sql"),
        postgres: include_str!("schema/postgres/0004_unprocessed.sql"),
    },
    Migration {
        id: "log/0005_holds",
        sqlite: include_str!("schema/sqlite/0005_holds.sql"),
        postgres: include_str!("schema/postgres/0005_holds.sql"),
    },
    Migration {
        id: "log/0006_event_versions",
        sqlite: include_str!("schema/sqlite/0006_event_versions.sql"),
        postgres: include_str!("schema/postgres/0006_event_versions.sql"),
    },
    Migration {
        id: "log/0007_subject_keys",
        sqlite: include_str!("schema/sqlite/0007_subject_keys.sql"),
        postgres: include_str!("schema/postgres/0007_subject_keys.sql"),
    },
    Migration {
        id: "log/0008_access_log",
        sqlite: include_str!("schema/sqlite/0008_access_log.sql"),
        postgres: include_str!("schema/postgres/0008_access_log.sql"),
    },
    Migration {
        id: "log/0009_backups",
        sqlite: include_str!("schema/sqlite/0009_backups.sql"),
        postgres: include_str!("schema/postgres/0009_backups.sql"),
    },
    Migration {
        id: "log/0010_erasure_counter",
        sqlite: include_str!("schema/sqlite/0010_erasure_counter.sql"),
        postgres: include_str!("schema/postgres/0010_erasure_counter.sql"),
    },
    Migration {
        id: "log/0011_restriction",
        sqlite: include_str!("schema/sqlite/0011_restriction.sql"),
        postgres: include_str!("schema/postgres/0011_restriction.sql"),
    },
    Migration {
        id: "log/0012_scrubbed",
        sqlite: include_str!("schema/sqlite/0012_scrubbed.sql"),
        postgres: include_str!("schema/postgres/0012_scrubbed.sql"),
    },
];

/// Why migrations did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {id} was changed after it was applied (checksum {applied} in the database, {current} in this build)"
    )]
    Changed {
        id: String,
        applied: String,
        current: String,
    },
    #[error(
        "the database has migration {id} applied, which this build of cairn does not know: is it older than the database?"
    )]
    Unknown { id: String },
    #[error("migration {id} is listed twice")]
    Duplicate { id: String },
    #[error("migration {id} failed")]
    Failed {
        id: String,
        #[source]
        source: crate::error::DbError,
    },
    #[error(transparent)]
    Database(#[from] crate::error::DbError),
}

impl Db {
    /// Applies the migrations this database has not seen yet, in the order given.
    /// Returns the ids applied now.
    pub async fn migrate(&self, sets: &[&[Migration]]) -> Result<Vec<&'static str>, MigrateError> {
        let backend = self.backend();
        let migrations: Vec<&Migration> = sets.iter().flat_map(|set| set.iter()).collect();
        for (index, migration) in migrations.iter().enumerate() {
            if migrations[..index]
                .iter()
                .any(|earlier| earlier.id == migration.id)
            {
                return Err(MigrateError::Duplicate {
                    id: migration.id.to_owned(),
                });
            }
        }
        let mut tx = self.begin().await?;
        let mut conn = tx.conn();
        // PostgreSQL: one process migrates at a time (SQLite's writer is one already).
        conn.execute(
            dialect(
                backend,
                "SELECT 1",
                "SELECT pg_advisory_xact_lock(7307443390862245888)",
            ),
            args![],
        )
        .await?;
        conn.execute_script(dialect(
            backend,
            "CREATE TABLE IF NOT EXISTS cairn_migrations (
                 id TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT",
            "CREATE TABLE IF NOT EXISTS cairn_migrations (
                 id TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)",
        ))
        .await?;
        let applied = conn
            .fetch_all(
                "SELECT id, checksum FROM cairn_migrations ORDER BY id",
                args![],
            )
            .await?;
        let mut already = Vec::new();
        for row in applied {
            let id: String = row.get("id")?;
            let checksum: String = row.get("checksum")?;
            let Some(migration) = migrations.iter().find(|m| m.id == id) else {
                return Err(MigrateError::Unknown { id });
            };
            let current = migration.checksum(backend);
            if current != checksum {
                return Err(MigrateError::Changed {
                    id,
                    applied: checksum,
                    current,
                });
            }
            already.push(id);
        }
        let mut applied_now = Vec::new();
        for migration in migrations {
            if already.iter().any(|id| id == migration.id) {
                continue;
            }
            conn.execute_script(migration.sql(backend))
                .await
                .map_err(|source| MigrateError::Failed {
                    id: migration.id.to_owned(),
                    source,
                })?;
            conn.execute(
                "INSERT INTO cairn_migrations (id, checksum, applied_at) VALUES ($1, $2, $3)",
                args![
                    migration.id,
                    migration.checksum(backend),
                    cairn_types::now_micros()
                ],
            )
            .await?;
            applied_now.push(migration.id);
        }
        tx.commit().await?;
        if !applied_now.is_empty() {
            tracing::info!(migrations = ?applied_now, "applied migrations");
        }
        Ok(applied_now)
    }
}
