//! The access log from the command line, on both backends: `events list`, `events
//! show` and `trace` put their reads of people's data on record before printing them,
//! `audit access` exports a person's records, `audit verify` checks the access chain
//! and names a tampered record, in text and in JSON.

use serde_json::{Value, json};

use cairn_testkit::{TestDb, backend_test, tamper_access};

use crate::common::{
    assert_exit, bootstrap_request, cairn, cairn_in, json_of, outbox, stderr, stdout,
};

const READER: (&str, &str) = ("USER", "ada-ops");

/// Bootstraps an organization from the command line and runs its workflow.
async fn bootstrap(url: &str, slug: &str) -> anyhow::Result<()> {
    let (_outbox, mail) = outbox()?;
    let request = bootstrap_request(slug);
    let output = cairn_in(
        url,
        &[
            "--mail-url",
            &mail,
            "org",
            "bootstrap",
            "--request",
            "-",
            "--wait",
        ],
        &[],
        Some(&request),
    )
    .await;
    assert_exit(&output, 0);
    Ok(())
}

/// `cairn ARGS…` as the operator `ada-ops`.
async fn as_reader(url: &str, args: &[&str]) -> std::process::Output {
    cairn_in(url, args, &[READER], None).await
}

/// The access log's part of `audit verify --json`, and its exit code.
async fn verify(url: &str) -> (Value, Option<i32>) {
    let output = cairn(url, &["audit", "verify", "--json"]).await;
    (json_of(&output)["access"].clone(), output.status.code())
}

backend_test!(
    command_line_reads_of_people_are_on_record_and_exported,
    |t: TestDb| async move {
        let url = t.url();
        bootstrap(url, "access-cli").await?;
        let (access, code) = verify(url).await;
        assert_eq!(code, Some(0));
        assert_eq!(
            access["n_checked"],
            json!(0),
            "a bootstrap reads nobody: {access}"
        );

        let listed = as_reader(url, &["events", "list", "--json"]).await;
        assert_exit(&listed, 0);
        let events = json_of(&listed);
        let invited = events
            .as_array()
            .and_then(|events| events.iter().find(|e| e["event_type"] == "user.invited"))
            .expect("a user.invited event")
            .clone();
        let person = invited["stream_id"].as_str().expect("an id").to_owned();
        let position = invited["position"].to_string();
        let correlation = invited["event_metadata"]["correlation_id"]
            .as_str()
            .expect("a correlation id")
            .to_owned();
        assert_exit(&as_reader(url, &["events", "show", &position]).await, 0);
        assert_exit(&as_reader(url, &["trace", &correlation, "--json"]).await, 0);
        // Events that carry nobody's data leave no record.
        let other = as_reader(url, &["events", "list", "--type", "organization.created"]).await;
        assert_exit(&other, 0);

        let (access, code) = verify(url).await;
        assert_eq!(code, Some(0), "{access}");
        assert_eq!(access["n_checked"], json!(3), "{access}");
        assert_eq!(access["breach"], Value::Null);
        let human = cairn(url, &["audit", "verify"]).await;
        assert_exit(&human, 0);
        assert!(
            stdout(&human).contains("access log intact: 3 records, head at record 3"),
            "{}",
            stdout(&human)
        );

        let exported = cairn(url, &["audit", "access", "--subject", &person, "--json"]).await;
        assert_exit(&exported, 0);
        let records = json_of(&exported);
        let records = records.as_array().expect("an array");
        assert_eq!(records.len(), 3, "{records:?}");
        let resources: Vec<&str> = records
            .iter()
            .map(|r| r["resource"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(resources[0], "events");
        assert!(resources[1].starts_with("event "), "{resources:?}");
        assert_eq!(resources[2], format!("trace {correlation}"));
        for record in records {
            assert_eq!(record["via"], json!("cli"));
            assert_eq!(record["who"], json!("operator:ada-ops"));
            assert!(
                record["subjects"]
                    .as_array()
                    .is_some_and(|s| s.contains(&json!(person))),
                "{record}"
            );
        }
        let table = cairn(url, &["audit", "access", "--subject", &person]).await;
        assert_exit(&table, 0);
        assert!(
            stdout(&table).contains("operator:ada-ops"),
            "{}",
            stdout(&table)
        );
        assert!(stdout(&table).contains("3 reads"), "{}", stdout(&table));
        let later = cairn(
            url,
            &[
                "audit",
                "access",
                "--subject",
                &person,
                "--since",
                "2999-01-01",
            ],
        )
        .await;
        assert_exit(&later, 0);
        assert!(stdout(&later).contains("no read of"), "{}", stdout(&later));
        Ok(())
    }
);

backend_test!(
    a_tampered_access_record_is_named_by_audit_verify,
    |t: TestDb| async move {
        let url = t.url();
        bootstrap(url, "access-tamper").await?;
        for _ in 0..3 {
            assert_exit(&as_reader(url, &["events", "list"]).await, 0);
        }
        tamper_access(
            t.db(),
            "UPDATE access_log SET who = 'operator:someone-else' WHERE seq = 2",
        )
        .await?;

        let (access, code) = verify(url).await;
        assert_eq!(
            code,
            Some(1),
            "a broken access chain fails the check: {access}"
        );
        assert_eq!(access["breach"]["seq"], json!(2), "{access}");
        assert_eq!(access["breach"]["problem"], json!("hash_mismatch"));
        assert_eq!(access["n_checked"], json!(1));
        let human = cairn(url, &["audit", "verify"]).await;
        assert_exit(&human, 1);
        let text = stdout(&human);
        assert!(
            text.contains("hash chain intact"),
            "the event log is untouched: {text}"
        );
        assert!(
            text.contains("access log broken at record 2: stored hash"),
            "{text}"
        );
        assert!(text.contains("the record was edited or moved"), "{text}");
        Ok(())
    }
);

backend_test!(
    audit_access_refuses_what_it_cannot_read,
    |t: TestDb| async move {
        let url = t.url();
        for (args, says) in [
            (vec!["--subject", "nobody"], "--subject"),
            (
                vec![
                    "--subject",
                    "01970000-0000-7000-8000-000000000000",
                    "--since",
                    "last week",
                ],
                "is not a time",
            ),
            (
                vec![
                    "--subject",
                    "01970000-0000-7000-8000-000000000000",
                    "--limit",
                    "0",
                ],
                "--limit",
            ),
        ] {
            let mut all = vec!["audit", "access"];
            all.extend(args);
            let output = cairn(url, &all).await;
            assert_exit(&output, 2);
            assert!(stderr(&output).contains(says), "{}", stderr(&output));
        }
        // Nobody's data was read: nothing to export, and that is not an error.
        let none = cairn(
            url,
            &[
                "audit",
                "access",
                "--subject",
                "01970000-0000-7000-8000-000000000000",
                "--since",
                "30d",
            ],
        )
        .await;
        assert_exit(&none, 0);
        assert!(stdout(&none).contains("no read of"), "{}", stdout(&none));
        Ok(())
    }
);

backend_test!(
    a_signed_checkpoint_holds_the_access_log_to_its_head_and_names_records_removed_since,
    |t: TestDb| async move {
        let url = t.url();
        bootstrap(url, "access-signed").await?;
        for _ in 0..3 {
            assert_exit(&as_reader(url, &["events", "list"]).await, 0);
        }
        let files = tempfile::tempdir()?;
        let key = files.path().join("audit.key");
        let key_arg = key.display().to_string();
        assert_exit(
            &cairn(url, &["audit", "keygen", "--out", &key_arg]).await,
            0,
        );
        let dir = files.path().join("checkpoints");
        std::fs::create_dir_all(&dir)?;
        let dir_arg = dir.display().to_string();
        let signed = cairn(
            url,
            &[
                "audit",
                "checkpoint",
                "--key",
                &key_arg,
                "--dir",
                &dir_arg,
                "--json",
            ],
        )
        .await;
        assert_exit(&signed, 0);
        let checkpoint = json_of(&signed)["checkpoint"].clone();
        assert_eq!(checkpoint["format"], json!("cairn-audit-checkpoint/2"));
        let head = checkpoint["access"]["seq"].as_u64().unwrap_or_default();
        assert!(head >= 3, "{checkpoint}");

        // A checkpoint signed with another hash for an earlier record: contradicted.
        let audit_key = cairn_log::AuditKey::parse(&std::fs::read_to_string(&key)?)?;
        let forged = audit_key.sign_with_access(
            cairn_types::Position::new(i64::try_from(
                checkpoint["position"].as_u64().unwrap_or_default(),
            )?),
            checkpoint["hash"].as_str().unwrap_or_default(),
            Some(cairn_log::AccessMark {
                seq: 1,
                hash: "0".repeat(64),
            }),
            chrono::Utc::now(),
        );
        let forged_file = files.path().join("forged.json");
        std::fs::write(&forged_file, forged.to_json())?;
        let forged_arg = forged_file.display().to_string();
        let output = cairn(url, &["audit", "verify", "--checkpoint", &forged_arg]).await;
        assert_exit(&output, 1);
        assert!(
            stdout(&output).contains("contradicted: the access log holds another hash there"),
            "{}",
            stdout(&output)
        );

        // Intact, the signed head holds.
        let output = cairn(url, &["audit", "verify", "--checkpoint-dir", &dir_arg]).await;
        assert_exit(&output, 0);
        assert!(
            stdout(&output).contains(&format!(
                "the access log still holds the signed head at record {head}"
            )),
            "{}",
            stdout(&output)
        );

        // Someone removes the last record and winds the head back: the access chain
        // is consistent with itself, and only the checkpoint shows what went.
        tamper_access(
            t.db(),
            &format!(
                "DELETE FROM access_log WHERE seq = {head}; \
                 UPDATE access_head SET last_seq = {prev}, \
                 last_hash = (SELECT hash FROM access_log WHERE seq = {prev}) WHERE id = 1",
                prev = head - 1
            ),
        )
        .await?;
        let (alone, code) = verify(url).await;
        assert_eq!(code, Some(0), "{alone}");
        assert!(alone["breach"].is_null(), "{alone}");
        let output = cairn(
            url,
            &["audit", "verify", "--checkpoint-dir", &dir_arg, "--json"],
        )
        .await;
        assert_exit(&output, 1);
        let report = json_of(&output);
        assert_eq!(
            report["access"]["anchors"],
            json!(["beyond_the_log"]),
            "{report}"
        );
        assert_eq!(report["checkpoints"][0]["access"], json!("beyond_the_log"));
        assert_eq!(
            report["checkpoints"][0]["status"],
            json!("holds"),
            "the events hold"
        );
        let human = cairn(url, &["audit", "verify", "--checkpoint-dir", &dir_arg]).await;
        assert_exit(&human, 1);
        assert!(
            stdout(&human).contains("beyond the end of the access log: records were removed"),
            "{}",
            stdout(&human)
        );
        // And no new checkpoint is signed over it.
        let refused = cairn(
            url,
            &["audit", "checkpoint", "--key", &key_arg, "--dir", &dir_arg],
        )
        .await;
        assert!(!refused.status.success());
        assert!(
            stderr(&refused).contains("no longer holds the head the last checkpoint signed"),
            "{}",
            stderr(&refused)
        );
        Ok(())
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_checks_the_access_log_it_copied_and_refuses_a_broken_one() -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let url = format!("sqlite://{}", files.path().join("live.db").display());
    bootstrap(&url, "access-backup").await?;
    for _ in 0..2 {
        assert_exit(&as_reader(&url, &["events", "list"]).await, 0);
    }
    let good = files.path().join("good.db").display().to_string();
    assert_exit(&cairn(&url, &["backup", "--out", &good]).await, 0);

    let db = cairn_log::Db::connect(&url, &cairn_log::DbOptions::default()).await?;
    tamper_access(
        &db,
        "UPDATE access_log SET who = 'operator:someone-else' WHERE seq = 1",
    )
    .await?;
    db.close().await;
    let broken = files.path().join("broken.db").display().to_string();
    let refused = cairn(&url, &["backup", "--out", &broken]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("its access log is broken at record 1"),
        "{}",
        stderr(&refused)
    );
    Ok(())
}
