//! The event log on both backends: appends, versions, idempotency, immutability, the
//! hash chain and reader safety.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_log::{
    AppendError, AppendRequest, Db, EventFilter, Expected, IdempotencyKey, NewEvent, Prepared,
    Problem, RecordedEvent, args,
};
use cairn_testkit::{Backend, TestDb, backend_test, tamper};
use cairn_types::{EventType, Metadata, Position, StreamId, StreamType, StreamVersion};
use serde_json::{Value, json};

use crate::common::{all_events, append, assert_breach, ping, request};

async fn read_stream(db: &Db, stream_id: StreamId) -> anyhow::Result<Vec<RecordedEvent>> {
    let filter = EventFilter {
        stream_id: Some(stream_id),
        ..EventFilter::default()
    };
    Ok(db.reader().await?.conn().read_events(&filter).await?)
}

backend_test!(
    append_assigns_positions_versions_and_hashes,
    |t: TestDb| async move {
        let db = t.db();
        let stream_a = StreamId::new_v7();
        let stream_b = StreamId::new_v7();
        let first = append(
            db,
            request(stream_a, vec![ping(1), ping(2)]).expect(Expected::NoStream),
        )
        .await?;
        let second = append(db, request(stream_b, vec![ping(3)])).await?;
        let third = append(
            db,
            request(stream_a, vec![ping(4)]).expect(Expected::Exact(StreamVersion::new(2))),
        )
        .await?;

        let positions: Vec<i64> = first
            .iter()
            .chain(&second)
            .chain(&third)
            .map(|e| e.position.get())
            .collect();
        assert_eq!(positions, [1, 2, 3, 4]);
        let versions: Vec<i64> = read_stream(db, stream_a)
            .await?
            .iter()
            .map(|e| e.stream_version.get())
            .collect();
        assert_eq!(versions, [1, 2, 3]);

        let stored = all_events(db).await?;
        let appended: Vec<RecordedEvent> = first.into_iter().chain(second).chain(third).collect();
        assert_eq!(
            stored, appended,
            "what is read back is exactly what append returned"
        );
        assert_eq!(stored[0].event_id.as_uuid().get_version_num(), 7);
        assert_eq!(stored[3].data, json!({"n": 4}));
        let mut hashes: Vec<&str> = stored.iter().map(|e| e.hash.as_str()).collect();
        hashes.dedup();
        assert_eq!(hashes.len(), 4, "every event has its own hash");

        let head = db.reader().await?.conn().head().await?;
        assert_eq!(head.last_position, Position::new(4));
        assert_eq!(head.last_hash, stored[3].hash);
        Ok(())
    }
);

backend_test!(conflict_writes_nothing, |t: TestDb| async move {
    let db = t.db();
    let stream = StreamId::new_v7();
    append(
        db,
        request(stream, vec![ping(1)]).expect(Expected::NoStream),
    )
    .await?;

    let err = append(
        db,
        request(stream, vec![ping(2), ping(3)]).expect(Expected::NoStream),
    )
    .await
    .expect_err("the stream exists");
    assert!(
        matches!(err, AppendError::Conflict { actual, .. } if actual == StreamVersion::new(1)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("stream {stream}: expected no stream (version 0), found version 1")
    );
    let err = append(
        db,
        request(stream, vec![ping(2)]).expect(Expected::Exact(StreamVersion::new(5))),
    )
    .await
    .expect_err("wrong version");
    assert_eq!(
        err.to_string(),
        format!("stream {stream}: expected version 5, found version 1")
    );

    assert_eq!(read_stream(db, stream).await?.len(), 1);
    let head = db.reader().await?.conn().head().await?;
    assert_eq!(
        head.last_position,
        Position::new(1),
        "the head did not move"
    );
    Ok(())
});

backend_test!(a_stream_keeps_its_stream_type, |t: TestDb| async move {
    let db = t.db();
    let stream = StreamId::new_v7();
    append(db, request(stream, vec![ping(1)])).await?;
    let other = AppendRequest::new(StreamType::parse("platform_admin")?, stream, vec![ping(2)]);
    let err = append(db, other).await.expect_err("a stream has one type");
    assert!(
        matches!(err, AppendError::StreamTypeMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("is a \"test\" stream"), "{err}");
    Ok(())
});

backend_test!(an_empty_append_is_refused, |t: TestDb| async move {
    let err = append(t.db(), request(StreamId::new_v7(), vec![]))
        .await
        .expect_err("no events");
    assert!(matches!(err, AppendError::NoEvents));
    Ok(())
});

backend_test!(
    idempotency_key_repeats_the_first_result,
    |t: TestDb| async move {
        let db = t.db();
        let stream = StreamId::new_v7();
        let key = IdempotencyKey::parse("create-widget-42")?;
        let first = append(
            db,
            request(stream, vec![ping(1), ping(2)]).idempotency_key(key.clone()),
        )
        .await?;

        // A client retrying after a timeout sends the same request as a new request.
        let mut retried_events = vec![ping(1), ping(2)];
        for event in &mut retried_events {
            event.metadata = Metadata::new();
        }
        let again = append(
            db,
            request(stream, retried_events).idempotency_key(key.clone()),
        )
        .await?;
        assert_eq!(again, first, "a repeat returns the first result");
        assert_eq!(all_events(db).await?.len(), 2, "and writes nothing");

        let different = append(db, request(stream, vec![ping(7)]).idempotency_key(key)).await;
        let err = different.expect_err("same key, different request");
        assert!(matches!(err, AppendError::KeyReused { .. }), "{err:?}");
        assert_eq!(all_events(db).await?.len(), 2);
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        Ok(())
    }
);

backend_test!(
    events_are_immutable_in_the_database,
    |t: TestDb| async move {
        let db = t.db();
        let stream = StreamId::new_v7();
        append(db, request(stream, vec![ping(1)])).await?;
        let mut tx = db.begin().await?;
        let err = tx
            .conn()
            .execute(
                "UPDATE domain_events SET event_data = $1 WHERE position = 1",
                args![json!({"n": 666})],
            )
            .await
            .expect_err("event_data cannot change");
        assert!(err.to_string().contains("append-only"), "{err}");
        drop(tx);

        let mut tx = db.begin().await?;
        let err = tx
            .conn()
            .execute("DELETE FROM domain_events WHERE position = 1", args![])
            .await
            .expect_err("events cannot be deleted");
        assert!(err.to_string().contains("never deleted"), "{err}");
        drop(tx);

        let mut tx = db.begin().await?;
        let changed = tx
        .conn()
        .execute(
            "UPDATE domain_events SET processing_error_code = 'P9003', processing_error_message = 'x' WHERE position = 1",
            args![],
        )
        .await?;
        assert_eq!(changed, 1, "the processing columns may change");
        tx.rollback().await?;
        assert_eq!(all_events(db).await?[0].data, json!({"n": 1}));
        Ok(())
    }
);

backend_test!(
    the_payload_version_is_stored_hashed_and_immutable,
    |t: TestDb| async move {
        let db = t.db();
        let stream = StreamId::new_v7();
        // One event at the default version, two declaring versions (one of them 1),
        // in one append, and one alone: both write paths of each backend.
        let written = append(
            db,
            request(
                stream,
                vec![ping(1), ping(2).at_version(3), ping(3).at_version(1)],
            ),
        )
        .await?;
        append(db, request(stream, vec![ping(4).at_version(0)])).await?;
        let versions = |events: &[RecordedEvent]| -> Vec<(u32, u32)> {
            events
                .iter()
                .map(|e| (e.stored_version, e.event_version))
                .collect()
        };
        assert_eq!(versions(&written), [(1, 1), (3, 3), (1, 1)]);
        let stored = read_stream(db, stream).await?;
        assert_eq!(versions(&stored), [(1, 1), (3, 3), (1, 1), (0, 0)]);
        assert_eq!(&stored[..3], &written[..]);
        assert!(db.verify_chain(&mut |_, _| {}).await?.is_intact());

        let mut tx = db.begin().await?;
        let err = tx
            .conn()
            .execute(
                "UPDATE domain_events SET event_version = 1 WHERE position = 2",
                args![],
            )
            .await
            .expect_err("event_version cannot change");
        assert!(err.to_string().contains("append-only"), "{err}");
        drop(tx);

        // Rewritten behind the trigger's back, the version breaks the chain there.
        tamper(
            db,
            "UPDATE domain_events SET event_version = 1 WHERE position = 2",
            false,
        )
        .await?;
        assert_breach(
            &db.verify_chain(&mut |_, _| {}).await?,
            2,
            Problem::HashMismatch,
        );
        Ok(())
    }
);

backend_test!(
    json_survives_the_round_trip_and_keeps_the_chain,
    |t: TestDb| async move {
        let db = t.db();
        let tricky = json!({
            "z": 1, "a": [1.5, -0.0, 1e-7, 1e300, 12345678901234567_u64, -9_i64, true, null],
            "unicode": "é ☃ 𝄞 \u{7}\"\\", "nested": {"b": {"a": []}, "a": {}},
            "big": 18446744073709551615_u64,
        });
        let event = NewEvent::new(EventType::parse("test.tricky")?, tricky, Metadata::new());
        append(db, request(StreamId::new_v7(), vec![event])).await?;
        let stored = &all_events(db).await?[0];
        assert_eq!(stored.data["unicode"], json!("é ☃ 𝄞 \u{7}\"\\"));
        assert_eq!(
            stored.data["a"][1],
            json!(0.0),
            "negative zero is stored as zero"
        );
        let report = db.verify_chain(&mut |_, _| {}).await?;
        assert!(report.is_intact(), "{report:?}");
        Ok(())
    }
);

backend_test!(
    a_nul_character_is_refused_with_its_path,
    |t: TestDb| async move {
        let event = NewEvent::new(
            EventType::parse("test.pinged")?,
            json!({"names": ["ok", "bad\u{0}"]}),
            Metadata::new(),
        );
        let err = append(t.db(), request(StreamId::new_v7(), vec![event]))
            .await
            .expect_err("NUL");
        assert_eq!(
            err.to_string(),
            "event 0 (test.pinged): event_data.names[1]: the string contains a NUL character (\\u0000)"
        );
        assert!(all_events(t.db()).await?.is_empty());
        Ok(())
    }
);

/// Lets a test tamper with the log as a database administrator could, by lifting the
/// immutability triggers.
async fn five_events(db: &Db) -> anyhow::Result<()> {
    for n in 1..=5 {
        append(db, request(StreamId::new_v7(), vec![ping(n)])).await?;
    }
    Ok(())
}

backend_test!(audit_finds_an_edited_event, |t: TestDb| async move {
    let db = t.db();
    five_events(db).await?;
    assert!(db.verify_chain(&mut |_, _| {}).await?.is_intact());
    let edit = match t.backend() {
        Backend::Sqlite => "UPDATE domain_events SET event_data = '{\"n\":30}' WHERE position = 3",
        Backend::Postgres => {
            "UPDATE domain_events SET event_data = '{\"n\":30}'::jsonb WHERE position = 3"
        }
    };
    tamper(db, edit, false).await?;
    let report = db.verify_chain(&mut |_, _| {}).await?;
    assert_breach(&report, 3, Problem::HashMismatch);
    assert_eq!(report.n_checked, 2);
    Ok(())
});

backend_test!(
    audit_finds_an_edited_metadata_field,
    |t: TestDb| async move {
        let db = t.db();
        five_events(db).await?;
        let edit = match t.backend() {
            Backend::Sqlite => {
                "UPDATE domain_events SET event_metadata = json_set(event_metadata, '$.actor', 'service:intruder') WHERE position = 2"
            }
            Backend::Postgres => {
                "UPDATE domain_events SET event_metadata = event_metadata || '{\"actor\":\"service:intruder\"}' WHERE position = 2"
            }
        };
        tamper(db, edit, false).await?;
        assert_breach(
            &db.verify_chain(&mut |_, _| {}).await?,
            2,
            Problem::HashMismatch,
        );
        Ok(())
    }
);

backend_test!(audit_finds_a_deleted_event, |t: TestDb| async move {
    let db = t.db();
    five_events(db).await?;
    tamper(db, "DELETE FROM domain_events WHERE position = 2", false).await?;
    let report = db.verify_chain(&mut |_, _| {}).await?;
    assert_breach(&report, 2, Problem::Missing);
    Ok(())
});

backend_test!(audit_finds_a_deleted_last_event, |t: TestDb| async move {
    let db = t.db();
    five_events(db).await?;
    tamper(db, "DELETE FROM domain_events WHERE position = 5", false).await?;
    assert_breach(&db.verify_chain(&mut |_, _| {}).await?, 5, Problem::Missing);
    Ok(())
});

backend_test!(audit_finds_reordered_events, |t: TestDb| async move {
    let db = t.db();
    five_events(db).await?;
    tamper(
        db,
        "UPDATE domain_events SET position = 100 WHERE position = 3; \
         UPDATE domain_events SET position = 3 WHERE position = 4; \
         UPDATE domain_events SET position = 4 WHERE position = 100;",
        false,
    )
    .await?;
    let report = db.verify_chain(&mut |_, _| {}).await?;
    assert_breach(&report, 3, Problem::HashMismatch);
    Ok(())
});

backend_test!(
    migrations_are_checked_and_applied_once,
    |t: TestDb| async move {
        let db = t.db();
        let applied = db.migrate(&[cairn_log::MIGRATIONS]).await?;
        assert!(applied.is_empty(), "already applied: {applied:?}");

        const EXTRA: &[cairn_log::Migration] = &[cairn_log::Migration {
            id: "test/0001_extra",
            sqlite: "CREATE TABLE extra (id INTEGER PRIMARY KEY)",
            postgres: "CREATE TABLE extra (id BIGINT PRIMARY KEY)",
        }];
        assert_eq!(
            db.migrate(&[cairn_log::MIGRATIONS, EXTRA]).await?,
            ["test/0001_extra"]
        );

        let err = db
            .migrate(&[cairn_log::MIGRATIONS])
            .await
            .expect_err("unknown applied migration");
        assert!(err.to_string().contains("test/0001_extra"), "{err}");

        const CHANGED: &[cairn_log::Migration] = &[cairn_log::Migration {
            id: "test/0001_extra",
            sqlite: "CREATE TABLE extra (id INTEGER PRIMARY KEY, more TEXT)",
            postgres: "CREATE TABLE extra (id BIGINT PRIMARY KEY, more TEXT)",
        }];
        let err = db
            .migrate(&[cairn_log::MIGRATIONS, CHANGED])
            .await
            .expect_err("changed");
        assert!(
            err.to_string().contains("was changed after it was applied"),
            "{err}"
        );
        Ok(())
    }
);

backend_test!(
    reads_filter_by_stream_and_correlation,
    |t: TestDb| async move {
        let db = t.db();
        let stream = StreamId::new_v7();
        let request_metadata = Metadata::new();
        let correlated = NewEvent::new(
            EventType::parse("test.pinged")?,
            json!({}),
            request_metadata.clone(),
        );
        append(db, request(stream, vec![correlated.clone(), correlated])).await?;
        append(db, request(StreamId::new_v7(), vec![ping(1)])).await?;
        let filter = EventFilter {
            correlation_id: Some(request_metadata.correlation_id),
            ..EventFilter::default()
        };
        let found = db.reader().await?.conn().read_events(&filter).await?;
        assert_eq!(found.len(), 2);
        assert!(
            found
                .iter()
                .all(|e| e.metadata.correlation_id == request_metadata.correlation_id)
        );
        let page = EventFilter {
            after: Position::new(1),
            limit: Some(1),
            ..EventFilter::default()
        };
        let found = db.reader().await?.conn().read_events(&page).await?;
        assert_eq!(
            found.iter().map(|e| e.position.get()).collect::<Vec<_>>(),
            [2]
        );
        Ok(())
    }
);

backend_test!(
    a_tailing_reader_never_skips_an_event,
    |t: TestDb| async move {
        const WRITERS: usize = 8;
        const APPENDS_PER_WRITER: usize = 40;
        // Writers on their own connection pools, as separate processes would be.
        let mut writer_dbs = Vec::new();
        for _ in 0..WRITERS {
            writer_dbs.push(t.connect_again().await?);
        }
        let done = Arc::new(AtomicBool::new(false));
        let reader_db = t.connect_again().await?;
        let tail_done = done.clone();
        let tailer = tokio::spawn(async move {
            let mut seen = Position::START;
            let mut n_seen = 0_usize;
            loop {
                let finished = tail_done.load(Ordering::SeqCst);
                let events = reader_db
                    .reader()
                    .await?
                    .conn()
                    .read_events(&EventFilter::after(seen))
                    .await?;
                for event in &events {
                    anyhow::ensure!(
                        event.position == seen.next(),
                        "the reader saw {seen} and then {}: an event was skipped",
                        event.position
                    );
                    seen = event.position;
                    n_seen += 1;
                }
                if finished && events.is_empty() {
                    return anyhow::Ok(n_seen);
                }
                tokio::task::yield_now().await;
            }
        });
        let mut writers = Vec::new();
        for db in writer_dbs {
            writers.push(tokio::spawn(async move {
                for n in 0..APPENDS_PER_WRITER {
                    let events = (0..=(n % 3)).map(|i| ping(i as i64)).collect();
                    append(&db, request(StreamId::new_v7(), events)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for writer in writers {
            writer.await??;
        }
        done.store(true, Ordering::SeqCst);
        let n_seen = tailer.await??;
        let n_written = all_events(t.db()).await?.len();
        assert_eq!(n_seen, n_written, "the tailer saw every event");
        assert_eq!(
            n_written,
            WRITERS * (0..APPENDS_PER_WRITER).map(|n| n % 3 + 1).sum::<usize>()
        );
        assert!(t.db().verify_chain(&mut |_, _| {}).await?.is_intact());
        Ok(())
    }
);

#[test]
fn event_values_are_plain_json() {
    let value: Value =
        serde_json::to_value(Expected::Exact(StreamVersion::new(3))).expect("serializes");
    assert_eq!(value, json!({"Exact": 3}));
}

backend_test!(
    head_watch_wakes_on_own_and_other_connections_commits,
    |t: TestDb| async move {
        use std::time::Duration;
        let mut watch = t.db().head_watch();
        assert_eq!(*watch.borrow_and_update(), Position::START);
        let own = append(t.db(), request(StreamId::new_v7(), vec![ping(1)])).await?;
        // The own commit advances the watch before `commit` returns.
        assert!(watch.has_changed()?, "an own commit moves the head at once");
        assert_eq!(*watch.borrow_and_update(), own[0].position);

        // Another pool (as another process): PostgreSQL's NOTIFY or the SQLite poll wakes us.
        let other = t.connect_again().await?;
        let theirs = append(&other, request(StreamId::new_v7(), vec![ping(2), ping(3)])).await?;
        tokio::time::timeout(Duration::from_secs(5), async {
            while *watch.borrow_and_update() < theirs[1].position {
                watch.changed().await?;
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("another connection's commit never reached the head watch")
        })??;
        Ok(())
    }
);

backend_test!(
    spans_are_written_in_the_background_and_read_by_tenancy,
    |t: TestDb| async move {
        use cairn_log::{SpanKind, SpanRecord};
        use cairn_types::Tenancy;
        use cairn_types::{CorrelationId, OrgId};
        let correlation = CorrelationId::new_v7();
        let (org_a, org_b) = (OrgId::new_v7(), OrgId::new_v7());
        let started = chrono::Utc::now();
        for (name, org) in [("a", Some(org_a)), ("b", Some(org_b)), ("platform", None)] {
            t.db().record_span(
                SpanRecord::ending_now(correlation, SpanKind::Http, name, started)
                    .org(org)
                    .attribute("status", 200),
            );
        }
        t.db().record_span(
            SpanRecord::ending_now(
                CorrelationId::new_v7(),
                SpanKind::Email,
                "elsewhere",
                started,
            )
            .error(Some("refused".into())),
        );
        t.db().flush_spans().await;
        let mut reader = t.db().reader().await?;
        let all = reader.conn().read_spans(correlation, &Tenancy::All).await?;
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "platform"]);
        assert_eq!(all[0].attributes, json!({"status": 200}));
        assert_eq!(all[0].kind, SpanKind::Http);
        let only_a = reader
            .conn()
            .read_spans(correlation, &Tenancy::Org(org_a))
            .await?;
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].org_id, Some(org_a));
        assert!(
            reader
                .conn()
                .read_spans(correlation, &Tenancy::None)
                .await?
                .is_empty()
        );
        drop(reader);
        if t.backend() == Backend::Postgres {
            // Row-level security hides other tenants' spans even from an unfiltered query.
            let mut scoped = t.db().scoped(&Tenancy::Org(org_a)).await?;
            let rows = scoped
                .conn()
                .fetch_all("SELECT name FROM trace_spans", args![])
                .await?;
            assert_eq!(rows.len(), 1, "only organization A's span is visible");
        }
        Ok(())
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_notification_alone_moves_the_head_watch() -> cairn_testkit::TestResult {
    use std::time::Duration;
    cairn_testkit::run(
        Backend::Postgres,
        "log::notification_moves_the_head_watch",
        |t: TestDb| async move {
            let mut watch = t.db().head_watch();
            // The listener connects in the background; notify until it hears one. The
            // position named exists nowhere in the log, so only NOTIFY can have said it.
            let other = t.connect_again().await?;
            let heard = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let mut tx = other.begin().await?;
                    tx.conn()
                        .execute_script("SELECT pg_notify('cairn_events', '987654321')")
                        .await?;
                    tx.commit().await?;
                    if tokio::time::timeout(Duration::from_millis(200), watch.changed())
                        .await
                        .is_ok()
                        && *watch.borrow_and_update() == Position::new(987_654_321)
                    {
                        return anyhow::Ok(());
                    }
                }
            })
            .await;
            anyhow::ensure!(heard.is_ok(), "no NOTIFY reached the head watch");
            Ok(())
        },
    )
    .await
}

backend_test!(
    spans_older_than_the_cutoff_are_pruned_in_batches,
    |t: TestDb| async move {
        use cairn_log::{SpanKind, SpanRecord};
        use cairn_types::CorrelationId;
        let now = chrono::Utc::now();
        let old = now - chrono::Duration::days(8);
        let kept = CorrelationId::new_v7();
        // More old spans than one pruning batch holds.
        for i in 0..2_500 {
            t.db().record_span(SpanRecord::ending_now(
                CorrelationId::new_v7(),
                SpanKind::Http,
                format!("old {i}"),
                old,
            ));
        }
        t.db()
            .record_span(SpanRecord::ending_now(kept, SpanKind::Http, "new", now));
        t.db().flush_spans().await;
        let pruned = t.db().prune_spans(now - chrono::Duration::days(7)).await?;
        assert_eq!(pruned, 2_500);
        let mut reader = t.db().reader().await?;
        let left = reader
            .conn()
            .fetch_one("SELECT COUNT(*) AS n FROM trace_spans", args![])
            .await?
            .get::<i64>("n")?;
        assert_eq!(left, 1, "only the new span is left");
        let spans = reader
            .conn()
            .read_spans(kept, &cairn_types::Tenancy::All)
            .await?;
        assert_eq!(spans.len(), 1);
        Ok(())
    }
);

/// Appends one event through the log writer (no connection of the pool's), and
/// returns its position.
async fn write(db: &Db, n: i64) -> anyhow::Result<Position> {
    let events = db
        .write(cairn_log::WriteOptions::default(), move |tx| {
            Box::pin(async move {
                match tx
                    .prepare_append(request(StreamId::new_v7(), vec![ping(n)]))
                    .await?
                {
                    Prepared::New(pending) => tx.write_append(pending).await,
                    Prepared::Repeat(events) => Ok(events),
                }
            })
        })
        .await
        .map_err(|e: AppendError| anyhow::anyhow!(e))?;
    Ok(events[0].position)
}

/// The moment that matters, made certain: PostgreSQL's answer to `BEGIN` is held back
/// while the caller gives up. The connection then goes back to the pool inside a
/// transaction unless its `BEGIN` is seen through; a reader given it afterwards would
/// read that transaction's old snapshot and miss every later commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gone_while_postgres_answers_begin_leaves_no_transaction_open()
-> cairn_testkit::TestResult {
    cairn_testkit::run(
        Backend::Postgres,
        "log::a_caller_gone_while_postgres_answers_begin",
        |t: TestDb| async move {
            let proxy = cairn_testkit::HoldingProxy::start(t.url()).await?;
            let db = Db::connect(
                proxy.url(),
                &cairn_log::DbOptions {
                    max_connections: 2,
                    ..cairn_log::DbOptions::default()
                },
            )
            .await?;
            write(&db, 0).await?;
            let kinds = ["a snapshot", "a tenant's snapshot", "a transaction"];
            for kind in kinds {
                proxy.hold_answer_to("BEGIN");
                let begun: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                    match kind {
                        "a snapshot" => Box::pin(async {
                            let _ = db.snapshot().await;
                        }),
                        "a tenant's snapshot" => Box::pin(async {
                            let _ = db.scoped(&cairn_types::Tenancy::All).await;
                        }),
                        _ => Box::pin(async {
                            let _ = db.begin().await;
                        }),
                    };
                tokio::select! {
                    () = begun => anyhow::bail!("{kind} began although its answer was held"),
                    () = proxy.holding() => {}
                }
                // The caller is gone (the future above is dropped); now the answer comes.
                proxy.release();
                for round in 1..=3 {
                    let position = write(&db, round).await?;
                    let mut first = db.reader().await?;
                    let mut second = db.reader().await?;
                    for (which, reader) in [("one", &mut first), ("the other", &mut second)] {
                        assert_eq!(
                            reader.conn().head().await?.last_position,
                            position,
                            "after abandoning {kind}, {which} pooled connection sees the \
                             commit before its read (round {round})"
                        );
                        // Two statements, two transactions: the connection is not inside
                        // one (a read-committed transaction left open would see fresh
                        // data, and still hold whatever it locked).
                        let mut transaction_ids = Vec::new();
                        for _ in 0..2 {
                            let row = reader
                                .conn()
                                .fetch_one("SELECT txid_current()::text AS id", args![])
                                .await?;
                            transaction_ids.push(row.get::<String>("id")?);
                        }
                        assert_ne!(
                            transaction_ids[0], transaction_ids[1],
                            "after abandoning {kind}, {which} pooled connection runs each \
                             statement in a transaction of its own (round {round})"
                        );
                    }
                }
            }
            Ok(())
        },
    )
    .await
}
