//! `cairn import` as a process: a seed log built with the seed's own schema
//! (`bench/seed-trigger/schema.sql`, its trigger processing each event) and the
//! fixture `tests/fixtures/seed/events.sql`, imported into cairn on both backends.
//!
//! The fixture holds every seed type the import maps, an event the seed failed to
//! process, a type cairn refuses, one it does not know, a payload missing a field, the
//! seed's `user.invited` without an invitee (a conflict), and an event of the
//! invitation that one created (an orphan).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cairn_log::EventFilter;
use cairn_testkit::{Backend, ForeignPg, TestDb, backend_test};
use expect_test::expect;
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

use crate::common::{assert_exit, cairn, json_of, redact, stderr, stdout};

const SEED_SCHEMA: &str = include_str!("../../../../bench/seed-trigger/schema.sql");
const SEED_EVENTS: &str = include_str!("../fixtures/seed/events.sql");

/// A seed database with the seed's schema and the fixture's events.
async fn seed_log(test_name: &str) -> anyhow::Result<ForeignPg> {
    let seed = ForeignPg::new(test_name).await;
    seed.run_script(SEED_SCHEMA).await?;
    seed.run_script(SEED_EVENTS).await?;
    Ok(seed)
}

/// A signing key from `cairn audit keygen`, in `dir`.
async fn signing_key(url: &str, dir: &Path) -> String {
    let key = dir.join("audit.key").display().to_string();
    assert_exit(&cairn(url, &["audit", "keygen", "--out", &key]).await, 0);
    key
}

/// `cairn import` from `from`, checkpoints into `dir/checkpoints`.
async fn import(
    url: &str,
    from: &str,
    key: &str,
    dir: &Path,
    extra: &[&str],
) -> std::process::Output {
    let checkpoints = dir.join("checkpoints").display().to_string();
    let mut args = vec![
        "import",
        "--from",
        from,
        "--audit-key",
        key,
        "--checkpoint-dir",
        &checkpoints,
    ];
    args.extend_from_slice(extra);
    cairn(url, &args).await
}

/// Every event of the log.
async fn events(t: &TestDb) -> anyhow::Result<Vec<cairn_log::RecordedEvent>> {
    Ok(t.db()
        .reader()
        .await?
        .conn()
        .read_events(&EventFilter {
            limit: Some(10_000),
            ..EventFilter::default()
        })
        .await?)
}

/// The seed ids the log's events were imported from, each once, and how many events
/// carry one.
async fn imported_ids(t: &TestDb) -> anyhow::Result<(BTreeSet<String>, usize)> {
    let mut ids = BTreeSet::new();
    let mut n = 0;
    for event in events(t).await? {
        if let Some(id) = event
            .metadata
            .extra
            .get("import")
            .and_then(|i| i["id"].as_str())
        {
            n += 1;
            ids.insert(id.to_owned());
        }
    }
    Ok((ids, n))
}

/// Rows of a query on the target, each as its columns' text.
async fn rows(t: &TestDb, sql: &'static str, columns: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    let rows = t.db().reader().await?.conn().fetch_all(sql, vec![]).await?;
    rows.iter()
        .map(|row| {
            columns
                .iter()
                .map(|column| Ok(row.get::<String>(column)?))
                .collect()
        })
        .collect()
}

backend_test!(
    a_seed_log_is_imported_with_every_event_left_out_reported,
    |t: TestDb| async move {
        let seed = seed_log("import_reported").await?;
        let dir = tempfile::tempdir()?;
        let key = signing_key(t.url(), dir.path()).await;

        let imported = import(t.url(), seed.url(), &key, dir.path(), &[]).await;
        assert_exit(&imported, 1);
        expect![[r#"
            ✗ imported 13 of 18 seed events from [database] into [database]
              this run: 18 read, 13 imported, 5 left out
             cairn event type                            seed event type                             events
            ────────────────────────────────────────────────────────────────────────────────────────────────
             invitation.accepted                         invitation.accepted                         1
             invitation.sent                             user.invited                                1
             organization.bootstrap.completed            organization.bootstrap.completed            1
             organization.created                        organization.created                        1
             organization.direct_care_settings_updated   organization.direct_care_settings_updated   2
             user.created                                user.created                                3
             user.role_assigned                          user.role.assigned                          3
             workflow.queue.pending                      workflow.queue.pending                      1
              1 imported event failed in cairn's handlers and 0 held behind a failure (cairn events list --failed, cairn streams held)
            ✗ 5 seed events could not be mapped:
              seed position 1 · organization.bootstrap.initiated on organization …[id]         · refused
                cairn's organization.bootstrap.initiated carries the whole bootstrap plan (the admin, the invitees and the workflow that runs it), which the seed's request does not; the organization itself is imported from its organization.created
              seed position 11 · user.invited on user …[id]         · conflict
                user.invited is on the inviting user's stream ([uuid]) and names no invitee (event_data.user_id): cairn's invitation is for one user, which the seed did not record
              seed position 12 · invitation.revoked on invitation …[id]         · orphan
                invitation [uuid] was not created here: its earlier event at seed position 11 was not imported
              seed position 16 · organization.created on organization …[id]         · invalid
                organization.created v0: event_data: missing field `sender_domain`
              seed position 18 · bench.recorded on bench …[id]         · unknown_type
                the seed's stream type bench (event type bench.recorded) has no counterpart in cairn
              signed a checkpoint at position 1 (the import's start): [path]
              signed a checkpoint at position 15: [path]
        "#]]
        .assert_eq(&redact(&stdout(&imported)));

        // The log starts with the import's own record, signed before any seed event.
        let log = events(&t).await?;
        assert_eq!(
            log.len(),
            15,
            "import.started, 13 seed events, import.completed"
        );
        assert_eq!(log[0].event_type.as_str(), "import.started");
        assert_eq!(log[0].stream_type.as_str(), "platform_admin");
        assert_eq!(log[0].data["n_source_events"], json!(18));
        assert_eq!(log[14].event_type.as_str(), "import.completed");
        let mut signed: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect::<anyhow::Result<_>>()?;
        signed.sort();
        assert_eq!(signed.len(), 2, "{signed:?}");
        assert!(
            signed[0].starts_with("checkpoint-000000000001-"),
            "{signed:?}"
        );
        assert!(
            signed[1].starts_with("checkpoint-000000000015-"),
            "{signed:?}"
        );

        // The seed's data holds personal data: it is stored at the current version of
        // cairn's type, its address sealed, with the seed's ids, times and outcome in
        // the metadata.
        let sent = log
            .iter()
            .find(|e| e.event_type.as_str() == "invitation.sent")
            .expect("the invitation was imported");
        assert_eq!(sent.stored_version, 2);
        assert_eq!(sent.data["roles"], json!(["clinician"]));
        assert!(sent.data["email"].get("$sealed").is_some(), "{}", sent.data);
        assert_eq!(
            sent.stream_id.to_string(),
            "c0000000-0000-4000-8000-000000000001"
        );
        assert_eq!(
            sent.metadata
                .actor
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("user:b0000000-0000-4000-8000-000000000001"),
            "the inviter"
        );
        let record = &sent.metadata.extra["import"];
        assert_eq!(record["position"], json!(7));
        assert_eq!(record["event_type"], json!("user.invited"));
        assert_eq!(record["stream_type"], json!("user"));
        assert_eq!(record["created_at"], json!("2025-11-28T10:20:00.000000Z"));
        assert_eq!(
            record["metadata"]["source"],
            json!("edge-function:invite-user")
        );
        let queued = log
            .iter()
            .find(|e| e.event_type.as_str() == "workflow.queue.pending")
            .expect("the workflow queue's event was imported");
        assert_eq!(
            queued.metadata.extra["import"]["processing_error"],
            json!("P9002: unknown stream_type \"workflow_queue\"")
        );
        assert_eq!(
            queued.metadata.org_id.map(|org| org.to_string()).as_deref(),
            Some("a0000000-0000-4000-8000-000000000001")
        );

        // The projections show what the seed's onboarding did.
        assert_eq!(
            rows(
                &t,
                "SELECT slug, status FROM organizations",
                &["slug", "status"]
            )
            .await?,
            [["sunrise-care", "active"]]
        );
        assert_eq!(
            rows(
                &t,
                "SELECT email, status FROM users ORDER BY email",
                &["email", "status"]
            )
            .await?,
            [
                ["ada@example.com", "active"],
                ["alan@example.org", "active"],
                ["grace@example.com", "active"]
            ]
        );
        assert_eq!(
            rows(
                &t,
                "SELECT role FROM role_assignments ORDER BY role",
                &["role"]
            )
            .await?,
            [["admin"], ["clinician"], ["viewer"]]
        );
        assert_eq!(
            rows(
                &t,
                "SELECT email, status FROM invitations",
                &["email", "status"]
            )
            .await?,
            [["grace@example.com", "accepted"]]
        );
        assert_exit(&cairn(t.url(), &["replay", "--verify"]).await, 0);
        // Every imported event reads as the current version of its type, the seed's
        // shapes (version 0) through their upcasters.
        let checked = cairn(t.url(), &["contracts", "check-log", "--json"]).await;
        assert_exit(&checked, 0);
        let checked = json_of(&checked);
        assert!(
            checked["versions"]
                .as_array()
                .is_some_and(|counts| counts.iter().any(|c| c["stored_version"] == 0)),
            "seed shapes are stored as version 0: {checked}"
        );
        let checkpoints = dir.path().join("checkpoints").display().to_string();
        assert_exit(
            &cairn(
                t.url(),
                &["audit", "verify", "--checkpoint-dir", &checkpoints],
            )
            .await,
            0,
        );

        // A finished import run again imports nothing and writes nothing.
        let again = import(t.url(), seed.url(), &key, dir.path(), &["--json"]).await;
        assert_exit(&again, 1);
        let report = json_of(&again);
        assert_eq!(
            report["run"],
            json!({"read": 0, "imported": 0, "unmapped": 0})
        );
        assert_eq!(
            report["total"],
            json!({"read": 18, "imported": 13, "unmapped": 5, "failed": 1, "held": 0})
        );
        assert_eq!(report["checkpoints"], json!([]));
        let kinds: Vec<(&str, &str)> = report["unmapped"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|row| {
                (
                    row["event_type"].as_str().unwrap_or_default(),
                    row["kind"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("organization.bootstrap.initiated", "refused"),
                ("user.invited", "conflict"),
                ("invitation.revoked", "orphan"),
                ("organization.created", "invalid"),
                ("bench.recorded", "unknown_type"),
            ]
        );
        assert_eq!(events(&t).await?.len(), 15);
        Ok(())
    }
);

/// Runs `cairn import` with the fault hook pausing it after `pause_after` imported
/// events, and kills it with SIGKILL there. Returns whether it was killed (false: it
/// finished first).
async fn import_and_kill(
    url: &str,
    from: &str,
    key: &str,
    dir: &Path,
    pause_after: u64,
) -> anyhow::Result<bool> {
    let checkpoints = dir.join("checkpoints").display().to_string();
    let mut child = crate::common::cairn_tokio()
        .args([
            "--database-url",
            url,
            "import",
            "--from",
            from,
            "--audit-key",
            key,
            "--checkpoint-dir",
            &checkpoints,
            "--batch",
            "3",
        ])
        .env("CAIRN_FAULT_PAUSE_AFTER_IMPORTED", pause_after.to_string())
        .env_remove("CAIRN_DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("paused after") {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    if paused {
        child.kill().await?;
        return Ok(true);
    }
    child.wait().await?;
    Ok(false)
}

backend_test!(
    an_import_killed_mid_way_resumes_and_imports_nothing_twice,
    |t: TestDb| async move {
        let seed = seed_log("import_killed").await?;
        let dir = tempfile::tempdir()?;
        let key = signing_key(t.url(), dir.path()).await;

        // Pages of three: the first kill lands after two pages (five imported), the
        // second after two more pages of the next run.
        assert!(import_and_kill(t.url(), seed.url(), &key, dir.path(), 4).await?);
        let (ids, n) = imported_ids(&t).await?;
        assert_eq!((ids.len(), n), (5, 5));
        assert!(import_and_kill(t.url(), seed.url(), &key, dir.path(), 4).await?);
        let (ids, n) = imported_ids(&t).await?;
        assert_eq!((ids.len(), n), (9, 9));

        let finished = import(t.url(), seed.url(), &key, dir.path(), &["--json"]).await;
        assert_exit(&finished, 1);
        let report = json_of(&finished);
        assert_eq!(
            report["run"],
            json!({"read": 6, "imported": 4, "unmapped": 2})
        );
        assert_eq!(
            report["total"],
            json!({"read": 18, "imported": 13, "unmapped": 5, "failed": 1, "held": 0})
        );
        let (ids, n) = imported_ids(&t).await?;
        assert_eq!((ids.len(), n), (13, 13), "no seed event is imported twice");
        let log = events(&t).await?;
        assert_eq!(
            log.iter()
                .filter(|e| e.event_type.as_str() == "import.started")
                .count(),
            1
        );
        assert_eq!(log.len(), 15);

        assert_exit(&cairn(t.url(), &["replay", "--verify"]).await, 0);
        let checkpoints = dir.path().join("checkpoints").display().to_string();
        assert_exit(
            &cairn(
                t.url(),
                &["audit", "verify", "--checkpoint-dir", &checkpoints],
            )
            .await,
            0,
        );
        Ok(())
    }
);

backend_test!(
    a_source_that_is_not_the_seeds_is_refused_naming_what_is_missing,
    |t: TestDb| async move {
        let dir = tempfile::tempdir()?;
        let key = signing_key(t.url(), dir.path()).await;
        let refused = |output: &std::process::Output| {
            assert_exit(output, 2);
            redact(&stderr(output))
        };

        let empty = ForeignPg::new("import_empty").await;
        let output = import(t.url(), empty.url(), &key, dir.path(), &[]).await;
        expect![[r#"
            error: --from: the source [database] has no domain_events table: it is not the seed's event store
        "#]]
        .assert_eq(&refused(&output));

        let no_error_column = ForeignPg::new("import_no_error_column").await;
        no_error_column.run_script(SEED_SCHEMA).await?;
        no_error_column
            .run_script("ALTER TABLE domain_events DROP COLUMN processing_error CASCADE")
            .await?;
        let output = import(t.url(), no_error_column.url(), &key, dir.path(), &[]).await;
        expect![[r#"
            error: --from: the source's domain_events has no column processing_error: it is not the seed's event store
        "#]]
        .assert_eq(&refused(&output));

        // cairn's own log is not the seed's.
        let output = import(t.url(), t.url(), &key, dir.path(), &[]).await;
        match t.backend() {
            Backend::Postgres => expect![[r#"
                error: --from: the source's domain_events has no column id, processing_error: it is not the seed's event store
            "#]]
            .assert_eq(&refused(&output)),
            Backend::Sqlite => expect![[r#"
                error: --from: the source [database] is not a PostgreSQL database: the seed's event store is a postgres:// URL
            "#]]
            .assert_eq(&refused(&output)),
        }
        assert!(events(&t).await?.is_empty(), "nothing was written");
        Ok(())
    }
);

backend_test!(
    an_import_starts_a_log_and_stays_with_its_source,
    |t: TestDb| async move {
        let seed = seed_log("import_starts").await?;
        let dir = tempfile::tempdir()?;
        let key = signing_key(t.url(), dir.path()).await;
        crate::common::append(
            t.url(),
            "test",
            &crate::common::new_id(),
            "test.pinged",
            "{}",
        )
        .await;
        let output = import(t.url(), seed.url(), &key, dir.path(), &[]).await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("already holds 1 event: an import starts a log"),
            "{}",
            stderr(&output)
        );

        let fresh = TestDb::new(t.backend(), "import_starts_fresh").await;
        assert_exit(
            &import(fresh.url(), seed.url(), &key, dir.path(), &[]).await,
            1,
        );
        let other = seed_log("import_starts_other").await?;
        let output = import(fresh.url(), other.url(), &key, dir.path(), &[]).await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("is another seed log: import it into a fresh database"),
            "{}",
            stderr(&output)
        );
        Ok(())
    }
);

backend_test!(
    a_seed_table_without_positions_is_read_by_time_then_id,
    |t: TestDb| async move {
        let seed = seed_log("import_by_time").await?;
        seed.run_script("ALTER TABLE domain_events DROP COLUMN position CASCADE")
            .await?;
        let dir = tempfile::tempdir()?;
        let key = signing_key(t.url(), dir.path()).await;
        let output = import(
            t.url(),
            seed.url(),
            &key,
            dir.path(),
            &["--json", "--batch", "4"],
        )
        .await;
        assert_exit(&output, 1);
        let report = json_of(&output);
        assert_eq!(report["order"], json!("created_at"));
        assert_eq!(
            report["total"],
            json!({"read": 18, "imported": 13, "unmapped": 5, "failed": 1, "held": 0})
        );
        let orphan = &report["unmapped"][2];
        assert_eq!(orphan["source_position"], json!(null));
        assert!(
            orphan["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("its earlier event at seed event ")),
            "{orphan}"
        );
        let (ids, n) = imported_ids(&t).await?;
        assert_eq!((ids.len(), n), (13, 13));
        let again = import(t.url(), seed.url(), &key, dir.path(), &["--json"]).await;
        assert_eq!(json_of(&again)["run"]["read"], json!(0));
        Ok(())
    }
);
