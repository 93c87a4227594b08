//! `cairn backup` and `cairn restore`: a copy of a running SQLite database that keeps
//! its proofs, and bringing it back.
//!
//! The copy is taken in one read snapshot, so it holds a head and every event below
//! it; its chain is checked in the copy, and the head it holds is what a checkpoint
//! signs. A restore checks the file before it touches the database: a file that is
//! not a cairn database, or whose migrations this build does not know, is refused, and
//! so is a database that holds events unless asked to replace it. PostgreSQL has its
//! own tools (`pg_dump`, base backups): the README gives the steps.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use console::style;
use serde::Serialize;

use cairn_log::{Backend, Checkpoint, Db, DbOptions};
use cairn_types::Position;

use crate::app;
use crate::cli::{BackupArgs, RestoreArgs};
use crate::cmd::audit::{Signed, Target, Walk, load_key, sign_head};
use crate::ui;

const POSTGRES_STEPS: &str = "on PostgreSQL, sign a checkpoint (cairn audit checkpoint), take \
     the copy with pg_dump (pg_dump --no-owner --file=FILE URL) and load it into an empty \
     database with psql; the README's Backups section gives the steps";

/// The SQLite file a URL names, or `None` for PostgreSQL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(PathBuf::from)
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[derive(Serialize)]
struct BackupOutput<'a> {
    file: &'a Path,
    head: Position,
    head_hash: &'a str,
    n_checked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<&'a Checkpoint>,
}

pub async fn backup(url: &str, args: BackupArgs) -> anyhow::Result<ExitCode> {
    if sqlite_path(url).is_none() {
        anyhow::bail!("cairn backup copies SQLite databases; {POSTGRES_STEPS}");
    }
    // The key is read first, so that a missing one stops the backup before it starts.
    let key = match &args.checkpoint_dir {
        Some(_) => Some(load_key(args.key.as_deref(), "--key")?),
        None => None,
    };
    let db = app::open_db(url, &DbOptions::default()).await?;
    let started = std::time::Instant::now();
    let copied = db.backup_into(&args.out).await;
    db.close().await;
    copied.with_context(|| format!("copying {} to {}", db.describe(), args.out.display()))?;
    let copy_took = started.elapsed();

    // Everything below reads the copy: its head is the one it holds, whatever the
    // database has appended since.
    let copy = Db::connect(&sqlite_url(&args.out), &DbOptions::default())
        .await
        .with_context(|| format!("opening the copy {}", args.out.display()))?;
    let progress = ui::Progress::new("checking the copy");
    let checked = match (&key, &args.checkpoint_dir) {
        (Some(key), Some(dir)) => sign_head(
            &copy,
            key,
            &Target::Dir(dir.clone()),
            Walk::Whole,
            false,
            &mut |done, total| progress.update(done, total),
        )
        .await
        .map(Some),
        _ => Ok(None),
    };
    let report = match &checked {
        Ok(Some(_)) => None,
        _ => Some(
            copy.verify_chain(&mut |done, total| progress.update(done, total))
                .await,
        ),
    };
    progress.finish();
    copy.close().await;
    settle(&args.out)?;
    let (report, written) = match (checked?, report) {
        (
            Some(Signed::Written {
                file,
                checkpoint,
                report,
            }),
            _,
        ) => (report, Some((file, checkpoint))),
        (Some(Signed::Refused { report, .. }), _) => {
            let why = report.breach.as_ref().map_or_else(
                || "it no longer holds the newest checkpoint there".to_owned(),
                |breach| {
                    format!(
                        "its hash chain is broken at position {}: {}",
                        breach.position, breach.detail
                    )
                },
            );
            anyhow::bail!(
                "the copy {} was written but not signed: {why} (run cairn audit verify)",
                args.out.display()
            );
        }
        (Some(Signed::Unchanged), _) => unreachable!("sign_head signs when not told to skip"),
        (None, Some(report)) => (report?, None),
        (None, None) => unreachable!("the chain is verified when nothing was signed"),
    };
    if let Some(breach) = &report.breach {
        anyhow::bail!(
            "the copy {} was written, but its hash chain is broken at position {}: {}",
            args.out.display(),
            breach.position,
            breach.detail
        );
    }
    if args.json.json {
        ui::print_json(&BackupOutput {
            file: &args.out,
            head: report.head,
            head_hash: &report.head_hash,
            n_checked: report.n_checked,
            checkpoint_file: written.as_ref().map(|(file, _)| file.as_path()),
            checkpoint: written.as_ref().map(|(_, checkpoint)| &**checkpoint),
        })?;
    } else {
        outln!(
            "{} copied the log to {} in {}: head at position {} (hash {})\n  the copy's hash \
             chain checks out: {} rehashed",
            style("✓").green().bold(),
            args.out.display(),
            ui::duration(copy_took),
            report.head,
            report.head_hash,
            ui::plural(report.n_checked, "event", "events"),
        );
        match &written {
            Some((file, _)) => outln!(
                "  signed the head it holds: {} (after a restore, audit verify \
                 --backup-checkpoint {})",
                file.display(),
                file.display()
            ),
            None => outln!(
                "  {}",
                style("no checkpoint signed: give --checkpoint-dir DIR to sign the head it holds")
                    .dim()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct RestoreOutput<'a> {
    from: &'a Path,
    database: &'a str,
    head: Position,
    head_hash: &'a str,
    replaced_events: u64,
}

pub async fn restore(url: &str, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let Some(target) = sqlite_path(url) else {
        anyhow::bail!("cairn restore brings back SQLite backups; {POSTGRES_STEPS}");
    };
    let from = &args.from;
    anyhow::ensure!(from.is_file(), "{}: no such backup file", from.display());
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the directory {}", dir.display()))?;

    // The backup is checked and brought up to this build's schema in a copy next to
    // the database, which replaces it only once all is well.
    let staged = tempfile::Builder::new()
        .prefix(".cairn-restore-")
        .suffix(".db")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    std::fs::copy(from, staged.path())
        .with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
    let head = check_backup(from, staged.path()).await;
    let settled = settle(staged.path());
    let head = head?;
    settled?;

    let replaced_events = events_in(&target).await?;
    if replaced_events > 0 && !args.force {
        anyhow::bail!(
            "{} holds {}: give --force to replace them (with cairn serve stopped); nothing \
             was restored",
            target.display(),
            ui::plural(replaced_events, "event", "events")
        );
    }
    // A write-ahead log left by the replaced database must not be read with the new one.
    remove_sidecars(&target);
    staged
        .persist(&target)
        .map_err(|e| anyhow::Error::new(e.error))
        .with_context(|| format!("moving the restored database to {}", target.display()))?;

    if args.json.json {
        ui::print_json(&RestoreOutput {
            from,
            database: url,
            head: head.last_position,
            head_hash: &head.last_hash,
            replaced_events,
        })?;
    } else {
        outln!(
            "{} restored {} to {}: head at position {} (hash {})\n  {}",
            style("✓").green().bold(),
            from.display(),
            target.display(),
            head.last_position,
            head.last_hash,
            style(
                "check it: cairn replay --verify, and cairn audit verify --checkpoint-dir DIR \
                 --backup-checkpoint FILE (the checkpoint cairn backup signed)"
            )
            .dim()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the staged copy of `from`, refuses what is no cairn backup or comes from a
/// newer release, and migrates it to this build's schema; returns its head.
async fn check_backup(from: &Path, staged: &Path) -> anyhow::Result<cairn_log::Head> {
    let not_a_backup = |why: String| {
        anyhow::anyhow!(
            "{} is not a cairn backup: {why}; nothing was restored",
            from.display()
        )
    };
    let db = Db::connect(&sqlite_url(staged), &DbOptions::default())
        .await
        .map_err(|e| not_a_backup(format!("{e:#}")))?;
    let checked = check_open_backup(&db, from, &not_a_backup).await;
    db.close().await;
    checked
}

async fn check_open_backup(
    db: &Db,
    from: &Path,
    not_a_backup: &dyn Fn(String) -> anyhow::Error,
) -> anyhow::Result<cairn_log::Head> {
    debug_assert_eq!(db.backend(), Backend::Sqlite);
    let applied = db
        .applied_migrations()
        .await
        .map_err(|e| not_a_backup(e.to_string()))?
        .ok_or_else(|| not_a_backup("it has no cairn tables".to_owned()))?;
    let known = app::migrations();
    if let Some(unknown) = applied
        .iter()
        .find(|id| !known.iter().flat_map(|set| set.iter()).any(|m| m.id == *id))
    {
        anyhow::bail!(
            "{} comes from a newer release of cairn: it has migration {unknown}, which this \
             build does not know; restore it with that release or a later one; nothing was \
             restored",
            from.display()
        );
    }
    db.migrate(&known)
        .await
        .with_context(|| format!("bringing {} up to this release's schema", from.display()))?;
    let mut snapshot = db.snapshot().await?;
    let head = snapshot
        .conn()
        .head()
        .await
        .map_err(|e| not_a_backup(e.to_string()))?;
    Ok(head)
}

/// How many events the database at `path` holds: 0 when there is no file or no log.
async fn events_in(path: &Path) -> anyhow::Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let db = Db::connect(&sqlite_url(path), &DbOptions::default())
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let counted = async {
        if db.applied_migrations().await?.is_none() {
            return Ok::<_, cairn_log::DbError>(0);
        }
        let mut snapshot = db.snapshot().await?;
        let head = snapshot.conn().head().await?;
        Ok(u64::try_from(head.last_position.get()).unwrap_or(0))
    }
    .await;
    db.close().await;
    counted.with_context(|| format!("reading {}", path.display()))
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes SQLite's write-ahead log and shared-memory files beside `path`: those of a
/// database being replaced, whose contents must not be read with the new one.
fn remove_sidecars(path: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(sidecar(path, suffix));
    }
}

/// Makes the closed database at `path` one file: its write-ahead log must be empty
/// (closing the last connection moves it into the file), and is then removed.
fn settle(path: &Path) -> anyhow::Result<()> {
    let wal = sidecar(path, "-wal");
    let pending = std::fs::metadata(&wal).map_or(0, |m| m.len());
    anyhow::ensure!(
        pending == 0,
        "{} still has {pending} bytes in its write-ahead log {}; open and close it with \
         sqlite3 to fold them in",
        path.display(),
        wal.display()
    );
    remove_sidecars(path);
    Ok(())
}
