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
