//! Copies of a running database, and what a copy holds.
//!
//! On SQLite, [`Db::backup_into`] writes the whole database to a new file with
//! `VACUUM INTO`, from one read snapshot: writers carry on while it runs, and the copy
//! holds exactly the commits that snapshot saw, its head among them. PostgreSQL has its
//! own tools for this (`pg_dump`, base backups); this module does not stand in for them.

use std::path::Path;

use crate::args;
use crate::db::Db;
use crate::error::DbError;
use crate::value::{Backend, dialect};

/// Why a copy was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "cairn copies only SQLite databases itself; back PostgreSQL up with pg_dump or a base backup"
    )]
    Postgres,
    #[error("{path} already exists: a backup never overwrites a file")]
    Exists { path: String },
    #[error(transparent)]
    Database(#[from] DbError),
}

impl Db {
    /// Writes a consistent copy of the whole database to `path`, which must not exist,
    /// from one read snapshot while writers carry on. SQLite only.
    pub async fn backup_into(&self, path: &Path) -> Result<(), BackupError> {
        if self.backend() == Backend::Postgres {
            return Err(BackupError::Postgres);
        }
        if path.exists() {
            return Err(BackupError::Exists {
                path: path.display().to_string(),
            });
        }
        let mut reader = self.reader().await?;
        reader
            .conn()
            .execute("VACUUM INTO $1", args![path.display().to_string()])
            .await?;
        Ok(())
    }

    /// The ids of the migrations this database has applied, in order; `None` when it
    /// has no migrations table, so is no cairn database.
    pub async fn applied_migrations(&self) -> Result<Option<Vec<String>>, DbError> {
        let mut reader = self.reader().await?;
        let mut conn = reader.conn();
        let table = conn
            .fetch_optional(
                dialect(
                    self.backend(),
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'cairn_migrations'",
                    "SELECT to_regclass('cairn_migrations')::text AS name \
                     WHERE to_regclass('cairn_migrations') IS NOT NULL",
                ),
                args![],
            )
            .await?;
        if table.is_none() {
            return Ok(None);
        }
        let rows = conn
            .fetch_all("SELECT id FROM cairn_migrations ORDER BY id", args![])
            .await?;
        let ids = rows
            .iter()
            .map(|row| row.get::<String>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ids))
    }
}
