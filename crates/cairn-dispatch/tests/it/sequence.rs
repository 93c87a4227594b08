//! The order in which events are applied, live and in replay: a retry applies its
//! event at its record, a skip resolves a failure, a holding route keeps its stream
//! behind a failure, a paused route holds its events until it is resumed. After any
//! of it, `replay --verify` finds the projections exactly as the log produces them.

use async_trait::async_trait;
use serde_json::json;

use cairn_dispatch::{
    ControlError, Dispatched, EventStore, Handler, HandlerError, HandlerRoute, ProjectionTable,
    Projections, Registry, ReplayOptions, RetryError, VerifyOptions,
};
use cairn_log::{
    AppendError, AppendRequest, EventFilter, HoldCause, Migration, NewEvent, Outcome,
    RecordedEvent, WriteOptions, args,
};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::{EventType, Metadata, Position, StreamId, StreamType};

use crate::{operator, reason};

const THINGS: &[Migration] = &[Migration {
    id: "test/0001_things",
    sqlite: "CREATE TABLE things (id TEXT PRIMARY KEY, color TEXT, painted_at TEXT) STRICT;
             CREATE TABLE applications (event_id TEXT PRIMARY KEY, n INTEGER NOT NULL) STRICT;",
    postgres: "CREATE TABLE things (id UUID PRIMARY KEY, color TEXT, painted_at TIMESTAMPTZ);
               CREATE TABLE applications (event_id UUID PRIMARY KEY, n BIGINT NOT NULL);",
}];

/// Counts every time an event is applied: not idempotent on purpose, so that an event
/// applied twice (live or in replay) shows.
async fn count(event: &RecordedEvent, p: &mut Projections<'_>) -> Result<(), HandlerError> {
    p.execute(
        "INSERT INTO applications (event_id, n) VALUES ($1, 1)
         ON CONFLICT (event_id) DO UPDATE SET n = applications.n + 1",
        args![event.event_id],
    )
    .await?;
    Ok(())
}

struct Created;

#[async_trait]
impl Handler for Created {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        p.execute(
            "INSERT INTO things (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            args![event.stream_id],
        )
        .await?;
        count(event, p).await
    }
}

/// Needs the thing to exist: fails before its stream's `created`.
struct Painted;

#[async_trait]
impl Handler for Painted {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        let color = event.data["color"].as_str().unwrap_or("grey").to_owned();
        let changed = p
            .execute(
                "UPDATE things SET color = $2, painted_at = $3 WHERE id = $1",
                args![event.stream_id, color, event.created_at],
            )
            .await?;
        if changed == 0 {
            return Err(HandlerError::failed(format!(
                "there is no thing {}",
                event.stream_id
            )));
        }
        count(event, p).await
    }
}

/// Writes, then fails: a bug no retry fixes, only a skip.
struct Broken;

#[async_trait]
impl Handler for Broken {
    async fn handle(
        &self,
        event: &RecordedEvent,
        p: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        p.execute(
            "UPDATE things SET color = 'broken' WHERE id = $1",
            args![event.stream_id],
        )
        .await?;
        count(event, p).await?;
        Err(HandlerError::failed("this handler is broken"))
    }
}

/// `widget` streams do not hold; `gadget` streams hold behind a failure.
fn registry() -> Registry {
    Registry::builder()
        .admin_routes()
        .router("widget", |r| {
            r.on("widget.created", Created)
                .on("widget.painted", Painted)
                .on("widget.broken", Broken)
        })
        .router("gadget", |r| {
            r.on("gadget.created", Created)
                .on("gadget.painted", Painted)
                .on("gadget.broken", Broken)
                .hold_streams()
        })
        .projection(ProjectionTable {
            name: "things",
            key: &["id"],
        })
        .projection(ProjectionTable {
            name: "applications",
            key: &["event_id"],
        })
        .build()
        .expect("a valid registry")
}

async fn store(t: &TestDb) -> anyhow::Result<EventStore> {
    t.migrate_sets(&[cairn_dispatch::MIGRATIONS, THINGS])
        .await?;
    Ok(EventStore::new(t.db().clone(), registry()))
}

/// One event to a stream, as `kind` (`created`, `painted`, `broken`).
fn request(stream_type: &str, stream: StreamId, kind: &str, color: &str) -> AppendRequest {
    let event_type = EventType::parse(&format!("{stream_type}.{kind}")).expect("a valid name");
    AppendRequest::new(
        StreamType::parse(stream_type).expect("a valid name"),
        stream,
        vec![NewEvent::new(
            event_type,
            json!({ "color": color }),
            Metadata::new(),
        )],
    )
}

async fn append(
    store: &EventStore,
    stream_type: &str,
    stream: StreamId,
    kind: &str,
) -> anyhow::Result<Dispatched> {
    let appended = store
        .append(request(stream_type, stream, kind, "blue"))
        .await?;
    Ok(appended.events.into_iter().next().expect("one event"))
}

/// An append that requires its event applied, as commands make them.
async fn command(
    store: &EventStore,
    stream_type: &str,
    stream: StreamId,
    kind: &str,
) -> Result<(), AppendError> {
    let store = store.clone();
    let request = request(stream_type, stream, kind, "green");
    let inner = store.clone();
    store
        .db()
        .write(WriteOptions::default(), move |tx| {
            let store = inner.clone();
            let request = request.clone();
            Box::pin(async move { store.append_applied_in(tx, request).await.map(drop) })
        })
        .await
}

async fn stored(store: &EventStore, position: Position) -> anyhow::Result<RecordedEvent> {
    let mut reader = store.db().reader().await?;
    let event = reader.conn().event_at(position).await?;
    event.ok_or_else(|| anyhow::anyhow!("no event at {position}"))
}

async fn color(store: &EventStore, stream: StreamId) -> anyhow::Result<Option<String>> {
    let mut reader = store.db().reader().await?;
    let row = reader
        .conn()
        .fetch_optional("SELECT color FROM things WHERE id = $1", args![stream])
        .await?;
    Ok(match row {
        Some(row) => row.get("color")?,
        None => None,
    })
}

/// The most times any event was applied.
async fn most_applications(store: &EventStore) -> anyhow::Result<i64> {
    let mut reader = store.db().reader().await?;
    let row = reader
        .conn()
        .fetch_one("SELECT COALESCE(MAX(n), 0) AS n FROM applications", args![])
        .await?;
    Ok(row.get("n")?)
}

/// `replay --verify` finds no drift and no changed outcome; then a replay changes no
/// outcome, and the rebuilt projections verify again.
async fn verify_and_replay(store: &EventStore) -> anyhow::Result<()> {
    let report = store
        .verify_projections(VerifyOptions::default(), &mut |_, _| {})
        .await?;
    anyhow::ensure!(report.is_clean(), "drift: {:#?}", report.drift);
    anyhow::ensure!(
        report.outcome_changes.is_empty(),
        "changed outcomes: {:#?}",
        report.outcome_changes
    );
    let replayed = store
        .replay(ReplayOptions::default(), &mut |_, _| {})
        .await?;
    anyhow::ensure!(
        replayed.changed.is_empty(),
        "replay changed outcomes: {:#?}",
        replayed.changed
    );
    let again = store
        .verify_projections(VerifyOptions::default(), &mut |_, _| {})
        .await?;
    anyhow::ensure!(
        again.is_clean() && again.outcome_changes.is_empty(),
        "after replay: {:#?} {:#?}",
        again.drift,
        again.outcome_changes
    );
    anyhow::ensure!(
        most_applications(store).await? <= 1,
        "an event was applied twice"
    );
    Ok(())
}

#[track_caller]
fn assert_failed(outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "expected a failure, got {outcome:?}"
    );
}

// The reproduction of the issue "Through outages and mistakes": an event appended
// before its stream's first event fails; the first event is appended, the failed one
// retried. Replay used to apply the retried event at its own position (before the
// first event) and report drift.
backend_test!(
    a_retry_applies_where_it_is_recorded_and_replay_agrees,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let widget = StreamId::new_v7();
        let early = append(&store, "widget", widget, "painted").await?;
        assert_failed(&early.outcome);
        let created = append(&store, "widget", widget, "created").await?;
        assert_eq!(created.outcome, Outcome::Applied);

        let retried = store.retry(early.event.event_id, &operator()).await?;
        assert_eq!(retried.outcome, Outcome::Applied, "{retried:?}");
        assert_eq!(color(&store, widget).await?.as_deref(), Some("blue"));

        // The retry is a record of its own, after the event it retried.
        let records = store
            .db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter {
                stream_type: Some(StreamType::parse("dispatch")?),
                ..EventFilter::default()
            })
            .await?;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event_type.as_str(), "dispatch.event_retried");
        assert_eq!(
            records[0].data["position"],
            json!(early.event.position.get())
        );
        assert!(records[0].position > created.event.position);
        assert_eq!(
            records[0].metadata.correlation_id, early.event.metadata.correlation_id,
            "in the retried event's timeline"
        );

        verify_and_replay(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_holding_stream_waits_behind_its_failure_until_it_is_skipped,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let gadget = StreamId::new_v7();
        let other = StreamId::new_v7();
        let first = append(&store, "gadget", gadget, "painted").await?;
        assert_failed(&first.outcome);
        let created = append(&store, "gadget", gadget, "created").await?;
        assert_eq!(
            created.outcome,
            Outcome::Held {
                behind: first.event.position
            }
        );
        let painted = append(&store, "gadget", gadget, "painted").await?;
        assert_eq!(
            painted.outcome,
            Outcome::Held {
                behind: first.event.position
            }
        );
        // Another stream of the same route is not held.
        assert_eq!(
            append(&store, "gadget", other, "created").await?.outcome,
            Outcome::Applied
        );
        // A command on the held stream is refused and writes nothing.
        let head = store.db().reader().await?.conn().head().await?;
        let refused = command(&store, "gadget", gadget, "painted")
            .await
            .expect_err("the stream is held");
        assert!(
            matches!(&refused, AppendError::Held { behind, cause: HoldCause::Failed, .. } if *behind == first.event.position),
            "{refused:?}"
        );
        assert_eq!(store.db().reader().await?.conn().head().await?, head);

        // A held event cannot be retried directly: it names what it waits behind.
        let error = store
            .retry(created.event.event_id, &operator())
            .await
            .expect_err("held");
        assert!(
            matches!(&error, RetryError::Held { behind, behind_event, .. }
            if *behind == first.event.position && *behind_event == Some(first.event.event_id)),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains(&first.event.event_id.to_string()),
            "{error}"
        );

        // Retried, it fails again (there is no gadget yet): the stream stays held.
        let again = store.retry(first.event.event_id, &operator()).await?;
        assert_failed(&again.outcome);
        assert!(stored(&store, created.event.position).await?.is_held());

        // Skipped, the held events apply, in position order.
        let skipped = store
            .skip(
                first.event.event_id,
                &operator(),
                reason("painted before it existed"),
            )
            .await?;
        assert_eq!(
            skipped.outcome,
            Outcome::Applied,
            "a skipped event reads as processed"
        );
        assert!(!skipped.event.is_failed());
        assert_eq!(
            stored(&store, created.event.position).await?.last_outcome(),
            Some(Outcome::Applied)
        );
        assert_eq!(color(&store, gadget).await?.as_deref(), Some("blue"));
        assert!(command(&store, "gadget", gadget, "painted").await.is_ok());
        assert_eq!(color(&store, gadget).await?.as_deref(), Some("green"));
        verify_and_replay(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_release_that_meets_another_failure_holds_the_rest_behind_it,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let gadget = StreamId::new_v7();
        let first = append(&store, "gadget", gadget, "painted").await?;
        let created = append(&store, "gadget", gadget, "created").await?;
        let broken = append(&store, "gadget", gadget, "broken").await?;
        let last = append(&store, "gadget", gadget, "painted").await?;
        assert!(matches!(broken.outcome, Outcome::Held { .. }));
        store
            .skip(first.event.event_id, &operator(), reason("out of order"))
            .await?;
        assert_eq!(
            stored(&store, created.event.position).await?.last_outcome(),
            Some(Outcome::Applied)
        );
        assert!(stored(&store, broken.event.position).await?.is_failed());
        assert_eq!(
            stored(&store, last.event.position).await?.last_outcome(),
            Some(Outcome::Held {
                behind: broken.event.position
            })
        );
        verify_and_replay(&store).await?;
        store
            .skip(broken.event.event_id, &operator(), reason("a known bug"))
            .await?;
        assert_eq!(
            stored(&store, last.event.position).await?.last_outcome(),
            Some(Outcome::Applied)
        );
        verify_and_replay(&store).await?;
        Ok(())
    }
);

backend_test!(
    a_paused_route_holds_its_events_and_applies_them_in_order_on_resume,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let route = HandlerRoute::stream_type(StreamType::parse("widget")?);
        let pause = store
            .pause_route(
                route.clone(),
                &operator(),
                reason("deploying a handler fix"),
            )
            .await?;
        assert_eq!(pause.paused_by, "service:test-operator");
        assert_eq!(pause.reason, "deploying a handler fix");

        let (a, b) = (StreamId::new_v7(), StreamId::new_v7());
        let a_created = append(&store, "widget", a, "created").await?;
        assert_eq!(
            a_created.outcome,
            Outcome::Held {
                behind: a_created.event.position
            }
        );
        let a_painted = append(&store, "widget", a, "painted").await?;
        assert_eq!(
            a_painted.outcome,
            Outcome::Held {
                behind: a_created.event.position
            }
        );
        let b_created = append(&store, "widget", b, "created").await?;
        assert!(matches!(b_created.outcome, Outcome::Held { .. }));
        // Another route is not paused.
        assert_eq!(
            append(&store, "gadget", StreamId::new_v7(), "created")
                .await?
                .outcome,
            Outcome::Applied
        );
        // A command on the paused route is refused, saying who paused it and why.
        let refused = command(&store, "widget", StreamId::new_v7(), "created")
            .await
            .expect_err("paused");
        assert!(
            matches!(
                &refused,
                AppendError::Held {
                    cause: HoldCause::Paused,
                    ..
                }
            ),
            "{refused:?}"
        );
        let text = refused.to_string();
        assert!(
            text.contains("paused by service:test-operator")
                && text.contains("deploying a handler fix"),
            "{text}"
        );
        verify_and_replay(&store).await?;

        let resumed = store
            .resume_route(route.clone(), &operator(), reason("fix deployed"))
            .await?;
        assert_eq!(resumed.n_streams_released, 2, "{resumed:?}");
        assert_eq!(resumed.n_streams_still_held, 0);
        for event in [&a_created, &a_painted, &b_created] {
            assert_eq!(
                stored(&store, event.event.position).await?.last_outcome(),
                Some(Outcome::Applied),
                "{}",
                event.event.event_type
            );
        }
        assert_eq!(color(&store, a).await?.as_deref(), Some("blue"));
        assert!(command(&store, "widget", b, "painted").await.is_ok());
        verify_and_replay(&store).await?;
        Ok(())
    }
);

backend_test!(
    an_event_type_pause_holds_only_that_type_and_its_stream,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let route = HandlerRoute {
            stream_type: StreamType::parse("widget")?,
            event_type: Some(EventType::parse("widget.painted")?),
        };
        store
            .pause_route(route.clone(), &operator(), reason("paint shop closed"))
            .await?;
        let widget = StreamId::new_v7();
        assert_eq!(
            append(&store, "widget", widget, "created").await?.outcome,
            Outcome::Applied
        );
        let painted = append(&store, "widget", widget, "painted").await?;
        assert!(matches!(painted.outcome, Outcome::Held { .. }));
        // Its stream waits behind it, whatever the type of its later events.
        let later = append(&store, "widget", widget, "created").await?;
        assert_eq!(
            later.outcome,
            Outcome::Held {
                behind: painted.event.position
            }
        );
        // A retry of an event whose route is paused is refused.
        let other = StreamId::new_v7();
        let failed = append(&store, "widget", other, "broken").await?;
        assert_failed(&failed.outcome);
        store
            .pause_route(
                HandlerRoute::stream_type(StreamType::parse("widget")?),
                &operator(),
                reason("all of it"),
            )
            .await?;
        let error = store
            .retry(failed.event.event_id, &operator())
            .await
            .expect_err("paused");
        assert!(matches!(error, RetryError::RoutePaused { .. }), "{error:?}");
        // Resuming the stream type leaves the event type's own pause.
        store
            .resume_route(
                HandlerRoute::stream_type(StreamType::parse("widget")?),
                &operator(),
                reason("back"),
            )
            .await?;
        assert!(stored(&store, painted.event.position).await?.is_held());
        store
            .resume_route(route, &operator(), reason("paint shop open"))
            .await?;
        assert!(!stored(&store, later.event.position).await?.is_held());
        verify_and_replay(&store).await?;
        Ok(())
    }
);

backend_test!(
    pauses_that_make_no_sense_are_refused_and_change_nothing,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let head = store.db().reader().await?.conn().head().await?;
        let route = |name: &str| HandlerRoute::stream_type(StreamType::parse(name).expect("valid"));
        // (route, what the refusal says, whether the route is unknown rather than
        // not pausable)
        let cases = [
            (
                route("nothing"),
                "there is no handler route for stream type \"nothing\"",
                true,
            ),
            (route("test"), "has no handlers to pause", false),
            (route("dispatch"), "cannot be paused", false),
            (
                HandlerRoute {
                    stream_type: StreamType::parse("widget")?,
                    event_type: Some(EventType::parse("widget.sold")?),
                },
                "has no handler for event type \"widget.sold\"",
                true,
            ),
        ];
        for (route, message, unknown) in cases {
            let error = store
                .pause_route(route.clone(), &operator(), reason("why not"))
                .await
                .expect_err("refused");
            assert!(
                if unknown {
                    matches!(&error, ControlError::UnknownRoute(_))
                } else {
                    matches!(&error, ControlError::NotPausable(_))
                } && error.to_string().contains(message),
                "{route}: {error:?}"
            );
        }
        let error = store
            .resume_route(route("widget"), &operator(), reason("never paused"))
            .await
            .expect_err("not paused");
        assert!(matches!(error, ControlError::NotPaused { .. }), "{error:?}");
        assert_eq!(store.db().reader().await?.conn().head().await?, head);

        store
            .pause_route(route("widget"), &operator(), reason("once"))
            .await?;
        let error = store
            .pause_route(route("widget"), &operator(), reason("twice"))
            .await
            .expect_err("already");
        assert!(
            matches!(&error, ControlError::AlreadyPaused(pause) if pause.reason == "once"),
            "{error:?}"
        );
        // Skipping or retrying what is not failed is refused.
        let fine = append(&store, "gadget", StreamId::new_v7(), "created").await?;
        let error = store
            .skip(fine.event.event_id, &operator(), reason("no"))
            .await
            .expect_err("not failed");
        assert!(matches!(error, RetryError::NotFailed { .. }), "{error:?}");
        Ok(())
    }
);

// A writer batch that holds, releases and retries: the units share one transaction,
// and what each sees is what the ones before it did.
backend_test!(
    decisions_in_one_batch_see_each_other,
    |t: TestDb| async move {
        let store = store(&t).await?;
        let gadget = StreamId::new_v7();
        let first = append(&store, "gadget", gadget, "painted").await?;
        // Appended together: they may share a batch with the skip.
        let by = operator();
        let (skip, created, painted) = tokio::join!(
            store.skip(first.event.event_id, &by, reason("together")),
            append(&store, "gadget", gadget, "created"),
            append(&store, "gadget", gadget, "painted"),
        );
        skip?;
        let (created, painted) = (created?, painted?);
        for event in [&created, &painted] {
            assert_eq!(
                stored(&store, event.event.position).await?.last_outcome(),
                Some(Outcome::Applied),
                "{event:?}"
            );
        }
        verify_and_replay(&store).await?;
        Ok(())
    }
);

mod properties {
    //! Random sequences of appends (some failing in their handler), commands, retries,
    //! skips, pauses and resumes over a few streams of a holding and a non-holding
    //! route: afterwards `replay --verify` is clean, a replay changes no outcome, and
    //! no event was applied twice. `PROPTEST_CASES` sets how many sequences (16 by
    //! default: each runs on a fresh database).
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// An append of `kind` to stream `stream` of route `gadget` (holding) or not.
        Append {
            gadget: bool,
            stream: usize,
            kind: &'static str,
        },
        /// A command (every event required applied): refused when held or paused.
        Command {
            gadget: bool,
            stream: usize,
        },
        /// Several appends at once: they share the writer's batches.
        Burst(Vec<(bool, usize, &'static str)>),
        /// Retry the `n`th failed event (modulo how many there are).
        Retry(usize),
        /// Skip the `n`th failed event.
        Skip(usize),
        RetryAll,
        Pause(usize),
        Resume(usize),
    }

    const KINDS: [&str; 3] = ["created", "painted", "broken"];

    fn kind() -> impl Strategy<Value = &'static str> {
        prop_oneof![4 => Just(KINDS[0]), 4 => Just(KINDS[1]), 1 => Just(KINDS[2])]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (any::<bool>(), 0..3_usize, kind())
                .prop_map(|(gadget, stream, kind)| Op::Append { gadget, stream, kind }),
            2 => (any::<bool>(), 0..3_usize).prop_map(|(gadget, stream)| Op::Command { gadget, stream }),
            2 => prop::collection::vec((any::<bool>(), 0..3_usize, kind()), 2..5).prop_map(Op::Burst),
            3 => any::<usize>().prop_map(Op::Retry),
            2 => any::<usize>().prop_map(Op::Skip),
            1 => Just(Op::RetryAll),
            1 => (0..3_usize).prop_map(Op::Pause),
            1 => (0..3_usize).prop_map(Op::Resume),
        ]
    }

    fn route(n: usize) -> HandlerRoute {
        match n {
            0 => HandlerRoute::stream_type(StreamType::parse("widget").expect("valid")),
            1 => HandlerRoute::stream_type(StreamType::parse("gadget").expect("valid")),
            _ => HandlerRoute {
                stream_type: StreamType::parse("gadget").expect("valid"),
                event_type: Some(EventType::parse("gadget.painted").expect("valid")),
            },
        }
    }

    async fn failed(store: &EventStore) -> anyhow::Result<Vec<RecordedEvent>> {
        let mut reader = store.db().reader().await?;
        Ok(reader
            .conn()
            .read_events(&EventFilter {
                failed: true,
                ..EventFilter::default()
            })
            .await?)
    }

    async fn run(t: &TestDb, ops: Vec<Op>) -> anyhow::Result<()> {
        let store = store(t).await?;
        let widgets: Vec<StreamId> = (0..3).map(|_| StreamId::new_v7()).collect();
        let gadgets: Vec<StreamId> = (0..3).map(|_| StreamId::new_v7()).collect();
        let stream = |gadget: bool, n: usize| {
            if gadget {
                ("gadget", gadgets[n])
            } else {
                ("widget", widgets[n])
            }
        };
        for op in ops {
            match op {
                Op::Append {
                    gadget,
                    stream: n,
                    kind,
                } => {
                    let (stream_type, id) = stream(gadget, n);
                    append(&store, stream_type, id, kind).await?;
                }
                Op::Command { gadget, stream: n } => {
                    let (stream_type, id) = stream(gadget, n);
                    match command(&store, stream_type, id, "painted").await {
                        Ok(()) | Err(AppendError::Held { .. } | AppendError::NotApplied { .. }) => {
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                Op::Burst(appends) => {
                    let futures = appends.into_iter().map(|(gadget, n, kind)| {
                        let (stream_type, id) = stream(gadget, n);
                        let store = store.clone();
                        async move { append(&store, stream_type, id, kind).await }
                    });
                    for result in futures::future::join_all(futures).await {
                        result?;
                    }
                }
                Op::Retry(n) | Op::Skip(n) => {
                    let failed = failed(&store).await?;
                    let Some(target) = failed.get(n % failed.len().max(1)) else {
                        continue;
                    };
                    let result = match op {
                        Op::Retry(_) => store.retry(target.event_id, &operator()).await,
                        _ => {
                            store
                                .skip(target.event_id, &operator(), reason("property"))
                                .await
                        }
                    };
                    match result {
                        Ok(_) | Err(RetryError::RoutePaused { .. }) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                Op::RetryAll => {
                    store
                        .retry_failed(&Default::default(), &operator(), &mut |_, _| {})
                        .await?;
                }
                Op::Pause(n) => match store.pause_route(route(n), &operator(), reason("p")).await {
                    Ok(_) | Err(ControlError::AlreadyPaused(_)) => {}
                    Err(error) => return Err(error.into()),
                },
                Op::Resume(n) => match store.resume_route(route(n), &operator(), reason("r")).await
                {
                    Ok(_) | Err(ControlError::NotPaused { .. }) => {}
                    Err(error) => return Err(error.into()),
                },
            }
        }
        verify_and_replay(&store).await
    }

    fn check(backend: cairn_testkit::Backend) {
        let config = ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|cases| cases.parse().ok())
                .unwrap_or(16),
            failure_persistence: None,
            max_shrink_iters: 64,
            ..ProptestConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
            runtime.block_on(async {
                let t = TestDb::new(backend, "sequence_properties").await;
                run(&t, ops)
                    .await
                    .map_err(|error| TestCaseError::fail(format!("{error:#}")))
            })
        });
        if let Err(error) = result {
            panic!("{error}");
        }
    }

    #[test]
    fn live_equals_replay_whatever_the_operators_did_sqlite() {
        check(cairn_testkit::Backend::Sqlite);
    }

    #[test]
    fn live_equals_replay_whatever_the_operators_did_postgres() {
        check(cairn_testkit::Backend::Postgres);
    }
}
