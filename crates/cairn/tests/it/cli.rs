//! The command line as a process, on both backends: what it prints, what it refuses,
//! and its exit codes (0 fine, 1 a check found a problem, 2 an error).

use cairn_testkit::{Backend, TestDb, backend_test};
use expect_test::expect;
use serde_json::{Value, json};

use crate::common::{
    append, assert_exit, cairn, cairn_in, json_of, new_id, outbox, redact, stderr, stdout,
};

async fn n_events(url: &str) -> usize {
    let output = cairn(url, &["events", "list", "--json"]).await;
    assert_exit(&output, 0);
    json_of(&output).as_array().map_or(0, Vec::len)
}

backend_test!(
    append_prints_the_stored_event_with_its_outcome,
    |t: TestDb| async move {
        let stream = new_id();
        let correlation = new_id();
        let metadata = json!({"correlation_id": correlation, "source": "import"}).to_string();
        let output = cairn(
            t.url(),
            &[
                "events",
                "append",
                "--stream-type",
                "test",
                "--stream-id",
                &stream,
                "--type",
                "test.pinged",
                "--data",
                r#"{"n": 1, "tags": ["a"]}"#,
                "--metadata",
                &metadata,
                "--expected-version",
                "0",
            ],
        )
        .await;
        assert_exit(&output, 0);
        let events = json_of(&output);
        let event = &events[0];
        assert_eq!(event["position"], json!(1));
        assert_eq!(event["stream_type"], json!("test"));
        assert_eq!(event["stream_id"], json!(stream));
        assert_eq!(event["stream_version"], json!(1));
        assert_eq!(event["event_type"], json!("test.pinged"));
        assert_eq!(event["event_data"], json!({"n": 1, "tags": ["a"]}));
        assert_eq!(
            event["event_metadata"]["correlation_id"],
            json!(correlation)
        );
        assert_eq!(event["event_metadata"]["source"], json!("import"));
        assert_eq!(event["event_metadata"]["actor"], json!("service:cairn-cli"));
        assert_eq!(
            event["outcome"],
            json!("skipped"),
            "test is an administrative no-op route"
        );
        assert_eq!(event["processing_error"], Value::Null);
        assert!(event["processed_at"].is_string());
        assert_eq!(event["hash"].as_str().map(str::len), Some(64));
        Ok(())
    }
);

backend_test!(
    a_failed_event_is_stored_and_reported,
    |t: TestDb| async move {
        let output = append(t.url(), "gadget", &new_id(), "gadget.made", "{}").await;
        let event = &json_of(&output)[0];
        assert_eq!(event["outcome"], json!("failed"));
        assert_eq!(event["code"], json!("P9002"));
        assert_eq!(event["processing_error"]["code"], json!("P9002"));
        assert!(
            stderr(&output).contains("warning: event 1 was stored but not applied: P9002"),
            "{}",
            stderr(&output)
        );

        let listed = cairn(t.url(), &["events", "list", "--failed", "--json"]).await;
        assert_eq!(json_of(&listed).as_array().map(Vec::len), Some(1));
        let human = cairn(t.url(), &["events", "list"]).await;
        assert!(
            stdout(&human).contains("failed P9002"),
            "{}",
            stdout(&human)
        );
        assert!(
            stdout(&human).contains("1 event, 1 failed"),
            "{}",
            stdout(&human)
        );

        let human = cairn(t.url(), &["status"]).await;
        assert_exit(&human, 0);
        expect![[r#"
            database [database]
            head     1 event (hash [hash]…)
            failed   1 (P9002 ×1)  → cairn events list --failed
        "#]]
        .assert_eq(&redact(&stdout(&human)));
        let status = cairn(t.url(), &["status", "--json"]).await;
        let status = json_of(&status);
        assert_eq!(status["failed_events"], json!(1));
        assert_eq!(status["failed_by_code"], json!({"P9002": 1}));
        assert_eq!(status["backend"], json!(t.backend().as_str()));

        let retried = cairn(t.url(), &["events", "retry", "1"]).await;
        assert_exit(&retried, 1);
        assert!(
            stdout(&retried).contains("event 1 (gadget.made) failed again: P9002"),
            "{}",
            stdout(&retried)
        );
        let all = cairn(
            t.url(),
            &[
                "events",
                "retry",
                "--all-failed",
                "--code",
                "P9002",
                "--json",
            ],
        )
        .await;
        assert_exit(&all, 1);
        assert_eq!(json_of(&all)["n_retried"], json!(1));
        Ok(())
    }
);

backend_test!(
    bad_input_is_refused_with_a_clear_error_and_nothing_written,
    |t: TestDb| async move {
        let stream = new_id();
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    &stream,
                    "--type",
                    "test.pinged",
                    "--data",
                    "{bad",
                ],
                "error: --data is not valid JSON: key must be a string at line 1 column 2",
            ),
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    &stream,
                    "--type",
                    "Test.Pinged",
                    "--data",
                    "{}",
                ],
                "event type \"Test.Pinged\": level 1 (\"Test\") has upper-case letters",
            ),
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    &stream,
                    "--type",
                    "pinged",
                    "--data",
                    "{}",
                ],
                "event type \"pinged\" has one level",
            ),
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    "acme",
                    "--type",
                    "test.pinged",
                    "--data",
                    "{}",
                ],
                "\"acme\" is not a valid stream id",
            ),
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    &stream,
                    "--type",
                    "test.pinged",
                    "--data",
                    "{}",
                    "--metadata",
                    r#"{"org_id": "acme"}"#,
                ],
                "error: --metadata: metadata.org_id: \"acme\" is not a valid organization id",
            ),
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    &stream,
                    "--type",
                    "test.pinged",
                    "--data",
                    r#"{"x": "a\u0000b"}"#,
                ],
                "event_data.x: the string contains a NUL character",
            ),
            (
                &[
                    "--stream-type",
                    "test",
                    "--stream-id",
                    &stream,
                    "--type",
                    "test.pinged",
                    "--data",
                    "{}",
                    "--idempotency-key",
                    "two words",
                ],
                "idempotency key \"two words\" is not valid",
            ),
        ];
        for (args, message) in cases {
            let mut full = vec!["events", "append"];
            full.extend_from_slice(args);
            let output = cairn(t.url(), &full).await;
            assert_exit(&output, 2);
            assert!(
                stderr(&output).contains(message),
                "for {args:?}, stderr was:\n{}",
                stderr(&output)
            );
            assert!(stdout(&output).is_empty());
        }
        assert_eq!(n_events(t.url()).await, 0, "nothing was written");

        append(t.url(), "test", &stream, "test.pinged", "{}").await;
        let conflict = cairn(
            t.url(),
            &[
                "events",
                "append",
                "--stream-type",
                "test",
                "--stream-id",
                &stream,
                "--type",
                "test.pinged",
                "--data",
                "{}",
                "--expected-version",
                "0",
            ],
        )
        .await;
        assert_exit(&conflict, 2);
        assert!(
            stderr(&conflict).contains(&format!(
                "error: stream {stream}: expected no stream (version 0), found version 1"
            )),
            "{}",
            stderr(&conflict)
        );
        assert_eq!(n_events(t.url()).await, 1);
        Ok(())
    }
);

backend_test!(
    idempotency_key_on_the_command_line,
    |t: TestDb| async move {
        let stream = new_id();
        let args = [
            "events",
            "append",
            "--stream-type",
            "test",
            "--stream-id",
            &stream,
            "--type",
            "test.pinged",
            "--data",
            "{}",
            "--idempotency-key",
            "import-7",
        ];
        let first = cairn(t.url(), &args).await;
        let again = cairn(t.url(), &args).await;
        assert_exit(&again, 0);
        assert_eq!(
            json_of(&first)[0]["event_id"],
            json!(json_of(&again)[0]["event_id"])
        );
        assert!(
            stderr(&again).contains("used before with the same request"),
            "{}",
            stderr(&again)
        );
        assert_eq!(n_events(t.url()).await, 1);
        Ok(())
    }
);

backend_test!(
    show_finds_an_event_by_id_or_position,
    |t: TestDb| async move {
        let output = append(t.url(), "test", &new_id(), "test.pinged", r#"{"n": 7}"#).await;
        let event_id = json_of(&output)[0]["event_id"]
            .as_str()
            .map(str::to_owned)
            .expect("an id");
        let by_position = json_of(&cairn(t.url(), &["events", "show", "1", "--json"]).await);
        let by_id = json_of(&cairn(t.url(), &["events", "show", &event_id, "--json"]).await);
        assert_eq!(by_position, by_id);
        assert_eq!(by_id["event_data"], json!({"n": 7}));
        let human = cairn(t.url(), &["events", "show", "1"]).await;
        let text = stdout(&human);
        let header = format!("event {event_id}  position 1");
        for expected in [header.as_str(), "test.pinged", "processed at", "\"n\": 7"] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let missing = cairn(t.url(), &["events", "show", "9"]).await;
        assert_exit(&missing, 2);
        assert!(stderr(&missing).contains("there is no event at position 9"));
        let bad = cairn(t.url(), &["events", "show", "nine"]).await;
        assert_exit(&bad, 2);
        assert!(stderr(&bad).contains("\"nine\" is neither an event id (a UUID) nor a position"));
        Ok(())
    }
);

backend_test!(
    audit_verify_names_the_first_bad_position,
    |t: TestDb| async move {
        for n in 0..4 {
            append(
                t.url(),
                "test",
                &new_id(),
                "test.pinged",
                &format!(r#"{{"n": {n}}}"#),
            )
            .await;
        }
        let intact = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&intact, 0);
        expect![[r#"
            ✓ hash chain intact: 4 events, head at position 4
              the chain is consistent with itself; only a signed checkpoint (--checkpoint) shows it was not rewritten with every hash recomputed
            ✓ access log intact: 0 records, head at record 0
        "#]].assert_eq(&redact(&stdout(&intact)));

        let mut tx = t.db().begin().await?;
        let mut conn = tx.conn();
        match t.backend() {
            Backend::Sqlite => {
                conn.execute_script("DROP TRIGGER domain_events_immutable")
                    .await?;
                conn.execute_script(
                    "UPDATE domain_events SET event_data = '{\"n\":99}' WHERE position = 3",
                )
                .await?;
            }
            Backend::Postgres => {
                conn.execute_script("ALTER TABLE domain_events DISABLE TRIGGER USER")
                    .await?;
                conn.execute_script(
                    "UPDATE domain_events SET event_data = '{\"n\":99}' WHERE position = 3",
                )
                .await?;
            }
        }
        tx.commit().await?;

        let broken = cairn(t.url(), &["audit", "verify"]).await;
        assert_exit(&broken, 1);
        expect![[r#"
            ✗ hash chain broken at position 3: stored hash [hash] but the event and the chain before it hash to [hash]: the event was edited or moved
              2 events before it check out
            ✓ access log intact: 0 records, head at record 0
        "#]].assert_eq(&redact(&stdout(&broken)));
        let json = json_of(&cairn(t.url(), &["audit", "verify", "--json"]).await);
        assert_eq!(json["breach"]["position"], json!(3));
        assert_eq!(json["breach"]["problem"], json!("hash_mismatch"));
        assert_eq!(json["n_checked"], json!(2));
        Ok(())
    }
);

backend_test!(
    replay_and_verify_run_on_the_command_line,
    |t: TestDb| async move {
        append(t.url(), "test", &new_id(), "test.pinged", "{}").await;
        let replayed = cairn(t.url(), &["replay", "--json"]).await;
        assert_exit(&replayed, 0);
        assert_eq!(json_of(&replayed)["n_events"], json!(1));
        let verified = cairn(t.url(), &["replay", "--verify"]).await;
        assert_exit(&verified, 0);
        expect![[r#"
            rebuilt 10 projection tables from 1 event into a shadow copy and compared it with the live tables:
              ✓ dispatch_paused_routes          0 live         0 rebuilt
              ✓ stream_holds                    0 live         0 rebuilt
              ✓ workflow_kind_pauses            0 live         0 rebuilt
              ✓ workflow_runs                   0 live         0 rebuilt
              ✓ workflow_steps                  0 live         0 rebuilt
              ✓ organizations                   0 live         0 rebuilt
              ✓ users                           0 live         0 rebuilt
              ✓ role_assignments                0 live         0 rebuilt
              ✓ invitations                     0 live         0 rebuilt
              ✓ probe_pings                     0 live         0 rebuilt
            ✓ the projections are exactly what the log produces
        "#]].assert_eq(&redact(&stdout(&verified)));
        Ok(())
    }
);

backend_test!(
    bench_append_reports_every_scenario,
    |t: TestDb| async move {
        let output = cairn(t.url(), &["bench", "append", "--seconds", "0.3", "--json"]).await;
        assert_exit(&output, 0);
        let report = json_of(&output);
        assert_eq!(report["backend"], json!(t.backend().as_str()));
        let default_mode = match t.backend() {
            Backend::Sqlite => "savepoints",
            Backend::Postgres => "optimistic",
        };
        assert_eq!(report["mode"], json!(default_mode));
        let scenarios = report["scenarios"].as_array().expect("scenarios");
        let names: Vec<&str> = scenarios
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "single event, 1 writer",
                "single event, 8 writers",
                "single event, 64 writers",
                "batch of 100, 1 writer",
                "replay",
                "contracts check-log",
                "replay --verify"
            ]
        );
        for scenario in scenarios {
            assert!(scenario["events"].as_u64() > Some(0), "{scenario}");
            assert!(
                scenario["events_per_second"].as_f64() > Some(0.0),
                "{scenario}"
            );
        }
        for scenario in &scenarios[..4] {
            assert!(
                scenario["p50_ms"].as_f64() <= scenario["p99_ms"].as_f64(),
                "{scenario}"
            );
        }
        let appended: u64 = scenarios[..4]
            .iter()
            .filter_map(|s| s["events"].as_u64())
            .sum();
        assert_eq!(
            scenarios[4]["events"].as_u64(),
            Some(appended),
            "replay covers every appended event"
        );
        assert_eq!(
            scenarios[5]["events"].as_u64(),
            Some(appended),
            "the log check reads every appended event"
        );
        assert_eq!(
            scenarios[6]["events"].as_u64(),
            Some(appended),
            "replay --verify rebuilds every appended event"
        );

        // Chosen writer counts and batch, the other write mode, no replay.
        let other_mode = match t.backend() {
            Backend::Sqlite => "optimistic",
            Backend::Postgres => "savepoints",
        };
        let output = cairn(
            t.url(),
            &[
                "bench",
                "append",
                "--seconds",
                "0.2",
                "--writers",
                "2,4",
                "--batch",
                "10",
                "--mode",
                other_mode,
                "--no-replay",
                "--json",
            ],
        )
        .await;
        assert_exit(&output, 0);
        let report = json_of(&output);
        assert_eq!(report["mode"], json!(other_mode));
        let shapes: Vec<(u64, u64)> = report["scenarios"]
            .as_array()
            .expect("scenarios")
            .iter()
            .map(|s| {
                (
                    s["writers"].as_u64().unwrap_or(0),
                    s["events_per_append"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(shapes, [(2, 10), (4, 10)]);

        // A writer count that makes no sense is refused, saying which.
        let output = cairn(t.url(), &["bench", "append", "--writers", "8,0"]).await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("--writers takes counts from 1 to 1024, not 0"),
            "{}",
            stderr(&output)
        );
        assert_eq!(
            n_events(t.url()).await,
            0,
            "the benchmark leaves the database as it found it"
        );
        Ok(())
    }
);

#[test]
fn with_no_configuration_data_lives_in_cairn_data() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = crate::common::cairn_std()
        .args(["status", "--json"])
        .current_dir(dir.path())
        .env_remove("CAIRN_DATABASE_URL")
        .output()
        .expect("cairn runs");
    assert_exit(&output, 0);
    assert_eq!(
        json_of(&output)["database"],
        json!("sqlite://cairn-data/cairn.db")
    );
    assert!(dir.path().join("cairn-data/cairn.db").exists());
}

#[test]
fn an_unsupported_database_url_says_what_is_supported() {
    let output = crate::common::cairn_std()
        .args(["--database-url", "mysql://root@localhost/cairn", "status"])
        .output()
        .expect("cairn runs");
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains(
            "database URL \"mysql://root@localhost/cairn\" is not supported: use sqlite://PATH"
        ),
        "{}",
        stderr(&output)
    );
}

backend_test!(
    trace_shows_a_requests_whole_path_and_fails_on_an_unknown_id,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let demo = cairn_in(t.url(), &["--mail-url", &mail, "demo", "--json"], &[], None).await;
        assert_exit(&demo, 0);
        fn first_correlation(value: &Value) -> Option<String> {
            match value {
                Value::Object(map) => map
                    .get("correlation_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| map.values().find_map(first_correlation)),
                Value::Array(items) => items.iter().find_map(first_correlation),
                _ => None,
            }
        }
        let correlation =
            first_correlation(&json_of(&demo)).expect("the demo names its correlation id");

        let shown = cairn(t.url(), &["trace", &correlation]).await;
        assert_exit(&shown, 0);
        expect![[r#"
            trace [uuid]  35 hops · [duration] · no errors
              started [time]
              ✓ +[duration]            event     organization.bootstrap.initiated #1
              ✓ +[duration]            workflow  organization_bootstrap started
              ✓ +[duration] [duration]  step      organization_bootstrap › create_organization
              ✓ +[duration]            event     organization.created #3
              ✓ +[duration] [duration]  step      organization_bootstrap › create_admin
              ✓ +[duration]            event     user.created #5
              ✓ +[duration]            event     user.role_assigned #6
              ✓ +[duration] [duration]  step      organization_bootstrap › invite:[uuid]
              ✓ +[duration]            event     user.invited #8
              ✓ +[duration] [duration]  step      organization_bootstrap › invite:[uuid]
              ✓ +[duration]            event     user.invited #10
              ✓ +[duration] [duration]  step      organization_bootstrap › send_invitation:[uuid]
              ✓ +[duration] [duration]  email     invitation email to user [uuid]
              ✓ +[duration] [duration]  step      organization_bootstrap › record_invitation:[uuid]
              ✓ +[duration]            event     invitation.sent #14
              ✓ +[duration]            workflow  invitation_expiry …[id] started
              ✓ +[duration] [duration]  step      organization_bootstrap › send_invitation:[uuid]
              ✓ +[duration] [duration]  email     invitation email to user [uuid]
              ✓ +[duration] [duration]  step      organization_bootstrap › record_invitation:[uuid]
              ✓ +[duration]            event     invitation.sent #19
              ✓ +[duration]            workflow  invitation_expiry …[id] started
              ✓ +[duration] [duration]  step      organization_bootstrap › send_invitation:[uuid]
              ✓ +[duration] [duration]  email     invitation email to user [uuid]
              ✓ +[duration] [duration]  step      organization_bootstrap › record_invitation:[uuid]
              ✓ +[duration]            event     invitation.sent #24
              ✓ +[duration]            workflow  invitation_expiry …[id] started
              ✓ +[duration] [duration]  step      organization_bootstrap › complete
              ✓ +[duration]            event     organization.bootstrap.completed #27
              ✓ +[duration]            workflow  organization_bootstrap completed
              ✓ +[duration] [duration]  step      invitation_expiry …[id] › check:1
              ◷ +[duration]            timer     invitation_expiry …[id] › sleeps on wait:1 until [time]
              ✓ +[duration] [duration]  step      invitation_expiry …[id] › check:1
              ◷ +[duration]            timer     invitation_expiry …[id] › sleeps on wait:1 until [time]
              ✓ +[duration] [duration]  step      invitation_expiry …[id] › check:1
              ◷ +[duration]            timer     invitation_expiry …[id] › sleeps on wait:1 until [time]
        "#]].assert_eq(&redact(&stdout(&shown)));
        let json = cairn(t.url(), &["trace", &correlation, "--json"]).await;
        assert_exit(&json, 0);
        let timeline = json_of(&json);
        assert_eq!(timeline["correlation_id"], correlation);
        assert_eq!(timeline["errors"], 0);
        let entries = timeline["entries"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() > 20, "{} entries", entries.len());
        // Spans are written in batches in the background: the process's last ones (the
        // final events' handlers) must still have been written before it exited.
        let emails = entries.iter().filter(|e| e["hop"] == "email").count();
        assert_eq!(emails, 3, "one span per email");
        let events: Vec<&Value> = entries.iter().filter(|e| e["hop"] == "event").collect();
        assert!(!events.is_empty());
        for event in events {
            assert!(
                event["detail"]["handler"] == "applied"
                    && event["detail"]["processed_at"].is_string(),
                "every event says how its handler did, and when: {event}"
            );
        }

        let unknown = cairn(t.url(), &["trace", &new_id()]).await;
        assert_exit(&unknown, 2);
        assert!(
            stderr(&unknown).contains("nothing in"),
            "{}",
            stderr(&unknown)
        );
        let malformed = cairn(t.url(), &["trace", "yesterday"]).await;
        assert_exit(&malformed, 2);
        assert!(
            stderr(&malformed).contains("correlation id"),
            "{}",
            stderr(&malformed)
        );
        Ok(())
    }
);

backend_test!(
    bench_realtime_measures_every_delivery_with_1_and_100_subscribers,
    |t: TestDb| async move {
        let output = cairn(
            t.url(),
            &["bench", "realtime", "--seconds", "0.3", "--json"],
        )
        .await;
        assert_exit(&output, 0);
        let report = json_of(&output);
        assert_eq!(report["backend"], json!(t.backend().as_str()));
        let scenarios = report["scenarios"].as_array().expect("scenarios");
        let subscribers: Vec<u64> = scenarios
            .iter()
            .filter_map(|s| s["subscribers"].as_u64())
            .collect();
        assert_eq!(subscribers, [1, 100]);
        for scenario in scenarios {
            let commands = scenario["commands"].as_u64().unwrap_or(0);
            assert!(commands > 0, "{scenario}");
            assert_eq!(
                scenario["deliveries"].as_u64(),
                Some(commands * scenario["subscribers"].as_u64().unwrap_or(0)),
                "every subscriber got every event: {scenario}"
            );
            assert_eq!(scenario["missing"], 0);
            assert_eq!(scenario["duplicates"], 0);
            let (p50, p99, max) = (
                scenario["p50_ms"].as_f64().unwrap_or(-1.0),
                scenario["p99_ms"].as_f64().unwrap_or(-1.0),
                scenario["max_ms"].as_f64().unwrap_or(-1.0),
            );
            assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{scenario}");
        }
        assert_eq!(
            n_events(t.url()).await,
            0,
            "the benchmark leaves the database as it found it"
        );
        Ok(())
    }
);

backend_test!(
    bench_http_loads_a_serve_process_and_reports_its_memory,
    |t: TestDb| async move {
        let output = cairn(
            t.url(),
            &[
                "bench",
                "http",
                "--seconds",
                "0.5",
                "--read-connections",
                "4",
                "--command-connections",
                "8",
                "--json",
            ],
        )
        .await;
        assert_exit(&output, 0);
        let report = json_of(&output);
        let scenarios = report["scenarios"].as_array().expect("scenarios");
        let names: Vec<&str> = scenarios
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "authenticated read",
                "authenticated read of people (users)",
                "command (direct-care settings)"
            ]
        );
        for scenario in scenarios {
            assert!(scenario["requests"].as_u64() > Some(0), "{scenario}");
            assert_eq!(scenario["errors"].as_u64(), Some(0), "{scenario}");
        }
        assert_eq!(scenarios[0]["connections"].as_u64(), Some(4));
        assert!(
            report["server_peak_rss_mib"].as_f64() > Some(1.0),
            "{report}"
        );

        let output = cairn(t.url(), &["bench", "http", "--read-connections", "0"]).await;
        assert_exit(&output, 2);
        assert!(
            stderr(&output).contains("--read-connections takes 1 to 1024 connections, not 0"),
            "{}",
            stderr(&output)
        );
        Ok(())
    }
);

// Issue "Through outages and mistakes", as a new user tried it: an event appended
// before its organization fails; the organization is appended; the failed event is
// retried. `replay --verify` used to report drift, since replay applied the retried
// event at its own position, before the organization existed.
backend_test!(
    a_retry_after_the_fix_replays_the_same,
    |t: TestDb| async move {
        let org = new_id();
        let settings = r#"{"settings": {"visit_verification": true, "client_assignment": false, "max_caseload": 5}}"#;
        let first = append(
            t.url(),
            "organization",
            &org,
            "organization.direct_care_settings_updated",
            settings,
        )
        .await;
        assert!(stderr(&first).contains("P9003"), "{}", stderr(&first));
        append(
            t.url(),
            "organization",
            &org,
            "organization.created",
            r#"{"name": "Acme", "slug": "acme", "sender_domain": "acme.example", "sender_address": "noreply@acme.example",
                "direct_care_settings": {"visit_verification": false, "client_assignment": false, "max_caseload": 1}}"#,
        )
        .await;
        let retried = cairn(t.url(), &["events", "retry", "1"]).await;
        assert_exit(&retried, 0);
        assert!(
            stdout(&retried)
                .contains("event 1 (organization.direct_care_settings_updated) is now processed")
        );
        let verified = cairn(t.url(), &["replay", "--verify", "--json"]).await;
        assert_exit(&verified, 0);
        let report = json_of(&verified);
        assert_eq!(report["drift"], json!([]), "{report:#}");
        assert_eq!(report["outcome_changes"], json!([]), "{report:#}");
        // The retry is in the log, after the organization.
        let listed = cairn(t.url(), &["events", "list", "--json"]).await;
        let types: Vec<Value> = json_of(&listed)
            .as_array()
            .map(|events| events.iter().map(|e| e["event_type"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            types,
            [
                json!("organization.direct_care_settings_updated"),
                json!("organization.created"),
                json!("dispatch.event_retried")
            ]
        );
        Ok(())
    }
);

// Holds, skips and pauses at the command line, with their refusals.
backend_test!(
    held_streams_skips_and_pauses_at_the_command_line,
    |t: TestDb| async move {
        let person = new_id();
        let org = new_id();
        let activated = format!(r#"{{"org_id": "{org}", "invitation_id": "{}"}}"#, new_id());
        append(t.url(), "user", &person, "user.activated", &activated).await;
        let created =
            format!(r#"{{"org_id": "{org}", "email": "held@example.com", "name": "Held"}}"#);
        let held = append(t.url(), "user", &person, "user.created", &created).await;
        assert_eq!(json_of(&held)[0]["held_behind"], json!(1));

        let listed = cairn(t.url(), &["streams", "held", "--json"]).await;
        assert_exit(&listed, 0);
        let streams = json_of(&listed);
        assert_eq!(streams[0]["stream_id"], json!(person), "{streams:#}");
        assert_eq!(streams[0]["n_held"], json!(1));
        let status = cairn(t.url(), &["status"]).await;
        assert_exit(&status, 0);
        expect![[r#"
            database [database]
            head     2 events (hash [hash]…)
            failed   1 (P9003 ×1)  → cairn events list --failed
            held     1 stream (1 event waiting)  → cairn streams held
        "#]]
        .assert_eq(&redact(&stdout(&status)));

        // A held event is not retried directly; a skip needs a reason.
        let refused = cairn(t.url(), &["events", "retry", "2"]).await;
        assert_exit(&refused, 2);
        assert!(
            stderr(&refused).contains("held behind position 1"),
            "{}",
            stderr(&refused)
        );
        let no_reason = cairn(t.url(), &["events", "skip", "1", "--reason", "  "]).await;
        assert_exit(&no_reason, 2);
        assert!(
            stderr(&no_reason).contains("reason"),
            "{}",
            stderr(&no_reason)
        );
        let skipped = cairn(
            t.url(),
            &[
                "events",
                "skip",
                "1",
                "--reason",
                "activated before created",
            ],
        )
        .await;
        assert_exit(&skipped, 0);
        let listed = cairn(t.url(), &["streams", "held", "--json"]).await;
        assert_eq!(json_of(&listed), json!([]));

        // A paused route holds its events until it is resumed.
        let paused = cairn(
            t.url(),
            &[
                "handlers",
                "pause",
                "organization",
                "--reason",
                "maintenance",
                "--json",
            ],
        )
        .await;
        assert_exit(&paused, 0);
        assert_eq!(json_of(&paused)["paused_by"], json!("service:cairn-cli"));
        let twice = cairn(
            t.url(),
            &["handlers", "pause", "organization", "--reason", "again"],
        )
        .await;
        assert_exit(&twice, 2);
        assert!(
            stderr(&twice).contains("already paused"),
            "{}",
            stderr(&twice)
        );
        let waiting = append(
            t.url(),
            "organization",
            &new_id(),
            "organization.created",
            r#"{"name": "Later", "slug": "later", "sender_domain": "later.example", "sender_address": "noreply@later.example",
                "direct_care_settings": {"visit_verification": false, "client_assignment": false, "max_caseload": 1}}"#,
        )
        .await;
        assert!(json_of(&waiting)[0]["held_behind"].is_number());
        let status = cairn(t.url(), &["status"]).await;
        assert_exit(&status, 0);
        expect![[r#"
            database [database]
            head     5 events (hash [hash]…)
            failed   none
            held     1 stream (1 event waiting)  → cairn streams held
            paused   handler route organization by service:cairn-cli since [time]: maintenance  → cairn handlers resume
        "#]].assert_eq(&redact(&stdout(&status)));
        let resumed = cairn(
            t.url(),
            &[
                "handlers",
                "resume",
                "organization",
                "--reason",
                "done",
                "--json",
            ],
        )
        .await;
        assert_exit(&resumed, 0);
        assert_eq!(json_of(&resumed)["n_streams_released"], json!(1));
        let unknown = cairn(t.url(), &["handlers", "pause", "nothing", "--reason", "x"]).await;
        assert_exit(&unknown, 2);
        assert!(
            stderr(&unknown).contains("no handler route"),
            "{}",
            stderr(&unknown)
        );
        let verified = cairn(t.url(), &["replay", "--verify"]).await;
        assert_exit(&verified, 0);
        Ok(())
    }
);

// Projection rows changed without an event: `replay --verify` names each row that
// differs and how, and exits 1.
backend_test!(
    replay_verify_reports_each_row_that_drifted,
    |t: TestDb| async move {
        let organization = |slug: &str| {
            format!(
                r#"{{"name": "{slug} care", "slug": "{slug}", "sender_domain": "{slug}.example", "sender_address": "noreply@{slug}.example",
                    "direct_care_settings": {{"visit_verification": false, "client_assignment": false, "max_caseload": 1}}}}"#
            )
        };
        let (edited, removed) = (new_id(), new_id());
        append(
            t.url(),
            "organization",
            &edited,
            "organization.created",
            &organization("edited"),
        )
        .await;
        append(
            t.url(),
            "organization",
            &removed,
            "organization.created",
            &organization("removed"),
        )
        .await;
        let cast = match t.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => "::uuid",
        };
        let mut tx = t.db().begin().await?;
        tx.conn()
            .execute_script(cairn_log::Sql::built(format!(
                "UPDATE organizations SET name = 'Renamed by hand', status = 'failed' WHERE id = '{edited}'{cast}; \
                 DELETE FROM organizations WHERE id = '{removed}'{cast}"
            )))
            .await?;
        tx.commit().await?;

        let verified = cairn(t.url(), &["replay", "--verify"]).await;
        assert_exit(&verified, 1);
        // The row the log produces is shown as each backend stores it.
        match t.backend() {
            Backend::Sqlite => expect![[r#"
                rebuilt 10 projection tables from 2 events into a shadow copy and compared it with the live tables:
                  ✓ dispatch_paused_routes          0 live         0 rebuilt
                  ✓ stream_holds                    0 live         0 rebuilt
                  ✓ workflow_kind_pauses            0 live         0 rebuilt
                  ✓ workflow_runs                   0 live         0 rebuilt
                  ✓ workflow_steps                  0 live         0 rebuilt
                  ✗ organizations                   1 live         2 rebuilt  2 rows differ
                  ✓ users                           0 live         0 rebuilt
                  ✓ role_assignments                0 live         0 rebuilt
                  ✓ invitations                     0 live         0 rebuilt
                  ✓ probe_pings                     0 live         0 rebuilt
                    organizations {"id":"[uuid]"}: name is "Renamed by hand" live, "edited care" from the log
                    organizations {"id":"[uuid]"}: status is "failed" live, "bootstrapping" from the log
                    organizations {"id":"[uuid]"}: missing from the live table; the log produces {"created_at":"[time]","deactivated_at":null,"direct_care_settings":"{\"client_assignment\":false,\"max_caseload\":1,\"visit_verification\":false}","failure_reason":null,"id":"[uuid]","is_active":1,"name":"removed care","sender_address":"noreply@removed.example","sender_domain":"removed.example","slug":"removed","status":"bootstrapping","updated_at":"[time]","workflow_id":null}
                ✗ 2 rows differ: projections were changed without an event
            "#]],
            Backend::Postgres => expect![[r#"
                rebuilt 10 projection tables from 2 events into a shadow copy and compared it with the live tables:
                  ✓ dispatch_paused_routes          0 live         0 rebuilt
                  ✓ stream_holds                    0 live         0 rebuilt
                  ✓ workflow_kind_pauses            0 live         0 rebuilt
                  ✓ workflow_runs                   0 live         0 rebuilt
                  ✓ workflow_steps                  0 live         0 rebuilt
                  ✗ organizations                   1 live         2 rebuilt  2 rows differ
                  ✓ users                           0 live         0 rebuilt
                  ✓ role_assignments                0 live         0 rebuilt
                  ✓ invitations                     0 live         0 rebuilt
                  ✓ probe_pings                     0 live         0 rebuilt
                    organizations {"id":"[uuid]"}: name is "Renamed by hand" live, "edited care" from the log
                    organizations {"id":"[uuid]"}: status is "failed" live, "bootstrapping" from the log
                    organizations {"id":"[uuid]"}: missing from the live table; the log produces {"created_at":"[time]","deactivated_at":null,"direct_care_settings":{"client_assignment":false,"max_caseload":1,"visit_verification":false},"failure_reason":null,"id":"[uuid]","is_active":true,"name":"removed care","sender_address":"noreply@removed.example","sender_domain":"removed.example","slug":"removed","status":"bootstrapping","updated_at":"[time]","workflow_id":null}
                ✗ 2 rows differ: projections were changed without an event
            "#]],
        }
        .assert_eq(&redact(&stdout(&verified)));
        let report = json_of(&cairn(t.url(), &["replay", "--verify", "--json"]).await);
        assert_eq!(
            report["drift"].as_array().map(Vec::len),
            Some(2),
            "{report:#}"
        );
        Ok(())
    }
);

// Issue 20, point 12: `cairn status | head -2` panicked with "failed printing to
// stdout: Broken pipe". A reader that stops early ends any command quietly.
backend_test!(
    a_reader_that_stops_early_ends_the_command_quietly,
    |t: TestDb| async move {
        for n in 0..3 {
            let output = append(t.url(), "test", &new_id(), "test.pinged", "{}").await;
            assert_exit(&output, 0);
            assert_eq!(json_of(&output)[0]["position"], json!(n + 1));
        }
        for args in [
            &["status"][..],
            &["events", "list"],
            &["events", "list", "--json"],
        ] {
            let mut child = crate::common::cairn_std()
                .args(["--database-url", t.url()])
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            // The reader is gone before the first line is written.
            drop(child.stdout.take());
            let output = child.wait_with_output()?;
            assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
            assert_eq!(stderr(&output), "", "{args:?}");
        }
        Ok(())
    }
);
