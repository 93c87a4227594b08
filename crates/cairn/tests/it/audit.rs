//! `cairn audit` as a process, on both backends, against a database administrator who
//! lifts the immutability triggers: rewrites that recompute every hash, a cut tail,
//! edited columns outside the hash, rows that no longer decode; signed checkpoints,
//! their keys and their schedule in `cairn serve`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{Backend, TestDb, backend_test};
use expect_test::expect;
use serde_json::{Value, json};

use crate::common::{
    assert_exit, cairn, cairn_in, json_of, new_id, outbox, redact, stderr, stdout,
};

/// Appends `n` events through the command line, each with its own correlation id and,
/// for even `n`, an organization.
async fn append_events(url: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let mut metadata = json!({"correlation_id": new_id()});
        if i % 2 == 1 {
            metadata["org_id"] = json!(new_id());
        }
        let output = cairn(
            url,
            &[
                "events",
                "append",
                "--stream-type",
                "test",
                "--stream-id",
                &new_id(),
                "--type",
                "test.pinged",
                "--data",
                &format!(r#"{{"n": {i}}}"#),
                "--metadata",
                &metadata.to_string(),
            ],
        )
        .await;
        assert_exit(&output, 0);
    }
    Ok(())
}

/// Lifts the immutability triggers as a database administrator could, runs `statements`
/// and, with `recompute`, rewrites every hash and the head so that the chain is
/// consistent again.
async fn tamper(t: &TestDb, statements: &str, recompute: bool) -> anyhow::Result<()> {
    cairn_testkit::tamper(t.db(), statements, recompute).await
}

/// An edit of one event's payload, in each backend's SQL.
fn edit_data(backend: Backend, position: i64) -> String {
    match backend {
        Backend::Sqlite => {
            format!(
                "UPDATE domain_events SET event_data = '{{\"n\":1000}}' WHERE position = {position}"
            )
        }
        Backend::Postgres => format!(
            "UPDATE domain_events SET event_data = '{{\"n\":1000}}'::jsonb WHERE position = {position}"
        ),
    }
}

async fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("audit.key");
    let key_text = key.display().to_string();
    let output = cairn(
        "sqlite://unused.db",
        &["audit", "keygen", "--out", &key_text],
    )
    .await;
    assert_exit(&output, 0);
    key
}

async fn checkpoint(url: &str, key: &Path, target: &[&str]) -> std::process::Output {
    let key = key.display().to_string();
    let mut args = vec!["audit", "checkpoint", "--key", &key];
    args.extend_from_slice(target);
    cairn(url, &args).await
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

backend_test!(
    a_rewrite_that_recomputes_every_hash_is_found_by_a_checkpoint,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let dir = files.path().join("checkpoints");
        append_events(t.url(), 3).await?;
        assert_exit(
            &checkpoint(t.url(), &key, &["--dir", &path_arg(&dir)]).await,
            0,
        );
        append_events(t.url(), 2).await?;
        let signed = checkpoint(
            t.url(),
            &key,
            &["--dir", &path_arg(&dir), "--since-last", "--json"],
        )
        .await;
        assert_exit(&signed, 0);
        assert_eq!(json_of(&signed)["checkpoint"]["position"], json!(5));
        assert_eq!(
            json_of(&signed)["checked_from"],
            json!(3),
            "with --since-last the chain is checked on from the newest checkpoint"
        );

        tamper(&t, &edit_data(t.backend(), 4), true).await?;

        // Without a checkpoint, a chain recomputed from the edit on is consistent with
        // itself: this is what the checkpoints are for.
        let alone = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&alone, 0);
        expect![[r#"
            ✓ hash chain intact: 5 events, head at position 5
              the chain is consistent with itself; only a signed checkpoint (--checkpoint) shows it was not rewritten with every hash recomputed
            ✓ access log intact: 0 records, head at record 0
        "#]].assert_eq(&redact(&stdout(&alone)));

        let dir_arg = path_arg(&dir);
        let verified = cairn(t.url(), &["audit", "verify", "--checkpoint-dir", &dir_arg]).await;
        assert_exit(&verified, 1);
        expect![[r#"
            ✗ hash chain broken at position 5: a signed checkpoint records hash [hash] here but the log holds [hash]: the log was rewritten at or before position 5
              4 events before it check out
            ✓ checkpoint [path] (position 3): holds
            ✗ checkpoint [path] (position 5): contradicted: the log holds another hash there
            ✓ access log intact: 0 records, head at record 0
            ✓ the access log still holds the signed head at record 0
        "#]].assert_eq(&redact(&stdout(&verified)));

        let json = json_of(
            &cairn(
                t.url(),
                &["audit", "verify", "--checkpoint-dir", &dir_arg, "--json"],
            )
            .await,
        );
        assert_eq!(json["breach"]["position"], json!(5));
        assert_eq!(json["breach"]["problem"], json!("checkpoint_mismatch"));
        let statuses: Vec<(Value, Value)> = json["checkpoints"]
            .as_array()
            .context("checkpoints")?
            .iter()
            .map(|c| (c["position"].clone(), c["status"].clone()))
            .collect();
        assert_eq!(
            statuses,
            vec![
                (json!(3), json!("holds")),
                (json!(5), json!("contradicted"))
            ]
        );

        // A new checkpoint is refused: the log no longer contains the last one.
        let refused = checkpoint(t.url(), &key, &["--dir", &dir_arg]).await;
        assert_exit(&refused, 1);
        assert!(
            stdout(&refused).contains("not signed"),
            "{}",
            stdout(&refused)
        );
        assert_eq!(
            std::fs::read_dir(&dir)?.count(),
            2,
            "nothing new was written"
        );
        Ok(())
    }
);

backend_test!(
    a_cut_tail_with_a_rewritten_head_is_found_by_a_checkpoint,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let out = files.path().join("head.json");
        append_events(t.url(), 5).await?;
        assert_exit(
            &checkpoint(t.url(), &key, &["--out", &path_arg(&out)]).await,
            0,
        );

        tamper(
            &t,
            "DELETE FROM domain_events WHERE position > 3; \
             UPDATE log_head SET last_position = 3, \
             last_hash = (SELECT hash FROM domain_events WHERE position = 3) WHERE id = 1",
            false,
        )
        .await?;
        assert_exit(&cairn(t.url(), &["audit", "verify"]).await, 0);

        let out_arg = path_arg(&out);
        let verified = cairn(t.url(), &["audit", "verify", "--checkpoint", &out_arg]).await;
        assert_exit(&verified, 1);
        expect![[r#"
            ✗ hash chain broken at position 4: a signed checkpoint records an event at position 5 (hash [hash]) but the log ends at position 3: events were removed and the head rewritten to match
              3 events before it check out
            ✗ checkpoint [path] (position 5): beyond the end of the log: events were removed
            ✓ access log intact: 0 records, head at record 0
            ✓ the access log still holds the signed head at record 0
        "#]].assert_eq(&redact(&stdout(&verified)));
        let json = json_of(
            &cairn(
                t.url(),
                &["audit", "verify", "--checkpoint", &out_arg, "--json"],
            )
            .await,
        );
        assert_eq!(json["breach"]["problem"], json!("truncated"));
        assert_eq!(json["checkpoints"][0]["status"], json!("beyond_the_log"));
        Ok(())
    }
);

backend_test!(
    checkpoints_hold_on_an_untouched_log_and_bad_signatures_are_reported,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let public = files.path().join("audit.key.pub");
        let out = files.path().join("head.json");
        append_events(t.url(), 2).await?;
        assert_exit(
            &checkpoint(t.url(), &key, &["--out", &path_arg(&out)]).await,
            0,
        );
        append_events(t.url(), 1).await?;
        let out_arg = path_arg(&out);
        let public_arg = path_arg(&public);

        let holds = cairn(
            t.url(),
            &[
                "audit",
                "verify",
                "--checkpoint",
                &out_arg,
                "--public-key",
                &public_arg,
            ],
        )
        .await;
        assert_exit(&holds, 0);
        expect![[r#"
            ✓ hash chain intact: 3 events, head at position 3
            ✓ checkpoint holds: the log still holds the signed head at position 2
            ✓ access log intact: 0 records, head at record 0
            ✓ the access log still holds the signed head at record 0
        "#]]
        .assert_eq(&redact(&stdout(&holds)));

        // Pinning another key refuses a checkpoint signed with this one.
        let other_dir = tempfile::tempdir()?;
        keygen(other_dir.path()).await;
        let other_public = path_arg(&other_dir.path().join("audit.key.pub"));
        let pinned = cairn(
            t.url(),
            &[
                "audit",
                "verify",
                "--checkpoint",
                &out_arg,
                "--public-key",
                &other_public,
                "--json",
            ],
        )
        .await;
        assert_exit(&pinned, 1);
        assert_eq!(
            json_of(&pinned)["checkpoints"][0]["status"],
            json!("unknown_key")
        );

        // A checkpoint edited to match a rewritten log no longer verifies.
        let mut forged: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        forged["hash"] = json!("0".repeat(64));
        std::fs::write(&out, serde_json::to_string_pretty(&forged)?)?;
        let bad = cairn(t.url(), &["audit", "verify", "--checkpoint", &out_arg]).await;
        assert_exit(&bad, 1);
        expect![[r#"
            ✓ hash chain intact: 3 events, head at position 3
            ✗ checkpoint [path] (position 2): the signature does not verify: the checkpoint was altered after it was signed, or was never signed by the key it names
            ✓ access log intact: 0 records, head at record 0
        "#]].assert_eq(&redact(&stdout(&bad)));

        // Not a checkpoint at all: reported, named, exit 1.
        std::fs::write(&out, "{\"position\": ")?;
        let garbled = cairn(
            t.url(),
            &["audit", "verify", "--checkpoint", &out_arg, "--json"],
        )
        .await;
        assert_exit(&garbled, 1);
        assert_eq!(
            json_of(&garbled)["checkpoints"][0]["status"],
            json!("unreadable")
        );

        // A missing file is an error in the command itself.
        let missing = cairn(
            t.url(),
            &["audit", "verify", "--checkpoint", "no-such.json"],
        )
        .await;
        assert_exit(&missing, 2);
        assert!(
            stderr(&missing).contains("no-such.json"),
            "{}",
            stderr(&missing)
        );
        Ok(())
    }
);

backend_test!(
    edited_org_and_correlation_columns_are_found,
    |t: TestDb| async move {
        append_events(t.url(), 4).await?;
        let other = new_id();
        let edit = match t.backend() {
            Backend::Sqlite => {
                format!("UPDATE domain_events SET org_id = '{other}' WHERE position = 2")
            }
            Backend::Postgres => {
                format!("UPDATE domain_events SET org_id = '{other}'::uuid WHERE position = 2")
            }
        };
        tamper(&t, &edit, false).await?;
        let broken = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&broken, 1);
        expect![[r#"
            ✗ hash chain broken at position 2: column org_id is [uuid] but the hashed metadata says [uuid]: the event is missing from its organization's reads
              1 event before it checks out
            ✓ access log intact: 0 records, head at record 0
        "#]].assert_eq(&redact(&stdout(&broken)));
        let json = json_of(&cairn(t.url(), &["audit", "verify", "--json"]).await);
        assert_eq!(json["breach"]["problem"], json!("column_mismatch"));

        // An event with no organization moved into one.
        let edit = match t.backend() {
            Backend::Sqlite => {
                "UPDATE domain_events SET org_id = (SELECT org_id FROM domain_events WHERE position = 4) WHERE position = 1; \
                 UPDATE domain_events SET org_id = json_extract(event_metadata, '$.org_id') WHERE position = 2"
            }
            Backend::Postgres => {
                "UPDATE domain_events SET org_id = (SELECT org_id FROM domain_events WHERE position = 4) WHERE position = 1; \
                 UPDATE domain_events SET org_id = (event_metadata->>'org_id')::uuid WHERE position = 2"
            }
        };
        tamper(&t, edit, false).await?;
        let moved = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&moved, 1);
        assert!(
            stdout(&moved).contains("hash chain broken at position 1"),
            "{}",
            stdout(&moved)
        );
        assert!(stdout(&moved).contains("org_id"), "{}", stdout(&moved));

        let edit = match t.backend() {
            Backend::Sqlite => format!(
                "UPDATE domain_events SET org_id = NULL WHERE position = 1; \
                 UPDATE domain_events SET correlation_id = '{other}' WHERE position = 3"
            ),
            Backend::Postgres => format!(
                "UPDATE domain_events SET org_id = NULL WHERE position = 1; \
                 UPDATE domain_events SET correlation_id = '{other}'::uuid WHERE position = 3"
            ),
        };
        tamper(&t, &edit, false).await?;
        let broken = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&broken, 1);
        let text = stdout(&broken);
        assert!(text.contains("hash chain broken at position 3"), "{text}");
        assert!(text.contains("correlation_id"), "{text}");
        Ok(())
    }
);

backend_test!(
    a_row_that_no_longer_decodes_is_named_with_exit_1,
    |t: TestDb| async move {
        append_events(t.url(), 3).await?;
        let (first, first_column, second, second_column) = match t.backend() {
            // SQLite keeps whatever text it is given.
            Backend::Sqlite => (
                "UPDATE domain_events SET event_id = 'forged' WHERE position = 2",
                "event_id",
                "UPDATE domain_events SET event_data = 'not json' WHERE position = 1",
                "event_data",
            ),
            // PostgreSQL's types keep UUIDs and JSON well formed, but not every value
            // they hold can be read back.
            Backend::Postgres => (
                "UPDATE domain_events SET event_data = '{\"n\": 1e400}'::jsonb WHERE position = 2",
                "event_data",
                "UPDATE domain_events SET created_at = 'infinity' WHERE position = 1",
                "created_at",
            ),
        };
        tamper(&t, first, false).await?;
        let output = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&output, 1);
        let text = stdout(&output);
        assert!(text.contains("hash chain broken at position 2"), "{text}");
        assert!(text.contains(first_column), "{text}");
        assert!(text.contains("no longer decodes"), "{text}");
        let json = json_of(&cairn(t.url(), &["audit", "verify", "--json"]).await);
        assert_eq!(json["breach"]["problem"], json!("undecodable"));
        assert_eq!(json["breach"]["position"], json!(2));

        tamper(&t, second, false).await?;
        let output = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&output, 1);
        let text = stdout(&output);
        assert!(text.contains("hash chain broken at position 1"), "{text}");
        assert!(text.contains(second_column), "{text}");
        // Reading such a row is an error that names it, not a crash.
        for args in [&["events", "show", "1"][..], &["events", "list"][..]] {
            let output = cairn(t.url(), args).await;
            assert_ne!(
                output.status.code(),
                Some(101),
                "{args:?} panicked: {}",
                stderr(&output)
            );
            assert!(!output.status.success(), "{args:?}");
            let text = stderr(&output);
            assert!(text.contains(second_column), "{args:?}: {text}");
        }
        Ok(())
    }
);

backend_test!(
    serve_writes_signed_checkpoints_on_a_schedule,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let dir = files.path().join("checkpoints");
        append_events(t.url(), 2).await?;
        let (_outbox, mail) = outbox()?;
        let mut child = crate::common::cairn_tokio()
            .args(["--database-url", t.url(), "--mail-url", &mail])
            .args(["serve", "--addr", "127.0.0.1:0", "--probe-interval", "0"])
            .args(["--audit-checkpoint-every", "1s", "--audit-key"])
            .arg(&key)
            .arg("--audit-checkpoint-dir")
            .arg(&dir)
            .env_remove("CAIRN_DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let n = std::fs::read_dir(&dir)
                    .map(|entries| {
                        entries
                            .filter_map(Result::ok)
                            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                            .count()
                    })
                    .unwrap_or(0);
                if n >= 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        child.kill().await?;
        found.context("no checkpoint within 60 s")?;

        let dir_arg = path_arg(&dir);
        let verified = cairn(
            t.url(),
            &["audit", "verify", "--checkpoint-dir", &dir_arg, "--json"],
        )
        .await;
        assert_exit(&verified, 0);
        let json = json_of(&verified);
        assert_eq!(json["checkpoints"][0]["status"], json!("holds"));
        assert_eq!(json["checkpoints"][0]["position"], json!(2));

        // Half the flags is refused before anything starts.
        let refused = cairn(t.url(), &["serve", "--audit-checkpoint-every", "1h"]).await;
        assert_exit(&refused, 2);
        assert!(
            stderr(&refused).contains("--audit-checkpoint-dir"),
            "{}",
            stderr(&refused)
        );
        Ok(())
    }
);

#[tokio::test]
async fn keygen_writes_an_owner_only_key_and_never_overwrites_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("audit.key");
    let key_arg = path_arg(&key);
    let output = cairn(
        "sqlite://unused.db",
        &["audit", "keygen", "--out", &key_arg, "--json"],
    )
    .await;
    assert_exit(&output, 0);
    let json = json_of(&output);
    let public = std::fs::read_to_string(dir.path().join("audit.key.pub"))?;
    assert_eq!(
        public.trim(),
        format!(
            "ed25519-public-key:{}",
            json["public_key"].as_str().context("public_key")?
        )
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key is readable by its owner only");
    }
    let before = std::fs::read_to_string(&key)?;
    let again = cairn(
        "sqlite://unused.db",
        &["audit", "keygen", "--out", &key_arg],
    )
    .await;
    assert_exit(&again, 2);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&key)?, before);
    Ok(())
}

backend_test!(
    the_key_can_come_from_the_environment,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let out = path_arg(&files.path().join("head.json"));
        append_events(t.url(), 1).await?;
        let key_text = std::fs::read_to_string(&key)?;
        let signed = cairn_in(
            t.url(),
            &["audit", "checkpoint", "--out", &out],
            &[("CAIRN_AUDIT_KEY", key_text.trim())],
            None,
        )
        .await;
        assert_exit(&signed, 0);
        assert!(
            stdout(&signed).contains("signed the head at position 1"),
            "{}",
            stdout(&signed)
        );

        let no_key = cairn_in(
            t.url(),
            &["audit", "checkpoint", "--out", &out],
            &[("CAIRN_AUDIT_KEY", "")],
            None,
        )
        .await;
        assert_exit(&no_key, 2);
        assert!(
            stderr(&no_key).contains("CAIRN_AUDIT_KEY"),
            "{}",
            stderr(&no_key)
        );

        let public = std::fs::read_to_string(files.path().join("audit.key.pub"))?;
        let wrong = cairn_in(
            t.url(),
            &["audit", "checkpoint", "--out", &out],
            &[("CAIRN_AUDIT_KEY", public.trim())],
            None,
        )
        .await;
        assert_exit(&wrong, 2);
        assert!(stderr(&wrong).contains("public key"), "{}", stderr(&wrong));
        Ok(())
    }
);

// Issue 20, point 10: `audit checkpoint` walked the chain only from its last
// checkpoint, so it signed a new head over an edit made before it.
backend_test!(
    a_checkpoint_walks_the_whole_chain_before_it_signs,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let dir = files.path().join("checkpoints");
        let dir_arg = path_arg(&dir);
        append_events(t.url(), 3).await?;
        assert_exit(&checkpoint(t.url(), &key, &["--dir", &dir_arg]).await, 0);
        append_events(t.url(), 2).await?;
        let n_files = || std::fs::read_dir(&dir).map(|entries| entries.count());

        // A naive edit before the last checkpoint.
        tamper(&t, &edit_data(t.backend(), 2), false).await?;
        let refused = checkpoint(t.url(), &key, &["--dir", &dir_arg, "--json"]).await;
        assert_exit(&refused, 1);
        let report = json_of(&refused);
        assert_eq!(report["signed"], json!(false));
        assert_eq!(report["checked_from"], json!(0));
        assert_eq!(report["breach"]["position"], json!(2), "{report}");
        assert_eq!(n_files()?, 1, "nothing was signed");
        let text = checkpoint(t.url(), &key, &["--dir", &dir_arg]).await;
        assert_exit(&text, 1);
        assert!(
            stdout(&text).contains("not signed: the hash chain is broken at position 2"),
            "{}",
            stdout(&text)
        );
        // Asked only for what came after the last checkpoint, it says where it began.
        let since = checkpoint(t.url(), &key, &["--dir", &dir_arg, "--since-last"]).await;
        assert_exit(&since, 0);
        assert!(
            stdout(&since).contains("from the checkpoint at position 3"),
            "{}",
            stdout(&since)
        );
        Ok(())
    }
);

backend_test!(
    a_checkpoint_is_not_signed_over_a_rewrite_of_what_the_last_one_signed,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let key = keygen(files.path()).await;
        let out = files.path().join("head.json");
        let out_arg = path_arg(&out);
        append_events(t.url(), 3).await?;
        assert_exit(&checkpoint(t.url(), &key, &["--out", &out_arg]).await, 0);
        let signed_before = std::fs::read_to_string(&out)?;
        append_events(t.url(), 1).await?;
        // Every hash recomputed from the edit on: the chain is consistent with itself,
        // but no longer holds the head the last checkpoint signed.
        tamper(&t, &edit_data(t.backend(), 2), true).await?;
        let refused = checkpoint(t.url(), &key, &["--out", &out_arg]).await;
        assert_exit(&refused, 1);
        assert!(
            stdout(&refused).contains(
                "not signed: the hash chain is broken at position 3: a signed checkpoint records hash"
            ),
            "{}",
            stdout(&refused)
        );
        let json = json_of(&checkpoint(t.url(), &key, &["--out", &out_arg, "--json"]).await);
        assert_eq!(json["last_checkpoint"], json!("contradicted"), "{json}");
        assert_eq!(
            std::fs::read_to_string(&out)?,
            signed_before,
            "the last checkpoint is left as it was"
        );
        Ok(())
    }
);

backend_test!(
    verifying_against_an_empty_checkpoint_directory_fails,
    |t: TestDb| async move {
        let files = tempfile::tempdir()?;
        let empty = files.path().join("mounted-wrong");
        std::fs::create_dir_all(&empty)?;
        append_events(t.url(), 2).await?;
        let verified = cairn(
            t.url(),
            &["audit", "verify", "--checkpoint-dir", &path_arg(&empty)],
        )
        .await;
        assert_exit(&verified, 1);
        assert!(
            stderr(&verified).contains("no checkpoints (*.json) in"),
            "{}",
            stderr(&verified)
        );
        let json = cairn(
            t.url(),
            &[
                "audit",
                "verify",
                "--checkpoint-dir",
                &path_arg(&empty),
                "--json",
            ],
        )
        .await;
        assert_exit(&json, 1);
        // Without a directory, nothing was asked of checkpoints: the chain alone decides.
        assert_exit(&cairn(t.url(), &["audit", "verify"]).await, 0);
        Ok(())
    }
);
