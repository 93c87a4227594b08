//! Payload versions on both backends: every path a handler is reached by sees the
//! current version, events a newer build wrote are never applied, a failing upcaster is
//! a recorded failure, and only an import writes older versions.
//!
//! One event type, `gadget.made`, in three shapes: v1 `{name}`, v2 `{name, color}`
//! (`color` null for v1), v3 `{title, color}` (`name` renamed).

use async_trait::async_trait;
use cairn_dispatch::{
    EventPayload, EventStore, Handler, HandlerError, ProjectionTable, Projections, Registry,
    RegistryError, Upcaster, VerifyOptions, payload,
};
use cairn_log::{AppendError, AppendRequest, Migration, Outcome, RecordedEvent, args};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{ErrorCode, Metadata, StreamId, StreamType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::operator;

const GADGETS: &[Migration] = &[Migration {
    id: "test/0001_gadgets",
    sqlite: "CREATE TABLE gadgets (id TEXT PRIMARY KEY, title TEXT NOT NULL, color TEXT) STRICT;",
    postgres: "CREATE TABLE gadgets (id UUID PRIMARY KEY, title TEXT NOT NULL, color TEXT);",
}];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct MadeV1 {
    name: String,
}

impl EventPayload for MadeV1 {
    const EVENT_TYPE: &'static str = "gadget.made";
    const DESCRIPTION: &'static str = "A gadget was made (v1).";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct MadeV2 {
    name: String,
    color: Option<String>,
}

/// The current shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Made {
    title: String,
    color: Option<String>,
}

fn v1_to_v2(data: &mut Map<String, Value>) -> Result<(), String> {
    let name = data.get("name").and_then(Value::as_str).unwrap_or_default();
    if name == "refused" {
        return Err("a gadget named \"refused\" cannot be upcast".to_owned());
    }
    if name == "boom" {
        panic!("the upcaster met a boom");
    }
    data.insert("color".to_owned(), Value::Null);
    Ok(())
}

fn v2_to_v3(data: &mut Map<String, Value>) -> Result<(), String> {
    let name = data.remove("name").ok_or("event_data.name is missing")?;
    data.insert("title".to_owned(), name);
    Ok(())
}

impl EventPayload for Made {
    const EVENT_TYPE: &'static str = "gadget.made";
    const DESCRIPTION: &'static str = "A gadget was made.";
    const VERSION: u32 = 3;

    fn upcasters() -> Vec<Upcaster> {
        vec![
            Upcaster::new::<MadeV1>(1, v1_to_v2),
            Upcaster::new::<MadeV2>(2, v2_to_v3),
        ]
    }
}

/// Version 3 with its chain missing the step from 2.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Gapped {
    title: String,
}

impl EventPayload for Gapped {
    const EVENT_TYPE: &'static str = "gadget.made";
    const DESCRIPTION: &'static str = "A chain with a gap.";
    const VERSION: u32 = 3;

    fn upcasters() -> Vec<Upcaster> {
        vec![Upcaster::new::<MadeV1>(1, v1_to_v2)]
    }
}

/// Writes the gadget as version 3 has it; a v1-only build refuses "late" names, so
/// that the newer build has something to retry.
struct Record;

#[async_trait]
impl Handler for Record {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let made: Made = payload(event)?;
        p.execute(
            "INSERT INTO gadgets (id, title, color) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET title = excluded.title, color = excluded.color",
            args![event.stream_id, made.title, made.color],
        )
        .await?;
        Ok(())
    }
}

struct RecordV1;

#[async_trait]
impl Handler for RecordV1 {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let made: MadeV1 = payload(event)?;
        if made.name == "late" {
            return Err(HandlerError::failed(
                "this build does not make late gadgets",
            ));
        }
        p.execute(
            "INSERT INTO gadgets (id, title, color) VALUES ($1, $2, NULL)
             ON CONFLICT (id) DO UPDATE SET title = excluded.title",
            args![event.stream_id, made.name],
        )
        .await?;
        Ok(())
    }
}

fn projections(builder: cairn_dispatch::RegistryBuilder) -> cairn_dispatch::RegistryBuilder {
    builder.admin_routes().projection(ProjectionTable {
        name: "gadgets",
        key: &["id"],
    })
}

/// The build that knows only version 1.
fn old_build() -> Registry {
    projections(Registry::builder())
        .router("gadget", |r| r.event::<MadeV1>(RecordV1))
        .build()
        .expect("a valid registry")
}

/// The build at version 3.
fn new_build() -> Registry {
    projections(Registry::builder())
        .router("gadget", |r| r.event::<Made>(Record))
        .build()
        .expect("a valid registry")
}

async fn store(t: &TestDb, registry: Registry) -> anyhow::Result<EventStore> {
    t.migrate_sets(&[cairn_dispatch::MIGRATIONS, GADGETS])
        .await?;
    Ok(EventStore::new(t.db().clone(), registry))
}

fn made(id: StreamId, data: Value) -> AppendRequest {
    AppendRequest::new(
        StreamType::parse("gadget").expect("a stream type"),
        id,
        vec![cairn_log::NewEvent::new(
            Made::event_type(),
            data,
            Metadata::new(),
        )],
    )
}

async fn gadget(t: &TestDb, id: StreamId) -> anyhow::Result<Option<(String, Option<String>)>> {
    let row = t
        .db()
        .reader()
        .await?
        .conn()
        .fetch_optional("SELECT title, color FROM gadgets WHERE id = $1", args![id])
        .await?;
    Ok(match row {
        Some(row) => Some((row.get("title")?, row.get("color")?)),
        None => None,
    })
}

#[track_caller]
fn assert_failed(outcome: &Outcome, code: ErrorCode, fragments: &[&str]) {
    match outcome {
        Outcome::Failed(error) => {
            assert_eq!(error.code, code, "{error:?}");
            for fragment in fragments {
                assert!(
                    error.message.contains(fragment),
                    "{:?} should mention {fragment:?}",
                    error.message
                );
            }
        }
        other => panic!("expected a {code} failure, got {other:?}"),
    }
}

#[test]
fn a_gap_in_an_upcaster_chain_is_refused_naming_type_and_versions() {
    let err = projections(Registry::builder())
        .router("gadget", |r| r.event::<Gapped>(Record))
        .build()
        .expect_err("the chain misses 2 → 3");
    assert!(matches!(err, RegistryError::UpcasterGap { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the upcaster chain of event type gadget.made has a gap: it is at version 3 but has no \
         upcaster from version 2 to 3"
    );
}

backend_test!(
    handlers_see_the_current_version_live_on_retry_and_in_replay,
    |t: TestDb| async move {
        // Release "old" writes version 1 events, and fails one of them.
        let old = store(&t, old_build()).await?;
        let (kept, late) = (StreamId::new_v7(), StreamId::new_v7());
        old.append(made(kept, json!({"name": "sprocket"}))).await?;
        let failed = old.append(made(late, json!({"name": "late"}))).await?;
        assert!(matches!(failed.events[0].outcome, Outcome::Failed(_)));
        assert_eq!(failed.events[0].event.stored_version, 1);

        // Release "new" reads them as version 3.
        let new = store(&t, new_build()).await?;
        let retried = new
            .retry(failed.events[0].event.event_id, &operator())
            .await?;
        assert_eq!(retried.outcome, Outcome::Applied, "{retried:?}");
        assert_eq!(gadget(&t, late).await?, Some(("late".into(), None)));

        let fresh = StreamId::new_v7();
        let appended = new
            .append(made(fresh, json!({"title": "cog", "color": "red"})))
            .await?;
        assert_eq!(appended.events[0].outcome, Outcome::Applied);
        assert_eq!(
            (
                appended.events[0].event.stored_version,
                appended.events[0].event.event_version
            ),
            (3, 3)
        );

        let report = new
            .verify_projections(VerifyOptions::default(), &mut |_, _| {})
            .await?;
        assert!(report.is_clean(), "{report:#?}");
        // Three gadgets and the retry's record, all applied.
        let replayed = new
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(
            (replayed.n_events, replayed.n_applied, replayed.n_failed),
            (4, 4, 0),
            "{replayed:?}"
        );
        assert_eq!(gadget(&t, kept).await?, Some(("sprocket".into(), None)));
        assert_eq!(
            gadget(&t, fresh).await?,
            Some(("cog".into(), Some("red".into())))
        );

        // The registry's one decoding path: the stored bytes stay version 1.
        let events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&cairn_log::EventFilter::default())
            .await?;
        let first = &events[0];
        assert_eq!((first.stored_version, first.event_version), (1, 1));
        assert_eq!(first.data, json!({"name": "sprocket"}));
        let current = new.dispatcher().registry().upcast(first)?;
        assert_eq!((current.stored_version, current.event_version), (1, 3));
        assert_eq!(current.data, json!({"title": "sprocket", "color": null}));
        Ok(())
    }
);

backend_test!(
    an_event_a_newer_build_wrote_fails_with_p9006_naming_both_versions,
    |t: TestDb| async move {
        let new = store(&t, new_build()).await?;
        let id = StreamId::new_v7();
        let appended = new
            .append(made(id, json!({"title": "cog", "color": null})))
            .await?;

        // Rolled back to the build that reads version 1 only.
        let old = store(&t, old_build()).await?;
        let retried = old
            .retry(appended.events[0].event.event_id, &operator())
            .await;
        // Retry refuses an applied event; replay meets it as the old build would.
        assert!(retried.is_err());
        let replayed = old
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(replayed.n_failed, 1, "{replayed:?}");
        let events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&cairn_log::EventFilter::default())
            .await?;
        let outcome = events[0].last_outcome().expect("processed");
        assert_failed(
            &outcome,
            ErrorCode::NewerVersion,
            &[
                "event 1 (gadget.made)",
                "payload version 3",
                "up to version 1",
            ],
        );
        assert_eq!(
            gadget(&t, id).await?,
            None,
            "never applied by the old build"
        );

        // The newer build applies it again.
        let back = store(&t, new_build()).await?;
        let retried = back.retry(events[0].event_id, &operator()).await?;
        assert_eq!(retried.outcome, Outcome::Applied);
        Ok(())
    }
);

backend_test!(
    a_failing_or_panicking_upcaster_fails_the_event_with_p9005,
    |t: TestDb| async move {
        let old = store(&t, old_build()).await?;
        let (good, refused, boom) = (StreamId::new_v7(), StreamId::new_v7(), StreamId::new_v7());
        old.append(made(good, json!({"name": "fine"}))).await?;
        old.append(made(refused, json!({"name": "refused"})))
            .await?;
        old.append(made(boom, json!({"name": "boom"}))).await?;

        let new = store(&t, new_build()).await?;
        let replayed = new
            .replay(cairn_dispatch::ReplayOptions::default(), &mut |_, _| {})
            .await?;
        assert_eq!(
            (replayed.n_applied, replayed.n_failed),
            (1, 2),
            "{replayed:?}"
        );
        let events = t
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&cairn_log::EventFilter::default())
            .await?;
        assert_failed(
            &events[1].last_outcome().expect("processed"),
            ErrorCode::UpcastFailed,
            &[
                "event 2 (gadget.made)",
                "from payload version 1 to 2",
                "cannot be upcast",
            ],
        );
        assert_failed(
            &events[2].last_outcome().expect("processed"),
            ErrorCode::UpcastFailed,
            &["event 3 (gadget.made)", "panicked: the upcaster met a boom"],
        );
        // The stored payload is untouched, and a retry fails the same way.
        assert_eq!(events[2].data, json!({"name": "boom"}));
        let retried = new.retry(events[1].event_id, &operator()).await?;
        assert_failed(&retried.outcome, ErrorCode::UpcastFailed, &["event 2"]);
        assert_eq!(gadget(&t, good).await?, Some(("fine".into(), None)));
        assert_eq!(gadget(&t, refused).await?, None);
        Ok(())
    }
);

backend_test!(
    only_an_import_appends_an_older_version_and_it_must_fit_that_version,
    |t: TestDb| async move {
        let new = store(&t, new_build()).await?;
        let id = StreamId::new_v7();
        let v1 = |data: Value| {
            let mut request = made(id, data);
            request.events[0].version = Some(1);
            request
        };
        let err = new
            .append(v1(json!({"name": "old"})))
            .await
            .expect_err("an older version is refused");
        assert!(matches!(err, AppendError::InvalidData { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("payload version 1 is older than the current one, 3"),
            "{err}"
        );

        let err = new
            .append(v1(json!({"title": "not v1"})).importing())
            .await
            .expect_err("not version 1's shape");
        assert!(err.to_string().contains("event_data"), "{err}");
        assert!(err.to_string().contains("title"), "{err}");

        let err = new
            .append(v1(json!({"name": "refused"})).importing())
            .await
            .expect_err("does not upcast");
        assert!(
            err.to_string()
                .contains("does not upcast from version 1 to 2"),
            "{err}"
        );

        let mut newer = made(id, json!({"title": "x", "color": null}));
        newer.events[0].version = Some(4);
        let err = new
            .append(newer.importing())
            .await
            .expect_err("newer than the build");
        assert!(
            err.to_string().contains("payload version 4 is newer"),
            "{err}"
        );

        let imported = new.append(v1(json!({"name": "old"})).importing()).await?;
        assert_eq!(imported.events[0].outcome, Outcome::Applied);
        assert_eq!(imported.events[0].event.stored_version, 1);
        assert_eq!(gadget(&t, id).await?, Some(("old".into(), None)));

        // The current version, with a field no version has: the error names it.
        let err = new
            .append(made(id, json!({"title": "x", "colour": "red"})))
            .await
            .expect_err("no such field");
        assert!(err.to_string().contains("colour"), "{err}");
        Ok(())
    }
);

/// Version 1 changed in place, without a new version: the mistake `check-log` is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ChangedInPlace {
    title: String,
}

impl EventPayload for ChangedInPlace {
    const EVENT_TYPE: &'static str = "gadget.made";
    const DESCRIPTION: &'static str = "Version 1, changed without a new version.";
}

backend_test!(
    check_log_reads_every_event_and_names_each_that_fails,
    |t: TestDb| async move {
        let old = store(&t, old_build()).await?;
        for name in ["a", "refused", "b", "c"] {
            old.append(made(StreamId::new_v7(), json!({"name": name})))
                .await?;
        }
        let new = store(&t, new_build()).await?;
        new.append(made(
            StreamId::new_v7(),
            json!({"title": "d", "color": null}),
        ))
        .await?;

        let mut calls = Vec::new();
        let report = new
            .check_log(&mut |done, total| calls.push((done, total)))
            .await?;
        assert_eq!(
            (report.n_events, report.n_upcast, report.n_failed),
            (5, 4, 1),
            "{report:#?}"
        );
        assert_eq!(calls.last(), Some(&(5, 5)));
        let failure = &report.failures[0];
        assert_eq!(
            (
                failure.position,
                failure.stored_version,
                failure.current_version
            ),
            (2, 1, 3)
        );
        assert_eq!(failure.stage, cairn_dispatch::FailureStage::Upcast);
        assert!(failure.message.contains("cannot be upcast"), "{failure:?}");
        let versions: Vec<(u32, u64)> = report
            .versions
            .iter()
            .map(|count| (count.stored_version, count.n_events))
            .collect();
        assert_eq!(versions, [(1, 4), (3, 1)]);

        // The old build reads its own events, and not the newer one.
        let report = old.check_log(&mut |_, _| {}).await?;
        assert_eq!(report.n_failed, 1);
        assert_eq!(
            (
                report.failures[0].position,
                report.failures[0].stage.clone()
            ),
            (5, cairn_dispatch::FailureStage::Newer)
        );

        // A payload changed without a new version: every old event fails to decode,
        // and the message names the field.
        let changed = projections(Registry::builder())
            .router("gadget", |r| r.event::<ChangedInPlace>(Record))
            .build()?;
        let report = store(&t, changed).await?.check_log(&mut |_, _| {}).await?;
        assert_eq!(report.n_failed, 5, "{report:#?}");
        assert_eq!(
            report.failures[0].stage,
            cairn_dispatch::FailureStage::Decode
        );
        assert!(
            report.failures[0]
                .message
                .contains("event_data.name: unknown field `name`, expected `title`"),
            "{:?}",
            report.failures[0]
        );
        Ok(())
    }
);
