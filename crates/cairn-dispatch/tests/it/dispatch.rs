//! The dispatcher on both backends: routing, failures recorded with their codes, no
//! partial projections, retry, replay and verification.

use async_trait::async_trait;
use cairn_dispatch::{
    DriftKind, EventStore, Handler, HandlerError, ProjectionTable, Projections, Registry,
    RegistryBuilder, RetryError, RetrySelection, VerifyOptions, payload,
};
use cairn_log::{AppendRequest, EventFilter, Migration, NewEvent, Outcome, RecordedEvent, args};
use cairn_testkit::{Backend, TestDb, backend_test};

use crate::operator;
use cairn_types::{ErrorCode, EventType, Metadata, StreamId, StreamType};
use serde::Deserialize;
use serde_json::{Value, json};

const WIDGETS: &[Migration] = &[Migration {
    id: "test/0001_widgets",
    sqlite: "CREATE TABLE widgets (
                 id TEXT PRIMARY KEY, name TEXT NOT NULL, color TEXT,
                 version INTEGER NOT NULL, updated_at TEXT NOT NULL) STRICT;
             CREATE UNIQUE INDEX widgets_by_name ON widgets (name);
             CREATE TABLE widget_counts (id TEXT PRIMARY KEY, n INTEGER NOT NULL) STRICT;",
    postgres: "CREATE TABLE widgets (
                 id UUID PRIMARY KEY, name TEXT NOT NULL, color TEXT,
                 version BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL);
             CREATE UNIQUE INDEX widgets_by_name ON widgets (name);
             CREATE TABLE widget_counts (id UUID PRIMARY KEY, n BIGINT NOT NULL);",
}];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WidgetCreated {
    name: String,
    color: Option<String>,
}

/// Idempotent: an upsert keyed by the stream id, with values from the event.
struct CreateWidget;

#[async_trait]
impl Handler for CreateWidget {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let created: WidgetCreated = payload(event)?;
        p.execute(
            "INSERT INTO widgets (id, name, color, version, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, color = excluded.color,
                 version = excluded.version, updated_at = excluded.updated_at",
            args![
                event.stream_id,
                created.name,
                created.color,
                event.stream_version,
                event.created_at
            ],
        )
        .await?;
        Ok(())
    }
}

/// Writes, then refuses: the write must not survive.
struct ExplodeAfterWriting;

#[async_trait]
impl Handler for ExplodeAfterWriting {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        p.execute(
            "UPDATE widgets SET color = 'scorched', version = $2 WHERE id = $1",
            args![event.stream_id, event.stream_version],
        )
        .await?;
        Err(HandlerError::failed("the widget exploded"))
    }
}

/// Writes, then panics: the write must not survive either.
struct PanicAfterWriting;

#[async_trait]
impl Handler for PanicAfterWriting {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        p.execute(
            "UPDATE widgets SET color = 'panicked' WHERE id = $1",
            args![event.stream_id],
        )
        .await?;
        panic!("the widget handler lost its mind");
    }
}

/// Not idempotent: counts how often it ran.
struct CountNaively;

#[async_trait]
impl Handler for CountNaively {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        p.execute(
            "INSERT INTO widget_counts (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = widget_counts.n + 1",
            args![event.stream_id],
        )
        .await?;
        Ok(())
    }
}

fn widget_routes(builder: RegistryBuilder) -> RegistryBuilder {
    builder
        .admin_routes()
        .projection(ProjectionTable {
            name: "widgets",
            key: &["id"],
        })
        .projection(ProjectionTable {
            name: "widget_counts",
            key: &["id"],
        })
}

fn registry() -> Registry {
    widget_routes(Registry::builder())
        .router("widget", |r| {
            r.on("widget.created", CreateWidget)
                .on("widget.exploded", ExplodeAfterWriting)
                .on("widget.panicked", PanicAfterWriting)
        })
        .build()
        .expect("a valid registry")
}

async fn store(t: &TestDb, registry: Registry) -> anyhow::Result<EventStore> {
    t.migrate_sets(&[cairn_dispatch::MIGRATIONS, WIDGETS])
        .await?;
    Ok(EventStore::new(t.db().clone(), registry))
}

fn event(event_type: &str, data: Value) -> NewEvent {
    NewEvent::new(
        EventType::parse(event_type).expect("valid name"),
        data,
        Metadata::new(),
    )
}

fn append_to(stream_type: &str, stream_id: StreamId, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(
        StreamType::parse(stream_type).expect("valid name"),
        stream_id,
        events,
    )
}

async fn widget(t: &TestDb, id: StreamId) -> anyhow::Result<Option<(String, Option<String>, i64)>> {
    let row = t
        .db()
        .reader()
        .await?
        .conn()
        .fetch_optional(
            "SELECT name, color, version FROM widgets WHERE id = $1",
            args![id],
        )
        .await?;
    Ok(match row {
        Some(row) => Some((row.get("name")?, row.get("color")?, row.get("version")?)),
        None => None,
    })
}

async fn failed_count(t: &TestDb) -> anyhow::Result<i64> {
    Ok(t.db().reader().await?.conn().head().await?.failed_events)
}

#[track_caller]
fn assert_failed(outcome: &Outcome, code: ErrorCode, fragment: &str) {
    match outcome {
        Outcome::Failed(error) => {
            assert_eq!(error.code, code, "{error:?}");
            assert!(
                error.message.contains(fragment),
                "{:?} should mention {fragment:?}",
                error.message
            );
        }
        other => panic!("expected a {code} failure, got {other:?}"),
    }
}

backend_test!(
    projections_reflect_the_event_when_append_returns,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let id = StreamId::new_v7();
        let appended = store
            .append(append_to(
                "widget",
                id,
                vec![event(
                    "widget.created",
                    json!({"name": "sprocket", "color": "red"}),
                )],
            ))
            .await?;
        assert_eq!(appended.events[0].outcome, Outcome::Applied);
        assert!(appended.events[0].event.processed_at.is_some());
        assert_eq!(
            widget(&t, id).await?,
            Some(("sprocket".into(), Some("red".into()), 1))
        );
        Ok(())
    }
);

backend_test!(
    events_and_projections_commit_or_roll_back_together,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let id = StreamId::new_v7();
        let mut tx = t.db().begin().await?;
        store
            .append_in(
                &mut tx,
                append_to(
                    "widget",
                    id,
                    vec![event("widget.created", json!({"name": "cog"}))],
                ),
            )
            .await?;
        tx.rollback().await?;
        assert_eq!(widget(&t, id).await?, None);
        let n_events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter::default())
            .await?
            .len();
        assert_eq!(n_events, 0);
        Ok(())
    }
);

backend_test!(
    a_failing_handler_leaves_no_partial_projection,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let id = StreamId::new_v7();
        store
            .append(append_to(
                "widget",
                id,
                vec![event(
                    "widget.created",
                    json!({"name": "gear", "color": "blue"}),
                )],
            ))
            .await?;
        let appended = store
            .append(append_to(
                "widget",
                id,
                vec![event("widget.exploded", json!({}))],
            ))
            .await?;
        let dispatched = &appended.events[0];
        assert_failed(
            &dispatched.outcome,
            ErrorCode::HandlerFailed,
            "the widget exploded",
        );
        assert_eq!(
            dispatched.event.processing_error.as_ref().map(|e| e.code),
            Some(ErrorCode::HandlerFailed)
        );
        assert_eq!(
            widget(&t, id).await?,
            Some(("gear".into(), Some("blue".into()), 1)),
            "the handler's write was rolled back"
        );

        let stored = t
            .db()
            .reader()
            .await?
            .conn()
            .event_by_id(dispatched.event.event_id)
            .await?
            .expect("stored");
        assert_eq!(
            stored.processing_error, dispatched.event.processing_error,
            "the event is stored with its error"
        );
        assert_eq!(failed_count(&t).await?, 1);
        Ok(())
    }
);

backend_test!(
    a_panicking_handler_is_a_recorded_failure,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let id = StreamId::new_v7();
        let appended = store
            .append(append_to(
                "widget",
                id,
                vec![
                    event("widget.created", json!({"name": "spring"})),
                    event("widget.panicked", json!({})),
                ],
            ))
            .await?;
        assert_eq!(appended.events[0].outcome, Outcome::Applied);
        assert_failed(
            &appended.events[1].outcome,
            ErrorCode::HandlerFailed,
            "the widget handler lost its mind",
        );
        assert_eq!(
            widget(&t, id).await?,
            Some(("spring".into(), None, 1)),
            "the panicking handler's write was rolled back"
        );

        let later = store
            .append(append_to(
                "widget",
                id,
                vec![event(
                    "widget.created",
                    json!({"name": "spring", "color": "green"}),
                )],
            ))
            .await?;
        assert_eq!(
            later.events[0].outcome,
            Outcome::Applied,
            "the dispatcher carries on"
        );
        assert_eq!(
            widget(&t, id).await?,
            Some(("spring".into(), Some("green".into()), 3))
        );
        Ok(())
    }
);

backend_test!(
    unknown_types_are_recorded_with_their_codes,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let appended = store
            .append(append_to(
                "gadget",
                StreamId::new_v7(),
                vec![event("gadget.created", json!({}))],
            ))
            .await?;
        assert_failed(
            &appended.events[0].outcome,
            ErrorCode::UnknownStreamType,
            "no route for stream type \"gadget\"",
        );
        let appended = store
            .append(append_to(
                "widget",
                StreamId::new_v7(),
                vec![event("widget.polished", json!({}))],
            ))
            .await?;
        assert_failed(
            &appended.events[0].outcome,
            ErrorCode::UnknownEventType,
            "has no handler for event type \"widget.polished\"",
        );

        let failed = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter {
                failed: true,
                ..EventFilter::default()
            })
            .await?;
        let codes: Vec<&str> = failed
            .iter()
            .filter_map(|e| e.processing_error.as_ref())
            .map(|e| e.code.as_str())
            .collect();
        assert_eq!(codes, ["P9002", "P9001"]);
        assert_eq!(failed_count(&t).await?, 2);
        let by_code = t.db().reader().await?.conn().failed_by_code().await?;
        assert_eq!(by_code, [("P9001".to_owned(), 1), ("P9002".to_owned(), 1)]);
        Ok(())
    }
);

backend_test!(
    a_payload_that_does_not_decode_is_p9004,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let appended = store
            .append(append_to(
                "widget",
                StreamId::new_v7(),
                vec![event("widget.created", json!({"name": 7}))],
            ))
            .await?;
        assert_failed(
            &appended.events[0].outcome,
            ErrorCode::PayloadMismatch,
            "event_data does not match WidgetCreated",
        );
        Ok(())
    }
);

backend_test!(
    admin_stream_types_are_processed_not_failed,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        for stream_type in ["platform_admin", "workflow_queue", "test"] {
            let event_type = format!("{stream_type}.noted");
            let appended = store
                .append(append_to(
                    stream_type,
                    StreamId::new_v7(),
                    vec![event(&event_type, json!({}))],
                ))
                .await?;
            assert_eq!(
                appended.events[0].outcome,
                Outcome::Skipped,
                "{stream_type}"
            );
            assert!(appended.events[0].event.processed_at.is_some());
            assert!(appended.events[0].event.processing_error.is_none());
        }
        assert_eq!(failed_count(&t).await?, 0);
        Ok(())
    }
);

backend_test!(
    retry_fixes_an_event_once_its_handler_is_registered,
    |t: TestDb| async move {
        let without_handler = Registry::builder()
            .admin_routes()
            .router("widget", |r| r)
            .build()?;
        let before = store(&t, without_handler).await?;
        let id = StreamId::new_v7();
        let appended = before
            .append(append_to(
                "widget",
                id,
                vec![event("widget.created", json!({"name": "flange"}))],
            ))
            .await?;
        let event_id = appended.events[0].event.event_id;
        assert_failed(
            &appended.events[0].outcome,
            ErrorCode::UnknownEventType,
            "widget.created",
        );
        assert_eq!(widget(&t, id).await?, None);

        // Retrying without a handler fails again, and says so.
        let again = before.retry(event_id, &operator()).await?;
        assert_failed(
            &again.outcome,
            ErrorCode::UnknownEventType,
            "widget.created",
        );
        assert_eq!(failed_count(&t).await?, 1);

        let after = EventStore::new(t.db().clone(), registry());
        let fixed = after.retry(event_id, &operator()).await?;
        assert_eq!(fixed.outcome, Outcome::Applied);
        assert!(fixed.event.processing_error.is_none());
        assert_eq!(widget(&t, id).await?, Some(("flange".into(), None, 1)));
        assert_eq!(failed_count(&t).await?, 0);
        let stored = t
            .db()
            .reader()
            .await?
            .conn()
            .event_by_id(event_id)
            .await?
            .expect("stored");
        assert!(stored.processing_error.is_none() && stored.processed_at.is_some());

        let err = after
            .retry(event_id, &operator())
            .await
            .expect_err("no longer failed");
        assert!(matches!(err, RetryError::NotFailed { .. }), "{err:?}");
        let err = after
            .retry(cairn_types::EventId::new_v7(), &operator())
            .await
            .expect_err("no such event");
        assert!(matches!(err, RetryError::NotFound { .. }), "{err:?}");
        Ok(())
    }
);

/// A store whose widget router has no handlers, and `n` widget events appended
/// through it: each failed for want of a handler, to be retried by a store that has
/// them.
async fn unhandled_widgets(t: &TestDb, n: usize) -> anyhow::Result<EventStore> {
    let empty = Registry::builder().router("widget", |r| r).build()?;
    let store = store(t, empty).await?;
    for n in 0..n {
        store
            .append(append_to(
                "widget",
                StreamId::new_v7(),
                vec![event("widget.created", json!({"name": format!("w{n}")}))],
            ))
            .await?;
    }
    Ok(store)
}

backend_test!(
    retry_all_failed_by_code_or_stream_type,
    |t: TestDb| async move {
        let before = unhandled_widgets(&t, 3).await?;
        before
            .append(append_to(
                "test",
                StreamId::new_v7(),
                vec![event("test.pinged", json!({}))],
            ))
            .await?;
        assert_eq!(failed_count(&t).await?, 4);

        let after = EventStore::new(t.db().clone(), registry());
        let only_p9002 = RetrySelection {
            code: Some(ErrorCode::UnknownStreamType),
            ..RetrySelection::default()
        };
        let report = after
            .retry_failed(&only_p9002, &operator(), &mut |_, _| {})
            .await?;
        assert_eq!(
            (report.n_retried, report.n_fixed),
            (1, 1),
            "only the test event had P9002"
        );
        assert_eq!(failed_count(&t).await?, 3);

        let mut progress = Vec::new();
        let widgets = RetrySelection {
            stream_type: Some(StreamType::parse("widget")?),
            ..RetrySelection::default()
        };
        let report = after
            .retry_failed(&widgets, &operator(), &mut |done, total| {
                progress.push((done, total))
            })
            .await?;
        assert_eq!((report.n_retried, report.n_fixed), (3, 3));
        assert_eq!(progress.last(), Some(&(3, 3)));
        assert_eq!(failed_count(&t).await?, 0);
        Ok(())
    }
);

/// Writes to a projection behind the log's back, as the seed's dual writes did.
async fn dual_write(
    t: &TestDb,
    statement: &'static str,
    args: Vec<cairn_log::Arg>,
) -> anyhow::Result<()> {
    let mut tx = t.db().begin().await?;
    tx.conn().execute(statement, args).await?;
    tx.commit().await?;
    Ok(())
}

backend_test!(
    a_replay_of_many_pages_applies_every_event_once_in_order,
    |t: TestDb| async move {
        // More events than several replay pages hold, so that each page after the first
        // is one read ahead while the one before it was applied.
        let store = store(&t, registry()).await?;
        let streams: Vec<StreamId> = (0..12).map(|_| StreamId::new_v7()).collect();
        for round in 0..11 {
            for (s, id) in streams.iter().enumerate() {
                let events = (0..100)
                    .map(|n| {
                        let name = format!("w{s}-{round}-{n}");
                        event("widget.created", json!({ "name": name }))
                    })
                    .collect();
                store.append(append_to("widget", *id, events)).await?;
            }
        }
        // A direct write the replay must undo.
        dual_write(
            &t,
            "UPDATE widgets SET name = 'rogue' WHERE id = $1",
            args![streams[3]],
        )
        .await?;
        let replayed = store
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(
            (replayed.n_events, replayed.n_applied, replayed.n_failed),
            (13_200, 13_200, 0)
        );
        // Each widget holds its stream's last event: the pages were applied in order.
        for (s, id) in streams.iter().enumerate() {
            assert_eq!(
                widget(&t, *id).await?,
                Some((format!("w{s}-10-99"), None, 1100)),
                "widget {s}"
            );
        }
        let verified = store
            .verify_projections(VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert!(verified.is_clean(), "{:?}", verified.drift);
        assert_eq!(verified.n_events, 13_200);
        Ok(())
    }
);

backend_test!(
    replay_verify_catches_a_direct_projection_write,
    |t: TestDb| async move {
        let store = store(&t, registry()).await?;
        let (a, b, c) = (StreamId::new_v7(), StreamId::new_v7(), StreamId::new_v7());
        for (id, name) in [(a, "alpha"), (b, "beta"), (c, "gamma")] {
            store
                .append(append_to(
                    "widget",
                    id,
                    vec![event(
                        "widget.created",
                        json!({"name": name, "color": "red"}),
                    )],
                ))
                .await?;
        }
        let clean = store
            .verify_projections(VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert!(clean.is_clean(), "{:?}", clean.drift);
        assert_eq!(clean.n_events, 3);
        let widgets = clean
            .tables
            .iter()
            .find(|table| table.table == "widgets")
            .expect("the widgets table is verified");
        assert_eq!((widgets.live_rows, widgets.rebuilt_rows), (3, 3));

        dual_write(
            &t,
            "UPDATE widgets SET color = 'purple' WHERE id = $1",
            args![a],
        )
        .await?;
        dual_write(&t, "DELETE FROM widgets WHERE id = $1", args![b]).await?;
        let rogue = StreamId::new_v7();
        let insert = match t.backend() {
            Backend::Sqlite => {
                "INSERT INTO widgets VALUES ($1, 'rogue', NULL, 1, '2026-01-01T00:00:00Z')"
            }
            Backend::Postgres => {
                "INSERT INTO widgets VALUES ($1, 'rogue', NULL, 1, '2026-01-01T00:00:00Z'::timestamptz)"
            }
        };
        dual_write(&t, insert, args![rogue]).await?;

        let report = store
            .verify_projections(VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(report.drift.len(), 3, "{:#?}", report.drift);
        let for_id = |id: StreamId| {
            report
                .drift
                .iter()
                .find(|d| d.key["id"] == json!(id.to_string()))
                .unwrap_or_else(|| panic!("no drift reported for {id}"))
        };
        match &for_id(a).kind {
            DriftKind::Differs { columns } => {
                assert_eq!(columns.len(), 1, "{columns:?}");
                assert_eq!(
                    (
                        columns[0].column.as_str(),
                        &columns[0].live,
                        &columns[0].rebuilt
                    ),
                    ("color", &json!("purple"), &json!("red"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(for_id(b).kind, DriftKind::OnlyRebuilt { .. }));
        assert!(matches!(for_id(rogue).kind, DriftKind::OnlyLive { .. }));
        assert_eq!(
            widget(&t, a).await?.and_then(|w| w.1),
            Some("purple".into()),
            "verify changed nothing"
        );

        // Replay puts the projections back to what the log says.
        let replayed = store
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(
            (replayed.n_events, replayed.n_applied, replayed.n_failed),
            (3, 3, 0)
        );
        assert!(
            store
                .verify_projections(VerifyOptions::default(), &mut |_, _| {})
                .await?
                .is_clean()
        );
        assert_eq!(widget(&t, a).await?.and_then(|w| w.1), Some("red".into()));
        assert_eq!(widget(&t, rogue).await?, None);
        Ok(())
    }
);

backend_test!(
    verify_dispatching_twice_catches_a_handler_that_is_not_idempotent,
    |t: TestDb| async move {
        let registry = widget_routes(Registry::builder())
            .router("widget", |r| {
                r.on("widget.created", CreateWidget)
                    .on("widget.counted", CountNaively)
            })
            .build()?;
        let store = store(&t, registry).await?;
        let id = StreamId::new_v7();
        store
            .append(append_to(
                "widget",
                id,
                vec![
                    event("widget.created", json!({"name": "bolt"})),
                    event("widget.counted", json!({})),
                ],
            ))
            .await?;
        let twice = VerifyOptions {
            dispatch_twice: true,
        };
        let report = store.verify_projections(twice, &mut |_, _| {}).await?;
        assert_eq!(report.drift.len(), 1, "{:#?}", report.drift);
        assert_eq!(
            report.drift[0].table, "widget_counts",
            "only the naive counter drifts; the upsert is idempotent"
        );
        Ok(())
    }
);

backend_test!(
    replay_records_outcomes_that_changed,
    |t: TestDb| async move {
        let empty = Registry::builder().router("widget", |r| r).build()?;
        let before = store(&t, empty).await?;
        let id = StreamId::new_v7();
        before
            .append(append_to(
                "widget",
                id,
                vec![event("widget.created", json!({"name": "nut"}))],
            ))
            .await?;
        let after = EventStore::new(t.db().clone(), registry());
        let verify = after
            .verify_projections(VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(
            verify.outcome_changes.len(),
            1,
            "verify reports the event that would now apply"
        );
        assert!(matches!(
            verify.drift[0].kind,
            DriftKind::OnlyRebuilt { .. }
        ));

        let mut progress = Vec::new();
        let report = after
            .replay(
                cairn_dispatch::ReplayOptions::default(),
                &mut |done, total| progress.push((done, total)),
            )
            .await?;
        assert_eq!(report.changed.len(), 1);
        assert_eq!(report.changed[0].now, Outcome::Applied);
        assert_eq!(progress.last(), Some(&(1, 1)));
        assert_eq!(failed_count(&t).await?, 0);
        assert_eq!(widget(&t, id).await?, Some(("nut".into(), None, 1)));
        Ok(())
    }
);

#[test]
fn registration_refuses_bad_names_and_duplicates() {
    let err = Registry::builder()
        .no_op("Platform", "x")
        .build()
        .expect_err("bad stream type");
    assert!(err.to_string().contains("upper-case"), "{err}");
    let err = Registry::builder()
        .router("widget", |r| r.on("widget.Created", CreateWidget))
        .build()
        .expect_err("bad event type");
    assert!(
        err.to_string()
            .starts_with("cannot register an event type: event type \"widget.Created\""),
        "{err}"
    );
    let err = Registry::builder()
        .router("widget", |r| {
            r.on("widget.created", CreateWidget)
                .on("widget.created", CreateWidget)
        })
        .build()
        .expect_err("two handlers");
    assert_eq!(
        err.to_string(),
        "event type widget.created has two handlers"
    );
    let err = Registry::builder()
        .admin_routes()
        .no_op("test", "again")
        .build()
        .expect_err("twice");
    assert_eq!(err.to_string(), "stream type test is registered twice");
}

/// Renames a widget, and refuses when there is none: it reads how many rows its write
/// changed, which an optimistic batch on PostgreSQL reports before it knows.
struct RenameWidget;

#[async_trait]
impl Handler for RenameWidget {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let changed = p
            .execute(
                "UPDATE widgets SET name = $2, version = $3 WHERE id = $1",
                args![
                    event.stream_id,
                    event.data["name"].as_str(),
                    event.stream_version
                ],
            )
            .await?;
        if changed == 0 {
            return Err(HandlerError::failed("there is no widget to rename"));
        }
        Ok(())
    }
}

backend_test!(
    a_write_that_changed_no_row_is_found_out_in_every_write_mode,
    |t: TestDb| async move {
        t.migrate_sets(&[cairn_dispatch::MIGRATIONS, WIDGETS])
            .await?;
        for mode in [
            cairn_log::WriteMode::Optimistic,
            cairn_log::WriteMode::Savepoints,
        ] {
            let db = t
                .connect_with(cairn_log::WriterConfig {
                    mode,
                    ..cairn_log::WriterConfig::for_backend(t.backend())
                })
                .await?;
            let routes = widget_routes(Registry::builder()).router("widget", |r| {
                r.on("widget.created", CreateWidget)
                    .on("widget.renamed", RenameWidget)
            });
            let store = EventStore::new(db.clone(), routes.build()?);
            let existing = StreamId::new_v7();
            store
                .append(append_to(
                    "widget",
                    existing,
                    vec![event(
                        "widget.created",
                        json!({"name": format!("{mode:?}")}),
                    )],
                ))
                .await?;
            // Renames of a widget that exists and of one that does not, in one batch.
            let missing = StreamId::new_v7();
            let (good, bad) = tokio::join!(
                store.append(append_to(
                    "widget",
                    existing,
                    vec![event(
                        "widget.renamed",
                        json!({"name": format!("{mode:?} again")})
                    )]
                )),
                store.append(append_to(
                    "widget",
                    missing,
                    vec![event("widget.renamed", json!({"name": "nobody"}))]
                )),
            );
            assert_eq!(good?.events[0].outcome, Outcome::Applied, "{mode:?}");
            assert_failed(
                &bad?.events[0].outcome,
                ErrorCode::HandlerFailed,
                "there is no widget to rename",
            );
            assert_eq!(
                widget(&t, existing).await?.map(|w| w.0),
                Some(format!("{mode:?} again"))
            );
            assert_eq!(widget(&t, missing).await?, None);
            db.close().await;
        }
        Ok(())
    }
);

/// A bulk retry in which one event's handler meets a conflicting write (a trigger
/// refuses the first two writes to the projection with SQLSTATE 40001): that event is
/// tried again on its own, and the bulk retry fixes all three instead of ending with
/// the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_retry_tries_again_an_event_that_met_a_conflict() -> cairn_testkit::TestResult {
    cairn_testkit::run(
        Backend::Postgres,
        "dispatch::a_bulk_retry_tries_again_an_event_that_met_a_conflict",
        |t: TestDb| async move {
            unhandled_widgets(&t, 3).await?;
            assert_eq!(failed_count(&t).await?, 3);
            t.conflict_on("widgets", "INSERT OR UPDATE", "true", 2)
                .await?;

            let after = EventStore::new(t.db().clone(), registry());
            let report = after
                .retry_failed(&RetrySelection::default(), &operator(), &mut |_, _| {})
                .await?;
            assert_eq!((report.n_retried, report.n_fixed), (3, 3));
            assert_eq!(failed_count(&t).await?, 0);
            Ok(())
        },
    )
    .await
}
