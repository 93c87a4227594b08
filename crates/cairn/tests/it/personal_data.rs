//! Personal data at the command line: the key a database's data is sealed under,
//! refused when missing or wrong, rotated; and a person erased, shown and erased again.

use std::process::Output;

use cairn_testkit::{TestDb, backend_test};
use serde_json::Value;

use crate::common::{
    assert_exit, bootstrap_request, cairn_in, cairn_tokio, json_of, stderr, stdout,
};

/// `cairn ARGS…` on `url` with no key but the one `key_file` names.
async fn with_key_file(url: &str, key_file: &std::path::Path, args: &[&str]) -> Output {
    cairn_tokio()
        .env_remove("CAIRN_PII_KEY")
        .env("NO_COLOR", "1")
        .arg("--database-url")
        .arg(url)
        .arg("--pii-key")
        .arg(key_file)
        .args(args)
        .output()
        .await
        .expect("cairn runs")
}

/// The user id of the person invited at `email`, from `events list --json`.
fn invited_user(events: &Value, email: &str) -> String {
    events
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["event_type"] == "user.invited" && e["event_data"]["email"] == email)
        .and_then(|e| e["stream_id"].as_str())
        .unwrap_or_else(|| panic!("{email} was invited"))
        .to_owned()
}

fn test_key_id() -> String {
    cairn_testkit::test_kek().id().to_owned()
}

backend_test!(
    a_process_without_the_databases_key_or_with_another_refuses_to_start_naming_it,
    |t: TestDb| async move {
        let url = t.url().to_owned();
        let output = cairn_in(
            &url,
            &["org", "bootstrap", "--request", "-", "--wait", "--json"],
            &[],
            Some(&bootstrap_request("sealed-keys")),
        )
        .await;
        assert_exit(&output, 0);
        let dir = tempfile::tempdir()?;

        // No key at all: exit 2, naming the key the data is sealed under.
        let missing = dir.path().join("missing.key");
        let output = with_key_file(&url, &missing, &["status"]).await;
        assert_exit(&output, 2);
        let said = stderr(&output);
        assert!(said.contains(&test_key_id()), "{said}");
        assert!(said.contains("does not exist"), "{said}");
        assert!(!missing.exists(), "no new key is made over sealed data");

        // Another key: exit 2, naming both.
        let other = dir.path().join("other.key");
        cairn_log::Kek::generate()?.write_new(&other)?;
        let other_id = cairn_log::Kek::load(&other)?.id().to_owned();
        let output = with_key_file(&url, &other, &["status"]).await;
        assert_exit(&output, 2);
        let said = stderr(&output);
        assert!(
            said.contains(&other_id) && said.contains(&test_key_id()),
            "{said}"
        );
        assert!(said.contains("opens nothing"), "{said}");

        // A file that is no key: exit 2, saying where.
        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key\n")?;
        let output = with_key_file(&url, &garbage, &["status"]).await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("garbage.key"),
            "{}",
            stderr(&output)
        );

        // Rotation: every data key re-wrapped under the new key; the old one retired.
        let new = dir.path().join("new.key");
        let output = cairn_in(
            &url,
            &["keys", "rotate", "--to", &new.display().to_string()],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        assert!(
            stdout(&output).contains("3 data keys re-wrapped"),
            "{}",
            stdout(&output)
        );
        let output = cairn_in(&url, &["status"], &[], None).await;
        assert_exit(&output, 2);
        assert!(stderr(&output).contains("retired"), "{}", stderr(&output));
        let output = with_key_file(&url, &new, &["events", "list", "--json"]).await;
        assert_exit(&output, 0);
        assert!(
            stdout(&output).contains("grace@example.com"),
            "the people still read"
        );
        Ok(())
    }
);

backend_test!(
    a_person_is_erased_from_the_command_line_once_and_shown_erased,
    |t: TestDb| async move {
        let url = t.url().to_owned();
        let output = cairn_in(
            &url,
            &["org", "bootstrap", "--request", "-", "--wait", "--json"],
            &[],
            Some(&bootstrap_request("sealed-cli")),
        )
        .await;
        assert_exit(&output, 0);
        let output = cairn_in(&url, &["events", "list", "--json"], &[], None).await;
        assert_exit(&output, 0);
        let events = json_of(&output);
        let grace = invited_user(&events, "grace@example.com");

        let output = cairn_in(
            &url,
            &[
                "subjects",
                "erase",
                &grace,
                "--reason",
                "request 2026-118",
                "--json",
            ],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        let receipt = json_of(&output);
        assert_eq!(receipt["repeated"], false);
        assert_eq!(receipt["reason"], "request 2026-118");
        let output = cairn_in(
            &url,
            &["subjects", "erase", &grace, "--reason", "again"],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        assert!(
            stdout(&output).contains("was erased before"),
            "{}",
            stdout(&output)
        );
        let output = cairn_in(&url, &["subjects", "show", &grace, "--json"], &[], None).await;
        assert_exit(&output, 0);
        let status = json_of(&output);
        assert_eq!(status["state"], "erased");
        assert_eq!(status["erasure"]["erased_at"], receipt["erased_at"]);

        let output = cairn_in(&url, &["events", "list", "--json"], &[], None).await;
        assert_exit(&output, 0);
        let text = stdout(&output);
        assert!(
            !text.contains("grace@example.com") && !text.contains("Grace Hopper"),
            "{text}"
        );
        assert!(
            text.contains("\"withheld\":\"erased\"") || text.contains("\"withheld\": \"erased\""),
            "{text}"
        );
        let trace = events
            .as_array()
            .and_then(|all| all.first())
            .and_then(|e| e["event_metadata"]["correlation_id"].as_str())
            .expect("a correlation id")
            .to_owned();
        let output = cairn_in(&url, &["trace", &trace], &[], None).await;
        assert_exit(&output, 0);
        assert!(
            !stdout(&output).contains("grace@example.com"),
            "{}",
            stdout(&output)
        );

        // Bad input: no reason, nobody.
        let output = cairn_in(&url, &["subjects", "erase", &grace], &[], None).await;
        assert_exit(&output, 2);
        let nobody: Value = Value::String(uuid::Uuid::now_v7().to_string());
        let output = cairn_in(
            &url,
            &[
                "subjects",
                "erase",
                nobody.as_str().unwrap_or_default(),
                "--reason",
                "x",
            ],
            &[],
            None,
        )
        .await;
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("does not exist"),
            "{}",
            stderr(&output)
        );
        Ok(())
    }
);

/// Where one person's erasure stands, read from the database: the key, the event, the
/// row. All three or none.
async fn erasure_parts(t: &TestDb, user: &str) -> anyhow::Result<(bool, bool, bool)> {
    let id = uuid::Uuid::parse_str(user)?;
    let mut reader = t.db().reader().await?;
    let mut conn = reader.conn();
    let key = conn
        .fetch_optional(
            "SELECT state FROM subject_keys WHERE subject_id = $1",
            cairn_log::args![id],
        )
        .await?
        .map(|row| row.get::<String>("state"))
        .transpose()?;
    let events = conn
        .fetch_one(
            "SELECT COUNT(*) AS n FROM domain_events WHERE stream_id = $1 AND event_type = 'user.erased'",
            cairn_log::args![id],
        )
        .await?
        .get::<i64>("n")?;
    let row = conn
        .fetch_one(
            "SELECT erased_at IS NOT NULL AS erased FROM users WHERE id = $1",
            cairn_log::args![id],
        )
        .await?
        .get::<bool>("erased")?;
    Ok((key.as_deref() == Some("erased"), events == 1, row))
}

backend_test!(
    an_erasure_killed_at_any_moment_is_complete_or_not_done_and_finishes_when_asked_again,
    |t: TestDb| async move {
        let url = t.url().to_owned();
        let (outbox, mail) = crate::common::outbox()?;
        let mut people = Vec::new();
        for n in 0..3 {
            let output = cairn_in(
                &url,
                &[
                    "org",
                    "bootstrap",
                    "--request",
                    "-",
                    "--wait",
                    "--mail-url",
                    &mail,
                ],
                &[],
                Some(&bootstrap_request(&format!("killed-erasure-{n}"))),
            )
            .await;
            assert_exit(&output, 0);
        }
        let output = cairn_in(
            &url,
            &["events", "list", "--json", "--limit", "1000"],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        for event in json_of(&output).as_array().into_iter().flatten() {
            if event["event_type"] == "user.invited" || event["event_type"] == "user.created" {
                people.push(event["stream_id"].as_str().unwrap_or_default().to_owned());
            }
        }
        assert_eq!(people.len(), 9, "three organizations of three people");

        let mut completed = 0;
        for (n, person) in people.iter().enumerate() {
            let mut child = cairn_tokio()
                .arg("--database-url")
                .arg(&url)
                .args([
                    "--mail-url",
                    &mail,
                    "subjects",
                    "erase",
                    person,
                    "--reason",
                    "killed",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            // Kill at a different moment each time: before, during and after the unit.
            tokio::time::sleep(std::time::Duration::from_millis(20 + 15 * n as u64)).await;
            let pid = child.id().unwrap_or_default().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            let _ = child.wait().await;
            let parts = erasure_parts(&t, person).await?;
            assert!(
                parts == (true, true, true) || parts == (false, false, false),
                "person {person}: key erased {}, event {}, row {}",
                parts.0,
                parts.1,
                parts.2
            );
            completed += usize::from(parts.0);
        }
        eprintln!("{completed} of 9 erasures completed before their kill");

        // Asked again, each finishes (or returns its first receipt), and no file of
        // theirs is left.
        for person in &people {
            let output = cairn_in(
                &url,
                &[
                    "--mail-url",
                    &mail,
                    "subjects",
                    "erase",
                    person,
                    "--reason",
                    "again",
                    "--json",
                ],
                &[],
                None,
            )
            .await;
            assert_exit(&output, 0);
            assert_eq!(erasure_parts(&t, person).await?, (true, true, true));
        }
        for entry in std::fs::read_dir(outbox.path())?.filter_map(Result::ok) {
            let mail = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for address in ["grace@example.com", "alan@example.org", "ada@example.com"] {
                assert!(!mail.contains(address), "{}", entry.path().display());
            }
        }
        Ok(())
    }
);

backend_test!(
    an_append_at_the_command_line_answers_with_its_personal_fields_opened_never_sealed,
    |t: TestDb| async move {
        let url = t.url().to_owned();
        let person = cairn_types::UserId::new_v7().to_string();
        let org = cairn_types::OrgId::new_v7().to_string();
        let data = serde_json::json!({
            "org_id": org,
            "email": "lise.meitner@example.at",
            "name": "Lise Meitner",
            "roles": ["viewer"],
            "invitation_id": cairn_types::InvitationId::new_v7(),
            "invited_by": null,
        })
        .to_string();
        let args = [
            "events",
            "append",
            "--stream-type",
            "user",
            "--stream-id",
            &person,
            "--type",
            "user.invited",
            "--data",
            &data,
            "--metadata",
            &format!(r#"{{"org_id": "{org}"}}"#),
            "--idempotency-key",
            "invite-lise",
        ];
        for attempt in ["first", "repeated"] {
            let output = cairn_in(&url, &args, &[], None).await;
            assert_exit(&output, 0);
            let echoed = json_of(&output);
            let event = &echoed[0];
            assert_eq!(
                event["event_data"]["email"], "lise.meitner@example.at",
                "{attempt}: {event}"
            );
            assert_eq!(
                event["event_data"]["name"], "Lise Meitner",
                "{attempt}: {event}"
            );
            assert!(
                !stdout(&output).contains("$sealed"),
                "{attempt}: {}",
                stdout(&output)
            );
        }
        // Stored sealed all the same.
        let mut reader = t.db().reader().await?;
        let stored = reader
            .conn()
            .read_events(&cairn_log::EventFilter::default())
            .await?;
        assert!(
            stored[0].data["email"]["$sealed"].is_string(),
            "{:?}",
            stored[0].data
        );
        // The repeated request returned the first one's data: a read, on record.
        let access = cairn_in(
            &url,
            &["audit", "access", "--subject", &person, "--json"],
            &[],
            None,
        )
        .await;
        assert_exit(&access, 0);
        let records = json_of(&access);
        assert_eq!(records.as_array().map(Vec::len), Some(1), "{records}");
        Ok(())
    }
);

backend_test!(
    a_person_restricted_at_the_command_line_is_erased_by_the_server_when_the_period_ends,
    |t: TestDb| async move {
        let url = t.url().to_owned();
        let (outbox, mail) = crate::common::outbox()?;
        let output = cairn_in(
            &url,
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
            Some(&bootstrap_request("restricted-cli")),
        )
        .await;
        assert_exit(&output, 0);
        let output = cairn_in(&url, &["events", "list", "--json"], &[], None).await;
        assert_exit(&output, 0);
        let grace = invited_user(&json_of(&output), "grace@example.com");

        // Bad times: not a time at all (clap's exit 2, naming the value), or past.
        let output = cairn_in(
            &url,
            &[
                "subjects",
                "restrict",
                &grace,
                "--reason",
                "kept",
                "--erase-at",
                "soon",
            ],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("\"soon\" is not a time"),
            "{}",
            stderr(&output)
        );
        let output = cairn_in(
            &url,
            &[
                "subjects",
                "restrict",
                &grace,
                "--reason",
                "kept",
                "--erase-at",
                "2020-01-01",
            ],
            &[],
            None,
        )
        .await;
        assert!(!output.status.success());
        assert!(stderr(&output).contains("erase_at"), "{}", stderr(&output));

        // Restricted until a few seconds from now.
        let erase_at = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
        let output = cairn_in(
            &url,
            &[
                "subjects",
                "restrict",
                &grace,
                "--reason",
                "records kept",
                "--erase-at",
                &erase_at,
            ],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        assert!(
            stdout(&output).contains("restricted at"),
            "{}",
            stdout(&output)
        );
        let output = cairn_in(&url, &["subjects", "show", &grace], &[], None).await;
        assert_exit(&output, 0);
        assert!(
            stdout(&output).contains("restricted"),
            "{}",
            stdout(&output)
        );
        let output = cairn_in(&url, &["events", "list", "--json"], &[], None).await;
        let text = stdout(&output);
        assert!(!text.contains("grace@example.com"), "{text}");
        assert!(text.contains("\"withheld\": \"restricted\""), "{text}");

        // Disclosed for a legal claim: without a reason, nothing; with one, every field
        // of hers, opened, and the read on record as the operator's.
        let output = cairn_in(
            &url,
            &["subjects", "disclose", &grace, "--reason", " "],
            &[],
            None,
        )
        .await;
        assert!(!output.status.success());
        assert!(stderr(&output).contains("reason"), "{}", stderr(&output));
        let output = cairn_in(
            &url,
            &["subjects", "disclose", &grace, "--reason", "claim 2026-114"],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        let shown = stdout(&output);
        assert!(shown.contains("(restricted)"), "{shown}");
        assert!(shown.contains("grace@example.com"), "{shown}");
        let output = cairn_in(
            &url,
            &[
                "subjects",
                "disclose",
                &grace,
                "--reason",
                "claim 2026-115",
                "--json",
            ],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        let disclosure = json_of(&output);
        assert!(
            disclosure["fields"]
                .as_array()
                .is_some_and(|fields| fields.iter().any(|f| f["value"] == "grace@example.com")),
            "{disclosure}"
        );
        let output = cairn_in(
            &url,
            &["audit", "access", "--subject", &grace, "--json"],
            &[],
            None,
        )
        .await;
        assert_exit(&output, 0);
        let records = json_of(&output);
        let claims: Vec<&serde_json::Value> = records
            .as_array()
            .map(|records| {
                records
                    .iter()
                    .filter(|r| {
                        r["resource"]
                            .as_str()
                            .is_some_and(|r| r.contains("claim 2026-11"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(claims.len(), 2, "{records}");
        assert!(claims.iter().all(|r| r["via"] == "cli"), "{records}");
        let output = cairn_in(&url, &["events", "list", "--json"], &[], None).await;
        assert!(
            !stdout(&output).contains("grace@example.com"),
            "still withheld from every other read"
        );

        // A server's engine wakes the run when the period ends, and erases her.
        let server = crate::common::server::Server::start(&url, &mail).await?;
        let started = tokio::time::Instant::now();
        let status = loop {
            let output = cairn_in(&url, &["subjects", "show", &grace, "--json"], &[], None).await;
            assert_exit(&output, 0);
            let status = json_of(&output);
            if status["state"] == "erased" || started.elapsed() > std::time::Duration::from_secs(30)
            {
                break status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        drop(server);
        assert_eq!(status["state"], "erased", "{status}");
        assert_eq!(status["restriction"]["reason"], "records kept");
        assert!(
            status["erasure"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("records kept")),
            "{status}"
        );
        let started = tokio::time::Instant::now();
        loop {
            let left = std::fs::read_dir(outbox.path())?
                .filter_map(Result::ok)
                .filter(|entry| {
                    std::fs::read_to_string(entry.path())
                        .is_ok_and(|mail| mail.contains("grace@example.com"))
                })
                .count();
            if left == 0 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{left} emails to her are left in the outbox"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }
);
