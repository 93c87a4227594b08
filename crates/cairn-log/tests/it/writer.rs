//! The log writer on both backends and in both write modes: units of work that share
//! a transaction, neighbours that fail, a bounded queue, panics, and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_log::{
    Admission, AppendError, Db, DbError, DbErrorKind, Prepared, RecordedEvent, WriteMode,
    WriteOptions, WriterConfig, args,
};
use cairn_testkit::{TestDb, backend_test};
use cairn_types::StreamId;
use serde_json::json;

use crate::common::{all_events, ping, request};

/// A unit of work that appends one event and then, if `fail`, writes a marker row and
/// refuses (so that it has something to undo).
async fn append_unit(db: &Db, n: i64, fail: bool) -> Result<Vec<RecordedEvent>, AppendError> {
    db.write(WriteOptions::default(), move |tx| {
        Box::pin(async move {
            let events = match tx
                .prepare_append(request(StreamId::new_v7(), vec![ping(n)]))
                .await?
            {
                Prepared::New(pending) => tx.write_append(pending).await?,
                Prepared::Repeat(events) => events,
            };
            if fail {
                tx.conn()
                    .execute(
                        "UPDATE log_head SET failed_events = failed_events + 1000 WHERE id = 1",
                        args![],
                    )
                    .await?;
                return Err(AppendError::NoEvents);
            }
            Ok(events)
        })
    })
    .await
}

/// Always false; keeps the compiler from seeing that the panic is certain.
fn pending_is_empty() -> bool {
    std::hint::black_box(false)
}

fn config(backend: cairn_testkit::Backend, mode: WriteMode) -> WriterConfig {
    WriterConfig {
        mode,
        ..WriterConfig::for_backend(backend)
    }
}

/// Many units at once, every fifth refusing after it wrote: the others commit, the
/// refused ones leave nothing, positions stay gapless, in both write modes.
async fn neighbours_are_unaffected(t: &TestDb, mode: WriteMode) -> anyhow::Result<()> {
    let db = t.connect_with(config(t.backend(), mode)).await?;
    let mut tasks = Vec::new();
    for n in 0..200_i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            (n, append_unit(&db, n, n % 5 == 0).await)
        }));
    }
    let mut committed = Vec::new();
    for task in tasks {
        let (n, result) = task.await?;
        match result {
            Ok(events) => committed.push((n, events[0].position)),
            Err(AppendError::NoEvents) => assert_eq!(n % 5, 0, "unit {n} refused"),
            Err(other) => anyhow::bail!("unit {n}: {other:#}"),
        }
    }
    assert_eq!(
        committed.len(),
        160,
        "every unit that did not refuse committed"
    );
    let events = all_events(&db).await?;
    let positions: Vec<i64> = events.iter().map(|e| e.position.get()).collect();
    assert_eq!(
        positions,
        (1..=160).collect::<Vec<_>>(),
        "gapless, refused units left no event"
    );
    for (n, position) in committed {
        let event = &events[usize::try_from(position.get() - 1)?];
        assert_eq!(
            event.data,
            json!({ "n": n }),
            "each unit got its own event back"
        );
    }
    let head = db.reader().await?.conn().head().await?;
    assert_eq!(
        head.failed_events, 0,
        "the refused units' writes were undone"
    );
    assert!(db.verify_chain(&mut |_, _| {}).await?.is_intact());
    db.close().await;
    Ok(())
}

backend_test!(
    a_refused_unit_leaves_its_neighbours_alone_with_savepoints,
    |t: TestDb| async move { neighbours_are_unaffected(&t, WriteMode::Savepoints).await }
);

backend_test!(
    a_refused_unit_leaves_its_neighbours_alone_optimistically,
    |t: TestDb| async move { neighbours_are_unaffected(&t, WriteMode::Optimistic).await }
);

/// What a unit that refused says it saw.
#[derive(Debug)]
enum Refusal {
    /// How many rows its write changed, as the unit was told.
    Changed(u64),
    Database(DbError),
}

impl From<DbError> for Refusal {
    fn from(error: DbError) -> Self {
        Self::Database(error)
    }
}

backend_test!(
    a_refusal_rests_on_what_its_writes_really_changed,
    |t: TestDb| async move {
        // A lease's fence is such a write: it changes its row only if the lease still
        // holds, and the unit refuses on what it heard. Optimistically on PostgreSQL
        // the write is queued and reported as having changed one row; the refusal must
        // not stand on that report when PostgreSQL would deny it.
        for mode in [WriteMode::Savepoints, WriteMode::Optimistic] {
            let db = t.connect_with(config(t.backend(), mode)).await?;
            let fenced = db.write(WriteOptions::default(), |tx| {
                Box::pin(async move {
                    let changed = tx
                        .conn()
                        .execute(
                            "UPDATE log_head SET failed_events = failed_events WHERE id = 2",
                            args![],
                        )
                        .await?;
                    Err::<(), _>(Refusal::Changed(changed))
                })
            });
            let (fenced, neighbour) = tokio::join!(fenced, append_unit(&db, 1, false));
            match fenced {
                Err(Refusal::Changed(0)) => {}
                Err(Refusal::Database(error)) => anyhow::bail!("{mode:?}: {error}"),
                other => anyhow::bail!("{mode:?}: the write changed no row, yet: {other:?}"),
            }
            neighbour?;
            db.close().await;
        }
        Ok(())
    }
);

backend_test!(
    a_panicking_unit_is_rolled_back_alone,
    |t: TestDb| async move {
        for mode in [WriteMode::Savepoints, WriteMode::Optimistic] {
            let db = t.connect_with(config(t.backend(), mode)).await?;
            let before = all_events(&db).await?.len();
            let panicking = db.write(WriteOptions::default(), |tx| {
                Box::pin(async move {
                    let pending = match tx
                        .prepare_append(request(StreamId::new_v7(), vec![ping(0)]))
                        .await?
                    {
                        Prepared::New(pending) => pending,
                        Prepared::Repeat(_) => unreachable!("no key"),
                    };
                    tx.write_append(pending).await?;
                    if !pending_is_empty() {
                        panic!("the unit of work panics on purpose");
                    }
                    Ok::<(), AppendError>(())
                })
            });
            let (panicked, neighbour) = tokio::join!(panicking, append_unit(&db, 1, false));
            match panicked {
                Err(AppendError::Database(DbError::Panicked { message })) => {
                    assert!(message.contains("on purpose"), "{message}");
                }
                other => anyhow::bail!("expected a panic to be reported, got {other:?}"),
            }
            neighbour?;
            // The writer goes on.
            append_unit(&db, 2, false).await?;
            assert_eq!(all_events(&db).await?.len(), before + 2, "{mode:?}");
            db.close().await;
        }
        Ok(())
    }
);

backend_test!(
    a_full_queue_refuses_or_waits_and_loses_nothing,
    |t: TestDb| async move {
        let db = t
            .connect_with(WriterConfig {
                capacity: 2,
                max_batch: 1,
                ..WriterConfig::for_backend(t.backend())
            })
            .await?;
        let refused = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..100_i64 {
            let db = db.clone();
            let refused = refused.clone();
            tasks.push(tokio::spawn(async move {
                let options = WriteOptions {
                    admission: if n % 2 == 0 {
                        Admission::Refuse
                    } else {
                        Admission::Wait
                    },
                    ..WriteOptions::default()
                };
                let result: Result<u64, DbError> = db
                    .write(options, move |tx| {
                        Box::pin(async move {
                            tx.conn()
                                .execute("UPDATE log_head SET failed_events = failed_events WHERE id = 1", args![])
                                .await
                        })
                    })
                    .await;
                match result {
                    Ok(_) => true,
                    Err(error) => {
                        assert_eq!(error.kind(), DbErrorKind::Overloaded, "{error}");
                        assert_eq!(n % 2, 0, "a waiting caller is never refused");
                        assert!(error.to_string().contains("try again"), "{error}");
                        refused.fetch_add(1, Ordering::SeqCst);
                        false
                    }
                }
            }));
        }
        let mut done = 0;
        for task in tasks {
            done += usize::from(task.await?);
        }
        let refused = refused.load(Ordering::SeqCst);
        assert!(
            refused > 0,
            "a queue of two refuses some of fifty eager callers"
        );
        assert_eq!(done + refused, 100, "every caller was answered");
        db.close().await;
        Ok(())
    }
);

backend_test!(
    closing_finishes_every_unit_already_taken,
    |t: TestDb| async move {
        let db = t.connect_again().await?;
        let mut tasks = Vec::new();
        for n in 0..50_i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(
                async move { append_unit(&db, n, false).await },
            ));
        }
        // Let every unit reach the queue, then close while most still wait.
        tokio::task::yield_now().await;
        while db.writer_queued() == 0 && tasks.iter().all(|task| !task.is_finished()) {
            tokio::task::yield_now().await;
        }
        let close = db.clone();
        let closing = tokio::spawn(async move { close.close().await });
        let mut answered = 0;
        for task in tasks {
            match task.await? {
                Ok(_) => answered += 1,
                Err(AppendError::Database(DbError::WriterStopped)) => {}
                Err(other) => anyhow::bail!("{other:#}"),
            }
        }
        closing.await?;
        let reader = t.connect_again().await?;
        assert_eq!(
            all_events(&reader).await?.len(),
            answered,
            "every unit answered with success is in the log, and no other"
        );
        Ok(())
    }
);

/// A unit that appends event `n`, and first waits at `gate` if it has one.
async fn gated_unit(
    db: &Db,
    n: i64,
    options: WriteOptions,
    gate: Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
) -> Result<Vec<RecordedEvent>, AppendError> {
    db.write(options, move |tx| {
        let gate = gate.clone();
        Box::pin(async move {
            if let Some((started, open)) = gate {
                let opened = open.notified();
                started.notify_one();
                opened.await;
            }
            match tx
                .prepare_append(request(StreamId::new_v7(), vec![ping(n)]))
                .await?
            {
                Prepared::New(pending) => Ok(tx.write_append(pending).await?),
                Prepared::Repeat(events) => Ok(events),
            }
        })
    })
    .await
}

/// Waits until the writer's queue holds `n` units.
async fn queued(db: &Db, n: usize) {
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while db.writer_queued() < n {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the writer's queue never held {n} units");
}

/// An urgent unit (the record of an email already sent) that arrives while a long
/// batch of normal work runs does not wait for the rest of that batch: the batch
/// commits what it ran and puts the rest back, the urgent unit commits next, and the
/// rest follow in their order, each once.
async fn urgent_work_cuts_a_batch_short(t: &TestDb, mode: WriteMode) -> anyhow::Result<()> {
    let db = t.connect_with(config(t.backend(), mode)).await?;
    let gate = || {
        (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        )
    };
    // A unit that holds the writer while the batch behind it gathers.
    let (held, release) = gate();
    let blocker = tokio::spawn({
        let db = db.clone();
        let gate = (held.clone(), release.clone());
        async move { gated_unit(&db, 0, WriteOptions::default(), Some(gate)).await }
    });
    held.notified().await;
    // The batch: a first unit that waits at its own gate, then twenty more.
    let (first_started, first_open) = gate();
    let mut normal = Vec::new();
    for n in 1..=21_i64 {
        let unit_db = db.clone();
        let gate = (n == 1).then(|| (first_started.clone(), first_open.clone()));
        normal.push(tokio::spawn(async move {
            gated_unit(&unit_db, n, WriteOptions::default(), gate).await
        }));
        queued(&db, usize::try_from(n)?).await;
    }
    release.notify_one();
    first_started.notified().await;
    let urgent = tokio::spawn({
        let db = db.clone();
        async move { gated_unit(&db, 100, WriteOptions::urgent(), None).await }
    });
    // The batch took the twenty-one: the urgent unit is all that waits.
    queued(&db, 1).await;
    first_open.notify_one();

    blocker.await??;
    let urgent = urgent.await??;
    for task in normal {
        task.await??;
    }
    let order: Vec<i64> = all_events(&db)
        .await?
        .iter()
        .filter_map(|event| event.data["n"].as_i64())
        .collect();
    let mut expected = vec![0, 1, 100];
    expected.extend(2..=21);
    assert_eq!(
        order, expected,
        "the urgent unit commits right after the unit that was running"
    );
    assert_eq!(urgent[0].position.get(), 3);
    assert!(db.verify_chain(&mut |_, _| {}).await?.is_intact());
    db.close().await;
    Ok(())
}

backend_test!(
    urgent_work_cuts_a_batch_short_with_savepoints,
    |t: TestDb| async move { urgent_work_cuts_a_batch_short(&t, WriteMode::Savepoints).await }
);

backend_test!(
    urgent_work_cuts_a_batch_short_optimistically,
    |t: TestDb| async move { urgent_work_cuts_a_batch_short(&t, WriteMode::Optimistic).await }
);

/// Waits until `flag` is set, or `patience` has passed (then goes on regardless).
async fn wait_for(flag: &tokio::sync::watch::Sender<bool>, patience: std::time::Duration) {
    let mut seen = flag.subscribe();
    let _ = tokio::time::timeout(patience, seen.wait_for(|set| *set)).await;
}

/// A unit that keeps the writer of `db` busy until `go` is set, so that the units
/// submitted meanwhile make up its next batch, in their order.
fn plug(db: &Db, go: Arc<tokio::sync::watch::Sender<bool>>) -> tokio::task::JoinHandle<()> {
    let db = db.clone();
    tokio::spawn(async move {
        let _ = db
            .write(WriteOptions::default(), move |_tx| {
                let go = go.clone();
                Box::pin(async move {
                    wait_for(&go, std::time::Duration::from_secs(30)).await;
                    Ok::<(), DbError>(())
                })
            })
            .await;
    })
}

/// Two processes' writers on PostgreSQL, each with a batch that locks a row and
/// appends, in opposite orders: the first locks the row and then wants the log head,
/// the second holds the head (its append) and then wants the row. Every writer
/// transaction takes the head first, so neither waits on the other for the row while
/// holding the head, and both batches commit; before, PostgreSQL broke the cycle by
/// failing one of them with a deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_two_processes_do_not_deadlock_on_postgres() -> cairn_testkit::TestResult {
    cairn_testkit::run(
        cairn_testkit::Backend::Postgres,
        "writer::writers_of_two_processes_do_not_deadlock",
        |t: TestDb| async move {
            let mut setup = t.db().begin().await?;
            setup
                .conn()
                .execute_script(
                    "CREATE TABLE contended (id BIGINT PRIMARY KEY, n BIGINT NOT NULL); \
                     INSERT INTO contended VALUES (1, 0)",
                )
                .await?;
            setup.commit().await?;
            let mode = config(t.backend(), WriteMode::Savepoints);
            let (first, second) = (t.connect_with(mode).await?, t.connect_with(mode).await?);
            let flag = || Arc::new(tokio::sync::watch::channel(false).0);
            let (go, row_locked, head_held) = (flag(), flag(), flag());
            let patience = std::time::Duration::from_secs(3);
            let plugs = [plug(&first, go.clone()), plug(&second, go.clone())];
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;

            let bump =
                |db: &Db,
                 then: Option<Arc<tokio::sync::watch::Sender<bool>>>,
                 after: Option<Arc<tokio::sync::watch::Sender<bool>>>| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.write(WriteOptions::default(), move |tx| {
                            let (then, after) = (then.clone(), after.clone());
                            Box::pin(async move {
                                tx.conn()
                                    .execute("UPDATE contended SET n = n + 1 WHERE id = 1", args![])
                                    .await?;
                                if let Some(then) = then {
                                    then.send_replace(true);
                                }
                                if let Some(after) = after {
                                    wait_for(&after, patience).await;
                                }
                                Ok::<(), AppendError>(())
                            })
                        })
                        .await
                    })
                };
            let appended =
                |db: &Db,
                 after: Option<Arc<tokio::sync::watch::Sender<bool>>>,
                 then: Option<Arc<tokio::sync::watch::Sender<bool>>>| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.write(WriteOptions::default(), move |tx| {
                            let (after, then) = (after.clone(), then.clone());
                            Box::pin(async move {
                                if let Some(after) = after {
                                    wait_for(&after, patience).await;
                                }
                                let pending = match tx
                                    .prepare_append(request(StreamId::new_v7(), vec![ping(1)]))
                                    .await?
                                {
                                    Prepared::New(pending) => pending,
                                    Prepared::Repeat(_) => return Err(AppendError::NoEvents),
                                };
                                tx.write_append(pending).await?;
                                if let Some(then) = then {
                                    then.send_replace(true);
                                }
                                Ok::<(), AppendError>(())
                            })
                        })
                        .await
                    })
                };
            // The first: lock the row, wait (a while) for the second to hold the head,
            // then append. The second: once the row is locked, append (the head), then
            // lock the row.
            // Submitted one by one, so that each batch holds its units in this order.
            let pause = std::time::Duration::from_millis(50);
            let mut units = Vec::new();
            units.push(bump(
                &first,
                Some(row_locked.clone()),
                Some(head_held.clone()),
            ));
            tokio::time::sleep(pause).await;
            units.push(appended(&first, None, None));
            tokio::time::sleep(pause).await;
            units.push(appended(
                &second,
                Some(row_locked.clone()),
                Some(head_held.clone()),
            ));
            tokio::time::sleep(pause).await;
            units.push(bump(&second, None, None));
            tokio::time::sleep(pause).await;
            go.send_replace(true);
            for plug in plugs {
                plug.await?;
            }
            for (index, unit) in units.into_iter().enumerate() {
                if let Err(error) = unit.await? {
                    anyhow::bail!("unit {index} failed: {:#}", anyhow::Error::from(error));
                }
            }
            let row = t
                .db()
                .reader()
                .await?
                .conn()
                .fetch_one("SELECT n FROM contended WHERE id = 1", args![])
                .await?;
            assert_eq!(row.get::<i64>("n")?, 2, "both batches' updates committed");
            Ok(())
        },
    )
    .await
}

/// Appends `n` to `stream` through `db`'s writer, expecting the stream at `version`.
async fn append_to(
    db: &Db,
    stream: StreamId,
    version: i64,
    n: i64,
) -> Result<Vec<RecordedEvent>, AppendError> {
    db.write_to(WriteOptions::default(), &[stream], move |tx| {
        Box::pin(async move {
            let request = request(stream, vec![ping(n)]).expect(cairn_log::Expected::Exact(
                cairn_types::StreamVersion::new(version),
            ));
            match tx.prepare_append(request).await? {
                Prepared::New(pending) => tx.write_append(pending).await,
                Prepared::Repeat(events) => Ok(events),
            }
        })
    })
    .await
}

backend_test!(
    writers_of_two_processes_taking_turns_on_one_stream_see_each_others_appends,
    |t: TestDb| async move {
        // The PostgreSQL writer starts a batch from the head and stream versions its
        // last batch left, checking in the same round trip that the head is unchanged:
        // another process's append in between must be seen, never overwritten or
        // reported as a conflict.
        let first = t.connect_again().await?;
        let second = t.connect_again().await?;
        let stream = StreamId::new_v7();
        let mut positions = Vec::new();
        let reruns = cairn_observe::metrics().writer_reruns.get();
        let stale_batches = cairn_observe::metrics().writer_stale_batches.get();
        for n in 0..40_i64 {
            let db = if n % 3 == 2 { &second } else { &first };
            let events = append_to(db, stream, n, n).await?;
            assert_eq!(events[0].stream_version.get(), n + 1, "append {n}");
            positions.push(events[0].position.get());
        }
        // A stale expectation is a conflict, from either process, and writes nothing.
        let stale = append_to(&first, stream, 10, 99).await;
        assert!(
            matches!(stale, Err(AppendError::Conflict { .. })),
            "{stale:?}"
        );
        if t.backend() == cairn_testkit::Backend::Postgres {
            // A writer whose batch started from what it knew found the head moved by
            // the other process, and ran the batch again reading it (then read the head
            // first for a while).
            assert!(
                cairn_observe::metrics().writer_reruns.get() > reruns
                    && cairn_observe::metrics().writer_stale_batches.get() > stale_batches,
                "the writers never started a batch from what they knew"
            );
        }
        let all = all_events(t.db()).await?;
        assert_eq!(all.len(), 40);
        let expected: Vec<i64> = (1..=40).collect();
        assert_eq!(positions, expected);
        assert!(t.db().verify_chain(&mut |_, _| {}).await?.is_intact());
        first.close().await;
        second.close().await;
        Ok(())
    }
);

/// PostgreSQL keeps the whole text a `PREPARE` arrived in as the prepared statement's
/// source, and copies it on every `EXECUTE`. The writer's queued writes are prepared in
/// a script of their own, never inside the script that carries a batch's writes and
/// their values: otherwise each later run of the statement copies that whole batch
/// (replay on PostgreSQL measured 2.6 times slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_write_keeps_only_its_own_text_on_postgres() -> cairn_testkit::TestResult {
    cairn_testkit::run(
        cairn_testkit::Backend::Postgres,
        "writer::a_prepared_write_keeps_only_its_own_text",
        |t: TestDb| async move {
            let db = t
                .connect_with(config(t.backend(), WriteMode::Optimistic))
                .await?;
            let value = "x".repeat(100_000);
            let longest: i64 = db
                .write(WriteOptions::default(), move |tx| {
                    let value = value.clone();
                    Box::pin(async move {
                        // Queued, as a handler's write is, with a large value.
                        tx.conn()
                            .execute(
                                "UPDATE log_head SET failed_events = failed_events \
                                 WHERE id = 1 AND length($1) > 0",
                                args![value],
                            )
                            .await?;
                        // A read sends what is queued first, on this same connection.
                        let row = tx
                            .conn()
                            .fetch_one(
                                "SELECT coalesce(max(length(statement)), 0)::BIGINT AS longest \
                                 FROM pg_prepared_statements WHERE name LIKE 'cairn_w_%'",
                                args![],
                            )
                            .await?;
                        row.get::<i64>("longest")
                    })
                })
                .await?;
            assert!(
                (1..2_000).contains(&longest),
                "the prepared writes' longest source is {longest} bytes: it holds more than \
                 its own statement"
            );
            db.close().await;
            Ok(())
        },
    )
    .await
}

/// A batch that begins lazily (the writer knows the head) begins with whatever script
/// it sends first. When that is the PREPARE of a write PostgreSQL refuses, the
/// transaction is aborted there: nothing the unit does afterwards runs outside it, and
/// so nothing of it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_prepare_leaves_nothing_committed_on_postgres() -> cairn_testkit::TestResult {
    cairn_testkit::run(
        cairn_testkit::Backend::Postgres,
        "writer::a_refused_prepare_leaves_nothing_committed",
        |t: TestDb| async move {
            let mut setup = t.db().begin().await?;
            setup
                .conn()
                .execute_script("CREATE TABLE marker (n BIGINT NOT NULL)")
                .await?;
            setup.commit().await?;
            let db = t
                .connect_with(config(t.backend(), WriteMode::Optimistic))
                .await?;
            // The writer learns the head: its next batch begins lazily.
            append_unit(&db, 1, false).await?;
            let refused = db
                .write(WriteOptions::default(), |tx| {
                    Box::pin(async move {
                        // Queued; its PREPARE is refused when the read sends it.
                        let _ = tx
                            .conn()
                            .execute(
                                "UPDATE log_head SET no_such_column = 1 WHERE id = 1",
                                args![],
                            )
                            .await;
                        let _ = tx.conn().fetch_one("SELECT 1 AS one", args![]).await;
                        // Sent at once, not queued.
                        let _ = tx
                            .conn()
                            .execute_script("INSERT INTO marker VALUES (1)")
                            .await;
                        Err::<(), _>(AppendError::NoEvents)
                    })
                })
                .await;
            assert!(refused.is_err(), "the unit refused: {refused:?}");
            let mut reader = t.db().begin().await?;
            let row = reader
                .conn()
                .fetch_one("SELECT count(*)::BIGINT AS n FROM marker", args![])
                .await?;
            assert_eq!(
                row.get::<i64>("n")?,
                0,
                "a write the refused unit made after the refused PREPARE was committed"
            );
            reader.commit().await?;
            // The writer goes on.
            append_unit(&db, 2, false).await?;
            db.close().await;
            Ok(())
        },
    )
    .await
}
