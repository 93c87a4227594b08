//! `cairn backup` and `cairn restore` as processes: a copy taken while 64 writers
//! append restores, replays and verifies against the checkpoints signed before it;
//! those signed after it are beyond the restored log; what is no backup, a backup
//! from a newer release and a database that holds events are refused, and nothing is
//! overwritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use cairn_dispatch::EventStore;
use cairn_log::{AppendRequest, Db, DbOptions, NewEvent, args};
use cairn_testkit::{Backend, TestDb, TestResult, backend_test};
use cairn_types::{EventType, Metadata, StreamId, StreamType};
use serde_json::{Value, json};

use crate::common::{assert_exit, cairn, json_of, stderr};

const WRITERS: usize = 64;

async fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("audit.key");
    let output = cairn(
        "sqlite://unused.db",
        &["audit", "keygen", "--out", &path_arg(&key)],
    )
    .await;
    assert_exit(&output, 0);
    key
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Appends one `test.pinged` event to a new stream.
async fn ping(store: &EventStore, n: u64) -> anyhow::Result<()> {
    store
        .append(AppendRequest::new(
            StreamType::parse("test")?,
            StreamId::new_v7(),
            vec![NewEvent::new(
                EventType::parse("test.pinged")?,
                json!({ "n": n }),
                Metadata::new(),
            )],
        ))
        .await?;
    Ok(())
}

/// `writers` tasks appending one event at a time until `stop` is set; the number
/// appended, once they stop.
fn start_writers(
    store: &EventStore,
    writers: usize,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    let appended = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let store = store.clone();
        let stop = stop.clone();
        let appended = appended.clone();
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ping(&store, appended.fetch_add(1, Ordering::Relaxed)).await?;
            }
            anyhow::Ok(())
        });
    }
    tokio::spawn(async move {
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        Ok(appended.load(Ordering::Relaxed))
    })
}

async fn checkpoint(url: &str, key: &Path, dir: &Path) -> Value {
    let output = cairn(
        url,
        &[
            "audit",
            "checkpoint",
            "--key",
            &path_arg(key),
            "--dir",
            &path_arg(dir),
            "--json",
        ],
    )
    .await;
    assert_exit(&output, 0);
    json_of(&output)
}

/// The checkpoints `audit verify --json` reports, as (position, status).
fn statuses(report: &Value) -> anyhow::Result<Vec<(Value, Value)>> {
    let mut statuses: Vec<(Value, Value)> = report["checkpoints"]
        .as_array()
        .context("checkpoints")?
        .iter()
        .map(|c| (c["position"].clone(), c["status"].clone()))
        .collect();
    statuses.sort_by_key(|(position, _)| position.as_u64());
    Ok(statuses)
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

backend_test!(
    a_backup_taken_under_load_restores_and_verifies,
    |t: TestDb| async move {
        t.db().migrate(&cairn_domain::all_migrations()).await?;
        let store = EventStore::new(t.db().clone(), cairn_domain::registry());
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let checkpoints = files.path().join("checkpoints");
        for n in 0..3 {
            ping(&store, n).await?;
        }
        let before = checkpoint(t.url(), &key, &checkpoints).await;
        assert_eq!(before["checkpoint"]["position"], json!(3));

        let stop = Arc::new(AtomicBool::new(false));
        let writers = start_writers(&store, WRITERS, &stop);
        // The copy starts once the writers are well under way.
        let mut head = t.db().head_watch();
        head.wait_for(|position| position.get() >= 200).await?;
        let out = files.path().join(match t.backend() {
            Backend::Sqlite => "cairn.backup",
            Backend::Postgres => "cairn.sql",
        });
        let backup = cairn(
            t.url(),
            &[
                "backup",
                "--out",
                &path_arg(&out),
                "--key",
                &path_arg(&key),
                "--checkpoint-dir",
                &path_arg(&checkpoints),
                "--json",
            ],
        )
        .await;
        assert_exit(&backup, 0);
        let backup = json_of(&backup);
        let backup_head = backup["checkpoint"]["position"]
            .as_u64()
            .context("position")?;
        let backup_checkpoint = backup["checkpoint_file"]
            .as_str()
            .context("file")?
            .to_owned();
        match t.backend() {
            // The copy holds the head it signed, in one file.
            Backend::Sqlite => {
                assert_eq!(backup["head"], json!(backup_head));
                assert!(
                    !files.path().join("cairn.backup-wal").exists(),
                    "the backup is one file"
                );
            }
            // The checkpoint is signed before pg_dump starts: the dump holds at least it.
            Backend::Postgres => assert!(backup["taken_at"].is_string(), "{backup}"),
        }
        // The writers go on after the copy, so that the log outgrows it.
        head.wait_for(|position| position.get() as u64 >= backup_head + 200)
            .await?;
        stop.store(true, Ordering::Relaxed);
        let appended = writers.await??;
        assert!(backup_head >= 200 && backup_head < 3 + appended);
        let after = checkpoint(t.url(), &key, &checkpoints).await;
        assert_eq!(after["checkpoint"]["position"], json!(3 + appended));

        let (restored_url, _restored) = match t.backend() {
            Backend::Sqlite => {
                let restored = files.path().join("restored").join("cairn.db");
                (sqlite_url(&restored), None)
            }
            Backend::Postgres => {
                let restored = TestDb::empty(
                    Backend::Postgres,
                    "backup::a_backup_taken_under_load_restores_and_verifies::restored",
                )
                .await;
                (restored.url().to_owned(), Some(restored))
            }
        };
        let restore = cairn(
            &restored_url,
            &["restore", "--from", &path_arg(&out), "--json"],
        )
        .await;
        assert_exit(&restore, 0);
        let restore = json_of(&restore);
        let restored_head = restore["head"].as_u64().context("head")?;
        match t.backend() {
            Backend::Sqlite => assert_eq!(restored_head, backup_head),
            Backend::Postgres => assert!(restored_head >= backup_head),
        }
        assert!(restored_head < 3 + appended);
        // The restored database records what it came from.
        assert_eq!(restore["backup"]["head_position"], json!(restored_head));
        assert!(restore["backup"]["taken_at"].is_string(), "{restore}");
        assert!(restore["backup"]["restored_at"].is_string(), "{restore}");

        assert_exit(&cairn(&restored_url, &["replay", "--verify"]).await, 0);
        let verified = cairn(
            &restored_url,
            &[
                "audit",
                "verify",
                "--checkpoint-dir",
                &path_arg(&checkpoints),
                "--backup-checkpoint",
                &backup_checkpoint,
                "--json",
            ],
        )
        .await;
        assert_exit(&verified, 0);
        let report = json_of(&verified);
        assert_eq!(report["breach"], Value::Null);
        assert_eq!(report["head"], json!(restored_head));
        assert_eq!(
            statuses(&report)?,
            vec![
                (json!(3), json!("holds")),
                (json!(backup_head), json!("holds")),
                (json!(3 + appended), json!("beyond_the_restored_log")),
            ]
        );

        // Without naming the backup, the restore the database recorded tells the
        // checkpoints signed after it from a log cut short.
        let unnamed = cairn(
            &restored_url,
            &[
                "audit",
                "verify",
                "--checkpoint-dir",
                &path_arg(&checkpoints),
                "--json",
            ],
        )
        .await;
        assert_exit(&unnamed, 0);
        let unnamed = json_of(&unnamed);
        assert_eq!(statuses(&unnamed)?, statuses(&report)?);
        assert_eq!(
            unnamed["restores"][0]["head_position"],
            json!(restored_head)
        );

        // A database that already holds the log is not restored over (on PostgreSQL
        // not even with --force: a restore goes into a new database).
        let again = cairn(&restored_url, &["restore", "--from", &path_arg(&out)]).await;
        assert_exit(&again, 2);
        assert!(
            stderr(&again).contains("nothing was restored"),
            "{}",
            stderr(&again)
        );
        Ok(())
    }
);

/// The events in the SQLite database at `path`.
async fn head_of(path: &Path) -> anyhow::Result<i64> {
    let db = Db::connect(&sqlite_url(path), &DbOptions::default()).await?;
    let head = db.snapshot().await?.conn().head().await?;
    db.close().await;
    Ok(head.last_position.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refuses_what_it_cannot_restore_and_overwrites_nothing() -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let live = files.path().join("live.db");
    let live_url = sqlite_url(&live);
    for n in 0..2 {
        let output = cairn(
            &live_url,
            &[
                "events",
                "append",
                "--stream-type",
                "test",
                "--stream-id",
                &StreamId::new_v7().to_string(),
                "--type",
                "test.pinged",
                "--data",
                &format!(r#"{{"n": {n}}}"#),
            ],
        )
        .await;
        assert_exit(&output, 0);
    }
    let out = files.path().join("cairn.backup");
    assert_exit(
        &cairn(&live_url, &["backup", "--out", &path_arg(&out)]).await,
        0,
    );
    // A backup never overwrites a file.
    let again = cairn(&live_url, &["backup", "--out", &path_arg(&out)]).await;
    assert_exit(&again, 2);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let target = files.path().join("target.db");
    let target_url = sqlite_url(&target);
    let restore = |from: PathBuf, force: bool| {
        let target_url = target_url.clone();
        async move {
            let from = path_arg(&from);
            let mut args = vec!["restore", "--from", from.as_str()];
            if force {
                args.push("--force");
            }
            cairn(&target_url, &args).await
        }
    };

    // Not a backup: a text file, and an SQLite database that is not cairn's.
    let text = files.path().join("notes.txt");
    std::fs::write(&text, "not a database")?;
    let refused = restore(text.clone(), false).await;
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("is not a cairn backup"),
        "{}",
        stderr(&refused)
    );
    assert!(!target.exists(), "nothing was restored");

    // From a newer release: a migration this build does not know.
    let newer = files.path().join("newer.backup");
    std::fs::copy(&out, &newer)?;
    let db = Db::connect(&sqlite_url(&newer), &DbOptions::default()).await?;
    let mut tx = db.begin().await?;
    tx.conn()
        .execute(
            "INSERT INTO cairn_migrations (id, checksum, applied_at) \
             VALUES ('log/9999_from_the_future', 'x', '2030-01-01T00:00:00Z')",
            args![],
        )
        .await?;
    tx.commit().await?;
    db.close().await;
    let refused = restore(newer, false).await;
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("comes from a newer release of cairn")
            && stderr(&refused).contains("log/9999_from_the_future"),
        "{}",
        stderr(&refused)
    );
    assert!(!target.exists(), "nothing was restored");

    // A database that holds events is replaced only with --force.
    let output = cairn(
        &target_url,
        &[
            "events",
            "append",
            "--stream-type",
            "test",
            "--stream-id",
            &StreamId::new_v7().to_string(),
            "--type",
            "test.pinged",
            "--data",
            r#"{"n": 99}"#,
        ],
    )
    .await;
    assert_exit(&output, 0);
    let refused = restore(out.clone(), false).await;
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("holds 1 event: give --force"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        head_of(&target).await?,
        1,
        "the database was left as it was"
    );
    assert_exit(&restore(out, true).await, 0);
    assert_eq!(head_of(&target).await?, 2);
    assert_exit(&cairn(&target_url, &["audit", "verify"]).await, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restore_refuses_what_it_cannot_restore_and_loads_nothing() -> TestResult {
    cairn_testkit::run(
        Backend::Postgres,
        "backup::a_postgres_restore_refuses_what_it_cannot_restore_and_loads_nothing",
        |t: TestDb| async move {
            t.db().migrate(&cairn_domain::all_migrations()).await?;
            let store = EventStore::new(t.db().clone(), cairn_domain::registry());
            ping(&store, 1).await?;
            let files = tempfile::tempdir()?;
            let out = files.path().join("cairn.sql");
            assert_exit(&cairn(t.url(), &["backup", "--out", &path_arg(&out)]).await, 0);
            let again = cairn(t.url(), &["backup", "--out", &path_arg(&out)]).await;
            assert_exit(&again, 2);
            assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));

            let target = TestDb::empty(
                Backend::Postgres,
                "backup::a_postgres_restore_refuses_what_it_cannot_restore_and_loads_nothing::target",
            )
            .await;
            let restore = |from: &Path, force: bool| {
                let from = path_arg(from);
                let url = target.url().to_owned();
                async move {
                    let mut args = vec!["restore", "--from", from.as_str()];
                    if force {
                        args.push("--force");
                    }
                    cairn(&url, &args).await
                }
            };
            let refused_with = |output: &std::process::Output, words: &str| {
                assert_exit(output, 2);
                assert!(
                    stderr(output).contains(words) && stderr(output).contains("nothing was restored"),
                    "{}",
                    stderr(output)
                );
            };

            // Not a dump; a dump of another database than cairn's.
            let text = files.path().join("notes.txt");
            std::fs::write(&text, "not a dump\n")?;
            refused_with(&restore(&text, false).await, "is not a cairn backup");
            let other = files.path().join("other.sql");
            std::fs::write(
                &other,
                "--\n-- PostgreSQL database dump\n--\nCREATE TABLE notes (body text);\n",
            )?;
            refused_with(&restore(&other, false).await, "holds no cairn tables");

            // From a newer release: its migrations table names one this build does not know.
            let dump = std::fs::read_to_string(&out)?;
            let header = dump
                .lines()
                .find(|line| line.starts_with("COPY public.cairn_migrations "))
                .context("the dump copies cairn_migrations")?;
            let newer = files.path().join("newer.sql");
            std::fs::write(
                &newer,
                dump.replacen(
                    &format!("{header}\n"),
                    &format!("{header}\nlog/9999_from_the_future\tx\t2030-01-01 00:00:00+00\n"),
                    1,
                ),
            )?;
            let refused = restore(&newer, false).await;
            refused_with(&refused, "comes from a newer release of cairn");
            assert!(stderr(&refused).contains("log/9999_from_the_future"));

            // --force does not replace a PostgreSQL database.
            refused_with(&restore(&out, true).await, "--force replaces SQLite databases only");
            assert_eq!(target.db().applied_migrations().await?, None, "nothing was loaded");

            // A dump psql cannot load leaves nothing half-loaded.
            let broken = files.path().join("broken.sql");
            std::fs::write(&broken, format!("{dump}\nSELECT no_such_function();\n"))?;
            let refused = restore(&broken, false).await;
            refused_with(&refused, "psql ran it in one transaction");
            assert_eq!(target.db().applied_migrations().await?, None, "nothing was loaded");

            // The dump itself loads.
            assert_exit(&restore(&out, false).await, 0);
            assert!(target.db().applied_migrations().await?.is_some());
            Ok(())
        },
    )
    .await
}
