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

use cairn_log::{AuditKey, AuditReport, Backend, BackupMark, Checkpoint, Db, DbOptions};
use cairn_types::Position;

use crate::app;
use crate::cli::{BackupArgs, RestoreArgs};
use crate::cmd::audit::{Signed, Target, Walk, load_key, sign_head};
use crate::ui;

mod postgres;

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
    // The key is read first, so that a missing one stops the backup before it starts.
    let key = match &args.checkpoint_dir {
        Some(_) => Some(load_key(args.key.as_deref(), "--key")?),
        None => None,
    };
    if sqlite_path(url).is_none() {
        return postgres::backup(url, &args, key.as_ref()).await;
    }
    anyhow::ensure!(
        !args.out.exists(),
        "{} already exists: a backup never overwrites a file",
        args.out.display()
    );
    let db = app::open_db(url, &DbOptions::default()).await?;
    let started = std::time::Instant::now();
    // A checkpoint signed from here on may be past the head the copy holds.
    let taken_at = cairn_types::now_micros();
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
    let checked = check_copy(
        &copy,
        key.as_ref(),
        args.checkpoint_dir.as_deref(),
        &progress,
    )
    .await;
    progress.finish();
    // The copy remembers when it was taken, for the database it is restored into.
    let marked = match &checked {
        Ok((report, _)) if report.breach.is_none() => async {
            copy.mark_backup(taken_at, report.head, &report.head_hash)
                .await?;
            // The copy is one file: what the write left in its write-ahead log goes in.
            copy.compact_wal().await
        }
        .await
        .with_context(|| format!("writing the backup's time into {}", args.out.display())),
        _ => Ok(()),
    };
    copy.close().await;
    settle(&args.out)?;
    let (report, written) = checked?;
    marked?;
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
            Some((file, _)) => outln!("  signed the head it holds: {}", file.display()),
            None => outln!(
                "  {}",
                style("no checkpoint signed: give --checkpoint-dir DIR to sign the head it holds")
                    .dim()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the copy's hash chain and its access log's and, given a key and a
/// directory, signs the heads it holds; returns the chain's report and the checkpoint
/// written.
async fn check_copy(
    copy: &Db,
    key: Option<&AuditKey>,
    checkpoint_dir: Option<&Path>,
    progress: &ui::Progress,
) -> anyhow::Result<(AuditReport, Option<(PathBuf, Box<Checkpoint>)>)> {
    let (Some(key), Some(dir)) = (key, checkpoint_dir) else {
        let report = copy
            .verify_chain(&mut |done, total| progress.update(done, total))
            .await?;
        // Signing checks the access log's chain too; unsigned, it is checked here.
        if let Some(breach) = copy.verify_access_chain().await?.breach {
            anyhow::bail!(
                "the copy was written, but its access log is broken at record {}: {} (run \
                 cairn audit verify)",
                breach.seq,
                breach.detail
            );
        }
        return Ok((report, None));
    };
    let signed = sign_head(
        copy,
        key,
        &Target::Dir(dir.to_owned()),
        Walk::Whole,
        false,
        &mut |done, total| progress.update(done, total),
    )
    .await?;
    match signed {
        Signed::Written {
            file,
            checkpoint,
            report,
        } => Ok((report, Some((file, checkpoint)))),
        Signed::Refused { report, .. } => {
            let why = report.breach.as_ref().map_or_else(
                || "it no longer holds the newest checkpoint there".to_owned(),
                |breach| {
                    format!(
                        "its hash chain is broken at position {}: {}",
                        breach.position, breach.detail
                    )
                },
            );
            anyhow::bail!("the copy was written but not signed: {why} (run cairn audit verify)")
        }
        Signed::Unchanged => anyhow::bail!("the copy's head was not signed"),
    }
}

#[derive(Serialize)]
struct RestoreOutput<'a> {
    from: &'a Path,
    database: &'a str,
    head: Position,
    head_hash: &'a str,
    replaced_events: u64,
    /// The backup as this database now records it (`audit verify` reads it).
    backup: &'a BackupMark,
}

/// Prints what a restore did: as JSON, or `done` with the head and what to check next.
fn print_restored(json: bool, output: &RestoreOutput<'_>, done: &str) -> anyhow::Result<()> {
    if json {
        return ui::print_json(output);
    }
    outln!(
        "{} {done}: head at position {} (hash {})\n  {}",
        style("✓").green().bold(),
        output.head,
        output.head_hash,
        style(
            "check it: cairn replay --verify, and cairn audit verify --checkpoint-dir DIR \
             (checkpoints signed after the backup are reported as beyond the restored log)"
        )
        .dim()
    );
    Ok(())
}

pub async fn restore(url: &str, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let Some(target) = sqlite_path(url) else {
        return postgres::restore(url, &args).await;
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
    let checked = check_backup(from, staged.path()).await;
    let settled = settle(staged.path());
    let (head, mark) = checked?;
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

    print_restored(
        args.json.json,
        &RestoreOutput {
            from,
            database: url,
            head: head.last_position,
            head_hash: &head.last_hash,
            replaced_events,
            backup: &mark,
        },
        &format!("restored {} to {}", from.display(), target.display()),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the staged copy of `from`, refuses what is no cairn backup or comes from a
/// newer release, migrates it to this build's schema and records the restore in it;
/// returns its head and that record.
async fn check_backup(from: &Path, staged: &Path) -> anyhow::Result<(cairn_log::Head, BackupMark)> {
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
) -> anyhow::Result<(cairn_log::Head, BackupMark)> {
    debug_assert_eq!(db.backend(), Backend::Sqlite);
    let applied = db
        .applied_migrations()
        .await
        .map_err(|e| not_a_backup(e.to_string()))?
        .ok_or_else(|| not_a_backup("it has no cairn tables".to_owned()))?;
    ensure_known(from, &applied)?;
    db.migrate(&app::migrations())
        .await
        .with_context(|| format!("bringing {} up to this release's schema", from.display()))?;
    let mut snapshot = db.snapshot().await?;
    let head = snapshot
        .conn()
        .head()
        .await
        .map_err(|e| not_a_backup(e.to_string()))?;
    drop(snapshot);
    let mark = db
        .mark_restored(
            &from.display().to_string(),
            cairn_types::now_micros(),
            None,
            head.last_position,
            &head.last_hash,
        )
        .await
        .with_context(|| format!("recording the restore of {}", from.display()))?;
    db.compact_wal().await?;
    Ok((head, mark))
}

/// Refuses a backup with a migration this build does not know: one from a newer
/// release.
fn ensure_known(from: &Path, applied: &[String]) -> anyhow::Result<()> {
    let known = app::migrations();
    if let Some(unknown) = applied.iter().find(|id| {
        !known
            .iter()
            .flat_map(|set| set.iter())
            .any(|m| m.id == id.as_str())
    }) {
        anyhow::bail!(
            "{} comes from a newer release of cairn: it has migration {unknown}, which this \
             build does not know; restore it with that release or a later one; nothing was \
             restored",
            from.display()
        );
    }
    Ok(())
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
