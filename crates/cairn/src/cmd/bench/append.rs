//! `cairn bench append`: appends through the dispatcher, and replay.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use console::style;
use serde::Serialize;
use serde_json::json;

use cairn_dispatch::{EventStore, Handler, HandlerError, ProjectionTable, Projections, Registry};
use cairn_log::{AppendRequest, Migration, NewEvent, RecordedEvent, args};
use cairn_types::{EventType, Metadata, StreamId, StreamType};

use crate::app;
use crate::cli::BenchLogArgs;
use crate::ui;

const BENCH_TABLES: &[Migration] = &[Migration {
    id: "bench/0001_totals",
    sqlite: "CREATE TABLE bench_totals (stream_id TEXT PRIMARY KEY, n_events INTEGER NOT NULL,
             last_position INTEGER NOT NULL, updated_at TEXT NOT NULL) STRICT",
    postgres: "CREATE TABLE bench_totals (stream_id UUID PRIMARY KEY, n_events BIGINT NOT NULL,
               last_position BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL)",
}];

/// A handler of typical weight: one upsert keyed by the stream.
struct RecordTotal;

#[async_trait]
impl Handler for RecordTotal {
    async fn handle(
        &self,
        event: &RecordedEvent,
        projections: &mut Projections<'_>,
    ) -> Result<(), HandlerError> {
        projections
            .execute(
                "INSERT INTO bench_totals (stream_id, n_events, last_position, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (stream_id) DO UPDATE SET n_events = excluded.n_events,
                     last_position = excluded.last_position, updated_at = excluded.updated_at",
                args![
                    event.stream_id,
                    event.stream_version,
                    event.position,
                    event.created_at
                ],
            )
            .await?;
        Ok(())
    }
}

/// The payload of `bench.recorded` in four versions, so that a replay can upcast
/// every event through 1 to 3 steps; each step edits the JSON map as a real one would
/// (a rename, a new field with a default).
mod versions {
    use cairn_dispatch::{EventPayload, Upcaster};
    use serde::{Deserialize, Serialize};
    use serde_json::{Map, Value};

    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct V1 {
        note: String,
        amount: i64,
    }

    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct V2 {
        memo: String,
        amount: i64,
    }

    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct V3 {
        memo: String,
        amount: i64,
        unit: String,
    }

    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct V4 {
        memo: String,
        amount: i64,
        unit: String,
        source: String,
    }

    fn rename_note(data: &mut Map<String, Value>) -> Result<(), String> {
        let note = data.remove("note").ok_or("event_data.note is missing")?;
        data.insert("memo".to_owned(), note);
        Ok(())
    }

    fn add_unit(data: &mut Map<String, Value>) -> Result<(), String> {
        data.insert("unit".to_owned(), Value::from("items"));
        Ok(())
    }

    fn add_source(data: &mut Map<String, Value>) -> Result<(), String> {
        data.insert("source".to_owned(), Value::from("bench"));
        Ok(())
    }

    fn chain(steps: usize) -> Vec<Upcaster> {
        [
            Upcaster::new::<V1>(1, rename_note),
            Upcaster::new::<V2>(2, add_unit),
            Upcaster::new::<V3>(3, add_source),
        ]
        .into_iter()
        .take(steps)
        .collect()
    }

    macro_rules! version {
        ($ty:ident, $version:literal) => {
            impl EventPayload for $ty {
                const EVENT_TYPE: &'static str = "bench.recorded";
                const DESCRIPTION: &'static str = "A benchmark event.";
                const VERSION: u32 = $version;
                fn upcasters() -> Vec<Upcaster> {
                    chain($version - 1)
                }
            }
        };
    }
    version!(V2, 2);
    version!(V3, 3);
    version!(V4, 4);
}

/// `bench.recorded` with a person's name in it (`--personal`): in the clear, or
/// sealed under the person's data key. The same bytes either way, so that the two
/// measure what sealing costs.
mod personal {
    use cairn_dispatch::{EventPayload, PersonalPath};
    use cairn_types::{Personal, UserId};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Plain {
        note: String,
        amount: i64,
        subject: UserId,
    }

    #[derive(Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Sealed {
        note: Personal<String>,
        amount: i64,
        subject: UserId,
    }

    impl EventPayload for Plain {
        const EVENT_TYPE: &'static str = "bench.recorded";
        const DESCRIPTION: &'static str = "A benchmark event naming a person.";
    }

    impl EventPayload for Sealed {
        const EVENT_TYPE: &'static str = "bench.recorded";
        const DESCRIPTION: &'static str = "A benchmark event naming a person, sealed.";
        const PERSONAL: &'static [PersonalPath] = &[PersonalPath::of("/note", "/subject")];
    }
}

/// The bench's routes. With no upcasts, `bench.recorded` has no payload contract, as
/// before versions existed, so that appends and replay measure what they always did;
/// with `upcasts` steps, its events are written at version 1 and every read upcasts
/// them to version 1 + `upcasts`.
fn registry(upcasts: u32, personal: Option<PersonalMode>) -> anyhow::Result<Registry> {
    Ok(Registry::builder()
        .router("bench", |r| match (personal, upcasts) {
            (Some(PersonalMode::Plain), _) => r.event::<personal::Plain>(RecordTotal),
            (Some(PersonalMode::Sealed), _) => r.event::<personal::Sealed>(RecordTotal),
            (None, 0) => r.on("bench.recorded", RecordTotal),
            (None, 1) => r.event::<versions::V2>(RecordTotal),
            (None, 2) => r.event::<versions::V3>(RecordTotal),
            (None, _) => r.event::<versions::V4>(RecordTotal),
        })
        .projection(ProjectionTable {
            name: "bench_totals",
            key: &["stream_id"],
        })
        .build()?)
}

#[derive(Debug, Serialize)]
struct Scenario {
    name: String,
    writers: usize,
    events_per_append: usize,
    appends: u64,
    events: u64,
    seconds: f64,
    events_per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Scenario {
    /// A pass over the whole log (replay, a check), of `events` in `seconds`.
    fn over_the_log(name: impl Into<String>, events: u64, seconds: f64) -> Scenario {
        Scenario {
            name: name.into(),
            writers: 1,
            events_per_append: 0,
            appends: 0,
            events,
            seconds,
            events_per_second: events as f64 / seconds,
            p50_ms: None,
            p99_ms: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct BenchReport {
    backend: &'static str,
    place: String,
    /// How the log writer isolated units of work.
    mode: &'static str,
    /// Upcaster steps every event went through in replay.
    upcasts: u32,
    /// Whether every event named a person: `plain` or `sealed`.
    personal: Option<&'static str>,
    scenarios: Vec<Scenario>,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    Some(sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e3)
}

/// Whether `bench.recorded` names a person, in the clear or sealed.
pub use crate::cli::PersonalMode;

fn bench_event(personal: Option<PersonalMode>, stream_id: StreamId) -> NewEvent {
    match personal {
        None => NewEvent::new(
            EventType::parse("bench.recorded").expect("a valid name"),
            json!({"note": "benchmark event", "amount": 42}),
            Metadata::new(),
        )
        .at_version(1),
        // The writer's stream is its person's.
        Some(_) => NewEvent::new(
            EventType::parse("bench.recorded").expect("a valid name"),
            json!({"note": "Benchmark Person", "amount": 42, "subject": stream_id}),
            Metadata::new(),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_appends(
    store: &EventStore,
    personal: Option<PersonalMode>,
    name: String,
    writers: usize,
    events_per_append: usize,
    duration: Duration,
    progress: &ui::Progress,
) -> anyhow::Result<Scenario> {
    let stream_type = StreamType::parse("bench")?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let store = store.clone();
        let stream_type = stream_type.clone();
        tasks.push(tokio::spawn(async move {
            let stream_id = StreamId::new_v7();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let events = (0..events_per_append)
                    .map(|_| bench_event(personal, stream_id))
                    .collect();
                let mut request = AppendRequest::new(stream_type.clone(), stream_id, events);
                // Version 1 events under a newer contract: what an import writes.
                request.importing = personal.is_none();
                let begun = Instant::now();
                store.append(request).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let ticker = async {
        while Instant::now() < deadline {
            progress.update(
                started.elapsed().as_millis() as u64,
                duration.as_millis() as u64,
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (results, ()) = tokio::join!(futures_join(tasks), ticker);
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let appends = latencies.len() as u64;
    let events = appends * events_per_append as u64;
    Ok(Scenario {
        name,
        writers,
        events_per_append,
        appends,
        events,
        seconds: elapsed,
        events_per_second: events as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    })
}

async fn futures_join<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await);
    }
    results
}

/// The scenarios to run: (writers, events per append).
fn scenarios(args: &BenchLogArgs) -> anyhow::Result<Vec<(usize, usize)>> {
    anyhow::ensure!(
        !args.writers.is_empty(),
        "--writers needs at least one count"
    );
    for &writers in &args.writers {
        anyhow::ensure!(
            (1..=1024).contains(&writers),
            "--writers takes counts from 1 to 1024, not {writers}"
        );
    }
    Ok(match args.batch {
        Some(batch) => {
            anyhow::ensure!(
                (1..=10_000).contains(&batch),
                "--batch takes 1 to 10000 events per append, not {batch}"
            );
            args.writers.iter().map(|&w| (w, batch)).collect()
        }
        None => {
            let mut scenarios: Vec<(usize, usize)> = args.writers.iter().map(|&w| (w, 1)).collect();
            scenarios.push((1, 100));
            scenarios
        }
    })
}

fn scenario_name(writers: usize, batch: usize) -> String {
    let what = if batch == 1 {
        "single event".to_owned()
    } else {
        format!("batch of {batch}")
    };
    let who = if writers == 1 {
        "1 writer".to_owned()
    } else {
        format!("{writers} writers")
    };
    format!("{what}, {who}")
}

pub async fn append(url: &str, args: BenchLogArgs) -> anyhow::Result<ExitCode> {
    let duration = super::scenario_duration(&args.common)?;
    let planned = scenarios(&args)?;
    let (place, db, described) = super::Place::open(url, args.mode).await?;
    let mut migrations = app::migrations();
    migrations.push(BENCH_TABLES);
    db.migrate(&migrations).await?;
    let backend = db.backend();
    let mode = db.writer_config().mode;
    anyhow::ensure!(
        args.upcasts <= 3,
        "--upcasts takes 0 to 3 steps, not {}",
        args.upcasts
    );
    anyhow::ensure!(
        args.personal.is_none() || args.upcasts == 0,
        "--personal and --upcasts measure different things: give one of them"
    );
    let store = EventStore::new(db.clone(), registry(args.upcasts, args.personal)?);
    let described = format!("{described}, writer mode {}", mode.as_str());
    super::announce("append", &described, duration, args.common.json.json);
    let result = async {
        let mut scenarios = Vec::new();
        for (writers, batch) in planned {
            let progress = ui::Progress::new("running");
            let scenario = run_appends(
                &store,
                args.personal,
                scenario_name(writers, batch),
                writers,
                batch,
                duration,
                &progress,
            )
            .await;
            progress.finish();
            scenarios.push(scenario?);
        }
        if args.no_replay {
            return anyhow::Ok(scenarios);
        }
        let progress = ui::Progress::new("replaying");
        let started = Instant::now();
        let report = store
            .replay(
                cairn_dispatch::ReplayOptions::default(),
                &mut |done, total| progress.update(done, total),
            )
            .await;
        progress.finish();
        let report = report?;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            report.n_failed == 0,
            "{} events failed during replay",
            report.n_failed
        );
        let replay_name = match (args.personal, args.upcasts) {
            (Some(PersonalMode::Sealed), _) => "replay, a sealed field per event".to_owned(),
            (Some(PersonalMode::Plain), _) => "replay, a personal field in the clear".to_owned(),
            (None, 0) => "replay".to_owned(),
            (None, 1) => "replay, 1 upcast per event".to_owned(),
            (None, n) => format!("replay, {n} upcasts per event"),
        };
        scenarios.push(Scenario::over_the_log(
            replay_name,
            report.n_events,
            elapsed,
        ));
        let progress = ui::Progress::new("checking");
        let started = Instant::now();
        let checked = store
            .check_log(&mut |done, total| progress.update(done, total))
            .await;
        progress.finish();
        let checked = checked?;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            checked.is_clean(),
            "{} events failed the log check",
            checked.n_failed
        );
        scenarios.push(Scenario::over_the_log(
            "contracts check-log",
            checked.n_events,
            elapsed,
        ));
        let progress = ui::Progress::new("verifying");
        let started = Instant::now();
        let verified = store
            .verify_projections(
                cairn_dispatch::VerifyOptions::default(),
                &mut |done, total| progress.update(done, total),
            )
            .await;
        progress.finish();
        let verified = verified?;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            verified.is_clean(),
            "replay --verify found {} rows that differ",
            verified.drift.len()
        );
        scenarios.push(Scenario::over_the_log(
            "replay --verify",
            verified.n_events,
            elapsed,
        ));
        anyhow::Ok(scenarios)
    }
    .await;
    db.close().await;
    place.remove().await?;
    let scenarios = result?;
    let report = BenchReport {
        backend: backend.as_str(),
        place: described,
        mode: mode.as_str(),
        upcasts: args.upcasts,
        personal: args.personal.map(|mode| match mode {
            PersonalMode::Plain => "plain",
            PersonalMode::Sealed => "sealed",
        }),
        scenarios,
    };
    if args.common.json.json {
        ui::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = ui::table(&["SCENARIO", "EVENTS", "EVENTS/S", "P50", "P99"]);
    let ms = |value: Option<f64>| {
        value.map_or("–".to_owned(), |v| {
            ui::duration(Duration::from_secs_f64(v / 1e3))
        })
    };
    for scenario in &report.scenarios {
        table.add_row(vec![
            scenario.name.clone(),
            ui::count(scenario.events),
            ui::count(scenario.events_per_second.round() as u64),
            ms(scenario.p50_ms),
            ms(scenario.p99_ms),
        ]);
    }
    outln!("{table}");
    outln!("{}", style("latencies are per append call (a batch counts once); replay rebuilds every event written above").dim());
    Ok(ExitCode::SUCCESS)
}
