//! `cairn backup` and `cairn restore` on PostgreSQL: PostgreSQL's own client tools
//! take and load the copy (`pg_dump`, `psql`); cairn adds the proof around them.
//!
//! A backup signs a checkpoint of the live head first, then dumps: the dump holds at
//! least that head. The time the dump started is written at its end, as a comment a
//! restore reads. A restore reads the file before it touches the database (a
//! plain-text dump of a cairn database, with no migration this build does not know),
//! loads it with `psql` in one transaction into a database with no cairn tables, brings
//! its schema up to date and records the restore for `audit verify`.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use console::style;
use serde::Serialize;

use cairn_log::{AuditKey, Checkpoint, Db, DbOptions};

use super::{RestoreOutput, ensure_known, print_restored};
use crate::app;
use crate::cli::{BackupArgs, RestoreArgs};
use crate::cmd::audit::{Signed, Target, Walk, sign_head};
use crate::ui;

/// The comment a backup ends its dump with, followed by the time the dump started.
const TAKEN_AT: &str = "-- cairn backup taken at ";

/// PostgreSQL's client program `name`: on the `PATH`, or in `PG_BIN`.
fn client_tool(name: &str) -> anyhow::Result<PathBuf> {
    let dirs = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map_or_else(Vec::new, |paths| std::env::split_paths(&paths).collect()),
        );
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "{name} is not on the PATH: on PostgreSQL, cairn backup and restore run \
         PostgreSQL's own client tools; install them (Debian: apt-get install \
         postgresql-client) or set PG_BIN to their directory"
    )
}

/// `url` without its password, and the password: a password on a command line is
/// there for every user of the machine to read, so it goes in `PGPASSWORD` instead.
fn split_password(url: &str) -> (String, Option<String>) {
    match url::Url::parse(url) {
        Ok(mut parsed) => match parsed.password().map(str::to_owned) {
            Some(password) if parsed.set_password(None).is_ok() => {
                let password = percent_encoding::percent_decode_str(&password)
                    .decode_utf8_lossy()
                    .into_owned();
                (parsed.to_string(), Some(password))
            }
            _ => (url.to_owned(), None),
        },
        Err(_) => (url.to_owned(), None),
    }
}

/// Runs `program` on the database `url` names (its last argument) to the end; its
/// standard error, trimmed, when it fails.
async fn run(program: &Path, args: &[&std::ffi::OsStr], url: &str) -> anyhow::Result<()> {
    let (url, password) = split_password(url);
    let mut command = tokio::process::Command::new(program);
    command.args(args).arg(url);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    anyhow::bail!(
        "{} {}: {}",
        program.display(),
        output.status,
        tail.join("\n  ")
    )
}

#[derive(Serialize)]
struct BackupOutput<'a> {
    file: &'a Path,
    taken_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<&'a Checkpoint>,
}

pub(super) async fn backup(
    url: &str,
    args: &BackupArgs,
    key: Option<&AuditKey>,
) -> anyhow::Result<ExitCode> {
    let out = &args.out;
    anyhow::ensure!(
        !out.exists(),
        "{} already exists: a backup never overwrites a file",
        out.display()
    );
    let pg_dump = client_tool("pg_dump")?;
    let dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };

    // The checkpoint first: the dump, taken after it, holds at least its head.
    let db = app::open_db(url, &DbOptions::default()).await?;
    let signed = match (key, &args.checkpoint_dir) {
        (Some(key), Some(checkpoint_dir)) => {
            let progress = ui::Progress::new("signing");
            let signed = sign_head(
                &db,
                key,
                &Target::Dir(checkpoint_dir.clone()),
                Walk::Whole,
                false,
                &mut |done, total| progress.update(done, total),
            )
            .await;
            progress.finish();
            Some(signed)
        }
        _ => None,
    };
    db.close().await;
    let written = match signed.transpose()? {
        Some(Signed::Written {
            file, checkpoint, ..
        }) => Some((file, checkpoint)),
        Some(Signed::Refused { report, .. }) => anyhow::bail!(
            "the log's hash chain does not verify{}: no backup taken (run cairn audit verify)",
            report
                .breach
                .map(|breach| format!(" at position {}: {}", breach.position, breach.detail))
                .unwrap_or_default()
        ),
        Some(Signed::Unchanged) | None => None,
    };

    // The dump goes to a file beside the backup, which becomes it only when complete.
    let staged = tempfile::Builder::new()
        .prefix(".cairn-backup-")
        .suffix(".sql")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let taken_at = cairn_types::now_micros();
    let started = Instant::now();
    run(
        &pg_dump,
        &[
            "--no-owner".as_ref(),
            "--file".as_ref(),
            staged.path().as_os_str(),
        ],
        url,
    )
    .await
    .context("the dump failed; no backup was written")?;
    let took = started.elapsed();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(staged.path())
        .with_context(|| format!("opening {}", staged.path().display()))?;
    writeln!(file, "{TAKEN_AT}{}", taken_at.to_rfc3339())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", staged.path().display()))?;
    staged
        .persist_noclobber(out)
        .map_err(|e| anyhow::Error::new(e.error))
        .with_context(|| format!("moving the dump to {}", out.display()))?;

    if args.json.json {
        ui::print_json(&BackupOutput {
            file: out,
            taken_at,
            checkpoint_file: written.as_ref().map(|(file, _)| file.as_path()),
            checkpoint: written.as_ref().map(|(_, checkpoint)| &**checkpoint),
        })?;
    } else {
        outln!(
            "{} dumped the database to {} with pg_dump in {}",
            style("✓").green().bold(),
            out.display(),
            ui::duration(took)
        );
        match &written {
            Some((file, checkpoint)) => outln!(
                "  signed before the dump, so the dump holds it: position {} in {}",
                checkpoint.position,
                file.display()
            ),
            None => outln!(
                "  {}",
                style("no checkpoint signed: give --checkpoint-dir DIR to sign the head first")
                    .dim()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a restore needs to know of a dump before it loads it.
struct DumpInfo {
    migrations: Vec<String>,
    taken_at: Option<DateTime<Utc>>,
}

/// Reads the dump at `path`: the migrations its `cairn_migrations` table holds and the
/// time `cairn backup` wrote at its end. Refuses what is not a plain-text dump of a
/// cairn database.
fn read_dump(path: &Path) -> anyhow::Result<DumpInfo> {
    let not_a_backup = |why: &str| {
        anyhow::anyhow!(
            "{} is not a cairn backup: {why}; nothing was restored",
            path.display()
        )
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut n = 0usize;
    let mut is_dump = false;
    let mut in_migrations = false;
    let mut info = DumpInfo {
        migrations: Vec::new(),
        taken_at: None,
    };
    let mut has_migrations = false;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if n <= 10 && text.starts_with("-- PostgreSQL database dump") {
            is_dump = true;
        }
        if n == 10 && !is_dump {
            break;
        }
        if in_migrations {
            if text == "\\." {
                in_migrations = false;
            } else if let Some(id) = text.split('\t').next() {
                info.migrations.push(id.to_owned());
            }
        } else if text.starts_with("COPY public.cairn_migrations ") {
            in_migrations = true;
            has_migrations = true;
        } else if let Some(at) = text.strip_prefix(TAKEN_AT) {
            info.taken_at = DateTime::parse_from_rfc3339(at.trim())
                .ok()
                .map(|at| at.with_timezone(&Utc));
        }
    }
    if !is_dump {
        return Err(not_a_backup(
            "it is not a plain-text pg_dump file (cairn backup writes one)",
        ));
    }
    if !has_migrations {
        return Err(not_a_backup("it holds no cairn tables"));
    }
    Ok(info)
}

pub(super) async fn restore(url: &str, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let from = &args.from;
    anyhow::ensure!(from.is_file(), "{}: no such backup file", from.display());
    anyhow::ensure!(
        !args.force,
        "--force replaces SQLite databases only: on PostgreSQL, restore into a new, empty \
         database (createdb) and point cairn at it; nothing was restored"
    );
    let dump = read_dump(from)?;
    ensure_known(from, &dump.migrations)?;
    let psql = client_tool("psql")?;

    let target = Db::connect(url, &DbOptions::default()).await?;
    let applied = target.applied_migrations().await;
    let description = target.describe();
    target.close().await;
    if applied
        .with_context(|| format!("reading {description}"))?
        .is_some()
    {
        anyhow::bail!(
            "{description} already holds cairn's tables: restore into a new, empty database \
             (createdb) and point cairn at it; nothing was restored"
        );
    }

    let started = Instant::now();
    run(
        &psql,
        &[
            "-X".as_ref(),
            "-q".as_ref(),
            "-v".as_ref(),
            "ON_ERROR_STOP=1".as_ref(),
            "--single-transaction".as_ref(),
            "-f".as_ref(),
            from.as_os_str(),
            "-d".as_ref(),
        ],
        url,
    )
    .await
    .with_context(|| {
        format!(
            "loading {} failed, and psql ran it in one transaction: nothing was restored",
            from.display()
        )
    })?;
    let took = started.elapsed();

    let db = Db::connect(url, &DbOptions::default()).await?;
    let recorded = async {
        db.migrate(&app::migrations())
            .await
            .with_context(|| format!("bringing {} up to this release's schema", from.display()))?;
        let head = db.snapshot().await?.conn().head().await?;
        let mark = db
            .mark_restored(
                &from.display().to_string(),
                cairn_types::now_micros(),
                dump.taken_at,
                head.last_position,
                &head.last_hash,
            )
            .await?;
        anyhow::Ok((head, mark))
    }
    .await;
    db.close().await;
    let (head, mark) = recorded?;

    print_restored(
        args.json.json,
        &RestoreOutput {
            from,
            database: url,
            head: head.last_position,
            head_hash: &head.last_hash,
            replaced_events: 0,
            backup: &mark,
        },
        &format!(
            "loaded {} with psql in {}",
            from.display(),
            ui::duration(took)
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_leaves_the_command_line_for_the_environment() {
        let cases = [
            (
                "postgres://cairn:s%40cret@db:5432/cairn?sslmode=require",
                "postgres://cairn@db:5432/cairn?sslmode=require",
                Some("s@cret"),
            ),
            (
                "postgres://postgres@localhost:5432/cairn?host=/run/pg",
                "postgres://postgres@localhost:5432/cairn?host=/run/pg",
                None,
            ),
            ("not a url", "not a url", None),
        ];
        for (url, without, password) in cases {
            let (rest, found) = split_password(url);
            assert_eq!(
                (rest.as_str(), found.as_deref()),
                (without, password),
                "{url}"
            );
        }
    }

    #[test]
    fn a_dump_is_read_for_its_migrations_and_the_time_it_was_taken() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cairn.sql");
        std::fs::write(
            &path,
            "--\n-- PostgreSQL database dump\n--\n\
             COPY public.cairn_migrations (id, checksum, applied_at) FROM stdin;\n\
             log/0001_domain_events\tabc\t2026-12-07 10:00:00+00\n\
             domain/0001_onboarding\tdef\t2026-12-07 10:00:00+00\n\\.\n\
             -- cairn backup taken at 2026-12-07T10:00:00.5+00:00\n",
        )?;
        let info = read_dump(&path)?;
        assert_eq!(
            info.migrations,
            ["log/0001_domain_events", "domain/0001_onboarding"]
        );
        assert_eq!(
            info.taken_at.map(|at| at.to_rfc3339()),
            Some("2026-12-07T10:00:00.500+00:00".to_owned())
        );
        Ok(())
    }
}
