//! Copies of a running database, and what a copy holds.
//!
//! On SQLite, [`Db::backup_into`] writes the whole database to a new file with
//! `VACUUM INTO`, from one read snapshot: writers carry on while it runs, and the copy
//! holds exactly the commits that snapshot saw, its head among them. PostgreSQL has its
//! own tools for this (`pg_dump`, base backups); this module does not stand in for them.
//!
//! A database also remembers the backups it came from ([`BackupMark`]): the copy holds
//! one saying when it was taken and what head it holds, and a restore marks it
//! restored. `audit verify` reads them to tell checkpoints signed after a backup, which
//! describe events the restored log never held, from a log cut short.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use cairn_types::Position;

use crate::args;
use crate::backend::Row;
use crate::db::Db;
use crate::error::DbError;
use crate::value::{Backend, dialect};
use crate::writer::WriteOptions;

/// A backup this database holds or came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupMark {
    /// When the copy was taken; `None` when the backup did not say (a copy made
    /// otherwise than by `cairn backup`).
    pub taken_at: Option<DateTime<Utc>>,
    /// The head the copy holds.
    pub head_position: Position,
    pub head_hash: String,
    /// When it was restored into this database; `None` in the copy itself.
    pub restored_at: Option<DateTime<Utc>>,
    /// What it was restored from, as the restore named it.
    pub restored_from: Option<String>,
}

impl BackupMark {
    /// Whether a checkpoint at `position`, signed at `signed_at`, was signed after this
    /// backup was taken and before it was restored, past the head it holds: it
    /// describes events the restored log never held. A backup whose time is not known
    /// counts from its restore back.
    pub fn outlived_by(&self, position: Position, signed_at: DateTime<Utc>) -> bool {
        let Some(restored_at) = self.restored_at else {
            return false;
        };
        position > self.head_position
            && signed_at < restored_at
            && self.taken_at.is_none_or(|taken_at| signed_at > taken_at)
    }
}

fn mark_of(row: &Row) -> Result<BackupMark, DbError> {
    Ok(BackupMark {
        taken_at: row.get::<Option<DateTime<Utc>>>("taken_at")?,
        head_position: Position::new(row.get::<i64>("head_position")?),
        head_hash: row.get::<String>("head_hash")?,
        restored_at: row.get::<Option<DateTime<Utc>>>("restored_at")?,
        restored_from: row.get::<Option<String>>("restored_from")?,
    })
}

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

    /// Records in this database, a copy just taken, when it was taken and the head it
    /// holds.
    pub async fn mark_backup(
        &self,
        taken_at: DateTime<Utc>,
        head_position: Position,
        head_hash: &str,
    ) -> Result<(), DbError> {
        let head_hash = head_hash.to_owned();
        self.write(WriteOptions::default(), move |tx| {
            let head_hash = head_hash.clone();
            Box::pin(async move {
                tx.conn()
                    .execute(
                        "INSERT INTO log_backups (taken_at, head_position, head_hash) \
                         VALUES ($1, $2, $3)",
                        args![taken_at, head_position.get(), head_hash.as_str()],
                    )
                    .await?;
                Ok::<_, DbError>(())
            })
        })
        .await
    }

    /// Records that this database was just restored from `from`, whose head is
    /// `head_position`: the mark the backup carried for that head is marked restored,
    /// or, when it carried none, one is added, taken at `taken_at` if known. Returns
    /// the mark.
    pub async fn mark_restored(
        &self,
        from: &str,
        restored_at: DateTime<Utc>,
        taken_at: Option<DateTime<Utc>>,
        head_position: Position,
        head_hash: &str,
    ) -> Result<BackupMark, DbError> {
        let (from, head_hash) = (from.to_owned(), head_hash.to_owned());
        self.write(WriteOptions::default(), move |tx| {
            let (from, head_hash) = (from.clone(), head_hash.clone());
            Box::pin(async move {
                let mut conn = tx.conn();
                let carried = conn
                    .fetch_optional(
                        "SELECT id, taken_at FROM log_backups WHERE restored_at IS NULL \
                         AND head_position = $1 AND head_hash = $2 ORDER BY id DESC LIMIT 1",
                        args![head_position.get(), head_hash.as_str()],
                    )
                    .await?;
                let taken_at = match carried {
                    Some(row) => {
                        conn.execute(
                            "UPDATE log_backups SET restored_at = $1, restored_from = $2 \
                             WHERE id = $3",
                            args![restored_at, from.as_str(), row.get::<i64>("id")?],
                        )
                        .await?;
                        row.get::<Option<DateTime<Utc>>>("taken_at")?
                    }
                    None => {
                        conn.execute(
                            "INSERT INTO log_backups (taken_at, head_position, head_hash, \
                             restored_at, restored_from) VALUES ($1, $2, $3, $4, $5)",
                            args![
                                taken_at,
                                head_position.get(),
                                head_hash.as_str(),
                                restored_at,
                                from.as_str()
                            ],
                        )
                        .await?;
                        taken_at
                    }
                };
                // A copy's marks that were never restored (a backup of a backup) say
                // nothing of this database.
                conn.execute("DELETE FROM log_backups WHERE restored_at IS NULL", args![])
                    .await?;
                Ok(BackupMark {
                    taken_at,
                    head_position,
                    head_hash,
                    restored_at: Some(restored_at),
                    restored_from: Some(from),
                })
            })
        })
        .await
    }

    /// The backups this database was restored from, oldest first.
    pub async fn restores(&self) -> Result<Vec<BackupMark>, DbError> {
        let mut reader = self.reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT taken_at, head_position, head_hash, restored_at, restored_from \
                 FROM log_backups WHERE restored_at IS NOT NULL ORDER BY restored_at, id",
                args![],
            )
            .await?;
        rows.iter().map(mark_of).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-12-07T10:{minute:02}:00Z"))
            .map(|at| at.with_timezone(&Utc))
            .expect("a time")
    }

    fn mark(taken_at: Option<u32>, restored_at: Option<u32>) -> BackupMark {
        BackupMark {
            taken_at: taken_at.map(at),
            head_position: Position::new(100),
            head_hash: "h".to_owned(),
            restored_at: restored_at.map(at),
            restored_from: None,
        }
    }

    #[test]
    fn a_checkpoint_outlives_a_backup_only_past_its_head_between_taking_and_restoring() {
        // (taken at, restored at, checkpoint position, signed at) -> outlived
        let cases = [
            // Signed between the backup and the restore, past the head: the lost timeline.
            (Some(10), Some(30), 150, 20, true),
            // At or below the head: the restored log holds it.
            (Some(10), Some(30), 100, 20, false),
            // Signed before the backup was taken, past its head: a log cut short.
            (Some(10), Some(30), 150, 5, false),
            // Signed after the restore: the restored log's own later history.
            (Some(10), Some(30), 150, 40, false),
            // The backup's time unknown: counted from the restore back.
            (None, Some(30), 150, 5, true),
            (None, Some(30), 150, 40, false),
            // A copy never restored says nothing.
            (Some(10), None, 150, 20, false),
        ];
        for (taken_at, restored_at, position, signed_at, outlived) in cases {
            assert_eq!(
                mark(taken_at, restored_at).outlived_by(Position::new(position), at(signed_at)),
                outlived,
                "taken {taken_at:?}, restored {restored_at:?}, checkpoint at {position} signed {signed_at}"
            );
        }
    }
}
