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
use cairn_testkit::{Backend, TestDb, backend_test};
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

/// PostgreSQL's `pg_dump`: on the `PATH`, or in `PG_BIN`.
fn pg_dump() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pg_dump"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        PathBuf::from(
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned()),
        )
        .join("pg_dump")
    })
}

/// The README's steps on PostgreSQL: a checkpoint signed, then `pg_dump`, whose copy
/// holds at least that head; returns the checkpoint's `audit checkpoint --json`.
async fn sign_and_dump(
    url: &str,
    key: &Path,
    checkpoints: &Path,
    out: &Path,
) -> anyhow::Result<Value> {
    let signed = checkpoint(url, key, checkpoints).await;
    let dumped = tokio::process::Command::new(pg_dump())
        .args(["--no-owner", "--file"])
        .arg(out)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running pg_dump")?;
    anyhow::ensure!(
        dumped.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    Ok(signed)
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
        let out = files.path().join("cairn.backup");
        let (backup_head, backup_checkpoint) = match t.backend() {
            Backend::Sqlite => {
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
                assert!(
                    !files.path().join("cairn.backup-wal").exists(),
                    "the backup is one file"
                );
                let copied = backup["head"].as_u64().context("head")?;
                assert_eq!(backup["checkpoint"]["position"], json!(copied));
                let file = backup["checkpoint_file"].as_str().context("file")?;
                (copied, file.to_owned())
            }
            Backend::Postgres => {
                // cairn does not copy PostgreSQL itself, and says which tool does.
                let refused = cairn(t.url(), &["backup", "--out", &path_arg(&out)]).await;
                assert_exit(&refused, 2);
                assert!(stderr(&refused).contains("pg_dump"), "{}", stderr(&refused));
                let refused = cairn(t.url(), &["restore", "--from", &path_arg(&out)]).await;
                assert_exit(&refused, 2);
                assert!(stderr(&refused).contains("pg_dump"), "{}", stderr(&refused));
                let signed = sign_and_dump(t.url(), &key, &checkpoints, &out).await?;
                let position = signed["checkpoint"]["position"]
                    .as_u64()
                    .context("position")?;
                let file = signed["file"].as_str().context("file")?;
                (position, file.to_owned())
            }
        };
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
                let restored_url = sqlite_url(&restored);
                let restore = cairn(
                    &restored_url,
                    &["restore", "--from", &path_arg(&out), "--json"],
                )
                .await;
                assert_exit(&restore, 0);
                assert_eq!(json_of(&restore)["head"], json!(backup_head));
                (restored_url, None)
            }
            Backend::Postgres => {
                let restored = TestDb::restore(
                    Backend::Postgres,
                    "backup::a_backup_taken_under_load_restores_and_verifies::restored",
                    &out,
                )
                .await?;
                (restored.url().to_owned(), Some(restored))
            }
        };

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
        let restored_head = report["head"].as_u64().context("head")?;
        match t.backend() {
            Backend::Sqlite => assert_eq!(restored_head, backup_head),
            // pg_dump starts after the checkpoint is signed, so it may hold more.
            Backend::Postgres => assert!(restored_head >= backup_head),
        }
        assert!(restored_head < 3 + appended);
        assert_eq!(
            statuses(&report)?,
            vec![
                (json!(3), json!("holds")),
                (json!(backup_head), json!("holds")),
                (json!(3 + appended), json!("beyond_the_restored_log")),
            ]
        );

        // Without the backup's checkpoint, the later one reads as a cut log: the
        // restore must be named to be told from one.
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
        assert_exit(&unnamed, 1);
        assert_eq!(
            statuses(&json_of(&unnamed))?.last().map(|(_, s)| s.clone()),
            Some(json!("beyond_the_log"))
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
